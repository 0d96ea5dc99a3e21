-- The seeds' withdrawals: per-user totals in a table, fed by a timer that
-- sends a random withdrawal every half second; the totals print every 5 s.
--   fstream-lua worker examples/withdrawals.lua
local fstream = require "fstream"

local app = fstream.app("withdrawals-example", { broker = "memory://", topic_partitions = 4 })

-- Faust's Withdrawal(user, country, amount), validated on the way in.
local Withdrawal = {
  from = function(v)
    if type(v) ~= "table" or type(v.user) ~= "string" or type(v.country) ~= "string"
      or type(v.amount) ~= "number" then
      error("Withdrawal needs user (string), country (string), amount (number)")
    end
    return v
  end,
}

-- Keyed by user: each user's total lives in the partition of that user's events.
local withdrawals = app:topic("withdrawals", { value_type = Withdrawal })
local user_to_total = app:table("user_to_total", { default = 0 })

app:agent("find_large_user_withdrawals", withdrawals, function(stream)
  for w in stream do
    local total = user_to_total[w.user] + w.amount
    user_to_total[w.user] = total
    if total > 1000 and total - w.amount <= 1000 then
      print(string.format("user %s went over 1000 (now %.2f)", w.user, total))
    end
  end
end)

local users = { "alice", "bob", "carol", "dave", "erin" }
local countries = { "SE", "FR", "CN", "US" }
app:timer(0.5, function()
  local user = users[math.random(#users)]
  withdrawals:send { key = user, value = {
    user = user, country = countries[math.random(#countries)], amount = math.random(1, 20000) / 100,
  } }
end)

app:timer(5.0, function()
  local parts = {}
  for user, total in user_to_total:items() do parts[#parts + 1] = string.format("%s=%.2f", user, total) end
  table.sort(parts)
  print("totals: " .. table.concat(parts, " "))
end)
