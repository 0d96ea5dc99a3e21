-- `fstream-lua worker APP --workers N`: N worker processes in one consumer
-- group under a supervisor, on a standalone embedded broker; and the lock that
-- keeps a table partition's files to one worker when several share a store.
local proc = require "spec.support.proc"
local wc = require "spec.support.wordcount"
local bin, fixtures = proc.bin, proc.root .. "/spec/fixtures"
local uniq = tostring(os.time()) .. "-" .. tostring(math.random(1e6))

-- The supervisor of n workers of spec/fixtures/APP (env: the app's settings).
local function supervisor(app, n, env, addr, store)
  local vars = {}
  for k, v in pairs(env) do vars[#vars + 1] = k .. "=" .. proc.quote(v) end
  return proc.spawn(string.format("env %s %s worker %s/%s --workers %d --broker kafka://%s --store lmdb://%s --no-web",
    table.concat(vars, " "), bin, fixtures, app, n, addr, proc.quote(store)), "workers-" .. app:gsub("%.lua$", ""))
end

-- The pid the supervisor last started worker i with.
local function pid_of(s, i)
  local pid
  for p in s:output():gmatch("%[supervisor%] info  worker " .. i .. " started %(pid (%d+)%)") do pid = tonumber(p) end
  return pid
end

describe("--workers N on a standalone embedded broker", function()
  local broker, addr
  setup(function() broker, addr = proc.broker({}, 4) end)
  teardown(function() broker:stop() end)

  it("shares the topic's partitions between two workers, relays every event once, and stops both on SIGTERM", function()
    local env = { APP_ID = "wk1-" .. uniq, IN = "wk1-in-" .. uniq, OUT = "wk1-out-" .. uniq }
    -- spec/support/close_guard.c reports a call into the consumer after the
    -- close's unassign: librdkafka 2.0.2 may drop its request for good (a
    -- stop of these workers hung there now and then).
    env.LD_PRELOAD = (os.getenv("FSTREAM_BUILD") or (proc.root .. "/build")) .. "/close_guard.so"
    proc.create_topics(addr, env.IN, env.OUT)
    local store = proc.tmp .. "/wk1-" .. uniq
    local s = supervisor("relay.lua", 2, env, addr, store)
    finally(function() s:signal("KILL") end)
    assert.truthy(s:wait_for("%[w1%] info  assigned 2 partitions.*", 60), s:output())
    assert.truthy(s:wait_for("%[w2%] info  assigned 2 partitions", 60), s:output())
    local lines = {}
    for i = 1, 2000 do lines[i] = i .. ":" .. i end
    proc.produce_lines(addr, env.IN, lines, { key_delim = ":" })
    local c = proc.counts(proc.wait_count(addr, env.OUT, 2000, 60), "out:")
    for i = 1, 2000 do assert.are.equal(1, c[i], "event " .. i .. ": " .. tostring(c[i])) end
    s:signal("TERM")
    assert.are.equal(0, s:wait(40), s:output())
    local out = s:output()
    assert.matches("%[supervisor%] info  every worker stopped %(exit 0%)", out)
    assert.not_matches("close_guard", out)
    -- Both did part of the work, and together all of it, once.
    local n1 = tonumber(out:match("%[w1%] info  tables: %d+ changelog records and %d+ LMDB writes for (%d+) events"))
    local n2 = tonumber(out:match("%[w2%] info  tables: %d+ changelog records and %d+ LMDB writes for (%d+) events"))
    assert.is_true(n1 > 0 and n2 > 0, out)
    assert.are.equal(2000, n1 + n2, out)
    -- A global table (the web's __workers) is every worker's: the second keeps its own copy of each partition.
    for p = 0, 3 do
      assert.truthy(proc.read(string.format("%s/__workers/%d/data.mdb", store, p)), "partition " .. p)
      assert.truthy(proc.read(string.format("%s/__workers/%d/copy-1/data.mdb", store, p)), "partition " .. p)
    end
  end)

  it("restarts a worker killed with SIGKILL, and the word count loses no word", function()
    local env = { APP_ID = "wk2-" .. uniq, IN = "wk2-in-" .. uniq, THROTTLE = "0.05" }
    proc.create_topics(addr, env.IN)
    local store = proc.tmp .. "/wk2-" .. uniq
    local lines, expected = wc.corpus("k")
    proc.produce_lines(addr, env.IN, lines, { key_delim = ":" })
    local s = supervisor("wordcount.lua", 2, env, addr, store)
    finally(function() s:signal("KILL") end)
    wc.wait_total(env, 20000, 90, s, store)
    local victim = pid_of(s, 1)
    assert.truthy(victim, s:output())
    os.execute("kill -9 " .. victim)
    assert.truthy(s:wait_for("worker 1 %(pid " .. victim .. "%) was killed by signal 9 %([^)]*%) after [%d.]+ s; "
      .. "restarting it in 0%.5 s", 10), s:output())
    assert.truthy(s:wait_for("worker 1 started %(pid %d+%).*worker 1 started %(pid %d+%)", 10), s:output())
    assert.are_not.equal(victim, pid_of(s, 1))
    local c = wc.wait_total(env, #lines, 120, s, store)
    proc.sleep(1)
    s:signal("TERM")
    assert.are.equal(0, s:wait(40), s:output())
    c = wc.read_counts(env, store)
    local over = 0
    for word, n in pairs(expected) do
      assert(c[word] and c[word] >= n, word .. " lost: " .. tostring(c[word]) .. " < " .. n)
      over = over + c[word] - n
    end
    -- Counted twice: only what the killed worker did after its last checkpoint.
    assert.is_true(over < 10000, "over-counted by " .. over)
    -- Static members: the restarted worker came back as the same member, the other one is another.
    local ids = {}
    for w, id in s:output():gmatch("%[w(%d)%] info  static group member: group%.instance%.id (%S+)") do
      ids[w] = ids[w] or {}
      table.insert(ids[w], id)
    end
    assert.are.equal(2, #ids["1"], s:output())
    assert.are.equal(ids["1"][1], ids["1"][2])
    assert.are_not.equal(ids["1"][1], ids["2"][1])
  end)

  it("backs off a worker that crashes as it starts, while the other one works", function()
    local env = { APP_ID = "wk3-" .. uniq, IN = "wk3-in-" .. uniq, OUT = "wk3-out-" .. uniq, CRASH_WORKER = "2" }
    proc.create_topics(addr, env.IN, env.OUT)
    local s = supervisor("crashy.lua", 2, env, addr, proc.tmp .. "/wk3-" .. uniq)
    finally(function() s:signal("KILL") end)
    assert.truthy(s:wait_for("%[w1%] info  assigned 4 partitions", 60), s:output())
    proc.produce_lines(addr, env.IN, proc.numbers(1, 100))
    assert.are.equal(100, #proc.wait_count(addr, env.OUT, 100, 60))
    assert.truthy(s:wait_for("worker 2 [^\n]*restarting it in 4%.0 s", 30), s:output())
    s:signal("TERM")
    -- Worker 2 was down when the stop came: not a clean stop.
    assert.are.equal(1, s:wait(40), s:output())
    local out = s:output()
    local delays = {}
    for d in out:gmatch("worker 2 %(pid %d+%) exited with status 3 after [%d.]+ s; restarting it in ([%d.]+) s") do
      delays[#delays + 1] = tonumber(d)
    end
    -- 0.5, 1, 2, 4 s ... : a few starts, not a tight loop.
    assert.are.same({ 0.5, 1, 2, 4 }, { table.unpack(delays, 1, 4) })
    local starts = select(2, out:gsub("worker 2 started", ""))
    assert.is_true(starts <= 6, starts .. " starts:\n" .. out)
    assert.matches("%[w1%] info  worker stopped %(exit 0%)", out)
    assert.matches("every worker stopped %(exit 1%)", out)
  end)
end)

describe("--workers N whose broker stops answering", function()
  local broker, addr
  setup(function() broker, addr = proc.broker({}, 4) end)
  teardown(function()
    broker:signal("CONT")
    broker:stop()
  end)

  it("stops both workers on SIGTERM within the stop's bound, saying what they gave up on", function()
    local env = { APP_ID = "wk5-" .. uniq, IN = "wk5-in-" .. uniq, OUT = "wk5-out-" .. uniq, THROTTLE = "0.2",
      LD_PRELOAD = (os.getenv("FSTREAM_BUILD") or (proc.root .. "/build")) .. "/close_guard.so" }
    proc.create_topics(addr, env.IN, env.OUT)
    local s = supervisor("relay.lua", 2, env, addr, proc.tmp .. "/wk5-" .. uniq)
    finally(function()
      broker:signal("CONT")
      for i = 1, 2 do
        local pid = pid_of(s, i)
        if pid then os.execute("kill -KILL " .. pid .. " 2>/dev/null") end
      end
      s:signal("KILL")
    end)
    assert.truthy(s:wait_for("%[w1%] info  assigned [1-9]", 60), s:output())
    assert.truthy(s:wait_for("%[w2%] info  assigned [1-9]", 60), s:output())
    local lines = {}
    for i = 1, 4000 do lines[i] = i .. ":" .. i end
    proc.produce_lines(addr, env.IN, lines, { key_delim = ":" })
    proc.wait_messages(addr, env.OUT, 100, 60)
    -- The broker freezes (its sockets stay open, nothing answers) while the
    -- workers relay, and SIGTERM comes: their outputs cannot be delivered,
    -- their sessions expire, and every wait of the stop must end by itself.
    broker:signal("STOP")
    s:signal("TERM")
    local rc = s:wait(90)
    broker:signal("CONT")
    local out = s:output()
    assert.are.equal(1, rc, out)
    assert.not_matches("close_guard", out)
    assert.matches("could not deliver %d+ messages", out)
    -- Each worker ends by itself, or — when librdkafka's close waits out a
    -- request the frozen broker never answers (an offset commit in flight
    -- waits up to socket.timeout.ms, 60 s) — at the hard limit, which then
    -- names the step the stop was in.
    for w = 1, 2 do
      local by_itself = out:match("%[w" .. w .. "%] info  worker stopped %(exit 1%)")
      local cut = out:match("%[w" .. w .. "%] error the stop did not finish within 75 s %(it was closing the broker's clients")
      assert.truthy(by_itself or cut, "worker " .. w .. ":\n" .. out)
    end
  end)
end)

describe("--workers N refuses", function()
  it("memory:// (its broker lives in one worker process)", function()
    local out, rc = proc.run(string.format("%s worker %s/relay.lua --workers 2 --no-web", bin, fixtures))
    assert.are.equal(2, rc, out)
    assert.matches("%-%-workers 2: memory:// runs its broker inside one worker process", out)
    assert.not_matches("started", out)
  end)

  for _, n in ipairs { "0", "-1", "abc", "1.5", "257", "100000" } do
    it("a count of " .. n, function()
      local out, rc = proc.run(string.format("%s worker %s/relay.lua --workers=%s --broker kafka://127.0.0.1:9",
        bin, fixtures, n))
      assert.are.equal(2, rc, out)
      assert.matches("%-%-workers needs a count from 1 to 256, got '" .. n:gsub("%p", "%%%0") .. "'", out)
    end)
  end

  it("a --web-port whose last worker's port is past 65535", function()
    local out, rc = proc.run(string.format("%s worker %s/relay.lua --workers 3 --web-port 65534 --broker kafka://127.0.0.1:9",
      bin, fixtures))
    assert.are.equal(2, rc, out)
    assert.matches("%-%-web%-port needs a port number %(0 to 65533 with 3 workers%)", out)
  end)
end)

describe("a table partition's files", function()
  local broker, addr
  setup(function() broker, addr = proc.broker({}, 4) end)
  teardown(function() broker:stop() end)

  it("are used by one worker at a time: a worker waits while another process holds them", function()
    local env = { APP_ID = "wk4-" .. uniq, IN = "wk4-in-" .. uniq }
    local store = proc.tmp .. "/wk4-" .. uniq
    os.execute(string.format("mkdir -p %s/word_counts/0", proc.quote(store)))
    -- Another owner, for 8 s: util-linux flock holds the same kind of lock the worker takes.
    local holder = proc.spawn(string.format("flock -x %s/word_counts/0/owner.lock sleep 8", proc.quote(store)), "holder")
    finally(function() holder:signal("KILL") end)
    proc.sleep(0.3)
    proc.produce_lines(addr, env.IN, { "a:a", "b:b", "c:c", "d:d", "a:a" }, { key_delim = ":" })
    local w = wc.worker(env, addr, store)
    finally(function() w:signal("KILL") end)
    assert.truthy(w:wait_for("table word_counts%[0%]: [^\n]* in use by another worker [^\n]*; waiting up to 10 s", 30),
      w:output())
    assert.are.equal(0, holder:wait(15))
    local c = wc.wait_total(env, 5, 60, w, store)
    assert.are.equal(0, w:stop(), w:output())
    assert.are.same({ a = 2, b = 1, c = 1, d = 1 }, wc.read_counts(env, store))
  end)
end)

describe("the workers' command lines (fstream.cli.workers)", function()
  local cli = require "fstream.cli"
  local app = fixtures .. "/relay.lua"

  it("are the supervisor's line without --workers, with --web-port P + i - 1 and a static member id each", function()
    local cmd, opts = cli.parse { "worker", app, "--workers", "3", "--web-port=7000", "-l", "warn",
      "--broker", "kafka://127.0.0.1:9", "--store", "--workers" }
    assert.are.equal("worker", cmd)
    local lines = assert(cli.workers(opts))
    assert.are.equal(3, #lines)
    for i = 1, 3 do
      assert.are.same({ "worker", app, "--web-port=" .. (6999 + i), "-l", "warn", "--broker", "kafka://127.0.0.1:9",
        "--store", "--workers", "--worker-id=auto" }, lines[i])
    end
    cmd, opts = cli.parse { "worker", app, "--workers=2", "--web-port", "0", "--broker=kafka://127.0.0.1:9" }
    lines = assert(cli.workers(opts))
    assert.are.same({ "worker", app, "--web-port=0", "--broker=kafka://127.0.0.1:9", "--worker-id=auto" }, lines[2])
  end)

  it("give worker i the id ID-i for --worker-id ID, and none for --worker-id none", function()
    local _, opts = cli.parse { "worker", app, "--workers", "2", "--worker-id", "east", "--broker", "kafka://127.0.0.1:9" }
    local lines = assert(cli.workers(opts))
    assert.are.same({ "worker", app, "--broker", "kafka://127.0.0.1:9", "--worker-id=east-1" }, lines[1])
    assert.are.same({ "worker", app, "--broker", "kafka://127.0.0.1:9", "--worker-id=east-2" }, lines[2])
    _, opts = cli.parse { "worker", app, "--workers", "2", "--worker-id=none", "--broker", "kafka://127.0.0.1:9" }
    lines = assert(cli.workers(opts))
    assert.are.same({ "worker", app, "--broker", "kafka://127.0.0.1:9" }, lines[2])
  end)
end)
