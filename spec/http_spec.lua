-- fstream.http.request: libcurl in the event loop; a slow service stalls only
-- the coroutine that called it.
local fstream = require "fstream"
local proc = require "spec.support.proc"

local server, port
setup(function()
  server = proc.spawn("python3 " .. proc.root .. "/spec/support/slow_http.py 0", "http")
  port = server:wait_for("listening on (%d+)", 10)
  assert(port, server:output())
end)
teardown(function() server:signal("TERM") end)

describe("fstream.http.request", function()
  it("returns status, headers and body, and nil plus an error for a refused connection", function()
    local a = fstream.app("http1", { topic_partitions = 1 })
    local res, err2
    a:task(function()
      res = fstream.http.request { url = "http://127.0.0.1:" .. port .. "/client/17" }
      local _, e = fstream.http.request { url = "http://127.0.0.1:1/nothing", timeout = 2 }
      err2 = e
    end)
    local t = fstream.testing(a)
    t:run()
    assert.are.equal(200, res.status)
    assert.are.equal("application/json", res.headers["content-type"])
    assert.are.same({ id = "17", name = "client 17", tier = "gold" }, fstream.json.decode(res.body))
    assert.matches("[Cc]onnect", err2)
    t:close()
  end)

  it("a processor waiting on a slow service does not stall another agent", function()
    local a = fstream.app("http2", { topic_partitions = 1 })
    local slow_in, fast_in = a:topic("slow"), a:topic("fast")
    local order = {}
    local enrich = function(v)
      local res = fstream.http.request { url = string.format("http://127.0.0.1:%s/client/%d?delay=0.5", port, v) }
      order[#order + 1] = "enriched " .. v .. " " .. res.status
      return v
    end
    a:agent("slow", a:stream(slow_in, { processors = { enrich } }), function(s) for _ in s do end end)
    a:agent("fast", fast_in, function(s) for v in s do order[#order + 1] = "fast " .. v end end)
    local t = fstream.testing(a)
    t:send(slow_in, { key = "k", value = 1 })
    for i = 1, 3 do t:send(fast_in, { key = "k", value = i }) end
    local t0 = os.time()
    t:run()
    assert.are.same({ "fast 1", "fast 2", "fast 3", "enriched 1 200" }, order)
    assert.is_true(os.time() - t0 < 5)
    t:close()
  end)
end)

describe("examples/enrich.lua", function()
  it("enriches events through the local service while the heartbeat keeps beating", function()
    local printed = {}
    local saved = print
    _G.print = function(...) printed[#printed + 1] = table.concat({ ... }, "\t") end
    local ok, err = pcall(function()
      local env_url = "http://127.0.0.1:" .. port
      local chunk = assert(loadfile(proc.root .. "/examples/enrich.lua", "t",
        setmetatable({ os = setmetatable({ getenv = function(k) return k == "CLIENT_SERVICE" and env_url or os.getenv(k) end }, { __index = os }) }, { __index = _G })))
      chunk()
      local app = fstream._apps[#fstream._apps]
      local t = fstream.testing(app)
      t:advance(4.5)
      t:close()
    end)
    _G.print = saved
    assert(ok, err)
    local accounts = 0
    for _, l in ipairs(printed) do
      if l:match("^account %d+ %(%u%u%): client client %d+$") then accounts = accounts + 1 end
    end
    assert.is_true(accounts >= 3, table.concat(printed, "\n"))
  end)
end)
