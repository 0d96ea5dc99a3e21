-- Cron schedules as cron reads them, and time zones. Expected times come from
-- croniter 6 where it agrees with cronie (crontab(5), cron(8)); the cases where
-- they differ (a day field starting with "*", daylight-saving changes) follow
-- cronie's rules and say so.
local cron = require "fstream.cron"
local tz = require "fstream.tz"

local NOV29 = 1795910400 -- 2026-11-29 00:00 UTC, a Sunday

-- The next n fire times after `from`, as local time and UTC offset in `zone`.
local function fires(spec, from, zone, n)
  local s = cron.parse(spec)
  zone = zone or tz.zone("UTC")
  local out, t = {}, from
  for i = 1, n or 3 do
    t = cron.next_time(s, t, zone)
    local off = zone:offset(t)
    out[i] = os.date("!%Y-%m-%d %H:%M", t + off) .. string.format(" %s%02d%02d", off < 0 and "-" or "+",
      math.abs(off) // 3600, math.abs(off) % 3600 // 60)
  end
  return out
end

-- Same in UTC, without the offset.
local function utc(spec, from, n)
  local out = fires(spec, from, nil, n)
  for i, v in ipairs(out) do out[i] = v:sub(1, 16) end
  return out
end

describe("cron fields", function()
  it("a day field starting with * leaves the other day field alone (cron and croniter: Tuesdays only)", function()
    assert.are.same({ "2026-12-01 12:00", "2026-12-08 12:00", "2026-12-15 12:00" }, utc("0 12 *,10 * 2", NOV29))
  end)

  it("a weekday field starting with * leaves the day of month alone (the 28th only)", function()
    assert.are.same({ "2026-12-28 00:55", "2026-12-28 01:55", "2026-12-28 02:55" }, utc("55 * 28 * *,5", NOV29))
    -- After the last run on the 28th comes the next 28th, not the next day.
    assert.are.same({ "2027-01-28 00:55" }, utc("55 * 28 * *,5", NOV29 + 29 * 86400 + 23 * 3600 + 55 * 60, 1))
  end)

  it("two restricted day fields match either; */N in one of them makes both must match (cronie)", function()
    -- crontab(5)'s example: the 1st and 15th, plus every Friday.
    assert.are.same({ "2026-12-01 04:30", "2026-12-04 04:30", "2026-12-11 04:30", "2026-12-15 04:30" },
      utc("30 4 1,15 * 5", NOV29, 4))
    -- cronie's DOM_STAR: odd days that are Mondays (croniter differs: odd days or Mondays).
    assert.are.same({ "2026-12-07 00:00", "2026-12-21 00:00", "2027-01-11 00:00" }, utc("0 0 */2 * 1", NOV29))
  end)

  it("steps: */15, 5/15, 10-40/10, and N/S always means N to the last value", function()
    assert.are.same({ "2026-11-29 00:15", "2026-11-29 00:30", "2026-11-29 00:45" }, utc("*/15 * * * *", NOV29))
    assert.are.same({ "2026-11-29 00:05", "2026-11-29 00:20", "2026-11-29 00:35" }, utc("5/15 * * * *", NOV29))
    assert.are.same({ "2026-11-29 00:10", "2026-11-29 00:20", "2026-11-29 00:30", "2026-11-29 00:40",
      "2026-11-29 01:10" }, utc("10-40/10 * * * *", NOV29, 5))
    assert.are.same({ "2026-11-29 00:05", "2026-11-29 00:06", "2026-11-29 00:07" }, utc("5/1 * * * *", NOV29))
    assert.are.same({ "2026-11-29 00:05", "2026-11-29 00:07", "2026-11-29 00:09" }, utc("5/2 * * * *", NOV29))
    -- In the weekday field N/S stops at Saturday: Monday, Wednesday, Friday.
    assert.are.same({ "2026-11-30 00:00", "2026-12-02 00:00", "2026-12-04 00:00", "2026-12-07 00:00" },
      utc("0 0 * * 1/2", NOV29, 4))
    assert.are.same({ "2026-12-06 00:00", "2026-12-13 00:00" }, utc("0 0 * * 7/2", NOV29, 2))
  end)

  it("month and weekday names, any case, in lists and ranges; weekday 7 is Sunday", function()
    assert.are.same({ "2026-11-30 09:00", "2026-12-01 09:00", "2026-12-02 09:00" }, utc("0 9 * * MON-FRI", NOV29))
    assert.are.same({ "2027-01-01 00:00", "2027-07-01 00:00", "2028-01-01 00:00" }, utc("0 0 1 jan,Jul *", NOV29))
    assert.are.same({ "2027-01-01 00:00", "2027-03-01 00:00", "2028-01-01 00:00" }, utc("0 0 1 JAN-MAR/2 *", NOV29))
    assert.are.same({ "2026-12-04 00:00", "2026-12-05 00:00", "2026-12-06 00:00" }, utc("0 0 * * fri-sun", NOV29))
    assert.are.same({ "2026-12-06 00:00", "2026-12-13 00:00" }, utc("0 0 * * 7", NOV29, 2))
    assert.are.same({ "2026-12-06 00:00", "2026-12-13 00:00" }, utc("0 0 * * Sun", NOV29, 2))
  end)

  it("@hourly @daily @midnight @weekly @monthly @yearly @annually", function()
    assert.are.same({ "2026-11-29 01:00", "2026-11-29 02:00", "2026-11-29 03:00" }, utc("@hourly", NOV29))
    assert.are.same({ "2026-11-30 00:00", "2026-12-01 00:00", "2026-12-02 00:00" }, utc("@daily", NOV29))
    assert.are.same({ "2026-11-30 00:00", "2026-12-01 00:00", "2026-12-02 00:00" }, utc("@midnight", NOV29))
    assert.are.same({ "2026-12-06 00:00", "2026-12-13 00:00", "2026-12-20 00:00" }, utc("@weekly", NOV29))
    assert.are.same({ "2026-12-01 00:00", "2027-01-01 00:00", "2027-02-01 00:00" }, utc("@monthly", NOV29))
    assert.are.same({ "2027-01-01 00:00", "2028-01-01 00:00", "2029-01-01 00:00" }, utc("@yearly", NOV29))
    assert.are.same({ "2027-01-01 00:00", "2028-01-01 00:00", "2029-01-01 00:00" }, utc("@annually", NOV29))
  end)

  it("rejects @reboot and unknown macros with a message", function()
    assert.has_error(function() cron.parse("@reboot") end,
      "\"@reboot\" is not a schedule: use app:task(fn) to run something once when the worker starts")
    assert.has_error(function() cron.parse("@often") end,
      "\"@often\": unknown macro (use @hourly, @daily, @midnight, @weekly, @monthly, @yearly or @annually)")
    assert.has_error(function() cron.parse("@daily 5") end, '"@daily 5": unknown macro (use @hourly, @daily, '
      .. "@midnight, @weekly, @monthly, @yearly or @annually)")
  end)

  it("rejects malformed fields, naming the field", function()
    local cases = {
      { "1,,2 * * * *", 'bad minute field "1,,2"' },
      { "1, * * * *", 'bad minute field "1,"' },
      { ",1 * * * *", 'bad minute field ",1"' },
      { "* 1,,2 * * *", 'bad hour field "1,,2"' },
      { "* * 5, * *", 'bad day of month field "5,"' },
      { "* * * ,JAN *", 'bad month field ",JAN"' },
      { "* * * * MON,", 'bad day of week field "MON,"' },
      { "*/0 * * * *", 'bad minute field "*/0"' },
      { "*/ * * * *", 'bad minute field "*/"' },
      { "1//2 * * * *", 'bad minute field "1//2"' },
      { "40-10 * * * *", 'bad minute field "40-10"' },
      { "*-5 * * * *", 'bad minute field "*-5"' },
      { "1-2-3 * * * *", 'bad minute field "1-2-3"' },
      { "-1 * * * *", 'bad minute field "-1"' },
      { "* 24 * * *", 'bad hour field "24"' },
      { "* * 0 * *", 'bad day of month field "0"' },
      { "* * 32 * *", 'bad day of month field "32"' },
      { "* * * 13 *", 'bad month field "13"' },
      { "* * * JANUARY *", 'bad month field "JANUARY"' },
      { "* * * * 8", 'bad day of week field "8"' },
      { "* * * * MONDAY", 'bad day of week field "MONDAY"' },
      { "* * * * JAN", 'bad day of week field "JAN"' },
      { "* * MON * *", 'bad day of month field "MON"' },
      { "x * * * *", 'bad minute field "x"' },
      { "~ * * * *", 'bad minute field "~"' },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(cron.parse, c[1])
      assert.is_false(ok, c[1] .. " was accepted")
      assert.are.equal(c[2], err)
    end
  end)

  it("rejects at parse time a schedule whose days never occur", function()
    for _, spec in ipairs { "0 0 31 2 *", "0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 30,31 FEB */7" } do
      assert.has_error(function() cron.parse(spec) end,
        string.format("%q never fires: none of its months has the days of month it names", spec))
    end
    -- With a restricted weekday the day of month is only an alternative: Mondays in February.
    assert.are.same({ "2027-02-01 00:00", "2027-02-08 00:00" }, utc("0 0 31 2 1", NOV29, 2))
  end)

  it("finds rare days far ahead quickly: February 29, also past 2100, and February 29 on a Sunday", function()
    assert.are.same({ "2028-02-29 00:00", "2032-02-29 00:00", "2036-02-29 00:00" }, utc("0 0 29 2 *", NOV29))
    local y2097 = 4007836800 -- 2097-01-01 00:00 UTC
    assert.are.same({ "2104-02-29 00:00", "2108-02-29 00:00" }, utc("0 0 29 2 *", y2097, 2))
    local clock = os.clock()
    -- A weekday field starting with "*" must match too (cronie): Sundays only.
    assert.are.same({ "2032-02-29 00:00", "2060-02-29 00:00", "2088-02-29 00:00", "2128-02-29 00:00" },
      utc("0 0 29 2 */7", NOV29, 4))
    local berlin = {}
    for i, v in ipairs(fires("0 0 29 2 */7", NOV29, tz.zone("Europe/Berlin"), 4)) do berlin[i] = v:sub(1, 10) end
    assert.are.same({ "2032-02-29", "2060-02-29", "2088-02-29", "2128-02-29" }, berlin)
    assert.is_true(os.clock() - clock < 1, "took " .. (os.clock() - clock) .. " s")
  end)

  it("keeps UTC (true) and the C library's local time (nil) as before", function()
    local s = cron.parse("*/5 * * * *")
    assert.are.equal(1700000100, cron.next_time(s, 1700000000, true))
    assert.are.equal(1700000100, cron.next_time(s, 1700000000.5, true))
    -- Times on minutes that exist in every zone agree with UTC in a UTC process.
    if os.date("%z", 0) == "+0000" then assert.are.equal(1700000100, cron.next_time(s, 1700000000)) end
  end)
end)

describe("cron across daylight-saving changes (cronie's rules)", function()
  local berlin, new_york = tz.zone("Europe/Berlin"), tz.zone("America/New_York")
  local BERLIN_SPRING = 1806184800 -- 2027-03-27 22:00 UTC; clocks go 02:00 -> 03:00 at 01:00 UTC on the 28th
  local BERLIN_FALL = 1824933600 -- 2027-10-30 22:00 UTC; clocks go 03:00 -> 02:00 at 01:00 UTC on the 31st
  local NY_SPRING = 1804996800 -- 2027-03-14 04:00 UTC; clocks go 02:00 -> 03:00 at 07:00 UTC
  local NY_FALL = 1825556400 -- 2027-11-07 03:00 UTC; clocks go 02:00 -> 01:00 at 06:00 UTC

  it("a fixed time in the skipped hour runs once, right after the jump (Berlin)", function()
    assert.are.same({ "2027-03-28 03:00 +0200", "2027-03-29 02:30 +0200", "2027-03-30 02:30 +0200" },
      fires("30 2 * * *", BERLIN_SPRING, berlin))
    -- Two skipped runs still make one.
    assert.are.same({ "2027-03-28 03:00 +0200", "2027-03-29 02:00 +0200", "2027-03-29 02:30 +0200" },
      fires("0,30 2 * * *", BERLIN_SPRING, berlin))
    assert.are.same({ "2027-03-28 01:30 +0100", "2027-03-28 03:00 +0200", "2027-03-28 03:30 +0200" },
      fires("30 1-3 * * *", BERLIN_SPRING, berlin))
  end)

  it("a schedule with * in its minute or hour field skips the hour that does not exist (Berlin)", function()
    assert.are.same({ "2027-03-28 00:00 +0100", "2027-03-28 01:00 +0100", "2027-03-28 03:00 +0200",
      "2027-03-28 04:00 +0200" }, fires("0 * * * *", BERLIN_SPRING, berlin, 4))
    assert.are.same({ "2027-03-28 00:00 +0100", "2027-03-28 01:00 +0100", "2027-03-28 03:00 +0200" },
      fires("@hourly", BERLIN_SPRING, berlin))
    assert.are.same({ "2027-03-29 02:00 +0200", "2027-03-29 02:20 +0200" }, fires("*/20 2 * * *", BERLIN_SPRING, berlin, 2))
  end)

  it("a fixed time in the repeated hour runs once, the first time (Berlin)", function()
    assert.are.same({ "2027-10-31 02:30 +0200", "2027-11-01 02:30 +0100" }, fires("30 2 * * *", BERLIN_FALL, berlin, 2))
    assert.are.same({ "2027-10-31 02:00 +0200", "2027-10-31 02:30 +0200", "2027-11-01 02:00 +0100" },
      fires("0,30 2 * * *", BERLIN_FALL, berlin))
    assert.are.same({ "2027-10-31 03:00 +0100", "2027-11-01 03:00 +0100" }, fires("0 3 * * *", BERLIN_FALL, berlin, 2))
  end)

  it("a schedule with * in its minute or hour field runs in both passes of the repeated hour (Berlin)", function()
    assert.are.same({ "2027-10-31 01:00 +0200", "2027-10-31 02:00 +0200", "2027-10-31 02:00 +0100",
      "2027-10-31 03:00 +0100" }, fires("0 * * * *", BERLIN_FALL, berlin, 4))
    assert.are.same({ "2027-10-31 02:00 +0200", "2027-10-31 02:30 +0200", "2027-10-31 02:00 +0100",
      "2027-10-31 02:30 +0100", "2027-11-01 02:00 +0100" }, fires("*/30 2 * * *", BERLIN_FALL, berlin, 5))
  end)

  it("New York: 02:30 runs at 03:00 in spring; 01:30 runs once and hourly runs twice in the fall", function()
    assert.are.same({ "2027-03-14 03:00 -0400", "2027-03-15 02:30 -0400" }, fires("30 2 * * *", NY_SPRING, new_york, 2))
    assert.are.same({ "2027-03-14 00:00 -0500", "2027-03-14 01:00 -0500", "2027-03-14 03:00 -0400" },
      fires("0 * * * *", NY_SPRING, new_york))
    assert.are.same({ "2027-11-07 01:30 -0400", "2027-11-08 01:30 -0500" }, fires("30 1 * * *", NY_FALL, new_york, 2))
    assert.are.same({ "2027-11-07 00:00 -0400", "2027-11-07 01:00 -0400", "2027-11-07 01:00 -0500",
      "2027-11-07 02:00 -0500" }, fires("0 * * * *", NY_FALL, new_york, 4))
    -- 02:30 exists once on that day in New York.
    assert.are.same({ "2027-11-07 02:30 -0500" }, fires("30 2 * * *", NY_FALL, new_york, 1))
    -- Midnight is never touched.
    assert.are.same({ "2027-11-07 00:00 -0400", "2027-11-08 00:00 -0500" }, fires("@daily", NY_FALL, new_york, 2))
  end)

  it("Lord Howe moves by half an hour: 02:15 runs at 02:30, */15 skips the half hour", function()
    local lord_howe = tz.zone("Australia/Lord_Howe")
    local oct2 = 1822489200 -- 2027-10-02 15:00 UTC; clocks go 02:00 -> 02:30 at 15:30 UTC
    assert.are.same({ "2027-10-03 02:30 +1100", "2027-10-04 02:15 +1100" }, fires("15 2 * * *", oct2, lord_howe, 2))
    assert.are.same({ "2027-10-03 01:45 +1030", "2027-10-03 02:30 +1100", "2027-10-03 02:45 +1100" },
      fires("*/15 * * * *", oct2, lord_howe))
  end)

  it("a shift of more than three hours is the zone's new time, not daylight saving (Samoa skipped 2011-12-30)", function()
    local apia = tz.zone("Pacific/Apia")
    local dec29 = 1325116800 -- 2011-12-29 00:00 UTC
    assert.are.same({ "2011-12-29 12:00 -1000", "2011-12-31 12:00 +1400" }, fires("0 12 * * *", dec29, apia, 2))
  end)

  it("the C library's local time (TZ) follows the same rules", function()
    local root = os.getenv("FSTREAM_ROOT") or "."
    local script = "package.path = '" .. root .. "/lua/?.lua;' .. package.path "
      .. "local cron = require 'fstream.cron' "
      .. "for _, spec in ipairs { '30 2 * * *', '0 * * * *' } do local t = " .. BERLIN_SPRING .. " "
      .. "for _ = 1, 4 do t = cron.next_time(cron.parse(spec), t); io.write(os.date('!%d %H:%M,', t)) end end"
    local p = io.popen("TZ=Europe/Berlin lua5.4 -e \"" .. script .. "\" 2>&1")
    local out = p:read("a")
    p:close()
    assert.are.equal("28 01:00,29 00:30,30 00:30,31 00:30,27 23:00,28 00:00,28 01:00,28 02:00,", out)
  end)
end)

describe("time zones", function()
  it("reads IANA zones from tzdata: offsets on both sides of each change", function()
    local berlin = tz.zone("Europe/Berlin")
    assert.are.equal(3600, berlin:offset(1806195599)) -- 2027-03-28 00:59:59 UTC
    assert.are.equal(7200, berlin:offset(1806195600)) -- 01:00:00 UTC
    assert.are.same({ 1806195600, 1824944400, 7200, 3600 }, { berlin:period(1806195600) })
    -- Past the file's table, its POSIX footer: 2200-03-30 01:00 UTC.
    local start, _, off, prev = berlin:period(7265725200)
    assert.are.same({ 7265725200, 7200, 3600 }, { start, off, prev })
    local kolkata = tz.zone("Asia/Kolkata")
    assert.are.equal(19800, kolkata:offset(NOV29))
    local _, stop = kolkata:period(NOV29)
    assert.are.equal(math.huge, stop)
    -- Southern hemisphere: Sydney's summer time spans the new year.
    assert.are.equal(39600, tz.zone("Australia/Sydney"):offset(NOV29))
  end)

  it("reads POSIX TZ rules (the TZif footer), also half-hour and southern ones", function()
    local us = tz.posix("EST5EDT,M3.2.0,M11.1.0")
    assert.are.same({ 1805007600, 1825567200, -14400, -18000 }, { us:period(1805100000) }) -- 2027-03-14 07:00 UTC .. 2027-11-07 06:00 UTC
    local lord_howe = tz.posix("<+1030>-10:30<+11>-11,M10.1.0,M4.1.0")
    assert.are.equal(39600, lord_howe:offset(NOV29))
    assert.are.equal(37800, lord_howe:offset(NOV29 + 180 * 86400))
    assert.are.same({ std = -10800 }, tz.parse_posix("<-03>3"))
    -- RFC 8536's daylight saving all year: the end of one year is the start of the next.
    local always = tz.posix("EST5EDT,0/0,J365/25")
    for _, u in ipairs { NOV29, NOV29 + 40 * 86400, NOV29 + 200 * 86400, NOV29 + 3000 * 86400 } do
      assert.are.equal(-14400, always:offset(u))
    end
    for _, bad in ipairs { "", "5", "EST", "EST5EDT", "EST5EDT,M3.2.0", "EST5EDT,M13.2.0,M11.1.0", "EST5EDT,M3.2.0,M11.1.0x" } do
      assert.has_error(function() tz.parse_posix(bad) end)
    end
  end)

  it("agrees with a zone known only by its offsets (how the C library's local time is read)", function()
    local berlin = tz.zone("Europe/Berlin")
    local probed = tz.from_offsets("probe", function(u) return berlin:offset(u) end)
    for _, spec in ipairs { "30 2 * * *", "0 * * * *", "*/20 2 * * *", "0 0 29 2 *" } do
      assert.are.same(fires(spec, NOV29, berlin, 30), fires(spec, NOV29, probed, 30))
    end
  end)

  it("names an unknown or malformed zone, and a file that is not TZif", function()
    assert.has_error(function() tz.zone("Europe/Berln") end,
      'unknown time zone "Europe/Berln" (not in /usr/share/zoneinfo; IANA names look like "Europe/Berlin")')
    assert.has_error(function() tz.zone("../../etc/passwd") end,
      'unknown time zone "../../etc/passwd" (IANA names look like "Europe/Berlin")')
    assert.has_error(function() tz.zone("/etc/passwd") end,
      'unknown time zone "/etc/passwd" (IANA names look like "Europe/Berlin")')
    assert.has_error(function() tz.zone("Europe") end, 'unknown time zone "Europe" (/usr/share/zoneinfo/Europe is not a file)')
    assert.has_error(function() tz.parse_tzif("TZif2 garbage", "x") end, "x is not a usable TZif file (truncated)")
    assert.has_error(function() tz.parse_tzif("#!/bin/sh\n", "y") end, "y is not a usable TZif file (no TZif header)")
  end)
end)
