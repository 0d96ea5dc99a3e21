/* fs_json: strict JSON codec between JSON text and Lua values (see fs_json.h). */

#include "fs_json.h"
#include "fs_dtoa.h"

#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#define JSON_ARRAY_MT "fstream.json.array"
#define JSON_BUFFER_MT "fstream.json.buffer"
#define JSON_MAX_DEPTH 512

/* Growing a table from empty rehashes at every power of two, which costs more
 * than the slots below waste on small containers; 8 covers a typical record
 * (decoding the benchmark message got about a quarter faster). */
#define JSON_ARRAY_PRESIZE 4
#define JSON_OBJECT_PRESIZE 8

/* module.encode keeps its buffer between calls so the steady state does not
 * allocate; past this size it is given back so one huge message does not pin
 * the memory for the life of the state. */
#define JSON_KEEP_BUFFER ((size_t)1 << 20)

/* Keys a json_enc holds without allocating; covers every object of a typical
 * message (records of a few dozen fields, nested a few levels). */
#define JSON_INLINE_KEYS 32

/* An object with more keys keeps them in a Lua table instead of on the Lua
 * stack, whose size is limited (LUAI_MAXSTACK, shared by the nesting levels). */
#define JSON_STACK_KEYS 256

/* Up to this many keys an insertion sort beats qsort (no call per comparison). */
#define JSON_INSERTION_SORT 16

/* The escaped-string decoder holds a luaL_Buffer (about 1 KiB); if it were
 * inlined into the recursive value decoder every nesting level would pay for it. */
#if defined(__GNUC__)
#define JSON_NOINLINE __attribute__((noinline))
#else
#define JSON_NOINLINE
#endif

/* Only its address matters: it is the null sentinel, unique per process. */
static char json_null;

/* 1 where a string scanner must stop and look: '"', '\\', control characters
 * and every non-ASCII byte (which starts a UTF-8 sequence to validate). */
static const unsigned char str_special[256] = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
};

/* Registry keys by address (a lookup by name goes through Lua's string cache
 * and strcmp at every encode and decode). */
static char array_mt_key, key_cache_key;

/* Creates the array metatable on first use, so the C API works even when
 * luaopen_fstream_json never ran in this state; it is also registered under
 * its name, for luaL_checkudata-style lookups. */
static void push_array_mt(lua_State *L)
{
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &array_mt_key) == LUA_TTABLE) return;
    lua_pop(L, 1);
    luaL_newmetatable(L, JSON_ARRAY_MT);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &array_mt_key);
}

/* Length of the well-formed UTF-8 sequence at p (2..4 bytes), or 0 for stray
 * continuation bytes, overlong forms, encoded UTF-16 surrogates, code points
 * above U+10FFFF and sequences cut short by `end`. The second-byte ranges are
 * those of RFC 3629's grammar. */
static inline size_t utf8_len(const unsigned char *p, const unsigned char *end)
{
    unsigned c = p[0];
    size_t avail = (size_t)(end - p);

    if (c < 0xC2) return 0;
    if (c < 0xE0) return (avail >= 2 && (p[1] & 0xC0) == 0x80) ? 2 : 0;
    if (c < 0xF0) {
        if (avail < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return 0;
        if (c == 0xE0 && p[1] < 0xA0) return 0;
        if (c == 0xED && p[1] >= 0xA0) return 0;
        return 3;
    }
    if (c < 0xF5) {
        if (avail < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 ||
            (p[3] & 0xC0) != 0x80)
            return 0;
        if (c == 0xF0 && p[1] < 0x90) return 0;
        if (c == 0xF4 && p[1] >= 0x90) return 0;
        return 4;
    }
    return 0;
}

/* Skips bytes that go through a string unchanged (plain ASCII and valid UTF-8).
 * Stops at end, '"', '\\', a control character, or a byte >= 0x80 that does
 * not start a valid sequence. */
/* Whether any of the 8 bytes at p is one str_special marks: a zero byte of
 * v ^ '"', of v ^ '\\', a byte below 0x20, or one with its high bit set. The
 * usual word tricks: a flagged byte may be a false one only above a true one,
 * which is all "any" needs. */
static inline int word_special(const unsigned char *p)
{
    const uint64_t ones = UINT64_C(0x0101010101010101), highs = UINT64_C(0x8080808080808080);
    uint64_t v, q, b;
    memcpy(&v, p, 8);
    q = v ^ (ones * '"');
    b = v ^ (ones * '\\');
    return (((q - ones) & ~q) | ((b - ones) & ~b) | ((v - ones * 0x20) & ~v) | v) & highs ? 1 : 0;
}

static inline const unsigned char *scan_run(const unsigned char *p, const unsigned char *end)
{
    for (;;) {
        size_t n;
        while (end - p >= 8 && !word_special(p)) p += 8;
        while (p < end && !str_special[*p]) p++;
        if (p == end || *p < 0x80) return p;
        if ((n = utf8_len(p, end)) == 0) return p;
        p += n;
    }
}

/* ---------------------------------------------------------------- decoder */

/* Object keys recently decoded in this state, so that the same keys message
 * after message are not hashed and looked up in Lua's string table each time
 * (internshrstr was 5 % of a stateless worker): a direct-mapped table of
 * JSON_KEY_SLOTS strings, compared by bytes (their first 8 and their length
 * first), kept alive as the user values of the userdata that holds their
 * addresses; one more user value holds the array metatable, so that a decode
 * makes one registry lookup. Keys longer than JSON_KEY_CACHED bytes or with
 * escapes are not cached. */
#define JSON_KEY_SLOTS 128
#define JSON_KEY_CACHED 40
#define JSON_KEY_MT (JSON_KEY_SLOTS + 1) /* the user value holding the array metatable */

typedef struct key_cache {
    uint64_t head[JSON_KEY_SLOTS]; /* the first 8 bytes, zero-padded */
    uint32_t len[JSON_KEY_SLOTS];  /* 0: empty slot (the empty key is not cached) */
    const char *s[JSON_KEY_SLOTS];
} key_cache;

typedef struct json_dec {
    lua_State *L;
    key_cache *kc;
    int kci; /* stack index of the key cache's userdata */
    const unsigned char *p; /* next byte to read */
    const unsigned char *start;
    const unsigned char *end;
    char *err;
    size_t errlen;
    int depth;
    int big; /* FS_JSON_BIG_*: what an integer beyond int64 becomes */
} json_dec;

static int dec_value(json_dec *d);

static int dec_fail(json_dec *d, const unsigned char *at, const char *what)
{
    if (d->err && d->errlen)
        snprintf(d->err, d->errlen, "invalid JSON at byte %zu: %s", (size_t)(at - d->start),
                 what);
    return -1;
}

/* Says "end of input" when that is what made `at` wrong. */
static int dec_unexpected(json_dec *d, const unsigned char *at, const char *what)
{
    return dec_fail(d, at, at == d->end ? "unexpected end of input" : what);
}

static inline const unsigned char *skip_ws(const unsigned char *p, const unsigned char *end)
{
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
    return p;
}

static long hex4(const unsigned char *p, const unsigned char *end)
{
    long v = 0;
    int i;
    if (end - p < 4) return -1;
    for (i = 0; i < 4; i++) {
        unsigned c = p[i], lc = c | 0x20;
        if (c >= '0' && c <= '9')
            v = v << 4 | (long)(c - '0');
        else if (lc >= 'a' && lc <= 'f')
            v = v << 4 | (long)(lc - 'a' + 10);
        else
            return -1;
    }
    return v;
}

/* Decodes the \u escape at p (pointing at the backslash), joining a UTF-16
 * surrogate pair into one code point. Returns the byte after it, or NULL. */
static const unsigned char *dec_unicode(json_dec *d, const unsigned char *p, luaL_Buffer *B)
{
    const unsigned char *q = p + 6;
    long cp = hex4(p + 2, d->end), lo;
    char u[4];
    size_t n;

    if (cp < 0) {
        dec_fail(d, p, "invalid \\u escape");
        return NULL;
    }
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        if (d->end - q < 6 || q[0] != '\\' || q[1] != 'u' || (lo = hex4(q + 2, d->end)) < 0xDC00 ||
            lo > 0xDFFF) {
            dec_fail(d, p, "unpaired surrogate in \\u escape");
            return NULL;
        }
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        q += 6;
    } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
        dec_fail(d, p, "unpaired surrogate in \\u escape");
        return NULL;
    }
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | cp >> 6);
        u[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | cp >> 12);
        u[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (char)(0xF0 | cp >> 18);
        u[1] = (char)(0x80 | (cp >> 12 & 0x3F));
        u[2] = (char)(0x80 | (cp >> 6 & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    luaL_addlstring(B, u, n);
    return q;
}

/* Slow path of dec_string, entered at the first byte the fast scan could not
 * pass: builds the string in a luaL_Buffer, so only strings with escapes copy,
 * and it also produces the error for the malformed cases. */
static JSON_NOINLINE int dec_string_slow(json_dec *d, const unsigned char *run,
                                         const unsigned char *p)
{
    const unsigned char *end = d->end;
    luaL_Buffer B;

    luaL_buffinit(d->L, &B);
    for (;;) {
        char c;
        luaL_addlstring(&B, (const char *)run, (size_t)(p - run));
        if (p == end) return dec_fail(d, p, "unexpected end of input in string");
        if (*p == '"') break;
        if (*p >= 0x80) return dec_fail(d, p, "invalid UTF-8 in string");
        if (*p < 0x20) return dec_fail(d, p, "control character in string");
        if (end - p < 2) return dec_fail(d, end, "unexpected end of input in string");
        switch (p[1]) {
        case '"': c = '"'; break;
        case '\\': c = '\\'; break;
        case '/': c = '/'; break;
        case 'b': c = '\b'; break;
        case 'f': c = '\f'; break;
        case 'n': c = '\n'; break;
        case 'r': c = '\r'; break;
        case 't': c = '\t'; break;
        case 'u': c = 0; break;
        default: return dec_fail(d, p, "invalid escape in string");
        }
        if (c) {
            luaL_addchar(&B, c);
            p += 2;
        } else if ((p = dec_unicode(d, p, &B)) == NULL) {
            return -1;
        }
        run = p;
        p = scan_run(p, end);
    }
    luaL_pushresult(&B);
    d->p = p + 1;
    return 0;
}

/* The common case, a string without escapes, is pushed straight from the input. */
static int dec_string(json_dec *d)
{
    const unsigned char *run = d->p + 1, *p = scan_run(run, d->end);
    if (p < d->end && *p == '"') {
        lua_pushlstring(d->L, (const char *)run, (size_t)(p - run));
        d->p = p + 1;
        return 0;
    }
    return dec_string_slow(d, run, p);
}

/* The first min(n, 8) bytes at p (1 <= n, p + n < end) as an integer, the
 * others zero: one load where 8 bytes can be read. */
static inline uint64_t key_head(const unsigned char *p, size_t n, const unsigned char *end)
{
    uint64_t v = 0;
    if (end - p >= 8) {
        memcpy(&v, p, 8);
        if (n < 8) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
            v &= ~(uint64_t)0 << (8 * (8 - n));
#else
            v &= ((uint64_t)1 << (8 * n)) - 1;
#endif
        }
    } else {
        memcpy(&v, p, n); /* n < 8 here */
    }
    return v;
}

/* An object key: like dec_string, through the key cache when it is short
 * and has no escapes. */
static int dec_key(json_dec *d)
{
    const unsigned char *run = d->p + 1, *p = scan_run(run, d->end);
    size_t n = (size_t)(p - run);
    if (p < d->end && *p == '"' && n - 1 < JSON_KEY_CACHED) {
        key_cache *kc = d->kc;
        uint64_t head = key_head(run, n, d->end), tail = 0, x;
        unsigned h;
        if (n > 8) memcpy(&tail, run + n - 8, 8);
        x = (head ^ (tail * UINT64_C(0x9E3779B97F4A7C15)) ^ n) * UINT64_C(0xD6E8FEB86659FD93);
        h = (unsigned)(x >> 57) & (JSON_KEY_SLOTS - 1);
        d->p = p + 1;
        if (kc->head[h] == head && kc->len[h] == n &&
            (n <= 8 || memcmp(kc->s[h] + 8, run + 8, n - 8) == 0)) {
            lua_getiuservalue(d->L, d->kci, (int)h + 1);
            return 0;
        }
        kc->s[h] = lua_pushlstring(d->L, (const char *)run, n);
        kc->head[h] = head;
        kc->len[h] = (uint32_t)n;
        lua_pushvalue(d->L, -1);
        lua_setiuservalue(d->L, d->kci, (int)h + 1);
        return 0;
    }
    return dec_string(d);
}

/* Pushes this state's key cache (created on first use) and returns it. */
static key_cache *push_key_cache(lua_State *L)
{
    key_cache *kc;
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &key_cache_key) == LUA_TUSERDATA)
        return (key_cache *)lua_touserdata(L, -1);
    lua_pop(L, 1);
    kc = (key_cache *)lua_newuserdatauv(L, sizeof *kc, JSON_KEY_MT);
    memset(kc, 0, sizeof *kc);
    push_array_mt(L);
    lua_setiuservalue(L, -2, JSON_KEY_MT);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &key_cache_key);
    return kc;
}

/* Numbers whose digits fit in a uint64 are converted here; everything else
 * (more than 19 digits, big exponents, int64 overflow) goes through Lua's own
 * strtod-based conversion, which also copes with a non-"C" LC_NUMERIC. */
static int dec_number(json_dec *d)
{
    const unsigned char *p = d->p, *end = d->end, *start = p;
    uint64_t m = 0; /* all significant digits, integer and fraction */
    int nd = 0, nfrac = 0, isfloat = 0, neg = 0;
    long ev = 0; /* exponent as written, clamped */
    char tmp[64];
    size_t len;

    if (*p == '-') {
        neg = 1;
        p++;
    }
    if (p == end || *p < '0' || *p > '9') return dec_unexpected(d, p, "expected a digit");
    if (*p == '0') {
        p++;
        nd = 1;
        if (p < end && *p >= '0' && *p <= '9') return dec_fail(d, p, "leading zero in number");
    } else {
        for (; p < end && *p >= '0' && *p <= '9'; p++, nd++) m = m * 10 + (uint64_t)(*p - '0');
    }
    if (p < end && *p == '.') {
        isfloat = 1;
        p++;
        if (p == end || *p < '0' || *p > '9') return dec_unexpected(d, p, "expected a digit");
        for (; p < end && *p >= '0' && *p <= '9'; p++, nd++, nfrac++)
            m = m * 10 + (uint64_t)(*p - '0');
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        int eneg = 0;
        isfloat = 1;
        p++;
        if (p < end && (*p == '+' || *p == '-')) eneg = *p++ == '-';
        if (p == end || *p < '0' || *p > '9') return dec_unexpected(d, p, "expected a digit");
        for (; p < end && *p >= '0' && *p <= '9'; p++)
            if (ev < 100000) ev = ev * 10 + (*p - '0');
        if (eneg) ev = -ev;
    }
    d->p = p;

    if (!isfloat && nd <= 19) {
        if (m <= (uint64_t)LUA_MAXINTEGER) {
            lua_pushinteger(d->L, neg ? -(lua_Integer)m : (lua_Integer)m);
            return 0;
        }
        if (neg && m == (uint64_t)LUA_MAXINTEGER + 1) {
            lua_pushinteger(d->L, LUA_MININTEGER);
            return 0;
        }
    }
    /* An integer (no fraction, no exponent) that int64 cannot hold. */
    if (!isfloat && d->big != FS_JSON_BIG_FLOAT) {
        if (d->big == FS_JSON_BIG_STRING) {
            lua_pushlstring(d->L, (const char *)start, (size_t)(p - start));
            return 0;
        }
        if (d->err && d->errlen)
            snprintf(d->err, d->errlen, "integer at byte %zu does not fit in 64 bits: %.*s%s",
                     (size_t)(start - d->start), (int)(p - start > 40 ? 40 : p - start),
                     (const char *)start, p - start > 40 ? "..." : "");
        return -1;
    }
#if FLT_EVAL_METHOD == 0
    /* Both operands are exact doubles, so one IEEE multiply or divide gives the
     * correctly rounded result (Clinger's fast path). */
    if (nd <= 19 && m <= ((uint64_t)1 << 53)) {
        long e = ev - nfrac;
        if (e >= -22 && e <= 22) {
            double x = (double)m;
            x = e < 0 ? x / fs_pow10_exact[-e] : x * fs_pow10_exact[e];
            lua_pushnumber(d->L, neg ? -x : x);
            return 0;
        }
    }
#endif
    len = (size_t)(p - start);
    if (len < sizeof tmp) {
        memcpy(tmp, start, len);
        tmp[len] = '\0';
        if (lua_stringtonumber(d->L, tmp) != 0) return 0;
    } else {
        lua_pushlstring(d->L, (const char *)start, len);
        if (lua_stringtonumber(d->L, lua_tostring(d->L, -1)) != 0) {
            lua_remove(d->L, -2);
            return 0;
        }
    }
    return dec_fail(d, start, "number cannot be converted");
}

static int dec_array(json_dec *d)
{
    lua_State *L = d->L;
    lua_Integer n = 0;

    if (++d->depth > JSON_MAX_DEPTH) return dec_fail(d, d->p, "nesting deeper than 512");
    if (!lua_checkstack(L, 4)) return dec_fail(d, d->p, "Lua stack exhausted");
    lua_createtable(L, JSON_ARRAY_PRESIZE, 0);
    lua_getiuservalue(L, d->kci, JSON_KEY_MT);
    lua_setmetatable(L, -2);
    d->p = skip_ws(d->p + 1, d->end);
    if (d->p < d->end && *d->p == ']') {
        d->p++;
        d->depth--;
        return 0;
    }
    for (;;) {
        if (dec_value(d) < 0) return -1;
        lua_rawseti(L, -2, ++n);
        d->p = skip_ws(d->p, d->end);
        if (d->p < d->end && *d->p == ',') {
            d->p = skip_ws(d->p + 1, d->end);
        } else if (d->p < d->end && *d->p == ']') {
            d->p++;
            break;
        } else {
            return dec_unexpected(d, d->p, "expected ',' or ']'");
        }
    }
    d->depth--;
    return 0;
}

static int dec_object(json_dec *d)
{
    lua_State *L = d->L;

    if (++d->depth > JSON_MAX_DEPTH) return dec_fail(d, d->p, "nesting deeper than 512");
    if (!lua_checkstack(L, 4)) return dec_fail(d, d->p, "Lua stack exhausted");
    lua_createtable(L, 0, JSON_OBJECT_PRESIZE);
    d->p = skip_ws(d->p + 1, d->end);
    if (d->p < d->end && *d->p == '}') {
        d->p++;
        d->depth--;
        return 0;
    }
    for (;;) {
        int r;
        if (d->p == d->end || *d->p != '"') return dec_unexpected(d, d->p, "expected a string key");
        if (dec_key(d) < 0) return -1;
        d->p = skip_ws(d->p, d->end);
        if (d->p == d->end || *d->p != ':') return dec_unexpected(d, d->p, "expected ':'");
        d->p = skip_ws(d->p + 1, d->end);
        if ((r = dec_value(d)) < 0) return -1;
        if (r > 0) {
            /* null members are absent; storing nil (rather than skipping) keeps
             * "last duplicate wins" true for {"a":1,"a":null} too */
            lua_pop(L, 1);
            lua_pushnil(L);
        }
        lua_rawset(L, -3);
        d->p = skip_ws(d->p, d->end);
        if (d->p < d->end && *d->p == ',') {
            d->p = skip_ws(d->p + 1, d->end);
        } else if (d->p < d->end && *d->p == '}') {
            d->p++;
            break;
        } else {
            return dec_unexpected(d, d->p, "expected ',' or '}'");
        }
    }
    d->depth--;
    return 0;
}

static int dec_word(json_dec *d, const char *word, size_t n)
{
    if ((size_t)(d->end - d->p) < n || memcmp(d->p, word, n) != 0)
        return dec_fail(d, d->p, "invalid literal");
    d->p += n;
    return 0;
}

/* Pushes one value. Returns 1 when it was null (the sentinel is pushed), so
 * that objects can drop the member, 0 otherwise, -1 on error. */
static int dec_value(json_dec *d)
{
    if (d->p == d->end) return dec_fail(d, d->p, "unexpected end of input");
    switch (*d->p) {
    case '{': return dec_object(d);
    case '[': return dec_array(d);
    case '"': return dec_string(d);
    case '-': case '0': case '1': case '2': case '3': case '4':
    case '5': case '6': case '7': case '8': case '9':
        return dec_number(d);
    case 't':
        if (dec_word(d, "true", 4) < 0) return -1;
        lua_pushboolean(d->L, 1);
        return 0;
    case 'f':
        if (dec_word(d, "false", 5) < 0) return -1;
        lua_pushboolean(d->L, 0);
        return 0;
    case 'n':
        if (dec_word(d, "null", 4) < 0) return -1;
        lua_pushlightuserdata(d->L, &json_null);
        return 1;
    default: return dec_fail(d, d->p, "expected a value");
    }
}

int fs_json_decode(lua_State *L, const char *s, size_t len, char *err, size_t errlen)
{
    return fs_json_decode_big(L, s, len, FS_JSON_BIG_FLOAT, err, errlen);
}

int fs_json_decode_big(lua_State *L, const char *s, size_t len, int big, char *err,
                       size_t errlen)
{
    json_dec d;
    int top = lua_gettop(L);

    d.L = L;
    d.start = d.p = (const unsigned char *)(s ? s : "");
    d.end = d.start + (s ? len : 0);
    d.err = err;
    d.errlen = errlen;
    d.depth = 0;
    d.big = big;
    if (!lua_checkstack(L, 4)) return dec_fail(&d, d.p, "Lua stack exhausted");
    d.kc = push_key_cache(L);
    d.kci = lua_gettop(L);
    d.p = skip_ws(d.p, d.end);
    if (dec_value(&d) < 0) goto fail;
    d.p = skip_ws(d.p, d.end);
    if (d.p != d.end) {
        dec_fail(&d, d.p, "unexpected data after the value");
        goto fail;
    }
    lua_remove(L, d.kci);
    return 0;
fail:
    lua_settop(L, top);
    return -1;
}

/* ---------------------------------------------------------------- encoder */

/* One member name of an object being written, collected so that the members
 * can be written in key order. */
typedef struct enc_key {
    const char *s; /* the key's text (a Lua string kept alive on the stack or in
                      the key table); NULL for an integer key, whose text is num */
    size_t len;
    uint64_t prefix; /* the first 8 bytes, big-endian, zero-padded: one integer
                        comparison orders most pairs of keys */
    int slot;      /* stack index of the key, or its index in the key table */
    char num[20];  /* an integer key in decimal ("-9223372036854775808" fits) */
} enc_key;

typedef struct json_enc {
    lua_State *L;
    fs_buf *b;
    char *err;
    size_t errlen;
    int mt;     /* stack index of the array metatable (nil until first needed) */
    int scratch; /* stack index holding e->keys once it outgrows inline_keys (a
                    userdata: the GC frees it even when a memory error unwinds) */
    int depth;
    int nomem; /* sticky: checked once at the end instead of after every write */
    /* Keys of the objects being written, innermost object's last: one stack for
     * all nesting levels, so an encode allocates only when more than
     * JSON_INLINE_KEYS keys are open at once (then in the scratch userdata). */
    enc_key *keys;
    size_t nkeys, capkeys;
    enc_key inline_keys[JSON_INLINE_KEYS];
} json_enc;

static int enc_value(json_enc *e, int idx);

static int enc_fail(json_enc *e, const char *fmt, ...)
{
    va_list ap;
    if (e->err && e->errlen) {
        va_start(ap, fmt);
        vsnprintf(e->err, e->errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static inline void enc_add(json_enc *e, const void *s, size_t n)
{
    if (fs_buf_add(e->b, s, n)) e->nomem = 1;
}

static inline void enc_addc(json_enc *e, char c)
{
    if (fs_buf_addc(e->b, c)) e->nomem = 1;
}

/* Writes v in decimal backwards, ending just before `end`; returns the first
 * byte. At most 20 bytes. */
static char *integer_text(lua_Integer v, char *end)
{
    /* unsigned negation is defined for LUA_MININTEGER, signed is not */
    char *p = fs_digits_back(v < 0 ? 0 - (uint64_t)v : (uint64_t)v, end);
    if (v < 0) *--p = '-';
    return p;
}

static void enc_integer(json_enc *e, lua_Integer v)
{
    char tmp[24], *p = integer_text(v, tmp + sizeof tmp);
    enc_add(e, p, (size_t)(tmp + sizeof tmp - p));
}

static int enc_float(json_enc *e, double x)
{
    char out[40];
    if (isnan(x)) return enc_fail(e, "cannot encode NaN");
    if (isinf(x)) return enc_fail(e, "cannot encode %s", x > 0 ? "inf" : "-inf");
    int n = fs_dtoa_shortest(x, out, (int)sizeof out);
    if (n < 0) return enc_fail(e, "cannot encode %g", x);
    enc_add(e, out, (size_t)n);
    return 0;
}

static int enc_string(json_enc *e, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s, *end = p + len;

    if (fs_buf_reserve(e->b, len + 2)) e->nomem = 1;
    enc_addc(e, '"');
    for (;;) {
        const unsigned char *run = p;
        char esc[6];
        size_t n = 2;

        p = scan_run(p, end);
        enc_add(e, run, (size_t)(p - run));
        if (p == end) break;
        if (*p >= 0x80)
            return enc_fail(e, "cannot encode: invalid UTF-8 in string at byte %zu",
                            (size_t)(p - (const unsigned char *)s));
        esc[0] = '\\';
        switch (*p) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default:
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[*p >> 4];
            esc[5] = hex[*p & 0xF];
            n = 6;
        }
        enc_add(e, esc, n);
        p++;
    }
    enc_addc(e, '"');
    return 0;
}

/* A plain table is an array when its keys are exactly 1..n: every key is an
 * integer in [1, n] and there are n of them (keys are distinct). */
static int is_sequence(lua_State *L, int idx, lua_Integer n)
{
    lua_Integer count = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_Integer k;
        if (!lua_isinteger(L, -2) || (k = lua_tointeger(L, -2)) < 1 || k > n) {
            lua_pop(L, 2);
            return 0;
        }
        count++;
        lua_pop(L, 1);
    }
    return count == n;
}

static inline const char *key_text(const enc_key *k)
{
    return k->s ? k->s : k->num;
}

/* Bytewise on the member names as written, so integer key 10 sorts as "10". */
static inline uint64_t key_prefix(const char *s, size_t len)
{
    unsigned char b[8] = {0};
    memcpy(b, s, len < 8 ? len : 8);
    return (uint64_t)b[0] << 56 | (uint64_t)b[1] << 48 | (uint64_t)b[2] << 40 |
           (uint64_t)b[3] << 32 | (uint64_t)b[4] << 24 | (uint64_t)b[5] << 16 |
           (uint64_t)b[6] << 8 | (uint64_t)b[7];
}

static inline int key_cmp(const enc_key *a, const enc_key *b)
{
    size_t n = a->len < b->len ? a->len : b->len;
    int c;
    if (a->prefix != b->prefix) return a->prefix < b->prefix ? -1 : 1;
    /* equal prefixes: the first min(n, 8) bytes are equal */
    if (n > 8 && (c = memcmp(key_text(a) + 8, key_text(b) + 8, n - 8)) != 0) return c;
    return a->len < b->len ? -1 : a->len > b->len;
}

static int key_qcmp(const void *a, const void *b)
{
    return key_cmp((const enc_key *)a, (const enc_key *)b);
}

static void sort_keys(enc_key *k, size_t n)
{
    size_t i, j;
    if (n > JSON_INSERTION_SORT) {
        qsort(k, n, sizeof *k, key_qcmp);
        return;
    }
    for (i = 1; i < n; i++) {
        enc_key t = k[i];
        for (j = i; j > 0 && key_cmp(&t, &k[j - 1]) < 0; j--) k[j] = k[j - 1];
        k[j] = t;
    }
}

/* Doubles e->keys (a memory error raises, as Lua's own allocations do); -1 when
 * the size would overflow. */
static int keys_grow(json_enc *e)
{
    size_t cap = e->capkeys * 2;
    enc_key *k;
    if (cap > (size_t)-1 / 2 / sizeof *k) return -1;
    k = (enc_key *)lua_newuserdatauv(e->L, cap * sizeof *k, 0);
    memcpy(k, e->keys, e->nkeys * sizeof *k);
    lua_replace(e->L, e->scratch); /* the old array, if any, is garbage now */
    e->keys = k;
    e->capkeys = cap;
    return 0;
}

/* Appends the keys of the table at idx to e->keys and keeps each key alive:
 * on the Lua stack, its value right above it (slot = the key's index), or, past
 * JSON_STACK_KEYS, in a key table pushed on the stack (*ktab its index, slot =
 * position in it; the values are then read again when written). */
static int collect_keys(json_enc *e, int idx, int *ktab)
{
    lua_State *L = e->L;
    size_t base = e->nkeys;
    int top = lua_gettop(L);
    lua_Integer nk = 0;

    *ktab = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        enc_key *k;
        size_t have = e->nkeys - base;
        if (!*ktab && have == JSON_STACK_KEYS) {
            /* a big object: start over with the keys in a table */
            lua_settop(L, top);
            e->nkeys = base;
            lua_createtable(L, 2 * JSON_STACK_KEYS, 0);
            *ktab = lua_gettop(L);
            lua_pushnil(L);
            continue;
        }
        if (e->nkeys == e->capkeys && keys_grow(e)) return enc_fail(e, "cannot encode: out of memory");
        k = &e->keys[e->nkeys];
        /* lua_tolstring on a number key would convert it in place and break
         * lua_next, hence the type test first */
        if (lua_type(L, -2) == LUA_TSTRING) {
            k->s = lua_tolstring(L, -2, &k->len);
        } else if (lua_isinteger(L, -2)) {
            char tmp[24], *p = integer_text(lua_tointeger(L, -2), tmp + sizeof tmp);
            k->s = NULL;
            k->len = (size_t)(tmp + sizeof tmp - p);
            memcpy(k->num, p, k->len);
        } else {
            return enc_fail(e, "cannot encode a table key of type %s",
                            lua_type(L, -2) == LUA_TNUMBER ? "float" : luaL_typename(L, -2));
        }
        k->prefix = key_prefix(key_text(k), k->len);
        if (*ktab) {
            lua_pop(L, 1);
            lua_pushvalue(L, -1);
            lua_rawseti(L, *ktab, ++nk);
            k->slot = (int)nk;
        } else {
            /* key and value stay; lua_next consumes a copy of the key */
            if (have % 32 == 0 && !lua_checkstack(L, 2 * 32 + 4))
                return enc_fail(e, "cannot encode: Lua stack exhausted");
            k->slot = lua_gettop(L) - 1;
            lua_pushvalue(L, -2);
        }
        e->nkeys++;
    }
    return 0;
}

/* Writes an object with its members in key order, so equal tables give equal
 * bytes whatever their insertion history and the process's hash seed. */
static int enc_object(json_enc *e, int idx)
{
    lua_State *L = e->L;
    size_t base = e->nkeys, i, n;
    int ktab;

    if (collect_keys(e, idx, &ktab) < 0) return -1;
    n = e->nkeys - base;
    if (n > 1) sort_keys(e->keys + base, n);
    enc_addc(e, '{');
    for (i = 0; i < n; i++) {
        /* e->keys may move while a member's value is written: index, no pointer */
        const enc_key *k = &e->keys[base + i];
        if (i > 0) {
            if (key_cmp(k, k - 1) == 0)
                return enc_fail(e, "cannot encode: key \"%.*s\" is both an integer and a string",
                                (int)(k->len > 40 ? 40 : k->len), key_text(k));
            enc_addc(e, ',');
        }
        if (k->s) {
            if (enc_string(e, k->s, k->len) < 0) return -1;
        } else {
            enc_addc(e, '"');
            enc_add(e, k->num, k->len);
            enc_addc(e, '"');
        }
        enc_addc(e, ':');
        if (ktab) {
            lua_rawgeti(L, ktab, k->slot);
            lua_rawget(L, idx);
            if (enc_value(e, lua_gettop(L)) < 0) return -1;
            lua_pop(L, 1);
        } else if (enc_value(e, k->slot + 1) < 0) {
            return -1;
        }
    }
    enc_addc(e, '}');
    e->nkeys = base;
    return 0;
}

/* A record's datetime field: epoch seconds written as ISO-8601 UTC text,
 * "YYYY-MM-DDThh:mm:ssZ", with ".ffffff" when there is a fraction (kept to the
 * microsecond, as fstream.isotime reads it). Years 0001..9999 only. */
static int enc_datetime(json_enc *e, int idx)
{
    lua_State *L = e->L;
    int64_t secs, us = 0;
    if (lua_isinteger(L, idx)) {
        secs = (int64_t)lua_tointeger(L, idx);
    } else {
        double x = (double)lua_tonumber(L, idx), f = floor(x);
        if (!(f >= -62135596800.0 && f <= 253402300799.0)) goto range;
        secs = (int64_t)f;
        us = (int64_t)llround((x - f) * 1e6);
        if (us == 1000000) secs++, us = 0;
    }
    if (secs < INT64_C(-62135596800) || secs > INT64_C(253402300799)) goto range;
    /* Civil date from days since 1970-01-01 (proleptic Gregorian, in 400-year eras). */
    int64_t days = secs >= 0 ? secs / 86400 : -((-secs + 86399) / 86400), sod = secs - days * 86400;
    int64_t z = days + 719468, era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097, yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100), mp = (5 * doy + 2) / 153;
    int64_t d = doy - (153 * mp + 2) / 5 + 1, m = mp < 10 ? mp + 3 : mp - 9, y = yoe + era * 400 + (m <= 2);
    char out[40];
    int n = snprintf(out, sizeof out, "\"%04d-%02d-%02dT%02d:%02d:%02d", (int)y, (int)m, (int)d,
                     (int)(sod / 3600), (int)(sod / 60 % 60), (int)(sod % 60));
    if (us) n += snprintf(out + n, sizeof out - (size_t)n, ".%06d", (int)us);
    n += snprintf(out + n, sizeof out - (size_t)n, "Z\"");
    enc_add(e, out, (size_t)n);
    return 0;
range:
    return enc_fail(e, "cannot encode datetime %s: outside the years 0001..9999",
                    lua_tostring(L, idx) ? lua_tostring(L, idx) : "?");
}

/* A table whose metatable lists its fields (records do, in __field_order) is
 * written as those fields in that order, leaving out absent ones: no sort,
 * and the declared order is what a reader of the topic sees. Fields named in
 * the table at `dt` (the metatable's __datetime; 0: none) that hold numbers
 * are written as ISO-8601 text. */
static int enc_fields(json_enc *e, int idx, int order, int dt)
{
    lua_State *L = e->L;
    lua_Integer i, n = (lua_Integer)lua_rawlen(L, order);
    int first = 1;

    enc_addc(e, '{');
    for (i = 1; i <= n; i++) {
        size_t len;
        const char *s;
        if (lua_rawgeti(L, order, i) != LUA_TSTRING)
            return enc_fail(e, "cannot encode: __field_order holds a %s, not a field name",
                            luaL_typename(L, -1));
        lua_pushvalue(L, -1);
        if (lua_rawget(L, idx) == LUA_TNIL) {
            lua_pop(L, 2);
            continue;
        }
        if (!first) enc_addc(e, ',');
        first = 0;
        s = lua_tolstring(L, -2, &len);
        if (enc_string(e, s, len) < 0) return -1;
        enc_addc(e, ':');
        if (dt && lua_type(L, -1) == LUA_TNUMBER) {
            lua_pushvalue(L, -2);
            int is_dt = lua_rawget(L, dt) != LUA_TNIL;
            lua_pop(L, 1);
            if (is_dt) {
                if (enc_datetime(e, lua_gettop(L)) < 0) return -1;
                lua_pop(L, 2);
                continue;
            }
        }
        if (enc_value(e, lua_gettop(L)) < 0) return -1;
        lua_pop(L, 2);
    }
    enc_addc(e, '}');
    return 0;
}

static int enc_table(json_enc *e, int idx)
{
    lua_State *L = e->L;
    lua_Integer i, n = (lua_Integer)lua_rawlen(L, idx);
    int isarray = 0, order = 0, dt = 0, top = lua_gettop(L), rc;

    if (++e->depth > JSON_MAX_DEPTH)
        return enc_fail(e, "cannot encode: nesting deeper than 512 (or a cycle)");
    if (!lua_checkstack(L, 8)) return enc_fail(e, "cannot encode: Lua stack exhausted");
    if (lua_getmetatable(L, idx)) {
        if (lua_isnil(L, e->mt)) {
            /* the first metatable of this encode: fetch the array one */
            push_array_mt(L);
            lua_replace(L, e->mt);
        }
        if (lua_rawequal(L, -1, e->mt)) {
            isarray = 1;
        } else {
            lua_pushliteral(L, "__field_order");
            if (lua_rawget(L, -2) == LUA_TTABLE) {
                order = lua_gettop(L);
                lua_pushliteral(L, "__datetime");
                if (lua_rawget(L, -3) == LUA_TTABLE) dt = lua_gettop(L);
            }
        }
    }
    if (order) {
        rc = enc_fields(e, idx, order, dt);
    } else {
        if (!isarray && n > 0) isarray = is_sequence(L, idx, n);
        if (isarray) {
            enc_addc(e, '[');
            for (i = 1; i <= n; i++) {
                if (i > 1) enc_addc(e, ',');
                lua_rawgeti(L, idx, i);
                if (enc_value(e, lua_gettop(L)) < 0) return -1;
                lua_pop(L, 1);
            }
            enc_addc(e, ']');
            rc = 0;
        } else {
            rc = enc_object(e, idx);
        }
    }
    if (rc < 0) return -1;
    lua_settop(L, top);
    e->depth--;
    return 0;
}

static int enc_value(json_enc *e, int idx)
{
    lua_State *L = e->L;
    size_t len;
    const char *s;

    switch (lua_type(L, idx)) {
    case LUA_TNIL: enc_add(e, "null", 4); return 0;
    case LUA_TBOOLEAN:
        if (lua_toboolean(L, idx))
            enc_add(e, "true", 4);
        else
            enc_add(e, "false", 5);
        return 0;
    case LUA_TNUMBER:
        if (!lua_isinteger(L, idx)) return enc_float(e, (double)lua_tonumber(L, idx));
        enc_integer(e, lua_tointeger(L, idx));
        return 0;
    case LUA_TSTRING:
        s = lua_tolstring(L, idx, &len);
        return enc_string(e, s, len);
    case LUA_TTABLE: return enc_table(e, idx);
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == &json_null) {
            enc_add(e, "null", 4);
            return 0;
        }
        break;
    default: break;
    }
    return enc_fail(e, "cannot encode a %s", luaL_typename(L, idx));
}

int fs_json_encode(lua_State *L, int idx, fs_buf *b, char *err, size_t errlen)
{
    json_enc e;
    int top = lua_gettop(L), rc;
    size_t len0 = b->len;

    e.L = L;
    e.b = b;
    e.err = err;
    e.errlen = errlen;
    e.depth = 0;
    e.nomem = 0;
    e.keys = e.inline_keys;
    e.nkeys = 0;
    e.capkeys = JSON_INLINE_KEYS;
    idx = lua_absindex(L, idx);
    if (!lua_checkstack(L, 4)) return enc_fail(&e, "cannot encode: Lua stack exhausted");
    lua_pushnil(L); /* the array metatable once a table with a metatable needs it */
    e.mt = lua_gettop(L);
    lua_pushnil(L);
    e.scratch = lua_gettop(L);
    rc = enc_value(&e, idx);
    if (rc == 0 && e.nomem) rc = enc_fail(&e, "cannot encode: out of memory");
    lua_settop(L, top);
    if (rc != 0) b->len = len0;
    return rc;
}

/* ---------------------------------------------------------------- module */

static int l_json_encode(lua_State *L)
{
    fs_buf *b = (fs_buf *)lua_touserdata(L, lua_upvalueindex(1));
    char err[128];

    luaL_checkany(L, 1);
    fs_buf_reset(b);
    if (fs_json_encode(L, 1, b, err, sizeof err) != 0) return luaL_error(L, "%s", err);
    lua_pushlstring(L, b->data, b->len);
    if (b->cap > JSON_KEEP_BUFFER) fs_buf_free(b);
    return 1;
}

int fs_json_big_mode(const char *name)
{
    if (strcmp(name, "float") == 0) return FS_JSON_BIG_FLOAT;
    if (strcmp(name, "string") == 0) return FS_JSON_BIG_STRING;
    if (strcmp(name, "error") == 0) return FS_JSON_BIG_ERROR;
    return -1;
}

static int l_json_decode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    int big = FS_JSON_BIG_FLOAT;
    char err[128];

    if (!lua_isnoneornil(L, 2) && (big = fs_json_big_mode(luaL_checkstring(L, 2))) < 0)
        return luaL_argerror(L, 2, "big_integers must be \"float\", \"string\" or \"error\"");
    if (fs_json_decode_big(L, s, len, big, err, sizeof err) != 0) {
        luaL_pushfail(L);
        lua_pushstring(L, err);
        return 2;
    }
    return 1;
}

static int l_json_array(lua_State *L)
{
    if (lua_isnoneornil(L, 1)) {
        lua_settop(L, 0);
        lua_newtable(L);
    } else {
        luaL_checktype(L, 1, LUA_TTABLE);
        lua_settop(L, 1);
    }
    push_array_mt(L);
    /* silently replacing a record's metatable would break it in odd ways later */
    if (lua_getmetatable(L, 1) && !lua_rawequal(L, -1, -2))
        return luaL_argerror(L, 1, "table already has a metatable");
    lua_settop(L, 2);
    lua_setmetatable(L, 1);
    return 1;
}

static int l_json_gc(lua_State *L)
{
    fs_buf_free((fs_buf *)luaL_checkudata(L, 1, JSON_BUFFER_MT));
    return 0;
}

static const luaL_Reg json_funcs[] = {
    {"encode", l_json_encode},
    {"decode", l_json_decode},
    {"array", l_json_array},
    {"null", NULL}, /* placeholder */
    {NULL, NULL},
};

int luaopen_fstream_json(lua_State *L)
{
    fs_buf *b;

    luaL_checkversion(L);
    push_array_mt(L);
    lua_pop(L, 1);
    luaL_newlibtable(L, json_funcs);
    /* encode's reusable output buffer, freed by the GC with the module */
    b = (fs_buf *)lua_newuserdatauv(L, sizeof *b, 0);
    memset(b, 0, sizeof *b);
    if (luaL_newmetatable(L, JSON_BUFFER_MT)) {
        lua_pushcfunction(L, l_json_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    luaL_setfuncs(L, json_funcs, 1);
    lua_pushlightuserdata(L, &json_null);
    lua_setfield(L, -2, "null");
    return 1;
}
