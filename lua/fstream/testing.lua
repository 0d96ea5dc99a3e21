-- fstream.testing(app): runs an app on the in-memory transport with a fake
-- clock, the way Faust's test_context does, so app logic is tested without a
-- broker:
--   local t = fstream.testing(app)
--   t:send("words", "hello"); t:run()
--   t:outputs("counted")            -- values the app sent to a topic
--   t:advance(61)                   -- move the clock: timers fire
local core = require "fstream.core"

local Testing = {}
Testing.__index = Testing

-- opts.clock: the epoch time (seconds) the fake clock starts at; default now.
function Testing.new(app, opts)
  if opts ~= nil and type(opts) ~= "table" then error("fstream.testing: options must be a table", 3) end
  local clock = opts and opts.clock
  if clock ~= nil and (type(clock) ~= "number" or clock ~= clock or math.abs(clock) > 1e13) then
    error("fstream.testing: clock must be a time in seconds since the epoch", 3)
  end
  local rt = app:_start { test = true, clock = clock }
  return setmetatable({ app = app, rt = rt }, Testing)
end

local function resolve(self, target)
  local Topic, Agent = require "fstream.topic", require "fstream.agent"
  local mt = getmetatable(target)
  if mt == Topic then return target end
  if mt == Agent then return target.topics[1] end
  if type(target) == "string" then
    local t = self.app.topics[target]
    if t then return t end
    local a = self.app.agents[target]
    if a then return a.topics[1] end
    error(string.format("no topic or agent named '%s' in app '%s'", target, self.app.id), 3)
  end
  error("target must be a topic, an agent or a name", 3)
end

local MESSAGE_FIELDS = { key = true, value = true, headers = true, partition = true, timestamp = true }

local function is_message(v)
  if type(v) ~= "table" or getmetatable(v) ~= nil or v.value == nil then return false end
  for k in pairs(v) do
    if not MESSAGE_FIELDS[k] then return false end
  end
  return true
end

-- t:send(target, value) or t:send(target, {key=, value=, headers=, partition=, timestamp=}).
-- timestamp: the message's time in seconds since the epoch (default: the fake clock).
-- Returns partition, offset. Does not run the app: call t:run().
function Testing:send(target, msg)
  -- A channel (or an agent reading one) takes the message as it is: no bytes, no offset.
  local ch = getmetatable(target) == require("fstream.channel") and target
    or (getmetatable(target) == require("fstream.agent") and target.channel)
  if ch then
    if not is_message(msg) then msg = { value = msg } end
    return ch:send(msg)
  end
  local topic = resolve(self, target)
  if not is_message(msg) then msg = { value = msg } end
  local key, value = msg.key, msg.value
  if topic.key_custom and key ~= nil then key = topic.key_custom.encode(key) end
  if topic.value_custom and value ~= nil then value = topic.value_custom.encode(value) end
  return self.rt:test_send(topic.id, key, value, msg.partition, msg.headers, msg.timestamp)
end

-- t:send_raw(target, bytes, {key=, headers=, partition=}): sends bytes as they
-- are, skipping the topic's serializers (malformed input for error-path tests).
function Testing:send_raw(target, bytes, opts)
  local topic = resolve(self, target)
  opts = opts or {}
  return self.rt:test_send_raw(topic.id, opts.key, bytes, opts.partition, opts.headers, opts.timestamp)
end

-- t:ask(agent, value, {key =, timeout =}): asks the agent from a task of the
-- app (agent:ask) and runs the app until the reply came; returns it, or
-- raises the ask's error. When nothing answers before the app idles, moves
-- the fake clock to the ask's timeout (timers due meanwhile fire) and raises
-- the timeout.
function Testing:ask(target, value, opts)
  local Agent = require "fstream.agent"
  local agent = type(target) == "string" and self.app.agents[target] or target
  if getmetatable(agent) ~= Agent then error("t:ask needs an agent or an agent's name", 2) end
  local res
  self.rt:spawn(function() res = table.pack(pcall(agent.ask, agent, value, opts)) end, nil, "task")
  self.rt:run_until_idle()
  if not res then
    self.rt:advance((opts and opts.timeout or 30) + 0.001)
    self.rt:run_until_idle()
  end
  if not res then error("t:ask: the ask neither returned nor timed out", 2) end
  if not res[1] then error(res[2], 2) end
  return res[2]
end

-- Runs until every agent waits for input and no timer is due.
function Testing:run()
  self.rt:run_until_idle()
  return self
end

-- Moves the fake clock forward, firing timers in order (and running the app in between).
function Testing:advance(seconds)
  self.rt:advance(seconds)
  return self
end

-- Messages the app produced to a topic: { {key=, value=, partition=, offset=, headers=}, ... }.
function Testing:messages(target)
  local topic = resolve(self, target)
  local out = {}
  for i, m in ipairs(self.rt:outputs(topic.id)) do
    local key, value = m.key_bytes, m.value_bytes
    if key ~= nil and topic.key_serializer == "json" then key = assert(core.json.decode(key, topic.big_integers)) end
    if value ~= nil and topic.value_serializer == "json" then value = assert(core.json.decode(value, topic.big_integers)) end
    if key ~= nil then key = assert(topic:decode_key(key)) end
    if value ~= nil then value = assert(topic:decode_value(value)) end
    out[i] = { key = key, value = value, partition = m.partition, offset = m.offset, headers = m.headers }
  end
  return out
end

-- Just the values, in order per partition.
function Testing:outputs(target)
  local values = {}
  for i, m in ipairs(self:messages(target)) do values[i] = m.value end
  return values
end

-- The app's table by name (or the table itself): read it like the app does,
-- e.g. t:table("word_counts")["hello"]. Reads search every partition.
function Testing:table(target)
  if type(target) == "string" then
    local tb = self.app.tables[target]
    if not tb then error(string.format("no table named '%s' in app '%s'", target, self.app.id), 2) end
    return tb.proxy
  end
  return target
end

function Testing:now()
  return self.rt:now()
end

function Testing:stats()
  return self.rt:stats()
end

function Testing:close()
  self.app:_stop()
end

return Testing
