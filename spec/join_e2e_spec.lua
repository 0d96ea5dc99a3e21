-- Joins with a real worker on a standalone embedded broker, its output read
-- back with kcat: a stream-table join on co-partitioned topics, the start-up
-- error on topics that are not, and a stream-stream join whose pairs are all
-- there after kill -9s (at-least-once: none missing; duplicates counted).
local proc = require "spec.support.proc"
local scenario = require "spec.support.join_scenario"
local bin, fixtures = proc.bin, proc.root .. "/spec/fixtures"
local uniq = tostring(os.time()) .. "-" .. tostring(math.random(1e6))

local function worker(env, addr, store, name)
  local vars = {}
  for k, v in pairs(env) do vars[#vars + 1] = k .. "=" .. proc.quote(v) end
  table.sort(vars)
  return proc.spawn(string.format("env %s %s worker %s/join.lua --broker kafka://%s --store lmdb://%s -l info",
    table.concat(vars, " "), bin, fixtures, addr, proc.quote(store)), "worker-" .. name)
end

describe("stream-table join, end to end", function()
  it("enriches every order whose customer the co-partitioned table holds, and only those", function()
    local broker, addr = proc.broker({}, 4)
    finally(function() broker:stop() end)
    local env = { MODE = "table", APP_ID = "jt-" .. uniq, CUSTOMERS = "jt-cust-" .. uniq, ORDERS = "jt-ord-" .. uniq,
      OUT = "jt-out-" .. uniq }
    proc.create_topics(addr, env.CUSTOMERS, env.ORDERS, env.OUT)
    local names = {}
    local lines = {}
    for i = 1, 20 do
      names["c" .. i] = "name" .. i
      lines[#lines + 1] = string.format('c%d\t{"name":"name%d"}', i, i)
    end
    proc.produce_lines(addr, env.CUSTOMERS, lines, { key_delim = "\t" })
    local w = worker(env, addr, proc.tmp .. "/" .. env.APP_ID, "jt")
    finally(function() if w:alive() then w:signal("KILL") end end)
    -- The table holds every customer before the first order arrives.
    assert.are.equal(20, proc.wait_messages(addr, env.OUT, 20, 60), w:output())
    local expect = {}
    lines = {}
    for i = 1, 300 do
      local c = "c" .. (i % 25 + 1) -- c21..c25 are no customers: an inner join leaves their orders out
      lines[#lines + 1] = string.format('%s\t{"id":"o%d"}', c, i)
      if names[c] then expect[#expect + 1] = "o" .. i .. "|" .. names[c] end
    end
    proc.produce_lines(addr, env.ORDERS, lines, { key_delim = "\t" })
    proc.wait_messages(addr, env.OUT, 20 + #expect, 60)
    proc.sleep(1) -- anything beyond them would show now
    assert.are.equal(0, w:stop(), w:output())
    local got = {}
    for _, v in ipairs(proc.consume_all(addr, env.OUT)) do
      if not v:match("^loaded ") then got[#got + 1] = v end
    end
    table.sort(got)
    table.sort(expect)
    assert.are.same(expect, got)
  end)

  it("does not start when the orders' topic has another partition count than the table's input, and says group_by", function()
    local orders = "jtx-ord-" .. uniq
    -- The orders' topic is made with 2 partitions; the customers' with the broker's default, 4.
    local broker, addr = proc.broker({ orders }, 2)
    finally(function() broker:stop() end)
    local env = { MODE = "table", APP_ID = "jtx-" .. uniq, CUSTOMERS = "jtx-cust-" .. uniq, ORDERS = orders,
      OUT = "jtx-out-" .. uniq }
    proc.create_topics(addr, env.CUSTOMERS, env.OUT)
    local w = worker(env, addr, proc.tmp .. "/" .. env.APP_ID, "jtx")
    local rc = w:wait(60)
    local out = w:output()
    assert.is_not_nil(rc, "the worker did not stop: " .. out)
    assert.are_not.equal(0, rc)
    assert.matches("different partition counts %(" .. env.CUSTOMERS:gsub("%-", "%%-") .. ": 4, "
      .. orders:gsub("%-", "%%-") .. ": 2%)", out)
    assert.matches("stream:join", out)
    assert.matches("group_by", out)
  end)
end)

describe("stream-stream join, end to end", function()
  it("has every pair after kill -9 of the worker, twice, once with its store gone (at-least-once: duplicates counted)", function()
    local broker, addr = proc.broker({}, 4)
    finally(function() broker:stop() end)
    local env = { APP_ID = "js-" .. uniq, LEFT = "js-l-" .. uniq, RIGHT = "js-r-" .. uniq, OUT = "js-out-" .. uniq }
    proc.create_topics(addr, env.LEFT, env.RIGHT, env.OUT)
    local r = scenario.run { addr = addr, env = env, store = proc.tmp .. "/" .. env.APP_ID, n = 20000, keys = 20,
      within = 30 }
    assert.are.same({}, r.missing)
    assert.are.same({}, r.unexpected)
    print(string.format("\nstream-stream join across two kill -9s (at-least-once): %d pairs, none missing, "
      .. "%d duplicates (the second kill came with %d of them out)", r.expected, r.dups, r.at_kill))
  end)
end)
