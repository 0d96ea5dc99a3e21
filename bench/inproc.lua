-- In-process per-event cost of the stream path (no broker): N values through
-- an agent that counts them (`for v in stream`), N pairs through
-- `stream:items()`, and N words counted into a table (the word count's
-- `counts[w] = counts[w] + 1`), on fstream.testing's in-memory transport. Prints µs per
-- event. Run from the repository: lua5.4 bench/inproc.lua [N] (FSTREAM_BUILD:
-- the build directory, default build).
dofile("spec/helper.lua")
local fstream = require "fstream"
local N = tonumber(arg and arg[1]) or 200000

local function run(mode)
  local app = fstream.app("bench-inproc-" .. mode, { topic_partitions = 1 })
  local input = app:topic("in", { value_serializer = "raw", key_serializer = "raw" })
  local seen = 0
  local counts = mode == "table" and app:table("counts", { default = 0 })
  app:agent("count", input, function(stream)
    if mode == "values" then
      for _ in stream do seen = seen + 1 end
    elseif mode == "table" then
      for w in stream do
        counts[w] = counts[w] + 1
        seen = seen + 1
      end
    else
      for _, _ in stream:items() do seen = seen + 1 end
    end
  end)
  local t = fstream.testing(app)
  for i = 1, N do t:send(input, { key = "k", value = "w" .. (i % 1000) }) end
  local t0 = os.clock()
  t:run()
  local dt = os.clock() - t0
  assert(seen == N, seen)
  t:close()
  return dt * 1e6 / N
end

for _, mode in ipairs { "values", "items", "table" } do
  local best = math.huge
  for _ = 1, 5 do best = math.min(best, run(mode)) end
  print(string.format("%-6s %.3f us/event (best of 5, %d events)", mode, best, N))
end
