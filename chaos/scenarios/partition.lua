-- Scenario 3: a network partition between hosts. Two worker "hosts", each a
-- network namespace joined to a bridge in the root namespace by a veth pair,
-- run the eos_all.lua worker (spec/fixtures) in one group against a real
-- Kafka in the root namespace that advertises the bridge's address. An
-- external producer sends numbered input. One host's bridge port is cut (its
-- frames are dropped silently, its own link stays up: a switch port gone
-- dark, not an unplugged cable) for longer than the group's session timeout
-- (6 s): its partitions must move to the other host; the cut is healed: they
-- must be balanced across both again. At the end the relay's output, the
-- windows and the word_counts table (changelog, and each host's store for the
-- partitions it held last) are checked against the input with kcat
-- (read_committed) and `fstream-lua table`. A worker that stops (a fatal
-- error) is started again so that the run goes on, and fails the row: a heal
-- must not cost a restart.
--
-- Root only (ip netns, veth, bridge: spec/support/netns.lua); otherwise a row
-- says "skipped: needs root". Names: fsc3* devices and namespaces,
-- 10.203.0.0/24, Kafka on 19720 (controller 19721). Quick: one cut per
-- guarantee; full: 5.
local lib = require "chaos.lib"
local eos = require "spec.support.eos"
local netns = require "spec.support.netns"
local proc = lib.proc
local q = proc.quote

local PORT = 19720
-- The hosts' namespaces, veth pairs and bridge (spec/support/netns.lua).
local NET = netns.new { prefix = "fsc3", subnet = "10.203.0", hosts = { "h1", "h2" } }
local ADDR = NET.bridge_addr .. ":" .. PORT
local HOSTS = NET.hosts
local WORDS = tonumber(os.getenv("CHAOS_PARTITION_WORDS") or "") or 400
local RATE = 200
local SESSION_S = 6 -- the worker group consumer's session.timeout.ms

local function sh(cmd) return proc.run(cmd) end

local function must(cmd)
  local out, rc = sh(cmd)
  if rc ~= 0 then error(string.format("%s: exit %s: %s", cmd, tostring(rc), out), 0) end
  return out
end

local function cut(h) NET:cut(h) end
local function heal(h) NET:heal(h) end

-- A worker on host h (in its namespace), its own store and static member id.
local function start_worker(ctx, env, h, store)
  local cmd = string.format("%senv %s %s worker %s --broker kafka://%s --store lmdb://%s " ..
    "--worker-id %s -l info", NET:exec(h), eos.envs(env), proc.bin, eos.fixture, ADDR, q(store), h.name)
  return ctx.track(proc.spawn(cmd, "partition-" .. h.name))
end

-- The input partitions a worker holds by its log (set of numbers): an eager
-- "assigned N partitions: ..." line names all of them, a cooperative
-- "assigned N partitions (incremental): ..." adds, "revoking ..." takes away;
-- and how many assignments named some.
local function assignment(w, topic)
  local parts, n = {}, 0
  for what, inc, list in w:output():gmatch("info  (%a+) %d+ partitions([^:\n]*): ([^\n]*)") do
    if what == "assigned" or what == "revoking" then
      if what == "assigned" and not inc:match("incremental") then parts = {} end
      if what == "assigned" and list:match("%[") then n = n + 1 end
      for t, p in list:gmatch("([^%s:]+)%[(%d+)%]") do
        if t == topic then parts[tonumber(p)] = what == "assigned" or nil end
      end
    end
  end
  return parts, n
end

local function count(set)
  local n = 0
  for _ in pairs(set) do n = n + 1 end
  return n
end

-- End offsets of the changelog's partitions: a partition's moves once
-- someone processed and checkpointed events of it.
local function changelog_ends(topic)
  local args = {}
  for p = 0, 3 do args[#args + 1] = "-t " .. q(topic .. ":" .. p .. ":-1") end
  local out = sh(string.format("kcat -Q -b %s %s 2>/dev/null", ADDR, table.concat(args, " ")))
  local ends = {}
  for p, off in out:gmatch("%[(%d+)%][^\n]-offset (%-?%d+)") do ends[tonumber(p)] = tonumber(off) end
  return ends
end

-- Polls until every partition in `parts` has a changelog end beyond `from`;
-- returns the seconds since t0, or nil after `timeout`.
local function wait_moved(topic, parts, from, t0, timeout, check)
  local deadline = lib.now() + timeout
  repeat
    local ends, all = changelog_ends(topic), true
    for p in pairs(parts) do
      if not (ends[p] and from[p] and ends[p] > from[p]) then all = false end
    end
    if all and (not check or check()) then return lib.now() - t0 end
    proc.sleep(0.25)
  until lib.now() > deadline
  return nil
end

local function both_assigned(ws, topic)
  local a, b = assignment(ws[1], topic), assignment(ws[2], topic)
  local na, nb = count(a), count(b)
  return na > 0 and nb > 0 and na + nb == 4
end

local function wait_until(fn, timeout)
  local deadline = lib.now() + timeout
  repeat
    if fn() then return true end
    proc.sleep(0.25)
  until lib.now() > deadline
  return fn()
end

local function median_max(xs)
  if #xs == 0 then return "—" end
  return string.format("%.1f / %.1f s", lib.median(xs), math.max(table.unpack(xs)))
end

-- One guarantee: two hosts, `cuts` cuts (alternating hosts), then the checks.
local function run_guarantee(ctx, guarantee, cuts)
  local env = eos.names("part")
  env.GUARANTEE = guarantee
  if guarantee ~= "exactly_once" then env.COMMIT_INTERVAL = "0.5" end
  local dir = ctx.tmp .. "/" .. guarantee
  must("mkdir -p " .. q(dir))
  local stores = { dir .. "/h1", dir .. "/h2" }
  local ws = {}
  ws[1] = start_worker(ctx, env, HOSTS[1], stores[1])
  assert(ws[1]:wait_for("assigned %d+ partitions", 90), "h1 got no assignment:\n" .. ws[1]:output():sub(-2000))
  ws[2] = start_worker(ctx, env, HOSTS[2], stores[2])
  assert(wait_until(function() return both_assigned(ws, env.IN) end, 60),
    "the two hosts did not share the partitions:\n" .. ws[2]:output():sub(-2000))
  local prod = ctx.track(eos.producer(ADDR, env.IN, 1, 100000000, RATE, WORDS, (os.time() - 60) * 100))
  proc.sleep(4)

  local takeover, back, notes, failed = {}, {}, {}, nil
  -- A worker that stopped (a fatal error) is started again on its store, as
  -- a supervisor would; each restart is noted with its reason.
  local restarts = {}
  local function keep_alive()
    for k = 1, 2 do
      if not ws[k]:alive() then
        local why = ws[k]:output():match("kafka fatal error: ([^\n]*)") or ws[k]:output():sub(-300)
        restarts[#restarts + 1] = string.format("%s restarted (%s)", HOSTS[k].name, why)
        ctx.log("%s exited (%s): starting it again", HOSTS[k].name, why)
        ws[k] = start_worker(ctx, env, HOSTS[k], stores[k])
      end
    end
  end
  for c = 1, cuts do
    local i = (c - 1) % 2 + 1
    local h, other = HOSTS[i], ws[3 - i]
    assert(wait_until(function() keep_alive(); return both_assigned(ws, env.IN) end, 60),
      "before cut " .. c .. ": the hosts do not share the partitions")
    proc.sleep(2)
    local held = assignment(ws[i], env.IN)
    other = ws[3 - i]
    local _, other_lines = assignment(other, env.IN)
    local before = changelog_ends(env.changelog)
    local t_cut = lib.now()
    cut(h)
    ctx.log("cut %d: %s cut off (held %d partitions)", c, h.name, count(held))
    -- The other host processes the cut host's partitions: it was assigned
    -- all four and their changelogs move again.
    local took = wait_moved(env.changelog, held, before, t_cut, 90, function()
      local parts, n = assignment(other, env.IN)
      return n > other_lines and count(parts) == 4
    end)
    if not took then
      failed = string.format("cut %d: the other host did not take %s's partitions within 90 s", c, h.name)
      heal(h)
      break
    end
    takeover[#takeover + 1] = took
    ctx.log("cut %d: %s's partitions processed by the other host after %.1f s", c, h.name, took)
    -- Keep it cut a while longer: the zombie goes on with what it had.
    proc.sleep(math.max(0, SESSION_S + 4 - (lib.now() - t_cut)))
    local _, lines = assignment(ws[i], env.IN)
    local cut_proc = ws[i]
    local t_heal = lib.now()
    heal(h)
    ctx.log("cut %d: %s healed after %.1f s", c, h.name, t_heal - t_cut)
    -- Working again: assigned partitions once more, and their changelogs
    -- moved after that.
    local mine
    local ok = wait_until(function()
      keep_alive()
      local parts, n = assignment(ws[i], env.IN)
      if ws[i] ~= cut_proc then lines = 0 end -- started again: a new log
      if n > lines and count(parts) > 0 and count(parts) < 4 and both_assigned(ws, env.IN) then
        mine = parts
        return true
      end
    end, 90)
    local again = ok and wait_moved(env.changelog, mine, changelog_ends(env.changelog), t_heal, 60)
    if not again then
      failed = string.format("cut %d: %s was not working again within 90 s of the heal", c, h.name)
      break
    end
    back[#back + 1] = again
    ctx.log("cut %d: %s working again %.1f s after the heal", c, h.name, again)
  end
  keep_alive()

  proc.write(prod.stop_file, "")
  assert(prod:wait(60) == 0, "the producer did not stop: " .. prod:output())
  local inputs = eos.inputs(ADDR, env.IN)
  -- Drained, restarting a worker that stops meanwhile (its partitions wait for it).
  local drained, status
  local deadline = lib.now() + 150
  repeat
    keep_alive()
    drained, status = eos.wait_drained(ADDR, env, inputs, 5, ws)
  until drained or lib.now() > deadline
  if not drained then notes[#notes + 1] = "not drained: " .. tostring(status) end
  local final = {}
  for k = 1, 2 do
    final[k] = assignment(ws[k], env.IN)
    local rc = ws[k]:stop(60)
    if rc ~= 0 then notes[#notes + 1] = string.format("%s exited %s", HOSTS[k].name, tostring(rc)) end
  end

  -- The checks, from the broker (read_committed) and the two stores.
  local r = eos.compare(inputs, eos.output_counts(ADDR, env.OUT))
  local wr = eos.check_windows(inputs, eos.closed(ADDR, env.CLOSED))
  local expected = eos.word_counts(inputs)
  local part_of = {}
  for _, e in ipairs(inputs) do part_of[e.w] = e.p end
  local cl = eos.changelog_counts(ADDR, env.changelog)
  -- Each host's store for the partitions it held last (its other
  -- partitions' files are what it left when they moved away).
  local tbl = {}
  for k = 1, 2 do
    for w, v in pairs(eos.table_counts(env, stores[k])) do
      if final[k][part_of[w]] then tbl[w] = v end
    end
  end
  local lost, extra = #r.missing, 0
  local function short(got)
    local s, x = 0, 0
    for w, n in pairs(expected) do
      local g = got[w] or 0
      if g < n then s = s + n - g elseif g > n then x = x + g - n end
    end
    return s, x
  end
  local cl_short, cl_extra = short(cl)
  local t_short, t_extra = short(tbl)
  lost = lost + math.max(cl_short, t_short)
  extra = math.max(cl_extra, t_extra)
  notes[#notes + 1] = string.format("output: %s", eos.describe(r))
  notes[#notes + 1] = string.format("windows: %d due, %d missing, %d twice, %d wrong", wr.due, wr.missing, wr.dups,
    wr.wrong)
  local dcl, dt = eos.diff_counts(expected, cl), eos.diff_counts(expected, tbl)
  notes[#notes + 1] = "changelog: " .. (dcl or "exact")
  notes[#notes + 1] = "tables (both stores): " .. (dt or "exact")
  notes[#notes + 1] = "back after heal: " .. median_max(back)
  for _, r in ipairs(restarts) do notes[#notes + 1] = r end
  for k = 1, 2 do
    local log = ws[k]:output()
    -- One line per lost assignment: the transport's under exactly-once, fs_assign's under at-least-once.
    local lostp = select(2, log:gsub("warn  partitions lost", "")) + select(2, log:gsub("assignment lost %(", ""))
    local timedout = select(2, log:gsub("producer flush timed out during rebalance", ""))
    local fenced = select(2, log:gsub("this worker was fenced", ""))
    local renewed = select(2, log:gsub("a new producer takes over", "")) +
      select(2, log:gsub("transactional producer %S+ recreated", ""))
    if lostp + timedout + fenced + renewed > 0 then
      notes[#notes + 1] = string.format("%s log: %d lost assignments, %d flush timeouts, %d fenced, " ..
        "%d new producers", HOSTS[k].name, lostp, timedout, fenced, renewed)
    end
  end
  if failed then notes[#notes + 1] = failed end
  local eosg = guarantee == "exactly_once"
  local ok = not failed and drained and lost == 0 and wr.missing == 0 and r.unknown == 0 and #back == cuts
    and #restarts == 0
    and (not eosg or (r.dups == 0 and extra == 0 and wr.dups == 0 and wr.wrong == 0 and dcl == nil and dt == nil))
  -- A count below the input is a loss under either guarantee (a corrupted table).
  ctx.row {
    variant = "cut 1 of 2 hosts", guarantee = guarantee, reps = #takeover, messages = #inputs, lost = lost,
    duplicated = r.dups + extra, recovery = takeover, note = table.concat(notes, "; "), ok = ok,
  }
  ctx.log("%s: %s", guarantee, table.concat(notes, "; "))
end

return {
  name = "partition",
  title = "Network partition between two worker hosts (network namespaces; root only)",
  order = 3,
  quick_in_suite = true,
  run = function(ctx)
    local usable, why = netns.usable()
    if not usable then
      ctx.log("skipped: %s", why)
      for _, g in ipairs(ctx.guarantees) do
        ctx.row { variant = "cut 1 of 2 hosts", guarantee = g, note = "skipped: " .. why, ok = true }
      end
      return
    end
    ctx.defer(function() NET:down() end)
    NET:up()
    local kdir = ctx.tmp .. "/kafka"
    ctx.defer(function() sh(string.format("%s/scripts/kafka stop --dir %s", proc.root, q(kdir))) end)
    -- Every listener on the port (the script checks 127.0.0.1), advertised
    -- on the bridge: reachable from the root namespace and both hosts.
    must(string.format("%s/scripts/kafka start --port %d --dir %s %s", proc.root, PORT, q(kdir),
      NET:kafka_sets(PORT)))
    local cuts = ctx.reps(5, 1)
    for _, g in ipairs(ctx.guarantees) do run_guarantee(ctx, g, cuts) end
  end,
}
