-- Event times of windowed tables: exact, or refused through the agent's
-- on_error policy. Expected epoch values were computed independently with
-- Python's datetime (fromisoformat(s).replace(tzinfo=utc).timestamp(), and
-- n / 10**k for the units) and are written here as literals.
local fstream = require "fstream"
local core = require "fstream.core"
local window = require "fstream.window"
local isotime = require "fstream.isotime"

-- fn must raise an error whose text contains `text`.
local function raises(text, fn)
  local ok, err = pcall(fn)
  assert.is_false(ok)
  assert.is_truthy(tostring(err):find(text, 1, true), tostring(err))
end

local quietly = require "spec.support.stderr"

local VALID = {
  { "2024-06-27T15:43:43", 1719503023 },
  { "2024-06-27", 1719446400 },                        -- date only: midnight UTC
  { "2024-06-27T15:43", 1719502980 },                  -- hh:mm
  { "2024-06-27T15", 1719500400 },                     -- hh
  { "2024-06-27T15:43:43+02", 1719495823 },            -- offset in hours
  { "2024-06-27T15:43:43,5", 1719503023.5 },           -- comma fraction
  { "20240627T154343", 1719503023 },                   -- basic form
  { "20240627T154343+0200", 1719495823 },
  { "20240627T1543", 1719502980 },
  { "20240627T15", 1719500400 },
  { "20240627", 1719446400 },
  { "2024-06-27T15:43:43+0200", 1719495823 },          -- strftime's %z
  { "2024-06-27 15:43:43", 1719503023 },               -- a space for the T (RFC 3339, Python)
  { "2024-06-27t15:43:43z", 1719503023 },              -- RFC 3339 allows lower case
  { "2024-06-27T15:43:43Z", 1719503023 },
  { "2024-06-27T15:43:43-00:00", 1719503023 },
  { "2024-06-27T15:43:43.315342", 1719503023.315342 },
  { "2024-06-27T15:43:43.3153429", 1719503023.315342 },    -- beyond microseconds: truncated
  { "2024-06-27T15:43:43.315342999999", 1719503023.315342 },
  { "2024-06-27T15:43:43.000001", 1719503023.000001 },
  { "2024-06-27T15:43:59.999999", 1719503039.999999 },     -- never rounded into the next second
  { "2024-06-27T15:43:43.1+02:00", 1719495823.1 },
  { "2024-06-27T15:43:43.5-05:30", 1719522823.5 },
  { "2024-02-29T12:00:00Z", 1709208000 },
  { "2000-02-29", 951782400 },
  { "1970-01-01T00:00:00Z", 0 },
  { "1970-01-01T01:00:00+01:00", 0 },
  { "2024-06-27T00:30:00+01:00", 1719444600 },             -- the offset crosses midnight
  { "2024-12-31T23:30:00-01:00", 1735691400 },             -- and the year
  { "9999-12-31T23:59:59.999999Z", 253402300800.0 },
}

local INVALID = {
  "2024-06-27T15:43:4312",          -- was read as 15:43:55
  "2024-02-30",                     -- was March 1
  "2023-02-29",
  "2024-04-31",
  "2024-13-01",                     -- was 2025
  "2024-00-10",
  "2024-06-00",
  "2024-06-27T24:00",
  "2024-06-27T24:00:00",
  "2024-06-27T25:00:00",
  "2024-06-27T15:61:00",
  "2024-06-27T15:60",
  "2024-06-27T15:43:60",            -- leap second (Python refuses it too)
  "2024-06-27T15:43:61",
  "2024-06-27T15:43:43+24:00",
  "2024-06-27T15:43:43+99:99",
  "2024-06-27T15:43:43+02:60",
  "2024-06-27T15:43:43+2",
  "2024-06-27T15:43:43+02:0",
  "2024-06-27T15:43:43+02:00:30",   -- offset seconds are not ISO 8601
  "2024-06-27T15:43:43 +02:00",
  "2024-06-27T15:43:43.",
  "2024-06-27T15:43:43.5.5",
  "2024-06-27T15:43.5",             -- fraction of a minute
  "2024-06-27T15:4343",
  "2024-06-27T154",
  "2024-06-27T",
  "2024-06-27x15:43",
  "2024-06-27+02:00",
  "2024-06-27Z",
  "2024-06-27T15:43:43ZZ",
  "2024-06-27T15:43:43Z ",
  " 2024-06-27",
  "2024-0627",
  "202406-27",
  "2024-06",
  "2024-W26-4",
  "+2024-06-27",
  "0000-01-01",
  "1719503023",
  "yesterday",
  "",
  "1969-12-31T23:59:59Z",           -- before 1970: outside the accepted years
  "1970-01-01T00:30:00+01:00",
}

describe("ISO-8601 event times", function()
  it("reads every valid form to its exact epoch value", function()
    for _, c in ipairs(VALID) do
      local v, err = window.parse_time(c[1])
      assert.are.equal(c[2], v, c[1] .. ": " .. tostring(err))
    end
  end)

  it("refuses invalid or out-of-range text with the reason", function()
    for _, s in ipairs(INVALID) do
      local v, err = window.parse_time(s)
      assert.is_nil(v, string.format("%q was read as %s", s, tostring(v)))
      assert.is_string(err)
    end
    assert.matches("day out of range", select(2, isotime.parse("2024-02-30")))
    assert.matches("leap second", select(2, isotime.parse("2024-06-27T15:43:60")))
    assert.matches("zone offset out of range", select(2, isotime.parse("2024-06-27T15:43:43+24:00")))
    assert.matches("outside the years 1970..9999", select(2, window.parse_time("1969-12-31T23:59:59Z")))
  end)

  it("returns whole seconds as an integer", function()
    assert.are.equal("integer", math.type(window.parse_time("2024-06-27T15:43:43+02:00")))
  end)
end)

describe("numeric event times", function()
  it("reads the unit it is told, exactly", function()
    assert.are.equal(1719503023.315342, window.parse_time(1719503023.315342, "s"))
    assert.are.equal(1719503023, window.parse_time(1719503023, "s"))
    assert.are.equal(1719503023.315, window.parse_time(1719503023315, "ms"))
    assert.are.equal(1719503023.315342, window.parse_time(1719503023315342, "us"))
    assert.are.equal(1719503023.315343, window.parse_time(1719503023315342999, "ns"))
    assert.are.equal(1719503.023315342, window.parse_time(1719503023315342, "ns"))
    assert.are.equal(1.0, window.parse_time(1000, "ms"))   -- a told unit is never guessed over
  end)

  it("without a unit reads seconds, or milliseconds above 1e11", function()
    assert.are.equal(1719503023, window.parse_time(1719503023))
    assert.are.equal(1719503023.5, window.parse_time(1719503023500))
  end)

  it("refuses times outside 1970..9999, whatever the unit", function()
    -- A microsecond epoch read as milliseconds lands in the year ~56,000.
    local v, err = window.parse_time(1719503023315342)
    assert.is_nil(v)
    assert.matches("outside the years 1970..9999", err)
    assert.matches("unit", err)
    assert.is_nil(window.parse_time(1719503023315, "s"))
    assert.is_nil(window.parse_time(-1))
    assert.is_nil(window.parse_time(-1, "ms"))
    assert.is_nil(window.parse_time(253402300801, "s"))
    assert.are.equal(253402300799, window.parse_time(253402300799, "s"))
    assert.is_nil(window.parse_time(253402300800001, "ms"))
    assert.is_nil(window.parse_time(1e300, "s"))
    assert.is_nil(window.parse_time(-1e300))
  end)

  it("refuses nan and infinities", function()
    for _, unit in ipairs { false, "s", "ms", "us", "ns" } do
      for _, x in ipairs { 0 / 0, math.huge, -math.huge } do
        local v, err = window.parse_time(x, unit or nil)
        assert.is_nil(v, tostring(x) .. " " .. tostring(unit))
        assert.matches("not a finite number", err)
      end
    end
  end)

  it("refuses other types", function()
    assert.is_nil(window.parse_time(true))
    assert.is_nil(window.parse_time({}))
    assert.is_nil(window.parse_time(nil))
  end)
end)

-- An app with one tumbling 10 s table on field "ts"; the agent counts per key.
local function counting_app(id, opts)
  opts = opts or {}
  local a = fstream.app(id, { topic_partitions = 1 })
  local closed, late = {}, {}
  local ev = a:topic("ev", opts.topic)
  local tb = a:table("w", {
    default = 0,
    on_window_close = function(key, win, value) closed[#closed + 1] = { key, win.start, value } end,
    on_late = function(key) late[#late + 1] = key end,
  }):tumbling(10, opts.window or { expires = 0 })
  if opts.time ~= "stream" then tb:relative_to_field("ts", opts.field) end
  local seen = {}
  a:agent("agg", ev, function(stream)
    for v in stream do
      tb:update("k", function(c) return c + 1 end)
      seen[#seen + 1] = v.n
    end
  end, { on_error = opts.on_error or "log" })
  local t = fstream.testing(a)
  return t, ev, closed, late, tb, seen
end

describe("an event whose time is invalid", function()
  it("under on_error = log is logged, skipped and counted in no window", function()
    local t, ev, closed, late, tb, seen = counting_app("badlog")
    t:send(ev, { key = "k", value = { ts = "2024-06-27T15:43:41", n = 0 } })
    for i, s in ipairs(INVALID) do t:send(ev, { key = "k", value = { ts = s, n = i } }) end
    t:send(ev, { key = "k", value = { ts = 1719503023315342, n = 100 } })   -- no unit: year ~56,000
    t:send(ev, { key = "k", value = { ts = "2024-06-27T15:43:45", n = 101 } })
    t:send(ev, { key = "k", value = { ts = "2024-06-27T15:44:05", n = 102 } })
    local log = quietly(function() t:run() end)
    assert.are.same({ 0, 101, 102 }, seen)
    assert.are.same({ { "k", 1719503020, 2 } }, closed)   -- both valid events, no other
    assert.are.same({}, late)
    assert.are.equal(0, require("fstream.table").state(tb).window.late)
    assert.matches("agent agg failed: .*field 'ts': invalid ISO%-8601 time \"2024%-02%-30\": day out of range", log)
    assert.matches("1719503023315342 is outside the years 1970..9999", log)
    t:close()
  end)

  it("under on_error = dlq lands in the dead-letter topic with the reason", function()
    local t, ev, closed, _, _, seen = counting_app("baddlq", { on_error = "dlq" })
    t:send(ev, { key = "k", value = { ts = 100, n = 1 } })
    t:send(ev, { key = "k", value = { ts = "2024-13-01", n = 2 } })
    t:send(ev, { key = "k", value = { ts = "2024-06-27T15:43:43+99:99", n = 3 } })
    t:send(ev, { key = "k", value = { ts = 105, n = 4 } })
    t:send(ev, { key = "k", value = { ts = 120, n = 5 } })
    quietly(function() t:run() end)
    assert.are.same({ 1, 4, 5 }, seen)
    assert.are.same({ { "k", 100, 2 } }, closed)
    local dead = t:messages("baddlq-agg-dlq")
    assert.are.equal(2, #dead)
    assert.are.same({ n = 2, ts = "2024-13-01" }, core.json.decode(dead[1].value))
    assert.matches("month out of range", dead[1].headers["fstream-error"])
    assert.matches("zone offset out of range", dead[2].headers["fstream-error"])
    t:close()
  end)

  it("nan or an infinity is refused", function()
    -- JSON has no nan: a custom codec hands the agent one.
    local codec = {
      encode = function(v) return tostring(v.ts) end,
      decode = function(b)
        local x = ({ nan = 0 / 0, inf = math.huge, ["-inf"] = -math.huge })[b] or tonumber(b)
        return { ts = x, n = b }
      end,
    }
    local t, ev, closed, _, _, seen = counting_app("badnan", { topic = { value_serializer = codec } })
    for _, b in ipairs { "100", "nan", "inf", "-inf", "101", "130" } do t:send(ev, { key = "k", value = { ts = b } }) end
    local log = quietly(function() t:run() end)
    assert.are.same({ "100", "101", "130" }, seen)
    assert.are.same({ { "k", 100, 2 } }, closed)
    assert.matches("not a finite number", log)
    t:close()
  end)
end)

describe("relative_to_field with a unit", function()
  it("puts a microsecond epoch in its window", function()
    local t, ev, closed, late = counting_app("unitus", { field = { unit = "us" } })
    for _, us in ipairs { 1719503023315342, 1719503029999999, 1719503030000000, 1719503050000000 } do
      t:send(ev, { key = "k", value = { ts = us } })
    end
    t:run()
    assert.are.same({ { "k", 1719503020, 2 }, { "k", 1719503030, 1 } }, closed)
    assert.are.same({}, late)
    t:close()
  end)

  it("puts millisecond and nanosecond epochs in their windows", function()
    for _, c in ipairs { { "ms", 1000 }, { "ns", 1000000000 } } do
      local t, ev, closed = counting_app("unit" .. c[1], { field = { unit = c[1] } })
      for _, s in ipairs { 1719503015, 1719503019, 1719503031 } do
        t:send(ev, { key = "k", value = { ts = s * c[2] } })
      end
      t:run()
      assert.are.same({ { "k", 1719503010, 2 } }, closed, c[1])
      t:close()
    end
  end)

  it("refuses an unknown unit or option when the table is declared", function()
    local a = fstream.app("unitbad", { topic_partitions = 1 })
    local tb = a:table("w", { default = 0 }):tumbling(10)
    raises('relative_to_field: unit must be "s", "ms", "us" or "ns"',
      function() tb:relative_to_field("ts", { unit = "minutes" }) end)
    raises("relative_to_field: unknown option 'units'", function() tb:relative_to_field("ts", { units = "s" }) end)
  end)
end)

describe("an event time far ahead of the clock", function()
  it("a year-56000 time without a unit does not close the open windows", function()
    local t, ev, closed, late, _, seen = counting_app("y56k")
    t:send(ev, { key = "k", value = { ts = 1719503023, n = 1 } })
    t:send(ev, { key = "k", value = { ts = 1719503023315342, n = 2 } })
    t:send(ev, { key = "k", value = { ts = 1719503025, n = 3 } })
    quietly(function() t:run() end)
    t:advance(2)
    assert.are.same({}, closed)
    t:send(ev, { key = "k", value = { ts = 1719503031, n = 4 } })
    t:run()
    assert.are.same({ 1, 3, 4 }, seen)
    assert.are.same({ { "k", 1719503020, 2 } }, closed)
    assert.are.same({}, late)
    t:close()
  end)

  it("beyond max_future (default one day) is refused; the windows stay open, later events are not late", function()
    local t, ev, closed, late, tb, seen = counting_app("future")
    local now = math.floor(t:now())
    local base = now - now % 10 - 100         -- a window 100 s ago
    t:send(ev, { key = "k", value = { ts = base + 1, n = 1 } })
    t:send(ev, { key = "k", value = { ts = now + 10 * 365 * 86400, n = 2 } })  -- ten years ahead
    t:send(ev, { key = "k", value = { ts = now + 86400 + 60, n = 3 } })        -- just over a day
    t:send(ev, { key = "k", value = { ts = base + 2, n = 4 } })
    local log = quietly(function() t:run() end)
    t:advance(2)
    assert.are.same({}, closed)
    assert.matches("event time [%d.]+ is %d+ s ahead of the clock %(max_future = 86400 s%)", log)
    t:send(ev, { key = "k", value = { ts = now + 3600, n = 5 } })              -- within a day: fine
    t:run()
    assert.are.same({ 1, 4, 5 }, seen)
    assert.are.same({ { "k", base, 2 } }, closed)
    assert.are.same({}, late)
    assert.are.equal(0, require("fstream.table").state(tb).window.late)
    t:close()
  end)

  it("max_future is the table's option and follows the runtime's clock", function()
    local t, ev, _, _, _, seen = counting_app("future60", { window = { expires = 0, max_future = 60 } })
    local now = t:now()
    t:send(ev, { key = "k", value = { ts = now + 120, n = 1 } })   -- refused: 120 s ahead
    t:send(ev, { key = "k", value = { ts = now + 30, n = 2 } })
    quietly(function() t:run() end)
    assert.are.same({ 2 }, seen)
    t:advance(100)                                                  -- now + 120 is within 60 s of the clock
    t:send(ev, { key = "k", value = { ts = now + 120, n = 3 } })
    t:run()
    assert.are.same({ 2, 3 }, seen)
    t:close()
  end)

  it("max_future = math.huge lets any time in 1970..9999 through", function()
    local t, ev, _, _, _, seen = counting_app("futureoff", { window = { expires = 0, max_future = math.huge } })
    t:send(ev, { key = "k", value = { ts = "9000-01-01T00:00:00Z", n = 1 } })
    t:run()
    assert.are.same({ 1 }, seen)
    t:close()
  end)

  it("applies to message timestamps (relative_to_stream) as well", function()
    local t, ev, closed, _, _, seen = counting_app("futurets", { time = "stream" })
    local now = math.floor(t:now())
    local base = now - now % 10 - 100
    t:send(ev, { key = "k", value = { n = 1 }, timestamp = base + 1 })
    t:send(ev, { key = "k", value = { n = 2 }, timestamp = now + 365 * 86400 })
    t:send(ev, { key = "k", value = { n = 3 }, timestamp = base + 2 })
    quietly(function() t:run() end)
    t:advance(2)
    assert.are.same({ 1, 3 }, seen)
    assert.are.same({}, closed)
    t:close()
  end)

  it("refuses a bad max_future when the table is declared", function()
    local a = fstream.app("futurebad", { topic_partitions = 1 })
    raises("max_future must be a number of seconds >= 0 (math.huge: no bound)",
      function() a:table("w", { default = 0 }):tumbling(10, { max_future = -1 }) end)
    raises("max_future must be a number of seconds >= 0 (math.huge: no bound)",
      function() a:table("w2", { default = 0 }):tumbling(10, { max_future = 0 / 0 }) end)
  end)
end)
