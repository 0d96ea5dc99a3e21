-- Changelog recovery is work the worker's loop drives: timers keep firing and
-- a stop is served while a large changelog replays (a standalone embedded
-- broker; the changelog is written straight to it, the local state is empty).
local proc = require "spec.support.proc"
local bin, fixtures = proc.bin, proc.root .. "/spec/fixtures"
local uniq = tostring(os.time()) .. "-" .. tostring(math.random(1e6))

-- 16 partitions of 150,000 records each (about 3.6 MB a partition: the embedded
-- broker keeps about 5 MB of each, so nothing is dropped).
local P, N = 16, 150000
local TOTAL = P * N

-- Seconds since midnight of a log line's timestamp (2026-11-29T03:40:11.569).
local function stamp(line)
  local h, m, s = line:match("T(%d%d):(%d%d):(%d%d%.%d+)")
  return tonumber(h) * 3600 + tonumber(m) * 60 + tonumber(s)
end

local function lines_matching(out, pattern)
  local found = {}
  for line in out:gmatch("[^\n]+") do
    if line:find(pattern) then found[#found + 1] = line end
  end
  return found
end

-- "tables: ... N records recovered", the last line of a clean stop.
local function recovered(out)
  return tonumber(out:match("(%d+) records recovered"))
end

describe("changelog recovery of a large table", function()
  local broker, addr
  local env = { APP_ID = "rcv-" .. uniq, IN = "rcv-in-" .. uniq }
  setup(function()
    local changelog = env.APP_ID .. "-word_counts-changelog"
    broker, addr = proc.broker({ env.IN, changelog }, P)
    for p = 0, P - 1 do
      local buf = {}
      for i = 1, N do buf[i] = string.format('"k%d_%d"\t%d', p, i, i) end
      local path = proc.write(string.format("%s/rcv-%s-%d.txt", proc.tmp, uniq, p), table.concat(buf, "\n") .. "\n")
      local out, rc = proc.run(string.format("kcat -P -b %s -t %s -p %d -K'\t' -l %s", addr, changelog, p, path))
      os.remove(path)
      assert.are.equal(0, rc, out)
    end
  end)
  teardown(function() broker:stop() end)

  local function worker(store)
    return proc.spawn(string.format("env APP_ID=%s IN=%s PARTITIONS=%d TICK=0.1 %s worker %s/recovery.lua --broker kafka://%s --store lmdb://%s",
      env.APP_ID, env.IN, P, bin, fixtures, addr, store), "worker-rcv")
  end
  local all_recovered = ("recovered table word_counts%[%d+%].-"):rep(P)

  it("keeps a timer firing while the changelog replays", function()
    local w = worker(proc.tmp .. "/rcv-a-" .. uniq)
    finally(function() w:signal("KILL") end)
    assert.truthy(w:wait_for(all_recovered, 60), w:output())
    assert.are.equal(0, w:stop())
    local out = w:output()
    assert.are.equal(TOTAL, recovered(out), out)
    -- The replay's span: from the first partition's start to the last one's end.
    local first = stamp(lines_matching(out, "recovering table word_counts%[%d+%]: %d+ changelog records")[1])
    local ends = lines_matching(out, "recovered table word_counts%[%d+%]")
    local last = stamp(ends[#ends])
    assert.is_true(last - first >= 1, "the replay took " .. (last - first) .. " s: too short to tell")
    -- A 0.1 s timer: no gap of a second between its calls, and calls all along the span.
    local prev, inside = first, 0
    for _, line in ipairs(lines_matching(out, "info  tick %d+")) do
      local t = stamp(line)
      if t > first and t < last then
        inside = inside + 1
        assert.is_true(t - prev < 1, string.format("no tick for %.2f s during the replay:\n%s", t - prev, out))
        prev = t
      end
    end
    assert.is_true(last - prev < 1, string.format("no tick in the last %.2f s of the replay:\n%s", last - prev, out))
    assert.is_true(inside >= (last - first) / 0.1 / 3, inside .. " ticks in " .. (last - first) .. " s:\n" .. out)
  end)

  it("stops on SIGTERM during the replay within the stop deadline, and the next start resumes it", function()
    local store = proc.tmp .. "/rcv-b-" .. uniq
    local w = worker(store)
    finally(function() w:signal("KILL") end)
    assert.truthy(w:wait_for("recovering table word_counts%[%d+%]: %d+ changelog records", 60), w:output())
    w:signal("TERM")
    -- The stop deadline (30 s): a stop during recovery must not wait for it.
    local t0 = os.time()
    assert.are.equal(0, w:wait(30), w:output())
    assert.is_true(os.time() - t0 <= 5, "the stop took " .. (os.time() - t0) .. " s")
    local out = w:output()
    assert.matches("stopping %(SIGTERM%)", out)
    -- The replay in progress, or (the stop came between two partitions) the ones not begun.
    assert.matches("recovery of [^\n]* interrupted by a stop", out)
    local first = recovered(out)
    assert.is_true(first < TOTAL, out)
    -- What LMDB took before the stop is not replayed again: the two runs together read each record once.
    -- An input event reaches the agent only once every partition is recovered.
    proc.produce_lines(addr, env.IN, { "hello:hello" }, { key_delim = ":" })
    w = worker(store)
    assert.truthy(w:wait_for("counted hello", 60), w:output())
    assert.are.equal(0, w:stop())
    assert.are.equal(TOTAL, first + recovered(w:output()), w:output())
  end)
end)
