-- Topics: names, serializers and types, and sending.
local core = require "fstream.core"

local Topic = {}
Topic.__index = Topic

local SERIALIZERS = { raw = true, json = true }
local SCALAR_TYPES = { string = true, number = true, integer = true, boolean = true, table = true, any = true }
local OPTIONS = {
  key_type = true, value_type = true, key_serializer = true, value_serializer = true,
  partitions = true, big_integers = true, pattern = true, refresh = true,
}
-- What a JSON integer beyond 64 bits decodes to (keys and values of json topics).
-- What a JSON integer beyond 64 bits may become (tables take the same option).
local BIG_INTEGERS = { float = true, string = true, error = true }
Topic.BIG_INTEGERS = BIG_INTEGERS

-- `level` is the caller's level as seen from Topic.new; these helpers add their own.
local function check_serializer(s, what, level)
  level = level + 1
  if s == nil then return end
  if type(s) == "string" then
    if not SERIALIZERS[s] then
      error(string.format("%s '%s' is unknown (raw, json, or a table with encode and decode)", what, s), level)
    end
  elseif type(s) ~= "table" or type(s.encode) ~= "function" or type(s.decode) ~= "function" then
    error(what .. " must be 'raw', 'json' or a table with encode and decode functions", level)
  end
end

local function check_type(t, what, level)
  level = level + 1
  if t == nil then return end
  if type(t) == "string" then
    if not SCALAR_TYPES[t] then
      error(string.format("%s '%s' is unknown (string, number, integer, boolean, table, any or a record)", what, t), level)
    end
  elseif type(t) ~= "table" or type(t.from) ~= "function" then
    error(what .. " must be a type name or a record type", level)
  end
end

-- Converts a decoded value to the declared type; returns value or nil, message.
local function coerce(v, ty, serializer)
  if ty == nil or ty == "any" or v == core.null then return v end
  if type(ty) == "table" then return ty.from(v) end
  if ty == "string" then
    if type(v) == "string" then return v end
  elseif ty == "number" or ty == "integer" then
    if serializer == "raw" and type(v) == "string" then v = tonumber(v) end
    if ty == "integer" and type(v) == "number" then v = math.tointeger(v) end
    if type(v) == "number" then return v end
  elseif ty == "boolean" then
    if type(v) == "boolean" then return v end
  elseif ty == "table" then
    if type(v) == "table" then return v end
  end
  return nil, string.format("expected %s, got %s", ty, type(v) == "string" and string.format("%q", v:sub(1, 40)) or type(v))
end

-- A record key (Faust: a model) is a JSON object on the wire unless told otherwise.
local function default_key_serializer(opts)
  return type(opts.key_type) == "table" and "json" or "raw"
end

function Topic.new(app, name, opts, level)
  level = (level or 2) + 1
  if type(name) ~= "string" or name == "" then error("topic name must be a non-empty string", level) end
  opts = opts or {}
  for k in pairs(opts) do
    if not OPTIONS[k] then error(string.format("topic '%s': unknown option '%s'", name, tostring(k)), level) end
  end
  if opts.pattern ~= nil or opts.refresh ~= nil then
    error(string.format("topic '%s': a topic has a name or a pattern, not both (a pattern topic: "
      .. "app:topic{pattern = \"^events-.*\", refresh = 5, ...})", name), level)
  end
  check_serializer(opts.key_serializer, "key_serializer", level)
  check_serializer(opts.value_serializer, "value_serializer", level)
  check_type(opts.key_type, "key_type", level)
  check_type(opts.value_type, "value_type", level)
  if opts.big_integers ~= nil and not BIG_INTEGERS[opts.big_integers] then
    error(string.format("topic '%s': big_integers must be \"float\", \"string\" or \"error\", got %s",
      name, tostring(opts.big_integers)), level)
  end
  local self = setmetatable({
    app = app,
    name = name,
    key_serializer = opts.key_serializer or default_key_serializer(opts),
    value_serializer = opts.value_serializer or "json",
    key_type = opts.key_type,
    value_type = opts.value_type,
    partitions = opts.partitions or app.topic_partitions,
    big_integers = opts.big_integers or "float",
  }, Topic)
  -- The C side handles raw and json; a custom serializer is applied here and
  -- travels through C as raw bytes.
  self.key_codec = type(self.key_serializer) == "string" and self.key_serializer or "raw"
  self.value_codec = type(self.value_serializer) == "string" and self.value_serializer or "raw"
  -- The C decoder's big-integer mode travels in the codec's name ("json:string").
  if self.big_integers ~= "float" then
    if self.key_codec == "json" then self.key_codec = "json:" .. self.big_integers end
    if self.value_codec == "json" then self.value_codec = "json:" .. self.big_integers end
  end
  self.key_custom = type(self.key_serializer) == "table" and self.key_serializer or nil
  self.value_custom = type(self.value_serializer) == "table" and self.value_serializer or nil
  -- Does a decoded value need a pass in Lua (custom codec or a declared type)?
  self.post_decode = self.key_custom or self.value_custom or self.key_type or self.value_type
  -- Without a custom serializer, sending is C's alone (Topic.c_send).
  if not self.key_custom and not self.value_custom then self.send = Topic.c_send end
  return self
end

-- Pattern topics: app:topic{pattern = "^events-.*", ...} stands for every
-- topic of the broker whose name matches, now and later. It is not a topic
-- itself (no id, nothing is sent to it); each match becomes an ordinary Topic
-- with the pattern's serializers and types, which the agents reading the
-- pattern read too (App:_discover).
local Pattern = setmetatable({}, { __index = Topic })
Pattern.__index = Pattern
Topic.Pattern = Pattern

-- Seconds between two listings of the broker's topics, by default, and the bounds.
Pattern.REFRESH, Pattern.MIN_REFRESH, Pattern.MAX_REFRESH = 5, 0.1, 3600

-- The runtime's own topics of an app, which a pattern never matches.
local OWN_SUFFIXES = { "-changelog", "-repartition", "-retry", "-dlq", "-__leader" }

function Topic.new_pattern(app, opts, level)
  level = (level or 2) + 1
  local pattern = opts.pattern
  if type(pattern) ~= "string" or pattern == "" then
    error("topic pattern must be a non-empty string: a POSIX extended regular expression such as \"^events-.*\"", level)
  end
  local ok, re = pcall(core.regex, pattern)
  if not ok then error("topic pattern: " .. tostring(re), level) end
  if opts.partitions ~= nil then
    error(string.format("topic pattern '%s': no partitions option (the matching topics exist and keep theirs)", pattern), level)
  end
  local refresh = opts.refresh or Pattern.REFRESH
  if type(refresh) ~= "number" or not (refresh >= Pattern.MIN_REFRESH and refresh <= Pattern.MAX_REFRESH) then
    error(string.format("topic pattern '%s': refresh must be a number of seconds from %g to %g", pattern,
      Pattern.MIN_REFRESH, Pattern.MAX_REFRESH), level)
  end
  local rest = {}
  for k, v in pairs(opts) do
    if k ~= "pattern" and k ~= "refresh" then rest[k] = v end
  end
  local self = Topic.new(app, pattern, rest, level)
  self.pattern, self.regex, self.refresh, self.partitions = pattern, re, refresh, nil
  self.send = nil -- Pattern.send
  self.opts = rest -- what each match is declared with
  return setmetatable(self, Pattern)
end

-- Whether topic `name` of the broker is one of the pattern's: it matches, and
-- it is neither Kafka's own (__consumer_offsets, ...) nor one the runtime
-- makes for this app (APP-...-changelog, -repartition, -retry, -dlq, -__leader).
function Pattern:matches(name)
  if name:sub(1, 2) == "__" or not self.regex:match(name) then return false end
  local id = self.app.id .. "-"
  if name:sub(1, #id) == id then
    for _, suffix in ipairs(OWN_SUFFIXES) do
      if name:sub(-#suffix) == suffix then return false end
    end
  end
  return true
end

local function not_a_topic(self)
  error(string.format("topic pattern '%s' cannot be sent to (it stands for many topics): send to one of them, "
    .. "app:topic(\"NAME\")", self.pattern), 3)
end
function Pattern:send() not_a_topic(self) end
function Pattern:send_and_wait() not_a_topic(self) end
function Pattern:filter() error("filter/map chains need a topic, not a pattern: use an agent", 2) end
Pattern.map = Pattern.filter

function Pattern:same_schema(opts)
  return Topic.same_schema(self, opts) and (opts.refresh or Pattern.REFRESH) == self.refresh
end

function Pattern:describe()
  local function s(x) return type(x) == "table" and "custom" or x end
  return string.format("%s (pattern, key %s, value %s)", self.pattern, s(self.key_serializer), s(self.value_serializer))
end

function Topic:same_schema(opts)
  opts = opts or {}
  return (opts.key_serializer or default_key_serializer(opts)) == self.key_serializer
    and (opts.value_serializer or "json") == self.value_serializer
    and opts.key_type == self.key_type and opts.value_type == self.value_type
    and (opts.big_integers or "float") == self.big_integers
end

-- Decodes what C handed over (already raw/json-decoded) into the declared types.
function Topic:decode_key(k)
  if self.key_custom and k ~= core.null then
    local ok, v = pcall(self.key_custom.decode, k)
    if not ok then return nil, "key serializer: " .. tostring(v) end
    k = v
  end
  return coerce(k, self.key_type, self.key_serializer)
end

function Topic:decode_value(v)
  if self.value_custom and v ~= core.null then
    local ok, d = pcall(self.value_custom.decode, v)
    if not ok then return nil, "value serializer: " .. tostring(d) end
    v = d
  end
  local ok, r, err = pcall(coerce, v, self.value_type, self.value_serializer)
  if not ok then return nil, tostring(r) end
  return r, err
end

local function prepare(self, msg, level)
  if type(msg) ~= "table" then
    error(string.format("%s:send expects a table {key=, value=, headers=, partition=}", self.name), level)
  end
  local rt = self.app.rt
  if not rt then
    error(string.format("topic '%s': cannot send before the worker starts (send from an agent, task or timer)", self.name), level)
  end
  local key, value = msg.key, msg.value
  if self.key_custom and key ~= nil then key = self.key_custom.encode(key) end
  if self.value_custom and value ~= nil then value = self.value_custom.encode(value) end
  return rt, key, value
end

-- Non-blocking: the message is delivered before the offsets of the event being
-- processed are committed.
-- (Topics without a custom serializer send through Topic.c_send below.)
function Topic:send(msg)
  local rt, key, value = prepare(self, msg, 3)
  rt:produce(self.id, key, value, msg.partition, msg.headers, msg.timestamp)
end

-- The send of topics without a custom serializer (Topic.new sets it as
-- their own `send`): in C, the message's fields read without a Lua frame.
-- What it does not expect comes here, one level further from the caller.
Topic.c_send = core.topic_sender(function(self, msg)
  local rt, key, value = prepare(self, msg, 4)
  rt:produce(self.id, key, value, msg.partition, msg.headers, msg.timestamp)
end)

-- Yields until the broker acknowledged the message; returns {partition=, offset=}
-- or nil, error.
function Topic:send_and_wait(msg)
  local rt, key, value = prepare(self, msg, 3)
  return rt:produce_wait(self.id, key, value, msg.partition, msg.headers, msg.timestamp)
end

-- topic:group_by(field | function(value) -> key, {name = ...}): a source that
-- re-keys the topic's events through "<app>-<agent>-<name>-repartition", so the
-- agent reading it (and the tables it writes) are partitioned by the new key.
function Topic:group_by(key, opts)
  return Topic.group_by_source({ self }, {}, key, opts, 3)
end

function Topic.group_by_source(topics, processors, key, opts, level)
  if type(key) ~= "string" and type(key) ~= "function" then
    error("group_by needs a field name or a function(value) -> key", level)
  end
  opts = opts or {}
  for k in pairs(opts) do
    if k ~= "name" then error(string.format("group_by: unknown option '%s'", tostring(k)), level) end
  end
  local name = opts.name or (type(key) == "string" and key) or nil
  if not name then error("group_by with a function needs {name = ...} for its repartition topic", level) end
  return { is_group_by = true, topics = topics, processors = processors, key = key, name = name }
end

-- topic:join(other, {within = seconds, key =, type =}): a stream-stream join,
-- the source of an agent (fstream/join.lua).
function Topic:join(other, opts)
  return require("fstream.join").streams(self, other, opts, 2)
end

-- topic:stream(opts): Faust's topic.stream(), app:stream(topic, opts). Called
-- while the worker runs (in a task, as `for w in topic:stream() do`), it reads
-- the topic from then on through an agent of its own (see Agent.stream_at_run_time).
function Topic:stream(opts)
  if self.app.rt then return require("fstream.agent").stream_at_run_time(self, opts, 2) end
  return self.app:stream(self, opts)
end

-- topic:through(dest): a source that forwards the topic's events (key and
-- value) to `dest`, so the agent reads them from there (Faust's through).
function Topic:through(dest)
  if getmetatable(dest) ~= Topic then error("through needs a topic", 2) end
  return { is_group_by = true, through = dest, topics = { self }, processors = {}, name = dest.name }
end

-- Chains on topics run as an implicit agent:
--   app:topic("input"):filter(function(v) return v > 10 end):map(function(v) return v * v end):to_topic("output")
local Chain = {}
Chain.__index = Chain

local function chain(topic, ops, op, f)
  if type(f) ~= "function" then error(op .. " needs a function", 3) end
  local c = setmetatable({ topic = topic, ops = {} }, Chain)
  for i, o in ipairs(ops) do c.ops[i] = o end
  c.ops[#c.ops + 1] = { op, f }
  return c
end

function Topic:filter(f) return chain(self, {}, "filter", f) end
function Topic:map(f) return chain(self, {}, "map", f) end
function Chain:filter(f) return chain(self.topic, self.ops, "filter", f) end
function Chain:map(f) return chain(self.topic, self.ops, "map", f) end

-- to_topic(name | topic): starts forwarding (keys kept) when the worker starts.
function Chain:to_topic(dest)
  local app = self.topic.app
  if type(dest) == "string" then dest = app:topic(dest) end
  if getmetatable(dest) ~= Topic then error("to_topic needs a topic or a topic name", 2) end
  local ops = self.ops
  app.chains = (app.chains or 0) + 1
  local a = app:agent(string.format("chain-%d-%s-to-%s", app.chains, self.topic.name, dest.name), self.topic, function(stream)
    for k, v in stream:items() do
      local keep = true
      for _, o in ipairs(ops) do
        if o[1] == "filter" then
          if not o[2](v) then keep = false; break end
        else
          v = o[2](v)
        end
      end
      if keep then dest:send { key = k ~= core.null and k or nil, value = v } end
    end
  end)
  a.no_tables = true -- a forwarder: its input need not be partitioned like the tables
  return dest
end

function Topic:describe()
  local function s(x) return type(x) == "table" and "custom" or x end
  return string.format("%s (key %s, value %s, %d partitions)", self.name, s(self.key_serializer),
    s(self.value_serializer), self.partitions)
end

return Topic
