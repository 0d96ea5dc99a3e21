-- GET /topology: the app as a graph — topics, agents, tables, sinks and the
-- links between them — as JSON, Graphviz DOT or Mermaid. What is declared
-- (sources, sinks, group_by, dead letters, changelogs) is known at start;
-- which agents write which table is learned as they do.
local topology = {}

local function topic_kind(app, t, changelogs)
  if changelogs[t] then return "changelog" end
  local n = t.name
  if n:match("%-repartition$") then return "repartition" end
  if n:match("%-retry$") and t.follows then return "retry" end
  if n:match("%-dlq$") then return "dlq" end
  if n == app.id .. "-__leader" then return "leader" end
  return "topic"
end

local function sink_name(s)
  if type(s) == "table" and s.name then return s.name end
  if s == print then return "print" end
  return "function"
end

-- { app =, nodes = {{id=, kind=, name=, ...}}, edges = {{from=, to=, kind=}} }
function topology.graph(app)
  local nodes, edges, seen = {}, {}, {}
  local function node(id, n)
    if not seen[id] then
      seen[id] = n
      n.id = id
      nodes[#nodes + 1] = n
    end
    return id
  end
  local function edge(from, to, kind) edges[#edges + 1] = { from = from, to = to, kind = kind } end
  local changelogs = {}
  for _, t in ipairs(app.table_list) do changelogs[t.changelog] = t end
  local function topic(t)
    return node("topic:" .. t.name, { kind = "topic", name = t.name, topic_kind = topic_kind(app, t, changelogs),
      partitions = t.partitions })
  end
  for _, t in ipairs(app.topic_list) do if not t.internal then topic(t) end end
  local Agent, Channel = require "fstream.agent", require "fstream.channel"
  -- A channel (app:channel) is in memory: a node of its own kind, no partitions.
  local function channel(c) return node("channel:" .. c.name, { kind = "channel", name = c.name }) end
  for _, a in ipairs(app.agent_list) do
    -- Internal readers (the leader's, a task's app:stream, an in-agent
    -- group_by's reader) have no function of their own.
    if a.fn then
      local id = node("agent:" .. a.name, { kind = "agent", name = a.name, concurrency = a.concurrency,
        on_error = a.on_error, forwarder = a.forwards_to ~= nil or nil })
      for _, t in ipairs(a.topics) do
        if t ~= a.retry_topic then edge(topic(t), id, "reads") end
      end
      if a.channel then edge(channel(a.channel), id, "reads") end
      if a.forwards_to then edge(id, topic(a.forwards_to), "repartition") end
      if a.regroup then
        edge(id, topic(a.regroup.topic), "repartition")
        edge(topic(a.regroup.topic), id, "reads")
      end
      for _, s in ipairs(a.sinks) do
        if getmetatable(s) == Agent then
          edge(id, node("agent:" .. s.name, { kind = "agent", name = s.name }), "sink")
        elseif getmetatable(s) == Channel then
          edge(id, channel(s), "sink")
        elseif type(s) == "table" and s.name then
          edge(id, topic(s), "sink")
        else
          edge(id, node("sink:" .. sink_name(s), { kind = "sink", name = sink_name(s) }), "sink")
        end
      end
      if a.retry_topic then
        edge(id, topic(a.retry_topic), "retry")
        edge(topic(a.retry_topic), id, "reads")
      end
      if a.dlq then edge(id, topic(a.dlq), "dead letters") end
    end
  end
  for _, t in ipairs(app.table_list) do
    if t.internal then goto next_table end
    local w = t.window
    local id = node("table:" .. t.name, { kind = "table", name = t.name, partitions = t.partitions,
      global = t.global or nil, window = w and { kind = w.kind, size = w.size, step = w.step, expires = w.expires } or nil })
    local writers = {}
    for a in pairs(t.writers or {}) do writers[#writers + 1] = a.name end
    table.sort(writers)
    for _, name in ipairs(writers) do edge(node("agent:" .. name, { kind = "agent", name = name }), id, "writes") end
    edge(id, topic(t.changelog), "changelog")
    ::next_table::
  end
  return { app = app.id, nodes = nodes, edges = edges }
end

-- DOT: topics as boxes, agents as ellipses, tables as cylinders.
local SHAPE = { topic = "box", agent = "ellipse", table = "cylinder", sink = "note" }

local function dot_quote(s)
  return '"' .. tostring(s):gsub('[\\"]', "\\%0"):gsub("\n", "\\n") .. '"'
end

function topology.dot(g)
  local out = { "digraph " .. dot_quote(g.app) .. " {", "  rankdir=LR;", "  node [fontname=\"Helvetica\"];" }
  for _, n in ipairs(g.nodes) do
    local label = n.name
    if n.kind == "topic" and n.topic_kind ~= "topic" then label = label .. "\\n(" .. n.topic_kind .. ")" end
    if n.kind == "table" and n.window then label = label .. "\\n(" .. n.window.kind .. " window)" end
    out[#out + 1] = string.format("  %s [shape=%s, label=%s];", dot_quote(n.id), SHAPE[n.kind] or "box",
      '"' .. label:gsub('"', '\\"') .. '"')
  end
  for _, e in ipairs(g.edges) do
    out[#out + 1] = string.format("  %s -> %s [label=%s];", dot_quote(e.from), dot_quote(e.to), dot_quote(e.kind))
  end
  out[#out + 1] = "}"
  return table.concat(out, "\n") .. "\n"
end

-- Mermaid flowchart: ids are n1, n2, ... (names may hold any character).
function topology.mermaid(g)
  local ids, out = {}, { "flowchart LR" }
  local function label(s) return '"' .. tostring(s):gsub('"', "#quot;") .. '"' end
  for i, n in ipairs(g.nodes) do
    ids[n.id] = "n" .. i
    local l = label(n.name)
    if n.kind == "agent" then out[#out + 1] = string.format("  n%d([%s])", i, l)
    elseif n.kind == "table" then out[#out + 1] = string.format("  n%d[(%s)]", i, l)
    elseif n.kind == "sink" then out[#out + 1] = string.format("  n%d>%s]", i, l)
    else out[#out + 1] = string.format("  n%d[%s]", i, l) end
  end
  for _, e in ipairs(g.edges) do
    out[#out + 1] = string.format("  %s -->|%s| %s", ids[e.from], label(e.kind), ids[e.to])
  end
  return table.concat(out, "\n") .. "\n"
end

return topology
