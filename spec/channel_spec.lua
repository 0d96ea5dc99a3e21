-- Channels (app:channel): in-memory streams inside one worker, through
-- fstream.testing. No Kafka is involved: nothing is produced for them.
local fstream = require "fstream"

local function app(id, opts)
  opts = opts or {}
  opts.topic_partitions = opts.topic_partitions or 2
  return fstream.app(id, opts)
end

describe("a channel", function()
  local t
  after_each(function() if t then t:close(); t = nil end end)

  it("is an agent's source: every value sent reaches the agent, in order", function()
    local a = app("ch1")
    local ch = a:channel()
    local seen = {}
    a:agent("reader", ch, function(stream)
      for v in stream do seen[#seen + 1] = v end
    end)
    t = fstream.testing(a)
    for i = 1, 50 do ch:send { value = i } end
    t:run()
    assert.are.equal(50, #seen)
    for i = 1, 50 do assert.are.equal(i, seen[i]) end
  end)

  it("numbers its values from 1 with stream:enumerate(), as a topic's stream does", function()
    local a = app("chenum")
    local ch = a:channel()
    local got = {}
    a:agent("reader", ch, function(stream)
      for i, v in stream:enumerate() do got[#got + 1] = i .. "=" .. v end
    end)
    t = fstream.testing(a)
    for _, v in ipairs { "a", "b", "c" } do ch:send { value = v } end
    t:run()
    assert.are.same({ "1=a", "2=b", "3=c" }, got)
  end)

  it("is an agent's sink: stream:yield sends to it, and nothing goes to Kafka", function()
    local a = app("ch2")
    local ch = a:channel { name = "doubled" }
    local got = {}
    local input = a:topic("input")
    a:agent("double", input, function(stream)
      for v in stream do stream:yield(v * 2) end
    end, { sink = { ch } })
    a:agent("collect", ch, function(stream)
      for v in stream do got[#got + 1] = v end
    end)
    t = fstream.testing(a)
    t:send(input, { key = "a", value = 1 })
    t:send(input, { key = "a", value = 2 })
    t:run()
    assert.are.same({ 2, 4 }, got)
    -- Only the input topic exists; the channel has none.
    for name in pairs(a.topics) do assert.are.equal("input", name) end
  end)

  it("gives every value to every agent reading it; a concurrent agent's instances share it", function()
    local a = app("ch3")
    local ch = a:channel()
    local one, two = {}, {}
    a:agent("one", ch, function(stream) for v in stream do one[#one + 1] = v end end)
    a:agent("two", ch, function(stream)
      for v in stream do
        fstream.sleep(0.1)
        two[#two + 1] = v
      end
    end, { concurrency = 3 })
    t = fstream.testing(a)
    for i = 1, 6 do ch:put(i) end
    t:run()
    assert.are.same({ 1, 2, 3, 4, 5, 6 }, one)
    t:advance(0.1)
    assert.are.equal(3, #two) -- three instances, one value each so far
    t:advance(0.1)
    table.sort(two)
    assert.are.same({ 1, 2, 3, 4, 5, 6 }, two)
  end)

  it("keeps values sent before the worker starts for every agent reading it", function()
    local a = app("ch4")
    local ch = a:channel()
    ch:send { key = "k", value = "early" }
    local got, got2 = {}, {}
    a:agent("reader", ch, function(stream)
      for k, v in stream:items() do got[#got + 1] = { k, v } end
    end)
    a:agent("reader2", ch, function(stream)
      for v in stream do got2[#got2 + 1] = v end
    end)
    t = fstream.testing(a)
    t:run()
    ch:put("late")
    t:run()
    assert.are.same({ { "k", "early" }, { fstream.null, "late" } }, got)
    assert.are.same({ "early", "late" }, got2)
  end)

  it("takes t:send(channel, value) in fstream.testing", function()
    local a = app("ch11")
    local ch = a:channel()
    local got = {}
    local ag = a:agent("r", ch, function(stream) for v in stream do got[#got + 1] = v end end)
    t = fstream.testing(a)
    t:send(ch, "one")
    t:send(ag, { key = "k", value = "two" })
    t:run()
    assert.are.same({ "one", "two" }, got)
  end)

  it("hands events with key, value, headers and timestamp, and no offset", function()
    local a = app("ch5")
    local ch = a:channel { name = "evs" }
    local ev
    a:agent("reader", ch, function(stream)
      for e in stream:events() do ev = e end
    end)
    t = fstream.testing(a, { clock = 1000 })
    ch:send { key = "k", value = { n = 1 }, headers = { h = "v" } }
    t:run()
    assert.are.equal("k", ev.key)
    assert.are.same({ n = 1 }, ev.value)
    assert.are.same({ h = "v" }, ev.headers)
    assert.are.equal(1000, ev.timestamp)
    assert.are.equal("evs", ev.channel)
    assert.is_nil(ev.offset)
  end)

  it("supports filter, map and take(max, within)", function()
    local a = app("ch6")
    local ch = a:channel()
    local evens, batches = {}, {}
    a:agent("evens", ch, function(stream)
      for v in stream:filter(function(x) return x % 2 == 0 end):map(function(x) return x * 10 end) do
        evens[#evens + 1] = v
      end
    end)
    a:agent("batches", ch, function(stream)
      for b in stream:take(3, 1.0) do batches[#batches + 1] = b end
    end)
    t = fstream.testing(a)
    for i = 1, 4 do ch:put(i) end
    t:run()
    assert.are.same({ 20, 40 }, evens)
    assert.are.same({ { 1, 2, 3 } }, batches)
    t:advance(1.1) -- the second batch waits no longer than `within`
    assert.are.same({ { 1, 2, 3 }, { 4 } }, batches)
  end)

  it("restarts an agent that fails, losing only the value it failed on (on_error = log)", function()
    local a = app("ch7")
    local ch = a:channel()
    local seen = {}
    a:agent("fragile", ch, function(stream)
      for v in stream do
        if v == 2 then error("two") end
        seen[#seen + 1] = v
      end
    end)
    t = fstream.testing(a)
    for i = 1, 3 do ch:put(i) end
    t:run()
    assert.are.same({ 1, 3 }, seen)
  end)

  it("with maxsize, makes a sending coroutine wait for room", function()
    local a = app("ch8")
    local ch = a:channel { maxsize = 2 }
    local seen, sent = {}, 0
    a:agent("slow", ch, function(stream)
      for v in stream do
        fstream.sleep(1)
        seen[#seen + 1] = v
      end
    end)
    a:task(function()
      for i = 1, 5 do
        ch:put(i)
        sent = i
      end
    end)
    t = fstream.testing(a)
    t:run()
    assert.is_true(sent < 5) -- blocked on the full queue
    for _ = 1, 6 do t:advance(1) end
    assert.are.equal(5, sent)
    assert.are.same({ 1, 2, 3, 4, 5 }, seen)
  end)

  it("refuses a dead-letter policy, noack and group_by, saying why", function()
    local a = app("ch9")
    local ch = a:channel { name = "c" }
    assert.has_error(function() a:agent("x", ch, function() end, { on_error = "dlq" }) end,
      "agent 'x' reads channel c: a channel keeps no message to dead-letter or retry (on_error must be log, skip or crash)")
    assert.has_error(function() a:channel { size = 3 } end, "app:channel: unknown option 'size'")
    local err
    a:agent("y", ch, function(stream)
      local ok, e = pcall(stream.noack, stream)
      err = e
      for _ in stream do end
    end)
    t = fstream.testing(a)
    t:run()
    assert.matches("a channel has no offsets to acknowledge", err)
  end)

  it("an agent reading a channel can be sent to, and cannot be asked", function()
    local a = app("ch10")
    local ch = a:channel()
    local got = {}
    local ag = a:agent("reader", ch, function(stream) for v in stream do got[#got + 1] = v end end)
    local err
    a:task(function()
      ag:send { value = "via agent" }
      local ok, e = pcall(ag.ask, ag, 1)
      err = e
    end)
    t = fstream.testing(a)
    t:run()
    assert.are.same({ "via agent" }, got)
    assert.matches("reads a channel; ask agents that read a topic", err)
  end)
end)

describe("a channel in the worker's views", function()
  local t
  after_each(function() if t then t:close(); t = nil end end)

  it("is a node of its own in /topology and a source in /agents", function()
    local a = app("chv")
    local ch = a:channel { name = "hops" }
    local input = a:topic("in")
    a:agent("fwd", input, function(stream) for v in stream do stream:yield(v) end end, { sink = { ch } })
    a:agent("reader", ch, function(stream) for _ in stream do end end)
    t = fstream.testing(a)
    t:run()
    local g = require("fstream.topology").graph(a)
    local kinds, edges = {}, {}
    for _, n in ipairs(g.nodes) do kinds[n.id] = n.kind end
    for _, e in ipairs(g.edges) do edges[#edges + 1] = e.from .. " " .. e.kind .. " " .. e.to end
    assert.are.equal("channel", kinds["channel:hops"])
    assert.is_nil(kinds["topic:hops"])
    table.sort(edges)
    assert.are.same({ "agent:fwd sink channel:hops", "channel:hops reads agent:reader", "topic:in reads agent:fwd" }, edges)
    local agents = {}
    for _, ag in ipairs(require("fstream.web").agents(a)) do agents[ag.name] = ag end
    assert.are.same({ "hops" }, agents.reader.topics)
    assert.are.equal("waiting", agents.reader.instances[1].state)
  end)
end)

describe("fstream-lua send to an agent reading a channel", function()
  it("refuses, saying the channel lives inside a worker", function()
    local proc = require "spec.support.proc"
    local script = proc.write(proc.tmp .. "/chsend_" .. os.time() .. ".lua", [[
local fstream = require "fstream"
local app = fstream.app("chsend", { broker = "memory://" })
app:agent("reader", app:channel { name = "inbox" }, function(stream) for _ in stream do end end)
]])
    local out, rc = proc.run(string.format("%s send %s @reader 1", proc.bin, proc.quote(script)))
    assert.are.equal(2, rc, out)
    assert.matches("agent reader reads channel inbox, which lives inside a worker", out)
  end)
end)
