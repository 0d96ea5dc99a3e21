-- Joins.
--
-- Stream-table (inside an agent):
--   for order, customer in stream:join(customers) do        -- on the event's key
--   for order, customer in stream:lookup(customers, function(o) return o.customer_id end) do
-- The table is read in the partition of the event in hand, so the stream and a
-- partitioned table must be co-partitioned: the same partition count, and the
-- table's keys written by events keyed like the stream's. A global table holds
-- every key everywhere and needs neither.
--
-- Stream-stream (declared as an agent's source):
--   app:agent("matches", clicks:join(views, { within = 10, key = "ad_id", type = "left" }),
--     function(stream) for click, view in stream do ... end end)
-- Each side's events wait in a table of their own (changelogged like any
-- table) until no event of the other side can match them any more.
local core = require "fstream.core"
local Table = require "fstream.table"
local Heap = require "fstream.heap"

local Join = {}

local MODE_ITEMS = 1

-- A stopping error: a join that cannot be right for any event is a mistake in
-- the app, not in one event, so the worker stops and says why (the agent's
-- error policy would log and go on reading nothing it could join).
local function misconfigured(agent, msg, level)
  local rt = agent.app.rt
  core.log("error", msg)
  if rt then rt:fatal(msg) end
  error(msg, level + 1)
end

-- The key of the event in hand, decoded as its topic declares (nil: no key).
local function event_key(stream)
  local cs = stream.cs
  local i, _, mode = cs:cursor()
  local k
  if mode == MODE_ITEMS then
    k = stream.buf[2 * i - 1]
  else
    local _
    _, _, k = cs:origin(i, true)
    if k ~= nil and k ~= core.null and stream.agent.post_decode then
      local err
      k, err = stream.agent.topics_by_name[(cs:meta(i))]:decode_key(k)
      if err then error("join: the event's key: " .. err, 0) end
    end
  end
  if k == core.null then return nil end
  return k
end

local function same_key(a, b)
  if a == b then return true end
  local ta, tb = type(a), type(b)
  return ta ~= tb and (ta == "number" or tb == "number") and tostring(a) == tostring(b)
end

-- What a stream-table join checks once, when the agent starts it.
local function table_of(stream, tbl, what, level)
  local state = Table.state(tbl)
  local agent = stream.agent
  if not state then
    error(string.format("%s needs a table of the app (app:table or app:global_table)%s", what,
      what == "join" and ", or is declared as an agent's source for a stream-stream join: "
        .. "app:agent(name, left:join(right, {within = seconds}), fn)" or ""), level + 1)
  end
  if state.window then
    error(string.format("%s: table %s is windowed; join a table that is not", what, state.name), level + 1)
  end
  if state.app ~= agent.app then
    error(string.format("%s: table %s belongs to another app", what, state.name), level + 1)
  end
  if not state.global then
    for _, t in ipairs(agent.topics) do
      if t.partitions ~= state.partitions then
        misconfigured(agent, string.format("agent %s: %s with table %s: topic %s has %d partitions but the table has "
          .. "%d, so partition p of the one does not hold the keys of partition p of the other — repartition the "
          .. "stream through a topic of %d partitions keyed like the table (stream:through(topic); "
          .. "stream:group_by(key) re-keys it), or make %s an app:global_table", agent.name, what, state.name,
          t.name, t.partitions, state.partitions, state.partitions, state.name), level + 1)
      end
    end
  end
  return state
end

local function options(what, opts, level)
  opts = opts or {}
  if type(opts) ~= "table" then error(what .. ": options must be a table", level + 1) end
  for k in pairs(opts) do
    if k ~= "type" then error(string.format("%s: unknown option '%s'", what, tostring(k)), level + 1) end
  end
  local ty = opts.type or (what == "lookup" and "left" or "inner")
  if ty ~= "inner" and ty ~= "left" then
    error(string.format("%s: type must be \"inner\" or \"left\", got %s", what, tostring(ty)), level + 1)
  end
  return ty
end

-- An iterator for `for value, table_value in ...`. `pull` gives the stream's
-- (or view's) next value, and with `keyed` the event's key after it;
-- `keyof(value, key)` the key to read (nil: none), where key is the event's
-- key, nil when it has none, or UNKNOWN when the view did not give it.
local UNKNOWN = {}

-- How many misses of a join on a partitioned table are looked up in the
-- worker's other partitions of the table: a key found there means the table's
-- writers' events are keyed or partitioned otherwise than the stream, which no
-- start-up check can see (the first misses tell; later ones cost nothing).
local MISS_CHECKS = 64

local function misplaced(base, state, k, what)
  local p = Table.event_partition()
  local kb = state.encode_key(k)
  for q in pairs(state.parts) do
    if q ~= p and Table._lookup(state, q, kb) ~= nil then
      local topic = base:current()
      misconfigured(base.agent, string.format("agent %s: %s with table %s: key %s is not in partition %d, the "
        .. "event's (%s[%d]), but in partition %d: the table is written by events keyed or partitioned otherwise "
        .. "than this stream, so its partition p does not hold the keys of the stream's partition p — key the "
        .. "table's input like the stream (stream:group_by(key) in the agent that writes it), or make %s an "
        .. "app:global_table", base.agent.name, what, state.name, core.json.encode(k), p, tostring(topic), p, q,
        state.name), 2)
    end
  end
end

local function table_join(base, pull, keyed, state, keyof, inner, use_default, what)
  local proxy = state.proxy
  local checks = not state.global and MISS_CHECKS or 0
  return function()
    while true do
      local v, ek = pull()
      if v == nil then return nil end
      if not keyed then ek = UNKNOWN elseif ek == core.null then ek = nil end
      local k = keyof(v, ek)
      local tv
      if k ~= nil then
        tv = proxy:get(k)
        if tv == nil and checks > 0 then
          checks = checks - 1
          misplaced(base, state, k, what)
        end
        if tv == nil and use_default then tv = Table.default_of(state) end
      end
      if tv ~= nil or not inner then return v, tv end
      -- inner: an event with no table value is left out (and acknowledged with the next)
    end
  end
end

-- stream:join(table[, {type = "inner"|"left"}]): each value with the table's
-- value under the event's key. inner (default) skips events whose key the table
-- does not hold; left yields them with nil.
-- `base`: the agent's stream; `pull`, `keyed`: its values (see table_join).
function Join.with_table(base, pull, keyed, tbl, opts, level)
  level = level + 1
  local state = table_of(base, tbl, "join", level)
  local inner = options("join", opts, level) == "inner"
  return table_join(base, pull, keyed, state, function(_, ek)
    if ek == UNKNOWN then return event_key(base) end
    return ek
  end, inner, false, "join")
end

-- stream:lookup(table, key_fn[, {type = "left"|"inner"}]): each value with
-- table[key_fn(value)] (the table's default when missing, as any read; inner
-- skips missing keys instead). key_fn may be a field name. On a partitioned
-- table the looked-up key must be the event's own key: the event's partition
-- holds no other (otherwise: group_by first, or a global table).
function Join.lookup(base, pull, keyed, tbl, key_fn, opts, level)
  level = level + 1
  local state = table_of(base, tbl, "lookup", level)
  if type(key_fn) == "string" then
    local field = key_fn
    key_fn = function(v) return type(v) == "table" and v[field] or nil end
  elseif type(key_fn) ~= "function" then
    error("lookup needs a key: a field name or a function(value) -> key", level)
  end
  local inner = options("lookup", opts, level) == "inner"
  local keyof = function(v) return key_fn(v) end
  if not state.global then
    keyof = function(v, ek)
      local k = key_fn(v)
      if k == nil then return nil end
      if ek == UNKNOWN then ek = event_key(base) end
      if not same_key(k, ek) then
        local topic, p = base:current()
        misconfigured(base.agent, string.format("agent %s: lookup in table %s by key %s, but the event (%s[%s]) is "
          .. "keyed %s: table %s is partitioned, and the event's partition holds only the keys of its own events — "
          .. "repartition the stream with stream:group_by(key) first so events are keyed by what they look up, or "
          .. "make %s an app:global_table", base.agent.name, state.name, core.json.encode(k), tostring(topic),
          tostring(p), ek == nil and "with no key" or core.json.encode(ek), state.name, state.name), 1)
      end
      return k
    end
  end
  return table_join(base, pull, keyed, state, keyof, inner, not inner, "lookup")
end

-- Stream-stream joins ----------------------------------------------------

local Source = {}
Source.__index = Source

local JOIN_OPTIONS = { within = true, key = true, type = true, grace = true, name = true, time = true }

local function side_of(src, level)
  local Topic = require "fstream.topic"
  if getmetatable(src) == Topic then return { topics = { src }, processors = {}, topic = src } end
  if type(src) == "table" and src.is_stream_source then
    if #src.topics ~= 1 then error("join: each side is one topic (or app:stream of one topic)", level + 1) end
    return { topics = src.topics, processors = src.processors, topic = src.topics[1], source = src }
  end
  error("join: each side must be a topic or app:stream(topic)", level + 1)
end

-- left:join(right, {within = seconds, key = field | function(value), type = "inner"|"left", grace = seconds,
--                    time = field | function(value) -> seconds (default: the message's timestamp)})
-- (left, right: topics or app:stream(topic)). A source for app:agent.
function Join.streams(left, right, opts, level)
  level = level + 1
  if Table.state(right) then
    error("join with a table happens in the agent: `for v, tv in stream:join(table) do`", level)
  end
  opts = opts or {}
  if type(opts) ~= "table" then error("join: options must be a table", level) end
  for k in pairs(opts) do
    if not JOIN_OPTIONS[k] then error(string.format("join: unknown option '%s'", tostring(k)), level) end
  end
  local within = opts.within
  if type(within) ~= "number" or within ~= within or within < 0 or within == math.huge then
    error("join: within must be a number of seconds >= 0 (how far apart two events' times may be)", level)
  end
  local grace = opts.grace or 0
  if type(grace) ~= "number" or grace ~= grace or grace < 0 or grace == math.huge then
    error("join: grace must be a number of seconds >= 0", level)
  end
  local key = opts.key
  if key ~= nil and type(key) ~= "string" and type(key) ~= "function" then
    error("join: key must be a field name or a function(value) -> key", level)
  end
  local ty = opts.type or "inner"
  if ty ~= "inner" and ty ~= "left" then
    error("join: type must be \"inner\" or \"left\", got " .. tostring(ty), level)
  end
  local time = opts.time
  if time ~= nil and type(time) ~= "string" and type(time) ~= "function" then
    error("join: time must be a field name or a function(value) -> seconds (default: the message's timestamp)", level)
  end
  if opts.name ~= nil and (type(opts.name) ~= "string" or not opts.name:match("^[%w%._%-]+$")) then
    error("join: name must be letters, digits, '.', '_' or '-'", level)
  end
  local l, r = side_of(left, level), side_of(right, level)
  if l.topic == r.topic then error("join: a topic joined with itself is not supported", level) end
  if key == nil and (#l.processors > 0 or #r.processors > 0) then
    error("join: sides with processors need key = ... (the join then repartitions them after the processors)", level)
  end
  return setmetatable({
    is_join = true, left = l, right = r, within = within, grace = grace, key = key, time = time,
    left_join = ty == "left",
    name = opts.name or "join",
  }, Source)
end

-- Called by Agent.new for an agent whose source is a join: returns the topics
-- the agent reads, declares the two buffer tables and wraps the agent's function.
function Source:attach(agent, level)
  level = level + 1
  if self.agent then error("join: this join is already the source of agent " .. self.agent.name, level) end
  if agent.concurrency ~= 1 then
    error(string.format("agent '%s': a join's agent runs one instance (concurrency = 1): "
      .. "its events must be taken in each partition's order", agent.name), level)
  end
  if agent.retry then
    -- Retried events come back through one topic of the agent's, whichever side
    -- they were from; the join tells the sides by topic.
    error(string.format("agent '%s': on_error = \"retry\" is not supported on a join's agent (use \"dlq\")",
      agent.name), level)
  end
  self.agent = agent
  local app = agent.app
  local topics
  for _, side in ipairs { self.left, self.right } do
    if side.source then side.source.used_by = agent end
  end
  if self.key ~= nil then
    -- Both sides re-keyed by the join key, into topics of one partition count
    -- (the right one follows the left one's): co-partitioned whatever the inputs.
    local Topic = require "fstream.topic"
    local lt = agent:_repartition(Topic.group_by_source(self.left.topics, self.left.processors, self.key,
      { name = self.name .. "-left" }, level), level)
    local rtop = agent:_repartition(Topic.group_by_source(self.right.topics, self.right.processors, self.key,
      { name = self.name .. "-right" }, level), level)
    rtop.follows = lt
    topics = { lt, rtop }
  else
    topics = { self.left.topic, self.right.topic }
  end
  self.topic_names = { topics[1].name, topics[2].name }
  self.value_types = { self.left.topic.value_type, self.right.topic.value_type }
  local base = (agent.name .. "-" .. self.name):gsub("[^%w%._%-]", "_")
  self.buffers = {
    Table.state(app:table(base .. "-left")),
    Table.state(app:table(base .. "-right")),
  }
  self.parts = {} -- partition -> what this worker knows of the buffers there (see part_of)
  local fn = agent.fn
  agent.fn = function(stream) return fn(Join.stream(self, stream)) end
  return topics
end

-- Each partition's side times are kept in the left buffer under the key
-- {"$time": true} (join keys are strings or numbers, so it is no event's),
-- so that a restarted worker replays its input with the times it had at the
-- checkpoint.
local TIME_KEY = core.json.encode { ["$time"] = true }

-- What the join knows of partition p: each side's time (the newest event time
-- seen there) and each side's heap of buffered events. Built from the buffers
-- when the worker (re)takes p. A side's heap holds its buffered events'
-- (time, join key): expiring looks at the events whose time has passed and
-- nothing else, whatever the number of keys. (A key may be in it several
-- times; the first of them to come out expires all of the key's events that
-- are due.)
local function part_of(self, p)
  local b1, b2 = self.buffers[1], self.buffers[2]
  local P = self.parts[p]
  if P and P.held1 == b1.parts[p] and P.held2 == b2.parts[p] then return P end
  local saved = Table._lookup(b1, p, TIME_KEY)
  local cell = type(saved) == "table" and { l = saved.l, r = saved.r } or {}
  P = {
    time = { cell.l or -math.huge, cell.r or -math.huge }, cell = cell,
    heap = { Heap.new(), Heap.new() },
    held1 = b1.parts[p], held2 = b2.parts[p],
  }
  for s, b in ipairs(self.buffers) do
    for kb, list in pairs(Table._scan(b, p)) do
      if kb ~= TIME_KEY then
        local k = b.decode_key(kb)
        for _, e in ipairs(list) do Heap.push(P.heap[s], e.t, k) end
      end
    end
  end
  self.parts[p] = P
  return P
end

local JoinStream = {}

-- The agent's stream of a join: `for left, right in stream do`; the other
-- methods (yield, current, ...) are the stream's.
function Join.stream(src, base)
  return setmetatable({ src = src, base = base, ql = {}, qr = {}, qn = 0, qi = 0 }, JoinStream)
end

JoinStream.__index = function(self, k)
  local m = JoinStream[k]
  if m ~= nil then return m end
  local base = rawget(self, "base")
  local f = base[k]
  if type(f) == "function" then
    local w = function(s, ...)
      if s == self then s = base end
      return f(s, ...)
    end
    rawset(self, k, w) -- made once per method
    return w
  end
  return f
end

local function emit(self, l, r)
  local n = self.qn + 1
  self.ql[n], self.qr[n], self.qn = l, r, n
end

-- A buffered value as the side's topic gives it (a record again after LMDB).
local function revive(self, s, v)
  local ty = self.value_types[s]
  if type(ty) == "table" and type(v) == "table" and getmetatable(v) == nil then return ty.from(v) end
  return v
end

-- Drops side s's buffered events older than `limit` in partition p (the one
-- in hand); unmatched left events of a left join go out with nil.
local function expire(self, P, s, limit)
  local src = self.src
  local buf = src.buffers[s].proxy
  local h = P.heap[s]
  local ts = h.t
  while h.n > 0 and ts[1] < limit do
    local k = Heap.pop(h)
    local list = buf[k]
    if list then
      local keep, dropped = {}, false
      for _, e in ipairs(list) do
        if e.t >= limit then
          keep[#keep + 1] = e
        else
          dropped = true
          if s == 1 and src.left_join and not e.m then emit(self, revive(src, 1, e.v), nil) end
        end
      end
      if dropped then
        if #keep > 0 then buf[k] = keep else buf[k] = nil end -- nil: a tombstone in the changelog
      end
    end
  end
end

local function join_event(self, v)
  local src, base = self.src, self.base
  local topic, p, _, ts = base:current()
  local time = src.time
  if time ~= nil then
    if type(time) == "string" then ts = type(v) == "table" and v[time] or nil else ts = time(v) end
    if type(ts) ~= "number" or ts ~= ts or math.abs(ts) == math.huge then
      error(string.format("join of agent %s: the event's time must be a number of seconds, got %s", base.agent.name,
        tostring(ts)), 0)
    end
  elseif ts == nil then
    ts = base.agent.app.rt:now()
  end
  local s = topic == src.topic_names[1] and 1 or 2
  local o = 3 - s
  local key = src.key
  local k
  if key == nil then
    k = event_key(base)
  elseif type(key) == "string" then
    k = type(v) == "table" and v[key] or nil
  else
    k = key(v)
  end
  local left_join = src.left_join
  if k == nil or k == core.null then
    -- No key, nothing to match: a left join still yields its left events.
    if s == 1 and left_join then emit(self, v, nil) end
    return
  end
  local tk = type(k)
  if tk ~= "string" and tk ~= "number" then
    error(string.format("join of agent %s: the key must be a string or a number, got %s", base.agent.name, tk), 0)
  end
  local P = part_of(src, p)
  if ts > P.time[s] then
    P.time[s] = ts
    -- One cell per partition, written again (the record cache keeps it until
    -- the checkpoint; a side not seen yet is absent: infinities are not JSON).
    local cell = P.cell
    if s == 1 then cell.l = ts else cell.r = ts end
    Table._put(src.buffers[1], p, TIME_KEY, cell)
  end
  local within, grace = src.within, src.grace
  -- The other side's buffered events within reach of this one.
  local obuf = src.buffers[o].proxy
  local olist = obuf[k]
  local matched = false
  if olist then
    local marked = false
    for _, e in ipairs(olist) do
      if math.abs(e.t - ts) <= within then
        matched = true
        if s == 1 then
          emit(self, v, revive(src, 2, e.v))
        else
          emit(self, revive(src, 1, e.v), v)
          if left_join and not e.m then e.m = true; marked = true end
        end
      end
    end
    if marked then obuf[k] = olist end
  end
  -- Buffered while an event of the other side may still come within reach.
  if ts + within + grace >= P.time[o] then
    local buf = src.buffers[s].proxy
    local list = buf[k] or {}
    list[#list + 1] = { t = ts, v = v, m = (s == 1 and left_join and matched) or nil }
    buf[k] = list
    Heap.push(P.heap[s], ts, k)
  elseif s == 1 and left_join and not matched then
    emit(self, v, nil)
  end
  -- This side's time moved: the other side's events it has left behind expire.
  local limit = P.time[s] - within - grace
  local h = P.heap[o]
  if h.n > 0 and h.t[1] < limit then expire(self, P, o, limit) end
end

-- Generic `for`: the next pair (left, right); nil when the stream ended.
-- The pairs one event makes are handed out before the next event is taken,
-- so that event stays unacknowledged until they are all processed.
function JoinStream.__call(self)
  while true do
    local i = self.qi
    if i < self.qn then
      i = i + 1
      self.qi = i
      local l, r = self.ql[i], self.qr[i]
      self.ql[i], self.qr[i] = nil, nil
      return l, r
    end
    self.qi, self.qn = 0, 0
    local v = self.base()
    if v == nil then return nil end
    join_event(self, v)
  end
end

JoinStream.__name = "fstream.JoinStream"
JoinStream.__tostring = function(self) return "JoinStream(" .. self.base.agent.name .. ")" end

return Join
