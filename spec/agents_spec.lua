-- Agents, streams, sinks and topics through fstream.testing (in-memory broker, fake clock).
local fstream = require "fstream"

local function app(id, opts)
  opts = opts or {}
  opts.topic_partitions = opts.topic_partitions or 4
  return fstream.app(id, opts)
end

describe("an agent", function()
  local t
  after_each(function() if t then t:close(); t = nil end end)

  it("sees every value sent to its topic, in order within a partition", function()
    local a = app("order")
    local seen = {}
    local nums = a:topic("nums")
    a:agent("collect", nums, function(stream)
      for v in stream do seen[#seen + 1] = v end
    end)
    t = fstream.testing(a)
    for i = 1, 100 do t:send(nums, { key = "k", value = i }) end
    t:run()
    assert.are.equal(100, #seen)
    for i = 1, 100 do assert.are.equal(i, seen[i]) end
  end)

  it("keeps JSON integers as integers and floats as floats", function()
    local a = app("types")
    local got
    local orders = a:topic("orders")
    a:agent("o", orders, function(stream) for v in stream do got = v end end)
    t = fstream.testing(a)
    t:send(orders, { id = 12345678901234567, amount = 2.5, n = 3 })
    t:run()
    assert.are.equal("integer", math.type(got.id))
    assert.are.equal(12345678901234567, got.id)
    assert.are.equal("float", math.type(got.amount))
    assert.are.equal("integer", math.type(got.n))
  end)

  it("yields to every sink: a function, a topic and another agent", function()
    local a = app("sinks")
    local fn_got, b_got = {}, {}
    local log = a:topic("agent_log")
    local b = a:agent("agent_b", nil, function(stream)
      for v in stream do b_got[#b_got + 1] = v end
    end)
    local adding = a:topic("adding")
    a:agent("adder", adding, function(stream)
      for v in stream do stream:yield(v.a + v.b) end
    end, { sink = { function(v) fn_got[#fn_got + 1] = v end, log, b } })
    t = fstream.testing(a)
    t:send(adding, { a = 1, b = 2 })
    t:send(adding, { a = 10, b = 20 })
    t:run()
    table.sort(fn_got); table.sort(b_got)
    assert.are.same({ 3, 30 }, fn_got)
    assert.are.same({ 3, 30 }, b_got)
    local out = t:outputs(log)
    table.sort(out)
    assert.are.same({ 3, 30 }, out)
  end)

  it("gives every agent on one topic its own copy of each message", function()
    local a = app("fanout")
    local x, y = 0, 0
    local src = a:topic("src")
    a:agent("x", src, function(s) for v in s do x = x + v end end)
    a:agent("y", src, function(s) for v in s do y = y + 2 * v end end)
    t = fstream.testing(a)
    for i = 1, 10 do t:send(src, i) end
    t:run()
    assert.are.equal(55, x)
    assert.are.equal(110, y)
  end)

  it("iterates key and value with stream:items()", function()
    local a = app("items")
    local got = {}
    local clicks = a:topic("clicks", { value_type = "integer" })
    a:agent("count", clicks, function(stream)
      for url, n in stream:items() do got[url] = (got[url] or 0) + n end
    end)
    t = fstream.testing(a)
    t:send(clicks, { key = "/a", value = 2 })
    t:send(clicks, { key = "/b", value = 5 })
    t:send(clicks, { key = "/a", value = 1 })
    t:run()
    assert.are.same({ ["/a"] = 3, ["/b"] = 5 }, got)
  end)

  it("exposes metadata with stream:events()", function()
    local a = app("events")
    local evs = {}
    local src = a:topic("src")
    a:agent("e", src, function(stream)
      for ev in stream:events() do evs[#evs + 1] = ev end
    end)
    t = fstream.testing(a)
    t:send(src, { key = "k1", value = { x = 1 }, partition = 2, headers = { trace = "abc" } })
    t:run()
    assert.are.equal(1, #evs)
    local ev = evs[1]
    assert.are.equal("k1", ev.key)
    assert.are.same({ x = 1 }, ev.value)
    assert.are.equal("src", ev.topic)
    assert.are.equal(2, ev.partition)
    assert.are.equal(0, ev.offset)
    assert.are.equal("abc", ev.headers.trace)
    assert.is_true(math.abs(ev.timestamp - t:now()) < 5)
  end)

  it("numbers values from 1 with stream:enumerate()", function()
    local a = app("enum")
    local got = {}
    local src = a:topic("src")
    a:agent("e", src, function(stream)
      for i, v in stream:enumerate() do got[i] = v end
    end)
    t = fstream.testing(a)
    t:send(src, { key = "k", value = "a" }); t:send(src, { key = "k", value = "b" })
    t:run()
    assert.are.same({ "a", "b" }, got)
  end)

  it("receives agent:send on an anonymous agent's own topic", function()
    local a = app("anon")
    local sums = {}
    local adder = a:agent("adding", nil, function(stream)
      for v in stream do sums[#sums + 1] = v.a + v.b end
    end)
    assert.are.equal("anon-adding", adder.topics[1].name)
    t = fstream.testing(a)
    t:send(adder, { key = "k", value = { a = 1, b = 2 } })
    t:run()
    assert.are.same({ 3 }, sums)
  end)

  it("can send to an agent from another agent", function()
    local a = app("chain")
    local got = {}
    local second = a:agent("second", nil, function(s) for v in s do got[#got + 1] = v end end)
    local src = a:topic("src")
    a:agent("first", src, function(s)
      for v in s do second:send { value = v * 10 } end
    end)
    t = fstream.testing(a)
    t:send(src, 4)
    t:run()
    assert.are.same({ 40 }, got)
  end)

  it("returns partition and offset from send_and_wait", function()
    local a = app("saw")
    local mds = {}
    local src, out = a:topic("src"), a:topic("out")
    a:agent("w", src, function(s)
      for v in s do mds[#mds + 1] = out:send_and_wait { value = v, partition = 1 } end
    end)
    t = fstream.testing(a)
    t:send(src, "x"); t:send(src, "y")
    t:run()
    assert.are.same({ { partition = 1, offset = 0 }, { partition = 1, offset = 1 } }, mds)
  end)

  it("sends every field of the message, from a plain table or through its metatable; odd fields raise as before", function()
    local a = app("sendfields")
    local out = a:topic("out")
    local got, errs = {}, {}
    a:task(function()
      out:send { key = "k1", value = { n = 1 }, partition = 2, headers = { h = "v" }, timestamp = 1700000000.5 }
      out:send(setmetatable({}, { __index = { key = "k2", value = 2, partition = 3, timestamp = 1700000001 } }))
      out:send { key = "k3", value = 3, partition = 1.0 } -- an integral float is a partition too
      errs[1] = select(2, pcall(out.send, out, "not a table"))
      errs[2] = select(2, pcall(out.send, out, { value = 4, partition = "x" }))
      errs[3] = select(2, pcall(out.send, out, { value = 5, headers = "h" }))
    end)
    a:agent("read", out, function(s)
      for ev in s:events() do
        got[#got + 1] = { ev.key, ev.value, ev.partition, ev.headers.h, ev.timestamp }
      end
    end)
    t = fstream.testing(a)
    t:run()
    table.sort(got, function(x, y) return x[1] < y[1] end)
    assert.are.same({
      { "k1", { n = 1 }, 2, "v", 1700000000.5 },
      { "k2", 2, 3, nil, 1700000001 },
      { "k3", 3, 1, nil, got[3][5] },
    }, got)
    assert.matches("out:send expects a table {key=, value=, headers=, partition=}", errs[1])
    assert.matches("number expected, got string", errs[2])
    assert.matches("table expected, got string", errs[3])
  end)

  it("places keyed messages where Kafka's murmur2 partitioner does", function()
    local a = app("murmur")
    local out = a:topic("out", { partitions = 8 })
    local keys = {}
    for i = 1, 200 do keys[i] = "key-" .. i end
    a:task(function()
      for _, k in ipairs(keys) do out:send { key = k, value = 1 } end
    end)
    t = fstream.testing(a)
    t:run()
    local core = require "fstream.core"
    local used = {}
    for _, m in ipairs(t:messages(out)) do
      assert.are.equal(core.partition_for(m.key, 8), m.partition)
      used[m.partition] = true
    end
    assert.are.equal(200, #t:messages(out))
    for p = 0, 7 do assert.is_true(used[p], "partition " .. p .. " unused") end
  end)
end)

describe("serializers and types", function()
  local t
  after_each(function() if t then t:close(); t = nil end end)

  it("passes raw bytes through unchanged", function()
    local a = app("raw")
    local got
    local src = a:topic("src", { value_serializer = "raw" })
    local out = a:topic("out", { value_serializer = "raw" })
    a:agent("r", src, function(s) for v in s do got = v; out:send { value = v .. "!" } end end)
    t = fstream.testing(a)
    t:send(src, "\0\1\255bytes")
    t:run()
    assert.are.equal("\0\1\255bytes", got)
    assert.are.same({ "\0\1\255bytes!" }, t:outputs(out))
  end)

  it("uses a custom {encode, decode} serializer both ways", function()
    local a = app("custom")
    local csv = {
      encode = function(v) return table.concat(v, ",") end,
      decode = function(s) local r = {} for x in s:gmatch("[^,]+") do r[#r + 1] = x end return r end,
    }
    local got
    local src = a:topic("src", { value_serializer = csv })
    local out = a:topic("out", { value_serializer = csv })
    a:agent("c", src, function(s) for v in s do got = v; out:send { value = { v[2], v[1] } } end end)
    t = fstream.testing(a)
    t:send(src, { "a", "b" })
    t:run()
    assert.are.same({ "a", "b" }, got)
    assert.are.same({ { "b", "a" } }, t:outputs(out))
  end)

  it("converts raw keys to a declared key_type", function()
    local a = app("ktype")
    local keys = {}
    local src = a:topic("src", { key_type = "integer" })
    a:agent("k", src, function(s) for k in s:items() do keys[#keys + 1] = k end end)
    t = fstream.testing(a)
    t:send(src, { key = "42", value = 1 })
    t:run()
    assert.are.same({ 42 }, keys)
    assert.are.equal("integer", math.type(keys[1]))
  end)

  it("skips a value that does not match value_type and keeps going", function()
    local a = app("vtype")
    local got = {}
    local src = a:topic("src", { value_type = "number" })
    a:agent("n", src, function(s) for v in s do got[#got + 1] = v end end)
    t = fstream.testing(a)
    t:send(src, { key = "k", value = 1 })
    t:send(src, { key = "k", value = "not a number" })
    t:send(src, { key = "k", value = 3 })
    t:run()
    assert.are.same({ 1, 3 }, got)
  end)

  it("rejects an unknown serializer when the topic is declared", function()
    local a = app("badser")
    assert.has_error(function() a:topic("x", { value_serializer = "avro" }) end,
      "value_serializer 'avro' is unknown (raw, json, or a table with encode and decode)")
  end)

  it("rejects declaring one topic twice with different serializers", function()
    local a = app("twice")
    a:topic("x")
    assert.has_error(function() a:topic("x", { value_serializer = "raw" }) end)
  end)
end)

describe("agent concurrency", function()
  local function run(concurrency)
    local a = fstream.app("conc" .. concurrency, { topic_partitions = 2 })
    local src = a:topic("src")
    local done = 0
    a:agent("slow", src, function(stream)
      for _ in stream do fstream.sleep(0.05); done = done + 1 end
    end, { concurrency = concurrency })
    local t = fstream.testing(a)
    for i = 1, 40 do t:send(src, { key = "k" .. i, value = i }) end
    t:run()
    t:advance(0.5)
    local n = done
    t:close()
    return n
  end

  it("with 4 instances sleeping 50 ms per event finishes 40 events in 0.5 s (one instance: 10)", function()
    assert.are.equal(40, run(4))
    assert.are.equal(10, run(1))
  end)
end)

describe("stream operators", function()
  it("filter and map chain lazily; echo forwards every value", function()
    local a = fstream.app("ops", { topic_partitions = 1 })
    local src, copy = a:topic("src"), a:topic("copy")
    local got = {}
    a:agent("x", src, function(stream)
      for v in stream:filter(function(v) return v > 10 end):map(function(v) return v * v end):echo(copy) do
        got[#got + 1] = v
      end
    end)
    local t = fstream.testing(a)
    for _, v in ipairs { 5, 11, 3, 20 } do t:send(src, { key = "k", value = v }) end
    t:run()
    assert.are.same({ 121, 400 }, got)
    assert.are.same({ 121, 400 }, t:outputs(copy))
    t:close()
  end)

  it("take(100, 0.5) gives full batches under load and a partial one after 0.5 s when idle", function()
    local a = fstream.app("take", { topic_partitions = 1 })
    local src = a:topic("src")
    local sizes = {}
    a:agent("b", src, function(stream)
      for batch in stream:take(100, 0.5) do sizes[#sizes + 1] = #batch end
    end)
    local t = fstream.testing(a)
    for i = 1, 250 do t:send(src, { key = "k", value = i }) end
    t:run()
    assert.are.same({ 100, 100 }, sizes)        -- 50 wait for more
    t:advance(0.4)
    assert.are.same({ 100, 100 }, sizes)
    t:advance(0.2)
    assert.are.same({ 100, 100, 50 }, sizes)    -- 0.5 s after they arrived
    t:close()
  end)

  it("keeps a batch unacknowledged until the next take", function()
    local a = fstream.app("takeack", { topic_partitions = 1 })
    local src = a:topic("src")
    a:agent("b", src, function(stream)
      for _ in stream:take(3) do fstream.sleep(10) end
    end)
    local t = fstream.testing(a)
    for i = 1, 6 do t:send(src, { key = "k", value = i }) end
    t:run()
    assert.are.equal(0, t:stats().topics.src.partitions[0].committable)
    t:advance(10)
    assert.are.equal(3, t:stats().topics.src.partitions[0].committable)
    t:close()
  end)
end)

describe("app:stream with processors", function()
  it("runs processors in order, keeps the value on nil, drops on fstream.skip; as an agent's source", function()
    local a = fstream.app("procs", { topic_partitions = 1 })
    local src = a:topic("src")
    local function add_default_language(v) if not v.language then v.language = "US" end return v end
    local function drop_test(v) if v.test then return fstream.skip end end
    local function noop(_) end
    local s = a:stream(src, { processors = { add_default_language, drop_test, noop } })
    local got = {}
    a:agent("x", s, function(stream) for v in stream do got[#got + 1] = v.id .. ":" .. v.language end end)
    local t = fstream.testing(a)
    t:send(src, { key = "k", value = { id = 1 } })
    t:send(src, { key = "k", value = { id = 2, test = true } })
    t:send(src, { key = "k", value = { id = 3, language = "SE" } })
    t:run()
    assert.are.same({ "1:US", "3:SE" }, got)
    assert.are.equal(3, t:stats().topics.src.partitions[0].committable)  -- the skipped one is done too
    t:close()
  end)

  it("can be iterated from a task, and a processor may sleep", function()
    local a = fstream.app("procs2", { topic_partitions = 1 })
    local src = a:topic("src")
    local s = a:stream(src, { processors = { function(v) fstream.sleep(1); return v * 2 end } })
    local got = {}
    a:task(function() for v in s do got[#got + 1] = v end end)
    local t = fstream.testing(a)
    t:send(src, { key = "k", value = 1 })
    t:send(src, { key = "k", value = 2 })
    t:run()
    assert.are.same({}, got)
    t:advance(2)
    assert.are.same({ 2, 4 }, got)
    t:close()
  end)
end)

describe("group_by", function()
  it("re-keys events through a repartition topic so per-key tables follow the new key", function()
    local a = fstream.app("gb", { topic_partitions = 4 })
    local orders = a:topic("orders")
    local totals = a:table("totals", { default = 0 })
    local where = {}
    a:agent("process", orders:group_by("account_id", { name = "by_account" }), function(stream)
      for ev in stream:events() do
        totals[ev.value.account_id] = totals[ev.value.account_id] + ev.value.amount
        where[ev.value.account_id] = where[ev.value.account_id] or {}
        where[ev.value.account_id][ev.partition] = true
      end
    end)
    local t = fstream.testing(a)
    -- Keyed by order id: one account's orders land on several input partitions.
    for i = 1, 40 do
      t:send(orders, { key = "order-" .. i, value = { account_id = "acct-" .. (i % 3), amount = i } })
    end
    t:run()
    local expect = { 0, 0, 0 }
    for i = 1, 40 do expect[i % 3 + 1] = expect[i % 3 + 1] + i end
    for k = 0, 2 do assert.are.equal(expect[k + 1], t:table("totals")["acct-" .. k]) end
    for acct, parts in pairs(where) do
      local n = 0
      for _ in pairs(parts) do n = n + 1 end
      assert.are.equal(1, n, acct .. " seen on several partitions after group_by")
    end
    assert.is_not_nil(a.topics["gb-process-by_account-repartition"])
    t:close()
  end)
end)

describe("noack", function()
  it("commits only what the agent acknowledged with ev:ack()", function()
    local a = fstream.app("noack", { topic_partitions = 1 })
    local src = a:topic("src")
    local held = {}
    a:agent("m", src, function(stream)
      for ev in stream:noack():events() do held[#held + 1] = ev end
    end)
    local t = fstream.testing(a)
    for i = 1, 5 do t:send(src, { key = "k", value = i }) end
    t:run()
    local committable = function() return t:stats().topics.src.partitions[0].committable end
    assert.are.equal(0, committable())     -- asked for more, acknowledged nothing
    held[2]:ack()
    assert.are.equal(0, committable())     -- offset 0 is still open
    held[1]:ack()
    assert.are.equal(2, committable())
    held[5]:ack(); held[3]:ack(); held[4]:ack()
    assert.are.equal(5, committable())
    assert.has_error(function() held[1]:ack() end, "event already acknowledged or not from this stream")
    t:close()
  end)
end)

describe("topic chains and through", function()
  it("runs app:topic(..):filter(f):map(g):to_topic(..) as an implicit agent, keeping keys", function()
    local a = fstream.app("chain", { topic_partitions = 1 })
    a:topic("input"):filter(function(v) return v > 10 end):map(function(v) return v * v end):to_topic("output")
    local t = fstream.testing(a)
    for _, v in ipairs { 3, 12, 20, 7 } do t:send("input", { key = "k" .. v, value = v }) end
    t:run()
    local out = t:messages("output")
    assert.are.same({ 144, 400 }, { out[1].value, out[2].value })
    assert.are.same({ "k12", "k20" }, { out[1].key, out[2].key })
    t:close()
  end)

  it("through(dest) forwards events to dest and the agent reads them there", function()
    local a = fstream.app("thru", { topic_partitions = 1 })
    local src, dest = a:topic("source-topic"), a:topic("destination-topic")
    local got = {}
    a:agent("p", src:through(dest), function(stream) for v in stream do got[#got + 1] = v end end)
    local t = fstream.testing(a)
    t:send(src, { key = "a", value = 1 }); t:send(src, { key = "b", value = 2 })
    t:run()
    assert.are.same({ 1, 2 }, got)
    assert.are.same({ 1, 2 }, t:outputs(dest))
    t:close()
  end)
end)
