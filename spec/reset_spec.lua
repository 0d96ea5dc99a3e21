-- Abort + reset, the path a failed transaction takes, driven by the test
-- trigger (rt:test_reset with FSTREAM_TEST_HOOKS=1): every held partition is
-- fenced, the tables' partitions are released without writing what was not
-- checkpointed, and the partitions are assigned again from the committed
-- offsets (tables re-held from LMDB and the changelog). Under at-least-once on
-- a standalone embedded broker a table's counts must stay exact: the writes
-- the reset drops are exactly those of the input it replays.
local proc = require "spec.support.proc"
local wc = require "spec.support.wordcount"

local bin, fixtures = proc.bin, proc.root .. "/spec/fixtures"
local uniq = tostring(os.time()) .. "-" .. tostring(math.random(1e6))
local APP = fixtures .. "/eos_wordcount.lua"

local function settings(env)
  local s = {}
  for _, k in ipairs { "APP_ID", "IN", "OUT", "GUARANTEE", "THROTTLE", "RESET_AT", "COMMIT_INTERVAL" } do
    if env[k] then s[#s + 1] = k .. "=" .. env[k] end
  end
  return table.concat(s, " ")
end

local function read_counts(env, store)
  return proc.table_rows(settings(env), APP, "word_counts", store)
end

describe("abort + reset (test trigger, at-least-once, standalone embedded broker)", function()
  local broker, addr
  setup(function() broker, addr = proc.broker({}, 4) end)
  teardown(function() broker:stop() end)

  it("drops the uncheckpointed table writes and replays from the committed offsets: counts stay exact", function()
    local env = { APP_ID = "rst-" .. uniq, IN = "rst-in-" .. uniq, OUT = "rst-out-" .. uniq,
      GUARANTEE = "at_least_once", THROTTLE = "0.05", COMMIT_INTERVAL = "0.5", RESET_AT = "3000,25000,60000" }
    local store = proc.tmp .. "/rst-" .. uniq
    local lines, expected = wc.corpus("r")
    proc.create_topics(addr, env.IN, env.OUT)
    proc.produce_lines(addr, env.IN, lines, { key_delim = ":" })
    local w = proc.spawn(string.format("env FSTREAM_TEST_HOOKS=1 %s %s worker %s --broker kafka://%s --store lmdb://%s",
      settings(env), bin, APP, addr, store), "worker-rst")
    local deadline = os.time() + 120
    local c
    repeat
      proc.sleep(0.5)
      c = read_counts(env, store)
    until wc.total(c) >= #lines or os.time() > deadline or not w:alive()
    proc.sleep(1) -- a reset after the last count would show as a changed total
    assert.are.equal(0, w:stop())
    local log = w:output()
    local resets = 0
    for _ in log:gmatch("a test asked for a reset %(after %d+ events%): 4 partitions were reset to their last committed state") do
      resets = resets + 1
    end
    assert.are.equal(3, resets, log)
    assert.are.same(expected, read_counts(env, store))
  end)
end)
