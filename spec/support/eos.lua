-- Helpers of the exactly-once specs (spec/eos_spec.lua): the external
-- producer, the eos_all.lua worker, and an independent checker that reads
-- every topic with kcat at isolation.level=read_committed, so it sees what
-- any downstream consumer would see and nothing the worker says about itself.
local proc = require "spec.support.proc"
local json = require("fstream.core").json

local eos = {}
local q = proc.quote
local fixture = proc.root .. "/spec/fixtures/eos_all.lua"
eos.fixture = fixture

-- Names for one scenario: app id, topics, store dir.
function eos.names(tag)
  local u = tag .. "-" .. os.time() .. "-" .. math.random(1e6)
  return {
    APP_ID = "eos-" .. u, IN = "eos-in-" .. u, OUT = "eos-out-" .. u, CLOSED = "eos-closed-" .. u,
    changelog = "eos-" .. u .. "-word_counts-changelog",
  }
end

local function envs(env)
  local vars = {}
  for _, k in ipairs { "APP_ID", "IN", "OUT", "CLOSED", "GUARANTEE", "COMMIT_INTERVAL", "THROTTLE" } do
    if env[k] then vars[#vars + 1] = k .. "=" .. q(env[k]) end
  end
  return table.concat(vars, " ")
end
eos.envs = envs

-- Every process started here, so that a failed spec can end them (eos.cleanup).
eos.spawned = {}
local function track(p) eos.spawned[#eos.spawned + 1] = p; return p end

function eos.cleanup()
  for _, p in ipairs(eos.spawned) do
    if p.stop_file then proc.write(p.stop_file, "") end
    if p:alive() then p:signal("CONT"); p:signal("KILL") end
  end
  eos.spawned = {}
end

-- The eos_all.lua worker on the given store directory (kept across restarts).
function eos.worker(env, addr, store, name)
  return track(proc.spawn(string.format("env %s %s worker %s --broker kafka://%s --store lmdb://%s -l %s",
    envs(env), proc.bin, fixture, addr, q(store), env.LOG_LEVEL or "info"), name or "worker-eos"))
end

-- Starts the producer: numbers from..to at `rate`/s (spec/support/eos_producer.sh).
-- Returns the process; p.stop_file ends it early.
function eos.producer(addr, topic, from, to, rate, words, base_cs)
  local stop = string.format("%s/producer-%s.stop", proc.tmp, topic)
  os.remove(stop)
  local p = proc.spawn(string.format("bash %s/spec/support/eos_producer.sh %s %s %d %d %d %d %d %s",
    proc.root, addr, q(topic), from, to, rate, words, base_cs, q(stop)), "producer")
  p.stop_file = stop
  return track(p)
end

-- Every message of a topic as kcat's -f format prints it, read_committed.
function eos.read(addr, topic, fmt)
  local out, rc = proc.run(string.format(
    "kcat -C -b %s -t %s -X isolation.level=read_committed -o beginning -e -q -f %s 2>/dev/null",
    addr, q(topic), q(fmt)))
  if rc ~= 0 then return nil end
  return out
end

-- The input as sent: list of {n, w, cs (event time in 1/100 s), p}; fails on a
-- number sent twice (the producer is idempotent, so that would be the harness's bug).
function eos.inputs(addr, topic)
  local out = assert(eos.read(addr, topic, "%p\t%s\n"), "cannot read " .. topic)
  local list, seen = {}, {}
  for p, v in out:gmatch("(%d+)\t([^\n]*)") do
    local e = assert(json.decode(v))
    local n = math.tointeger(e.n)
    assert(not seen[n], "input " .. n .. " was sent twice")
    seen[n] = true
    list[#list + 1] = { n = n, w = e.w, cs = math.floor(e.ts * 100 + 0.5), p = tonumber(p) }
  end
  return list
end

-- How often each number appears as "out:N" in topic (read_committed).
function eos.output_counts(addr, topic)
  local out = eos.read(addr, topic, "%s\n") or ""
  local c = {}
  for n in out:gmatch("out:(%d+)") do n = tonumber(n); c[n] = (c[n] or 0) + 1 end
  return c
end

-- Compares output counts with the inputs: missing (list), duplicates (extra
-- copies), unknown (outputs of no input).
function eos.compare(inputs, counts)
  local r = { missing = {}, dups = 0, dup_numbers = 0, unknown = 0 }
  local known = {}
  for _, e in ipairs(inputs) do
    known[e.n] = true
    local c = counts[e.n] or 0
    if c == 0 then r.missing[#r.missing + 1] = e.n
    elseif c > 1 then r.dups = r.dups + c - 1; r.dup_numbers = r.dup_numbers + 1 end
  end
  for n in pairs(counts) do if not known[n] then r.unknown = r.unknown + 1 end end
  return r
end

function eos.describe(r)
  local m = {}
  for i = 1, math.min(10, #r.missing) do m[i] = r.missing[i] end
  return string.format("%d missing (first: %s), %d duplicates of %d numbers, %d unknown",
    #r.missing, table.concat(m, ","), r.dups, r.dup_numbers, r.unknown)
end

function eos.word_counts(inputs)
  local c = {}
  for _, e in ipairs(inputs) do c[e.w] = (c[e.w] or 0) + 1 end
  return c
end

-- The word_counts table as committed: the last value per key of its
-- changelog, read_committed (a tombstone removes the key).
function eos.changelog_counts(addr, changelog)
  local out = eos.read(addr, changelog, "%k\t%S\t%s\n")
  if not out then return {} end
  local c = {}
  for k, size, v in out:gmatch("([^\t\n]*)\t(%-?%d+)\t([^\n]*)") do
    local key = json.decode(k)
    if tonumber(size) <= 0 then c[key] = nil else c[key] = json.decode(v) end
  end
  return c
end

-- The table as `fstream-lua table` prints it from one store (offline).
function eos.table_counts(env, store)
  return proc.table_rows(envs(env), fixture, "word_counts", store)
end

function eos.total(c)
  local n = 0
  for _, v in pairs(c) do n = n + v end
  return n
end

-- Compares two word -> count maps; nil when equal, else a description.
function eos.diff_counts(expected, got)
  local bad = {}
  for k, v in pairs(expected) do
    if got[k] ~= v then bad[#bad + 1] = string.format("%s: %s (expected %d)", k, tostring(got[k]), v) end
  end
  for k, v in pairs(got) do
    if expected[k] == nil then bad[#bad + 1] = string.format("%s: %s (expected none)", k, tostring(v)) end
  end
  if #bad == 0 then return nil end
  table.sort(bad)
  return #bad .. " keys differ: " .. table.concat(bad, "; ", 1, math.min(8, #bad))
end

-- Windows (centiseconds): tumbling 10 s; hopping 10 s every 5 s.
local SIZE, STEP = 1000, 500

-- Expected windows: "t|w|start_cs" / "h|w|start_cs" -> count, and for each
-- the latest event time of its word's partition (stream time at the end).
function eos.windows_expected(inputs)
  local exp, stream = {}, {}
  for _, e in ipairs(inputs) do
    if (stream[e.p] or -1) < e.cs then stream[e.p] = e.cs end
    local t = e.cs - e.cs % SIZE
    local k = "t|" .. e.w .. "|" .. t
    exp[k] = (exp[k] or 0) + 1
    local s1 = e.cs - e.cs % STEP
    for _, s in ipairs { s1 - STEP, s1 } do
      if e.cs >= s and e.cs < s + SIZE then
        k = "h|" .. e.w .. "|" .. s
        exp[k] = (exp[k] or 0) + 1
      end
    end
  end
  local part = {}
  for _, e in ipairs(inputs) do part[e.w] = e.p end
  return exp, stream, part
end

-- Closed-window outputs, read_committed: list of "kind|w|start_cs" = count.
function eos.closed(addr, topic)
  local out = eos.read(addr, topic, "%s\n") or ""
  local list = {}
  for line in out:gmatch("[^\n]+") do
    local c = assert(json.decode(line))
    list[#list + 1] = { key = c.kind .. "|" .. c.w .. "|" .. math.floor(c.start * 100 + 0.5), count = c.count }
  end
  return list
end

-- Checks the closed windows against the inputs. Every window that ended at
-- least one window size before its partition's final stream time must have
-- closed (due); any window may close at most once, with its exact count.
-- Returns {due, closed, missing, dups, wrong, unknown, detail}.
function eos.check_windows(inputs, closed)
  local exp, stream, part = eos.windows_expected(inputs)
  local r = { due = 0, closed = #closed, missing = 0, dups = 0, wrong = 0, unknown = 0, detail = {} }
  local seen = {}
  local function note(s) if #r.detail < 8 then r.detail[#r.detail + 1] = s end end
  for _, c in ipairs(closed) do
    seen[c.key] = (seen[c.key] or 0) + 1
    if seen[c.key] == 2 then r.dups = r.dups + 1; note("closed twice: " .. c.key) end
    if exp[c.key] == nil then r.unknown = r.unknown + 1; note("no such window: " .. c.key)
    elseif exp[c.key] ~= c.count then
      r.wrong = r.wrong + 1
      note(string.format("%s = %s, expected %d", c.key, tostring(c.count), exp[c.key]))
    end
  end
  for k in pairs(exp) do
    local w, s = k:match("^%a|([^|]+)|(%d+)$")
    if tonumber(s) + 2 * SIZE <= stream[part[w]] then
      r.due = r.due + 1
      if not seen[k] then r.missing = r.missing + 1; note("never closed: " .. k) end
    end
  end
  return r
end

function eos.describe_windows(r)
  return string.format("%d due, %d closed, %d missing, %d closed twice, %d wrong values, %d unknown: %s",
    r.due, r.closed, r.missing, r.dups, r.wrong, r.unknown, table.concat(r.detail, "; "))
end

-- Polls until every input number is in OUT, every due window is closed and
-- the changelog counts every input, read_committed (or the timeout passes).
-- Returns true, or false and what was still missing.
function eos.wait_drained(addr, env, inputs, timeout, procs)
  local deadline = os.time() + (timeout or 120)
  local status
  repeat
    local r = eos.compare(inputs, eos.output_counts(addr, env.OUT))
    local wr = eos.check_windows(inputs, eos.closed(addr, env.CLOSED))
    local cl = eos.changelog_counts(addr, env.changelog)
    local total = eos.total(cl)
    if #r.missing == 0 and wr.missing == 0 and total >= #inputs then return true end
    status = string.format("output: %s; windows: %s; changelog total %d of %d inputs (%s)", eos.describe(r),
      eos.describe_windows(wr), total, #inputs, tostring(eos.diff_counts(eos.word_counts(inputs), cl)))
    for _, p in ipairs(procs or {}) do
      if not p:alive() then return false, "a worker exited; " .. status end
    end
    proc.sleep(1)
  until os.time() > deadline
  return false, status
end

-- Sum of N over the log's "recovered table NAME[P]: N records" lines (NAME nil: all tables).
function eos.recovered(log, name)
  local n, lines = 0, 0
  for t, k in log:gmatch("recovered table ([%w_]+)%[%d+%]: (%d+) records") do
    if not name or t == name then n = n + tonumber(k); lines = lines + 1 end
  end
  return n, lines
end

return eos
