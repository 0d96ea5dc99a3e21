-- Scenario 5 of issue 15: damaged local state. With the worker stopped, one
-- table partition's LMDB files are deleted, truncated or overwritten; the
-- worker starts again and must notice (a warning naming the path), move the
-- damaged files aside, rebuild that partition from its changelog and go on
-- with exact counts. Each variant is one round on the same app and store:
--   damage one partition of word_counts -> produce more input while stopped
--   -> start the worker (recovery: until it has caught up) -> stop it ->
--   check outputs (kcat, read_committed), the changelog and the table CLI.
local lib = require "chaos.lib"
local eos = require "spec.support.eos"
local damage = require "spec.support.damage"

local KAFKA_PORT = 19730
local WORDS = 400 -- enough keys that a partition spans many pages (its root near the end of the file)

-- The damages (spec/support/damage.lua does them). detect: the worker must
-- say so (some leave nothing to see: a lost lock.mdb is recreated by LMDB and
-- costs nothing; with both files gone the partition looks new and is
-- replayed whole anyway). moved: the damaged files must be kept aside.
local DAMAGES = {
  { name = "data.mdb truncated to half", quick = true, detect = true, moved = true },
  { name = "header page zeroed", quick = true, detect = true, moved = true },
  { name = "data.mdb deleted", quick = true, detect = true },
  { name = "data.mdb emptied", detect = true, moved = true },
  { name = "both meta pages zeroed", detect = true, moved = true },
  { name = "lock.mdb deleted", detect = false },
  { name = "lock.mdb garbage", detect = false },
  { name = "both deleted", detect = false },
}

local function run_guarantee(ctx, g, addr, damages)
  local env = eos.names("damage")
  env.GUARANTEE = g
  if g ~= "exactly_once" then env.COMMIT_INTERVAL = "0.5" end
  local store = ctx.tmp .. "/store-" .. g
  local base = (os.time() - 60) * 100
  local next_n, per_round = 1, ctx.quick and 600 or 2000
  local function produce()
    local p = eos.producer(addr, env.IN, next_n, next_n + per_round - 1, 2000, WORDS, base)
    ctx.track(p)
    assert(p:wait(120) == 0, "producer: " .. p:output())
    next_n = next_n + per_round
  end
  -- One run of the worker: start, catch up with the input, stop cleanly.
  local function round()
    local w = ctx.track(eos.worker(env, addr, store, "worker-damage"))
    local t0 = lib.now()
    local ok, status = eos.wait_drained(addr, env, eos.inputs(addr, env.IN), 120, { w })
    local secs = lib.now() - t0
    local alive = w:alive()
    local rc = w:stop()
    return w, ok and alive and rc == 0, secs,
      (ok and "" or status .. "; ") .. (alive and "" or "the worker died; ") ..
      (rc == 0 and "" or ("exit " .. tostring(rc) .. ": " .. w:output():sub(-600)))
  end
  -- Round 0 fills the store (the worker creates the topics first).
  local w0 = ctx.track(eos.worker(env, addr, store, "worker-damage"))
  assert(w0:wait_for("assigned %d+ partitions", 60), "the worker did not start: " .. w0:output():sub(-2000))
  produce()
  assert(eos.wait_drained(addr, env, eos.inputs(addr, env.IN), 120, { w0 }), "round 0 did not drain")
  assert(w0:stop() == 0, "round 0: " .. w0:output():sub(-2000))
  for _, d in ipairs(damages) do
    local p = damage.fullest(store)
    local dir = string.format("%s/word_counts/%d", store, p)
    ctx.log("%s: %s in %s", g, d.name, dir)
    damage.fn[d.name](dir)
    produce()
    local w, ran, secs, why = round()
    local log = w:output()
    local n, lost, dups, notes = lib.check_counts(addr, env, store, g == "exactly_once")
    if not ran then notes[#notes + 1] = why end
    local warned = log:find("table word_counts[" .. p .. "]: local state in " .. dir .. " was damaged", 1, true)
    if d.detect and not warned then notes[#notes + 1] = "no warning naming " .. dir end
    if d.moved then
      local aside = log:match("moved to (" .. dir:gsub("%p", "%%%0") .. "/damaged%-[%w%-]+)")
      if not aside or not damage.size(aside .. "/data.mdb") then notes[#notes + 1] = "the damaged data.mdb was not kept" end
    end
    local rebuilt = log:match("recovered table word_counts%[" .. p .. "%]: (%d+) records")
    ctx.row { variant = d.name, guarantee = g, reps = 1, messages = n, lost = lost, duplicated = dups,
      recovery = { secs }, ok = ran and lost == 0 and #notes == 0 and not (g == "exactly_once" and dups > 0),
      note = #notes > 0 and table.concat(notes, "; "):sub(1, 400) or
        string.format("partition %d; %s records replayed%s", p, rebuilt or "0", warned and "; warned" or "") }
  end
end

return {
  name = "damage",
  title = "damaged local state: LMDB files of one partition deleted, truncated, zeroed while stopped",
  order = 5,
  quick_in_suite = true,
  run = function(ctx)
    local damages = {}
    for _, d in ipairs(DAMAGES) do if d.quick or not ctx.quick then damages[#damages + 1] = d end end
    for _, g in ipairs(ctx.guarantees) do
      run_guarantee(ctx, g, ctx.broker_for(g, KAFKA_PORT), damages)
    end
  end,
}
