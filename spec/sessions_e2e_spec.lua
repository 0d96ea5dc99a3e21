-- Session windows and idle_close in a real worker on the standalone embedded
-- broker (spec/fixtures/sessions.lua): sessions survive a restart (their
-- ends come back from the store, so a bridging event after the restart merges
-- them), a kill -9 loses no session, and idle_close closes the last session
-- with no further input.
local proc = require "spec.support.proc"
local json = require("fstream.core").json
local bin, fixtures = proc.bin, proc.root .. "/spec/fixtures"
local uniq = tostring(os.time()) .. "-" .. tostring(math.random(1e6))

describe("session windows in a worker", function()
  local broker, addr
  setup(function() broker, addr = proc.broker({}, 2) end)
  teardown(function() broker:stop() end)

  local n = 0
  local function env_for(extra)
    n = n + 1
    local env = { APP_ID = "sess-" .. n .. "-" .. uniq, IN = "sess-in-" .. n .. "-" .. uniq,
      OUT = "sess-out-" .. n .. "-" .. uniq }
    for k, v in pairs(extra or {}) do env[k] = v end
    proc.create_topics(addr, env.IN, env.OUT)
    return env, proc.tmp .. "/" .. env.APP_ID
  end
  local function start(env, store)
    local vars = {}
    for k, v in pairs(env) do vars[#vars + 1] = k .. "=" .. proc.quote(v) end
    local w = proc.spawn(string.format("env %s %s worker %s/sessions.lua --broker kafka://%s --store lmdb://%s",
      table.concat(vars, " "), bin, fixtures, addr, store), "worker-sessions")
    assert.truthy(w:wait_for("assigned %d+ partitions", 30), w:output())
    return w
  end
  local function rows(env)
    local out = {}
    for i, v in ipairs(proc.consume_all(addr, env.OUT)) do out[i] = json.decode(v) end
    return out
  end
  -- Every line keyed "a": one partition, so user b's views move a's stream time.
  local function views(env, list)
    local lines = {}
    for i, v in ipairs(list) do lines[i] = string.format('a:{"user":"%s","ts":%s}', v[1], v[2]) end
    proc.produce_lines(addr, env.IN, lines, { key_delim = ":" })
  end

  it("merges sessions opened before a restart with a bridging event after it, and closes them once", function()
    local env, store = env_for()
    local w = start(env, store)
    -- a: [100, 115) and [122, 132): 122 is 17 s after 105.
    views(env, { { "a", 100 }, { "a", 105 }, { "a", 122 } })
    proc.sleep(2)
    assert.are.equal(0, w:stop())
    assert.are.same({}, rows(env))

    w = start(env, store)
    -- 113 is closer than 10 s to both (the first ends at 115: its end came back
    -- from the store, not start + gap).
    views(env, { { "a", 113 } })
    proc.sleep(1)
    views(env, { { "b", 200 } }) -- stream time 200: the merged session closes
    proc.wait_count(addr, env.OUT, 1, 30)
    proc.sleep(1)
    assert.are.equal(0, w:stop())
    assert.are.same({ { user = "a", start = 100, ["end"] = 132, count = 4 } }, rows(env))

    -- Closed and gone: a restart closes nothing again; an event inside it is late.
    w = start(env, store)
    views(env, { { "a", 120 } })
    proc.wait_count(addr, env.OUT, 2, 30)
    proc.sleep(1)
    assert.are.equal(0, w:stop())
    assert.are.same({ { user = "a", start = 100, ["end"] = 132, count = 4 }, { late = "a" } }, rows(env))
  end)

  it("a worker with an empty store (another machine taking the partitions) rebuilds sessions from the changelog", function()
    local env, store = env_for()
    local w = start(env, store)
    views(env, { { "a", 100 }, { "a", 105 }, { "a", 122 } })
    proc.sleep(2)
    assert.are.equal(0, w:stop())
    w = start(env, store .. "-other")
    assert.truthy(w:wait_for("recovered table counts%[%d+%]: [1-9]", 30), w:output())
    views(env, { { "a", 113 }, { "b", 200 } })
    proc.wait_count(addr, env.OUT, 1, 30)
    proc.sleep(1)
    assert.are.equal(0, w:stop())
    assert.are.same({ { user = "a", start = 100, ["end"] = 132, count = 4 } }, rows(env))
  end)

  it("loses no session across a kill -9 (at-least-once: a close may repeat, always with the same value)", function()
    local env, store = env_for()
    local w = start(env, store)
    -- [100, 114) and [118, 132); stream time 122, so neither has closed.
    views(env, { { "a", 100 }, { "a", 104 }, { "a", 118 }, { "a", 122 } })
    proc.sleep(1.5) -- past a checkpoint
    w:signal("KILL")
    w:wait(10)
    w = start(env, store)
    views(env, { { "a", 110 }, { "b", 300 } }) -- bridges [100, 114) and [118, 132)
    proc.wait_count(addr, env.OUT, 1, 30)
    proc.sleep(1)
    assert.are.equal(0, w:stop())
    local got = rows(env)
    assert.is_true(#got >= 1)
    for _, r in ipairs(got) do
      assert.are.same({ user = "a", start = 100, ["end"] = 132, count = 5 }, r)
    end
  end)

  it("idle_close: closes the last session with no further input", function()
    local env, store = env_for { GAP = "2", EXPIRES = "0", IDLE = "1" }
    local w = start(env, store)
    views(env, { { "a", 100 }, { "a", 101 } })
    -- Nothing more arrives: after 1 s of quiet stream time follows the clock
    -- past 103, and the session [100, 103) closes.
    local got = proc.wait_count(addr, env.OUT, 1, 30)
    proc.sleep(1)
    assert.are.equal(0, w:stop())
    assert.are.same({ { user = "a", start = 100, ["end"] = 103, count = 2 } }, rows(env))
    assert.are.equal(1, #got)
  end)

  it("idle_close: a session open when the worker stopped closes after a restart with no further input", function()
    local env, store = env_for { GAP = "2", EXPIRES = "0" }
    local w = start(env, store)
    views(env, { { "a", 100 }, { "a", 101 } })
    proc.sleep(2)
    assert.are.equal(0, w:stop())
    assert.are.same({}, rows(env))
    -- The same store with idle_close on: quiet counts from when the worker took the partition.
    env.IDLE = "1"
    w = start(env, store)
    proc.wait_count(addr, env.OUT, 1, 30)
    proc.sleep(1)
    assert.are.equal(0, w:stop())
    assert.are.same({ { user = "a", start = 100, ["end"] = 103, count = 2 } }, rows(env))
  end)

  it("without idle_close the last session stays open", function()
    local env, store = env_for { GAP = "2", EXPIRES = "0" }
    local w = start(env, store)
    views(env, { { "a", 100 }, { "a", 101 } })
    proc.sleep(5)
    assert.are.equal(0, w:stop())
    assert.are.same({}, rows(env))
  end)
end)
