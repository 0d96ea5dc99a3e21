-- GET /metrics: the worker's numbers in Prometheus' text format (0.0.4).
-- Names follow Prometheus' conventions: counters end in _total, durations
-- are _seconds, sizes _bytes; labels are topic, partition, agent, table.
local metrics = {}

local ESC = { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }
local function esc(v)
  v = tostring(v)
  if not v:find('[\\"\n]') then return v end
  return (v:gsub('[\\"\n]', ESC))
end

local function num(v)
  if math.type(v) == "integer" then return tostring(v) end
  if v ~= v then return "NaN" end
  if v == math.huge then return "+Inf" elseif v == -math.huge then return "-Inf" end
  local s = string.format("%.15g", v)
  if tonumber(s) ~= v then s = string.format("%.17g", v) end
  return s
end

-- A family: HELP and TYPE once, then its samples.
local Out = {}
Out.__index = Out

function Out:family(name, kind, help)
  local b = self.buf
  b[#b + 1] = "# HELP " .. name .. " " .. help .. "\n# TYPE " .. name .. " " .. kind .. "\n"
end

-- labels: a list {k1, v1, k2, v2, ...} (an order of our choosing, stable).
local function label_text(labels)
  local t = ""
  for i = 1, #labels, 2 do
    t = t .. (i > 1 and "," or "") .. labels[i] .. '="' .. esc(labels[i + 1]) .. '"'
  end
  return t
end

function Out:sample(name, labels, v)
  local b = self.buf
  local n = #b
  if labels and #labels > 0 then
    b[n + 1], b[n + 2], b[n + 3], b[n + 4], b[n + 5] = name, "{", label_text(labels), "} ", num(v)
    b[n + 6] = "\n"
  else
    b[n + 1], b[n + 2], b[n + 3], b[n + 4] = name, " ", num(v), "\n"
  end
end

function Out:one(name, kind, help, v)
  self:family(name, kind, help)
  self:sample(name, nil, v)
end

-- A histogram from cumulative bucket counts (bounds ascending, +Inf implied).
local LE = {}
function Out:histogram(name, labels, bounds, counts, sum, count)
  local b = self.buf
  local head = name .. "_bucket{" .. label_text(labels) .. ',le="'
  local cum = 0
  for i, le in ipairs(bounds) do
    cum = cum + (counts[i] or 0)
    local les = LE[le]
    if not les then les = num(le); LE[le] = les end
    local n = #b
    b[n + 1], b[n + 2], b[n + 3], b[n + 4] = head, les, '"} ', cum
    b[n + 5] = "\n"
  end
  local n = #b
  b[n + 1], b[n + 2], b[n + 3] = head, '+Inf"} ', count
  b[n + 4] = "\n"
  self:sample(name .. "_sum", labels, sum)
  self:sample(name .. "_count", labels, count)
end

local function rss_bytes()
  local f = io.open("/proc/self/statm")
  if not f then return nil end
  local s = f:read("l")
  f:close()
  local pages = s and tonumber(s:match("^%d+%s+(%d+)"))
  return pages and pages * 4096
end

-- Extra families other modules add (agents, windows, reloads): functions(out, app).
metrics.sources = {}

function metrics.render(app)
  local rt = app.rt
  local st = rt:stats()
  local o = setmetatable({ buf = {} }, Out)

  o:one("fstream_events_in_total", "counter", "Events fetched from the input topics.", st.events_in)
  o:one("fstream_events_processed_total", "counter",
    "Events every agent reading them has finished (acknowledged).", st.events_acked)
  o:one("fstream_events_queued", "gauge", "Events fetched and waiting for an agent.", st.queued)
  o:one("fstream_decode_errors_total", "counter", "Messages the codec or the record type rejected.", st.decode_errors)
  o:one("fstream_delivery_errors_total", "counter", "Produced messages the broker did not accept.", st.delivery_errors)
  o:one("fstream_messages_inflight", "gauge", "Produced messages not yet delivered.", st.inflight)
  o:one("fstream_commits_total", "counter", "Offset commits.", st.commits)
  o:one("fstream_changelog_records_total", "counter", "Table changelog records produced.", st.changelog_records)
  o:one("fstream_lmdb_writes_total", "counter", "Entries written to LMDB by checkpoints.", st.lmdb_writes)
  o:one("fstream_recovered_records_total", "counter", "Changelog records replayed into tables.", st.recovered_records)

  -- Checkpoints, per occasion (periodic, revocation, reload, stop).
  local ck = st.checkpoints
  if ck then
    o:family("fstream_checkpoint_duration_seconds", "histogram",
      "Time from a checkpoint's start to its end (failed ones included), per occasion.")
    for _, c in ipairs(ck) do
      o:histogram("fstream_checkpoint_duration_seconds", { "occasion", c.occasion }, ck.bounds, c.buckets,
        c.seconds_sum, c.count)
    end
    o:family("fstream_checkpoint_failures_total", "counter",
      "Checkpoints that failed (nothing committed by them), per occasion.")
    for _, c in ipairs(ck) do o:sample("fstream_checkpoint_failures_total", { "occasion", c.occasion }, c.failed) end
  end

  -- Per topic, and per partition held.
  local names = {}
  for name in pairs(st.topics) do names[#names + 1] = name end
  table.sort(names)
  o:family("fstream_topic_events_in_total", "counter", "Events fetched, per topic.")
  for _, name in ipairs(names) do o:sample("fstream_topic_events_in_total", { "topic", name }, st.topics[name].consumed) end
  o:family("fstream_topic_messages_produced_total", "counter", "Messages produced, per topic.")
  for _, name in ipairs(names) do
    o:sample("fstream_topic_messages_produced_total", { "topic", name }, st.topics[name].produced)
  end
  local parts = rt:web_partitions()
  table.sort(parts, function(a, b)
    if a.topic ~= b.topic then return a.topic < b.topic end
    return a.partition < b.partition
  end)
  o:family("fstream_partition_events_in_total", "counter",
    "Events fetched, per partition held (counts from the partition's assignment).")
  for _, p in ipairs(parts) do
    o:sample("fstream_partition_events_in_total", { "topic", p.topic, "partition", p.partition }, p.delivered)
  end
  o:family("fstream_partition_committed_offset", "gauge", "Last committed offset, per partition held (-1: none).")
  for _, p in ipairs(parts) do
    o:sample("fstream_partition_committed_offset", { "topic", p.topic, "partition", p.partition }, p.committed)
  end
  o:family("fstream_partition_lag", "gauge",
    "Consumer lag: the partition's high watermark minus the committed offset.")
  for _, p in ipairs(parts) do
    if p.high and p.high >= 0 then
      local base = p.committed >= 0 and p.committed or 0
      o:sample("fstream_partition_lag", { "topic", p.topic, "partition", p.partition }, math.max(p.high - base, 0))
    end
  end
  o:family("fstream_partition_state", "gauge", "1 for the state each partition held is in.")
  for _, p in ipairs(parts) do
    o:sample("fstream_partition_state", { "topic", p.topic, "partition", p.partition, "state", p.state }, 1)
  end

  o:family("fstream_recovery_records_remaining", "gauge",
    "Changelog records left to replay, per table partition recovering.")
  for _, r in ipairs(st.recovering) do
    if r.total then
      o:sample("fstream_recovery_records_remaining", { "table", r.table, "partition", r.partition },
        math.max(r.total - r.done, 0))
    end
  end

  -- Agents: C counts what their cursors moved past; Lua counts failures.
  local by_name = {}
  for _, a in ipairs(app.agent_list) do by_name[a.name] = a end
  local agents = rt:web_agents()
  o:family("fstream_agent_events_processed_total", "counter", "Events each agent finished.")
  for _, a in ipairs(agents) do o:sample("fstream_agent_events_processed_total", { "agent", a.name }, a.processed) end
  local bounds = rt:web_latency_bounds()
  o:family("fstream_agent_processing_seconds", "histogram",
    "Time from an agent taking an event to asking for the next one.")
  for _, a in ipairs(agents) do
    o:histogram("fstream_agent_processing_seconds", { "agent", a.name }, bounds, a.buckets, a.seconds_sum, a.processed)
  end
  o:family("fstream_agent_errors_total", "counter", "Agent failures, by the agent's on_error policy.")
  for _, a in ipairs(agents) do
    local la = by_name[a.name]
    if la then
      local policies = {}
      for pol in pairs(la.errors_by_policy) do policies[#policies + 1] = pol end
      if #policies == 0 then policies[1] = la.on_error end
      table.sort(policies)
      for _, pol in ipairs(policies) do
        o:sample("fstream_agent_errors_total", { "agent", a.name, "policy", pol }, la.errors_by_policy[pol] or 0)
      end
    end
  end
  o:family("fstream_agent_dead_letters_total", "counter", "Messages sent to the agent's dead-letter topic.")
  for _, a in ipairs(agents) do
    local la = by_name[a.name]
    if la then o:sample("fstream_agent_dead_letters_total", { "agent", a.name }, la.dead_letters) end
  end
  o:family("fstream_agent_retries_total", "counter", "Messages sent to the agent's retry topic.")
  for _, a in ipairs(agents) do
    local la = by_name[a.name]
    if la then o:sample("fstream_agent_retries_total", { "agent", a.name }, la.retries) end
  end

  -- Tables and windows.
  o:family("fstream_table_keys", "gauge", "Entries stored in LMDB, per table partition held.")
  for _, t in ipairs(rt:web_tables()) do
    o:sample("fstream_table_keys", { "table", t.name, "partition", t.partition }, t.keys)
  end
  o:family("fstream_window_closes_total", "counter", "Windows closed (on_window_close called), per table.")
  o:family("fstream_window_late_events_total", "counter", "Events for windows already closed, per table.")
  for _, t in ipairs(app.table_list) do
    if t.window then
      o:sample("fstream_window_closes_total", { "table", t.name }, t.window.closed)
      o:sample("fstream_window_late_events_total", { "table", t.name }, t.window.late)
    end
  end

  local rs = rt:reload_stats()
  if rs then
    o:one("fstream_reloads_total", "counter", "Hot reloads done.", rs.reloads)
    o:one("fstream_reload_failures_total", "counter", "Hot reloads refused (the old version ran on).", rs.failures)
    o:one("fstream_reload_pause_seconds_total", "counter", "Time events were paused by reloads.", rs.pause_seconds_sum)
  end

  for _, src in ipairs(metrics.sources) do src(o, app, st) end

  local ws = rt:web_stats()
  if ws then
    o:one("fstream_web_requests_total", "counter", "HTTP requests received.", ws.requests)
    o:one("fstream_web_requests_rejected_total", "counter",
      "HTTP requests refused before the app saw them (token, size, path, queue).", ws.rejected)
    o:one("fstream_web_connections", "gauge", "Open HTTP connections.", ws.connections)
  end
  o:one("fstream_coroutines", "gauge", "Live coroutines (agents, tasks, timers, pages).", st.coroutines)
  o:one("fstream_lua_memory_bytes", "gauge", "Memory of the Lua state.", math.floor(collectgarbage("count") * 1024))
  o:one("fstream_lua_registry_refs", "gauge", "Live Lua registry references held by the runtime.", st.lua_refs)
  local rss = rss_bytes()
  if rss then o:one("process_resident_memory_bytes", "gauge", "Resident memory of the worker process.", rss) end
  return table.concat(o.buf)
end

return metrics
