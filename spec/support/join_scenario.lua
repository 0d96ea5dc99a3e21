-- The stream-stream join's crash scenario (spec/join_e2e_spec.lua on the
-- standalone embedded broker, spec/join_eos_kafka_spec.lua on real Kafka
-- under exactly-once): LEFT and RIGHT hold N events each, keyed k0..k(KEYS-1);
-- left i (time i) and right j (time j + 0.5) pair when their keys agree and
-- the times are at most WITHIN apart. The first half is joined and
-- checkpointed, the worker killed with SIGKILL; the second half is joined by a
-- worker on an empty store (the buffers come back from their changelogs),
-- which kills itself with SIGKILL half-way (the fixture's KILL_AT), and
-- finished by a third. The pairs in OUT, read back with
-- kcat, are compared with the expected set.
local proc = require "spec.support.proc"
local bin, fixtures = proc.bin, proc.root .. "/spec/fixtures"

local S = {}

function S.worker(env, addr, store, name, args)
  local vars = {}
  for k, v in pairs(env) do vars[#vars + 1] = k .. "=" .. proc.quote(v) end
  table.sort(vars)
  return proc.spawn(string.format("env %s %s worker %s/join.lua --broker kafka://%s --store lmdb://%s -l info %s",
    table.concat(vars, " "), bin, fixtures, addr, proc.quote(store), args or ""), "worker-" .. name)
end

-- The expected pairs ("l<i>|r<j>" -> true) and their count.
function S.expected(n, keys, within)
  local expect, count = {}, 0
  for i = 1, n do
    for j = i - within - 1, i + within do
      if j >= 1 and j <= n and j % keys == i % keys and math.abs(i - (j + 0.5)) <= within then
        expect["l" .. i .. "|r" .. j] = true
        count = count + 1
      end
    end
  end
  return expect, count
end

local function lines(side, keys, from, to)
  local t = {}
  for i = from, to do
    t[#t + 1] = string.format('k%d\t{"id":"%s%d","at":%s}', i % keys, side, i, side == "l" and i or (i + 0.5))
  end
  return t
end

-- Every value of a topic (read_committed: only committed transactions').
local function read_all(addr, topic, committed)
  local out, rc = proc.run(string.format("kcat -C -b %s -t %s -o beginning -e -q %s -f '%%s\\n' 2>/dev/null", addr,
    proc.quote(topic), committed and "-X isolation.level=read_committed" or ""))
  local values = {}
  if rc ~= 0 then return values end
  for line in out:gmatch("[^\n]+") do values[#values + 1] = line end
  return values
end

-- How many distinct expected pairs OUT holds, polling until it holds `want` of
-- them or `timeout` seconds passed; returns that count and the values read.
local function wait_pairs(addr, topic, committed, expect, want, timeout)
  local deadline = os.time() + timeout
  local have, values
  repeat
    values = read_all(addr, topic, committed)
    local seen = {}
    have = 0
    for _, v in ipairs(values) do
      if expect[v] and not seen[v] then seen[v] = true; have = have + 1 end
    end
    if have >= want then break end
    proc.sleep(1)
  until os.time() > deadline
  return have, values
end

-- opts: addr, env (APP_ID, LEFT, RIGHT, OUT names; MODE is set here), store,
-- n, keys, within, args (extra worker arguments), committed (read OUT
-- read_committed). Returns {expected =, missing = {...}, unexpected = {...},
-- dups =, at_kill =, logs = {...}}.
function S.run(opts)
  local addr, env, store = opts.addr, opts.env, opts.store
  local n, keys, within = opts.n, opts.keys, opts.within
  env.MODE, env.WITHIN = "streams", tostring(within)
  local expect, count = S.expected(n, keys, within)
  local half = n // 2
  local first = 0
  for k in pairs(expect) do
    local i, j = k:match("^l(%d+)|r(%d+)$")
    if tonumber(i) <= half and tonumber(j) <= half then first = first + 1 end
  end
  local r = { expected = count, logs = {} }
  local w
  local function kill(name)
    w:signal("KILL")
    assert(w:wait(20) == 137, name .. " did not die of SIGKILL")
    r.logs[#r.logs + 1] = w:output()
  end

  -- First half, joined and checkpointed, then kill -9.
  proc.produce_lines(addr, env.LEFT, lines("l", keys, 1, half), { key_delim = "\t" })
  proc.produce_lines(addr, env.RIGHT, lines("r", keys, 1, half), { key_delim = "\t" })
  w = S.worker(env, addr, store, env.APP_ID .. "-1", opts.args)
  local ok, err = pcall(function()
    local have = wait_pairs(addr, env.OUT, opts.committed, expect, first, 120)
    assert(have >= first, string.format("the first worker made %d of %d pairs:\n%s", have, first, w:output()))
    proc.sleep(1)
    kill("the first worker")

    -- The second half meets the first half's buffered events, from the changelogs.
    proc.produce_lines(addr, env.LEFT, lines("l", keys, half + 1, n), { key_delim = "\t" })
    proc.produce_lines(addr, env.RIGHT, lines("r", keys, half + 1, n), { key_delim = "\t" })
    os.execute("rm -rf " .. proc.quote(store))
    -- This one kills itself (SIGKILL) after half of the pairs left to make.
    env.KILL_AT = tostring((count - first) // 2)
    w = S.worker(env, addr, store, env.APP_ID .. "-2", opts.args)
    env.KILL_AT = nil
    assert(w:wait(180) == 137, "the second worker did not kill itself:\n" .. w:output())
    r.logs[#r.logs + 1] = w:output()
    r.at_kill = wait_pairs(addr, env.OUT, opts.committed, expect, count, 0)

    w = S.worker(env, addr, store, env.APP_ID .. "-3", opts.args)
    local _, values = wait_pairs(addr, env.OUT, opts.committed, expect, count, 180)
    proc.sleep(1)
    assert(w:stop() == 0, "the last worker did not stop cleanly:\n" .. w:output())
    r.logs[#r.logs + 1] = w:output()
    values = read_all(addr, env.OUT, opts.committed)
    local got = {}
    for _, v in ipairs(values) do got[v] = (got[v] or 0) + 1 end
    r.missing, r.unexpected, r.dups = {}, {}, 0
    for k in pairs(expect) do if not got[k] then r.missing[#r.missing + 1] = k end end
    for k, c in pairs(got) do
      if not expect[k] then r.unexpected[#r.unexpected + 1] = k end
      r.dups = r.dups + c - 1
    end
    table.sort(r.missing)
    table.sort(r.unexpected)
  end)
  if w:alive() then w:signal("KILL") end
  if not ok then error(err, 0) end
  return r
end

return S
