-- Pattern topics: app:topic{pattern = "^events-.*"} reads every topic of the
-- broker whose name matches, including topics created after the worker
-- started, on the worker's own embedded broker (memory://, self-assigned) and
-- on a standalone one (`fstream-lua broker`, a real consumer group).
local fstream = require "fstream"
local proc = require "spec.support.proc"

local bin, q = proc.bin, proc.quote
local uniq = tostring(os.time()) .. "-" .. tostring(math.random(1e6))

describe("a pattern topic's declaration", function()
  it("is a POSIX extended regular expression, checked where it is declared", function()
    local app = fstream.app("pat-decl")
    local ok, err = pcall(function() app:topic { pattern = "^events-(" } end)
    assert.is_false(ok)
    assert.matches("pattern_spec.lua:%d+: topic pattern: bad regular expression '%^events%-%(': ", err)
    assert.has_error(function() app:topic { pattern = "" } end,
      'topic pattern must be a non-empty string: a POSIX extended regular expression such as "^events-.*"')
    assert.has_error(function() app:topic { pattern = "^e", partitions = 4 } end,
      "topic pattern '^e': no partitions option (the matching topics exist and keep theirs)")
    assert.has_error(function() app:topic { pattern = "^e", refresh = 0 } end,
      "topic pattern '^e': refresh must be a number of seconds from 0.1 to 3600")
    assert.has_error(function() app:topic("events", { pattern = "^e" }) end)
    -- The same pattern twice is the same object; with other serializers an error.
    local p = app:topic(nil, { pattern = "^x-", value_serializer = "raw" })
    assert.are.equal(p, app:topic { pattern = "^x-", value_serializer = "raw" })
    assert.has_error(function() app:topic { pattern = "^x-" } end,
      "topic pattern '^x-' is already declared with other serializers, types or refresh")
  end)

  it("matches names, but not Kafka's internal topics nor the app's own derived ones", function()
    local app = fstream.app("pat-match")
    local p = app:topic { pattern = "events" }
    assert.is_true(p:matches("events-1"))
    assert.is_true(p:matches("my-events"))     -- unanchored: ^ and $ anchor
    assert.is_false(p:matches("evnts"))
    assert.is_false(p:matches("__events"))
    assert.is_false(p:matches("pat-match-events-changelog"))
    assert.is_false(p:matches("pat-match-events-dlq"))
    assert.is_true(p:matches("pat-match-events"))
    local anchored = app:topic { pattern = "^events-[0-9]+$" }
    assert.is_true(anchored:matches("events-12"))
    assert.is_false(anchored:matches("events-12x"))
    assert.is_false(anchored:matches("old-events-12"))
  end)

  it("cannot be sent to", function()
    local app = fstream.app("pat-send", { broker = "memory://" })
    local p = app:topic { pattern = "^events-" }
    app:agent("a", p, function(stream) for _ in stream do end end)
    local err
    app:task(function()
      local ok, e = pcall(function() p:send { value = 1 } end)
      err = not ok and e
    end)
    local t = fstream.testing(app)
    t:run()
    assert.matches("pattern_spec.lua:%d+: topic pattern '%^events%-' cannot be sent to %(it stands for many topics%): "
      .. 'send to one of them, app:topic%("NAME"%)', err)
    t:close()
  end)

  it("reads the matching topics the worker knows, each event with its real topic (in process)", function()
    local app = fstream.app("pat-inproc", { broker = "memory://" })
    local Reading = fstream.record("Reading", { v = "integer" })
    local a, b = app:topic("sensor-a"), app:topic("sensor-b", { value_type = Reading })
    app:topic("other")
    local got = {}
    app:agent("reader", app:topic { pattern = "^sensor-", value_type = Reading }, function(stream)
      for ev in stream:events() do got[#got + 1] = ev.topic .. "=" .. ev.value.v end
    end)
    local t = fstream.testing(app)
    t:send(a, { v = 1 })
    t:send(b, { v = 2 })
    t:send("other", { v = 3 })
    t:run()
    table.sort(got)
    assert.are.same({ "sensor-a=1", "sensor-b=2" }, got)
    assert.matches("reader <%- %^sensor%- %(pattern%)", app.agents.reader:describe())
    t:close()
  end)
end)

describe("a pattern topic's agents (in process)", function()
  it("send dead letters with the real topic, and group_by and app:stream read the matches", function()
    local app = fstream.app("pat-ops", { broker = "memory://" })
    local a = app:topic("ops-a")
    app:topic("ops-b")
    local pat = app:topic { pattern = "^ops-" }
    app:agent("fragile", pat, function(stream)
      for v in stream do if v.bad then error("bad value") end end
    end, { on_error = "dlq" })
    local by_user = {}
    app:agent("regroup", pat:group_by("user"), function(stream)
      for ev in stream:events() do by_user[#by_user + 1] = ev.key .. "@" .. ev.topic end
    end)
    local streamed = {}
    local s = app:stream(pat)
    app:task(function() for v in s do streamed[#streamed + 1] = v.user end end)
    local t = fstream.testing(app)
    t:send(a, { user = "u1" })
    t:send("ops-b", { user = "u2", bad = true })
    t:run()
    local dead = t:messages("pat-ops-fragile-dlq")
    assert.are.equal(1, #dead)
    assert.are.equal("ops-b", dead[1].headers["fstream-topic"])
    table.sort(by_user)
    assert.are.same({ "u1@pat-ops-regroup-user-repartition", "u2@pat-ops-regroup-user-repartition" }, by_user)
    table.sort(streamed)
    assert.are.same({ "u1", "u2" }, streamed)
    t:close()
  end)
end)

describe("a pattern's new match and the tables", function()
  local capture_stderr = require "spec.support.stderr"

  it("is read only with the tables' partition count, else refused once with both counts", function()
    local app = fstream.app("pat-tables", { broker = "memory://" })
    local counts = app:table("counts", { default = 0 })
    app:agent("count", app:topic { pattern = "^t-" }, function(stream)
      for v in stream do counts[v] = counts[v] + 1 end
    end)
    app:agent("forward", app:topic { pattern = "^t-" }, function(stream) for _ in stream do end end).no_tables = true
    -- As the running worker finds them: the tables have 8 partitions.
    app.partitions_resolved = true
    app.tables.counts.partitions = 8
    local added
    local log = capture_stderr(function() added = app:_discover { ["t-ok"] = 8, ["t-three"] = 3 } end)
    local got = {}
    for _, at in ipairs(added) do got[#got + 1] = at[1].name .. "<-" .. at[2].name end
    table.sort(got)
    -- The forwarder writes no table: it takes any count.
    assert.are.same({ "count<-t-ok", "forward<-t-ok", "forward<-t-three" }, got)
    assert.matches("topic pattern '%^t%-': t%-three has 3 partitions but agent count writes tables, which have 8 "
      .. "%(partition p of an input holds partition p of every table%): not read; give it 8 partitions", log)
    log = capture_stderr(function() added = app:_discover { ["t-ok"] = 8, ["t-three"] = 3 } end)
    assert.are.equal(0, #added)
    assert.are.equal("", log)
  end)
end)

-- The worker app: forwards every event of the pattern's topics to OUT as
-- "topic:value".
local APP = proc.write(proc.tmp .. "/patterns-" .. uniq .. ".lua", [[
local fstream = require "fstream"
local app = fstream.app(os.getenv("APP_ID"), { broker = "memory://", commit_interval = 0.5 })
local out = app:topic(os.getenv("OUT"), { value_serializer = "raw" })
local events = app:topic { pattern = os.getenv("PATTERN"), value_serializer = "raw", refresh = 0.2 }
app:agent("reader", events, function(stream)
  for ev in stream:events() do out:send { value = ev.topic .. ":" .. ev.value } end
end)
]])

local function lines(prefix, n)
  local t = {}
  for i = 1, n do t[i] = prefix .. i end
  return t
end

-- Produces to two topics created after the worker started (and to one that
-- does not match), and checks OUT holds exactly the matching ones' events.
local function late_topics_are_read(w, addr, name, out)
  local ta, tb, other = name .. "-a", name .. "-b", "nomatch-" .. name
  proc.produce_lines(addr, ta, lines("a", 30))
  proc.produce_lines(addr, other, lines("o", 5))
  assert.truthy(w:wait_for("agent reader reads " .. ta:gsub("%p", "%%%0"), 60), w:output())
  proc.produce_lines(addr, tb, lines("b", 20))
  local got = proc.wait_count(addr, out, 50, 60)
  table.sort(got)
  local want = {}
  for i = 1, 30 do want[#want + 1] = ta .. ":a" .. i end
  for i = 1, 20 do want[#want + 1] = tb .. ":b" .. i end
  table.sort(want)
  assert.are.same(want, got)
  assert.is_nil(w:output():match("reads " .. other:gsub("%p", "%%%0")))
end

describe("a pattern topic on a running worker", function()
  it("reads topics created after the start, on memory://", function()
    local name, out = "pm-" .. uniq, "pm-out-" .. uniq
    local w = proc.spawn(string.format("env -u FSTREAM_BROKER APP_ID=pm-%s OUT=%s PATTERN=%s %s worker %s --no-web -l info",
      uniq, out, q("^" .. name .. "-"), bin, q(APP)), "worker-pattern-mem")
    local addr = w:wait_for("listening on ([%d%.]+:%d+)", 20)
    assert.truthy(addr, w:output())
    assert.truthy(w:wait_for("worker started", 30), w:output())
    late_topics_are_read(w, addr, name, out)
    assert.matches("agents     reader <%- %^pm%-[%d%-]+%- %(pattern%)", w:output())
    assert.are.equal(0, w:stop())
  end)

  it("reads topics created after the start, on a standalone broker (a consumer group)", function()
    local name, out = "pb-" .. uniq, "pb-out-" .. uniq
    local broker, addr = proc.broker({ out }, 3)
    local w = proc.spawn(string.format("env APP_ID=pb-%s OUT=%s PATTERN=%s FSTREAM_BROKER=kafka://%s %s worker %s --no-web -l info --store lmdb://%s/pb-%s-data",
      uniq, out, q("^" .. name .. "-"), addr, bin, q(APP), proc.tmp, uniq), "worker-pattern-broker")
    assert.truthy(w:wait_for("worker started", 30), w:output())
    late_topics_are_read(w, addr, name, out)
    assert.are.equal(0, w:stop())
    broker:stop()
  end)
end)
