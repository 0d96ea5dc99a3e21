-- The seeds' group_by, written as the seeds write it, inside the agent:
--   async for order in orders.group_by(Order.account_id):
-- Orders arrive keyed by order id; the agent regroups them by account (through
-- the repartition topic "orders-example-process-account_id-repartition") so
-- that each account's running total lives in one partition of the table.
--   fstream-lua worker examples/orders.lua
local fstream = require "fstream"

local app = fstream.app("orders-example", { broker = "memory://", topic_partitions = 4 })

local Order = fstream.record("Order", {
  account_id = "string", product_id = "string", amount = "number", price = "number",
})

local orders_topic = app:topic("orders", { value_type = Order })
local totals = app:table("account_totals", { default = 0 })

app:agent("process", orders_topic, function(orders)
  for order in orders:group_by("account_id") do
    totals[order.account_id] = totals[order.account_id] + order.amount * order.price
  end
end)

local n = 0
app:timer(0.5, function()
  for _ = 1, 5 do
    n = n + 1
    orders_topic:send { key = "order-" .. n, value = Order {
      account_id = "account-" .. math.random(1, 4), product_id = "p" .. math.random(1, 10),
      amount = math.random(1, 5), price = math.random(100, 999) / 100,
    } }
  end
end)

app:timer(5.0, function()
  local lines = {}
  for account, total in totals:items() do lines[#lines + 1] = string.format("%s=%.2f", account, total) end
  table.sort(lines)
  print("totals: " .. table.concat(lines, " "))
end)
