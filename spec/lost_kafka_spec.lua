-- A worker that lost its partitions without knowing (its group session
-- expired while it could not talk to the broker: frozen here, cut off by the
-- network in chaos/scenarios/partition.lua) must not write to their table
-- changelogs once it finds out: another member owns them and has written
-- newer values since. Under at-least-once its revocation used to checkpoint
-- anyway — the last record of each held partition re-staged with this
-- worker's stale value — and the table went back (RELIABILITY.md, "3.
-- Network partition between hosts").
--
-- Real Kafka on FSTREAM_TEST_LOST_PORT (default 19720, the controller takes
-- the next), data in spec/tmp/kafka-lost.
local proc = require "spec.support.proc"
local eos = require "spec.support.eos"

local port = os.getenv("FSTREAM_TEST_LOST_PORT") or "19720"
local dir = proc.tmp .. "/kafka-lost"
local WORDS = 47

local function kafka(cmd)
  return proc.run(string.format("%s/scripts/kafka %s --port %s --dir %s", proc.root, cmd, port, proc.quote(dir)))
end

local function drained(addr, env, upto, procs)
  local inputs = eos.inputs(addr, env.IN)
  assert.are.equal(upto, #inputs)
  local ok, status = eos.wait_drained(addr, env, inputs, 90, procs)
  assert(ok, status)
  return inputs
end

-- Sends numbers from..to and waits for the producer to finish.
local function send(addr, env, from, to)
  local p = eos.producer(addr, env.IN, from, to, 1000, WORDS, (os.time() - 60) * 100)
  assert.are.equal(0, p:wait(60), p:output())
end

describe("a worker that lost its partitions (session expired)", function()
  local addr
  setup(function()
    local out, rc = kafka("start")
    assert(rc == 0, "could not start Kafka:\n" .. out)
    addr = out:match("(127%.0%.0%.1:%d+)%s*$")
  end)
  teardown(function() kafka("stop") end)
  after_each(eos.cleanup)

  it("writes nothing more to their changelogs under at-least-once", function()
    local env = eos.names("lost")
    env.GUARANTEE, env.COMMIT_INTERVAL = "at_least_once", "0.3"
    local a = eos.worker(env, addr, proc.tmp .. "/" .. env.APP_ID .. "-a", "worker-lost-a")
    assert.truthy(a:wait_for("assigned 4 partitions", 60), a:output())
    send(addr, env, 1, 500)
    drained(addr, env, 500, { a })
    proc.sleep(1) -- a's last checkpoint is committed: it has nothing left to write
    -- Frozen past its session timeout (6 s): b gets every partition and counts on.
    a:signal("STOP")
    local b = eos.worker(env, addr, proc.tmp .. "/" .. env.APP_ID .. "-b", "worker-lost-b")
    assert.truthy(b:wait_for("assigned 4 partitions", 60), b:output())
    send(addr, env, 501, 1000)
    local inputs = drained(addr, env, 1000, { b })
    -- a wakes up, finds its session gone and revokes. Then it goes for good.
    a:signal("CONT")
    assert.truthy(a:wait_for("revocation done", 60), a:output())
    proc.sleep(1)
    a:signal("KILL")
    proc.sleep(1)
    -- Every changelog record names the input offset its value reflects; a
    -- record of a's would name one from before b took over, after b's.
    local back, maxin = {}, {}
    for p, off, at in (eos.read(addr, env.changelog, "%p %o %h\n") or ""):gmatch("(%d+) (%d+) [^\n]-@(%d+);") do
      p, at = tonumber(p), tonumber(at)
      if at < (maxin[p] or -1) then back[#back + 1] = string.format("[%s] offset %s: input %d after %d", p, off, at, maxin[p]) end
      if at > (maxin[p] or -1) then maxin[p] = at end
    end
    assert.are.same({}, back, a:output():sub(-3000))
    local diff = eos.diff_counts(eos.word_counts(inputs), eos.changelog_counts(addr, env.changelog))
    assert.is_nil(diff, diff)
    assert.matches("assignment lost", a:output())
    assert.are.equal(0, b:stop(), b:output():sub(-3000))
  end)
end)
