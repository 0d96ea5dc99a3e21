-- The Lua bindings' contracts: where a coroutine may wait, and which
-- runtime has the test-only methods.
local fstream = require "fstream"

describe("waiting inside a call that cannot yield", function()
  local t
  after_each(function() if t then t:close(); t = nil end end)

  it("fstream.sleep in a table.sort comparator fails with a message that says why", function()
    local app = fstream.app("noyield", { topic_partitions = 1 })
    local err
    app:task(function()
      local ok, e = pcall(table.sort, { 3, 1, 2 }, function(a, b)
        fstream.sleep(0.1)
        return a < b
      end)
      if not ok then err = e end
    end)
    t = fstream.testing(app)
    t:run()
    assert.is_not_nil(err)
    assert.matches("cannot wait here: inside a metamethod or a C function that cannot yield", err, 1, true)
  end)
end)

describe("test-only runtime methods", function()
  it("exist on the runtime of fstream.testing and not on a worker's", function()
    local app = fstream.app("testmt", { topic_partitions = 1 })
    local t = fstream.testing(app)
    for _, name in ipairs { "test_send", "test_send_raw", "outputs", "run_until_idle", "advance" } do
      assert.is_function(t.rt[name], name)
      assert.is_nil(debug.getregistry()["fstream.Runtime"].__index[name], name)
    end
    assert.is_function(debug.getregistry()["fstream.Runtime"].__index.produce)
    t:close()
  end)
end)
