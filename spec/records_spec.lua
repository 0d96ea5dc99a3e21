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
