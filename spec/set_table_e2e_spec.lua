-- Set tables end to end (spec/fixtures/sets.lua on a standalone embedded
-- broker, a partitioned and a global set table fed the same operations): one
-- changelog record per member operation, `fstream-lua table` and the web
-- server show the sets, and the changelog compacted by hand (the last record
-- of every Kafka key, as a compacted topic keeps) holds the same sets.
local proc = require "spec.support.proc"
local json = require("fstream.core").json

local bin, fixtures = proc.bin, proc.root .. "/spec/fixtures"
local uniq = tostring(os.time()) .. "-" .. tostring(math.random(1e6))

-- Every record of a changelog, in offset order per partition:
-- { {partition=, offset=, key = decoded key, value = bytes | nil (a tombstone)}, ... }
local function changelog(addr, topic)
  local out = proc.run(string.format(
    "kcat -C -b %s -t %s -o beginning -e -q -Z -f '%%p\\t%%o\\t%%S\\t%%k\\t%%s\\n' 2>/dev/null", addr, proc.quote(topic)))
  local records = {}
  for line in out:gmatch("[^\n]+") do
    local p, o, size, k, v = line:match("^(%d+)\t(%d+)\t(%-?%d+)\t([^\t]*)\t(.*)$")
    if p then
      records[#records + 1] = { partition = tonumber(p), offset = tonumber(o), key = json.decode(k),
        value = tonumber(size) >= 0 and v or nil }
    end
  end
  table.sort(records, function(a, b)
    if a.partition ~= b.partition then return a.partition < b.partition end
    return a.offset < b.offset
  end)
  return records
end

-- The sets a compacted changelog holds: only the last record of each Kafka key counts.
local function sets_after_compaction(records)
  local last = {}
  for _, r in ipairs(records) do last[json.encode(r.key)] = r end
  local sets = {}
  for _, r in pairs(last) do
    if r.value then
      local k, m = r.key[1], r.key[2]
      sets[k] = sets[k] or {}
      table.insert(sets[k], m)
    end
  end
  for _, l in pairs(sets) do table.sort(l, function(a, b) return tostring(a) < tostring(b) end) end
  return sets
end

local function sorted(rows)
  for _, l in pairs(rows) do table.sort(l, function(a, b) return tostring(a) < tostring(b) end) end
  return rows
end

describe("a set table on a standalone embedded broker", function()
  local broker, addr
  setup(function() broker, addr = proc.broker({}, 4) end)
  teardown(function() broker:stop() end)

  it("changelogs each member operation once, shows the sets offline and rebuilds them from the changelog", function()
    local env = { APP_ID = "sets-" .. uniq, IN = "sets-in-" .. uniq, OUT = "sets-out-" .. uniq }
    local settings = string.format("APP_ID=%s IN=%s OUT=%s", env.APP_ID, env.IN, env.OUT)
    local cl = env.APP_ID .. "-tags-changelog"
    local store = proc.tmp .. "/sets-store-" .. uniq
    proc.create_topics(addr, env.IN, env.OUT)
    local function start()
      return proc.spawn(string.format("env %s %s worker %s/sets.lua --broker kafka://%s --store lmdb://%s -l info",
        settings, bin, fixtures, addr, store), "worker-sets")
    end

    -- A hot key gets 50 members, other keys a few; adds repeated within a checkpoint.
    local lines = {}
    for i = 1, 50 do lines[#lines + 1] = 'hot\t{"add":"m' .. i .. '"}' end
    for i = 1, 50 do lines[#lines + 1] = 'hot\t{"add":"m' .. i .. '"}' end
    for _, k in ipairs { "a", "b", "c" } do
      lines[#lines + 1] = k .. '\t{"add":1}'
      lines[#lines + 1] = k .. '\t{"add":"' .. k .. '"}'
    end
    proc.produce_lines(addr, env.IN, lines, { key_delim = "\t" })
    local w = start()
    assert.are.equal(56, proc.wait_messages(addr, cl, 56, 60), w:output())
    proc.sleep(1) -- no further record comes: the repeated adds were absorbed by the record cache
    assert.are.equal(56, proc.count_messages(addr, cl))
    local before = {}
    for _, r in ipairs(changelog(addr, cl)) do before[r.partition .. "@" .. r.offset] = true end

    -- One more member and one fewer: two records, not the hot key's 50-member set.
    proc.produce_lines(addr, env.IN, { 'hot\t{"add":"m51"}', 'hot\t{"discard":"m1"}', 'b\t{"discard":1}',
      'c\t{"discard":"c"}', 'c\t{"discard":1}' }, { key_delim = "\t" })
    assert.are.equal(61, proc.wait_messages(addr, cl, 61, 60), w:output())
    proc.sleep(1)
    local records = changelog(addr, cl)
    assert.are.equal(61, #records)
    local tail = {}
    for _, r in ipairs(records) do
      if not before[r.partition .. "@" .. r.offset] then tail[#tail + 1] = json.encode(r.key) .. "=" .. tostring(r.value) end
    end
    table.sort(tail)
    assert.are.same({ '["b",1]=nil', '["c","c"]=nil', '["c",1]=nil', '["hot","m1"]=nil', '["hot","m51"]=true' }, tail)

    -- Read by the worker: what LMDB has overlaid with operations not checkpointed yet.
    proc.produce_lines(addr, env.IN, { 'hot\t{"add":"m52"}', 'hot\t{"discard":"m2"}', 'hot\t{"check":"m3"}',
      'hot\t{"check":"m2"}', 'zed\t{"check":"m2"}' }, { key_delim = "\t" })
    local checked = proc.wait_count(addr, env.OUT, 3, 60)
    assert.are.equal(3, #checked, w:output())
    local hot = {}
    for i = 3, 52 do hot[#hot + 1] = "m" .. i end
    table.sort(hot)
    assert.are.same({ members = hot, n = 50, has = true, global = hot }, json.decode(checked[1]))
    assert.are.same({ members = hot, n = 50, has = false, global = hot }, json.decode(checked[2]))
    assert.are.same({ members = {}, n = 0, has = false, global = {} }, json.decode(checked[3]))
    assert.are.equal(63, proc.wait_messages(addr, cl, 63, 60), w:output())
    -- The web server answers a set as its members.
    local web = w:output():match("web%s+(http://[%d%.:]+)/")
    assert.truthy(web, w:output())
    local body = proc.run(string.format("curl -s %s/tables/tags/hot", web))
    assert.are.same({ table = "tags", key = "hot", partition = json.decode(body).partition, value = hot }, json.decode(body))
    assert.matches("404", proc.run(string.format("curl -s -o /dev/null -w '%%{http_code}' %s/tables/tags/zed", web)))

    -- A clean stop writes each partition's last entry once more (where its
    -- input resumes, for the next owner): the same value, nothing changes.
    assert.are.equal(0, w:stop())
    records = changelog(addr, cl)
    local want = { a = { 1, "a" }, b = { "b" }, hot = {} }
    for i = 3, 52 do table.insert(want.hot, "m" .. i) end
    sorted(want)
    local app = fixtures .. "/sets.lua"
    assert.are.same(want, sorted(proc.table_rows(settings, app, "tags", store)))
    assert.are.same(want, sorted(proc.table_rows(settings, app, "gtags", store)))
    assert.are.same(want, sets_after_compaction(records))
    assert.are.same(want, sets_after_compaction(changelog(addr, env.APP_ID .. "-gtags-changelog")))
    -- --key: one set.
    local out, rc = proc.run(string.format("env %s %s table %s tags --key a --store lmdb://%s 2>&1", settings, bin, app, store))
    assert.are.equal(0, rc, out)
    local row = json.decode(out:match("[^\n]+"))
    assert.are.same({ 1, "a" }, row.value)
    assert.are.equal("a", row.key)

    -- Local files gone: the worker replays the changelog into the same sets.
    out, rc = proc.run(string.format("env %s %s reset %s --store lmdb://%s", settings, bin, app, store))
    assert.are.equal(0, rc, out)
    assert.are.same({}, proc.table_rows(settings, app, "tags", store))
    assert.are.same({}, proc.table_rows(settings, app, "gtags", store))
    w = start()
    assert.truthy(w:wait_for("recovered table tags", 60), w:output())
    proc.sleep(1)
    assert.are.equal(0, w:stop())
    assert.are.same(want, sorted(proc.table_rows(settings, app, "tags", store)))
    assert.are.same(want, sorted(proc.table_rows(settings, app, "gtags", store)))
  end)
end)
