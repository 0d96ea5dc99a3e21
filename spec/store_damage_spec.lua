-- Damaged local state (issue 15, scenario 5; chaos/scenarios/damage.lua runs
-- the long version): LMDB files of a table partition truncated, zeroed,
-- emptied or deleted while no worker runs. A reader (the table CLI) refuses
-- them with "damaged local state" and the path, never dies or reads garbage;
-- a worker says so with the path, moves the files aside (kept) and rebuilds
-- the partition from its changelog with exact counts.
local proc = require "spec.support.proc"
local eos = require "spec.support.eos"
local core = require "fstream.core"
local damage = require "spec.support.damage"

local q = proc.quote
local sh, size = damage.sh, damage.size
local DAMAGES = { "data.mdb truncated to half", "header page zeroed", "data.mdb emptied" }

describe("damaged LMDB files of a table partition", function()
  local broker, addr, env, pristine, inputs, part
  local root = proc.tmp .. "/store-damage"

  setup(function()
    sh("rm -rf " .. q(root) .. " && mkdir -p " .. q(root))
    broker, addr = proc.broker({}, 4)
    env = eos.names("damage")
    env.GUARANTEE, env.COMMIT_INTERVAL = "at_least_once", "0.5"
    pristine = root .. "/pristine"
    local w = eos.worker(env, addr, pristine)
    assert(w:wait_for("assigned %d+ partitions", 60), w:output())
    -- Enough keys that the partition's B-tree spans many pages: its root,
    -- written last, is in the file's second half.
    local p = eos.producer(addr, env.IN, 1, 3000, 3000, 600, (os.time() - 60) * 100)
    assert.are.equal(0, p:wait(60))
    inputs = eos.inputs(addr, env.IN)
    assert(eos.wait_drained(addr, env, inputs, 60, { w }))
    assert.are.equal(0, w:stop())
    part = damage.fullest(pristine)
  end)

  teardown(function()
    eos.cleanup()
    if broker then broker:signal("KILL") end
  end)

  local function damaged_copy(name, kind)
    local store = root .. "/" .. name:gsub("%W", "-")
    sh(string.format("rm -rf %s && cp -a %s %s", q(store), q(pristine), q(store)))
    local dir = string.format("%s/word_counts/%d", store, part)
    damage.fn[kind](dir)
    return store, dir
  end

  for _, d in ipairs(DAMAGES) do
    it(d .. ": the table CLI's reader refuses it, naming it", function()
      local store, dir = damaged_copy("ro-" .. d, d)
      -- In a child process: a SIGBUS must fail the spec, not end busted.
      local out, rc = proc.run(string.format("env %s %s table %s word_counts --store lmdb://%s",
        eos.envs(env), proc.bin, q(eos.fixture), q(store)))
      assert.are_not.equal(0, rc, out)
      assert.is_true(rc < 128, "killed by a signal: " .. out)
      assert.matches("damaged local state", out, 1, true)
      assert.matches(dir, out, 1, true)
      local keys, err = core.store_scan(dir)
      assert.is_nil(keys)
      assert.matches("damaged local state", err, 1, true)
    end)
  end

  for _, d in ipairs(DAMAGES) do
    it(d .. ": a worker moves it aside and rebuilds the partition from its changelog", function()
      local store, dir = damaged_copy("rw-" .. d, d)
      local w = eos.worker(env, addr, store)
      assert(w:wait_for("recovered table word_counts%[" .. part .. "%]", 60), w:output())
      assert.are.equal(0, w:stop())
      local log = w:output()
      assert.matches("table word_counts[" .. part .. "]: local state in " .. dir .. " was damaged", log, 1, true)
      local aside = log:match("moved to (" .. dir:gsub("%p", "%%%0") .. "/damaged%-[%w%-]+)")
      assert.truthy(aside, log)
      assert.truthy(size(aside .. "/data.mdb"), "the damaged data.mdb is kept in " .. aside)
      assert.is_nil(eos.diff_counts(eos.word_counts(inputs), eos.table_counts(env, store)))
    end)
  end

  it("data.mdb deleted (lock.mdb left): the worker says so and rebuilds", function()
    local store, dir = damaged_copy("rw-deleted", "data.mdb deleted")
    local w = eos.worker(env, addr, store)
    assert(w:wait_for("recovered table word_counts%[" .. part .. "%]", 60), w:output())
    assert.are.equal(0, w:stop())
    assert.matches("local state in " .. dir .. " was damaged (data.mdb was missing", w:output(), 1, true)
    assert.is_nil(eos.diff_counts(eos.word_counts(inputs), eos.table_counts(env, store)))
  end)
end)
