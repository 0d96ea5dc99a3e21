-- The soak (RELIABILITY.md, "8. Soak"), shared by scripts/soak and
-- chaos/scenarios/soak.lua: a real Kafka, the eos_all app (stateless relay,
-- word-count table, tumbling and hopping windows), an external numbered
-- producer paced by the clock, a kill -9 of the worker every few minutes
-- (restarted at once, as a supervisor does) and a hot reload every minute
-- (the script rewritten with another constant). Samples RSS, open fds,
-- registry refs, lag and progress; at the end drains, checks every number,
-- the table and the windows with kcat (read_committed) and the table CLI, and
-- writes samples.csv, events.csv, soak.svg and summary.md.
local proc = require "spec.support.proc"
local eos = require "spec.support.eos"
local svgplot = require "chaos.svgplot"
local json = require("fstream.core").json

local soak = {}
local q = proc.quote

soak.FULL = { minutes = 30, rate = 5000, kill_every = 180, reload_every = 60, sample_every = 5, words = 16 }
soak.QUICK = { minutes = 3, rate = 5000, kill_every = 60, reload_every = 20, sample_every = 2, words = 16 }
soak.PORT = 19760
local PARTS = 4 -- eos_all.lua's topic_partitions
local SIZE, STEP = 1000, 500 -- its windows, in centiseconds (as spec/support/eos.lua)

local function now() return tonumber(proc.run("date +%s.%N"):match("[%d%.]+")) end

-- The app: spec/fixtures/eos_all.lua plus a constant the soak changes on every
-- reload and a page that tells which version runs (so a reload is seen to apply).
local function write_app(path, generation)
  local base = assert(proc.read(eos.fixture))
  local text = base .. string.format([[

-- Added by the soak (chaos/soak.lua), which rewrites this constant on every
-- hot reload so that each reload loads a different script.
local soak_generation = %d
app:page("/soak", function() return { generation = soak_generation } end)
]], generation)
  -- Written beside and renamed over: the worker's watch sees one complete file.
  proc.write(path .. ".new", text)
  assert(os.rename(path .. ".new", path))
end

local function http_get(url)
  local out, rc = proc.run("curl -s -m 3 " .. q(url))
  if rc ~= 0 then return nil end
  return out
end

-- The numbers a sample takes from /metrics.
local function metrics(web)
  local text = web and http_get(web .. "metrics")
  if not text then return nil end
  local m = { lag = 0 }
  m.refs = tonumber(text:match("\nfstream_lua_registry_refs (%S+)"))
  m.processed = tonumber(text:match("\nfstream_events_processed_total (%S+)"))
  m.lua_mem = tonumber(text:match("\nfstream_lua_memory_bytes (%S+)"))
  m.reloads = tonumber(text:match("\nfstream_reloads_total (%S+)"))
  local any = false
  for v in text:gmatch("\nfstream_partition_lag{[^}]*} (%S+)") do m.lag = m.lag + tonumber(v); any = true end
  if not any then m.lag = nil end
  return m
end

local function proc_stats(pid)
  local out = proc.run(string.format("grep VmRSS /proc/%d/status; ls /proc/%d/fd | wc -l", pid, pid))
  local rss = tonumber(out:match("VmRSS:%s*(%d+)"))
  -- A process that is gone has no VmRSS, and its fd count reads 0: neither is a sample.
  if not rss then return nil, nil end
  local fds = tonumber(out:match("\n%s*(%d+)%s*$"))
  return rss, fds
end

-- Sum of the end offsets of a topic's partitions (cheap: reads no message).
local function end_offsets(addr, topics)
  local args = {}
  for _, t in ipairs(topics) do
    for p = 0, PARTS - 1 do args[#args + 1] = "-t " .. q(t .. ":" .. p .. ":-1") end
  end
  local out, rc = proc.run(string.format("kcat -Q -b %s %s", addr, table.concat(args, " ")))
  local sums = {}
  if rc ~= 0 then return sums end
  for t, off in out:gmatch("([^%s]+) %[%d+%] offset (%-?%d+)") do
    sums[t] = (sums[t] or 0) + math.max(0, tonumber(off))
  end
  return sums
end

-- Least-squares slope of ys over xs (per unit of x); nil with fewer than 3 points.
function soak.slope(xs, ys)
  local n, sx, sy, sxx, sxy = 0, 0, 0, 0, 0
  for i = 1, #xs do
    if ys[i] then
      n = n + 1; sx = sx + xs[i]; sy = sy + ys[i]; sxx = sxx + xs[i] ^ 2; sxy = sxy + xs[i] * ys[i]
    end
  end
  if n < 3 or n * sxx - sx * sx == 0 then return nil end
  return (n * sxy - sx * sy) / (n * sxx - sx * sx)
end

-- Theil-Sen slope: the median of the slopes between every two points (nil
-- with fewer than 3). Unlike least squares, a few points off the line (up to
-- about a quarter of them) do not tilt it.
function soak.median_slope(xs, ys)
  local ss = {}
  for i = 1, #xs do
    for j = i + 1, #xs do
      if ys[i] and ys[j] and xs[j] ~= xs[i] then ss[#ss + 1] = (ys[j] - ys[i]) / (xs[j] - xs[i]) end
    end
  end
  if #xs < 3 or #ss == 0 then return nil end
  table.sort(ss)
  local m = #ss // 2
  return #ss % 2 == 1 and ss[m + 1] or (ss[m] + ss[m + 1]) / 2
end

-- The floor of a saw-tooth and its trend: the samples from `from` to `to` s
-- (each at least `settle` s into its process's life: a process starting is
-- not its level) cut into intervals of `interval` s, the minimum of key in
-- each, and the Theil-Sen slope of those minima per hour. RSS peaks follow
-- the lag (events fetched and not yet processed), not time, so a slope over
-- every sample depends on where the run ends in the saw-tooth, and a lag
-- burst longer than an interval lifts a few minima; a leak lifts them all.
-- Returns the slope (nil with fewer than 3 intervals) and the list of
-- {t_h, min}.
function soak.floor_slope(samples, key, from, to, interval, settle)
  local born, mins = {}, {}
  for _, s in ipairs(samples) do
    if s.pid and not born[s.pid] then born[s.pid] = s.t end
    local v = s[key]
    if v and s.t >= from and s.t <= to and s.t - (born[s.pid] or s.t) >= settle then
      local i = (s.t - from) // interval
      if not mins[i] or v < mins[i] then mins[i] = v end
    end
  end
  local xs, ys, pts = {}, {}, {}
  for i, v in pairs(mins) do pts[#pts + 1] = { (from + (i + 0.5) * interval) / 3600, v } end
  table.sort(pts, function(a, b) return a[1] < b[1] end)
  for k, p in ipairs(pts) do xs[k], ys[k] = p[1], p[2] end
  return soak.median_slope(xs, ys), pts
end

-- Whether RSS, fds and registry refs stayed flat over a run whose producer
-- ran `duration` s. Over the second half: RSS by the trend of its floor
-- (soak.floor_slope: per-minute minima, Theil-Sen), fds and refs (flat lines, no
-- saw-tooth) by the slope over all samples; each at most 10 % of its median
-- level per hour (fds, refs: at least 6/h, one per kill or reload would
-- show). And per reload (soak.reload_deltas): on average at most 0.5 refs
-- and 0.5 fds more. Only a rise is a leak; a fall is flat.
function soak.trends(samples, events, duration)
  local half = duration / 2
  local xs, rss, fds, refs = {}, {}, {}, {}
  for _, s in ipairs(samples) do
    if s.t >= half and s.t <= duration then
      xs[#xs + 1] = s.t / 3600
      rss[#xs], fds[#xs], refs[#xs] = s.rss_kb and s.rss_kb / 1024, s.fds, s.refs
    end
  end
  local function median(list)
    local v = {}
    for i = 1, #xs do if list[i] then v[#v + 1] = list[i] end end
    table.sort(v)
    return v[(#v + 1) // 2] or 0
  end
  -- Per-minute minima (shorter runs: six intervals at least).
  local floor = soak.floor_slope(samples, "rss_kb", half, duration, math.min(60, half / 6), 20)
  local t = {
    slopes = { rss = floor and floor / 1024, fds = soak.slope(xs, fds), refs = soak.slope(xs, refs) },
    rss_all = soak.slope(xs, rss), -- every sample's slope, for comparison (not judged)
    limits = { rss = 0.10 * median(rss), fds = math.max(6, 0.10 * median(fds)), refs = math.max(6, 0.10 * median(refs)) },
    flat = {},
  }
  for k, v in pairs(t.slopes) do t.flat[k] = v == nil or v <= t.limits[k] end
  t.reload = soak.reload_deltas(samples, events)
  t.flat.reload = t.reload.refs.mean <= 0.5 and t.reload.fds.mean <= 0.5
  t.all_flat = t.flat.rss and t.flat.fds and t.flat.refs and t.flat.reload
  return t
end

-- Packed counters, 4 bits per number (up to 15), 15 per Lua integer: the soak's
-- millions of numbers fit in a few MiB where a table per number would take a GiB.
function soak.counter()
  local c = {}
  return {
    get = function(n) local w = c[n // 15]; return w and (w >> (4 * (n % 15))) & 15 or 0 end,
    inc = function(n)
      local i, s = n // 15, 4 * (n % 15)
      local w = c[i] or 0
      if (w >> s) & 15 < 15 then c[i] = w + (1 << s) end
    end,
  }
end

-- Number of n in [1, x] with n % W == k.
local function count_mod(x, W, k)
  if x < 1 then return 0 end
  return (x - k) // W - (0 - k) // W
end

-- The windows the soak's input makes, by arithmetic rather than from a table
-- per input: numbers 1..max_n all sent, number n has word k = n % words and
-- event time cs(n) = base + (a * n) // d centiseconds (the soak's producer:
-- a = 100, d = its rate), word k's messages go to partition wpart[k], and
-- part_max[p] is the highest number in partition p (its stream time).
-- expected(k, s): the count of word k's window starting at s (cs), either
-- kind (both are SIZE long). each_due(fn): fn(kind, k, s) for every window
-- that must have closed: it holds input and ended at least one window size
-- before its partition's stream time (eos.check_windows' rule).
function soak.windows_model(words, base, a, d, max_n, wpart, part_max)
  local m = {}
  local function cs(n) return base + (a * n) // d end
  -- The first n with cs(n) >= t: a * n >= (t - base) * d.
  local function first_at(t) return -((-(t - base) * d) // a) end
  function m.expected(k, s)
    local lo = math.max(1, first_at(s))
    local hi = math.min(max_n, first_at(s + SIZE) - 1)
    if hi < lo then return 0 end
    return count_mod(hi, words, k) - count_mod(lo - 1, words, k)
  end
  function m.each_due(fn)
    for k = 0, words - 1 do
      local p = wpart[k]
      if p then
        local stream = cs(part_max[p])
        local first = cs(k == 0 and words or k)
        for _, kind in ipairs { "t", "h" } do
          local step = kind == "t" and SIZE or STEP
          local s = first - first % step - (kind == "h" and STEP or 0)
          while s + 2 * SIZE <= stream do
            if m.expected(k, s) > 0 then fn(kind, k, s) end
            s = s + step
          end
        end
      end
    end
  end
  return m
end

-- Every check on the final topics, streaming (kcat read_committed, line by line).
function soak.check(addr, env, app_path, store, words, base, rate)
  local r = { notes = {} }
  -- Inputs: numbers present (twice is the harness's bug), their words' partitions.
  local seen_in = soak.counter()
  local inputs, max_n, dup_in = 0, 0, 0
  local wpart, part_max = {}, {}
  local per_word = {}
  local f = io.popen(string.format(
    "kcat -C -b %s -t %s -X isolation.level=read_committed -o beginning -e -q -f '%%p\\t%%s\\n' 2>/dev/null", addr,
    q(env.IN)))
  for line in f:lines() do
    local p, n, k = line:match('^(%d+)\t{"n":(%d+),"w":"w(%d+)"')
    if p then
      p, n, k = tonumber(p), tonumber(n), tonumber(k)
      if seen_in.get(n) > 0 then dup_in = dup_in + 1 end
      seen_in.inc(n)
      inputs = inputs + 1
      if n > max_n then max_n = n end
      wpart[k] = p
      if (part_max[p] or 0) < n then part_max[p] = n end
      per_word["w" .. k] = (per_word["w" .. k] or 0) + 1
    end
  end
  f:close()
  r.messages, r.max_n, r.dup_inputs = inputs, max_n, dup_in
  r.contiguous = dup_in == 0 and inputs == max_n
  -- The relay's output: every input number exactly once.
  local out = soak.counter()
  local unknown = 0
  f = io.popen(string.format(
    "kcat -C -b %s -t %s -X isolation.level=read_committed -o beginning -e -q -f '%%s\\n' 2>/dev/null", addr,
    q(env.OUT)))
  for line in f:lines() do
    local n = tonumber(line:match("^out:(%d+)$"))
    if n then
      if n > max_n or seen_in.get(n) == 0 then unknown = unknown + 1 else out.inc(n) end
    end
  end
  f:close()
  local lost, dups, first_lost = 0, 0, {}
  for n = 1, max_n do
    if seen_in.get(n) > 0 then
      local c = out.get(n)
      if c == 0 then
        lost = lost + 1
        if #first_lost < 10 then first_lost[#first_lost + 1] = n end
      elseif c > 1 then dups = dups + c - 1 end
    end
  end
  r.lost, r.duplicated, r.unknown, r.first_lost = lost, dups, unknown, first_lost
  -- The word-count table: its changelog (read_committed) and the table CLI.
  local function table_diff(got)
    local under, over = 0, 0
    for w, v in pairs(per_word) do
      local g = got[w] or 0
      if g < v then under = under + v - g elseif g > v then over = over + g - v end
    end
    for w, g in pairs(got) do if not per_word[w] then over = over + g end end
    return under, over
  end
  r.changelog_under, r.changelog_over = table_diff(eos.changelog_counts(addr, env.changelog))
  local ok, rows = pcall(eos.table_counts, env, store)
  if ok then
    -- proc.table_rows reads spec/fixtures/eos_all.lua; the table is the same.
    r.table_under, r.table_over = table_diff(rows)
  else
    r.notes[#r.notes + 1] = "table CLI failed: " .. tostring(rows)
  end
  -- Windows: expected counts by arithmetic (numbers 1..max_n all sent, word
  -- n % W, event time base + 2n cs); due = ended 2 sizes before its partition's
  -- stream time, as eos.check_windows has it.
  r.windows = { closed = 0, due = 0, missing = 0, twice = 0, under = 0, over = 0, unknown = 0 }
  if not r.contiguous then
    r.notes[#r.notes + 1] = "inputs not contiguous: window check skipped"
    return r
  end
  local model = soak.windows_model(words, base, 100, rate, max_n, wpart, part_max)
  local expected = model.expected
  local closed = {}
  local wr = r.windows
  f = io.popen(string.format(
    "kcat -C -b %s -t %s -X isolation.level=read_committed -o beginning -e -q -f '%%s\\n' 2>/dev/null", addr,
    q(env.CLOSED)))
  for line in f:lines() do
    local c = json.decode(line)
    if c then
      wr.closed = wr.closed + 1
      local s = math.floor(c.start * 100 + 0.5)
      local key = c.kind .. "|" .. c.w .. "|" .. s
      local k = tonumber(c.w:match("^w(%d+)$"))
      closed[key] = (closed[key] or 0) + 1
      if closed[key] == 2 then wr.twice = wr.twice + 1 end
      local e = k and expected(k, s) or 0
      if e == 0 then wr.unknown = wr.unknown + 1
      elseif c.count < e then wr.under = wr.under + 1
      elseif c.count > e then wr.over = wr.over + 1 end
    end
  end
  f:close()
  model.each_due(function(kind, k, s)
    wr.due = wr.due + 1
    if not closed[kind .. "|w" .. k .. "|" .. s] then wr.missing = wr.missing + 1 end
  end)
  return r
end

-- What each hot reload changed: for every reload, the last sample before it
-- and the first one at least `settle` s after it in the same process (no kill
-- between). Kills restart the process, so a leak per reload shows here rather
-- than in the slope across lives. Returns {n, refs = {sum, max}, fds = ..., rss_kb = ...}.
function soak.reload_deltas(samples, events, settle)
  settle = settle or 10
  local r = { n = 0, refs = { sum = 0, max = 0 }, fds = { sum = 0, max = 0 }, rss_kb = { sum = 0, max = 0 } }
  for _, e in ipairs(events) do
    if e.kind == "reload" then
      local before, after
      for _, s in ipairs(samples) do
        if s.t < e.t then before = s
        elseif s.t >= e.t + settle then after = s; break end
      end
      if before and after and before.pid == after.pid and before.refs and after.refs and before.fds and after.fds then
        r.n = r.n + 1
        for _, k in ipairs { "refs", "fds", "rss_kb" } do
          local d = (after[k] or 0) - (before[k] or 0)
          r[k].sum = r[k].sum + d
          if math.abs(d) > math.abs(r[k].max) then r[k].max = d end
        end
      end
    end
  end
  for _, k in ipairs { "refs", "fds", "rss_kb" } do r[k].mean = r.n > 0 and r[k].sum / r.n or 0 end
  return r
end

-- The plot of a run's samples and events: a point per sample, a gap where the
-- worker was down (a new pid), kills and reloads as vertical lines.
function soak.plot(samples, events, info)
  local function series(key, scale)
    local pts, last_pid = {}, nil
    for _, s in ipairs(samples) do
      if last_pid and s.pid ~= last_pid then pts[#pts + 1] = { s.t / 60, nil } end
      last_pid = s.pid
      pts[#pts + 1] = { s.t / 60, s[key] and s[key] * (scale or 1) or nil }
    end
    return pts
  end
  local markers = {}
  for _, e in ipairs(events) do
    if e.kind == "kill" then
      markers[#markers + 1] = { x = e.t / 60, color = "#d62728", width = 1.5, label = "kill -9 + restart" }
    elseif e.kind == "died" then
      markers[#markers + 1] = { x = e.t / 60, color = "#ff7f0e", width = 2.5, label = "worker exited by itself" }
    elseif e.kind == "reload" then
      markers[#markers + 1] = { x = e.t / 60, color = "#1f77b4", dash = true, label = "hot reload" }
    end
  end
  if info.duration then
    markers[#markers + 1] = { x = info.duration / 60, color = "#555", width = 1.5, label = "producer stopped" }
  end
  return svgplot.render {
    title = info.title, subtitle = info.subtitle,
    xlabel = "minutes since the producer started",
    panels = {
      { label = "RSS (MiB, VmRSS; Lua heap: fstream_lua_memory_bytes)", series = {
        { name = "RSS", color = "#d62728", points = series("rss_kb", 1 / 1024) },
        { name = "Lua heap", color = "#ff9896", points = series("lua_mem", 1 / 1048576) } } },
      { label = "open file descriptors (/proc/PID/fd)", series = { { name = "fds", color = "#2ca02c", points = series("fds") } } },
      { label = "Lua registry refs (fstream_lua_registry_refs)", series = { { name = "refs", color = "#9467bd", points = series("refs") } } },
      { label = "input lag (messages, sum of fstream_partition_lag)", series = { { name = "lag", color = "#8c564b", points = series("lag") } } },
    },
    markers = markers,
  }
end

-- Draws DIR/soak.svg again from DIR/samples.csv and DIR/events.csv (and
-- DIR/summary.md's first lines for the titles).
function soak.replot(dir)
  local samples, events = {}, {}
  local cols
  for line in assert(io.open(dir .. "/samples.csv")):lines() do
    if not cols then cols = {}; for c in line:gmatch("[^,]+") do cols[#cols + 1] = c end
    else
      local s, i = {}, 0
      for v in (line .. ","):gmatch("([^,]*),") do i = i + 1; s[cols[i]] = tonumber(v) end
      s.t, s.rss_kb, s.refs = s.t_s, s.rss_kib, s.lua_refs
      s.lua_mem = s.lua_mem_bytes
      samples[#samples + 1] = s
    end
  end
  local header = true
  for line in assert(io.open(dir .. "/events.csv")):lines() do
    if header then header = false
    else
      local t, kind, detail = line:match("^([^,]*),([^,]*),(.*)$")
      events[#events + 1] = { t = tonumber(t), kind = kind, detail = detail }
    end
  end
  local info = json.decode(proc.read(dir .. "/plot.json") or "{}") or {}
  proc.write(dir .. "/soak.svg", soak.plot(samples, events, info))
  local rd = soak.reload_deltas(samples, events)
  io.write(string.format("per reload (%d measured): refs %+.2f on average (max %+d), fds %+.2f (max %+d), RSS %+.1f MiB (max %+.1f)\n",
    rd.n, rd.refs.mean, rd.refs.max, rd.fds.mean, rd.fds.max, rd.rss_kb.mean / 1024, rd.rss_kb.max / 1024))
  if info.duration then
    local tr = soak.trends(samples, events, info.duration)
    local function f(k) return tr.slopes[k] and string.format("%+.2f/h (limit %.1f)", tr.slopes[k], tr.limits[k]) or "—" end
    io.write(string.format("second half: RSS floor %s MiB, every sample %s MiB/h; fds %s, refs %s: %s\n", f("rss"),
      tr.rss_all and string.format("%+.2f", tr.rss_all) or "—", f("fds"), f("refs"), tr.all_flat and "flat" or "NOT flat"))
  end
  return samples, events
end

-- The last line a worker logged at level error (why it exited), or "?".
local function last_error(log)
  local last = "?"
  for line in log:gmatch("[^\n]+") do
    local m = line:match("^%S+ error%s+(.*)$")
    if m then last = m end
  end
  return last
end

local function fmt_mib(kb) return kb and string.format("%.1f", kb / 1024) or "—" end

-- One soak under one guarantee. P: minutes, rate, kill_every, reload_every,
-- sample_every, words, guarantee, out (directory), addr (a running Kafka).
-- Returns the figure (also given to ctx.row).
function soak.run_one(ctx, P)
  local g = P.guarantee
  local dir = ctx.tmp .. "/" .. g
  proc.run("rm -rf " .. q(dir) .. " && mkdir -p " .. q(dir) .. " " .. q(P.out))
  local names = eos.names("soak-" .. (g == "exactly_once" and "eos" or "alo"))
  local env = { APP_ID = names.APP_ID, IN = names.IN, OUT = names.OUT, CLOSED = names.CLOSED, GUARANTEE = g,
    changelog = names.changelog }
  local app_path = dir .. "/soak_app.lua"
  local store = dir .. "/store"
  local generation = 0
  write_app(app_path, generation)
  local addr = P.addr
  ctx.log("%s: %g min at %g msg/s, kill -9 every %g s, reload every %g s, out %s", g, P.minutes, P.rate,
    P.kill_every, P.reload_every, P.out)

  local logs = {}
  local function start_worker()
    local w = ctx.track(proc.spawn(string.format(
      "env %s %s worker %s --broker kafka://%s --store lmdb://%s --reload --web-port 0 --worker-id soak -l info",
      eos.envs(env), proc.bin, q(app_path), addr, q(store)), "soak-worker"))
    logs[#logs + 1] = w
    local web = w:wait_for("web%s+(http://[%d%.:]+/)", 60)
    assert(web, "worker did not start: " .. w:output())
    w.web = web
    return w
  end

  local events = {} -- {t, kind, detail}
  local samples = {}
  local w = start_worker()
  assert(w:wait_for("assigned %d+ partitions", 90), "worker never got partitions: " .. w:output())

  local base = (os.time() - 60) * 100
  local stop_file, progress = dir .. "/producer.stop", dir .. "/producer.next"
  os.remove(stop_file)
  local producer = ctx.track(proc.spawn(string.format("bash %s/chaos/soak_producer.sh %s %s %d %d %d %s %s",
    proc.root, addr, q(env.IN), P.rate, P.words, base, q(stop_file), q(progress)), "soak-producer"))
  ctx.defer(function() proc.write(stop_file, "") end)

  local t0 = now()
  local duration = P.minutes * 60
  local next_kill, next_reload, next_sample = P.kill_every, P.reload_every / 2, 0
  local recoveries, kills, reloads_written, died = {}, 0, 0, {}

  local function sample(t)
    local rss, fds = proc_stats(w.pid)
    local m = metrics(w.web) or {}
    local ends = end_offsets(addr, { env.IN, env.OUT })
    local gen = http_get(w.web .. "soak")
    gen = gen and tonumber(gen:match('"generation":%s*(%d+)'))
    local s = { t = t, pid = w.pid, rss_kb = rss, fds = fds, refs = m.refs, lua_mem = m.lua_mem, lag = m.lag,
      processed = m.processed, produced = ends[env.IN], relayed = ends[env.OUT], generation = gen }
    samples[#samples + 1] = s
    return s
  end

  while true do
    local t = now() - t0
    if t >= duration then break end
    if t >= next_kill then
      next_kill = next_kill + P.kill_every
      w:signal("KILL")
      w:wait(10)
      kills = kills + 1
      events[#events + 1] = { t = now() - t0, kind = "kill", detail = "pid " .. w.pid }
      ctx.log("%s: kill -9 %d (%d)", g, w.pid, kills)
      local killed_at = now()
      proc.sleep(0.5) -- what the supervisor of --workers waits before a restart
      w = start_worker()
      events[#events + 1] = { t = now() - t0, kind = "restart", detail = "pid " .. w.pid }
      -- Recovery: from the kill to the new worker's first processed event,
      -- polled every 0.2 s (the samples wait meanwhile; the producer does not).
      repeat
        local m = metrics(w.web)
        if m and (m.processed or 0) > 0 then
          recoveries[#recoveries + 1] = now() - killed_at
          break
        end
        proc.sleep(0.2)
      until now() - killed_at > 90 or not w:alive()
    elseif t >= next_reload then
      next_reload = next_reload + P.reload_every
      generation = generation + 1
      write_app(app_path, generation)
      reloads_written = reloads_written + 1
      events[#events + 1] = { t = t, kind = "reload", detail = "generation " .. generation }
    elseif t >= next_sample and not w:alive() then
      -- Exited by itself (not killed by us): logged, counted, restarted as
      -- a supervisor would; the figure fails.
      died[#died + 1] = string.format("pid %d exit %s at %.0f s: %s", w.pid, tostring(w:wait(1)), t,
        last_error(w:output()):sub(1, 240))
      events[#events + 1] = { t = t, kind = "died", detail = died[#died] }
      ctx.log("%s: the worker exited by itself: %s", g, died[#died])
      proc.sleep(0.5)
      w = start_worker()
      events[#events + 1] = { t = now() - t0, kind = "restart", detail = "pid " .. w.pid }
    elseif t >= next_sample then
      next_sample = next_sample + P.sample_every
      local s = sample(t)
      if #samples % math.max(1, math.floor(60 / P.sample_every)) == 0 then
        ctx.log("%s: %.0f s: rss %s MiB, fds %s, refs %s, lag %s, produced %s", g, t, fmt_mib(s.rss_kb),
          tostring(s.fds), tostring(s.refs), tostring(s.lag), tostring(s.produced))
      end
    else
      proc.sleep(0.1)
    end
  end

  -- Stop the producer, let the worker drain (lag 0 twice in a row), stop it.
  proc.write(stop_file, "")
  producer:wait(60)
  local produced_handed = tonumber(proc.read(progress) or "") or 0
  local drain_start = now()
  local zero, drained = 0, false
  local final_in
  repeat
    local t = now() - t0
    local s = sample(t)
    final_in = final_in or s.produced
    if s.lag == 0 and s.relayed and s.produced and s.relayed >= s.produced then zero = zero + 1 else zero = 0 end
    if zero >= 2 then drained = true; break end
    proc.sleep(P.sample_every)
  until now() - drain_start > 600
  local drain_s = now() - drain_start
  -- A few more seconds so that the last checkpoint and window closes are out.
  proc.sleep(5)
  local stop_rc = w:stop(60)
  events[#events + 1] = { t = now() - t0, kind = "stop", detail = "exit " .. tostring(stop_rc) }

  -- Reloads as the workers logged them.
  local reloaded, reload_failed, pauses = 0, 0, {}
  for _, lw in ipairs(logs) do
    local text = lw:output()
    for ms in text:gmatch("reloaded [^\n]- in (%d+) ms") do
      reloaded = reloaded + 1
      pauses[#pauses + 1] = tonumber(ms)
    end
    for _ in text:gmatch("reload of [^\n]- failed") do reload_failed = reload_failed + 1 end
    for _ in text:gmatch("reload: the new version could not take over") do reload_failed = reload_failed + 1 end
  end

  ctx.log("%s: checking (inputs, relay output, table, windows)", g)
  local ok_check, c = pcall(soak.check, addr, env, app_path, store, P.words, base, P.rate)
  if not ok_check then
    ctx.log("%s: the check failed: %s", g, tostring(c))
    c = { notes = { "the check failed: " .. tostring(c) }, messages = 0, lost = 0, duplicated = 0, unknown = 1,
      first_lost = {}, changelog_under = 1, changelog_over = 0, windows = { closed = 0, due = 0, missing = 1,
      twice = 0, under = 0, over = 0, unknown = 0 } }
  end

  -- Figures over the run: start = first minute's samples, end = the last
  -- sample before the producer stopped; trends by soak.trends.
  local st = { rss = {}, fds = {}, refs = {} }
  local max_lag = 0
  for _, s in ipairs(samples) do
    if s.t <= duration then
      if s.lag and s.lag > max_lag then max_lag = s.lag end
      for _, k in ipairs { "rss_kb", "fds", "refs" } do
        local v = s[k]
        local key = k == "rss_kb" and "rss" or k
        if v then
          local a = st[key]
          a.start = a.start or v
          a["end"] = v
          a.max = math.max(a.max or v, v)
          a.min = math.min(a.min or v, v)
        end
      end
    end
  end
  local tr = soak.trends(samples, events, duration)
  local slopes, limits, flat, rd, all_flat = tr.slopes, tr.limits, tr.flat, tr.reload, tr.all_flat

  -- Files: samples.csv, events.csv, soak.svg, summary.md.
  local csv = { "t_s,pid,rss_kib,fds,lua_refs,lua_mem_bytes,lag,processed,produced,relayed,generation" }
  for _, s in ipairs(samples) do
    local function v(x) return x == nil and "" or tostring(x) end
    csv[#csv + 1] = table.concat({ string.format("%.1f", s.t), v(s.pid), v(s.rss_kb), v(s.fds), v(s.refs),
      v(s.lua_mem), v(s.lag), v(s.processed), v(s.produced), v(s.relayed), v(s.generation) }, ",")
  end
  proc.write(P.out .. "/samples.csv", table.concat(csv, "\n") .. "\n")
  local ev = { "t_s,kind,detail" }
  for _, e in ipairs(events) do ev[#ev + 1] = string.format("%.1f,%s,%s", e.t, e.kind, e.detail) end
  proc.write(P.out .. "/events.csv", table.concat(ev, "\n") .. "\n")

  local plot_info = {
    title = string.format("fstream-lua soak, %s: %g min at %g msg/s, kill -9 every %g s, reload every %g s", g,
      P.minutes, P.rate, P.kill_every, P.reload_every),
    subtitle = string.format("%s; %d messages, %d lost, %d duplicated; eos_all app (relay, word count, windows)",
      os.date("!%Y-%m-%d %H:%M UTC", math.floor(t0)), c.messages, c.lost, c.duplicated),
    duration = duration,
  }
  proc.write(P.out .. "/soak.svg", soak.plot(samples, events, plot_info))
  proc.write(P.out .. "/plot.json", json.encode(plot_info))

  local function slope_txt(k, unit)
    return slopes[k] and string.format("%+.1f %s/h (limit %.1f: %s)", slopes[k], unit, limits[k], flat[k] and "flat" or "RISING")
      or "—"
  end
  local pause_med = (#pauses > 0) and require("chaos.lib").median(pauses) or nil
  local wr = c.windows
  local lines = {
    string.format("# Soak, %s, %s", g, os.date("!%Y-%m-%d %H:%M UTC", math.floor(t0))),
    "",
    string.format("- load: %g min at %g msg/s (producer handed %d numbers to kcat; %.0f msg/s achieved), %d words, eos_all app",
      P.minutes, P.rate, produced_handed - 1, (final_in or 0) / duration, P.words),
    string.format("- kills: %d (kill -9, restarted 0.5 s later); first event processed again after %s s (median / max)",
      kills, #recoveries > 0 and string.format("%.1f / %.1f", require("chaos.lib").median(recoveries), math.max(table.unpack(recoveries))) or "—"),
    string.format("- reloads: %d written, %d logged as done (pause median %s ms), %d failed", reloads_written, reloaded,
      tostring(pause_med), reload_failed),
    string.format("- messages in %d, lost %d, duplicated %d, unknown outputs %d%s", c.messages, c.lost, c.duplicated,
      c.unknown, #c.first_lost > 0 and (" (first lost: " .. table.concat(c.first_lost, ",") .. ")") or ""),
    string.format("- word_counts: changelog %d under / %d over, table CLI %s under / %s over", c.changelog_under,
      c.changelog_over, tostring(c.table_under), tostring(c.table_over)),
    string.format("- windows: %d due, %d closed, %d missing, %d closed twice, %d below, %d above, %d unknown", wr.due,
      wr.closed, wr.missing, wr.twice, wr.under, wr.over, wr.unknown),
    string.format("- RSS MiB start %s, end %s, min %s, max %s; slope over the second half %s", fmt_mib(st.rss.start),
      fmt_mib(st.rss["end"]), fmt_mib(st.rss.min), fmt_mib(st.rss.max),
      slope_txt("rss", "MiB") .. (tr.rss_all and string.format(" of the per-minute minima (every sample: %+.1f MiB/h)", tr.rss_all) or "")),
    string.format("- fds start %s, end %s, min %s, max %s; slope %s", tostring(st.fds.start), tostring(st.fds["end"]),
      tostring(st.fds.min), tostring(st.fds.max), slope_txt("fds", "fds")),
    string.format("- registry refs start %s, end %s, min %s, max %s; slope %s", tostring(st.refs.start),
      tostring(st.refs["end"]), tostring(st.refs.min), tostring(st.refs.max), slope_txt("refs", "refs")),
    string.format("- per reload (%d measured, last sample before vs first 10 s after, same process): refs %+.2f on average (max %+d), fds %+.2f (max %+d), RSS %+.1f MiB (max %+.1f): %s",
      rd.n, rd.refs.mean, rd.refs.max, rd.fds.mean, rd.fds.max, rd.rss_kb.mean / 1024, rd.rss_kb.max / 1024,
      flat.reload and "flat" or "RISING"),
    string.format("- lag max %d messages; drain after the producer stopped %.0f s (%s)", max_lag, drain_s,
      drained and "lag 0" or "NOT drained in 600 s"),
    "- flat = over the second half, the least-squares slope (RSS: the Theil-Sen slope of its per-minute minima, each process's first 20 s left out) is at most 10% of the median level per hour (fds, refs: at least 6/h allowed), and a reload adds at most 0.5 refs and 0.5 fds on average",
  }
  for _, d in ipairs(died) do lines[#lines + 1] = "- the worker exited by itself: " .. d end
  for _, n in ipairs(c.notes) do lines[#lines + 1] = "- " .. n end
  proc.write(P.out .. "/summary.md", table.concat(lines, "\n") .. "\n")
  io.stderr:write(table.concat(lines, "\n"), "\n")

  local lost_total = c.lost + (c.table_under or 0) + wr.missing + wr.under
  local ok = drained and c.lost == 0 and wr.missing == 0 and wr.under == 0 and (c.table_under or 1) == 0
    and c.changelog_under == 0 and all_flat and reload_failed == 0 and c.unknown == 0 and #died == 0
  if g == "exactly_once" then
    ok = ok and c.duplicated == 0 and wr.twice == 0 and wr.over == 0 and c.table_over == 0 and c.changelog_over == 0
  end
  return ctx.row {
    variant = string.format("%g min, %g msg/s, kill/%gs, reload/%gs", P.minutes, P.rate, P.kill_every, P.reload_every),
    guarantee = g, reps = kills, messages = c.messages, lost = c.lost, duplicated = c.duplicated,
    recovery = recoveries, ok = ok,
    note = string.format("%s%d reloads (%d failed); RSS %s→%s MiB (max %s), fds %s→%s, refs %s→%s; slope/h RSS floor %s, fds %s, refs %s%s; lag max %d; table %s/%s, windows %d missing %d twice%s",
      #died > 0 and string.format("worker exited by itself %d times; ", #died) or "", reloaded, reload_failed,
      fmt_mib(st.rss.start), fmt_mib(st.rss["end"]), fmt_mib(st.rss.max),
      tostring(st.fds.start), tostring(st.fds["end"]), tostring(st.refs.start), tostring(st.refs["end"]),
      slopes.rss and string.format("%+.1f MiB", slopes.rss) or "—", slopes.fds and string.format("%+.1f", slopes.fds) or "—",
      slopes.refs and string.format("%+.1f", slopes.refs) or "—", all_flat and " (flat)" or " (NOT flat)", max_lag,
      tostring(c.table_under), tostring(c.table_over), wr.missing, wr.twice, drained and "" or "; not drained"),
    lost_total = lost_total,
  }
end

-- The soak under each of ctx.guarantees on one real Kafka (port P.port).
function soak.run(ctx, P)
  P.addr = P.addr or ctx.kafka(P.port or soak.PORT)
  local stamp = os.date("!%Y%m%d-%H%M%S")
  local rows = {}
  for _, g in ipairs(P.guarantees or ctx.guarantees) do
    local p = {}
    for k, v in pairs(P) do p[k] = v end
    p.guarantee = g
    p.out = (P.out and (#(P.guarantees or ctx.guarantees) > 1 and (P.out .. "/" .. g) or P.out))
      or string.format("%s/chaos/results/soak-%s-%s%s", proc.root, stamp, g, ctx.quick and "-quick" or "")
    rows[#rows + 1] = soak.run_one(ctx, p)
  end
  return rows
end

return soak
