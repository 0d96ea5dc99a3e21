-- Joins, in process (fstream.testing):
--   stream:join(table), stream:lookup(table, key)        enrich each event with a table's value
--   app:agent(name, left:join(right, {within, key, type}), fn)   windowed stream-stream joins
-- End to end (a real worker, kill -9) in spec/join_e2e_spec.lua.
local fstream = require "fstream"
local capture_stderr = require "spec.support.stderr"

local T0 = 1700000000 -- event times of the stream-stream cases

local function sorted(pairs_)
  table.sort(pairs_)
  return pairs_
end

-- "left|right" for each pair the agent yields (right "-" when nil).
local function pair_text(l, r)
  local function s(v)
    if v == nil then return "-" end
    if type(v) == "table" then return tostring(v.id) end
    return tostring(v)
  end
  return s(l) .. "|" .. s(r)
end

describe("stream:join(table)", function()
  local t
  after_each(function()
    if t then t:close(); t = nil end
  end)

  -- Customers and orders both keyed by customer id, 4 partitions each.
  local function customers_app(id, body, opts)
    local app = fstream.app(id, { topic_partitions = 4 })
    local customers_topic = app:topic("customers")
    local orders = app:topic("orders")
    local customers = app:table("customers")
    app:agent("load", customers_topic, function(stream)
      for k, v in stream:items() do customers[k] = v end
    end)
    local out = {}
    app:agent("enrich", orders, function(stream) body(stream, customers, out) end, opts)
    return app, out
  end

  local function load(tt)
    tt:send("customers", { key = "c1", value = { name = "Ada" } })
    tt:send("customers", { key = "c2", value = { name = "Bo" } })
    tt:send("customers", { key = "c3", value = { name = "Cy" } })
    tt:run()
  end

  it("yields each event with the table's value under the event's key; inner skips keys the table lacks", function()
    local app, out = customers_app("join-inner", function(stream, customers, out)
      for order, customer in stream:join(customers) do
        out[#out + 1] = order.id .. "|" .. (customer and customer.name or "-")
      end
    end)
    t = fstream.testing(app)
    load(t)
    for i, c in ipairs { "c1", "c2", "c9", "c3", "c1" } do t:send("orders", { key = c, value = { id = "o" .. i } }) end
    t:run()
    assert.are.same({ "o1|Ada", "o2|Bo", "o4|Cy", "o5|Ada" }, sorted(out))
  end)

  it("with type = \"left\" yields the events whose key the table lacks with nil", function()
    local app, out = customers_app("join-left", function(stream, customers, out)
      for order, customer in stream:join(customers, { type = "left" }) do
        out[#out + 1] = order.id .. "|" .. (customer and customer.name or "-")
      end
    end)
    t = fstream.testing(app)
    load(t)
    for i, c in ipairs { "c1", "c9", "c2" } do t:send("orders", { key = c, value = { id = "o" .. i } }) end
    t:run()
    assert.are.same({ "o1|Ada", "o2|-", "o3|Bo" }, sorted(out))
  end)

  it("reads the table's current value: a later write is what later events see", function()
    local app, out = customers_app("join-current", function(stream, customers, out)
      for order, customer in stream:join(customers) do out[#out + 1] = order.id .. "|" .. customer.name end
    end)
    t = fstream.testing(app)
    load(t)
    t:send("orders", { key = "c1", value = { id = "o1" } })
    t:run()
    t:send("customers", { key = "c1", value = { name = "Ada L." } })
    t:run()
    t:send("orders", { key = "c1", value = { id = "o2" } })
    t:run()
    assert.are.same({ "o1|Ada", "o2|Ada L." }, out)
  end)

  it("joins what a view yields: stream:filter(f):join(table)", function()
    local app, out = customers_app("join-view", function(stream, customers, out)
      for order, customer in stream:filter(function(o) return o.n > 1 end):join(customers) do
        out[#out + 1] = order.id .. "|" .. customer.name
      end
    end)
    t = fstream.testing(app)
    load(t)
    for i, c in ipairs { "c1", "c2", "c3" } do t:send("orders", { key = c, value = { id = "o" .. i, n = i } }) end
    t:run()
    assert.are.same({ "o2|Bo", "o3|Cy" }, sorted(out))
  end)

  it("after stream:group_by(field) inside the agent, joins orders keyed otherwise (the fix the errors name)", function()
    local app, out = customers_app("join-regrouped", function(stream, customers, out)
      for order, customer in stream:group_by("customer_id"):join(customers) do
        out[#out + 1] = order.id .. "|" .. customer.name
      end
    end)
    t = fstream.testing(app)
    load(t)
    for i, c in ipairs { "c1", "c2", "c3", "c9", "c2" } do
      t:send("orders", { key = "order-" .. i, value = { id = "o" .. i, customer_id = c } })
    end
    t:run()
    assert.are.same({ "o1|Ada", "o2|Bo", "o3|Cy", "o5|Bo" }, sorted(out))
  end)

  it("refuses a windowed table or something that is not a table", function()
    local app = fstream.app("join-bad", { topic_partitions = 1 })
    local w = app:table("w", { default = 0 }):tumbling(10)
    local errs = {}
    app:agent("a", app:topic("src"), function(stream)
      for _, case in ipairs { w, {}, app:topic("src") } do
        local ok, err = pcall(stream.join, stream, case)
        errs[#errs + 1] = not ok and err or "accepted"
      end
      for _ in stream do end
    end)
    t = fstream.testing(app)
    t:run()
    assert.matches("table w is windowed", errs[1])
    assert.matches("join needs a table of the app", errs[2])
    assert.matches("left:join%(right, {within = seconds}%)", errs[3])
  end)
end)

describe("stream:join(table) on a table written by events keyed otherwise", function()
  it("stops the worker at the first key it finds in another partition, pointing at group_by", function()
    local app = fstream.app("join-misplaced", { topic_partitions = 4 })
    local customers = app:table("customers")
    -- Customers arrive keyed by e-mail but are stored by id: each lands in its e-mail's partition.
    app:agent("load", app:topic("customers"), function(stream)
      for c in stream do customers[c.id] = c end
    end)
    local out = {}
    app:agent("enrich", app:topic("orders"), function(stream)
      for o, c in stream:join(customers, { type = "left" }) do out[#out + 1] = o.id .. "|" .. (c and c.name or "-") end
    end)
    local t = fstream.testing(app)
    for i = 1, 10 do t:send("customers", { key = "user" .. i .. "@example.com", value = { id = "c" .. i, name = "n" .. i } }) end
    t:run()
    for i = 1, 10 do t:send("orders", { key = "c" .. i, value = { id = "o" .. i } }) end
    local ok, err
    capture_stderr(function() ok, err = pcall(t.run, t) end)
    t:close()
    assert.is_false(ok)
    assert.matches("join with table customers: key \"c%d+\" is not in partition %d, the event's %(orders%[%d%]%), "
      .. "but in partition %d", err)
    assert.matches("stream:group_by%(key%) in the agent that writes it", err)
    -- The orders before it found their customer in their own partition (or it was not there at all).
    for _, line in ipairs(out) do assert.matches("^o%d+|n%d+$", line) end
  end)
end)

describe("stream:lookup(table, key)", function()
  local t
  after_each(function()
    if t then t:close(); t = nil end
  end)

  it("reads a global table by any key (a field), with the table's default when missing", function()
    local app = fstream.app("lookup-global", { topic_partitions = 4 })
    local rates = app:global_table("rates", { default = 1.0 })
    app:agent("rates", app:topic("rates"), function(stream)
      for k, v in stream:items() do rates[k] = v end
    end)
    local out = {}
    app:agent("convert", app:topic("payments"), function(stream)
      for p, rate in stream:lookup(rates, "currency") do out[#out + 1] = p.id .. "=" .. p.amount * rate end
    end)
    t = fstream.testing(app)
    t:send("rates", { key = "EUR", value = 2.0 })
    t:send("rates", { key = "SEK", value = 0.5 })
    t:run()
    -- Keyed by payment id: each lands on a partition that has nothing to do with its currency.
    for i, cur in ipairs { "EUR", "SEK", "USD", "EUR" } do
      t:send("payments", { key = "p" .. i, value = { id = "p" .. i, currency = cur, amount = 10 } })
    end
    t:run()
    assert.are.same({ "p1=20.0", "p2=5.0", "p3=10.0", "p4=20.0" }, sorted(out))
  end)

  it("with type = \"inner\" skips keys the table lacks instead of giving the default", function()
    local app = fstream.app("lookup-inner", { topic_partitions = 2 })
    local rates = app:global_table("rates", { default = 1.0 })
    app:agent("rates", app:topic("rates"), function(stream)
      for k, v in stream:items() do rates[k] = v end
    end)
    local out = {}
    app:agent("convert", app:topic("payments"), function(stream)
      for p, rate in stream:lookup(rates, function(v) return v.currency end, { type = "inner" }) do
        out[#out + 1] = p.id .. "=" .. rate
      end
    end)
    t = fstream.testing(app)
    t:send("rates", { key = "EUR", value = 2.0 })
    t:run()
    t:send("payments", { key = "p1", value = { id = "p1", currency = "USD" } })
    t:send("payments", { key = "p2", value = { id = "p2", currency = "EUR" } })
    t:run()
    assert.are.same({ "p2=2.0" }, out)
  end)

  it("on a partitioned table, by the event's own key: allowed", function()
    local app = fstream.app("lookup-own", { topic_partitions = 4 })
    local limits = app:table("limits", { default = 0 })
    app:agent("limits", app:topic("limits"), function(stream)
      for k, v in stream:items() do limits[k] = v end
    end)
    local out = {}
    app:agent("check", app:topic("spend"), function(stream)
      for s, limit in stream:lookup(limits, "account") do out[#out + 1] = s.account .. ":" .. limit end
    end)
    t = fstream.testing(app)
    t:send("limits", { key = "a1", value = 100 })
    t:run()
    t:send("spend", { key = "a1", value = { account = "a1" } })
    t:send("spend", { key = "a2", value = { account = "a2" } })
    t:run()
    assert.are.same({ "a1:100", "a2:0" }, sorted(out))
  end)

  it("on a partitioned table, by a key that is not the event's: stops the worker, pointing at group_by", function()
    local app = fstream.app("lookup-other", { topic_partitions = 4 })
    local customers = app:table("customers")
    app:agent("load", app:topic("customers"), function(stream)
      for k, v in stream:items() do customers[k] = v end
    end)
    local seen = 0
    app:agent("enrich", app:topic("orders"), function(stream)
      for _ in stream:lookup(customers, "customer_id") do seen = seen + 1 end
    end)
    t = fstream.testing(app)
    t:send("customers", { key = "c1", value = { name = "Ada" } })
    t:run()
    t:send("orders", { key = "o1", value = { customer_id = "c1" } })
    local ok, err
    capture_stderr(function() ok, err = pcall(t.run, t) end)
    assert.is_false(ok)
    assert.matches("lookup in table customers by key \"c1\", but the event %(orders%[%d%]%) is keyed \"o1\"", err)
    assert.matches("stream:group_by", err)
    assert.matches("app:global_table", err)
    assert.are.equal(0, seen)
  end)
end)

describe("stream:filter(f):lookup(table, key)", function()
  it("checks the key against the event's on a partitioned table too", function()
    local app = fstream.app("lookup-view", { topic_partitions = 2 })
    local limits = app:table("limits", { default = 0 })
    app:agent("limits", app:topic("limits"), function(stream)
      for k, v in stream:items() do limits[k] = v end
    end)
    local out = {}
    app:agent("check", app:topic("spend"), function(stream)
      for s, limit in stream:filter(function(v) return v.n > 0 end):lookup(limits, "account") do
        out[#out + 1] = s.account .. ":" .. limit
      end
    end)
    local t = fstream.testing(app)
    t:send("limits", { key = "a1", value = 100 })
    t:run()
    t:send("spend", { key = "a1", value = { account = "a1", n = 1 } })
    t:send("spend", { key = "a1", value = { account = "a1", n = 0 } })
    t:run()
    assert.are.same({ "a1:100" }, out)
    t:send("spend", { key = "zz", value = { account = "a1", n = 1 } })
    local ok, err
    capture_stderr(function() ok, err = pcall(t.run, t) end)
    t:close()
    assert.is_false(ok)
    assert.matches("by key \"a1\", but the event %(spend%[%d%]%) is keyed \"zz\"", err)
  end)
end)

describe("co-partitioning at start", function()
  it("a stream and a table fed from topics of different partition counts: the worker does not start, and says group_by", function()
    local app = fstream.app("copart", { topic_partitions = 4 })
    local customers = app:table("customers")
    app:agent("load", app:topic("customers", { partitions = 2 }), function(stream)
      for k, v in stream:items() do customers[k] = v end
    end)
    app:agent("enrich", app:topic("orders"), function(stream)
      for _ in stream:join(customers) do end
    end)
    local ok, err = pcall(fstream.testing, app)
    assert.is_false(ok)
    assert.matches("different partition counts %(customers: 2, orders: 4%)", err)
    assert.matches("group_by", err)
  end)

  it("a global table needs no co-partitioning", function()
    local app = fstream.app("copart-global", { topic_partitions = 4 })
    local customers = app:global_table("customers", { partitions = 2 })
    app:agent("load", app:topic("customers", { partitions = 2 }), function(stream)
      for k, v in stream:items() do customers[k] = v end
    end)
    local out = {}
    app:agent("enrich", app:topic("orders"), function(stream)
      for o, c in stream:join(customers) do out[#out + 1] = o.id .. "|" .. c.name end
    end)
    local t = fstream.testing(app)
    t:send("customers", { key = "c1", value = { name = "Ada" } })
    t:run()
    t:send("orders", { key = "c1", value = { id = "o1" } })
    t:run()
    t:close()
    assert.are.same({ "o1|Ada" }, out)
  end)
end)

describe("stream-stream join", function()
  local t
  after_each(function()
    if t then t:close(); t = nil end
  end)

  -- clicks:join(views, opts): the pairs the agent sees, as "click|view".
  local function join_app(id, opts, partitions)
    local app = fstream.app(id, { topic_partitions = partitions or 1 })
    local clicks, views = app:topic("clicks"), app:topic("views")
    local out = {}
    app:agent("match", clicks:join(views, opts), function(stream)
      for click, view in stream do out[#out + 1] = pair_text(click, view) end
    end)
    return app, out
  end

  local function send(tt, topic, key, id, at)
    tt:send(topic, { key = key, value = { id = id, ad = key }, timestamp = T0 + at })
  end

  it("pairs events of one key whose times are at most `within` apart, whichever side comes first", function()
    local app, out = join_app("ss-inner", { within = 10 })
    t = fstream.testing(app)
    send(t, "views", "ad1", "v1", 0)
    send(t, "clicks", "ad1", "c1", 5)   -- v1 (5 s before)
    send(t, "clicks", "ad2", "c2", 5)   -- another key: nothing
    send(t, "views", "ad1", "v2", 12)   -- c1 (7 s after); v1 is 12 s away from nothing it could pair with
    send(t, "clicks", "ad1", "c3", 22)  -- v2 at exactly 10 s; v1 at 22 s: no
    send(t, "views", "ad1", "v3", 32.5) -- c3 at 10.5 s: no
    t:run()
    assert.are.same({ "c1|v1", "c1|v2", "c3|v2" }, sorted(out))
  end)

  it("inner vs left: a left join yields an unmatched left event with nil once the right side's time has passed its window", function()
    local app, out = join_app("ss-left", { within = 10, type = "left" })
    t = fstream.testing(app)
    send(t, "clicks", "ad1", "c1", 0)
    send(t, "clicks", "ad1", "c2", 1)
    send(t, "views", "ad1", "v1", 9)    -- c1 and c2
    send(t, "clicks", "ad2", "c3", 9)   -- no view of ad2 comes
    t:run()
    assert.are.same({ "c1|v1", "c2|v1" }, sorted(out))
    -- Views' time reaches 19: c3's window (up to 19) has not passed yet.
    send(t, "views", "ad9", "v9", 19)
    t:run()
    assert.are.same({ "c1|v1", "c2|v1" }, sorted(out))
    -- Past it: c3 goes out with nil, once; c1 and c2 were matched and go without a word.
    send(t, "views", "ad9", "v10", 19.5)
    send(t, "views", "ad9", "v11", 40)
    t:run()
    assert.are.same({ "c1|v1", "c2|v1", "c3|-" }, sorted(out))

    local app2, inner = join_app("ss-left-inner", { within = 10 })
    local t2 = fstream.testing(app2)
    send(t2, "clicks", "ad2", "c3", 9)
    send(t2, "views", "ad9", "v11", 40)
    t2:run()
    t2:close()
    assert.are.same({}, inner)
  end)

  it("a left event that arrives after the right side's time passed its window goes out with nil at once (left) or not at all (inner)", function()
    local app, out = join_app("ss-late", { within = 5, type = "left" })
    t = fstream.testing(app)
    send(t, "views", "ad1", "v1", 100)
    send(t, "clicks", "ad1", "c1", 90)  -- v1 is 10 s later: too far, and no later view can be near
    send(t, "clicks", "ad1", "c2", 96)  -- v1 within 4 s
    t:run()
    assert.are.same({ "c1|-", "c2|v1" }, sorted(out))
  end)

  it("deletes buffered events once no event of the other side can reach them", function()
    local app, out = join_app("ss-expire", { within = 10 }, 2)
    t = fstream.testing(app)
    for i = 1, 6 do
      send(t, "clicks", "ad" .. i, "c" .. i, i)
      send(t, "views", "ad" .. i, "v" .. i, i + 1)
    end
    t:run()
    assert.are.equal(6, #out)
    local function count(name)
      local n = 0
      for _ in t:table(name):items() do n = n + 1 end
      return n
    end
    -- Left buffer: six keys plus each partition's side times; right: six keys.
    assert.are.equal(6, count("match-join-right"))
    assert.is_true(count("match-join-left") >= 6)
    -- Both sides' times move past every buffered event in both partitions.
    for p = 0, 1 do
      t:send("clicks", { key = "x", value = { id = "x" }, partition = p, timestamp = T0 + 100 })
      t:send("views", { key = "y", value = { id = "y" }, partition = p, timestamp = T0 + 100 })
    end
    t:run()
    local left = {}
    for k in t:table("match-join-left"):items() do left[#left + 1] = k end
    local right = {}
    for k in t:table("match-join-right"):items() do right[#right + 1] = k end
    assert.are.same({ "y" }, right)
    -- Only "x" and the partitions' side times (keys of the runtime's own) remain.
    local user = {}
    for _, k in ipairs(left) do if type(k) == "string" then user[#user + 1] = k end end
    assert.are.same({ "x" }, user)
  end)

  -- Repartitioning merges the source's partitions: one key's events reach the
  -- join out of their time order, which `grace` lets the buffers wait for.
  it("with key = a field, both sides are repartitioned by it (topics keyed otherwise, of different partition counts)", function()
    local app = fstream.app("ss-key", { topic_partitions = 4 })
    local clicks = app:topic("clicks")
    local views = app:topic("views", { partitions = 3 })
    local out = {}
    app:agent("match", clicks:join(views, { within = 10, key = "ad", grace = 20 }), function(stream)
      for click, view in stream do out[#out + 1] = pair_text(click, view) end
    end)
    t = fstream.testing(app)
    local expect = {}
    for i = 1, 20 do
      local ad = "ad" .. (i % 5)
      t:send("clicks", { key = "click-" .. i, value = { id = "c" .. i, ad = ad }, timestamp = T0 + i })
      t:send("views", { key = "view-" .. i, value = { id = "v" .. i, ad = ad }, timestamp = T0 + i })
    end
    -- Click i and view j pair when they share an ad (i = j mod 5) and |i - j| <= 10.
    for i = 1, 20 do
      for j = 1, 20 do
        if i % 5 == j % 5 and math.abs(i - j) <= 10 then expect[#expect + 1] = "c" .. i .. "|v" .. j end
      end
    end
    t:run()
    assert.are.same(sorted(expect), sorted(out))
  end)

  it("takes each event's time from a field with time = ...", function()
    local app, out = join_app("ss-time", { within = 2, time = "at" })
    t = fstream.testing(app)
    -- Message timestamps all alike (the fake clock); the values' times decide.
    t:send("clicks", { key = "a", value = { id = "c1", at = 100 } })
    t:send("views", { key = "a", value = { id = "v1", at = 102 } })
    t:send("views", { key = "a", value = { id = "v2", at = 102.5 } })
    t:send("clicks", { key = "a", value = { id = "c2", at = 104 } })
    t:run()
    assert.are.same({ "c1|v1", "c2|v1", "c2|v2" }, sorted(out))
  end)

  it("checks its options", function()
    local app = fstream.app("ss-opts", { topic_partitions = 1 })
    local a, b = app:topic("a"), app:topic("b")
    local function err(f) local ok, e = pcall(f); assert.is_false(ok); return e end
    assert.matches("within must be", err(function() a:join(b, {}) end))
    assert.matches("within must be", err(function() a:join(b, { within = -1 }) end))
    assert.matches("type must be", err(function() a:join(b, { within = 1, type = "outer" }) end))
    assert.matches("unknown option 'windw'", err(function() a:join(b, { within = 1, windw = 2 }) end))
    assert.matches("time must be a field", err(function() a:join(b, { within = 1, time = 3 }) end))
    assert.matches("joined with itself", err(function() a:join(a, { within = 1 }) end))
    assert.matches("stream:join%(table%)", err(function() a:join(app:table("tb"), { within = 1 }) end))
    assert.matches("on_error = \"retry\" is not supported", err(function()
      app:agent("y", a:join(b, { within = 1 }), function() end, { on_error = "retry" })
    end))
    assert.matches("concurrency = 1", err(function()
      app:agent("x", a:join(b, { within = 1 }), function() end, { concurrency = 2 })
    end))
  end)
end)
