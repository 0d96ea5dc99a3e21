-- Tables: a key-value map per app, partitioned like its source topics, stored
-- in LMDB (one environment per partition) and backed by a compacted Kafka
-- changelog "<app>-<table>-changelog".
--
-- A record cache (Kafka Streams style) sits in front of LMDB: the live Lua
-- values of the keys touched since the last checkpoint. `t[k] = t[k] + 1` on a
-- hot key costs one LMDB write and one changelog record per checkpoint, not
-- one per event. At a checkpoint the dirty entries are encoded and staged
-- (produced to the changelog now, written to LMDB once delivered); they stay
-- readable from the previous generation until the next checkpoint.
--
-- Each held partition has one (`part`), in one of two shapes:
-- * Lua-keyed (`part.lw` set: a partitioned table with JSON keys, neither
--   windowed nor ttl nor a set table — the usual `t[k] = t[k] + 1` table):
--   string keys are kept under the Lua string itself, with no key bytes:
--     lw[k]     written since the last checkpoint (TOMBSTONE: deleted): the dirty entries
--     lr[k]     read from LMDB since then (MISSING: not there); dropped once k is written
--     lprev[k]  the last checkpoint's lw, until the next one
--   A key is encoded only to read LMDB and at the checkpoint. One hash entry
--   per key instead of four and a key string (the burst peak, BENCHMARKS.md
--   issue 14). Other keys (numbers, ...) go by key bytes, as below: a JSON
--   string's bytes start with '"', no other value's do, so the two never meet.
-- * By key bytes kb (every other table; windows, set tables and sessions use
--   cache/dirty directly):
--     cache[kb] value (read or written), dirty[kb] = true once written,
--     prev[kb] the last checkpoint's dirty values, kbs[k] = kb (string keys).
--
-- The object app:table() returns is an empty proxy: every key, whatever its
-- name, is an entry of the table. Its own state (name, partitions, caches,
-- window, ...) lives off the object, in a plain Lua table that the runtime's
-- modules use (Table.state); `t:update(k, fn)` still calls the method, since
-- only a method call finds the methods (see SELF_OP below).
local core = require "fstream.core"
local Heap = require "fstream.heap"

local Table = {}
local MISSING, TOMBSTONE = {}, {}
-- The app's table object -> its state (app.tables holds the states).
local STATE = setmetatable({}, { __mode = "k" })
local object_mt -- the object's metatable, made with its metamethods below

local OPTIONS = {
  default = true, key_type = true, value_type = true, key_serializer = true,
  value_serializer = true, partitions = true, changelog_topic = true,
  on_window_close = true, on_late = true, big_integers = true, ttl = true,
}
local METHODS = {}

-- The stream whose event the running coroutine is processing (set by agents).
Table.streams_by_co = setmetatable({}, { __mode = "k" })
local streams_by_co, running = Table.streams_by_co, coroutine.running

-- big: what a JSON integer beyond 64 bits decodes to (see Topic's big_integers).
local function codec(ser, big)
  if type(ser) == "table" then return ser.encode, ser.decode end
  if ser == "json" then
    return core.json.encode, function(b)
      local v, err = core.json.decode(b, big)
      if err then error(err, 0) end
      return v
    end
  end
  return function(v)
    if type(v) == "number" then return tostring(v) end
    if type(v) ~= "string" then error("the raw serializer needs a string, got a " .. type(v), 0) end
    return v
  end, function(b) return b end
end

-- `t:update(k, fn)` and `t["update"]` both index t with "update"; Lua only
-- compiles them to different instructions (a method call is SELF). The object's
-- __index asks core.index_op which one is running: a method call finds the
-- method, anything else reads the entry. Checked here once, with every way of
-- indexing a table, so that a Lua VM where this cannot work fails at load
-- instead of mixing up methods and data.
local index_op = core.index_op
local SELF_OP
do
  local seen
  local probe = setmetatable({}, { __index = function() seen = index_op(); return function() end end })
  local key = "m"
  probe:m()
  local method = seen
  local _ = probe.m
  local field = seen
  _ = probe[key]
  local by_key = seen
  _ = probe[1]
  local by_int = seen
  seen = nil
  probe:m()
  if method == nil or seen ~= method or field == method or by_key == method or by_int == method then
    error("fstream.table: this Lua VM does not tell a method call from a read (core.index_op)", 0)
  end
  SELF_OP = method
end
Table.SELF_OP = SELF_OP

local function state_of(t)
  local s = STATE[t]
  if not s then error("expected a table of the app (from app:table), got " .. tostring(t), 3) end
  return s
end

-- The state of the app's table object t (nil for anything else).
function Table.state(t) return STATE[t] end

-- global: every worker holds every partition and follows the changelog
-- (Faust's GlobalTable); keys are placed by hash, so writes need no event.
-- Returns the table's state; its `proxy` is the object the app gets.
function Table.new(app, name, opts, level, global)
  level = level + 1
  opts = opts or {}
  if type(name) ~= "string" or not name:match("^[%w%._%-]+$") then
    error("table name must be a non-empty string of letters, digits, '.', '_' or '-'", level)
  end
  for k in pairs(opts) do
    if not OPTIONS[k] then error(string.format("table '%s': unknown option '%s'", name, tostring(k)), level) end
  end
  -- Declared, or (when the worker starts) its input's count: see App:_resolve_partitions.
  local partitions = opts.partitions or app.topic_partitions
  if opts.partitions ~= nil and (math.type(opts.partitions) ~= "integer" or opts.partitions < 1) then
    error(string.format("table '%s': partitions must be a positive integer", name), level)
  end
  for _, cb in ipairs { "on_window_close", "on_late" } do
    if opts[cb] ~= nil and type(opts[cb]) ~= "function" then
      error(string.format("table '%s': %s must be a function", name, cb), level)
    end
  end
  local ttl = opts.ttl
  if ttl ~= nil then
    if type(ttl) ~= "number" or not (ttl > 0) or ttl == math.huge then
      error(string.format("table '%s': ttl must be a positive number of seconds", name), level)
    end
    if global then
      error(string.format("table '%s': a global table cannot have a ttl (every worker holds it: "
        .. "which one would expire a key?)", name), level)
    end
  end
  local self = {
    app = app, name = name, ttl = ttl, default = opts.default, partitions = partitions, global = global or false,
    default_fn = type(opts.default) == "function",
    declared_partitions = opts.partitions,
    on_window_close = opts.on_window_close, on_late = opts.on_late,
    key_serializer = opts.key_serializer or "json",
    value_serializer = opts.value_serializer or "json",
    parts = {},
    writers = setmetatable({}, { __mode = "k" }), -- agents seen writing it (/topology)
  }
  local big = opts.big_integers
  if big ~= nil and not require("fstream.topic").BIG_INTEGERS[big] then
    error(string.format("table '%s': big_integers must be \"float\", \"string\" or \"error\", got %s", name, tostring(big)), level)
  end
  self.encode_key, self.decode_key = codec(self.key_serializer, big)
  self.encode_value, self.decode_value = codec(self.value_serializer, big)
  -- Declared types: values are checked when written and rebuilt (records) when read
  -- back from LMDB; keys are checked when used.
  self.check_key = Table.type_checker(name, "key", opts.key_type, level)
  self.check_value = Table.type_checker(name, "value", opts.value_type, level)
  if type(opts.value_type) == "table" then
    local decode, from = self.decode_value, opts.value_type.from
    self.decode_value = function(b) return from(decode(b)) end
  end
  if ttl then
    -- Stored and changelogged values start with the last write's time (see TTL below).
    -- (A value without the time was written before the table had a ttl: it is
    -- the value as it is.)
    local decode = self.decode_value
    self.decode_value = function(b)
      local stamp = b:match("^%-?%d+ ")
      return decode(stamp and b:sub(#stamp + 1) or b)
    end
    Table.ttl_task(self)
  end
  -- The changelog travels as bytes: the table encodes, the topic is raw.
  self.changelog = app:topic(opts.changelog_topic or (app.id .. "-" .. name .. "-changelog"), {
    key_serializer = "raw", value_serializer = "raw", partitions = partitions,
  })
  self.changelog.compact = true -- created before the table is bound to the runtime
  local proxy = {}
  self.proxy = proxy
  STATE[proxy] = self
  setmetatable(proxy, object_mt(self))
  return self
end

-- A function(v) that raises when v is not of the declared type (nil: no type).
function Table.type_checker(name, what, ty, level)
  if ty == nil or ty == "any" then return nil end
  local checks = {
    string = function(v) return type(v) == "string" end,
    number = function(v) return type(v) == "number" end,
    integer = function(v) return math.type(v) == "integer" end,
    boolean = function(v) return type(v) == "boolean" end,
    table = function(v) return type(v) == "table" end,
  }
  if type(ty) == "table" and type(ty.from) == "function" then
    return function(v) return ty.from(v) end
  end
  local ok = checks[ty]
  if not ok then error(string.format("table '%s': unknown %s_type '%s'", name, what, tostring(ty)), level) end
  return function(v)
    if not ok(v) then
      error(string.format("table '%s': %s must be %s, got %s", name, what, ty, math.type(v) or type(v)), 4)
    end
    return v
  end
end

local function default_of(self)
  if self.default_fn then return self.default() end
  return self.default
end
Table.default_of = default_of

-- Partition of the event being processed by the running agent, if any.
-- The C side answers from the stream's cursor (`t[k] = t[k] + 1` asks twice).
local function event_partition()
  local s = streams_by_co[running()]
  if s then return s.cs:partition() end
end

-- Key bytes of a string key, remembered per partition until the next
-- checkpoint like the values: a key read and written by one event is encoded
-- once. (Only strings: 1 and 1.0 are one Lua key but two encodings.)
local function key_of(self, part, k)
  if type(k) ~= "string" then return self.encode_key(k) end
  local kbs = part.kbs
  local kb = kbs[k]
  if kb == nil then
    kb = self.encode_key(k)
    kbs[k] = kb
  end
  return kb
end

local function lookup(self, p, part, kb)
  local v = part.cache[kb]
  if v == nil then v = part.prev[kb] end
  if v == nil then
    local vb = self.app.rt:table_get(self.id, p, kb)
    if vb then v = self.decode_value(vb) else v = MISSING end
    part.cache[kb] = v
  end
  if v == TOMBSTONE then return MISSING end
  return v
end

-- Whether the table's own settings allow Lua-keyed partitions (see the top):
-- partitioned, no ttl, JSON keys. A window or a set, set up after the table
-- is made, rules them out too (looked at when a partition is held).
local function lua_keyable(self)
  return not self.global and not self.ttl and self.key_serializer == "json"
end

-- A string key of a Lua-keyed partition (see the top): its value or MISSING.
local function lk_lookup(self, p, part, k)
  local v = part.lw[k]
  if v == nil then
    local lr = part.lr
    v = lr[k]
    if v == nil then
      v = part.lprev[k]
      if v == nil then
        local vb = self.app.rt:table_get(self.id, p, self.encode_key(k))
        if vb then v = self.decode_value(vb) else v = MISSING end
        lr[k] = v
      end
    end
  end
  if v == TOMBSTONE then return MISSING end
  return v
end

-- v: the value or TOMBSTONE.
local function lk_put(part, k, v)
  part.lw[k] = v
  local lr = part.lr
  if lr[k] ~= nil then lr[k] = nil end
end

-- The Lua string key whose bytes are kb, when a Lua-keyed partition keeps kb under it.
local function lk_key(self, kb)
  if kb:byte(1) ~= 34 then return nil end -- '"': a JSON string
  local ok, k = pcall(self.decode_key, kb)
  if ok and type(k) == "string" then return k end
end

-- Key k (a Lua key) of held partition p: its value or MISSING.
local function get_in(self, p, part, k)
  if part.lw and type(k) == "string" then return lk_lookup(self, p, part, k) end
  return lookup(self, p, part, key_of(self, part, k))
end

local function held(self, p)
  local part = self.parts[p]
  if not part then
    error(string.format("table '%s': partition %d is not on this worker", self.name, p), 3)
  end
  return part
end

-- Value or MISSING; inside an agent only the event's partition is consulted
-- (co-partitioning), elsewhere every partition this worker holds.
local function read(self, k)
  if not self.app.rt then error(string.format("table '%s': the worker is not running", self.name), 3) end
  if self.global then
    local kb = self.encode_key(k)
    local p = core.partition_for(kb, self.partitions)
    return lookup(self, p, held(self, p), kb)
  end
  local p = event_partition()
  if p then return get_in(self, p, held(self, p), k) end
  local kb
  for q, part in pairs(self.parts) do
    local v
    if part.lw and type(k) == "string" then
      v = lk_lookup(self, q, part, k)
    else
      kb = kb or self.encode_key(k)
      v = lookup(self, q, part, kb)
    end
    if v ~= MISSING then return v end
  end
  return MISSING
end

local function write(self, k, v)
  local ck, cv = self.check_key, self.check_value
  if ck then k = ck(k) end
  if v ~= nil and cv then v = cv(v) end
  local p
  if self.global then
    if not self.app.rt then error(string.format("table '%s': the worker is not running", self.name), 3) end
    p = core.partition_for(self.encode_key(k), self.partitions)
  else
    p = event_partition()
  end
  -- Which agents write the table, learned as they do (/topology).
  local s = streams_by_co[running()]
  if s then self.writers[s.agent] = true end
  if not p then
    error(string.format("table '%s': writes must happen while an agent processes an event "
      .. "(a write goes to that event's partition)", self.name), 3)
  end
  local part = held(self, p)
  if v == nil then v = TOMBSTONE end
  if part.lw and type(k) == "string" then return lk_put(part, k, v) end
  local kb = key_of(self, part, k)
  part.cache[kb] = v
  part.dirty[kb] = true
  if self.ttl then Table.ttl_written(self, part, kb) end
end

-- Internals used by windowed tables (on the state): explicit partitions and
-- raw key bytes. Keys starting with "\0" are the runtime's own (window stream
-- time): a windowed table's keys are JSON, and no JSON text starts with a NUL.
Table.MISSING, Table.TOMBSTONE = MISSING, TOMBSTONE

function Table._lookup(self, p, kb)
  local part = self.parts[p]
  if not part then return nil end
  local k = part.lw and lk_key(self, kb)
  local v
  if k then v = lk_lookup(self, p, part, k) else v = lookup(self, p, part, kb) end
  if v == MISSING then return nil end
  return v
end

function Table._put(self, p, kb, v)
  local s = streams_by_co[running()]
  if s then self.writers[s.agent] = true end
  local part = held(self, p)
  if v == nil then v = TOMBSTONE end
  local k = part.lw and lk_key(self, kb)
  if k then return lk_put(part, k, v) end
  part.cache[kb] = v
  part.dirty[kb] = true
  if self.ttl then Table.ttl_written(self, part, kb) end
end

-- Every live entry of partition p (LMDB overlaid with pending writes): kb -> value.
function Table._scan(self, p)
  local part = self.parts[p]
  local merged = {}
  if not part then return merged end
  local keys, values = self.app.rt:table_scan(self.id, p)
  for i = 1, #keys do merged[keys[i]] = self.decode_value(values[i]) end
  for kb, v in pairs(part.prev) do merged[kb] = v end
  for kb, v in pairs(part.cache) do
    if v ~= MISSING then merged[kb] = v end
  end
  if part.lw then -- (lr holds what LMDB has)
    local enc = self.encode_key
    for k, v in pairs(part.lprev) do merged[enc(k)] = v end
    for k, v in pairs(part.lw) do merged[enc(k)] = v end
  end
  for kb, v in pairs(merged) do
    if v == TOMBSTONE then merged[kb] = nil end
  end
  return merged
end

-- Whether partition part has entries written and not yet in LMDB (this
-- checkpoint's or the last one's).
function Table.busy(part)
  if next(part.dirty) or next(part.prev) then return true end
  local lw = part.lw
  return lw ~= nil and (next(lw) ~= nil or next(part.lprev) ~= nil)
end

Table.event_partition = event_partition

function METHODS.get(self, k)
  local v = read(state_of(self), k)
  if v == MISSING then return nil end
  return v
end

-- t:update(k, fn): t[k] = fn(t[k]) (fn receives the default when k is missing).
function METHODS.update(self, k, fn)
  self = state_of(self)
  local w = self.window
  if w then return w:update(self, k, fn) end
  local v = read(self, k)
  if v == MISSING then v = default_of(self) end
  local nv = fn(v)
  write(self, k, nv)
  return nv
end

function METHODS.set(self, k, v) write(state_of(self), k, v) end
function METHODS.delete(self, k) write(state_of(self), k, nil) end

-- for k, v in t:items() do — the partitions this worker holds, in no set order.
-- Exactly the entries: the runtime's own keys (a windowed table's stream
-- time) are left out; a table that is not windowed has none.
function METHODS.items(self)
  self = state_of(self)
  local windowed = self.window ~= nil
  local merged = {}
  for p in pairs(self.parts) do
    for kb, v in pairs(Table._scan(self, p)) do merged[kb] = v end
  end
  local kb, v
  return function()
    repeat
      kb, v = next(merged, kb)
    until kb == nil or not (windowed and kb:byte(1) == 0)
    if kb == nil then return nil end
    return self.decode_key(kb), v
  end
end

-- The object's metatable: its metamethods hold the state as an upvalue, so
-- `t[k] = t[k] + 1` costs what it did when the state was on the object.
--
-- Both start with the usual case, an agent's access to a string key of a
-- Lua-keyed partition (see the top; it is never windowed): the stream of the
-- running coroutine gives the partition, and the key is one lookup in lw when
-- the event already wrote it. The last stream seen, its C cursor and the
-- cursor's partition method are kept, so that each access costs one C call.
-- Anything else takes the general path (read/write, windows).
function object_mt(self)
  local parts, writers = self.parts, self.writers
  -- Whether its partitions can be Lua-keyed (a window, configured later, is
  -- looked at per access), so that other tables do not pay for the look.
  local lkable = lua_keyable(self)
  -- Writes that need nothing per key but the record cache (no type checks).
  local plain_write = lkable and not self.check_key and not self.check_value
  local last_s, last_cs, last_pf, last_writer
  return {
    __name = "fstream.Table",
    __index = function(_, k)
      local m = METHODS[k]
      if m and index_op() == SELF_OP then return m end
      local s = lkable and not self.window and streams_by_co[running()]
      if s then
        if s ~= last_s then last_s, last_cs, last_pf = s, s.cs, s.cs.partition end
        local p = last_pf(last_cs)
        local part = p and parts[p]
        local lw = part and part.lw
        if lw then
          local v = lw[k]
          if v == nil then
            if type(k) == "string" then v = lk_lookup(self, p, part, k) end
          elseif v == TOMBSTONE then
            v = MISSING
          end
          if v ~= nil then
            if v == MISSING then return default_of(self) end
            return v
          end
        end
      end
      local w = self.window
      if w then return w:set_for(self, k) end
      local v = read(self, k)
      if v == MISSING then return default_of(self) end
      return v
    end,
    __newindex = function(_, k, v)
      if plain_write and not self.window then
        local s = streams_by_co[running()]
        if s then
          if s ~= last_s then last_s, last_cs, last_pf = s, s.cs, s.cs.partition end
          local p = last_pf(last_cs)
          local part = p and parts[p]
          local lw = part and part.lw
          if lw and (lw[k] ~= nil or type(k) == "string") then
            -- Which agents write the table (/topology): once per stream.
            if s ~= last_writer then
              writers[s.agent] = true
              last_writer = s
            end
            if v == nil then v = TOMBSTONE end
            lw[k] = v
            local lr = part.lr
            if lr[k] ~= nil then lr[k] = nil end
            return
          end
        end
      end
      local w = self.window
      if w then return w:assign(self, k, v) end
      write(self, k, v)
    end,
  }
end

-- Windowing: t:tumbling(size, {expires}), t:hopping(size, step, {expires}),
-- t:sliding(size, {expires}), t:session(gap, {expires, combine}), then :relative_to_stream() (default),
-- :relative_to_field(name, {unit=}) or :relative_to_now(). See lua/fstream/window.lua.
for _, kind in ipairs { "tumbling", "hopping", "sliding", "session" } do
  METHODS[kind] = function(self, ...)
    local st = state_of(self)
    if st.ttl then
      error(string.format("table '%s': a table with a ttl cannot be windowed (windows expire with `expires`)",
        st.name), 2)
    end
    require("fstream.window").configure(state_of(self), kind, ...)
    return self
  end
end
function METHODS.relative_to_stream(self) require("fstream.window").relative(state_of(self), "stream"); return self end
function METHODS.relative_to_now(self) require("fstream.window").relative(state_of(self), "now"); return self end
function METHODS.relative_to_field(self, field, opts)
  require("fstream.window").relative(state_of(self), "field", field, opts)
  return self
end

-- Checkpoint hook (on the state): "flush" stages dirty entries (and returns
-- how many); "hold"/"release" follow the partitions this worker is assigned.
function Table._on(self, event, p, tid, keys)
  -- Partition moves (tid 0) concern partitioned tables; global tables get their own.
  if event ~= "flush" and (tid == 0) == self.global then return end
  if tid ~= 0 and tid ~= self.id then return end
  if event == "changed" then
    -- Another worker (or this one, echoed) wrote these keys: forget cached
    -- copies unless this worker has a newer write of its own pending.
    local part = self.parts[p]
    if part then
      for _, kb in ipairs(keys) do
        local k = part.lw and lk_key(self, kb)
        if k then
          if part.lw[k] == nil and part.lprev[k] == nil then part.lr[k] = nil end
        elseif not part.dirty[kb] and part.prev[kb] == nil then
          part.cache[kb] = nil
        end
      end
    end
  elseif event == "hold" then
    local part = { cache = {}, prev = {}, dirty = {}, kbs = {} }
    -- Lua-keyed (see the top): what reads and writes the cache by key bytes
    -- itself (windows, set tables) or keeps per-key state by them (ttl), and
    -- keys that are not JSON (a raw "1" and 1 are one key) stay by key bytes.
    if lua_keyable(self) and not (self.window or self.set) then
      part.lw, part.lr, part.lprev = {}, {}, {}
    end
    self.parts[p] = part
    if self.ttl then Table.ttl_hold(self, self.parts[p]) end
    local w = self.window
    if w then w:hold(self, p) end
  elseif event == "release" then
    self.parts[p] = nil
    local w = self.window
    if w then w:release(self, p) end
  elseif event == "flush" then
    local rt = self.app.rt
    local ttl, rotate = self.ttl, self.rotate
    local n = 0
    for q, part in pairs(self.parts) do
      local lw = part.lw
      if lw then
        local id, enc_k, enc_v = self.id, self.encode_key, self.encode_value
        for k, v in pairs(lw) do
          rt:table_stage(id, q, enc_k(k), v ~= TOMBSTONE and enc_v(v) or nil)
          n = n + 1
        end
        -- This checkpoint's writes stay readable until the next one (LMDB
        -- has them once delivered); what was read is read again from LMDB.
        if next(lw) then
          part.lprev, part.lw = lw, {}
        elseif next(part.lprev) then
          part.lprev = {}
        end
        if next(part.lr) then part.lr = {} end
      end
      local staged = next(part.dirty) ~= nil
      if staged then
        local prev = {}
        for kb in pairs(part.dirty) do
          local v = part.cache[kb]
          local vb
          if v ~= TOMBSTONE then
            vb = self.encode_value(v)
            if ttl then vb = Table.ttl_stamp(self, part, kb, vb) end
          end
          rt:table_stage(self.id, q, kb, vb)
          prev[kb] = v
          n = n + 1
        end
        part.prev, part.dirty = prev, {}
      else
        part.prev = {}
      end
      part.cache, part.kbs = {}, {}
      if ttl then part.wprev, part.wtime = staged and part.wtime or {}, {} end
      if rotate then rotate(part, staged) end
    end
    return n
  end
end

-- What a reload may not change: how the table's data is laid out (partitions,
-- encodings, changelog, windows).
function Table.signature(self)
  local g = function(k) return tostring(self[k]) end
  -- The declared count: the running table's real one comes from the broker,
  -- which a version being validated has not asked.
  local sig = string.format("partitions=%s global=%s key=%s value=%s changelog=%s", g("declared_partitions"),
    g("global"), g("key_serializer"), g("value_serializer"), self.changelog.name)
  -- A set table's entries and a ttl table's values are laid out differently.
  if self.set then sig = sig .. " set" end
  if self.ttl then sig = sig .. " ttl" end
  local w = self.window
  if w then
    sig = sig .. string.format(" window=%s(%s,%s) expires=%s combine=%s", w.kind, tostring(w.size), tostring(w.step),
      tostring(w.expires), tostring(w.sliced == true))
  end
  if w and w.session_combine then sig = sig .. " session_combine" end
  return sig
end

-- (Takes the app's table object or its state.)
function Table.describe(self)
  self = STATE[self] or self
  return string.format("%s (%s%s%d partitions, %schangelog %s)", self.name, self.global and "global, " or "",
    self.set and "set, " or "", self.partitions, self.ttl and string.format("ttl %g s, ", self.ttl) or "",
    self.changelog.name)
end

-- A set table (fstream.set_table) gives its state an object of its own.
function Table.rebind_proxy(self, proxy, mt)
  STATE[self.proxy] = nil
  self.proxy = proxy
  STATE[proxy] = self
  setmetatable(proxy, mt)
end

-- TTL: `ttl = seconds` deletes a key that was not written for that long.
--
-- The clock is the worker's wall clock (rt:now(), which fstream.testing's
-- fake clock drives), read when the key is written. The time travels with
-- the value: a ttl table's stored and changelogged value is "<ms> <value
-- bytes>" (milliseconds since the epoch of the last write, in decimal, then
-- a space), so a restarted worker, or the next owner of a partition after a
-- rebalance, knows how old every key is from what recovery replays.
--
-- Expiry is a delete like the app's own (`t[k] = nil`): it goes through the
-- record cache and reaches the changelog as a tombstone at the next
-- checkpoint, so a recovered or rebalanced table agrees with the worker that
-- expired the key. It runs in one task per ttl table, every
-- table_cleanup_interval seconds, with bounded work per partition and pass
-- (EXPIRE_BATCH): a heap per held partition orders keys by their deadline
-- (last write + ttl) and a pass pops only what is due. A key has at most one
-- heap entry (`queued`): one written again since it was queued is looked at
-- when its old deadline comes, and goes back with its new one. The heap of a
-- partition this worker takes over is filled by a walk of its LMDB store,
-- EXPIRE_BATCH entries per pass (never one long stall); a key is expired no
-- earlier than its ttl, and at the latest a pass after its deadline once the
-- walk has seen it.
local EXPIRE_BATCH = 1000
Table.EXPIRE_BATCH = EXPIRE_BATCH

local function queue(self, part, kb, ms)
  if part.queued[kb] then return end
  part.queued[kb] = true
  Heap.push(part.heap, ms / 1000 + self.ttl, kb)
end

local function stamp_of(vb)
  return math.tointeger(tonumber(vb:match("^(%-?%d+) ")))
end
Table.ttl_time = stamp_of

function Table.ttl_hold(self, part)
  part.wtime, part.wprev = {}, {}
  part.heap, part.queued = Heap.new(), {}
  part.walk = "" -- where the walk of LMDB goes on ("": from the start; nil: done)
end

-- A write of kb (or its delete): its time, and a place in the heap unless it has one.
function Table.ttl_written(self, part, kb)
  local ms = math.floor(self.app.rt:now() * 1000)
  part.wtime[kb] = ms
  if part.cache[kb] ~= TOMBSTONE then queue(self, part, kb, ms) end
end

-- A dirty entry's value bytes at a checkpoint, stamped with its last write.
function Table.ttl_stamp(self, part, kb, vb)
  local ms = part.wtime[kb] or math.floor(self.app.rt:now() * 1000)
  return string.format("%d ", ms) .. vb
end

-- When kb of partition p was last written (ms), or nil if it is not there.
local function last_write(self, p, part, kb)
  local v = part.cache[kb]
  if v == TOMBSTONE or v == MISSING then return nil end
  local ms = part.wtime[kb]
  if ms then return ms end
  v = part.prev[kb]
  if v == TOMBSTONE then return nil end
  if v ~= nil then return part.wprev[kb] end
  local vb = self.app.rt:table_get(self.id, p, kb)
  if not vb then return nil end
  return stamp_of(vb) or part.walk_ms
end

-- One pass over the partitions held: true when work was left for the next one.
function Table._expire(self, now)
  local rt, ttl = self.app.rt, self.ttl
  local more, expired = false, 0
  for p, part in pairs(self.parts) do
    if part.walk then
      local keys, values = rt:table_scan(self.id, p, part.walk ~= "" and part.walk or nil, nil, EXPIRE_BATCH)
      -- A value without a time (written before the table had a ttl) ages from
      -- when the walk began.
      part.walk_ms = part.walk_ms or math.floor(now * 1000)
      for i = 1, #keys do queue(self, part, keys[i], stamp_of(values[i]) or part.walk_ms) end
      if #keys < EXPIRE_BATCH then
        part.walk = nil
      else
        part.walk = keys[#keys] .. "\0" -- the next key after the last one seen
        more = true
      end
    end
    local h, n = part.heap, 0
    while h.n > 0 and h.t[1] <= now do
      if n == EXPIRE_BATCH then
        more = true
        break
      end
      n = n + 1
      local kb = Heap.pop(h)
      part.queued[kb] = nil
      local ms = last_write(self, p, part, kb)
      if ms then
        if ms / 1000 + ttl <= now then
          Table._put(self, p, kb, nil)
          expired = expired + 1
        else
          queue(self, part, kb, ms) -- written again since: its new deadline
        end
      end
    end
  end
  self.expired = (self.expired or 0) + expired
  return more, expired
end

-- /metrics: fstream_table_expired_total{table}, for apps with a ttl table.
local function expired_metrics(o, app)
  local first = true
  for _, t in ipairs(app.table_list) do
    if t.ttl then
      if first then
        o:family("fstream_table_expired_total", "counter", "Keys a table's ttl deleted, per table.")
        first = false
      end
      o:sample("fstream_table_expired_total", { "table", t.name }, t.expired or 0)
    end
  end
end
local metrics_added = false

-- The task that expires the keys of a ttl table.
function Table.ttl_task(self)
  if not metrics_added then
    local sources = require("fstream.metrics").sources
    sources[#sources + 1] = expired_metrics
    metrics_added = true
  end
  local app = self.app
  app.tasks[#app.tasks + 1] = {
    name = "ttl expiry of table " .. self.name,
    restart = true,
    fn = function()
      local rt = app.rt
      while app.rt == rt do
        local more = Table._expire(self, rt:now())
        core.sleep(more and 0 or app.table_cleanup_interval)
      end
    end,
  }
end

return Table
