-- Standby replicas (app option standby_replicas) on a real Apache Kafka that
-- this spec starts and stops (scripts/kafka; the embedded and standalone
-- brokers cannot describe a group, which is how workers agree on standbys).
-- Two workers of spec/fixtures/standby.lua, each with its own store (two
-- hosts, as far as they can tell), count words on a 2-partition topic.
-- Checked from outside: each store, read offline with `fstream-lua table`,
-- holds the exact counts of every word — its own partition's and, through
-- the standby copy, the other's; after the owner of partition 0 is killed
-- with -9 the survivor takes it over replaying at most the changelog's tail
-- (its log's "recovered table word_counts[P]: N records"), and its counts are
-- exact.
local proc = require "spec.support.proc"
local eos = require "spec.support.eos"
local json = require("fstream.core").json

local port = os.getenv("FSTREAM_TEST_STANDBY_KAFKA_PORT") or "19770"
local dir = proc.tmp .. "/kafka-standby"
local fixture = proc.root .. "/spec/fixtures/standby.lua"

local function words(from, to)
  local lines = {}
  for i = from, to do
    local w = "w" .. (i % 300)
    lines[#lines + 1] = w .. ":" .. w
  end
  return lines
end

local function expected(from, to, into)
  into = into or {}
  for i = from, to do
    local w = "w" .. (i % 300)
    into[w] = (into[w] or 0) + 1
  end
  return into
end

-- The table as one worker's store holds it (offline, read-only: the worker
-- may be running).
local function rows(env, store)
  local out = proc.run(string.format("env APP_ID=%s %s table %s word_counts --store lmdb://%s 2>/dev/null",
    proc.quote(env.APP_ID), proc.bin, proc.quote(fixture), proc.quote(store)))
  local t = {}
  for line in out:gmatch("[^\n]+") do
    local ok, row = pcall(json.decode, line)
    if ok and type(row) == "table" and row.key then t[row.key] = row.value end
  end
  return t
end

local function differences(want, got)
  local bad = {}
  for k, v in pairs(want) do
    if got[k] ~= v then bad[#bad + 1] = string.format("%s: %s, not %d", k, tostring(got[k]), v) end
  end
  for k, v in pairs(got) do
    if not want[k] then bad[#bad + 1] = string.format("%s: %s, not absent", k, tostring(v)) end
  end
  table.sort(bad)
  return #bad, table.concat(bad, "; ", 1, math.min(#bad, 5))
end

-- Polls until the store's table is `want`; returns the number of differences and some.
local function wait_rows(env, store, want, timeout)
  local deadline = os.time() + timeout
  local n, some
  repeat
    n, some = differences(want, rows(env, store))
    if n == 0 then return 0 end
    proc.sleep(0.5)
  until os.time() > deadline
  return n, some
end

local function start(env, addr, store, name)
  local vars = {}
  for k, v in pairs(env) do vars[#vars + 1] = k .. "=" .. proc.quote(v) end
  return proc.spawn(string.format("env %s FSTREAM_BROKER=kafka://%s %s worker %s --no-web --store lmdb://%s -l info",
    table.concat(vars, " "), addr, proc.bin, proc.quote(fixture), proc.quote(store)), name)
end

-- The input partitions of the worker's latest assignment.
local function holds(w, topic)
  local last
  for line in w:output():gmatch("info  assigned [^\n]*") do last = line end
  local ps = {}
  for p in (last or ""):gmatch(topic:gsub("%-", "%%-") .. "%[(%d+)%]") do ps[tonumber(p)] = true end
  return ps
end

local function changelog_end(addr, topic, p)
  local out = proc.run(string.format("kcat -Q -b %s -t %s", addr, proc.quote(topic .. ":" .. p .. ":-1")))
  return tonumber(out:match("offset (%d+)")) or 0
end

describe("standby replicas on a real Kafka broker", function()
  local addr
  local spawned = {}
  proc.kafka_for(port, dir, function(a) addr = a end)
  after_each(function()
    for _, w in ipairs(spawned) do if w:alive() then w:signal("KILL") end end
    spawned = {}
  end)

  for _, guarantee in ipairs { "at_least_once", "exactly_once" } do
    it("keeps a current copy of the other worker's partition and takes it over replaying only the tail ("
      .. guarantee .. ")", function()
      local u = guarantee:sub(1, 3) .. "-" .. os.time() .. "-" .. math.random(1e6)
      local env = { APP_ID = "sb-" .. u, IN = "sb-in-" .. u, OUT = "sb-out-" .. u, GUARANTEE = guarantee,
        STANDBY = os.getenv("FSTREAM_TEST_STANDBY") or "1" }
      local changelog = env.APP_ID .. "-word_counts-changelog"
      local stores = { proc.tmp .. "/standby-" .. u .. "-a", proc.tmp .. "/standby-" .. u .. "-b" }
      local ws = {}
      for i = 1, 2 do
        ws[i] = start(env, addr, stores[i], "worker-standby")
        spawned[#spawned + 1] = ws[i]
        assert.truthy(ws[i]:wait_for("info  assigned", 90), ws[i]:output())
      end
      -- Both have one partition each once the second joined (it is assigned
      -- only what it gets, eagerly or incrementally).
      local deadline = os.time() + 60
      while not next(holds(ws[2], env.IN)) and os.time() < deadline do proc.sleep(0.5) end
      proc.produce_lines(addr, env.IN, words(1, 3000), { key_delim = ":" })
      local want = expected(1, 3000)
      assert.is_true(proc.wait_messages(addr, env.OUT, 3000, 120) >= 3000)
      -- Each store holds every word: its own partition's and the other's, copied.
      for i = 1, 2 do
        local n, some = wait_rows(env, stores[i], want, 60)
        assert(n == 0, string.format("worker %d's store: %d counts differ (%s)\n%s", i, n, tostring(some),
          ws[i]:output()))
      end
      -- Worker 1 held both before worker 2 joined: worker 2's assignment says who has 0.
      local owner = holds(ws[2], env.IN)[0] and 2 or 1
      local survivor = 3 - owner
      local before = #ws[survivor]:output()
      local records0 = changelog_end(addr, changelog, 0)
      ws[owner]:signal("KILL")
      assert.are.equal(137, ws[owner]:wait(10))
      proc.produce_lines(addr, env.IN, words(3001, 4000), { key_delim = ":" })
      expected(3001, 4000, want)
      -- The survivor counts partition 0's words again: exact counts in its store.
      local n, some = wait_rows(env, stores[survivor], want, 120)
      assert(n == 0, string.format("the survivor's store: %d counts differ (%s)\n%s", n, tostring(some),
        ws[survivor]:output()))
      local after = ws[survivor]:output():sub(before + 1)
      assert.matches("assigned %d+ partitions[^\n]*" .. env.IN:gsub("%-", "%%-") .. "%[0%]", after)
      -- It replayed at most the tail the copy had not seen, not partition 0's changelog.
      local replayed = eos.recovered(after, "word_counts")
      assert(records0 > 100, "partition 0's changelog holds " .. records0 .. " records")
      assert(replayed < records0 / 2, string.format("the survivor replayed %d records of %d:\n%s", replayed,
        records0, after))
      assert.matches("standby of table word_counts%[0%] closed at changelog offset %d+ %(this worker takes", after)
      assert.are.equal(0, ws[survivor]:stop())
      -- Nothing output twice under exactly-once (read_committed).
      if guarantee == "exactly_once" then
        local outs = proc.consume_all(addr, env.OUT)
        local seen, dups = {}, 0
        for _, v in ipairs(outs) do
          if seen[v] then dups = dups + 1 end
          seen[v] = true
        end
        assert.are.equal(0, dups)
        assert.are.equal(4000, #outs)
      end
    end)
  end
end)

describe("the standby_replicas option", function()
  local fstream = require "fstream"
  it("takes a non-negative integer", function()
    for _, bad in ipairs { -1, 1.5, "1" } do
      local ok, err = pcall(fstream.app, "sbx", { standby_replicas = bad })
      assert.is_false(ok)
      assert.matches("standby_replicas must be a non%-negative integer", err)
    end
    assert.are.equal(2, fstream.app("sbx", { standby_replicas = 2 }).standby_replicas)
    assert.are.equal(0, fstream.app("sbx", {}).standby_replicas)
  end)
end)
