-- scripts/chaos: parses the command line and runs the scenarios through
-- chaos/lib.lua. See scripts/chaos for the options.
local root = os.getenv("FSTREAM_ROOT") or "."
package.path = root .. "/?.lua;" .. root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
local build = os.getenv("FSTREAM_BUILD") or (root .. "/build")
package.preload["fstream.core"] = function()
  return assert(package.loadlib(build .. "/fstream_core.so", "luaopen_fstream_core"))()
end

local lib = require "chaos.lib"

local opts, names = {}, {}
local i = 1
while i <= #arg do
  local a = arg[i]
  if a == "--quick" then opts.quick = true
  elseif a == "--reps" then i = i + 1; opts.reps = assert(tonumber(arg[i]), "--reps needs a number")
  elseif a == "--guarantee" then i = i + 1; opts.guarantees = { (assert(arg[i], "--guarantee needs a value")) }
  elseif a == "--list" then opts.list = true
  elseif a == "-h" or a == "--help" then
    io.write("usage: scripts/chaos [--quick] [--reps N] [--guarantee G] [--list] [SCENARIO...]\n")
    os.exit(0)
  elseif a:sub(1, 1) == "-" then io.stderr:write("scripts/chaos: unknown option " .. a .. "\n"); os.exit(2)
  else names[#names + 1] = a end
  i = i + 1
end

if opts.list then
  for _, s in ipairs(lib.scenarios()) do
    io.write(string.format("%-10s %s%s\n", s.name, s.title, s.quick_in_suite and "  (quick version in scripts/test)" or ""))
  end
  os.exit(0)
end

local selected = {}
if #names == 0 then selected = lib.scenarios()
else
  for _, n in ipairs(names) do
    local s = lib.scenario(n)
    if not s then io.stderr:write("scripts/chaos: no scenario " .. n .. " (--list shows them)\n"); os.exit(2) end
    selected[#selected + 1] = s
  end
end

local all, failed = {}, 0
for _, s in ipairs(selected) do
  local rows, err = lib.run(s, opts)
  for _, r in ipairs(rows) do all[#all + 1] = r; if not r.ok then failed = failed + 1 end end
  if err then failed = failed + 1; io.stderr:write("scenario " .. s.name .. " failed: " .. err .. "\n") end
end
io.write("\n", lib.format(all), "\n")
io.write(string.format("%d figures, %d failed\n", #all, failed))
os.exit(failed == 0 and 0 or 1)
