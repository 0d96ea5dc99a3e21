-- Damaged local state (issue 15, scenario 5; chaos/scenarios/damage.lua runs
-- the long version): LMDB files of a table partition truncated, zeroed,
-- emptied or deleted while no worker runs. A reader (the table CLI) refuses
-- them with "damaged local state" and the path, never dies or reads garbage;
-- a worker says so with the path, moves the files aside (kept) and rebuilds
-- the partition from its changelog with exact counts.
local proc = require "spec.support.proc"
local eos = require "spec.support.eos"
local core = require "fstream.core"

local q = proc.quote
local WORDS = 8

local function sh(cmd)
  local out, rc = proc.run(cmd)
  assert(rc == 0, cmd .. ": " .. out)
  return out
end

local function size(path)
  local out, rc = proc.run("stat -c %s " .. q(path))
  return rc == 0 and tonumber(out:match("%d+")) or nil
end

local DAMAGES = {
  { "truncated to half", function(f) sh(string.format("truncate -s %d %s", size(f) // 2, q(f))) end },
  { "header page zeroed", function(f) sh("dd if=/dev/zero of=" .. q(f) .. " bs=4096 count=1 conv=notrunc 2>&1") end },
  { "emptied", function(f) sh("truncate -s 0 " .. q(f)) end },
}

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
    local best = -1
    for i = 0, 3 do
      local s = size(string.format("%s/word_counts/%d/data.mdb", pristine, i)) or 0
      if s > best then part, best = i, s end
    end
  end)

  teardown(function()
    eos.cleanup()
    if broker then broker:signal("KILL") end
  end)

  local function damaged_copy(name, fn)
    local store = root .. "/" .. name:gsub("%W", "-")
    sh(string.format("rm -rf %s && cp -a %s %s", q(store), q(pristine), q(store)))
    local dir = string.format("%s/word_counts/%d", store, part)
    fn(dir .. "/data.mdb")
    return store, dir
  end

  for _, d in ipairs(DAMAGES) do
    it("data.mdb " .. d[1] .. ": the table CLI's reader refuses it, naming it", function()
      local store, dir = damaged_copy("ro-" .. d[1], d[2])
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
    it("data.mdb " .. d[1] .. ": a worker moves it aside and rebuilds the partition from its changelog", function()
      local store, dir = damaged_copy("rw-" .. d[1], d[2])
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
    local store, dir = damaged_copy("rw-deleted", function(f) os.remove(f) end)
    local w = eos.worker(env, addr, store)
    assert(w:wait_for("recovered table word_counts%[" .. part .. "%]", 60), w:output())
    assert.are.equal(0, w:stop())
    assert.matches("local state in " .. dir .. " was damaged (data.mdb was missing", w:output(), 1, true)
    assert.is_nil(eos.diff_counts(eos.word_counts(inputs), eos.table_counts(env, store)))
  end)
end)
