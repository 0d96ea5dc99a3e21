-- Windowed tables: a table whose values are kept per (key, window).
--
-- Every window of a key is an entry of the underlying table under the key
-- bytes '[key, start]' (JSON), so windows are changelogged, checkpointed and
-- recovered like any table entry. Per partition the worker keeps an index of
-- the open windows and the partition's stream time (the largest event time
-- seen), stored under a reserved key so that it survives restarts and
-- rebalances. The index lives in C (core.windows, runtime/state/fs_windows.c): it
-- finds an event's windows, remembers their ends and says what is due; this
-- file keeps the policy and calls the user's functions. A window closes when stream time (wall clock for
-- relative_to_now) passes its end plus `expires`: on_window_close(key,
-- window, value) runs in its own coroutine with the final value, then the
-- entry is deleted. An event for a window that has closed is late: it is
-- counted, handed to on_late(key, value), and never re-opens the window.
--
-- `t` here is always the table's state (Table.state), never the app's object,
-- whose every key is an entry.
local core = require "fstream.core"
local Table = require "fstream.table"
local isotime = require "fstream.isotime"
local session = require "fstream.session"

local json = core.json
local STREAM_TIME = "\0stream_time"
local CLOSED_THROUGH = "\0closed_through"
-- Default bound on how far ahead of the wall clock an event time may be: a
-- day covers any clock skew; a time beyond it is a broken producer or field.
local MAX_FUTURE = 86400

local Window = {}
Window.__index = Window

local M = {}

local function check_seconds(v, what, level)
  if type(v) ~= "number" or v <= 0 or v ~= v or v == math.huge then
    error(what .. " must be a positive number of seconds", level)
  end
end

function M.configure(t, kind, a, b, c)
  local level = 4
  if t.window then error(string.format("table '%s' is already windowed", t.name), level) end
  if t.app.rt then error("windows must be set up before the worker starts", level) end
  if t.global then error("a global table cannot be windowed", level) end
  local size, step, opts = a, nil, b
  if kind == "hopping" then step, opts = b, c end
  check_seconds(size, kind == "session" and "session gap" or (kind .. " size"), level)
  if kind == "hopping" then
    check_seconds(step, "hopping step", level)
    if step > size then error("hopping step must not be larger than the size", level) end
  end
  opts = opts or {}
  if type(opts) ~= "table" then error(kind .. " options must be a table {expires=}", level) end
  -- idle_close (any kind) and a session's combine are taken out first.
  local idle_close, session_combine
  opts, idle_close, session_combine = session.own_options(kind, opts, level + 1)
  for k in pairs(opts) do
    if k ~= "expires" and k ~= "max_future" and not (k == "combine" and kind == "hopping") then
      error(string.format("%s: unknown option '%s'", kind, tostring(k)), level)
    end
  end
  if opts.combine ~= nil and type(opts.combine) ~= "function" then
    error("hopping: combine must be a function(a, b) -> a and b combined", level)
  end
  local expires = opts.expires or 0
  if type(expires) ~= "number" or expires < 0 then error("expires must be a number of seconds >= 0", level) end
  local max_future = opts.max_future or MAX_FUTURE
  if type(max_future) ~= "number" or not (max_future >= 0) then
    error("max_future must be a number of seconds >= 0 (math.huge: no bound)", level)
  end
  if t.key_serializer ~= "json" then
    error(string.format("windowed table '%s' needs the json key serializer", t.name), level)
  end
  local w = setmetatable({
    kind = kind, size = size, step = step or size, expires = expires,
    -- With an associative combine(a, b), a hopping table stores one value per
    -- step-slice and folds the slices of a window when it is read or closed:
    -- an event costs one update whatever size/step is.
    combine = opts.combine,
    time = "stream", field = nil, unit = nil,
    -- Event times above horizon (the clock plus max_future when last looked
    -- at) are refused: one absurd time would otherwise close every window.
    max_future = max_future, horizon = -math.huge,
    parts = {},          -- p -> { closing = coroutine } for every partition held
    idx = nil,           -- the C index (core.windows) of the running worker, see Window:index
    out = {}, fresh = {}, -- reused by update: the event's windows' entry keys, the new ones
    late = 0, closed = 0,
  }, Window)
  t.window = w
  -- Sessions: how two sessions' values merge (fstream/session.lua). With
  -- event time: a partition quiet for idle_close follows the wall clock.
  w.session_combine, w.idle_close = session_combine, idle_close
  local app = t.app
  -- The closer: parked on the loop's timer heap by the index until a window
  -- is due by the clock (relative_to_now), or stream time passed one that no
  -- event closed (after a restart); then closes what is due.
  app.tasks[#app.tasks + 1] = {
    name = "window closer of " .. t.name,
    restart = true,
    fn = function()
      local idx = w:index(t)
      while true do
        idx:wait()
        if w.idx ~= idx then return end
        for p in pairs(w.parts) do
          if w.idle_close then w:idle_advance(t, p) end
          w:close_expired(t, p)
        end
      end
    end,
  }
end

local UNITS = { s = 1, ms = 1000, us = 1000000, ns = 1000000000 }

function M.relative(t, how, field, opts)
  local w = t.window
  if not w then error(string.format("table '%s': call tumbling, hopping, sliding or session first", t.name), 3) end
  if how == "field" and (type(field) ~= "string" or field == "") then
    error("relative_to_field needs a field name", 3)
  end
  local unit
  if opts ~= nil then
    if type(opts) ~= "table" then error("relative_to_field options must be a table {unit=}", 3) end
    for k in pairs(opts) do
      if k ~= "unit" then error(string.format("relative_to_field: unknown option '%s'", tostring(k)), 3) end
    end
    unit = opts.unit
    if unit ~= nil and not UNITS[unit] then
      error("relative_to_field: unit must be \"s\", \"ms\", \"us\" or \"ns\"", 3)
    end
  end
  w.time, w.field, w.unit = how, field, unit
end

-- Event times must fall in the years 1970..9999 (UTC).
local MIN_TIME, MAX_TIME = 0, require("fstream.tz").days_from_civil(10000, 1, 1) * 86400
local HUGE, math_type = math.huge, math.type

-- Seconds since the epoch from an ISO-8601 text (see fstream.isotime) or a
-- number in `unit` (without one: seconds, or milliseconds above 1e11 — no
-- year before 5138 is that many seconds). nil and the reason otherwise.
function M.parse_time(v, unit)
  local secs, err
  if type(v) == "number" then
    if unit == nil then
      secs = v > 1e11 and v / 1000 or v
    elseif unit == "s" then
      secs = v
    else
      local scale = UNITS[unit]
      if math_type(v) == "integer" and (v >= 2 ^ 53 or v <= -2 ^ 53) then
        -- Too many digits for one exact float: whole seconds apart.
        secs = v // scale + (v % scale) / scale
      else
        secs = v / scale
      end
    end
    if not (secs >= MIN_TIME and secs <= MAX_TIME) then -- (also nan)
      if v ~= v or v == HUGE or v == -HUGE then return nil, "not a finite number: " .. tostring(v) end
      return nil, string.format("%s%s is outside the years 1970..9999%s", tostring(v),
        unit and (" " .. unit) or "", unit and "" or
        " (a number above 1e11 is read as milliseconds; relative_to_field(field, {unit=}) says the unit)")
    end
    return secs
  end
  if type(v) ~= "string" then return nil, "expected a number or an ISO-8601 time, got " .. type(v) end
  secs, err = isotime.parse(v)
  if not secs then return nil, err end
  if secs < MIN_TIME or secs > MAX_TIME then
    return nil, string.format("%q is outside the years 1970..9999", v)
  end
  return secs
end

local function current_stream()
  return Table.streams_by_co[coroutine.running()]
end

-- Window starts are multiples of the step computed in floating point. Beyond
-- 2^50 steps from the epoch neighbouring starts stop being distinct numbers
-- (s - step == s), and a loop over the windows of a time would never end:
-- such a time, NaN or an infinity is an error of the event, raised before it
-- touches any state.
local EXACT_STEPS = 2 ^ 50

local function check_time(w, t, at, level)
  local lim = w.step * EXACT_STEPS
  if type(at) ~= "number" or not (at > -lim and at < lim) then
    error(string.format("windowed table '%s': event time %s is outside the range windows can be "
      .. "computed for (|time| < %.3g s with step %g s)", t.name, tostring(at), lim, w.step), level + 1)
  end
end

-- The time an operation refers to: the event's (stream or field) or now.
-- An event time that cannot be read, or lies more than max_future ahead of
-- the clock, raises: the event goes through the agent's on_error policy and
-- touches no window.
function Window:event_time(t)
  if self.time == "now" then return t.app.rt:now() end
  local s = current_stream()
  local pos = s and s:position()
  if not s or pos < 1 then
    error(string.format("windowed table '%s': needs an event being processed (or relative_to_now)", t.name), 4)
  end
  local at
  if self.time == "field" then
    local v = s:current_value()
    local raw = type(v) == "table" and v[self.field] or nil
    local err
    at, err = M.parse_time(raw, self.unit)
    if not at then
      error(string.format("windowed table '%s': field '%s': %s", t.name, self.field, err or "missing"), 4)
    end
  else
    local _, _, _, ts = s.cs:meta(pos)
    at = ts or error(string.format("windowed table '%s': the message has no timestamp", t.name), 4)
  end
  if at > self.horizon then
    local now = t.app.rt:now()
    self.horizon = now + self.max_future
    if at > self.horizon then
      error(string.format("windowed table '%s': event time %.6f is %.0f s ahead of the clock (max_future = %g s)",
        t.name, at, at - now, self.max_future), 4)
    end
  end
  return at
end

-- The partition index of the running worker: built when the worker first
-- needs it (its partitions are known then), again for a new runtime.
function Window:index(t)
  local rt = t.app.rt
  local idx = self.idx
  if idx and self.idx_rt == rt then return idx end
  idx = core.windows {
    partitions = t.partitions, kind = self.kind, size = self.size, step = self.step,
    expires = self.expires, combine = self.combine ~= nil, now = self.time == "now",
    interval = t.app.table_cleanup_interval,
    idle_close = self.idle_close,
  }
  if rt then idx:bind(rt) end
  self.idx, self.idx_rt, self.parts = idx, rt, {}
  return idx
end

-- Starts of the windows of `key` that contain time `at`.
function Window:starts(t, p, key, at)
  local out = {}
  if self.kind == "tumbling" then
    out[1] = math.floor(at / self.size) * self.size
  elseif self.kind == "hopping" then
    local s = math.floor(at / self.step) * self.step
    while s > at - self.size do
      out[#out + 1] = s
      s = s - self.step
    end
  else -- sliding: every open window of the key containing `at`, plus one starting at `at`
    if self.parts[p] and self.idx then return self.idx:sliding_starts(p, key, at) end
    out[1] = at
  end
  return out
end

local function window_kb(key, start)
  return json.encode { key, start }
end

function Window:clock(p)
  if self.time == "now" or not self.idx then return nil end
  return (self.idx:times(p))
end

-- A new window's value: the table's default (a function's result).
local default_value = Table.default_of
local _lookup, _put = Table._lookup, Table._put

local function not_held(t, p)
  error(string.format("table '%s': partition %d is not on this worker", t.name, p), 4)
end

-- t:update(key, fn): fn applied to the value of every window containing the
-- event's time (a hopping event updates size/step windows). The index (C)
-- updates stream time, finds the windows (the ones not closed yet: tumbling
-- and hopping newest first, sliding oldest first; with combine the event's
-- step-slice) and hands their entry keys over; new ones are registered once
-- their value is written, so an update that raises leaves none behind.
function Window:update(t, key, fn)
  local at = self:event_time(t)
  check_time(self, t, at, 3)
  local p = Table.event_partition() or error(string.format(
    "windowed table '%s': update must happen while an agent processes an event", t.name), 3)
  local idx = self.idx
  if not idx then not_held(t, p) end
  if self.kind == "session" then return session.update(self, t, p, idx, key, at, fn) end
  -- A nested update (fn updating this table) or one after an update that
  -- raised gets tables of its own.
  local out, fresh = self.out, self.fresh
  if out then self.out = false else out, fresh = {}, {} end
  local n, nnew, late, due, advanced = idx:touch(p, key, at, out, fresh)
  if not n then not_held(t, p) end
  if advanced then _put(t, p, STREAM_TIME, at) end
  if self.combine then
    if late then self:late_event(t, key) end
    if n == 0 then -- every window of this event has closed
      self.out, self.fresh = out, fresh
      return nil
    end
    late = false
  end
  local result
  if nnew == 0 then
    for i = 1, n do
      local kb = out[i]
      local old = _lookup(t, p, kb)
      if old == nil then old = default_value(t) end
      result = fn(old)
      _put(t, p, kb, result)
    end
  else
    for i = 1, n do
      local kb = out[i]
      local old = _lookup(t, p, kb)
      if old == nil then old = default_value(t) end
      result = fn(old)
      _put(t, p, kb, result)
      local f = fresh[i]
      if f then
        fresh[i] = nil
        due = idx:confirm(p, f)
      end
    end
  end
  self.out, self.fresh = out, fresh
  if late then self:late_event(t, key) end
  if due then self:maybe_close(t, p) end
  return result
end

function Window:late_event(t, key)
  self.late = self.late + 1
  local on_late = t.on_late
  if on_late then
    local s = current_stream()
    on_late(key, s and s:current_value())
  end
end

-- The value of hopping window [s, s + size) folded from its slices.
function Window:fold(t, p, key, s)
  local acc
  for u = s, s + self.size - self.step, self.step do
    local v = _lookup(t, p, window_kb(key, u))
    if v ~= nil then
      if acc == nil then acc = v else acc = self.combine(acc, v) end
    end
  end
  return acc
end

-- t[key] = v: tumbling tables only (a hopping event belongs to several windows).
function Window:assign(t, key, v)
  -- A session adds v to the key's session (combined, or to its list).
  if self.kind == "session" then return self:update(t, key, session.adding(v)) end
  if self.kind ~= "tumbling" then
    error(string.format("windowed table '%s' is %s: an event belongs to several windows; use "
      .. "%s:update(key, function(old) ... end)", t.name, self.kind, t.name), 3)
  end
  return self:update(t, key, function() return v end)
end

-- t[key]: the key's windows, read at the event's time (or now).
local WindowSet = {}
WindowSet.__index = WindowSet

function Window:set_for(t, key)
  return setmetatable({ table = t, window = self, key = key }, WindowSet)
end

local function value_at(ws, at)
  local w, t = ws.window, ws.table
  check_time(w, t, at, 3)
  local p = Table.event_partition()
  local starts
  local parts = {}
  if p then parts[1] = p else for q in pairs(w.parts) do parts[#parts + 1] = q end end
  if w.kind == "session" then return session.value_at(w, t, ws.key, at, parts) end
  for _, q in ipairs(parts) do
    if w.combine then
      local v = w:fold(t, q, ws.key, math.floor(at / w.step) * w.step)
      if v ~= nil then return v end
      goto continue
    end
    starts = w:starts(t, q, ws.key, at)
    -- The newest window containing the time (Faust's choice for value()).
    for i = #starts, 1, -1 do
      local v = _lookup(t, q, window_kb(ws.key, starts[i]))
      if v ~= nil then return v end
    end
    ::continue::
  end
  return default_value(t)
end

function WindowSet:current() return value_at(self, self.window:event_time(self.table)) end
WindowSet.value = WindowSet.current
function WindowSet:now() return value_at(self, self.table.app.rt:now()) end
function WindowSet:delta(seconds) return value_at(self, self.window:event_time(self.table) - seconds) end

-- Every window of the key, oldest first: { {start=, ["end"]=, value=}, ... }.
function WindowSet:windows()
  local w, t, out = self.window, self.table, {}
  local idx = w.idx
  if not idx then return out end
  for p in pairs(w.parts) do
    for _, win in ipairs(idx:key_windows(p, self.key)) do
      out[#out + 1] = { start = win[2], ["end"] = win[3], value = _lookup(t, p, win[1]) }
    end
  end
  table.sort(out, function(a, b) return a.start < b.start end)
  return out
end

-- Rebuilds the partition's window index and stream time from its stored
-- entries (nothing is pending when a partition is taken: its record cache is
-- new). Only the key bytes are read, not the values.
function Window:hold(t, p)
  local idx = self:index(t)
  self.parts[p] = {}
  local rt = t.app.rt
  if not rt then return idx:hold(p) end
  local keys, values = rt:table_scan(t.id, p)
  local st = _lookup(t, p, STREAM_TIME)
  local ct = _lookup(t, p, CLOSED_THROUGH)
  if self.kind == "session" then return session.hold(self, t, p, idx, keys, values, st, ct) end
  idx:hold(p, keys, st, ct)
end

function Window:release(_, p)
  self.parts[p] = nil
  if self.idx then self.idx:release(p) end
end

-- A close pass is under way, unless the coroutine running it died before it
-- finished (interrupted by agent_timeout in on_window_close, or killed).
local function closing(wp)
  local co = wp.closing
  return co ~= nil and not core.ended(co)
end

-- combine mode: closes, in order, the windows that expired since the last
-- pass — each folded from its slices — then drops the slices that no open
-- window needs any more. Keys in the order of their JSON text.
function Window:close_slices(t, p, wp)
  local idx = self.idx
  local st, ct = idx:times(p)
  local now = self.time == "now" and t.app.rt:now() or st
  if now == nil then return end
  local size, step = self.size, self.step
  local gone = now - size - self.expires -- windows starting before this have closed
  local from = ct and (ct - size - self.expires) or -math.huge
  local kjs, keys = idx:slice_keys(p)
  wp.closing = coroutine.running()
  local on_close = t.on_window_close
  local out = {}
  for i = 1, #kjs do
    local kj, key = kjs[i], keys[i]
    local first = idx:span(p, kj)
    if first ~= nil then
      -- Due starts: closed now, not closed at the last pass, overlapping a slice.
      local lo = math.max(from, first - size + step)
      -- Windows starting before `from` were closed by an earlier pass.
      local s = math.ceil(lo / step) * step
      while s < gone do
        local _, last = idx:span(p, kj)
        if last == nil or s > last then break end
        local value = self:fold(t, p, key, s)
        if value ~= nil then
          self.closed = self.closed + 1
          if on_close then
            local ok, err = xpcall(on_close, debug.traceback, key, { start = s, ["end"] = s + size }, value)
            if not ok then core.log("error", string.format("on_window_close of %s failed: %s", t.name, err)) end
          end
        end
        s = s + step
      end
      -- Slices whose newest window (the one starting at them) has closed.
      for j = 1, idx:drop(p, kj, gone, out) do _put(t, p, out[j], nil) end
    end
  end
  idx:closed_through(p, now)
  _put(t, p, CLOSED_THROUGH, now)
  wp.closing = nil
end

-- Closes, in end order (then entry key order), every window of partition p
-- that has expired.
local function close_pass(self, t, p, wp)
  if self.combine then return self:close_slices(t, p, wp) end
  local idx = self.idx
  local now
  if self.time == "now" then now = t.app.rt:now() else now = idx:times(p) end
  if now == nil then return end
  wp.closing = coroutine.running()
  local on_close = t.on_window_close
  while self.parts[p] == wp do
    local kb, key, start, e = idx:pop(p, now)
    if not kb then break end
    local value = _lookup(t, p, kb)
    if value == nil then value = default_value(t) end
    _put(t, p, kb, nil)
    if self.kind == "session" then session.closed(self, t, p, kb, key, e) end
    self.closed = self.closed + 1
    if on_close then
      local ok, err = xpcall(on_close, debug.traceback, key, { start = start, ["end"] = e }, value)
      if not ok then core.log("error", string.format("on_window_close of %s failed: %s", t.name, err)) end
    end
  end
  if self.kind == "session" then session.sweep(self, t, p, now) end
  wp.closing = nil
end

-- The runtime is told when a pass starts and ends: an exactly-once checkpoint
-- does not cut through one (its on_window_close outputs and the windows'
-- tombstones belong in one transaction).
function Window:close_expired(t, p)
  local wp = self.parts[p]
  if not wp or closing(wp) then return end
  local rt = t.app.rt
  if not rt then return close_pass(self, t, p, wp) end
  rt:window_pass(true)
  local ok, err = pcall(close_pass, self, t, p, wp)
  rt:window_pass(false)
  if not ok then error(err, 0) end
end

-- idle_close: a partition without events for that long moves its stream time
-- with the clock (the index says how far), stored like an event's.
function Window:idle_advance(t, p)
  local st = self.idx:idle_advance(p)
  if st then _put(t, p, STREAM_TIME, st) end
end

-- When stream time moved past a window's expiry (the index says so), close
-- right away, in the agent's coroutine, before the next event is applied: an
-- out-of-order event after that point finds its window closed (late) in both
-- update paths.
function Window:maybe_close(t, p)
  local wp = self.parts[p]
  if not wp or closing(wp) or self.time == "now" then return end
  self:close_expired(t, p)
end

M.Window = Window
return M
