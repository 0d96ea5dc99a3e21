-- Failure paths inside one process: agent errors, bad input, misuse.
local fstream = require "fstream"

local function app(id, opts)
  opts = opts or {}
  opts.topic_partitions = opts.topic_partitions or 2
  return fstream.app(id, opts)
end

local capture_stderr = require "spec.support.stderr"

describe("an agent that raises", function()
  local t
  after_each(function() if t then t:close(); t = nil end end)

  it("is logged with agent name, file:line and traceback, and restarts on the next event", function()
    local a = app("boom")
    local seen = {}
    local src = a:topic("src")
    a:agent("fragile", src, function(stream)
      for v in stream do
        if v == 2 then error("bad value " .. v) end
        seen[#seen + 1] = v
      end
    end)
    t = fstream.testing(a)
    for i = 1, 4 do t:send(src, { key = "k", value = i }) end
    local log = capture_stderr(function() t:run() end)
    assert.are.same({ 1, 3, 4 }, seen)
    assert.matches("agent fragile failed: spec/errors_spec.lua:%d+: bad value 2", log)
    assert.matches("event src%[%d%]@1", log)
    assert.matches("stack traceback:", log)
  end)

  it("with on_error = skip drops the event silently and goes on", function()
    local a = app("skip")
    local seen = {}
    local src = a:topic("src")
    a:agent("s", src, function(stream)
      for v in stream do
        if v % 2 == 0 then error("even") end
        seen[#seen + 1] = v
      end
    end, { on_error = "skip" })
    t = fstream.testing(a)
    for i = 1, 6 do t:send(src, { key = "k", value = i }) end
    local log = capture_stderr(function() t:run() end)
    assert.are.same({ 1, 3, 5 }, seen)
    assert.are.equal("", log)
  end)

  it("with on_error = crash stops the worker and says why", function()
    local a = app("crash")
    local src = a:topic("src")
    a:agent("c", src, function(stream)
      for _ in stream do error("fatal problem") end
    end, { on_error = "crash" })
    t = fstream.testing(a)
    t:send(src, 1)
    local err
    capture_stderr(function()
      local ok, e = pcall(function() t:run() end)
      assert.is_false(ok)
      err = e
    end)
    assert.matches("agent c failed: .*fatal problem", err)
  end)

  it("that fails before reading any event backs off instead of spinning", function()
    local a = app("spin")
    local starts = 0
    a:agent("s", a:topic("src"), function(stream)
      starts = starts + 1
      error("broken at start")
    end)
    t = fstream.testing(a)
    capture_stderr(function()
      t:run()
      t:advance(1.0)
    end)
    -- 0 + 0.1 + 0.2 + 0.4 s of back-off fit in one second: a handful of restarts, not thousands.
    assert.is_true(starts >= 3 and starts <= 6, "restarts: " .. starts)
  end)
end)

describe("a coroutine that runs without yielding", function()
  local t
  after_each(function() if t then t:close(); t = nil end end)

  -- An agent that spins on every event in `spin` (a function of the value).
  local function spinner(id, spin, opts)
    local a = app(id, { agent_timeout = 0.3 })
    local src = a:topic("src")
    local seen = {}
    a:agent("spinner", src, function(stream)
      for v in stream do
        if v % 2 == 0 then spin() end
        seen[#seen + 1] = v
      end
    end, opts)
    t = fstream.testing(a)
    for i = 1, 5 do t:send(src, { key = "k", value = i }) end
    return seen
  end

  it("is interrupted after agent_timeout, logged with agent and file:line; its next events are processed", function()
    local seen = spinner("spin1", function() while true do end end)
    local log = capture_stderr(function() t:run() end)
    assert.are.same({ 1, 3, 5 }, seen)
    assert.matches("agent spinner failed: spec/errors_spec.lua:%d+: interrupted after running 0%.%d s without "
      .. "yielding %(agent_timeout%) %(event src%[%d%]@1%)", log)
    assert.matches("stack traceback:", log)
  end)

  it("cannot swallow the interruption with pcall, xpcall or a coroutine of its own", function()
    local seen = spinner("spin2", function()
      while true do
        pcall(function() while true do end end)
        xpcall(function() while true do end end, function(e) return e end)
        pcall(coroutine.wrap(function() while true do pcall(error, "x") end end))
      end
    end)
    local log = capture_stderr(function() t:run() end)
    assert.are.same({ 1, 3, 5 }, seen)
    local _, n = log:gsub("agent spinner failed: [^\n]*interrupted after running", "")
    assert.are.equal(2, n, log)
  end)

  it("goes through on_error: dlq gets the event with the interruption as its error", function()
    local seen = spinner("spin3", function() while true do end end, { on_error = "dlq" })
    capture_stderr(function() t:run() end)
    assert.are.same({ 1, 3, 5 }, seen)
    local dead = t:messages("spin3-spinner-dlq")
    assert.are.equal(2, #dead)
    assert.matches("interrupted after running 0%.%d s without yielding", dead[1].headers["fstream-error"])
  end)

  it("goes through on_error: crash stops the worker", function()
    spinner("spin4", function() while true do end end, { on_error = "crash" })
    local ok, err
    capture_stderr(function() ok, err = pcall(function() t:run() end) end)
    assert.is_false(ok)
    assert.matches("agent spinner failed: .*interrupted after running", err)
  end)

  it("in a timer is interrupted, logged with the timer's place, and the timer goes on", function()
    local a = app("spin5", { agent_timeout = 0.3 })
    local runs = 0
    a:timer(3.0, function()
      runs = runs + 1
      if runs == 1 then while true do end end
    end)
    t = fstream.testing(a)
    local log = capture_stderr(function()
      t:run()
      t:advance(3)
    end)
    assert.matches("timer at spec/errors_spec.lua:%d+ failed: spec/errors_spec.lua:%d+: interrupted after running", log)
    local after = runs
    assert.is_true(after >= 2, "runs: " .. after)
    t:advance(3)
    assert.are.equal(after + 1, runs)
  end)

  it("agent_timeout must be a positive number of seconds", function()
    for _, bad in ipairs { 0, -1, "10", 0 / 0 } do
      local ok, err = pcall(fstream.app, "bad", { agent_timeout = bad })
      assert.is_false(ok)
      assert.matches("agent_timeout must be a positive number of seconds", err)
    end
  end)
end)

describe("a message the codec cannot decode", function()
  local t
  after_each(function() if t then t:close(); t = nil end end)

  it("is logged with topic, partition and offset and skipped; later ones are processed", function()
    local a = app("badjson")
    local seen = {}
    local orders = a:topic("orders")
    a:agent("o", orders, function(stream)
      for v in stream do seen[#seen + 1] = v.id end
    end)
    t = fstream.testing(a)
    t:send(orders, { key = "k", value = { id = 1 } })
    t:send_raw(orders, '{"id": 2', { key = "k" })
    t:send_raw(orders, "\xff\xfe not utf-8", { key = "k" })
    t:send(orders, { key = "k", value = { id = 3 } })
    local log = capture_stderr(function() t:run() end)
    assert.are.same({ 1, 3 }, seen)
    assert.matches("cannot decode orders%[%d%]@1: invalid JSON at byte 8", log)
    assert.matches("cannot decode orders%[%d%]@2: invalid JSON", log)
    assert.are.equal(2, t:stats().decode_errors)
  end)

  it("is acknowledged, so the committable offset moves past it", function()
    local a = app("badack")
    local orders = a:topic("orders", { partitions = 1 })
    a:agent("o", orders, function(stream) for _ in stream do end end)
    t = fstream.testing(a)
    t:send_raw(orders, "not json")
    t:send(orders, { ok = true })
    capture_stderr(function() t:run() end)
    -- The agent waits for more: everything it was handed is acknowledged.
    local p0 = t:stats().topics.orders.partitions[0]
    assert.are.equal(2, p0.committable)
  end)
end)

describe("misuse", function()
  it("sending before the worker starts names the topic", function()
    local a = app("early")
    local x = a:topic("x")
    assert.has_error(function() x:send { value = 1 } end,
      "topic 'x': cannot send before the worker starts (send from an agent, task or timer)")
  end)

  it("fstream.sleep outside a coroutine is an error", function()
    assert.has_error(function() fstream.sleep(0.1) end,
      "fstream.sleep must be called from an agent, task or timer")
  end)

  it("an unknown app option is rejected with its name", function()
    assert.has_error(function() fstream.app("x", { brokr = "memory://" }) end,
      "app 'x': unknown option 'brokr'")
  end)

  it("a value the raw serializer cannot carry is a clear error", function()
    local a = app("rawbad")
    local out = a:topic("out", { value_serializer = "raw" })
    local err
    a:task(function()
      local ok, e = pcall(out.send, out, { value = { 1, 2 } })
      err = e
    end)
    local t = fstream.testing(a)
    t:run()
    t:close()
    assert.matches("cannot encode value for out: the raw serializer needs a string, got a table", err)
  end)
end)
