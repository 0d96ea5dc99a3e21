-- Session windows: t:session(gap, {expires=, combine=}).
--
-- A key's events closer than `gap` seconds form one session, the window
-- [first event, last event + gap). An event joins every session of its key
-- it is closer than `gap` to (start - gap < t < end); when it joins two, they
-- merge into one (Kafka Streams' session windows, with a strict "closer
-- than"). A session closes like any window, once stream time (the clock for
-- relative_to_now) passes end + expires.
--
-- Storage: a session is the table entry '[key, start]' holding its value,
-- and a runtime entry "\0end" .. that key holding its end (an entry key
-- cannot change as the session grows without a tombstone per event; its
-- start rarely changes). The C index (core.windows, kind "session") keeps
-- the open sessions per key and closes them in end order; this file decides
-- what an event joins and how values merge.
--
-- Values: with `combine(a, b)` (associative, a earlier than b) a merge folds
-- the sessions' values and update's fn receives the fold (or the default);
-- `t[key] = v` combines v into the session. Without combine a session's
-- value is the list of its events' values: `t[key] = v` adds v, update adds
-- fn(default); merged lists are joined in time order.
--
-- Late events: an event is late when its session would close at once
-- (joining no open session, t + gap + expires < now), or when the key had a
-- session close that the event lies before the end of (it would re-open or
-- overlap a closed session). The end of a key's last closed session is kept
-- ("\0closed" .. key JSON) until no event can reach it any more (its end +
-- gap + expires is behind stream time).
local core = require "fstream.core"
local Table = require "fstream.table"

local json = core.json
local STREAM_TIME = "\0stream_time"
local END = "\0end"
local CLOSED = "\0closed"
local _lookup, _put, default_value = Table._lookup, Table._put, Table.default_of

local M = {}

-- Partition state beyond the index: marks[key JSON] = end of the key's last
-- closed session; a queue of them in closing (end) order to forget them;
-- mark_max, no mark is later (an event at or after it needs no look-up, so
-- events in time order do not encode their key for it).
local function fresh_part()
  return { marks = {}, qk = {}, qe = {}, qhead = 1, mark_max = -math.huge }
end

local function mark(wp, t, p, kj, e)
  local old = wp.marks[kj]
  if old and old >= e then return end
  wp.marks[kj] = e
  if e > wp.mark_max then wp.mark_max = e end
  wp.qk[#wp.qk + 1], wp.qe[#wp.qe + 1] = kj, e
  _put(t, p, CLOSED .. kj, e)
end

-- What t[key] = v hands to update instead of a function: add v.
local ADD = {}
function M.adding(v) return setmetatable({ v }, ADD) end

-- idle_close (any kind) and a session's combine, checked and taken out of a
-- window's options: opts without them, idle_close, combine.
function M.own_options(kind, opts, level)
  level = level + 1
  local rest = {}
  for k, v in pairs(opts) do rest[k] = v end
  local idle = rest.idle_close
  rest.idle_close = nil
  if idle ~= nil and (type(idle) ~= "number" or not (idle > 0) or idle == math.huge) then
    error(kind .. ": idle_close must be a positive number of seconds", level)
  end
  local combine
  if kind == "session" then
    combine, rest.combine = rest.combine, nil
    if combine ~= nil and type(combine) ~= "function" then
      error("session: combine must be a function(a, b) -> a and b combined", level)
    end
  end
  return rest, idle, combine
end

-- The session update: fn (t:update) or M.adding(v) (t[key] = v).
function M.update(w, t, p, idx, key, at, fn)
  local value
  if getmetatable(fn) == ADD then fn, value = nil, fn[1] end
  if fn == nil and value == nil then
    error(string.format("session table '%s': a session takes values (t[key] = v or t:update(key, fn)); "
      .. "it closes on its own", t.name), 4)
  end
  local out = w.sout
  if out then w.sout = false else out = {} end -- (a nested update gets its own)
  local n, advanced, due = idx:session_touch(p, key, at, out)
  if not n then error(string.format("table '%s': partition %d is not on this worker", t.name, p), 4) end
  if advanced then _put(t, p, STREAM_TIME, at) end
  local wp = w.parts[p]
  local gap = w.size
  local now = w.time == "now" and t.app.rt:now() or idx:times(p)
  local late = n == 0 and at + gap + w.expires < now
  if not late and wp.marks and at < wp.mark_max and next(wp.marks) then
    local e = wp.marks[json.encode(key)]
    late = e ~= nil and at < e
  end
  if late then
    w.sout = out
    w:late_event(t, key)
    if due then w:maybe_close(t, p) end
    return nil
  end
  local start, e = at, at + gap
  for i = 1, n do
    local s, se = out[3 * i - 1], out[3 * i]
    if s < start then start = s end
    if se > e then e = se end
  end
  local merge, result = w.session_combine, nil
  if merge then
    local acc
    for i = 1, n do
      local v = _lookup(t, p, out[3 * i - 2])
      if v ~= nil then
        if acc == nil then acc = v else acc = merge(acc, v) end
      end
    end
    if fn then
      if acc == nil then acc = default_value(t) end
      result = fn(acc)
    elseif acc == nil then
      result = value
    else
      result = merge(acc, value)
    end
  else
    local item = value
    if fn then item = fn(default_value(t)) end
    local one = n == 1 and _lookup(t, p, out[1]) or nil
    if n == 1 and type(one) == "table" and out[2] <= at then
      -- The common case: one session, the event after its start. Appended
      -- in place (the record cache holds the live list).
      one[#one + 1] = item
      result = one
    else
      result = {}
      local placed = false
      for i = 1, n do
        if not placed and out[3 * i - 1] > at then
          result[#result + 1] = item
          placed = true
        end
        local v = _lookup(t, p, out[3 * i - 2])
        if type(v) == "table" then
          for _, x in ipairs(v) do result[#result + 1] = x end
        end
      end
      if not placed then result[#result + 1] = item end
    end
  end
  -- fn has run: from here on nothing raises before the state is consistent.
  for i = 1, n do
    local s = out[3 * i - 1]
    if s ~= start then
      local kb = out[3 * i - 2]
      _put(t, p, kb, nil)
      _put(t, p, END .. kb, nil)
      idx:session_remove(p, key, s)
    end
  end
  local kb, due2 = idx:session_put(p, key, start, e)
  _put(t, p, kb, result)
  _put(t, p, END .. kb, e)
  w.sout = out
  if due or due2 then w:maybe_close(t, p) end
  return result
end

-- A session closed (its entry is deleted by the close pass): its end entry
-- goes, and its end is remembered for lateness.
function M.closed(w, t, p, kb, key, e)
  _put(t, p, END .. kb, nil)
  local wp = w.parts[p]
  if wp and wp.marks then mark(wp, t, p, json.encode(key), e) end
end

-- After a close pass at `now`: forgets the marks no event can reach.
function M.sweep(w, t, p, now)
  local wp = w.parts[p]
  if not wp or not wp.marks then return end
  local qk, qe, h = wp.qk, wp.qe, wp.qhead
  local reach = w.size + w.expires
  while qk[h] ~= nil and qe[h] + reach < now do
    local kj, e = qk[h], qe[h]
    qk[h], qe[h] = nil, nil
    if wp.marks[kj] == e then
      wp.marks[kj] = nil
      _put(t, p, CLOSED .. kj, nil)
    end
    h = h + 1
  end
  if qk[h] == nil then wp.qk, wp.qe, h, wp.mark_max = {}, {}, 1, -math.huge end
  wp.qhead = h
end

-- Taking partition p: the index from the stored sessions with their ends,
-- and the marks.
function M.hold(w, t, p, idx, keys, values, st, ct)
  local wp = fresh_part()
  for k, v in pairs(w.parts[p] or {}) do wp[k] = v end
  w.parts[p] = wp
  local ends, marks = {}, {}
  local ne, nc = #END, #CLOSED
  for i = 1, #keys do
    local kb = keys[i]
    if kb:byte(1) == 0 then
      if kb:sub(1, ne) == END then
        ends[kb:sub(ne + 1)] = t.decode_value(values[i])
      elseif kb:sub(1, nc) == CLOSED then
        marks[#marks + 1] = { kb:sub(nc + 1), t.decode_value(values[i]) }
      end
    end
  end
  table.sort(marks, function(a, b) return a[2] < b[2] end)
  for i, m in ipairs(marks) do
    wp.marks[m[1]] = m[2]
    if m[2] > wp.mark_max then wp.mark_max = m[2] end
    wp.qk[i], wp.qe[i] = m[1], m[2]
  end
  idx:hold(p, keys, st, ct, ends)
end

-- The value of the key's session containing time `at` in the partitions
-- `parts`, or the default.
function M.value_at(w, t, key, at, parts)
  local idx = w.idx
  for _, q in ipairs(parts) do
    for _, win in ipairs(idx and idx:key_windows(q, key) or {}) do
      if win[2] <= at and at < win[3] then
        local v = _lookup(t, q, win[1])
        if v ~= nil then return v end
      end
    end
  end
  return default_value(t)
end

return M
