-- Request/reply under exactly-once on a real Apache Kafka (scripts/kafka,
-- started and stopped here): requests and replies are ordinary sends in each
-- worker's transactions, and the reply readers read committed data only.
-- FSTREAM_TEST_ASK_PORT / FSTREAM_TEST_ASK_DIR: the broker's port (default
-- 19600, the controller takes the next) and data dir (default spec/tmp/kafka-ask).
local proc = require "spec.support.proc"
local bin, fixtures = proc.bin, proc.root .. "/spec/fixtures"
local port = os.getenv("FSTREAM_TEST_ASK_PORT") or "19600"
local dir = os.getenv("FSTREAM_TEST_ASK_DIR") or (proc.tmp .. "/kafka-ask")
local uniq = tostring(os.time()) .. "-" .. tostring(math.random(1e6))

describe("ask under exactly_once on Kafka", function()
  local addr
  setup(function()
    local rc, out
    rc, out, addr = proc.kafka_start(port, dir)
    assert(rc == 0 and addr, out)
  end)
  teardown(function() proc.kafka_stop(dir) end)

  it("two workers answer each other's asks and joins, replies read committed", function()
    local id = "askeos-" .. uniq
    -- Static members (--worker-id), watched by spec/support/close_guard.c: no
    -- call into the consumer after the close's answer (see workers_spec).
    local guard = (os.getenv("FSTREAM_BUILD") or (proc.root .. "/build")) .. "/close_guard.so"
    local function start(who)
      return proc.spawn(string.format("env LD_PRELOAD=%s APP_ID=%s WHO=%s GUARANTEE=exactly_once %s worker "
        .. "%s/ask_pair.lua --broker kafka://%s --store lmdb://%s/askeos-%s-%s -l info --worker-id ask-%s",
        proc.quote(guard), id, who, bin, fixtures, addr, proc.tmp, who, uniq, who), "worker-askeos-" .. who)
    end
    local a, b = start("A"), start("B")
    finally(function()
      for _, p in ipairs { a, b } do if p:alive() then p:signal("KILL") end end
    end)
    local ok_a, ok_b = a:wait_for("DONE A", 180), b:wait_for("DONE B", 180)
    local out_a, out_b = a:output(), b:output()
    assert(ok_a, out_a)
    assert(ok_b, out_b)
    for who, out in pairs { A = out_a, B = out_b } do
      assert.matches("guarantee%s+exactly_once", out)
      assert.not_matches("ASK FAILED", out)
      local by = {}
      for i, r, w in out:gmatch("ASKED (%d+) %-> (%d+) BY (%a)") do
        assert.are.equal(2 * tonumber(i), tonumber(r))
        by[w] = true
      end
      assert.is_true(by.A and by.B, who .. " was not answered by both workers")
      local expect = {}
      for j = 1, 12 do expect[j] = string.format("%d:%d", 1000 + j, 2 * (1000 + j)) end
      assert.are.equal(table.concat(expect, " "), out:match("JOINED ([^\n]+)"))
      assert.not_matches("subscription changed", out)
    end
    assert.are.equal(0, a:stop(), a:output())
    assert.are.equal(0, b:stop(), b:output())
    assert.not_matches("close_guard", a:output())
    assert.not_matches("close_guard", b:output())

    -- Reply topics keep a day of replies, and a static member (--worker-id)
    -- finds its own again when restarted instead of leaving one behind.
    local topic_a = out_a:match("asks: replies to this worker come on (%S+)")
    assert.truthy(topic_a, out_a)
    assert.are_not.equal(topic_a, out_b:match("asks: replies to this worker come on (%S+)"))
    local cfg = proc.run(string.format("%s/scripts/kafka topic-config %s --port %s", proc.root, topic_a, port))
    assert.matches("retention%.ms=86400000", cfg)
    -- Stopped at once, the restarted member is still rejoining: the end of
    -- its join round (an assignment, a revocation) may come inside the close.
    local again = start("A")
    local topic_again = again:wait_for("asks: replies to this worker come on (%S+)", 60)
    assert.are.equal(0, again:stop(), again:output())
    assert.are.equal(topic_a, topic_again, again:output())
    assert.not_matches("close_guard", again:output())
  end)
end)
