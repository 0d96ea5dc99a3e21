-- A stateless pipeline: orders in, large orders filtered and transformed,
-- out to another topic, where a second agent reports them.
--   fstream-lua worker examples/pipeline.lua
local fstream = require "fstream"

local app = fstream.app("pipeline", { broker = "memory://", topic_partitions = 4 })

local orders = app:topic("orders")
local large = app:topic("large-orders")

app:agent("find_large", orders, function(stream)
  for order in stream do
    local total = order.amount * order.price
    if total > 1000 then
      large:send { key = order.account_id, value = {
        account_id = order.account_id, product_id = order.product_id, total = total,
      } }
    end
  end
end)

app:agent("report", large, function(stream)
  for key, order in stream:items() do
    print(string.format("large order from %s: %s for %.2f", key, order.product_id, order.total))
  end
end)

-- Ten random orders a second.
local products = { "apple", "pear", "plum", "fig", "kiwi" }
app:timer(1.0, function()
  for _ = 1, 10 do
    orders:send { key = "a" .. math.random(1, 5), value = {
      account_id = "a" .. math.random(1, 5),
      product_id = products[math.random(#products)],
      amount = math.random(1, 100),
      price = math.random(1, 4000) / 100,
    } }
  end
end)
