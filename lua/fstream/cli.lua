-- The command line: main.c parses argv into a table and calls cli.main.
local core = require "fstream.core"

local cli = {}

local function fail(code, fmt, ...)
  io.stderr:write("fstream-lua: ", string.format(fmt, ...), "\n")
  return code
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
  local bootstrap, embedded = rt:broker()
  if embedded then
    add("broker", string.format("%s embedded, listening on %s (e.g. kcat -b %s -L)", broker, bootstrap, bootstrap))
  else
    add("broker", broker)
  end
  add("guarantee", app.processing_guarantee)
  for i, a in ipairs(app.agent_list) do add(i == 1 and "agents" or "", a:describe()) end
  if #app.agent_list == 0 then add("agents", "(none)") end
  local changelog_of = {}
  for _, t in ipairs(app.table_list) do changelog_of[t.changelog] = t end
  for i, t in ipairs(app.topic_list) do add(i == 1 and "topics" or "", describe_topic(t, changelog_of)) end
  local Table = require "fstream.table"
  for i, t in ipairs(app.table_list) do add(i == 1 and "tables" or "", Table.describe(t)) end
  if #app.table_list > 0 then add("store", app:data_dir(opts.store)) end
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
  local app, code = load_app(opts.app)
  if not app then return code end
  local broker, bad = checked_broker(app, opts)
  if not broker then return bad end
  -- The banner comes first: the info lines of the start (topics created,
  -- global tables recovered) are held back until it is out.
  core.log_hold(true)
  local ok, rt = pcall(app._start, app, { broker = broker, store = opts.store })
  if not ok then
    core.log_hold(false)
    return start_failed(app, rt)
  end
  banner(app, rt, broker, opts)
  core.log_hold(false)
  rt:reload_setup(opts.app, opts.broker or "", opts.store or "", opts.reload ~= nil, broker, app:data_dir(opts.store))
  if opts.reload then watch(rt, opts.app) end
  core.log("info", opts.reload and "worker started; reloads when the app's files change (or on SIGHUP)"
    or "worker started")
  cli.running = app
  return 0, rt
end

function cli.stopped(rc)
  core.log("info", string.format("worker stopped (exit %d)", rc))
  if cli.running then cli.running:_stop() end
  return rc
end

-- Reload, in a fresh Lua state: runs the new version of the script and checks
-- it against the running worker (`running`: see App:_check_reload). Raises
-- the message to log when the version cannot be used.
function cli.prepare(opts, running)
  local app, msg = run_script(opts.app)
  if not app then error(msg, 0) end
  local cli_opts = { broker = opts.broker ~= "" and opts.broker or nil, store = opts.store ~= "" and opts.store or nil }
  app:_check_reload(running, broker_of(app, cli_opts), app:data_dir(cli_opts.store))
  cli.pending = { app = app, path = opts.app, store = cli_opts.store }
  return app
end

-- Reload: the prepared version takes over the runtime (`handle`).
function cli.attach(app, handle)
  local p = cli.pending
  cli.pending = nil
  local rt = app:_take_over(handle, p.store)
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
  local started, rt = pcall(app._start, app, { broker = broker })
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
  local dir = app:data_dir(opts.store)
  local found = 0
  for _, p in ipairs(local_partitions(dir, t)) do
    local keys, values = core.store_scan(string.format("%s/%s/%d", dir, t.name, p))
    if keys then
      for i = 1, #keys do
        -- In a windowed table, keys starting with a NUL byte are the runtime's own
        -- (stream time); other tables have none (a raw key may start with one).
        if not (t.window and keys[i]:byte(1) == 0) and (not want or keys[i] == want) then
          found = found + 1
          local v = t.decode_value(values[i])
          io.write(core.json.encode { key = t.decode_key(keys[i]), value = v, partition = p }, "\n")
        end
      end
    end
  end
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
  core.run_broker { brokers = n, address_file = opts.address_file, partitions = p, topics = opts.topics }
  return 0
end

function cli.main(cmd, opts)
  if opts.args and #opts.args > 0 and cmd ~= "send" and cmd ~= "table" then
    return fail(2, "unexpected argument '%s'", opts.args[1])
  end
  return cli[cmd](opts)
end

return cli
