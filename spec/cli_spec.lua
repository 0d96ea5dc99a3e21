-- The command line as a user meets it: the real fstream-lua binary, its
-- messages for bad input, each command's --help, and what a worker prints
-- when it starts and stops.
local proc = require "spec.support.proc"

local bin, fixtures = proc.bin, proc.root .. "/spec/fixtures"
local q = proc.quote
local uniq = tostring(os.time()) .. "-" .. tostring(math.random(1e6))
local relay = fixtures .. "/relay.lua"

-- Runs the binary with a bound on time (a bad URL must never wait for a
-- broker): output, exit code.
local function run(args, env)
  return proc.run(string.format("%s timeout 60 %s %s", env or "", bin, args))
end

local FORMS = "memory:// or kafka://HOST[:PORT][,HOST[:PORT]...]"

describe("a bad broker URL", function()
  it("`send --broker foo://x` says what is wrong with it, exit 2", function()
    local out, rc = run("send " .. relay .. " T --broker foo://x 1")
    assert.are.equal("fstream-lua: --broker: bad broker URL 'foo://x': use " .. FORMS .. "\n", out)
    assert.are.equal(2, rc)
  end)

  it("`worker --broker foo://x` says what is wrong with it, exit 2", function()
    local out, rc = run("worker " .. relay .. " --broker foo://x")
    assert.are.equal("fstream-lua: --broker: bad broker URL 'foo://x': use " .. FORMS .. "\n", out)
    assert.are.equal(2, rc)
  end)

  it("names FSTREAM_BROKER or the app's broker option when the URL comes from there", function()
    local out, rc = run("worker " .. relay, "env FSTREAM_BROKER=bar://y")
    assert.are.equal("fstream-lua: FSTREAM_BROKER: bad broker URL 'bar://y': use " .. FORMS .. "\n", out)
    assert.are.equal(2, rc)
    local app = proc.write(proc.tmp .. "/badbroker-" .. uniq .. ".lua", [[
      local app = require("fstream").app("badbroker", { broker = "kafka:/localhost:9092" })
      app:topic("t")
    ]])
    out, rc = run("send " .. app .. " t 1", "env -u FSTREAM_BROKER")
    assert.are.equal("fstream-lua: the broker option of app 'badbroker': bad broker URL 'kafka:/localhost:9092': use "
      .. FORMS .. "\n", out)
    assert.are.equal(2, rc)
  end)

  it("rejects malformed kafka:// and memory:// URLs at once, for send and worker alike", function()
    local cases = {
      { "kafka://", "no host after kafka://" },
      { "kafka://:9092", "a host is missing" },
      { "kafka://h:", "the port after ':' is missing" },
      { "kafka://h:0", "the port must be a number from 1 to 65535" },
      { "kafka://h:65536", "the port must be a number from 1 to 65535" },
      { "kafka://h:9x", "the port must be a number from 1 to 65535" },
      { "kafka://a:1,", "a host is missing" },
      { "kafka://a:1,,b:2", "a host is missing" },
      { "kafka://a b:1", "' ' cannot be part of a host name" },
      { "kafka://h:1/path", "the port must be a number from 1 to 65535" },
      { "kafka://[::1", "an IPv6 address needs its closing ']'" },
      { "memory://x", "memory:// takes nothing after it" },
      { "", "use " .. FORMS },
    }
    for _, c in ipairs(cases) do
      local want = string.format("fstream-lua: --broker: bad broker URL '%s': %s\n", c[1], c[2])
      local t0 = os.time()
      local out, rc = run("send " .. relay .. " T --broker " .. q(c[1]) .. " 1")
      assert.are.equal(want, out)
      assert.are.equal(2, rc, c[1])
      out, rc = run("worker " .. relay .. " --broker " .. q(c[1]))
      assert.are.equal(want, out)
      assert.are.equal(2, rc, c[1])
      assert.is_true(os.time() - t0 <= 5, c[1] .. " took " .. (os.time() - t0) .. " s")
    end
  end)

  it("a broker that does not answer: send and worker exit 1 with one clear last line", function()
    local want = "fstream-lua: cannot start app 'relay': no answer from the broker at 127.0.0.1:1 within 10 s "
      .. "(Local: Broker transport failure): is it running?"
    for _, args in ipairs { "send " .. relay .. " in --broker kafka://127.0.0.1:1 x",
      "worker " .. relay .. " --broker kafka://127.0.0.1:1" } do
      local out, rc = run(args)
      assert.are.equal(1, rc, out)
      assert.are.equal(want, out:match("([^\n]*)\n$"), out)
      assert.is_nil(out:find("(null)", 1, true), out)
    end
  end)

  it("accepts host lists, hosts without a port and IPv6 addresses", function()
    -- Well-formed: `agents` loads the app without connecting; the check is the same.
    local core = require "fstream.core"
    for _, u in ipairs { "memory://", "kafka://localhost", "kafka://a:1,b.example.com:9092", "kafka://[::1]:9092",
      "kafka://10.0.0.1:65535", "kafka://my_host-2:19092" } do
      assert.is_true(core.broker_check(u), u)
    end
  end)
end)

describe("bad command-line input", function()
  local app = relay
  -- command line, expected message (first line), exit code
  local cases = {
    { "frob", "unknown command 'frob'" },
    { "help frob", "unknown command 'frob'" },
    { "", "missing command" },
    { "worker", "missing APP.lua" },
    { "send " .. app, "missing TOPIC|@AGENT" },
    { "table", "missing APP.lua" },
    { "worker " .. app .. " --frob", "unknown option '--frob'" },
    { "send " .. app .. " T --store x 1", "unknown option '--store'" },
    { "agents " .. app .. " -x", "unknown option '-x'" },
    -- agents reads the app script only: a broker URL would be ignored, so it is refused
    { "agents " .. app .. " --broker memory://", "unknown option '--broker'" },
    { "tables " .. app .. " --key k", "unknown option '--key'" },
    { "table " .. app .. " t --broker memory://", "unknown option '--broker'" },
    { "reset " .. app .. " --reload", "unknown option '--reload'" },
    { "broker --store x", "unknown option '--store'" },
    { "worker " .. app .. " --broker", "option '--broker' needs a value" },
    { "send " .. app .. " T 1 --key", "option '--key' needs a value" },
    { "table " .. app .. " t --store", "option '--store' needs a value" },
    { "broker --topic", "option '--topic' needs a value" },
    { "worker " .. app .. " --reload=yes", "option '--reload' takes no value" },
    { "worker " .. app .. " -l loud", "unknown log level 'loud' (debug, info, warn or error)" },
  }
  for _, c in ipairs(cases) do
    it("`fstream-lua " .. c[1] .. "`: " .. c[2] .. ", the usage, exit 2", function()
      local out, rc = run(c[1])
      assert.are.equal(2, rc, out)
      local first, rest = out:match("^([^\n]*)\n(.*)$")
      assert.are.equal("fstream-lua: " .. c[2], first)
      local cmd = c[1]:match("^(%a+)")
      if cmd and cmd ~= "frob" and cmd ~= "help" then
        -- the command's own synopsis, not every command's
        assert.matches("^usage: fstream%-lua " .. cmd .. " ", rest)
        assert.is_nil(rest:find("fstream-lua " .. (cmd == "send" and "worker" or "send") .. " ", 1, true), rest)
      else
        assert.matches("^usage: fstream%-lua worker ", rest)
      end
    end)
  end

  -- Messages from the commands themselves (exit 2, one line).
  local more = {
    { "worker /nonexistent/app.lua", "cannot open app script '/nonexistent/app.lua'" },
    { "send /nonexistent/app.lua T 1", "cannot open app script '/nonexistent/app.lua'" },
    { "agents /nonexistent/app.lua", "cannot open app script '/nonexistent/app.lua'" },
    { "tables /nonexistent/app.lua", "cannot open app script '/nonexistent/app.lua'" },
    { "table /nonexistent/app.lua t", "cannot open app script '/nonexistent/app.lua'" },
    { "reset /nonexistent/app.lua", "cannot open app script '/nonexistent/app.lua'" },
    { "send " .. app .. " T --partition x 1", "--partition needs a partition number (0, 1, ...), got 'x'" },
    { "send " .. app .. " T -p -1 1", "--partition needs a partition number (0, 1, ...), got '-1'" },
    { "send " .. app .. " T --partition 1.5 1", "--partition needs a partition number (0, 1, ...), got '1.5'" },
    { "send " .. app .. " T --repeat x 1", "--repeat needs a count (1, 2, ...), got 'x'" },
    { "send " .. app .. " T -n 0 1", "--repeat needs a count (1, 2, ...), got '0'" },
    { "send " .. app .. " T --repeat=2.5 1", "--repeat needs a count (1, 2, ...), got '2.5'" },
    { "send " .. app .. " T", "send needs a VALUE" },
    { "broker --brokers 0", "--brokers needs a number from 1 to 16, got '0'" },
    { "broker --brokers 17", "--brokers needs a number from 1 to 16, got '17'" },
    { "broker --partitions x", "--partitions needs a count (1, 2, ...), got 'x'" },
    { "broker --partitions 0", "--partitions needs a count (1, 2, ...), got '0'" },
  }
  for _, c in ipairs(more) do
    it("`fstream-lua " .. c[1] .. "`: " .. c[2] .. ", exit 2", function()
      local out, rc = run(c[1])
      assert.are.equal("fstream-lua: " .. c[2] .. "\n", out)
      assert.are.equal(2, rc)
    end)
  end

  it("never prints (null)", function()
    for _, args in ipairs { "send " .. app .. " T --broker foo://x 1", "worker " .. app .. " --broker foo://x",
      "broker --brokers 0", "send " .. app .. " T --broker kafka:// 1" } do
      local out = run(args)
      assert.is_nil(out:find("(null)", 1, true), out)
    end
  end)
end)

describe("COMMAND --help", function()
  local commands = {
    worker = "usage: fstream-lua worker APP.lua [-l debug|info|warn|error] [--broker URL] [--store URL]",
    send = "usage: fstream-lua send APP.lua TOPIC|@AGENT [--key K] [--partition N] [--repeat N]",
    agents = "usage: fstream-lua agents APP.lua\n",
    tables = "usage: fstream-lua tables APP.lua [--store URL]\n",
    table = "usage: fstream-lua table APP.lua NAME [--key K] [--store URL]\n",
    reset = "usage: fstream-lua reset APP.lua [--store URL]\n",
    broker = "usage: fstream-lua broker [--brokers N] [--partitions N] [--topic NAME]... [--address-file FILE]\n",
  }
  for cmd, synopsis in pairs(commands) do
    it(cmd .. " --help, " .. cmd .. " -h and help " .. cmd .. " print " .. cmd .. "'s own usage, exit 0", function()
      for _, args in ipairs { cmd .. " --help", cmd .. " -h", "help " .. cmd, cmd .. " " .. relay .. " --frob --help" } do
        local out, rc = run(args)
        assert.are.equal(0, rc, out)
        assert.are.equal(synopsis, out:sub(1, #synopsis), args)
        -- no other command's synopsis
        for other in pairs(commands) do
          if other ~= cmd then assert.is_nil(out:find("fstream-lua " .. other .. " ", 1, true), args .. ":\n" .. out) end
        end
      end
    end)
  end

  it("--help alone lists every command", function()
    local out, rc = run("--help")
    assert.are.equal(0, rc)
    for cmd in pairs(commands) do assert.truthy(out:find("fstream-lua " .. cmd .. " ", 1, true), cmd) end
  end)
end)

describe("a worker's start and stop on a standalone embedded broker", function()
  local broker, addr, out, rc
  local id, input = "wcs-" .. uniq, "wcs-in-" .. uniq
  local changelog = id .. "-word_counts-changelog"
  setup(function()
    broker, addr = proc.broker({}, 4)
    local store = proc.tmp .. "/wcs-store-" .. uniq
    proc.create_topics(addr, input)
    local lines = {}
    for i = 1, 200 do lines[#lines + 1] = string.format("w%d:w%d", i % 37, i % 37) end
    proc.produce_lines(addr, input, lines, { key_delim = ":" })
    local w = proc.spawn(string.format("env APP_ID=%s IN=%s %s worker %s/wordcount.lua --broker kafka://%s --store lmdb://%s",
      id, input, bin, fixtures, addr, store), "worker-wcs")
    assert(w:wait_for("assigned 4 partitions", 60), w:output())
    -- every word counted and checkpointed
    local deadline = os.time() + 60
    while proc.count_messages(addr, changelog) < 37 and os.time() < deadline do proc.sleep(0.3) end
    proc.sleep(1)
    rc = w:stop()
    out = w:output()
  end)
  teardown(function() broker:stop() end)

  it("prints its banner first, before its try at creating topics", function()
    assert.are.equal(0, rc, out)
    assert.matches("^fstream%-lua %d+%.%d+%.%d+ worker %(pid %d+%)\n  app        " .. id:gsub("%-", "%%-") .. "\n", out)
    -- this broker has no CreateTopics: the worker says so, after the banner
    local store_line, creating = out:find("  store ", 1, true), out:find("could not create topics", 1, true)
    assert.truthy(store_line and creating and store_line < creating, out)
  end)

  it("shows a table's changelog with the table's serializers (JSON), not raw", function()
    assert.truthy(out:find("             " .. changelog .. " (key json, value json, 4 partitions)\n", 1, true), out)
    assert.truthy(out:find("  topics     " .. input .. " (key raw, value raw, 4 partitions)\n", 1, true), out)
  end)

  it("counts in its stop summary every record it wrote to the changelog, the last flush included", function()
    local n = tonumber(out:match("tables: (%d+) changelog records"))
    assert.truthy(n, out)
    assert.are.equal(proc.count_messages(addr, changelog), n)
    -- the summary comes after the partitions were given up (their last flush)
    assert.truthy(out:find("revocation done", 1, true) < out:find("tables: %d+ changelog records"), out)
  end)
end)

describe("the command table of fstream.cli (the one definition main.c asks)", function()
  local cli = require "fstream.cli"

  it("documents every option of every command in its --help", function()
    for _, c in ipairs(cli.commands) do
      for _, o in ipairs(c.options) do
        assert.truthy(c.details:find(o.long, 1, true), c.name .. " " .. o.long)
        if o.short then assert.truthy(c.details:find(o.short .. ", " .. o.long, 1, true), c.name .. " " .. o.short) end
      end
    end
  end)

  it("reads positional words, --name=VALUE, short names and repeated options into one table", function()
    local cmd, opts = cli.parse { "send", "app.lua", "T", "-k", "a", "--partition=2", "-5" }
    assert.are.equal("send", cmd)
    assert.are.same({ app = "app.lua", target = "T", key = "a", partition = "2", args = { "-5" } }, opts)
    cmd, opts = cli.parse { "broker", "--topic", "a", "--topic=b", "--brokers", "3" }
    assert.are.equal("broker", cmd)
    assert.are.same({ topics = { "a", "b" }, brokers = "3", args = {} }, opts)
    cmd, opts = cli.parse { "worker", "app.lua", "--reload" }
    assert.are.same({ app = "app.lua", reload = "1", args = {} }, opts)
  end)
end)
