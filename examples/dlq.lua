-- Error topics: payments that fail validation go straight to the dead-letter
-- topic "payments-process-dlq" with their original bytes and the reason in
-- headers; payments that hit a temporary failure go through the retry topic
-- and succeed on their second attempt.
--   fstream-lua worker examples/dlq.lua
local fstream = require "fstream"

local app = fstream.app("payments", { broker = "memory://", topic_partitions = 2 })

local Payment = fstream.record("Payment", { id = "integer", account = "string", amount = "number" })
local payments = app:topic("payments", { value_type = Payment })

-- A downstream service that refuses every third payment the first time it sees it.
local seen = {}
local function charge(p)
  seen[p.id] = (seen[p.id] or 0) + 1
  if p.id % 3 == 0 and seen[p.id] == 1 then error("payment service busy, try later") end
  print(string.format("charged payment %d (%s, %.2f) on attempt %d", p.id, p.account, p.amount, seen[p.id]))
end

app:agent("process", payments, function(stream)
  for p in stream do
    if p.amount <= 0 then error("amount must be positive, got " .. p.amount) end
    charge(p)
  end
end, { on_error = { "retry", attempts = 3, backoff = 1.0 } })

-- What ends up in the dead-letter topic.
app:agent("dead_letters", app:topic("payments-process-dlq", { key_serializer = "raw", value_serializer = "raw" }),
  function(stream)
    for ev in stream:events() do
      print(string.format("DLQ: %s (from %s[%s]@%s): %s", ev.value, ev.headers["fstream-topic"],
        ev.headers["fstream-partition"], ev.headers["fstream-offset"], ev.headers["fstream-error"]))
    end
  end)

local n = 0
app:timer(1.0, function()
  n = n + 1
  if n % 4 == 0 then
    payments:send { key = "acct", value = { id = "not a number", account = "acct-x", amount = 1 } } -- fails validation
  else
    payments:send { key = "acct", value = { id = n, account = "acct-" .. n % 3, amount = n % 5 == 0 and -1 or n * 1.5 } }
  end
end)
