-- In-process CPU cost of the runtime's JSON encoder (fstream.json.encode, the
-- codec behind every json topic and table) on the values a worker typically
-- writes. BENCHMARKS.md (JSON encoding) uses it.
--
--   lua5.4 bench/json_encode.lua [-n COUNT] [--so PATH/fstream_core.so]
--
-- Shapes: `record6` a 6-field record instance (declared field order),
-- `plain6` the same fields in a plain table, `stateless3` the 3-field object
-- bench/stateless.lua sends, `nested` an object with an array of 3 objects.
-- Prints ns per encode, the least of 5 rounds (other load only adds time).
-- $BENCH_BUILD_DIR picks the build (default build-rel); --so overrides it.
local here = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/.."
local so = (os.getenv("BENCH_BUILD_DIR") or (here .. "/build-rel")) .. "/fstream_core.so"
local n = 1000000
local i = 1
while i <= #arg do
  if arg[i] == "-n" then
    n = assert(math.tointeger(tonumber(arg[i + 1])), "-n needs a number")
  elseif arg[i] == "--so" then
    so = arg[i + 1]
  else
    error("unknown argument " .. arg[i])
  end
  i = i + 2
end
package.path = here .. "/lua/?.lua;" .. here .. "/lua/?/init.lua;" .. package.path
package.preload["fstream.core"] = function() return assert(package.loadlib(so, "luaopen_fstream_core"))() end

local fstream = require "fstream"
local encode = fstream.json.encode

local ok, Order = pcall(fstream.record, "Order", {
  { id = "integer" }, { account_id = "string" }, { product_id = "string" },
  { amount = "number" }, { price = "number" }, { paid = "boolean" },
})
if not ok then -- a version without ordered declarations: the same fields as a map
  Order = fstream.record("Order", { id = "integer", account_id = "string", product_id = "string",
    amount = "number", price = "number", paid = "boolean" })
end
local fields = { id = 123456, account_id = "acct-42", product_id = "sku-9", amount = 3, price = 19.99, paid = true }
local plain = {}
for k, v in pairs(fields) do plain[k] = v end

local shapes = {
  { "record6", Order(fields) },
  { "plain6", plain },
  { "stateless3", { id = 123456, account_id = "acct-42", total = 59.97 } },
  { "nested", { user = "u1", items = { { sku = "a", n = 1 }, { sku = "b", n = 2 }, { sku = "c", n = 3 } } } },
}

for _, shape in ipairs(shapes) do
  local name, v = shape[1], shape[2]
  local best = math.huge
  for _ = 1, 5 do
    local t0 = os.clock()
    for _ = 1, n do encode(v) end
    best = math.min(best, os.clock() - t0)
  end
  print(string.format("%-10s %7.1f ns/encode  %s", name, best / n * 1e9, encode(v)))
end
