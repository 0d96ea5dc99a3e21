-- The "join" benchmark app: the stateless scenario's orders (keyed by
-- account, placed by murmur2) joined with an accounts table on the order's
-- key, then transformed and sent as the stateless app does, with the account's
-- tier added. bench/join.sh runs it next to bench/stateless.lua on one input.
local fstream = require "fstream"

-- BENCH_STORE: where the table lives (bench/join.sh: a directory it removes afterwards).
local store = os.getenv("BENCH_STORE")
local app = fstream.app(os.getenv("BENCH_APP") or "bench-join", {
  broker = "memory://", topic_partitions = 8, store = store and ("lmdb://" .. store) or nil,
})

local input = app:topic(os.getenv("BENCH_IN") or "bench-in")
local output = app:topic(os.getenv("BENCH_OUT") or "bench-out")
local accounts = app:table("accounts")

app:agent("accounts", app:topic(os.getenv("BENCH_ACCOUNTS") or "bench-accounts"), function(stream)
  for id, account in stream:items() do accounts[id] = account end
end)

app:agent("transform", input, function(stream)
  for order, account in stream:join(accounts, { type = "left" }) do
    output:send{
      key = order.account_id,
      value = { id = order.id, account_id = order.account_id, total = order.amount * order.price,
        tier = account and account.tier },
    }
  end
end)
