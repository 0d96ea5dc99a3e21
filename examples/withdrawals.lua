-- The seeds' withdrawals: two agents on one topic. One keeps per-user totals
-- (the topic is keyed by user already); the other regroups the withdrawals by
-- country inside the agent, as the seeds write it —
--   async for withdrawal in withdrawals.group_by(Withdrawal.country):
-- — so that each country's 10 s tumbling-window total lives in one partition.
-- A timer sends a random withdrawal every half second; user totals print
-- every 5 s, and each country's total when its window closes.
--   fstream-lua worker examples/withdrawals.lua
local fstream = require "fstream"

local app = fstream.app("withdrawals-example", { broker = "memory://", topic_partitions = 4 })

-- Faust's Withdrawal(user, country, amount), validated on the way in.
local Withdrawal = fstream.record("Withdrawal", { user = "string", country = "string", amount = "number" })

local withdrawals = app:topic("withdrawals", { value_type = Withdrawal })
local user_to_total = app:table("user_to_total", { default = 0 })
local country_to_total = app:table("country_to_total", {
  default = 0,
  on_window_close = function(country, window, total)
    print(string.format("country %s: %.2f withdrawn in [%d, %d)", country, total, window.start, window["end"]))
  end,
}):tumbling(10, { expires = 10 })

app:agent("find_large_user_withdrawals", withdrawals, function(stream)
  for w in stream do
    local total = user_to_total[w.user] + w.amount
    user_to_total[w.user] = total
    if total > 1000 and total - w.amount <= 1000 then
      print(string.format("user %s went over 1000 (now %.2f)", w.user, total))
    end
  end
end)

-- The repartition topic is "withdrawals-example-find_large_country_withdrawals-country-repartition".
app:agent("find_large_country_withdrawals", withdrawals, function(stream)
  for w in stream:group_by("country") do
    country_to_total:update(w.country, function(total) return total + w.amount end)
  end
end)

local users = { "alice", "bob", "carol", "dave", "erin" }
local countries = { "SE", "FR", "CN", "US" }
app:timer(0.5, function()
  local user = users[math.random(#users)]
  local w = Withdrawal { user = user, country = countries[math.random(#countries)], amount = math.random(1, 20000) / 100 }
  print(string.format("sent %s %s %.2f at %.3f", w.user, w.country, w.amount, app.rt:now()))
  withdrawals:send { key = user, value = w }
end)

app:timer(5.0, function()
  local parts = {}
  for user, total in user_to_total:items() do parts[#parts + 1] = string.format("%s=%.2f", user, total) end
  table.sort(parts)
  print("totals: " .. table.concat(parts, " "))
end)
