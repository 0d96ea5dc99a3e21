-- Starting, signalling and watching real processes from specs.
local proc = {}

local root = os.getenv("FSTREAM_ROOT") or "."
proc.root = root
proc.bin = (os.getenv("FSTREAM_BUILD") or (root .. "/build")) .. "/fstream-lua"
proc.tmp = root .. "/spec/tmp"
os.execute("mkdir -p " .. proc.tmp)

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
proc.quote = q

function proc.sleep(s) os.execute("sleep " .. s) end

local function read(path)
  local f = io.open(path)
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end
proc.read = read

function proc.write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  return path
end

-- Runs a shell command to completion: output (stdout+stderr), exit code.
function proc.run(cmd)
  local p = io.popen("(" .. cmd .. ") 2>&1; echo \"::rc=$?\"")
  local out = p:read("a")
  p:close()
  local rc = tonumber(out:match("::rc=(%d+)%s*$"))
  return out:gsub("::rc=%d+%s*$", ""), rc
end

local seq = 0
local Proc = {}
Proc.__index = Proc

-- Starts cmd in the background with its output in a log file.
function proc.spawn(cmd, name)
  seq = seq + 1
  local base = string.format("%s/%s-%d-%d", proc.tmp, name or "proc", os.time(), seq)
  local self = setmetatable({ log = base .. ".log", pidfile = base .. ".pid", rcfile = base .. ".rc" }, Proc)
  os.remove(self.rcfile)
  os.execute(string.format("(%s > %s 2>&1 & echo $! > %s; wait $!; echo $? > %s) >/dev/null 2>&1 &",
    cmd, q(self.log), q(self.pidfile), q(self.rcfile)))
  for _ = 1, 100 do
    local pid = read(self.pidfile)
    if pid and tonumber(pid) then self.pid = tonumber(pid); break end
    proc.sleep(0.05)
  end
  assert(self.pid, "could not start: " .. cmd)
  return self
end

function Proc:signal(sig) os.execute(string.format("kill -%s %d 2>/dev/null", sig, self.pid)) end

function Proc:alive()
  return read(self.rcfile) == nil and os.execute(string.format("kill -0 %d 2>/dev/null", self.pid)) == true
end

-- Exit code, or nil after `timeout` seconds.
function Proc:wait(timeout)
  local deadline = os.time() + (timeout or 30)
  repeat
    local rc = read(self.rcfile)
    if rc and tonumber(rc) then return tonumber(rc) end
    proc.sleep(0.1)
  until os.time() > deadline
  return nil
end

function Proc:output() return read(self.log) or "" end

-- Waits until the log matches a Lua pattern; returns the captures or nil.
function Proc:wait_for(pattern, timeout)
  local deadline = os.time() + (timeout or 30)
  repeat
    local caps = { self:output():match(pattern) }
    if #caps > 0 then return table.unpack(caps) end
    if not self:alive() then break end
    proc.sleep(0.1)
  until os.time() > deadline
  local caps = { self:output():match(pattern) }
  if #caps > 0 then return table.unpack(caps) end
  return nil
end

function Proc:stop(timeout)
  if self:alive() then self:signal("TERM") end
  local rc = self:wait(timeout or 40)
  if rc == nil then self:signal("KILL"); rc = self:wait(5) end
  return rc
end

-- A table as `fstream-lua table` prints it from one store (offline):
-- key -> value. env: the app's settings as "K=V K=V" (or "").
function proc.table_rows(env, app, name, store)
  local json = require("fstream.core").json
  local out, rc = proc.run(string.format("env %s %s table %s %s --store lmdb://%s 2>/dev/null",
    env, proc.bin, q(app), name, q(store)))
  assert(rc == 0, out)
  local rows = {}
  for line in out:gmatch("[^\n]+") do
    local row = assert(json.decode(line))
    rows[row.key] = row.value
  end
  return rows
end

-- A real Apache Kafka (scripts/kafka) on `port` with its data in `dir`:
-- kafka_start returns "rc, output, address" (rc 0 when it serves metadata);
-- kafka_stop stops it (its data stays in dir). Specs start and stop their own.
function proc.kafka_start(port, dir)
  local out, rc = proc.run(string.format("%s/scripts/kafka start --port %s --dir %s", proc.root, port, q(dir)))
  return rc, out, out:match("(127%.0%.0%.1:%d+)%s*$")
end

function proc.kafka_stop(dir)
  local out, rc = proc.run(string.format("%s/scripts/kafka stop --dir %s", proc.root, q(dir)))
  return rc, out
end

-- Inside a describe block: a real Kafka on port (data in dir) for the block's
-- tests, started in its setup (started(addr) then gets the address) and
-- stopped in its teardown.
function proc.kafka_for(port, dir, started)
  -- busted's setup and teardown are globals of the spec file, not of modules.
  local busted = require "busted"
  busted.setup(function()
    local rc, out, addr = proc.kafka_start(port, dir)
    assert(rc == 0 and addr, "could not start Kafka on port " .. tostring(port) .. ":\n" .. tostring(out))
    started(addr)
  end)
  busted.teardown(function() proc.kafka_stop(dir) end)
end

-- A standalone embedded broker (fstream-lua broker); returns proc, address.
function proc.broker(topics, partitions)
  local addr_file = string.format("%s/broker-%d-%d.addr", proc.tmp, os.time(), seq + 1)
  local args = { proc.bin, "broker", "--address-file", q(addr_file), "--partitions", tostring(partitions or 4) }
  for _, t in ipairs(topics or {}) do args[#args + 1] = "--topic " .. q(t) end
  local b = proc.spawn(table.concat(args, " "), "broker")
  for _ = 1, 100 do
    local a = read(addr_file)
    if a and a:match("%d+%.%d+%.%d+%.%d+:%d+") then
      b.address = a:match("[%d%.]+:%d+")
      return b, b.address
    end
    proc.sleep(0.05)
  end
  error("broker did not start: " .. b:output())
end

-- kcat helpers ------------------------------------------------------------

-- Asking for a topic's metadata makes the standalone embedded broker create it
-- (it has no CreateTopics API; workers would wait for that to time out).
function proc.create_topics(addr, ...)
  for _, t in ipairs { ... } do
    local out, rc = proc.run(string.format("kcat -L -b %s -t %s", addr, q(t)))
    assert(rc == 0, out)
  end
end
function proc.produce_lines(addr, topic, lines, opts)
  opts = opts or {}
  local path = proc.write(string.format("%s/lines-%d-%d.txt", proc.tmp, os.time(), seq), table.concat(lines, "\n") .. "\n")
  local key = opts.key_delim and (" -K" .. q(opts.key_delim)) or ""
  local out, rc = proc.run(string.format("kcat -P -b %s -t %s%s -X message.max.bytes=4000000 -l %s", addr, q(topic), key, q(path)))
  os.remove(path)
  assert(rc == 0, "kcat produce failed: " .. out)
end

-- Every value in a topic, from the beginning (kcat exits at the end).
function proc.consume_all(addr, topic)
  local out, rc = proc.run(string.format("kcat -C -b %s -t %s -o beginning -e -q -f '%%s\\n' 2>/dev/null", addr, q(topic)))
  local values = {}
  if rc ~= 0 then return values end
  for line in out:gmatch("[^\n]+") do values[#values + 1] = line end
  return values
end

-- Messages in a topic, from its end offsets (no compaction or transactions in
-- these specs, so end offset = count). Cheap, unlike reading a topic that is
-- still being written, which kcat -e keeps chasing.
function proc.count_messages(addr, topic)
  local md = proc.run(string.format("kcat -L -b %s -t %s", addr, q(topic)))
  local parts = tonumber(md:match("with (%d+) partitions")) or 0
  if parts == 0 then return 0 end
  local args = {}
  for p = 0, parts - 1 do args[#args + 1] = "-t " .. q(topic .. ":" .. p .. ":-1") end
  local out, rc = proc.run(string.format("kcat -Q -b %s %s", addr, table.concat(args, " ")))
  if rc ~= 0 then return 0 end
  local n = 0
  for off in out:gmatch("offset (%d+)") do n = n + tonumber(off) end
  return n
end

-- Polls until `topic` holds at least n messages (or the timeout passes);
-- returns how many it holds. Reads nothing, so it returns as soon as they are there.
function proc.wait_messages(addr, topic, n, timeout)
  local deadline = os.time() + (timeout or 60)
  local have
  repeat
    have = proc.count_messages(addr, topic)
    if have >= n then break end
    proc.sleep(0.3)
  until os.time() > deadline
  return have
end

-- Polls until `topic` holds at least n messages; returns all its values.
function proc.wait_count(addr, topic, n, timeout)
  proc.wait_messages(addr, topic, n, timeout)
  return proc.consume_all(addr, topic)
end

-- Starts `fstream-lua worker spec/fixtures/APP` on the broker at addr, with env.
-- opts.create = false: leave topic creation to the worker (real Kafka).
function proc.worker(app, env, broker, opts)
  if not (opts and opts.create == false) then
    proc.create_topics(broker, env.IN or "in", env.OUT or "out", (env.APP_ID or "x") .. "-adding")
  end
  local vars = {}
  for k, v in pairs(env) do vars[#vars + 1] = k .. "=" .. proc.quote(v) end
  -- The store goes under spec/tmp (not the app's default ./<id>-data, which
  -- is the directory the suite runs in); the same APP_ID finds it again.
  local store = (opts and opts.store) or
    string.format("lmdb://%s/%s-data", proc.tmp, env.APP_ID or app:gsub("%.lua$", ""))
  local cmd = string.format("env %s FSTREAM_BROKER=kafka://%s %s worker %s/%s -l info --store %s",
    table.concat(vars, " "), broker, proc.bin, proc.root .. "/spec/fixtures", app, proc.quote(store))
  return proc.spawn(cmd, "worker-" .. app:gsub("%.lua$", ""))
end

-- {"from", ..., "to"} as strings.
function proc.numbers(from, to)
  local t = {}
  for i = from, to do t[#t + 1] = tostring(i) end
  return t
end

-- How often each number appears as prefix..N in values.
function proc.counts(values, prefix)
  local c = {}
  for _, v in ipairs(values) do
    local n = tonumber(v:match("^" .. prefix .. "(%d+)$"))
    if n then c[n] = (c[n] or 0) + 1 end
  end
  return c
end

-- Polls until prefix..1 to prefix..n all appear in topic (or timeout); returns
-- how often each number was seen.
function proc.wait_all_seen(addr, topic, prefix, n, timeout)
  local deadline = os.time() + (timeout or 120)
  local c
  repeat
    proc.sleep(0.5)
    c = proc.counts(proc.consume_all(addr, topic), prefix)
    local missing = 0
    for i = 1, n do if not c[i] then missing = missing + 1 end end
  until missing == 0 or os.time() > deadline
  return c
end

return proc
