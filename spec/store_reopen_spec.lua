-- A checkpoint that rewrites many pages of a partition reopens its LMDB
-- environment (LMDB frees a write transaction's page buffers only when the
-- environment closes). FSTREAM_LMDB_DIRTY_KEEP lowers the 1 MiB threshold so
-- that a few thousand distinct keys cross it; the counts must come out exact
-- through several reopens, in the checkpoints after them and across a restart.
local proc = require "spec.support.proc"
local wc = require "spec.support.wordcount"

local uniq = tostring(os.time()) .. "-" .. tostring(math.random(1e6))

local function worker(env, addr, store)
  return wc.worker(env, addr, store, { env = "FSTREAM_LMDB_DIRTY_KEEP=16384", debug = true })
end

describe("a burst of distinct keys in one checkpoint", function()
  local broker, addr
  setup(function() broker, addr = proc.broker({}, 4) end)
  teardown(function() broker:stop() end)

  it("reopens the partitions' stores and keeps every count exact", function()
    local env = { APP_ID = "reopen-" .. uniq, IN = "reopen-in-" .. uniq }
    local store = proc.tmp .. "/reopen-store-" .. uniq
    local lines, expected = wc.distinct(8000)
    proc.create_topics(addr, env.IN)
    proc.produce_lines(addr, env.IN, lines, { key_delim = ":" })
    local w = worker(env, addr, store)
    wc.wait_total(env, 8000, 90, w, store)
    -- The same keys again, after the reopens: written into the reopened stores.
    local again = {}
    for i = 1, 8000, 2 do
      again[#again + 1] = "key-" .. i .. ":key-" .. i
      expected["key-" .. i] = 2
    end
    proc.produce_lines(addr, env.IN, again, { key_delim = ":" })
    wc.wait_total(env, 12000, 90, w, store)
    assert.are.equal(0, w:stop())
    local out = w:output()
    local n = select(2, out:gsub("reopening it after a write of %d+ keys", ""))
    assert.is_true(n >= 4, out:sub(-3000))
    assert.are.same(expected, wc.read_counts(env, store))

    -- A restart reads the files the reopened environments wrote.
    proc.produce_lines(addr, env.IN, { "key-2:key-2" }, { key_delim = ":" })
    expected["key-2"] = 2
    w = worker(env, addr, store)
    wc.wait_total(env, 12001, 60, w, store)
    assert.are.equal(0, w:stop())
    assert.are.same(expected, wc.read_counts(env, store))
  end)
end)
