-- ISO-8601 date-times as seconds since the epoch: exact, or refused with the
-- reason. Windowed tables read event times with it, once per event, so it is
-- a few anchored string.match calls and integer arithmetic.
--
-- Accepted (date and time may each be basic or extended):
--   date    YYYY-MM-DD | YYYYMMDD                   (years 0001..9999)
--   time    hh | hh:mm | hh:mm:ss | hhmm | hhmmss, after T, t or one space;
--           seconds may carry a fraction, [.,] and any number of digits
--   zone    none (UTC) | Z | z | +hh | +hh:mm | +hhmm  (or -; below 24 h)
-- Refused: anything else, including values out of range (month 13, Feb 30,
-- hour 24, minute 60, leap second :60, offset +24:00), week and ordinal
-- dates, fractions of hours or minutes, offset seconds, surrounding blanks.
-- A fraction keeps its first six digits (microseconds) and drops the rest:
-- truncating never moves a time across a second, so never across a window.
local M = {}

local days_from_civil = require("fstream.tz").days_from_civil

local MONTH_DAYS = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }
local PAD = { 100000, 10000, 1000, 100, 10, 1 } -- microseconds per unit of an n-digit fraction

local function bad(s, why)
  return nil, string.format("invalid ISO-8601 time %q: %s", s, why)
end

-- The fields of s as text (time fields nil when absent) and the index after
-- the seconds, or nil and the reason. The usual extended form takes one match.
local function fields(s)
  local y, mo, d, h, mi, sec, i = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)[Tt ](%d%d):(%d%d):(%d%d)()")
  if y then return y, mo, d, h, mi, sec, i end
  y, mo, d, i = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)()")
  if not y then
    y, mo, d, i = s:match("^(%d%d%d%d)(%d%d)(%d%d)()")
    if not y then return nil, "expected a date YYYY-MM-DD or YYYYMMDD" end
  end
  if i > #s then return y, mo, d, nil, nil, nil, i end
  local c = s:byte(i)
  if c ~= 84 and c ~= 116 and c ~= 32 then return nil, "expected T or a space after the date" end
  h, i = s:match("^(%d%d)()", i + 1)
  if not h then return nil, "expected an hour hh" end
  if s:byte(i) == 58 then -- extended: hh:mm[:ss]
    mi, i = s:match("^:(%d%d)()", i)
    if not mi then return nil, "expected minutes after hh:" end
    if s:byte(i) == 58 then
      sec, i = s:match("^:(%d%d)()", i)
      if not sec then return nil, "expected seconds after hh:mm:" end
    end
  else -- basic: hh[mm[ss]]
    local m2, j = s:match("^(%d%d)()", i)
    if m2 then
      mi, i = m2, j
      local s2, k = s:match("^(%d%d)()", i)
      if s2 then sec, i = s2, k end
    end
  end
  return y, mo, d, h, mi, sec, i
end

-- Seconds since 1970-01-01T00:00:00Z (an integer when there is no fraction),
-- or nil and the reason.
function M.parse(s)
  local y, mo, d, h, mi, sec, i = fields(s)
  if not y then return bad(s, mo) end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  if y == 0 then return bad(s, "year 0000") end
  if mo < 1 or mo > 12 then return bad(s, "month out of range") end
  local last = MONTH_DAYS[mo]
  if mo == 2 and y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0) then last = 29 end
  if d < 1 or d > last then return bad(s, "day out of range for the month") end
  local secs = days_from_civil(y, mo, d) * 86400
  if not h then return secs end
  local n, frac = #s, nil
  if sec then
    local c = s:byte(i)
    if c == 46 or c == 44 then -- . or ,
      local f, j = s:match("^(%d+)()", i + 1)
      if f then frac, i = f, j end
    end
  end
  h, mi, sec = tonumber(h), tonumber(mi or 0), tonumber(sec or 0)
  if h > 23 then return bad(s, "hour out of range") end
  if mi > 59 then return bad(s, "minute out of range") end
  if sec == 60 then return bad(s, "leap second :60 (epoch time has no place for it)") end
  if sec > 59 then return bad(s, "second out of range") end
  secs = secs + h * 3600 + mi * 60 + sec

  if i <= n then
    local c = s:byte(i)
    if (c == 90 or c == 122) and i == n then -- Z, z
      -- UTC
    elseif c == 43 or c == 45 then -- + or -
      local oh, om = s:match("^(%d%d):(%d%d)$", i + 1)
      if not oh then oh, om = s:match("^(%d%d)(%d%d)$", i + 1) end
      if not oh then oh, om = s:match("^(%d%d)$", i + 1), "0" end
      if not oh then return bad(s, "expected a zone Z, +hh, +hh:mm or +hhmm") end
      oh, om = tonumber(oh), tonumber(om)
      if oh > 23 or om > 59 then return bad(s, "zone offset out of range") end
      local off = oh * 3600 + om * 60
      if c == 43 then secs = secs - off else secs = secs + off end
    else
      return bad(s, "unexpected text after the time")
    end
  end

  if not frac then return secs end
  local k = #frac
  local us = k > 6 and tonumber(frac:sub(1, 6)) or tonumber(frac) * PAD[k]
  -- One rounding, from the exact microsecond count (as Python's timestamp()).
  return (secs * 1000000 + us) / 1e6
end

return M
