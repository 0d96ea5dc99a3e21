-- The app: what a script declares (topics, agents, tasks, timers) and how a
-- worker starts it.
local core = require "fstream.core"
local Topic = require "fstream.topic"
local Agent = require "fstream.agent"
local Table = require "fstream.table"

local App = {}
-- Table entries staged by checkpoints after which the collector runs (see the table hook).
local BIG_FLUSH = 20000
App.__index = App

App.GUARANTEES = { at_least_once = true, exactly_once = true }
-- commit_interval when the app sets none, per guarantee.
App.DEFAULT_COMMIT_INTERVAL = { at_least_once = 2.8, exactly_once = 0.1 }

local OPTIONS = {
  broker = true, topic_partitions = true, commit_interval = true, processing_guarantee = true,
  max_queued = true, store = true, table_cleanup_interval = true, agent_timeout = true, max_memory = true,
  max_queued_bytes = true,
  standby_replicas = true,
  web = true, -- {port =, bind =, token =, public =} or false: fstream/web.lua reads it
  partition_assignor = true,
}

-- partition_assignor: how the group's members share partitions. "auto" picks
-- cooperative-sticky unless the app's tables need co-partitioned topics (see
-- App:_assignor); the others are librdkafka's assignors of that name.
App.ASSIGNORS = { auto = true, ["cooperative-sticky"] = true, range = true, roundrobin = true,
  ["range,roundrobin"] = true }

local function check_assignor(v, where)
  if not App.ASSIGNORS[v] then
    error(string.format("%s: partition_assignor must be \"auto\", \"cooperative-sticky\", \"range\", "
      .. "\"roundrobin\" or \"range,roundrobin\", got %s", where,
      type(v) == "string" and "'" .. v .. "'" or tostring(v)), 0)
  end
  return v
end

-- max_memory: bytes, as a number or a string with a unit ("256MiB", "1.5 GB",
-- "512k"): K/M/G and KiB/MiB/GiB count in 1024s, KB/MB/GB in 1000s.
local UNITS = { [""] = 1, b = 1, k = 1024, kib = 1024, kb = 1000, m = 1024 ^ 2, mib = 1024 ^ 2, mb = 1000 ^ 2,
  g = 1024 ^ 3, gib = 1024 ^ 3, gb = 1000 ^ 3 }

function App.parse_bytes(v)
  if math.type(v) == "integer" then return v > 0 and v or nil end
  if type(v) == "number" then return v >= 1 and v < 2 ^ 62 and math.floor(v) or nil end
  if type(v) ~= "string" then return nil end
  local num, unit = v:match("^%s*(%d+%.?%d*)%s*(%a*)%s*$")
  local mult = unit and UNITS[unit:lower()]
  if not mult then return nil end
  local n = math.floor(tonumber(num) * mult)
  return n >= 1 and n < 2 ^ 62 and n or nil
end

function App.new(id, opts, level)
  level = level or 2
  if type(id) ~= "string" or not id:match("^[%w%._%-]+$") then
    error("app id must be a non-empty string of letters, digits, '.', '_' or '-'", level)
  end
  opts = opts or {}
  if type(opts) ~= "table" then error("app options must be a table", level) end
  for k in pairs(opts) do
    if not OPTIONS[k] then error(string.format("app '%s': unknown option '%s'", id, tostring(k)), level) end
  end
  local pg = opts.processing_guarantee or "at_least_once"
  if not App.GUARANTEES[pg] then
    error(string.format("app '%s': processing_guarantee must be \"at_least_once\" or \"exactly_once\", got %s",
      id, type(pg) == "string" and "'" .. pg .. "'" or tostring(pg)), level)
  end
  local tp = opts.topic_partitions or 8
  if math.type(tp) ~= "integer" or tp < 1 then error("topic_partitions must be a positive integer", level) end
  local store = opts.store or "lmdb://"
  if type(store) ~= "string" or not store:match("^lmdb://") then
    error(string.format("app '%s': store must be \"lmdb://[directory]\"", id), level)
  end
  local tci = opts.table_cleanup_interval or 1.0
  if type(tci) ~= "number" or tci <= 0 then error("table_cleanup_interval must be a positive number of seconds", level) end
  -- Default: 2.8 s, or 0.1 s under exactly_once (a transaction per
  -- checkpoint: its outputs become visible to read_committed readers when it
  -- commits). The guarantee may still change at start (--guarantee), so the
  -- default follows it there (App:_guarantee).
  local ci = opts.commit_interval
  if ci ~= nil and (type(ci) ~= "number" or ci <= 0) then error("commit_interval must be a positive number of seconds", level) end
  -- A coroutine (agent, task, timer) that runs this long without yielding is
  -- interrupted with an error (math.huge: never).
  local atime = opts.agent_timeout or 10
  if type(atime) ~= "number" or not (atime > 0) then error("agent_timeout must be a positive number of seconds", level) end
  -- Standby replicas: how many other workers keep a warm copy of each table
  -- partition (fs_standby.c; the group's membership decides which).
  local sr = opts.standby_replicas or 0
  if math.type(sr) ~= "integer" or sr < 0 then error("standby_replicas must be a non-negative integer", level) end
  if opts.partition_assignor ~= nil and not App.ASSIGNORS[opts.partition_assignor] then
    local ok, err = pcall(check_assignor, opts.partition_assignor, "app '" .. id .. "'")
    if not ok then error(err, level) end
  end
  -- The Lua state's memory: an agent, task or timer that allocates past it
  -- fails with "not enough memory" (its on_error policy applies).
  local maxmem = opts.max_memory
  if maxmem ~= nil then
    maxmem = App.parse_bytes(maxmem)
    if not maxmem then
      error(string.format("app '%s': max_memory must be a positive number of bytes or a size like \"256MiB\" (got %s)",
        id, type(opts.max_memory) == "string" and "'" .. opts.max_memory .. "'" or tostring(opts.max_memory)), level)
    end
  end
  -- Back-pressure in bytes: fetching pauses while the events waiting for
  -- agents hold this many bytes of keys and values (default 64 MiB).
  local mqb = opts.max_queued_bytes
  if mqb ~= nil then
    mqb = App.parse_bytes(mqb)
    if not mqb then
      error(string.format("app '%s': max_queued_bytes must be a positive number of bytes or a size like \"64MiB\"", id), level)
    end
  end
  return setmetatable({
    id = id,
    standby_replicas = sr,
    broker = opts.broker or "kafka://localhost:9092",
    topic_partitions = tp,
    commit_interval = ci or App.DEFAULT_COMMIT_INTERVAL[pg],
    commit_interval_set = ci ~= nil,
    guarantee_set = opts.processing_guarantee ~= nil,
    processing_guarantee = pg,
    max_queued = opts.max_queued,
    store = store,
    table_cleanup_interval = tci,
    agent_timeout = atime,
    partition_assignor = opts.partition_assignor or "auto",
    max_memory = maxmem,
    max_queued_bytes = mqb,
    web = opts.web,
    topics = {}, topic_list = {},
    tables = {}, table_list = {},   -- tables' states (Table.state), not the objects the app holds
    agents = {}, agent_list = {},
    tasks = {},
  }, App)
end

-- app:topic(name, opts), or a pattern topic: app:topic{pattern = "^events-.*",
-- refresh = seconds, serializers and types...} (also app:topic(nil, {pattern = ...})).
function App:topic(name, opts)
  if type(name) == "table" and opts == nil then name, opts = nil, name end
  if name == nil and type(opts) == "table" and opts.pattern ~= nil then
    local p = self:_pattern(opts) -- (not a tail call: errors point at the caller's line)
    return p
  end
  if name == nil then error("topic name must be a non-empty string (or app:topic{pattern = ...})", 2) end
  local t = self.topics[name]
  if t then
    if not t:same_schema(opts) then
      error(string.format("topic '%s' is already declared with other serializers or types", name), 2)
    end
    return t
  end
  if self.rt then error("topics must be declared before the worker starts", 2) end
  t = Topic.new(self, name, opts, 2)
  self.topics[name] = t
  self.topic_list[#self.topic_list + 1] = t
  return t
end

function App:_pattern(opts)
  self.patterns = self.patterns or {}
  local p = self.patterns[opts.pattern]
  if p then
    if not p:same_schema(opts) then
      error(string.format("topic pattern '%s' is already declared with other serializers, types or refresh",
        tostring(opts.pattern)), 3)
    end
    return p
  end
  if self.rt then error("topics must be declared before the worker starts", 3) end
  p = Topic.new_pattern(self, opts, 3)
  self.patterns[p.pattern] = p
  return p
end

-- Pattern topics: every topic of the broker a pattern matches becomes a topic
-- of the app (with the pattern's serializers and types) that the agents
-- reading the pattern read too. `listing`: {name = partitions} of the broker.
-- Returns the {agent, topic} pairs added; topics the app declared itself keep
-- their own declaration. Tables: a match whose partition count is not the
-- tables' cannot feed the agents that write them; it is refused once, loudly.
function App:_discover(listing)
  local names = {}
  for name in pairs(listing) do names[#names + 1] = name end
  table.sort(names)
  local added = {}
  local nparts -- partitioned tables' count, once the worker runs
  for _, tb in ipairs(self.table_list) do
    if not tb.global and self.partitions_resolved then nparts = tb.partitions end
  end
  self.refused_matches = self.refused_matches or {}
  for _, name in ipairs(names) do
    for _, a in ipairs(self.agent_list) do
      for _, pat in ipairs(a.patterns or {}) do
        if not a.topics_by_name[name] and pat:matches(name) then
          if nparts and not a.no_tables and listing[name] ~= nparts then
            if not self.refused_matches[name] then
              self.refused_matches[name] = true
              core.log("error", string.format("topic pattern '%s': %s has %d partitions but agent %s writes tables, "
                .. "which have %d (partition p of an input holds partition p of every table): not read; "
                .. "give it %d partitions", pat.pattern, name, listing[name], a.name, nparts, nparts))
            end
          else
            local t = self.topics[name]
            if not t then
              t = Topic.new(self, name, pat.opts, 1)
              t.partitions = listing[name]
              t.pattern_of = pat
              self.topics[name] = t
              self.topic_list[#self.topic_list + 1] = t
            end
            a.topics[#a.topics + 1] = t
            a.topics_by_name[name] = t
            if t.post_decode then a.post_decode = true end
            added[#added + 1] = { a, t }
          end
        end
      end
    end
  end
  return added
end

-- Whether an agent of the app reads a pattern, and the shortest refresh.
function App:_pattern_refresh()
  local refresh
  for _, a in ipairs(self.agent_list) do
    for _, pat in ipairs(a.patterns or {}) do refresh = math.min(refresh or math.huge, pat.refresh) end
  end
  return refresh
end

-- The running worker's side: every `refresh` seconds, the newest listing of
-- the broker's topics (asked for at the previous turn, made on a thread of the
-- transport) is matched; new matches are subscribed. So a topic created at
-- time T is read from about T + 2 x refresh on (plus the rebalance).
function App:_watch_patterns(rt, refresh)
  local seen, last_err = 0, nil
  while true do
    core.sleep(refresh)
    local listing, n = rt:broker_topics()
    if not listing then
      if n ~= last_err then core.log("warn", "topic patterns: " .. tostring(n)) end
      last_err = n
    elseif n ~= seen then
      seen, last_err = n, nil
      local added = self:_discover(listing)
      local partitioned = false
      for _, tb in ipairs(self.table_list) do partitioned = partitioned or not tb.global end
      for _, at in ipairs(added) do
        local a, t = at[1], at[2]
        if not t.id then t.id = rt:topic(t.name, t.key_codec, t.value_codec, t.partitions, false, true) end
        rt:agent_reads(a.id, t.id)
        if partitioned and not a.no_tables then rt:table_inputs({ t.id }, true) end
        core.log("info", string.format("topic pattern '%s': agent %s reads %s (%d partitions)",
          (t.pattern_of or a.patterns[1]).pattern, a.name, t.name, t.partitions))
      end
      if #added > 0 then rt:resubscribe() end
    end
  end
end

-- app:table(name, {default=, key_serializer=, value_serializer=, partitions=, changelog_topic=})
function App:table(name, opts)
  if self.tables[name] then error(string.format("table '%s' is already defined", tostring(name)), 2) end
  if self.rt then error("tables must be defined before the worker starts", 2) end
  local t = Table.new(self, name, opts, 2)
  self.tables[name] = t
  self.table_list[#self.table_list + 1] = t
  return t.proxy
end

-- app:global_table(name, opts): every worker holds all of it and follows its
-- changelog; same options as app:table.
function App:global_table(name, opts)
  if self.tables[name] then error(string.format("table '%s' is already defined", tostring(name)), 2) end
  if self.rt then error("tables must be defined before the worker starts", 2) end
  local t = Table.new(self, name, opts, 2, true)
  self.tables[name] = t
  self.table_list[#self.table_list + 1] = t
  return t.proxy
end

-- app:set_table(name, opts) / app:set_global_table(name, opts): tables whose
-- value under a key is a set (Faust's SetTable); see fstream.set_table.
for method, global in pairs { set_table = false, set_global_table = true } do
  App[method] = function(self, name, opts)
    if self.tables[name] then error(string.format("table '%s' is already defined", tostring(name)), 2) end
    if self.rt then error("tables must be defined before the worker starts", 2) end
    local t = require("fstream.set_table").new(self, name, opts, 2, global)
    self.tables[name] = t
    self.table_list[#self.table_list + 1] = t
    return t.proxy
  end
end

-- Directory holding the app's LMDB files: store = "lmdb://DIR", default ./<id>-data.
function App:data_dir(store)
  local dir = (store or self.store):match("^lmdb://(.*)$")
  if dir == nil or dir == "" then dir = "./" .. self.id .. "-data" end
  return dir
end

-- app:stream(source, {processors = {f, ...}}): a stream of a topic (or list of
-- topics) whose values go through the processors first. Use it as an agent's
-- source, or iterate it in a task: `for v in s do ... end`.
local StreamSource = {}
StreamSource.__index = StreamSource
StreamSource.__call = function(self)
  local agent = self.used_by
  if not agent or not agent.streams[1] then error("app:stream: the worker is not running", 2) end
  -- Table writes from this task go to the partition of the event in hand.
  Table.streams_by_co[coroutine.running()] = agent.streams[1]
  return agent.streams[1]()
end
function StreamSource:group_by(key, opts)
  return Topic.group_by_source(self.topics, self.processors, key, opts, 3)
end
-- app:stream(left):join(app:stream(right), {within = ...}): fstream/join.lua.
function StreamSource:join(other, opts)
  return require("fstream.join").streams(self, other, opts, 2)
end

for _, op in ipairs { "filter", "map", "echo", "take", "items", "events", "enumerate" } do
  StreamSource[op] = function(self, ...)
    local agent = self.used_by
    if not agent or not agent.streams[1] then error("app:stream: the worker is not running", 2) end
    local s = agent.streams[1]
    return s[op](s, ...)
  end
end

function App:stream(source, opts)
  if self.rt then error("streams must be declared before the worker starts", 2) end
  opts = opts or {}
  for k in pairs(opts) do
    if k ~= "processors" then error(string.format("app:stream: unknown option '%s'", tostring(k)), 2) end
  end
  local procs = opts.processors or {}
  for i, p in ipairs(procs) do
    if type(p) ~= "function" then error(string.format("app:stream: processor %d is not a function", i), 2) end
  end
  local topics = (getmetatable(source) == Topic or getmetatable(source) == Topic.Pattern) and { source } or source
  if type(topics) ~= "table" or #topics == 0 then error("app:stream: source must be a topic or a list of topics", 2) end
  self.stream_sources = self.stream_sources or {}
  local s = setmetatable({ is_stream_source = true, topics = topics, processors = procs }, StreamSource)
  self.stream_sources[#self.stream_sources + 1] = s
  return s
end

-- app:channel({name =, maxsize =}): an in-memory stream inside this worker
-- (fstream/channel.lua): an agent's source or sink, no Kafka, no offsets.
function App:channel(opts)
  return require("fstream.channel").new(self, opts, 2)
end

-- app:command(name, function(args, cmd) ... end, {help =, args =, options =}):
-- a command of the app's own, run by `fstream-lua APP.lua NAME ...` (Faust's
-- @app.command); fstream/cli.lua checks the declaration, parses and runs it.
function App:command(name, fn, opts)
  local c = require("fstream.cli").define_command(self, name, fn, opts, 2)
  self.commands = self.commands or {}
  self.command_list = self.command_list or {}
  if self.commands[name] then error(string.format("command '%s' is already defined", name), 2) end
  self.commands[name] = c
  self.command_list[#self.command_list + 1] = c
end

-- app:page(path, fn, {methods =}): a page of the worker's web server (fstream/web.lua).
function App:page(path, fn, opts)
  return require("fstream.web").page(self, path, fn, opts, 2)
end

-- app:agent(name, source, function(stream) ... end, opts)
function App:agent(name, source, fn, opts)
  if self.agents[name] then error(string.format("agent '%s' is already defined", tostring(name)), 2) end
  if self.rt then error("agents must be defined before the worker starts", 2) end
  local a = Agent.new(self, name, source, fn, opts, 2)
  self.agents[name] = a
  self.agent_list[#self.agent_list + 1] = a
  return a
end

local function callsite(level)
  local info = debug.getinfo(level + 1, "Sl")
  return info and string.format("%s:%d", info.short_src, info.currentline) or "?"
end

local function check_opts(what, opts, allowed)
  if opts == nil then return {} end
  if type(opts) ~= "table" then error(what .. ": options must be a table", 3) end
  for k in pairs(opts) do
    if not allowed[k] then error(string.format("%s: unknown option '%s'", what, tostring(k)), 3) end
  end
  return opts
end

-- Leadership (on_leader = true): the worker assigned partition 0 of the
-- one-partition topic "<app>-__leader" leads; the group coordinator picks
-- exactly one, and a new one when it leaves.
function App:_leader_topic()
  if not self.leader_topic then
    self.leader_topic = self:topic(self.id .. "-__leader", { partitions = 1 })
    local a = Agent.new(self, "__leader", self.leader_topic, nil, { internal = true }, 1)
    a.no_tables = true
    self.agent_list[#self.agent_list + 1] = a
  end
  return self.leader_topic
end

-- Whether this worker is the group's leader (see on_leader).
function App:is_leader()
  return self.rt ~= nil and self.leader_topic ~= nil and self.rt:assigned(self.leader_topic.id, 0)
end

-- app:task(fn, {on_leader = true}): runs once when the worker starts (with
-- on_leader: once this worker leads the group).
function App:task(fn, opts)
  if type(fn) ~= "function" then error("task expects a function", 2) end
  opts = check_opts("task", opts, { on_leader = true })
  local body = fn
  if opts.on_leader then
    self:_leader_topic()
    body = function()
      while not self:is_leader() do core.sleep(0.2) end
      return fn()
    end
  end
  self.tasks[#self.tasks + 1] = { fn = body, name = "task at " .. callsite(2) }
end

-- A task that calls fn at due times: first(carried, now) gives the first one
-- (carried: what the previous version left under `key`, or nil), after(due, now)
-- each next. The due time is carried over a reload. Never two calls at once;
-- an error is logged and the schedule goes on; with on_leader only the group's
-- leader calls fn.
function App:_scheduled(kind, what, name, fn, on_leader, first, after)
  -- Keyed by kind, schedule and rank: source lines move between versions.
  local key = self:_carry_key(kind, what)
  self.tasks[#self.tasks + 1] = {
    name = name,
    restart = true,
    fn = function()
      local rt = self.rt
      local handler = function(e) return debug.traceback(tostring(e), 2) end
      local due = first(rt:carry(key), rt:now())
      while true do
        rt:carry(key, due)
        local wait = due - rt:now()
        if wait > 0 then core.sleep(wait) end
        if not on_leader or self:is_leader() then
          local ok, err = xpcall(fn, handler)
          if not ok then core.log("error", name .. " failed: " .. err) end
        end
        due = after(due, rt:now())
      end
    end,
  }
end

-- "timer/3/1": the first timer every 3 s; what a reloaded version's timer finds its state under.
function App:_carry_key(kind, what)
  local k = kind .. "/" .. tostring(what)
  self.carry_ranks = self.carry_ranks or {}
  self.carry_ranks[k] = (self.carry_ranks[k] or 0) + 1
  return k .. "/" .. self.carry_ranks[k]
end

-- app:timer(interval, fn): calls fn every `interval` seconds (first call after
-- one interval), never two at once; an error is logged and the timer goes on.
-- With on_leader = true it fires only on the group's leader. A reload keeps the
-- timer's rhythm: the new version's timer of the same interval and rank takes
-- the old one's next due time.
function App:timer(interval, fn, opts)
  if type(interval) ~= "number" or interval <= 0 then error("timer interval must be a positive number of seconds", 2) end
  if type(fn) ~= "function" then error("timer expects a function", 2) end
  opts = check_opts("timer", opts, { on_leader = true })
  if opts.on_leader then self:_leader_topic() end
  self:_scheduled("timer", string.format("%g", interval), "timer at " .. callsite(2), fn, opts.on_leader,
    function(carried, now)
      if not carried or carried > now + interval then return now + interval end
      return carried
    end,
    function(_, now) return now + interval end)
end

-- app:crontab("*/5 * * * *", fn, {timezone = "UTC" | "local" | "Europe/Berlin", on_leader = true}):
-- minute hour day-of-month month day-of-week as cron reads them (see
-- fstream.cron: names, @daily and the like, daylight-saving changes).
-- Carried over a reload: a run that fell due while the worker swapped versions
-- still happens (late), and none runs twice.
function App:crontab(spec, fn, opts)
  if type(fn) ~= "function" then error("crontab expects a function", 2) end
  opts = check_opts("crontab", opts, { timezone = true, on_leader = true })
  local tz = opts.timezone or "UTC"
  if type(tz) ~= "string" then error("crontab: timezone must be \"UTC\", \"local\" or an IANA name like \"Europe/Berlin\"", 2) end
  local cron = require("fstream.cron")
  local ok, schedule = pcall(cron.parse, spec)
  if not ok then error("crontab: " .. tostring(schedule), 2) end
  local zone
  ok, zone = pcall(require("fstream.tz").zone, tz)
  if not ok then error("crontab: " .. tostring(zone), 2) end
  if opts.on_leader then self:_leader_topic() end
  self:_scheduled("crontab", spec .. " " .. tz, string.format("crontab %q at %s", spec, callsite(2)), fn,
    opts.on_leader,
    function(carried, now) return carried or cron.next_time(schedule, now, zone) end,
    function(due, now) return cron.next_time(schedule, math.max(now, due), zone) end)
end

-- The guarantee the worker runs under (settings.guarantee: the command line's
-- --guarantee, which wins over the app's option) and, unless the app set one,
-- the commit interval that goes with it.
function App:_guarantee(guarantee)
  if guarantee ~= nil then
    if not App.GUARANTEES[guarantee] then
      error(string.format("unknown processing guarantee '%s' (at_least_once or exactly_once)", tostring(guarantee)), 0)
    end
    self.processing_guarantee = guarantee
    if not self.commit_interval_set then self.commit_interval = App.DEFAULT_COMMIT_INTERVAL[guarantee] end
  end
  return self.processing_guarantee
end

-- The group consumer's assignor: $FSTREAM_PARTITION_ASSIGNOR, else the app's
-- partition_assignor. "auto" is cooperative-sticky (a rebalance moves only the
-- partitions that change hands; the others keep going) for an app without
-- partitioned tables, and range for one with them: tables follow partition
-- numbers, so every topic that writes them must be co-partitioned (partition
-- p of each on one worker), which range assignment keeps and cooperative-sticky
-- does not — and a group_by inside an agent adds such a topic (its
-- repartition topic) only once the agent runs, too late to choose. An app
-- whose tables are written from one topic can ask for cooperative-sticky.
-- quiet: the choice is logged at debug level only (fstream.testing's
-- in-memory log and memory://, which assign partitions without a group).
function App:_assignor(quiet)
  local env = os.getenv("FSTREAM_PARTITION_ASSIGNOR")
  local v = check_assignor(env ~= nil and env ~= "" and env or self.partition_assignor,
    env ~= nil and env ~= "" and "FSTREAM_PARTITION_ASSIGNOR" or "app '" .. self.id .. "'")
  if v ~= "auto" then return v end
  local partitioned = false
  for _, tb in ipairs(self.table_list) do partitioned = partitioned or not tb.global end
  if not partitioned then return "cooperative-sticky" end
  core.log(quiet and "debug" or "info", "partition assignor: range, not cooperative-sticky (the app has partitioned tables, "
    .. "whose input topics must stay co-partitioned); set partition_assignor to choose")
  return "range"
end

-- Starts the app on a runtime: `settings` = { broker=URL, test=bool, clock=epoch s (test only), store=URL,
-- guarantee=at_least_once|exactly_once (overrides the app's option), instance_id=the group consumer's
-- group.instance.id ("auto": host name and the data directory's slot) or nil }.
-- fstream.testing (test) runs an app of either guarantee the same way: it
-- tests the app's logic in memory, where nothing is durable or transactional.
function App:_start(settings)
  if self.rt then error("app '" .. self.id .. "' is already running", 2) end
  local guarantee = self:_guarantee(settings.guarantee)
  self.instance_id = settings.instance_id -- (fstream.ask: a static member's reply topic)
  local broker = settings.broker or self.broker
  local rt = core.new {
    group = self.id,
    broker = broker,
    test = settings.test,
    clock = settings.clock,
    commit_interval = self.commit_interval,
    max_queued = self.max_queued,
    agent_timeout = self.agent_timeout,
    max_memory = self.max_memory,
    max_queued_bytes = self.max_queued_bytes,
    standby_replicas = self.standby_replicas,
    processing_guarantee = guarantee,
    data_dir = self:data_dir(settings.store),
    instance_id = settings.instance_id,
    partition_assignor = self:_assignor(settings.test or tostring(broker):match("^memory:") ~= nil),
    -- A worker whose specs drive it from inside (rt:test_reset): the test runtime's methods.
    test_hooks = os.getenv("FSTREAM_TEST_HOOKS") == "1" or nil,
  }
  -- A start-up error (partition counts, say) leaves nothing behind.
  local ok, err = pcall(self._bind, self, rt, settings.store)
  if not ok then
    rt:close()
    self.rt = nil
    error(err, 0)
  end
  -- Tasks, like agents, take their first steps before the worker subscribes
  -- (a topic:stream() or group_by they start with is in the first subscription).
  self:_spawn_tasks()
  rt:start()
  return rt
end

-- A reload: this (new) version takes over the running worker's runtime, whose
-- topics and tables it declares again; fetching restarts where the previous
-- version stopped.
function App:_take_over(handle, store)
  -- The guarantee is the running worker's (its checkpoint strategy and
  -- transactional producer stay); an interval the app does not set stays too.
  local rt = core.adopt(handle, { commit_interval = self.commit_interval_set and self.commit_interval or nil,
    max_queued = self.max_queued, agent_timeout = self.agent_timeout,
    max_memory = self.max_memory or 0, max_queued_bytes = self.max_queued_bytes })
  local running = rt:guarantee()
  if self.processing_guarantee ~= running and self.guarantee_set then
    core.log("warn", string.format("reload: processing_guarantee %s takes effect when the worker restarts; "
      .. "it runs %s until then", self.processing_guarantee, running))
  end
  self:_guarantee(running)
  self:_bind(rt, store)
  self:_spawn_tasks()
  rt:rebound()
  return rt
end

-- What a reload cannot change under a running worker: raises the reason.
-- `running` = { group, broker, data_dir, tables = {name = signature} }.
function App:_check_reload(running, broker, dir)
  local function refuse(fmt, ...)
    error(string.format(fmt, ...) .. "; restart the worker to apply this change", 0)
  end
  if self.id ~= running.group then
    refuse("the app id changed from '%s' to '%s' (it names the consumer group and the changelogs)", running.group, self.id)
  end
  if broker ~= running.broker then refuse("the broker changed from %s to %s", running.broker, broker) end
  if dir ~= running.data_dir then refuse("the store changed from %s to %s", running.data_dir, dir) end
  for _, t in ipairs(self.table_list) do
    local was, now = running.tables[t.name], Table.signature(t)
    if was and was ~= now then
      refuse("table %s changed from {%s} to {%s}: its stored data and changelog are laid out by these", t.name, was, now)
    elseif not was and t.global then
      refuse("global table %s is new (a global table is recovered when the worker starts)", t.name)
    end
  end
end

function App:_bind(rt, store)
  self.rt = rt
  -- A reloaded version keeps reading the reply topic of asks (fstream/ask.lua).
  require("fstream.ask").bind(self, rt)
  -- A stream that no agent uses is read from a task: it gets an agent of its own.
  for i, src in ipairs(self.stream_sources or {}) do
    if not src.used_by then
      local a = Agent.new(self, string.format("stream-%d", i), src, nil, { internal = true }, 1)
      self.agent_list[#self.agent_list + 1] = a
    end
  end
  for _, t in ipairs(self.topic_list) do
    t.id = rt:topic(t.name, t.key_codec, t.value_codec, t.partitions, t.compact)
  end
  -- Pattern topics: what the broker has now is read from the first
  -- subscription on (start-up may wait for the listing; later ones do not).
  -- Without a broker (fstream.testing) the listing is the topics the app declares.
  if self:_pattern_refresh() then
    local listing, err = rt:broker_topics(10)
    if not listing then error("topic patterns: " .. tostring(err), 0) end
    for _, at in ipairs(self:_discover(listing)) do
      local t = at[2]
      if not t.id then t.id = rt:topic(t.name, t.key_codec, t.value_codec, t.partitions, t.compact) end
    end
  end
  self:_resolve_partitions(rt)
  self.partitions_resolved = true
  local dir = self:data_dir(store)
  for _, t in ipairs(self.table_list) do
    t.id = rt:table(t.name, t.changelog.id, dir .. "/" .. t.name, t.partitions, t.global, Table.signature(t))
  end
  if #self.table_list > 0 then
    local tables = self.table_list
    self.staged_since_gc = 0
    rt:table_hook(function(event, p, tid, keys)
      local busy = false
      if event == "flush" then
        for _, t in ipairs(tables) do
          for _, part in pairs(t.parts) do
            if Table.busy(part) then busy = true end
          end
        end
      end
      for _, t in ipairs(tables) do
        local staged = Table._on(t, event, p, tid, keys) -- (a flush: how many entries)
        if staged then self.staged_since_gc = self.staged_since_gc + staged end
      end
      -- An idle worker allocates nothing, so the collector would never run: free
      -- what the last burst left (record-cache entries) at a quiet checkpoint.
      -- Each checkpoint also turns the record cache it replaces into garbage
      -- that has grown old, which the generational collector's minor steps
      -- leave until the heap has doubled: during a burst of new keys, that is
      -- the peak (BENCHMARKS.md, issue 14). Once checkpoints have staged
      -- BIG_FLUSH entries since the last collection, one runs after the flush.
      if event == "flush" and (not busy or self.staged_since_gc >= BIG_FLUSH) then
        local before, staged = collectgarbage("count"), self.staged_since_gc
        collectgarbage("collect")
        self.staged_since_gc = 0
        if busy then
          core.log("debug", string.format("checkpoints staged %d table entries: Lua heap collected, %.1f -> %.1f MiB",
            staged, before / 1024, collectgarbage("count") / 1024))
        end
      end
    end)
  end
  for _, a in ipairs(self.agent_list) do a:_start(rt) end
end

-- Partition counts come from the broker. A topic that exists keeps its count
-- (topic_partitions, or a topic's `partitions`, is only what the worker creates
-- a missing topic with); internal topics follow the topic they derive from; a
-- table has the count of the topics the app's agents read, since partition p of
-- every table lives with partition p of every input. Whatever cannot agree is
-- one start-up error that names the counts and the fix.
function App:_resolve_partitions(rt)
  local function resolve(list)
    if #list == 0 then return end
    local ids, wants = {}, {}
    for i, t in ipairs(list) do ids[i], wants[i] = t.id, t.partitions end
    local counts = rt:resolve_topics(ids, wants)
    for i, t in ipairs(list) do t.partitions = counts[i] end
  end
  local changelogs = {}
  for _, t in ipairs(self.table_list) do changelogs[t.changelog] = true end
  -- Topics of their own first, then retry and repartition topics once their
  -- source's count is known (a retry topic of a repartition topic: two rounds).
  local done, later = {}, {}
  local first = {}
  for _, t in ipairs(self.topic_list) do
    if changelogs[t] then -- after the tables' counts
    elseif t.follows then later[#later + 1] = t
    else first[#first + 1] = t end
  end
  resolve(first)
  for _, t in ipairs(first) do done[t] = true end
  while #later > 0 do
    local now, rest = {}, {}
    for _, t in ipairs(later) do
      if done[t.follows] then t.partitions = t.follows.partitions; now[#now + 1] = t else rest[#rest + 1] = t end
    end
    if #now == 0 then break end
    resolve(now)
    for _, t in ipairs(now) do done[t] = true end
    later = rest
  end
  if #self.table_list == 0 then return end

  -- The input of tables: what the agents read, but not the sources of
  -- forwarders (group_by, through, chains) or the leader topic, whose events
  -- write no table.
  local inputs, seen = {}, {}
  for _, a in ipairs(self.agent_list) do
    if not a.no_tables then
      for _, t in ipairs(a.topics) do
        if not seen[t] and not changelogs[t] then seen[t] = true; inputs[#inputs + 1] = t end
      end
    end
  end
  local ids = {}
  for i, t in ipairs(inputs) do ids[i] = t.id end
  rt:table_inputs(ids)
  local function list(ts)
    local parts = {}
    for _, t in ipairs(ts) do parts[#parts + 1] = string.format("%s: %d", t.name, t.partitions) end
    return table.concat(parts, ", ")
  end
  local n_in = inputs[1] and inputs[1].partitions
  for _, t in ipairs(inputs) do
    if t.partitions ~= n_in then
      local has_partitioned = false
      for _, tb in ipairs(self.table_list) do has_partitioned = has_partitioned or not tb.global end
      if has_partitioned then
        error(string.format("the topics the agents read have different partition counts (%s), but a table "
          .. "holds partition p of every one of them: give these topics one partition count (the worker creates "
          .. "missing topics with topic_partitions = %d; existing ones keep theirs); a stream joined with a table "
          .. "(stream:join, stream:lookup) must be co-partitioned with it: repartition the stream through a topic of "
          .. "the table's count (stream:through(topic); stream:group_by(key) re-keys it), or make the table an "
          .. "app:global_table",
          list(inputs), self.topic_partitions), 0)
      end
      break
    end
  end
  -- Each table's count, then its changelog's (all changelogs in one request).
  local wanted, cls = {}, {}
  for i, tb in ipairs(self.table_list) do
    local name, declared, global = tb.name, tb.declared_partitions, tb.global
    local n, why
    if not global and n_in then
      if declared and declared ~= n_in then
        error(string.format("table %s declares partitions = %d but its input has %d partitions (%s): a table has "
          .. "its input's partition count — remove `partitions = %d` from the table (it then has %d), or give the "
          .. "input %d partitions", name, declared, n_in, list(inputs), declared, n_in, declared), 0)
      end
      n, why = n_in, "from its input " .. list(inputs)
    elseif declared then
      n, why = declared, "declared"
    end
    wanted[i] = { n = n, why = why }
    -- Without input or declaration: the changelog's count if it exists.
    cls[i] = tb.changelog
    cls[i].partitions = n or self.topic_partitions
  end
  resolve(cls)
  for i, tb in ipairs(self.table_list) do
    local cl, n, why = cls[i], wanted[i].n, wanted[i].why
    if n and cl.partitions ~= n then
      error(string.format("changelog topic %s has %d partitions but table %s has %d (%s): a table's changelog "
        .. "must have the table's partition count — delete the changelog topic and the local state "
        .. "(`fstream-lua reset`) to rebuild it with %d partitions (its contents are lost), or %s", cl.name,
        cl.partitions, tb.name, n, why, n,
        why == "declared" and string.format("declare partitions = %d", cl.partitions)
          or string.format("give the input %d partitions", cl.partitions)), 0)
    end
    tb.partitions = cl.partitions
  end
end

function App:_spawn_tasks()
  local rt = self.rt
  local function spawn(task)
    rt:spawn(task.fn, function(ok, err, tb)
      if not ok then core.log("error", string.format("%s failed: %s\n%s", task.name, tostring(err), tb)) end
      -- Timers, crontabs and window closers catch their callbacks' errors; one
      -- ends only when interrupted (agent_timeout): it starts again.
      if not ok and task.restart and self.rt == rt and not rt:stopping() then spawn(task) end
    end, "task")
  end
  for _, task in ipairs(self.tasks) do spawn(task) end
  local refresh = self:_pattern_refresh()
  if refresh then
    spawn({ name = "topic pattern watch", restart = true, fn = function() self:_watch_patterns(rt, refresh) end })
  end
end

function App:_stop()
  if self.rt then
    self.rt:close()
    self.rt = nil
  end
end

return App
