-- Input for spec/fixtures/groupby_agent.lua: orders keyed by order id whose
-- totals per account the fixture keeps after regrouping by account.
local proc = require "spec.support.proc"
local json = require("fstream.core").json

local M = {}

-- Lines "order-i<TAB>{json}" for i = from..to (produce them with
-- key_delim = "\t"); adds each order's amount to expect[account].
function M.lines(from, to, expect)
  local lines = {}
  for i = from, to do
    local acct = "acct-" .. (i % 37)
    lines[#lines + 1] = string.format('order-%d\t{"account":"%s","amount":%d}', i, acct, i % 10)
    expect[acct] = (expect[acct] or 0) + i % 10
  end
  return lines
end

-- The sum of a table's values (the total of every account).
function M.sum(t)
  local n = 0
  for _, v in pairs(t) do n = n + v end
  return n
end

-- The fixture's table `totals` as `fstream-lua table` reads it from the store
-- (cmd: "env ... BIN" with the app's environment): key -> value and
-- key -> partition; a key listed twice is an error.
function M.totals(cmd, app_path, store)
  local out = proc.run(string.format("%s table %s totals --store lmdb://%s 2>/dev/null", cmd, app_path, store))
  local got, parts = {}, {}
  for line in out:gmatch("[^\n]+") do
    local r = json.decode(line)
    assert(got[r.key] == nil, r.key .. " appears twice")
    got[r.key], parts[r.key] = r.value, r.partition
  end
  return got, parts
end

-- Waits until read()'s totals add up to n, `timeout` seconds pass, or worker w ends.
function M.wait_sum(read, n, w, timeout)
  local deadline = os.time() + (timeout or 60)
  repeat proc.sleep(1) until M.sum(read()) >= n or os.time() > deadline or not w:alive()
end

return M
