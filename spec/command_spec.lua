-- app:command: the app's own commands, run by the real binary as
-- `fstream-lua APP.lua NAME ...`: arguments and options, --help, sends
-- delivered before the exit, tables read offline, errors and exit codes.
local proc = require "spec.support.proc"

local bin, q = proc.bin, proc.quote
local uniq = tostring(os.time()) .. "-" .. tostring(math.random(1e6))
local store = proc.tmp .. "/cmd-store-" .. uniq

local APP = proc.write(proc.tmp .. "/cmdapp-" .. uniq .. ".lua", [[
local fstream = require "fstream"
local app = fstream.app("cmdapp", { broker = "memory://", commit_interval = 0.2 })
local orders = app:topic("orders", { partitions = 2 })
local words = app:topic("words", { value_serializer = "raw", key_serializer = "raw" })
local counts = app:table("counts", { default = 0 })
app:agent("count", words, function(stream)
  for w in stream do counts[w] = counts[w] + 1 end
end)
app:task(function()
  if os.getenv("SEED_WORDS") then
    for w in os.getenv("SEED_WORDS"):gmatch("%a+") do words:send { key = w, value = w } end
  end
end)

app:command("seed", function(args)
  for i = 1, args.count do
    orders:send { key = args.prefix .. i, value = { n = i, big = args.big } }
  end
  print(string.format("sent %d orders with prefix %s%s", args.count, args.prefix, args.dry_run and " (dry run)" or ""))
end, {
  help = "Sends COUNT orders to the orders topic",
  args = { { "count", type = "integer", help = "how many orders" } },
  options = {
    { "--prefix", "-p", help = "key prefix", default = "k" },
    { "--big", type = "number", help = "amount of each" },
    { "--dry-run", flag = true, help = "say so" },
  },
})

app:command("show", function(args, cmd)
  local t = cmd:table("counts")
  if args.word then
    local v, p = t:get(args.word)
    print(string.format("%s=%s@%s", args.word, tostring(v), tostring(p)))
    return v and 0 or 3
  end
  local rows = {}
  for k, v in t:items() do rows[#rows + 1] = k .. "=" .. v end
  table.sort(rows)
  print(table.concat(rows, " "))
end, { help = "Prints the word counts stored here", args = { { "word", optional = true } } })

app:command("boom", function()
  local order = nil
  return order.id
end, { help = "Fails" })
]])

local function run(args, env)
  return proc.run(string.format("env -u FSTREAM_BROKER %s timeout 60 %s %s %s", env or "", bin, q(APP), args))
end

describe("fstream-lua APP.lua --help", function()
  it("lists the app's commands with their one-line help, exit 0", function()
    local out, rc = run("--help")
    assert.are.equal(0, rc)
    assert.matches("Commands of app 'cmdapp':\n  seed  Sends COUNT orders to the orders topic\n"
      .. "  show  Prints the word counts stored here\n  boom  Fails\n", out, 1, true)
  end)

  it("shows one command's arguments, options and defaults", function()
    local out, rc = run("seed --help")
    assert.are.equal(0, rc)
    assert.matches("usage: fstream-lua " .. APP .. " seed COUNT [--prefix PREFIX] [--big BIG] [--dry-run]", out, 1, true)
    assert.matches("  COUNT                 how many orders (integer)\n", out, 1, true)
    assert.matches("  -p, --prefix PREFIX   key prefix (default k)\n", out, 1, true)
    assert.matches("  --dry-run             say so\n", out, 1, true)
    assert.matches("  --broker URL", out, 1, true)
  end)

  it("fstream-lua --help tells how to run the app's commands", function()
    local out, rc = proc.run(bin .. " --help")
    assert.are.equal(0, rc)
    assert.matches("fstream-lua APP.lua COMMAND [ARGS...]", out, 1, true)
  end)
end)

describe("an app command", function()
  it("sends to a topic; every message is delivered before it exits", function()
    local broker, addr = proc.broker({ "orders" }, 2)
    local out, rc = run(string.format("seed 25 --prefix o- --big=2.5 --dry-run --broker kafka://%s", addr))
    assert.are.equal(0, rc, out)
    assert.matches("sent 25 orders with prefix o- (dry run)", out, 1, true)
    -- Counted at once: nothing is left to deliver after the exit.
    assert.are.equal(25, proc.count_messages(addr, "orders"))
    local msgs = proc.consume_all(addr, "orders")
    local n = 0
    for _, m in ipairs(msgs) do
      if m:match('"big":2.5') then n = n + 1 end
    end
    assert.are.equal(25, n)
    broker:stop()
  end)

  it("reads a table offline from the files a worker left", function()
    local w = proc.spawn(string.format("env -u FSTREAM_BROKER SEED_WORDS='a b a c a b' %s worker %s --store lmdb://%s --no-web -l info",
      bin, q(APP), q(store)), "cmd-worker")
    assert(w:wait_for("worker started", 30), w:output())
    -- The counts reach LMDB at a checkpoint, the last one at the stop.
    proc.sleep(1)
    assert.are.equal(0, w:stop())
    local out, rc = run("show --store lmdb://" .. q(store))
    assert.are.equal(0, rc, out)
    assert.are.equal("a=3 b=2 c=1\n", out)
    out, rc = run("show b --store lmdb://" .. q(store))
    assert.are.equal(0, rc, out)
    assert.matches("^b=2@%d\n$", out)
    -- The command's own exit code.
    out, rc = run("show zz --store lmdb://" .. q(store))
    assert.are.equal(3, rc, out)
    assert.are.equal("zz=nil@nil\n", out)
  end)

  it("that raises exits 1 with the app's file:line and a traceback", function()
    local out, rc = run("boom")
    assert.are.equal(1, rc)
    assert.matches("fstream%-lua: command boom failed: " .. APP:gsub("%p", "%%%0") .. ":%d+: attempt to index a nil value "
      .. "%(local 'order'%)\nstack traceback:", out)
  end)

  it("refuses bad words with the command's synopsis, exit 2", function()
    local cases = {
      { "seed", "missing COUNT" },
      { "seed x", "COUNT needs an integer, got 'x'" },
      { "seed 1 2", "unexpected argument '2'" },
      { "seed 1 --nope", "unknown option '--nope'" },
      { "seed 1 --big", "option '--big' needs a value" },
      { "seed 1 --big lots", "option '--big' needs a number, got 'lots'" },
      { "seed 1 --dry-run=yes", "option '--dry-run' takes no value" },
    }
    for _, c in ipairs(cases) do
      local out, rc = run(c[1])
      assert.are.equal(2, rc, c[1])
      assert.matches("fstream-lua: " .. c[2] .. "\nusage: fstream-lua " .. APP .. " seed COUNT", out, 1, true)
    end
  end)

  it("that does not exist, or is one of fstream-lua's own, is named in the error, exit 2", function()
    local out, rc = run("nope")
    assert.are.equal(2, rc)
    assert.matches("app 'cmdapp' has no command 'nope' (fstream-lua " .. APP .. " --help lists its commands)", out, 1, true)
    out, rc = run("worker")
    assert.are.equal(2, rc)
    assert.matches("'worker' is a command of fstream-lua itself: fstream-lua worker " .. APP, out, 1, true)
    out, rc = run("")
    assert.are.equal(2, rc)
    assert.matches("missing COMMAND after " .. APP, out, 1, true)
  end)
end)

describe("app:command's declaration", function()
  local fstream = require "fstream"

  it("refuses a built-in command's name, at the line that declares it", function()
    local app = fstream.app("cmd-decl")
    local ok, err = pcall(function() app:command("worker", function() end) end)
    assert.is_false(ok)
    assert.matches("command_spec.lua:%d+: app:command: 'worker' is a built%-in command of fstream%-lua", err)
    assert.has_error(function() app:command("send", function() end) end)
  end)

  it("refuses options that clash with fstream-lua's own, and names used twice", function()
    local app = fstream.app("cmd-decl2")
    assert.has_error(function() app:command("a", function() end, { options = { { "--broker" } } }) end,
      "app:command: command 'a': option --broker clashes with fstream-lua's own --broker")
    assert.has_error(function() app:command("b", function() end, { options = { { "--x", "-l" } } }) end,
      "app:command: command 'b': option --x clashes with fstream-lua's own --loglevel")
    local ok, err = pcall(function() app:command("c", function() end, { args = { "n" }, options = { { "--n" } } }) end)
    assert.is_false(ok)
    assert.matches("command_spec.lua:%d+: app:command: command 'c': option %-%-n uses the name 'n' twice$", err)
    ok, err = pcall(function() app:command("c", function() end, { options = { { "--n", type = "bool" } } }) end)
    assert.matches('command_spec.lua:%d+: app:command: command \'c\': option %-%-n: type must be "string", '
      .. '"number" or "integer", got bool$', err)
    assert.has_error(function() app:command("d", function() end, { args = { { "a", optional = true }, "b" } }) end,
      "app:command: command 'd': argument b is required but follows an optional one")
    app:command("e", function() end)
    assert.has_error(function() app:command("e", function() end) end, "command 'e' is already defined")
  end)
end)
