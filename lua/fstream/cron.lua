-- Cron schedules: five fields (minute hour day-of-month month day-of-week),
-- each "*", "N", "A-B", "A,B,...", with an optional "/step". Day-of-week 0 or 7
-- is Sunday. As in cron, when both day fields are restricted a day matches if
-- either does.
local cron = {}

local RANGES = { { 0, 59 }, { 0, 23 }, { 1, 31 }, { 1, 12 }, { 0, 7 } }
local NAMES = { "minute", "hour", "day of month", "month", "day of week" }

local function parse_field(text, i)
  local lo, hi = RANGES[i][1], RANGES[i][2]
  local set, restricted = {}, text ~= "*"
  for part in text:gmatch("[^,]+") do
    local range, step = part:match("^([^/]+)/(%d+)$")
    range, step = range or part, tonumber(step) or 1
    local a, b
    if range == "*" then
      a, b = lo, hi
    else
      a, b = range:match("^(%d+)%-(%d+)$")
      a, b = tonumber(a), tonumber(b)
      if not a then
        a = tonumber(range:match("^(%d+)$"))
        b = (step > 1 and part:find("/")) and hi or a
      end
    end
    if not a or not b or a < lo or b > hi or a > b or step < 1 then
      error(string.format("bad %s field %q", NAMES[i], text), 0)
    end
    for v = a, b, step do set[v] = true end
  end
  if i == 5 and set[7] then set[0] = true end
  return set, restricted
end

function cron.parse(spec)
  if type(spec) ~= "string" then error("a crontab spec is a string like \"*/5 * * * *\"", 0) end
  local fields = {}
  for f in spec:gmatch("%S+") do fields[#fields + 1] = f end
  if #fields ~= 5 then error(string.format("%q: expected 5 fields (minute hour day month weekday)", spec), 0) end
  local s = {}
  for i = 1, 5 do s[i], s["r" .. i] = parse_field(fields[i], i) end
  return s
end

local function day_matches(s, t)
  local dom, dow = s[3][t.day], s[5][t.wday - 1]
  if s.r3 and s.r5 then return dom or dow end
  return dom and dow
end

-- The first minute strictly after `now` (epoch seconds) that the schedule matches.
function cron.next_time(s, now, utc)
  local fmt = utc and "!*t" or "*t"
  local t = math.floor(now / 60) * 60 + 60
  for _ = 1, 60 * 24 * 366 * 2 do
    local d = os.date(fmt, t)
    if not s[4][d.month] or not day_matches(s, d) then
      t = t + (24 * 60 - d.hour * 60 - d.min) * 60 -- skip to the next day
    elseif not s[2][d.hour] then
      t = t + (60 - d.min) * 60 -- skip to the next hour
    elseif not s[1][d.min] then
      t = t + 60
    else
      return t
    end
  end
  error("crontab schedule never fires", 0)
end

return cron
