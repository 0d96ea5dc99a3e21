-- Joins. Orders are enriched with the customer they name (a stream-table
-- join: both topics are keyed by customer id, so the table's partition p holds
-- the customers of the orders in partition p); ad clicks are paired with the
-- views of the same ad that came at most 5 s before or after them (a windowed
-- stream-stream join; a click no view matches is reported once its 5 s have
-- passed: once a later view of that partition shows it). A timer sends a
-- customer now and then, an order and a view every second, a click every 2 s.
--   fstream-lua worker examples/join.lua
local fstream = require "fstream"

local app = fstream.app("join-example", { broker = "memory://", topic_partitions = 4 })

local Order = fstream.record("Order", { id = "string", item = "string", qty = "integer" })
local customer_updates = app:topic("customers")
local orders = app:topic("orders", { value_type = Order })
local customers = app:table("customers")

app:agent("customers", customer_updates, function(stream)
  for id, customer in stream:items() do customers[id] = customer end
end)

-- "left": an order whose customer the table does not hold yet comes with nil
-- (the default, "inner", would leave it out).
app:agent("enrich", orders, function(stream)
  for order, customer in stream:join(customers, { type = "left" }) do
    print(string.format("order %s: %d x %s for %s", order.id, order.qty, order.item,
      customer and customer.name or "a customer not known yet"))
  end
end)

local clicks, views = app:topic("clicks"), app:topic("views")
app:agent("attribution", clicks:join(views, { within = 5, type = "left" }), function(stream)
  for click, view in stream do
    if view then
      print(string.format("click %s on %s: seen in view %s (%+d s)", click.id, click.ad, view.id, click.at - view.at))
    else
      print(string.format("click %s on %s: no view within 5 s", click.id, click.ad))
    end
  end
end)

local names = { "Ada", "Bo", "Cy" }
local n = 0
app:timer(1.0, function()
  n = n + 1
  if n <= #names then customer_updates:send { key = "c" .. n, value = { name = names[n] } } end
  local c = "c" .. (n % 4 + 1) -- c4 never becomes a customer
  orders:send { key = c, value = Order { id = "o" .. n, item = n % 2 == 0 and "tea" or "cake", qty = n % 3 + 1 } }
  local now = math.floor(app.rt:now())
  -- A view every second, of ad1, ad2 and ad3 in turn; ad3's pause between
  -- seconds 4 and 16 leaves its click of second 8 without a view.
  local ad = "ad" .. (n % 3 + 1)
  if ad ~= "ad3" or n < 4 or n > 16 then views:send { key = ad, value = { id = "v" .. n, ad = ad, at = now } } end
  if n % 2 == 0 then
    local cad = "ad" .. (n % 3 + 1)
    clicks:send { key = cad, value = { id = "k" .. n, ad = cad, at = now } }
  end
end)
