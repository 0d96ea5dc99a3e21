-- The worker's web server, end to end: the real binary on its embedded broker
-- (memory://), curl and misbehaving clients (spec/support/web_abuse.py).
local proc = require "spec.support.proc"
local json = require("fstream").json

local q = proc.quote
local uniq = tostring(os.time()) .. "-" .. tostring(math.random(1e6))
local abuse = "python3 " .. proc.root .. "/spec/support/web_abuse.py"
local n_workers = 0

-- Starts spec/fixtures/web.lua (or `app`) with extra worker arguments; returns
-- the process, its web address (nil when off) and its broker's address.
local function start(args, env, app)
  n_workers = n_workers + 1
  env = env or {}
  env.APP_ID = env.APP_ID or ("web-" .. uniq .. "-" .. n_workers)
  env.STORE = env.STORE or (proc.tmp .. "/web-store-" .. uniq .. "-" .. n_workers)
  local vars = {}
  for k, v in pairs(env) do vars[#vars + 1] = k .. "=" .. q(v) end
  local w = proc.spawn(string.format("env %s %s worker %s/spec/fixtures/%s -l info %s", table.concat(vars, " "),
    proc.bin, proc.root, app or "web.lua", args or ""), "web")
  local web = w:wait_for("\n  web%s+(%S+)\n", 30)
  assert(web, "no banner:\n" .. w:output())
  local broker = w:output():match("listening on ([%d%.]+:%d+)")
  return w, web ~= "off" and web:gsub("/$", "") or nil, broker
end

-- curl: status, headers (lower-case names), body.
local function http(method, url, opts)
  opts = opts or {}
  local hdr = proc.tmp .. "/curl-hdr-" .. uniq
  local args = { "curl -s --path-as-is -o - -D", q(hdr), "-X", method, "--max-time 20" }
  for k, v in pairs(opts.headers or {}) do args[#args + 1] = "-H " .. q(k .. ": " .. v) end
  if opts.body then args[#args + 1] = "--data-binary " .. q(opts.body) end
  args[#args + 1] = q(url)
  local body = proc.run(table.concat(args, " "))
  local raw = proc.read(hdr) or ""
  os.remove(hdr)
  local status = tonumber(raw:match("^HTTP/[%d%.]+ (%d+)"))
  local headers = {}
  for k, v in raw:gmatch("\n([^:\r\n]+):%s*([^\r\n]*)") do headers[k:lower()] = v end
  return status, headers, body
end

local function get(url, opts) return http("GET", url, opts) end

-- A sample's value in a /metrics text; nil when absent.
local function metric(text, name, labels)
  for line in text:gmatch("[^\n]+") do
    local n, l, v = line:match("^([%w_:]+)(%b{}) (%S+)$")
    if not n then n, v = line:match("^([%w_:]+) (%S+)$"); l = "" end
    if n == name and (labels == nil or l == labels) then return tonumber(v) end
  end
end

-- Polls fn until it returns a truthy value or `secs` pass.
local function eventually(secs, fn)
  local deadline = os.time() + secs
  repeat
    local v = fn()
    if v then return v end
    proc.sleep(0.2)
  until os.time() > deadline
  return fn()
end

local function send_words(broker, topic, words)
  local lines = {}
  for i, w in ipairs(words) do lines[i] = w .. ":" .. i end
  proc.produce_lines(broker, topic, lines, { key_delim = ":" })
end

describe("the web server", function()
  it("is on by default on loopback, says where in the banner, and answers /healthz and /readyz", function()
    -- The fixture's app asks for port 0 (any free port); the default 6066 is tried by the next spec.
    local w, web = start()
    assert.matches("^http://127%.0%.0%.1:%d+$", web)
    local s, h, b = get(web .. "/healthz")
    assert.are.equal(200, s)
    assert.are.equal("ok\n", b)
    assert.matches("text/plain", h["content-type"])
    local ready = eventually(20, function() return get(web .. "/readyz") == 200 end)
    assert.is_truthy(ready)
    local _, _, rb = get(web .. "/readyz")
    local r = json.decode(rb)
    assert.are.equal(true, r.ready)
    assert.are.equal(4, r.partitions)
    assert.are.equal(0, w:stop())
  end)

  it("listens on 127.0.0.1:6066 by default, or the next free port above it", function()
    local w, web = start(nil, { WEB_PORT = "" })
    local port = tonumber(web:match("^http://127%.0%.0%.1:(%d+)$"))
    assert.is_true(port >= 6066 and port < 6166, web)
    assert.are.equal(200, (get(web .. "/healthz")))
    assert.are.equal(0, w:stop())
  end)

  it("takes the next free port when the one asked for is taken, and --no-web turns it off", function()
    local w1, web1 = start()
    local port1 = tonumber(web1:match(":(%d+)$"))
    local w2, web2 = start("--web-port " .. port1)
    local port2 = tonumber(web2:match(":(%d+)$"))
    assert.is_true(port2 > port1, web2)
    assert.matches("port " .. port1 .. " is taken, listening on " .. port2, w2:output())
    assert.are.equal(200, (get(web2 .. "/healthz")))
    local w3, web3 = start("--no-web")
    assert.is_nil(web3)
    assert.matches("\n  web        off\n", w3:output())
    for _, w in ipairs { w1, w2, w3 } do assert.are.equal(0, w:stop()) end
  end)

  it("refuses to listen beyond loopback without a token, and with one every request must carry it", function()
    local out, rc = proc.run(string.format("env STORE=%s %s worker %s/spec/fixtures/web.lua --web-bind 0.0.0.0",
      q(proc.tmp .. "/web-refused-" .. uniq), proc.bin, proc.root))
    assert.are.equal(2, rc, out)
    assert.matches("beyond this machine, without a token", out)

    local w, web = start("--web-bind 0.0.0.0", { WEB_TOKEN = "s3cret" })
    assert.matches("^http://0%.0%.0%.0:%d+$", web)
    local local_url = web:gsub("0%.0%.0%.0", "127.0.0.1")
    local s, h = get(local_url .. "/healthz")
    assert.are.equal(401, s)
    assert.are.equal("Bearer", h["www-authenticate"])
    assert.are.equal(401, (get(local_url .. "/healthz", { headers = { Authorization = "Bearer wrong" } })))
    assert.are.equal(401, (get(local_url .. "/healthz", { headers = { Authorization = "Bearer s3cre" } })))
    assert.are.equal(200, (get(local_url .. "/healthz", { headers = { Authorization = "Bearer s3cret" } })))
    assert.are.equal(0, w:stop())
  end)

  it("answers bad input with 4xx and keeps processing: '..', malformed requests, 10 MB bodies", function()
    local env = { IN = "in-bad-" .. uniq }
    local w, web, broker = start(nil, env)
    local port = web:match(":(%d+)$")
    assert.are.equal(400, (get(web .. "/tables/../../etc/passwd")))
    assert.are.equal(400, (get(web .. "/tables/%2e%2e/x")))
    local out = proc.run(abuse .. " garbage " .. port)
    assert.matches("^HTTP/1%.%d 400", out)
    out = proc.run(abuse .. " binary " .. port) -- not HTTP: a 400 or the connection closed
    assert.is_truthy(out:match("^HTTP/1%.%d 400") or out:match("^closed"), out)
    out = proc.run(abuse .. " big " .. port .. " 10485760")
    assert.matches("^HTTP/1%.%d 413", out)
    out = proc.run(abuse .. " chunked " .. port .. " 10485760")
    assert.matches("^HTTP/1%.%d 413", out)
    -- A body under the limit (64 KiB in the fixture) gets through.
    local s, _, b = http("POST", web .. "/echo", { body = string.rep("y", 60000) })
    assert.are.equal(201, s)
    assert.are.equal(60000, #b)
    -- The worker went on: events sent now are counted.
    send_words(broker, env.IN, { "a", "b", "a" })
    local n = eventually(30, function()
      local _, _, body = get(web .. "/count/a")
      local v = json.decode(body)
      return v.n == 2 and v
    end)
    assert.is_truthy(n, w:output())
    assert.is_true(w:alive())
    assert.are.equal(0, w:stop())
  end)

  it("keeps processing events while 1,000 idle connections and a client that never reads hold on", function()
    local env = { IN = "in-slow-" .. uniq }
    local w, web, broker = start(nil, env)
    local port = web:match(":(%d+)$")
    local sloth = proc.spawn(abuse .. " noread " .. port .. " 60", "noread")
    assert.is_truthy(sloth:wait_for("ready", 30))
    local holder = proc.spawn(abuse .. " hold " .. port .. " 1000 60", "hold")
    assert.is_truthy(holder:wait_for("ready (%d+)", 30), holder:output())
    local words = {}
    for i = 1, 2000 do words[i] = "k" .. (i % 10) end
    send_words(broker, env.IN, words)
    -- The connections fill the server's limit (256 by default), so watch the
    -- events through the table's changelog instead: every key reaches 200.
    local changelog = env.APP_ID .. "-counts-changelog"
    local done = eventually(60, function()
      local out = proc.run(string.format("kcat -C -b %s -t %s -o beginning -e -q -f '%%k=%%s\\n'", broker, q(changelog)))
      local last = {}
      for k, v in out:gmatch("([^\n=]+)=([^\n]*)") do last[k] = v end
      for i = 0, 9 do if last['"k' .. i .. '"'] ~= "200" then return false end end
      return true
    end)
    assert.is_truthy(done, w:output())
    assert.is_true(holder:alive() and sloth:alive(), "the clients gave up first")
    holder:signal("TERM")
    sloth:signal("TERM")
    holder:wait(10)
    sloth:wait(10)
    local body
    assert.is_truthy(eventually(60, function()
      local s, _, b = get(web .. "/metrics")
      body = b
      return s == 200
    end))
    assert.are.equal(2000, metric(body, "fstream_events_processed_total"))
    assert.is_true(metric(body, "process_resident_memory_bytes") < 512 * 1024 * 1024)
    assert.is_true(w:alive())
    assert.are.equal(0, w:stop())
  end)
end)

describe("app:page", function()
  local w, web
  setup(function() w, web = start() end)
  teardown(function() w:stop() end)

  it("passes params, query, method and body, and sends a table as JSON", function()
    local s, h, b = get(web .. "/users/42?q=a+b%26c")
    assert.are.equal(200, s)
    assert.are.equal("application/json", h["content-type"])
    assert.are.same({ id = "42", q = "a b&c", method = "GET" }, json.decode(b))
    s, _, b = http("POST", web .. "/users/7")
    assert.are.equal(200, s)
    assert.are.equal("POST", json.decode(b).method)
    -- A segment may hold an encoded "/".
    s, _, b = get(web .. "/users/a%2Fb")
    assert.are.equal("a/b", json.decode(b).id)
    s, h, b = http("POST", web .. "/echo", { body = "hello" })
    assert.are.equal(201, s)
    assert.are.equal("yes", h["x-echo"])
    assert.are.equal("hello", b)
  end)

  it("answers 405 for a method the page does not take and 404 for no page", function()
    local s, h = http("DELETE", web .. "/users/1")
    assert.are.equal(405, s)
    assert.are.equal("GET, HEAD, POST", h["allow"])
    assert.are.equal(404, (get(web .. "/nothing/here")))
  end)

  it("turns a handler's error into a 500 with the message in the log; the worker goes on", function()
    local s, _, b = get(web .. "/boom")
    assert.are.equal(500, s)
    assert.not_matches("exploded", b) -- the message is for the log, not the client
    assert.matches("web: page /boom %(GET /boom%) failed: [^\n]*web%.lua:%d+: page exploded", w:output())
    assert.are.equal(200, (get(web .. "/healthz")))
  end)

  it("runs each page in its own coroutine: a page that sleeps holds up no other request", function()
    local slow = proc.spawn(string.format("curl -s -o /dev/null -w '%%{http_code}\\n' %s", q(web .. "/slow?s=10")), "curl")
    proc.sleep(0.5)
    assert.are.equal(200, (get(web .. "/users/1")))
    assert.is_true(slow:alive(), "the slow page answered first")
    assert.are.equal(0, slow:wait(30))
    assert.matches("200", slow:output())
  end)

  it("serves the new version's pages after a hot reload", function()
    local path = proc.tmp .. "/web-reload-" .. uniq .. ".lua"
    local function version(v)
      proc.write(path, string.format([[
local fstream = require "fstream"
local app = fstream.app("web-reload-%s", { broker = "memory://", web = { port = 0 },
  store = "lmdb://%s-data" })
app:agent("a", app:topic("in-reload"), function(stream) for _ in stream do end end)
app:page("/version", function() return { version = "%s" } end)
%s
]], uniq, path, v, v == "v2" and 'app:page("/added", function() return "added" end)\n'
        .. 'app:page("/metrics", function() return "mine" end)' or ""))
    end
    version("v1")
    local w2 = proc.spawn(string.format("%s worker %s -l info", proc.bin, q(path)), "web-reload")
    local web2 = assert(w2:wait_for("\n  web%s+(%S+)/\n", 30), w2:output())
    local _, _, b = get(web2 .. "/version")
    assert.are.equal("v1", json.decode(b).version)
    assert.are.equal(404, (get(web2 .. "/added")))
    -- The built-in /metrics, which the server's C side repeats for 0.1 s.
    local sm, _, bm = get(web2 .. "/metrics")
    assert.are.equal(200, sm)
    assert.matches("fstream_events_in_total", bm)
    version("v2")
    w2:signal("HUP")
    assert.is_truthy(w2:wait_for("reloaded [^\n]* in %d+ ms", 30), w2:output())
    _, _, b = get(web2 .. "/version")
    assert.are.equal("v2", json.decode(b).version)
    local s2, _, b2 = get(web2 .. "/added")
    assert.are.equal(200, s2)
    assert.are.equal("added", b2)
    -- The new version's page wins over the built-in one (and its cached text).
    local s3, _, b3 = get(web2 .. "/metrics")
    assert.are.equal(200, s3)
    assert.are.equal("mine", b3)
    assert.are.equal(0, w2:stop())
  end)
end)

describe("/readyz during a recovery", function()
  it("is 503 with the progress while 1,000,000 changelog records replay, then 200", function()
    local app_id = "web-recover-" .. uniq
    local input, changelog = "in-recover-" .. uniq, app_id .. "-counts-changelog"
    local broker, addr = proc.broker({ input, changelog, app_id .. "-hourly-changelog" }, 8)
    finally(function() broker:stop() end)
    -- 1,000,000 records of 100,000 keys, as a table's changelog holds them.
    local path = proc.tmp .. "/changelog-" .. uniq .. ".txt"
    local f = assert(io.open(path, "w"))
    for i = 1, 1000000 do f:write('"k', i % 100000, '"|', i, "\n") end
    f:close()
    local out, rc = proc.run(string.format("kcat -P -b %s -t %s -K '|' -X linger.ms=50 -l %s", addr, q(changelog), q(path)))
    os.remove(path)
    assert(rc == 0, out)
    local w = proc.spawn(string.format("env APP_ID=%s IN=%s STORE=%s FSTREAM_BROKER=kafka://%s %s worker %s -l info",
      q(app_id), q(input), q(proc.tmp .. "/web-recover-store-" .. uniq), addr, proc.bin,
      q(proc.root .. "/spec/fixtures/web.lua")), "web-recover")
    local web = assert(w:wait_for("\n  web%s+(%S+)/\n", 30), w:output())
    -- Before the replay ends: 503, and the replay's progress in the answer.
    local seen
    eventually(60, function()
      local s, _, b = get(web .. "/readyz")
      local r = s and json.decode(b)
      if s == 503 and r.status == "recovering" and #r.recovering > 0 and r.recovering[1].total then seen = r end
      return seen or s == 200
    end)
    assert.is_truthy(seen, "never saw the recovery in /readyz:\n" .. w:output())
    assert.are.equal(false, seen.ready)
    local total, done = 0, 0
    for _, e in ipairs(seen.recovering) do
      assert.is_truthy(e.table == "counts" or e.table == "hourly", e.table)
      if e.total then -- known once the replay of that partition began
        total, done = total + e.total, done + e.done
        assert.are.equal(e.total - e.done, e.remaining)
      end
    end
    assert.is_true(total > 0 and done < total)
    -- Then 200, once every partition is active.
    assert.is_truthy(eventually(120, function() return get(web .. "/readyz") == 200 end), w:output())
    local _, _, m = get(web .. "/metrics")
    assert.are.equal(1000000, metric(m, "fstream_recovered_records_total"))
    assert.is_nil(m:match("fstream_recovery_records_remaining{"))
    assert.are.equal(0, w:stop())
    broker:stop()
  end)
end)

describe("/metrics", function()
  it("counts what the worker did, lag falls to 0, and promtool accepts the text", function()
    local env = { IN = "in-metrics-" .. uniq }
    local w, web, broker = start(nil, env)
    local words = {}
    for i = 1, 1000 do words[i] = i % 100 == 0 and "bad" or ("w" .. (i % 37)) end
    send_words(broker, env.IN, words)
    local m
    local done = eventually(60, function()
      local s, _, b = get(web .. "/metrics")
      m = b
      if s ~= 200 or metric(m, "fstream_events_processed_total") ~= 1000 then return false end
      for p = 0, 3 do
        if metric(m, "fstream_partition_lag", string.format('{topic="%s",partition="%d"}', env.IN, p)) ~= 0 then
          return false
        end
      end
      return true
    end)
    assert.is_truthy(done, m .. w:output())
    local function agent(name, a) return metric(m, name, '{agent="' .. a .. '"}') end
    assert.are.equal(1000, metric(m, "fstream_events_in_total"))
    assert.are.equal(1000, metric(m, "fstream_topic_events_in_total", '{topic="' .. env.IN .. '"}'))
    local per_part = 0
    for p = 0, 3 do
      per_part = per_part + metric(m, "fstream_partition_events_in_total",
        string.format('{topic="%s",partition="%d"}', env.IN, p))
    end
    assert.are.equal(1000, per_part)
    assert.are.equal(1000, agent("fstream_agent_events_processed_total", "count"))
    assert.are.equal(1000, agent("fstream_agent_processing_seconds_count", "count"))
    assert.are.equal(1000, metric(m, "fstream_agent_processing_seconds_bucket", '{agent="count",le="+Inf"}'))
    assert.are.equal(10, metric(m, "fstream_agent_errors_total", '{agent="picky",policy="dlq"}'))
    assert.are.equal(10, agent("fstream_agent_dead_letters_total", "picky"))
    assert.are.equal(0, agent("fstream_agent_dead_letters_total", "count"))
    assert.are.equal(0, metric(m, "fstream_agent_errors_total", '{agent="count",policy="log"}'))
    assert.are.equal(10, metric(m, "fstream_topic_messages_produced_total", '{topic="' .. env.APP_ID .. '-picky-dlq"}'))
    -- 37 words and "bad", once the checkpoint wrote them.
    local keys = eventually(30, function()
      local _, _, b = get(web .. "/metrics")
      local n = 0
      for v in b:gmatch('\nfstream_table_keys{table="counts",partition="%d+"} (%d+)') do n = n + tonumber(v) end
      return n == 38 and n
    end)
    assert.are.equal(38, keys)
    -- Checkpoints (every 0.3 s here): the periodic histogram's count grows,
    -- its +Inf bucket is its count, and the other occasions are there at 0.
    local function ckpt(b, name, occasion)
      return metric(b, "fstream_checkpoint_duration_seconds" .. name, '{occasion="' .. occasion .. '"' .. '}')
    end
    local c1 = ckpt(m, "_count", "periodic")
    assert.is_true(c1 >= 1, m)
    local later = eventually(30, function()
      local _, _, b = get(web .. "/metrics")
      return ckpt(b, "_count", "periodic") > c1 and b
    end)
    assert.is_truthy(later)
    m = later
    local c2 = ckpt(m, "_count", "periodic")
    assert.are.equal(c2, metric(m, "fstream_checkpoint_duration_seconds_bucket", '{occasion="periodic",le="+Inf"}'))
    assert.is_true(metric(m, "fstream_checkpoint_duration_seconds_bucket", '{occasion="periodic",le="30"}') <= c2)
    assert.is_true(ckpt(m, "_sum", "periodic") > 0)
    assert.are.equal(0, ckpt(m, "_count", "stop"))
    assert.are.equal(0, metric(m, "fstream_checkpoint_failures_total", '{occasion="periodic"}'))
    local path = proc.tmp .. "/metrics-" .. uniq .. ".txt"
    proc.write(path, m)
    local out, rc = proc.run("promtool check metrics < " .. q(path))
    assert.are.equal(0, rc, out)
    assert.are.equal(0, w:stop())
  end)
end)

describe("/tables", function()
  it("lists tables, answers a key (every open window of a windowed one), 404s, and pages with ?prefix=", function()
    local env = { IN = "in-tables-" .. uniq }
    local w, web, broker = start(nil, env)
    local words = {}
    for i = 1, 70 do words[i] = "k" .. (i % 7) end
    words[71], words[72] = "other", "a/b"
    send_words(broker, env.IN, words)
    assert.is_truthy(eventually(30, function()
      local s, _, b = get(web .. "/tables/counts/k1")
      return s == 200 and json.decode(b).value == 10
    end), w:output())
    local _, _, b = get(web .. "/tables")
    local list = json.decode(b)
    assert.are.equal("counts", list[1].name)
    assert.are.same({ 0, 1, 2, 3 }, list[1].held)
    assert.are.equal("hopping", list[2].window.kind)
    local s, h
    s, h, b = get(web .. "/tables/counts/k3")
    assert.are.equal(200, s)
    assert.are.equal("application/json", h["content-type"])
    local v = json.decode(b)
    assert.are.equal("k3", v.key)
    assert.are.equal(10, v.value)
    s, _, b = get(web .. "/tables/counts/a%2Fb")
    assert.are.equal(1, json.decode(b).value)
    assert.are.equal(404, (get(web .. "/tables/counts/missing")))
    assert.are.equal(404, (get(web .. "/tables/nosuchtable/k1")))
    -- A hopping table: the two open windows of the hour that hold the event.
    s, _, b = get(web .. "/tables/hourly/k2")
    assert.are.equal(200, s)
    v = json.decode(b)
    assert.are.equal(2, #v.windows)
    for _, win in ipairs(v.windows) do
      assert.are.equal(10, win.value)
      assert.are.equal(3600, win["end"] - win.start)
    end
    -- Pages of 3 through the keys starting with "k", once they are checkpointed.
    local seen = {}
    assert.is_truthy(eventually(30, function()
      seen = {}
      local after = ""
      for _ = 1, 10 do
        local _, _, pb = get(web .. "/tables/counts?prefix=k&limit=3&after=" .. after)
        local page = json.decode(pb)
        assert.is_true(#page.items <= 3)
        for _, it in ipairs(page.items) do seen[#seen + 1] = it.key .. "=" .. it.value end
        if not page.next then break end
        after = page.next
      end
      return #seen == 7
    end), table.concat(seen, " "))
    table.sort(seen)
    assert.are.same({ "k0=10", "k1=10", "k2=10", "k3=10", "k4=10", "k5=10", "k6=10" }, seen)
    assert.are.equal(400, (get(web .. "/tables/counts?after=nonsense")))
    assert.are.equal(0, w:stop())
  end)
end)

describe("/topology and /agents", function()
  it("draw agents, topics, tables, sinks and repartitions as JSON, DOT and Mermaid; /agents shows counts and the last error", function()
    local w, web, broker = start(nil, { APP_ID = "webtopo-" .. uniq }, "web_topology.lua")
    local id = "webtopo-" .. uniq
    proc.produce_lines(broker, "orders", { '{"account":"a","amount":5}', '{"account":"boom","amount":1}' })
    local a
    assert.is_truthy(eventually(30, function()
      local _, _, b = get(web .. "/agents")
      a = {}
      for _, x in ipairs(json.decode(b)) do a[x.name] = x end
      return a.audit and a.audit.errors >= 2 and a.by_account.processed == 2
    end), w:output())
    -- audit failed on "boom" twice: the first attempt went to the retry topic, the second to the DLQ.
    assert.are.equal(1, a.audit.retries)
    assert.are.equal(1, a.audit.dead_letters)
    assert.matches("audit cannot take boom", a.audit.last_error.message)
    assert.matches("web_topology%.lua:%d+", a.audit.last_error.traceback)
    assert.are.equal(id .. "-audit-retry", a.audit.last_error.event.topic) -- the second attempt's
    assert.are.same({ "seen", "print" }, a.by_account.sinks)
    assert.are.equal("waiting", a.by_account.instances[1].state)

    local _, h, b = get(web .. "/topology")
    assert.are.equal("application/json", h["content-type"])
    local g = json.decode(b)
    local edges = {}
    for _, e in ipairs(g.edges) do edges[e.from .. " " .. e.kind .. " " .. e.to] = true end
    local rp = "topic:" .. id .. "-by_account-account-repartition"
    for _, e in ipairs {
      "topic:orders reads agent:by_account-account-repartitioner",
      "agent:by_account-account-repartitioner repartition " .. rp,
      rp .. " reads agent:by_account",
      "agent:by_account sink topic:seen",
      "agent:by_account sink sink:print",
      "agent:by_account writes table:totals",
      "agent:by_account writes table:per_minute",
      "table:totals changelog topic:" .. id .. "-totals-changelog",
      "topic:seen reads agent:audit",
      "agent:audit retry topic:" .. id .. "-audit-retry",
      "topic:" .. id .. "-audit-retry reads agent:audit",
      "agent:audit dead letters topic:" .. id .. "-audit-dlq",
    } do
      assert(edges[e], "missing edge " .. e .. " in " .. b)
    end
    local _, dh, dot = get(web .. "/topology?format=dot")
    assert.matches("graphviz", dh["content-type"])
    assert.matches('^digraph "' .. id:gsub("%p", "%%%0") .. '" {', dot)
    assert.matches('"agent:by_account" %-> "table:totals" %[label="writes"%];', dot)
    assert.matches('"table:per_minute" %[shape=cylinder, label="per_minute\\n%(tumbling window%)"%];', dot)
    local _, _, mm = get(web .. "/topology?format=mermaid")
    assert.matches("^flowchart LR\n", mm)
    assert.matches('%(%["by_account"%]%)', mm)
    assert.matches('%[%("totals"%)%]', mm)
    assert.are.equal(400, (get(web .. "/topology?format=png")))
    assert.are.equal(0, w:stop())
  end)
end)

describe("two workers in one group", function()
  it("answer a key the other one holds with a 307 to it, which leads to the right value", function()
    local app_id, input = "web-pair-" .. uniq, "in-pair-" .. uniq
    local broker, addr = proc.broker({ input, app_id .. "-counts-changelog", app_id .. "-hourly-changelog" }, 4)
    finally(function() broker:stop() end)
    -- Keys as Kafka's default partitioner (murmur2, Java's and Faust's) places
    -- them; kcat's own default is another one.
    local lines = {}
    for i = 1, 160 do lines[i] = "k" .. (i % 16) .. ":x" end
    local path = proc.write(proc.tmp .. "/pair-" .. uniq .. ".txt", table.concat(lines, "\n") .. "\n")
    local out, rc = proc.run(string.format("kcat -P -b %s -t %s -K: -X partitioner=murmur2_random -l %s", addr,
      q(input), q(path)))
    assert(rc == 0, out)
    local ws, webs = {}, {}
    for i = 1, 2 do
      ws[i] = proc.spawn(string.format("env APP_ID=%s IN=%s STORE=%s FSTREAM_BROKER=kafka://%s %s worker %s -l info",
        q(app_id), q(input), q(proc.tmp .. "/web-pair-store-" .. uniq .. "-" .. i), addr, proc.bin,
        q(proc.root .. "/spec/fixtures/web.lua")), "web-pair")
    end
    for i = 1, 2 do webs[i] = assert(ws[i]:wait_for("\n  web%s+(%S+)/\n", 30), ws[i]:output()) end
    finally(function() for _, w in ipairs(ws) do w:stop() end end)
    -- Both ready with two partitions each, every count in place, every worker announced.
    local function counted(web)
      local s, _, b = get(web .. "/tables/counts?limit=100")
      if s ~= 200 then return 0 end
      local n = 0
      for _, it in ipairs(json.decode(b).items) do n = n + it.value end
      return n
    end
    assert.is_truthy(eventually(60, function()
      for i = 1, 2 do
        local s, _, b = get(webs[i] .. "/readyz")
        if s ~= 200 or json.decode(b).partitions ~= 2 then return false end
      end
      return counted(webs[1]) + counted(webs[2]) == 160
    end), ws[1]:output() .. ws[2]:output())
    -- From each worker: its own keys answered, the other's redirected.
    for i = 1, 2 do
      local other = webs[3 - i]
      local redirected = 0
      for k = 0, 15 do
        local key = "k" .. k
        local s, h, b
        assert.is_truthy(eventually(30, function()
          s, h, b = get(webs[i] .. "/tables/counts/" .. key)
          return s == 200 or s == 307
        end), tostring(s) .. " " .. tostring(b))
        if s == 307 then
          redirected = redirected + 1
          assert.are.equal(other .. "/tables/counts/" .. key, h.location)
          local s2, _, b2 = get(h.location)
          assert.are.equal(200, s2)
          assert.are.equal(10, json.decode(b2).value)
        else
          assert.are.equal(10, json.decode(b).value)
        end
      end
      assert.is_true(redirected > 0 and redirected < 16, "redirected " .. redirected)
    end
    -- curl -L follows it.
    local body = proc.run(string.format("curl -s -L %s", q(webs[1] .. "/tables/hourly/k14")))
    local v = json.decode(body)
    assert.are.equal(2, #v.windows)
    assert.are.equal(10, v.windows[1].value)
  end)
end)

describe("the dashboard", function()
  local chromium = proc.run("command -v chromium"):match("%S+")

  it("is one page with no external resources, and its data endpoint has every panel", function()
    local env = { IN = "in-dash-" .. uniq }
    local w, web, broker = start(nil, env)
    local s, h, page = get(web .. "/")
    assert.are.equal(200, s)
    assert.matches("text/html", h["content-type"])
    assert.matches("<canvas id=\"chart\"", page)
    -- Nothing fetched from elsewhere: no src=/href= to another host, no @import.
    assert.is_nil(page:match("src=\"http") or page:match("href=\"http") or page:match("@import") or page:match("//cdn"))
    local words = {}
    for i = 1, 3000 do words[i] = "d" .. (i % 50) end
    send_words(broker, env.IN, words)
    local d
    assert.is_truthy(eventually(30, function()
      local _, _, b = get(web .. "/dashboard.json")
      d = json.decode(b)
      return #d.samples >= 3 and d.agents[1] and d.agents[1].processed == 3000
    end), w:output())
    assert.are.equal(4, #d.partitions)
    assert.are.equal("counts", d.tables[1].name)
    assert.is_true(d.samples[#d.samples].processed >= 3000)
    assert.are.equal(0, w:stop())
  end)

  it("loads in headless Chromium against a working worker: the chart shows throughput, no console errors", function()
    -- scripts/setup installs it (scripts/test runs setup first): a missing
    -- browser is a broken machine, not a reason to skip the dashboard's test.
    assert.is_truthy(chromium, "chromium is not installed (Debian's chromium package; scripts/setup installs it)")
    local env = { IN = "in-browser-" .. uniq, WEB_TOKEN = "dash-token" }
    local w, web, broker = start(nil, env)
    -- Events keep arriving while the page samples them.
    local lines = {}
    for i = 1, 20000 do lines[i] = "b" .. (i % 100) .. ":x" end
    local path = proc.write(proc.tmp .. "/browser-" .. uniq .. ".txt", table.concat(lines, "\n") .. "\n")
    local feeder = proc.spawn(string.format("for i in 1 2 3 4 5 6 7 8; do kcat -P -b %s -t %s -K: -l %s; sleep 0.5; done",
      broker, q(env.IN), q(path)), "feeder")
    assert.is_truthy(eventually(30, function()
      local _, _, b = get(web .. "/dashboard.json", { headers = { Authorization = "Bearer dash-token" } })
      local ok, d = pcall(json.decode, b)
      if not ok then return false end
      for i = 2, #d.samples do
        if d.samples[i].processed > d.samples[i - 1].processed then return true end
      end
      return false
    end), w:output())
    local url = web .. "/#token=dash-token"
    local flags = "--headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run "
      .. "--user-data-dir=" .. q(proc.tmp .. "/chromium-" .. uniq) .. " --window-size=1280,1000 "
      .. "--virtual-time-budget=4000 --enable-logging=stderr --v=0"
    local dom = proc.run(string.format("timeout 60 %s %s --dump-dom %s", chromium, flags, q(url)))
    local max = tonumber(dom:match('<canvas id="chart"[^>]-data%-max="([%d%.]+)"'))
    assert.is_truthy(max, dom)
    assert.is_true(max > 1, "the chart's largest value is " .. tostring(max))
    assert.matches('<span id="status" class="pill">ready</span>', dom)
    assert.matches("<td>count</td>", dom)
    -- The page's own errors: Chromium logs them as console messages.
    for line in dom:gmatch("[^\n]+") do
      assert.is_nil(line:match("CONSOLE%(") and line or line:match("Uncaught"), line)
    end
    local shot = (os.getenv("FSTREAM_BUILD") or (proc.root .. "/build")) .. "/dashboard.png"
    os.remove(shot)
    proc.run(string.format("timeout 60 %s %s --screenshot=%s %s", chromium, flags, q(shot), q(url)))
    local f = io.open(shot, "rb")
    assert.is_truthy(f, "no screenshot at " .. shot)
    assert.are.equal("\137PNG", f:read(4))
    f:close()
    feeder:stop()
    assert.are.equal(0, w:stop())
  end)
end)
