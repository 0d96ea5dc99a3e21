-- Streams: what an agent iterates. `for v in stream do` pulls from a buffer
-- that the C side fills a batch at a time; asking for the next event
-- acknowledges the previous ones (Faust's semantics).
--
-- The cursor (which entry of the buffer the agent is at, how many there are,
-- in which mode) belongs to the C side (`cs`): `cs_next` moves it once per
-- event, `cs:cursor()` tells it, `cs:seek()` sets it. The Lua side keeps only
-- the buffer's contents.
local core = require "fstream.core"
local Ask = require "fstream.ask"

local Stream = {}

local MODE_VALUE, MODE_ITEMS, MODE_EVENTS = 0, 1, 2
local BATCH = 256
local cs_next -- the C streams' next(cs, mode), shared by all of them

local slow_value, slow_items

function Stream.new(agent, cstream)
  local self = {
    agent = agent,
    cs = cstream,
    -- Instances of a concurrent agent share its input: each takes one event
    -- at a time, or the first would take a whole batch and the rest would idle.
    batch = agent.concurrency > 1 and 1 or BATCH,
    buf = {},
    ended = false,
  }
  cs_next = cs_next or cstream.next
  cstream:bind(self.buf)
  -- `for v in stream do` and stream:items() iterate in C (cs:iterator), which
  -- comes back here only to refill the buffer or for a retried event. The
  -- value iterator is the stream's __call: a metatable of its own.
  local retry = agent.retry_topic and assert(agent.retry_topic.id, "the retry topic is declared") or nil
  self.iter_items = cstream:iterator(MODE_ITEMS, self, self.buf, slow_items, retry)
  return setmetatable(self, {
    __index = Stream, __name = Stream.__name, __tostring = Stream.__tostring,
    __call = cstream:iterator(MODE_VALUE, self, self.buf, slow_value, retry),
  })
end

-- The entry in hand (0: none yet).
function Stream:position()
  return (self.cs:cursor())
end

-- Runs the topic's Lua decoding (custom serializer, declared types) over the
-- buffer, dropping entries that fail and reporting them to the agent.
local function post_decode(self, n, mode)
  local buf, topics, out = self.buf, self.agent.topics_by_name, 0
  for i = 1, n do
    local tname, partition, offset = self.cs:meta(out + 1)
    local topic = topics[tname]
    local k, v, err
    if mode == MODE_ITEMS then
      k, err = topic:decode_key(buf[2 * i - 1])
      if err == nil then v, err = topic:decode_value(buf[2 * i]) end
    elseif mode == MODE_EVENTS then
      local ev = buf[i]
      if ev.key ~= nil then ev.key, err = topic:decode_key(ev.key) end
      if err == nil then ev.value, err = topic:decode_value(ev.value) end
      v = ev
    else
      v, err = topic:decode_value(buf[i])
    end
    if err ~= nil then
      -- The original message (bytes and headers) goes with the error: dead letters keep it.
      local bad = self.cs:raw(out + 1) or { topic = tname, partition = partition, offset = offset }
      bad.error = err
      self.cs:drop(out + 1)
      self.agent:_bad_event(bad)
    else
      out = out + 1
      if mode == MODE_ITEMS then
        buf[2 * out - 1], buf[2 * out] = k, v
      else
        buf[out] = v
      end
    end
  end
  return out
end

-- Processors (app:stream) run over a fresh batch in order, each on the value
-- the previous one returned (nil keeps the value, fstream.skip drops the event).
local function process(self, n, mode)
  local procs, skip = self.agent.processors, require("fstream").skip
  local buf, out = self.buf, 0
  for i = 1, n do
    local v
    if mode == MODE_ITEMS then v = buf[2 * out + 2] elseif mode == MODE_EVENTS then v = buf[out + 1].value
    else v = buf[out + 1] end
    for _, p in ipairs(procs) do
      local r = p(v)
      if r == skip then v = skip; break end
      if r ~= nil then v = r end
    end
    if v == skip then
      self.cs:drop(out + 1)
      if mode == MODE_ITEMS then table.remove(buf, 2 * out + 1); table.remove(buf, 2 * out + 1)
      else table.remove(buf, out + 1) end
    else
      out = out + 1
      if mode == MODE_ITEMS then buf[2 * out] = v elseif mode == MODE_EVENTS then buf[out].value = v
      else buf[out] = v end
    end
  end
  return out
end

-- Refills the buffer; false when the stream ended (the worker is stopping).
-- (Entries dropped here are dropped from the C side's cursor by cs:drop.)
function Stream:_fill(mode)
  while true do
    local n, bad = self.cs:take(self.batch, mode)
    if n == nil then
      self.ended = true
      return false
    end
    if self.agent.post_decode and n > 0 then n = post_decode(self, n, mode) end
    if bad then self.agent:_bad_event(bad) end
    self.batched = nil
    if self.agent.processors and n > 0 then n = process(self, n, mode) end
    if n > 0 then return true end
  end
end

-- Refills the buffer (in `mode`) and moves to its first entry; returns its
-- index or nil when the stream ended.
local function refill(self, mode)
  local cs = self.cs
  while true do
    if not self:_fill(mode) then return nil end
    local i = cs_next(cs, mode)
    if i then return i end
  end
end

-- A retried message waits out its backoff before the agent sees it again.
local function retry_wait(self, i)
  local raw = self.cs:raw(i)
  local not_before = raw and raw.topic == self.agent.retry_topic.name and tonumber(raw.headers["fstream-not-before"])
  if not_before then
    local wait = not_before - self.agent.app.rt:now()
    if wait > 0 then core.sleep(wait) end
  end
end

-- Moves to the next entry of `mode`, refilling the buffer as needed; returns
-- its index or nil when the stream ended. While a partition is being revoked,
-- the C side's next first drops buffered events of that partition.
local function advance(self, mode)
  local i = cs_next(self.cs, mode) or refill(self, mode)
  if i and self.agent.retry_topic then retry_wait(self, i) end
  return i
end

-- What the C iterators leave to Lua: i = nil, the buffer is spent (refill
-- and move on); otherwise entry i came from the retry topic.
function slow_value(self, i)
  i = i or refill(self, MODE_VALUE)
  if not i then return nil end
  if self.agent.retry_topic then retry_wait(self, i) end
  return self.buf[i]
end

function slow_items(self, i)
  i = i or refill(self, MODE_ITEMS)
  if not i then return nil end
  if self.agent.retry_topic then retry_wait(self, i) end
  return self.buf[2 * i - 1], self.buf[2 * i]
end

-- for value in stream do: the stream's __call (Stream.new).

-- for key, value in stream:items() do
function Stream:items()
  return self.iter_items
end

-- An event of a noack stream: ev:ack() when the agent is really done with it.
local Event = {}
Event.__index = Event
function Event:ack()
  local ok, err = self._stream.cs:ack_event(self._event)
  if not ok then error(err, 2) end
end

-- for ev in stream:events() do  (ev.key ev.value ev.topic ev.partition ev.offset ev.timestamp ev.headers)
function Stream:events()
  return function()
    local i = advance(self, MODE_EVENTS)
    if i then
      local ev = self.buf[i]
      if self.manual then
        ev._stream = self
        setmetatable(ev, Event)
      end
      return ev
    end
  end
end

-- stream:noack(): events are no longer acknowledged by asking for the next
-- one; the agent calls ev:ack() (stream:events()) when it is really done —
-- until then the event's offset is not committed.
function Stream:noack()
  if not self.manual then
    self.manual = true
    self.cs:set_manual()
  end
  return self
end

-- for i, value in stream:enumerate() do  (i counts from 1)
function Stream:enumerate()
  local count = 0
  return function()
    local v = self()
    if v == nil then return nil end
    count = count + 1
    return count, v
  end
end

-- The event currently being processed: topic, partition, offset, timestamp
-- (in `for v in stream:group_by(...)`, the regrouped event).
function Stream:current()
  self = self.regrouped or self
  local i = self.cs:cursor()
  if i < 1 then return nil end
  return self.cs:meta(i)
end

-- take(max, within): batches of up to `max` values; a shorter batch once
-- `within` seconds have passed since its first value arrived. Without
-- `within`, every batch has `max` values (Faust: it waits for them). The batch
-- stays unacknowledged until the agent asks for the next one.
function Stream:take(max, within)
  if math.type(max) ~= "integer" or max < 1 then error("take: max must be a positive integer", 2) end
  if within ~= nil and (type(within) ~= "number" or within < 0) then error("take: within must be seconds >= 0", 2) end
  return function()
    while true do
      local n, bad = self.cs:take(max, MODE_VALUE, within or -1, max)
      if n == nil then
        self.ended = true
        return nil
      end
      if n then
        if self.agent.post_decode and n > 0 then n = post_decode(self, n, MODE_VALUE) end
        if bad then self.agent:_bad_event(bad) end
        if n > 0 then
          local batch = table.move(self.buf, 1, n, 1, {})
          -- Position 1: the whole batch counts as in progress until the next take.
          self.cs:seek(1)
          self.batched = true
          return batch
        end
      end
    end
  end
end

-- In the agent, as in Faust:
--   for order in stream:group_by("account_id") do    (or a function and {name = ...})
--   for v in stream:through(topic) do
-- The events go to the repartition topic "<app>-<agent>-<name>-repartition"
-- re-keyed (or to `topic`, keys kept) and the agent reads them from there, so
-- the tables it writes are partitioned by the new key. The agent's first call
-- adds that topic to the worker's subscription (see Agent:_regroup).
function Stream:group_by(key, opts)
  local g = require("fstream.topic").group_by_source({}, {}, key, opts, 3)
  return self.agent:_regroup(self, self, g, 2)
end

local function through_of(dest, level)
  if getmetatable(dest) ~= require("fstream.topic") then error("through needs a topic", level + 1) end
  return { through = dest, name = dest.name }
end

function Stream:through(dest)
  return self.agent:_regroup(self, self, through_of(dest, 2), 2)
end

-- Entries still in the buffer after the one in hand become plain values, so a
-- forwarder reading values takes them next: a refill in another mode would
-- acknowledge them unprocessed. A take() batch is the agent's already.
local function to_values(self)
  local i, n, mode = self.cs:cursor()
  if self.batched then
    self.cs:seek(n)
    return
  end
  local buf = self.buf
  if mode == MODE_ITEMS then
    for j = 1, n do buf[j] = buf[2 * j] end
    for j = n + 1, 2 * n do buf[j] = nil end
  elseif mode == MODE_EVENTS then
    for j = 1, n do buf[j] = buf[j].value end
  end
  self.cs:seek(i, MODE_VALUE)
end

-- The loop of a group_by or through forwarder: every value `src` yields (the
-- stream `base` itself, or a view over it) is sent to `dest` keyed by
-- keyfn(value), or with the event's own key when keyfn is nil (through), with
-- the event's headers and timestamp (so event-time windows after the
-- repartition see the original times). The event is acknowledged when the
-- next one is asked for, after the send: at-least-once.
function Stream.forward(base, src, dest, keyfn, what)
  to_values(base)
  local cs, agent = base.cs, base.agent
  for v in src do
    local i = cs:cursor()
    local ts, headers, k = cs:origin(i, keyfn == nil)
    if keyfn then
      k = keyfn(v)
      local tk = type(k)
      if tk == "number" then
        k = tostring(k)
      elseif tk ~= "string" then
        error(string.format("%s: the key must be a string or a number, got %s", what, tk))
      end
    elseif k == core.null then
      k = nil
    elseif k ~= nil and agent.post_decode then
      local err
      k, err = agent.topics_by_name[(cs:meta(i))]:decode_key(k)
      if err then error(string.format("%s: key: %s", what, err)) end
    end
    dest:send { key = k, value = v, headers = headers, timestamp = ts }
  end
end

-- Views: stream:filter(f), :map(f), :echo(topic, ...) chain lazily over a
-- stream; `for v in stream:filter(f):map(g) do`.
local View = {}
View.__index = View
View.__call = function(self) return self.next() end

local function view(base, nxt)
  return setmetatable({ base = base, next = nxt }, View)
end

function View:filter(f)
  local nxt = self.next
  return view(self.base, function()
    while true do
      local v = nxt()
      if v == nil or f(v) then return v end
    end
  end)
end

function View:map(f)
  local nxt = self.next
  return view(self.base, function()
    local v = nxt()
    if v == nil then return nil end
    local r = f(v)
    if r == nil then r = core.null end -- nil would end the loop
    return r
  end)
end

-- echo(topic, ...): forwards every value to the topics (or agents) and passes it on.
function View:echo(...)
  local nxt, targets = self.next, { ... }
  return view(self.base, function()
    local v = nxt()
    if v ~= nil then
      for _, t in ipairs(targets) do t:send { value = v } end
    end
    return v
  end)
end

function View:yield(v) return self.base:yield(v) end
function View:current() return self.base:current() end

-- stream:filter(f):group_by(...) / :through(...): only what the view yields is
-- forwarded (Faust: filter before repartitioning).
function View:group_by(key, opts)
  local g = require("fstream.topic").group_by_source({}, {}, key, opts, 3)
  return self.base.agent:_regroup(self.base, self, g, 2)
end

function View:through(dest)
  return self.base.agent:_regroup(self.base, self, through_of(dest, 2), 2)
end

for _, op in ipairs { "filter", "map", "echo" } do
  Stream[op] = function(self, ...)
    return View[op](view(self, function() return self() end), ...)
  end
end

-- Joins (see fstream/join.lua):
--   for order, customer in stream:join(customers) do            (a table, on the event's key)
--   for order, customer in stream:lookup(customers, "customer_id") do
-- and on a view, stream:filter(f):join(customers): the values the view yields.
-- On the stream itself the join reads items, so the event's key comes with
-- its value (a view yields values: the join asks for the key when it needs it).
local function keyed_values(self)
  return function()
    local i = advance(self, MODE_ITEMS)
    if i then return self.buf[2 * i], self.buf[2 * i - 1] end
  end
end

function Stream:join(tbl, opts)
  return require("fstream.join").with_table(self, keyed_values(self), true, tbl, opts, 2)
end

function Stream:lookup(tbl, key, opts)
  return require("fstream.join").lookup(self, keyed_values(self), true, tbl, key, opts, 2)
end

function View:join(tbl, opts)
  return require("fstream.join").with_table(self.base, self.next, false, tbl, opts, 2)
end

function View:lookup(tbl, key, opts)
  return require("fstream.join").lookup(self.base, self.next, false, tbl, key, opts, 2)
end

-- The value of the event in hand (the decoded value in every view).
function Stream:current_value()
  local i, n, mode = self.cs:cursor()
  if i < 1 or i > n then return nil end
  if mode == MODE_ITEMS then return self.buf[2 * i] end
  if mode == MODE_EVENTS then return self.buf[i].value end
  return self.buf[i]
end

-- Faust's `yield value`: hands the value to the agent's sinks; the first
-- value yielded for an asked event is also its reply (fstream/ask.lua). A
-- take() batch answers nobody: one yield cannot tell whose request it answers.
function Stream:yield(value)
  if not self.batched then Ask.answer(self.agent.app, value) end
  return self.agent:_to_sinks(value)
end

Stream.__index = Stream
Stream.__name = "fstream.Stream"
Stream.__tostring = function(self) return "Stream(" .. self.agent.name .. ")" end

return Stream
