-- Input for spec/fixtures/groupby_agent.lua: orders keyed by order id whose
-- totals per account the fixture keeps after regrouping by account.
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

return M
