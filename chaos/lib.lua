-- The fault-injection suite's runner: finds the scenarios, gives each a
-- context (options, a scratch directory, a real Kafka on demand, cleanups),
-- collects its figures and formats them.
--
-- A scenario is chaos/scenarios/NAME.lua returning
--   { name = "NAME", title = "...", quick_in_suite = bool, order = number,
--     run = function(ctx) ... end }
-- run() records one figure per variant and guarantee with ctx.row{...} and
-- raises (error) only when it cannot go on; cleanups registered with
-- ctx.defer run either way.
local proc = require "spec.support.proc"

local lib = {}
lib.proc = proc
local root = proc.root
lib.GUARANTEES = { "at_least_once", "exactly_once" }

local function sh(cmd) return proc.run(cmd) end

function lib.scenarios()
  local out = sh("ls " .. proc.quote(root .. "/chaos/scenarios"))
  local list = {}
  for f in out:gmatch("([%w_]+)%.lua") do list[#list + 1] = require("chaos.scenarios." .. f) end
  table.sort(list, function(a, b) return (a.order or 99) < (b.order or 99) end)
  return list
end

function lib.scenario(name)
  for _, s in ipairs(lib.scenarios()) do if s.name == name then return s end end
end

function lib.median(xs)
  if #xs == 0 then return nil end
  local s = { table.unpack(xs) }
  table.sort(s)
  local m = #s // 2
  return #s % 2 == 1 and s[m + 1] or (s[m] + s[m + 1]) / 2
end

local function fmt_recovery(r)
  if r == nil then return "—" end
  if type(r) == "string" then return r end
  if #r == 0 then return "—" end
  local max = math.max(table.unpack(r))
  return string.format("%.1f / %.1f", lib.median(r), max)
end

-- A process's resident memory in KiB (VmRSS), or nil once it is gone.
function lib.rss_kb(pid)
  local f = io.open("/proc/" .. pid .. "/status")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return tonumber(s:match("VmRSS:%s*(%d+)"))
end

function lib.now() -- wall clock with sub-second resolution
  local out = sh("date +%s.%N")
  return tonumber(out:match("[%d%.]+"))
end

-- The word count of spec/fixtures/eos_all.lua read back after a run and held
-- against its input (kcat read_committed): every number in the relay output,
-- the counts in the changelog and in the table CLI (store). strict
-- (exactly-once): a count too high is as wrong as one too low. Returns the
-- number of inputs, lost (numbers missing plus counts short; 1 for counts
-- only too high), duplicated outputs, and notes saying what differed.
function lib.check_counts(addr, env, store, strict)
  local eos = require "spec.support.eos"
  local inputs = eos.inputs(addr, env.IN)
  local r = eos.compare(inputs, eos.output_counts(addr, env.OUT))
  local expected = eos.word_counts(inputs)
  local notes, lost = {}, #r.missing
  if #r.missing > 0 or r.unknown > 0 then notes[#notes + 1] = "output: " .. eos.describe(r) end
  local function counts(what, got)
    local short, over = 0, 0
    for k, v in pairs(expected) do
      local g = got[k] or 0
      if g < v then short = short + v - g elseif g > v then over = over + 1 end
    end
    for k in pairs(got) do if not expected[k] then over = over + 1 end end
    lost = lost + short
    if short > 0 or (strict and over > 0) then
      notes[#notes + 1] = string.format("%s: %d counts short, %d keys over: %s", what, short, over,
        tostring(eos.diff_counts(expected, got)):sub(1, 200))
      if strict and short == 0 then lost = lost + 1 end
    end
  end
  counts("changelog", eos.changelog_counts(addr, env.changelog))
  local ok, t = pcall(eos.table_counts, env, store)
  if ok then counts("table CLI", t)
  else lost = lost + 1; notes[#notes + 1] = "table CLI failed: " .. tostring(t):sub(1, 300) end
  return #inputs, lost, r.dups, notes
end

-- A context for one run of scenario s.
local function context(s, opts)
  local ctx = { name = s.name, quick = opts.quick or false, reps_opt = opts.reps,
    guarantees = opts.guarantees or lib.GUARANTEES, rows = {}, cleanups = {} }
  ctx.tmp = proc.tmp .. "/chaos/" .. s.name
  sh("rm -rf " .. proc.quote(ctx.tmp) .. " && mkdir -p " .. proc.quote(ctx.tmp))
  -- Repetitions: --reps wins, else the scenario's full or quick count.
  function ctx.reps(full, quick) return ctx.reps_opt or (ctx.quick and quick or full) end
  function ctx.log(fmt, ...)
    io.stderr:write(string.format("[%s chaos %s] %s\n", os.date("!%H:%M:%S"), s.name, string.format(fmt, ...)))
  end
  -- Runs fn at the end of the scenario (last registered first), even on error.
  function ctx.defer(fn) ctx.cleanups[#ctx.cleanups + 1] = fn end
  -- A figure. ok defaults to "nothing lost, and no duplicate under exactly-once".
  function ctx.row(r)
    r.scenario = s.name
    if r.ok == nil then
      r.ok = (r.lost or 0) == 0 and not (r.guarantee == "exactly_once" and (r.duplicated or 0) > 0)
    end
    ctx.rows[#ctx.rows + 1] = r
    ctx.log("%s %s: %s", r.variant or "", r.guarantee or "", r.ok and "ok" or ("FAILED " .. (r.note or "")))
    return r
  end
  -- A real Apache Kafka on `port` (the controller takes port+1), data in
  -- ctx.tmp/kafka-PORT, stopped when the scenario ends. Returns its address.
  function ctx.kafka(port)
    local dir = ctx.tmp .. "/kafka-" .. port
    local rc, out, addr = proc.kafka_start(port, dir)
    assert(rc == 0 and addr, "real Kafka did not start: " .. tostring(out))
    ctx.defer(function() proc.kafka_stop(dir) end)
    return addr, dir
  end
  -- The broker for guarantee g: a real Kafka on `port` for exactly-once (the
  -- embedded broker refuses transactions), else an embedded one (fstream-lua
  -- broker, 4 partitions a topic) killed at the end. Returns its address.
  function ctx.broker_for(g, port)
    if g == "exactly_once" then return (ctx.kafka(port)) end
    local b, addr = proc.broker({}, 4)
    ctx.track(b)
    return addr
  end
  -- A process started with proc.spawn, killed at the end if still running.
  function ctx.track(p)
    ctx.defer(function() if p:alive() then p:signal("CONT"); p:signal("KILL") end end)
    return p
  end
  return ctx
end

-- Runs one scenario: its rows, and an error message if it raised.
function lib.run(s, opts)
  local ctx = context(s, opts or {})
  ctx.log("start (%s)", ctx.quick and "quick" or "full")
  local ok, err = xpcall(s.run, debug.traceback, ctx)
  for i = #ctx.cleanups, 1, -1 do pcall(ctx.cleanups[i]) end
  local text = lib.format(ctx.rows)
  sh("mkdir -p " .. proc.quote(root .. "/chaos/results"))
  local f = io.open(string.format("%s/chaos/results/%s-%s%s.md", root, s.name, os.date("!%Y%m%d-%H%M%S"),
    ctx.quick and "-quick" or ""), "w")
  if f then
    f:write(text, "\n", ok and "" or ("\nraised: " .. tostring(err) .. "\n"))
    f:close()
  end
  if not ok then ctx.log("raised: %s", tostring(err)) end
  return ctx.rows, (not ok) and tostring(err) or nil
end

-- The figures as a Markdown table (RELIABILITY.md's columns).
function lib.format(rows)
  local t = { "| scenario | variant | guarantee | reps | messages in | lost | duplicated | recovery s (median / max) | result | note |",
    "|---|---|---|---|---|---|---|---|---|---|" }
  for _, r in ipairs(rows) do
    t[#t + 1] = string.format("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |", r.scenario, r.variant or "",
      r.guarantee or "—", tostring(r.reps or "—"), tostring(r.messages or "—"), tostring(r.lost or "—"),
      tostring(r.duplicated or "—"), fmt_recovery(r.recovery), r.ok and "ok" or "**FAILED**",
      (r.note or ""):gsub("|", "/"))
  end
  return table.concat(t, "\n")
end

return lib
