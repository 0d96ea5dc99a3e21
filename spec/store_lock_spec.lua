-- A table partition's files held by another process (its owner.lock): the
-- worker waits for them on a timer, not in a sleep, so the loop goes on
-- serving signals meanwhile; past the wait's bound the start fails, naming
-- the lock. (workers_spec shows the wait that ends when the holder lets go.)
local proc = require "spec.support.proc"
local wc = require "spec.support.wordcount"

local uniq = tostring(os.time()) .. "-" .. tostring(math.random(1e6))

describe("a worker waiting for a table partition's files", function()
  local broker, addr
  setup(function() broker, addr = proc.broker({}, 4) end)
  teardown(function() broker:stop() end)

  -- util-linux flock holds the same kind of lock the worker takes.
  local function hold(store, p, seconds)
    os.execute(string.format("mkdir -p %s/word_counts/%d", proc.quote(store), p))
    local h = proc.spawn(string.format("flock -x %s/word_counts/%d/owner.lock sleep %d", proc.quote(store), p, seconds),
      "holder")
    proc.sleep(0.3)
    return h
  end

  it("stops at once on SIGTERM, without waiting for the files", function()
    local env = { APP_ID = "lock1-" .. uniq, IN = "lock1-in-" .. uniq }
    local store = proc.tmp .. "/lock1-" .. uniq
    local holder = hold(store, 2, 60)
    finally(function() holder:signal("KILL") end)
    proc.produce_lines(addr, env.IN, { "a:a", "b:b" }, { key_delim = ":" })
    local w = wc.worker(env, addr, store)
    finally(function() w:signal("KILL") end)
    assert.truthy(w:wait_for("table word_counts%[2%]: [^\n]* in use by another worker [^\n]*; waiting up to 10 s", 30),
      w:output())
    w:signal("TERM")
    -- A loop blocked in the wait would see the signal only after it, and
    -- then fail the start (exit 1).
    assert.are.equal(0, w:wait(30), w:output())
    local out = w:output()
    assert.matches("stopping %(SIGTERM%)", out)
    assert.is_nil(out:find("still after", 1, true), out)
  end)

  it("fails the start past 10 s, naming the lock and what may hold it", function()
    local env = { APP_ID = "lock2-" .. uniq, IN = "lock2-in-" .. uniq }
    local store = proc.tmp .. "/lock2-" .. uniq
    local holder = hold(store, 1, 60)
    finally(function() holder:signal("KILL") end)
    local w = wc.worker(env, addr, store)
    finally(function() w:signal("KILL") end)
    assert.are.equal(1, w:wait(60), w:output())
    local lock = (store .. "/word_counts/1/owner.lock"):gsub("%p", "%%%0")
    assert.matches("table word_counts%[1%]: [^\n]*in use by another worker %(it holds " .. lock
      .. "%), still after 10 s: is another worker on this data directory stuck or stopped", w:output())
    -- The holder kept its lock: nothing of partition 1 was opened.
    assert.is_nil(proc.read(store .. "/word_counts/1/data.mdb"))
  end)
end)
