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
    -- (The record cache keeps string keys under the Lua string: see table.lua.)
    local parts = require("fstream.table").state(tb).parts
    assert.are.equal(3, parts[3].lw.a)
    assert.are.equal(1, parts[1].lw.b)
    assert.is_nil(parts[0].lw.a)
    assert.is_nil(next(parts[3].cache))
  end)

  it("keeps a string key apart from a number with the same text, through writes, deletes and items", function()
    -- String keys live in the record cache under the Lua string, others under
    -- their JSON bytes (table.lua): "1" and 1 are two keys, as in LMDB.
    local a = app("mixed")
    local src = a:topic("src")
    local tb = a:table("m", { default = 0 })
    a:agent("w", src, function(stream)
      for ev in stream:events() do
        local v = ev.value
        if v.op == "add" then tb[v.k] = tb[v.k] + v.n
        elseif v.op == "del" then tb[v.k] = nil
        elseif v.op == "update" then tb:update(v.k, function(x) return x * 10 end) end
      end
    end)
    t = fstream.testing(a)
    local function send(v) t:send(src, { value = v, partition = 2 }) end
    send { op = "add", k = "1", n = 5 }
    send { op = "add", k = 1, n = 7 }
    send { op = "add", k = "x", n = 1 }
    send { op = "add", k = 1.5, n = 2 }
    send { op = "update", k = "1" }
    send { op = "update", k = 1 }
    t:run()
    assert.are.equal(50, tb["1"])
    assert.are.equal(70, tb[1])
    assert.are.equal(2, tb[1.5])
    local seen = {}
    for k, v in tb:items() do seen[#seen + 1] = math.type(k) and string.format("%s:%s", math.type(k), v)
      or string.format("%q:%s", k, v) end
    table.sort(seen)
    assert.are.same({ '"1":50', '"x":1', "float:2", "integer:70" }, seen)
    send { op = "del", k = "1" }
    send { op = "add", k = "x", n = 1 }
    t:run()
    assert.are.equal(0, tb["1"])       -- deleted: the default
    assert.is_nil(tb:get("1"))
    assert.are.equal(70, tb[1])        -- the number key is untouched
    assert.are.equal(2, tb.x)
    seen = {}
    for k in tb:items() do seen[#seen + 1] = tostring(k) .. "/" .. type(k) end
    table.sort(seen)
    assert.are.same({ "1.5/number", "1/number", "x/string" }, seen)
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
    local parts = require("fstream.table").state(tb).parts
    assert.is_not_nil(parts[0].cache["k"] or parts[1].cache["k"] or parts[2].cache["k"] or parts[3].cache["k"])
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

describe("a table's keys", function()
  local json = require("fstream.core").json
  local Table = require "fstream.table"
  local t
  after_each(function() if t then t:close(); t = nil end end)

  -- Names of the table's own fields and methods, of window sets, streams and
  -- topics, metamethods and private-looking names: each one is only a key.
  local NAMES = {
    "name", "partitions", "parts", "default", "app", "id", "global", "window", "changelog", "proxy",
    "key_serializer", "value_serializer", "encode_key", "decode_key", "encode_value", "decode_value",
    "check_key", "check_value", "on_window_close", "on_late",
    "update", "items", "get", "set", "delete", "tumbling", "hopping", "sliding",
    "relative_to_stream", "relative_to_now", "relative_to_field",
    "value", "current", "now", "delta", "windows",
    "send", "send_raw", "filter", "map", "events", "take", "ack", "group_by", "through", "topic", "key",
    "__index", "__newindex", "__name", "__call", "__gc", "__mode", "_on", "_private", "_lookup", "_scan",
    "signature", "describe", "state", "new", "", "1", "2.5",
  }
  local function all_keys()
    local keys = {}
    for i, n in ipairs(NAMES) do keys[i] = n end
    for _, k in ipairs { 1, 2.5, -3, { a = 1 }, { "x", 2 } } do keys[#keys + 1] = k end
    return keys
  end

  -- The table's entries as { [JSON of the key] = value }, from items().
  local function entries(tb)
    local out, n = {}, 0
    for k, v in tb:items() do
      local j = json.encode(k)
      assert.is_nil(out[j], "items() yielded " .. j .. " twice")
      out[j], n = v, n + 1
    end
    return out, n
  end

  -- A word count (counts[k] = counts[k] + 1) over every key, key i sent i times.
  local function count_app(id)
    local a = fstream.app(id, { topic_partitions = 4 })
    local src = a:topic("src")
    local counts = a:table("counts", { default = 0 })
    a:agent("count", src, function(stream)
      for v in stream do counts[v.k] = counts[v.k] + 1 end
    end)
    return a, src, counts
  end

  it("reads and writes every key as its entry: field and method names, metamethods, _names, numbers, JSON", function()
    local a, src = count_app("anykey")
    t = fstream.testing(a)
    local keys, expected = all_keys(), {}
    for i, k in ipairs(keys) do
      for _ = 1, i do t:send(src, { key = "k" .. i, value = { k = k } }) end
      expected[json.encode(k)] = i
    end
    t:run()
    local tb = t:table("counts")
    for i, k in ipairs(keys) do
      assert.are.equal(i, tb[k], "counts[" .. json.encode(k) .. "]")
      assert.are.equal(i, tb:get(k), "counts:get(" .. json.encode(k) .. ")")
    end
    assert.are.equal(0, tb.never_written)
    -- items() yields exactly the keys written, and nothing of the table's own.
    local got, n = entries(tb)
    assert.are.same(expected, got)
    assert.are.equal(#keys, n)
  end)

  it("still works after entries named like its fields changed: partitions, name and methods intact", function()
    local a, src, counts = count_app("intact")
    t = fstream.testing(a)
    for round = 1, 2 do
      for i, k in ipairs(all_keys()) do
        for _ = 1, i do t:send(src, { key = "k" .. i, value = { k = k } }) end
      end
      t:run()
      for i, k in ipairs(all_keys()) do assert.are.equal(round * i, counts[k]) end
    end
    local s = Table.state(counts)
    assert.are.equal(4, s.partitions)
    assert.are.equal("counts", s.name)
    assert.are.equal("intact-counts-changelog", s.changelog.name)
    assert.matches("^counts %(4 partitions, changelog intact%-counts%-changelog%)$", Table.describe(s))
    local parts = 0
    for _ in pairs(s.parts) do parts = parts + 1 end
    assert.are.equal(4, parts)
    local _, n = entries(counts)
    assert.are.equal(#all_keys(), n)
  end)

  it("calls its methods with `:` while entries of the same names exist; `.` reads the entry", function()
    local a = fstream.app("methods", { topic_partitions = 4 })
    local src = a:topic("src")
    local tb = a:table("kv", { default = 0 })
    local listed
    a:agent("apply", src, function(stream)
      for c in stream do
        if c.op == "inc" then
          tb[c.k] = tb[c.k] + 1
        else
          tb:update("update", function(n) return n * 10 end)
          tb:set("get", tb:get("get") + 100)
          tb:delete("delete")
          tb:update("fresh", function(n) return n + 1 end)
          listed = {}
          for k, v in tb:items() do listed[k] = v end
        end
      end
    end)
    t = fstream.testing(a)
    for k, n in pairs { update = 3, get = 2, set = 1, delete = 4, items = 5, name = 6 } do
      for _ = 1, n do t:send(src, { key = "p", value = { op = "inc", k = k } }) end
    end
    t:send(src, { key = "p", value = { op = "methods" } })
    t:run()
    assert.are.same({ update = 30, get = 102, set = 1, items = 5, name = 6, fresh = 1 }, listed)
    assert.are.equal(30, tb.update)
    assert.are.equal(102, tb.get)
    assert.are.equal(1, tb["set"])
    assert.are.equal(0, tb.delete)         -- deleted: the default
    assert.is_nil(tb:get("delete"))
    assert.are.equal(5, tb.items)
    assert.are.equal(6, tb.name)
    assert.are.equal(0, tb.tumbling)       -- never written: the default, not the method
    local k = "update"
    assert.are.equal(30, tb[k])
    local got = entries(tb)
    assert.are.same({ ['"update"'] = 30, ['"get"'] = 102, ['"set"'] = 1, ['"items"'] = 5, ['"name"'] = 6,
      ['"fresh"'] = 1 }, got)
  end)

  it("a global table: every key is its entry, written from a task and read anywhere", function()
    local a = fstream.app("globkeys", { topic_partitions = 4 })
    local g = a:global_table("g", { default = 0 })
    local keys = all_keys()
    a:task(function()
      for i, k in ipairs(keys) do g[k] = g[k] + i end
      g:update("update", function(n) return n + 1000 end)
    end)
    t = fstream.testing(a)
    t:run()
    local expected = {}
    for i, k in ipairs(keys) do
      local want = k == "update" and i + 1000 or i
      assert.are.equal(want, g[k], json.encode(k))
      expected[json.encode(k)] = want
    end
    assert.are.same(expected, (entries(g)))
    assert.are.equal(4, Table.state(g).partitions)
    assert.is_true(Table.state(g).global)
  end)

  it("yields raw keys that start with a NUL byte, and the empty key", function()
    local a = fstream.app("rawnul", { topic_partitions = 2 })
    local src = a:topic("src", { value_serializer = "raw" })
    local tb = a:table("raw", { default = 0, key_serializer = "raw" })
    a:agent("w", src, function(stream) for v in stream do tb[v] = tb[v] + 1 end end)
    t = fstream.testing(a)
    for _, k in ipairs { "\0x", "", "\0x", "name", "\0stream_time" } do t:send(src, { key = "p", value = k }) end
    t:run()
    local got = {}
    for k, v in tb:items() do got[k] = v end
    assert.are.same({ ["\0x"] = 2, [""] = 1, name = 1, ["\0stream_time"] = 1 }, got)
    assert.are.equal(2, tb["\0x"])
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
