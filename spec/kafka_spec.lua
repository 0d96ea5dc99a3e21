-- Integration: the worker against a real Apache Kafka broker (KRaft, single
-- node) that this spec starts and stops with scripts/kafka.
local proc = require "spec.support.proc"

local uniq = tostring(os.time()) .. "-" .. tostring(math.random(1e6))
local port = os.getenv("FSTREAM_TEST_KAFKA_PORT") or "19192"
local dir = proc.tmp .. "/kafka"

describe("a worker on a real Kafka broker", function()
  local addr
  proc.kafka_for(port, dir, function(a) addr = a end)

  it("creates its topics, processes 10,000 messages, and resumes after a clean stop", function()
    local env = { APP_ID = "kafka-relay-" .. uniq, IN = "kin-" .. uniq, OUT = "kout-" .. uniq }
    local w = proc.worker("relay.lua", env, addr, { create = false })
    assert.truthy(w:wait_for("assigned %d+ partitions", 60), w:output())
    -- The worker created both topics with the app's partition count.
    local md = proc.run(string.format("kcat -L -b %s -t %s", addr, env.IN))
    assert.matches("with 4 partitions", md)
    proc.produce_lines(addr, env.IN, proc.numbers(1, 10000))
    local out = proc.wait_count(addr, env.OUT, 10000, 120)
    assert.are.equal(10000, #out)
    local c = proc.counts(out, "out:")
    for i = 1, 10000 do assert(c[i] == 1, "message " .. i .. " seen " .. tostring(c[i]) .. " times") end
    assert.are.equal(0, w:stop())

    proc.produce_lines(addr, env.IN, proc.numbers(10001, 10100))
    local w2 = proc.worker("relay.lua", env, addr, { create = false })
    out = proc.wait_count(addr, env.OUT, 10100, 120)
    proc.sleep(1.5)
    out = proc.consume_all(addr, env.OUT)
    assert.are.equal(0, w2:stop())
    assert.are.equal(10100, #out)
  end)

  it("loses nothing when killed with SIGKILL mid-stream", function()
    local n = 20000
    local env = { APP_ID = "kafka-kill-" .. uniq, IN = "kkin-" .. uniq, OUT = "kkout-" .. uniq, THROTTLE = "0.2" }
    local w = proc.worker("relay.lua", env, addr, { create = false })
    assert.truthy(w:wait_for("assigned %d+ partitions", 60), w:output())
    proc.produce_lines(addr, env.IN, proc.numbers(1, n))
    -- Kill as soon as 4,000 are out (reading them all first, while the worker
    -- goes on writing, could take until the stream is over on a loaded machine).
    proc.wait_messages(addr, env.OUT, 4000, 120)
    w:signal("KILL")
    assert.are.equal(137, w:wait(10))
    local partial = #proc.consume_all(addr, env.OUT)
    assert.is_true(partial < n)
    env.THROTTLE = "0"
    local w2 = proc.worker("relay.lua", env, addr, { create = false })
    local c = proc.wait_all_seen(addr, env.OUT, "out:", n, 120)
    assert.are.equal(0, w2:stop())
    local dups = 0
    for i = 1, n do
      assert(c[i], "message " .. i .. " was lost")
      assert(c[i] <= 2, "message " .. i .. " processed " .. c[i] .. " times")
      dups = dups + c[i] - 1
    end
    assert.is_true(dups < partial, string.format("%d duplicates after %d outputs", dups, partial))
  end)
end)

describe("a table on a real Kafka broker", function()
  local wc = require "spec.support.wordcount"
  local addr
  proc.kafka_for(port, dir, function(a) addr = a end)

  it("counts exactly, keeps a compacted changelog, and rebuilds from it", function()
    local env = { APP_ID = "kwc-" .. uniq, IN = "kwc-in-" .. uniq }
    local store = proc.tmp .. "/kwc-" .. uniq
    local lines, expected = wc.corpus("q")
    local w = wc.worker(env, addr, store, { create = false })
    assert.truthy(w:wait_for("assigned %d+ partitions", 60), w:output())
    proc.produce_lines(addr, env.IN, lines, { key_delim = ":" })
    wc.wait_total(env, #lines, 120, w, store)
    assert.are.equal(0, w:stop())
    assert.are.same(expected, wc.read_counts(env, store))

    local changelog = env.APP_ID .. "-word_counts-changelog"
    local cfg, rc = proc.run(string.format("%s/scripts/kafka topic-config %s --port %s", proc.root, changelog, port))
    assert.are.equal(0, rc, cfg)
    assert.matches("cleanup.policy=compact", cfg)
    local md = proc.run(string.format("kcat -L -b %s -t %s", addr, changelog))
    assert.matches("with 4 partitions", md)

    proc.run(string.format("env APP_ID=%s IN=%s %s reset %s/spec/fixtures/wordcount.lua --store lmdb://%s",
      env.APP_ID, env.IN, proc.bin, proc.root, store))
    w = wc.worker(env, addr, store, { create = false })
    assert.truthy(w:wait_for("recovered table word_counts%[3%]", 60), w:output())
    proc.sleep(1)
    assert.are.equal(0, w:stop())
    assert.are.same(expected, wc.read_counts(env, store))
  end)

  -- The input exists with 3 partitions; the app says topic_partitions = 8 (the default).
  it("takes a pre-created input's partition count for the table and its changelog, across restarts", function()
    local env = { APP_ID = "kpc-" .. uniq, IN = "kpc-in-" .. uniq, TOPIC_PARTITIONS = "default" }
    local store = proc.tmp .. "/kpc-" .. uniq
    local out, rc = proc.run(string.format("%s/scripts/kafka create-topic %s 3 --port %s", proc.root, env.IN, port))
    assert.are.equal(0, rc, out)
    local lines, expected = { table.unpack((wc.corpus("p")), 1, 20000) }, {}
    for _, l in ipairs(lines) do local word = l:match("^[^:]+"); expected[word] = (expected[word] or 0) + 1 end
    local first, rest = { table.unpack(lines, 1, 5000) }, { table.unpack(lines, 5001) }
    local w = wc.worker(env, addr, store, { create = false })
    assert.truthy(w:wait_for("assigned 3 partitions", 60), w:output())
    assert.matches(env.IN:gsub("%-", "%%-") .. " %(key raw, value raw, 3 partitions%)", w:output())
    assert.matches("word_counts %(3 partitions", w:output())
    proc.produce_lines(addr, env.IN, first, { key_delim = ":" })
    wc.wait_total(env, #first, 120, w, store)
    assert.are.equal(0, w:stop())
    local md = proc.run(string.format("kcat -L -b %s -t %s-word_counts-changelog", addr, env.APP_ID))
    assert.matches("with 3 partitions", md)

    w = wc.worker(env, addr, store, { create = false })
    assert.truthy(w:wait_for("assigned 3 partitions", 60), w:output())
    proc.produce_lines(addr, env.IN, rest, { key_delim = ":" })
    wc.wait_total(env, #lines, 120, w, store)
    assert.are.equal(0, w:stop())
    assert.are.same(expected, wc.read_counts(env, store))

    -- Declared against the input: refused at start-up with both counts.
    env.TABLE_PARTITIONS = "8"
    out, rc = proc.run(string.format("env %s timeout 60 %s worker %s/spec/fixtures/wordcount.lua --broker kafka://%s --store lmdb://%s",
      wc.settings(env), proc.bin, proc.root, addr, store))
    assert.are.equal(1, rc, out)
    assert.matches("table word_counts declares partitions = 8 but its input has 3 partitions", out)
  end)
end)
