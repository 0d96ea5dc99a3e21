-- Scenario 2, broker faults (RELIABILITY.md "2. Broker faults").
--
-- Part 1, a real Apache Kafka killed with SIGKILL and restarted mid-stream,
-- while the eos_all.lua worker (spec/support/eos.lua) processes what an
-- external numbered producer sends: the worker must reconnect by itself and
-- lose nothing. Recovery: from the restarted broker serving metadata to the
-- first committed output of an input the broker had not seen before the kill.
--
-- Part 2, the embedded broker (`fstream-lua broker --control FIFO`) with
-- librdkafka's mock fault injection: requests of one type (Produce, Fetch,
-- OffsetCommit, JoinGroup, SyncGroup, Heartbeat) fail with a retriable or a
-- fatal code, or the broker goes down for a few seconds. Each case must be
-- retried to success or reported by the worker (a warn/error line, then it
-- exits non-zero or keeps serving); either way, once restarted, nothing is
-- lost. The embedded broker refuses exactly-once, so part 2 runs under
-- at-least-once only.
--
-- CHAOS_BROKER_CASES=substring limits part 2 to the matching cases (and
-- CHAOS_BROKER_PART=1|2 to one part) when working on one of them.
local lib = require "chaos.lib"
local proc = require "spec.support.proc"
local eos = require "spec.support.eos"

local q = proc.quote
local PORT = 19710 -- the real Kafka of this scenario (the controller takes 19711)
local WORDS = 16

local function base_cs() return (os.time() - 60) * 100 end

local function app_env(tag, guarantee)
  local env = eos.names(tag)
  env.GUARANTEE = guarantee
  -- Fewer duplicates to count under at-least-once.
  if guarantee ~= "exactly_once" then env.COMMIT_INTERVAL = "0.5" end
  return env
end

-- Everything the independent checkers see: output and windows read
-- read_committed with kcat, the changelog, and the table CLI on the store
-- (the worker must have stopped). lost counts outputs missing, due windows
-- never closed and table counts short of the input; duplicated, extra outputs.
local function verdict(addr, env, store, guarantee)
  local inputs = eos.inputs(addr, env.IN)
  local r = eos.compare(inputs, eos.output_counts(addr, env.OUT))
  local wr = eos.check_windows(inputs, eos.closed(addr, env.CLOSED))
  local expected = eos.word_counts(inputs)
  local cl = eos.changelog_counts(addr, env.changelog)
  local t = store and eos.table_counts(env, store) or cl
  local short, over = 0, 0
  for w, n in pairs(expected) do
    for _, got in ipairs { cl[w] or 0, t[w] or 0 } do
      if got < n then short = short + n - got elseif got > n then over = over + got - n end
    end
  end
  local v = { messages = #inputs, lost = #r.missing + wr.missing + short, duplicated = r.dups }
  local notes = {}
  if #r.missing > 0 or r.unknown > 0 then notes[#notes + 1] = "output: " .. eos.describe(r) end
  if wr.missing > 0 or (guarantee == "exactly_once" and (wr.dups > 0 or wr.wrong > 0)) then
    notes[#notes + 1] = "windows: " .. eos.describe_windows(wr)
  end
  if short > 0 then notes[#notes + 1] = string.format("table/changelog %d counts short", short) end
  if guarantee == "exactly_once" and over > 0 then
    v.duplicated = v.duplicated + over
    notes[#notes + 1] = string.format("table/changelog %d counts over", over)
  end
  v.windows_due, v.note = wr.due, table.concat(notes, "; ")
  return v
end

-- ---- part 1: real Kafka, kill -9 and restart ------------------------------

local function broker_pid(dir)
  local pid = tonumber((proc.read(dir .. "/kafka.pid") or ""):match("%d+"))
  -- PIDs are reused quickly on a busy machine: only a Kafka JVM.
  local cmd = pid and proc.read("/proc/" .. pid .. "/cmdline") or ""
  assert(cmd:find("kafka.Kafka", 1, true), "no running broker in " .. dir .. " (pid " .. tostring(pid) .. ")")
  return pid
end

-- The highest number among the last messages of each partition
-- (read_committed). A count and a time limit: with the producer still
-- writing, kcat -e alone may chase the end for minutes.
local function tail_max(addr, topic, pattern)
  local out = proc.run(string.format("timeout 10 kcat -C -b %s -t %s -X isolation.level=read_committed "
    .. "-o -30 -c 60 -e -q -f '%%s\\n' 2>/dev/null", addr, q(topic)))
  local m = -1
  for n in out:gmatch(pattern) do m = math.max(m, tonumber(n)) end
  return m
end

local function kill_restart(ctx, addr, dir, guarantee, reps)
  local env = app_env("bk-" .. guarantee:sub(1, 1), guarantee)
  local store = string.format("%s/%s", ctx.tmp, env.APP_ID)
  local w = ctx.track(eos.worker(env, addr, store, "worker-broker"))
  if not w:wait_for("assigned %d+ partitions", 90) then
    error("the worker was not assigned partitions: " .. w:output():sub(-2000))
  end
  local prod = ctx.track(eos.producer(addr, env.IN, 1, 10000000, 300, WORDS, base_cs()))
  local recovery, notes = {}, {}
  for k = 1, reps do
    proc.sleep(string.format("%.2f", 3 + math.random() * 3))
    local pid = broker_pid(dir)
    ctx.log("%s: kill -9 of broker %d (%d of %d)", guarantee, pid, k, reps)
    os.execute("kill -KILL " .. pid)
    for _ = 1, 100 do
      if not os.execute("kill -0 " .. pid .. " 2>/dev/null") then break end
      proc.sleep(0.1)
    end
    proc.sleep(string.format("%.2f", 1 + math.random() * 2))
    local rc, out = proc.kafka_start(PORT, dir)
    if rc ~= 0 then error("Kafka did not restart: " .. out) end
    local up = lib.now()
    -- Inputs up to here were on the broker before the kill (or are the
    -- producer's retries of them); an output of a later one is new work.
    local seen = tail_max(addr, env.IN, '"n":(%d+)')
    local t
    repeat
      if tail_max(addr, env.OUT, "out:(%d+)") > seen then t = lib.now() - up; break end
      proc.sleep(0.2)
    until lib.now() - up > 120 or not w:alive()
    if t then
      recovery[#recovery + 1] = t
      ctx.log("%s: processing again %.1f s after the broker came back", guarantee, t)
    else
      notes[#notes + 1] = string.format("kill %d: no new output within 120 s", k)
      break
    end
  end
  proc.write(prod.stop_file, "")
  prod:wait(60)
  local inputs = eos.inputs(addr, env.IN)
  local drained, status = eos.wait_drained(addr, env, inputs, 180, { w })
  if not drained then notes[#notes + 1] = "not drained: " .. status:sub(1, 300) end
  local rc = w:stop(60)
  if rc ~= 0 then notes[#notes + 1] = "the worker exited " .. tostring(rc) .. ": " .. w:output():sub(-300) end
  local v = verdict(addr, env, store, guarantee)
  if v.note ~= "" then notes[#notes + 1] = v.note end
  local row = ctx.row {
    variant = string.format("real Kafka kill -9 + restart x%d", reps), guarantee = guarantee, reps = reps,
    messages = v.messages, lost = v.lost, duplicated = v.duplicated, recovery = recovery,
    note = #notes > 0 and table.concat(notes, "; ") or string.format("%d due windows checked", v.windows_due),
  }
  if #recovery < reps or not drained or rc ~= 0 then row.ok = false end
end

-- ---- part 2: the embedded broker's fault injection -------------------------

-- kind "retriable": librdkafka (or the worker) must retry it to success;
-- "fatal": it may be reported instead (a warn/error line naming it, the worker
-- exiting non-zero or serving on). at: "mid" = injected between two batches of
-- input while the worker runs, "start" = before the worker starts (group
-- requests happen at the join). quick: part of the quick run.
local CASES = {
  { api = "Produce", n = 5, code = "NOT_LEADER_FOR_PARTITION", kind = "retriable" },
  { api = "Produce", n = 5, code = "REQUEST_TIMED_OUT", kind = "retriable" },
  { api = "Produce", n = 1, code = "TOPIC_AUTHORIZATION_FAILED", kind = "fatal", quick = true },
  { api = "Produce", n = 1, code = "MSG_SIZE_TOO_LARGE", kind = "fatal" },
  { api = "Produce", n = 1, code = "INVALID_RECORD", kind = "fatal" },
  { api = "Produce", n = 1, code = "INVALID_MSG", kind = "fatal", label = "CORRUPT_MESSAGE", quick = true },
  { api = "Fetch", n = 5, code = "NOT_LEADER_FOR_PARTITION", kind = "retriable" },
  { api = "Fetch", n = 5, code = "REQUEST_TIMED_OUT", kind = "retriable" },
  { api = "Fetch", n = 1, code = "TOPIC_AUTHORIZATION_FAILED", kind = "fatal" },
  { api = "OffsetCommit", n = 5, code = "COORDINATOR_NOT_AVAILABLE", kind = "retriable" },
  { api = "OffsetCommit", n = 5, code = "REQUEST_TIMED_OUT", kind = "retriable" },
  { api = "OffsetCommit", n = 1, code = "UNKNOWN_MEMBER_ID", kind = "fatal" },
  { api = "OffsetCommit", n = 1, code = "GROUP_AUTHORIZATION_FAILED", kind = "fatal" },
  { api = "JoinGroup", n = 3, code = "COORDINATOR_NOT_AVAILABLE", kind = "retriable", at = "start" },
  { api = "JoinGroup", n = 3, code = "REBALANCE_IN_PROGRESS", kind = "retriable", at = "start" },
  { api = "JoinGroup", n = 1, code = "GROUP_AUTHORIZATION_FAILED", kind = "fatal", at = "start" },
  { api = "SyncGroup", n = 3, code = "REBALANCE_IN_PROGRESS", kind = "retriable", at = "start" },
  { api = "Heartbeat", n = 3, code = "REBALANCE_IN_PROGRESS", kind = "retriable" },
  { api = "Heartbeat", n = 1, code = "UNKNOWN_MEMBER_ID", kind = "fatal" },
  { down = 3, quick = true },
}

local function case_name(c)
  if c.down then return string.format("embedded broker down %d s, then up", c.down) end
  return string.format("%s %s x%d", c.api, c.label or c.code, c.n)
end

-- Sends one command to the broker's FIFO and waits for its answer in its log.
local function command(b, fifo, line)
  local before = #b:output()
  proc.write(fifo, line .. "\n")
  for _ = 1, 100 do
    local new = b:output():sub(before + 1)
    local level, what = new:match("(%a+)%s+control: " .. line:gsub("%p", "%%%0") .. ": ([^\n]*)")
    if level then
      assert(level == "info", "the broker refused '" .. line .. "': " .. what)
      return what
    end
    proc.sleep(0.1)
  end
  error("the broker did not answer '" .. line .. "': " .. b:output():sub(-500))
end

-- The worker's warn and error lines written after byte `from` of its log.
local function reports(w, from)
  local lines = {}
  for line in w:output():sub(from + 1):gmatch("[^\n]+") do
    if line:match("^%S+ +warn ") or line:match("^%S+ +error ") or line:match("%] warn ")
      or line:match("%] error ") then
      lines[#lines + 1] = line
    end
  end
  return lines
end

local BATCH = 1000

local function embedded_case(ctx, c)
  local name = case_name(c)
  local env = app_env("bf", "at_least_once")
  local fifo = string.format("%s/control-%s", ctx.tmp, env.APP_ID)
  local addr_file = string.format("%s/%s.addr", ctx.tmp, env.APP_ID)
  local b = ctx.track(proc.spawn(string.format("%s broker --partitions 4 --control %s --address-file %s",
    proc.bin, q(fifo), q(addr_file)), "broker-mock"))
  local addr
  for _ = 1, 100 do
    addr = (proc.read(addr_file) or ""):match("[%d%.]+:%d+")
    if addr then break end
    proc.sleep(0.05)
  end
  assert(addr, "the embedded broker did not start: " .. b:output())
  proc.create_topics(addr, env.IN, env.OUT, env.CLOSED)
  local store = string.format("%s/%s", ctx.tmp, env.APP_ID)
  local base = base_cs()
  local function produce(from, to)
    local p = eos.producer(addr, env.IN, from, to, 5000, WORDS, base)
    assert(p:wait(60) == 0, "the producer failed: " .. p:output())
  end
  -- On broker 1's own stack (the only broker): `pending` then tells when the
  -- worker's requests have met every error, before any kcat read could.
  local inject = c.down and ("down 1") or string.format("broker-errors 1 %s %d %s", c.api, c.n, c.code)
  env.LOG_LEVEL = os.getenv("CHAOS_BROKER_LOG")
  local w, mark, t0
  if c.at == "start" then
    produce(1, 2 * BATCH)
    command(b, fifo, inject)
    t0 = lib.now()
    mark = 0
    w = ctx.track(eos.worker(env, addr, store, "worker-bf"))
  else
    w = ctx.track(eos.worker(env, addr, store, "worker-bf"))
    produce(1, BATCH)
    local have = proc.wait_messages(addr, env.OUT, BATCH, 90)
    assert(have >= BATCH, "the worker did not process the first batch: " .. w:output():sub(-1500))
    -- Frozen while the second batch goes in, so that the injected errors
    -- meet the worker's requests, not the producer's.
    w:signal("STOP")
    produce(BATCH + 1, 2 * BATCH)
    mark = #w:output()
    command(b, fifo, inject)
    t0 = lib.now()
    w:signal("CONT")
    if c.down then
      proc.sleep(c.down)
      command(b, fifo, "up 1")
    end
  end
  local met = true
  if not c.down then
    met = false
    for _ = 1, 300 do
      if command(b, fifo, string.format("pending 1 %s", c.api)):match("^0 ") then met = true; break end
      if not w:alive() then
        met = command(b, fifo, string.format("pending 1 %s", c.api)):match("^0 ") ~= nil
        break
      end
      proc.sleep(0.1)
    end
  end
  local inputs = eos.inputs(addr, env.IN)
  local drained, status = eos.wait_drained(addr, env, inputs, c.kind == "fatal" and 45 or 90, { w })
  local took = lib.now() - t0
  local alive = w:alive()
  local rc = alive and nil or w:wait(1)
  local said = reports(w, mark)
  local outcome, notes, ok = nil, {}, true
  if drained and alive then
    outcome = "retried"
    notes[#notes + 1] = string.format("retried to success, drained %.1f s after the fault", took)
    if #said > 0 and c.kind == "fatal" then notes[#notes + 1] = "logged: " .. said[1]:sub(1, 160) end
  elseif rc and rc > 128 then
    ok = false
    outcome = "crashed"
    notes[#notes + 1] = string.format("the worker crashed (exit %d: signal %d); %s", rc, rc - 128,
      (said[#said] or ""):gsub("^%S+%s+", ""):sub(1, 200))
  elseif #said > 0 and (not alive and rc ~= 0 or alive) then
    outcome = "reported"
    notes[#notes + 1] = string.format("reported (%s): %s", alive and "worker serving on" or ("exit " .. tostring(rc)),
      said[#said]:gsub("^%S+%s+", ""):sub(1, 200))
  else
    ok = false
    outcome = alive and "hung" or "silent"
    notes[#notes + 1] = string.format("%s: %s; %s", alive and "neither retried nor reported" or
      ("exited " .. tostring(rc) .. " without a warning"), status or "", w:output():sub(-600))
  end
  if not met then
    ok = false
    notes[#notes + 1] = "the injected errors never all met a request of the worker: the case tested nothing"
  end
  if c.kind == "retriable" and outcome ~= "retried" and ok then
    notes[#notes + 1] = "(a retriable code, reported rather than retried)"
  end
  -- Whatever happened, a worker restarted without faults must finish the
  -- job from what was committed: nothing may have been committed past.
  if c.down then command(b, fifo, "up 1") end
  if outcome ~= "retried" then
    if w:alive() then w:stop(30) end
    w = ctx.track(eos.worker(env, addr, store, "worker-bf2"))
  end
  -- A last batch, after the fault: the worker (restarted or not) serves, and
  -- its tables have been rebuilt before the table CLI reads them.
  produce(2 * BATCH + 1, 2 * BATCH + 200)
  inputs = eos.inputs(addr, env.IN)
  local again, st = eos.wait_drained(addr, env, inputs, 90, { w })
  if not again then
    ok = false
    notes[#notes + 1] = "not drained after the fault: " .. tostring(st):sub(1, 300)
  end
  local src = w:stop(40)
  if src ~= 0 then notes[#notes + 1] = "the last worker's stop exited " .. tostring(src) end
  local v = verdict(addr, env, store, "at_least_once")
  if v.note ~= "" then notes[#notes + 1] = v.note end
  b:stop(10)
  local row = ctx.row {
    variant = name, guarantee = "at_least_once", reps = 1, messages = v.messages, lost = v.lost,
    duplicated = v.duplicated, recovery = outcome == "retried" and { took } or outcome,
    note = table.concat(notes, "; ") .. "; exactly-once: the embedded broker refuses it",
  }
  if not ok then row.ok = false end
  return row
end

local function run(ctx)
  math.randomseed(os.time())
  local part = os.getenv("CHAOS_BROKER_PART")
  if part ~= "2" then
    -- Quick (the suite's run): one kill, under exactly-once only unless
    -- --guarantee says otherwise (at-least-once has the embedded cases), to
    -- stay near two minutes; each kill costs the broker's restart.
    local gs = ctx.guarantees
    if ctx.quick and #gs > 1 then gs = { "exactly_once" } end
    local addr, dir = ctx.kafka(PORT)
    for _, g in ipairs(gs) do kill_restart(ctx, addr, dir, g, ctx.reps(5, 1)) end
  end
  if part ~= "1" then
    local only = os.getenv("CHAOS_BROKER_CASES")
    local runs_alo = false
    for _, g in ipairs(ctx.guarantees) do if g == "at_least_once" then runs_alo = true end end
    if not runs_alo then
      ctx.log("embedded broker cases skipped: they run under at_least_once only (it refuses exactly-once)")
      return
    end
    for _, c in ipairs(CASES) do
      if (not ctx.quick or c.quick) and (not only or case_name(c):find(only, 1, true)) then
        embedded_case(ctx, c)
      end
    end
  end
end

return {
  name = "broker", order = 2, quick_in_suite = true, run = run,
  title = "broker faults: real Kafka kill -9 + restart mid-stream; the embedded broker's injected request errors and downtime",
}
