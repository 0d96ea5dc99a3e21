-- Exactly-once's own mechanisms that need no broker: the options, and the
-- hold an exactly-once checkpoint puts on agents (they stop at their next
-- event boundary, nothing is dropped) with its "quiet" check, on
-- fstream.testing's fake clock. (On real Kafka: eos_reset_kafka_spec.lua and
-- eos_spec.lua.)
local fstream = require "fstream"

local n = 0
local function id(name)
  n = n + 1
  return string.format("%s-%d", name, n)
end

describe("processing_guarantee", function()
  it("refuses anything but at_least_once and exactly_once, saying which are accepted", function()
    local ok, err = pcall(fstream.app, "pg-bad", { processing_guarantee = "exactly-once" })
    assert.is_false(ok)
    assert.matches([[processing_guarantee must be "at_least_once" or "exactly_once", got 'exactly%-once']], err)
    ok, err = pcall(fstream.app, "pg-bad2", { processing_guarantee = 1 })
    assert.is_false(ok)
    assert.matches("got 1", err)
  end)

  it("defaults commit_interval to 0.1 s under exactly_once and 2.8 s otherwise; an explicit one wins", function()
    local eos = fstream.app(id("pg-eos"), { processing_guarantee = "exactly_once" })
    assert.are.equal(0.1, eos.commit_interval)
    local alo = fstream.app(id("pg-alo"))
    assert.are.equal(2.8, alo.commit_interval)
    local set = fstream.app(id("pg-set"), { processing_guarantee = "exactly_once", commit_interval = 0.5 })
    assert.are.equal(0.5, set.commit_interval)
    -- What the runtime was given (the worker's commit timer).
    local t = fstream.testing(eos)
    assert.are.equal(100, t:stats().commit_interval_ms)
    t:close()
  end)

  it("is overridden at start (the command line's --guarantee), and the default interval follows it", function()
    local a = fstream.app(id("pg-over"), { processing_guarantee = "exactly_once" })
    assert.are.equal("at_least_once", a:_guarantee("at_least_once"))
    assert.are.equal(2.8, a.commit_interval)
    local b = fstream.app(id("pg-over2"), { commit_interval = 1 })
    assert.are.equal("exactly_once", b:_guarantee("exactly_once"))
    assert.are.equal(1, b.commit_interval) -- the app's own value stays
    assert.has_error(function() b:_guarantee("twice") end,
      "unknown processing guarantee 'twice' (at_least_once or exactly_once)")
  end)

  it("fstream.testing runs an exactly_once app like any other (its logic, in memory)", function()
    local a = fstream.app(id("pg-test"), { processing_guarantee = "exactly_once", topic_partitions = 2 })
    local words = a:topic("words", { value_serializer = "raw" })
    local counts = a:table("counts", { default = 0 })
    a:agent("count", words, function(stream)
      for w in stream do counts[w] = counts[w] + 1 end
    end)
    local t = fstream.testing(a)
    for _, w in ipairs { "a", "b", "a", "c", "a" } do t:send(words, { key = w, value = w }) end
    t:run()
    t:advance(1) -- checkpoints run (they stage; nothing is durable here)
    assert.are.equal(3, t:table("counts")["a"])
    assert.are.equal(1, t:table("counts")["c"])
    assert.are.equal("at_least_once", t.rt:guarantee()) -- nothing is transactional in memory
    t:close()
  end)
end)

describe("the hold", function()
  -- An agent that sleeps inside the events that ask for it, and records what it finished.
  local function sleeper()
    local a = fstream.app(id("hold"), { topic_partitions = 1 })
    local src = a:topic("src")
    local done = {}
    a:agent("slow", src, function(stream)
      for v in stream do
        if v.sleep then fstream.sleep(v.sleep) end
        done[#done + 1] = v.n
      end
    end)
    return a, src, done
  end

  it("lets the agent finish the event in hand, stops it at the next boundary, then lets it go on: nothing dropped", function()
    local a, src, done = sleeper()
    local t = fstream.testing(a)
    t:send(src, { n = 1, sleep = 5 })
    t:send(src, { n = 2 })
    t:send(src, { n = 3 })
    t:run()
    -- In the middle of event 1 (asleep): not at a boundary.
    assert.are.same({}, done)
    assert.is_false(t.rt:test_quiet())
    t.rt:test_hold(true)
    assert.is_false(t.rt:test_quiet())
    t:advance(5) -- the sleep ends: event 1 finishes, the agent stops before event 2
    assert.are.same({ 1 }, done)
    assert.is_true(t.rt:test_quiet())
    t:advance(5)
    assert.are.same({ 1 }, done) -- held, however long
    assert.is_true(t.rt:test_quiet())
    t.rt:test_hold(false)
    t:run()
    assert.are.same({ 1, 2, 3 }, done)
    assert.is_true(t.rt:test_quiet())
    t:close()
  end)

  it("holds an agent waiting for events: what arrives meanwhile waits, in order", function()
    local a, src, done = sleeper()
    local t = fstream.testing(a)
    t:run()
    t.rt:test_hold(true)
    for i = 1, 4 do t:send(src, { n = i }) end
    t:run()
    assert.are.same({}, done)
    assert.is_true(t.rt:test_quiet())
    t.rt:test_hold(false)
    t:run()
    assert.are.same({ 1, 2, 3, 4 }, done)
    t:close()
  end)

  it("is not quiet while a window close pass is under way (on_window_close waiting)", function()
    local a = fstream.app(id("hold-win"), { topic_partitions = 1 })
    local ev = a:topic("ev")
    local closed = {}
    local tb = a:table("w", {
      default = 0,
      on_window_close = function(key)
        fstream.sleep(3)
        closed[#closed + 1] = key
      end,
    }):tumbling(10):relative_to_now()
    a:agent("agg", ev, function(stream)
      for v in stream do tb:update(v.k, function(c) return c + 1 end) end
    end)
    local t = fstream.testing(a, { clock = 1000 })
    t:send(ev, { key = "x", value = { k = "x" } })
    t:run()
    assert.is_true(t.rt:test_quiet()) -- the agent waits for events
    t:advance(11) -- the closer's pass starts and sleeps inside on_window_close
    assert.are.same({}, closed)
    assert.is_false(t.rt:test_quiet())
    t:advance(5)
    assert.are.same({ "x" }, closed)
    assert.is_true(t.rt:test_quiet())
    t:close()
  end)
end)
