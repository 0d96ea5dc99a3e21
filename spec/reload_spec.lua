-- Hot reload: a worker keeps running, and keeps its state, while its script
-- changes under it (fstream-lua worker app.lua --reload, or SIGHUP).
local proc = require "spec.support.proc"
local json = require("fstream.core").json

local bin = proc.bin
local uniq = os.time() .. "-" .. math.random(1000000)

-- How many times the log matches pattern.
local function occurrences(text, pattern)
  local n = 0
  for _ in text:gmatch(pattern) do n = n + 1 end
  return n
end

-- Waits until the worker's log matches pattern `count` times.
local function wait_occurrences(w, pattern, count, timeout)
  local deadline = os.time() + (timeout or 60)
  repeat
    if occurrences(w:output(), pattern) >= count then return true end
    if not w:alive() then return false end
    proc.sleep(0.1)
  until os.time() > deadline
  return false
end

-- The app: `numbers` counts every input number per bucket (its key) in a table
-- and sends "<version>|<n>" (v1: "v1:<n>") to OUT.
local HEAD = [[
local fstream = require "fstream"
local app = fstream.app(os.getenv("APP_ID"), { topic_partitions = 4, commit_interval = 0.5 })
local input = app:topic(os.getenv("IN"), { key_serializer = "raw", value_serializer = "raw" })
local out = app:topic(os.getenv("OUT"), { value_serializer = "raw" })
local counts = app:table("counts", { default = 0 })
]]

local function numbers_agent(format)
  return string.format([[
app:agent("numbers", input, function(stream)
  for key, n in stream:items() do
    counts[key] = counts[key] + 1
    out:send { value = %s }
  end
end)
]], format)
end

local EVENS = [[
local evens = app:table("evens", { default = 0 })
app:agent("evens", input, function(stream)
  for key, n in stream:items() do
    if tonumber(n) %% 2 == 0 then
      evens[key] = evens[key] + 1
      out:send { value = "%s-even|" .. n }
    end
  end
end)
]]

local SIDE = [[
local side = app:topic(os.getenv("SIDE"), { value_serializer = "raw" })
app:agent("side", side, function(stream)
  for v in stream do out:send { value = "%s-side|" .. v } end
end)
]]

local VERSIONS = {
  -- v1 takes its output format from a module next to the script
  HEAD .. numbers_agent([[require("fmt").tag .. n]]),
  -- the output format changes: only the module is rewritten
  'return { tag = "v2|" }',
  -- an agent is added, with a table
  HEAD .. numbers_agent([["v3|" .. n]]) .. EVENS:format("v3"),
  -- a topic is added (read by a new agent): the subscription changes
  HEAD .. numbers_agent([["v4|" .. n]]) .. EVENS:format("v4") .. SIDE:format("v4"),
  -- a syntax error (the send lacks its closing brace)
  HEAD .. numbers_agent([["v5|" .. n]]):gsub("n }", "n"),
  -- fixed
  HEAD .. numbers_agent([["v6|" .. n]]) .. EVENS:format("v6") .. SIDE:format("v6"),
}

-- Rewrites the agent five times under load, on the standalone broker at addr,
-- or (addr nil) on the worker's own embedded broker (memory://), where the
-- worker assigns itself its partitions and a new topic is assigned the same way.
local function rewrite_five_times(addr, tag)
  local dir = proc.tmp .. "/reload-" .. tag .. uniq
  os.execute("mkdir -p " .. proc.quote(dir))
  local env = { APP_ID = "rl-" .. tag .. uniq, IN = "rl-in-" .. uniq, OUT = "rl-out-" .. uniq, SIDE = "rl-side-" .. uniq }
  if addr then proc.create_topics(addr, env.IN, env.OUT) end
  local script = dir .. "/app.lua"
  proc.write(script, VERSIONS[1])
  proc.write(dir .. "/fmt.lua", 'return { tag = "v1:" }')
  local store = dir .. "/store"
  local vars = {}
  for k, v in pairs(env) do vars[#vars + 1] = k .. "=" .. proc.quote(v) end
  local w = proc.spawn(string.format("env %s %s worker %s --reload -l debug --broker %s --store lmdb://%s",
    table.concat(vars, " "), bin, proc.quote(script), addr and "kafka://" .. addr or "memory://", proc.quote(store)),
    "worker-reload")
  addr = addr or w:wait_for("listening on ([%d%.]+:%d+)", 20)
  assert.truthy(addr, w:output())
  assert.truthy(w:wait_for("assigned 4 partitions", 30), w:output())

  -- Numbered messages keyed by bucket (n % 10), about 400/s until told to stop.
  local stop = dir .. "/stop-load"
  local load = proc.spawn(string.format(
    "i=0; while [ ! -e %s ]; do i=$((i+1)); echo \"b$((i %% 10)):$i\"; " ..
    "if [ $((i %% 20)) = 0 ]; then sleep 0.05; fi; done | kcat -P -b %s -t %s -K:",
    proc.quote(stop), addr, proc.quote(env.IN)), "load")

  local reloads = 0
  local function install(k, how)
    proc.sleep(1.5)
    if k == 2 then
      proc.write(dir .. "/fmt.lua", VERSIONS[2])
    elseif how == "rename" then
      -- An editor that writes a new file and renames it over the old one.
      proc.write(dir .. "/.app.lua.tmp", VERSIONS[k])
      assert(os.rename(dir .. "/.app.lua.tmp", script))
    else
      proc.write(script, VERSIONS[k])
    end
  end
  for k = 2, 6 do
    install(k, k == 3 and "rename" or nil)
    if k == 5 then
      assert.truthy(w:wait_for("reload of [^\n]*app%.lua failed, still running the previous version: [^\n]*app%.lua:%d+: '}' expected", 20), w:output())
    else
      reloads = reloads + 1
      assert.truthy(wait_occurrences(w, "reloaded [^\n]*app%.lua in %d+ ms", reloads, 30), w:output())
    end
    if k == 4 then
      -- The new topic is read once the group has rebalanced onto it (eager:
      -- every partition again; cooperative, the default: the new ones).
      assert.truthy(wait_occurrences(w, "assigned [48] partitions", 2, 30), w:output())
      proc.produce_lines(addr, env.SIDE, { "s1", "s2", "s3" })
    end
  end
  proc.sleep(1.5)
  proc.write(stop, "")
  assert.is_not_nil(load:wait(10))
  local n = proc.count_messages(addr, env.IN)
  assert.is_true(n > 1000, "the load produced only " .. n .. " messages")

  -- Every number processed at least once, by an identifiable version.
  local seen, by_version = {}, {}
  local deadline = os.time() + 60
  local outputs
  repeat
    proc.sleep(0.5)
    outputs = proc.consume_all(addr, env.OUT)
    seen = {}
    for _, v in ipairs(outputs) do
      local ver, num = v:match("^(v%d)[:|](%d+)$")
      if ver then seen[tonumber(num)] = ver end
    end
    local missing = 0
    for i = 1, n do if not seen[i] then missing = missing + 1 end end
  until missing == 0 or os.time() > deadline
  assert.are.equal(0, w:stop())
  local missing = {}
  for i = 1, n do if not seen[i] then missing[#missing + 1] = i end end
  assert.are.same({}, missing)
  local side = {}
  for _, v in ipairs(outputs) do
    local ver = v:match("^(v%d)[:|]")
    if ver then by_version[ver] = (by_version[ver] or 0) + 1 end
    local sv = v:match("^v[46]%-side|(s%d)$")
    if sv then side[sv] = true end
    assert.is_nil(v:match("^v5"), "the broken version ran: " .. v)
  end
  for _, ver in ipairs { "v1", "v2", "v3", "v4", "v6" } do
    assert.is_true((by_version[ver] or 0) > 0, "no output of " .. ver)
  end
  assert.are.same({ s1 = true, s2 = true, s3 = true }, side)
  local evens = 0
  for _, v in ipairs(outputs) do if v:match("^v[346]%-even|") then evens = evens + 1 end end
  assert.is_true(evens > 0, "the added agent never ran")

  -- Within a bucket (one partition, in order) versions only move forward.
  local last = {}
  for i = 1, n do
    local b = i % 10
    assert.is_true(seen[i] >= (last[b] or "v1"), "number " .. i .. " went back to " .. seen[i])
    last[b] = seen[i]
  end

  -- The table counted each number exactly once across the reloads.
  local out, rc = proc.run(string.format("env %s %s table %s counts --store lmdb://%s 2>/dev/null",
    table.concat(vars, " "), bin, proc.quote(script), proc.quote(store)))
  assert.are.equal(0, rc, out)
  local counts, expected = {}, {}
  for line in out:gmatch("[^\n]+") do
    local row = json.decode(line)
    counts[row.key] = row.value
  end
  for i = 1, n do expected["b" .. i % 10] = (expected["b" .. i % 10] or 0) + 1 end
  assert.are.same(expected, counts)
  -- The table added by a reload has its own LMDB files and changelog.
  out, rc = proc.run(string.format("env %s %s table %s evens --store lmdb://%s 2>/dev/null",
    table.concat(vars, " "), bin, proc.quote(script), proc.quote(store)))
  assert.are.equal(0, rc, out)
  local even_total = 0
  for line in out:gmatch("[^\n]+") do
    local row = json.decode(line)
    assert.is_not_nil(row.key:match("^b[02468]$"), line)
    even_total = even_total + row.value
  end
  assert.are.equal(evens, even_total)
  assert.are.equal(4, occurrences(w:output(), "reloaded [^\n]*app%.lua in %d+ ms"))
end

describe("hot reload on the embedded broker (memory://)", function()
  it("rewrites the agent five times under load: no gap, each output's version known, exact table counts, the broken version never runs", function()
    rewrite_five_times(nil, "mem-")
  end)
end)

describe("hot reload on a standalone embedded broker", function()
  local broker, addr
  setup(function() broker, addr = proc.broker({}, 4) end)
  teardown(function() broker:stop() end)

  it("rewrites the agent five times under load: no gap, each output's version known, exact table counts, the broken version never runs", function()
    rewrite_five_times(addr, "")
  end)

  -- A window that is open when the worker reloads closes once, afterwards, with
  -- the updates of both versions; a timer keeps its rhythm; a change that cannot
  -- be applied live, and a script that fails at its top level, leave the old
  -- version running.
  it("reloads on SIGHUP, carries an open window and a timer over, and refuses what it cannot apply", function()
    local dir = proc.tmp .. "/reload-w-" .. uniq
    os.execute("mkdir -p " .. proc.quote(dir))
    local env = { APP_ID = "rlw-" .. uniq, IN = "rlw-in-" .. uniq, OUT = "rlw-out-" .. uniq }
    proc.create_topics(addr, env.IN, env.OUT)
    local function version(v, opts)
      return string.format([[
local fstream = require "fstream"
local app = fstream.app(os.getenv("APP_ID"), { topic_partitions = 4, commit_interval = 0.5 })
local input = app:topic(os.getenv("IN"), { key_serializer = "raw" })
local out = app:topic(os.getenv("OUT"), { value_serializer = "raw" })
%s
local views = app:table("views", { default = 0, partitions = %d,
  on_window_close = function(key, w, value)
    out:send { value = string.format("%s close %%s %%d %%d", key, w.start, value) }
  end }):tumbling(10):relative_to_field("ts")
app:agent("views", input, function(stream)
  for key, ev in stream:items() do
    views:update(key, function(n) return n + 1 end)
    out:send { value = "%s event " .. ev.n }
  end
end)
app:timer(1.0, function() out:send { value = string.format("%s tick %%.3f", app.rt:now()) } end)
]], opts.top or "", opts.partitions or 4, v, v, v)
    end
    local script = dir .. "/app.lua"
    proc.write(script, version("v1", {}))
    local vars = {}
    for k, v in pairs(env) do vars[#vars + 1] = k .. "=" .. proc.quote(v) end
    -- No --reload: only SIGHUP reloads.
    local w = proc.spawn(string.format("env %s %s worker %s --broker kafka://%s --store lmdb://%s",
      table.concat(vars, " "), bin, proc.quote(script), addr, proc.quote(dir .. "/store")), "worker-reload-w")
    assert.truthy(w:wait_for("assigned 4 partitions", 30), w:output())
    local function events(from, to, ts)
      local lines = {}
      for i = from, to do lines[#lines + 1] = string.format('a:{"n":%d,"ts":%d}', i, ts) end
      proc.produce_lines(addr, env.IN, lines, { key_delim = ":" })
    end
    local function outputs() return proc.consume_all(addr, env.OUT) end
    local function wait_output(pattern, timeout)
      local deadline = os.time() + (timeout or 20)
      repeat
        for _, v in ipairs(outputs()) do if v:match(pattern) then return true end end
        proc.sleep(0.2)
      until os.time() > deadline
      return false
    end
    -- Window [1000, 1010) gets 5 events from v1.
    events(1, 5, 1003)
    assert.truthy(wait_output("^v1 event 5$"), table.concat(outputs(), "\n"))
    proc.sleep(2.2) -- two ticks of v1

    proc.write(script, version("v2", {}))
    proc.sleep(0.5) -- without --reload the change alone does nothing
    assert.is_nil(w:output():match("reloaded"))
    w:signal("HUP")
    assert.truthy(w:wait_for("reloaded [^\n]*app%.lua in %d+ ms", 20), w:output())
    -- 5 more in the same window, from v2; then stream time moves past its end.
    events(6, 10, 1007)
    assert.truthy(wait_output("^v2 event 10$"), table.concat(outputs(), "\n"))
    proc.sleep(2.2)

    -- Refused: the table's partitions change. Failing: an error at the top level.
    proc.write(script, version("v3", { partitions = 8 }))
    w:signal("HUP")
    assert.truthy(w:wait_for("reload of [^\n]*failed, still running the previous version: table views changed", 20), w:output())
    proc.write(script, version("v4", { top = 'local config = nil\nlocal port = config.port' }))
    w:signal("HUP")
    assert.truthy(w:wait_for("still running the previous version: error while loading [^\n]*app%.lua: [^\n]*app%.lua:6: attempt to index a nil value", 20), w:output())
    events(11, 11, 1030)
    assert.truthy(wait_output("^v2 close a 1000 10$"), table.concat(outputs(), "\n"))
    proc.sleep(1)
    assert.are.equal(0, w:stop())

    local all = outputs()
    local closes, ticks = {}, {}
    for _, v in ipairs(all) do
      assert.is_nil(v:match("^v[34]"), "a refused version ran: " .. v)
      if v:match(" close ") then closes[#closes + 1] = v end
      local ver, t = v:match("^(v%d) tick ([%d%.]+)$")
      if t then ticks[#ticks + 1] = { ver, tonumber(t) } end
    end
    -- Closed once, by the new version, with the value both versions built.
    assert.are.same({ "v2 close a 1000 10" }, closes)
    -- Ticks about a second apart throughout: none lost or doubled by the reload.
    table.sort(ticks, function(x, y) return x[2] < y[2] end)
    assert.is_true(#ticks >= 4, #ticks .. " ticks")
    local saw = {}
    for i, t in ipairs(ticks) do
      saw[t[1]] = true
      if i > 1 then
        local gap = t[2] - ticks[i - 1][2]
        assert.is_true(gap > 0.5 and gap < 1.6, string.format("ticks %.3f s apart around %s", gap, t[1]))
      end
    end
    assert.is_true(saw.v1 and saw.v2, "ticks from both versions")
  end)
end)
