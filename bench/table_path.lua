-- CPU cost of the pieces of a table access, in-process: the app runs under
-- fstream.testing (in-memory transport, no Kafka, no LMDB: every key is in
-- the record cache), so what is left is the Lua side of the table and of the
-- agent loop. BENCHMARKS.md (Tables) uses it to say where the wordcount
-- agent's time goes.
--
--   lua5.4 bench/table_path.lua [VARIANT...] [-n EVENTS]
--
-- VARIANT is the body of the agent's loop over 1,000 words (default: all):
--   none       nothing: dispatch and the `for _, w in stream:items()` loop
--   read       local _ = counts[w]
--   write      counts[w] = 1
--   encode     encode the key as the table does (JSON)
--   partition  find the event's partition as the table does (internals)
--   send       output:send { key = w, value = { word = w, count = 1 } }
--   update     counts:update(w, inc): a method call on the table
--   wordcount  bench/wordcount.lua's body: read, write, read, send
-- and it prints the CPU time per event (os.clock): the least of 3 runs, each
-- in a fresh lua5.4 process, since a heap grown by one variant slows the next
-- and other load on the machine only ever adds time. $BENCH_BUILD_DIR picks
-- the build whose fstream_core.so is loaded (default build-rel).
local here = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/.."
local build = os.getenv("BENCH_BUILD_DIR") or (here .. "/build-rel")
package.path = here .. "/lua/?.lua;" .. here .. "/lua/?/init.lua;" .. package.path
package.preload["fstream.core"] = function()
  return assert(package.loadlib(build .. "/fstream_core.so", "luaopen_fstream_core"))()
end

local ORDER = { "none", "read", "write", "encode", "partition", "send", "update", "wordcount" }
local RUNS = 3
local n, wanted, one = 200000, {}, nil
local i = 1
while i <= #arg do
  if arg[i] == "-n" then
    n = assert(math.tointeger(tonumber(arg[i + 1])), "-n needs a number")
    i = i + 2
  elseif arg[i] == "--one" then
    one = arg[i + 1]
    i = i + 2
  else
    wanted[#wanted + 1] = arg[i]
    i = i + 1
  end
end
if #wanted == 0 then wanted = ORDER end

-- The worker runs Lua's generational collector (runtime/main.c); so do we.
collectgarbage("generational")
local fstream = require "fstream"
local core = require "fstream.core"
local Table = require "fstream.table"

local function measure(variant)
  local app = fstream.app("table-path-" .. variant, { broker = "memory://", topic_partitions = 8 })
  local words = app:topic("words", { value_serializer = "raw" })
  local output = app:topic("out")
  local counts = app:table("word_counts", { default = 0 })
  local function inc(v) return v + 1 end
  local bodies = {
    none = function() end,
    read = function(w) local _ = counts[w] end,
    write = function(w) counts[w] = 1 end,
    encode = function(w) local _ = core.json.encode(w) end,
    partition = function()
      local s = Table.streams_by_co[coroutine.running()]
      local _, _ = s.cs:meta(s.i)
    end,
    send = function(w) output:send { key = w, value = { word = w, count = 1 } } end,
    update = function(w) counts:update(w, inc) end,
    wordcount = function(w)
      counts[w] = counts[w] + 1
      output:send { key = w, value = { word = w, count = counts[w] } }
    end,
  }
  local body = assert(bodies[variant], "unknown variant " .. variant)
  app:agent("count", words, function(stream)
    for _, w in stream:items() do body(w) end
  end)
  local t = fstream.testing(app)
  for k = 1, n do
    local w = string.format("w%03d", k % 1000)
    t:send(words, { key = w, value = w })
  end
  local c0 = os.clock()
  t:run()
  local secs = os.clock() - c0
  t:close()
  return 1e6 * secs / n
end

if one then
  print(string.format("%.6f", measure(one)))
  os.exit(0)
end

local function q(x) return "'" .. tostring(x):gsub("'", "'\\''") .. "'" end
local base
for _, v in ipairs(wanted) do
  local best
  for _ = 1, RUNS do
    local p = assert(io.popen(string.format("lua5.4 %s --one %s -n %d", q(arg[0]), q(v), n)))
    local us = tonumber(p:read("a"))
    p:close()
    assert(us, "variant " .. v .. " failed")
    if not best or us < best then best = us end
  end
  if v == "none" then base = best end
  print(string.format("%-10s %6.3f µs/event%s", v, best,
    base and v ~= "none" and string.format("  (+%.3f over none)", best - base) or ""))
end
