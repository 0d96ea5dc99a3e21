-- Request/reply (agent:ask, map, join) through fstream.testing: in-memory
-- broker, fake clock. The end-to-end form (two workers asking each other) is
-- spec/ask_e2e_spec.lua.
local fstream = require "fstream"

local function app(id, opts)
  opts = opts or {}
  opts.topic_partitions = opts.topic_partitions or 4
  return fstream.app(id, opts)
end

-- Runs fn(...) in a task of the app and returns what it returned, or raises
-- what it raised; nil, "pending" when it still waits after the app idles.
local function in_task(t, fn)
  local res
  t.rt:spawn(function() res = table.pack(pcall(fn)) end, nil, "task")
  t:run()
  if not res then return nil, "pending" end
  return res
end

describe("agent:ask", function()
  local t
  after_each(function() if t then t:close(); t = nil end end)

  it("returns the value the agent yields for the request, from a task", function()
    local a = app("ask1")
    local adder = a:agent("adder", nil, function(stream)
      for v in stream do stream:yield(v.a + v.b) end
    end)
    local got
    a:task(function() got = adder:ask({ a = 1, b = 2 }) end)
    t = fstream.testing(a)
    t:run()
    assert.are.equal(3, got)
  end)

  it("sends the request to the agent's topic with reply-to and correlation headers", function()
    local a = app("ask2")
    local seen
    local adder = a:agent("adder", nil, function(stream)
      for ev in stream:events() do
        seen = ev.headers
        stream:yield(ev.value * 2)
      end
    end)
    t = fstream.testing(a)
    local r = in_task(t, function() return adder:ask(21, { key = "k" }) end)
    assert.is_true(r[1])
    assert.are.equal(42, r[2])
    assert.matches("^ask2%-reply%-%x+$", seen["fstream-reply-to"])
    assert.is_string(seen["fstream-correlation-id"])
    -- The reply went to that topic with the same correlation id.
    local replies = t:messages(seen["fstream-reply-to"])
    assert.are.equal(1, #replies)
    assert.are.equal(42, replies[1].value)
    assert.are.equal(seen["fstream-correlation-id"], replies[1].headers["fstream-correlation-id"])
  end)

  it("works from inside another agent, and the asker's yield answers its own asker", function()
    local a = app("ask3")
    local double = a:agent("double", nil, function(stream)
      for v in stream do stream:yield(v * 2) end
    end)
    local quad = a:agent("quad", nil, function(stream)
      for v in stream do stream:yield(double:ask(double:ask(v))) end
    end)
    t = fstream.testing(a)
    local r = in_task(t, function() return quad:ask(5) end)
    assert.are.same({ true, 20, n = 2 }, r)
  end)

  it("answers with the first yield of an event only; later yields go to the sinks", function()
    local a = app("ask4")
    local sunk = {}
    local multi = a:agent("multi", nil, function(stream)
      for v in stream do
        stream:yield(v + 1)
        stream:yield(v + 2)
      end
    end, { sink = { function(v) sunk[#sunk + 1] = v end } })
    t = fstream.testing(a)
    local r = in_task(t, function() return multi:ask(10) end)
    assert.are.same({ true, 11, n = 2 }, r)
    assert.are.same({ 11, 12 }, sunk)
    local replies = 0
    for name in pairs(a.topics) do
      if name:match("%-reply%-") then replies = replies + #t:messages(name) end
    end
    assert.are.equal(1, replies)
  end)

  it("raises naming the agent and the timeout when the agent yields nothing", function()
    local a = app("ask5")
    local silent = a:agent("silent", nil, function(stream) for _ in stream do end end)
    t = fstream.testing(a)
    local res
    t.rt:spawn(function()
      res = table.pack(pcall(function()
        local v = silent:ask(1, { timeout = 2 })
        return v
      end))
    end, nil, "task")
    t:run()
    assert.is_nil(res) -- still waiting: the clock has not moved
    t:advance(1)
    assert.is_nil(res)
    t:advance(1.5)
    assert.is_false(res[1])
    assert.matches("ask_spec.lua:%d+: ask to agent silent: agent silent did not reply within 2 s %(timeout", res[2])
    assert.are.equal(0, require("fstream.ask").waiting(a))
  end)

  it("raises the agent's error in the asker when the agent fails on the request (on_error = log)", function()
    local a = app("ask6")
    local picky = a:agent("picky", nil, function(stream)
      for v in stream do
        if v < 0 then error("negative input " .. v) end
        stream:yield(v)
      end
    end)
    t = fstream.testing(a)
    local r = in_task(t, function() return picky:ask(-3) end)
    assert.is_false(r[1])
    assert.matches("ask to agent picky: agent picky failed: .*negative input %-3", r[2])
    -- The agent restarted and answers the next request.
    r = in_task(t, function() return picky:ask(4) end)
    assert.are.same({ true, 4, n = 2 }, r)
  end)

  it("raises the error once the request is dead-lettered under retry, not before", function()
    local a = app("ask7")
    local tries = 0
    local flaky = a:agent("flaky", nil, function(stream)
      for v in stream do
        tries = tries + 1
        if tries < 3 then error("flaky " .. tries) end
        stream:yield(v * 10)
      end
    end, { on_error = { "retry", attempts = 3, backoff = 0.5 } })
    t = fstream.testing(a)
    local res
    t.rt:spawn(function() res = table.pack(pcall(flaky.ask, flaky, 7)) end, nil, "task")
    t:run()
    for _ = 1, 10 do if res then break end t:advance(0.5) end
    assert.are.same({ true, 70, n = 2 }, res)
    assert.are.equal(3, tries)
  end)

  it("raises under dlq with the error and sends the request to the dead-letter topic", function()
    local a = app("ask8")
    local bad = a:agent("bad", nil, function(stream)
      for _ in stream do error("boom") end
    end, { on_error = "dlq" })
    t = fstream.testing(a)
    local r = in_task(t, function() return bad:ask("x") end)
    assert.is_false(r[1])
    assert.matches("agent bad failed: .*boom", r[2])
    assert.are.equal(1, #t:messages("ask8-bad-dlq"))
  end)

  it("drops a reply whose asker timed out, and later asks still work", function()
    local a = app("ask9")
    local slow = a:agent("slow", nil, function(stream)
      for v in stream do
        fstream.sleep(v)
        stream:yield(v)
      end
    end)
    t = fstream.testing(a)
    local first, second
    t.rt:spawn(function() first = table.pack(pcall(slow.ask, slow, 5, { timeout = 1 })) end, nil, "task")
    t:run()
    t:advance(1.5)
    assert.is_false(first[1])
    t:advance(5) -- the late reply arrives: nobody waits for it
    t.rt:spawn(function() second = table.pack(pcall(slow.ask, slow, 0)) end, nil, "task")
    t:run()
    assert.are.same({ true, 0, n = 2 }, second)
  end)

  it("refuses options it does not know and a bad timeout, at the caller's line", function()
    local a = app("ask10")
    local ag = a:agent("ag", nil, function(stream) for v in stream do stream:yield(v) end end)
    t = fstream.testing(a)
    local r = in_task(t, function()
      local v = ag:ask(1, { tiemout = 3 }) -- (not a tail call: the line is this one)
      return v
    end)
    assert.is_false(r[1])
    assert.matches("ask_spec.lua:%d+: ask to agent ag: unknown option 'tiemout'", r[2])
    r = in_task(t, function() return ag:ask(1, { timeout = -1 }) end)
    assert.matches("timeout must be a positive number", r[2])
  end)

  it("cannot be called outside a coroutine of the worker", function()
    local a = app("ask11")
    local ag = a:agent("ag", nil, function(stream) for v in stream do stream:yield(v) end end)
    assert.has_error(function() ag:ask(1) end, "ask to agent ag: the worker is not running (ask from an agent, task or timer)")
    t = fstream.testing(a)
    assert.has_error(function() ag:ask(1) end)
  end)

  it("under exactly_once refuses to wait in the middle of an agent's event, with the reason", function()
    local a = app("ask12", { processing_guarantee = "exactly_once" })
    local ag = a:agent("ag", nil, function(stream) for v in stream do stream:yield(v) end end)
    local err
    a:agent("asker", a:topic("in"), function(stream)
      for v in stream do
        local ok, e = pcall(ag.ask, ag, v)
        err = not ok and e or "answered"
      end
    end)
    t = fstream.testing(a)
    t:send("in", 1)
    t:run()
    assert.matches("under exactly_once an agent cannot wait for a reply in the middle of an event", err)
    -- A task may ask.
    local r = in_task(t, function() return ag:ask(2) end)
    assert.are.same({ true, 2, n = 2 }, r)
  end)
end)

describe("an asked agent that regroups", function()
  local t
  after_each(function() if t then t:close(); t = nil end end)

  it("answers from the regrouped stream (group_by keeps the request's headers)", function()
    local a = app("askgb")
    local totals = a:table("totals", { default = 0 })
    local acc = a:agent("acc", nil, function(stream)
      for o in stream:group_by("account") do
        totals[o.account] = totals[o.account] + o.amount
        stream:yield(totals[o.account])
      end
    end)
    t = fstream.testing(a)
    assert.are.equal(5, t:ask(acc, { account = "a1", amount = 5 }, { key = "order-1" }))
    assert.are.equal(12, t:ask(acc, { account = "a1", amount = 7 }, { key = "order-2" }))
    assert.are.equal(1, t:ask(acc, { account = "b2", amount = 1 }, { key = "order-3" }))
  end)
end)

describe("agent:join and agent:map", function()
  local t
  after_each(function() if t then t:close(); t = nil end end)

  local function squares(id)
    local a = app(id)
    local sq = a:agent("square", nil, function(stream)
      for v in stream do
        -- Later values answer first: the results must still come in order.
        fstream.sleep((10 - v) * 0.01)
        stream:yield(v * v)
      end
    end, { concurrency = 4 })
    return a, sq
  end

  it("join returns every result in the order of the values", function()
    local a, sq = squares("join1")
    t = fstream.testing(a)
    local res
    t.rt:spawn(function() res = table.pack(pcall(sq.join, sq, { 1, 2, 3, 4, 5 }, { key = function(v) return "k" .. v end })) end, nil, "task")
    t:run()
    for _ = 1, 20 do if res then break end t:advance(0.05) end
    assert.is_true(res[1])
    assert.are.same({ 1, 4, 9, 16, 25 }, res[2])
  end)

  it("map iterates the results in the order of the values", function()
    local a, sq = squares("map1")
    t = fstream.testing(a)
    local seen, done = {}, false
    t.rt:spawn(function()
      for i, r in sq:map({ 3, 1, 2 }) do seen[#seen + 1] = { i, r } end
      done = true
    end, nil, "task")
    t:run()
    for _ = 1, 20 do if done then break end t:advance(0.05) end
    assert.is_true(done)
    assert.are.same({ { 1, 9 }, { 2, 1 }, { 3, 4 } }, seen)
  end)

  it("join raises naming the value that failed", function()
    local a = app("join2")
    local ag = a:agent("ag", nil, function(stream)
      for v in stream do
        if v == 2 then error("two") end
        stream:yield(v)
      end
    end)
    t = fstream.testing(a)
    local r = in_task(t, function() return ag:join({ 1, 2, 3 }) end)
    assert.is_false(r[1])
    assert.matches("join on agent ag %(value 2%): agent ag failed: .*two", r[2])
    assert.are.equal(0, require("fstream.ask").waiting(a))
  end)

  it("join of no values returns an empty list without sending", function()
    local a = app("join3")
    local ag = a:agent("ag", nil, function(stream) for v in stream do stream:yield(v) end end)
    t = fstream.testing(a)
    local r = in_task(t, function() return ag:join({}) end)
    assert.are.same({ true, {}, n = 2 }, r)
  end)
end)

describe("fstream.testing's t:ask", function()
  local t
  after_each(function() if t then t:close(); t = nil end end)

  it("asks an agent by object or name and returns the reply", function()
    local a = app("task1")
    local up = a:agent("upper", nil, function(stream)
      for v in stream do stream:yield(v:upper()) end
    end)
    t = fstream.testing(a)
    assert.are.equal("HI", t:ask(up, "hi"))
    assert.are.equal("YO", t:ask("upper", "yo", { key = "k" }))
  end)

  it("raises the timeout after moving the clock when nothing answers", function()
    local a = app("task2")
    a:agent("mute", nil, function(stream) for _ in stream do end end)
    t = fstream.testing(a, { clock = 1000 })
    assert.has_error(function() t:ask("mute", 1, { timeout = 5 }) end)
    assert.is_true(t:now() >= 1005)
  end)
end)

-- examples/ask.lua, run as spec/examples_spec.lua runs every example (loaded,
-- then driven by fstream.testing's fake clock); kept here with the feature.
describe("examples/ask.lua", function()
  it("asks, joins in order, gets an agent's error, and prints receipts from a channel", function()
    local root = os.getenv("FSTREAM_ROOT") or "."
    local printed, saved = {}, print
    _G.print = function(...)
      local parts = {}
      for i = 1, select("#", ...) do parts[i] = tostring(select(i, ...)) end
      printed[#printed + 1] = table.concat(parts, "\t")
    end
    local ok, err = pcall(function()
      assert(loadfile(root .. "/examples/ask.lua"))()
      local t = fstream.testing(fstream._apps[#fstream._apps])
      t:advance(3)
      t:close()
    end)
    _G.print = saved
    assert(ok, err)
    local function lines(pattern)
      local out = {}
      for _, l in ipairs(printed) do if l:match(pattern) then out[#out + 1] = l end end
      return out
    end
    assert.are.same({ "QUOTE 1 apple = 0.50", "QUOTE 2 apple = 1.00", "QUOTE 3 apple = 1.50" }, lines("^QUOTE"))
    assert.are.same({ "JOIN pear = 0.75, plum = 0.25", "JOIN pear = 1.50, plum = 0.50", "JOIN pear = 2.25, plum = 0.75" },
      lines("^JOIN"))
    assert.are.same({ "RECEIPT 1 apple = 0.50", "RECEIPT 2 apple = 1.00", "RECEIPT 3 apple = 1.50" }, lines("^RECEIPT"))
    assert.are.equal(3, #lines("^NO QUOTE: no price for kiwi$"))
  end)
end)

describe("an asked agent", function()
  local t
  after_each(function() if t then t:close(); t = nil end end)

  it("answers no reply-to outside the app's reply topics, and goes on (logged once)", function()
    local a = app("orphan1")
    local got = {}
    local ag = a:agent("ag", nil, function(stream)
      for v in stream do
        stream:yield(v)
        got[#got + 1] = v
      end
    end)
    t = fstream.testing(a)
    local log = os.tmpname()
    require("fstream.core").redirect_stderr(log)
    t:send(ag, { value = 1, headers = { ["fstream-reply-to"] = "elsewhere", ["fstream-correlation-id"] = "x-1" } })
    t:send(ag, { value = 2, headers = { ["fstream-reply-to"] = "elsewhere", ["fstream-correlation-id"] = "x-2" } })
    t:run()
    require("fstream.core").redirect_stderr(nil)
    local f = io.open(log); local text = f:read("a"); f:close(); os.remove(log)
    assert.are.same({ 1, 2 }, got)
    local _, n = text:gsub("asks: no reply goes to elsewhere: not a reply topic of app orphan1", "")
    assert.are.equal(1, n)
    assert.is_nil(a.topics.elsewhere)
    -- Its own asks still work.
    assert.are.equal(3, t:ask(ag, 3))
  end)
end)
