-- Exactly-once on a real Apache Kafka broker (KRaft, one node, started and
-- stopped here with scripts/kafka): workers killed with SIGKILL, frozen past
-- their session timeout, rebalanced, and cut off by a broker restart, while an
-- external producer keeps sending numbered events. An independent reader (kcat,
-- isolation.level=read_committed) then checks the committed outputs: every
-- input exactly once in the relay's output, every table count exact, every due
-- window closed exactly once with its exact value (spec/support/eos.lua).
--
-- EOS_SPEC_GUARANTEE=at_least_once runs the same scenarios under at-least-once:
-- only loss is an error there, duplicates are counted and printed. Add
-- EOS_SPEC_STRICT=1 to hold at-least-once to the exact assertions (they fail:
-- that is how these checks show they can).
-- FSTREAM_TEST_EOS_PORT / FSTREAM_TEST_EOS_DIR: the broker's port (default
-- 19292, the controller takes the next) and data dir (default spec/tmp/kafka-eos).
local proc = require "spec.support.proc"
local eos = require "spec.support.eos"

local port = os.getenv("FSTREAM_TEST_EOS_PORT") or "19292"
local dir = os.getenv("FSTREAM_TEST_EOS_DIR") or (proc.tmp .. "/kafka-eos")
local guarantee = os.getenv("EOS_SPEC_GUARANTEE") or "exactly_once"
local strict = guarantee == "exactly_once" or os.getenv("EOS_SPEC_STRICT") == "1"
local KILLS = tonumber(os.getenv("EOS_SPEC_KILLS") or "20")
local WORDS = 16
math.randomseed(os.time())

local function kafka(cmd)
  return proc.run(string.format("%s/scripts/kafka %s --port %s --dir %s", proc.root, cmd, port, proc.quote(dir)))
end

-- Settings of one scenario's app: fresh names, the guarantee under test. Under
-- at-least-once a shorter commit interval than the default keeps the
-- duplicates, which this spec counts, few.
local function app_env(tag)
  local env = eos.names(tag)
  env.GUARANTEE = guarantee
  if guarantee ~= "exactly_once" then env.COMMIT_INTERVAL = "0.5" end
  return env
end

local function store_of(env, name) return string.format("%s/%s-%s", proc.tmp, env.APP_ID, name or "a") end

-- Event time of message n is (base + 2n) / 100 s: near the wall clock, which
-- windows require (max_future).
local function base_cs() return (os.time() - 60) * 100 end

local t0 = os.time()
local function say(fmt, ...) io.stderr:write(string.format("\n    [%3d s] " .. fmt, os.time() - t0, ...)) end

-- The whole check, from the broker alone (plus the stores given, read with
-- `fstream-lua table` after the workers stopped).
local function check(addr, env, stores, what)
  local inputs = eos.inputs(addr, env.IN)
  assert(#inputs > 0, "no input was sent")
  local r = eos.compare(inputs, eos.output_counts(addr, env.OUT))
  local wr = eos.check_windows(inputs, eos.closed(addr, env.CLOSED))
  local expected = eos.word_counts(inputs)
  local cl = eos.changelog_counts(addr, env.changelog)
  say("%s (%s): %d inputs; output: %s; windows: %s; changelog total %d (expected %d)", what, guarantee,
    #inputs, eos.describe(r), eos.describe_windows(wr), eos.total(cl), #inputs)
  assert(#r.missing == 0 and r.unknown == 0, "output: " .. eos.describe(r))
  assert(wr.missing == 0, "windows: " .. eos.describe_windows(wr))
  assert(wr.due > 0, "no window was due: the scenario is too short to check windows")
  if strict then
    assert(r.dups == 0, "output: " .. eos.describe(r))
    assert(wr.dups == 0 and wr.wrong == 0 and wr.unknown == 0, "windows: " .. eos.describe_windows(wr))
    assert(eos.diff_counts(expected, cl) == nil, "changelog: " .. tostring(eos.diff_counts(expected, cl)))
  else
    for w, n in pairs(expected) do assert((cl[w] or 0) >= n, "changelog lost counts of " .. w) end
  end
  for _, store in ipairs(stores or {}) do
    local t = eos.table_counts(env, store)
    if strict then
      assert(eos.diff_counts(expected, t) == nil, "table in " .. store .. ": " .. tostring(eos.diff_counts(expected, t)))
    else
      for w, n in pairs(expected) do assert((t[w] or 0) >= n, "table lost counts of " .. w) end
    end
  end
  return inputs, r, wr
end

-- Waits until the worker's log says it holds n partitions: an eager
-- assignment names them all, a cooperative (incremental) one adds to what was
-- held, and a revocation takes away.
local function wait_holding(w, n, timeout)
  local deadline = os.time() + (timeout or 60)
  repeat
    local held = 0
    for what, k, inc in w:output():gmatch("info  (%a+) (%d+) partitions([^:\n]*):") do
      if what == "assigned" then held = inc:match("incremental") and held + tonumber(k) or tonumber(k)
      elseif what == "revoking" then held = held - tonumber(k) end
    end
    if held == n then return true end
    proc.sleep(0.2)
  until os.time() > deadline or not w:alive()
  return false
end

-- Stops the producer and returns once it exited.
local function stop_producer(p)
  say("stopping the producer")
  proc.write(p.stop_file, "")
  assert.are.equal(0, p:wait(60), p:output())
end

-- Waits until every input is committed downstream, then stops the workers with SIGTERM (exit 0).
local function drain_and_stop(addr, env, workers)
  local inputs = eos.inputs(addr, env.IN)
  say("%d inputs sent; waiting for the drain", #inputs)
  local ok, status = eos.wait_drained(addr, env, inputs, 120, workers)
  if not ok then
    local logs = {}
    for _, w in ipairs(workers) do logs[#logs + 1] = w:output():sub(-3000) end
    for _, w in ipairs(workers) do w:stop() end
    error("not drained after 120 s: " .. status .. "\n" .. table.concat(logs, "\n-----\n"), 0)
  end
  for _, w in ipairs(workers) do assert.are.equal(0, w:stop(), w:output():sub(-3000)) end
end

-- The checker itself, on made-up data: each kind of damage must be caught.
describe("the exactly-once checker", function()
  local function inputs(n, words)
    local list = {}
    for i = 1, n do
      local cs = 100000 + 2 * i
      list[i] = { n = i, w = "w" .. i % words, cs = cs, p = i % words % 4 }
    end
    return list
  end
  -- What a correct run outputs: every number once, every due window once, exact.
  local function perfect(list)
    local counts, closed = {}, {}
    for _, e in ipairs(list) do counts[e.n] = 1 end
    local exp = eos.windows_expected(list)
    for k, v in pairs(exp) do closed[#closed + 1] = { key = k, count = v } end
    return counts, closed
  end

  it("passes a perfect run", function()
    local list = inputs(3000, 8)
    local counts, closed = perfect(list)
    local r = eos.compare(list, counts)
    assert.are.same({ 0, 0, 0 }, { #r.missing, r.dups, r.unknown })
    local wr = eos.check_windows(list, closed)
    assert.is_true(wr.due > 0)
    assert.are.same({ 0, 0, 0, 0 }, { wr.missing, wr.dups, wr.wrong, wr.unknown })
    assert.is_nil(eos.diff_counts(eos.word_counts(list), eos.word_counts(list)))
  end)

  it("catches a gap, a duplicate and an output of no input", function()
    local list = inputs(3000, 8)
    local counts = perfect(list)
    counts[17], counts[2999], counts[5000] = nil, 2, 1
    local r = eos.compare(list, counts)
    assert.are.same({ 17 }, r.missing)
    assert.are.same({ 1, 1 }, { r.dups, r.unknown })
  end)

  it("catches a window closed twice, with a wrong value, or never", function()
    local list = inputs(3000, 8)
    local _, closed = perfect(list)
    table.sort(closed, function(a, b) return a.key < b.key end)
    closed[#closed + 1] = closed[1]
    closed[2] = { key = closed[2].key, count = closed[2].count + 1 }
    table.remove(closed, 3)
    local wr = eos.check_windows(list, closed)
    assert.are.same({ 1, 1, 1 }, { wr.dups, wr.wrong, wr.missing })
  end)

  it("catches a table count off by one and a key too many", function()
    local list = inputs(3000, 8)
    local got = eos.word_counts(list)
    got.w3, got.extra = got.w3 + 1, 1
    assert.matches("2 keys differ", eos.diff_counts(eos.word_counts(list), got))
  end)
end)

describe("exactly-once on a real Kafka broker", function()
  local addr
  setup(function()
    local out, rc = kafka("start")
    assert(rc == 0, "could not start Kafka:\n" .. out)
    addr = out:match("(127%.0%.0%.1:%d+)%s*$")
    assert(addr, out)
  end)
  teardown(function()
    if not os.getenv("FSTREAM_TEST_EOS_DIR") then kafka("stop") end
  end)
  after_each(eos.cleanup)

  it("keeps a relay, a table and two windows exact across " .. KILLS .. " kill -9s under a steady load", function()
    local env = app_env("kill")
    local store = store_of(env)
    local w = eos.worker(env, addr, store)
    assert.truthy(w:wait_for("assigned %d+ partitions", 60), w:output())
    local prod = eos.producer(addr, env.IN, 1, 10000000, 300, WORDS, base_cs())
    local early, killed_while_assigned = 0, 0
    for k = 1, KILLS do
      if k > 1 then w = eos.worker(env, addr, store) end
      -- Every fourth kill lands at a random moment from the start (before the
      -- assignment or during recovery, perhaps); the others while it works.
      if k % 4 == 0 then
        proc.sleep(string.format("%.2f", 0.2 + math.random() * 3))
        early = early + 1
      else
        assert.truthy(w:wait_for("assigned %d+ partitions", 60), w:output())
        proc.sleep(string.format("%.2f", 0.3 + math.random() * 2.5))
        killed_while_assigned = killed_while_assigned + 1
      end
      assert.is_true(w:alive(), w:output():sub(-3000))
      w:signal("KILL")
      assert.are.equal(137, w:wait(10))
    end
    w = eos.worker(env, addr, store)
    assert.truthy(w:wait_for("assigned %d+ partitions", 60), w:output())
    proc.sleep(2)
    stop_producer(prod)
    drain_and_stop(addr, env, { w })
    say("%d kills: %d at a random moment, %d while assigned", KILLS, early, killed_while_assigned)
    check(addr, env, { store }, "kill loop")
  end)

  it("fences a zombie frozen past its session timeout, and drops what it had not committed", function()
    local env = app_env("zombie")
    local sa, sb = store_of(env, "a"), store_of(env, "b")
    local a = eos.worker(env, addr, sa, "worker-zombie")
    assert.truthy(a:wait_for("assigned %d+ partitions", 60), a:output())
    local prod = eos.producer(addr, env.IN, 1, 10000000, 300, WORDS, base_cs())
    local b = eos.worker(env, addr, sb, "worker-b")
    assert.truthy(b:wait_for("assigned %d+ partitions", 60), b:output())
    proc.sleep(2)
    a:signal("STOP")
    -- b takes every partition once a's session (6 s) has expired.
    assert.truthy(wait_holding(b, 4, 60), b:output())
    proc.sleep(3)
    a:signal("CONT")
    -- a rejoins: the group is rebalanced across both again.
    proc.sleep(6)
    stop_producer(prod)
    drain_and_stop(addr, env, { a, b })
    check(addr, env, {}, "zombie")
    if guarantee == "exactly_once" then
      -- Its transaction was aborted: either its commit was refused (the group
      -- had moved on), or librdkafka noticed the expired session first and
      -- the lost partitions reset it.
      local out = a:output()
      assert.is_truthy(out:match("checkpoint failed %(.-this worker was fenced.-%): its transaction was aborted")
        or out:match("exactly%-once: partitions lost %([^\n]-%): its transaction was aborted"), out)
    end
  end)

  it("recovers by itself when the broker restarts mid-stream", function()
    local env = app_env("restart")
    local store = store_of(env)
    local w = eos.worker(env, addr, store)
    assert.truthy(w:wait_for("assigned %d+ partitions", 60), w:output())
    local prod = eos.producer(addr, env.IN, 1, 10000000, 300, WORDS, base_cs())
    proc.sleep(4)
    local out, rc = kafka("stop")
    assert(rc == 0, out)
    proc.sleep(2)
    out, rc = kafka("start")
    assert(rc == 0, out)
    proc.sleep(5)
    assert.is_true(w:alive(), w:output():sub(-3000))
    stop_producer(prod)
    drain_and_stop(addr, env, { w })
    check(addr, env, { store }, "broker restart")
  end)

  it("stays exact through clean rebalances: a second worker joins, then the first stops", function()
    local env = app_env("rebalance")
    local sa, sb = store_of(env, "a"), store_of(env, "b")
    local a = eos.worker(env, addr, sa, "worker-a")
    assert.truthy(a:wait_for("assigned %d+ partitions", 60), a:output())
    local prod = eos.producer(addr, env.IN, 1, 10000000, 300, WORDS, base_cs())
    proc.sleep(3)
    local b = eos.worker(env, addr, sb, "worker-b")
    assert.truthy(b:wait_for("assigned [123] partitions", 60), b:output())  -- (eager or incremental)
    proc.sleep(3)
    assert.are.equal(0, a:stop(), a:output():sub(-3000))
    assert.truthy(wait_holding(b, 4, 60), b:output())
    proc.sleep(3)
    stop_producer(prod)
    drain_and_stop(addr, env, { b })
    -- b ended holding every partition: its store is the whole table.
    check(addr, env, { sb }, "rebalance")
  end)

  it("replays only the changelog's tail after kill -9", function()
    local env = app_env("recovery")
    local store = store_of(env)
    local w = eos.worker(env, addr, store)
    assert.truthy(w:wait_for("assigned %d+ partitions", 60), w:output())
    -- 2,000 distinct words: the changelog grows with every checkpoint.
    local prod = eos.producer(addr, env.IN, 1, 10000000, 500, 2000, base_cs())
    proc.sleep(8)
    w:signal("KILL")
    assert.are.equal(137, w:wait(10))
    local records = #(eos.read(addr, env.changelog, "x\n") or ""):gsub("[^\n]", "")
    say("killed: %d changelog records committed; restarting", records)
    w = eos.worker(env, addr, store)
    assert.truthy(w:wait_for("assigned %d+ partitions", 60), w:output())
    -- Agents run once recovery is over: new output means it is. (Counted by
    -- end offsets: reading a topic that grows, kcat -e never reaches its end.)
    local ends = proc.count_messages(addr, env.OUT)
    local deadline = os.time() + 60
    while proc.count_messages(addr, env.OUT) <= ends and os.time() < deadline do proc.sleep(0.5) end
    local log = w:output()
    local planned, lines = 0, 0
    for n in log:gmatch("recovering table word_counts%[%d+%]: (%d+) changelog records") do
      planned, lines = planned + tonumber(n), lines + 1
    end
    local replayed, done = eos.recovered(log, "word_counts")
    say("recovery: the changelog holds %d committed records; the restart replayed %d (%d planned, %d partitions)",
      records, replayed, planned, lines)
    assert.are.equal(lines, done, log)
    assert.is_true(records > 2000, "too few changelog records to tell a tail from the whole: " .. records)
    assert.is_true(planned < records / 10, string.format("replayed %d of %d changelog records", planned, records))
    stop_producer(prod)
    drain_and_stop(addr, env, { w })
    check(addr, env, { store }, "recovery")
  end)
end)
