-- Request/reply and channels (Faust's agent.ask / agent.join and app.channel).
--   fstream-lua worker examples/ask.lua
-- A timer asks the `quote` agent for prices: `ask` waits for the value the
-- agent yields for that request, `join` asks for several at once and returns
-- the answers in order. Quotes then go through a channel — an in-memory
-- stream inside this worker, no Kafka — to an agent that prints receipts.
local fstream = require "fstream"

local app = fstream.app("ask-example", { broker = "memory://", topic_partitions = 4 })

local PRICES = { apple = 0.5, pear = 0.75, plum = 0.25 }

-- Answers requests: what it yields for a request is the asker's reply.
local quote = app:agent("quote", nil, function(stream)
  for order in stream do
    local price = PRICES[order.item]
    if not price then error("no price for " .. tostring(order.item)) end
    stream:yield { item = order.item, qty = order.qty, total = price * order.qty }
  end
end)

-- A channel as an agent's source; `receipts:send` (or a sink) feeds it.
local receipts = app:channel { name = "receipts" }
app:agent("print-receipts", receipts, function(stream)
  for q in stream do
    print(string.format("RECEIPT %d %s = %.2f", q.qty, q.item, q.total))
  end
end)

local round = 0
app:timer(1.0, function()
  round = round + 1
  local q = quote:ask({ item = "apple", qty = round }, { key = "apple", timeout = 5 })
  print(string.format("QUOTE %d apple = %.2f", q.qty, q.total))
  receipts:send { value = q }

  -- Several requests at once, answered in the order asked.
  local all = quote:join({ { item = "pear", qty = round }, { item = "plum", qty = round } },
    { key = function(order) return order.item end })
  print(string.format("JOIN pear = %.2f, plum = %.2f", all[1].total, all[2].total))

  -- An agent that fails on a request answers with its error.
  local ok, err = pcall(quote.ask, quote, { item = "kiwi", qty = 1 })
  if not ok then print("NO QUOTE: " .. (err:match("no price for %a+") or err)) end
end)
