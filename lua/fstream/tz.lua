-- Time zones for crontabs: "UTC", "local" (the C library's local time) and
-- IANA names ("Europe/Berlin") read from the system's tzdata.
--
-- A zone answers one question, zone:period(u): the stretch [start, stop) of
-- UTC seconds around u during which the UTC offset stays `off`, and the offset
-- `prev` in force just before `start`. A cron schedule walks these stretches
-- to see where local time jumps forward or back.
--
-- IANA zones are read here from their TZif files (RFC 8536) rather than
-- through setenv("TZ") + localtime: TZ is process-wide state that the C
-- library's other users (librdkafka's threads among them) read without a
-- lock, and a zone table is small enough to hold per zone. Times past the
-- file's last transition follow its POSIX TZ footer ("CET-1CEST,M3.5.0,
-- M10.5.0/3"), expanded a few years at a time as they are asked for.
local tz = {}

local DAY = 86400

-- Days since 1970-01-01 of a proleptic Gregorian date, and back (exact for
-- any year; floor division keeps negative years right).
function tz.days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = y // 400
  local yoe = y - era * 400
  local doy = (153 * ((m + 9) % 12) + 2) // 5 + d - 1
  return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
end

function tz.civil_from_days(z)
  z = z + 719468
  local era = z // 146097
  local doe = z - era * 146097
  local yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
  local doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
  local mp = (5 * doy + 2) // 153
  local d = doy - (153 * mp + 2) // 5 + 1
  local m = mp < 10 and mp + 3 or mp - 9
  return yoe + era * 400 + (m <= 2 and 1 or 0), m, d
end

local function is_leap(y) return y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0) end

local MONTH_DAYS = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }
function tz.days_in_month(y, m)
  if m == 2 and is_leap(y) then return 29 end
  return MONTH_DAYS[m]
end

local Zone = {}
Zone.__index = Zone

function Zone:offset(u)
  local _, _, off = self:period(u)
  return off
end

-- ---- zones given by a list of transitions (TZif, POSIX rules, UTC) ----

-- A POSIX TZ rule date ("M3.5.0", "J60", "59") in year y: days since the epoch.
local function rule_day(r, y)
  if r.kind == "J" then -- 1..365, February 29 never counted
    local n = r.n - 1
    if is_leap(y) and r.n >= 60 then n = n + 1 end
    return tz.days_from_civil(y, 1, 1) + n
  elseif r.kind == "n" then -- 0..365, February 29 counted
    return tz.days_from_civil(y, 1, 1) + r.n
  end
  local first = tz.days_from_civil(y, r.month, 1)
  local day = 1 + (r.wday - (first + 4) % 7) % 7 + (r.week - 1) * 7
  local dim = tz.days_in_month(y, r.month)
  while day > dim do day = day - 7 end -- week 5 means the last one
  return first + day - 1
end

-- Appends the rule's transitions of years up to `upto` (offsets that change only).
local function extend(z, upto)
  local r = z.rule
  for y = z.rule_year + 1, upto do
    local on = rule_day(r.start, y) * DAY + r.start_time - r.std
    local off = rule_day(r["end"], y) * DAY + r.end_time - r.dst
    local a, ao, b, bo = on, r.dst, off, r.std
    if off < on then a, ao, b, bo = off, r.std, on, r.dst end
    for _, tr in ipairs { { a, ao }, { b, bo } } do
      local n = #z.times
      local last = n > 0 and z.times[n] or -math.huge
      local cur = n > 0 and z.offs[n] or z.off0
      if tr[1] == last then
        -- A year's end meets the next one's start (DST all year, "0/0,J365/25"):
        -- the later transition wins, and one that changes nothing goes.
        z.offs[n] = tr[2]
        if tr[2] == (n > 1 and z.offs[n - 1] or z.off0) then z.times[n], z.offs[n] = nil, nil end
      elseif tr[1] > last and tr[2] ~= cur then
        z.times[n + 1], z.offs[n + 1] = tr[1], tr[2]
      end
    end
    z.rule_year = y
  end
end

local function list_period(z, u)
  if z.rule then
    local y = tz.civil_from_days(u // DAY)
    -- Rules may put a transition up to a week into the next year: keep two ahead.
    if y + 2 > z.rule_year then extend(z, y + 2) end
  end
  local times = z.times
  local lo, hi = 0, #times -- largest i with times[i] <= u (0: none)
  while lo < hi do
    local mid = (lo + hi + 1) // 2
    if times[mid] <= u then lo = mid else hi = mid - 1 end
  end
  local i = lo
  local off = i > 0 and z.offs[i] or z.off0
  local prev = i > 1 and z.offs[i - 1] or z.off0
  return i > 0 and times[i] or -math.huge, times[i + 1] or math.huge, off, prev
end

local function list_zone(name, times, offs, off0, rule)
  local z = setmetatable({ name = name, times = times, offs = offs, off0 = off0, rule = rule }, Zone)
  z.period = list_period
  if rule and #times == 0 then z.off0 = rule.std end
  if rule and rule.dst then
    -- The rule takes over after the table's last transition, from its year on.
    local n = #times
    z.rule_year = (n > 0 and tz.civil_from_days(times[n] // DAY) or 1970) - 1
  else
    z.rule = nil
  end
  return z
end

-- ---- POSIX TZ strings (the TZif footer) ----

local function posix_error(s, why)
  error(string.format("bad POSIX TZ string %q: %s", s, why), 0)
end

-- "[+-]hh[:mm[:ss]]" at position i: seconds and the next position.
local function posix_time(s, i, max_hours)
  local sign, h, rest, j = s:match("^([+-]?)(%d+)([:%d]*)()", i)
  if not h then return nil end
  local mm, ss = rest:match("^:(%d%d)$"), nil
  if not mm and rest ~= "" then
    mm, ss = rest:match("^:(%d%d):(%d%d)$")
    if not mm then posix_error(s, "bad time") end
  end
  local v = tonumber(h) * 3600 + tonumber(mm or 0) * 60 + tonumber(ss or 0)
  if tonumber(h) > max_hours or tonumber(mm or 0) > 59 or tonumber(ss or 0) > 59 then posix_error(s, "bad time") end
  return sign == "-" and -v or v, j
end

local function posix_name(s, i)
  local name, j = s:match("^<([%w+-]+)>()", i)
  if name then return name, j end
  name, j = s:match("^(%a%a%a+)()", i)
  return name, j
end

local function posix_date(s, i)
  local m, w, d, j = s:match("^M(%d+)%.(%d)%.(%d)()", i)
  if m then
    m, w, d = tonumber(m), tonumber(w), tonumber(d)
    if m < 1 or m > 12 or w < 1 or w > 5 or d > 6 then posix_error(s, "bad rule date") end
    return { kind = "M", month = m, week = w, wday = d }, j
  end
  local jn
  jn, j = s:match("^J(%d+)()", i)
  if jn then
    jn = tonumber(jn)
    if jn < 1 or jn > 365 then posix_error(s, "bad rule date") end
    return { kind = "J", n = jn }, j
  end
  local n
  n, j = s:match("^(%d+)()", i)
  if not n or tonumber(n) > 365 then posix_error(s, "bad rule date") end
  return { kind = "n", n = tonumber(n) }, j
end

-- Parses "STDoffset[DST[offset][,start[/time],end[/time]]]"; offsets come
-- back as seconds east of UTC (POSIX writes them west).
function tz.parse_posix(s)
  local r = {}
  local name, i = posix_name(s, 1)
  if not name then posix_error(s, "no zone name") end
  local off
  off, i = posix_time(s, i, 24)
  if not off then posix_error(s, "no UTC offset") end
  r.std = -off
  if i > #s then return r end
  name, i = posix_name(s, i)
  if not name then posix_error(s, "bad daylight-saving name") end
  local dst, j = posix_time(s, i, 24)
  if dst then r.dst, i = -dst, j else r.dst = r.std + 3600 end
  if s:sub(i, i) ~= "," then posix_error(s, "no daylight-saving rule") end
  r.start, i = posix_date(s, i + 1)
  r.start_time = 7200
  if s:sub(i, i) == "/" then
    r.start_time, i = posix_time(s, i + 1, 167)
    if not r.start_time then posix_error(s, "bad rule time") end
  end
  if s:sub(i, i) ~= "," then posix_error(s, "no end of daylight saving") end
  r["end"], i = posix_date(s, i + 1)
  r.end_time = 7200
  if s:sub(i, i) == "/" then
    r.end_time, i = posix_time(s, i + 1, 167)
    if not r.end_time then posix_error(s, "bad rule time") end
  end
  if i <= #s then posix_error(s, "trailing characters") end
  return r
end

-- A zone from a POSIX TZ string alone ("EST5EDT,M3.2.0,M11.1.0").
function tz.posix(s)
  return list_zone(s, {}, {}, 0, tz.parse_posix(s))
end

-- ---- TZif files ----

-- The transitions, offsets and footer of a TZif file's contents.
function tz.parse_tzif(data, name)
  local function bad(why) error(string.format("%s is not a usable TZif file (%s)", name, why), 0) end
  if data:sub(1, 4) ~= "TZif" then bad("no TZif header") end
  local version = data:sub(5, 5)
  local function counts(pos)
    if #data < pos + 43 then bad("truncated") end
    local isut, isstd, leap, timecnt, typecnt, charcnt = string.unpack(">I4I4I4I4I4I4", data, pos + 20)
    return isut, isstd, leap, timecnt, typecnt, charcnt
  end
  local pos, tsize = 1, 4
  local isut, isstd, leap, timecnt, typecnt, charcnt = counts(pos)
  if version >= "2" then
    -- Skip the 32-bit block: the 64-bit one after it covers every year.
    pos = pos + 44 + timecnt * 5 + typecnt * 6 + charcnt + leap * 8 + isstd + isut
    tsize = 8
    isut, isstd, leap, timecnt, typecnt, charcnt = counts(pos)
    if data:sub(pos, pos + 3) ~= "TZif" then bad("no second header") end
  end
  if leap > 0 then bad("leap-second zones (right/...) are not supported") end
  if typecnt == 0 then bad("no local time types") end
  local p = pos + 44
  local size = timecnt * (tsize + 1) + typecnt * 6 + charcnt + isstd + isut
  if #data < p + size - 1 then bad("truncated") end
  local tfmt = tsize == 8 and ">i8" or ">i4"
  local raw = {}
  for k = 1, timecnt do raw[k] = string.unpack(tfmt, data, p + (k - 1) * tsize) end
  p = p + timecnt * tsize
  local idx = { data:byte(p, p + timecnt - 1) }
  p = p + timecnt
  local utoff = {}
  for k = 0, typecnt - 1 do utoff[k] = string.unpack(">i4", data, p + k * 6) end
  p = p + size - timecnt * (tsize + 1)
  local times, offs = {}, {}
  local off0 = utoff[0]
  for k = 1, timecnt do
    local o = utoff[idx[k]]
    if o == nil then bad("bad local time type index") end
    if k > 1 and raw[k] <= raw[k - 1] then bad("transitions out of order") end
    local cur = #offs > 0 and offs[#offs] or off0
    -- Changes of name or of the DST flag alone do not move local time.
    if o ~= cur then times[#times + 1], offs[#offs + 1] = raw[k], o end
  end
  local rule
  if version >= "2" then
    local footer = data:match("^\n([^\n]*)\n", p)
    if footer and footer ~= "" then rule = tz.parse_posix(footer) end
  end
  return list_zone(name, times, offs, off0, rule)
end

-- ---- the C library's local time ----

-- A zone known only by its offset at each instant: transitions are found by
-- probing day by day (up to 400 days each way) and bisecting to the second.
-- A stretch without any change in that span ends at an artificial boundary
-- whose two sides have the same offset, which a schedule walks through.
function tz.from_offsets(name, offset_at)
  local z = setmetatable({ name = name }, Zone)
  function z.period(_, u)
    local c = z.cached
    if c and u >= c[1] and u < c[2] then return c[1], c[2], c[3], c[4] end
    local off = offset_at(u)
    local start, stop, prev = u - 400 * DAY, u + 400 * DAY, off
    for k = 1, 400 do
      local b = u + k * DAY
      if offset_at(b) ~= off then
        local a = b - DAY -- offset_at(a) == off: bisect upwards
        while b - a > 1 do
          local mid = (a + b) // 2
          if offset_at(mid) == off then a = mid else b = mid end
        end
        stop = b
        break
      end
    end
    for k = 1, 400 do
      local p = u - k * DAY
      local o = offset_at(p)
      if o ~= off then
        local a = p + DAY -- offset_at(a) == off, offset_at(p) ~= off: bisect downwards
        while a - p > 1 do
          local mid = (a + p) // 2
          if offset_at(mid) == off then a = mid else p = mid end
        end
        start, prev = a, offset_at(a - 1)
        break
      end
    end
    z.cached = { start, stop, off, prev }
    return start, stop, off, prev
  end
  return z
end

local function libc_offset(u)
  local t = os.date("*t", u)
  return tz.days_from_civil(t.year, t.month, t.day) * DAY + t.hour * 3600 + t.min * 60 + t.sec - u
end

-- ---- by name ----

local UTC = list_zone("UTC", {}, {}, 0, nil)
local cache = {}

-- The zone called `name`: "UTC", "local", or an IANA name under $TZDIR or
-- /usr/share/zoneinfo. Raises a message naming the zone when it is unknown.
function tz.zone(name)
  if name == "UTC" then return UTC end
  if type(name) ~= "string" then error("a time zone is a string like \"Europe/Berlin\"", 0) end
  local z = cache[name]
  if z then return z end
  if name == "local" then
    z = tz.from_offsets("local", libc_offset)
  else
    local dir = os.getenv("TZDIR") or "/usr/share/zoneinfo"
    if not name:match("^[%w_+-][%w_+/-]*$") or name:find("..", 1, true) or name:find("//", 1, true) then
      error(string.format("unknown time zone %q (IANA names look like \"Europe/Berlin\")", name), 0)
    end
    local f = io.open(dir .. "/" .. name, "rb")
    if not f then
      local any = io.open(dir .. "/UTC", "rb")
      if any then any:close() end
      error(string.format("unknown time zone %q (not in %s%s)", name, dir,
        any and "; IANA names look like \"Europe/Berlin\"" or ": is the tzdata package installed?"), 0)
    end
    local data = f:read("a")
    f:close()
    if not data then
      error(string.format("unknown time zone %q (%s/%s is not a file)", name, dir, name), 0)
    end
    z = tz.parse_tzif(data, dir .. "/" .. name)
    z.name = name
  end
  cache[name] = z
  return z
end

return tz
