-- Exactly-once after a broker outage, on a real Kafka broker that this spec
-- starts and stops itself (port 19810, controller 19811): the backlog an
-- outage leaves must drain on a broker that delivers slowly.
--
-- The outage's backlog is a burst of inputs written at once while the
-- worker runs; the slow broker is Kafka's own byte-rate quota on the worker's
-- producer (client.id = the app id). The worker's producer sends small
-- requests (FSTREAM_KAFKA_PRODUCER: 100 messages per partition batch, one
-- request in flight), so the quota paces them evenly instead of letting one
-- large request through and then muting the connection. commit_interval is
-- 1 s, so that without a bound one transaction takes in about everything the
-- worker fetched.
--
-- A transaction must deliver within FS_CKPT_TXN_DELIVER_MS (10 s). Before the
-- fix the transaction after each reset took in the whole backlog again, never
-- delivered it in time, aborted, and did so forever (RELIABILITY.md, scenario
-- 2). Now a failed (or slow) transaction lowers what the next ones take in,
-- and the backlog drains: every input's output exactly once, every due window
-- closed once, the changelog and the table exact.
local proc = require "spec.support.proc"
local eos = require "spec.support.eos"

local port = os.getenv("FSTREAM_TEST_EOS_OUTAGE_PORT") or "19810"
local dir = proc.tmp .. "/kafka-eos-outage"
local N = 10000           -- the backlog: about 500 KB of outputs, changelog records and closes
local RATE = 10000        -- bytes/s the broker takes from the worker's producer
local DRAIN_S = 120       -- about a minute here; before the fix it did not drain in 120 s

local function configs(addr, what, app_id)
  local out, rc = proc.run(string.format(
    "%s/scripts/kafka run kafka.admin.ConfigCommand --bootstrap-server %s --alter %s --entity-type clients --entity-name %s",
    proc.root, addr, what, proc.quote(app_id)))
  assert(rc == 0, out)
end

describe("exactly-once on a slow broker after an outage", function()
  local addr
  setup(function()
    local rc, out
    rc, out, addr = proc.kafka_start(port, dir)
    assert(rc == 0 and addr, "could not start Kafka:\n" .. out)
  end)
  teardown(function()
    eos.cleanup()
    proc.kafka_stop(dir)
  end)

  it("drains the backlog in transactions that fit the deadline, each input once", function()
    local env = eos.names("outage")
    env.GUARANTEE = "exactly_once"
    env.COMMIT_INTERVAL = "1"
    local store = proc.tmp .. "/" .. env.APP_ID
    configs(addr, "--add-config producer_byte_rate=" .. RATE, env.APP_ID)
    local w = proc.spawn(string.format(
      "env %s FSTREAM_KAFKA_PRODUCER=%s %s worker %s --broker kafka://%s --store lmdb://%s -l info",
      eos.envs(env), proc.quote("batch.num.messages=100,max.in.flight.requests.per.connection=1"),
      proc.bin, eos.fixture, addr, proc.quote(store)), "worker-outage")
    eos.spawned[#eos.spawned + 1] = w
    assert.truthy(w:wait_for("assigned 4 partitions", 90), w:output())
    -- The backlog, at once (event time moves 0.02 s per input: 120 s of windows).
    local p = eos.producer(addr, env.IN, 1, N, 100000, 16, (os.time() - 600) * 100)
    assert.are.equal(0, p:wait(60), p:output())
    local inputs = eos.inputs(addr, env.IN)
    assert.are.equal(N, #inputs)
    local drained, status = eos.wait_drained(addr, env, inputs, DRAIN_S, { w })
    -- The quota goes before the stop: the stop's checkpoint is not under test.
    configs(addr, "--delete-config producer_byte_rate", env.APP_ID)
    local log = w:output()
    assert.is_true(drained, "not drained in " .. DRAIN_S .. " s: " .. tostring(status) .. "\n" .. log:sub(-3000))
    assert.are.equal(0, w:stop(60), w:output():sub(-2000))
    -- The bound engaged: the slow broker made it shrink (a transaction that
    -- failed, or one that took more than half the deadline).
    assert.matches("a transaction now takes in at most %d+ messages", log)
    -- Exactly once, read_committed by kcat, and the table as stored.
    local r = eos.compare(inputs, eos.output_counts(addr, env.OUT))
    assert.are.equal(0, #r.missing, eos.describe(r))
    assert.are.equal(0, r.dups, eos.describe(r))
    assert.are.equal(0, r.unknown, eos.describe(r))
    local wr = eos.check_windows(inputs, eos.closed(addr, env.CLOSED))
    assert.are.equal(0, wr.missing + wr.dups + wr.wrong + wr.unknown, eos.describe_windows(wr))
    assert.is_true(wr.due > 0)
    local expected = eos.word_counts(inputs)
    assert.are.same(expected, eos.changelog_counts(addr, env.changelog))
    assert.are.same(expected, eos.table_counts(env, store))
  end)
end)
