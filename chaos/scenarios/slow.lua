-- Scenario 7, slow agent: an agent 10x slower than its input.
--
-- The external numbered producer (spec/support/eos.lua) writes 100-200
-- msg/s; the relay agent sleeps PAUSE s per event while the file FAST does not
-- exist, so it takes about a tenth of what comes in (both rates are measured
-- and reported), for 10 minutes (quick: 1 minute). Meanwhile, sampled every 2 s (1 s quick):
--   - the worker's RSS: flat once its queue reached max_queued (2,000 here,
--     so that happens within seconds): the second half's peak may not pass
--     the first half's by more than 4 MiB;
--   - the log: no partition assigned or revoked after the first assignment
--     (the consumer keeps polling while fetching is paused);
--   - the consumer lag the worker reports (fstream_partition_lag on /metrics,
--     summed over partitions) against the broker's end offsets of the input
--     (kcat -Q) minus the offsets the worker committed (also on /metrics; the
--     final count checks them: nothing committed that was not processed).
-- Then the input stops, FAST appears (the agent runs at full speed), and every
-- input must come out (lost / duplicated), the reported lag back to 0.
-- Both guarantees run at the same time, each its own worker, topics and
-- producer, on one real Kafka (exactly-once needs it).
local lib = require "chaos.lib"
local proc = lib.proc
local eos = require "spec.support.eos"
local q = proc.quote

local PORT = 19750
local RATE = 300   -- asked of the producer (it reaches 100-200 msg/s: kcat batches and sleeps)
local PAUSE = 0.07 -- the agent's sleep per event: about 14 msg/s, a tenth of the input or less

local APP = [[
local fstream = require "fstream"
local app = fstream.app(os.getenv("APP_ID"), {
  topic_partitions = 4, processing_guarantee = os.getenv("GUARANTEE"), max_queued = 2000,
})
local input = app:topic(os.getenv("IN"), { key_serializer = "raw" })
local output = app:topic(os.getenv("OUT"), { value_serializer = "raw" })
local pause, fast_file = tonumber(os.getenv("PAUSE")), os.getenv("FAST")
local fast = false
app:timer(0.5, function()
  local f = io.open(fast_file)
  if f then f:close(); fast = true end
end)
app:agent("relay", input, function(stream)
  for e in stream do
    output:send { key = e.w, value = "out:" .. math.tointeger(e.n) }
    if not fast then fstream.sleep(pause) end
  end
end)
]]

local rss_kb = lib.rss_kb

-- The lag the worker reports on /metrics (fstream_partition_lag, summed over
-- partitions) and its committed offsets per partition.
local function reported_lag(web)
  -- A loaded machine may be slow to answer: three tries before "unanswered".
  local out, rc
  for _ = 1, 3 do
    out, rc = proc.run("curl -s --max-time 5 " .. q(web .. "/metrics"))
    if rc == 0 then break end
  end
  if rc ~= 0 then return nil, {} end
  local sum, n, committed = 0, 0, {}
  for p, v in out:gmatch('\nfstream_partition_lag{[^}]*partition="(%d+)"[^}]*} ([%d%.]+)') do
    sum = sum + tonumber(v); n = n + 1
  end
  for p, v in out:gmatch('\nfstream_partition_committed_offset{[^}]*partition="(%d+)"[^}]*} (%-?[%d%.]+)') do
    committed[tonumber(p)] = math.max(tonumber(v), 0)
  end
  return n > 0 and math.floor(sum) or nil, committed
end

-- The input's end offsets per partition (kcat -Q): what was written so far.
local function end_offsets(addr, topic)
  local args = {}
  for p = 0, 3 do args[#args + 1] = "-t " .. q(topic .. ":" .. p .. ":-1") end
  local out = proc.run(string.format("kcat -Q -b %s %s", addr, table.concat(args, " ")))
  local ends = {}
  for p, off in out:gmatch("%[(%d+)%]%s+offset (%d+)") do ends[tonumber(p)] = tonumber(off) end
  return ends
end

local function count_lines(s, pattern) return select(2, s:gsub(pattern, "")) end

local function start(ctx, addr, app, g)
  local tag = g:sub(1, 3) .. "-" .. os.time()
  local r = { g = g, env = { APP_ID = "slow-" .. tag, IN = "slow-in-" .. tag, OUT = "slow-out-" .. tag, GUARANTEE = g,
    PAUSE = tostring(PAUSE), FAST = ctx.tmp .. "/fast-" .. tag } }
  local vars = {}
  for k, v in pairs(r.env) do vars[#vars + 1] = k .. "=" .. q(v) end
  r.w = ctx.track(proc.spawn(string.format("env %s %s worker %s --broker kafka://%s --store lmdb://%s --web-port 0 -l info",
    table.concat(vars, " "), proc.bin, q(app), addr, q(ctx.tmp .. "/store-" .. tag)), "chaos-slow-" .. tag))
  r.pid = tonumber(r.w:wait_for("worker %(pid (%d+)%)", 30))
  r.web = r.w:wait_for("web%s+(http://[%d%.]+:%d+)", 30)
  assert(r.pid and r.web, "worker did not start: " .. r.w:output())
  assert(r.w:wait_for("assigned %d+ partitions", 60), "worker got no partitions: " .. r.w:output())
  r.rss, r.lags = {}, {}
  return r
end

return {
  name = "slow",
  title = "an agent 10x slower than its input: memory flat, no rebalance, lag reported, nothing lost",
  order = 7,
  quick_in_suite = true,
  run = function(ctx)
    local slow_s = ctx.quick and 60 or 600
    local every = ctx.quick and 1 or 2
    local addr = ctx.kafka(PORT)
    local app = proc.write(ctx.tmp .. "/slow_app.lua", APP)
    local runs = {}
    for _, g in ipairs(ctx.guarantees) do runs[#runs + 1] = start(ctx, addr, app, g) end
    -- Enough numbers for the whole slow phase; the producer is stopped at its end.
    for _, r in ipairs(runs) do
      r.p = ctx.track(eos.producer(addr, r.env.IN, 1, RATE * (slow_s + 60), RATE, 20, 100000))
      r.log_at_start = #r.w:output()
    end
    local t0 = lib.now()
    -- The first reading once the worker's end-offset thread (every 5 s) had
    -- its first answer.
    local next_lag = t0 + 6
    while lib.now() - t0 < slow_s do
      for _, r in ipairs(runs) do
        local kb = rss_kb(r.pid)
        if kb then r.rss[#r.rss + 1] = kb end
      end
      if lib.now() >= next_lag then
        next_lag = next_lag + (ctx.quick and 10 or 30)
        for _, r in ipairs(runs) do
          -- The lag from outside: the broker's end offsets (kcat) minus the
          -- offsets the worker's group committed (the final count checks those).
          local rep, committed = reported_lag(r.web)
          local ends, seen = end_offsets(addr, r.env.IN), 0
          for p, e in pairs(ends) do seen = seen + e - (committed[p] or 0) end
          local written = 0
          for _, e in pairs(ends) do written = written + e end
          r.lags[#r.lags + 1] = { t = lib.now() - t0, reported = rep, seen = seen, written = written }
          ctx.log("%s at %.0f s: lag reported %s, end offsets minus committed %d, RSS %d kB", r.g,
            lib.now() - t0, tostring(rep), seen, r.rss[#r.rss] or -1)
        end
      end
      proc.sleep(every)
    end
    -- The slow phase is over: stop the input, let the agent run at full speed.
    for _, r in ipairs(runs) do
      r.log_slow = r.w:output()
      proc.write(r.p.stop_file, "")
    end
    for _, r in ipairs(runs) do
      r.p:wait(30)
      proc.write(r.env.FAST, "")
    end
    for _, r in ipairs(runs) do
      local inputs = eos.inputs(addr, r.env.IN)
      local deadline = os.time() + (ctx.quick and 60 or 300)
      local res
      repeat
        res = eos.compare(inputs, eos.output_counts(addr, r.env.OUT))
        if #res.missing == 0 then break end
        proc.sleep(1)
      until os.time() > deadline or not r.w:alive()
      -- The reported lag once everything is processed and committed.
      proc.sleep(4)
      local final_lag = reported_lag(r.web)
      local alive = r.w:alive()
      local stopped = alive and r.w:stop(30) == 0
      -- Memory: the second half's peak against the first half's.
      local n, first, second = #r.rss, 0, 0
      for i, kb in ipairs(r.rss) do
        if i <= n // 2 then first = math.max(first, kb) else second = math.max(second, kb) end
      end
      local flat = n >= 4 and second <= first + 4096
      -- Rebalances after the first assignment, during the slow phase.
      local after = r.log_slow:sub(r.log_at_start + 1)
      local rebalances = count_lines(after, "assigned %d+ partitions") + count_lines(after, "revoking %d+ partitions")
        + count_lines(after, "partitions revoked") + count_lines(after, "assignment lost")
      -- Lag: reported throughout, and close to the broker's end offsets.
      -- While fetching is paused the worker asks for them every 5 s, so it
      -- may be up to 5 s of input behind, plus a second between the reads.
      local lag_ok, worst = #r.lags > 0, 0
      for _, l in ipairs(r.lags) do
        if not l.reported then lag_ok = false
        else
          local off = math.abs(l.reported - l.seen)
          if off > 6 * RATE then lag_ok = false end
          worst = math.max(worst, off)
        end
      end
      local last = r.lags[#r.lags] or {}
      local first_l = r.lags[1] or {}
      local span = (last.t or 0) - (first_l.t or 0)
      local in_rate = span > 0 and (last.written - first_l.written) / span or 0
      local agent_rate = span > 0 and ((last.written - last.seen) - (first_l.written - first_l.seen)) / span or 0
      local ok = alive and stopped and #res.missing == 0 and flat and rebalances == 0 and lag_ok and final_lag == 0
        and not (r.g == "exactly_once" and res.dups > 0)
      ctx.row { variant = string.format("agent 10x slower than its input for %d s", slow_s),
        guarantee = r.g, reps = 1, messages = #inputs, lost = #res.missing, duplicated = res.dups, recovery = "—", ok = ok,
        note = string.format("input %.0f msg/s, agent %.1f msg/s; RSS %d -> %d MiB (first/second half peak, %d samples)%s; %d rebalances; lag reported %s "
          .. "vs %d from the broker's end offsets at %.0f s (worst gap %d), %s after the drain; worker %s",
          in_rate, agent_rate, first // 1024, second // 1024, n, flat and "" or " NOT FLAT", rebalances, tostring(last.reported),
          last.seen or -1, last.t or 0, worst, tostring(final_lag),
          alive and (stopped and "lived" or "bad stop") or "EXITED") }
      if not ok then ctx.log("%s: %s\n%s", r.g, eos.describe(res), r.w:output():sub(-3000)) end
    end
  end,
}
