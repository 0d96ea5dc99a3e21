-- Tables end to end: LMDB files, changelogs on a broker process, restarts,
-- rebuilds, rebalances and kill -9, checked with `fstream-lua table`.
local proc = require "spec.support.proc"
local bin, fixtures = proc.bin, proc.root .. "/spec/fixtures"
local uniq = tostring(os.time()) .. "-" .. tostring(math.random(1e6))
local json = require("fstream.core").json

local wc = require "spec.support.wordcount"
local corpus, wc_worker, read_counts, total, wait_total = wc.corpus, wc.worker, wc.read_counts, wc.total, wc.wait_total

describe("a table on a standalone embedded broker", function()
  local broker, addr
  setup(function() broker, addr = proc.broker({}, 4) end)
  teardown(function() broker:stop() end)

  it("counts 99,681 words exactly, keeps them across a restart, and rebuilds them from the changelog", function()
    local env = { APP_ID = "wc-" .. uniq, IN = "wc-in-" .. uniq }
    local store = proc.tmp .. "/wc-store-" .. uniq
    local lines, expected = corpus("w")
    proc.produce_lines(addr, env.IN, lines, { key_delim = ":" })
    local w = wc_worker(env, addr, store)
    local c = wait_total(env, #lines, 90, w, store)
    assert.are.equal(0, w:stop())
    assert.matches("tables: %d+ changelog records", w:output())
    c = read_counts(env, store)
    assert.are.same(expected, c)

    -- Restart with more input: the counts carry on from the stored values.
    proc.produce_lines(addr, env.IN, { "w1:w1", "w446:w446", "new:new" }, { key_delim = ":" })
    w = wc_worker(env, addr, store)
    c = wait_total(env, #lines + 3, 60, w, store)
    assert.are.equal(0, w:stop())
    expected.w1, expected.w446, expected.new = expected.w1 + 1, expected.w446 + 1, 1
    assert.are.same(expected, read_counts(env, store))

    -- Local files gone: the worker rebuilds them from the changelog, exactly.
    local out, rc = proc.run(string.format("env APP_ID=%s IN=%s %s reset %s/wordcount.lua --store lmdb://%s",
      env.APP_ID, env.IN, bin, fixtures, store))
    assert.are.equal(0, rc, out)
    assert.are.same({}, read_counts(env, store))
    w = wc_worker(env, addr, store)
    -- Every partition recovered (a stop during recovery would interrupt it).
    assert.truthy(w:wait_for(("recovered table word_counts%[%d%].-"):rep(4), 60), w:output())
    proc.sleep(1)
    assert.are.equal(0, w:stop())
    assert.matches("recovering table word_counts%[%d%]: %d+ changelog records", w:output())
    assert.are.same(expected, read_counts(env, store))
  end)

  -- Under load the mock group rebalances several times while B joins; a
  -- partition paused by back-pressure and handed back to the same worker must be
  -- fetched again (librdkafka keeps the pause flag across assignments).
  it("stays exact when one of two workers leaves mid-stream", function()
    local env = { APP_ID = "wc2-" .. uniq, IN = "wc2-in-" .. uniq, THROTTLE = "0.05" }
    local s1, s2 = proc.tmp .. "/wc2-a-" .. uniq, proc.tmp .. "/wc2-b-" .. uniq
    local lines, expected = corpus("r")
    proc.produce_lines(addr, env.IN, lines, { key_delim = ":" })
    local a = wc_worker(env, addr, s1)
    assert.truthy(a:wait_for("assigned 4 partitions", 30), a:output())
    local b = wc_worker(env, addr, s2)
    -- Both share the partitions, then A leaves while input is still flowing.
    assert.truthy(b:wait_for("assigned 2 partitions", 60), b:output())
    proc.sleep(2)
    assert.are.equal(0, a:stop())
    assert.truthy(b:wait_for("assigned 4 partitions", 60), b:output())
    env.THROTTLE = "0"
    wait_total(env, #lines, 90, b, s2)
    assert.are.equal(0, b:stop())
    -- B now holds every partition: its store alone has every word, counted once.
    assert.are.same(expected, read_counts(env, s2))
    assert.matches("recovered table word_counts", b:output())
  end)

  -- A keeps partitions it held before B joined. Its fetching is paused by
  -- back-pressure (the throttled agent has a full queue) when it revokes them.
  it("stays exact when the second worker leaves again and the first keeps its partitions", function()
    local env = { APP_ID = "wc4-" .. uniq, IN = "wc4-in-" .. uniq, THROTTLE = "0.05" }
    local s1, s2 = proc.tmp .. "/wc4-a-" .. uniq, proc.tmp .. "/wc4-b-" .. uniq
    local lines, expected = corpus("s")
    proc.produce_lines(addr, env.IN, lines, { key_delim = ":" })
    local a = wc_worker(env, addr, s1)
    assert.truthy(a:wait_for("assigned 4 partitions", 30), a:output())
    proc.sleep(2)
    local b = wc_worker(env, addr, s2)
    assert.truthy(b:wait_for("assigned 2 partitions", 60), b:output())
    proc.sleep(1)
    assert.are.equal(0, b:stop())
    assert.truthy(a:wait_for("assigned 4 partitions.*assigned 4 partitions", 60), a:output())
    wait_total(env, #lines, 90, a, s1)
    assert.are.equal(0, a:stop())
    assert.are.same(expected, read_counts(env, s1))
  end)

  it("loses no word when killed with SIGKILL; over-counts only what followed the last checkpoint", function()
    local env = { APP_ID = "wc3-" .. uniq, IN = "wc3-in-" .. uniq, THROTTLE = "0.05" }
    local store = proc.tmp .. "/wc3-" .. uniq
    local lines, expected = corpus("k")
    proc.produce_lines(addr, env.IN, lines, { key_delim = ":" })
    local w = wc_worker(env, addr, store)
    wait_total(env, 20000, 90, w, store)
    w:signal("KILL")
    assert.are.equal(137, w:wait(10))
    local before = total(read_counts(env, store))
    assert.is_true(before < #lines, "finished before the kill")
    env.THROTTLE = "0"
    w = wc_worker(env, addr, store)
    local c = wait_total(env, #lines, 90, w, store)
    proc.sleep(1)
    assert.are.equal(0, w:stop())
    c = read_counts(env, store)
    local over = 0
    for word, n in pairs(expected) do
      assert(c[word] and c[word] >= n, word .. " lost: " .. tostring(c[word]) .. " < " .. n)
      over = over + c[word] - n
    end
    -- Re-processed events are those after the last checkpoint (0.5 s of a throttled stream).
    assert.is_true(over < 10000, "over-counted by " .. over)
  end)

  it("counts words named like the table's own fields and methods, and restarts with them", function()
    local env = { APP_ID = "wcn-" .. uniq, IN = "wcn-in-" .. uniq }
    local store = proc.tmp .. "/wcn-" .. uniq
    local words = { "the", "name", "partitions", "update", "items", "id", "parts", "app", "changelog",
      "window", "default", "get", "set", "delete", "global", "__index", "_on" }
    local lines, expected = {}, {}
    for i, word in ipairs(words) do
      expected[word] = i
      for _ = 1, i do lines[#lines + 1] = word .. ":" .. word end
    end
    for round = 1, 2 do
      proc.produce_lines(addr, env.IN, lines, { key_delim = ":" })
      local w = wc_worker(env, addr, store)
      wait_total(env, round * #lines, 60, w, store)
      assert.are.equal(0, w:stop())
      local want = {}
      for word, n in pairs(expected) do want[word] = round * n end
      assert.are.same(want, read_counts(env, store))
    end
  end)

  it("lists raw keys that start with a NUL byte (fstream-lua table)", function()
    local env = string.format("env APP_ID=raw-%s IN=raw-in-%s", uniq, uniq)
    local store = proc.tmp .. "/raw-" .. uniq
    proc.produce_lines(addr, "raw-in-" .. uniq, { "NUL-x:NUL-x", "name:name", "NUL-x:NUL-x" }, { key_delim = ":" })
    local w = proc.spawn(string.format("%s %s worker %s/rawkeys.lua --broker kafka://%s --store lmdb://%s",
      env, bin, fixtures, addr, store), "worker-raw")
    local function listed()
      local out, rc = proc.run(string.format("%s %s table %s/rawkeys.lua raw_counts --store lmdb://%s 2>/dev/null",
        env, bin, fixtures, store))
      assert(rc == 0, out)
      local rows, n = {}, 0
      for line in out:gmatch("[^\n]+") do
        local row = assert(json.decode(line))
        rows[row.key], n = row.value, n + row.value
      end
      return rows, n
    end
    local deadline = os.time() + 60
    local rows, n
    repeat
      proc.sleep(0.5)
      rows, n = listed()
    until n >= 3 or os.time() > deadline
    assert.are.equal(0, w:stop())
    assert.are.same({ ["\0x"] = 2, name = 1 }, (listed()))
  end)
end)

describe("a global table on a standalone embedded broker", function()
  local broker, addr
  setup(function() broker, addr = proc.broker({}, 4) end)
  teardown(function() broker:stop() end)

  it("reaches every worker: each holds every key, whoever processed the write", function()
    local env = { APP_ID = "glob-" .. uniq, IN = "glob-in-" .. uniq }
    local s1, s2 = proc.tmp .. "/glob-a-" .. uniq, proc.tmp .. "/glob-b-" .. uniq
    proc.create_topics(addr, env.IN)
    local function start(store)
      return proc.spawn(string.format("env APP_ID=%s IN=%s %s worker %s/global.lua --broker kafka://%s --store lmdb://%s",
        env.APP_ID, env.IN, bin, fixtures, addr, store), "worker-global")
    end
    local a = start(s1)
    assert.truthy(a:wait_for("assigned 4 partitions", 30), a:output())
    local b = start(s2)
    assert.truthy(b:wait_for("assigned 2 partitions", 60), b:output())
    -- A keeps two: given back two under range, or gives up two under
    -- cooperative-sticky (auto's choice for an app whose tables are all global).
    local function a_has_two()
      local o = a:output()
      return o:match("assigned 2 partitions") or o:match("revoking 2 partitions %(incremental")
    end
    local deadline = os.time() + 60
    while not a_has_two() and os.time() < deadline do proc.sleep(0.2) end
    assert.truthy(a_has_two(), a:output())
    local lines = {}
    for i = 1, 200 do lines[#lines + 1] = "k" .. i .. ":" .. i end
    proc.produce_lines(addr, env.IN, lines, { key_delim = ":" })
    proc.sleep(4)
    assert.are.equal(0, a:stop())
    assert.are.equal(0, b:stop())
    for _, store in ipairs { s1, s2 } do
      local out, rc = proc.run(string.format("env APP_ID=%s IN=%s %s table %s/global.lua rates --store lmdb://%s",
        env.APP_ID, env.IN, bin, fixtures, store))
      assert.are.equal(0, rc, out)
      local got = {}
      for line in out:gmatch("[^\n]+") do
        local row = require("fstream.core").json.decode(line)
        got[row.key] = row.value
      end
      for i = 1, 200 do assert.are.equal(i, got["k" .. i], store .. " lacks k" .. i) end
    end
  end)
end)

describe("a windowed table on a standalone embedded broker", function()
  local broker, addr
  setup(function() broker, addr = proc.broker({}, 2) end)
  teardown(function() broker:stop() end)

  it("closes a window that was open when the worker stopped, once, after the restart", function()
    local env = { APP_ID = "win-" .. uniq, IN = "win-in-" .. uniq, OUT = "win-out-" .. uniq }
    local store = proc.tmp .. "/win-" .. uniq
    proc.create_topics(addr, env.IN, env.OUT)
    local function start()
      return proc.spawn(string.format("env APP_ID=%s IN=%s OUT=%s %s worker %s/windows.lua --broker kafka://%s --store lmdb://%s",
        env.APP_ID, env.IN, env.OUT, bin, fixtures, addr, store), "worker-windows")
    end
    local w = start()
    assert.truthy(w:wait_for("assigned %d+ partitions", 30), w:output())
    proc.produce_lines(addr, env.IN, { 'a:{"user":"a","ts":100}', 'a:{"user":"a","ts":101}',
      'a:{"user":"a","ts":105.5}' }, { key_delim = ":" })
    proc.sleep(2)
    assert.are.equal(0, w:stop())
    assert.are.same({}, proc.consume_all(addr, env.OUT))   -- still open: stream time is 105.5

    w = start()
    assert.truthy(w:wait_for("assigned %d+ partitions", 30), w:output())
    proc.produce_lines(addr, env.IN, { 'a:{"user":"a","ts":130}' }, { key_delim = ":" })
    local out = proc.wait_count(addr, env.OUT, 1, 30)
    proc.sleep(1.5)
    out = proc.consume_all(addr, env.OUT)
    assert.are.equal(0, w:stop())
    assert.are.equal(1, #out, table.concat(out, "\n"))
    local row = require("fstream.core").json.decode(out[1])
    assert.are.same({ user = "a", start = 100, count = 3 }, row)
  end)
end)

-- Partition counts come from the broker: the standalone broker auto-creates
-- topics with 4 partitions, whatever the app's topic_partitions says.
describe("partition counts on a standalone embedded broker", function()
  local function run_worker(env, addr, store)
    return proc.run(string.format("env %s timeout 60 %s worker %s/wordcount.lua --broker kafka://%s --store lmdb://%s",
      wc.settings(env), bin, fixtures, addr, store))
  end

  it("runs with the default topic_partitions: real counts in the banner, exact counts across a restart", function()
    local broker, addr = proc.broker({}, 4)
    local env = { APP_ID = "dflt-" .. uniq, IN = "dflt-in-" .. uniq, TOPIC_PARTITIONS = "default" }
    local store = proc.tmp .. "/dflt-" .. uniq
    local lines, expected = { table.unpack((corpus("d")), 1, 20000) }, {}
    for _, l in ipairs(lines) do local word = l:match("^[^:]+"); expected[word] = (expected[word] or 0) + 1 end
    local first, rest = { table.unpack(lines, 1, 3000) }, { table.unpack(lines, 3001) }
    -- The worker creates its topics (the broker gives them 4 partitions).
    local w = wc_worker(env, addr, store, { create = false })
    assert.truthy(w:wait_for("assigned 4 partitions", 30), w:output())
    assert.matches("topics%s+" .. env.IN:gsub("%-", "%%-") .. " %(key raw, value raw, 4 partitions%)", w:output())
    assert.matches("word_counts %(4 partitions, changelog", w:output())
    proc.produce_lines(addr, env.IN, first, { key_delim = ":" })
    wait_total(env, #first, 60, w, store)
    assert.are.equal(0, w:stop())

    w = wc_worker(env, addr, store, { create = false })
    assert.truthy(w:wait_for("assigned 4 partitions", 30), w:output())
    proc.produce_lines(addr, env.IN, rest, { key_delim = ":" })
    wait_total(env, #lines, 90, w, store)
    assert.are.equal(0, w:stop())
    broker:stop()
    assert.are.same(expected, read_counts(env, store))
  end)

  it("gives a table its input's count when the input exists with another count than topic_partitions", function()
    local env = { APP_ID = "wide-" .. uniq, IN = "wide-in-" .. uniq }
    local broker, addr = proc.broker({ env.IN, env.APP_ID .. "-word_counts-changelog" }, 8)
    local store = proc.tmp .. "/wide-" .. uniq
    local lines = {}
    local expected = {}
    for i = 1, 400 do
      local word = "x" .. (i % 40)
      lines[#lines + 1] = word .. ":" .. word
      expected[word] = (expected[word] or 0) + 1
    end
    local w = wc_worker(env, addr, store)
    assert.truthy(w:wait_for("assigned 8 partitions", 30), w:output())
    assert.matches("word_counts %(8 partitions", w:output())
    proc.produce_lines(addr, env.IN, lines, { key_delim = ":" })
    wait_total(env, #lines, 60, w, store)
    assert.are.equal(0, w:stop())
    broker:stop()
    assert.are.same(expected, read_counts(env, store))
  end)

  it("refuses to start a table declared with fewer partitions than its input, naming both counts and the fix", function()
    local env = { APP_ID = "fewer-" .. uniq, IN = "fewer-in-" .. uniq, TABLE_PARTITIONS = "4" }
    local broker, addr = proc.broker({ env.IN }, 8)
    local out, rc = run_worker(env, addr, proc.tmp .. "/fewer-" .. uniq)
    broker:stop()
    assert.are.equal(1, rc, out)
    assert.matches("table word_counts declares partitions = 4 but its input has 8 partitions %(fewer%-in%-[%d%-]+: 8%)", out)
    assert.matches("remove `partitions = 4` from the table %(it then has 8%), or give the input 4 partitions", out)
    assert.not_matches("assigned", out)
    assert.not_matches("worker started", out)
  end)

  it("refuses to start a table declared with more partitions than its input", function()
    local env = { APP_ID = "more-" .. uniq, IN = "more-in-" .. uniq, TABLE_PARTITIONS = "8" }
    local broker, addr = proc.broker({}, 4)
    proc.create_topics(addr, env.IN)
    local out, rc = run_worker(env, addr, proc.tmp .. "/more-" .. uniq)
    broker:stop()
    assert.are.equal(1, rc, out)
    assert.matches("table word_counts declares partitions = 8 but its input has 4 partitions", out)
    assert.not_matches("worker started", out)
  end)
end)

describe("group_by with two workers", function()
  it("totals are exact and each account lives only on the worker owning its new partition", function()
    local broker, addr = proc.broker({}, 4)
    local env = { APP_ID = "gb-" .. uniq, IN = "gb-in-" .. uniq }
    local rep = env.APP_ID .. "-process-by_account-repartition"
    proc.create_topics(addr, env.IN, rep, env.APP_ID .. "-totals-changelog")
    local s1, s2 = proc.tmp .. "/gb-a-" .. uniq, proc.tmp .. "/gb-b-" .. uniq
    local function start(store)
      return proc.spawn(string.format("env APP_ID=%s IN=%s %s worker %s/groupby.lua --broker kafka://%s --store lmdb://%s",
        env.APP_ID, env.IN, bin, fixtures, addr, store), "worker-gb")
    end
    local a = start(s1)
    assert.truthy(a:wait_for("assigned 8 partitions", 30), a:output())
    local b = start(s2)
    assert.truthy(b:wait_for("assigned 4 partitions", 60), b:output())
    assert.truthy(a:wait_for("assigned 4 partitions", 60), a:output())
    local lines, expect = {}, {}
    for i = 1, 3000 do
      local acct = "acct-" .. (i % 37)
      lines[#lines + 1] = string.format('order-%d\t{"account":"%s","amount":%d}', i, acct, i % 10)
      expect[acct] = (expect[acct] or 0) + i % 10
    end
    proc.produce_lines(addr, env.IN, lines, { key_delim = "\t" })
    local json = require("fstream.core").json
    local function dump(store)
      local out = proc.run(string.format("env APP_ID=%s IN=%s %s table %s/groupby.lua totals --store lmdb://%s 2>/dev/null",
        env.APP_ID, env.IN, bin, fixtures, store))
      local rows = {}
      for line in out:gmatch("[^\n]+") do rows[#rows + 1] = json.decode(line) end
      return rows
    end
    local deadline = os.time() + 60
    local sum
    repeat
      proc.sleep(1)
      sum = 0
      for _, st in ipairs { s1, s2 } do for _, r in ipairs(dump(st)) do sum = sum + r.value end end
    until sum >= 3000 * 4.5 or os.time() > deadline
    assert.are.equal(0, a:stop())
    assert.are.equal(0, b:stop())
    broker:stop()
    local core = require "fstream.core"
    local got, owner = {}, {}
    for w, st in ipairs { s1, s2 } do
      for _, r in ipairs(dump(st)) do
        assert.is_nil(got[r.key], r.key .. " is on both workers")
        got[r.key], owner[r.key] = r.value, w
        -- The repartition topic is keyed by account: the entry is in that partition.
        assert.are.equal(core.partition_for(r.key, 4), r.partition)
      end
    end
    assert.are.same(expect, got)
    local per = { 0, 0 }
    for _, w in pairs(owner) do per[w] = per[w] + 1 end
    assert.is_true(per[1] > 0 and per[2] > 0, "one worker holds every account")
  end)
end)

describe("table failure paths", function()
  it("grows the LMDB map when it fills up instead of failing", function()
    local broker, addr = proc.broker({}, 4)
    local env = { APP_ID = "grow-" .. uniq, IN = "grow-in-" .. uniq }
    local store = proc.tmp .. "/grow-" .. uniq
    local lines = {}
    for i = 1, 6000 do
      local w = string.format("%s%05d", string.rep("w", 300), i)
      lines[#lines + 1] = w .. ":" .. w
    end
    proc.create_topics(addr, env.IN)
    proc.produce_lines(addr, env.IN, lines, { key_delim = ":" })
    local w = proc.spawn(string.format("env FSTREAM_LMDB_MAP_SIZE=262144 APP_ID=%s IN=%s %s worker %s/wordcount.lua --broker kafka://%s --store lmdb://%s",
      env.APP_ID, env.IN, bin, fixtures, addr, store), "worker-grow")
    local c = wait_total(env, 6000, 90, w, store)
    assert.are.equal(0, w:stop())
    broker:stop()
    assert.are.equal(6000, total(c))
    local size = 0
    for p = 0, 3 do
      local f = io.open(string.format("%s/word_counts/%d/data.mdb", store, p), "rb")
      size = size + f:seek("end")
      f:close()
    end
    assert.is_true(size > 4 * 262144, "maps did not grow: " .. size)
  end)

  it("refuses to start when the changelog has another partition count than the table", function()
    local env = { APP_ID = "clmis-" .. uniq, IN = "clmis-in-" .. uniq }
    local broker, addr = proc.broker({ env.APP_ID .. "-word_counts-changelog" }, 8)
    local out, rc = proc.run(string.format("env APP_ID=%s IN=%s %s worker %s/wordcount.lua --broker kafka://%s --store lmdb://%s/clmis-%s",
      env.APP_ID, env.IN, bin, fixtures, addr, proc.tmp, uniq))
    broker:stop()
    assert.are.equal(1, rc, out)
    assert.matches("changelog topic clmis%-[%d%-]+%-word_counts%-changelog has 8 partitions but table word_counts has 4", out)
    -- The fix, and no worker that starts and stops later.
    assert.matches("delete the changelog topic and the local state %(`fstream%-lua reset`%)", out)
    assert.not_matches("worker started", out)
  end)

  it("refuses local state that is ahead of its changelog, pointing to reset", function()
    local env = { APP_ID = "ahead-" .. uniq, IN = "ahead-in-" .. uniq }
    local store = proc.tmp .. "/ahead-" .. uniq
    local b1, a1 = proc.broker({}, 4)
    local lines = wc.corpus("h")
    proc.create_topics(a1, env.IN)
    proc.produce_lines(a1, env.IN, { table.unpack(lines, 1, 500) }, { key_delim = ":" })
    local w = wc_worker(env, a1, store)
    wait_total(env, 500, 60, w, store)
    assert.are.equal(0, w:stop())
    b1:stop()
    -- A new, empty broker: the changelog the local files came from is gone.
    local b2, a2 = proc.broker({}, 4)
    proc.create_topics(a2, env.IN)
    w = wc_worker(env, a2, store)
    local rc = w:wait(60)
    b2:stop()
    assert.are.equal(1, rc, w:output())
    assert.matches("local state .* covers changelog .* up to offset %d+ but the changelog ends at 0", w:output())
    assert.matches("fstream%-lua reset", w:output())
  end)
end)

describe("a stop during changelog recovery", function()
  it("interrupts the replay and exits, even while the broker does not answer", function()
    local broker, addr = proc.broker({}, 4)
    finally(function() broker:signal("CONT"); broker:stop() end)
    local env = { APP_ID = "rec-" .. uniq, IN = "rec-in-" .. uniq }
    local changelog = env.APP_ID .. "-word_counts-changelog"
    proc.create_topics(addr, env.IN, changelog)
    -- 100,000 records, all in partition 0 (recovered first): the others need
    -- no request that a frozen broker would leave unanswered for a minute.
    local lines = {}
    for i = 1, 100000 do lines[i] = string.format('"k%d"\t%d', i, i) end
    local path = proc.write(proc.tmp .. "/rec-lines-" .. uniq, table.concat(lines, "\n") .. "\n")
    local out, rc = proc.run(string.format("kcat -P -b %s -t %s -p 0 -K'\t' -l %s", addr, changelog, path))
    assert.are.equal(0, rc, out)
    local w = wc_worker(env, addr, proc.tmp .. "/rec-store-" .. uniq)
    finally(function() w:signal("KILL") end)
    -- Freeze the broker the moment the replay starts: the worker stays in it.
    local t0 = os.time()
    while not w:output():find("recovering table word_counts%[0%]: %d+") do
      assert(os.time() - t0 < 60 and w:alive(), w:output())
    end
    broker:signal("STOP")
    w:signal("TERM")
    assert.truthy(w:wait_for("recovery of table word_counts%[%d%] interrupted by a stop", 5), w:output())
    broker:signal("CONT")
    assert.are.equal(0, w:wait(30), w:output())
    assert.matches("stopping %(SIGTERM%)", w:output())
  end)
end)
