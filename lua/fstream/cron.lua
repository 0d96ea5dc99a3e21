-- Cron schedules as Vixie cron (cronie) reads them: five fields (minute hour
-- day-of-month month day-of-week), each a comma list of "*", "N", "A-B", with
-- an optional "/step"; "N/step" means N to the field's last value. Months and
-- weekdays take names (JAN..DEC, SUN..SAT, any case, also in ranges); weekday
-- 0 or 7 is Sunday. @hourly, @daily (@midnight), @weekly, @monthly, @yearly
-- (@annually) stand for their five fields.
--
-- The day rule is cron's: when both day fields are restricted a day matches
-- if either does; when either field starts with "*" a day must match both
-- (so "*,10" or "*" leaves the other field alone).
--
-- Local time follows a zone (fstream.tz). Across a daylight-saving change it
-- behaves as cronie does for shifts of up to three hours: a schedule whose
-- minute and hour fields are fixed (neither starts with "*") runs once right
-- after a jump forward if any of the skipped local minutes match, and runs
-- only the first time when local time repeats after a jump back; a schedule
-- with "*" in its minute or hour field runs at the local times that occur,
-- each time they occur.
local tz = require("fstream.tz")

local cron = {}

local DAY = 86400
local FIELDS = {
  { name = "minute", lo = 0, hi = 59 },
  { name = "hour", lo = 0, hi = 23 },
  { name = "day of month", lo = 1, hi = 31 },
  { name = "month", lo = 1, hi = 12 },
  -- "*" is 0-7 as in cronie; "N/step" stops at 6, where a week ends.
  { name = "day of week", lo = 0, hi = 7, step_hi = 6 },
}
local NAMES = {
  [4] = { jan = 1, feb = 2, mar = 3, apr = 4, may = 5, jun = 6, jul = 7, aug = 8, sep = 9, oct = 10, nov = 11, dec = 12 },
  [5] = { sun = 0, mon = 1, tue = 2, wed = 3, thu = 4, fri = 5, sat = 6 },
}
local MACROS = {
  ["@hourly"] = "0 * * * *",
  ["@daily"] = "0 0 * * *",
  ["@midnight"] = "0 0 * * *",
  ["@weekly"] = "0 0 * * 0",
  ["@monthly"] = "0 0 1 * *",
  ["@yearly"] = "0 0 1 1 *",
  ["@annually"] = "0 0 1 1 *",
}
-- A shift of local time larger than this is a change of the zone's
-- definition, not daylight saving: cronie then just takes the new time.
local DST_MAX = 3 * 3600

-- Parses one field into a set of values; raises naming the field.
local function parse_field(text, i)
  local f = FIELDS[i]
  local function bad() error(string.format("bad %s field %q", f.name, text), 0) end
  local function value(word)
    local v = word:match("^%d+$") and tonumber(word) or (NAMES[i] and NAMES[i][word:lower()])
    if not v or v < f.lo or v > f.hi then bad() end
    return v
  end
  local set = {}
  -- Empty items ("1,,2", "1,", ",1") are errors, so split keeping them.
  for item in (text .. ","):gmatch("([^,]*),") do
    local range, step = item:match("^([^/]*)/(%d+)$")
    if range then
      step = tonumber(step)
      if step < 1 then bad() end
    else
      range, step = item, 1
      if item:find("/", 1, true) then bad() end
    end
    local a, b
    if range == "*" then
      a, b = f.lo, f.hi
    else
      local x, y = range:match("^(%w+)%-(%w+)$")
      if x then
        a, b = value(x), value(y)
        if i == 5 and b == 0 and a > 0 then b = 7 end -- "FRI-SUN"
        if a > b then bad() end
      else
        if not range:match("^%w+$") then bad() end
        a = value(range)
        b = item:find("/", 1, true) and math.max(a, f.step_hi or f.hi) or a -- "7/2" is Sunday alone
      end
    end
    for v = a, b, step do set[v] = true end
  end
  if i == 5 and set[7] then set[0], set[7] = true, nil end
  return set
end

-- next[v]: the smallest value in the set that is >= v (nil past the last).
local function successor_table(set, lo, hi)
  local nxt, n = {}, nil
  for v = hi, lo, -1 do
    if set[v] then n = v end
    nxt[v] = n
  end
  return nxt
end

-- The schedule of a spec: fails with a message naming the spec and the field.
function cron.parse(spec)
  if type(spec) ~= "string" then error("a crontab spec is a string like \"*/5 * * * *\"", 0) end
  local text = spec:match("^%s*(.-)%s*$")
  if text:sub(1, 1) == "@" then
    local macro = MACROS[text:lower()]
    if text:lower() == "@reboot" then
      error("\"@reboot\" is not a schedule: use app:task(fn) to run something once when the worker starts", 0)
    end
    if not macro then
      error(string.format("%q: unknown macro (use @hourly, @daily, @midnight, @weekly, @monthly, @yearly or @annually)",
        spec), 0)
    end
    text = macro
  end
  local fields = {}
  for w in text:gmatch("%S+") do fields[#fields + 1] = w end
  if #fields ~= 5 then error(string.format("%q: expected 5 fields (minute hour day month weekday)", spec), 0) end
  local sets = {}
  for i = 1, 5 do sets[i] = parse_field(fields[i], i) end
  local star = function(i) return fields[i]:sub(1, 1) == "*" end
  local s = {
    spec = spec,
    minute = successor_table(sets[1], 0, 59),
    hour = successor_table(sets[2], 0, 23),
    dom = sets[3],
    month = successor_table(sets[4], 1, 12),
    dow = sets[5],
    -- cronie's DOM_STAR/DOW_STAR: either day field starting with "*" makes the day rule AND.
    both_days = star(3) or star(5),
    -- cronie's MIN_STAR/HR_STAR: such schedules run at every local time that occurs.
    wildcard = star(1) or star(2),
  }
  -- Only a day of month that no chosen month has can make a schedule never
  -- fire (every date falls on every weekday within 400 years): say so now.
  local possible = not s.both_days
  for m = 1, 12 do
    if sets[4][m] then
      for d = 1, tz.days_in_month(2000, m) do possible = possible or sets[3][d] or false end
    end
  end
  if not possible then
    error(string.format("%q never fires: none of its months has the days of month it names", spec), 0)
  end
  return s
end

local function day_matches(s, days, d)
  local dom, dow = s.dom[d], s.dow[(days + 4) % 7] -- 1970-01-01 was a Thursday
  if s.both_days then return dom and dow end
  return dom or dow
end

-- The first local minute >= `lo` (local seconds: civil time counted as if it
-- were UTC) that the schedule matches, or nil if none within 400 years, the
-- period of the Gregorian calendar. Skips whole months, days and hours.
local function next_local(s, lo)
  lo = (lo + 59) // 60 * 60
  local days = lo // DAY
  local rem = lo - days * DAY
  local h, mi = rem // 3600, rem % 3600 // 60
  local y, m, d = tz.civil_from_days(days)
  local last_year = y + 400
  while y <= last_year do
    local mm = s.month[m]
    if mm ~= m then
      if mm then m = mm else m, y = s.month[1], y + 1 end
      d, h, mi = 1, 0, 0
    elseif d > tz.days_in_month(y, m) then
      m, d, h, mi = m + 1, 1, 0, 0
      if m > 12 then m, y = 1, y + 1 end
    else
      days = tz.days_from_civil(y, m, d)
      if not day_matches(s, days, d) then
        d, h, mi = d + 1, 0, 0
      else
        local hh = h <= 23 and s.hour[h]
        if not hh then
          d, h, mi = d + 1, 0, 0
        elseif hh ~= h then
          h, mi = hh, 0
        else
          local mn = mi <= 59 and s.minute[mi]
          if mn then return days * DAY + h * 3600 + mn * 60 end
          h, mi = h + 1, 0
        end
      end
    end
  end
  return nil
end

-- The first time (epoch seconds) strictly after `now` that the schedule fires
-- in `zone` (a fstream.tz zone; true means UTC, nil the C library's local time).
function cron.next_time(s, now, zone)
  if zone == true then zone = tz.zone("UTC") elseif not zone then zone = tz.zone("local") end
  local after = math.floor(now) + 1
  local start, stop, off, prev = zone:period(after)
  local memo_lo, memo
  local function first_match(lo)
    if not (memo_lo and memo_lo <= lo and (memo == nil or memo >= lo)) then memo_lo, memo = lo, next_local(s, lo) end
    return memo
  end
  local dst = not s.wildcard and math.abs(off - prev) <= DST_MAX
  -- Walk the stretches of constant UTC offset from `after` on; a schedule
  -- possible in the calendar fires within 400 years, about 800 stretches.
  for _ = 1, 1000 do
    -- Jump forward at `start`: the skipped local minutes' run happens now.
    if dst and off > prev and start >= after then
      local m = first_match(start + prev)
      if m and m < start + off then return start end
    end
    local lo = math.max(after, start) + off
    -- Jump back at `start`: local times up to start + prev already had their run.
    if dst and off < prev then lo = math.max(lo, start + prev) end
    local m = first_match(lo)
    if not m then break end
    if m < stop + off then return m - off end
    start, stop, off, prev = zone:period(stop)
    dst = not s.wildcard and math.abs(off - prev) <= DST_MAX
  end
  error(string.format("crontab %q never fires", s.spec), 0)
end

return cron
