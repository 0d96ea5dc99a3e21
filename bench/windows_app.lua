-- The windows benchmark's app on a real broker: bench/windows.lua's scenario
-- $WINBENCH_SCENARIO (default hop10), built by the same code as the
-- in-process runs, reading JSON events {k, ts, v} from $WINBENCH_IN and
-- writing one message per closed window to $WINBENCH_OUT, which
-- bench/windows.sh times with bench-watch. The app id (so the consumer group
-- and the changelog topic) comes from $WINBENCH_APP: each run gets fresh ones.
--   fstream-lua worker bench/windows_app.lua --broker kafka://ADDR --store lmdb://DIR
local fstream = require "fstream"
local bench = require "windows"   -- bench/ is on package.path: the worker adds the script's directory

local name = os.getenv("WINBENCH_SCENARIO") or "hop10"
local sc = bench.SCENARIOS[name] or error("WINBENCH_SCENARIO: unknown scenario '" .. name .. "'")
if not sc.kind then error("WINBENCH_SCENARIO: '" .. name .. "' has no windows and writes nothing to time") end

bench.build(fstream, sc, {
  id = os.getenv("WINBENCH_APP") or ("winbench-" .. name),
  input = os.getenv("WINBENCH_IN"),
  output = os.getenv("WINBENCH_OUT"),
  expires = tonumber(os.getenv("WINBENCH_EXPIRES") or "2"),
  partitions = 8,
})
