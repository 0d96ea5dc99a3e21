/* fs_lua_table: the runtime's table methods — declaring a table, the table
 * hook (fstream.table's flush/hold/release), reading, staging and scanning
 * a partition's LMDB store; core.store_scan reads a store offline. */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "fs_call.h"
#include "fs_lua.h"
#include "fs_worker.h"
#include "fs_table.h"
#include "fs_store.h"

static fs_table *check_table(lua_State *L, fs_rt *rt, int idx)
{
    lua_Integer id = luaL_checkinteger(L, idx);
    if (id < 1 || id > rt->ntables) luaL_error(L, "unknown table id %d", (int)id);
    return rt->tables[id - 1];
}

/* rt:table(name, changelog_tid, dir, partitions, global, signature) -> id */
static int l_rt_table(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    const char *name = luaL_checkstring(L, 2);
    fs_topic *cl = fs_lua_check_topic(L, rt, 3);
    const char *dir = luaL_checkstring(L, 4);
    int parts = (int)luaL_checkinteger(L, 5);
    const char *sig = luaL_optstring(L, 7, "");
    for (int i = 0; i < rt->ntables; i++)
        if (strcmp(rt->tables[i]->name, name) == 0) {
            /* A reloaded version keeps the table (checked compatible beforehand). */
            if (!rt->rebinding || strcmp(rt->tables[i]->sig, sig) != 0)
                return luaL_error(L, "table %s is already declared differently", name);
            lua_pushinteger(L, i + 1);
            return 1;
        }
    if (rt->subscribed && !rt->rebinding)
        return luaL_error(L, "tables must be declared before the worker starts");
    if (rt->rebinding && lua_toboolean(L, 6))
        return luaL_error(L, "a global table cannot be added by a reload");
    /* realloc's result is kept at once: the old block is gone once it moved. */
    fs_table **ts = realloc(rt->tables, (size_t)(rt->ntables + 1) * sizeof *ts);
    if (!ts) return luaL_error(L, "out of memory");
    rt->tables = ts;
    fs_table *t = calloc(1, sizeof *t);
    if (!t || !(t->parts = calloc((size_t)parts, sizeof *t->parts)) || !(t->name = strdup(name)) ||
        !(t->dir = strdup(dir)) || !(t->sig = strdup(sig))) {
        if (t) free(t->parts), free(t->name), free(t->dir), free(t);
        return luaL_error(L, "out of memory");
    }
    t->rt = rt;
    t->id = rt->ntables;
    t->partitions = parts;
    t->global = lua_toboolean(L, 6);
    t->changelog = cl;
    cl->table = t;
    cl->compact = 1;
    rt->tables[rt->ntables++] = t;
    lua_pushinteger(L, t->id + 1);
    return 1;
}

/* The table layer's hook (fs_tables_set_hook): calls the Lua function
 * fn(event, partition, table_id[, keys]) registered by rt:table_hook, in the
 * runtime's main VM. */
static int table_hook(void *data, const char *event, int32_t p, int tid, const fs_store_op *keys,
                      size_t nkeys)
{
    fs_rt *rt = data;
    lua_State *L = rt->L;
    if (rt->table_hook_ref <= 0) return 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, rt->table_hook_ref);
    lua_pushstring(L, event);
    lua_pushinteger(L, p);
    lua_pushinteger(L, tid);
    if (keys) {
        lua_createtable(L, (int)nkeys, 0);
        for (size_t i = 0; i < nkeys; i++) {
            lua_pushlstring(L, keys[i].key, keys[i].klen);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
    }
    if (fs_call(L, keys ? 4 : 3, 0, FS_CALL_TRACEBACK)) {
        fs_rt_fatal(rt, "tables (%s): %s", event, lua_tostring(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    return 0;
}

/* rt:table_hook(fn): fn(event, partition, table_id[, keys]) with "flush",
 * "hold", "release", "changed". */
static int l_rt_table_hook(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    fs_unref(L, rt->table_hook_ref);
    lua_pushvalue(L, 2);
    rt->table_hook_ref = fs_ref(L);
    if (fs_tables_set_hook(rt, table_hook, rt)) return luaL_error(L, "out of memory");
    return 0;
}

/* rt:table_get(id, p, key_bytes) -> value_bytes | nil (LMDB; nothing staged) */
static int l_rt_table_get(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    fs_table *t = check_table(L, rt, 2);
    lua_Integer p = luaL_checkinteger(L, 3);
    size_t kl;
    const char *k = luaL_checklstring(L, 4, &kl);
    if (p < 0 || p >= t->partitions || !t->parts[p].store) return 0;
    char err[256];
    int found;
    if (fs_store_get(t->parts[p].store, k, kl, &rt->vbuf, &found, err, sizeof err))
        return luaL_error(L, "table %s[%d]: %s", t->name, (int)p, err);
    if (!found) return 0;
    lua_pushlstring(L, rt->vbuf.data, rt->vbuf.len);
    return 1;
}

/* rt:table_stage(id, p, key_bytes, value_bytes | nil): to the changelog now, to LMDB
 * once the checkpoint's messages are delivered. */
static int l_rt_table_stage(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    fs_table *t = check_table(L, rt, 2);
    lua_Integer p = luaL_checkinteger(L, 3);
    size_t kl, vl = 0;
    const char *k = luaL_checklstring(L, 4, &kl);
    const char *v = luaL_optlstring(L, 5, NULL, &vl);
    char err[256];
    if (fs_table_stage(rt, t, (int32_t)p, k, kl, v, vl, err, sizeof err))
        return luaL_error(L, "%s", err);
    return 0;
}

struct scan_ud {
    lua_State *L;
    lua_Integer n, limit; /* limit 0: no limit */
    const char *prefix;   /* NULL: no prefix */
    size_t plen;
};

/* 1 stops the scan (the range ended): not an error. */
static int scan_cb(void *ud, const void *k, size_t kl, const void *v, size_t vl)
{
    struct scan_ud *s = ud;
    if (s->prefix && (kl < s->plen || memcmp(k, s->prefix, s->plen) != 0)) return 1;
    if (s->limit && s->n >= s->limit) return 1;
    lua_pushlstring(s->L, k, kl);
    lua_rawseti(s->L, -3, ++s->n);
    lua_pushlstring(s->L, v, vl);
    lua_rawseti(s->L, -2, s->n);
    return 0;
}

static int push_scan(lua_State *L, fs_store *st, const char *what, const char *from, size_t flen,
                     struct scan_ud *ud)
{
    char err[256];
    lua_newtable(L);
    lua_newtable(L);
    ud->L = L;
    if (st && fs_store_scan_from(st, from, flen, scan_cb, ud, err, sizeof err) < 0)
        return luaL_error(L, "%s: %s", what, err);
    return 2;
}

/* rt:table_scan(id, p[, from[, prefix[, limit]]]) -> {key_bytes...}, {value_bytes...}
 * from LMDB, in key order: every entry, or those from the first key >= from
 * that start with prefix, at most limit of them (a bounded step of a longer walk). */
static int l_rt_table_scan(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    fs_table *t = check_table(L, rt, 2);
    lua_Integer p = luaL_checkinteger(L, 3);
    size_t flen = 0;
    const char *from = luaL_optlstring(L, 4, NULL, &flen);
    struct scan_ud ud = {NULL, 0, luaL_optinteger(L, 6, 0), NULL, 0};
    ud.prefix = luaL_optlstring(L, 5, NULL, &ud.plen);
    if (ud.limit < 0) return luaL_argerror(L, 6, "limit must be >= 0");
    if (ud.prefix) {
        /* Nothing before the prefix can match: start there at the earliest. */
        int cmp = from ? memcmp(from, ud.prefix, flen < ud.plen ? flen : ud.plen) : -1;
        if (cmp < 0 || (cmp == 0 && flen < ud.plen)) {
            from = ud.prefix;
            flen = ud.plen;
        }
    }
    fs_store *st = p >= 0 && p < t->partitions ? t->parts[p].store : NULL;
    /* from and prefix point into the arguments, which stay on the stack. */
    return push_scan(L, st, t->name, from, flen, &ud);
}

/* core.store_scan(dir) -> keys, values, meta: reads a store offline (CLI). */
static int l_store_scan(lua_State *L)
{
    const char *dir = luaL_checkstring(L, 1);
    char err[512];
    fs_store *st;
    if (fs_store_open(&st, dir, 1, err, sizeof err)) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    struct scan_ud ud = {NULL, 0, 0, NULL, 0};
    push_scan(L, st, dir, NULL, 0, &ud);
    int64_t v;
    int found;
    lua_newtable(L);
    if (fs_store_meta_get(st, "changelog", &v, &found, err, sizeof err) == 0 && found) {
        lua_pushinteger(L, v);
        lua_setfield(L, -2, "changelog");
    }
    fs_store_close(st);
    return 3;
}

const luaL_Reg fs_lua_table_methods[] = {
    {"table", l_rt_table},
    {"table_hook", l_rt_table_hook},
    {"table_get", l_rt_table_get},
    {"table_stage", l_rt_table_stage},
    {"table_scan", l_rt_table_scan},
    {NULL, NULL},
};

const luaL_Reg fs_lua_table_funcs[] = {
    {"store_scan", l_store_scan},
    {NULL, NULL},
};
