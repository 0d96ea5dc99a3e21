-- Windowed tables, in process: events/s and window closes/s of counting
-- tables (tumbling, hopping with size/step 1, 10, 60) and of the forecast
-- pattern (hopping 10/1 holding the list of a window's events; a least-squares
-- trend when it closes, as examples/forecast.lua does).
--
--   lua5.4 bench/windows.lua [--scenario a,b|all] [--runs 3] [--cpu 3]
--                            [--keys 1000] [--rate 10] [--expires 2] [--json]
--   lua5.4 bench/windows.lua --list | --help
-- Also --micro, --lua-profile, --emit and
-- --expect-closes (for bench/windows.sh's broker run): see usage().
--
-- It runs through fstream.testing, so there is no broker and no LMDB: what is
-- left is the window code, the record cache, the Lua agent and the in-memory
-- transport's dispatch. "baseline" (no table) and "plain" (an unwindowed count)
-- are there to subtract: they show what an event costs before windows.
--
-- Time is CPU time (os.clock) of the timed part only: the machine has 2 cores
-- shared with whatever else runs (a Kafka broker, other benchmarks), and CPU
-- time of a single-threaded, CPU-bound loop is what they disturb least.
--
-- Also a module: bench/windows_app.lua requires it to run the same app on a
-- real broker, so both measurements exercise the same table and callbacks.
local M = {}

local T0 = 1700000000        -- event time of stream second 0 (seconds)

-- size/step/kind per scenario. `list` = the forecast's list-of-events value;
-- `combine` = the hopping option that keeps one value per step-slice and
-- folds a window's slices when it closes (lua/fstream/window.lua); without
-- it every event updates each of its size/step windows.
local function add(a, b) return a + b end
-- A fresh list: the fold's first argument is a slice's own stored value.
local function concat(a, b)
  local r, n = {}, #a
  for i = 1, n do r[i] = a[i] end
  for i = 1, #b do r[n + i] = b[i] end
  return r
end
-- merge: all of a window's slice lists at once, each point copied once.
local function concat_all(lists)
  local r, n = {}, 0
  for _, l in ipairs(lists) do
    for i = 1, #l do r[n + i] = l[i] end
    n = n + #l
  end
  return r
end
M.SCENARIOS = {
  { name = "baseline", what = "no table: decode the event, read its fields" },
  { name = "plain", what = "unwindowed count: t:update(k, c + 1)" },
  { name = "tumbling10", kind = "tumbling", size = 10, what = "tumbling(10) count" },
  { name = "hop1", kind = "hopping", size = 1, step = 1, what = "hopping(1, 1) count" },
  { name = "hop10", kind = "hopping", size = 10, step = 1, what = "hopping(10, 1) count" },
  { name = "hop60", kind = "hopping", size = 60, step = 1, what = "hopping(60, 1) count" },
  { name = "hop1c", kind = "hopping", size = 1, step = 1, combine = add, what = "hopping(1, 1) count, combine a + b" },
  { name = "hop10c", kind = "hopping", size = 10, step = 1, combine = add, what = "hopping(10, 1) count, combine a + b" },
  { name = "hop60c", kind = "hopping", size = 60, step = 1, combine = add, what = "hopping(60, 1) count, combine a + b" },
  { name = "forecast", kind = "hopping", size = 10, step = 1, list = true, rate = 4,
    what = "hopping(10, 1) list of {t, v}, trend on close; 4 samples/s/key as examples/forecast.lua" },
  { name = "forecastc", kind = "hopping", size = 10, step = 1, list = true, rate = 4, combine = concat,
    what = "the forecast with combine = concatenation (a new list per fold step)" },
  { name = "forecastm", kind = "hopping", size = 10, step = 1, list = true, rate = 4, merge = concat_all,
    what = "the forecast with merge = one concatenation of the window's slice lists" },
  -- Not in "all": the warm-up alone is 650,000 events and 6 million live
  -- point tables (about a minute per run).
  { name = "forecast50", kind = "hopping", size = 10, step = 1, list = true, rate = 50, optional = true,
    what = "the forecast at 50 samples/s/key (500 samples per window)" },
  { name = "forecast50c", kind = "hopping", size = 10, step = 1, list = true, rate = 50, optional = true,
    combine = concat, what = "forecast50 with combine = concatenation" },
}
for _, s in ipairs(M.SCENARIOS) do M.SCENARIOS[s.name] = s end

-- Least squares over (t, v), the prediction at `at`: examples/forecast.lua's,
-- except that times are taken relative to the first point. With epoch
-- seconds (~1.7e9) n*Σt² - (Σt)² cancels to 0 in doubles and the example
-- returns the mean instead of a trend; the cost is the same either way.
local function trend(points, at)
  local n, st, sv, stt, stv = #points, 0, 0, 0, 0
  local t0 = n > 0 and points[1].t or 0
  for _, p in ipairs(points) do
    local t = p.t - t0
    st, sv, stt, stv = st + t, sv + p.v, stt + t * t, stv + t * p.v
  end
  local den = n * stt - st * st
  if n < 2 or den == 0 then return sv / n end
  local b = (n * stv - st * sv) / den
  local a = (sv - b * st) / n
  return a + b * (at - t0)
end

-- The app of scenario `sc`: JSON events {k, ts, v} on its input topic, one output
-- message on `out` per closed window (the e2e run times that topic). `stats`
-- collects what the bench checks: closes, and closed windows whose value is
-- not what `expect(start)` says (nil: not checked).
function M.build(fstream, sc, opts)
  opts = opts or {}
  local app = fstream.app(opts.id or ("winbench-" .. sc.name), {
    broker = opts.broker or "memory://", topic_partitions = opts.partitions or 8,
    table_cleanup_interval = 1.0, store = opts.store,
  })
  local input = app:topic(opts.input or "winbench-in")
  local out = app:topic(opts.output or "winbench-out")
  local stats = { closes = 0, checked = 0, wrong = 0 }
  local expect = opts.expect or function() return nil end

  if sc.name == "baseline" then
    local sum = 0
    app:agent("read", input, function(stream)
      for e in stream do
        if e.k and e.ts then sum = sum + 1 end
      end
    end, { on_error = "crash" })
    return app, input, out, stats
  end
  if sc.name == "plain" then
    local t = app:table("c", { default = 0 })
    app:agent("count", input, function(stream)
      for e in stream do
        t:update(e.k, function(c) return c + 1 end)
      end
    end, { on_error = "crash" })
    return app, input, out, stats, t
  end

  local on_close
  if sc.list then
    on_close = function(key, window, points)
      stats.closes = stats.closes + 1
      local want = expect(window.start)
      if want then
        stats.checked = stats.checked + 1
        if #points ~= want then stats.wrong = stats.wrong + 1 end
      end
      if #points == 0 then return end
      local at = window["end"] + 1
      out:send { key = key, value = {
        sensor = key, window_start = window.start, window_end = window["end"],
        samples = #points, at = at, forecast = trend(points, at),
      } }
    end
  else
    on_close = function(key, window, n)
      stats.closes = stats.closes + 1
      local want = expect(window.start)
      if want then
        stats.checked = stats.checked + 1
        if n ~= want then stats.wrong = stats.wrong + 1 end
      end
      out:send { key = key, value = { k = key, start = window.start, n = n } }
    end
  end
  local t = app:table("w", {
    default = sc.list and function() return {} end or 0,
    on_window_close = on_close,
    on_late = function() stats.late = (stats.late or 0) + 1 end,
  })
  local expires = opts.expires or 2
  if sc.kind == "tumbling" then
    t:tumbling(sc.size, { expires = expires })
  else
    t:hopping(sc.size, sc.step, { expires = expires, combine = sc.combine, merge = sc.merge })
  end
  t:relative_to_field("ts")

  if sc.list then
    app:agent("collect", input, function(stream)
      for e in stream do
        t:update(e.k, function(points)
          points[#points + 1] = { t = e.ts, v = e.v }
          return points
        end)
      end
    end, { on_error = "crash" })
  else
    app:agent("count", input, function(stream)
      for e in stream do
        t:update(e.k, function(c) return c + 1 end)
      end
    end, { on_error = "crash" })
  end
  return app, input, out, stats, t
end

-- The events of stream second `s`: `rate` per key, spread evenly over the
-- second, keys interleaved, so every partition's stream time rises steadily.
-- Calls emit(key, json) for each, in order. v rises 2 a second with noise
-- from a fixed LCG (same bytes every run). `last_only`: just the last event
-- of the second per key, so a sparse warm-up leaves stream time where a full
-- second would (else the first timed second closes two seconds' windows).
function M.second(s, keys, rate, emit, rng, last_only)
  for j = last_only and rate - 1 or 0, rate - 1 do
    local ts = T0 + s + j / rate
    for i = 0, keys - 1 do
      rng[1] = (rng[1] * 1103515245 + 12345) % 2147483648
      local v = 20 + 2 * (s + j / rate) + rng[1] / 2147483648 - 0.5
      emit(M.keyname(i), string.format('{"k":"k%d","ts":%.4f,"v":%.4f}', i, ts, v))
    end
  end
end

local keynames = {}
function M.keyname(i)
  local k = keynames[i]
  if not k then k = "k" .. i; keynames[i] = k end
  return k
end

-- What a closed window must hold when every second of it was sent at `rate`
-- per key: windows starting at or after `full_from` are checked.
function M.expectation(sc, rate, full_from)
  if not sc.kind then return nil end
  local per = rate * sc.size
  return function(start)
    if start >= T0 + full_from then return per end
  end
end

-- --lua-profile: a sampling profile of the timed part at the Lua level (perf
-- sees the interpreter, not which Lua line it runs). A count hook every
-- PROFILE_EVERY VM instructions charges the running line and function.
-- debug.sethook's Lua function is kept per coroutine, so the hook is put on
-- each agent's coroutine and on the closer's (from inside on_window_close);
-- `profile.on` limits it to the timed part.
local PROFILE_EVERY = 997
local profile = { on = false, lines = {}, funcs = {}, n = 0 }
local function profile_hook()
  if not profile.on then return end
  local info = debug.getinfo(2, "Sln")
  if not info then return end
  local line = info.short_src .. ":" .. (info.currentline or 0)
  local func = string.format("%s:%d %s", info.short_src, info.linedefined or 0, info.name or "?")
  profile.lines[line] = (profile.lines[line] or 0) + 1
  profile.funcs[func] = (profile.funcs[func] or 0) + 1
  profile.n = profile.n + 1
end

local function profile_report(out)
  local function top(map, what, n)
    local list = {}
    for k, c in pairs(map) do list[#list + 1] = { k, c } end
    table.sort(list, function(a, b) return a[2] > b[2] end)
    out:write(string.format("Lua profile, %s (%d samples, 1 per %d VM instructions):\n", what, profile.n, PROFILE_EVERY))
    for i = 1, math.min(n, #list) do
      out:write(string.format("  %5.1f%%  %s\n", 100 * list[i][2] / profile.n, list[i][1]))
    end
  end
  top(profile.funcs, "by function (file:line defined)", 15)
  top(profile.lines, "by line", 30)
end

-- One run: build a fresh app, warm it up (untimed), then send one stream
-- second at a time and time only t:run() — the agent, the windows, the
-- closes — until `cpu` seconds of CPU were spent and at least `min_seconds`
-- stream seconds went by.
--
-- Warm-up: a count costs the same whatever it already holds, so counts warm
-- up with 1 event per key per second. Updating every window, the last
-- expires + 2 seconds suffice (an event opens every window that contains it:
-- all that steady state keeps open; full rate over size + expires seconds
-- would take minutes for size 60). With combine an event opens only its own
-- slice, so every second of the span gets its event: a close then folds
-- slices that exist, as in steady state. A list's close cost grows with its
-- length, so list scenarios warm up at full rate.
local function run_once(fstream, sc, cfg, idx)
  local rate = sc.rate or cfg.rate
  local warm = sc.kind and (sc.size + cfg.expires + 1) or 1
  local app, input, _, stats, tbl = M.build(fstream, sc, {
    id = string.format("winbench-%s-%d", sc.name, idx), partitions = cfg.partitions,
    expires = cfg.expires, expect = M.expectation(sc, rate, warm),
  })
  local state = tbl and require("fstream.table").state(tbl)
  if cfg.lua_profile and state and state.on_window_close then
    local on_close = state.on_window_close
    state.on_window_close = function(...)
      if debug.gethook() ~= profile_hook then debug.sethook(profile_hook, "", PROFILE_EVERY) end
      return on_close(...)
    end
  end
  local t = fstream.testing(app)
  if cfg.lua_profile then
    t:run()   -- starts the agents' coroutines
    for co in pairs(require("fstream.table").streams_by_co) do debug.sethook(co, profile_hook, "", PROFILE_EVERY) end
  end
  local rng = { 12345 }
  local function emit(key, bytes) t:send_raw(input, bytes, { key = key }) end
  local sparse = sc.kind and not sc.list
  local from = (sparse and not (sc.combine or sc.merge)) and math.max(0, warm - cfg.expires - 2) or 0
  for s = from, warm - 1 do
    M.second(s, cfg.keys, rate, emit, rng, sparse)
    t:run()
  end
  local w = state and state.window
  local closed0, closes0 = w and w.closed or 0, stats.closes
  collectgarbage("collect")
  local cpu, events, s = 0, 0, warm
  while cpu < cfg.cpu or s - warm < cfg.min_seconds do
    M.second(s, cfg.keys, rate, emit, rng)
    local c0 = os.clock()
    profile.on = cfg.lua_profile
    t:run()
    profile.on = false
    cpu = cpu + (os.clock() - c0)
    events = events + cfg.keys * rate
    s = s + 1
  end
  local res = {
    events = events, cpu = cpu, stream_seconds = s - warm,
    closes = stats.closes - closes0, window_closed = w and (w.closed - closed0) or 0,
    checked = stats.checked, wrong = stats.wrong, late = stats.late or 0,
    entries = 0,
  }
  -- Open windows (combine: open slices) at the end, from the window's index.
  if w then
    if w.idx then
      res.entries = w.idx:open_windows()   -- the C index (runtime/state/fs_windows.c)
    else
      for _, wp in pairs(w.parts) do
        for _ in pairs(wp.index or {}) do res.entries = res.entries + 1 end
      end
    end
  end
  t:close()
  collectgarbage("collect")
  return res
end

-- Windows closed once every event of stream seconds 0 .. seconds-1 (from
-- M.second at `rate`) was processed: a key's windows start at multiples of
-- step from the first that contains second 0, and close when stream time (the
-- last event's) passes end + expires. For bench/windows.sh's broker run.
function M.expected_closes(sc, keys, rate, seconds, expires)
  local size = sc.size
  local step = sc.kind == "tumbling" and size or sc.step
  local last = T0 + (seconds - 1) + (rate - 1) / rate
  local first = T0 - size + step -- windows containing T0 start after T0 - size
  first = math.ceil(first / step) * step
  local n = 0
  local s = first
  while s + size + expires < last do
    n = n + 1
    s = s + step
  end
  return n * keys
end

-- --micro: the pieces a hopping update repeats per window, timed alone, to
-- say which restructuring of lua/fstream/window.lua would pay. Keys and
-- sizes are the hop60 scenario's (1,000 keys x 62 open windows).
local function micro(fstream)
  local json = fstream.json
  local N = 2000000
  local keys = {}
  for i = 0, 999 do keys[i] = M.keyname(i) end
  local function bench(what, fn)
    collectgarbage("collect")
    local c0 = os.clock()
    local x = fn()
    local dt = os.clock() - c0
    print(string.format("  %-58s %7.1f ns", what, dt / N * 1e9))
    return x
  end
  local base = T0 + 100
  print("per window (ns per operation, " .. N .. " operations each; subtract the first line):")
  bench("loop and index arithmetic alone", function()
    local x
    for i = 1, N do x = keys[i % 1000]; x = base + i % 62 end
    return x
  end)
  bench("json.encode { key, start } (window_kb)", function()
    local x
    for i = 1, N do x = json.encode { keys[i % 1000], base + i % 62 } end
    return x
  end)
  local prefix = {}
  for i = 0, 999 do prefix[i] = "[" .. json.encode(keys[i]) .. "," end
  bench('prefix .. start .. "]" (prefix made once per event)', function()
    local x
    for i = 1, N do x = prefix[i % 1000] .. (base + i % 62) .. "]" end
    return x
  end)
  -- Open windows' key bytes kept per key, by start: made once per window.
  local kbs = {}
  for i = 0, 999 do
    local t = {}
    for j = 0, 61 do t[base + j] = json.encode { keys[i], base + j } end
    kbs[keys[i]] = t
  end
  bench("kbs[key][start] (key bytes cached per open window)", function()
    local x
    for i = 1, N do x = kbs[keys[i % 1000]][base + i % 62] end
    return x
  end)
  local cache, dirty = {}, {}
  for i = 0, 999 do
    for j = 0, 61 do local kb = kbs[keys[i]][base + j]; cache[kb] = j; dirty[kb] = true end
  end
  bench("cache[kb] read + cache[kb] = v + dirty[kb] = true (62k keys)", function()
    for i = 1, N do
      local kb = kbs[keys[i % 1000]][base + i % 62]
      local v = cache[kb]
      cache[kb] = v + 1
      dirty[kb] = true
    end
  end)
  bench("the same through 4 calls (_lookup/lookup/_put/held shape)", function()
    local part = { cache = cache, dirty = dirty }
    local parts = { [0] = part }
    local function lookup(_, _, pt, kb) return pt.cache[kb] end
    local function _lookup(_, p, kb) local pt = parts[p]; return lookup(nil, p, pt, kb) end
    local function held(_, p) return parts[p] end
    local function _put(_, p, kb, v) local pt = held(nil, p); pt.cache[kb] = v; pt.dirty[kb] = true end
    for i = 1, N do
      local kb = kbs[keys[i % 1000]][base + i % 62]
      _put(nil, 0, kb, _lookup(nil, 0, kb) + 1)
    end
  end)
  local w = { size = 60, step = 1, expires = 2, parts = { [0] = { stream_time = base + 61 } } }
  local function starts(self, at)
    local out = {}
    local s = math.floor(at / self.step) * self.step
    while s > at - self.size do
      out[#out + 1] = s
      s = s - self.step
    end
    return out
  end
  N = N // 60
  bench("starts() for size 60 / step 1 (a 60-entry list, per event)", function()
    local x
    for i = 1, N do x = starts(w, base + 61 + (i % 10) / 10) end
    return x
  end)
  bench("oldest start by arithmetic (per event)", function()
    local x
    for i = 1, N do
      local at = base + 61 + (i % 10) / 10
      local newest = math.floor(at / w.step) * w.step
      x = newest - (math.ceil(w.size / w.step) - 1) * w.step
    end
    return x
  end)
end

local function median(xs)
  local s = {}
  for i, x in ipairs(xs) do s[i] = x end
  table.sort(s)
  local n = #s
  if n % 2 == 1 then return s[(n + 1) // 2] end
  return (s[n // 2] + s[n // 2 + 1]) / 2
end

local function usage()
  io.stderr:write([[
usage: lua5.4 bench/windows.lua [--scenario a,b|all] [--runs N] [--cpu SECONDS]
         [--min-seconds N] [--keys N] [--rate N] [--expires S] [--partitions N] [--json]
  --scenario    comma-separated names (see --list), default all
  --runs        runs per scenario, the median is reported (default 3)
  --cpu         timed CPU seconds per run, at least (default 3)
  --min-seconds timed stream seconds per run, at least (default 3)
  --keys        distinct keys (default 1000)
  --rate        events per key per stream second (default 10; the forecast
                scenarios keep their own: 4 as in the example, and 50)
  --expires     the windows' expires (default 2)
  --partitions  input partitions (default 8)
  --json        one JSON line per scenario on stdout instead of the table
  --lua-profile sample the timed part by Lua line and function (stderr);
                the hook slows everything down, so its rates are not results
  --micro       time the per-window pieces of an update alone
  --emit SECONDS            print the events of SECONDS stream seconds as
                            key<TAB>json lines (for kcat -P -K'\t')
  --expect-closes NAME SECONDS  windows scenario NAME closes on that input
Env: FSTREAM_BUILD = build dir holding fstream_core.so (default build-rel,
else build); FSTREAM_ROOT = the repository (default: this script's parent).
]])
end

function M.main(args)
  local cfg = { runs = 3, cpu = 3, min_seconds = 3, keys = 1000, rate = 10, expires = 2, partitions = 8 }
  local names, as_json = "all", false
  local mode, mode_arg = "bench", nil
  local i = 1
  local numeric = { ["--runs"] = "runs", ["--cpu"] = "cpu", ["--min-seconds"] = "min_seconds",
    ["--keys"] = "keys", ["--rate"] = "rate", ["--expires"] = "expires", ["--partitions"] = "partitions" }
  while i <= #args do
    local a = args[i]
    if numeric[a] then
      cfg[numeric[a]] = tonumber(args[i + 1]) or error(a .. " needs a number")
      i = i + 2
    elseif a == "--scenario" then
      names = args[i + 1] or error("--scenario needs a value"); i = i + 2
    elseif a == "--json" then
      as_json = true; i = i + 1
    elseif a == "--lua-profile" then
      cfg.lua_profile = true; i = i + 1
    elseif a == "--micro" then
      mode = "micro"; i = i + 1
    elseif a == "--emit" or a == "--expect-closes" then
      -- --emit SECONDS: the events of that many stream seconds on stdout as
      -- "key<TAB>json" lines (kcat -K'\t'); --expect-closes NAME SECONDS.
      mode = a:sub(3)
      if a == "--expect-closes" then
        mode_arg = args[i + 1]; cfg.seconds = tonumber(args[i + 2]); i = i + 3
      else
        cfg.seconds = tonumber(args[i + 1]); i = i + 2
      end
      cfg.seconds = math.tointeger(cfg.seconds) or error(a .. " needs a whole number of seconds")
    elseif a == "--list" then
      for _, s in ipairs(M.SCENARIOS) do print(string.format("%-11s %s", s.name, s.what)) end
      return 0
    elseif a == "-h" or a == "--help" then
      usage(); return 0
    else
      usage(); return 2
    end
  end
  for _, k in ipairs { "runs", "keys", "rate", "partitions", "min_seconds" } do
    cfg[k] = math.tointeger(cfg[k]) or error("--" .. k:gsub("_", "-") .. " must be an integer")
  end
  if mode == "emit" then
    local out, rng = io.stdout, { 12345 }
    out:setvbuf("full", 1 << 16)
    for sec = 0, cfg.seconds - 1 do
      M.second(sec, cfg.keys, cfg.rate, function(key, bytes) out:write(key, "\t", bytes, "\n") end, rng)
    end
    out:flush()
    return 0
  elseif mode == "expect-closes" then
    local sc = M.SCENARIOS[mode_arg] or error("unknown scenario '" .. tostring(mode_arg) .. "'")
    -- The rate of the input --emit wrote, not the scenario's in-process one.
    print(M.expected_closes(sc, cfg.keys, cfg.rate, cfg.seconds, cfg.expires))
    return 0
  elseif mode == "micro" then
    micro(require "fstream")
    return 0
  end
  local list = {}
  if names == "all" then
    for _, s in ipairs(M.SCENARIOS) do
      if not s.optional then list[#list + 1] = s end
    end
  else
    for n in names:gmatch("[^,]+") do
      list[#list + 1] = M.SCENARIOS[n] or error("unknown scenario '" .. n .. "' (see --list)")
    end
  end

  local fstream = require "fstream"
  -- The worker runs Lua's generational collector (runtime/main.c); so do we.
  collectgarbage("generational")
  if not as_json then
    print(string.format("keys %d, %d events/key/s (forecast: 4, forecast50: 50), expires %d, %d partitions, %d runs, >= %g CPU s each%s",
      cfg.keys, cfg.rate, cfg.expires, cfg.partitions, cfg.runs, cfg.cpu,
      ""))
    print(string.format("%-11s %12s %12s %10s %9s %9s %s", "scenario", "events/s", "closes/s",
      "us/event", "entries", "checked", "runs (events/s)"))
  end
  for _, sc in ipairs(list) do
    local rates, closes, runs = {}, {}, {}
    for r = 1, cfg.runs do
      local res = run_once(fstream, sc, cfg, r)
      if res.wrong > 0 or res.late > 0 then
        error(string.format("%s: %d closed windows held a wrong value, %d late events", sc.name, res.wrong, res.late))
      end
      if sc.kind and res.closes ~= res.window_closed then
        error(string.format("%s: on_window_close ran %d times for %d closes", sc.name, res.closes, res.window_closed))
      end
      runs[r] = res
      rates[r] = res.events / res.cpu
      closes[r] = res.closes / res.cpu
    end
    local ev, cl = median(rates), median(closes)
    local last = runs[#runs]
    if as_json then
      local parts = {}
      for r, x in ipairs(rates) do parts[r] = string.format("%.0f", x) end
      print(string.format('{"scenario":"%s","events_per_s":%.0f,"closes_per_s":%.0f,"us_per_event":%.3f,'
        .. '"runs":[%s],"events":%d,"stream_seconds":%d,"entries":%d,"checked_closes":%d,'
        .. '"keys":%d,"rate":%d,"expires":%d,"partitions":%d}',
        sc.name, ev, cl, 1e6 / ev, table.concat(parts, ","), last.events, last.stream_seconds,
        last.entries, last.checked, cfg.keys, sc.rate or cfg.rate, cfg.expires, cfg.partitions))
    else
      local parts = {}
      for r, x in ipairs(rates) do parts[r] = string.format("%.0f", x) end
      print(string.format("%-11s %12.0f %12.0f %10.2f %9d %9d %s", sc.name, ev, cl, 1e6 / ev,
        last.entries, last.checked, table.concat(parts, " ")))
    end
    io.stdout:flush()
  end
  if cfg.lua_profile then profile_report(io.stderr) end
  return 0
end

-- Run as a script (lua5.4 bench/windows.lua ...) rather than required as the
-- module "windows": put lua/ and the build's C module where require finds
-- them, the way spec/helper.lua does for the specs.
if ... ~= "windows" then
  local here = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$")) or "."
  local root = os.getenv("FSTREAM_ROOT") or here:match("^(.*)/bench$") or (here == "bench" and ".") or (here .. "/..")
  local build = os.getenv("FSTREAM_BUILD")
  if not build then
    build = root .. "/build-rel"
    local f = io.open(build .. "/fstream_core.so", "rb")
    if f then f:close() else build = root .. "/build" end
  end
  package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
  package.preload["fstream.core"] = function()
    local open = assert(package.loadlib(build .. "/fstream_core.so", "luaopen_fstream_core"))
    return open()
  end
  os.exit(M.main(arg))
end
return M
