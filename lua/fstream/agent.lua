-- Agents: a function over a stream, run as one coroutine per instance.
-- Error policy (Faust's default is "log"): an error is logged with the agent's
-- name, the script's file:line and a traceback; the event is acknowledged and
-- the instance restarts on the same stream, from the next event.
local core = require "fstream.core"
local Stream = require "fstream.stream"
local Ask = require "fstream.ask"
local Channel = require "fstream.channel"

local Agent = {}
Agent.__index = Agent

local OPTIONS = {
  sink = true, concurrency = true, on_error = true, key_type = true, value_type = true,
  key_serializer = true, value_serializer = true, partitions = true, internal = true,
}
local ON_ERROR = { log = true, skip = true, crash = true, dlq = true, retry = true }

function Agent.new(app, name, source, fn, opts, level)
  level = level + 1
  opts = opts or {}
  if type(name) ~= "string" or name == "" then error("agent name must be a non-empty string", level) end
  if type(fn) ~= "function" and not opts.internal then
    error(string.format("agent '%s': the third argument must be a function(stream)", name), level)
  end
  for k in pairs(opts) do
    if not OPTIONS[k] then error(string.format("agent '%s': unknown option '%s'", name, tostring(k)), level) end
  end
  -- on_error: "log" | "skip" | "crash" | "dlq" | "retry" | { "retry", attempts = 3, backoff = 1.0 }
  local on_error, retry = opts.on_error or "log", nil
  if type(on_error) == "table" then
    retry = { attempts = on_error.attempts or 3, backoff = on_error.backoff or 1.0 }
    on_error = on_error[1]
    if on_error ~= "retry" then
      error(string.format("agent '%s': a table on_error is { \"retry\", attempts =, backoff = }", name), level)
    end
  elseif on_error == "retry" then
    retry = { attempts = 3, backoff = 1.0 }
  end
  if not ON_ERROR[on_error] then
    error(string.format("agent '%s': on_error must be one of log, skip, crash, dlq, retry (got '%s')", name, tostring(on_error)), level)
  end
  if retry and (math.type(retry.attempts) ~= "integer" or retry.attempts < 1 or type(retry.backoff) ~= "number" or retry.backoff < 0) then
    error(string.format("agent '%s': retry needs an integer attempts >= 1 and a backoff >= 0 seconds", name), level)
  end
  local concurrency = opts.concurrency or 1
  if math.type(concurrency) ~= "integer" or concurrency < 1 then
    error(string.format("agent '%s': concurrency must be a positive integer", name), level)
  end
  local self = setmetatable({
    app = app, name = name, fn = fn, on_error = on_error, retry = retry, concurrency = concurrency,
    sinks = {}, topics = {}, topics_by_name = {}, streams = {}, instances = 0,
    processed_since_failure = 0, failures = 0,
    -- What /metrics and /agents show (fstream/web.lua): failures by policy,
    -- messages diverted, the last failure.
    errors_by_policy = {}, dead_letters = 0, retries = 0, last_error = nil,
  }, Agent)
  -- Source: a topic, a list of topics, or nothing (anonymous agent: its own topic).
  local Topic = require "fstream.topic"
  local sources
  if getmetatable(source) == Channel then
    -- A channel: no topic, no offsets; its instances read the channel's queue.
    if on_error == "dlq" or on_error == "retry" then
      error(string.format("agent '%s' reads channel %s: a channel keeps no message to dead-letter or retry "
        .. "(on_error must be log, skip or crash)", name, source.name), level)
    end
    self.channel = source
    sources = {}
  elseif source == nil then
    sources = { app:topic(app.id .. "-" .. name, {
      key_type = opts.key_type, value_type = opts.value_type, key_serializer = opts.key_serializer,
      value_serializer = opts.value_serializer, partitions = opts.partitions,
    }) }
    self.own_topic = sources[1]
  elseif getmetatable(source) == Topic or getmetatable(source) == Topic.Pattern then
    sources = { source }
  elseif type(source) == "table" and source.is_group_by then
    sources = { self:_repartition(source, level + 1) }
  elseif type(source) == "table" and source.is_join then -- left:join(right, {within = ...}): fstream/join.lua
    sources = source:attach(self, level)
  elseif type(source) == "table" and source.is_stream_source then
    sources = source.topics
    self.processors = #source.processors > 0 and source.processors or nil
    source.used_by = self
  elseif type(source) == "table" and getmetatable(source) == nil and #source > 0 then
    sources = source
  else
    error(string.format("agent '%s': source must be a topic, a list of topics, a channel, or nil", name), level)
  end
  for _, t in ipairs(sources) do
    if getmetatable(t) == Topic.Pattern then
      -- Its matches join self.topics as they are found (App:_discover).
      self.patterns = self.patterns or {}
      self.patterns[#self.patterns + 1] = t
    else
      if getmetatable(t) ~= Topic then error(string.format("agent '%s': every source must be a topic", name), level) end
      self.topics[#self.topics + 1] = t
      self.topics_by_name[t.name] = t
      if t.post_decode then self.post_decode = true end
    end
  end
  -- Dead letters keep the original bytes: raw topics. Retries go through a topic
  -- with the source's serializers, which this agent also reads.
  if on_error == "dlq" or on_error == "retry" then
    self.dlq = app:topic(app.id .. "-" .. name .. "-dlq", { key_serializer = "raw", value_serializer = "raw" })
  end
  if on_error == "retry" then
    local src = self.topics[1] or self.patterns[1]
    self.retry_topic = app:topic(app.id .. "-" .. name .. "-retry", {
      key_serializer = src.key_serializer, value_serializer = src.value_serializer,
      key_type = src.key_type, value_type = src.value_type,
    })
    -- created with its source's partition count (a pattern's matches have their own)
    if getmetatable(src) == Topic then self.retry_topic.follows = src end
    self.topics[#self.topics + 1] = self.retry_topic
    self.topics_by_name[self.retry_topic.name] = self.retry_topic
  end
  local sinks = opts.sink or {}
  if type(sinks) ~= "table" or getmetatable(sinks) ~= nil then sinks = { sinks } end
  for _, s in ipairs(sinks) do
    local mt = getmetatable(s)
    if not (type(s) == "function" or mt == Topic or mt == Agent or mt == Channel or (mt and mt.__call)) then
      error(string.format("agent '%s': a sink must be a function, a topic, a channel or an agent", name), level)
    end
    self.sinks[#self.sinks + 1] = s
  end
  return self
end

-- group_by: a forwarder agent reads the original topics (through their
-- processors), computes each event's new key and sends it to the repartition
-- topic, which this agent reads instead.
-- (through: the same with the events' own keys and a topic given by the app.)
function Agent:_repartition(g, level)
  local app, src = self.app, g.topics[1]
  local rtopic = g.through or app:topic(string.format("%s-%s-%s-repartition", app.id, self.name, g.name), {
    key_serializer = "raw", value_serializer = src.value_serializer, value_type = src.value_type,
    partitions = src.partitions,
  })
  -- created with its source's partition count (a pattern's matches have their own)
  if not g.through and getmetatable(src) == require("fstream.topic") then rtopic.follows = src end
  local keyfn = not g.through and Agent._keyfn(g.key) or nil
  local what = string.format("%s of agent %s", g.through and "through" or "group_by", self.name)
  local forward = function(stream) Stream.forward(stream, stream, rtopic, keyfn, what) end
  local fwd = Agent.new(app, self.name .. "-" .. g.name .. (g.through and "-through" or "-repartitioner"),
    { is_stream_source = true, topics = g.topics, processors = g.processors }, forward, {}, level)
  fwd.no_tables = true -- it only forwards: the tables follow rtopic's partitions
  fwd.forwards_to = rtopic -- (for /topology)
  app.agents[fwd.name] = fwd
  app.agent_list[#app.agent_list + 1] = fwd
  return rtopic
end

function Agent._keyfn(key)
  if type(key) == "function" then return key end
  return function(v) return v[key] end
end

-- stream:group_by / stream:through inside the agent (Faust's form), called from
-- the instance's coroutine with its stream (`src`: the stream or a view over
-- it). The agent's body runs only once the worker runs, so this is where the
-- worker learns the destination: the agent's first call declares it (group_by:
-- "<app>-<agent>-<name>-repartition", as for the declared form) and a hidden
-- agent reading it. Agents take their first steps before the worker subscribes
-- (fs_worker_start, fs_reload_rebound), so a group_by the agent starts with is
-- in the first subscription; one reached later resubscribes — the group
-- rebalances as for a reload, and events taken before then stay with the agent
-- until the revocation lets them finish. The instance's coroutine then reads the
-- destination, while a forwarder coroutine (with the agent's on_error policy)
-- reads the original stream and sends every event on: nothing the agent had
-- taken before the switch is dropped, and each event is acknowledged after it
-- was sent. A new worker (a restart) learns it again on the first call.
function Agent:_regroup(stream, src, g, level)
  level = level + 1
  local Table = require "fstream.table"
  local rs = stream.regrouped
  if rs then
    -- A restarted instance runs the agent's function again on the same stream.
    if rs.regroup_name ~= g.name then
      error(string.format("agent %s: its stream is already regrouped (%s); a stream is regrouped once — "
        .. "read another grouping in another agent", self.name, rs.regroup_name), level)
    end
    Table.streams_by_co[coroutine.running()] = rs
    return rs
  end
  if stream.regroup_name then
    error(string.format("agent %s: the stream group_by/through returned cannot be regrouped again; "
      .. "group by a combined key once, or regroup in another agent", self.name), level)
  end
  if stream.manual then
    error(string.format("agent %s: group_by/through on a noack stream; call noack() on the stream it returns",
      self.name), level)
  end
  local app = self.app
  local rt = app.rt
  if not rt then error("group_by/through on a stream needs a running worker", level) end
  local r = self.regroup
  if r and r.name ~= g.name then
    error(string.format("agent %s: its instances must regroup alike (%s, then %s)", self.name, r.name, g.name), level)
  end
  if not r then
    local dest = g.through
    if not dest then
      local name = string.format("%s-%s-%s-repartition", app.id, self.name, g.name)
      dest = app.topics[name]
      if not dest then
        local Topic = require "fstream.topic"
        local src_t = self.topics[1]
        dest = Topic.new(app, name, {
          key_serializer = "raw", value_serializer = src_t.value_serializer, value_type = src_t.value_type,
          partitions = src_t.partitions,
        }, level)
        app.topics[name] = dest
        app.topic_list[#app.topic_list + 1] = dest
        dest.id = rt:topic(dest.name, dest.key_codec, dest.value_codec, dest.partitions, false, true)
      end
    end
    -- The regrouped events are the ones that write tables (co-partitioned by the new key).
    rt:table_inputs({ dest.id }, true)
    -- The destination's events reach the instances through this agent: the
    -- original's policy and sinks, none of its processors, decoding or retries.
    local reader = setmetatable({
      topics = { dest }, topics_by_name = { [dest.name] = dest }, post_decode = dest.post_decode and true or false,
      processors = false, retry_topic = false,
    }, { __index = self })
    reader.id = rt:agent(self.name .. " <- " .. dest.name, { dest.id })
    r = { name = g.name, topic = dest, reader = reader }
    self.regroup = r
    if rt:resubscribe() then
      core.log("info", string.format("agent %s reads %s: subscribed to it", self.name, dest.name))
    end
  end
  rs = Stream.new(r.reader, rt:stream(r.reader.id))
  rs.regroup_name = g.name
  stream.regrouped = rs
  Table.streams_by_co[coroutine.running()] = rs
  local keyfn = not g.through and Agent._keyfn(g.key) or nil
  local what = string.format("%s of agent %s", g.through and "through" or "group_by", self.name)
  self:_start_instance(stream, 0, function() Stream.forward(stream, src, r.topic, keyfn, what) end)
  return rs
end

-- topic:stream() while the worker runs (Faust's `async for w in
-- topic.stream()` in a task): an agent of its own reads the topic, declared and
-- subscribed to at run time as for group_by; the calling coroutine's table
-- writes go to the partition of its event in hand. One stream per coroutine
-- and topic: asking again returns it.
function Agent.stream_at_run_time(topic, opts, level)
  level = level + 1
  local app, co = topic.app, coroutine.running()
  if opts ~= nil and (type(opts) ~= "table" or next(opts) ~= nil) then
    error("topic:stream(): options (processors) are declared before the worker starts: app:stream(topic, opts)", level)
  end
  app.run_time_streams = app.run_time_streams or setmetatable({}, { __mode = "k" })
  local mine = app.run_time_streams[co] or {}
  app.run_time_streams[co] = mine
  local s = mine[topic.name]
  if s then return s end
  local a = setmetatable({
    app = app, name = string.format("stream-%s-%d", topic.name, #app.agent_list + 1), on_error = "log",
    concurrency = 1, sinks = {}, topics = { topic }, topics_by_name = { [topic.name] = topic },
    streams = {}, instances = 0, processed_since_failure = 0, failures = 0,
    post_decode = topic.post_decode and true or nil,
  }, Agent)
  app.agent_list[#app.agent_list + 1] = a
  a.id = app.rt:agent(a.name, { topic.id })
  s = Stream.new(a, app.rt:stream(a.id))
  a.streams[1] = s
  mine[topic.name] = s
  require("fstream.table").streams_by_co[co] = s
  if app.rt:resubscribe() then
    core.log("info", string.format("%s reads %s: subscribed to it", a.name, topic.name))
  end
  return s
end

-- Sends to the agent's own topic (anonymous agents) or its first source topic
-- (or the channel it reads).
function Agent:send(msg)
  if self.channel then return self.channel:send(msg) end
  return self.topics[1]:send(msg)
end

function Agent:send_and_wait(msg)
  if self.channel then
    error(string.format("agent %s reads channel %s: a channel has no delivery to wait for; use send",
      self.name, self.channel.name), 2)
  end
  return self.topics[1]:send_and_wait(msg)
end

-- Request/reply (fstream/ask.lua): the value the agent yields for the request.
--   local r = agent:ask(value, {key =, timeout = 30})
--   for i, r in agent:map(values, {key = fn(value, i) | key, timeout =}) do
--   local rs = agent:join(values, opts)       -- results in the order of values
-- (No tail calls: errors name the caller's line, three levels up.)
function Agent:ask(value, opts)
  local r = Ask.ask(self, value, opts, 3)
  return r
end

function Agent:map(values, opts)
  local it = Ask.map(self, values, opts, 3)
  return it
end

function Agent:join(values, opts)
  local rs = Ask.join(self, values, opts, 3)
  return rs
end

-- Sinks: functions are called, topics and agents are sent the value.
function Agent:_to_sinks(value)
  for _, s in ipairs(self.sinks) do
    if type(s) == "function" then
      s(value)
    elseif type(s) == "table" and type(s.send) == "function" then
      s:send { value = value }
    else
      s(value)
    end
  end
end

local function where(ev)
  if not ev then return "" end
  return string.format(" (event %s[%s]@%s)", tostring(ev.topic), tostring(ev.partition), tostring(ev.offset))
end

local HEADER_LIMIT = 8192
local BIG = 512 * 1024 -- past this a dead letter carries a short error and no traceback

-- Sends the original message (raw bytes, original headers) to the dead-letter
-- topic with what went wrong, or back through the retry topic.
function Agent:_divert(ev, err, traceback, topic, extra)
  local headers = {}
  for k, v in pairs(ev.headers or {}) do headers[k] = v end
  -- The copy must fit where the original did: keep diagnostics short for big ones.
  local big = ev.value_bytes and #ev.value_bytes > BIG
  headers["fstream-error"] = tostring(err):sub(1, big and 1024 or HEADER_LIMIT)
  if traceback and not big then headers["fstream-traceback"] = tostring(traceback):sub(1, HEADER_LIMIT) end
  headers["fstream-agent"] = self.name
  -- Where the message first came from (a retried one keeps its origin).
  if not headers["fstream-topic"] or ev.topic ~= (self.retry_topic and self.retry_topic.name) then
    headers["fstream-topic"] = ev.topic
    headers["fstream-partition"] = tostring(ev.partition)
    headers["fstream-offset"] = tostring(ev.offset)
  end
  for k, v in pairs(extra or {}) do headers[k] = v end
  -- Tracing: a child span of the failed event's trace (a malformed
  -- traceparent is not passed on, nor its tracestate).
  if headers.traceparent ~= nil then
    headers.traceparent = core.trace_child(headers.traceparent)
    if headers.traceparent == nil then headers.tracestate = nil end
  end
  -- The original bytes; a dead letter is best effort (its loss is logged, not fatal).
  local rt = self.app.rt
  if topic == self.dlq then
    self.dead_letters = self.dead_letters + 1
    rt:produce_dead_letter(topic.id, ev.key_bytes, ev.value_bytes, nil, headers)
  else
    self.retries = self.retries + 1
    rt:produce_raw(topic.id, ev.key_bytes, ev.value_bytes, nil, headers)
  end
end

-- The "dlq" and "retry" policies for a failed event (its original message in ev).
function Agent:_dead_letter(ev, err, traceback)
  if self.retry then
    local attempt = tonumber(ev.headers and ev.headers["fstream-attempt"] or "0") + 1
    if attempt < self.retry.attempts and ev.value_bytes ~= nil and not ev.undecodable then
      local at = self.app.rt:now() + self.retry.backoff * attempt
      self:_divert(ev, err, traceback, self.retry_topic,
        { ["fstream-attempt"] = tostring(attempt), ["fstream-not-before"] = string.format("%.3f", at) })
      core.log("warn", string.format("agent %s: %s[%d]@%d failed (attempt %d of %d), retrying in %.1f s: %s",
        self.name, ev.topic, ev.partition, ev.offset, attempt, self.retry.attempts,
        self.retry.backoff * attempt, tostring(err)))
      return
    end
  end
  self:_divert(ev, err, traceback, self.dlq)
  core.log("warn", string.format("agent %s: %s[%d]@%d sent to %s: %s", self.name, ev.topic, ev.partition,
    ev.offset, self.dlq.name, tostring(err)))
  Ask.fail(self.app, self.name, ev.headers, err)
end

-- A message that could not be decoded or did not match the topic's types.
-- It is acknowledged and skipped (under "crash" the worker stops instead;
-- under "dlq"/"retry" its original bytes go to the dead-letter topic).
function Agent:_bad_event(ev)
  local msg = string.format("agent %s: cannot decode %s[%d]@%d: %s", self.name, ev.topic,
    ev.partition, ev.offset, ev.error)
  if self.on_error == "crash" then
    core.log("error", msg .. "; stopping (on_error = crash)")
    self.app.rt:fatal(msg)
  elseif self.dlq then
    ev.undecodable = true
    local ok, err = pcall(self._dead_letter, self, ev, ev.error)
    if not ok then core.log("error", string.format("%s; and it could not go to the DLQ: %s", msg, tostring(err))) end
  else
    if self.on_error ~= "skip" then core.log("warn", msg .. "; skipped") end
    Ask.fail(self.app, self.name, ev.headers, "cannot decode the request: " .. tostring(ev.error))
  end
end

-- Lua's "not enough memory" when the app sets max_memory: the allocator
-- refused to go past it (runtime/core/fs_mem.h), so say so and give the limit.
function Agent.memory_error(app, err)
  if err ~= "not enough memory" or not app.max_memory then return err end
  return string.format("not enough memory: the Lua state reached max_memory (%d bytes, %.1f MiB)",
    app.max_memory, app.max_memory / 1048576)
end

-- An instance runs the agent's function on `stream`; with `forward`, it runs
-- that instead: the forwarder of an in-agent group_by (see _regroup).
function Agent:_start_instance(stream, delay, forward)
  local rt = self.app.rt
  if forward then self.forwarders = (self.forwarders or 0) + 1 else self.instances = self.instances + 1 end
  local fn = forward or self.fn
  local body = function()
    -- Tables find the event being processed (its partition) through this.
    require("fstream.table").streams_by_co[coroutine.running()] = stream
    if delay and delay > 0 then core.sleep(delay) end
    return fn(stream)
  end
  rt:spawn(body, function(ok, err, traceback)
    if forward then self.forwarders = self.forwarders - 1 else self.instances = self.instances - 1 end
    -- The event in hand: an instance that regrouped its stream reads the regrouped one.
    local cur = not forward and stream.regrouped or stream
    if ok then
      cur.cs:ack()
      if not rt:stopping() and not forward then
        core.log("info", string.format("agent %s returned; its events are acknowledged from now on", self.name))
        if self.instances == 0 then
          rt:close_agent(self.id)
          if self.regroup then rt:close_agent(self.regroup.reader.id) end
        end
      end
      return
    end
    local merr = Agent.memory_error(self.app, err)
    -- skip logs nothing, but a memory limit hit is the operator's business.
    if merr ~= err and self.on_error == "skip" then
      core.log("warn", string.format("agent %s failed: %s; skipped (on_error = skip)", self.name, merr))
    end
    err = merr
    local orig = stream
    stream = cur
    local pos, npos = stream.cs:cursor()
    local ev = pos > 0 and { stream.cs:meta(pos) } or nil
    if ev then ev = { topic = ev[1], partition = ev[2], offset = ev[3] } end
    self.errors_by_policy[self.on_error] = (self.errors_by_policy[self.on_error] or 0) + 1
    self.last_error = { message = tostring(err), traceback = traceback, time = rt:now(), event = ev }
    -- The dashboard's list of recent failures (the newest 50).
    local recent = self.app.recent_errors or {}
    self.app.recent_errors = recent
    recent[#recent + 1] = { agent = self.name, message = tostring(err), time = self.last_error.time, event = ev,
      policy = self.on_error }
    if #recent > 50 then table.remove(recent, 1) end
    if self.on_error == "crash" then
      core.log("error", string.format("agent %s failed: %s%s\n%s", self.name, tostring(err), where(ev), traceback))
      rt:fatal(string.format("agent %s failed: %s (on_error = crash: not committing)", self.name, tostring(err)))
      return
    end
    if self.on_error == "log" or self.on_error == "skip" then
      if self.on_error == "log" then
        core.log("error", string.format("agent %s failed: %s%s\n%s", self.name, tostring(err), where(ev), traceback))
      end
      -- An asked event fails for good: the asker gets the error.
      local raw = pos > 0 and stream.cs:raw(pos)
      if raw then Ask.fail(self.app, self.name, raw.headers, err) end
    elseif self.dlq then
      local raw = pos > 0 and stream.cs:raw(pos)
      -- Whatever happens to the dead letter, the agent is restarted below.
      local ok, derr = pcall(function()
        if raw then
          self:_dead_letter(raw, err, traceback)
        else
          core.log("error", string.format("agent %s failed outside an event: %s\n%s", self.name, tostring(err), traceback))
        end
      end)
      if not ok then
        core.log("error", string.format("agent %s: could not divert a failed event%s: %s (the event failed with: %s)",
          self.name, where(ev), tostring(derr), tostring(err)))
      end
    end
    if rt:stopping() then return end
    -- An agent that fails before touching an event would spin: back off then.
    local progressed = pos ~= (self._last_fail_i or -1) or npos ~= (self._last_fail_n or -1)
    self._last_fail_i, self._last_fail_n = pos, npos
    self.failures = progressed and 0 or self.failures + 1
    local backoff = self.failures > 0 and math.min(0.1 * 2 ^ (self.failures - 1), 5.0) or 0
    self:_start_instance(orig, backoff, forward)
  end, "agent")
end

function Agent:_start(rt)
  if self.channel then return self:_start_channel(rt) end
  local tids = {}
  for _, t in ipairs(self.topics) do tids[#tids + 1] = t.id end
  self.id = rt:agent(self.name, tids)
  if not self.fn then -- an app:stream read from a task: no coroutine of its own
    self.streams[1] = Stream.new(self, rt:stream(self.id))
    return
  end
  for _ = 1, self.concurrency do
    local stream = Stream.new(self, rt:stream(self.id))
    self.streams[#self.streams + 1] = stream
    self:_start_instance(stream)
  end
end

-- An agent reading a channel: its instances take from the channel's queue
-- (Channel.stream); an instance that fails loses its event (there is no
-- offset to go back to) and restarts under the agent's policy.
function Agent:_start_channel(rt)
  for _ = 1, self.concurrency do
    local stream = Channel.stream(self.channel, self)
    self.streams[#self.streams + 1] = stream
    self:_start_channel_instance(rt, stream, 0)
  end
end

function Agent:_start_channel_instance(rt, stream, delay)
  self.instances = self.instances + 1
  rt:spawn(function()
    if delay > 0 then core.sleep(delay) end
    return self.fn(stream)
  end, function(ok, err, traceback)
    self.instances = self.instances - 1
    if ok then
      if not rt:stopping() then
        core.log("info", string.format("agent %s returned; channel %s is not read by it any more", self.name,
          self.channel.name))
      end
      return
    end
    err = Agent.memory_error(self.app, err)
    self.errors_by_policy[self.on_error] = (self.errors_by_policy[self.on_error] or 0) + 1
    self.last_error = { message = tostring(err), traceback = traceback, time = rt:now() }
    local msg = string.format("agent %s failed: %s (a value of channel %s)\n%s", self.name, tostring(err),
      self.channel.name, traceback)
    if self.on_error == "crash" then
      core.log("error", msg)
      rt:fatal(string.format("agent %s failed: %s (on_error = crash)", self.name, tostring(err)))
      return
    end
    if self.on_error == "log" then core.log("error", msg) end
    if rt:stopping() then return end
    -- Failing before taking a value would spin: back off then.
    local progressed = stream.ev ~= self._last_fail_ev
    self._last_fail_ev = stream.ev
    self.failures = progressed and 0 or self.failures + 1
    self:_start_channel_instance(rt, stream, self.failures > 0 and math.min(0.1 * 2 ^ (self.failures - 1), 5.0) or 0)
  end, "agent")
end

function Agent:describe()
  local srcs = {}
  if self.channel then srcs[1] = self.channel.name end
  for _, p in ipairs(self.patterns or {}) do srcs[#srcs + 1] = p.pattern .. " (pattern)" end
  for _, t in ipairs(self.topics) do
    if not t.pattern_of then srcs[#srcs + 1] = t.name end
  end
  local sinks = {}
  for _, s in ipairs(self.sinks) do
    if type(s) == "table" and s.name then sinks[#sinks + 1] = s.name
    elseif s == print then sinks[#sinks + 1] = "print"
    else sinks[#sinks + 1] = "function" end
  end
  -- A group_by inside the agent, learned when the agent first ran.
  if self.regroup then srcs[#srcs] = srcs[#srcs] .. " => " .. self.regroup.topic.name end
  return string.format("%s <- %s%s%s", self.name, table.concat(srcs, ", "),
    #sinks > 0 and (" -> " .. table.concat(sinks, ", ")) or "",
    self.concurrency > 1 and string.format(" (concurrency %d)", self.concurrency) or "")
end

return Agent
