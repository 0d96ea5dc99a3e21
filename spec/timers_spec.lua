-- Tasks, timers and fstream.sleep on the fake clock of fstream.testing.
local fstream = require "fstream"

describe("timers and tasks", function()
  local t
  after_each(function() if t then t:close(); t = nil end end)

  it("a task runs once at start", function()
    local a = fstream.app("task1", { topic_partitions = 1 })
    local runs = 0
    a:task(function() runs = runs + 1 end)
    t = fstream.testing(a)
    t:run()
    t:advance(10)
    assert.are.equal(1, runs)
  end)

  it("a timer fires every interval of the fake clock, first after one interval", function()
    local a = fstream.app("timer1", { topic_partitions = 1 })
    local at = {}
    local start
    a:timer(3.0, function() at[#at + 1] = t:now() - start end)
    t = fstream.testing(a)
    start = t:now()
    t:run()
    assert.are.equal(0, #at)
    t:advance(10)
    assert.are.equal(3, #at)
    assert.are.same({ 3.0, 6.0, 9.0 }, at)
  end)

  -- A reload hands the new version's timer the old one's next due time (rt:carry).
  it("a timer keeps the rhythm carried over from the previous version", function()
    local a = fstream.app("timer2", { topic_partitions = 1 })
    local at = {}
    local start
    a:timer(3.0, function() at[#at + 1] = t:now() - start end)
    t = fstream.testing(a)
    start = t:now()
    t.rt:carry("timer/3/1", start + 1)
    t:advance(8)
    assert.are.same({ 1.0, 4.0, 7.0 }, at)
  end)

  it("a timer that raises is logged and keeps firing", function()
    local a = fstream.app("timer2", { topic_partitions = 1 })
    local n = 0
    a:timer(1.0, function() n = n + 1; if n == 1 then error("first tick fails") end end)
    t = fstream.testing(a)
    local core = require "fstream.core"
    local path = os.tmpname()
    core.redirect_stderr(path)
    t:advance(3)
    core.redirect_stderr(nil)
    local log = io.open(path):read("a")
    os.remove(path)
    assert.are.equal(3, n)
    assert.matches("timer at spec/timers_spec.lua:%d+ failed: spec/timers_spec.lua:%d+: first tick fails", log)
  end)

  it("a timer can send to a topic that an agent consumes", function()
    local a = fstream.app("timer3", { topic_partitions = 2 })
    local ticks = a:topic("ticks")
    local got = {}
    a:agent("c", ticks, function(s) for v in s do got[#got + 1] = v end end)
    local i = 0
    a:timer(1.0, function() i = i + 1; ticks:send { key = "t", value = i } end)
    t = fstream.testing(a)
    t:advance(5)
    assert.are.same({ 1, 2, 3, 4, 5 }, got)
  end)

  it("fstream.sleep suspends one coroutine while others run", function()
    local a = fstream.app("sleep1", { topic_partitions = 1 })
    local order = {}
    local slow, fast = a:topic("slow"), a:topic("fast")
    a:agent("s", slow, function(s)
      for v in s do fstream.sleep(5); order[#order + 1] = "slow " .. v end
    end)
    a:agent("f", fast, function(s)
      for v in s do order[#order + 1] = "fast " .. v end
    end)
    t = fstream.testing(a)
    t:send(slow, 1)
    t:send(fast, 2)
    t:run()
    assert.are.same({ "fast 2" }, order)
    t:advance(5)
    assert.are.same({ "fast 2", "slow 1" }, order)
  end)
end)

describe("offsets", function()
  local t
  after_each(function() if t then t:close(); t = nil end end)

  it("are committable only up to the oldest event some agent still holds", function()
    local a = fstream.app("offs1", { topic_partitions = 1 })
    local src = a:topic("src")
    a:agent("quick", src, function(s) for _ in s do end end)
    a:agent("slow", src, function(s) for _ in s do fstream.sleep(10) end end)
    t = fstream.testing(a)
    for i = 1, 3 do t:send(src, i) end
    t:run()
    local p = function() return t:stats().topics.src.partitions[0].committable end
    -- "slow" is still on offset 0; "quick" finished all three.
    assert.are.equal(0, p())
    t:advance(10) -- slow finishes offset 0 and asks for the next
    assert.are.equal(1, p())
    t:advance(20)
    assert.are.equal(3, p())
  end)

  it("an event is acknowledged when its agent asks for the next one", function()
    local a = fstream.app("offs2", { topic_partitions = 1 })
    local src = a:topic("src")
    a:agent("one", src, function(s)
      for v in s do fstream.sleep(1) end
    end)
    t = fstream.testing(a)
    t:send(src, "a")
    t:run()
    assert.are.equal(0, t:stats().topics.src.partitions[0].committable)
    t:advance(1)
    -- Done with "a" and waiting for more: "a" is acknowledged.
    assert.are.equal(1, t:stats().topics.src.partitions[0].committable)
  end)
end)

describe("crontab", function()
  local cron = require "fstream.cron"

  it("computes the next matching minute", function()
    local s = cron.parse("*/5 * * * *")
    assert.are.equal(1700000100, cron.next_time(s, 1700000000, true))   -- 22:13:20 -> 22:15
    s = cron.parse("30 9 * * 1-5")                                     -- weekdays 09:30 UTC
    assert.are.equal("2023-11-15 09:30", os.date("!%Y-%m-%d %H:%M", cron.next_time(s, 1700000000, true)))
    s = cron.parse("0 0 1 1 *")
    assert.are.equal("2024-01-01 00:00", os.date("!%Y-%m-%d %H:%M", cron.next_time(s, 1700000000, true)))
  end)

  it("rejects malformed specs clearly", function()
    assert.has_error(function() cron.parse("* * *") end, '"* * *": expected 5 fields (minute hour day month weekday)')
    assert.has_error(function() cron.parse("61 * * * *") end, 'bad minute field "61"')
  end)

  -- A reload hands the new version the next due time (rt:carry) of the old one.
  it("takes a carried-over due time: a run that fell due during a reload happens once, at once", function()
    local a = fstream.app("cron2", { topic_partitions = 1 })
    local fired = {}
    local t
    a:crontab("*/10 * * * *", function() fired[#fired + 1] = t:now() end)
    t = fstream.testing(a)
    local due = t:now() - 5
    t.rt:carry("crontab/*/10 * * * * UTC/1", due)
    t:run()
    assert.are.same({ t:now() }, fired)
    t:advance(600)
    assert.are.equal(2, #fired)
    assert.are.equal(0, fired[2] % 600)
    t:close()
  end)

  -- The fake clock starts where asked (fstream.testing's clock option).
  local function berlin_day(clock, hours)
    local a = fstream.app("cron_tz", { topic_partitions = 1 })
    local fixed, hourly = {}, {}
    local t
    local stamp = function() return os.date("!%m-%d %H:%M", math.floor(t:now())) end
    a:crontab("30 2 * * *", function() fixed[#fixed + 1] = stamp() end, { timezone = "Europe/Berlin" })
    a:crontab("0 * * * *", function() hourly[#hourly + 1] = stamp() end, { timezone = "Europe/Berlin" })
    t = fstream.testing(a, { clock = clock })
    assert.are.equal(clock, t:now())
    t:advance(hours * 3600 - 60)
    t:close()
    return fixed, hourly
  end

  it("fires at Berlin's local times when clocks go forward (UTC below)", function()
    local fixed, hourly = berlin_day(1806184800, 6) -- from 2027-03-27 22:00 UTC
    -- 02:30 does not exist on the 28th: it runs at 03:00 CEST, right after the jump.
    assert.are.same({ "03-28 01:00" }, fixed)
    -- 00:00 and 01:00 CET, then 03:00, 04:00 and 05:00 CEST.
    assert.are.same({ "03-27 23:00", "03-28 00:00", "03-28 01:00", "03-28 02:00", "03-28 03:00" }, hourly)
  end)

  it("fires at Berlin's local times when clocks go back (UTC below)", function()
    local fixed, hourly = berlin_day(1824933600, 6) -- from 2027-10-30 22:00 UTC
    -- 02:30 happens twice on the 31st: it runs the first time only.
    assert.are.same({ "10-31 00:30" }, fixed)
    -- 01:00 and 02:00 CEST, 02:00 again and 03:00 CET, 04:00 CET.
    assert.are.same({ "10-30 23:00", "10-31 00:00", "10-31 01:00", "10-31 02:00", "10-31 03:00" }, hourly)
  end)

  it("rejects an unknown time zone or a bad spec at the crontab's line", function()
    local a = fstream.app("cron_bad", { topic_partitions = 1 })
    local line = debug.getinfo(1, "l").currentline + 1
    local ok, err = pcall(function() a:crontab("0 * * * *", function() end, { timezone = "Europe/Berln" }) end)
    assert.is_false(ok)
    assert.are.equal(string.format('spec/timers_spec.lua:%d: crontab: unknown time zone "Europe/Berln" '
      .. '(not in /usr/share/zoneinfo; IANA names look like "Europe/Berlin")', line), err)
    line = debug.getinfo(1, "l").currentline + 1
    ok, err = pcall(function() a:crontab("1,,2 * * * *", function() end) end)
    assert.are.equal(string.format('spec/timers_spec.lua:%d: crontab: bad minute field "1,,2"', line), err)
    ok, err = pcall(function() a:crontab("0 0 31 2 *", function() end) end)
    assert.matches('^spec/timers_spec.lua:%d+: crontab: "0 0 31 2 %*" never fires', err)
    ok, err = pcall(function() a:crontab("@reboot", function() end) end)
    assert.matches('crontab: "@reboot" is not a schedule: use app:task%(fn%)', err)
  end)

  it("fires on the fake clock at the scheduled minutes", function()
    local a = fstream.app("cron1", { topic_partitions = 1 })
    local fired = {}
    local t
    a:crontab("*/10 * * * *", function() fired[#fired + 1] = t:now() % 600 end, { on_leader = true })
    t = fstream.testing(a)
    t:advance(1800)
    assert.is_true(#fired == 3, "fired " .. #fired .. " times")
    for _, r in ipairs(fired) do assert.are.equal(0, r) end
    t:close()
  end)
end)
