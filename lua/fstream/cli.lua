-- The command line, defined once: main.c hands argv to cli.parse, which reads
-- it against the command table below (the only list of commands, options and
-- their help), then calls cli.main with the command's name and options.
local core = require "fstream.core"

local cli = {}

local function fail(code, fmt, ...)
  io.stderr:write("fstream-lua: ", string.format(fmt, ...), "\n")
  return code
end

-- Options: `long`, optional `short`, the `field` of opts that gets the value,
-- `flag` for one that takes no value (its field is set to "1") and `list` for a
-- repeatable one (its field is a list of the values).
local LOGLEVEL = { long = "--loglevel", short = "-l", field = "loglevel" }
local STORE = { long = "--store", field = "store" }
local STORE_HELP = "  --store URL           lmdb://DIR; default the app's store option\n"

-- Each command: its positional words (filled in order; the rest go to
-- opts.args), its options, and its own usage, printed by `COMMAND --help`
-- (synopsis and details) and after a usage error (the synopsis only).
cli.commands = {
  { name = "worker", pos = { "app" },
    options = { LOGLEVEL, { long = "--broker", field = "broker" }, STORE,
      { long = "--reload", field = "reload", flag = true }, { long = "--guarantee", field = "guarantee" },
      { long = "--web-port", field = "web_port" }, { long = "--web-bind", field = "web_bind" },
      { long = "--no-web", field = "no_web", flag = true }, { long = "--workers", field = "workers" },
      { long = "--worker-id", field = "worker_id" } },
    synopsis = "usage: fstream-lua worker APP.lua [-l debug|info|warn|error] [--broker URL] [--store URL]\n"
      .. "                          [--reload] [--guarantee at_least_once|exactly_once]\n"
      .. "                          [--web-port N] [--web-bind ADDR] [--no-web] [--workers N]\n"
      .. "                          [--worker-id ID|auto]\n",
    details = "Runs the app's agents, tasks and timers until SIGTERM or SIGINT (a second one exits at once).\n"
      .. "  -l, --loglevel LEVEL  debug, info (default), warn or error\n"
      .. "  --broker URL          memory:// or kafka://HOST[:PORT][,HOST[:PORT]...]; default\n"
      .. "                        $FSTREAM_BROKER, then the app's broker option\n"
      .. "  --store URL           lmdb://DIR for the tables' files; default the app's store option\n"
      .. "  --reload              load the new version when the app's files change (SIGHUP too)\n"
      .. "  --guarantee G         at_least_once or exactly_once (needs a Kafka cluster); default\n"
      .. "                        the app's processing_guarantee option\n"
      .. "  --web-port N          the web server's port (default the app's web.port, 6066; the next\n"
      .. "                        free one when taken; 0: any free port)\n"
      .. "  --web-bind ADDR       its address (default 127.0.0.1; beyond loopback needs web.token\n"
      .. "                        or FSTREAM_WEB_TOKEN, or web.public = true)\n"
      .. "  --no-web              no web server\n"
      .. "  --workers N           run N worker processes (1 to 256) in the app's consumer group under\n"
      .. "                        a supervisor that passes signals on and restarts a crashed one;\n"
      .. "                        worker i serves the web on --web-port + i - 1; needs a shared broker\n"
      .. "                        (kafka://), not memory://\n"
      .. "  --worker-id ID        a static group member (group.instance.id ID): restarted within the\n"
      .. "                        session timeout (6 s), it gets its partitions back without a\n"
      .. "                        rebalance; auto: host name and the data directory's slot; with\n"
      .. "                        --workers, worker i gets ID-i (default auto; none: dynamic members)\n" },
  { name = "send", pos = { "app", "target" },
    options = { { long = "--key", short = "-k", field = "key" },
      { long = "--partition", short = "-p", field = "partition" },
      { long = "--repeat", short = "-n", field = "repeat" },
      { long = "--broker", field = "broker" }, LOGLEVEL },
    synopsis = "usage: fstream-lua send APP.lua TOPIC|@AGENT [--key K] [--partition N] [--repeat N]\n"
      .. "                        [--broker URL] [-l LEVEL] VALUE\n",
    details = "Sends VALUE to TOPIC, or to the topic of the app's agent AGENT, and prints\n"
      .. "topic[partition]@offset. VALUE is JSON when the topic's value serializer is json.\n"
      .. "  -k, --key K           the message's key\n"
      .. "  -p, --partition N     the partition (from 0); default: by key\n"
      .. "  -n, --repeat N        send it N times (default 1)\n"
      .. "  --broker URL          as for worker\n"
      .. "  -l, --loglevel LEVEL  debug, info (default), warn or error\n" },
  -- No --broker: listing the agents reads the app script only.
  { name = "agents", pos = { "app" }, options = {},
    synopsis = "usage: fstream-lua agents APP.lua\n",
    details = "Lists the app's agents: name <- topics it reads -> its sinks.\n" },
  { name = "tables", pos = { "app" }, options = { STORE },
    synopsis = "usage: fstream-lua tables APP.lua [--store URL]\n",
    details = "Lists the app's tables: partitions, changelog topic, partitions stored locally.\n" .. STORE_HELP },
  { name = "table", pos = { "app" }, options = { STORE, { long = "--key", short = "-k", field = "key" } },
    synopsis = "usage: fstream-lua table APP.lua NAME [--key K] [--store URL]\n",
    details = "Prints the entries of table NAME stored on this machine, one JSON line each\n"
      .. "({\"key\":..., \"value\":..., \"partition\":...}); reads the files, needs no broker.\n"
      .. "  -k, --key K           only this key (exit 1 when it is not there)\n" .. STORE_HELP },
  { name = "reset", pos = { "app" }, options = { STORE },
    synopsis = "usage: fstream-lua reset APP.lua [--store URL]\n",
    details = "Deletes the app's local table files; the changelogs on the broker stay, and the next\n"
      .. "worker rebuilds the tables from them.\n" .. STORE_HELP },
  { name = "broker", pos = {},
    options = { { long = "--brokers", field = "brokers" }, { long = "--partitions", field = "partitions" },
      { long = "--topic", field = "topics", list = true }, { long = "--address-file", field = "address_file" },
      { long = "--control", field = "control" } },
    synopsis = "usage: fstream-lua broker [--brokers N] [--partitions N] [--topic NAME]... [--address-file FILE]\n"
      .. "                          [--control FIFO]\n",
    details = "Runs an embedded Kafka broker (in memory) until SIGTERM or SIGINT; workers reach it\n"
      .. "as kafka://ADDRESS, the address it prints.\n"
      .. "  --brokers N           brokers in the cluster, 1 to 16 (default 1)\n"
      .. "  --partitions N        partitions of the topics named with --topic (default 8)\n"
      .. "  --topic NAME          create this topic at start (repeatable)\n"
      .. "  --address-file FILE   write the address to FILE once listening\n"
      .. "  --control FIFO        fault injection: run the commands written to FIFO (made if\n"
      .. "                        missing), one per line, each answered by a log line:\n"
      .. "      down B | up B                 broker B (1..N) drops its connections and refuses\n"
      .. "                                    new ones | accepts them again\n"
      .. "      rtt B MS                      broker B answers every request MS ms late\n"
      .. "      errors API COUNT CODE         the next COUNT requests of type API fail with CODE\n"
      .. "      broker-errors B API COUNT CODE [MS]   the same on broker B, answered MS ms late\n"
      .. "      clear API                     drop the pending errors of API (not broker-errors)\n"
      .. "      pending B API                 log how many broker-errors of API B still holds\n"
      .. "      topic-error TOPIC CODE        metadata reports TOPIC with CODE (0: none)\n"
      .. "      leader TOPIC P B              broker B leads partition P of TOPIC\n"
      .. "    API: Produce, Fetch, ListOffsets, Metadata, OffsetCommit, OffsetFetch,\n"
      .. "    FindCoordinator, JoinGroup, Heartbeat, LeaveGroup, SyncGroup, InitProducerId, ...\n"
      .. "    or a number; CODE: a Kafka error name (NOT_LEADER_FOR_PARTITION,\n"
      .. "    REQUEST_TIMED_OUT, TOPIC_AUTHORIZATION_FAILED, _TRANSPORT: drop the connection)\n"
      .. "    or a number. Example: echo 'errors Produce 3 NOT_LEADER_FOR_PARTITION' > FIFO\n" },
}

-- What a positional word is called in "missing ..." messages.
local POS_NAMES = { app = "APP.lua", target = "TOPIC|@AGENT" }

-- `fstream-lua --help`: every command's synopsis, in the table's order.
local function usage()
  local parts = {}
  for i, c in ipairs(cli.commands) do
    local s = c.synopsis
    -- Only the first is preceded by "usage:"; the others line up under it.
    if i > 1 then s = s:gsub("^usage: ", "       ") end
    parts[#parts + 1] = s
  end
  parts[#parts + 1] = "       fstream-lua APP.lua COMMAND [ARGS...]   (the app's own commands; APP.lua --help lists them)\n"
  parts[#parts + 1] = "       fstream-lua --version | --help | COMMAND --help\n"
  return table.concat(parts)
end

local function find_command(name)
  for _, c in ipairs(cli.commands) do
    if c.name == name then return c end
  end
end

-- A usage error: the message, then the command's synopsis (every command's
-- without one); exit code 2.
local function usage_error(c, fmt, ...)
  io.stderr:write("fstream-lua: ", string.format(fmt, ...), "\n", c and c.synopsis or usage())
  if c then io.stderr:write("(fstream-lua ", c.name, " --help tells more)\n") end
  return 2
end

local function command_help(c)
  io.stdout:write(c.synopsis, "\n", c.details)
  return 0
end

-- The option of command c that word a names, and the value written in it
-- (--name=VALUE), if any.
local function find_option(c, a)
  for _, o in ipairs(c.options) do
    if a == o.long or a == o.short then return o end
    if a:sub(1, #o.long + 1) == o.long .. "=" then return o, a:sub(#o.long + 2) end
  end
end

-- Reads argv (the words after the program's name): returns the command's name
-- and its options (positional words by name, the others in opts.args), or nil
-- and the exit code once it has printed what --version or --help asked for, or
-- what is wrong with the line.
function cli.parse(argv)
  local cmd = argv[1]
  if cmd == nil then return nil, usage_error(nil, "missing command") end
  if cmd == "--version" or cmd == "version" then
    io.stdout:write("fstream-lua ", require("fstream").version, "\n")
    return nil, 0
  end
  if cmd == "--help" or cmd == "-h" or cmd == "help" then
    if argv[2] == nil then
      io.stdout:write(usage())
      return nil, 0
    end
    local c = find_command(argv[2])
    if not c then return nil, usage_error(nil, "unknown command '%s'", argv[2]) end
    return nil, command_help(c)
  end
  local c = find_command(cmd)
  -- `fstream-lua APP.lua NAME ...`: a command the app defines (app:command);
  -- its arguments are known once the app is loaded (cli.app_command).
  -- (an app script is named *.lua, or is a readable file: not a directory)
  local f = not c and not cmd:match("%.lua$") and io.open(cmd, "r")
  local script = f and f:read(0) ~= nil
  if f then f:close() end
  if not c and (cmd:match("%.lua$") or script) then
    return "app_command", { app = cmd, words = table.move(argv, 2, #argv, 1, {}) }
  end
  if not c then return nil, usage_error(nil, "unknown command '%s'", cmd) end
  -- COMMAND --help wins over whatever else is on the line.
  for i = 2, #argv do
    if argv[i] == "--help" or argv[i] == "-h" then return nil, command_help(c) end
  end
  local opts, args, npos = {}, {}, 0
  local i = 2
  while i <= #argv do
    local a = argv[i]
    -- "-" alone and negative numbers are words, not options.
    if a:match("^%-[^%d]") then
      local o, val = find_option(c, a)
      if not o then return nil, usage_error(c, "unknown option '%s'", a) end
      if val and o.flag then return nil, usage_error(c, "option '%s' takes no value", o.long) end
      if o.flag then
        val = "1"
      elseif not val then
        if i == #argv then return nil, usage_error(c, "option '%s' needs a value", a) end
        i = i + 1
        val = argv[i]
      end
      if o.list then
        opts[o.field] = opts[o.field] or {}
        table.insert(opts[o.field], val)
      else
        opts[o.field] = val
      end
    elseif npos < #c.pos then
      npos = npos + 1
      opts[c.pos[npos]] = a
    else
      args[#args + 1] = a
    end
    i = i + 1
  end
  opts.args = args
  cli.argv = argv -- the line as given: --workers passes it on (cli.workers)
  if npos < #c.pos then return nil, usage_error(c, "missing %s", POS_NAMES[c.pos[npos + 1]]) end
  if opts.loglevel and not pcall(core.set_log_level, opts.loglevel) then
    return nil, usage_error(c, "unknown log level '%s' (debug, info, warn or error)", opts.loglevel)
  end
  return cmd, opts
end

-- A package.path template for modules in the app script's directory.
local function module_template(path)
  local dir = path:match("^(.*)/[^/]*$") or "."
  return dir .. "/?.lua;" .. dir .. "/?/init.lua"
end

-- Runs the app script; returns the app it created, or nil, a message and an exit code.
local function run_script(path)
  local f = io.open(path, "r")
  if not f then return nil, string.format("cannot open app script '%s'", path), 2 end
  f:close()
  -- Modules next to the script can be required by name.
  package.path = module_template(path) .. ";" .. package.path
  local chunk, err = loadfile(path)
  if not chunk then return nil, err, 1 end
  local fstream = require "fstream"
  local ok, lerr = xpcall(chunk, function(e) return debug.traceback(tostring(e), 2) end)
  if not ok then return nil, string.format("error while loading %s: %s", path, lerr), 1 end
  local app = fstream._apps[#fstream._apps]
  if not app then return nil, string.format("%s did not create an app (call fstream.app(id, opts))", path), 1 end
  return app
end

-- Runs the app script and returns the app it created, or nil, exit code.
local function load_app(path)
  local app, msg, code = run_script(path)
  if not app then return nil, fail(code, "%s", msg) end
  return app
end

-- The app script and the modules it required from its directory: what --reload watches.
local function app_files(path)
  local template = module_template(path)
  local files = { path }
  for name in pairs(package.loaded) do
    local file = type(name) == "string" and package.searchpath(name, template)
    if file then files[#files + 1] = file end
  end
  table.sort(files)
  return files
end

local function broker_of(app, opts)
  return opts.broker or os.getenv("FSTREAM_BROKER") or app.broker
end

-- The broker URL to use, checked before anything starts; nil and the exit code
-- (after one line naming where the bad URL came from) when it is not one.
local function checked_broker(app, opts)
  local url = broker_of(app, opts)
  local ok, err = core.broker_check(url)
  if ok then return url end
  local from = opts.broker and "--broker" or os.getenv("FSTREAM_BROKER") and "FSTREAM_BROKER"
    or string.format("the broker option of app '%s'", app.id)
  return nil, fail(2, "%s: %s", from, err)
end

-- A start that failed: the reason, without the position inside fstream's own
-- modules that an error raised from C carries (it tells the user nothing).
local function start_failed(app, err)
  local msg = tostring(err):gsub("^[^\n:]*fstream/[%w_]+%.lua:%d+: ", "")
  return fail(1, "cannot start app '%s': %s", app.id, msg)
end

-- A table's changelog carries the bytes of the table's own serializers (the
-- topic itself is raw): say which they are.
local function describe_topic(t, changelog_of)
  local tb = changelog_of[t]
  if not tb then return t:describe() end
  local function s(x) return type(x) == "table" and "custom" or x end
  return string.format("%s (key %s, value %s, %d partitions)", t.name, s(tb.key_serializer),
    s(tb.value_serializer), t.partitions)
end

local function banner(app, rt, broker, opts)
  local lines = { string.format("fstream-lua %s worker (pid %s)", require("fstream").version, tostring(core.pid or "?")) }
  local function add(k, v) lines[#lines + 1] = string.format("  %-10s %s", k, v) end
  add("app", app.id)
  local index = os.getenv("FSTREAM_WORKER_INDEX")
  if index then add("worker", string.format("%s of %s (under a supervisor)", index, os.getenv("FSTREAM_WORKERS") or "?")) end
  local bootstrap, embedded = rt:broker()
  if embedded then
    add("broker", string.format("%s embedded, listening on %s (e.g. kcat -b %s -L)", broker, bootstrap, bootstrap))
  else
    add("broker", broker)
  end
  add("guarantee", string.format("%s, commit_interval %g s", app.processing_guarantee, app.commit_interval))
  for i, a in ipairs(app.agent_list) do add(i == 1 and "agents" or "", a:describe()) end
  if #app.agent_list == 0 then add("agents", "(none)") end
  local changelog_of = {}
  for _, t in ipairs(app.table_list) do changelog_of[t.changelog] = t end
  -- Internal ones (the web's __workers table) are not the app's to see.
  local topics, tables = {}, {}
  for _, t in ipairs(app.topic_list) do if not t.internal then topics[#topics + 1] = t end end
  for _, t in ipairs(app.table_list) do if not t.internal then tables[#tables + 1] = t end end
  for i, t in ipairs(topics) do add(i == 1 and "topics" or "", describe_topic(t, changelog_of)) end
  local Table = require "fstream.table"
  for i, t in ipairs(tables) do add(i == 1 and "tables" or "", Table.describe(t)) end
  if #tables > 0 then add("store", app:data_dir(opts.store)) end
  add("web", opts.web_address and (opts.web_address .. "/") or "off")
  io.stderr:write(table.concat(lines, "\n"), "\n")
end

-- --reload: watches the app's files, and modules it requires later (inside an
-- agent, say) from the moment they are loaded.
local function watch(rt, path)
  rt:watch(app_files(path))
  local template = module_template(path)
  local plain = require
  require = function(name)
    local fresh = package.loaded[name] == nil
    local m, where = plain(name)
    if fresh and type(name) == "string" and package.searchpath(name, template) then rt:watch(app_files(path)) end
    return m, where
  end
end

-- The worker: loads and starts the app, then hands its runtime back to main.c,
-- which runs the loop (so a reload can replace this Lua state) and calls
-- cli.stopped when it ends.
function cli.worker(opts)
  if opts.guarantee and opts.guarantee ~= "at_least_once" and opts.guarantee ~= "exactly_once" then
    return usage_error(find_command("worker"), "--guarantee must be at_least_once or exactly_once, got '%s'",
      opts.guarantee)
  end
  local app, code = load_app(opts.app)
  if not app then return code end
  local broker, bad = checked_broker(app, opts)
  if not broker then return bad end
  local web = require "fstream.web"
  local wok, web_settings = pcall(web.settings, app, opts)
  if not wok then return fail(2, "%s", web_settings) end
  web.declare(app, broker)
  -- The banner comes first: the info lines of the start (topics created,
  -- global tables recovered) are held back until it is out.
  core.log_hold(true)
  local ok, rt = pcall(app._start, app, { broker = broker, store = opts.store, guarantee = opts.guarantee,
    instance_id = opts.worker_id ~= "none" and opts.worker_id or nil })
  if not ok then
    core.log_hold(false)
    return start_failed(app, rt)
  end
  local started, addr = pcall(web.start, app, rt, web_settings)
  if not started then
    core.log_hold(false)
    app:_stop()
    return start_failed(app, addr)
  end
  opts.web_address = addr
  banner(app, rt, broker, opts)
  core.log_hold(false)
  rt:reload_setup(opts.app, opts.broker or "", opts.store or "", opts.reload ~= nil, broker, app:data_dir(opts.store))
  if opts.reload then watch(rt, opts.app) end
  core.log("info", opts.reload and "worker started; reloads when the app's files change (or on SIGHUP)"
    or "worker started")
  cli.running = app
  return 0, rt
end

-- The most workers one supervisor runs: more is a typo, not a plan (each is a
-- process with its own librdkafka clients and tens of MiB).
cli.MAX_WORKERS = 256

-- `worker --workers N`: checks N and the app (loaded here once, so that a
-- script that does not load fails before any worker starts), then answers
-- each worker's command line (the words after the program's name: this line
-- without --workers, with --web-port P + i - 1 for worker i), or nil and the
-- exit code. main.c hands them to the supervisor (fs_supervise.c).
function cli.workers(opts)
  local c = find_command("worker")
  local n = math.tointeger(tonumber(opts.workers))
  if not n or n < 1 or n > cli.MAX_WORKERS then
    return nil, usage_error(c, "--workers needs a count from 1 to %d, got '%s'", cli.MAX_WORKERS, opts.workers)
  end
  local port
  if opts.web_port then
    port = math.tointeger(tonumber(opts.web_port))
    if not port or port < 0 or port + n - 1 > 65535 then
      return nil, usage_error(c, "--web-port needs a port number (0 to %d with %d workers), got '%s'",
        65536 - n, n, opts.web_port)
    end
  end
  local app, code = load_app(opts.app)
  if not app then return nil, code end
  local broker, bad = checked_broker(app, opts)
  if not broker then return nil, bad end
  if broker:match("^memory://") then
    return nil, fail(2, "--workers %d: %s runs its broker inside one worker process, where no other worker can "
      .. "reach it; run the workers on a shared broker: --broker kafka://HOST:PORT (a Kafka cluster, or "
      .. "`fstream-lua broker`)", n, broker)
  end
  local lines = {}
  for i = 1, n do
    local words, k = {}, 1
    while k <= #cli.argv do
      local a = cli.argv[k]
      local o, val = nil, nil
      if k > 1 and a:match("^%-[^%d]") then o, val = find_option(c, a) end
      local takes = o and not o.flag and not val -- its value is the next word
      if o and o.field == "workers" then
        k = k + (takes and 2 or 1)
      elseif o and o.field == "worker_id" then
        k = k + (takes and 2 or 1)
      elseif o and o.field == "web_port" then
        words[#words + 1] = "--web-port=" .. (port == 0 and 0 or port + i - 1)
        k = k + (takes and 2 or 1)
      else
        words[#words + 1] = a
        if takes then words[#words + 1] = cli.argv[k + 1] end
        k = k + (takes and 2 or 1)
      end
    end
    -- Static members: a restarted worker gets its partitions back at once.
    if opts.worker_id ~= "none" then
      words[#words + 1] = "--worker-id=" .. (opts.worker_id and opts.worker_id ~= "auto"
        and string.format("%s-%d", opts.worker_id, i) or "auto")
    end
    lines[i] = words
  end
  core.log("info", string.format("supervising %d workers of app %s on %s", n, app.id, broker))
  return lines
end

function cli.stopped(rc)
  core.log("info", string.format("worker stopped (exit %d)", rc))
  if cli.running then
    require("fstream.web").stop(cli.running.rt)
    cli.running:_stop()
  end
  return rc
end

-- Reload, in a fresh Lua state: runs the new version of the script and checks
-- it against the running worker (`running`: see App:_check_reload). Raises
-- the message to log when the version cannot be used.
function cli.prepare(opts, running)
  local app, msg = run_script(opts.app)
  if not app then error(msg, 0) end
  local cli_opts = { broker = opts.broker ~= "" and opts.broker or nil, store = opts.store ~= "" and opts.store or nil }
  require("fstream.web").declare(app, broker_of(app, cli_opts))
  app:_check_reload(running, broker_of(app, cli_opts), app:data_dir(cli_opts.store))
  cli.pending = { app = app, path = opts.app, store = cli_opts.store }
  return app
end

-- Reload: the prepared version takes over the runtime (`handle`).
function cli.attach(app, handle)
  local p = cli.pending
  cli.pending = nil
  local rt = app:_take_over(handle, p.store)
  require("fstream.web").attach(app, rt)
  cli.running = app
  if rt:reload_watching() then watch(rt, p.path) end
end

function cli.send(opts)
  local app, code = load_app(opts.app)
  if not app then return code end
  local target = opts.target
  local topic
  if target:sub(1, 1) == "@" then
    local agent = app.agents[target:sub(2)]
    if not agent then return fail(2, "no agent named '%s' in %s", target:sub(2), opts.app) end
    if agent.channel then
      return fail(2, "agent %s reads channel %s, which lives inside a worker: nothing outside it can send to it",
        agent.name, agent.channel.name)
    end
    topic = agent.topics[1]
  else
    topic = app.topics[target] or app:topic(target)
  end
  local text = opts.args[1]
  if text == nil then return fail(2, "send needs a VALUE") end
  if #opts.args > 1 then return fail(2, "unexpected argument '%s'", opts.args[2]) end
  local value = text
  if topic.value_serializer == "json" then
    local v, err = core.json.decode(text)
    if err then return fail(2, "VALUE is not JSON (%s); topic %s uses the json serializer: quote strings, e.g. '\"%s\"'", err, topic.name, text) end
    value = v
  end
  local key = opts.key
  if key and topic.key_serializer == "json" then key = core.json.decode(key) or key end
  local partition = opts.partition and math.tointeger(tonumber(opts.partition))
  local rep = 1
  if opts["repeat"] then rep = math.tointeger(tonumber(opts["repeat"])) end
  if opts.partition and not (partition and partition >= 0) then
    return fail(2, "--partition needs a partition number (0, 1, ...), got '%s'", opts.partition)
  end
  if not rep or rep < 1 then return fail(2, "--repeat needs a count (1, 2, ...), got '%s'", opts["repeat"]) end
  local broker, bad = checked_broker(app, opts)
  if not broker then return bad end
  if broker:match("^memory://") then
    io.stderr:write("fstream-lua: note: ", app.id, " uses the embedded broker, which lives inside one process;",
      " pass --broker kafka://ADDRESS (the address a worker or `fstream-lua broker` prints)\n")
  end
  -- A runtime with only the target topic and no agents: nothing joins the
  -- consumer group, and no other topic (a changelog, say) is created by a send.
  app.agent_list, app.tasks, app.stream_sources = {}, {}, nil
  app.topic_list, app.table_list = { topic }, {}
  -- A plain producer: what it sends is visible at once, whatever the app's guarantee.
  local started, rt = pcall(app._start, app, { broker = broker, guarantee = "at_least_once" })
  if not started then return start_failed(app, rt) end
  local status = 0
  rt:spawn(function()
    for _ = 1, rep do
      local md, err = topic:send_and_wait { key = key, value = value, partition = partition }
      if not md then
        io.stderr:write("fstream-lua: send failed: ", tostring(err), "\n")
        status = 1
        break
      end
      print(string.format("%s[%d]@%d", topic.name, md.partition, md.offset))
    end
    rt:stop("sent")
  end, function(ok, err)
    if not ok then
      io.stderr:write("fstream-lua: ", tostring(err), "\n")
      status = 1
      rt:stop("failed")
    end
  end, "task")
  local rc = rt:run()
  app:_stop()
  return status ~= 0 and status or rc
end

-- Partitions of a table with local files. Offline, the broker's count is
-- unknown (a table has its input's count), so look for the files themselves.
local function local_partitions(dir, t)
  local found = {}
  for p = 0, math.max(t.partitions, 4096) - 1 do
    local f = io.open(string.format("%s/%s/%d/data.mdb", dir, t.name, p))
    if f then f:close(); found[#found + 1] = p end
  end
  return found
end

function cli.tables(opts)
  local app, code = load_app(opts.app)
  if not app then return code end
  local dir = app:data_dir(opts.store)
  for _, t in ipairs(app.table_list) do
    local local_parts = local_partitions(dir, t)
    -- Declared, or "auto": the input's count, known when a worker runs.
    local declared = t.declared_partitions
    print(string.format("%s\tpartitions=%s\tchangelog=%s\tlocal=%s\tdir=%s/%s", t.name, declared or "auto",
      t.changelog.name, #local_parts > 0 and table.concat(local_parts, ",") or "-", dir, t.name))
  end
  return 0
end

-- Calls fn(key, value, partition) for each entry of a table in the local LMDB
-- files (`want`: only this encoded key), one partition's scan in memory at a
-- time; windowed tables' own keys are skipped. Returns how many it found, and
-- the errors of partitions it could not read (damaged files), nil if none.
local function each_entry(t, dir, want, fn)
  local found, errs = 0, nil
  for _, p in ipairs(local_partitions(dir, t)) do
    local keys, values = core.store_scan(string.format("%s/%s/%d", dir, t.name, p))
    if not keys then
      errs = errs or {}
      errs[#errs + 1] = values -- the error
    elseif t.offline_rows then
      -- A set table: one entry per key, its members as a list.
      for _, r in ipairs(t.offline_rows(t, keys, values)) do
        if not want or r.kb == want then
          found = found + 1
          fn(r.key, r.value, p)
        end
      end
    else
      for i = 1, #keys do
        -- In a windowed table, keys starting with a NUL byte are the runtime's own
        -- (stream time); other tables have none (a raw key may start with one).
        if not (t.window and keys[i]:byte(1) == 0) and (not want or keys[i] == want) then
          found = found + 1
          fn(t.decode_key(keys[i]), t.decode_value(values[i]), p)
        end
      end
    end
  end
  return found, errs
end

-- Reads a table's local LMDB files offline: one JSON line per entry.
function cli.table(opts)
  local app, code = load_app(opts.app)
  if not app then return code end
  local name = opts.args[1]
  if not name then return fail(2, "table needs a NAME") end
  if #opts.args > 1 then return fail(2, "unexpected argument '%s'", opts.args[2]) end
  local t = app.tables[name]
  if not t then return fail(2, "no table named '%s' in %s", name, opts.app) end
  local want
  if opts.key then
    local k = opts.key
    if t.key_serializer == "json" then k = core.json.decode(k) or k end
    want = t.encode_key(k)
  end
  local found, errs = each_entry(t, app:data_dir(opts.store), want, function(k, v, p)
    io.write(core.json.encode { key = k, value = v, partition = p }, "\n")
  end)
  -- What could be read is printed; a partition that could not be is an error, not a silent gap.
  if errs then return fail(1, "%s", table.concat(errs, "\nfstream-lua: ")) end
  if want and found == 0 then return fail(1, "key %s is not in the local partitions of %s", opts.key, name) end
  return 0
end

-- Deletes the app's local state (the changelogs on the broker are untouched:
-- the next start rebuilds from them).
function cli.reset(opts)
  local app, code = load_app(opts.app)
  if not app then return code end
  local dir = app:data_dir(opts.store)
  for _, t in ipairs(app.table_list) do
    local path = dir .. "/" .. t.name
    local ok = os.execute("rm -rf '" .. path:gsub("'", "'\\''") .. "'")
    if not ok then return fail(1, "cannot delete %s", path) end
  end
  os.remove(dir)
  print("deleted local state of " .. app.id .. " in " .. dir)
  return 0
end

function cli.agents(opts)
  local app, code = load_app(opts.app)
  if not app then return code end
  for _, a in ipairs(app.agent_list) do print(a:describe()) end
  return 0
end

function cli.broker(opts)
  local n, p = 1, 8
  if opts.brokers then n = math.tointeger(tonumber(opts.brokers)) end
  if opts.partitions then p = math.tointeger(tonumber(opts.partitions)) end
  if not (n and n >= 1 and n <= 16) then return fail(2, "--brokers needs a number from 1 to 16, got '%s'", opts.brokers) end
  if not (p and p >= 1) then return fail(2, "--partitions needs a count (1, 2, ...), got '%s'", opts.partitions) end
  core.run_broker { brokers = n, address_file = opts.address_file, control = opts.control, partitions = p,
    topics = opts.topics }
  return 0
end

-- ---- The app's own commands (app:command) --------------------------------

-- Options every app command takes, before the app's own.
local COMMAND_BUILTINS = {
  { long = "--broker", field = "broker", help = "memory:// or kafka://HOST[:PORT],...; default $FSTREAM_BROKER,\n"
    .. "                        then the app's broker option" },
  { long = "--store", field = "store", help = "lmdb://DIR: the tables cmd:table reads; default the app's store option" },
  { long = "--loglevel", short = "-l", field = "loglevel", help = "debug, info, warn (default) or error" },
}
local ARG_TYPES = { string = true, number = true, integer = true }

-- Checks app:command's declaration; returns the command: { name, fn, help,
-- args = { {name, help, type, optional} }, options = { {long, short, field,
-- help, type, default, flag} }, where = "app.lua:12" }.
function cli.define_command(app, name, fn, opts, level)
  level = level + 1
  local function bad(fmt, ...) error(string.format("app:command: " .. fmt, ...), level + 1) end
  -- (for the helpers below, one call deeper)
  local function bad2(fmt, ...) error(string.format("app:command: " .. fmt, ...), level + 2) end
  if type(name) ~= "string" or not name:match("^%a[%w_%-]*$") then
    bad("the name must be a word of letters, digits, '_' or '-' starting with a letter, got %s", tostring(name))
  end
  if find_command(name) or name == "help" or name == "version" then
    bad("'%s' is a built-in command of fstream-lua (fstream-lua %s ...); give the app's command another name", name, name)
  end
  if type(fn) ~= "function" then bad("command '%s' needs a function(args, cmd)", name) end
  opts = opts or {}
  if type(opts) ~= "table" then bad("command '%s': options must be a table", name) end
  for k in pairs(opts) do
    if k ~= "help" and k ~= "args" and k ~= "options" then bad("command '%s': unknown option '%s'", name, tostring(k)) end
  end
  if opts.help ~= nil and type(opts.help) ~= "string" then bad("command '%s': help must be a string", name) end
  local c = { name = name, fn = fn, help = opts.help, args = {}, options = {} }
  local info = debug.getinfo(level, "Sl")
  c.where = info and string.format("%s:%d", info.short_src, info.currentline) or "?"
  local fields = {}
  local function field(f, what)
    if fields[f] then bad2("command '%s': %s uses the name '%s' twice", name, what, f) end
    fields[f] = true
  end
  local function check_type(ty, what)
    if ty ~= nil and not ARG_TYPES[ty] then
      bad2("command '%s': %s: type must be \"string\", \"number\" or \"integer\", got %s", name, what, tostring(ty))
    end
  end
  local optional_seen = false
  for i, a in ipairs(opts.args or {}) do
    local spec = type(a) == "string" and { a } or a
    if type(spec) ~= "table" or type(spec[1]) ~= "string" or not spec[1]:match("^%a[%w_]*$") then
      bad("command '%s': argument #%d must be a name (\"count\") or {\"count\", help =, type =, optional =}", name, i)
    end
    for k in pairs(spec) do
      if k ~= 1 and k ~= "help" and k ~= "type" and k ~= "optional" then
        bad("command '%s': argument %s: unknown field '%s'", name, spec[1], tostring(k))
      end
    end
    check_type(spec.type, "argument " .. spec[1])
    if optional_seen and not spec.optional then
      bad("command '%s': argument %s is required but follows an optional one", name, spec[1])
    end
    optional_seen = optional_seen or spec.optional == true
    field(spec[1], "argument " .. spec[1])
    c.args[i] = { name = spec[1], help = spec.help, type = spec.type or "string", optional = spec.optional == true }
  end
  for i, o in ipairs(opts.options or {}) do
    if type(o) ~= "table" or type(o[1]) ~= "string" or not o[1]:match("^%-%-%a[%w%-]*$") then
      bad("command '%s': option #%d must be {\"--name\", [\"-x\",] help =, type =, default =, flag =}", name, i)
    end
    for k in pairs(o) do
      if k ~= 1 and k ~= 2 and k ~= "help" and k ~= "type" and k ~= "default" and k ~= "flag" then
        bad("command '%s': option %s: unknown field '%s'", name, o[1], tostring(k))
      end
    end
    if o[2] ~= nil and (type(o[2]) ~= "string" or not o[2]:match("^%-%a$")) then
      bad("command '%s': option %s: its short form must be a dash and a letter (\"-p\")", name, o[1])
    end
    check_type(o.type, "option " .. o[1])
    if o.flag and (o.type or o.default ~= nil) then bad("command '%s': option %s is a flag: no type or default", name, o[1]) end
    for _, b in ipairs(COMMAND_BUILTINS) do
      if o[1] == b.long or (o[2] and o[2] == b.short) or o[2] == "-h" then
        bad("command '%s': option %s clashes with fstream-lua's own %s", name, o[1], o[2] == "-h" and "-h (--help)" or b.long)
      end
    end
    if o[1] == "--help" then bad("command '%s': --help is fstream-lua's own", name) end
    local f = o[1]:sub(3):gsub("%-", "_")
    field(f, "option " .. o[1])
    for _, prev in ipairs(c.options) do
      if o[2] and prev.short == o[2] then bad("command '%s': options %s and %s share %s", name, prev.long, o[1], o[2]) end
    end
    c.options[i] = { long = o[1], short = o[2], field = f, help = o.help, type = o.type or "string",
      default = o.default, flag = o.flag and true or nil }
  end
  return c
end

local function command_synopsis(path, c)
  local parts = { "usage: fstream-lua", path, c.name }
  for _, a in ipairs(c.args) do parts[#parts + 1] = a.optional and "[" .. a.name:upper() .. "]" or a.name:upper() end
  for _, o in ipairs(c.options) do
    parts[#parts + 1] = o.flag and "[" .. o.long .. "]" or string.format("[%s %s]", o.long, o.field:upper())
  end
  parts[#parts + 1] = "[--broker URL] [--store URL] [-l LEVEL]"
  return table.concat(parts, " ") .. "\n"
end

local function command_details(c)
  local lines = {}
  if c.help then lines[#lines + 1] = c.help end
  local function row(left, text)
    if #left < 22 then
      lines[#lines + 1] = string.format("  %-22s%s", left, text)
    else
      lines[#lines + 1] = "  " .. left
      lines[#lines + 1] = string.rep(" ", 24) .. text
    end
  end
  for _, a in ipairs(c.args) do
    local t = a.help or ""
    if a.type ~= "string" then t = t .. (t ~= "" and " " or "") .. "(" .. a.type .. ")" end
    if a.optional then t = t .. (t ~= "" and " " or "") .. "(optional)" end
    row(a.name:upper(), t)
  end
  for _, o in ipairs(c.options) do
    local left = (o.short and o.short .. ", " or "") .. o.long .. (o.flag and "" or " " .. o.field:upper())
    local t = o.help or ""
    if o.type ~= "string" then t = t .. (t ~= "" and " " or "") .. "(" .. o.type .. ")" end
    if o.default ~= nil then t = t .. (t ~= "" and " " or "") .. "(default " .. tostring(o.default) .. ")" end
    row(left, t)
  end
  for _, b in ipairs(COMMAND_BUILTINS) do
    row((b.short and b.short .. ", " or "") .. b.long .. " " .. (b.field == "loglevel" and "LEVEL" or "URL"), b.help)
  end
  return table.concat(lines, "\n") .. "\n"
end

-- `fstream-lua APP.lua --help`: the app's commands.
local function app_commands_help(path, app)
  local out = { string.format("usage: fstream-lua %s COMMAND [ARGS...] [--broker URL] [--store URL] [-l LEVEL]\n", path) }
  local list = app.command_list or {}
  if #list == 0 then
    out[#out + 1] = string.format("app '%s' defines no commands (app:command(name, fn, opts) adds one)\n", app.id)
  else
    out[#out + 1] = string.format("Commands of app '%s':\n", app.id)
    local w = 0
    for _, c in ipairs(list) do w = math.max(w, #c.name) end
    for _, c in ipairs(list) do
      out[#out + 1] = string.format("  %-" .. w .. "s  %s\n", c.name, (c.help or ""):match("^[^\n]*"))
    end
  end
  out[#out + 1] = string.format("fstream-lua %s COMMAND --help tells more; fstream-lua --help lists fstream-lua's own commands\n", path)
  return table.concat(out)
end

local function convert_word(ty, word)
  if ty == "string" then return word end
  local n = tonumber(word)
  if ty == "integer" then n = n and math.tointeger(n) end
  if n == nil then return nil end
  return n
end

-- Reads the words after the command's name: the app's values (by field) and
-- the built-in options, or nil and what is wrong.
local function parse_command_words(c, words)
  local values, settings, pos = {}, {}, 0
  local only_words = false
  local i = 1
  while i <= #words do
    local a = words[i]
    if not only_words and a == "--" then
      only_words = true
    elseif not only_words and a:match("^%-[^%d]") then
      local o, val, builtin
      for _, x in ipairs(c.options) do
        if a == x.long or a == x.short then o = x end
        if a:sub(1, #x.long + 1) == x.long .. "=" then o, val = x, a:sub(#x.long + 2) end
      end
      if not o then
        for _, x in ipairs(COMMAND_BUILTINS) do
          if a == x.long or a == x.short then o = x end
          if a:sub(1, #x.long + 1) == x.long .. "=" then o, val = x, a:sub(#x.long + 2) end
        end
        builtin = o ~= nil
      end
      if not o then return nil, nil, string.format("unknown option '%s'", a) end
      if o.flag then
        if val then return nil, nil, string.format("option '%s' takes no value", o.long) end
        values[o.field] = true
      else
        if not val then
          if i == #words then return nil, nil, string.format("option '%s' needs a value", a) end
          i = i + 1
          val = words[i]
        end
        if builtin then
          settings[o.field] = val
        else
          local v = convert_word(o.type, val)
          if v == nil then return nil, nil, string.format("option '%s' needs a%s %s, got '%s'", o.long,
            o.type == "integer" and "n" or "", o.type, val) end
          values[o.field] = v
        end
      end
    else
      pos = pos + 1
      local a_spec = c.args[pos]
      if not a_spec then return nil, nil, string.format("unexpected argument '%s'", a) end
      local v = convert_word(a_spec.type, a)
      if v == nil then return nil, nil, string.format("%s needs a%s %s, got '%s'", a_spec.name:upper(),
        a_spec.type == "integer" and "n" or "", a_spec.type, a) end
      values[a_spec.name] = v
    end
    i = i + 1
  end
  for j = pos + 1, #c.args do
    if not c.args[j].optional then return nil, nil, "missing " .. c.args[j].name:upper() end
  end
  for _, o in ipairs(c.options) do
    if values[o.field] == nil then
      if o.flag then values[o.field] = false else values[o.field] = o.default end
    end
  end
  return values, settings
end

-- cmd:table(name): the app's table as this machine's files hold it (what
-- `fstream-lua table` prints), read-only: view:get(key) -> value, partition
-- (nil when absent) and `for key, value, partition in view:items()`.
local TableView = {}
TableView.__index = TableView
function TableView:get(key)
  local value, partition
  each_entry(self.t, self.dir, self.t.encode_key(key), function(_, v, p) value, partition = v, p end)
  return value, partition
end
function TableView:items()
  return coroutine.wrap(function() each_entry(self.t, self.dir, nil, coroutine.yield) end)
end

local Command = {}
Command.__index = Command
function Command:table(name)
  local t = self.app.tables[name]
  if not t then error(string.format("cmd:table: no table named '%s' in app '%s'", tostring(name), self.app.id), 2) end
  return setmetatable({ t = t, dir = self.dir }, TableView)
end

-- The topics a command may send to: the app's own, not what the runtime
-- derives (changelogs, retry and repartition topics, leadership).
local function sendable_topics(app)
  local changelogs = {}
  for _, t in ipairs(app.table_list) do changelogs[t.changelog] = true end
  local out = {}
  for _, t in ipairs(app.topic_list) do
    if not changelogs[t] and not t.follows and t ~= app.leader_topic and not t.internal then out[#out + 1] = t end
  end
  return out
end

-- `fstream-lua APP.lua NAME ...`: loads the app, parses the words against
-- the command's declaration and runs it in a task of a runtime that has the
-- app's topics but no agents, tables or subscription; its sends are delivered
-- before the exit. Exit: 0, the integer the command returned, 1 when it
-- raised (file:line and traceback), 2 for bad words.
function cli.app_command(opts)
  local app, code = load_app(opts.app)
  if not app then return code end
  local words, path = opts.words, opts.app
  local name = words[1]
  if name == nil then
    io.stderr:write("fstream-lua: missing COMMAND after ", path, "\n", app_commands_help(path, app))
    return 2
  end
  if name == "--help" or name == "-h" or name == "help" then
    io.stdout:write(app_commands_help(path, app))
    return 0
  end
  local c = app.commands and app.commands[name]
  if not c then
    if find_command(name) then
      return fail(2, "'%s' is a command of fstream-lua itself: fstream-lua %s %s ...", name, name, path)
    end
    return fail(2, "app '%s' has no command '%s' (fstream-lua %s --help lists its commands)", app.id, name, path)
  end
  local rest = table.move(words, 2, #words, 1, {})
  for _, w in ipairs(rest) do
    if w == "--" then break end
    if w == "--help" or w == "-h" then
      io.stdout:write(command_synopsis(path, c), "\n", command_details(c))
      return 0
    end
  end
  local values, settings, err = parse_command_words(c, rest)
  if not values then
    io.stderr:write("fstream-lua: ", err, "\n", command_synopsis(path, c),
      string.format("(fstream-lua %s %s --help tells more)\n", path, name))
    return 2
  end
  if settings.loglevel and not pcall(core.set_log_level, settings.loglevel) then
    return fail(2, "unknown log level '%s' (debug, info, warn or error)", settings.loglevel)
  elseif not settings.loglevel then
    -- A command's output is its own: the runtime's info lines stay out of it.
    core.set_log_level("warn")
  end
  local broker, bad = checked_broker(app, settings)
  if not broker then return bad end
  local cmd = setmetatable({ app = app, name = name, dir = app:data_dir(settings.store) }, Command)
  app.agent_list, app.tasks, app.stream_sources = {}, {}, nil
  app.topic_list, app.table_list = sendable_topics(app), {}
  local started, rt = pcall(app._start, app, { broker = broker, guarantee = "at_least_once" })
  if not started then return start_failed(app, rt) end
  local status = 0
  rt:spawn(function()
    local r = c.fn(values, cmd)
    if math.type(r) == "integer" then status = r end
    -- Every send is delivered before the runtime stops (its last checkpoint
    -- waits). A stop asked for before the loop first ran is only seen at its
    -- next wake-up (up to a second): let it run once first.
    core.sleep(0)
    rt:stop("command done")
  end, function(ok, e, tb)
    if not ok then
      io.stderr:write(string.format("fstream-lua: command %s failed: %s\n%s\n", name, tostring(e), tostring(tb or "")))
      status = 1
      rt:stop("command failed")
    end
  end, "task")
  local rc = rt:run()
  app:_stop()
  if rc ~= 0 and status == 0 then return rc end
  return status
end

function cli.main(cmd, opts)
  if opts.args and #opts.args > 0 and cmd ~= "send" and cmd ~= "table" then
    return fail(2, "unexpected argument '%s'", opts.args[1])
  end
  return cli[cmd](opts)
end

return cli
