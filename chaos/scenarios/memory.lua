-- Scenario 6, memory: max_memory and back-pressure in bytes.
--
-- "runaway agent": a worker with max_memory = 32 MiB runs two agents on one
-- numbered input (spec/support/eos.lua's external producer): "relay" sends
-- out:N for every N; "hog" allocates without bound on every TRIGGER-th N
-- (on_error = dlq) and sends hog:N for the others. Checked with kcat,
-- read_committed: every N in OUT (lost / duplicated), every non-trigger N in
-- HOG_OUT, every trigger N in the hog's dead-letter topic; the log names the
-- agent and the limit for each trigger; the worker never exits; its RSS peak.
--
-- "1 MiB flood": an external kcat writes 1 MiB values (the topic's
-- max.message.bytes raised to 4 MiB) much faster than the agent, which sleeps
-- per event, processes them. RSS, sampled every 0.5 s, must stay under
-- max_queued_bytes (32 MiB) + librdkafka's prefetch (16 MiB) + max_memory
-- (32 MiB) + a base (48 MiB), well under the flood's size; every value must
-- come out once (lost / duplicated).
--
-- Both run under both guarantees on one real Kafka (exactly-once needs it).
local lib = require "chaos.lib"
local proc = lib.proc
local eos = require "spec.support.eos"
local q = proc.quote

local PORT = 19750
local MIB = 1048576
local MAX_MEMORY = 32 * MIB       -- the runaway agent's worker
local FLOOD_MEMORY = 32 * MIB     -- the flood's worker: max_memory
local MAX_QUEUED_BYTES = 32 * MIB -- and max_queued_bytes
local FETCH_QUEUE = 16 * MIB -- FS_FETCH_QUEUE_KB in runtime/transport/fs_kafka.c
local BASE = 48 * MIB        -- an idle worker with its librdkafka threads, LMDB maps, the web server
local TRIGGER = 250

local APP = [[
local fstream = require "fstream"
local app = fstream.app(os.getenv("APP_ID"), {
  topic_partitions = 4, processing_guarantee = os.getenv("GUARANTEE"), commit_interval = 0.5,
  max_memory = os.getenv("MAX_MEMORY"), max_queued_bytes = os.getenv("MAX_QUEUED_BYTES"),
})
local mode = os.getenv("MODE")
local output = app:topic(os.getenv("OUT"), { value_serializer = "raw" })
if mode == "hog" then
  local input = app:topic(os.getenv("IN"), { key_serializer = "raw" })
  local hog_out = app:topic(os.getenv("HOG_OUT"), { value_serializer = "raw" })
  local trigger = tonumber(os.getenv("TRIGGER"))
  app:agent("relay", input, function(stream)
    for e in stream do output:send { key = e.w, value = "out:" .. math.tointeger(e.n) } end
  end)
  app:agent("hog", input, function(stream)
    for e in stream do
      if e.n % trigger == 0 then
        local t = {}
        -- Bounded all the same (~200 MB): without a limit it ends with this error.
        while #t < 200000 do t[#t + 1] = string.rep("x", 1000) .. #t end
        error("allocated 200 MB and nothing stopped it")
      end
      hog_out:send { key = e.w, value = "hog:" .. math.tointeger(e.n) }
    end
  end, { on_error = "dlq" })
else -- flood: values "N <padding>", one agent slower than the producer
  local input = app:topic(os.getenv("IN"), { value_serializer = "raw" })
  local pause = tonumber(os.getenv("SLEEP"))
  app:agent("relay", input, function(stream)
    for v in stream do
      output:send { key = "k", value = "out:" .. v:match("^(%d+)") .. ":" .. #v }
      fstream.sleep(pause)
    end
  end)
end
]]

local rss_kb = lib.rss_kb

local function mib(kb) return string.format("%.0f MiB", kb / 1024) end

-- The worker: its process, pid (from the banner) and an RSS sampler.
local function start_worker(ctx, app, env, addr, tag)
  local vars = {}
  for k, v in pairs(env) do vars[#vars + 1] = k .. "=" .. q(v) end
  local w = ctx.track(proc.spawn(string.format("env %s %s worker %s --broker kafka://%s --store lmdb://%s -l info",
    table.concat(vars, " "), proc.bin, q(app), addr, q(ctx.tmp .. "/store-" .. tag)), "chaos-memory-" .. tag))
  local pid = tonumber(w:wait_for("worker %(pid (%d+)%)", 30))
  assert(pid, "worker did not start: " .. w:output())
  assert(w:wait_for("assigned %d+ partitions", 60), "worker got no partitions: " .. w:output())
  w.rss_pid, w.peak = pid, 0
  function w.sample()
    local kb = rss_kb(pid)
    if kb and kb > w.peak then w.peak = kb end
    return kb
  end
  return w
end

-- Every N in the dead-letter topic (its values are the original JSON).
local function dlq_numbers(addr, topic)
  local out = eos.read(addr, topic, "%s\n") or ""
  local c = {}
  for n in out:gmatch('"n":(%d+)') do n = tonumber(n); c[n] = (c[n] or 0) + 1 end
  return c
end

local function count_prefix(addr, topic, prefix)
  local out = eos.read(addr, topic, "%s\n") or ""
  local c = {}
  for n in out:gmatch(prefix .. "(%d+)") do n = tonumber(n); c[n] = (c[n] or 0) + 1 end
  return c
end

local function runaway(ctx, addr, app, g)
  local n = ctx.quick and 2000 or 20000
  local rate = ctx.quick and 500 or 1000
  local tag = "hog-" .. g:sub(1, 3) .. "-" .. os.time()
  local env = { MODE = "hog", APP_ID = "mem-" .. tag, IN = "mem-in-" .. tag, OUT = "mem-out-" .. tag,
    HOG_OUT = "mem-hog-" .. tag, GUARANTEE = g, MAX_MEMORY = tostring(MAX_MEMORY), TRIGGER = tostring(TRIGGER) }
  local w = start_worker(ctx, app, env, addr, tag)
  local p = ctx.track(eos.producer(addr, env.IN, 1, n, rate, 20, 100000))
  local deadline = os.time() + (ctx.quick and 60 or 300)
  local inputs, r, hog, dead
  local triggers = n // TRIGGER
  repeat
    for _ = 1, 4 do w.sample(); proc.sleep(0.5) end
    if not p:alive() then
      inputs = inputs or eos.inputs(addr, env.IN)
      r = eos.compare(inputs, eos.output_counts(addr, env.OUT))
      hog = count_prefix(addr, env.HOG_OUT, "hog:")
      dead = dlq_numbers(addr, env.APP_ID .. "-hog-dlq")
      local nhog, ndead = 0, 0
      for _ in pairs(hog) do nhog = nhog + 1 end
      for _ in pairs(dead) do ndead = ndead + 1 end
      if #r.missing == 0 and nhog >= #inputs - triggers and ndead >= triggers then break end
    end
  until os.time() > deadline or not w:alive()
  local alive = w:alive()
  inputs = inputs or eos.inputs(addr, env.IN)
  r = r or eos.compare(inputs, eos.output_counts(addr, env.OUT))
  hog, dead = hog or {}, dead or {}
  local hog_missing, dead_missing = 0, 0
  for _, e in ipairs(inputs) do
    if e.n % TRIGGER == 0 then
      if not dead[e.n] then dead_missing = dead_missing + 1 end
    elseif not hog[e.n] then hog_missing = hog_missing + 1 end
  end
  local log = w:output()
  local limit_lines = select(2, log:gsub("agent hog: [^\n]* sent to [^\n]*: not enough memory: the Lua state reached max_memory %("
    .. MAX_MEMORY .. " bytes", ""))
  -- While the hog allocates, the loop waits: on a loaded machine filling the
  -- limit can take longer than agent_timeout (10 s), which then ends it.
  local timeouts = select(2, log:gsub("agent hog: [^\n]* sent to [^\n]*agent_timeout", ""))
  local stopped = alive and w:stop(30) == 0
  local ok = alive and stopped and #r.missing == 0 and hog_missing == 0 and dead_missing == 0 and limit_lines > 0
    and limit_lines + timeouts >= triggers and not (g == "exactly_once" and r.dups > 0)
  ctx.row { variant = "runaway agent (max_memory 32 MiB, on_error = dlq)", guarantee = g, reps = triggers,
    messages = #inputs, lost = #r.missing, duplicated = r.dups, recovery = "—", ok = ok,
    note = string.format("%d limit hits logged with the limit (%d ended by agent_timeout first), %d of %d dead letters "
      .. "missing, %d hog outputs missing, worker %s, peak RSS %s", limit_lines, timeouts, dead_missing, triggers,
      hog_missing, alive and (stopped and "lived, stopped cleanly" or "lived, bad stop") or "EXITED", mib(w.peak)) }
  if not ok then ctx.log("runaway %s: %s\n%s", g, eos.describe(r), log:sub(-3000)) end
end

local function flood(ctx, addr, app, g)
  local count = ctx.quick and 250 or 1000
  local size = MIB
  local tag = "flood-" .. g:sub(1, 3) .. "-" .. os.time()
  local env = { MODE = "flood", APP_ID = "mem-" .. tag, IN = "mem-in-" .. tag, OUT = "mem-out-" .. tag,
    GUARANTEE = g, MAX_MEMORY = tostring(FLOOD_MEMORY),
    MAX_QUEUED_BYTES = os.getenv("CHAOS_MAX_QUEUED_BYTES") or tostring(MAX_QUEUED_BYTES), SLEEP = "0.05" }
  local out, rc = proc.run(string.format("%s/scripts/kafka create-topic %s 4 --config max.message.bytes=4194304 --port %d",
    proc.root, q(env.IN), PORT))
  assert(rc == 0, "cannot create the flood topic: " .. out)
  local w = start_worker(ctx, app, env, addr, tag)
  local idle = w.sample()
  -- The values: "N " and padding to 1 MiB, one per line, keyed kN.
  local file = ctx.tmp .. "/flood-" .. tag .. ".txt"
  local f = assert(io.open(file, "w"))
  local pad = string.rep("x", size)
  for i = 1, count do
    local head = tostring(i) .. " "
    f:write("k", i, "\t", head, pad:sub(1, size - #head), "\n")
  end
  f:close()
  local p = ctx.track(proc.spawn(string.format("kcat -P -b %s -t %s -K '\t' -X message.max.bytes=4000000 -l %s",
    addr, q(env.IN), q(file)), "chaos-memory-kcat"))
  local deadline = os.time() + (ctx.quick and 90 or 400)
  local seen
  repeat
    for _ = 1, 4 do w.sample(); proc.sleep(0.5) end
    if not p:alive() then
      seen = count_prefix(addr, env.OUT, "out:")
      local n = 0
      for _ in pairs(seen) do n = n + 1 end
      if n >= count then break end
    end
  until os.time() > deadline or not w:alive()
  os.remove(file)
  seen = seen or count_prefix(addr, env.OUT, "out:")
  local sizes_ok = select(2, (eos.read(addr, env.OUT, "%s\n") or ""):gsub("out:%d+:" .. size .. "\n", ""))
  local lost, dups = 0, 0
  for i = 1, count do
    local c = seen[i] or 0
    if c == 0 then lost = lost + 1 elseif c > 1 then dups = dups + c - 1 end
  end
  local alive = w:alive()
  local bound_kb = (MAX_QUEUED_BYTES + FETCH_QUEUE + FLOOD_MEMORY + BASE) // 1024
  local stopped = alive and w:stop(30) == 0
  local ok = alive and stopped and lost == 0 and w.peak <= bound_kb and sizes_ok >= count
    and not (g == "exactly_once" and dups > 0)
  ctx.row { variant = "1 MiB flood (max_queued_bytes 32 MiB, max_memory 32 MiB, agent 20 msg/s)", guarantee = g, reps = 1,
    messages = count, lost = lost, duplicated = dups, recovery = "—", ok = ok,
    note = string.format("peak RSS %s (idle %s; bound %s = queue 32 + prefetch 16 + max_memory 32 + base 48 MiB) for %d "
      .. "values of 1 MiB; worker %s", mib(w.peak), mib(idle or 0), mib(bound_kb), count,
      alive and (stopped and "lived" or "bad stop") or "EXITED") }
  if not ok then ctx.log("flood %s:\n%s", g, w:output():sub(-3000)) end
end

return {
  name = "memory",
  title = "max_memory stops a runaway agent, the worker lives; a 1 MiB flood keeps RSS bounded",
  order = 6,
  quick_in_suite = true,
  run = function(ctx)
    local addr = ctx.kafka(PORT)
    local app = proc.write(ctx.tmp .. "/memory_app.lua", APP)
    for _, g in ipairs(ctx.guarantees) do
      runaway(ctx, addr, app, g)
      flood(ctx, addr, app, g)
    end
  end,
}
