-- Contract tests for the JSON codec (runtime/base/fs_json.c).
local json = require("spec.json_module")

local function decode_error(text)
    local n = select("#", json.decode(text))
    local v, msg = json.decode(text)
    assert.is_nil(v, "accepted: " .. string.format("%q", text))
    assert.equals(2, n)
    assert.is_string(msg)
    assert.matches("^invalid JSON at byte %d+: ", msg)
    return msg
end

local function encode_error(value)
    local ok, msg = pcall(json.encode, value)
    assert.is_false(ok, "encoded as: " .. tostring(msg))
    return msg
end

-- Deep equality that also tells integers from floats and 0.0 from -0.0.
local function same(a, b, path)
    path = path or "value"
    if type(a) ~= type(b) then
        return false, ("%s: %s vs %s"):format(path, type(a), type(b))
    end
    if type(a) == "number" then
        if math.type(a) ~= math.type(b) then
            return false, ("%s: %s vs %s"):format(path, math.type(a), math.type(b))
        end
        if a ~= b or (a == 0 and 1 / a ~= 1 / b) then
            return false, ("%s: %.17g vs %.17g"):format(path, a, b)
        end
        return true
    end
    if type(a) ~= "table" then
        return a == b, ("%s: %q vs %q"):format(path, tostring(a), tostring(b))
    end
    for k, v in next, a do
        local ok, why = same(v, rawget(b, k), path .. "[" .. ("%q"):format(k) .. "]")
        if not ok then return false, why end
    end
    for k in next, b do
        if rawget(a, k) == nil then return false, path .. ": extra key " .. ("%q"):format(k) end
    end
    return true
end

local function assert_same(a, b)
    local ok, why = same(a, b)
    assert(ok, why)
end

local function nested(open, close, n)
    return open:rep(n) .. close:rep(n)
end

describe("fstream json", function()
    describe("numbers", function()
        it("decodes integers as Lua integers, including 2^53+1 and the int64 extremes", function()
            local cases = {
                { "0", 0 },
                { "-0", 0 },
                { "123", 123 },
                { "-42", -42 },
                { "9007199254740993", 9007199254740993 },
                { "12345678901234567", 12345678901234567 },
                { "9223372036854775807", math.maxinteger },
                { "-9223372036854775808", math.mininteger },
            }
            for _, c in ipairs(cases) do
                local v = json.decode(c[1])
                assert.equals("integer", math.type(v), c[1])
                assert.equals(c[2], v, c[1])
            end
        end)

        it("encodes integers exactly", function()
            assert.equals("9007199254740993", json.encode(9007199254740993))
            assert.equals("12345678901234567", json.encode(12345678901234567))
            assert.equals("-9223372036854775808", json.encode(math.mininteger))
            assert.equals("9223372036854775807", json.encode(math.maxinteger))
            assert.equals("0", json.encode(0))
            assert.equals("-7", json.encode(-7))
            assert.equals("[10,-100,1000]", json.encode({ 10, -100, 1000 }))
        end)

        it("decodes integers that overflow int64 as floats", function()
            local v = json.decode("9223372036854775808")
            assert.equals("float", math.type(v))
            assert.equals(2.0 ^ 63, v)
            v = json.decode("-9223372036854775809")
            assert.equals("float", math.type(v))
            assert.equals(-(2.0 ^ 63), v)
            -- 20 digits: would wrap around a uint64 accumulator
            v = json.decode("18446744073709551617")
            assert.equals("float", math.type(v))
            assert.equals(2.0 ^ 64, v)
            v = json.decode("123456789012345678901234567890")
            assert.equals("float", math.type(v))
            assert.equals(1.2345678901234568e29, v)
        end)

        it("decodes numbers with a fraction or exponent as floats", function()
            local cases = { ["1.0"] = 1.0, ["1e2"] = 100.0, ["1E2"] = 100.0, ["-2.5e-3"] = -0.0025,
                            ["0e0"] = 0.0, ["12.50"] = 12.5 }
            for text, want in pairs(cases) do
                local v = json.decode(text)
                assert.equals("float", math.type(v), text)
                assert.equals(want, v, text)
            end
        end)

        it("round-trips floats exactly (0.1, 1e-300, extremes, -0.0)", function()
            local cases = { 0.1, 1e-300, 1 / 3, 2 / 3, 12.5, 3.25, 5e-324, 2.2250738585072014e-308,
                            1.7976931348623157e308, 1e22, 1e23, 2.0 ^ 53, 123456.789, -0.0, 0.0 }
            for _, x in ipairs(cases) do
                assert_same(x, json.decode(json.encode(x)))
            end
            assert.equals(0.1, json.decode("0.1"))
            assert.equals(1e-300, json.decode("1e-300"))
            -- more than 19 significant digits takes the slow conversion path
            assert.equals(0.1, json.decode("0.1000000000000000000000001"))
        end)

        it("writes floats in shortest form and keeps them recognisable as floats", function()
            assert.equals("3.0", json.encode(3.0))
            assert.equals("float", math.type(json.decode(json.encode(3.0))))
            assert.equals("0.1", json.encode(0.1))
            assert.equals("-0.0", json.encode(-0.0))
            assert.equals("100.0", json.encode(100.0))
            assert.equals("1e+300", json.encode(1e300))
            assert.equals("0.30000000000000004", json.encode(0.1 + 0.2))
        end)

        -- Floats of at most 15 significant digits are formatted without
        -- double-conversion (fs_dtoa.cc): the same text, every layout.
        it("writes short decimals digit for digit, in plain notation from 1e-6 to 1e21", function()
            local cases = {
                { 406.27 * 68.75, "27931.0625" }, { 27931.0625, "27931.0625" }, { -5.5, "-5.5" },
                { 0.000123, "0.000123" }, { 0.00001, "0.00001" }, { 0.000012345, "0.000012345" },
                { 1e-6, "0.000001" }, { 1e-7, "1e-7" }, { 123456.789, "123456.789" },
                { 1e14, "100000000000000.0" }, { 123456789012345.0, "123456789012345.0" },
                { 999999999999999.0, "999999999999999.0" }, { 99999999999999.9, "99999999999999.9" },
                { 1e15, "1000000000000000.0" }, { 1234567890123456.0, "1234567890123456.0" },
                { 1e20, "100000000000000000000.0" }, { 1e21, "1e+21" }, { 2.5e-5, "0.000025" },
                { 1.5, "1.5" }, { -0.25, "-0.25" }, { 10.0, "10.0" }, { 120.5, "120.5" },
                { 1 / 3, "0.3333333333333333" }, { 2 / 3, "0.6666666666666666" },
                { 4.35, "4.35" }, { 0.1 * 3, "0.30000000000000004" }, { 0.000011, "0.000011" },
            }
            for _, c in ipairs(cases) do
                assert.equals(c[2], json.encode(c[1]), ("%.17g"):format(c[1]))
                assert.equals(c[1], json.decode(c[2]))
            end
            -- products and sums of cents, the usual source: shortest text that reads back
            math.randomseed(7)
            for _ = 1, 20000 do
                local x = math.random(0, 99999) / 100 * (math.random(1, 9999) / 100)
                if math.random(2) == 1 then x = -x + math.random(0, 999) / 10 end
                local s = json.encode(x)
                assert.equals(x, tonumber(s), s)
                -- nothing shorter reads back: one significant digit fewer does not
                local sig = s:gsub("^%-", ""):gsub("e.*$", ""):gsub("%.", ""):gsub("^0+", ""):gsub("0+$", "")
                if #sig > 1 then
                    assert.is_not.equal(x, tonumber(("%." .. (#sig - 1) .. "g"):format(x)), s)
                end
            end
        end)
    end)

    describe("strings", function()
        it("decodes all escapes", function()
            assert.equals('a"b\\c/d\b\f\n\r\t', json.decode([["a\"b\\c\/d\b\f\n\r\t"]]))
            assert.equals("A\0B", json.decode([["\u0041\u0000\u0042"]]))
            assert.equals("é€", json.decode([["\u00e9\u20AC"]]))
        end)

        it("decodes \\u surrogate pairs into 4-byte UTF-8", function()
            assert.equals("\xF0\x9F\x98\x80", json.decode([["\ud83d\ude00"]]))
            assert.equals("x\u{10FFFF}y", json.decode([["x\uDBFF\uDFFFy"]]))
            assert.equals("\u{10000}", json.decode([["\ud800\udc00"]]))
        end)

        it("passes raw UTF-8 through unchanged both ways", function()
            local s = "héllo wörld € 😀 \u{7FF} \u{800} \u{FFFF} \u{10FFFF}"
            assert.equals(s, json.decode('"' .. s .. '"'))
            assert.equals('"' .. s .. '"', json.encode(s))
        end)

        it("escapes quote, backslash and control characters, but not '/' or DEL", function()
            assert.equals([["a\"b\\c/d"]], json.encode('a"b\\c/d'))
            assert.equals([["\b\f\n\r\t"]], json.encode("\b\f\n\r\t"))
            assert.equals('"\\u0000\\u0001\\u001f\127"', json.encode("\0\1\31\127"))
        end)

        it("round-trips a 1 MiB string with escapes and multi-byte characters", function()
            local unit = "plain text/ é \n\t\"\\ 😀 \1 €"
            local s = unit:rep(math.ceil(2 ^ 20 / #unit))
            assert.is_true(#s >= 2 ^ 20)
            local text = json.encode(s)
            assert.is_true(#text > #s)
            assert.equals(s, json.decode(text))
        end)

        it("round-trips a 1 MiB plain ASCII string verbatim", function()
            local s = ("0123456789abcdef"):rep(2 ^ 16)
            local text = json.encode(s)
            assert.equals('"' .. s .. '"', text)
            assert.equals(s, json.decode(text))
        end)

        it("rejects invalid UTF-8 when encoding (values and keys)", function()
            local bad = {
                "\xC0\x80", "\xC1\xBF", "\xE0\x80\x80", "\xF0\x80\x80\x80", -- overlong
                "\xED\xA0\x80", "\xED\xBF\xBF",                             -- surrogates
                "\xF4\x90\x80\x80", "\xF5\x80\x80\x80", "\xFF",             -- > U+10FFFF
                "\xC3", "a\xE2\x82", "\xF0\x9F\x98",                        -- truncated
                "\x80", "ok\xBFok",                                         -- stray continuation
            }
            for _, s in ipairs(bad) do
                assert.matches("invalid UTF%-8", encode_error(s))
                assert.matches("invalid UTF%-8", encode_error({ [s] = 1 }))
            end
        end)
    end)

    describe("rejects malformed JSON with \"invalid JSON at byte N\"", function()
        -- { what, pattern the message must also match (the reason), inputs }
        local groups = {
            { "trailing garbage", "unexpected data after the value",
              { "1 x", "{} {}", "[1]]", "truex", "nullnull", '"a" "b"', "1,2", "0 0" } },
            { "leading zeros", "leading zero in number",
              { "01", "-01", "[00]", "007", "-00.5", '{"a":01}' } },
            { "single quotes", "expected a", { "'a'", "{'a':1}", "['x']" } },
            { "comments", "",
              { "/* c */ 1", "1 // c", "[1, /* c */ 2]", "# c\n1", '{"a":1 /**/}' } },
            { "control characters in strings", "control character in string",
              { '"a\nb"', '"a\tb"', '"\0"', '"\31"', '{"k\r":1}' } },
            { "invalid escapes", "escape",
              { [["\x41"]], [["\U0041"]], [["\u12G4"]], [["\u12"]], [["\'"]], [["\a"]], [["\0"]],
                [["\ "]] } },
            { "invalid UTF-8 in strings", "invalid UTF%-8 in string",
              { '"\xC0\x80"', '"\xC1\xBF"', '"\xE0\x80\x80"', '"\xF0\x80\x80\x80"', -- overlong
                '"\xED\xA0\x80"', '"\xED\xBF\xBF"',                                -- surrogates
                '"\xF4\x90\x80\x80"', '"\xF5\x80\x80\x80"', '"\xFF"',               -- > U+10FFFF
                '"\xE2\x82"', '"\xF0\x9F\x98"', '"\xC3"',                            -- truncated
                '"\x80"', '{"\xFE":1}' } },
            { "lone surrogates", "unpaired surrogate",
              { [["\ud800"]], [["\udc00"]], [["\ud800\u0041"]], [["\ud800x"]], [["\udbff\udbff"]],
                [["\ude00\ud83d"]], [["\ud800\u"]] } },
            { "bad numbers", "",
              { "+1", ".5", "1.", "1.e5", "1e", "1e+", "-", "-a", "0x10", "NaN", "Infinity",
                "-Infinity", "1.5.2" } },
            { "bad structure", "",
              { "", "   ", "[", "[1", "[1 2]", "[1,]", "[,1]", "{", '{"a"}', '{"a":}', '{"a":1,}',
                '{"a" 1}', "{1:2}", '{"a":1 "b":2}', "]", "tru", "nul", "fals", "True", '"abc',
                '"\\', "[1}", '{"a":1]', "\xEF\xBB\xBF1" } },
        }
        for _, group in ipairs(groups) do
            local name, reason, inputs = group[1], group[2], group[3]
            for _, text in ipairs(inputs) do
                it(name .. ": " .. ("%q"):format(text), function()
                    assert.matches(reason, decode_error(text))
                end)
            end
        end
    end)

    describe("error positions", function()
        it("reports the 0-based byte offset of the offending byte", function()
            assert.equals("invalid JSON at byte 13: expected ':'", decode_error('{"a": 1, "b" 2}'))
            assert.equals("invalid JSON at byte 9: invalid UTF-8 in string",
                          decode_error('["ok", "a\xE2\x82"]'))
            assert.equals("invalid JSON at byte 4: unexpected end of input", decode_error("[1, "))
            assert.equals("invalid JSON at byte 1: leading zero in number", decode_error("01"))
        end)
    end)

    it("accepts insignificant whitespace around every token", function()
        assert_same({ a = { 1, 2 } }, json.decode(' \t\r\n{ "a" : [ 1 , 2 ] } \n'))
    end)

    describe("nesting depth", function()
        it("decodes 500 and 512 levels but rejects 513 and 600", function()
            assert.is_table(json.decode(nested("[", "]", 500)))
            assert.is_table(json.decode(nested("[", "]", 512)))
            assert.matches("deeper than 512", decode_error(nested("[", "]", 513)))
            assert.matches("deeper than 512", decode_error(nested("[", "]", 600)))
            assert.matches("deeper than 512", decode_error(nested('{"a":', "}", 600)))
        end)

        it("encodes 500 levels but rejects 600", function()
            local function deep(n)
                local t = {}
                for _ = 2, n do t = { t } end
                return t
            end
            local text = json.encode(deep(500))
            assert.equals(("["):rep(499) .. "{}" .. ("]"):rep(499), text)
            assert.matches("deeper than 512", encode_error(deep(600)))
        end)
    end)

    -- Object keys go through a cache of recent keys compared by bytes
    -- (fs_json.c, dec_key): whatever it holds, every key decodes as written.
    describe("object keys", function()
        it("decodes keys that share their first bytes, their length or a cache slot", function()
            local keys = { "", "a", "ab", "abcdefg", "abcdefgh", "abcdefgi", "abcdefgh1", "abcdefgh2",
                           "abcdefghijklmnop", "abcdefghijklmnoq", "bbcdefghijklmnop", ("k"):rep(40),
                           ("k"):rep(39) .. "j", ("k"):rep(41), ("k"):rep(100), [[\u00e9t\u00e9]], [[a\"b]], "é",
                           [[x\ny]], "id", "account_id", "amount", "price", "note" }
            for i = 1, 600 do keys[#keys + 1] = "key" .. i end -- more keys than the cache has slots
            for round = 1, 3 do
                for _, shift in ipairs { 0, 1, 7 } do
                    local parts, want = {}, {}
                    for i = 1, #keys do
                        local k = keys[(i + shift - 1) % #keys + 1]
                        parts[#parts + 1] = ('"%s":%d'):format(k, i)
                        want[json.decode('"' .. k .. '"')] = i
                    end
                    local got = json.decode("{" .. table.concat(parts, ",") .. "}")
                    local ok, why = same(want, got)
                    assert(ok, why)
                    collectgarbage() -- cached keys must outlive the values that used them
                end
            end
            -- one key per message, message after message (a cached key each time after the first)
            for i = 1, 2000 do
                local k = keys[i % #keys + 1]
                local got = json.decode(('{"%s":[%d]}'):format(k, i))
                assert.equals(i, got[json.decode('"' .. k .. '"')][1])
            end
        end)
    end)

    describe("null", function()
        it("drops object members whose value is null", function()
            local t = json.decode('{"a":null,"b":1}')
            assert.is_nil(t.a)
            assert.equals(1, t.b)
            assert.equals("b", next(t))
            assert.is_nil(next(t, "b"))
        end)

        it("lets a later null clear an earlier duplicate member", function()
            assert.is_nil(json.decode('{"a":1,"a":null}').a)
            assert.equals(2, json.decode('{"a":1,"a":2}').a)
        end)

        it("keeps array elements that are null as the sentinel, preserving length", function()
            local t = json.decode("[1,null,3,null]")
            assert.equals(4, #t)
            assert.equals(json.null, t[2])
            assert.equals(json.null, t[4])
            assert.equals("userdata", type(json.null))
        end)

        it("encodes the sentinel and nil as null", function()
            assert.equals("null", json.encode(json.null))
            assert.equals("null", json.encode(nil))
            assert.equals("[1,null,3]", json.encode(json.decode("[1,null,3]")))
            assert.equals('{"a":null}', json.encode({ a = json.null }))
        end)

        it("decodes a top-level null as the sentinel", function()
            assert.equals(json.null, json.decode(" null "))
        end)
    end)

    describe("arrays and objects", function()
        it("round-trips an empty array as [] and an empty object as {}", function()
            assert.equals("[]", json.encode(json.decode("[]")))
            assert.equals("{}", json.encode(json.decode("{}")))
            assert.equals("{}", json.encode({}))
            local t = json.decode('{"a":[],"b":{}}')
            assert.equals("[]", json.encode(t.a))
            assert.equals("{}", json.encode(t.b))
        end)

        it("gives decoded arrays the shared fstream.json.array metatable", function()
            local a, b = json.decode("[1]"), json.decode("[]")
            assert.is_table(getmetatable(a))
            assert.equals(getmetatable(a), getmetatable(b))
            assert.equals(getmetatable(a), getmetatable(json.array()))
            assert.is_nil(getmetatable(json.decode("{}")))
        end)

        it("json.array marks a table (or a new one) as an array", function()
            local t = { 1, 2 }
            assert.equals(t, json.array(t))
            assert.equals("[1,2]", json.encode(t))
            assert.equals("[]", json.encode(json.array()))
            assert.equals("[]", json.encode(json.array({})))
            assert.has_error(function() json.array(setmetatable({}, {})) end)
        end)

        it("encodes a proper sequence 1..n as an array", function()
            assert.equals("[1,2,3]", json.encode({ 1, 2, 3 }))
            assert.equals('["a",[true,false]]', json.encode({ "a", { true, false } }))
        end)

        it("encodes a table with holes as an object with string keys", function()
            local t = json.decode(json.encode({ [1] = "a", [3] = "c" }))
            assert_same({ ["1"] = "a", ["3"] = "c" }, t)
            assert_same({ ["1"] = 1, ["2"] = 2, x = 1 }, json.decode(json.encode({ 1, 2, x = 1 })))
            assert.equals('{"0":1}', json.encode({ [0] = 1 }))
            assert.equals('{"-5":1}', json.encode({ [-5] = 1 }))
        end)

        it("rejects keys that are neither strings nor integers", function()
            assert.matches("key of type boolean", encode_error({ [true] = 1 }))
            assert.matches("key of type float", encode_error({ [1.5] = 1 }))
            assert.matches("key of type table", encode_error({ [{}] = 1 }))
        end)

        it("encodes tables with other metatables from their raw fields", function()
            local mt = {
                __index = function() error("__index called") end,
                __pairs = function() error("__pairs called") end,
                __len = function() error("__len called") end,
            }
            assert.equals('{"a":1}', json.encode(setmetatable({ a = 1 }, mt)))
            assert.equals("[1,2]", json.encode(setmetatable({ 1, 2 }, mt)))
        end)
    end)

    describe("encode errors", function()
        it("rejects functions, threads and full userdata", function()
            assert.matches("cannot encode a function", encode_error(print))
            assert.matches("cannot encode a thread", encode_error(coroutine.create(print)))
            assert.matches("cannot encode a userdata", encode_error(io.stdout))
            assert.matches("cannot encode a function", encode_error({ f = print }))
        end)

        it("rejects NaN and infinities", function()
            assert.matches("cannot encode NaN", encode_error(0 / 0))
            assert.matches("cannot encode inf", encode_error(math.huge))
            assert.matches("cannot encode %-inf", encode_error(-math.huge))
            assert.matches("cannot encode NaN", encode_error({ 1, 0 / 0 }))
        end)

        it("rejects cycles", function()
            local t = {}
            t.self = t
            assert.matches("cycle", encode_error(t))
            local a = {}
            a[1] = a
            assert.matches("cycle", encode_error(a))
        end)

        it("starts clean on the next call after a failed encode", function()
            encode_error({ 1, 2, { 3, print } })
            assert.equals("[1]", json.encode({ 1 }))
        end)
    end)

    describe("round-trip fuzz", function()
        local function rand_int()
            local r = math.random(4)
            if r == 1 then return math.random(-100, 100) end
            if r == 2 then return math.random(0) end -- any 64-bit pattern
            if r == 3 then return math.random(-2 ^ 53, 2 ^ 53) end
            return ({ math.mininteger, math.maxinteger, 0, -1, 9007199254740993 })[math.random(5)]
        end

        local function rand_float()
            local r = math.random(4)
            if r == 1 then return math.random() * 10.0 ^ math.random(-30, 30) end
            if r == 2 then return math.random(-1000000, 1000000) / 100 end
            if r == 3 then
                while true do
                    local x = string.unpack("<d", string.pack("<i8", math.random(0)))
                    if x == x and x ~= math.huge and x ~= -math.huge then return x end
                end
            end
            local special = { 0.0, -0.0, 5e-324, 1.7976931348623157e308, 2.0 ^ 63, 1e23, 0.1, 1/3 }
            return special[math.random(#special)]
        end

        local function rand_string()
            local parts = {}
            for i = 1, math.random(0, 12) do
                local r, cp = math.random(10), nil
                if r <= 5 then
                    cp = math.random(0x20, 0x7E)
                elseif r == 6 then
                    cp = math.random(0, 0x1F)
                elseif r == 7 then
                    cp = ({ 0x22, 0x5C, 0x2F, 0x7F })[math.random(4)]
                elseif r == 8 then
                    cp = math.random(0x80, 0x7FF)
                elseif r == 9 then
                    repeat cp = math.random(0x800, 0xFFFF) until cp < 0xD800 or cp > 0xDFFF
                else
                    cp = math.random(0x10000, 0x10FFFF)
                end
                parts[i] = utf8.char(cp)
            end
            return table.concat(parts)
        end

        local rand_value
        rand_value = function(depth)
            local r = math.random(depth >= 4 and 6 or 8)
            if r == 1 then return rand_int() end
            if r == 2 then return rand_float() end
            if r == 3 or r == 4 then return rand_string() end
            if r == 5 then return math.random(2) == 1 end
            if r == 6 then return json.null end
            if r == 7 then
                local t = math.random(2) == 1 and json.array() or {}
                for i = 1, math.random(0, 5) do t[i] = rand_value(depth + 1) end
                return t
            end
            local t = {}
            for _ = 1, math.random(0, 5) do
                local v = rand_value(depth + 1)
                if v ~= json.null then t[rand_string()] = v end -- null members vanish by design
            end
            return t
        end

        it("decode(encode(v)) equals v for 2000 random nested values", function()
            math.randomseed(20240611)
            for i = 1, 2000 do
                local v = rand_value(0)
                local text = json.encode(v)
                local back, err = json.decode(text)
                assert(back ~= nil, ("#%d: %s in %s"):format(i, tostring(err), text))
                local ok, why = same(v, back)
                assert(ok, ("#%d: %s in %s"):format(i, tostring(why), text))
            end
        end)
    end)
end)

describe("fstream json member order", function()
    local keys = { "zeta", "alpha", "mid", "b", "a", "é", "Z", "aa", "_x", "10", "9", "a b" }
    local sorted = '{"10":10,"9":9,"Z":7,"_x":9,"a":5,"a b":12,"aa":8,"alpha":2,"b":4,"mid":3,"zeta":1,"é":6}'

    local function build(order, presize)
        local t = presize and { p1 = 0, p2 = 0, p3 = 0, p4 = 0, p5 = 0, p6 = 0, p7 = 0, p8 = 0 } or {}
        if presize then for k in pairs(t) do t[k] = nil end end
        for _, i in ipairs(order) do t[keys[i]] = i end
        t["10"], t["9"], t["_x"] = 10, 9, 9
        return t
    end

    it("writes a plain table's keys sorted bytewise, whatever the insertion order", function()
        local fwd, rev, shuffled = {}, {}, { 5, 2, 9, 12, 1, 7, 3, 11, 8, 6, 4, 10 }
        for i = 1, #keys do fwd[i] = i; rev[i] = #keys + 1 - i end
        assert.equals(sorted, json.encode(build(fwd)))
        assert.equals(sorted, json.encode(build(rev, true)))
        assert.equals(sorted, json.encode(build(shuffled)))
        -- deleting and re-adding moves keys around in the hash part
        local t = build(fwd)
        for _, k in ipairs(keys) do local v = t[k]; t[k] = nil; t[k .. "!"] = 0; t[k] = v end
        for _, k in ipairs(keys) do t[k .. "!"] = nil end
        assert.equals(sorted, json.encode(t))
    end)

    it("sorts nested objects too, inside arrays and objects", function()
        local v = { list = { { b = 1, a = 2 }, { d = { z = 1, y = 2 }, c = 3 } }, k = { y = 1, x = 2 } }
        assert.equals('{"k":{"x":2,"y":1},"list":[{"a":2,"b":1},{"c":3,"d":{"y":2,"z":1}}]}', json.encode(v))
    end)

    it("sorts integer keys as their decimal text, so decoding and re-encoding keeps the bytes", function()
        local t = { [10] = "ten", [9] = "nine", [-1] = "minus", x = "x", [100] = "hundred" }
        local text = json.encode(t)
        assert.equals('{"-1":"minus","10":"ten","100":"hundred","9":"nine","x":"x"}', text)
        assert.equals(text, json.encode(json.decode(text)))
    end)

    it("rejects a table with the integer key 1 and the string key \"1\"", function()
        assert.matches('key "1" is both an integer and a string', encode_error({ [1] = "a", ["1"] = "b", x = 1 }))
        assert.matches('key "%-7" is both', encode_error({ list = { { [-7] = 1, ["-7"] = 2 } } }))
    end)

    it("sorts objects with thousands of keys (kept off the Lua stack)", function()
        local a, b, want = {}, {}, {}
        for i = 1, 3000 do a["k" .. i] = i end
        for i = 3000, 1, -1 do b["k" .. i] = i end
        for i = 1, 300 do a[i * 7] = i; b[i * 7] = i end -- integer keys too (not a sequence)
        local text = json.encode(a)
        assert.equals(text, json.encode(b))
        local prev
        for k in text:gmatch('"([^"]+)":') do
            if prev then assert(prev < k, prev .. " before " .. k) end
            prev = k
            want[#want + 1] = k
        end
        assert.equals(3300, #want)
        assert.equals(text, json.encode(json.decode(text)))
        -- a big object nested in an array, itself holding objects
        local big = {}
        for i = 1, 600 do big["n" .. i] = { y = i, x = -i } end
        local nested = json.encode({ big, { b = 1, a = 2 } })
        assert.matches('^%[{"n1":{"x":%-1,"y":1},"n10":{"x":%-10,"y":10},', nested)
        assert.matches('{"a":2,"b":1}%]$', nested)
    end)

    it("writes a table whose metatable has __field_order as those fields, in that order", function()
        local mt = { __field_order = { "zeta", "alpha", "gone", "mid" } }
        local t = setmetatable({ mid = 3, alpha = 2, zeta = 1, extra = 9 }, mt)
        assert.equals('{"zeta":1,"alpha":2,"mid":3}', json.encode(t))
        assert.equals('[{"zeta":{"b":1,"a":2}}]', json.encode({ setmetatable({ zeta = setmetatable({ a = 2, b = 1 },
            { __field_order = { "b", "a" } }) }, mt) }))
        assert.equals("{}", json.encode(setmetatable({}, mt)))
        assert.matches("__field_order holds a number", encode_error(setmetatable({ a = 1 }, { __field_order = { 1 } })))
    end)
end)

describe("fstream json big integers", function()
    local text = '{"up":18446744073709551615,"down":-9223372036854775809,"max":9223372036854775807,'
        .. '"min":-9223372036854775808,"exact":9007199254740993,"f":18446744073709551616.0,"e":1e30,'
        .. '"list":[123456789012345678901234567890]}'

    it("decodes them as floats by default and with \"float\", as before", function()
        for _, mode in ipairs({ false, "float" }) do
            local v = mode and json.decode(text, mode) or json.decode(text)
            assert.equals("float", math.type(v.up))
            assert.equals(2.0 ^ 64, v.up)
            assert.equals(-(2.0 ^ 63), v.down)
            assert.equals("float", math.type(v.list[1]))
            assert.equals('{"down":-9223372036854776000.0}', json.encode({ down = v.down }))
        end
    end)

    it("keeps their digits exactly as strings with \"string\"; they encode back as JSON strings", function()
        local v = json.decode(text, "string")
        assert.equals("18446744073709551615", v.up)
        assert.equals("-9223372036854775809", v.down)
        assert.equals("123456789012345678901234567890", v.list[1])
        assert.equals('{"down":"-9223372036854775809","up":"18446744073709551615"}',
            json.encode({ up = v.up, down = v.down }))
        assert.equals("18446744073709551615", json.decode("18446744073709551615", "string"))
    end)

    it("fails the decode with \"error\", naming the byte and the digits", function()
        local v, err = json.decode(text, "error")
        assert.is_nil(v)
        assert.equals("integer at byte 6 does not fit in 64 bits: 18446744073709551615", err)
        v, err = json.decode('[1, -9223372036854775809]', "error")
        assert.is_nil(v)
        assert.equals("integer at byte 4 does not fit in 64 bits: -9223372036854775809", err)
        local long = "1" .. ("0"):rep(60)
        v, err = json.decode(long, "error")
        assert.is_nil(v)
        assert.equals("integer at byte 0 does not fit in 64 bits: " .. long:sub(1, 40) .. "...", err)
    end)

    it("keeps int64 integers exact and fraction/exponent numbers floats in every mode", function()
        for _, mode in ipairs({ "float", "string", "error" }) do
            local t = json.decode('{"max":9223372036854775807,"min":-9223372036854775808,'
                .. '"exact":9007199254740993,"f":18446744073709551616.0,"e":1e30,"z":-0}', mode)
            assert.equals(math.maxinteger, t.max, mode)
            assert.equals(math.mininteger, t.min, mode)
            assert.equals("integer", math.type(t.exact), mode)
            assert.equals(9007199254740993, t.exact, mode)
            assert.equals("float", math.type(t.f), mode)
            assert.equals("float", math.type(t.e), mode)
            assert.equals("integer", math.type(t.z), mode)
            assert.equals('{"e":1e+30,"exact":9007199254740993,"f":18446744073709552000.0,'
                .. '"max":9223372036854775807,"min":-9223372036854775808,"z":0}', json.encode(t), mode)
        end
    end)

    it("rejects an unknown mode", function()
        assert.has_error(function() json.decode("1", "exact") end)
    end)
end)
