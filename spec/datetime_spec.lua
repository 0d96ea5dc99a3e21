-- Record fields of type datetime (Faust's isodates): ISO-8601 text or epoch
-- seconds in JSON, epoch seconds in Lua, ISO-8601 UTC text when encoded.
local fstream = require "fstream"
local core = require "fstream.core"

local Visit = fstream.record("Visit", { { user = "string" }, { at = "datetime" }, { left = "datetime?" } })

describe("a datetime field", function()
  it("reads ISO-8601 text with an offset, Z or a fraction as epoch seconds", function()
    assert.are.equal(1719489600, Visit { user = "u", at = "2024-06-27T12:00:00Z" }.at)
    assert.are.equal(1719489600, Visit { user = "u", at = "2024-06-27T14:00:00+02:00" }.at)
    assert.are.equal(1719489600.25, Visit { user = "u", at = "2024-06-27T12:00:00.25Z" }.at)
    assert.are.equal(1719446400, Visit { user = "u", at = "2024-06-27" }.at)
    assert.is_nil(Visit { user = "u", at = 0 }.left)
  end)

  it("takes an epoch number of seconds as it is, integer or float", function()
    assert.are.equal(1719489600, Visit { user = "u", at = 1719489600 }.at)
    assert.are.equal(math.type(1), math.type(Visit { user = "u", at = 1719489600 }.at))
    assert.are.equal(1719489600.5, Visit { user = "u", at = 1719489600.5 }.at)
    assert.are.equal(-86400, Visit { user = "u", at = "1969-12-31T00:00:00Z" }.at)
  end)

  it("refuses what is not a time, naming the field and the reason", function()
    assert.has_error(function() Visit { user = "u", at = "2024-02-30T00:00:00Z" } end,
      'Visit.at: invalid ISO-8601 time "2024-02-30T00:00:00Z": day out of range for the month')
    assert.has_error(function() Visit { user = "u", at = "yesterday" } end,
      'Visit.at: invalid ISO-8601 time "yesterday": expected a date YYYY-MM-DD or YYYYMMDD')
    assert.has_error(function() Visit { user = "u", at = true } end,
      "Visit.at: expected datetime (ISO-8601 text or epoch seconds), got boolean")
    assert.has_error(function() Visit { user = "u", at = 1e300 } end,
      "Visit.at: datetime float 1e+300 is outside the years 0001..9999")
    assert.has_error(function() Visit { user = "u", at = 0 / 0 } end)
  end)

  it("is encoded as ISO-8601 UTC text, to the microsecond when it has a fraction", function()
    assert.are.equal('{"user":"u","at":"2024-06-27T12:00:00Z"}',
      core.json.encode(Visit { user = "u", at = "2024-06-27T14:00:00+02:00" }))
    assert.are.equal('{"user":"u","at":"2024-06-27T12:00:00.250000Z","left":"1969-12-31T23:59:59Z"}',
      core.json.encode(Visit { user = "u", at = 1719489600.25, left = -1 }))
    assert.are.equal('{"user":"u","at":"0001-01-01T00:00:00Z"}',
      core.json.encode(Visit { user = "u", at = "0001-01-01T00:00:00Z" }))
    assert.are.equal('{"user":"u","at":"9999-12-31T23:59:59Z"}',
      core.json.encode(Visit { user = "u", at = "9999-12-31T23:59:59Z" }))
    assert.are.equal('{"user":"u","at":"2024-06-27T23:59:59.999999Z"}',
      core.json.encode(Visit { user = "u", at = "2024-06-27T23:59:59.999999Z" }))
    -- A number put in by hand after validation that no ISO-8601 text can hold.
    local v = Visit { user = "u", at = 0 }
    v.at = 1e13
    local ok, err = pcall(core.json.encode, v)
    assert.is_false(ok)
    assert.matches("cannot encode datetime 10000000000000%.0: outside the years 0001..9999", err)
  end)

  it("round-trips: what is encoded decodes to the same epoch seconds", function()
    for _, t in ipairs { 0, 1719489600, 1719489600.123456, -1234567.5, 253402300799 } do
      local text = core.json.encode(Visit { user = "u", at = t })
      assert.are.equal(t, Visit(core.json.decode(text)).at)
    end
  end)
end)

describe("a topic of records with datetime fields", function()
  it("validates incoming text and numbers, and sends ISO-8601 text", function()
    local app = fstream.app("dt-topic", { broker = "memory://" })
    local visits = app:topic("visits", { value_type = Visit })
    local out = app:topic("visits-out", { value_type = Visit })
    local seen = {}
    app:agent("copy", visits, function(stream)
      for v in stream do
        seen[#seen + 1] = v.at
        out:send { value = v }
      end
    end, { on_error = "log" })
    local t = fstream.testing(app)
    t:send("visits", { user = "a", at = "2024-06-27T12:00:00.5+00:00" })
    t:send("visits", { user = "b", at = 1719489601 })
    t:send("visits", { user = "c", at = "2024-13-01" })
    t:run()
    assert.are.same({ 1719489600.5, 1719489601 }, seen)
    local outs = t.rt:outputs(out.id)
    assert.are.equal(2, #outs)
    assert.are.equal('{"user":"a","at":"2024-06-27T12:00:00.500000Z"}', outs[1].value_bytes)
    assert.are.equal('{"user":"b","at":"2024-06-27T12:00:01Z"}', outs[2].value_bytes)
  end)
end)
