-- The stream-stream join's crash scenario (spec/support/join_scenario.lua) on
-- a real Apache Kafka under exactly-once: two kill -9s, one with the store
-- gone, and the committed output (kcat, isolation.level=read_committed) holds
-- every pair exactly once.
-- FSTREAM_TEST_JOIN_PORT / FSTREAM_TEST_JOIN_DIR: the broker's port (default
-- 19620, the controller takes the next) and data dir (default spec/tmp/kafka-join).
local proc = require "spec.support.proc"
local scenario = require "spec.support.join_scenario"

local port = os.getenv("FSTREAM_TEST_JOIN_PORT") or "19620"
local dir = os.getenv("FSTREAM_TEST_JOIN_DIR") or (proc.tmp .. "/kafka-join")
local uniq = tostring(os.time()) .. "-" .. tostring(math.random(1e6))

describe("stream-stream join under exactly-once on real Kafka", function()
  local addr
  proc.kafka_for(port, dir, function(a) addr = a end)

  it("has every pair exactly once in the committed output after kill -9 of the worker, twice", function()
    local env = { APP_ID = "jx-" .. uniq, LEFT = "jx-l-" .. uniq, RIGHT = "jx-r-" .. uniq, OUT = "jx-out-" .. uniq }
    for _, t in ipairs { env.LEFT, env.RIGHT, env.OUT } do
      local out, rc = proc.run(string.format("%s/scripts/kafka create-topic %s 4 --port %s", proc.root, t, port))
      assert(rc == 0, out)
    end
    local r = scenario.run { addr = addr, env = env, store = proc.tmp .. "/" .. env.APP_ID, n = 6000, keys = 20,
      within = 30, args = "--guarantee exactly_once", committed = true }
    assert.are.same({}, r.missing)
    assert.are.same({}, r.unexpected)
    assert.are.equal(0, r.dups)
    print(string.format("\nstream-stream join across two kill -9s (exactly-once): %d pairs, each once "
      .. "(the second kill came with %d of them committed)", r.expected, r.at_kill))
  end)
end)
