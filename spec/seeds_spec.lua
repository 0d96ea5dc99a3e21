-- The seeds' code examples (Chinese articles about Faust), each ported line by
-- line to the Lua API the way a Faust user would write it, and run on
-- fstream.testing. Examples with a runnable twin in examples/ are checked in
-- spec/examples_spec.lua; the in-agent group_by in spec/group_by_spec.lua.
local fstream = require "fstream"

local quietly = require "spec.support.stderr"

-- Runs fn(app) with print captured; returns what was printed.
local function printed(fn)
  local out, saved = {}, print
  _G.print = function(...)
    local parts = {}
    for i = 1, select("#", ...) do parts[i] = tostring(select(i, ...)) end
    out[#out + 1] = table.concat(parts, "\t")
  end
  local ok, err = pcall(fn)
  _G.print = saved
  if not ok then error(err, 0) end
  return out
end

describe("seed: Faust——python分布式流式处理框架", function()
  local t
  after_each(function() if t then t:close(); t = nil end end)

  it("app, topic, agent and table as declared there", function()
    -- app = faust.App('myid', broker='kafka://kafka.example.com', store='rocksdb://')
    local app = fstream.app("myid", { broker = "kafka://kafka.example.com", store = "lmdb://" })
    local topic = app:topic("name_of_topic")
    -- transfer_counts = app.Table('transfer_counts', default=int, key_type=str, value_type=int)
    local transfer_counts = app:table("transfer_counts", { default = 0, key_type = "string", value_type = "integer" })
    app:agent("process", topic, function(stream)
      for event in stream do transfer_counts[event] = transfer_counts[event] + 1 end
    end)
    t = fstream.testing(app)
    t:send(topic, { key = "a", value = "alice" })
    t:send(topic, { key = "a", value = "alice" })
    t:run()
    assert.are.equal(2, t:table("transfer_counts").alice)
  end)

  it("sinks: a function, a function that waits (Faust's async sink), a topic, another agent", function()
    local app = fstream.app("sinks", { topic_partitions = 1 })
    local got_b = {}
    local agent_b = app:agent("agent_b", nil, function(stream)
      for event in stream do got_b[#got_b + 1] = event end
    end)
    local agent_log_topic = app:topic("agent_log")
    local seen, waited = {}, {}
    local function mysink(value) seen[#seen + 1] = value end
    -- async def mysink(value): print(...); await asyncio.sleep(1)
    local function mysink_async(value)
      fstream.sleep(1)
      waited[#waited + 1] = value
    end
    local myagent = app:agent("myagent", nil, function(stream)
      for value in stream do stream:yield(value * 10) end
    end, { sink = { mysink, mysink_async, agent_log_topic, agent_b } })
    t = fstream.testing(app)
    t:send(myagent, 1)
    t:send(myagent, 2)
    t:run()
    t:advance(3)
    assert.are.same({ 10, 20 }, seen)
    assert.are.same({ 10, 20 }, waited)
    assert.are.same({ 10, 20 }, t:outputs(agent_log_topic))
    assert.are.same({ 10, 20 }, got_b)
  end)

  it("app:stream(topic) read in a task, and topic:stream()", function()
    -- withdrawals_topic = app.topic('withdrawals', value_type=Withdrawal)
    -- @app.task async def mytask(): async for w in withdrawals_topic.stream(): print(w.amount)
    local app = fstream.app("example-app", { topic_partitions = 2 })
    local Withdrawal = fstream.record("Withdrawal", { account = "string", amount = "number" })
    local withdrawals_topic = app:topic("withdrawals", { value_type = Withdrawal })
    -- stream = app.stream(my_topic)  # or: my_topic.stream()
    local my_topic = app:topic("my_topic")
    local stream = my_topic:stream()
    local totals = app:table("totals", { default = 0 })
    local out = printed(function()
      app:task(function()
        for w in withdrawals_topic:stream() do
          print(w.amount)
          totals[w.account] = totals[w.account] + w.amount
        end
      end)
      app:task(function() for v in stream do print("my_topic " .. v) end end)
      t = fstream.testing(app)
      t:send(withdrawals_topic, { key = "a", value = Withdrawal { account = "a", amount = 12.5 } })
      t:send(withdrawals_topic, { key = "b", value = Withdrawal { account = "b", amount = 1 } })
      t:send(my_topic, { key = "a", value = "x" })
      t:run()
    end)
    table.sort(out)
    assert.are.same({ "1", "12.5", "my_topic x" }, out)
    assert.are.equal(12.5, t:table("totals").a)
    assert.are.equal(1, t:table("totals").b)
  end)

  it("processors run on each value in order", function()
    local app = fstream.app("procs", { topic_partitions = 1 })
    local my_topic = app:topic("my_topic")
    local function add_default_language(value)
      if not value.language then value.language = "US" end
      return value
    end
    local function add_client_info(value)
      fstream.sleep(0.1) -- await get_http_client_info(value.account_id)
      value.client = "client-of-" .. value.account_id
      return value
    end
    local s = app:stream(my_topic, { processors = { add_default_language, add_client_info } })
    local got = {}
    app:agent("report", s, function(stream) for v in stream do got[#got + 1] = v end end)
    t = fstream.testing(app)
    t:send(my_topic, { key = "k", value = { account_id = "a1" } })
    t:run()
    t:advance(1)
    assert.are.same({ { account_id = "a1", language = "US", client = "client-of-a1" } }, got)
  end)

  it("group_by(Order.account_id) and group_by(callable) inside the agent", function()
    local Order = fstream.record("Order", { account_id = "string", product_id = "string", amount = "number", price = "number" })
    local app = fstream.app("group-by-example", { topic_partitions = 4 })
    local orders_topic = app:topic("orders", { value_type = Order })
    local totals = app:table("totals", { default = 0 })
    app:agent("process", orders_topic, function(orders)
      for order in orders:group_by("account_id") do
        totals[order.account_id] = totals[order.account_id] + order.amount
      end
    end)
    -- def get_order_account_id(order): return json.loads(order)['account_id']
    local function get_order_account_id(order) return fstream.json.decode(order).account_id end
    local raw_totals = app:table("raw_totals", { default = 0 })
    app:agent("process_raw", app:topic("order", { value_serializer = "raw" }), function(orders)
      for order in orders:group_by(get_order_account_id, { name = "account_id" }) do
        local o = fstream.json.decode(order)
        raw_totals[o.account_id] = raw_totals[o.account_id] + o.amount
      end
    end)
    t = fstream.testing(app)
    for i = 1, 20 do
      local o = Order { account_id = "a" .. i % 2, product_id = "p", amount = i, price = 1.0 }
      t:send(orders_topic, { key = "o" .. i, value = o })
      t:send("order", { key = "o" .. i, value = fstream.json.encode(o) })
    end
    t:run()
    assert.are.equal(110, t:table("totals").a0)
    assert.are.equal(100, t:table("totals").a1)
    assert.are.equal(110, t:table("raw_totals").a0)
    assert.are.equal(100, t:table("raw_totals").a1)
  end)

  it("take(100): batches of 100", function()
    local app = fstream.app("take", { topic_partitions = 1 })
    local sizes = {}
    local agent = app:agent("process", nil, function(stream)
      for values in stream:take(100) do
        assert(#values == 100)
        sizes[#sizes + 1] = #values
      end
    end, { on_error = "crash" })
    t = fstream.testing(app)
    for i = 1, 250 do t:send(agent, i) end
    t:run()
    assert.are.same({ 100, 100 }, sizes) -- 50 wait for more
    for i = 251, 300 do t:send(agent, i) end
    t:run()
    assert.are.same({ 100, 100, 100 }, sizes)
  end)

  it("through(destination_topic) inside the agent", function()
    local app = fstream.app("through", { topic_partitions = 2 })
    local source_topic = app:topic("source-topic")
    local destination_topic = app:topic("destination-topic")
    local got = {}
    app:agent("process", source_topic, function(stream)
      for value in stream:through(destination_topic) do
        -- we are now iterating over stream(destination_topic)
        got[#got + 1] = value
      end
    end)
    t = fstream.testing(app)
    for i = 1, 5 do t:send(source_topic, { key = "k" .. i, value = i }) end
    t:run()
    table.sort(got)
    assert.are.same({ 1, 2, 3, 4, 5 }, got)
    assert.are.equal(5, #t:outputs(destination_topic))
  end)

  it("filter(lambda v: v > 1000).group_by(...)", function()
    local app = fstream.app("filter", { topic_partitions = 4 })
    local big = app:table("big", { default = 0 })
    local agent = app:agent("process", nil, function(stream)
      for value in stream:filter(function(v) return v.amount > 1000 end):group_by("account") do
        big[value.account] = big[value.account] + 1
      end
    end)
    t = fstream.testing(app)
    for i = 1, 20 do t:send(agent, { key = "k" .. i, value = { account = "a" .. i % 2, amount = i * 100 } }) end
    t:run()
    assert.are.equal(5, t:table("big").a0)
    assert.are.equal(5, t:table("big").a1)
  end)

  it("an anonymous agent with key_type and value_type records, and my_agent.send(key=Point, value=Point)", function()
    local Point = fstream.record("Point", { x = "integer", y = "integer" })
    local app = fstream.app("points", { topic_partitions = 2 })
    local got = {}
    local my_agent = app:agent("my_agent", nil, function(events)
      for key, event in events:items() do got[#got + 1] = { key, event } end
    end, { key_type = Point, value_type = Point })
    -- await my_agent.send(key=Point(x=10, y=20), value=Point(x=30, y=10))
    app:task(function() my_agent:send { key = Point { x = 10, y = 20 }, value = Point { x = 30, y = 10 } } end)
    t = fstream.testing(app)
    t:run()
    assert.are.equal(1, #got)
    assert.are.same({ x = 10, y = 20 }, got[1][1])
    assert.are.equal(Point, getmetatable(got[1][2]))
    assert.are.same({ x = 30, y = 10 }, got[1][2])
  end)

  it("a schema's key and value types and serializers go on the topic", function()
    -- schema = faust.Schema(key_type=Point, value_type=Point, key_serializer='json', value_serializer='json')
    local Point = fstream.record("Point", { x = "integer", y = "integer" })
    local app = fstream.app("schema", { topic_partitions = 1 })
    local topic = app:topic("mytopic", { key_type = Point, value_type = Point, key_serializer = "json", value_serializer = "json" })
    local got
    app:agent("a", topic, function(s) for k, v in s:items() do got = { k, v } end end)
    t = fstream.testing(app)
    t:send(topic, { key = Point { x = 1, y = 2 }, value = Point { x = 3, y = 4 } })
    t:run()
    assert.are.same({ { x = 1, y = 2 }, { x = 3, y = 4 } }, got)
  end)

  it("co-partitioning: a declared stream group_by, and the agent regrouping by country into a tumbling table", function()
    local Withdrawal = fstream.record("Withdrawal", { user = "string", country = "string", amount = "number" })
    local app = fstream.app("copart", { topic_partitions = 4 })
    local withdrawals_topic = app:topic("withdrawals", { value_type = Withdrawal })
    local country_to_total = app:table("country_to_total", { default = 0 }):tumbling(10.0, { expires = 10.0 })
    local withdrawals_stream = app:topic("withdrawals", { value_type = Withdrawal }):stream()
    local withdrawals_by_country = withdrawals_stream:group_by("country")
    local user_to_total = app:table("user_to_total", { default = 0 })
    app:agent("find_large_user_withdrawals", withdrawals_topic, function(withdrawals)
      for withdrawal in withdrawals do
        user_to_total[withdrawal.user] = user_to_total[withdrawal.user] + withdrawal.amount
      end
    end)
    local seen = 0
    app:agent("by_country", withdrawals_by_country, function(s) for _ in s do seen = seen + 1 end end)
    app:agent("process_withdrawal", withdrawals_topic, function(withdrawals)
      for withdrawal in withdrawals:group_by("country") do
        country_to_total:update(withdrawal.country, function(total) return total + withdrawal.amount end)
      end
    end)
    t = fstream.testing(app)
    local now = t:now()
    for i = 1, 8 do
      t:send(withdrawals_topic, { key = "u" .. i % 2, timestamp = now,
        value = Withdrawal { user = "u" .. i % 2, country = i % 4 == 0 and "SE" or "FR", amount = i } })
    end
    t:run()
    assert.are.equal(20, t:table("user_to_total").u0)
    assert.are.equal(16, t:table("user_to_total").u1)
    assert.are.equal(8, seen)
    local values = {}
    for k, v in country_to_total:items() do values[k[1]] = v end
    assert.are.same({ SE = 12, FR = 24 }, values)
  end)
end)

describe("seed: 如何用Python Faust构建流数据管道", function()
  local t
  after_each(function() if t then t:close(); t = nil end end)

  it("@app.agent(value_type=Order) and clicks.items() into a table", function()
    local Order = fstream.record("Order", { account_id = "string", amount = "number" })
    local app = fstream.app("my-app-id", { broker = "kafka://", store = "lmdb://" })
    local out = printed(function()
      local order = app:agent("order", nil, function(orders)
        for o in orders do print(string.format("Order for %s: %s", o.account_id, o.amount)) end
      end, { value_type = Order })
      local click_topic = app:topic("clicks", { key_type = "string", value_type = "integer" })
      local counts = app:table("click_counts", { default = 0 })
      app:agent("count_click", click_topic, function(clicks)
        for url, count in clicks:items() do counts[url] = counts[url] + count end
      end)
      t = fstream.testing(app)
      t:send(order, { key = "o", value = { account_id = "a1", amount = 3 } })
      t:send(click_topic, { key = "/a", value = 2 })
      t:send(click_topic, { key = "/a", value = 5 })
      t:run()
      assert.are.equal(7, t:table("click_counts")["/a"])
    end)
    assert.are.same({ "Order for a1: 3" }, out)
  end)
end)

describe("seed: 使用 Python、Kafka 和 Faust 进行流处理", function()
  local t
  after_each(function() if t then t:close(); t = nil end end)

  it("a table updated from every event, and the hopping wrapper's read-modify-write raising toward update", function()
    local app = fstream.app("windows", { topic_partitions = 1, table_cleanup_interval = 1.0 })
    local topic = app:topic("events", { value_serializer = "json" })
    local tbl = app:table("totals", { default = 0 })
    local window_wrapper = app:table("wrapped", { default = function() return {} end }):hopping(10, 1, { expires = 10 })
    app:agent("processor", topic, function(stream)
      for key, event in stream:items() do
        tbl[key] = tbl[key] + event
        local window_set = window_wrapper[key]
        local prev = window_set:value()
        prev[#prev + 1] = event
        window_wrapper[key] = prev -- the seed says "do not use this": hopping windows need update
      end
    end, { on_error = "crash" })
    t = fstream.testing(app)
    t:send(topic, { key = "k", value = 2 })
    local ok, err
    quietly(function() ok, err = pcall(t.run, t) end)
    assert.is_false(ok)
    assert.matches("update", err)
    assert.are.equal(2, t:table("totals").k)
  end)

  it("the tumbling wrapper's value() append and assignment", function()
    local app = fstream.app("event-stream", { topic_partitions = 1 })
    local closed = {}
    local tumbling_table = app:table("tumbling-events", {
      default = function() return {} end,
      on_window_close = function(_, _, events) closed[#closed + 1] = #events end,
    }):tumbling(10, { expires = 10 }):relative_to_field("timestamp")
    local events = app:topic("events")
    app:agent("calculate_tumbling_events", events, function(stream)
      for event in stream do
        local value_list = tumbling_table["events"]:value()
        value_list[#value_list + 1] = event
        tumbling_table["events"] = value_list
      end
    end)
    t = fstream.testing(app)
    for i = 1, 3 do t:send(events, { key = "events", value = { n = i, timestamp = "2024-06-27T15:43:4" .. i .. ".315342" } }) end
    t:send(events, { key = "events", value = { n = 9, timestamp = "2024-06-27T15:44:30" } })
    t:run()
    t:advance(2)
    assert.are.same({ 3 }, closed)
  end)
end)

describe("seed: Python中Faust库的核心原理", function()
  local t
  after_each(function() if t then t:close(); t = nil end end)

  it("word count, a topic chain to_topic, and the test client's send", function()
    local app = fstream.app("wordcount", { broker = "kafka://localhost:9092" })
    local words_topic = app:topic("words", { value_type = "string" })
    local counts = app:table("counts", { default = 0 })
    app:agent("count", words_topic, function(stream)
      for word in stream do counts[word] = counts[word] + 1 end
    end)
    app:topic("input"):filter(function(x) return x > 10 end):map(function(x) return x ^ 2 end):to_topic("output")
    t = fstream.testing(app)
    t:send("words", { key = "key", value = "value" })
    t:send("words", { key = "key", value = "value" })
    t:send("input", 3)
    t:send("input", 12)
    t:run()
    assert.are.equal(2, t:table("counts").value)
    assert.are.same({ 144.0 }, t:outputs("output"))
  end)
end)
