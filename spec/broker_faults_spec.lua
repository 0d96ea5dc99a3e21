-- `fstream-lua broker --control FIFO` (fault injection on the standalone
-- embedded broker), and what it found: under at-least-once, a worker that
-- stopped on a failed delivery must not resume past the events whose outputs
-- were lost, even though its tables' changelog records of those events reached
-- the broker (RELIABILITY.md, "2. Broker faults").
local proc = require "spec.support.proc"
local eos = require "spec.support.eos"

local q = proc.quote

-- A broker with a control FIFO; returns it, its address and the FIFO's path.
local function broker(tag)
  local fifo = string.format("%s/control-%s-%d", proc.tmp, tag, math.random(1e6))
  local addr_file = fifo .. ".addr"
  local b = proc.spawn(string.format("%s broker --partitions 4 --control %s --address-file %s", proc.bin,
    q(fifo), q(addr_file)), "broker-control")
  for _ = 1, 100 do
    local a = (proc.read(addr_file) or ""):match("[%d%.]+:%d+")
    if a then return b, a, fifo end
    proc.sleep(0.05)
  end
  error("the broker did not start: " .. b:output())
end

-- Writes one command and returns the broker's answer line (level, text).
local function command(b, fifo, line)
  local before = #b:output()
  proc.write(fifo, line .. "\n")
  for _ = 1, 100 do
    local level, what = b:output():sub(before + 1):match("(%a+)%s+control: [^\n]-: ([^\n]*)\n")
    if level then return level, what end
    proc.sleep(0.05)
  end
  error("no answer to '" .. line .. "': " .. b:output())
end

describe("fstream-lua broker --control", function()
  after_each(eos.cleanup)

  it("makes the FIFO, answers every command with a log line, refuses bad ones, removes the FIFO at exit", function()
    local b, addr, fifo = broker("cmds")
    finally(function() b:stop(5) end)
    local st = proc.run("stat -c %F " .. q(fifo))
    assert.matches("fifo", st)
    local level, what = command(b, fifo, "errors Produce 3 NOT_LEADER_FOR_PARTITION")
    assert.are.same({ "info", "the next 3 Produce requests fail with NOT_LEADER_FOR_PARTITION" }, { level, what })
    level, what = command(b, fifo, "broker-errors 1 Fetch 2 REQUEST_TIMED_OUT")
    assert.are.equal("info", level)
    level, what = command(b, fifo, "pending 1 Fetch")
    assert.are.same({ "info", "2 Fetch errors pending on broker 1" }, { level, what })
    level, what = command(b, fifo, "down 1")
    assert.are.same({ "info", "broker 1 is down (its connections closed, new ones refused)" }, { level, what })
    local out, rc = proc.run(string.format("kcat -L -b %s -m 2", addr))
    assert.are_not.equal(0, rc, out)
    level = command(b, fifo, "up 1")
    assert.are.equal("info", level)
    out, rc = proc.run(string.format("kcat -L -b %s -m 5", addr))
    assert.are.equal(0, rc, out)
    level, what = command(b, fifo, "errors Produce 3 NO_SUCH_CODE")
    assert.are.same({ "warn", "unknown error code 'NO_SUCH_CODE' (NOT_LEADER_FOR_PARTITION, ...)" }, { level, what })
    level, what = command(b, fifo, "down 7")
    assert.are.same({ "warn", "no broker '7' (the cluster has 1..1)" }, { level, what })
    level, what = command(b, fifo, "explode")
    assert.are.equal("warn", level)
    assert.matches("unknown command", what)
    assert.are.equal(0, b:stop(10))
    assert.is_nil(proc.read(fifo))
    assert.matches("cannot stat", (proc.run("stat " .. q(fifo))))
  end)

  it("refuses a --control path that is not a FIFO", function()
    local path = proc.write(proc.tmp .. "/not-a-fifo", "")
    local out, rc = proc.run(string.format("%s broker --control %s", proc.bin, q(path)))
    assert.are_not.equal(0, rc)
    assert.matches("exists and is not a FIFO", out)
  end)

  -- Found by chaos/scenarios/broker.lua: after a Produce answered with
  -- TOPIC_AUTHORIZATION_FAILED librdkafka holds the topic in error, and the
  -- stop's checkpoint sends the table's records (which carry a header) there
  -- again. librdkafka 2.0.2's produceva freed such a message's headers twice
  -- when it refused it, and the worker died of SIGSEGV instead of exiting 1.
  it("exits 1, naming the changelog, when the broker refuses a table's record for good", function()
    local b, addr, fifo = broker("authz")
    finally(function() b:stop(5) end)
    local uniq = os.time() .. "-" .. math.random(1e6)
    -- No web: its __workers table's announcements would be Produce requests too.
    local env = { APP_ID = "authz-" .. uniq, IN = "authz-in-" .. uniq, WEB = "off" }
    local w = proc.worker("wordcount.lua", env, addr, { store = "lmdb://" .. proc.tmp .. "/" .. env.APP_ID })
    assert.truthy(w:wait_for("assigned %d+ partitions", 60), w:output())
    proc.sleep(1)
    -- Frozen while the input goes in: its next Produce request is the
    -- table's next checkpoint, and the injected error meets that one.
    w:signal("STOP")
    proc.produce_lines(addr, env.IN, { "a", "b", "c", "d", "e", "f", "g", "h" })
    assert.are.equal("info", (command(b, fifo, "broker-errors 1 Produce 1 TOPIC_AUTHORIZATION_FAILED")))
    w:signal("CONT")
    local rc = w:wait(60)
    assert.are.equal(1, rc, w:output())
    assert.matches("delivery to authz%-[%d%-]+%-word_counts%-changelog failed: Broker: Topic authorization failed",
      w:output())
    b:stop(10)
  end)

  -- Found by chaos/scenarios/broker.lua: the failed delivery stops the worker
  -- without committing, but its stop's checkpoint still writes the tables'
  -- changelog records, whose headers name input offsets past the events of
  -- the lost sends. The next start used to resume there ("resuming at N from
  -- local state") and never produced those outputs.
  it("at-least-once: after a send the broker refused for good, the restart processes its event again", function()
    local b, addr, fifo = broker("refused")
    finally(function() b:stop(5) end)
    local env = eos.names("refused")
    env.GUARANTEE = "at_least_once"
    env.COMMIT_INTERVAL = "60" -- no periodic checkpoint: the stop's is the only one
    proc.create_topics(addr, env.IN, env.OUT, env.CLOSED)
    local N = 400
    local p = eos.producer(addr, env.IN, 1, N, 5000, 8, (os.time() - 60) * 100)
    assert.are.equal(0, p:wait(60), p:output())
    -- The worker's first Produce request (its relay's outputs) fails for good.
    assert.are.equal("info", (command(b, fifo, "broker-errors 1 Produce 1 INVALID_MSG")))
    local store = string.format("%s/%s", proc.tmp, env.APP_ID)
    local w = eos.worker(env, addr, store)
    assert.are.equal(1, w:wait(60), w:output())
    assert.matches("delivery to " .. env.OUT:gsub("%p", "%%%0") .. " failed: Broker: Invalid message", w:output())
    local lost_first = #eos.compare(eos.inputs(addr, env.IN), eos.output_counts(addr, env.OUT)).missing
    assert.is_true(lost_first > 0, "the failed request carried no output")
    env.COMMIT_INTERVAL = "0.5"
    w = eos.worker(env, addr, store, "worker-again")
    local inputs = eos.inputs(addr, env.IN)
    local ok, status = eos.wait_drained(addr, env, inputs, 60, { w })
    assert.is_false(w:output():find("from local state", 1, true) ~= nil, w:output())
    assert.is_true(ok, status)
    assert.are.equal(0, w:stop())
    local r = eos.compare(inputs, eos.output_counts(addr, env.OUT))
    assert.are.equal(0, #r.missing, eos.describe(r))
    local t = eos.table_counts(env, store)
    for word, n in pairs(eos.word_counts(inputs)) do assert.is_true((t[word] or 0) >= n, word) end
    b:stop(10)
  end)
end)
