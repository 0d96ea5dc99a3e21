-- Exactly-once on a real Kafka broker (KRaft, one node) that this spec starts
-- and stops itself (port 19493, controller 19494): a word count whose open
-- transaction is doomed three times mid-stream (rt:test_reset with
-- FSTREAM_TEST_HOOKS=1: the next checkpoint fails, aborts its transaction
-- and resets every partition to its last committed state). An independent
-- read_committed reader must see every count exactly once, the tables (a
-- partitioned and a global one) must be exact, and a read_uncommitted reader must see the aborted outputs too
-- (proof that the aborts discarded real data).
local proc = require "spec.support.proc"
local wc = require "spec.support.wordcount"

local bin, fixtures = proc.bin, proc.root .. "/spec/fixtures"
local uniq = tostring(os.time()) .. "-" .. tostring(math.random(1e6))
local port = os.getenv("FSTREAM_TEST_EOS_RESET_PORT") or "19493"
local dir = proc.tmp .. "/kafka-eos-reset"
local APP = fixtures .. "/eos_wordcount.lua"

local function settings(env)
  local s = {}
  for _, k in ipairs { "APP_ID", "IN", "OUT", "GUARANTEE", "THROTTLE", "RESET_AT", "GLOBAL", "SLOW_AT", "SLOW" } do
    if env[k] then s[#s + 1] = k .. "=" .. env[k] end
  end
  return table.concat(s, " ")
end

local function read_counts(env, store, tbl)
  return proc.table_rows(settings(env), APP, tbl or "word_counts", store)
end

local function consume(addr, topic, isolation)
  local out, rc = proc.run(string.format("kcat -C -b %s -t %s -X isolation.level=%s -o beginning -e -q -f '%%s\\n' 2>/dev/null",
    addr, proc.quote(topic), isolation))
  assert(rc == 0, out)
  local lines = {}
  for line in out:gmatch("[^\n]+") do lines[#lines + 1] = line end
  return lines
end

describe("exactly-once on a real Kafka broker, with aborted transactions", function()
  local addr
  proc.kafka_for(port, dir, function(a) addr = a end)

  -- Runs the word count over the corpus until its table holds every word,
  -- stops it, and checks the tables and the committed outputs; returns the log.
  local function run(env)
    local store = proc.tmp .. "/" .. env.APP_ID
    local lines, expected = wc.corpus("e")
    local w = proc.spawn(string.format("env FSTREAM_TEST_HOOKS=1 %s %s worker %s --broker kafka://%s --store lmdb://%s -l debug",
      settings(env), bin, APP, addr, store), "worker-" .. env.APP_ID)
    assert.truthy(w:wait_for("assigned 4 partitions", 60), w:output())
    proc.produce_lines(addr, env.IN, lines, { key_delim = ":" })
    local deadline = os.time() + 180
    local c
    repeat
      proc.sleep(1)
      c = read_counts(env, store)
    until wc.total(c) >= #lines or os.time() > deadline or not w:alive()
    assert.are.equal(0, w:stop())
    local log = w:output()
    assert.matches("final checkpoint done: offsets committed", log)
    -- The tables: exact (a global one too: a reset drops its uncommitted writes).
    assert.are.same(expected, read_counts(env, store))
    if env.GLOBAL then assert.are.same(expected, read_counts(env, store, "totals")) end
    -- The outputs a read_committed reader sees: "word n" for n = 1..count, each once.
    local committed = consume(addr, env.OUT, "read_committed")
    local seen, dups = {}, 0
    for _, l in ipairs(committed) do
      if seen[l] then dups = dups + 1 end
      seen[l] = true
    end
    assert.are.equal(0, dups)
    assert.are.equal(#lines, #committed)
    for word, n in pairs(expected) do
      for i = 1, n do assert(seen[word .. " " .. i], word .. " " .. i .. " is missing") end
    end
    -- The aborted transactions' outputs are in the log, hidden from read_committed.
    assert.is_true(#consume(addr, env.OUT, "read_uncommitted") > #committed)
    return log
  end

  it("keeps a word count's outputs and tables exact across three aborts and resets", function()
    local id = "eosrst-" .. uniq
    local log = run { APP_ID = id, IN = id .. "-in", OUT = id .. "-out", THROTTLE = "0.05",
      RESET_AT = "3000,25000,60000", GLOBAL = "1" }
    assert.matches("guarantee  exactly_once, commit_interval 0.1 s", log)
    assert.matches("exactly%-once: transactional.id eosrst%-[%d%-]+%-%x+", log)
    assert.matches("checkpoint transaction committed in %d+ ms %(%d+ offsets, %d+ messages%)", log)
    local aborts = 0
    for _ in log:gmatch("exactly%-once: the periodic checkpoint failed %(a test doomed the transaction: after %d+ events%): "
      .. "its transaction was aborted and 4 partitions were reset to their last committed state") do
      aborts = aborts + 1
    end
    assert.are.equal(3, aborts, log)
  end)

  it("fails the checkpoint an event holds up past 5 s, aborts and resets: still exact", function()
    -- Event 5000 counts, sends, then sleeps 6 s (once): the checkpoint waiting
    -- for it gives up, and the event is processed again after the reset.
    local id = "eosslow-" .. uniq
    local log = run { APP_ID = id, IN = id .. "-in", OUT = id .. "-out", THROTTLE = "0.05",
      SLOW_AT = "5000", SLOW = "6" }
    assert.matches("exactly%-once: the periodic checkpoint failed %(agents were still in the middle of an event 5000 ms "
      .. "after the checkpoint began[^\n]*%): its transaction was aborted and 4 partitions were reset", log)
  end)
end)
