-- Request/reply end to end: two workers of one app on a standalone embedded
-- broker (fstream-lua broker) ask each other's agent partitions. Each worker
-- reads its own reply topic; a reply to a worker that is gone harms nobody.
local proc = require "spec.support.proc"
local bin, fixtures = proc.bin, proc.root .. "/spec/fixtures"
local uniq = tostring(os.time()) .. "-" .. tostring(math.random(1e6))

describe("ask across two workers", function()
  it("each worker gets the other's answers and its own, join in order, and a gone asker's replies harm nobody", function()
    local broker, addr = proc.broker({}, 4)
    local id = "askpair-" .. uniq
    local again = proc.tmp .. "/ask-again-" .. uniq
    -- The standalone broker has no CreateTopics: asking for metadata creates.
    proc.create_topics(addr, id .. "-double")
    local function start(who)
      return proc.spawn(string.format("env APP_ID=%s WHO=%s AGAIN=%s %s worker %s/ask_pair.lua --broker kafka://%s "
        .. "--store lmdb://%s/ask-%s-%s -l info", id, who, proc.quote(again), bin, fixtures, addr, proc.tmp, who, uniq),
        "worker-ask-" .. who)
    end
    local a, b = start("A"), start("B")
    finally(function()
      for _, p in ipairs { a, b, broker } do if p:alive() then p:signal("KILL") end end
    end)
    local ok_a = a:wait_for("DONE A", 150)
    local ok_b = b:wait_for("DONE B", 150)
    local out_a, out_b = a:output(), b:output()
    assert(ok_a, out_a)
    assert(ok_b, out_b)

    for who, out in pairs { A = out_a, B = out_b } do
      assert.not_matches("ASK FAILED", out)
      local n, by = 0, {}
      for i, r, w in out:gmatch("ASKED (%d+) %-> (%d+) BY (%a)") do
        assert.are.equal(2 * tonumber(i), tonumber(r))
        n, by[w] = n + 1, true
      end
      assert.is_true(n > 0)
      assert.is_true(by.A and by.B, who .. " was answered by " .. (by.A and "A" or "") .. (by.B and "B" or "") .. " only")
      local joined = assert(out:match("JOINED ([^\n]+)"), out)
      local expect = {}
      for j = 1, 12 do expect[j] = string.format("%d:%d", 1000 + j, 2 * (1000 + j)) end
      assert.are.equal(table.concat(expect, " "), joined)
    end
    -- The reply topics are read outside the consumer group: asking changed
    -- no worker's subscription.
    assert.not_matches("subscription changed", out_a)
    assert.not_matches("subscription changed", out_b)
    -- One reply topic per worker.
    local ra = assert(out_a:match("replies to this worker come on (%S+)"))
    local rb = assert(out_b:match("replies to this worker come on (%S+)"))
    assert.matches("^" .. id:gsub("%-", "%%-") .. "%-reply%-%x+$", ra)
    assert.are_not.equal(ra, rb)

    -- A is gone; a request that still names A's reply topic is answered there
    -- by B, which goes on answering its own asks.
    assert.are.equal(0, a:stop())
    local before = proc.count_messages(addr, ra)
    local req = proc.write(proc.tmp .. "/ask-orphan-" .. uniq, "21\n")
    local out, rc = proc.run(string.format("kcat -P -b %s -t %s -k orphan -H fstream-reply-to=%s "
      .. "-H fstream-correlation-id=gone-1 -l %s", addr, id .. "-double", ra, req))
    assert.are.equal(0, rc, out)
    assert.is_true(proc.wait_messages(addr, ra, before + 1, 60) >= before + 1)
    proc.write(again, "go\n")
    local v, w = b:wait_for("AGAIN (%d+) BY (%a)", 90)
    assert.are.equal("14", v, b:output())
    assert.are.equal("B", w)
    assert.are.equal(0, b:stop(), b:output())
    broker:stop()
  end)
end)

describe("ask across a hot reload", function()
  local APP = [[
local fstream = require "fstream"
local app = fstream.app(os.getenv("APP_ID"), { broker = "memory://", topic_partitions = 2, commit_interval = 0.5 })
local echo = app:agent("echo", nil, function(stream)
  for v in stream do stream:yield("%s:" .. v) end
end)
app:task(function()
  local i = 0
  while true do
    i = i + 1
    print("ANSWER " .. echo:ask(i, { key = tostring(i), timeout = 30 }))
    fstream.sleep(0.1)
  end
end)
]]

  it("keeps the worker's reply topic: the new version's asks are answered without a resubscription", function()
    local script = proc.tmp .. "/ask_reload_" .. uniq .. ".lua"
    proc.write(script, APP:format("v1"))
    local w = proc.spawn(string.format("env APP_ID=askreload-%s %s worker %s --store lmdb://%s/askreload-%s -l debug",
      uniq, bin, proc.quote(script), proc.tmp, uniq), "worker-askreload")
    finally(function() if w:alive() then w:signal("KILL") end end)
    assert(w:wait_for("ANSWER v1:3", 60), w:output())
    proc.write(script, APP:format("v2"))
    w:signal("HUP")
    assert(w:wait_for("ANSWER v2:3", 60), w:output())
    local out = w:output()
    assert.are.equal(0, w:stop(), out)
    local reply = assert(out:match("replies to this worker come on (%S+)"))
    local _, nreply = out:gsub("replies to this worker come on", "")
    assert.are.equal(1, nreply) -- declared once, carried over the reload
    assert.matches("reloaded", out)
    local after = out:sub((out:find("reloaded", 1, true)))
    assert.not_matches("subscription changed", after)
    assert.not_matches("ask.* failed", out)
  end)
end)

describe("a worker that stops", function()
  local APP = [[
local fstream = require "fstream"
local app = fstream.app(os.getenv("APP_ID"), { broker = "memory://", topic_partitions = 2, commit_interval = 0.5 })
local mute = app:agent("mute", nil, function(stream) for _ in stream do end end)
local echo = app:agent("echo", nil, function(stream) for v in stream do stream:yield(v) end end)
local ch = app:channel { name = "idle" }
app:agent("reader", ch, function(stream)
  for v in stream do print("READ " .. tostring(v)) end
  print("READER ENDED")
end)
app:agent("asker", app:topic(os.getenv("APP_ID") .. "-in"), function(stream)
  for v in stream do
    -- The worker's first ask, from the middle of an event: no rebalance to
    -- wait for (a revocation would wait for this very event).
    print("ECHOED " .. echo:ask(v, { timeout = 60 }))
    print("ASKING")
    local ok, err = pcall(mute.ask, mute, v, { timeout = 600 })
    print("ASK ENDED: " .. tostring(err))
  end
end)
app:task(function()
  app.topics[os.getenv("APP_ID") .. "-in"]:send { value = 1 }
  ch:put("one")
end)
]]

  it("answers its first ask from inside an agent's event, then ends its asks and channel readers at once instead of waiting out their timeouts", function()
    local script = proc.tmp .. "/ask_stop_" .. uniq .. ".lua"
    proc.write(script, APP)
    local w = proc.spawn(string.format("env APP_ID=askstop-%s %s worker %s --store lmdb://%s/askstop-%s -l info",
      uniq, bin, proc.quote(script), proc.tmp, uniq), "worker-askstop")
    finally(function() if w:alive() then w:signal("KILL") end end)
    assert(w:wait_for("ECHOED 1", 30), w:output())
    assert(w:wait_for("ASKING", 60), w:output())
    assert(w:wait_for("READ one", 60), w:output())
    w:signal("TERM")
    local rc = w:wait(20) -- the stop deadline is 30 s: a wait that lasted it would fail here
    local out = w:output()
    assert.are.equal(0, rc, out)
    assert.matches("ASK ENDED: [^\n]*ask to agent mute: the worker is stopping", out)
    assert.matches("READER ENDED", out)
    assert.not_matches("still busy", out)
    assert.not_matches("subscription changed", out)
  end)
end)
