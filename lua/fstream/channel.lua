-- Channels: app:channel() (Faust's app.channel()). An in-memory stream inside
-- one worker: agents read it as they read a topic and it takes sends as a
-- topic does (channel:send{key =, value =, headers =}, or as an agent's sink),
-- but nothing goes through Kafka — no partitions, offsets, commits or
-- acknowledgements, and what is queued is lost when the worker stops or
-- reloads. Each agent reading a channel gets every value sent to it (as with a
-- topic); the instances of a concurrent agent share that agent's queue.
--
-- The values themselves travel, not copies: a table sent is the table the
-- agent gets.
local core = require "fstream.core"

local Channel = {}
Channel.__index = Channel
Channel.__name = "fstream.Channel"

local OPTIONS = { name = true, maxsize = true }

-- A reading agent's queue: a ring of events, the instances parked on it
-- waiting for one, and the senders parked on it waiting for room.
local Queue = {}
Queue.__index = Queue

local function new_queue(ch, agent)
  return setmetatable({ channel = ch, agent = agent, items = {}, head = 1, tail = 0, readers = {}, senders = {} }, Queue)
end

function Queue:size() return self.tail - self.head + 1 end

-- Wakes the first parked coroutine of `list` that still waits.
local function wake_one(list)
  while #list > 0 do
    if core.unpark(table.remove(list, 1)) then return end
  end
end

function Queue:push(ev)
  self.tail = self.tail + 1
  self.items[self.tail] = ev
  wake_one(self.readers)
end

-- The next event, parking the calling instance until one comes; nil once
-- the worker stops (the stream ends; what is queued is dropped).
function Queue:pop()
  local rt = self.channel.app.rt
  while self.head > self.tail do
    if rt:stopping() then return nil end
    self.readers[#self.readers + 1] = coroutine.running()
    core.park()
  end
  if rt:stopping() then return nil end
  local ev = self.items[self.head]
  self.items[self.head] = nil
  self.head = self.head + 1
  if self.head > self.tail then self.head, self.tail = 1, 0 end
  wake_one(self.senders)
  return ev
end

-- Waits at most `seconds` for an event; nil when none came (or the worker stops).
function Queue:pop_within(seconds, now)
  local deadline = now() + seconds
  local rt = self.channel.app.rt
  while self.head > self.tail do
    local left = deadline - now()
    if left <= 0 or rt:stopping() then return nil end
    local co = coroutine.running()
    self.readers[#self.readers + 1] = co
    if not core.park(left) then
      for i, c in ipairs(self.readers) do
        if c == co then table.remove(self.readers, i); break end
      end
    end
  end
  return self:pop()
end

function Channel.new(app, opts, level)
  level = level + 1
  if opts ~= nil and type(opts) ~= "table" then error("app:channel: options must be a table {name =, maxsize =}", level) end
  opts = opts or {}
  for k in pairs(opts) do
    if not OPTIONS[k] then error(string.format("app:channel: unknown option '%s'", tostring(k)), level) end
  end
  app.nchannels = (app.nchannels or 0) + 1
  local name = opts.name or string.format("channel-%d", app.nchannels)
  if type(name) ~= "string" or name == "" then error("app:channel: name must be a non-empty string", level) end
  local maxsize = opts.maxsize
  if maxsize ~= nil and (math.type(maxsize) ~= "integer" or maxsize < 1) then
    error(string.format("channel %s: maxsize must be a positive integer", name), level)
  end
  return setmetatable({ app = app, name = name, maxsize = maxsize, queues = {}, sent = 0 }, Channel)
end

-- An agent reading the channel: its queue (one per agent).
function Channel:_queue(agent)
  for _, q in ipairs(self.queues) do
    if q.agent == agent then return q end
  end
  local q = new_queue(self, agent)
  self.queues[#self.queues + 1] = q
  return q
end

-- channel:send{key =, value =, headers =}: queues the message for every agent
-- reading the channel, and returns at once — unless the channel has a
-- maxsize and a reader's queue is full: then the sending coroutine waits for
-- room (outside a coroutine that is an error). Sent before the worker starts,
-- it waits for the agents that read the channel; a channel that no agent
-- reads drops what is sent to it once the worker runs.
function Channel:send(msg)
  if type(msg) ~= "table" then
    error(string.format("channel %s: send expects a table {key =, value =, headers =}", self.name), 2)
  end
  if self.maxsize then
    for _, q in ipairs(self.queues) do
      while q:size() >= self.maxsize do
        if not coroutine.isyieldable() then
          error(string.format("channel %s is full (maxsize %d)", self.name, self.maxsize), 2)
        end
        local rt = self.app.rt
        if rt and rt:stopping() then
          error(string.format("channel %s is full (maxsize %d) and the worker is stopping", self.name, self.maxsize), 2)
        end
        q.senders[#q.senders + 1] = coroutine.running()
        core.park()
      end
    end
  end
  local rt = self.app.rt
  local ev = { key = msg.key, value = msg.value, headers = msg.headers or {},
    timestamp = msg.timestamp or (rt and rt:now()) }
  self.sent = self.sent + 1
  if not rt then
    -- Before the worker starts: for every agent reading the channel then.
    self.early = self.early or {}
    self.early[#self.early + 1] = ev
    return
  end
  -- Every agent that reads the channel has its queue since the start.
  self.early = nil
  for _, q in ipairs(self.queues) do q:push(ev) end
end

-- Faust's channel.put(value).
function Channel:put(value)
  return self:send { value = value }
end

function Channel:describe()
  return string.format("%s (channel%s)", self.name, self.maxsize and string.format(", maxsize %d", self.maxsize) or "")
end

Channel.__tostring = function(self) return "Channel(" .. self.name .. ")" end

-- ---- the stream an agent instance reads from a channel ----

local ChannelStream = {}
ChannelStream.__index = ChannelStream
ChannelStream.__name = "fstream.ChannelStream"
ChannelStream.__tostring = function(self) return "Stream(" .. self.agent.name .. " <- " .. self.channel.name .. ")" end

function Channel.stream(ch, agent)
  local q = ch:_queue(agent)
  for _, ev in ipairs(ch.early or {}) do q:push(ev) end
  return setmetatable({ agent = agent, channel = ch, queue = q, ended = false }, ChannelStream)
end

local function nonnil(v)
  if v == nil then return core.null end -- nil would end the loop
  return v
end

function ChannelStream:_next()
  self.waiting = true -- (for /agents)
  local ev = self.queue:pop()
  self.waiting = false
  self.ev = ev
  return ev
end

-- for value in stream do  (the loop ends when the worker stops)
function ChannelStream:__call()
  local ev = self:_next()
  if ev then return nonnil(ev.value) end
end

-- for key, value in stream:items() do
function ChannelStream:items()
  return function()
    local ev = self:_next()
    if ev then return nonnil(ev.key), nonnil(ev.value) end
  end
end

-- for ev in stream:events() do  (ev.key, ev.value, ev.headers, ev.timestamp, ev.channel)
function ChannelStream:events()
  return function()
    local ev = self:_next()
    if ev then
      return { key = ev.key, value = ev.value, headers = ev.headers, timestamp = ev.timestamp,
        channel = self.channel.name }
    end
  end
end

-- take(max, within): batches of up to max values; a shorter one once
-- `within` seconds passed since its first value (as a topic's stream).
function ChannelStream:take(max, within)
  if math.type(max) ~= "integer" or max < 1 then error("take: max must be a positive integer", 2) end
  if within ~= nil and (type(within) ~= "number" or within < 0) then error("take: within must be seconds >= 0", 2) end
  local rt = self.agent.app.rt
  local now = function() return rt:now() end
  return function()
    local first = self:_next()
    if not first then return nil end
    local batch = { nonnil(first.value) }
    local started = now()
    while #batch < max do
      local ev
      if within then
        ev = self.queue:pop_within(started + within - now(), now)
        if not ev then break end
      else
        ev = self.queue:pop()
        if not ev then break end
      end
      self.ev = ev
      batch[#batch + 1] = nonnil(ev.value)
    end
    return batch
  end
end

-- What a channel event has of a topic event's metadata: nothing (no topic,
-- partition or offset); its value is there.
function ChannelStream:current() return nil end
function ChannelStream:current_value() return self.ev and self.ev.value end

function ChannelStream:yield(value)
  return self.agent:_to_sinks(value)
end

function ChannelStream:noack()
  error(string.format("agent %s reads channel %s: a channel has no offsets to acknowledge", self.agent.name,
    self.channel.name), 2)
end

local function no_regroup(self)
  error(string.format("agent %s reads channel %s: group_by and through repartition through Kafka; "
    .. "send the values to a topic instead", self.agent.name, self.channel.name), 3)
end
function ChannelStream:group_by() no_regroup(self) end
function ChannelStream:through() no_regroup(self) end

do
  local Stream = require "fstream.stream"
  for _, op in ipairs { "filter", "map", "echo", "enumerate" } do ChannelStream[op] = Stream[op] end
end

Channel.ChannelStream = ChannelStream
return Channel
