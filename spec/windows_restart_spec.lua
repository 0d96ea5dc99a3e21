-- The index of open windows across a restart: the worker rebuilds it from the
-- store (entry keys, stream time), so windows opened before the restart close
-- in order when another key moves stream time, and an event for a window that
-- closed before the restart is late.
local proc = require "spec.support.proc"
local json = require("fstream.core").json
local bin, fixtures = proc.bin, proc.root .. "/spec/fixtures"
local uniq = tostring(os.time()) .. "-" .. tostring(math.random(1e6))

describe("window index across a restart", function()
  local broker, addr
  setup(function() broker, addr = proc.broker({}, 2) end)
  teardown(function() broker:stop() end)

  -- slices: "" (every window updated), "combine" or "merge" (slices folded
  -- at close, from the slices the worker reads back from its store).
  for _, slices in ipairs { "", "combine", "merge" } do
  it("repopulates open windows and stream time from the store" .. (slices ~= "" and " (" .. slices .. ")" or ""), function()
    local id = uniq .. slices
    local env = { APP_ID = "winr-" .. id, IN = "winr-in-" .. id, OUT = "winr-out-" .. id }
    local store = proc.tmp .. "/winr-" .. id
    proc.create_topics(addr, env.IN, env.OUT)
    local function start()
      local w = proc.spawn(string.format("env APP_ID=%s IN=%s OUT=%s SLICES=%s %s worker %s/windows_hop.lua --broker kafka://%s --store lmdb://%s",
        env.APP_ID, env.IN, env.OUT, slices, bin, fixtures, addr, store), "worker-windows-hop")
      assert.truthy(w:wait_for("assigned %d+ partitions", 30), w:output())
      return w
    end
    local function rows()
      local out = {}
      for i, v in ipairs(proc.consume_all(addr, env.OUT)) do out[i] = json.decode(v) end
      return out
    end

    local w = start()
    -- [95,105) closes at once (stream time 106); [100,110) and [105,115) stay open.
    proc.produce_lines(addr, env.IN, { 'a:{"user":"a","ts":100}', 'a:{"user":"a","ts":101}',
      'a:{"user":"a","ts":106}' }, { key_delim = ":" })
    proc.wait_count(addr, env.OUT, 1, 30)
    proc.sleep(1)
    assert.are.equal(0, w:stop())
    assert.are.same({ { user = "a", start = 95, count = 2 } }, rows())

    w = start()
    -- Stream time came back as 106: windows of 99 have closed, so it is late.
    proc.produce_lines(addr, env.IN, { 'a:{"user":"a","ts":99}' }, { key_delim = ":" })
    proc.wait_count(addr, env.OUT, 2, 30)
    -- Another key (the same partition) moves stream time past both of a's windows.
    proc.produce_lines(addr, env.IN, { 'a:{"user":"b","ts":130}' }, { key_delim = ":" })
    proc.wait_count(addr, env.OUT, 4, 30)
    proc.sleep(1)
    assert.are.equal(0, w:stop())
    assert.are.same({
      { user = "a", start = 95, count = 2 },
      { late = "a" },
      { user = "a", start = 100, count = 3 },
      { user = "a", start = 105, count = 1 },
    }, rows())
  end)
  end
end)
