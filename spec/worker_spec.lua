-- End to end: the real fstream-lua binary, a broker process, and kcat as the
-- independent client that produces input and reads output.
local proc = require "spec.support.proc"

local bin, fixtures = proc.bin, proc.root .. "/spec/fixtures"
local uniq = tostring(os.time()) .. "-" .. tostring(math.random(1e6))

local worker, numbers, counts = proc.worker, proc.numbers, proc.counts

describe("a worker on a standalone embedded broker", function()
  local broker, addr
  setup(function() broker, addr = proc.broker({}, 4) end)
  teardown(function() broker:stop() end)

  it("processes 10,000 messages, exits 0 on SIGTERM with offsets committed, and resumes after them", function()
    local env = { APP_ID = "relay-" .. uniq, IN = "relay-in-" .. uniq, OUT = "relay-out-" .. uniq }
    proc.produce_lines(addr, env.IN, numbers(1, 10000))
    local w = worker("relay.lua", env, addr)
    local out = proc.wait_count(addr, env.OUT, 10000, 90)
    assert.are.equal(10000, #out, w:output())
    local c = counts(out, "out:")
    for i = 1, 10000 do assert(c[i] == 1, "message " .. i .. " seen " .. tostring(c[i]) .. " times") end
    assert.are.equal(0, w:stop())
    assert.matches("final checkpoint done: offsets committed", w:output())

    -- Restart: nothing already committed is processed again; new input is.
    proc.produce_lines(addr, env.IN, numbers(10001, 10010))
    local w2 = worker("relay.lua", env, addr)
    out = proc.wait_count(addr, env.OUT, 10010, 60)
    proc.sleep(1.5) -- give a wrongly rewound worker time to show duplicates
    out = proc.consume_all(addr, env.OUT)
    assert.are.equal(0, w2:stop())
    assert.are.equal(10010, #out)
    c = counts(out, "out:")
    for i = 10001, 10010 do assert.are.equal(1, c[i]) end
  end)

  it("loses nothing when killed with SIGKILL mid-stream; duplicates only for uncommitted events", function()
    local n = 20000
    local env = { APP_ID = "kill-" .. uniq, IN = "kill-in-" .. uniq, OUT = "kill-out-" .. uniq, THROTTLE = "0.05" }
    proc.produce_lines(addr, env.IN, numbers(1, n))
    local w = worker("relay.lua", env, addr)
    proc.wait_messages(addr, env.OUT, 4000, 90) -- then kill at once (see proc.wait_messages)
    w:signal("KILL")
    assert.are.equal(137, w:wait(10))
    local partial = proc.consume_all(addr, env.OUT)
    assert.is_true(#partial < n, "the worker finished before it was killed")

    env.THROTTLE = "0"
    local w2 = worker("relay.lua", env, addr)
    local c = proc.wait_all_seen(addr, env.OUT, "out:", n, 120)
    assert.are.equal(0, w2:stop())
    local dups = 0
    for i = 1, n do
      assert(c[i], "message " .. i .. " was lost")
      assert(c[i] <= 2, "message " .. i .. " processed " .. c[i] .. " times")
      dups = dups + c[i] - 1
    end
    -- Only what was processed after the last commit (0.5 s interval) runs twice.
    assert.is_true(dups < #partial, string.format("%d duplicates after %d outputs", dups, #partial))
  end)

  it("keeps running through malformed JSON and an agent that raises", function()
    local env = { APP_ID = "fragile-" .. uniq, IN = "fragile-in-" .. uniq, OUT = "fragile-out-" .. uniq }
    local lines = {}
    for i = 1, 1000 do
      lines[#lines + 1] = string.format('{"n": %d}', i)
      if i % 250 == 0 then lines[#lines + 1] = '{"n": ' end
    end
    proc.produce_lines(addr, env.IN, lines)
    local w = worker("fragile.lua", env, addr)
    local out = proc.wait_count(addr, env.OUT, 990, 60)
    proc.sleep(0.5)
    assert.is_true(w:alive(), "worker died:\n" .. w:output())
    -- A message sent after the failures is still processed.
    proc.produce_lines(addr, env.IN, { '{"n": 1001}' })
    out = proc.wait_count(addr, env.OUT, 991, 30)
    assert.are.equal(991, #out)
    local log = w:output()
    assert.are.equal(0, w:stop())
    assert.matches("agent fragile failed: .*spec/fixtures/fragile.lua:11: refusing order 100", log)
    assert.matches("stack traceback:", log)
    assert.matches("cannot decode fragile%-in%-[%d%-]+%[%d%]@%d+: invalid JSON at byte 6: unexpected end of input", log)
    local seen = {}
    for _, v in ipairs(out) do seen[v:match('"n":(%d+)')] = true end
    for i = 1, 1001 do
      if i % 100 ~= 0 then assert(seen[tostring(i)], "missing " .. i) end
    end
  end)

  it("`fstream-lua send` delivers a value to an anonymous agent", function()
    local env = { APP_ID = "adder-" .. uniq, OUT = "sums-" .. uniq }
    local w = worker("adder.lua", env, addr)
    assert.truthy(w:wait_for("assigned %d+ partitions", 30), w:output())
    local out, rc = proc.run(string.format("env APP_ID=%s OUT=%s %s send %s/adder.lua @adding --broker kafka://%s --key k1 '{\"a\": 20, \"b\": 22}'",
      env.APP_ID, env.OUT, bin, fixtures, addr))
    assert.are.equal(0, rc, out)
    assert.truthy(out:find(env.APP_ID .. "-adding[", 1, true), out)
    local sums = proc.wait_count(addr, env.OUT, 1, 30)
    assert.are.same({ "42" }, sums)
    assert.are.equal(0, w:stop())
  end)

  it("names the offsets the broker deleted before the worker read them, and goes on after them", function()
    -- The embedded broker keeps about 5 MB per partition: 6 MB written while
    -- no worker runs pushes out the oldest messages, the committed offset among them.
    local env = { APP_ID = "gone-" .. uniq, IN = "gone-in-" .. uniq, OUT = "gone-out-" .. uniq, PARTITIONS = "1" }
    local b1, a1 = proc.broker({ env.IN, env.OUT }, 1)
    proc.produce_lines(a1, env.IN, { "first" })
    local w = worker("relay.lua", env, a1)
    assert.are.same({ "out:first" }, proc.wait_count(a1, env.OUT, 1, 30))
    assert.are.equal(0, w:stop())
    local lines = {}
    for i = 1, 1000 do lines[i] = string.format("%05d", i) .. string.rep("x", 5995) end
    proc.produce_lines(a1, env.IN, lines)
    local w2 = worker("relay.lua", env, a1)
    local pattern = "gone%-in%-[%d%-]+%[0%]: offsets 1 to (%d+) %((%d+) messages%) were deleted by the broker "
      .. "before this worker read them: they are lost, and the partition goes on from (%d+)"
    assert.truthy(w2:wait_for(pattern, 30), w2:output())
    local last, n, from = w2:output():match(pattern)
    last, n, from = tonumber(last), tonumber(n), tonumber(from)
    assert.is_true(n >= 1 and n < 1000 and last == n and from == n + 1, w2:output())
    -- Everything after the hole is relayed: the last input comes out.
    for _ = 1, 300 do
      local out = proc.consume_all(a1, env.OUT)
      if out[#out] and out[#out]:sub(1, 9) == "out:01000" then break end
      proc.sleep(0.1)
    end
    local out = proc.consume_all(a1, env.OUT)
    assert.are.equal("out:01000", (out[#out] or ""):sub(1, 9), w2:output())
    assert.are.equal(0, w2:stop())
    b1:stop()
  end)
end)

describe("stopping a worker", function()
  it("waits for an agent busy with an event, and a second SIGTERM exits at once", function()
    local cmd = string.format("env APP_ID=slow-%s IN=slow-in %s worker %s/slow.lua", uniq, bin, fixtures)
    local w = proc.spawn(cmd, "worker-slow")
    local addr = w:wait_for("listening on ([%d%.]+:%d+)", 20)
    assert.truthy(w:wait_for("assigned %d+ partitions", 30), w:output())
    proc.produce_lines(addr, "slow-in", { "x" })
    assert.truthy(w:wait_for("holding x", 30), w:output())
    w:signal("TERM")
    assert.truthy(w:wait_for("stopping %(SIGTERM%): finishing in%-flight events", 10))
    proc.sleep(1)
    assert.is_true(w:alive(), "the first SIGTERM must wait for the busy agent")
    w:signal("TERM")
    assert.are.equal(128 + 15, w:wait(10))
    assert.matches("second Terminated: exiting at once without committing", w:output())
  end)

  it("an agent still mid-event at the 30 s stop deadline: the worker exits at once, the event stays uncommitted", function()
    -- librdkafka's consumer cannot be destroyed while the killed agent still
    -- holds a fetched message: the stop used to hang until its 75 s hard limit.
    local broker, addr = proc.broker({}, 1)
    local app = "stuck-" .. uniq
    local store = proc.tmp .. "/" .. app .. "-data"
    local function start(slow)
      return proc.spawn(string.format("env APP_ID=%s IN=stuck-in-%s SLOW=%s %s worker %s/slow.lua --broker kafka://%s --store lmdb://%s",
        app, uniq, slow, bin, fixtures, addr, proc.quote(store)), "worker-stuck")
    end
    proc.create_topics(addr, "stuck-in-" .. uniq)
    local w = start(1000)
    assert.truthy(w:wait_for("assigned %d+ partitions", 30), w:output())
    proc.produce_lines(addr, "stuck-in-" .. uniq, { "x" })
    assert.truthy(w:wait_for("holding x", 30), w:output())
    w:signal("TERM")
    local rc = w:wait(60)
    assert.are.equal(0, rc, w:output())
    -- It says where the agent is stuck: the app's line, not fstream's own.
    assert.matches("1 agent coroutines still busy after 30 s %(.-slow%.lua:11 in fstream%.sleep%)", w:output())
    assert.not_matches("the stop did not finish", w:output())
    -- The event it never finished is processed again by the next worker.
    local w2 = start(0)
    assert.truthy(w2:wait_for("holding x", 30), w2:output())
    assert.are.equal(0, w2:stop())
    broker:stop()
  end)
end)

describe("a worker on the embedded broker (memory://)", function()
  it("prints its bootstrap address and serves kcat", function()
    local cmd = string.format("env APP_ID=mem-%s IN=min OUT=mout %s worker %s/relay.lua", uniq, bin, fixtures)
    local w = proc.spawn(cmd, "worker-memory")
    local addr = w:wait_for("listening on ([%d%.]+:%d+)", 20)
    assert.truthy(addr, w:output())
    assert.truthy(w:wait_for("assigned %d+ partitions", 30), w:output())
    proc.produce_lines(addr, "min", numbers(1, 100))
    local out = proc.wait_count(addr, "mout", 100, 30)
    assert.are.equal(100, #out)
    assert.are.equal(0, w:stop())
  end)
end)

describe("partition counts on the embedded broker (memory://)", function()
  local function wordcount(env)
    local vars = {}
    for k, v in pairs(env) do vars[#vars + 1] = k .. "=" .. v end
    table.sort(vars)
    return string.format("env %s %s worker %s/wordcount.lua --store lmdb://%s/%s", table.concat(vars, " "), bin,
      fixtures, proc.tmp, env.APP_ID)
  end

  it("starts and stops a table app with the default topic_partitions, counting with the counts it prints", function()
    local w = proc.spawn(wordcount { APP_ID = "memwc-" .. uniq, IN = "mwords", TOPIC_PARTITIONS = "default" }, "worker-memwc")
    local addr = w:wait_for("listening on ([%d%.]+:%d+)", 20)
    assert.truthy(addr, w:output())
    assert.truthy(w:wait_for("assigned 8 partitions", 30), w:output())
    assert.matches("mwords %(key raw, value raw, 8 partitions%)", w:output())
    assert.matches("word_counts %(8 partitions", w:output())
    proc.produce_lines(addr, "mwords", { "a:a", "b:b", "a:a" }, { key_delim = ":" })
    proc.sleep(1.5)
    assert.are.equal(0, w:stop())
    local rows = proc.run(string.format("env APP_ID=memwc-%s IN=mwords TOPIC_PARTITIONS=default %s table %s/wordcount.lua word_counts --store lmdb://%s/memwc-%s 2>/dev/null",
      uniq, bin, fixtures, proc.tmp, uniq))
    local got = {}
    for line in rows:gmatch("[^\n]+") do
      local row = require("fstream.core").json.decode(line)
      got[row.key] = row.value
    end
    assert.are.same({ a = 2, b = 1 }, got)
  end)

  it("refuses at start-up a table declared with another count than its input", function()
    local out, rc = proc.run("timeout 60 " .. wordcount { APP_ID = "memdecl-" .. uniq, IN = "mwords",
      TOPIC_PARTITIONS = "default", TABLE_PARTITIONS = "4" })
    assert.are.equal(1, rc, out)
    assert.matches("cannot start app 'memdecl%-[%d%-]+': table word_counts declares partitions = 4 but its input has 8 partitions", out)
    assert.not_matches("assigned", out)
  end)
end)

describe("a worker that cannot reach its broker", function()
  it("exits 1 at start-up, within the metadata timeout, naming the broker", function()
    -- A port nobody listens on: the worker cannot learn its topics' partition counts.
    local t0 = os.time()
    local out, rc = proc.run(string.format("env APP_ID=nobroker-%s IN=min OUT=mout timeout 60 %s worker %s/relay.lua --broker kafka://127.0.0.1:1",
      uniq, bin, fixtures))
    assert.are.equal(1, rc, out)
    assert.matches("no answer from the broker at 127%.0%.0%.1:1 within 10 s", out)
    assert.is_true(os.time() - t0 < 30, "took " .. (os.time() - t0) .. " s")
  end)
end)

describe("the command line", function()
  it("reports a syntax error with file:line and exits 1", function()
    local out, rc = proc.run(bin .. " worker " .. fixtures .. "/syntax_error.lua")
    assert.are.equal(1, rc)
    assert.truthy(out:find("spec/fixtures/syntax_error.lua:6: ')' expected", 1, true), out)
  end)

  it("reports an error at the script's top level with file:line and exits 1", function()
    local out, rc = proc.run(bin .. " worker " .. fixtures .. "/toplevel_error.lua")
    assert.are.equal(1, rc)
    assert.truthy(out:find("spec/fixtures/toplevel_error.lua:3: value_serializer 'yaml' is unknown", 1, true), out)
  end)

  it("rejects an unknown option with a one-line error and usage, exit 2", function()
    local out, rc = proc.run(bin .. " worker " .. fixtures .. "/relay.lua --frobnicate")
    assert.are.equal(2, rc)
    assert.matches("^fstream%-lua: unknown option '%-%-frobnicate'\nusage:", out)
  end)

  it("rejects a missing app file, exit 2", function()
    local out, rc = proc.run(bin .. " worker /nonexistent/app.lua")
    assert.are.equal(2, rc)
    assert.matches("cannot open app script '/nonexistent/app.lua'", out)
  end)

  it("rejects an unknown command, exit 2", function()
    local out, rc = proc.run(bin .. " wrok app.lua")
    assert.are.equal(2, rc)
    assert.matches("unknown command 'wrok'", out)
  end)

  it("prints its version and help", function()
    local out, rc = proc.run(bin .. " --version")
    assert.are.equal(0, rc)
    assert.matches("^fstream%-lua %d+%.%d+%.%d+", out)
    out, rc = proc.run(bin .. " worker --help")
    assert.are.equal(0, rc)
    assert.matches("usage: fstream%-lua worker APP.lua", out)
  end)

  it("lists agents with their topics and sinks", function()
    local out, rc = proc.run("APP_ID=x OUT=s " .. bin .. " agents " .. fixtures .. "/adder.lua")
    assert.are.equal(0, rc, out)
    assert.are.equal("adding <- x-adding -> s\n", out)
  end)
end)

describe("on_leader", function()
  it("runs a timer on exactly one of two workers", function()
    local env = { APP_ID = "lead-" .. uniq, OUT = "lead-out-" .. uniq }
    local broker, addr = proc.broker({ env.APP_ID .. "-__leader" }, 1)
    proc.create_topics(addr, env.OUT)
    local n = 0
    local function start()
      n = n + 1
      return proc.spawn(string.format("env APP_ID=%s OUT=%s %s worker %s/leader.lua --broker kafka://%s --store lmdb://%s/%s-%d-data",
        env.APP_ID, env.OUT, bin, fixtures, addr, proc.tmp, env.APP_ID, n), "worker-leader")
    end
    local a = start()
    assert.truthy(a:wait_for("assigned 1 partitions", 30), a:output())
    local b = start()
    assert.truthy(b:wait_for("assigned %d partitions", 60), b:output())   -- 0 or 1: one leads
    proc.sleep(3)
    local since = os.time()
    proc.sleep(3)
    assert.are.equal(0, a:stop())
    assert.are.equal(0, b:stop())
    local lines = proc.consume_all(addr, env.OUT)
    broker:stop()
    local json = require("fstream.core").json
    local pids, n = {}, 0
    for _, line in ipairs(lines) do
      local v = json.decode(line)
      if v and v.at >= since then pids[v.pid] = true; n = n + 1 end
    end
    local count = 0
    for _ in pairs(pids) do count = count + 1 end
    assert.is_true(n >= 5, "only " .. n .. " ticks")
    assert.are.equal(1, count)
  end)
end)

describe("bad input", function()
  it("10,000 messages, a third bad: each bad one in the DLQ byte for byte, each good one processed", function()
    local broker, addr = proc.broker({}, 4)
    local env = { APP_ID = "bad-" .. uniq, IN = "bad-in-" .. uniq, OUT = "bad-out-" .. uniq }
    local dlq = env.APP_ID .. "-check-dlq"
    proc.create_topics(addr, env.IN, env.OUT, dlq)
    local lines, good, bad = {}, {}, {}
    local big = string.rep("x", 1024 * 1024)
    for i = 1, 10000 do
      local line
      if i % 3 ~= 0 then
        line = string.format('{"id":%d,"amount":%d.5,"note":"ok"}', i, i)
        good[#good + 1] = i
      else
        local kind = (i // 3) % 3
        if i % 1250 == 0 then
          line = string.format('{"id":%d,"amount":1,"note":"%s"}', i, big)  -- oversized
        elseif kind == 0 then
          line = string.format('{"id":%d,"amount":', i)                    -- malformed JSON
        elseif kind == 1 then
          line = string.format('{"id":"%d","amount":true}', i)               -- wrong types
        else
          line = string.format('{"id":%d,"amount":1,"note":"\xff\xfe%d"}', i, i) -- invalid UTF-8
        end
        bad["b" .. i] = line
      end
      lines[#lines + 1] = (i % 3 ~= 0 and ("g" .. i) or ("b" .. i)) .. "\t" .. line
    end
    proc.produce_lines(addr, env.IN, lines, { key_delim = "\t" })
    local w = proc.worker("badinput.lua", env, addr)
    local out = proc.wait_count(addr, env.OUT, #good, 120)
    local nbad = 0
    for _ in pairs(bad) do nbad = nbad + 1 end
    proc.wait_count(addr, dlq, nbad, 60)
    assert.is_true(w:alive(), "worker died:\n" .. w:output():sub(-2000))
    assert.are.equal(0, w:stop())
    -- Every good one processed once.
    assert.are.equal(#good, #out)
    local seen = {}
    for _, v in ipairs(out) do seen[tonumber(v)] = true end
    for _, i in ipairs(good) do assert(seen[i], "good message " .. i .. " missing") end
    -- Every bad one in the DLQ, byte for byte.
    local dead = proc.run(string.format("kcat -C -b %s -t %s -o beginning -e -q -X fetch.message.max.bytes=4000000 -f '%%k\\t%%s\\n'", addr, dlq))
    local got = 0
    for entry in dead:gmatch("[^\n]+") do
      local k, v = entry:match("^(b%d+)\t(.*)$")
      assert(k and bad[k], "unexpected DLQ entry " .. entry:sub(1, 80))
      assert(bad[k] == v, "DLQ bytes differ for " .. k)
      got = got + 1
    end
    broker:stop()
    assert.are.equal(nbad, got)
    assert.are.equal(10000, #out + got)
  end)
end)

describe("nothing hangs the worker", function()
  -- spec/fixtures/runaway.lua on its embedded broker; returns the worker and the address.
  local function start(name, env)
    local id = name .. "-" .. uniq
    local vars = {}
    for k, v in pairs(env or {}) do vars[#vars + 1] = k .. "=" .. proc.quote(v) end
    local w = proc.spawn(string.format("env APP_ID=%s %s %s worker %s/runaway.lua --store lmdb://%s/%s-data",
      id, table.concat(vars, " "), bin, fixtures, proc.tmp, id), "worker-" .. name)
    local addr = w:wait_for("listening on ([%d%.]+:%d+)", 20)
    assert.truthy(addr, w:output())
    assert.truthy(w:wait_for("assigned %d+ partitions", 30), w:output())
    return w, addr
  end
  local function now()
    local p = io.popen("date +%s.%N")
    local t = tonumber(p:read("a"))
    p:close()
    return t
  end

  it("an event with ts = 1e300 in a window fails alone: later events are processed, SIGTERM stops", function()
    local w, addr = start("bigts")
    finally(function() w:signal("KILL") end)
    proc.produce_lines(addr, "in", { '{"n":1,"ts":100}', '{"n":2,"ts":1e300}', '{"n":3,"ts":101}' })
    assert.truthy(w:wait_for("processed 3", 20), w:output())
    assert.matches("agent wild failed: windowed table 'counts': .* is outside the", w:output())
    local t0 = now()
    w:signal("TERM")
    assert.are.equal(0, w:wait(15), w:output())
    assert.is_true(now() - t0 < 10)
  end)

  it("`while true do end` is interrupted after agent_timeout, logged with agent and file:line; the next events are processed", function()
    local w, addr = start("spin", { AGENT_TIMEOUT = "1" })
    finally(function() w:signal("KILL") end)
    proc.produce_lines(addr, "in", { '{"spin":"loop"}', '{"n":7,"ts":100}' })
    assert.truthy(w:wait_for("processed 7", 20), w:output())
    assert.matches("agent wild failed: [^\n]*spec/fixtures/runaway.lua:19: interrupted after running 1%.%d s "
      .. "without yielding %(agent_timeout%) %(event in%[0%]@0%)", w:output())
    assert.are.equal(0, w:stop(15))
  end)

  it("a pcall inside the agent cannot swallow the interruption", function()
    local w, addr = start("pcall", { AGENT_TIMEOUT = "1" })
    finally(function() w:signal("KILL") end)
    proc.produce_lines(addr, "in", { '{"spin":"pcall"}', '{"n":8,"ts":100}' })
    assert.truthy(w:wait_for("processed 8", 20), w:output())
    assert.matches("agent wild failed: [^\n]*spec/fixtures/runaway.lua:22: interrupted after running", w:output())
    assert.are.equal(0, w:stop(15))
  end)

  it("SIGTERM during a runaway exits 0 once agent_timeout has interrupted it", function()
    local w, addr = start("termspin", { AGENT_TIMEOUT = "3" })
    finally(function() w:signal("KILL") end)
    proc.produce_lines(addr, "in", { '{"spin":"loop"}' })
    assert.truthy(w:wait_for("spinning", 20), w:output())
    local t0 = now()
    w:signal("TERM")
    -- The stop begins while the agent still spins (the count hook reads the signal).
    assert.truthy(w:wait_for("stopping %(SIGTERM%)", 2), w:output())
    assert.are.equal(0, w:wait(15), w:output())
    assert.is_true(now() - t0 < 8, "took " .. (now() - t0) .. " s")
    assert.matches("final checkpoint done", w:output())
  end)

  it("an agent that raises while the worker stops does not hang the stop", function()
    local w, addr = start("raisestop")
    finally(function() w:signal("KILL") end)
    proc.produce_lines(addr, "in", { '{"raise":2}' })
    assert.truthy(w:wait_for("holding", 20), w:output())
    w:signal("TERM")
    assert.are.equal(0, w:wait(15), w:output())
    assert.matches("agent wild failed: [^\n]*failing while the worker stops", w:output())
    assert.matches("worker stopped %(exit 0%)", w:output())
  end)

  it("a second SIGINT exits at once, even while an agent spins", function()
    local w, addr = start("twice", { AGENT_TIMEOUT = "60" })
    finally(function() w:signal("KILL") end)
    proc.produce_lines(addr, "in", { '{"spin":"loop"}' })
    assert.truthy(w:wait_for("spinning", 20), w:output())
    w:signal("INT")
    assert.truthy(w:wait_for("stopping %(SIGINT%)", 3), w:output())
    assert.is_true(w:alive())
    local t0 = now()
    w:signal("INT")
    assert.are.equal(128 + 2, w:wait(5), w:output())
    assert.is_true(now() - t0 < 2)
    assert.matches("second Interrupt: exiting at once without committing", w:output())
  end)
end)
