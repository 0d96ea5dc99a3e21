-- Request/reply: agent:ask(value, {key =, timeout =}), agent:map(values),
-- agent:join(values) (Faust's agent.ask, map and join).
--
-- An ask is an ordinary message to the agent's topic with two headers:
-- fstream-reply-to (this worker's reply topic) and fstream-correlation-id. The
-- first value the agent yields for that event (Stream:yield -> Ask.answer)
-- goes to the reply topic with the same correlation id; an agent that fails on
-- the event for good answers with fstream-error instead (Ask.fail). Each
-- worker has its own reply topic "<app>-reply-<12 hex digits>", created by its
-- first ask and read outside the consumer group by the runtime's reply reader
-- (fs_lua_ask.c; under fstream.testing, an agent): asking changes no
-- subscription, so it costs no rebalance, and an agent may ask in the middle
-- of its own event. The asking coroutine parks (core.park) until the reply
-- wakes it, its deadline passes, or the worker stops; then the ask raises.
local core = require "fstream.core"

local Ask = {}

local H_REPLY_TO, H_ID, H_ERROR = "fstream-reply-to", "fstream-correlation-id", "fstream-error"
Ask.H_REPLY_TO, Ask.H_ID, Ask.H_ERROR = H_REPLY_TO, H_ID, H_ERROR
-- The reply topic's number outlives a reload (rt:carry): the new version reads
-- the same topic with the same reader.
local CARRY = "ask/reply-topic"
local DEFAULT_TIMEOUT = 30
-- Reply topics are created keeping a day of replies (as Faust's reply_expires):
-- a reply is read within an ask's timeout or never.
local REPLY_RETENTION = 86400
local SWEEP_EVERY = 256 -- asks between sweeps of asks nobody waits for any more

local function random48()
  local f = io.open("/dev/urandom", "rb")
  local b = f and f:read(6)
  if f then f:close() end
  if not b or #b < 6 then return math.random(0, (1 << 48) - 1) end
  local n = 0
  for i = 1, 6 do n = n * 256 + b:byte(i) end
  return n
end

-- Per app (one per Lua state, so a reload starts afresh): the reply topic and
-- agent, the asks waiting (correlation id -> waiter), the topics replies went
-- to, and the correlation id each agent coroutine last answered.
local function state(app)
  local s = app._ask
  if not s then
    s = {
      pending = {}, npending = 0, asks = 0,
      -- A new prefix per Lua state: after a reload, a reply meant for an ask of
      -- the old version can never match an ask of the new one.
      prefix = string.format("%08x-", random48() & 0xffffffff),
      targets = {},
      answered = setmetatable({}, { __mode = "k" }),
    }
    app._ask = s
  end
  return s
end

-- A reply wakes the coroutine that asked; one for an ask nobody waits for
-- (timed out, its coroutine gone, a previous version's) is dropped.
local function deliver(s, cid, value, err, where)
  local w = cid and s.pending[cid]
  if w then
    s.pending[cid] = nil
    s.npending = s.npending - 1
    if value == core.null then value = nil end
    w.done, w.value, w.error = true, value, err
    core.unpark(w.co)
  elseif core.log_enabled("debug") then
    core.log("debug", string.format("reply %s on %s: nobody waits for it (timed out or gone)", tostring(cid), where))
  end
end

-- The reply reader's task (a worker on Kafka): takes what the runtime's reader
-- (fs_lua_ask.c) received, and waits for more.
local function reader_task(app, rt, name)
  return function()
    local s = state(app)
    while true do
      local got = rt:replies_take()
      for _, r in ipairs(got) do deliver(s, r[1], r[2], r[3], name) end
      if #got == 0 then
        if rt:stopping() then -- the asks see it too, and raise
          rt:replies_close()
          return
        end
        rt:replies_wait()
      end
    end
  end
end

-- fstream.testing's in-memory transport has no reader of its own: an agent
-- reads the reply topic there.
local function receive(app)
  return function(stream)
    local s = state(app)
    for ev in stream:events() do deliver(s, ev.headers[H_ID], ev.value, ev.headers[H_ERROR], ev.topic) end
  end
end

-- Declares the reply topic "<app>-reply-<id>" and what reads it. At run time
-- (the first ask) the worker creates the topic; on Kafka the runtime's reply
-- reader reads it outside the consumer group (no subscription changes), under
-- fstream.testing an agent does. At a reload's bind (App:_bind) the new
-- version finds the reader there and starts its task with the app's tasks.
local function declare(app, rt, id, at_run_time)
  local Topic = require "fstream.topic"
  local s = state(app)
  local name = string.format("%s-reply-%012x", app.id, id)
  local topic = Topic.new(app, name, { value_serializer = "json", partitions = 1 }, 1)
  app.topics[name] = topic
  s.topic = topic
  s.targets[name] = topic
  topic.id = rt:topic(name, topic.key_codec, topic.value_codec, 1, false, true, REPLY_RETENTION)
  topic.partitions = rt:resolve_topics({ topic.id }, { 1 })[1]
  if rt:replies_open(topic.id) then
    local task = { fn = reader_task(app, rt, name), name = "reply reader", restart = true }
    if at_run_time then
      local function spawn()
        rt:spawn(task.fn, function(ok, err, tb)
          if ok or app.rt ~= rt or rt:stopping() then return end
          core.log("error", string.format("reply reader failed: %s\n%s", tostring(err), tb))
          spawn()
        end, "task")
      end
      spawn()
    else
      app.tasks[#app.tasks + 1] = task
    end
  else
    local Agent = require "fstream.agent"
    local agent = Agent.new(app, "__replies", topic, receive(app), {}, 1)
    agent.no_tables = true -- a reply topic writes no table
    app.agent_list[#app.agent_list + 1] = agent
    if at_run_time then
      agent:_start(rt)
      rt:resubscribe()
    end -- (at a bind, App:_bind starts it with the app's agents)
  end
  if at_run_time then
    rt:carry(CARRY, id)
    core.log("info", string.format("asks: replies to this worker come on %s", name))
  end
  return topic
end

-- App:_bind: a reloaded version reads the reply topic of the version before.
function Ask.bind(app, rt)
  local id = rt:carry(CARRY)
  if id then declare(app, rt, math.tointeger(id) or id, false) end
end

-- A static member (--worker-id) gets the same reply topic at every start, so
-- restarts do not leave a topic behind each; other workers get a new one.
local function member_id(app)
  local who = app.instance_id
  if not who then return random48() end
  local h = 0xcbf29ce484222325 -- FNV-1a, 64 bits, cut to 48
  for i = 1, #app.id + 1 + #who do
    local b = i <= #app.id and app.id:byte(i) or i == #app.id + 1 and 47 or who:byte(i - #app.id - 1)
    h = (h ~ b) * 0x100000001b3
  end
  return h & 0xffffffffffff
end

local function reply_topic(app)
  local s = state(app)
  return s.topic or declare(app, app.rt, member_id(app), true)
end

-- The topic a reply goes to: this worker's own, or another worker's, known to
-- this one from the first reply it sends there (one metadata request).
local function target(app, name)
  local s = state(app)
  local t = s.targets[name] or app.topics[name]
  if t then return t end
  local Topic = require "fstream.topic"
  t = Topic.new(app, name, { value_serializer = "json", partitions = 1 }, 1)
  local rt = app.rt
  t.id = rt:topic(name, t.key_codec, t.value_codec, 1, false, true, REPLY_RETENTION)
  t.partitions = rt:resolve_topics({ t.id }, { 1 })[1]
  s.targets[name] = t
  return t
end

-- The topic a reply to `to` goes to, or nil (logged once per name) when it
-- is not one of this app's reply topics or cannot be reached: a reply for an
-- asker that is gone, or a request with a made-up reply-to, never fails the
-- agent that answers it.
local function reply_target(app, to)
  local s = state(app)
  local t = s.targets[to]
  if t then return t end
  if s.unreachable and s.unreachable[to] then return nil end
  local prefix = app.id .. "-reply-"
  local ok, res = false, "not a reply topic of app " .. app.id
  if to:sub(1, #prefix) == prefix then ok, res = pcall(target, app, to) end
  if ok then return res end
  s.unreachable = s.unreachable or {}
  s.unreachable[to] = true
  core.log("warn", string.format("asks: no reply goes to %s: %s", to, tostring(res)))
  return nil
end

-- Stream:yield: the first value an agent yields for an asked event answers it.
function Ask.answer(app, value)
  local to, cid = core.reply_to()
  if not to then return end
  local s = state(app)
  local co = coroutine.running()
  if s.answered[co] == cid then return end -- a second yield for the same event
  s.answered[co] = cid
  local t = reply_target(app, to)
  if t then t:send { value = value, headers = { [H_ID] = cid } } end
end

-- An agent failed on an asked event for good (its policy logged, skipped or
-- dead-lettered it): the asker gets the error instead of waiting out its
-- timeout. Best effort: a reply that cannot be sent is logged.
function Ask.fail(app, agent_name, headers, err)
  local to, cid = headers and headers[H_REPLY_TO], headers and headers[H_ID]
  if not to or not cid then return end
  local ok, serr = pcall(function()
    local msg = string.format("agent %s failed: %s", agent_name, tostring(err)):sub(1, 4096)
    local t = reply_target(app, to)
    if t then t:send { value = nil, headers = { [H_ID] = cid, [H_ERROR] = msg } } end
  end)
  if not ok then
    core.log("warn", string.format("agent %s: could not send the error reply for ask %s to %s: %s",
      agent_name, cid, to, tostring(serr)))
  end
end

-- Drops waiters whose deadline passed long ago: their coroutine ended without
-- collecting them (killed, or it stopped iterating a map).
local function sweep(s, now)
  for cid, w in pairs(s.pending) do
    if w.deadline + 1 < now then
      s.pending[cid] = nil
      s.npending = s.npending - 1
    end
  end
end

local OPTIONS = { key = true, timeout = true }

local function check(agent, opts, what, level)
  level = level + 1
  if opts ~= nil and type(opts) ~= "table" then error(what .. ": options must be a table {key =, timeout =}", level) end
  opts = opts or {}
  for k in pairs(opts) do
    if not OPTIONS[k] then error(string.format("%s: unknown option '%s'", what, tostring(k)), level) end
  end
  local timeout = opts.timeout or DEFAULT_TIMEOUT
  if type(timeout) ~= "number" or not (timeout > 0) then
    error(string.format("%s: timeout must be a positive number of seconds", what), level)
  end
  local app = agent.app
  local rt = app.rt
  if not rt then error(string.format("%s: the worker is not running (ask from an agent, task or timer)", what), level) end
  if rt:stopping() then error(string.format("%s: the worker is stopping", what), level) end
  if not coroutine.isyieldable() then
    error(string.format("%s: must be called from an agent, task or timer", what), level)
  end
  if agent.channel then
    error(string.format("%s: agent %s reads a channel; ask agents that read a topic", what, agent.name), level)
  end
  -- Under exactly-once the request is part of this worker's open transaction,
  -- which cannot commit while an agent is in the middle of an event: an agent
  -- that waited for the reply there would wait for itself.
  if app.processing_guarantee == "exactly_once" then
    local st = require("fstream.table").streams_by_co[coroutine.running()]
    if st and st.cs and st.cs:cursor() > 0 then
      error(string.format("%s: under exactly_once an agent cannot wait for a reply in the middle of an event "
        .. "(the request is only sent when the event's transaction commits); ask from a task or timer, "
        .. "or send the request and answer through a topic", what), level)
    end
  end
  return opts, timeout, app, rt
end

-- Sends one request; returns its waiter.
local function request(agent, s, rt, value, key, deadline)
  local reply = s.topic
  s.asks = s.asks + 1
  local cid = s.prefix .. s.asks
  agent.topics[1]:send { key = key, value = value, headers = { [H_REPLY_TO] = reply.name, [H_ID] = cid } }
  local w = { co = coroutine.running(), deadline = deadline, cid = cid }
  s.pending[cid] = w
  s.npending = s.npending + 1
  if s.asks % SWEEP_EVERY == 0 then sweep(s, rt:now()) end
  return w
end

-- Waits for w's reply; returns its value or raises (the agent's error, the
-- timeout, or the worker stopping: it fetches no more replies then).
local function await(agent, s, rt, w, timeout, what, level)
  while not w.done do
    local left = w.deadline - rt:now()
    if left > 0 then core.park(left) end
    if not w.done and (rt:stopping() or rt:now() >= w.deadline) then
      if s.pending[w.cid] then
        s.pending[w.cid] = nil
        s.npending = s.npending - 1
      end
      if rt:stopping() then error(string.format("%s: the worker is stopping", what), level + 1) end
      error(string.format("%s: agent %s did not reply within %g s (timeout; replies come on %s)",
        what, agent.name, timeout, s.topic.name), level + 1)
    end
  end
  if w.error then error(string.format("%s: %s", what, w.error), level + 1) end
  return w.value
end

function Ask.ask(agent, value, opts, level)
  local what = string.format("ask to agent %s", agent.name)
  local timeout, app, rt
  opts, timeout, app, rt = check(agent, opts, what, level)
  reply_topic(app)
  local s = state(app)
  local w = request(agent, s, rt, value, opts.key, rt:now() + timeout)
  local v = await(agent, s, rt, w, timeout, what, level) -- (not a tail call: `level` counts this frame)
  return v
end

local function keyfn(key)
  if type(key) == "function" then return key end
  return function() return key end
end

local function check_values(values, what, level)
  if type(values) ~= "table" then error(what .. ": values must be a list", level + 1) end
end

-- Sends every request first (they are processed concurrently, by as many
-- partitions as the keys spread over); one deadline for all of them.
local function send_all(agent, values, opts, timeout, app, rt)
  local s = state(app)
  if #values == 0 then return s, {} end
  reply_topic(app)
  local kf = keyfn(opts.key)
  local deadline = rt:now() + timeout
  local waiters = {}
  for i, v in ipairs(values) do waiters[i] = request(agent, s, rt, v, kf(v, i), deadline) end
  return s, waiters
end

-- agent:join(values, opts) -> results, in the order of values.
function Ask.join(agent, values, opts, level)
  local what = string.format("join on agent %s", agent.name)
  check_values(values, what, level)
  local timeout, app, rt
  opts, timeout, app, rt = check(agent, opts, what, level)
  local s, waiters = send_all(agent, values, opts, timeout, app, rt)
  local results = {}
  for i, w in ipairs(waiters) do
    local ok, v = pcall(await, agent, s, rt, w, timeout, string.format("%s (value %d)", what, i), 1)
    if not ok then
      for j = i + 1, #waiters do -- nobody collects these now
        if s.pending[waiters[j].cid] then s.pending[waiters[j].cid] = nil; s.npending = s.npending - 1 end
      end
      error(v, level)
    end
    results[i] = v
  end
  return results
end

-- for i, result in agent:map(values, opts) do: every request is sent at
-- once; results come in the order of values, each as soon as it and the
-- ones before it arrived.
function Ask.map(agent, values, opts, level)
  local what = string.format("map on agent %s", agent.name)
  check_values(values, what, level)
  local timeout, app, rt
  opts, timeout, app, rt = check(agent, opts, what, level)
  local s, waiters = send_all(agent, values, opts, timeout, app, rt)
  local i = 0
  return function()
    i = i + 1
    local w = waiters[i]
    if not w then return nil end
    return i, await(agent, s, rt, w, timeout, string.format("%s (value %d)", what, i), 2)
  end
end

-- How many asks of this worker wait for a reply (for /metrics and specs).
function Ask.waiting(app)
  return app._ask and app._ask.npending or 0
end

return Ask
