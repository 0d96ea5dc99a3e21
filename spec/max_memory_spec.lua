-- max_memory: the Lua state's allocator refuses to grow past the app's limit
-- while an agent runs (runtime/core/fs_mem.h). The agent gets "not enough
-- memory", its on_error policy applies, and everything else goes on.
local fstream = require "fstream"
local App = require "fstream.app"
local proc = require "spec.support.proc"
local capture_stderr = require "spec.support.stderr"

-- A limit this far above what the (busted) state holds now.
local function headroom(mib)
  collectgarbage()
  return math.floor(collectgarbage("count") * 1024) + mib * 1048576
end

local function hog_app(id, limit, policy, hogs)
  local a = fstream.app(id, { topic_partitions = 1, max_memory = limit })
  local src, dlq = a:topic("src"), nil
  local seen, other = {}, {}
  a:agent("hog", src, function(stream)
    for v in stream do
      if v == "hog" then
        local t = {}
        -- Bounded all the same (~100 MB): without a limit it ends with this error.
        while #t < 100000 do t[#t + 1] = string.rep("x", 1000) .. #t end
        error("allocated 100 MB and nothing stopped it")
      end
      seen[#seen + 1] = v
    end
  end, { on_error = policy })
  a:agent("other", src, function(stream)
    for v in stream do other[#other + 1] = v end
  end)
  if policy == "dlq" then dlq = a.agents.hog.dlq end
  return a, src, seen, other, dlq
end

describe("max_memory", function()
  local t
  after_each(function() if t then t:close(); t = nil end end)

  it("takes bytes or a size with a unit", function()
    assert.are.equal(268435456, App.parse_bytes("256MiB"))
    assert.are.equal(268435456, App.parse_bytes("256 M"))
    assert.are.equal(1500000000, App.parse_bytes("1.5GB"))
    assert.are.equal(512 * 1024, App.parse_bytes("512k"))
    assert.are.equal(4096, App.parse_bytes(4096))
    assert.are.equal(4096, App.parse_bytes("4096"))
    for _, bad in ipairs { "lots", "12 parsecs", -1, 0, "", "MiB", true } do
      assert.is_nil(App.parse_bytes(bad), tostring(bad))
    end
    assert.has_error(function() fstream.app("mm-bad", { max_memory = "lots" }) end,
      "app 'mm-bad': max_memory must be a positive number of bytes or a size like \"256MiB\" (got 'lots')")
    assert.are.equal(64 * 1048576, fstream.app("mm-ok", { max_memory = "64MiB" }).max_memory)
  end)

  it("refuses a limit below what the state already holds", function()
    local a = fstream.app("mm-low", { max_memory = 1024 })
    a:agent("x", a:topic("src"), function(stream) for _ in stream do end end)
    assert.has_error(function() t = fstream.testing(a) end)
    local ok, err = pcall(fstream.testing, fstream.app("mm-low2", { max_memory = 1024 }))
    assert.is_false(ok)
    assert.matches("max_memory %(1024 bytes%) is below what the Lua state holds already", err)
  end)

  for _, policy in ipairs { "log", "skip" } do
    it("stops an agent that allocates without bound (on_error = " .. policy .. "): the others go on", function()
      local limit = headroom(16)
      local a, src, seen, other = hog_app("mm-" .. policy, limit, policy)
      t = fstream.testing(a)
      for _, v in ipairs { "a", "hog", "b", "hog", "c" } do t:send(src, v) end
      local log = capture_stderr(function() t:run() end)
      -- The hog failed twice, came back each time and processed the rest.
      assert.are.same({ "a", "b", "c" }, seen)
      assert.are.same({ "a", "hog", "b", "hog", "c" }, other)
      local msg = string.format("agent hog failed: not enough memory: the Lua state reached max_memory %%(%d bytes", limit)
      local n = select(2, log:gsub(msg, ""))
      assert.are.equal(2, n, log)
      assert.are.equal(2, a.agents.hog.errors_by_policy[policy])
      local st = t.rt:stats()
      assert.are.equal(limit, st.max_memory)
      assert.is_true(st.memory_refused >= 2)
      -- The state is back under its limit once the hog's garbage is gone.
      collectgarbage()
      assert.is_true(t.rt:stats().lua_memory < limit)
    end)
  end

  it("sends the event the hog failed on to the dead-letter topic (on_error = dlq)", function()
    local limit = headroom(16)
    local a, src, seen, other = hog_app("mm-dlq", limit, "dlq")
    t = fstream.testing(a)
    for _, v in ipairs { "a", "hog", "b" } do t:send(src, v) end
    capture_stderr(function() t:run() end)
    assert.are.same({ "a", "b" }, seen)
    assert.are.same({ "a", "hog", "b" }, other)
    local dead = t:outputs(a.agents.hog.dlq)
    assert.are.equal(1, #dead)
    assert.are.equal('"hog"', dead[1]) -- the message as it came: JSON
  end)

  it("is lifted when the app's runtime closes: the next app is not limited", function()
    local limit = headroom(16)
    local a = hog_app("mm-first", limit, "log")
    t = fstream.testing(a)
    t:close(); t = nil
    local b = fstream.app("mm-second", { topic_partitions = 1 })
    local src, got = b:topic("src"), nil
    b:agent("big", src, function(stream)
      for _ in stream do
        local parts = {}
        for i = 1, 40000 do parts[i] = string.rep("y", 1000) .. i end -- ~40 MiB, past the old limit
        got = #parts
      end
    end)
    t = fstream.testing(b)
    t:send(src, "go")
    t:run()
    assert.are.equal(40000, got)
  end)
end)

describe("max_memory in a worker", function()
  it("logs which agent hit the limit and its value; the worker and its other agent go on", function()
    local uniq = tostring(os.time()) .. "-" .. tostring(math.random(1e6))
    local w = proc.spawn(string.format("env APP_ID=hog-%s IN=hog-in OUT=hog-out-%s MAX_MEMORY=24MiB %s worker %s/hog.lua "
      .. "-l info --store lmdb://%s/hog-%s-data", uniq, uniq, proc.bin, proc.root .. "/spec/fixtures", proc.tmp, uniq),
      "worker-hog")
    local addr = w:wait_for("listening on ([%d%.]+:%d+)", 20)
    assert.truthy(addr, w:output())
    assert.truthy(w:wait_for("assigned 2 partitions", 30), w:output())
    proc.produce_lines(addr, "hog-in", { "1", "2", "hog1", "3", "hog2", "4" })
    local out = proc.wait_count(addr, "hog-out-" .. uniq, 6, 30)
    assert.are.equal(6, #out, w:output())
    assert.are.equal(4, #proc.wait_count(addr, "hog-out", 4, 30), w:output())
    assert.is_true(w:alive())
    assert.are.equal(0, w:stop())
    local log = w:output()
    local n = select(2, log:gsub("agent hog failed: not enough memory: the Lua state reached max_memory %(25165824 bytes, 24%.0 MiB%)", ""))
    assert.are.equal(2, n, log)
  end)
end)

describe("max_memory and a value too big for it", function()
  local t
  after_each(function() if t then t:close(); t = nil end end)

  it("goes through on_error (dlq); the events taken with it are processed, none lost", function()
    local a = fstream.app("mm-big", { topic_partitions = 1, max_memory = headroom(8) })
    local src = a:topic("src", { value_serializer = "raw" })
    local seen = {}
    a:agent("reader", src, function(stream)
      for v in stream do seen[#seen + 1] = #v < 10 and v or ("<" .. #v .. " bytes>") end
    end, { on_error = "dlq" })
    t = fstream.testing(a)
    -- One batch: "a" is decoded, the 12 MiB value cannot be, "b" and "c" wait.
    for _, v in ipairs { "a", string.rep("z", 12 * 1048576), "b", "c" } do t:send(src, v) end
    local log = capture_stderr(function() t:run() end)
    assert.are.same({ "a", "b", "c" }, seen)
    local dead = t:outputs(a.agents.reader.dlq)
    assert.are.equal(1, #dead)
    assert.are.equal(12 * 1048576, #dead[1])
    assert.matches("agent reader: src%[0%]@1 sent to mm%-big%-reader%-dlq: not enough memory: the Lua state reached max_memory", log)
    -- Put back and taken again: the byte count of queued events is back to 0.
    local st = t.rt:stats()
    assert.are.equal(0, st.queued)
    assert.are.equal(0, st.queued_bytes)
  end)
end)

describe("the Lua state's small-block pool (runtime/core/fs_mem.c)", function()
  -- scripts/test --asan leaves the pool out, so that ASan sees every block.
  local asan = (os.getenv("LD_PRELOAD") or ""):find("libasan", 1, true) ~= nil
  local t
  after_each(function() if t then t:close(); t = nil end end)

  local function rss()
    local f = assert(io.open("/proc/self/statm"))
    local pages = tonumber(f:read("*a"):match("^%d+%s+(%d+)"))
    f:close()
    return pages * 4096
  end

  it("holds the state's small blocks and gives a slab's memory back once the collector empties it", function()
    -- max_memory wraps this (busted's) state's allocator: the pool serves it from then on
    local a = fstream.app("mm-pool", { topic_partitions = 1, max_memory = headroom(512) })
    a:agent("x", a:topic("src"), function(stream) for _ in stream do end end)
    t = fstream.testing(a)
    if asan then
      assert.is_nil(t.rt:stats().lua_pool_bytes)
      return
    end
    collectgarbage(); collectgarbage()
    local before = t.rt:stats().lua_pool_bytes
    assert.is_number(before)
    local junk = {}
    for i = 1, 200000 do junk[i] = { i, tostring(i) } end -- ~20 MB of tables, array parts, strings
    local full, rss_full = t.rt:stats().lua_pool_bytes, rss()
    assert.is_true(full > before + 12 * 1048576, string.format("%d -> %d", before, full))
    junk = nil
    collectgarbage(); collectgarbage()
    local after, rss_after = t.rt:stats().lua_pool_bytes, rss()
    -- what stays: the slabs the state uses and an eighth of that kept for reuse
    assert.is_true(after < before + 2 * 1048576, string.format("%d -> %d -> %d", before, full, after))
    assert.is_true(rss_after < rss_full - 10 * 1048576, string.format("RSS %d -> %d", rss_full, rss_after))
    -- and the pool serves again what it gave back
    local again = {}
    for i = 1, 1000 do again[i] = { i } end
    for i = 1, 1000 do assert.are.equal(i, again[i][1]) end
  end)
end)
