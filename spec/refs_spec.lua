-- Registry references the runtime holds for Lua values (coroutines, on_exit
-- handlers, stream buffers, the table hook) are counted: rt:stats().lua_refs.
-- Whatever dies or is replaced gives its references back, so the count
-- returns to where it was.
local fstream = require "fstream"
local proc = require "spec.support.proc"

describe("registry references (stats.lua_refs)", function()
  local t, other
  after_each(function()
    if t then t:close(); t = nil end
    if other then other:close(); other = nil end
  end)

  it("come back to their count after failing agents restart and timers fire", function()
    local app = fstream.app("refs1", { topic_partitions = 2 })
    local input = app:topic("in", { value_serializer = "raw" })
    local ticks = 0
    app:agent("fails", input, function(stream)
      for v in stream do
        if v == "boom" then error("boom") end
      end
    end, { on_error = "skip" })
    app:timer(1.0, function() ticks = ticks + 1 end)
    app:task(function() fstream.sleep(0.5) end)
    t = fstream.testing(app)
    t:run()
    t:advance(2)
    local before = t:stats().lua_refs
    assert.is_true(before > 0)
    for i = 1, 20 do
      t:send(input, i % 2 == 0 and "boom" or "fine")
      t:run()
    end
    t:advance(10)
    assert.is_true(ticks >= 12)
    assert.are.equal(before, t:stats().lua_refs)
  end)

  it("come back to their count when a runtime closes", function()
    local base_app = fstream.app("refs2a", { topic_partitions = 1 })
    base_app:agent("idle", base_app:topic("a"), function(stream) for _ in stream do end end)
    other = fstream.testing(base_app)
    other:run()
    local before = other:stats().lua_refs

    local app = fstream.app("refs2b", { topic_partitions = 2 })
    local input = app:topic("in", { value_serializer = "raw" })
    local counts = app:table("counts", { default = 0 })
    app:agent("count", input, function(stream)
      for v in stream do counts[v] = counts[v] + 1 end
    end, { concurrency = 2 })
    app:timer(1.0, function() end)
    t = fstream.testing(app)
    t:send(input, "x")
    t:run()
    t:advance(3)
    assert.is_true(other:stats().lua_refs > before)
    t:close()
    t = nil
    assert.are.equal(before, other:stats().lua_refs)
  end)
end)

describe("registry references across a hot reload", function()
  it("are as many after each reload as before it", function()
    local uniq = os.time() .. "-" .. math.random(1000000)
    local dir = proc.tmp .. "/refs-reload-" .. uniq
    os.execute("mkdir -p " .. proc.quote(dir))
    local function version(tag)
      return string.format([[
local fstream = require "fstream"
local core = require "fstream.core"
local app = fstream.app("refs-%s", { topic_partitions = 2, commit_interval = 0.2 })
local input = app:topic("refs-in-%s", { value_serializer = "raw" })
local counts = app:table("counts", { default = 0 })
app:agent("count", input, function(stream)
  for v in stream do counts[v] = counts[v] + 1 end
end)
app:timer(0.1, function()
  core.log("info", string.format("%s refs %%d", app.rt:stats().lua_refs))
end)
]], uniq, uniq, tag)
    end
    local script = dir .. "/app.lua"
    proc.write(script, version("v1"))
    local w = proc.spawn(string.format("%s worker %s --reload -l info --broker memory:// --store lmdb://%s",
      proc.bin, proc.quote(script), proc.quote(dir .. "/store")), "worker-refs")
    -- The count a version settles at: its third sample.
    local function settled(tag)
      local deadline = os.time() + 30
      repeat
        local samples = {}
        for n in w:output():gmatch(tag .. " refs (%d+)") do samples[#samples + 1] = tonumber(n) end
        if #samples >= 3 then return samples[3] end
        proc.sleep(0.1)
      until os.time() > deadline or not w:alive()
      error("no samples of " .. tag .. ":\n" .. w:output())
    end
    local seen = { settled("v1") }
    for k = 2, 4 do
      proc.write(script, version("v" .. k))
      seen[k] = settled("v" .. k)
    end
    assert.are.equal(0, w:stop())
    assert.are.same({ seen[1], seen[1], seen[1], seen[1] }, seen)
  end)
end)
