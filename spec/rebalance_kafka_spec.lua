-- Rebalances on a real Apache Kafka broker: a third worker joins a group of
-- two while an external producer keeps sending numbered events
-- (spec/fixtures/eos_all.lua: a relay, a word-count table, windows). With the
-- cooperative-sticky assignor (asked for with FSTREAM_PARTITION_ASSIGNOR; the default for apps without partitioned tables) only the partitions that move are
-- revoked, and the workers keep processing the others through the rebalance;
-- with partition_assignor = "range" every partition is revoked and assigned
-- again. Either way an independent reader (kcat, read_committed) finds every
-- input exactly once downstream: a clean rebalance commits what it revokes.
-- FSTREAM_TEST_REBALANCE_PORT / _DIR: the broker this spec starts (default
-- 19392, spec/tmp/kafka-rebalance); FSTREAM_TEST_REBALANCE_ADDR: use a broker
-- that runs already instead.
local proc = require "spec.support.proc"
local eos = require "spec.support.eos"

local port = os.getenv("FSTREAM_TEST_REBALANCE_PORT") or "19392"
local dir = os.getenv("FSTREAM_TEST_REBALANCE_DIR") or (proc.tmp .. "/kafka-rebalance")
local given = os.getenv("FSTREAM_TEST_REBALANCE_ADDR")
local WORDS = 16
math.randomseed(os.time())

local t0 = os.time()
local function say(fmt, ...) io.stderr:write(string.format("\n    [%3d s] " .. fmt, os.time() - t0, ...)) end

-- How many partitions each "assigned"/"revoking" line of a log names, in order.
local function changes(log)
  local list = {}
  for what, n, inc in log:gmatch("info  (%a+) (%d+) partitions([^:\n]*):") do
    if what == "assigned" or what == "revoking" then list[#list + 1] = { what, tonumber(n), inc } end
  end
  return list
end

-- Partitions held after each change, and the revocations that left some held.
local function held_and_partial(log)
  local held, partial, total = 0, 0, 0
  for _, c in ipairs(changes(log)) do
    if c[1] == "assigned" then
      held = c[3]:match("incremental") and held + c[2] or c[2]
    else
      if c[2] < held then partial = partial + 1 else total = total + 1 end
      held = held - c[2]
    end
  end
  return held, partial, total
end

-- Three workers of one group: a and b run, c joins; then the producer stops,
-- everything drains, and all three stop cleanly. Returns the logs.
local function three_workers(addr, env, assignor)
  local stores = {}
  local function start(name)
    stores[#stores + 1] = string.format("%s/%s-%s", proc.tmp, env.APP_ID, name)
    local e = {}
    for k, v in pairs(env) do e[k] = v end
    local w = proc.spawn(string.format("env %s %s %s worker %s --broker kafka://%s --store lmdb://%s -l info",
      eos.envs(env), assignor and ("FSTREAM_PARTITION_ASSIGNOR=" .. assignor) or "", proc.bin, eos.fixture,
      addr, proc.quote(stores[#stores])), "worker-" .. name)
    eos.spawned[#eos.spawned + 1] = w
    return w
  end
  local a = start("a")
  assert.truthy(a:wait_for("assigned [1-9]%d* partitions", 60), a:output())
  local prod = eos.producer(addr, env.IN, 1, 10000000, 200, WORDS, (os.time() - 60) * 100)
  local b = start("b")
  assert.truthy(b:wait_for("assigned [1-9]%d* partitions", 60), b:output())
  proc.sleep(4)
  say("a and b hold the input; c joins")
  local c = start("c")
  assert.truthy(c:wait_for("assigned [1-9]%d* partitions", 60), c:output())
  proc.sleep(4)
  proc.write(prod.stop_file, "")
  assert.are.equal(0, prod:wait(60), prod:output())
  local inputs = eos.inputs(addr, env.IN)
  say("%d inputs sent; waiting for the drain", #inputs)
  local ok, status = eos.wait_drained(addr, env, inputs, 120, { a, b, c })
  local logs = { a:output(), b:output(), c:output() }
  assert(ok, "not drained: " .. tostring(status) .. "\n" .. logs[1]:sub(-2000) .. "\n----\n" .. logs[2]:sub(-2000))
  -- Stopped one by one: each stop is a rebalance of the others too.
  for _, w in ipairs { c, b, a } do assert.are.equal(0, w:stop(), w:output():sub(-3000)) end
  logs = { a:output(), b:output(), c:output() }
  -- Exact downstream: every input once in the relay's output, every due
  -- window once with its exact count, the changelog's counts exact.
  local r = eos.compare(inputs, eos.output_counts(addr, env.OUT))
  local wr = eos.check_windows(inputs, eos.closed(addr, env.CLOSED))
  local cl = eos.changelog_counts(addr, env.changelog)
  say("%s: %d inputs; output: %s; windows: %s", assignor or "default", #inputs, eos.describe(r), eos.describe_windows(wr))
  assert(#r.missing == 0 and r.unknown == 0 and r.dups == 0, "output: " .. eos.describe(r))
  assert(wr.missing == 0 and wr.dups == 0 and wr.wrong == 0, "windows: " .. eos.describe_windows(wr))
  assert(eos.diff_counts(eos.word_counts(inputs), cl) == nil, "changelog: " .. tostring(eos.diff_counts(eos.word_counts(inputs), cl)))
  return logs
end

-- The part of a log from c's join to the first stop ("stopping").
local function join_part(log, joined_after)
  local from = log:find("info  revoking", joined_after or 1, true)
  local to = log:find("stopping %(SIG")
  return from and log:sub(from, to) or ""
end

describe("rebalances on real Kafka", function()
  local addr
  setup(function()
    if given then addr = given return end
    local rc, out, a = proc.kafka_start(port, dir)
    assert(rc == 0 and a, "could not start Kafka on port " .. port .. ":\n" .. out)
    addr = a
  end)
  teardown(function()
    eos.cleanup()
    if not given then proc.kafka_stop(dir) end
  end)

  for _, guarantee in ipairs { "at_least_once", "exactly_once" } do
    it("cooperative-sticky (" .. guarantee .. "): a joining worker moves only some partitions, the others keep going, counts exact", function()
      local env = eos.names("coop")
      env.GUARANTEE = guarantee
      if guarantee == "at_least_once" then env.COMMIT_INTERVAL = "0.5" end
      local logs = three_workers(addr, env, "cooperative-sticky")
      assert.matches("partition assignor: cooperative%-sticky %(incremental rebalances%)", logs[1])
      -- Before the stops: a and b gave up some partitions each and kept the
      -- others (a revocation of only some: "the others keep going"); c was
      -- given only what they gave up.
      local gave = 0
      for i = 1, 2 do
        local before = logs[i]:sub(1, (logs[i]:find("stopping %(SIG") or #logs[i] + 1) - 1)
        local held, partial, total = held_and_partial(before)
        assert.is_true(held > 0, "kept nothing:\n" .. before)
        assert.are.equal(0, total, "a revocation of everything held:\n" .. before)
        gave = gave + partial
        for _, c in ipairs(changes(before)) do
          if c[1] == "revoking" then assert.matches("incremental", c[3], before) end
        end
      end
      assert.is_true(gave >= 1, "no worker gave partitions to c:\n" .. logs[1] .. "\n----\n" .. logs[2])
      assert.matches("revoking %d+ partitions %(incremental: the others keep going%)", join_part(logs[1]) .. join_part(logs[2]))
    end)
  end

  it("range (eager, partition_assignor or FSTREAM_PARTITION_ASSIGNOR): every partition is revoked and assigned again, counts exact", function()
    local env = eos.names("eager")
    env.GUARANTEE = "at_least_once"
    env.COMMIT_INTERVAL = "0.5"
    local logs = three_workers(addr, env, "range")
    assert.matches("partition assignor: range %(eager rebalances%)", logs[1])
    for i = 1, 2 do
      local before = logs[i]:sub(1, (logs[i]:find("stopping %(SIG") or #logs[i] + 1) - 1)
      local _, partial, total = held_and_partial(before)
      assert.are.equal(0, partial, before)
      assert.is_true(total >= 1, before)
      assert.not_matches("incremental", before)
    end
  end)
end)
