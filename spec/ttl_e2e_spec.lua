-- Tables with a ttl end to end (spec/fixtures/ttl.lua on a standalone
-- embedded broker): the last write's time is in the stored and changelogged
-- value, so a restarted worker expires keys it never saw written; an expiry
-- reaches the changelog as a tombstone; and a worker rebuilt from the
-- changelog holds what `fstream-lua table` shows and what the changelog,
-- read independently with kcat, says.
local proc = require "spec.support.proc"
local json = require("fstream.core").json

local bin, fixtures = proc.bin, proc.root .. "/spec/fixtures"
local uniq = tostring(os.time()) .. "-" .. tostring(math.random(1e6))
local TTL = 2

-- A changelog read with kcat and compacted by hand (the last record of each
-- key, as a compacted topic keeps): key -> { ms = last write, value = decoded }
-- (nil when the last record is a tombstone); and the number of tombstones.
-- unstamped = true: values may be without a time (written before the table had a ttl).
local function compacted(addr, topic, unstamped)
  local stamped = not unstamped
  local out = proc.run(string.format(
    "kcat -C -b %s -t %s -o beginning -e -q -Z -f '%%p\\t%%o\\t%%S\\t%%k\\t%%s\\n' 2>/dev/null", addr, proc.quote(topic)))
  local records = {}
  for line in out:gmatch("[^\n]+") do
    local p, o, size, k, v = line:match("^(%d+)\t(%d+)\t(%-?%d+)\t([^\t]*)\t(.*)$")
    if p then records[#records + 1] = { p = tonumber(p), o = tonumber(o), key = json.decode(k), value = tonumber(size) >= 0 and v or nil } end
  end
  table.sort(records, function(a, b) return a.p < b.p or (a.p == b.p and a.o < b.o) end)
  local last, tombstones = {}, 0
  for _, r in ipairs(records) do
    if r.value then
      local ms, rest = r.value:match("^(%d+) (.*)$")
      assert(ms or not stamped, "a ttl table's changelog value starts with the write time: " .. r.value)
      last[r.key] = { ms = tonumber(ms), value = json.decode(rest or r.value) }
    else
      last[r.key] = nil
      tombstones = tombstones + 1
    end
  end
  return last, tombstones
end

local function values(rows)
  local out = {}
  for k, r in pairs(rows) do out[k] = r.value end
  return out
end

describe("a table with a ttl on a standalone embedded broker", function()
  local broker, addr
  setup(function() broker, addr = proc.broker({}, 4) end)
  teardown(function() broker:stop() end)

  it("expires idle keys after a restart with a tombstone, and a rebuilt worker agrees with the changelog", function()
    local env = { APP_ID = "ttl-" .. uniq, IN = "ttl-in-" .. uniq }
    local settings = string.format("APP_ID=%s IN=%s TTL=%d", env.APP_ID, env.IN, TTL)
    local app = fixtures .. "/ttl.lua"
    local short_cl, long_cl = env.APP_ID .. "-short-changelog", env.APP_ID .. "-long-changelog"
    local store = proc.tmp .. "/ttl-store-" .. uniq
    proc.create_topics(addr, env.IN)
    local function start()
      return proc.spawn(string.format("env %s %s worker %s --broker kafka://%s --store lmdb://%s -l info",
        settings, bin, app, addr, store), "worker-ttl")
    end
    local function rows(name) return proc.table_rows(settings, app, name, store) end

    -- 1. Five keys written, then the worker stops before they are idle long.
    local t0 = os.time()
    local w = start()
    proc.produce_lines(addr, env.IN, { "old1\thome", "old2\thome", "old3\tcart", "old4\thome", "old5\thelp" },
      { key_delim = "\t" })
    assert.are.equal(5, proc.wait_messages(addr, long_cl, 5, 60), w:output())
    assert.are.equal(0, w:stop())
    local long = compacted(addr, long_cl)
    assert.are.same({ old1 = "home", old2 = "home", old3 = "cart", old4 = "home", old5 = "help" }, values(long))
    for _, r in pairs(long) do
      assert.is_true(r.ms >= (t0 - 1) * 1000 and r.ms <= (os.time() + 1) * 1000, "write time " .. r.ms)
    end

    -- 2. After the ttl, a worker that never saw them written deletes them
    -- (the time came back with the stored values) with a tombstone each; the
    -- table with an hour's ttl keeps them.
    proc.sleep(TTL + 1)
    w = start()
    local short, tombstones
    for _ = 1, 200 do
      short, tombstones = compacted(addr, short_cl)
      if tombstones >= 5 then break end
      proc.sleep(0.3)
    end
    assert.are.equal(0, w:stop())
    assert.are.equal(5, tombstones, w:output())
    short = compacted(addr, short_cl)
    assert.are.same({}, values(short))
    assert.are.same({}, rows("short"))
    assert.are.same(values(compacted(addr, long_cl)), rows("long"))
    assert.are.equal(5, #(function() local l = {} for k in pairs(rows("long")) do l[#l + 1] = k end return l end)())

    -- 3. Local files gone, new input: the rebuilt worker holds what the changelog says.
    local out, rc = proc.run(string.format("env %s %s reset %s --store lmdb://%s", settings, bin, app, store))
    assert.are.equal(0, rc, out)
    w = start()
    proc.produce_lines(addr, env.IN, { "new1\ta", "new2\tb", "old1\tback" }, { key_delim = "\t" })
    local long_now
    for _ = 1, 200 do
      long_now = compacted(addr, long_cl)
      if long_now.new1 and long_now.new2 and long_now.old1.value == "back" then break end
      proc.sleep(0.3)
    end
    assert.are.equal(0, w:stop())
    assert.matches("recovered table short", w:output())
    local short_rows = rows("short")
    assert.are.same(values(compacted(addr, short_cl)), short_rows)
    -- Whatever of the new keys has not expired yet (the ttl is short): never an old one but old1.
    for k in pairs(short_rows) do assert.truthy(k == "new1" or k == "new2" or k == "old1", k) end
    local long_rows = rows("long")
    assert.are.same(values(compacted(addr, long_cl)), long_rows)
    assert.are.same({ old1 = "back", old2 = "home", old3 = "cart", old4 = "home", old5 = "help", new1 = "a", new2 = "b" },
      long_rows)
  end)

  it("gives keys written before the table had a ttl their ttl from the restart that adds it", function()
    local env = { APP_ID = "ttladd-" .. uniq, IN = "ttladd-in-" .. uniq }
    local app = fixtures .. "/ttl.lua"
    local short_cl = env.APP_ID .. "-short-changelog"
    local store = proc.tmp .. "/ttladd-store-" .. uniq
    proc.create_topics(addr, env.IN)
    local function start(ttl)
      return proc.spawn(string.format("env APP_ID=%s IN=%s TTL=%s %s worker %s --broker kafka://%s --store lmdb://%s -l info",
        env.APP_ID, env.IN, ttl, bin, app, addr, store), "worker-ttladd")
    end
    local w = start("none")
    proc.produce_lines(addr, env.IN, { "k1	v1", "k2	\"quoted value\"" }, { key_delim = "\t" })
    assert.are.equal(2, proc.wait_messages(addr, short_cl, 2, 60), w:output())
    assert.are.equal(0, w:stop())
    local settings = string.format("APP_ID=%s IN=%s TTL=%d", env.APP_ID, env.IN, TTL)
    assert.are.same({ k1 = "v1", k2 = '"quoted value"' }, proc.table_rows(settings, app, "short", store))
    w = start(TTL)
    local short, tombstones
    for _ = 1, 200 do
      short, tombstones = compacted(addr, short_cl, true)
      if tombstones >= 2 then break end
      proc.sleep(0.3)
    end
    assert.are.equal(0, w:stop())
    assert.are.equal(2, tombstones, w:output())
    assert.are.same({}, values(short))
    assert.are.same({}, proc.table_rows(settings, app, "short", store))
  end)
end)
