-- The kafka transport's transactions (txn_init/begin/seal/commit/abort), driven
-- by build/txn-probe (spec/support/txn_probe.c) against a real Apache Kafka this
-- spec starts and stops; what became visible is checked with an independent
-- read_committed reader (kcat). Also: exactly-once is refused on memory:// and
-- on `fstream-lua broker`, and a table recovers from a transactional changelog
-- (whose last offset is a marker no reader receives).
local proc = require "spec.support.proc"

local uniq = tostring(os.time()) .. "-" .. tostring(math.random(1e6))
local port = os.getenv("FSTREAM_TEST_TXN_KAFKA_PORT") or "19296"
local dir = proc.tmp .. "/kafka-txn"
local probe = (os.getenv("FSTREAM_BUILD") or (proc.root .. "/build")) .. "/txn-probe"
local fixtures = proc.root .. "/spec/fixtures"

-- Runs the probe: its output (stdout + librdkafka's log on stderr), exit code.
local function run_probe(url, mode, topic, id, args, env)
  -- Leaks count as failures (an ASan build of the probe checks them).
  return proc.run(string.format("env ASAN_OPTIONS=detect_leaks=1 %s %s %s %s %s %s %s", env or "", probe, proc.quote(url), mode,
    proc.quote(topic), proc.quote(id), args or ""))
end

-- Values a read_committed reader sees, sorted.
local function committed(addr, topic)
  local out = proc.run(string.format("kcat -C -b %s -t %s -X isolation.level=read_committed -o beginning -e -q -f '%%s\\n' 2>/dev/null",
    addr, proc.quote(topic)))
  local values = {}
  for line in out:gmatch("[^\n]+") do values[#values + 1] = line end
  table.sort(values)
  return values
end

-- Values of every record written, committed or not (read_uncommitted).
local function written(addr, topic)
  local out = proc.run(string.format("kcat -C -b %s -t %s -X isolation.level=read_uncommitted -o beginning -e -q -f '%%s\\n' 2>/dev/null",
    addr, proc.quote(topic)))
  local n = 0
  for _ in out:gmatch("[^\n]+") do n = n + 1 end
  return n
end

describe("the kafka transport's transactions", function()
  local addr, url
  proc.kafka_for(port, dir, function(a) addr, url = a, "kafka://" .. a end)

  it("commits a transaction: its sends become visible, the ones after txn_seal wait for the next one", function()
    local topic = "txn-commit-" .. uniq
    -- A small librdkafka queue: sends wait in the overflow queue before the
    -- seal and must still be part of the sealed transaction.
    local out, rc = run_probe(url, "commit", topic, "txn-commit-" .. uniq, "200 50",
      "FSTREAM_KAFKA_PRODUCER=queue.buffering.max.messages=10")
    assert.are.equal(0, rc, out)
    assert.matches("a commit OK", out)
    assert.matches("a counts ok=200 aborted=0 failed=0 undelivered=50 backlog=50", out)
    -- The 50 sent after the seal were discarded by the abort that followed.
    assert.matches("a counts ok=200 aborted=50 failed=0 undelivered=0 backlog=0", out)
    local values = committed(addr, topic)
    assert.are.equal(200, #values)
    for _, v in ipairs(values) do assert.matches("^c%-%d+$", v) end
  end)

  it("aborts a transaction: nothing becomes visible and every send is reported aborted", function()
    local topic = "txn-abort-" .. uniq
    -- A long linger keeps the sends in librdkafka's queue when the abort purges it.
    local out, rc = run_probe(url, "abort", topic, "txn-abort-" .. uniq, "20 5",
      "FSTREAM_KAFKA_PRODUCER=linger.ms=2000")
    assert.are.equal(0, rc, out)
    assert.matches("a abort OK", out)
    -- 20 in the transaction, 5 sent after txn_abort before the next txn_begin.
    assert.matches("a counts ok=0 aborted=25 failed=0 undelivered=0", out)
    assert.matches("a commit OK", out)
    assert.are.same({ "after-abort" }, committed(addr, topic))
  end)

  it("a second producer with the same transactional.id fences the first, whose abort recreates its producer", function()
    local topic = "txn-fence-" .. uniq
    local out, rc = run_probe(url, "fence", topic, "txn-fence-" .. uniq, "10 3")
    assert.are.equal(0, rc, out)
    assert.matches("a commit FENCED", out)
    assert.matches("a abort OK aborted %(producer recreated%)", out)
    assert.matches("a commit OK", out)
    assert.not_matches("transport%-error%-fatal", out)
    -- The zombie's 10 were written but never committed.
    assert.are.equal(13, written(addr, topic))
    assert.are.same({ "after-fence-0", "after-fence-1", "after-fence-2" }, committed(addr, topic))
  end)

  it("a send the broker refuses fails the transaction: a delivery failure, the commit says ABORTABLE", function()
    for round = 1, 2 do -- the send after the abort lands on a random partition: twice
      local topic = "txn-doomed-" .. round .. "-" .. uniq
      local out, rc = run_probe(url, "doomed", topic, "txn-doomed-" .. uniq)
      assert.are.equal(0, rc, out)
      -- The 2 MB send is refused for itself: a delivery failure (as under
      -- at-least-once), not an aborted send; the small one is delivered.
      assert.matches("a delivery%-failed Broker: Message size too large", out)
      assert.matches("a counts ok=1 aborted=0 failed=1 undelivered=0", out)
      assert.matches("send to txn%-doomed%-[%d%-]+%[%d%] failed: [^\n]*; the transaction will be aborted", out)
      assert.matches("a commit ABORTABLE", out)
      -- The failed send's sequence number would fail the next transaction:
      -- the abort starts a new producer epoch.
      assert.matches("a abort OK aborted %(producer recreated%)", out)
      assert.are.same({ "after-doomed" }, committed(addr, topic))
    end
  end)

  it("answers a committed-offsets question only once a transaction's pending offsets are committed", function()
    -- Another producer holds offset 5 of partition 0 in an open transaction for
    -- 2 s; a stable-offsets question must not be answered with the older
    -- offset (nor with an error) meanwhile.
    local topic = "txn-unstable-" .. uniq
    local out, rc = run_probe(url, "unstable", topic, "txn-unstable-" .. uniq)
    assert.are.equal(0, rc, out)
    assert.matches("a committed answered=1 err=0 offset=5 partition%-err=0", out)
  end)

  it("survives a broker stopped for longer than the transaction timeout: abort, new producer, exact output", function()
    local topic = "txn-loop-" .. uniq
    local p = proc.spawn(string.format("env ASAN_OPTIONS=detect_leaks=1 %s %s loop %s %s 150 50", probe,
      proc.quote(url), proc.quote(topic), proc.quote("txn-loop-" .. uniq)), "txn-probe-loop")
    assert.truthy(p:wait_for("loop%-ok 20\n", 60), p:output())
    local rc, out = proc.kafka_stop(dir)
    assert.are.equal(0, rc, out)
    -- Longer than transaction.timeout.ms and message.timeout.ms (10 s): the
    -- open transaction's sends time out, its abort fails (the coordinator
    -- has lost it), only a new producer goes on.
    proc.sleep(15)
    rc, out = proc.kafka_start(port, dir)
    assert.are.equal(0, rc, out)
    assert.are.equal(0, p:wait(180), p:output())
    out = p:output()
    assert.matches("a txn %d+ commit ABORTABLE", out)
    assert.matches("a txn %d+ abort OK", out)
    assert.not_matches("transport%-error%-fatal", out)
    local ok = {}
    local n = 0
    for i in out:gmatch("loop%-ok (%d+)") do ok[tonumber(i)] = true; n = n + 1 end
    assert.truthy(n > 20 and n < 150, out)
    -- Exactly the committed transactions' sends, once each.
    local seen = {}
    for _, v in ipairs(committed(addr, topic)) do
      assert.is_nil(seen[v], "duplicate " .. v)
      seen[v] = true
      local i = tonumber(v:match("^t(%d+)%-%d+$"))
      assert.truthy(i and ok[i], "not committed: " .. v)
    end
    for i in pairs(ok) do
      for j = 0, 49 do assert.truthy(seen["t" .. i .. "-" .. j], "missing t" .. i .. "-" .. j) end
    end
  end)

  it("a zombie whose partitions the group took away cannot commit its transaction", function()
    local topic, group = "txn-lost-" .. uniq, "txn-lost-group-" .. uniq
    local a = proc.spawn(string.format("env ASAN_OPTIONS=detect_leaks=1 TXN_PROBE_GROUP=%s %s %s lost %s %s 0 5",
      group, probe, proc.quote(url), proc.quote(topic), proc.quote("txn-lost-a-" .. uniq)), "txn-probe-lost")
    assert.truthy(a:wait_for("ready\n", 60), a:output())
    -- Stopped past the session timeout (6 s): another member takes both partitions.
    a:signal("STOP")
    local b = proc.spawn(string.format("env TXN_PROBE_GROUP=%s %s %s member %s %s 60", group, probe,
      proc.quote(url), proc.quote(topic), proc.quote("txn-lost-b-" .. uniq)), "txn-probe-member")
    local got = b:wait_for("a assigned 2", 60)
    a:signal("CONT")
    assert.truthy(got, b:output())
    local rc = a:wait(90)
    b:signal("TERM")
    b:wait(10)
    local out = a:output()
    assert.are.equal(0, rc, out)
    assert.matches("partitions lost", out)
    assert.matches("a commit FENCED this worker lost its partitions", out)
    assert.matches("a abort OK", out)
    assert.are.same({}, committed(addr, topic))
  end)

  it("refuses exactly-once on memory:// and on `fstream-lua broker`, saying why and what to use", function()
    local out, rc = run_probe("memory://", "refuse", "t", "txn-refuse-" .. uniq)
    assert.are.equal(0, rc, out)
    assert.matches("refused exactly%-once is not available on memory://", out)
    assert.matches("writes no commit or abort markers", out)
    assert.matches("scripts/kafka start", out)
    assert.matches("at_least_once", out)

    local broker, baddr = proc.broker({}, 2)
    out, rc = run_probe("kafka://" .. baddr, "refuse", "t", "txn-refuse-" .. uniq)
    broker:stop()
    assert.are.equal(0, rc, out)
    assert.matches("refused exactly%-once is not available on " .. baddr:gsub("%.", "%%.") .. ": it is an `fstream%-lua broker`", out)
    assert.matches("at_least_once", out)

    -- A real Kafka is accepted (the refusal is not unconditional).
    out, rc = run_probe(url, "refuse", "txn-refuse-" .. uniq, "txn-refuse-" .. uniq)
    assert.are.equal(1, rc, out)
    assert.matches("FAIL txn_init accepted", out)
  end)

  it("recovers a table from a transactional changelog that ends with markers", function()
    local app = "txn-table-" .. uniq
    local changelog = app .. "-word_counts-changelog"
    -- 40 committed records, then the same keys again in an aborted transaction.
    local out, rc = run_probe(url, "table", changelog, app, "40", "TXN_PROBE_PARTITIONS=4")
    assert.are.equal(0, rc, out)
    local env = string.format("APP_ID=%s IN=%s", app, "txn-table-in-" .. uniq)
    out, rc = proc.run(string.format("%s/scripts/kafka create-topic %s 4 --port %s", proc.root, "txn-table-in-" .. uniq, port))
    assert.are.equal(0, rc, out)
    local store = proc.tmp .. "/txn-table-" .. uniq
    local w = proc.spawn(string.format("env %s %s worker %s/wordcount.lua --broker %s --store lmdb://%s -l info",
      env, proc.bin, fixtures, url, store), "worker-txn-table")
    -- Each replay ends at the changelog's end although no record sits at its
    -- last offset (without the end-of-partition rule it stalls, then fails).
    assert.truthy(w:wait_for(("recovered table word_counts%[%d%].-"):rep(4), 25), w:output())
    assert.truthy(w:wait_for("assigned 4 partitions", 30), w:output())
    assert.are.equal(0, w:stop(), w:output())
    assert.not_matches("stopped at", w:output())
    local total = 0
    for n in w:output():gmatch("recovered table word_counts%[%d%]: (%d+) records") do total = total + tonumber(n) end
    assert.are.equal(40, total)
    -- The committed values, none of the aborted ones.
    out, rc = proc.run(string.format("env %s %s table %s/wordcount.lua word_counts --store lmdb://%s 2>/dev/null",
      env, proc.bin, fixtures, store))
    assert.are.equal(0, rc, out)
    local seen = 0
    for key, value in out:gmatch('"key":"k(%d+)".-"value":(%d+)') do
      assert.are.equal(tonumber(key) + 1, tonumber(value))
      seen = seen + 1
    end
    assert.are.equal(40, seen)
  end)
end)
