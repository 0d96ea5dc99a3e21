-- Scenario 1 of RELIABILITY.md: worker kills.
--
-- One worker runs spec/fixtures/eos_all.lua, which holds the three jobs the
-- scenario beats on at once: a stateless relay (IN -> OUT), a word count
-- (table word_counts) and windowed counts (tumbling and hopping windows,
-- closed windows to CLOSED). An external producer (spec/support/eos.lua)
-- sends numbered messages the whole time. The worker is a static group
-- member (--worker-id, as a user would run it) and is killed with SIGKILL
-- again and again, and started again at once on the same store, the way a
-- supervisor or systemd restarts it. Each kill lands at a moment chosen by a
-- seeded random generator (CHAOS_SEED replays a run), in one of four phases:
--
--   start       0.1-2 s after the process started: before it joined the
--               group, while it initialises its transactional producer, or
--               while it recovers its tables;
--   recovery    0-0.5 s after it logged its assignment (table recovery);
--   checkpoint  while a checkpoint is in flight: the broker is frozen
--               (SIGSTOP) longer than a commit interval, so the checkpoint
--               that started cannot finish, and the worker is killed then;
--   steady      0.3-2.8 s after it processed events again.
--
-- At the end the producer stops, the last worker drains and stops, and the
-- outcome is read from the broker with kcat (read_committed) and from the
-- store with `fstream-lua table` (offline): every input in OUT (lost = 0;
-- copies beyond one are duplicates), the word counts equal to the input's
-- (under at-least-once: never short, and how many extra), every due window
-- closed, none short; under exactly-once no window closed twice or wrong.
--
-- Recovery time of a kill: from the kill (wall clock just before SIGKILL) to
-- the restarted worker's first checkpoint that commits input offsets (its
-- debug log line's millisecond timestamp): the first events processed again
-- are at most one commit interval before that line. A kill whose restarted
-- worker is killed again before it processed anything is not measured.
local lib = require "chaos.lib"
local proc = require "spec.support.proc"
local eos = require "spec.support.eos"

local q = proc.quote
local WORDS = 16
local RATE = 200 -- messages/s from the producer
local PHASES = { "start", "recovery", "checkpoint", "steady" }

-- A seeded generator of its own (xorshift), so that a run is replayed by its
-- seed whatever else calls math.random.
local function generator(seed)
  local s = seed & 0xffffffff
  if s == 0 then s = 0x9e3779b9 end
  return function()
    s = s ~ ((s << 13) & 0xffffffff)
    s = s ~ (s >> 17)
    s = s ~ ((s << 5) & 0xffffffff)
    return s / 4294967296.0
  end
end

-- The kill phases in a seeded order: every phase once per block of four.
local function phase_plan(rnd, n)
  local plan = {}
  while #plan < n do
    local block = { table.unpack(PHASES) }
    for i = #block, 2, -1 do
      local j = 1 + math.floor(rnd() * i)
      block[i], block[j] = block[j], block[i]
    end
    for _, ph in ipairs(block) do if #plan < n then plan[#plan + 1] = ph end end
  end
  return plan
end

-- Seconds since the epoch of a log line's timestamp (local time, like the log).
local function log_time(stamp)
  local Y, M, D, h, m, s, ms = stamp:match("^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)%.(%d+)$")
  return os.time { year = tonumber(Y), month = tonumber(M), day = tonumber(D), hour = tonumber(h),
    min = tonumber(m), sec = tonumber(s) } + tonumber(ms) / 1000
end

local STAMP = "(%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%d)"
-- The first checkpoint that committed input offsets (a transaction's, or
-- at-least-once's offset commit): events were processed.
local PROCESSED = {
  STAMP .. " debug checkpoint transaction committed in %d+ ms %([1-9]%d* offsets",
  STAMP .. " debug committing [1-9]%d* partition offsets",
}

local function first_processed(w)
  local log, first = w:output(), nil
  for _, pattern in ipairs(PROCESSED) do
    local stamp = log:match(pattern)
    if stamp and (not first or log_time(stamp) < first) then first = log_time(stamp) end
  end
  return first
end

-- Polls until the worker processed events (time of it), it exited, or timeout.
local function wait_processed(w, timeout)
  local deadline = os.time() + timeout
  repeat
    local t = first_processed(w)
    if t then return t end
    if not w:alive() then return nil, "exited" end
    proc.sleep(0.1)
  until os.time() > deadline
  return nil, "timeout"
end

local function tail(w) return (w:output():sub(-2500):gsub("\n", "\n    ")) end

-- The input partitions a worker held last, from its log ("assigned N
-- partitions: IN[0] IN[2]"): partition -> true.
local function owned(log, topic)
  local last
  for line in log:gmatch("assigned %d+ partitions: [^\n]*") do last = line end
  local parts = {}
  for p in (last or ""):gmatch("%[(%d+)%]") do parts[tonumber(p)] = true end
  return parts
end

-- Checks every job's outcome; returns the three rows' figures. stores: list
-- of {dir, log}: the table CLI reads each store's rows of the partitions its
-- worker held last (log nil: all of them).
local function check(ctx, addr, env, stores, guarantee)
  local exact = guarantee == "exactly_once"
  local inputs = eos.inputs(addr, env.IN)
  local res = { messages = #inputs }

  -- Stateless relay: every number once in OUT.
  local r = eos.compare(inputs, eos.output_counts(addr, env.OUT))
  res.relay = { lost = #r.missing, dups = r.dups, unknown = r.unknown, text = eos.describe(r) }

  -- Word count: the changelog (read_committed) and the table CLI on the store.
  local expected = eos.word_counts(inputs)
  local function short_extra(got)
    local short, extra = 0, 0
    for w, n in pairs(expected) do
      local g = got[w] or 0
      if g < n then short = short + n - g else extra = extra + g - n end
    end
    for w, g in pairs(got) do if expected[w] == nil then extra = extra + g end end
    return short, extra
  end
  local cl = eos.changelog_counts(addr, env.changelog)
  local tb = {}
  local part_of = {}
  for _, e in ipairs(inputs) do part_of[e.w] = e.p end
  for _, st in ipairs(stores) do
    local mine = st.log and owned(st.log, env.IN)
    for w, n in pairs(eos.table_counts(env, st.dir)) do
      if not mine or mine[part_of[w]] then tb[w] = n end
    end
  end
  local cs, ce = short_extra(cl)
  local ts, te = short_extra(tb)
  res.count = { lost = math.max(cs, ts), extra = math.max(ce, te),
    text = string.format("changelog: %d short, %d extra; table CLI: %d short, %d extra", cs, ce, ts, te),
    detail = eos.diff_counts(expected, tb) }

  -- Windows: every due one closed; none short; under exactly-once none twice
  -- or above its count (check_windows counts both as wrong or twice).
  local closed = eos.closed(addr, env.CLOSED)
  local wr = eos.check_windows(inputs, closed)
  local exp = eos.windows_expected(inputs)
  local short, above = 0, 0
  for _, c in ipairs(closed) do
    local e = exp[c.key]
    if e and c.count < e then short = short + 1 elseif e and c.count > e then above = above + 1 end
  end
  res.windows = { lost = wr.missing + short, dups = wr.dups, above = above, unknown = wr.unknown, due = wr.due,
    text = eos.describe_windows(wr) .. string.format(" (%d short, %d above)", short, above) }
  ctx.log("%s: %d inputs; relay: %s; word count: %s (%s); windows: %s", guarantee, #inputs, res.relay.text,
    res.count.text, res.count.detail or "equal", res.windows.text)
  res.ok_relay = res.relay.lost == 0 and res.relay.unknown == 0 and (not exact or res.relay.dups == 0)
  res.ok_count = res.count.lost == 0 and (not exact or res.count.extra == 0)
  res.ok_windows = res.windows.lost == 0 and res.windows.due > 0 and
    (not exact or (res.windows.dups == 0 and above == 0 and wr.wrong == 0 and wr.unknown == 0))
  return res
end

-- One kill loop: `kills` kills of a static member under `guarantee`;
-- o.broker(env) gives the broker's address, o.freeze/o.thaw stop and continue
-- its process.
local function kill_loop(ctx, o)
  local guarantee = o.guarantee
  local env = eos.names("kills")
  env.GUARANTEE = guarantee
  -- As eos_spec: a shorter commit interval than at-least-once's default keeps
  -- the replays (duplicates) few and the recovery measurement close.
  if guarantee ~= "exactly_once" then env.COMMIT_INTERVAL = "0.5" end
  local store = string.format("%s/%s-store", ctx.tmp, env.APP_ID)
  local wid = "kills-" .. o.variant_tag .. "-" .. guarantee
  local other_store, other_wid = store .. "-b", wid .. "-b"
  local rnd = generator(o.seed)
  local plan = phase_plan(rnd, o.kills)
  local addr = o.broker(env)

  local nworkers = 0
  local function spawn(dir, id)
    nworkers = nworkers + 1
    return ctx.track(proc.spawn(string.format("env %s %s worker %s --broker kafka://%s --store lmdb://%s "
      .. "--worker-id %s --no-web -l debug", eos.envs(env), proc.bin, q(eos.fixture), addr, q(dir or store),
      q(id or wid)), "kills-worker"))
  end

  local w = spawn()
  -- The pair: a second worker that is never killed shares the partitions.
  local survivor, survivor_revokes
  if o.pair then
    assert(w:wait_for("assigned %d+ partitions", 90), "the worker was never assigned:\n    " .. tail(w))
    survivor = spawn(other_store, other_wid)
    assert(survivor:wait_for("assigned [123] partitions", 90), "the second worker got no share:\n    " .. tail(survivor))
    proc.sleep(1)
  end
  assert(w:wait_for("assigned %d+ partitions", 90), "the worker was never assigned:\n    " .. tail(w))
  local base = (os.time() - 60) * 100
  local prod = eos.producer(addr, env.IN, 1, 100000000, RATE, WORDS, base)
  ctx.defer(function() proc.write(prod.stop_file, ""); if prod:alive() then prod:signal("KILL") end end)
  assert(wait_processed(w, 60), "the worker processed nothing:\n    " .. tail(w))
  local function revokes(p) local _, n = p:output():gsub("revoking %d+ partitions", ""); return n end
  if survivor then survivor_revokes = revokes(survivor) end

  local recovery, unmeasured, counts, failure = {}, 0, {}, nil
  local prev_kill
  for k = 1, o.kills do
    local phase = plan[k]
    counts[phase] = (counts[phase] or 0) + 1
    if phase == "start" then
      proc.sleep(string.format("%.2f", 0.1 + rnd() * 1.9))
    elseif phase == "recovery" then
      if not w:wait_for("assigned %d+ partitions", 90) then
        failure = string.format("kill %d: restarted worker never assigned (hang?)", k)
        break
      end
      proc.sleep(string.format("%.2f", rnd() * 0.5))
    else
      local t, why2 = wait_processed(w, 90)
      if not t then
        failure = string.format("kill %d: the restarted worker %s before processing anything", k,
          why2 == "exited" and "exited" or "processed nothing for 90 s (hang)")
        break
      end
      proc.sleep(string.format("%.2f", 0.3 + rnd() * 2.5))
    end
    if phase == "checkpoint" then
      -- Longer than a commit interval: a checkpoint starts and cannot finish.
      o.freeze()
      proc.sleep(guarantee == "exactly_once" and 0.4 or 0.8)
    end
    if not w:alive() then
      if phase == "checkpoint" then o.thaw() end
      failure = string.format("kill %d: the worker exited by itself (rc %s)", k, tostring(w:wait(1)))
      break
    end
    local t_kill = lib.now()
    w:signal("KILL")
    local rc = w:wait(15)
    if phase == "checkpoint" then o.thaw() end
    if rc ~= 137 then
      failure = string.format("kill %d: the worker ended with %s, not 137", k, tostring(rc))
      break
    end
    local measured = ""
    if prev_kill then
      local t = first_processed(w)
      if t and t < t_kill then
        recovery[#recovery + 1] = t - prev_kill
        measured = string.format(", recovery from the previous one %.2f s", t - prev_kill)
      else
        unmeasured = unmeasured + 1
        measured = ", killed before it processed anything"
      end
    end
    ctx.log("%s %s kill %d/%d (%s)%s", o.variant, guarantee, k, o.kills, phase, measured)
    prev_kill = t_kill
    w = spawn()
  end
  local logs = {}
  if not failure then
    local t = wait_processed(w, 90)
    if not t then failure = "the last restart processed nothing for 90 s (hang)"
    elseif prev_kill then recovery[#recovery + 1] = t - prev_kill end
  end
  proc.write(prod.stop_file, "")
  if prod:wait(60) ~= 0 then failure = failure or ("the producer did not end: " .. prod:output()) end
  if not failure then
    local inputs = eos.inputs(addr, env.IN)
    local ok, status = eos.wait_drained(addr, env, inputs, 120, { w, survivor })
    if not ok then failure = "not drained after 120 s (hang or loss): " .. status end
  end
  local survivor_note = ""
  local stores = { { dir = store } }
  if survivor then
    -- Partitions moved while the kills went on: the survivor gave some up.
    local moved = revokes(survivor) - survivor_revokes
    survivor_note = string.format("; the survivor had %d revocations during the kills", moved)
    if not survivor:alive() then failure = failure or "the survivor exited" end
    stores = { { dir = store, log = w:output() }, { dir = other_store, log = survivor:output() } }
  end
  local rc = w:stop(60)
  if not failure and rc ~= 0 then failure = "the last worker did not stop cleanly: rc " .. tostring(rc) end
  if survivor then
    local src = survivor:stop(60)
    if not failure and src ~= 0 then failure = "the survivor did not stop cleanly: rc " .. tostring(src) end
    stores[1].log, stores[2].log = w:output(), survivor:output()
  end
  if failure then logs[#logs + 1] = tail(w) end

  local res = check(ctx, addr, env, stores, guarantee)
  local phases = {}
  for _, ph in ipairs(PHASES) do phases[#phases + 1] = string.format("%s %d", ph, counts[ph] or 0) end
  local common = string.format("seed %d; kills: %s; recovery measured for %d (%d killed again first); %d workers%s",
    o.seed, table.concat(phases, ", "), #recovery, unmeasured, nworkers, survivor_note)
  if failure then
    ctx.log("%s: FAILED: %s\n    %s", guarantee, failure, table.concat(logs, "\n"))
    common = "FAILED: " .. failure .. "; " .. common
  end
  local exact = guarantee == "exactly_once"
  ctx.row { variant = o.variant .. ": stateless relay", guarantee = guarantee, reps = o.kills,
    messages = res.messages, lost = res.relay.lost, duplicated = res.relay.dups, recovery = recovery,
    ok = not failure and res.ok_relay,
    note = (res.relay.unknown > 0 and (res.relay.unknown .. " unknown outputs; ") or "") .. common }
  ctx.row { variant = o.variant .. ": word count", guarantee = guarantee, reps = o.kills,
    messages = res.messages, lost = res.count.lost, duplicated = res.count.extra, recovery = recovery,
    ok = not failure and res.ok_count,
    note = (exact and "table (changelog and table CLI) equal to the input's counts: " or
      "table never short; duplicated = counts above the input's: ") .. (res.count.lost + res.count.extra == 0
      and "yes" or res.count.text) }
  ctx.row { variant = o.variant .. ": windows", guarantee = guarantee, reps = o.kills,
    messages = res.messages, lost = res.windows.lost, duplicated = res.windows.dups, recovery = recovery,
    ok = not failure and res.ok_windows,
    note = string.format("%d windows due; lost = never closed or short; duplicated = closed twice; %d above "
      .. "their count; %d unknown", res.windows.due, res.windows.above, res.windows.unknown) }
end

return {
  name = "kills",
  title = "kill -9 a static-member worker at random moments (start, recovery, checkpoint, steady) during a "
    .. "relay, a word count and windows; CHAOS_SEED replays",
  order = 1,
  quick_in_suite = true,
  run = function(ctx)
    local seed = tonumber(os.getenv("CHAOS_SEED") or "") or (os.time() % 1000000)
    ctx.log("seed %d (CHAOS_SEED=%d replays the kill moments)", seed, seed)
    local kills = ctx.reps(50, 4)
    local addr, kdir = ctx.kafka(19700)
    local kpid = assert(tonumber(proc.read(kdir .. "/kafka.pid") or ""), "no pid file for Kafka")
    -- SIGSTOP/SIGCONT of a broker process; a frozen one is thawed at the end whatever happens.
    local function freezer(pid)
      local frozen = false
      ctx.defer(function() if frozen then os.execute("kill -CONT " .. pid) end end)
      return function() os.execute("kill -STOP " .. pid); frozen = true end,
        function() os.execute("kill -CONT " .. pid); frozen = false end
    end
    local kfreeze, kthaw = freezer(kpid)
    for i, g in ipairs(ctx.guarantees) do
      kill_loop(ctx, { variant = "real Kafka", variant_tag = "kafka", guarantee = g, kills = kills,
        seed = seed + i - 1, broker = function() return addr end, freeze = kfreeze, thaw = kthaw })
    end
    -- Two static members, one of them killed again and again: the other
    -- keeps its partitions (full runs only).
    if not ctx.quick then
      for i, g in ipairs(ctx.guarantees) do
        kill_loop(ctx, { variant = "real Kafka, 2 workers, 1 killed", variant_tag = "pair", guarantee = g,
          kills = ctx.reps(20, 2), seed = seed + 10 + i, pair = true, broker = function() return addr end,
          freeze = kfreeze, thaw = kthaw })
      end
    end
    -- At-least-once on the standalone embedded broker too (exactly-once needs
    -- real Kafka): full runs only, to keep the suite's quick run short.
    local alo = false
    for _, g in ipairs(ctx.guarantees) do alo = alo or g == "at_least_once" end
    if alo and not ctx.quick then
      local o = { variant = "embedded broker", variant_tag = "embedded", guarantee = "at_least_once", kills = kills,
        seed = seed + 7 }
      function o.broker(env)
        -- It cannot create topics: every topic of the app is made at its start.
        local topics = { env.IN, env.OUT, env.CLOSED, env.APP_ID .. "-__workers" }
        for _, t in ipairs { "word_counts", "tumbling", "hopping" } do
          topics[#topics + 1] = env.APP_ID .. "-" .. t .. "-changelog"
        end
        local b, baddr = proc.broker(topics, 4)
        ctx.track(b)
        o.freeze, o.thaw = freezer(b.pid)
        return baddr
      end
      kill_loop(ctx, o)
    end
  end,
}
