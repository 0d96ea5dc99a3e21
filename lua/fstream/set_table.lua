-- Set tables (Faust's SetTable / SetGlobalTable): a table whose value under a
-- key is a set of members, changed one member at a time:
--   local tags = app:set_table("tags")
--   tags[k]:add(v); tags[k]:discard(v); tags[k]:contains(v); #tags[k]
--   for m in tags[k]:members() do ... end; tags[k]:list(); tags[k]:set()
--
-- Layout: every member is an entry of its own in the underlying table, under
-- the key bytes '[key, member]' (JSON, as windows are '[key, start]'), with
-- the value `true`. So an add is one entry put and a discard one tombstone, in
-- LMDB and in the changelog alike: a hot key whose set grows by one member
-- writes one record, not its whole set. It is also what keeps compaction
-- harmless. A compacted changelog keeps the last record of each Kafka key; the
-- Kafka key here is (key, member), so the last record of each member is its
-- latest add or discard, which is all the set needs: replaying what survives
-- compaction gives the same set as replaying everything. (Keying the
-- operations by the set's key alone would let compaction drop every add but
-- the last one; writing the whole set now and then would cost a hot key's
-- whole set per checkpoint.) Recovery needs nothing of its own either: it
-- replays the entries like any table's.
--
-- The members of a key are one LMDB range (the entries starting with
-- '[key,'), read with a prefix scan and overlaid with this worker's pending
-- adds and discards of that key (tracked per key, so a read never walks the
-- whole record cache). Everything else - the record cache, the checkpoint,
-- changelogs, partitions moving between workers, global tables following
-- their changelog - is fstream.table's.
--
-- Members are strings, numbers or booleans (what a Lua table can hold as a
-- key with value equality); a float with an integral value is that integer
-- (1.0 and 1 are one member, as in a Lua table).
local core = require "fstream.core"
local Table = require "fstream.table"

local json = core.json
local MISSING, TOMBSTONE = Table.MISSING, Table.TOMBSTONE

local M = {}

local OPTIONS = { key_type = true, value_type = true, partitions = true, changelog_topic = true }

-- The app's set table object -> its table state.
local STATE = setmetatable({}, { __mode = "k" })

local View = {}
View.__index = View

local function member_bytes(self, m)
  local ty = type(m)
  if ty == "number" then
    if m ~= m or m == math.huge or m == -math.huge then
      error(string.format("set table '%s': a member must be a finite number", self.name), 4)
    end
    m = math.tointeger(m) or m
  elseif ty ~= "string" and ty ~= "boolean" then
    error(string.format("set table '%s': a member must be a string, a number or a boolean, got a %s",
      self.name, ty), 4)
  end
  local cv = self.check_value
  if cv then m = cv(m) end
  return json.encode(m), m
end

-- The partition a key's members live in, for a write: the event's
-- (co-partitioning) or, in a global table, the key's hash.
local function write_partition(self, kb)
  if not self.app.rt then error(string.format("set table '%s': the worker is not running", self.name), 4) end
  if self.global then return core.partition_for(kb, self.partitions) end
  local p = Table.event_partition()
  if not p then
    error(string.format("set table '%s': writes must happen while an agent processes an event "
      .. "(a write goes to that event's partition)", self.name), 4)
  end
  return p
end

-- The partitions to read a key from: the event's inside an agent, the key's in
-- a global table, else every partition this worker holds.
local function read_partitions(self, kb)
  if not self.app.rt then error(string.format("set table '%s': the worker is not running", self.name), 4) end
  if self.global then return { core.partition_for(kb, self.partitions) } end
  local p = Table.event_partition()
  if p then return { p } end
  local ps = {}
  for q in pairs(self.parts) do ps[#ps + 1] = q end
  return ps
end

-- part.sets: prefix -> { entry key -> member } of the entries written in the
-- record cache's current generation (cache), part.sets_prev of the staged one
-- (prev). Rotated with them at each checkpoint (Table's flush calls M.rotate).
local function touch(part, prefix, ekb, m)
  local sets = part.sets
  if not sets then
    sets = {}
    part.sets = sets
  end
  local s = sets[prefix]
  if not s then
    s = {}
    sets[prefix] = s
  end
  s[ekb] = m
end

function M.rotate(part, staged)
  part.sets_prev = staged and part.sets or nil
  part.sets = nil
end

local function put(self, m, v)
  local kb = self.kb
  local mb, member = member_bytes(self.t, m)
  local t = self.t
  local p = write_partition(t, kb)
  local ekb = self.prefix .. mb .. "]"
  Table._put(t, p, ekb, v)
  touch(t.parts[p], self.prefix, ekb, member)
end

-- view:add(m): m is a member from now on.
function View:add(m) put(self, m, true) end
-- view:discard(m): m is no longer a member (nothing happens if it was not one).
function View:discard(m) put(self, m, nil) end

function View:contains(m)
  local t = self.t
  local mb = member_bytes(t, m)
  local ekb = self.prefix .. mb .. "]"
  for _, p in ipairs(read_partitions(t, self.kb)) do
    if Table._lookup(t, p, ekb) ~= nil then return true end
  end
  return false
end

-- The members of the key in partition p: LMDB's range overlaid with what the
-- record cache holds for it (staged, then current). Into out: member -> true.
local function collect(t, p, prefix, out)
  local part = t.parts[p]
  if not part then return out end
  local keys = t.app.rt:table_scan(t.id, p, prefix, prefix)
  local n = #prefix
  for i = 1, #keys do
    local ekb = keys[i]
    out[json.decode(ekb:sub(n + 1, -2))] = true
  end
  for i = 1, 2 do
    local gen = i == 1 and part.sets_prev or part.sets
    local s = gen and gen[prefix]
    if s then
      for ekb, member in pairs(s) do
        local v = part.cache[ekb]
        if v == nil then v = part.prev[ekb] end
        if v == TOMBSTONE or v == MISSING then out[member] = nil
        elseif v ~= nil then out[member] = true end
      end
    end
  end
  return out
end

-- view:set(): { member = true, ... } (a copy: changing it changes nothing).
function View:set()
  local out = {}
  for _, p in ipairs(read_partitions(self.t, self.kb)) do collect(self.t, p, self.prefix, out) end
  return out
end

-- The members of the key whose bytes are kb in partition p, a sorted list, or
-- nil when it has none (the web server's GET /tables/NAME/KEY).
function M.members_in(t, p, kb)
  local l = {}
  for m in pairs(collect(t, p, "[" .. kb .. ",", {})) do l[#l + 1] = m end
  if #l == 0 then return nil end
  table.sort(l, M.member_less)
  return l
end

local TYPE_ORDER = { boolean = 1, number = 2, string = 3 }
local function member_less(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then return TYPE_ORDER[ta] < TYPE_ORDER[tb] end
  if ta == "boolean" then return not a and b end
  return a < b
end
M.member_less = member_less

-- view:list(): the members as a Lua list, sorted (booleans, numbers, strings).
function View:list()
  local l = {}
  for m in pairs(self:set()) do l[#l + 1] = m end
  table.sort(l, member_less)
  return l
end

-- for m in view:members() do ... end (sorted, as list()).
function View:members()
  local l, i = self:list(), 0
  return function()
    i = i + 1
    return l[i]
  end
end

function View:count()
  local n = 0
  for _ in pairs(self:set()) do n = n + 1 end
  return n
end

-- view:update(list): adds every member of the list.
function View:update(list)
  for _, m in ipairs(list) do self:add(m) end
end

-- view:clear(): discards every member.
function View:clear()
  for m in pairs(self:set()) do self:discard(m) end
end

local view_mt = {
  __index = View,
  __name = "fstream.SetView",
  __len = function(v) return v:count() end,
  -- for m in pairs(t[k]) do: member -> true
  __pairs = function(v) return next, v:set(), nil end,
  __tostring = function(v)
    local parts = {}
    for _, m in ipairs(v:list()) do parts[#parts + 1] = json.encode(m) end
    return "{" .. table.concat(parts, ", ") .. "}"
  end,
}

local function view(self, k)
  local ck = self.check_key
  if ck then k = ck(k) end
  local kb = self.encode_key(k)
  return setmetatable({ t = self, key = k, kb = kb, prefix = "[" .. kb .. "," }, view_mt)
end

local METHODS = {}

-- for key, members in t:items() do: every key of the partitions this worker
-- holds with its members (a sorted list), in no set order.
function METHODS.items(self)
  self = STATE[self]
  local sets = {}
  for p in pairs(self.parts) do
    for ekb in pairs(Table._scan(self, p)) do
      local e = json.decode(ekb)
      if type(e) == "table" and e[2] ~= nil then
        local kb = json.encode(e[1])
        local s = sets[kb]
        if not s then
          s = { key = e[1], members = {} }
          sets[kb] = s
        end
        s.members[#s.members + 1] = e[2]
      end
    end
  end
  local kb, s
  return function()
    kb, s = next(sets, kb)
    if kb == nil then return nil end
    table.sort(s.members, member_less)
    return self.decode_key(kb), s.members
  end
end

-- t:get(k): the members of k as a sorted list (empty when k has none).
function METHODS.get(self, k) return view(STATE[self], k):list() end

local function object_mt(self)
  local index_op, SELF_OP = core.index_op, Table.SELF_OP
  return {
    __name = "fstream.SetTable",
    __index = function(_, k)
      local m = METHODS[k]
      if m and index_op() == SELF_OP then return m end
      return view(self, k)
    end,
    -- t[k] = nil discards every member; t[k] = {a, b} makes the set exactly {a, b}.
    __newindex = function(_, k, list)
      if list ~= nil and type(list) ~= "table" then
        error(string.format("set table '%s': assign a list of members or nil", self.name), 2)
      end
      local v = view(self, k)
      local want = {}
      for _, m in ipairs(list or {}) do want[select(2, member_bytes(self, m))] = true end
      for m in pairs(v:set()) do
        if not want[m] then v:discard(m) end
      end
      for m in pairs(want) do v:add(m) end
    end,
  }
end

-- Offline (fstream-lua table): one row per key with its members, from a
-- partition's raw entries.
local function offline_rows(self, keys)
  local rows, by_kb = {}, {}
  for i = 1, #keys do
    local ok, e = pcall(json.decode, keys[i])
    if ok and type(e) == "table" and e[2] ~= nil then
      local kb = json.encode(e[1])
      local r = by_kb[kb]
      if not r then
        r = { kb = kb, key = self.decode_key(kb), value = {} }
        by_kb[kb] = r
        rows[#rows + 1] = r
      end
      r.value[#r.value + 1] = e[2]
    end
  end
  for _, r in ipairs(rows) do table.sort(r.value, member_less) end
  return rows
end

-- app:set_table(name, opts) / app:set_global_table(name, opts) (see App).
function M.new(app, name, opts, level, global)
  level = level + 1
  opts = opts or {}
  if type(opts) ~= "table" then error("set table options must be a table", level) end
  for k in pairs(opts) do
    if not OPTIONS[k] then
      error(string.format("set table '%s': unknown option '%s'", tostring(name), tostring(k)), level)
    end
  end
  local self = Table.new(app, name, {
    key_type = opts.key_type, value_type = opts.value_type, partitions = opts.partitions,
    changelog_topic = opts.changelog_topic,
  }, level, global)
  self.set = true
  self.offline_rows = offline_rows
  self.rotate = M.rotate -- at each checkpoint, with the record cache
  local proxy = {}
  STATE[proxy] = self
  Table.rebind_proxy(self, proxy, object_mt(self))
  return self
end

return M
