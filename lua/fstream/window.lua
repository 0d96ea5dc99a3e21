-- Windowed tables: a table whose values are kept per (key, window).
--
-- Every window of a key is an entry of the underlying table under the key
-- bytes '[key, start]' (JSON), so windows are changelogged, checkpointed and
-- recovered like any table entry. Per partition the worker keeps an index of
-- the open windows and the partition's stream time (the largest event time
-- seen), stored under a reserved key so that it survives restarts and
-- rebalances. A window closes when stream time (wall clock for
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
  check_seconds(size, kind .. " size", level)
  if kind == "hopping" then
    check_seconds(step, "hopping step", level)
    if step > size then error("hopping step must not be larger than the size", level) end
  end
  opts = opts or {}
  if type(opts) ~= "table" then error(kind .. " options must be a table {expires=}", level) end
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
    parts = {},          -- p -> { index = {kb -> {key, start, end}}, stream_time = number }
    late = 0, closed = 0,
  }, Window)
  t.window = w
  local app = t.app
  -- The closer: every table_cleanup_interval, close what has expired.
  app.tasks[#app.tasks + 1] = {
    name = "window closer of " .. t.name,
    restart = true,
    fn = function()
      while true do
        core.sleep(app.table_cleanup_interval)
        for p in pairs(w.parts) do w:close_expired(t, p) end
      end
    end,
  }
end

local UNITS = { s = 1, ms = 1000, us = 1000000, ns = 1000000000 }

function M.relative(t, how, field, opts)
  local w = t.window
  if not w then error(string.format("table '%s': call tumbling, hopping or sliding first", t.name), 3) end
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
    local wp = self.parts[p]
    local own = false
    for _, win in pairs(wp and wp.index or {}) do
      if win.key == key and win.start <= at and at < win.start + self.size then
        out[#out + 1] = win.start
        if win.start == at then own = true end
      end
    end
    if not own then out[#out + 1] = at end
    table.sort(out)
  end
  return out
end

local function window_kb(key, start)
  return json.encode { key, start }
end

-- A binary min-heap of numbers (distinct window ends of a partition).
local function heap_push(h, v)
  local i = #h + 1
  h[i] = v
  while i > 1 do
    local parent = i // 2
    if h[parent] <= v then break end
    h[i], h[parent] = h[parent], v
    i = parent
  end
end

local function heap_pop(h)
  local top, n = h[1], #h
  local last = h[n]
  h[n] = nil -- (one slot when n == 1: not a multiple assignment, whose order is undefined)
  n = n - 1
  if n == 0 then return top end
  h[1] = last
  local i = 1
  while true do
    local l, r, m = 2 * i, 2 * i + 1, i
    if l <= n and h[l] < h[m] then m = l end
    if r <= n and h[r] < h[m] then m = r end
    if m == i then break end
    h[i], h[m] = h[m], h[i]
    i = m
  end
  return top
end

-- Registers an open window (or, in combine mode, a slice) of partition state wp.
-- Windows are bucketed by their end, so closing touches only what is due.
function Window:track(wp, kb, key, start)
  if wp.index[kb] then return end
  if self.combine then
    wp.index[kb] = { key = key, start = start, ["end"] = start + self.step }
    local ks = json.encode(key)
    local l = wp.keys[ks]
    if not l then l = { key = key }; wp.keys[ks] = l end
    local n = #l
    if n == 0 or l[n] < start then
      l[n + 1] = start
    else -- out of order: keep the list sorted
      l[n + 1] = start
      table.sort(l)
    end
    self:note_slice(wp, start)
    return
  end
  local e = start + self.size
  wp.index[kb] = { key = key, start = start, ["end"] = e }
  local b = wp.buckets[e]
  if not b then
    b = {}
    wp.buckets[e] = b
    heap_push(wp.ends, e)
  end
  b[#b + 1] = kb
end

function Window:part(t, p)
  local wp = self.parts[p]
  if not wp then error(string.format("table '%s': partition %d is not on this worker", t.name, p), 4) end
  return wp
end

function Window:clock(p)
  if self.time == "now" then return nil end
  return self.parts[p].stream_time
end

function Window:is_closed(p, t, start)
  local now = self.time == "now" and t.app.rt:now() or self.parts[p].stream_time
  return now ~= nil and now > start + self.size + self.expires
end

-- A new window's value: the table's default (a function's result).
local default_value = Table.default_of

-- t:update(key, fn): fn applied to the value of every window containing the
-- event's time (a hopping event updates size/step windows).
function Window:update(t, key, fn)
  local at = self:event_time(t)
  check_time(self, t, at, 3)
  local p = Table.event_partition() or error(string.format(
    "windowed table '%s': update must happen while an agent processes an event", t.name), 3)
  local wp = self:part(t, p)
  if self.time ~= "now" and (wp.stream_time == nil or at > wp.stream_time) then
    wp.stream_time = at
    Table._put(t, p, STREAM_TIME, at)
  end
  if self.combine then return self:update_slice(t, p, wp, key, at, fn) end
  if self.kind == "sliding" then return self:update_sliding(t, p, wp, key, at, fn) end
  -- Tumbling and hopping: the windows containing `at` start at the multiples
  -- of step in (at - size, at]; window s is closed once now > s + size + expires.
  local step = self.step
  local newest = math.floor(at / step) * step
  local oldest = (math.floor((at - self.size) / step) + 1) * step
  local now = self.time == "now" and t.app.rt:now() or wp.stream_time
  local first = math.max(oldest, math.ceil((now - self.size - self.expires) / step) * step)
  local result
  for s = newest, first, -step do result = self:apply(t, p, wp, key, s, fn) end
  if first > oldest then self:late_event(t, key) end
  self:maybe_close(t, p)
  return result
end

-- fn applied to the value of window (or, with combine, slice) `start` of key.
function Window:apply(t, p, wp, key, start, fn)
  local kb = self:kb(wp, key, start)
  local old = Table._lookup(t, p, kb)
  if old == nil then old = default_value(t) end
  local result = fn(old)
  Table._put(t, p, kb, result)
  if not wp.index[kb] then self:track(wp, kb, key, start) end
  return result
end

-- The key bytes of window (key, start), kept while the window is open so that
-- an event does not encode JSON once per window it updates.
function Window:kb(wp, key, start)
  local per = wp.kbs[key]
  if not per then per = {}; wp.kbs[key] = per end
  local kb = per[start]
  if not kb then
    kb = window_kb(key, start)
    per[start] = kb
  end
  return kb
end

function Window:forget_kb(wp, key, start)
  local per = wp.kbs[key]
  if per then
    per[start] = nil
    if next(per) == nil then wp.kbs[key] = nil end
  end
end

-- Sliding: the key's open windows containing `at`, and one starting at `at`.
function Window:update_sliding(t, p, wp, key, at, fn)
  local late = false
  local result
  for _, s in ipairs(self:starts(t, p, key, at)) do
    if self:is_closed(p, t, s) then
      late = true
    else
      result = self:apply(t, p, wp, key, s, fn)
    end
  end
  if late then self:late_event(t, key) end
  self:maybe_close(t, p)
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

-- combine mode: the event goes into its step-slice only.
function Window:update_slice(t, p, wp, key, at, fn)
  local step = self.step
  local newest = math.floor(at / step) * step
  local oldest = (math.floor((at - self.size) / step) + 1) * step
  if self:is_closed(p, t, newest) then -- every window of this event has closed
    self:late_event(t, key)
    return nil
  end
  if self:is_closed(p, t, oldest) then self:late_event(t, key) end
  local result = self:apply(t, p, wp, key, newest, fn)
  self:maybe_close(t, p)
  return result
end

-- The end of the first window containing slice u that is still open at time
-- `now` (nil: every window containing it has closed).
function Window:first_open_end(u, now)
  local e = u + self.step
  if now ~= nil and e + self.expires < now then
    e = e + self.step * math.ceil((now - self.expires - e) / self.step)
    if e + self.expires < now then e = e + self.step end
  end
  if e > u + self.size then return nil end
  return e
end

function Window:note_slice(wp, u)
  local e = self:first_open_end(u, wp.closed_through)
  if e and (not wp.next_due or e + self.expires < wp.next_due) then wp.next_due = e + self.expires end
end

-- The value of hopping window [s, s + size) folded from its slices.
function Window:fold(t, p, key, s)
  local acc
  for u = s, s + self.size - self.step, self.step do
    local v = Table._lookup(t, p, window_kb(key, u))
    if v ~= nil then
      if acc == nil then acc = v else acc = self.combine(acc, v) end
    end
  end
  return acc
end

-- t[key] = v: tumbling tables only (a hopping event belongs to several windows).
function Window:assign(t, key, v)
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
  for _, q in ipairs(parts) do
    if w.combine then
      local v = w:fold(t, q, ws.key, math.floor(at / w.step) * w.step)
      if v ~= nil then return v end
      goto continue
    end
    starts = w:starts(t, q, ws.key, at)
    -- The newest window containing the time (Faust's choice for value()).
    for i = #starts, 1, -1 do
      local v = Table._lookup(t, q, window_kb(ws.key, starts[i]))
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
  for p, wp in pairs(w.parts) do
    for kb, win in pairs(wp.index) do
      if win.key == self.key then
        out[#out + 1] = { start = win.start, ["end"] = win["end"], value = Table._lookup(t, p, kb) }
      end
    end
  end
  table.sort(out, function(a, b) return a.start < b.start end)
  return out
end

-- Rebuilds the partition's window index and stream time from its entries.
function Window:hold(t, p)
  local wp = { index = {}, buckets = {}, ends = {}, keys = {}, kbs = {}, stream_time = nil }
  self.parts[p] = wp
  if not t.app.rt then return end
  for kb, v in pairs(Table._scan(t, p)) do
    if kb == STREAM_TIME then
      wp.stream_time = v
    elseif kb == CLOSED_THROUGH then
      wp.closed_through = v
    elseif kb:byte(1) ~= 0 then
      local k = json.decode(kb)
      if type(k) == "table" and k[2] ~= nil then self:track(wp, kb, k[1], k[2]) end
    end
  end
end

function Window:release(_, p)
  self.parts[p] = nil
end

-- A close pass is under way, unless the coroutine running it died before it
-- finished (interrupted by agent_timeout in on_window_close, or killed).
local function closing(wp)
  local co = wp.closing
  return co ~= nil and not core.ended(co)
end

-- combine mode: closes, in order, the windows that expired since the last
-- pass — each folded from its slices — then drops the slices that no open
-- window needs any more.
function Window:close_slices(t, p, wp)
  local now = self.time == "now" and t.app.rt:now() or wp.stream_time
  if now == nil then return end
  local gone = now - self.size - self.expires -- windows starting before this have closed
  local from = wp.closed_through and (wp.closed_through - self.size - self.expires) or -math.huge
  local lists = {}
  for ks, l in pairs(wp.keys) do lists[#lists + 1] = { ks, l } end
  table.sort(lists, function(a, b) return a[1] < b[1] end)
  wp.closing = coroutine.running()
  local on_close = t.on_window_close
  for _, entry in ipairs(lists) do
    local l = entry[2]
    -- Due starts: closed now, not closed at the last pass, overlapping a slice.
    local lo = math.max(from, l[1] - self.size + self.step)
    -- Windows starting before `from` were closed by an earlier pass.
    local s = math.ceil(lo / self.step) * self.step
    while s < gone and s <= l[#l] do
      local value = self:fold(t, p, l.key, s)
      if value ~= nil then
        self.closed = self.closed + 1
        if on_close then
          local ok, err = xpcall(on_close, debug.traceback, l.key, { start = s, ["end"] = s + self.size }, value)
          if not ok then core.log("error", string.format("on_window_close of %s failed: %s", t.name, err)) end
        end
      end
      s = s + self.step
    end
    -- Slices whose newest window (the one starting at them) has closed.
    local keep = 0
    for i = 1, #l do
      local u = l[i]
      if u < gone then
        local kb = window_kb(l.key, u)
        wp.index[kb] = nil
        self:forget_kb(wp, l.key, u)
        Table._put(t, p, kb, nil)
      else
        keep = keep + 1
        l[keep] = u
      end
    end
    for i = #l, keep + 1, -1 do l[i] = nil end
    if keep == 0 then wp.keys[entry[1]] = nil end
  end
  wp.closed_through = now
  Table._put(t, p, CLOSED_THROUGH, now)
  wp.closing = nil
  wp.next_due = nil
  for _, l in pairs(wp.keys) do
    for _, u in ipairs(l) do self:note_slice(wp, u) end
  end
end

-- Closes, in end order, every window of partition p that has expired.
function Window:close_expired(t, p)
  local wp = self.parts[p]
  if not wp or closing(wp) then return end
  if self.combine then return self:close_slices(t, p, wp) end
  local now = self.time == "now" and t.app.rt:now() or wp.stream_time
  if now == nil then return end
  wp.closing = coroutine.running()
  local on_close = t.on_window_close
  while wp.ends[1] and wp.ends[1] + self.expires < now do
    local e = heap_pop(wp.ends)
    local bucket = wp.buckets[e]
    wp.buckets[e] = nil
    table.sort(bucket)
    for _, kb in ipairs(bucket) do
      local win = wp.index[kb]
      if win and self.parts[p] == wp then
        local value = Table._lookup(t, p, kb)
        if value == nil then value = default_value(t) end
        wp.index[kb] = nil
        self:forget_kb(wp, win.key, win.start)
        Table._put(t, p, kb, nil)
        self.closed = self.closed + 1
        if on_close then
          local ok, err = xpcall(on_close, debug.traceback, win.key,
            { start = win.start, ["end"] = win["end"] }, value)
          if not ok then core.log("error", string.format("on_window_close of %s failed: %s", t.name, err)) end
        end
      end
    end
  end
  wp.closing = nil
end

-- When stream time moved past a window's expiry, close right away, in the
-- agent's coroutine, before the next event is applied: an out-of-order event
-- after that point finds its window closed (late) in both update paths.
function Window:maybe_close(t, p)
  local wp = self.parts[p]
  if closing(wp) or self.time == "now" then return end
  local due
  if self.combine then due = wp.next_due
  else due = wp.ends[1] and wp.ends[1] + self.expires end
  if due and wp.stream_time > due then self:close_expired(t, p) end
end

M.Window = Window
return M
