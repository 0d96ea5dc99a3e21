-- A checkpoint's changelog records go out at most FSTREAM_CHANGELOG_INFLIGHT
-- at a time (default 16384): librdkafka holds each one until it is delivered,
-- and a burst of distinct keys stages one per key. The rest follow as the
-- first are delivered; the checkpoint commits once every one is. Here the
-- bound is 100 and one checkpoint stages 20,000: every record must reach
-- the changelog, as a worker with an empty store that recovers from it shows.
-- Once checkpoints have staged 20,000 entries the Lua heap is collected
-- after the flush (the record cache replaced is old garbage: app.lua, BIG_FLUSH).
local proc = require "spec.support.proc"
local wc = require "spec.support.wordcount"

local uniq = tostring(os.time()) .. "-" .. tostring(math.random(1e6))

local function worker(env, addr, store)
  return wc.worker(env, addr, store, { env = "FSTREAM_CHANGELOG_INFLIGHT=100", debug = true })
end

describe("a checkpoint with more changelog records than may be in flight", function()
  local broker, addr
  setup(function() broker, addr = proc.broker({}, 4) end)
  teardown(function() broker:stop() end)

  it("sends them in rounds, every one reaches the changelog, and the Lua heap is collected after it", function()
    local env = { APP_ID = "bound-" .. uniq, IN = "bound-in-" .. uniq }
    local store = proc.tmp .. "/bound-store-" .. uniq
    local lines, expected = wc.distinct(20000)
    proc.create_topics(addr, env.IN)
    proc.produce_lines(addr, env.IN, lines, { key_delim = ":" })
    local w = worker(env, addr, store)
    wc.wait_total(env, 20000, 90, w, store)
    assert.are.equal(0, w:stop())
    local out = w:output()
    local rounds = {}
    for n, r in out:gmatch("changelog records: (%d+) sent in (%d+) rounds %(at most 100 in flight%)") do
      rounds[#rounds + 1] = { tonumber(n), tonumber(r) }
    end
    assert.is_true(#rounds >= 1, out:sub(-3000))
    local big = tonumber(out:match("checkpoints staged (%d+) table entries: Lua heap collected"))
    assert.is_true(big ~= nil and big >= 20000, out:sub(-3000))
    for _, nr in ipairs(rounds) do assert.is_true(nr[2] >= nr[1] / 100, out:sub(-3000)) end
    assert.are.same(expected, wc.read_counts(env, store))
    assert.is_true(proc.count_messages(addr, env.APP_ID .. "-word_counts-changelog") >= 20000)

    -- An empty store: the table comes back from the changelog alone.
    local fresh = proc.tmp .. "/bound-fresh-" .. uniq
    proc.produce_lines(addr, env.IN, { "key-2:key-2" }, { key_delim = ":" })
    expected["key-2"] = 2
    w = worker(env, addr, fresh)
    wc.wait_total(env, 20001, 60, w, fresh)
    assert.are.equal(0, w:stop())
    assert.are.same(expected, wc.read_counts(env, fresh))
  end)
end)
