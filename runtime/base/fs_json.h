/* fs_json: a strict JSON (RFC 8259) codec between JSON text and Lua values.
 *
 * Exists because lua-cjson turns every number into a float; here integers that
 * fit in int64 stay Lua integers both ways.
 *
 * Value mapping
 *   object  <-> table (string keys; integer keys are written as decimal strings;
 *               of duplicate keys in the text the last one wins). Members are
 *               written in one stable order, so equal tables give equal bytes in
 *               every process: sorted bytewise on the member name as written
 *               (UTF-8 bytes, i.e. code point order; integer key 10 sorts as
 *               "10", before "9"), which decoding and re-encoding keeps. A table
 *               holding both the integer key 1 and the string key "1" is
 *               rejected (the text would repeat a member name). A table whose
 *               metatable has a `__field_order` array (records) is written as
 *               the fields listed there, in that order, skipping absent ones;
 *               other keys of such a table are not written.
 *   array   <-> table 1..n carrying the metatable registered as
 *               "fstream.json.array" (so an empty array survives a round trip).
 *               Encoding: a table with that metatable is written as t[1..#t]
 *               (raw length; other keys are ignored); a table without it is an
 *               array only when its keys are exactly 1..n with n >= 1, so a
 *               table with holes or extra keys becomes an object. An empty
 *               table without the metatable is {}.
 *   string  <-> string (always valid UTF-8; \uXXXX escapes decode to UTF-8)
 *   number  <-> integer when the text has no fraction/exponent and fits in int64
 *               ("-0" included), float otherwise (text beyond the double range
 *               decodes to +-inf, which encode then rejects). An integer beyond
 *               int64 (above 2^63-1 or below -2^63) follows the decoder's
 *               big-integer mode: FS_JSON_BIG_FLOAT the nearest double (digits
 *               beyond the 17th are lost), FS_JSON_BIG_STRING a Lua string of
 *               its digits as written (so it encodes back as a JSON string),
 *               FS_JSON_BIG_ERROR a decode error; floats are written
 *               with the fewest of 15, 16 or 17 significant digits that read
 *               back exactly, and always look like floats ("3.0", "1e+300")
 *   true/false <-> boolean
 *   null    <-> the null sentinel, a light userdata exposed as module.null. An
 *               object member whose value is null is left out of the table; an
 *               array element (and a top-level null) becomes the sentinel. nil
 *               encodes as null too.
 * Nesting deeper than 512 containers is rejected both ways; on encode this is
 * also what stops reference cycles.
 *
 * Neither function calls metamethods: tables are read with raw access, so record
 * objects with their own metatables are encoded from their raw fields (the
 * metatable's `__field_order`, read raw too, only chooses which and in what
 * order). */
#ifndef FS_JSON_H
#define FS_JSON_H

#include <lua.h>

#include "fs_buf.h"

/* Decodes `len` bytes of JSON text (need not be NUL-terminated; the caller keeps
 * ownership of `s`) and pushes one Lua value. Returns 0 on success.
 *
 * On failure pushes nothing, returns -1 and writes a NUL-terminated one-line
 * message into err (truncated to errlen; err may be NULL), of the form
 *   "invalid JSON at byte N: <what>"
 * where N is the 0-based offset of the first byte that makes the text invalid
 * (N == len when the text ends too early).
 *
 * Never raises a Lua error except memory errors (then the stack is unwound by
 * whoever catches them). Needs up to 2 stack slots per nesting level; grows the
 * stack itself with lua_checkstack.
 *
 * Object keys of up to 40 bytes without escapes are looked up in a cache of
 * the state's last keys (128 slots, in the registry) before Lua's string
 * table, so the keys of a stream of similar messages are not hashed and
 * interned again each time; the cache keeps those strings alive. */
int fs_json_decode(lua_State *L, const char *s, size_t len, char *err, size_t errlen);

/* What an integer beyond int64 decodes to (see the value mapping above). */
enum { FS_JSON_BIG_FLOAT = 0, FS_JSON_BIG_STRING = 1, FS_JSON_BIG_ERROR = 2 };

/* fs_json_decode with a big-integer mode (FS_JSON_BIG_*; fs_json_decode uses
 * FLOAT). Under FS_JSON_BIG_ERROR such an integer fails the decode with
 *   "integer at byte N does not fit in 64 bits: <digits>". */
int fs_json_decode_big(lua_State *L, const char *s, size_t len, int big, char *err,
                       size_t errlen);

/* "float", "string", "error" -> FS_JSON_BIG_*; -1 for anything else. */
int fs_json_big_mode(const char *name);

/* Appends the JSON text of the value at stack index idx to b; does not reset b
 * and never adds a NUL. Returns 0 on success.
 *
 * On failure returns -1, truncates b back to its length on entry (no partial
 * value is left behind) and writes a one-line message into err (err may be NULL):
 * an unsupported type ("cannot encode a function"), NaN or infinity, nesting
 * deeper than 512 (or a cycle), invalid UTF-8 in a string or key, a key that is
 * neither a string nor an integer, an integer key next to the same string key
 * (1 and "1"), or out of memory while growing b.
 *
 * Leaves the Lua stack as it found it. Does not raise Lua errors except memory
 * errors. */
int fs_json_encode(lua_State *L, int idx, fs_buf *b, char *err, size_t errlen);

/* Lua module: returns a table
 *   encode(v)  -> string; raises an error with the message when v cannot be
 *                 encoded (that is a programming error, not bad input)
 *   decode(s [, big_integers])
 *              -> value, or nil plus the message when s is not valid JSON;
 *                 big_integers is "float" (default), "string" or "error"
 *   null       -> the null sentinel (light userdata)
 *   array([t]) -> sets the array metatable on t (a new table when omitted) and
 *                 returns it; raises if t already has a different metatable */
int luaopen_fstream_json(lua_State *L);

#endif
