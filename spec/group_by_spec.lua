-- group_by and through inside the agent, as Faust writes them:
--   for order in stream:group_by("account_id") do ... end
-- in process (fstream.testing); end to end with a real worker in spec/group_by_e2e_spec.lua.
local fstream = require "fstream"
local core = require "fstream.core"

local function app(id, opts)
  opts = opts or {}
  opts.topic_partitions = opts.topic_partitions or 4
  return fstream.app(id, opts)
end

local capture_stderr = require "spec.support.stderr"

-- Orders keyed by order id: one account's orders land on several partitions.
local function send_orders(t, topic, n, extra)
  local expect = {}
  for i = 1, n do
    local acct = "acct-" .. (i % 3)
    local msg = { key = "order-" .. i, value = { account_id = acct, amount = i } }
    for k, v in pairs(extra and extra(i) or {}) do msg[k] = v end
    t:send(topic, msg)
    expect[acct] = (expect[acct] or 0) + i
  end
  return expect
end

-- Sends one event to an app whose agent is meant to fail on it (on_error =
-- "crash"): the run must raise; returns its error message.
local function run_failing(t, topic, msg)
  t:send(topic, msg)
  local ok, err
  capture_stderr(function() ok, err = pcall(t.run, t) end)
  assert.is_false(ok)
  return err
end

local function count_keys(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

describe("stream:group_by inside the agent", function()
  local t
  after_each(function() if t then t:close(); t = nil end end)

  it("gives exact per-key totals, each key's table entries in the partition of its new key", function()
    local a = app("gbi")
    local orders = a:topic("orders")
    local totals = a:table("totals", { default = 0 })
    local where = {}
    a:agent("process", orders, function(stream)
      for order in stream:group_by("account_id") do
        totals[order.account_id] = totals[order.account_id] + order.amount
        local _, p = stream:current()
        where[order.account_id] = where[order.account_id] or {}
        where[order.account_id][p] = true
      end
    end)
    t = fstream.testing(a)
    local sent_parts = {}
    local expect = {}
    for i = 1, 60 do
      local acct = "acct-" .. (i % 3)
      local p = t:send(orders, { key = "order-" .. i, value = { account_id = acct, amount = i } })
      sent_parts[acct] = sent_parts[acct] or {}
      sent_parts[acct][p] = true
      expect[acct] = (expect[acct] or 0) + i
    end
    t:run()
    for acct, total in pairs(expect) do
      assert.are.equal(total, t:table("totals")[acct])
      assert.is_true(count_keys(sent_parts[acct]) > 1, "the input did not spread " .. acct)
      -- In the loop, the event in hand is the regrouped one: one partition per account.
      assert.are.same({ [core.partition_for(acct, 4)] = true }, where[acct])
    end
  end)

  it("reads the events from <app>-<agent>-<field>-repartition, re-keyed, with their headers and timestamps", function()
    local a = app("gbr")
    local orders = a:topic("orders")
    local seen = {}
    a:agent("process", orders, function(stream)
      for ev in stream:group_by("account_id"):events() do seen[#seen + 1] = ev end
    end)
    t = fstream.testing(a)
    for i = 1, 12 do
      t:send(orders, { key = "order-" .. i, value = { account_id = "acct-" .. (i % 4), amount = i },
        headers = { trace = "t" .. i }, timestamp = 1700000000 + i })
    end
    t:run()
    local rep = a.topics["gbr-process-account_id-repartition"]
    assert.is_not_nil(rep)
    local msgs = t:messages(rep)
    assert.are.equal(12, #msgs)
    for _, m in ipairs(msgs) do
      assert.are.equal(m.value.account_id, m.key)
      assert.are.equal(core.partition_for(m.key, 4), m.partition)
      assert.are.equal("t" .. m.value.amount, m.headers.trace)
    end
    assert.are.equal(12, #seen)
    for _, ev in ipairs(seen) do
      assert.are.equal("gbr-process-account_id-repartition", ev.topic)
      assert.are.equal(ev.value.account_id, ev.key)
      assert.are.equal(core.partition_for(ev.key, 4), ev.partition)
      assert.are.equal(1700000000 + ev.value.amount, ev.timestamp)
      assert.are.equal("t" .. ev.value.amount, ev.headers.trace)
    end
    -- Both topics are acknowledged to the end: nothing is held back from a commit.
    local stats = t:stats().topics
    local function committable(name)
      local n = 0
      for _, p in pairs(stats[name].partitions) do n = n + math.max(p.committable, 0) end
      return n
    end
    assert.are.equal(12, committable("orders"))
    assert.are.equal(12, committable("gbr-process-account_id-repartition"))
  end)

  it("takes a function key with {name = ...} and names the topic after it", function()
    local a = app("gbf")
    local orders = a:topic("orders", { value_serializer = "raw" })
    local totals = a:table("totals", { default = 0 })
    local function get_order_account_id(order) return fstream.json.decode(order).account_id end
    a:agent("process", orders, function(stream)
      for order in stream:group_by(get_order_account_id, { name = "by_account" }) do
        local o = fstream.json.decode(order)
        totals[o.account_id] = totals[o.account_id] + o.amount
      end
    end)
    t = fstream.testing(a)
    local expect = {}
    for i = 1, 30 do
      local acct = "acct-" .. (i % 5)
      t:send(orders, { key = "order-" .. i, value = string.format('{"account_id":"%s","amount":%d}', acct, i) })
      expect[acct] = (expect[acct] or 0) + i
    end
    t:run()
    for acct, total in pairs(expect) do assert.are.equal(total, t:table("totals")[acct]) end
    local msgs = t:messages("gbf-process-by_account-repartition")
    assert.are.equal(30, #msgs)
    for _, m in ipairs(msgs) do assert.are.equal(fstream.json.decode(m.value).account_id, m.key) end
  end)

  it("raises where the agent calls it for a function without a name, through the agent's on_error", function()
    local a = app("gbn")
    local orders = a:topic("orders")
    a:agent("process", orders, function(stream)
      for _ in stream:group_by(function(v) return v.account_id end) do end
    end, { on_error = "crash" })
    t = fstream.testing(a)
    local err = run_failing(t, orders, { key = "o", value = { account_id = "a" } })
    assert.matches("group_by with a function needs {name = ...}", err)
  end)

  it("filters before repartitioning: stream:filter(f):group_by(...) forwards only what passes", function()
    local a = app("gbv")
    local orders = a:topic("orders")
    local totals = a:table("totals", { default = 0 })
    a:agent("process", orders, function(stream)
      for order in stream:filter(function(v) return v.amount > 10 end):group_by("account_id") do
        totals[order.account_id] = totals[order.account_id] + order.amount
      end
    end)
    t = fstream.testing(a)
    local expect = {}
    for i = 1, 30 do
      local acct = "acct-" .. (i % 3)
      t:send(orders, { key = "order-" .. i, value = { account_id = acct, amount = i } })
      if i > 10 then expect[acct] = (expect[acct] or 0) + i end
    end
    t:run()
    for acct, total in pairs(expect) do assert.are.equal(total, t:table("totals")[acct]) end
    assert.are.equal(20, #t:messages("gbv-process-account_id-repartition"))
    -- Filtered-out events are acknowledged too.
    local n = 0
    for _, p in pairs(t:stats().topics.orders.partitions) do n = n + math.max(p.committable, 0) end
    assert.are.equal(30, n)
  end)

  it("forwards the events the agent had taken but not processed before it regrouped", function()
    local a = app("gbl", { topic_partitions = 1 })
    local orders = a:topic("orders")
    local first, grouped = nil, {}
    a:agent("process", orders, function(stream)
      -- One event by hand (the rest of the batch waits in the stream's buffer), then regroup.
      local _, v = stream:items()()
      first = v.amount
      for order in stream:group_by("account_id") do grouped[#grouped + 1] = order.amount end
    end)
    t = fstream.testing(a)
    send_orders(t, orders, 10)
    t:run()
    assert.are.equal(1, first)
    table.sort(grouped)
    assert.are.same({ 2, 3, 4, 5, 6, 7, 8, 9, 10 }, grouped)
  end)

  it("keeps one forwarder across agent restarts, so each event is forwarded once", function()
    local a = app("gbe")
    local orders = a:topic("orders")
    local totals = a:table("totals", { default = 0 })
    local failed = 0
    a:agent("process", orders, function(stream)
      for order in stream:group_by("account_id") do
        if order.amount % 7 == 0 then failed = failed + 1; error("bad order " .. order.amount) end
        totals[order.account_id] = totals[order.account_id] + order.amount
      end
    end)
    t = fstream.testing(a)
    local expect = send_orders(t, orders, 40)
    local log = capture_stderr(function() t:run() end)
    assert.are.equal(5, failed)
    assert.matches("agent process failed: .*bad order 7 %(event gbe%-process%-account_id%-repartition%[%d%]@%d+%)", log)
    for i = 7, 40, 7 do
      local acct = "acct-" .. (i % 3)
      expect[acct] = expect[acct] - i
    end
    for acct, total in pairs(expect) do assert.are.equal(total, t:table("totals")[acct]) end
    assert.are.equal(40, #t:messages("gbe-process-account_id-repartition"))
  end)

  it("sends an event whose key function fails through the agent's on_error policy (dlq: the original)", function()
    local a = app("gbk")
    local orders = a:topic("orders")
    local seen = {}
    a:agent("process", orders, function(stream)
      for order in stream:group_by(function(v)
        if v.account_id == nil then error("no account") end
        return v.account_id
      end, { name = "by_account" }) do
        seen[#seen + 1] = order.amount
      end
    end, { on_error = "dlq" })
    t = fstream.testing(a)
    t:send(orders, { key = "o1", value = { account_id = "a", amount = 1 } })
    t:send(orders, { key = "o2", value = { amount = 2 }, headers = { trace = "x" } })
    t:send(orders, { key = "o3", value = { account_id = {}, amount = 3 } })
    t:send(orders, { key = "o4", value = { account_id = 17, amount = 4 } })
    capture_stderr(function() t:run() end)
    table.sort(seen)
    assert.are.same({ 1, 4 }, seen)
    local dead = t:messages("gbk-process-dlq")
    assert.are.equal(2, #dead)
    table.sort(dead, function(x, y) return x.key < y.key end)
    assert.are.equal("o2", dead[1].key)
    assert.are.equal('{"amount":2}', dead[1].value)
    assert.are.equal("orders", dead[1].headers["fstream-topic"])
    assert.are.equal("x", dead[1].headers.trace)
    assert.matches("no account", dead[1].headers["fstream-error"])
    assert.matches("the key must be a string or a number, got table", dead[2].headers["fstream-error"])
    -- A number key is sent as its string.
    local rep = t:messages("gbk-process-by_account-repartition")
    local keys = {}
    for _, m in ipairs(rep) do keys[#keys + 1] = m.key end
    table.sort(keys)
    assert.are.same({ "17", "a" }, keys)
  end)

  it("shares one repartition topic among the instances of a concurrent agent", function()
    local a = app("gbc")
    local orders = a:topic("orders")
    local totals = a:table("totals", { default = 0 })
    a:agent("process", orders, function(stream)
      for order in stream:group_by("account_id") do
        fstream.sleep(0.01)
        totals[order.account_id] = totals[order.account_id] + order.amount
      end
    end, { concurrency = 3 })
    t = fstream.testing(a)
    local expect = send_orders(t, orders, 30)
    t:run()
    t:advance(1)
    for acct, total in pairs(expect) do assert.are.equal(total, t:table("totals")[acct]) end
    assert.are.equal(30, #t:messages("gbc-process-account_id-repartition"))
  end)

  it("acknowledges both topics from then on when the agent returns from the regrouped loop", function()
    local a = app("gbret", { topic_partitions = 1 })
    local orders = a:topic("orders")
    local got = 0
    a:agent("process", orders, function(stream)
      for _ in stream:group_by("account_id") do
        got = got + 1
        if got == 3 then return end
      end
    end)
    t = fstream.testing(a)
    local log = capture_stderr(function()
      send_orders(t, orders, 10)
      t:run()
    end)
    assert.are.equal(3, got)
    assert.matches("agent process returned", log)
    -- Nothing is held back: every order was forwarded or let go, every regrouped one acknowledged.
    local stats = t:stats().topics
    assert.are.equal(10, stats.orders.partitions[0].committable)
    assert.are.equal(10, stats["gbret-process-account_id-repartition"].partitions[0].committable)
  end)

  it("refuses a second, different grouping of the same stream", function()
    local a = app("gb2")
    local orders = a:topic("orders")
    a:agent("process", orders, function(stream)
      for _ in stream:group_by("account_id") do end
    end)
    a:agent("twice", orders, function(stream)
      stream:group_by("account_id")
      for _ in stream:group_by("product_id") do end
    end, { on_error = "crash" })
    t = fstream.testing(a)
    local err = run_failing(t, orders, { key = "o", value = { account_id = "a", product_id = "p" } })
    assert.matches("agent twice: its stream is already regrouped %(account_id%)", err)
  end)

  it("refuses to regroup the stream group_by returned", function()
    local a = app("gbg")
    local orders = a:topic("orders")
    a:agent("process", orders, function(stream)
      for _ in stream:group_by("account_id"):group_by("product_id") do end
    end, { on_error = "crash" })
    t = fstream.testing(a)
    local err = run_failing(t, orders, { key = "o", value = { account_id = "a", product_id = "p" } })
    assert.matches("the stream group_by/through returned cannot be regrouped again", err)
  end)

  it("refuses group_by on a noack stream, pointing to the stream it returns", function()
    local a = app("gbq")
    local orders = a:topic("orders")
    a:agent("process", orders, function(stream)
      for _ in stream:noack():group_by("account_id") do end
    end, { on_error = "crash" })
    t = fstream.testing(a)
    local err = run_failing(t, orders, { key = "o", value = { account_id = "a" } })
    assert.matches("group_by/through on a noack stream; call noack%(%) on the stream it returns", err)
  end)

  it("works in an anonymous agent, as the seeds' process_withdrawal does", function()
    local a = app("gba")
    local country_to_total = a:table("country_to_total", { default = 0 })
    local agent = a:agent("process_withdrawal", nil, function(withdrawals)
      for w in withdrawals:group_by("country") do
        country_to_total[w.country] = country_to_total[w.country] + w.amount
      end
    end)
    t = fstream.testing(a)
    for i = 1, 20 do
      t:send(agent, { key = "w" .. i, value = { user = "u" .. i, country = i % 2 == 0 and "SE" or "FR", amount = i } })
    end
    t:run()
    assert.are.equal(110, t:table("country_to_total").SE)
    assert.are.equal(100, t:table("country_to_total").FR)
  end)

  it("keeps the declared form's topic: <app>-<agent>-<name>-repartition", function()
    local a = app("gbd")
    local orders = a:topic("orders")
    local got = 0
    a:agent("process", orders:group_by("account_id", { name = "by_account" }), function(stream)
      for _ in stream do got = got + 1 end
    end)
    t = fstream.testing(a)
    send_orders(t, orders, 9, function(i) return { headers = { n = tostring(i) } } end)
    t:run()
    assert.are.equal(9, got)
    -- The declared forwarder keeps headers too.
    for _, m in ipairs(t:messages("gbd-process-by_account-repartition")) do
      assert.are.equal(tostring(m.value.amount), m.headers.n)
    end
  end)
end)

describe("stream:through inside the agent", function()
  local t
  after_each(function() if t then t:close(); t = nil end end)

  it("forwards the events (keys kept) to the topic and iterates that topic", function()
    local a = app("thi")
    local source, dest = a:topic("source-topic"), a:topic("destination-topic")
    local got = {}
    a:agent("process", source, function(stream)
      for k, v in stream:through(dest):items() do got[#got + 1] = k .. "=" .. v end
    end)
    t = fstream.testing(a)
    for i = 1, 6 do t:send(source, { key = "k" .. i, value = i }) end
    t:run()
    table.sort(got)
    assert.are.same({ "k1=1", "k2=2", "k3=3", "k4=4", "k5=5", "k6=6" }, got)
    local out = t:messages(dest)
    assert.are.equal(6, #out)
    for _, m in ipairs(out) do assert.are.equal("k" .. m.value, m.key) end
  end)

  it("refuses something that is not a topic", function()
    local a = app("thn")
    local source = a:topic("source-topic")
    a:agent("process", source, function(stream)
      for _ in stream:through("destination-topic") do end
    end, { on_error = "crash" })
    t = fstream.testing(a)
    local err = run_failing(t, source, { key = "k", value = 1 })
    assert.matches("through needs a topic", err)
  end)
end)
