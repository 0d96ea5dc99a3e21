-- Tables through fstream.testing (state kept in Lua; persistence is covered end to end).
local fstream = require "fstream"

local function app(id)
  return fstream.app(id, { topic_partitions = 4 })
end

describe("a table", function()
  local t
  after_each(function() if t then t:close(); t = nil end end)

  it("counts words exactly, reading the default for new keys", function()
    local a = app("wc")
    local words = a:topic("words", { value_serializer = "raw" })
    local counts = a:table("word_counts", { default = 0 })
    a:agent("count", words, function(stream)
      for w in stream do counts[w] = counts[w] + 1 end
    end)
    t = fstream.testing(a)
    local expected = {}
    for i = 1, 50 do
      for _ = 1, i do
        local w = "w" .. i
        t:send(words, { key = w, value = w })
        expected[w] = (expected[w] or 0) + 1
      end
    end
    t:run()
    local tb = t:table("word_counts")
    for w, n in pairs(expected) do assert.are.equal(n, tb[w]) end
    assert.are.equal(0, tb["never-seen"])
    local seen = 0
    for k, v in tb:items() do
      assert.are.equal(expected[k], v)
      seen = seen + 1
    end
    assert.are.equal(50, seen)
  end)

  it("calls a function default for each missing key", function()
    local a = app("fdefault")
    local src = a:topic("src", { value_serializer = "raw" })
    local lists = a:table("lists", { default = function() return {} end })
    a:agent("collect", src, function(stream)
      for k, v in stream:items() do
        local l = lists[k]
        l[#l + 1] = v
        lists[k] = l
      end
    end)
    t = fstream.testing(a)
    t:send(src, { key = "a", value = "1" })
    t:send(src, { key = "b", value = "2" })
    t:send(src, { key = "a", value = "3" })
    t:run()
    assert.are.same({ "1", "3" }, t:table(lists).a)
    assert.are.same({ "2" }, t:table(lists).b)
  end)

  it("deletes with t[k] = nil, distinguishes get from the default, and updates with a function", function()
    local a = app("ops")
    local cmds = a:topic("cmds")
    local tb = a:table("kv", { default = -1 })
    a:agent("apply", cmds, function(stream)
      for c in stream do
        if c.op == "set" then tb[c.k] = c.v
        elseif c.op == "del" then tb[c.k] = nil
        elseif c.op == "add" then tb:update(c.k, function(old) return old + c.v end) end
      end
    end)
    t = fstream.testing(a)
    t:send(cmds, { key = "x", value = { op = "set", k = "x", v = 10 } })
    t:send(cmds, { key = "y", value = { op = "set", k = "y", v = 20 } })
    t:send(cmds, { key = "y", value = { op = "del", k = "y" } })
    t:send(cmds, { key = "x", value = { op = "add", k = "x", v = 5 } })
    t:send(cmds, { key = "z", value = { op = "add", k = "z", v = 5 } })
    t:run()
    assert.are.equal(15, tb.x)
    assert.are.equal(-1, tb.y)      -- deleted: the default again
    assert.is_nil(tb:get("y"))       -- get has no default
    assert.are.equal(4, tb.z)        -- update started from the default
    local keys = {}
    for k in tb:items() do keys[#keys + 1] = k end
    table.sort(keys)
    assert.are.same({ "x", "z" }, keys)
  end)

  it("writes into the partition of the event being processed", function()
    local a = app("copart")
    local src = a:topic("src", { value_serializer = "raw" })
    local tb = a:table("where", { default = 0 })
    a:agent("w", src, function(stream)
      for ev in stream:events() do tb[ev.value] = ev.partition end
    end)
    t = fstream.testing(a)
    t:send(src, { value = "a", partition = 3 })
    t:send(src, { value = "b", partition = 1 })
    t:run()
    local parts = rawget(tb, "parts")
    local json = require("fstream.core").json
    assert.are.equal(3, parts[3].cache[json.encode("a")])
    assert.are.equal(1, parts[1].cache[json.encode("b")])
    assert.is_nil(parts[0].cache[json.encode("a")])
  end)

  it("refuses a write outside an agent's event with a clear error", function()
    local a = app("outside")
    local tb = a:table("t1", { default = 0 })
    local err
    a:task(function()
      local ok, e = pcall(function() tb["k"] = 1 end)
      err = e
    end)
    t = fstream.testing(a)
    t:run()
    assert.matches("table 't1': writes must happen while an agent processes an event", err)
  end)

  it("uses a raw key serializer when asked", function()
    local a = app("rawkeys")
    local src = a:topic("src", { value_serializer = "raw" })
    local tb = a:table("raw", { default = 0, key_serializer = "raw" })
    a:agent("w", src, function(stream) for v in stream do tb[v] = tb[v] + 1 end end)
    t = fstream.testing(a)
    t:send(src, { key = "k", value = "k" })
    t:send(src, { key = "k", value = "k" })
    t:run()
    assert.are.equal(2, tb.k)
    assert.is_not_nil(rawget(tb, "parts")[0].cache["k"] or rawget(tb, "parts")[1].cache["k"]
      or rawget(tb, "parts")[2].cache["k"] or rawget(tb, "parts")[3].cache["k"])
  end)

  it("rejects unknown options and a second table of the same name", function()
    local a = app("tbad")
    assert.has_error(function() a:table("x", { defualt = 0 }) end, "table 'x': unknown option 'defualt'")
    a:table("y")
    assert.has_error(function() a:table("y") end, "table 'y' is already defined")
  end)
end)

describe("a global table", function()
  local t
  after_each(function() if t then t:close(); t = nil end end)

  it("accepts writes outside an event and reads them from anywhere", function()
    local a = fstream.app("glob1", { topic_partitions = 4 })
    local rates = a:global_table("rates", { default = 1.0 })
    local src = a:topic("src")
    local seen = {}
    a:task(function() rates["EUR"] = 0.9; rates["SEK"] = 11.2 end)
    a:agent("use", src, function(stream)
      for v in stream do seen[#seen + 1] = v.amount * rates[v.currency] end
    end)
    t = fstream.testing(a)
    t:run()
    t:send(src, { key = "x", value = { amount = 10, currency = "EUR" } })
    t:send(src, { key = "y", value = { amount = 10, currency = "USD" } })
    t:run()
    table.sort(seen) -- two keys, two partitions: no order between them
    assert.are.same({ 9.0, 10.0 }, seen)
    assert.are.equal(11.2, t:table("rates").SEK)
  end)
end)

describe("a table without a default", function()
  it("reads nil for a missing key", function()
    local a = fstream.app("nodefault", { topic_partitions = 1 })
    local tb = a:table("plain")
    local src = a:topic("src")
    local got = "unset"
    a:agent("r", src, function(s) for v in s do got = tb[v.k] end end)
    local t = fstream.testing(a)
    t:send(src, { key = "x", value = { k = "x" } })
    t:run()
    assert.is_nil(got)
    t:close()
  end)
end)

describe("table types", function()
  it("checks keys and values against key_type and value_type on write", function()
    local Acc = fstream.record("Acc", { total = "number" })
    local a = fstream.app("ttypes", { topic_partitions = 1 })
    local src = a:topic("src")
    local totals = a:table("totals", { key_type = "string", value_type = Acc })
    local errs = {}
    a:agent("w", src, function(s)
      for v in s do
        local ok, err = pcall(function() totals[v.k] = v.v end)
        if not ok then errs[#errs + 1] = err end
      end
    end)
    local t = fstream.testing(a)
    t:send(src, { key = "x", value = { k = "a", v = { total = 2 } } })
    t:send(src, { key = "x", value = { k = "b", v = { total = "lots" } } })
    t:send(src, { key = "x", value = { k = 7, v = { total = 1 } } })
    t:run()
    assert.are.equal(Acc, getmetatable(t:table("totals").a))
    assert.matches('Acc.total: expected number, got "lots"', errs[1])
    assert.matches("table 'totals': key must be string, got integer", errs[2])
    t:close()
  end)
end)

describe("a table's partition count", function()
  local Table = require "fstream.table"

  it("is its input's count, not topic_partitions, when the table declares none", function()
    local a = fstream.app("tpin", { topic_partitions = 4 })
    local words = a:topic("words", { partitions = 2 })
    local counts = a:table("counts", { default = 0 })
    a:agent("count", words, function(s) for w in s do counts[w] = counts[w] + 1 end end)
    local t = fstream.testing(a)
    assert.matches("counts %(2 partitions, changelog tpin%-counts%-changelog%)", Table.describe(counts))
    t:send(words, { key = "x", value = "x", partition = 1 })
    t:run()
    assert.are.equal(1, t:table("counts").x)
    t:close()
  end)

  it("follows a retry topic and a repartition topic to their source's count", function()
    local a = fstream.app("tpfollow", { topic_partitions = 4 })
    local orders = a:topic("orders", { partitions = 2 })
    local totals = a:table("totals", { default = 0 })
    a:agent("sum", orders:group_by("account"), function(s)
      for o in s do totals[o.account] = totals[o.account] + o.amount end
    end, { on_error = "retry" })
    local t = fstream.testing(a)
    assert.are.equal(2, a.topics["tpfollow-sum-account-repartition"].partitions)
    assert.are.equal(2, a.topics["tpfollow-sum-retry"].partitions)
    assert.matches("totals %(2 partitions", Table.describe(totals))
    t:close()
  end)

  it("refuses a declared count that differs from the input's, naming both and the fix", function()
    local a = fstream.app("tpdecl", { topic_partitions = 8 })
    local words = a:topic("words")
    local counts = a:table("counts", { default = 0, partitions = 4 })
    a:agent("count", words, function(s) for w in s do counts[w] = counts[w] + 1 end end)
    local ok, err = pcall(fstream.testing, a)
    assert.is_false(ok)
    assert.matches("table counts declares partitions = 4 but its input has 8 partitions %(words: 8%)", err)
    assert.matches("remove `partitions = 4` from the table %(it then has 8%), or give the input 4 partitions", err)
  end)

  it("refuses inputs with different counts when a table holds their partitions", function()
    local a = fstream.app("tpmix", { topic_partitions = 4 })
    local clicks, views = a:topic("clicks"), a:topic("views", { partitions = 8 })
    local n = a:table("n", { default = 0 })
    a:agent("c", clicks, function(s) for v in s do n[v] = n[v] + 1 end end)
    a:agent("v", views, function(s) for v in s do n[v] = n[v] + 1 end end)
    local ok, err = pcall(fstream.testing, a)
    assert.is_false(ok)
    assert.matches("the topics the agents read have different partition counts %(clicks: 4, views: 8%)", err)
  end)

  it("ignores what forwarders and the leader read: a chain's input may have another count", function()
    local a = fstream.app("tpchain", { topic_partitions = 4 })
    local raw, words = a:topic("raw", { partitions = 16 }), a:topic("words")
    raw:map(function(v) return v end):to_topic(words)
    local counts = a:table("counts", { default = 0 })
    a:agent("count", words, function(s) for w in s do counts[w] = counts[w] + 1 end end)
    a:timer(10, function() end, { on_leader = true })
    local t = fstream.testing(a)
    assert.matches("counts %(4 partitions", Table.describe(counts))
    t:send(raw, { key = "k", value = "k", partition = 12 })
    t:run()
    assert.are.equal(1, t:table("counts").k)
    t:close()
  end)

  it("rejects a partitions option that is not a positive integer", function()
    local a = fstream.app("tpbad")
    assert.has_error(function() a:table("t", { partitions = 0 }) end, "table 't': partitions must be a positive integer")
  end)
end)
