-- Tables with a ttl through fstream.testing: the fake clock decides which keys
-- are idle, and exactly those are deleted. (The changelog's tombstones and a
-- restart are spec/ttl_e2e_spec.lua's.)
local fstream = require "fstream"
local Table = require "fstream.table"

local function keys_of(tb)
  local ks = {}
  for k in tb:items() do ks[#ks + 1] = k end
  table.sort(ks)
  return ks
end

describe("a table with a ttl", function()
  local t
  after_each(function() if t then t:close(); t = nil end end)

  local function sessions_app(id, ttl, opts)
    local a = fstream.app(id, { topic_partitions = opts and opts.partitions or 4, table_cleanup_interval = 1.0 })
    local clicks = a:topic("clicks", { value_serializer = "raw" })
    local last = a:table("last_click", { ttl = ttl })
    a:agent("track", clicks, function(stream)
      for user, page in stream:items() do last[user] = page end
    end)
    return a, clicks
  end

  it("expires exactly the keys not written for ttl seconds", function()
    local a, clicks = sessions_app("ttl1", 60)
    t = fstream.testing(a, { clock = 1000000 })
    for _, u in ipairs { "ann", "bob", "cid", "dan" } do t:send(clicks, { key = u, value = "home" }) end
    t:run()
    t:advance(30)
    t:send(clicks, { key = "bob", value = "cart" }) -- written at +30
    t:send(clicks, { key = "dan", value = "help" })
    t:run()
    t:advance(29) -- +59: nobody idle for 60 s yet
    assert.are.same({ "ann", "bob", "cid", "dan" }, keys_of(t:table("last_click")))
    t:advance(2) -- +61: ann and cid were last written at +0
    assert.are.same({ "bob", "dan" }, keys_of(t:table("last_click")))
    assert.is_nil(t:table("last_click"):get("ann"))
    assert.are.equal("cart", t:table("last_click").bob)
    t:send(clicks, { key = "dan", value = "again" }) -- written at +61
    t:run()
    t:advance(30) -- +91: bob idle 61 s, dan 30 s
    assert.are.same({ "dan" }, keys_of(t:table("last_click")))
    t:advance(31) -- +122
    assert.are.same({}, keys_of(t:table("last_click")))
  end)

  it("counts a read as no write, and a key written again after expiry lives again", function()
    local a = fstream.app("ttl2", { topic_partitions = 2 })
    local src = a:topic("src")
    local seen = a:table("seen", { ttl = 10, default = 0 })
    a:agent("count", src, function(stream)
      for k, v in stream:items() do
        if v == "read" then local _ = seen[k] else seen[k] = seen[k] + 1 end
      end
    end)
    t = fstream.testing(a, { clock = 5000 })
    t:send(src, { key = "x", value = "write" })
    t:run()
    for _ = 1, 5 do
      t:advance(2.5)
      t:send(src, { key = "x", value = "read" })
      t:run()
    end
    -- +12.5: only read since +0
    assert.are.same({}, keys_of(t:table("seen")))
    t:send(src, { key = "x", value = "write" })
    t:run()
    assert.are.equal(1, t:table("seen").x) -- starts again from the default
    t:advance(9)
    assert.are.equal(1, t:table("seen").x)
    t:advance(2)
    assert.are.same({}, keys_of(t:table("seen")))
  end)

  it("deletes at most a bounded number of keys per pass and finishes the rest in later passes", function()
    -- One partition: the bound is per partition and pass.
    local a, clicks = sessions_app("ttl3", 5, { partitions = 1 })
    t = fstream.testing(a, { clock = 2000000 })
    local n = Table.EXPIRE_BATCH * 2 + 10
    for i = 1, n do t:send(clicks, { key = "u" .. i, value = "p" }) end
    t:run()
    local tb = Table.state(t:table("last_click"))
    -- One pass by hand, as the task runs it once every key is due: a bounded step.
    local more, expired = Table._expire(tb, t:now() + 6)
    assert.is_true(more)
    assert.are.equal(Table.EXPIRE_BATCH, expired)
    t:advance(5.5)
    -- Every key is due; the passes went on right away until none was left.
    assert.are.same({}, keys_of(t:table("last_click")))
    assert.are.equal(n, tb.expired)
    assert.matches('\nfstream_table_expired_total{table="last_click"} ' .. n .. '\n',
      require("fstream.metrics").render(a))
  end)

  it("refuses a ttl that is not a positive number, on a global table and with windows", function()
    local a = fstream.app("ttl4")
    assert.has_error(function() a:table("x", { ttl = 0 }) end, "table 'x': ttl must be a positive number of seconds")
    assert.has_error(function() a:table("y", { ttl = "1h" }) end, "table 'y': ttl must be a positive number of seconds")
    assert.has_error(function() a:global_table("g", { ttl = 10 }) end,
      "table 'g': a global table cannot have a ttl (every worker holds it: which one would expire a key?)")
    local w = a:table("w", { ttl = 10 })
    assert.has_error(function() w:tumbling(60) end,
      "table 'w': a table with a ttl cannot be windowed (windows expire with `expires`)")
  end)

  it("shows the ttl in the table's description and keeps the value a Lua value", function()
    local a, clicks = sessions_app("ttl5", 3600)
    assert.matches("last_click %(4 partitions, ttl 3600 s, changelog ttl5%-last_click%-changelog%)",
      Table.describe(a.tables.last_click))
    t = fstream.testing(a)
    t:send(clicks, { key = "k", value = "v" })
    t:run()
    assert.are.equal("v", t:table("last_click").k)
  end)
end)
