-- Scenario 4 of issue 15: disk full. The worker's store lives on a small
-- tmpfs; while numbered input flows (many distinct keys, so LMDB needs new
-- pages at every checkpoint) a filler file takes the rest of it. The worker
-- must stop with "no space left on device" and the path of the file it could
-- not write (exit 1, no SIGBUS, no silent loss), refuse to start while the
-- disk is still full (same message), and once the filler is gone start again
-- and catch up with exact counts (exactly-once) or no count short
-- (at-least-once): the changelog, kcat's read_committed view of the output
-- and the offline table CLI agree with the input, so no offset was committed
-- past state it could not write. A last variant starts a worker with a new
-- store on the full disk (LMDB's lock file is written through a shared map:
-- on a full tmpfs that was a SIGBUS).
--
-- Mounting needs root: without it the scenario records "skipped: needs root".
local lib = require "chaos.lib"
local proc = lib.proc
local eos = require "spec.support.eos"

local KAFKA_PORT = 19730
local q = proc.quote

local function is_root()
  local out = proc.run("id -u")
  return out:match("^%s*0%s*$") ~= nil
end

-- Waits for a worker that must fail; returns rc (nil: still running) and a
-- note when its exit is not the expected one (1, with the message and path).
local function expect_no_space(w, path, timeout)
  local rc = w:wait(timeout)
  local log = w:output()
  if rc == nil then return nil, "still running " .. timeout .. " s after the disk filled" end
  if rc >= 128 then return rc, string.format("killed by signal %d (no message)", rc - 128) end
  if rc == 0 then return rc, "exit 0 on a full disk" end
  local at = log:lower():find("no space left on device", 1, true) -- strerror says "No space..."
  local line = at and log:sub(1, at):match("[^\n]*$") .. log:sub(at + 1):match("^[^\n]*")
  if not line then return rc, "no 'no space left on device' in its log: " .. log:sub(-300) end
  if not line:find(path, 1, true) then return rc, "the message names no path under " .. path .. ": " .. line end
  return rc, nil, line
end

-- One repetition: a new app, store and tmpfs. Returns what it saw.
local function run_once(ctx, g, addr, rep)
  local mnt = string.format("%s/mnt-%s-%d", ctx.tmp, g, rep)
  proc.run("mkdir -p " .. q(mnt))
  local out, rc = proc.run(string.format("mount -t tmpfs -o size=%s fstream-chaos-disk %s", "6m", q(mnt)))
  assert(rc == 0, "mount: " .. out)
  ctx.defer(function()
    local _, urc = proc.run("umount " .. q(mnt))
    if urc ~= 0 then proc.run("umount -l " .. q(mnt)) end
  end)
  local store, filler = mnt .. "/store", mnt .. "/filler"
  local env = eos.names("disk")
  env.GUARANTEE = g
  if g ~= "exactly_once" then env.COMMIT_INTERVAL = "0.5" end
  local N = ctx.quick and 6000 or 20000
  local rate = ctx.quick and 600 or 1000
  local words = ctx.quick and 3000 or 10000 -- new keys all along: new LMDB pages at every checkpoint

  local w = ctx.track(eos.worker(env, addr, store, "worker-disk"))
  assert(w:wait_for("assigned %d+ partitions", 60), "the worker did not start: " .. w:output():sub(-2000))
  local prod = ctx.track(eos.producer(addr, env.IN, 1, N, rate, words, (os.time() - 60) * 100))
  proc.sleep(2)
  -- The rest of the file system, in one file (dd stops at ENOSPC).
  proc.run(string.format("dd if=/dev/zero of=%s bs=64k 2>/dev/null", q(filler)))
  local df = proc.run("df -k --output=avail " .. q(mnt)):match("(%d+)%s*$")
  ctx.log("%s: %s filled (%s KiB left); input goes on", g, mnt, tostring(df))
  local notes = {}
  local rc1, why1, line1 = expect_no_space(w, store, 90)
  if why1 then notes[#notes + 1] = "full disk: " .. why1 end
  if w:alive() then w:signal("KILL") end
  -- Started again on the still full disk: the same refusal.
  local w2 = ctx.track(eos.worker(env, addr, store, "worker-disk"))
  local _, why2 = expect_no_space(w2, store, 90)
  if why2 then notes[#notes + 1] = "restart on the full disk: " .. why2 end
  if w2:alive() then w2:signal("KILL") end
  -- A worker with a new store on the full disk.
  local w4 = ctx.track(eos.worker(env, addr, mnt .. "/fresh", "worker-disk-fresh"))
  local rc4, why4 = expect_no_space(w4, mnt .. "/fresh", 60)
  if w4:alive() then w4:signal("KILL") end
  -- Space comes back; the input is complete meanwhile.
  proc.run("rm -f " .. q(filler))
  assert(prod:wait(120) == 0, "producer: " .. prod:output())
  local t0 = lib.now()
  local w3 = ctx.track(eos.worker(env, addr, store, "worker-disk"))
  local drained, status = eos.wait_drained(addr, env, eos.inputs(addr, env.IN), 180, { w3 })
  local secs = lib.now() - t0
  if not drained then notes[#notes + 1] = "not drained after the disk had space again: " .. status end
  local rc3 = w3:stop()
  if rc3 ~= 0 then notes[#notes + 1] = "exit " .. tostring(rc3) .. " after the disk had space again: " .. w3:output():sub(-300) end
  local n, lost, dups, cnotes = lib.check_counts(addr, env, store, g == "exactly_once")
  for _, c in ipairs(cnotes) do notes[#notes + 1] = c end
  local _, urc = proc.run("umount " .. q(mnt)) -- its defer finds it unmounted
  if urc ~= 0 then proc.run("umount -l " .. q(mnt)) end
  return { n = n, lost = lost, dups = dups, secs = secs, notes = notes, rc1 = rc1, line1 = line1,
    store = store, why4 = why4, rc4 = rc4 }
end

local function run_guarantee(ctx, g, addr)
  local reps = ctx.reps(3, 1)
  local n, lost, dups, secs, notes, fresh_notes, last = 0, 0, 0, {}, {}, {}, nil
  for rep = 1, reps do
    local r = run_once(ctx, g, addr, rep)
    n, lost, dups = n + r.n, lost + r.lost, dups + r.dups
    secs[#secs + 1] = r.secs
    for _, x in ipairs(r.notes) do notes[#notes + 1] = "rep " .. rep .. ": " .. x end
    if r.why4 then fresh_notes[#fresh_notes + 1] = "rep " .. rep .. ": " .. r.why4 end
    last = r
  end
  local store = last.store:gsub("%p", "%%%0")
  ctx.row { variant = "store fills while input flows", guarantee = g, reps = reps, messages = n, lost = lost,
    duplicated = dups, recovery = secs,
    ok = #notes == 0 and lost == 0 and not (g == "exactly_once" and dups > 0),
    note = #notes > 0 and table.concat(notes, "; "):sub(1, 500) or
      string.format("exit %s: %s; restarted once space was back", tostring(last.rc1),
        (last.line1 or ""):gsub("^.-%d%d%d ", ""):gsub(store, "STORE"):sub(1, 160)) }
  ctx.row { variant = "start with a new store on the full disk", guarantee = g, reps = reps,
    recovery = "—", ok = #fresh_notes == 0,
    note = #fresh_notes > 0 and table.concat(fresh_notes, "; ") or
      string.format("exit %s with the message and path", tostring(last.rc4)) }
end

return {
  name = "disk",
  title = "disk full: the store on a small tmpfs fills while input flows, then space comes back",
  order = 4,
  quick_in_suite = true,
  run = function(ctx)
    if not is_root() then
      for _, g in ipairs(ctx.guarantees) do
        ctx.row { variant = "store fills while input flows", guarantee = g, ok = true, note = "skipped: needs root (mount -t tmpfs)" }
      end
      return
    end
    for _, g in ipairs(ctx.guarantees) do
      run_guarantee(ctx, g, ctx.broker_for(g, KAFKA_PORT))
    end
  end,
}
