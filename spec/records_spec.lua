-- fstream.record: typed fields, validation, collections, defaults, Faust compatibility.
local fstream = require "fstream"

local Client = fstream.record("Client", { id = "string", tier = { "string", default = "basic" } })
local Order = fstream.record("Order", {
  account_id = "string", product_id = "string", amount = "number", qty = "integer",
  paid = "boolean", note = "string?", language = { "string", default = "US" },
  tags = { "list", "string" }, seen = { "set", "integer" }, attrs = { "map", "number" },
  client = { Client, optional = true },
})

local function valid()
  return { account_id = "a1", product_id = "p1", amount = 2.5, qty = 3, paid = true,
    tags = { "x", "y" }, seen = { 1, 2, 2, 3 }, attrs = { w = 1.5 } }
end

describe("a record", function()
  it("builds a validated instance with defaults applied and sets de-duplicated", function()
    local o = Order(valid())
    assert.are.equal("a1", o.account_id)
    assert.are.equal("US", o.language)
    assert.is_nil(o.note)
    assert.are.same({ 1, 2, 3 }, o.seen)
    assert.are.equal(Order, getmetatable(o))
  end)

  it("names the field and the problem when a value is wrong", function()
    local v = valid(); v.amount = "lots"
    assert.has_error(function() Order(v) end, 'Order.amount: expected number, got "lots"')
    v = valid(); v.qty = 2.5
    assert.has_error(function() Order(v) end, "Order.qty: expected integer, got float 2.5")
    v = valid(); v.tags = { "x", 7 }
    assert.has_error(function() Order(v) end, "Order.tags[2]: expected string, got integer 7")
    v = valid(); v.account_id = nil
    assert.has_error(function() Order(v) end, "Order.account_id: required field is missing")
    v = valid(); v.client = { tier = "gold" }
    assert.has_error(function() Order(v) end, "Order.client.id: required field is missing")
    v = valid(); v.attrs = { w = "heavy" }
    assert.has_error(function() Order(v) end, 'Order.attrs.w: expected number, got "heavy"')
  end)

  it("accepts nested records and whole floats for integers", function()
    local v = valid(); v.qty = 4.0; v.client = { id = "c9" }
    local o = Order(v)
    assert.are.equal("integer", math.type(o.qty))
    assert.are.equal("basic", o.client.tier)
    assert.are.equal(Client, getmetatable(o.client))
  end)

  it("encodes as a JSON object and reads Faust's JSON, ignoring __faust", function()
    local json = fstream.json
    local o = Order(valid())
    local back = json.decode(json.encode(o))
    assert.are.equal("a1", back.account_id)
    assert.are.same({ "x", "y" }, back.tags)
    local from_faust = json.decode('{"account_id":"a2","product_id":"p","amount":1,"qty":1,"paid":false,'
      .. '"tags":[],"seen":[],"attrs":{},"__faust":{"ns":"examples.Order"}}')
    local o2 = Order(from_faust)
    assert.are.equal("a2", o2.account_id)
    assert.is_nil(rawget(o2, "__faust"))
    assert.are.equal("[]", json.encode(o2.tags))
  end)

  it("rejects an unknown field type when declared", function()
    assert.has_error(function() fstream.record("Bad", { x = "str" }) end, "record Bad, field x: unknown type 'str'")
  end)

  it("validates messages on a topic: bad ones are reported and skipped", function()
    local a = fstream.app("recs", { topic_partitions = 1 })
    local orders = a:topic("orders", { value_type = Order })
    local got = {}
    a:agent("o", orders, function(s) for o in s do got[#got + 1] = getmetatable(o) == Order and o.qty end end)
    local t = fstream.testing(a)
    t:send(orders, valid())
    local bad = valid(); bad.qty = "three"
    t:send(orders, bad)
    t:send(orders, valid())
    local core = require "fstream.core"
    local path = os.tmpname()
    core.redirect_stderr(path)
    t:run()
    core.redirect_stderr(nil)
    local log = io.open(path):read("a")
    os.remove(path)
    assert.are.same({ 3, 3 }, got)
    assert.matches('cannot decode orders%[0%]@1: Order.qty: expected integer, got "three"', log)
    t:close()
  end)
end)

describe("a record's JSON", function()
  local json = fstream.json

  it("lists the fields in name order for a map declaration, whatever the assignment order", function()
    local o = Order(valid())
    local want = '{"account_id":"a1","amount":2.5,"attrs":{"w":1.5},"language":"US","paid":true,'
      .. '"product_id":"p1","qty":3,"seen":[1,2,3],"tags":["x","y"]}'
    assert.are.equal(want, json.encode(o))
    -- the same values assigned in the reverse order, with a detour through other keys
    local r = setmetatable({}, Order)
    for i = #Order.__field_order, 1, -1 do
      local f = Order.__field_order[i]
      r["tmp" .. i] = true
      r[f] = o[f]
    end
    for i = 1, #Order.__field_order do r["tmp" .. i] = nil end
    assert.are.equal(want, json.encode(r))
  end)

  it("lists the fields in declared order for a list declaration, nested records too", function()
    local Line = fstream.record("Line", { { sku = "string" }, { qty = "integer" }, { price = "number?" } })
    local Cart = fstream.record("Cart", {
      { user = "string" }, { lines = { "list", Line } }, { by_sku = { "map", Line } }, { total = "number" },
    })
    local c = Cart {
      total = 7.5, by_sku = { b = { qty = 2, sku = "b" }, a = { price = 1.5, qty = 1, sku = "a" } },
      lines = { { qty = 1, sku = "a", price = 1.5 }, { qty = 2, sku = "b" } }, user = "u1",
    }
    assert.are.equal('{"user":"u1","lines":[{"sku":"a","qty":1,"price":1.5},{"sku":"b","qty":2}],'
      .. '"by_sku":{"a":{"sku":"a","qty":1,"price":1.5},"b":{"sku":"b","qty":2}},"total":7.5}', json.encode(c))
    assert.are.equal("Cart(user=u1, lines=" .. tostring(c.lines) .. ", by_sku=" .. tostring(c.by_sku)
      .. ", total=7.5)", tostring(c))
    -- reading it back gives the same bytes
    assert.are.equal(json.encode(c), json.encode(Cart(json.decode(json.encode(c)))))
  end)

  it("does not write keys set on an instance that the record does not declare (as Faust)", function()
    local o = Client { id = "c1" }
    o.extra = 1
    assert.are.equal('{"id":"c1","tier":"basic"}', json.encode(o))
  end)

  it("rejects malformed list declarations", function()
    assert.has_error(function() fstream.record("M", { { a = "string" }, b = "string" }) end,
      "record M: fields are either a list of {name = type} or a map, not both")
    assert.has_error(function() fstream.record("D", { { a = "string" }, { a = "integer" } }) end,
      "record D: field a is declared twice")
    assert.has_error(function() fstream.record("T", { { a = "string", b = "string" } }) end,
      "record T: field #1 must be a table with one field, {name = type}")
    assert.has_error(function() fstream.record("S", { "a" }) end,
      "record S: field #1 must be a table with one field, {name = type}")
  end)

  it("gives the same bytes in separate lua5.4 processes (each with its own hash seed)", function()
    local root, build = os.getenv("FSTREAM_ROOT") or ".", os.getenv("FSTREAM_BUILD") or "build"
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write(string.format([[
      package.path = %q .. "/lua/?.lua;" .. %q .. "/lua/?/init.lua;" .. package.path
      package.preload["fstream.core"] = function()
        return assert(package.loadlib(%q .. "/fstream_core.so", "luaopen_fstream_core"))()
      end
      local fstream = require "fstream"
      local decl, ordered, plain = {}, {}, {}
      for i = 1, 40 do
        decl["f" .. i] = "integer"
        ordered[41 - i] = { ["g" .. i] = "integer" }
      end
      local R, Q = fstream.record("R", decl), fstream.record("Q", ordered)
      local v = {}
      for i = 40, 1, -1 do v["f" .. i] = i; v["g" .. i] = i; plain["k" .. i] = i end
      local order = {}
      for k in pairs(plain) do order[#order + 1] = k end
      io.write(fstream.json.encode(R(v)), "\n", fstream.json.encode(Q(v)), "\n",
        fstream.json.encode(plain), "\n", table.concat(order, ","), "\n")
    ]], root, root, build))
    f:close()
    local runs = {}
    for i = 1, 3 do
      local p = assert(io.popen("lua5.4 " .. script))
      runs[i] = {}
      for line in p:lines() do runs[i][#runs[i] + 1] = line end
      assert(p:close())
    end
    os.remove(script)
    -- the processes really iterate tables differently...
    assert.is_false(runs[1][4] == runs[2][4] and runs[2][4] == runs[3][4], "same pairs() order in 3 processes")
    -- ...and still write the same bytes
    local r, q, p = {}, {}, {}
    for i = 1, 40 do
      r[#r + 1] = string.format('"f%d":%d', i, i)
      q[#q + 1] = string.format('"g%d":%d', 41 - i, 41 - i)
    end
    table.sort(r)
    for i = 1, 40 do p[i] = r[i]:gsub('"f', '"k') end
    for i = 1, 3 do
      assert.are.equal("{" .. table.concat(r, ",") .. "}", runs[i][1])
      assert.are.equal("{" .. table.concat(q, ",") .. "}", runs[i][2])
      assert.are.equal("{" .. table.concat(p, ",") .. "}", runs[i][3])
    end
  end)
end)

describe("a topic's big_integers", function()
  local core = require "fstream.core"
  local text = '{"up":18446744073709551615,"down":-9223372036854775809,"max":9223372036854775807}'

  -- Runs `text` then {"n":1} through an agent on a topic declared with `opts`;
  -- returns the values it saw, the bytes it wrote back out, and its dead letters.
  local function run(id, opts)
    local a = fstream.app(id, { topic_partitions = 1 })
    local src, out = a:topic("in", opts), a:topic("out")
    local seen = {}
    a:agent("fwd", src, function(s)
      for v in s do
        seen[#seen + 1] = v
        out:send { value = v }
      end
    end, { on_error = "dlq" })
    local t = fstream.testing(a)
    t:send_raw(src, text, { key = "k" })
    t:send_raw(src, '{"n":1}', { key = "k" })
    local path = os.tmpname()
    core.redirect_stderr(path)
    t:run()
    core.redirect_stderr(nil)
    os.remove(path)
    local bytes = {}
    for i, m in ipairs(t.rt:outputs(out.id)) do bytes[i] = m.value_bytes end
    local dead = t:messages(id .. "-fwd-dlq")
    local stats = t:stats()
    t:close()
    return seen, bytes, dead, stats
  end

  it("\"float\" (the default) gives the nearest float, as before", function()
    for _, opts in ipairs { {}, { big_integers = "float" } } do
      local seen, bytes, dead = run("bigf", opts)
      assert.are.equal(2, #seen)
      assert.are.equal("float", math.type(seen[1].up))
      assert.are.equal(2.0 ^ 64, seen[1].up)
      assert.are.equal(-(2.0 ^ 63), seen[1].down)
      assert.are.equal(math.maxinteger, seen[1].max)
      assert.are.equal('{"down":-9223372036854776000.0,"max":9223372036854775807,"up":18446744073709552000.0}', bytes[1])
      assert.are.equal(0, #dead)
    end
  end)

  it("\"string\" keeps the digits exactly, and they go back out as JSON strings", function()
    local seen, bytes, dead = run("bigs", { big_integers = "string" })
    assert.are.equal("18446744073709551615", seen[1].up)
    assert.are.equal("-9223372036854775809", seen[1].down)
    assert.are.equal("integer", math.type(seen[1].max))
    assert.are.equal('{"down":"-9223372036854775809","max":9223372036854775807,"up":"18446744073709551615"}', bytes[1])
    assert.are.equal('{"n":1}', bytes[2])
    assert.are.equal(0, #dead)
  end)

  it("\"error\" sends the message through on_error like any decode error; the next goes on", function()
    local seen, bytes, dead, stats = run("bige", { big_integers = "error" })
    assert.are.equal(1, #seen)
    assert.are.equal(1, seen[1].n)
    assert.are.same({ '{"n":1}' }, bytes)
    assert.are.equal(1, #dead)
    assert.matches("integer at byte 6 does not fit in 64 bits: 18446744073709551615", dead[1].headers["fstream-error"])
    assert.are.equal(1, stats.decode_errors)
  end)

  it("applies to JSON keys too, and is part of the topic's declaration", function()
    local a = fstream.app("bigk", { topic_partitions = 1 })
    local src = a:topic("in", { key_serializer = "json", big_integers = "string" })
    local keys = {}
    a:agent("k", src, function(s) for k in s:items() do keys[#keys + 1] = k end end)
    assert.has_error(function() a:topic("in", { key_serializer = "json" }) end,
      "topic 'in' is already declared with other serializers or types")
    assert.has_error(function() a:topic("x", { big_integers = "exact" }) end,
      "topic 'x': big_integers must be \"float\", \"string\" or \"error\", got exact")
    assert.has_error(function() a:table("tb", { big_integers = 1 }) end,
      "table 'tb': big_integers must be \"float\", \"string\" or \"error\", got 1")
    -- a table's JSON values and keys as read back from its store
    a:table("exact", { big_integers = "string" })
    a:table("strict", { big_integers = "error" })
    local exact, strict = a.tables.exact, a.tables.strict
    assert.are.equal("18446744073709551615", rawget(exact, "decode_value")('{"id":18446744073709551615}').id)
    assert.are.equal("-9223372036854775809", rawget(exact, "decode_key")("-9223372036854775809"))
    assert.has_error(function() rawget(strict, "decode_value")('{"id":18446744073709551615}') end,
      "integer at byte 6 does not fit in 64 bits: 18446744073709551615")
    local t = fstream.testing(a)
    t:send_raw(src, '{}', { key = "[18446744073709551616]" })
    t:run()
    assert.are.equal("18446744073709551616", keys[1][1])
    t:close()
  end)
end)
