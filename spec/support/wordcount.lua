-- Word-count helpers shared by the table specs (embedded broker and real Kafka).
local proc = require "spec.support.proc"

local bin, fixtures = proc.bin, proc.root .. "/spec/fixtures"
local wc = {}

-- 446 words, word i appearing i times: 99,681 words in a fixed shuffled order.
function wc.corpus(tag)
  local lines, expected = {}, {}
  for i = 1, 446 do
    local w = tag .. i
    expected[w] = i
    for _ = 1, i do lines[#lines + 1] = w .. ":" .. w end
  end
  local seed = 12345
  for i = #lines, 2, -1 do
    seed = (seed * 1103515245 + 12345) % 2147483648
    local j = seed % i + 1
    lines[i], lines[j] = lines[j], lines[i]
  end
  return lines, expected
end

-- The fixture's settings as `env` arguments (TOPIC_PARTITIONS, TABLE_PARTITIONS when given).
local function settings(env)
  local s = string.format("APP_ID=%s IN=%s", env.APP_ID, env.IN)
  for _, k in ipairs { "TOPIC_PARTITIONS", "TABLE_PARTITIONS" } do
    if env[k] then s = s .. " " .. k .. "=" .. env[k] end
  end
  return s
end
wc.settings = settings

-- opts.create = false: leave topic creation to the worker (real Kafka);
-- opts.env: more environment ("NAME=value ..."); opts.debug: log at debug level.
function wc.worker(env, addr, store, opts)
  opts = opts or {}
  if opts.create ~= false then proc.create_topics(addr, env.IN) end
  return proc.spawn(string.format("env %s THROTTLE=%s %s %s worker %s/wordcount.lua --broker kafka://%s --store lmdb://%s%s",
    settings(env), env.THROTTLE or "0", opts.env or "", bin, fixtures, addr, store, opts.debug and " -l debug" or ""),
    "worker-wc")
end

-- n distinct words "key-1" .. "key-n", each keyed by itself ("key:word" lines
-- for proc.produce_lines with key_delim ":"), and the counts they make.
function wc.distinct(n)
  local lines, expected = {}, {}
  for i = 1, n do
    local w = "key-" .. i
    lines[#lines + 1] = w .. ":" .. w
    expected[w] = 1
  end
  return lines, expected
end

-- The table as `fstream-lua table` prints it: word -> count (summed over stores).
function wc.read_counts(env, ...)
  local counts = {}
  for _, store in ipairs { ... } do
    for key, value in pairs(proc.table_rows(settings(env), fixtures .. "/wordcount.lua", "word_counts", store)) do
      assert(counts[key] == nil, "key " .. key .. " is in two stores")
      counts[key] = value
    end
  end
  return counts
end

function wc.total(counts)
  local n = 0
  for _, v in pairs(counts) do n = n + v end
  return n
end

-- Waits until the worker has committed everything it was given.
function wc.wait_total(env, n, timeout, w, ...)
  local stores = { ... }
  local deadline = os.time() + (timeout or 60)
  local c
  repeat
    proc.sleep(0.5)
    c = wc.read_counts(env, table.unpack(stores))
  until wc.total(c) >= n or os.time() > deadline
  return c
end

return wc
