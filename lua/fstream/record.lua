-- Records: typed, validated values (Faust's Record, pydantic-style).
--
--   local Order = fstream.record("Order", {
--     account_id = "string", amount = "number", qty = "integer", paid = "boolean",
--     note = "string?",                           -- optional (may be absent)
--     language = { "string", default = "US" },    -- absent -> default
--     tags = { "list", "string" }, seen = { "set", "integer" }, attrs = { "map", "number" },
--     client = Client,                            -- another record
--     at = "datetime",                            -- ISO-8601 text or epoch seconds in JSON;
--   })                                            -- epoch seconds (a number) in Lua
--   local o = Order{ account_id = "a1", amount = 2.5, ... }   -- raises on invalid input
--   topic value_type = Order: decoded messages are validated and become Orders.
--
--   fstream.record("Order", { {account_id = "string"}, {amount = "number"}, ... })
--                                                -- the same, with a field order
--
-- Instances are plain tables with the record as metatable, so they encode as
-- JSON objects of their fields: in declared order (the ordered form) or in name
-- order (a map), the same bytes in every process. Faust's "__faust" metadata in incoming JSON is
-- accepted and dropped, so Faust and fstream-lua apps can share topics. Fields
-- that the record does not declare are dropped as well.
local core = require "fstream.core"
local isotime = require "fstream.isotime"

local SCALARS = { string = true, number = true, integer = true, boolean = true, any = true, datetime = true }
local COLLECTIONS = { list = true, set = true, map = true }

local Record = {}

local function is_record(v)
  return type(v) == "table" and rawget(v, "__record") == true
end

-- Turns a field declaration into { kind, of, optional, default }.
local function parse_spec(name, field, spec, level)
  local function bad(msg) error(string.format("record %s, field %s: %s", name, field, msg), level) end
  if type(spec) == "string" then
    local optional = spec:sub(-1) == "?"
    local base = optional and spec:sub(1, -2) or spec
    if not SCALARS[base] then bad("unknown type '" .. spec .. "'") end
    return { kind = base, optional = optional }
  end
  if is_record(spec) then return { kind = "record", of = spec } end
  if type(spec) ~= "table" then bad("a type is a name, a record, or a table") end
  local head = spec[1]
  local out
  if COLLECTIONS[head] then
    if spec[2] == nil then bad(head .. " needs an element type") end
    out = { kind = head, of = parse_spec(name, field .. "[]", spec[2], level + 1) }
  elseif type(head) == "string" or is_record(head) then
    out = parse_spec(name, field, head, level + 1)
  else
    bad("unknown type")
  end
  if spec.optional then out.optional = true end
  if spec.default ~= nil then out.default = spec.default; out.optional = true end
  return out
end

local function describe(v)
  if type(v) == "string" then return string.format("%q", #v > 40 and v:sub(1, 40) .. "..." or v) end
  if math.type(v) then return math.type(v) .. " " .. tostring(v) end
  return type(v)
end

-- datetime: the years 0001..9999 of ISO-8601 (isotime's range, and what the
-- JSON encoder can write back), as epoch seconds.
local MIN_DT, MAX_DT = -62135596800, 253402300800

local function datetime(v, path)
  local secs, err = v, nil
  if type(v) == "string" then
    secs, err = isotime.parse(v)
    if not secs then return nil, string.format("%s: %s", path, err) end
  elseif type(v) ~= "number" then
    return nil, string.format("%s: expected datetime (ISO-8601 text or epoch seconds), got %s", path, describe(v))
  end
  if not (secs >= MIN_DT and secs < MAX_DT) then -- (also nan)
    return nil, string.format("%s: datetime %s is outside the years 0001..9999", path, describe(v))
  end
  return secs
end

local convert

-- Validates and converts v against spec; returns the value or nil, error.
function convert(spec, v, path)
  local kind = spec.kind
  if kind == "any" then return v end
  if kind == "string" then
    if type(v) == "string" then return v end
  elseif kind == "number" then
    if type(v) == "number" then return v end
  elseif kind == "integer" then
    local i = math.type(v) == "float" and math.tointeger(v) or v
    if math.type(i) == "integer" then return i end
  elseif kind == "boolean" then
    if type(v) == "boolean" then return v end
  elseif kind == "datetime" then
    return datetime(v, path)
  elseif kind == "record" then
    if type(v) == "table" then
      local ok, r = pcall(spec.of.from, v, path)
      if ok then return r end
      return nil, r
    end
  elseif kind == "list" or kind == "set" then
    if type(v) == "table" then
      local out, seen, n = {}, {}, #v
      for k in pairs(v) do
        if math.type(k) ~= "integer" or k < 1 or k > n then
          return nil, string.format("%s: expected a %s, got a table with key %s", path, kind, describe(k))
        end
      end
      for i = 1, n do
        local e, err = convert(spec.of, v[i], string.format("%s[%d]", path, i))
        if err then return nil, err end
        if kind == "list" then
          out[#out + 1] = e
        elseif not seen[e] then
          seen[e] = true
          out[#out + 1] = e
        end
      end
      return core.json.array(out)
    end
  elseif kind == "map" then
    if type(v) == "table" then
      local out = {}
      for k, e in pairs(v) do
        if type(k) ~= "string" then
          return nil, string.format("%s: map keys must be strings, got %s", path, describe(k))
        end
        local c, err = convert(spec.of, e, path .. "." .. k)
        if err then return nil, err end
        out[k] = c
      end
      return out
    end
  end
  local want = kind == "record" and spec.of.__name or kind
  return nil, string.format("%s: expected %s, got %s", path, want, describe(v))
end

local function copy_default(d)
  if type(d) == "function" then return d() end
  if type(d) ~= "table" then return d end
  local c = {}
  for k, v in pairs(d) do c[k] = v end
  return setmetatable(c, getmetatable(d))
end

-- fstream.record(name, fields) -> a record type.
function Record.define(name, fields, level)
  level = (level or 2) + 1
  if type(name) ~= "string" or name == "" then error("record name must be a non-empty string", level) end
  if type(fields) ~= "table" then error("record " .. name .. ": fields must be a table", level) end
  local specs, order = {}, {}
  if fields[1] ~= nil then
    -- The ordered form, { {id = "integer"}, {name = "string"}, ... }: one field per entry.
    local n = #fields
    for k in pairs(fields) do
      if math.type(k) ~= "integer" or k < 1 or k > n then
        error("record " .. name .. ": fields are either a list of {name = type} or a map, not both", level)
      end
    end
    for i, entry in ipairs(fields) do
      local field, spec
      if type(entry) == "table" then field, spec = next(entry) end
      if type(field) ~= "string" or next(entry, field) ~= nil then
        error(string.format("record %s: field #%d must be a table with one field, {name = type}", name, i), level)
      end
      if specs[field] then error(string.format("record %s: field %s is declared twice", name, field), level) end
      specs[field] = parse_spec(name, field, spec, level + 1)
      order[i] = field
    end
  else
    for field, spec in pairs(fields) do
      if type(field) ~= "string" then error("record " .. name .. ": field names must be strings", level) end
      specs[field] = parse_spec(name, field, spec, level + 1)
      order[#order + 1] = field
    end
    -- A map has no order of its own: name order, the same in every process.
    table.sort(order)
  end
  -- __field_order: the JSON encoder writes an instance as these fields in this order.
  local R = { __record = true, __name = name, __fields = specs, __field_order = order }
  -- __datetime: fields the JSON encoder writes as ISO-8601 UTC text, not as numbers.
  for field, spec in pairs(specs) do
    if spec.kind == "datetime" then
      R.__datetime = R.__datetime or {}
      R.__datetime[field] = true
    end
  end
  R.__index = R

  -- R.from(v): validate and convert a decoded value (raises with the field and the problem).
  function R.from(v, path)
    path = path or name
    if getmetatable(v) == R then return v end
    if type(v) ~= "table" then error(string.format("%s: expected an object, got %s", path, describe(v)), 0) end
    local out = {}
    for _, field in ipairs(order) do
      local spec = specs[field]
      local x = v[field]
      if x == nil or x == core.null then
        if spec.default ~= nil then
          out[field] = copy_default(spec.default)
        elseif not spec.optional then
          error(string.format("%s.%s: required field is missing", path, field), 0)
        end
      else
        local c, err = convert(spec, x, path .. "." .. field)
        if err then error(err, 0) end
        out[field] = c
      end
    end
    return setmetatable(out, R)
  end

  setmetatable(R, {
    __call = function(_, v)
      local ok, r = pcall(R.from, v)
      if not ok then error(r, 2) end
      return r
    end,
    __tostring = function() return "record " .. name end,
  })
  R.__tostring = function(self)
    local parts = {}
    for _, field in ipairs(order) do
      if self[field] ~= nil then parts[#parts + 1] = field .. "=" .. tostring(self[field]) end
    end
    return name .. "(" .. table.concat(parts, ", ") .. ")"
  end
  return R
end

return Record
