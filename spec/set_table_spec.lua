-- Set tables through fstream.testing: members added and discarded one at a
-- time, read back as a set. (fstream.testing keeps tables in Lua only: the
-- changelog records, LMDB and recovery are spec/set_table_e2e_spec.lua's.)
local fstream = require "fstream"

local function app(id)
  return fstream.app(id, { topic_partitions = 4 })
end

describe("a set table", function()
  local t
  after_each(function() if t then t:close(); t = nil end end)

  local function tags_app(id)
    local a = app(id)
    local ops = a:topic("ops")
    local tags = a:set_table("tags")
    a:agent("tagger", ops, function(stream)
      for k, op in stream:items() do
        if op.add then tags[k]:add(op.add) end
        if op.discard then tags[k]:discard(op.discard) end
        if op.check then stream:yield { key = k, member = op.check, has = tags[k]:contains(op.check), n = #tags[k] } end
      end
    end, { sink = { a:topic("answers") } })
    return a, ops, tags
  end

  it("adds, discards and answers membership, count and the member list", function()
    local a, ops = tags_app("sets1")
    t = fstream.testing(a)
    t:send(ops, { key = "alice", value = { add = "red" } })
    t:send(ops, { key = "alice", value = { add = "blue" } })
    t:send(ops, { key = "alice", value = { add = "red" } }) -- twice: still one member
    t:send(ops, { key = "bob", value = { add = 7 } })
    t:send(ops, { key = "bob", value = { add = 7.0 } })     -- the same member as 7
    t:send(ops, { key = "alice", value = { check = "red" } })
    t:send(ops, { key = "alice", value = { discard = "red" } })
    t:send(ops, { key = "alice", value = { check = "red" } })
    t:send(ops, { key = "alice", value = { discard = "never-there" } })
    t:run()
    assert.are.same({
      { key = "alice", member = "red", has = true, n = 2 },
      { key = "alice", member = "red", has = false, n = 1 },
    }, t:outputs("answers"))
    local tags = t:table("tags")
    assert.are.same({ "blue" }, tags.alice:list())
    assert.are.same({ 7 }, tags.bob:list())
    assert.is_true(tags.bob:contains(7))
    assert.is_false(tags.bob:contains(8))
    assert.are.equal(0, #tags.carol)
    assert.are.same({}, tags.carol:list())
    local seen = {}
    for m in pairs(tags.alice) do seen[#seen + 1] = m end
    assert.are.same({ "blue" }, seen)
    local items = {}
    for k, members in tags:items() do items[k] = members end
    assert.are.same({ alice = { "blue" }, bob = { 7 } }, items)
  end)

  it("keeps a set across many operations on one hot key", function()
    local a, ops = tags_app("sets2")
    t = fstream.testing(a)
    for i = 1, 20 do t:send(ops, { key = "k", value = { add = "m" .. i } }) end
    t:run()
    t:advance(a.commit_interval + 0.1)
    for i = 1, 10 do t:send(ops, { key = "k", value = { discard = "m" .. (2 * i) } }) end
    t:send(ops, { key = "k", value = { add = "m2" } })
    t:run()
    local want = { "m1", "m11", "m13", "m15", "m17", "m19", "m2", "m3", "m5", "m7", "m9" }
    assert.are.same(want, t:table("tags").k:list())
    assert.are.equal(11, #t:table("tags").k)
    assert.is_true(t:table("tags").k:contains("m2"))
    assert.is_false(t:table("tags").k:contains("m4"))
    local listed = {}
    for m in t:table("tags").k:members() do listed[#listed + 1] = m end
    assert.are.same(want, listed)
    assert.are.equal('{"m1", "m11", "m13", "m15", "m17", "m19", "m2", "m3", "m5", "m7", "m9"}', tostring(t:table("tags").k))
    -- What the key's pending operations are tracked in goes with the record
    -- cache at a checkpoint (fstream.testing has none: the rotation by hand).
    local st = require("fstream.table").state(t:table("tags"))
    local p, part = next(st.parts)
    while not part.sets do p, part = next(st.parts, p) end
    st.rotate(part, true)
    assert.is_nil(part.sets)
    assert.is_truthy(part.sets_prev['["k",'])
    st.rotate(part, false)
    assert.is_nil(part.sets_prev)
  end)

  it("replaces a whole set by assignment and clears it with nil", function()
    local a = app("sets5")
    local src = a:topic("src")
    local s = a:set_table("s")
    a:agent("w", src, function(stream)
      for k, v in stream:items() do s[k] = v.list end
    end)
    t = fstream.testing(a)
    t:send(src, { key = "x", value = { list = { 1, 2, 3 } } })
    t:send(src, { key = "y", value = { list = { "q" } } })
    t:send(src, { key = "x", value = { list = { 3, 4 } } })
    t:run()
    assert.are.same({ 3, 4 }, t:table("s").x:list())
    t:send(src, { key = "y", value = {} })
    t:run()
    assert.are.same({}, t:table("s").y:list())
  end)

  it("is a global set table too, readable from a task without an event", function()
    local a = app("sets6")
    local src = a:topic("src")
    local g = a:set_global_table("g")
    local seen
    a:agent("w", src, function(stream)
      for k, v in stream:items() do g[k]:add(v) end
    end)
    a:timer(5, function() seen = g.key:list() end)
    t = fstream.testing(a)
    t:send(src, { key = "key", value = "one" })
    t:send(src, { key = "other", value = "two" })
    t:send(src, { key = "key", value = "three" })
    t:run()
    t:advance(5.1)
    assert.are.same({ "one", "three" }, seen)
  end)

  it("refuses members that are not strings, numbers or booleans, and unknown options", function()
    local a = app("sets7")
    local src = a:topic("src")
    local s = a:set_table("s")
    local err
    a:agent("w", src, function(stream)
      for k in stream:items() do
        local ok, e = pcall(function() s[k]:add({}) end)
        err = not ok and e
      end
    end)
    t = fstream.testing(a)
    t:send(src, { key = "x", value = 1 })
    t:run()
    assert.matches("a member must be a string, a number or a boolean, got a table", err)
    assert.has_error(function() app("sets8"):set_table("s", { default = 0 }) end,
      "set table 's': unknown option 'default'")
  end)

  it("writes only while an agent processes an event (like any partitioned table)", function()
    local a = app("sets9")
    a:topic("src")
    a:set_table("s")
    t = fstream.testing(a)
    assert.has_error(function() t:table("s").x:add(1) end,
      "set table 's': writes must happen while an agent processes an event (a write goes to that event's partition)")
  end)
end)
