-- A full disk under the store (issue 15, scenario 4; chaos/scenarios/disk.lua
-- runs the long version under both guarantees). The store lives on a small
-- tmpfs that this spec mounts (root only: pending otherwise) under spec/tmp
-- and unmounts again. The worker must stop with "no space left on device"
-- and the path of the file it could not write (LMDB itself says
-- "Input/output error" for the short write a full disk gives, without a
-- path), never die by a signal (lock.mdb is written through a shared map),
-- and once space is back start again with nothing lost.
local proc = require "spec.support.proc"
local eos = require "spec.support.eos"

local q = proc.quote
local root = proc.run("id -u") == "0\n"

local function sh(cmd)
  local out, rc = proc.run(cmd)
  assert(rc == 0, cmd .. ": " .. out)
  return out
end

local function mount(name, size)
  local mnt = proc.tmp .. "/" .. name
  sh("mkdir -p " .. q(mnt) .. " && mount -t tmpfs -o size=" .. size .. " fstream-spec-full " .. q(mnt))
  return mnt
end

local function umount(mnt)
  local _, rc = proc.run("umount " .. q(mnt))
  if rc ~= 0 then proc.run("umount -l " .. q(mnt)) end
end

local function fill(mnt) proc.run("dd if=/dev/zero of=" .. q(mnt .. "/filler") .. " bs=64k 2>/dev/null") end

-- The log's line that says "no space left on device".
local function no_space_line(log)
  for line in log:gmatch("[^\n]+") do
    if line:lower():find("no space left on device", 1, true) then return line end
  end
end

local d = root and describe or pending
d("a full disk under the store", function()
  local mnts = {}
  after_each(function()
    eos.cleanup()
    for _, m in ipairs(mnts) do umount(m) end
    mnts = {}
  end)

  it("a worker starting on it exits 1 with the message and the path, not by SIGBUS", function()
    local mnt = mount("full-start", "1m")
    mnts[#mnts + 1] = mnt
    fill(mnt)
    -- memory:// (the fixture's default): no broker needed to open the stores.
    local out, rc = proc.run(string.format("env APP_ID=full-start %s worker %s --store lmdb://%s",
      proc.bin, q(eos.fixture), q(mnt .. "/store")))
    assert.are.equal(1, rc, out)
    local line = no_space_line(out)
    assert.truthy(line, out)
    assert.matches(mnt .. "/store/", line, 1, true)
  end)

  it("a checkpoint that cannot write LMDB stops the worker with the path; after it nothing is lost", function()
    local mnt = mount("full-write", "4m")
    mnts[#mnts + 1] = mnt
    local store = mnt .. "/store"
    local broker, addr = proc.broker({}, 4)
    local env = eos.names("full")
    env.GUARANTEE, env.COMMIT_INTERVAL = "at_least_once", "0.5"
    local w = eos.worker(env, addr, store)
    assert(w:wait_for("assigned %d+ partitions", 60), w:output())
    -- New keys all along: every checkpoint needs new LMDB pages.
    local p = eos.producer(addr, env.IN, 1, 4000, 1000, 4000, (os.time() - 60) * 100)
    proc.sleep(1.5)
    fill(mnt)
    local rc = w:wait(60)
    assert.are.equal(1, rc, w:output():sub(-2000))
    local line = no_space_line(w:output())
    assert.truthy(line, w:output():sub(-2000))
    assert.matches("table [%w_]+%[%d%]: " .. store:gsub("%p", "%%%0") .. "/[%w_]+/%d/data%.mdb: write: no space left on device", line)
    assert.are.equal(0, p:wait(60))
    sh("rm " .. q(mnt .. "/filler"))
    w = eos.worker(env, addr, store)
    local inputs = eos.inputs(addr, env.IN)
    assert(eos.wait_drained(addr, env, inputs, 90, { w }))
    assert.are.equal(0, w:stop())
    local t = eos.table_counts(env, store)
    for k, v in pairs(eos.word_counts(inputs)) do assert.is_true((t[k] or 0) >= v, k) end
    broker:signal("KILL")
  end)
end)
