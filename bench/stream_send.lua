-- In-process per-event cost of the stateless job's path (no broker): N JSON
-- orders through an agent that sends each on as bench/stateless.lua does
-- (`for order in stream`, or `stream:items()`, then
-- `output:send{key = ..., value = {...}}`), on fstream.testing's in-memory
-- transport. Decoding, the stream, the send and the JSON encoding are in
-- it; librdkafka is not. Prints µs per event, the best of 5. Run from the
-- repository: lua5.4 bench/stream_send.lua [N] (FSTREAM_BUILD: the build
-- directory, default build).
dofile("spec/helper.lua")
local fstream = require "fstream"
local N = tonumber(arg and arg[1]) or 100000

local function run(mode)
  local app = fstream.app("bench-stream-send-" .. mode, { topic_partitions = 1 })
  local input, output = app:topic("in"), app:topic("out")
  local seen = 0
  app:agent("transform", input, function(stream)
    if mode == "values" then
      for order in stream do
        output:send {
          key = order.account_id,
          value = { id = order.id, account_id = order.account_id, total = order.amount * order.price },
        }
        seen = seen + 1
      end
    else
      for _, order in stream:items() do
        output:send {
          key = order.account_id,
          value = { id = order.id, account_id = order.account_id, total = order.amount * order.price },
        }
        seen = seen + 1
      end
    end
  end)
  local t = fstream.testing(app)
  for i = 1, N do
    t:send(input, { key = "o" .. i, value = { id = i, account_id = "acct-" .. (i % 100), amount = i % 7 + 1, price = 9.99 } })
  end
  collectgarbage()
  local t0 = os.clock()
  t:run()
  local dt = os.clock() - t0
  assert(seen == N, seen)
  t:close()
  return dt * 1e6 / N
end

for _, mode in ipairs { "values", "items" } do
  local best = math.huge
  for _ = 1, 5 do best = math.min(best, run(mode)) end
  print(string.format("%-6s %.3f us/event (best of 5, %d events)", mode, best, N))
end
