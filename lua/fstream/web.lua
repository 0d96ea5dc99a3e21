-- The worker's web side: routes and answers of the web server that
-- runtime/app/fs_web.c runs in the worker's loop. One task (the server
-- coroutine) takes each request from C and answers the built-in endpoints at
-- once (they never wait); a page of the app's (app:page) runs in a coroutine
-- of its own, which may wait (sleep, send_and_wait, HTTP) while others are
-- served.
local core = require "fstream.core"
local json = core.json

local web = {}

local function log_failure(what, err, tb)
  core.log("error", string.format("web: %s failed: %s%s", what, tostring(err), tb and ("\n" .. tb) or ""))
end

local DEFAULT_PORT = 6066
local WEB_OPTIONS = {
  port = true, bind = true, token = true, public = true, max_body = true, max_connections = true,
  timeout = true, enabled = true, advertise = true,
}

-- app:page(path, fn, {methods = {"GET", "POST"}}): Faust's @app.page. path
-- segments ":name" capture (req.params.name); fn(req) returns status,
-- headers, body (string, or a table sent as JSON), or just a body or a table.
function web.page(app, path, fn, opts, level)
  level = (level or 1) + 1
  if type(path) ~= "string" or path:sub(1, 1) ~= "/" then error("app:page: path must start with '/'", level) end
  if type(fn) ~= "function" then error("app:page: the handler must be a function(req)", level) end
  opts = opts or {}
  if type(opts) ~= "table" then error("app:page: options must be a table", level) end
  for k in pairs(opts) do
    if k ~= "methods" then error(string.format("app:page: unknown option '%s'", tostring(k)), level) end
  end
  local methods = {}
  for _, m in ipairs(opts.methods or { "GET" }) do
    if type(m) ~= "string" then error("app:page: methods must be strings like \"GET\"", level) end
    methods[m:upper()] = true
  end
  if methods.GET then methods.HEAD = true end
  local segs = {}
  for s in path:gmatch("[^/]+") do segs[#segs + 1] = s end
  app.pages = app.pages or {}
  for _, p in ipairs(app.pages) do
    if p.path == path then error(string.format("app:page: %s is already defined", path), level) end
  end
  app.pages[#app.pages + 1] = { path = path, segs = segs, fn = fn, methods = methods }
end

-- "%2F" and friends in one path segment.
local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function split_path(path)
  local segs = {}
  for s in path:gmatch("[^/]+") do segs[#segs + 1] = unescape(s) end
  return segs
end

local function match_page(page, segs)
  if #page.segs ~= #segs then return nil end
  local params = {}
  for i, s in ipairs(page.segs) do
    if s:sub(1, 1) == ":" then params[s:sub(2)] = segs[i]
    elseif s ~= segs[i] then return nil end
  end
  return params
end

local JSON_TYPE = { ["Content-Type"] = "application/json" }

local function encode_json(v)
  local ok, s = pcall(json.encode, v)
  if ok then return s end
  return nil, s
end

-- What a handler returned -> status, headers, body. A handler returns
-- status, headers, body; or status, body; or a body alone (a string, or a
-- table sent as JSON).
local function normalize(n, a, b, c)
  local status, headers, body
  if math.type(a) == "integer" then
    status = a
    if n >= 3 then headers, body = b, c else body = b end
  else
    status, body = 200, a
  end
  if headers ~= nil and type(headers) ~= "table" then error("a page's headers must be a table", 0) end
  if status < 100 or status > 599 then error(string.format("a page answered with HTTP status %d", status), 0) end
  local out = {}
  for k, v in pairs(headers or {}) do out[tostring(k)] = tostring(v) end
  if type(body) == "table" then
    local s, err = encode_json(body)
    if not s then error("the page's answer cannot be sent as JSON: " .. tostring(err), 0) end
    body = s
    local has_type = false
    for k in pairs(out) do if k:lower() == "content-type" then has_type = true end end
    if not has_type then out["Content-Type"] = "application/json" end
  elseif body == nil then
    body = ""
  elseif type(body) ~= "string" then
    body = tostring(body)
  end
  return status, out, body
end

local function text(status, msg)
  return status, { ["Content-Type"] = "text/plain; charset=utf-8" }, msg .. "\n"
end

local function json_answer(status, v)
  return status, JSON_TYPE, assert(encode_json(v))
end

-- ---- built-in endpoints ------------------------------------------------

local builtin = {}

function builtin.healthz()
  return text(200, "ok")
end

-- 200 once every assigned partition is recovered and consuming; before that
-- 503 with what is left.
function web.readiness(app)
  local rt = app.rt
  local st = rt:stats()
  local parts = rt:web_partitions()
  local pending, held = {}, 0
  for _, p in ipairs(parts) do
    held = held + 1
    if p.state ~= "active" then pending[#pending + 1] = { topic = p.topic, partition = p.partition, state = p.state } end
  end
  local recovering = {}
  for _, r in ipairs(st.recovering) do
    local e = { table = r.table, partition = r.partition, done = r.done }
    if r.total then e.total = r.total; e.remaining = math.max(r.total - r.done, 0) end
    recovering[#recovering + 1] = e
  end
  local started = rt:web_consuming()
  local ready = started and #pending == 0 and #recovering == 0 and not rt:stopping()
  return ready, {
    ready = ready,
    status = ready and "ready" or rt:stopping() and "stopping"
      or (#recovering > 0 or #pending > 0) and "recovering" or "starting",
    partitions = held, pending = json.array(pending), recovering = json.array(recovering),
  }
end

function builtin.readyz(app)
  local ready, body = web.readiness(app)
  return json_answer(ready and 200 or 503, body)
end

-- /metrics renders at most every METRICS_MAX_AGE seconds: a scraper asking
-- more often gets the same text (Prometheus scrapes every 15 s or so; a
-- dashboard or a load test asking hundreds of times a second must not cost
-- the events their throughput; BENCHMARKS.md).
-- The server's C side answers the requests that come meanwhile with the same
-- text itself (rt:web_cache): a GET of /metrics within the 0.1 s costs no
-- turn of this coroutine, no request table and no copy of the text.
local METRICS_MAX_AGE = 0.1
local METRICS_HEADERS = { ["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8" }
local metrics_cache = { at = -math.huge }

function builtin.metrics(app, segs, query, method)
  local rt = app.rt
  local now = rt:now()
  local c = metrics_cache
  if c.app ~= app or now - c.at >= METRICS_MAX_AGE or now < c.at then
    c.text, c.at, c.app = require("fstream.metrics").render(app), now, app
    if method == "GET" then rt:web_cache("/metrics", METRICS_MAX_AGE, 200, METRICS_HEADERS, c.text) end
  end
  return 200, METRICS_HEADERS, c.text
end

-- ---- tables --------------------------------------------------------------

local function table_state(app, name)
  for _, t in ipairs(app.table_list) do
    if t.name == name and not t.internal then return t end
  end
end

local function held_partitions(t)
  local ps = {}
  for p in pairs(t.parts or {}) do ps[#ps + 1] = p end
  table.sort(ps)
  return ps
end

local function window_info(w)
  if not w then return nil end
  return { kind = w.kind, size = w.size, step = w.step, expires = w.expires }
end

-- GET /tables: every table, what of it this worker holds.
function builtin.tables(app)
  local keys = {}
  for _, e in ipairs(app.rt:web_tables()) do keys[e.name] = (keys[e.name] or 0) + e.keys end
  local out = {}
  for _, t in ipairs(app.table_list) do
    if not t.internal then out[#out + 1] = {
      name = t.name, partitions = t.partitions, global = t.global or false,
      changelog = t.changelog and t.changelog.name, window = window_info(t.window),
      held = json.array(held_partitions(t)), keys = keys[t.name] or 0,
    } end
  end
  return json_answer(200, json.array(out))
end

-- What a key written in a URL is: for a table with JSON keys, the text as a
-- string first ("42" is the string key "42"); if no such key exists and the
-- text is JSON of another type (42, true, [1,2]), that value.
local function key_candidates(t, text)
  local c = { text }
  if t.key_serializer == "json" then
    local ok, v = pcall(json.decode, text)
    if ok and v ~= nil and type(v) ~= "string" and v ~= json.null then c[2] = v end
    if ok and type(v) == "string" and v ~= text then c[#c + 1] = v end
  end
  return c
end

local function encode_key(t, k)
  local ok, kb = pcall(t.encode_key, k)
  if ok then return kb end
end

-- Which partition a key is in: a table's partition p holds what the events
-- of input partition p wrote, so it is where the input message carrying the
-- key went — Kafka's default partitioner over the message key's bytes: the
-- key's text with the topics' default "raw" key serializer, its JSON when the
-- tables' input topics use the "json" one.
local function key_partition(app, t, text, kb)
  local json_keys = false
  for _, a in ipairs(app.agent_list) do
    if not a.no_tables then
      for _, tp in ipairs(a.topics) do
        if tp.key_serializer == "json" and not tp.internal then json_keys = true end
      end
    end
  end
  return core.partition_for(json_keys and kb or text, t.partitions)
end

-- Where a key lives and, if here, its value: every partition this worker
-- holds is looked at (a cheap LMDB get each); when none has it, where it
-- would be, and whether that is another worker's.
local function find_key(app, t, text)
  local Table = require "fstream.table"
  local held = held_partitions(t)
  local first
  for _, k in ipairs(key_candidates(t, text)) do
    local kb = encode_key(t, k)
    if kb then
      for _, p in ipairs(held) do
        local v
        if t.set then v = require("fstream.set_table").members_in(t, p, kb) else v = Table._lookup(t, p, kb) end
        if v ~= nil then return { key = k, partition = p, value = v } end
      end
      if not first then
        local p = key_partition(app, t, text, kb)
        first = { key = k, partition = p, remote = not t.parts[p] or nil }
      end
    end
  end
  return first
end

-- A windowed table's key: every open window, oldest first.
local function find_windows(app, t, text)
  local Table = require "fstream.table"
  local idx = t.window.idx
  local first
  for _, k in ipairs(key_candidates(t, text)) do
    local kb = encode_key(t, k)
    if kb then
      for _, p in ipairs(held_partitions(t)) do
        local wins = {}
        for _, win in ipairs(idx and idx:key_windows(p, k) or {}) do
          wins[#wins + 1] = { start = win[2], ["end"] = win[3], value = Table._lookup(t, p, win[1]) }
        end
        if #wins > 0 then
          table.sort(wins, function(x, y) return x.start < y.start end)
          return { key = k, partition = p, windows = wins }
        end
      end
      if not first then
        local p = key_partition(app, t, text, kb)
        if not t.parts[p] then first = { key = k, partition = p, remote = true } end
      end
    end
  end
  return first
end

-- ---- the group's workers ------------------------------------------------------
-- On a Kafka broker (where a group may have several workers) each worker
-- announces its web address and the table partitions it holds in the global
-- table "__workers" (changelog: the compacted topic <app>-__workers), every
-- second when they change and every 30 s anyway. Every worker follows that
-- table, so each knows who holds what: a key another worker holds is
-- answered with a 307 to it (Faust's table router, Kafka Streams'
-- queryMetadataForKey).
local ANNOUNCE_EVERY, REFRESH_EVERY = 1.0, 30.0

-- Declared before the worker starts, and by every version a reload loads
-- (a reload refuses a new global table): whenever the broker is kafka://
-- and the app did not turn the web off in its options.
function web.declare(app, broker_url)
  if app.web == false or type(broker_url) ~= "string" or not broker_url:match("^kafka://") then return end
  if app.tables.__workers then return end
  app.workers_table = app:global_table("__workers", { changelog_topic = app.id .. "-__workers" })
  app.tables.__workers.internal = true
  app.tables.__workers.changelog.internal = true
end

local worker_id
local function my_id()
  if not worker_id then
    local host = os.getenv("HOSTNAME")
    if not host or host == "" then
      local f = io.open("/proc/sys/kernel/hostname")
      host = f and f:read("l") or "localhost"
      if f then f:close() end
    end
    worker_id = host .. ":" .. tostring(core.pid)
  end
  return worker_id
end

-- Where other workers reach this one: the web option's `advertise`, else the
-- listening address (an any-address bind: the host name).
local function advertised(app, addr)
  local adv = type(app.web) == "table" and app.web.advertise
  if adv then return (adv:gsub("/$", "")) end
  if addr:match("^http://0%.0%.0%.0:") or addr:match("^http://%[::%]:") then
    local host = my_id():match("^(.*):%d+$")
    return (addr:gsub("^http://[^/]*:(%d+)$", "http://" .. host .. ":%1"))
  end
  return addr
end

local function held_tables(app)
  local out = {}
  for _, t in ipairs(app.table_list) do
    if not t.global then out[t.name] = json.array(held_partitions(t)) end
  end
  return out
end

local function announcer(app, rt, addr)
  local workers = app.workers_table
  if not workers then return end
  local me, adv = my_id(), addr and advertised(app, addr) or nil
  rt:spawn(function()
    local last, at = nil, -math.huge
    while true do
      local tables = held_tables(app)
      local text = json.encode(tables)
      local now = rt:now()
      if text ~= last or now - at >= REFRESH_EVERY then
        workers[me] = { web = adv, pid = core.pid, time = now, tables = tables }
        last, at = text, now
      end
      core.sleep(ANNOUNCE_EVERY)
    end
  end, function(ok, err, tb)
    if not ok and app.rt == rt and not rt:stopping() then
      log_failure("announcing this worker", err, tb)
      announcer(app, rt, addr)
    end
  end, "task")
end

-- The web address of the other worker that announced partition p of t most
-- recently, or nil.
function web.owner_of(app, t, p)
  local workers = app.workers_table
  if not workers then return nil end
  local me, best, best_time = my_id(), nil, -math.huge
  for id, v in workers:items() do
    if id ~= me and type(v) == "table" and v.web and type(v.tables) == "table" then
      for _, q in ipairs(v.tables[t.name] or {}) do
        if q == p and (v.time or 0) > best_time then best, best_time = v.web, v.time or 0 end
      end
    end
  end
  return best
end

local function not_here(app, t, f, query)
  local where = web.owner_of(app, t, f.partition)
  if where then
    local loc = where .. "/tables/" .. t.name .. "/" .. query.raw_key
    return 307, { Location = loc, ["Content-Type"] = "application/json" },
      assert(encode_json { redirect = loc, partition = f.partition })
  end
  return json_answer(404, { error = "partition " .. f.partition .. " of " .. t.name
    .. " is not on this worker, and no worker of the group announced it", partition = f.partition })
end

-- GET /tables/NAME/KEY
local function table_key(app, t, text, query)
  if t.window then
    local f = find_windows(app, t, text)
    if f and f.remote then return not_here(app, t, f, query) end
    if not f then return json_answer(404, { error = "no open window for this key", table = t.name, key = text }) end
    return json_answer(200, { table = t.name, key = f.key, partition = f.partition, windows = f.windows })
  end
  local f = find_key(app, t, text)
  if f and f.remote then return not_here(app, t, f, query) end
  if not f or f.value == nil then
    return json_answer(404, { error = "no such key", table = t.name, key = text,
      partition = f and f.partition })
  end
  return json_answer(200, { table = t.name, key = f.key, partition = f.partition, value = f.value })
end

-- The encoded form of a prefix of string keys: JSON keys begin with a quote.
local function prefix_bytes(t, prefix)
  if prefix == "" then return "" end
  if t.window then return '["' .. prefix end
  if t.key_serializer == "json" then return (json.encode(prefix):sub(1, -2)) end
  if t.key_serializer == "raw" then return prefix end
  return nil -- a custom serializer: filtered after decoding
end

-- GET /tables/NAME?prefix=&limit=&after=: the entries this worker stores,
-- a page at a time (the answer's "next" goes into ?after=).
local function table_page(app, t, query)
  local rt = app.rt
  local limit = math.tointeger(tonumber(query.limit or "100")) or 100
  if limit < 1 then limit = 1 elseif limit > 1000 then limit = 1000 end
  local prefix = query.prefix or ""
  local pb = prefix_bytes(t, prefix)
  local after_p, after_kb
  if query.after and query.after ~= "" then
    local ps, hex = query.after:match("^(%d+):(%x*)$")
    if not ps then return json_answer(400, { error = "after must be the 'next' of an earlier page" }) end
    after_p = tonumber(ps)
    after_kb = hex:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end)
  end
  local items, nxt = {}, nil
  for _, p in ipairs(held_partitions(t)) do
    if not after_p or p >= after_p then
      local keys, values, more = rt:web_table_page(t.id, p, p == after_p and after_kb or nil, pb or "",
        limit - #items)
      for i, kb in ipairs(keys) do
        local ok, k = pcall(t.decode_key, kb)
        local okv, v = pcall(t.decode_value, values[i])
        if ok and okv and (pb or tostring(k):sub(1, #prefix) == prefix) then
          local e = { key = k, partition = p, value = v }
          if t.window and type(k) == "table" then e.key, e.window_start = k[1], k[2] end
          items[#items + 1] = e
        end
        if #items == limit then
          nxt = string.format("%d:%s", p, (kb:gsub(".", function(c) return string.format("%02x", c:byte()) end)))
          break
        end
      end
      if nxt or more then
        if not nxt and #keys > 0 then
          local kb = keys[#keys]
          nxt = string.format("%d:%s", p, (kb:gsub(".", function(c) return string.format("%02x", c:byte()) end)))
        end
        break
      end
    end
  end
  return json_answer(200, { table = t.name, items = json.array(items), next = nxt })
end

function builtin.table(app, segs, query)
  local t = table_state(app, segs[2])
  if not t then return json_answer(404, { error = "no table named " .. tostring(segs[2]) }) end
  if #segs == 2 then return table_page(app, t, query) end
  return table_key(app, t, segs[3], query)
end

-- ---- topology and agents ---------------------------------------------------

function builtin.topology(app, _, query)
  local topology = require "fstream.topology"
  local g = topology.graph(app)
  local fmt = query.format or "json"
  if fmt == "dot" then return 200, { ["Content-Type"] = "text/vnd.graphviz; charset=utf-8" }, topology.dot(g) end
  if fmt == "mermaid" then return 200, { ["Content-Type"] = "text/plain; charset=utf-8" }, topology.mermaid(g) end
  if fmt ~= "json" then return text(400, "format must be json, dot or mermaid") end
  g.nodes, g.edges = json.array(g.nodes), json.array(g.edges)
  return json_answer(200, g)
end

-- Each agent: what it reads and where it sends, its instances (the event in
-- hand: topic/partition/offset), its counts and its last failure.
function web.agents(app)
  local stats = {}
  for _, a in ipairs(app.rt:web_agents()) do stats[a.name] = a end
  local out = {}
  for _, a in ipairs(app.agent_list) do
    if a.fn then
      local st = stats[a.name] or {}
      local topics, sinks, instances = {}, {}, {}
      for _, t in ipairs(a.topics) do topics[#topics + 1] = t.name end
      for _, sk in ipairs(a.sinks) do
        sinks[#sinks + 1] = type(sk) == "table" and sk.name or (sk == print and "print" or "function")
      end
      if a.channel then topics[1] = a.channel.name end
      for i, strm in ipairs(a.streams) do
        local inst
        if a.channel then -- (fstream/channel.lua: no cursor in C, no offsets)
          inst = { instance = i, buffered = strm.queue:size(), state = strm.waiting and "waiting" or "processing" }
        else
          local cs = (strm.regrouped or strm).cs
          local pos, n = cs:cursor()
          inst = { instance = i, buffered = math.max((n or 0) - pos, 0), state = "waiting" }
          if pos > 0 then
            local tp, pa, off = cs:meta(pos)
            inst.state, inst.event = "processing", { topic = tp, partition = pa, offset = off }
          end
        end
        instances[#instances + 1] = inst
      end
      local errors, nerr = {}, 0
      for pol, n in pairs(a.errors_by_policy) do errors[pol] = n; nerr = nerr + n end
      local le = a.last_error
      out[#out + 1] = {
        name = a.name, topics = json.array(topics), sinks = json.array(sinks), concurrency = a.concurrency,
        on_error = a.on_error, running = a.instances, instances = json.array(instances),
        processed = st.processed or 0, processing_seconds_sum = st.seconds_sum or 0,
        errors = nerr, errors_by_policy = errors, dead_letters = a.dead_letters, retries = a.retries,
        last_error = le and { message = le.message, traceback = le.traceback, time = le.time, event = le.event } or nil,
      }
    end
  end
  return out
end

function builtin.agents(app)
  return json_answer(200, json.array(web.agents(app)))
end

-- ---- the dashboard ---------------------------------------------------------
-- GET / is a page compiled into the binary (fstream/dashboard.lua: no
-- external resources) that polls /dashboard.json. Throughput comes from a
-- sampler that notes the counters every second for the last five minutes,
-- so a page opened late still draws the history.
local SAMPLES, SAMPLE_EVERY = 300, 1.0

local function sampler(app, rt)
  local hist = { n = 0 }
  app.web_samples = hist
  rt:spawn(function()
    while true do
      local st = rt:stats()
      hist.n = hist.n + 1
      hist[(hist.n - 1) % SAMPLES + 1] = { rt:now(), st.events_in, st.events_acked }
      core.sleep(SAMPLE_EVERY)
    end
  end, function(ok, err, tb)
    if not ok and app.rt == rt and not rt:stopping() then
      log_failure("the dashboard's sampler", err, tb)
      sampler(app, rt)
    end
  end, "task")
end

function builtin.dashboard_json(app)
  local rt = app.rt
  local hist, samples = app.web_samples or { n = 0 }, {}
  for i = math.max(hist.n - SAMPLES + 1, 1), hist.n do
    local e = hist[(i - 1) % SAMPLES + 1]
    samples[#samples + 1] = { t = e[1], events_in = e[2], processed = e[3] }
  end
  local parts = {}
  for _, p in ipairs(rt:web_partitions()) do
    local lag = (p.high and p.high >= 0) and math.max(p.high - math.max(p.committed, 0), 0) or nil
    parts[#parts + 1] = { topic = p.topic, partition = p.partition, state = p.state, events_in = p.delivered,
      committed = p.committed, lag = lag }
  end
  table.sort(parts, function(a, b)
    if a.topic ~= b.topic then return a.topic < b.topic end
    return a.partition < b.partition
  end)
  local keys = {}
  for _, e in ipairs(rt:web_tables()) do keys[e.name] = (keys[e.name] or 0) + e.keys end
  local tables = {}
  for _, t in ipairs(app.table_list) do
    if not t.internal then
      tables[#tables + 1] = { name = t.name, keys = keys[t.name] or 0, partitions = t.partitions,
        held = #held_partitions(t), window = t.window and t.window.kind or nil, global = t.global or nil }
    end
  end
  local agents = web.agents(app)
  for _, a in ipairs(agents) do a.last_error = a.last_error and { message = a.last_error.message, time = a.last_error.time } end
  local rs = rt:reload_stats()
  local ready, readiness = web.readiness(app)
  return json_answer(200, {
    app = app.id, time = rt:now(), pid = core.pid, ready = ready, status = readiness.status,
    samples = json.array(samples), partitions = json.array(parts), agents = json.array(agents),
    tables = json.array(tables), errors = json.array(app.recent_errors or {}),
    reloads = json.array(rs and rs.history or {}),
  })
end

function builtin.dashboard(app)
  return 200, { ["Content-Type"] = "text/html; charset=utf-8", ["Cache-Control"] = "no-cache" },
    require("fstream.dashboard")
end

local BUILTIN_ROUTES = {
  ["/"] = builtin.dashboard,
  ["/dashboard.json"] = builtin.dashboard_json,
  ["/topology"] = builtin.topology,
  ["/agents"] = builtin.agents,
  ["/tables"] = builtin.tables,
  ["/healthz"] = builtin.healthz,
  ["/readyz"] = builtin.readyz,
  ["/metrics"] = builtin.metrics,
}

-- ---- serving -----------------------------------------------------------


-- A page of the app's, in a coroutine of its own that answers the request.
local function run_page(app, rt, id, page, req)
  rt:spawn(function()
    rt:web_hold(id) -- ended without answering (an error, a reload): 500 from C
    local function pack(...) return select("#", ...), ... end
    local status, headers, body = normalize(pack(page.fn(req)))
    if req.method == "HEAD" then body = "" end
    rt:web_respond(id, status, headers, body)
  end, function(ok, err, tb)
    if not ok then log_failure(string.format("page %s (%s %s)", page.path, req.method, req.path), err, tb) end
  end, "task")
end

local function dispatch(app, rt, id, method, path, query, headers, body)
  local segs = split_path(path)
  for _, page in ipairs(app.pages or {}) do
    local params = match_page(page, segs)
    if params then
      if not page.methods[method] then
        local allow = {}
        for m in pairs(page.methods) do allow[#allow + 1] = m end
        table.sort(allow)
        local s, h, b = text(405, "method not allowed")
        h.Allow = table.concat(allow, ", ")
        return rt:web_respond(id, s, h, b)
      end
      local req = { method = method, path = path, params = params, query = query, headers = headers, body = body }
      return run_page(app, rt, id, page, req)
    end
  end
  local norm = "/" .. table.concat(segs, "/")
  local route = BUILTIN_ROUTES[norm]
  if not route and segs[1] == "tables" and (#segs == 2 or #segs == 3) then
    route = builtin.table
    -- The key as the client wrote it (still encoded), for a redirect.
    query = setmetatable({ raw_key = path:match("^/+tables/+[^/]+/+(.*)$") }, { __index = query })
  end
  if route then
    if method ~= "GET" and method ~= "HEAD" then
      local s, h, b = text(405, "method not allowed")
      h.Allow = "GET, HEAD"
      return rt:web_respond(id, s, h, b)
    end
    local ok, s, h, b = xpcall(route, debug.traceback, app, segs, query, method)
    if not ok then
      log_failure(method .. " " .. path, s)
      return rt:web_respond(id, text(500, "internal server error (see the worker's log)"))
    end
    if method == "HEAD" then b = "" end
    return rt:web_respond(id, s, h, b)
  end
  return rt:web_respond(id, text(404, "not found: " .. path))
end

-- The server coroutine: one per Lua state (a reload starts the new version's).
local function serve(app, rt)
  rt:spawn(function()
    while true do
      local id, method, path, query, headers, body = rt:web_next()
      if not id then return end
      local ok, err = xpcall(dispatch, debug.traceback, app, rt, id, method, path, query, headers, body)
      if not ok then
        log_failure(method .. " " .. path, err)
        pcall(rt.web_respond, rt, id, text(500, "internal server error (see the worker's log)"))
      end
    end
  end, function(ok, err, tb)
    if not ok then log_failure("the server coroutine", err, tb) end
    -- Interrupted (agent_timeout) or failed: serve on, unless the worker ends.
    if not ok and app.rt == rt and not rt:stopping() then serve(app, rt) end
  end, "task")
end

local function loopback(addr)
  return addr == "127.0.0.1" or addr == "::1" or addr == "localhost" or addr:match("^127%.") ~= nil
end

-- The web settings of a worker: the app's `web` option, then the command
-- line (--web-port, --web-bind, --no-web), then FSTREAM_WEB_TOKEN. Returns
-- the settings, or nil when the server is off; raises what is wrong.
function web.settings(app, cli)
  local o = app.web
  if o == false then o = { enabled = false } end
  o = o or {}
  if type(o) ~= "table" then error(string.format("app '%s': web must be a table {port =, bind =, token =} or false", app.id), 0) end
  for k in pairs(o) do
    if not WEB_OPTIONS[k] then error(string.format("app '%s': unknown web option '%s'", app.id, tostring(k)), 0) end
  end
  cli = cli or {}
  if cli.no_web or o.enabled == false and not cli.web_port then return nil end
  local s = {
    port = o.port or DEFAULT_PORT, bind = o.bind or "127.0.0.1", token = o.token,
    max_body = o.max_body, max_connections = o.max_connections, timeout = o.timeout, public = o.public,
  }
  if cli.web_port then
    s.port = math.tointeger(tonumber(cli.web_port))
    if not s.port then error(string.format("--web-port needs a port number, got '%s'", cli.web_port), 0) end
  end
  if cli.web_bind then s.bind = cli.web_bind end
  s.token = os.getenv("FSTREAM_WEB_TOKEN") or s.token
  if s.token == "" then s.token = nil end
  if math.type(s.port) ~= "integer" or s.port < 0 or s.port > 65535 then
    error("the web port must be an integer from 0 to 65535", 0)
  end
  -- Tables and metrics must not reach the network by accident.
  if not loopback(s.bind) and not s.token and not s.public then
    error(string.format("the web server would listen on %s, beyond this machine, without a token: set "
      .. "web = { token = ... } (or FSTREAM_WEB_TOKEN; clients send Authorization: Bearer TOKEN), or "
      .. "web = { public = true } to serve without one", s.bind), 0)
  end
  if s.bind == "localhost" then s.bind = "127.0.0.1" end
  return s
end

-- The worker starts: the server listens (the next free port when the one
-- asked for is taken) and its coroutine serves. Returns the address, or nil.
function web.start(app, rt, s)
  if not s then
    announcer(app, rt, nil) -- the assignment still helps the others' redirects
    return nil
  end
  local addr, err = rt:web_start { port = s.port, bind = s.bind, token = s.token, max_body = s.max_body,
    max_connections = s.max_connections, timeout = s.timeout }
  if not addr then error(err, 0) end
  local port = tonumber(addr:match(":(%d+)$"))
  if s.port ~= 0 and port ~= s.port then
    core.log("info", string.format("web: port %d is taken, listening on %d", s.port, port))
  end
  serve(app, rt)
  sampler(app, rt)
  announcer(app, rt, addr)
  return addr
end

-- A reload: the new version's pages and routes serve from now on.
function web.attach(app, rt)
  local addr = rt:web_address()
  if addr then
    rt:web_cache() -- the new version may serve /metrics with a page of its own
    serve(app, rt)
    sampler(app, rt)
  end
  announcer(app, rt, addr)
end

function web.stop(rt)
  if rt then pcall(rt.web_stop, rt) end
end

return web
