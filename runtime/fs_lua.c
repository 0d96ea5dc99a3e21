/* fs_lua: the runtime's Lua face, module "fstream.core".
 *
 * Mechanisms only: register topics and agents, spawn coroutines, take a batch
 * of events, produce, run the loop. The policy (the stream DSL, error
 * handling, sinks) lives in lua/fstream/. A stream's take crosses into C once
 * per batch and fills a Lua table in place, so the per-message cost in Lua is
 * one table read. */
#include <lauxlib.h>
#include <lualib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include "fs_json.h"
#include "fs_log.h"
#include "fs_rt.h"
#include "fs_table.h"
#include "fs_lua.h"
#include "fs_store.h"

void *fs_lua_null; /* the JSON null sentinel's light userdata */

fs_rt *fs_lua_check_rt(lua_State *L, int idx)
{
    rt_ud *u = luaL_checkudata(L, idx, RT_MT);
    if (!u->rt) luaL_error(L, "runtime is closed");
    return u->rt;
}

fs_topic *fs_lua_check_topic(lua_State *L, fs_rt *rt, int idx)
{
    lua_Integer id = luaL_checkinteger(L, idx);
    if (id < 1 || id > rt->ntopics) luaL_error(L, "unknown topic id %d", (int)id);
    return rt->topics[id - 1];
}

/* "raw", "json", or "json:<big>" with <big> a big-integer mode of fs_json. */
static int parse_codec(lua_State *L, int idx)
{
    const char *c = luaL_optstring(L, idx, "raw");
    int big;
    if (strcmp(c, "raw") == 0) return FS_CODEC_RAW;
    if (strcmp(c, "json") == 0) return FS_CODEC_JSON;
    if (strncmp(c, "json:", 5) == 0 && (big = fs_json_big_mode(c + 5)) >= 0)
        return FS_CODEC_JSON | big << 8;
    return luaL_error(L, "unknown codec '%s' (raw, json, json:string or json:error)", c);
}

/* Pushes the decoded payload; absent payloads (tombstones) become the null
 * sentinel so that `for v in stream` never ends on one. */
int fs_lua_push_payload(lua_State *L, int codec, const void *p, size_t n, char *err, size_t errlen)
{
    if (!p) {
        lua_pushlightuserdata(L, fs_lua_null);
        return 0;
    }
    if (FS_CODEC_KIND(codec) == FS_CODEC_JSON)
        return fs_json_decode_big(L, p, n, FS_CODEC_BIG(codec), err, errlen);
    lua_pushlstring(L, p, n);
    return 0;
}

/* Encodes the value at idx into b; *absent is set for nil (a null payload). */
static int encode_payload(lua_State *L, int idx, int codec, fs_buf *b, int *absent, char *err,
                          size_t errlen)
{
    fs_buf_reset(b);
    *absent = 0;
    int t = lua_type(L, idx);
    if (t == LUA_TNONE || t == LUA_TNIL ||
        (t == LUA_TLIGHTUSERDATA && lua_touserdata(L, idx) == fs_lua_null &&
         FS_CODEC_KIND(codec) == FS_CODEC_RAW)) {
        *absent = 1;
        return 0;
    }
    if (FS_CODEC_KIND(codec) == FS_CODEC_JSON) return fs_json_encode(L, idx, b, err, errlen);
    if (t == LUA_TSTRING || t == LUA_TNUMBER) {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n); /* numbers: converted copy */
        if (fs_buf_add(b, s, n)) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        return 0;
    }
    snprintf(err, errlen, "the raw serializer needs a string, got a %s", lua_typename(L, t));
    return -1;
}

static rd_kafka_headers_t *check_headers(lua_State *L, int idx)
{
    if (lua_isnoneornil(L, idx)) return NULL;
    luaL_checktype(L, idx, LUA_TTABLE);
    rd_kafka_headers_t *h = rd_kafka_headers_new(8);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) != LUA_TSTRING || !lua_isstring(L, -1)) {
            rd_kafka_headers_destroy(h);
            luaL_error(L, "headers must map strings to strings");
        }
        size_t vl;
        const char *v = lua_tolstring(L, -1, &vl);
        rd_kafka_header_add(h, lua_tostring(L, -2), -1, v, (ssize_t)vl);
        lua_pop(L, 1);
    }
    return h;
}

/* ---- runtime ---- */

/* Seconds (math.huge: never) to the count hook's milliseconds. */
static int64_t agent_timeout_ms(double s)
{
    if (!(s > 0)) return 10000;
    if (s >= 9e15) return INT64_MAX;
    return s * 1000 < 1 ? 1 : (int64_t)(s * 1000);
}

static int l_core_new(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "group");
    const char *group = luaL_checkstring(L, -1);
    lua_getfield(L, 1, "broker");
    const char *broker = luaL_optstring(L, -1, "memory://");
    lua_getfield(L, 1, "test");
    int test = lua_toboolean(L, -1);
    lua_getfield(L, 1, "commit_interval");
    double ci = luaL_optnumber(L, -1, 2.8);
    lua_getfield(L, 1, "max_queued");
    lua_Integer maxq = luaL_optinteger(L, -1, 20000);
    /* fstream.testing's fake clock: the epoch time it starts at (default now). */
    lua_getfield(L, 1, "clock");
    int has_clock = !lua_isnil(L, -1);
    double clock = luaL_optnumber(L, -1, 0);
    lua_getfield(L, 1, "agent_timeout");
    double at = luaL_optnumber(L, -1, 10.0);

    rt_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->rt = NULL;
    luaL_setmetatable(L, RT_MT);
    fs_rt *rt = calloc(1, sizeof *rt);
    if (!rt) return luaL_error(L, "out of memory");
    rt->L = L;
    rt->tables_in_lua = test, rt->handle_signals = !test;
    rt->sfd = rt->tfd = -1;
    rt->group = strdup(group);
    rt->commit_interval_ms = (int64_t)(ci * 1000);
    if (rt->commit_interval_ms < 10) rt->commit_interval_ms = 10;
    rt->max_queued = maxq;
    rt->agent_timeout_ms = agent_timeout_ms(at);
    if (fs_loop_init(&rt->loop, test)) {
        free(rt->group);
        free(rt);
        return luaL_error(L, "epoll_create failed");
    }
    u->rt = rt;
    rt->ud = u;
    if (fs_watch_start()) fs_warn("cannot start the watch thread: agent_timeout is not enforced");
    if (test) {
        struct timeval tv;
        gettimeofday(&tv, NULL);
        rt->wall_offset_ms = has_clock ? (int64_t)llround(clock * 1000.0)
                                       : (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
        if (fs_rt_open_transport(rt, NULL, NULL, 0)) return luaL_error(L, "out of memory");
        return 1;
    }
    char err[512];
    if (fs_rt_open_transport(rt, broker, err, sizeof err)) return luaL_error(L, "%s", err);
    return 1;
}

/* core.adopt(rt_pointer, {commit_interval=, max_queued=}): the runtime a
 * reloaded version takes over from the previous state (fs_reload.c). */
static int l_core_adopt(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TLIGHTUSERDATA);
    fs_rt *rt = lua_touserdata(L, 1);
    if (!rt->rebinding) return luaL_error(L, "no runtime is being handed over");
    rt_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->rt = rt;
    luaL_setmetatable(L, RT_MT);
    rt->ud = u;
    rt->L = L;
    if (lua_istable(L, 2)) {
        lua_getfield(L, 2, "commit_interval");
        if (lua_isnumber(L, -1)) {
            rt->commit_interval_ms = (int64_t)(lua_tonumber(L, -1) * 1000);
            if (rt->commit_interval_ms < 10) rt->commit_interval_ms = 10;
        }
        lua_getfield(L, 2, "max_queued");
        if (lua_isinteger(L, -1)) rt->max_queued = lua_tointeger(L, -1);
        lua_getfield(L, 2, "agent_timeout");
        if (lua_isnumber(L, -1)) rt->agent_timeout_ms = agent_timeout_ms(lua_tonumber(L, -1));
        lua_pop(L, 3);
    }
    return 1;
}

static void rt_free(fs_rt *rt)
{
    fs_reload_free(rt);
    fs_sched_kill_all(rt);
    fs_http_close(rt);
    for (int i = 0; i < rt->nagents; i++) fs_agent_close(rt, rt->agents[i]);
    fs_kafka_close(rt);
    fs_tables_close(rt);
    if (rt->table_hook_ref > 0) luaL_unref(rt->L, LUA_REGISTRYINDEX, rt->table_hook_ref);
    for (int i = 0; i < rt->ntopics; i++) {
        fs_topic *t = rt->topics[i];
        for (int j = 0; j < t->nparts; j++)
            if (t->parts[j]) free(t->parts[j]->ring), free(t->parts[j]);
        free(t->parts);
        free(t->subs);
        free(t->name);
        free(t);
    }
    /* Closed above: every event is already acknowledged. */
    for (int i = 0; i < rt->nagents; i++) fs_agent_free(rt, rt->agents[i], rt->L);
    for (int i = 0; i < rt->ncarry; i++) free(rt->carry[i].key);
    free(rt->carry);
    free(rt->topics);
    free(rt->agents);
    if (rt->sfd >= 0) close(rt->sfd);
    fs_loop_close(&rt->loop);
    fs_buf_free(&rt->kbuf);
    fs_buf_free(&rt->vbuf);
    free(rt->broker);
    free(rt->group);
    free(rt);
}

static int l_rt_close(lua_State *L)
{
    rt_ud *u = luaL_checkudata(L, 1, RT_MT);
    if (u->rt) {
        fs_rt *rt = u->rt;
        rt->L = L;
        u->rt = NULL;
        rt_free(rt);
    }
    return 0;
}

/* rt:topic(name, key_codec, value_codec, partitions [, compact [, at_run_time]]) -> id.
 * at_run_time: a topic an agent discovers while running (group_by, through
 * inside the agent); rt:resubscribe() then creates it and subscribes. */
static int l_rt_topic(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    const char *name = luaL_checkstring(L, 2);
    int kc = parse_codec(L, 3), vc = parse_codec(L, 4);
    int parts = (int)luaL_optinteger(L, 5, 8);
    int compact = lua_toboolean(L, 6); /* a changelog: created with cleanup.policy=compact */
    int at_run_time = lua_toboolean(L, 7);
    fs_topic *t = fs_topic_find(rt, name);
    if (t) {
        if (rt->rebinding) { /* a reloaded version may read it differently */
            t->key_codec = kc;
            t->value_codec = vc;
        }
        lua_pushinteger(L, t->id + 1);
        return 1;
    }
    if (rt->subscribed && !rt->rebinding && !at_run_time)
        return luaL_error(L, "topics must be declared before the worker starts");
    fs_topic **ts = realloc(rt->topics, (size_t)(rt->ntopics + 1) * sizeof *ts);
    t = calloc(1, sizeof *t);
    if (!ts || !t) return luaL_error(L, "out of memory");
    rt->topics = ts;
    t->rt = rt;
    t->id = rt->ntopics;
    t->name = strdup(name);
    t->key_codec = kc;
    t->value_codec = vc;
    t->partitions = parts > 0 ? parts : 1;
    t->compact = compact;
    rt->topics[rt->ntopics++] = t;
    lua_pushinteger(L, t->id + 1);
    return 1;
}

/* rt:resolve_topics({id...}, {count...}) -> {count...}: each topic's partition
 * count as the broker has it; a missing topic is created with the given count
 * first. Topics already resolved keep theirs and cost nothing. */
static int l_rt_resolve_topics(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    int n = (int)luaL_len(L, 2);
    fs_topic **ts = lua_newuserdatauv(L, (size_t)(n > 0 ? n : 1) * sizeof *ts, 0); /* freed by the GC */
    for (int i = 0; i < n; i++) {
        lua_geti(L, 2, i + 1);
        ts[i] = fs_lua_check_topic(L, rt, -1);
        lua_pop(L, 1);
        if (!ts[i]->resolved && lua_istable(L, 3)) {
            lua_geti(L, 3, i + 1);
            lua_Integer want = lua_tointeger(L, -1);
            if (want > 0 && want <= 1000000) ts[i]->partitions = (int)want;
            lua_pop(L, 1);
        }
    }
    char err[512];
    if (fs_kafka_resolve(rt, ts, n, err, sizeof err)) return luaL_error(L, "%s", err);
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        lua_pushinteger(L, ts[i]->partitions);
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

/* rt:table_inputs({id...} [, add]): the topics whose events write tables (add:
 * besides those already named, e.g. a repartition topic an agent learns at run
 * time; otherwise instead of them); holding
 * their partition p holds partition p of every table. */
static int l_rt_table_inputs(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    if (!lua_toboolean(L, 3))
        for (int i = 0; i < rt->ntopics; i++) rt->topics[i]->table_input = 0;
    lua_Integer n = luaL_len(L, 2);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_geti(L, 2, i);
        fs_lua_check_topic(L, rt, -1)->table_input = 1;
        lua_pop(L, 1);
    }
    return 0;
}

static int l_rt_agent(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    const char *name = luaL_checkstring(L, 2);
    luaL_checktype(L, 3, LUA_TTABLE);
    fs_agent **as = realloc(rt->agents, (size_t)(rt->nagents + 1) * sizeof *as);
    fs_agent *a = calloc(1, sizeof *a);
    if (!as || !a) return luaL_error(L, "out of memory");
    rt->agents = as;
    a->rt = rt;
    a->id = rt->nagents;
    a->name = strdup(name);
    rt->agents[rt->nagents++] = a;
    lua_Integer n = luaL_len(L, 3);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_geti(L, 3, i);
        fs_topic *t = fs_lua_check_topic(L, rt, -1);
        lua_pop(L, 1);
        fs_agent **subs = realloc(t->subs, (size_t)(t->nsubs + 1) * sizeof *subs);
        if (!subs) return luaL_error(L, "out of memory");
        t->subs = subs;
        t->subs[t->nsubs++] = a;
    }
    lua_pushinteger(L, a->id + 1);
    return 1;
}

static fs_agent *check_agent(lua_State *L, fs_rt *rt, int idx)
{
    lua_Integer id = luaL_checkinteger(L, idx);
    if (id < 1 || id > rt->nagents) luaL_error(L, "unknown agent id %d", (int)id);
    return rt->agents[id - 1];
}

static int l_rt_stream(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    fs_agent *a = check_agent(L, rt, 2);
    fs_stream **ss = realloc(a->streams, (size_t)(a->nstreams + 1) * sizeof *ss);
    fs_stream *s = calloc(1, sizeof *s);
    if (!ss || !s) return luaL_error(L, "out of memory");
    a->streams = ss;
    s->agent = a;
    a->streams[a->nstreams++] = s;
    stream_ud *u = lua_newuserdatauv(L, sizeof *u, 1);
    u->s = s;
    u->rt = rt;
    luaL_setmetatable(L, STREAM_MT);
    lua_pushvalue(L, 1); /* the stream keeps its runtime alive */
    lua_setiuservalue(L, -2, 1);
    return 1;
}

/* rt:resubscribe(): after an agent added a topic and an agent at run time —
 * creates the topics that do not exist yet, opens their producer handles and
 * subscribes to what the agents now read. The group rebalances as for any
 * subscription change; events already taken stay with their agents until the
 * revocation lets them finish. Before the first subscription, or while a
 * reload hands the runtime over, the subscription that follows includes the
 * topics: they are only created here. Returns whether it subscribed. */
static int l_rt_resubscribe(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    char err[512];
    int rc = rt->prestart || rt->rebinding ? fs_kafka_open_topics(rt, err, sizeof err)
                                           : fs_kafka_rebind(rt, err, sizeof err);
    if (rc < 0) return luaL_error(L, "%s", err);
    lua_pushboolean(L, rc > 0);
    return 1;
}

static int l_rt_close_agent(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    fs_agent_close(rt, check_agent(L, rt, 2));
    return 0;
}

static int l_rt_spawn(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    const char *kind = luaL_optstring(L, 4, "task");
    lua_pushinteger(L, fs_sched_spawn(rt, L, 2, 3, strcmp(kind, "agent") == 0 ? FS_KIND_AGENT : FS_KIND_TASK));
    return 1;
}

static int l_rt_start(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    rt->L = L;
    char err[512];
    if (fs_worker_start(rt, err, sizeof err)) return luaL_error(L, "%s", err);
    return 0;
}

static int l_rt_run(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    if (rt->loop.fake_clock) return luaL_error(L, "use run_until_idle with the in-memory transport");
    rt->L = L;
    lua_pushinteger(L, fs_rt_run(rt));
    return 1;
}

static int l_rt_run_until_idle(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    rt->L = L;
    int rc = fs_rt_run_until_idle(rt, luaL_optinteger(L, 2, 1000000));
    if (rt->fatal) return luaL_error(L, "%s", rt->fatal_msg);
    if (rc > 0) return luaL_error(L, "the app did not become idle (an agent keeps sending to itself?)");
    return 0;
}

static int l_rt_advance(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    double secs = luaL_checknumber(L, 2);
    if (!rt->loop.fake_clock) return luaL_error(L, "advance needs the in-memory transport");
    rt->L = L;
    int64_t target = fs_loop_now(&rt->loop) + (int64_t)llround(secs * 1000);
    /* Step from timer to timer so work triggered by one timer sees the time it fired at. */
    for (;;) {
        if (fs_rt_run_until_idle(rt, 1000000)) break;
        int64_t next = fs_loop_next_when(&rt->loop);
        if (next > target) break;
        fs_loop_set_fake_now(&rt->loop, next);
    }
    fs_loop_set_fake_now(&rt->loop, target);
    fs_rt_run_until_idle(rt, 1000000);
    if (rt->fatal) return luaL_error(L, "%s", rt->fatal_msg);
    return 0;
}

static int l_rt_stop(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    fs_rt_request_stop(rt, luaL_optstring(L, 2, "requested"));
    return 0;
}

static int l_rt_stopping(lua_State *L)
{
    lua_pushboolean(L, fs_lua_check_rt(L, 1)->stopping);
    return 1;
}

static int l_rt_fatal(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    fs_rt_fatal(rt, "%s", luaL_checkstring(L, 2));
    return 0;
}

/* Encodes and sends args (tid, key, value, partition, headers, raw, timestamp) at 2..8. Raises on
 * bad arguments before anything is allocated; with wp, allocates the delivery
 * waiter only once nothing can raise any more. */
static void produce(lua_State *L, fs_rt *rt, fs_waiter **wp, int external, int32_t *p_out,
                    int64_t *o_out)
{
    fs_topic *t = fs_lua_check_topic(L, rt, 2);
    int32_t partition = (int32_t)luaL_optinteger(L, 5, -1);
    /* raw=true bypasses the codecs: dead-letter and retry copies keep the original
     * bytes, and a test can send malformed bytes. */
    int raw = lua_toboolean(L, 7);
    char err[256];
    int kabs, vabs;
    if (encode_payload(L, 3, raw ? FS_CODEC_RAW : t->key_codec, &rt->kbuf, &kabs, err, sizeof err))
        luaL_error(L, "cannot encode key for %s: %s", t->name, err);
    if (encode_payload(L, 4, raw ? FS_CODEC_RAW : t->value_codec, &rt->vbuf, &vabs, err, sizeof err))
        luaL_error(L, "cannot encode value for %s: %s", t->name, err);
    if (!lua_isnoneornil(L, 6)) luaL_checktype(L, 6, LUA_TTABLE);
    const void *k = kabs ? NULL : (rt->kbuf.data ? rt->kbuf.data : "");
    const void *v = vabs ? NULL : (rt->vbuf.data ? rt->vbuf.data : "");
    size_t kl = kabs ? 0 : rt->kbuf.len, vl = vabs ? 0 : rt->vbuf.len;
    int64_t ts_ms = lua_isnoneornil(L, 8) ? 0 : (int64_t)llround(luaL_checknumber(L, 8) * 1000.0);
    rd_kafka_headers_t *h = check_headers(L, 6);
    if (external) {
        int rc = fs_memlog_append(rt, t, partition, k, kl, v, vl, h, ts_ms, 1, p_out, o_out);
        if (h) rd_kafka_headers_destroy(h);
        if (rc) luaL_error(L, "partition %d of %s does not exist", (int)partition, t->name);
        return;
    }
    fs_waiter *w = NULL;
    if (wp) {
        w = *wp = calloc(1, sizeof *w);
        if (!w) {
            if (h) rd_kafka_headers_destroy(h);
            luaL_error(L, "out of memory");
        }
        w->partition = -1;
        w->offset = -1;
    }
    if (fs_produce(rt, t, partition, k, kl, v, vl, h, ts_ms, w, err, sizeof err)) {
        free(w);
        luaL_error(L, "%s", err);
    }
}

/* rt:produce(tid, key, value, partition, headers, raw, timestamp, best_effort) */
static int l_rt_produce(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    rt->best_effort = lua_toboolean(L, 9);
    produce(L, rt, NULL, 0, NULL, NULL);
    rt->best_effort = 0;
    return 0;
}

static int push_delivery(lua_State *L, fs_waiter *w)
{
    if (w->err) {
        lua_pushnil(L);
        lua_pushstring(L, rd_kafka_err2str(w->err));
        free(w);
        return 2;
    }
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, w->partition);
    lua_setfield(L, -2, "partition");
    lua_pushinteger(L, w->offset);
    lua_setfield(L, -2, "offset");
    free(w);
    return 1;
}

static int produce_wait_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    fs_waiter *w = (fs_waiter *)ctx;
    fs_co *co = fs_co_current(L);
    if (co) co->waiter = NULL;
    return push_delivery(L, w);
}

/* produce_wait(...) -> {partition=, offset=} | nil, err — yields until delivered. */
static int l_rt_produce_wait(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    fs_co *co = fs_co_current(L);
    if (!co) return luaL_error(L, "send_and_wait must be called from an agent, task or timer");
    fs_waiter *w = NULL;
    produce(L, rt, &w, 0, NULL, NULL);
    if (w->done) return push_delivery(L, w);
    w->co = co;
    co->waiter = w;
    co->state = FS_CO_WAITING;
    co->wait = FS_WAIT_DELIVERY;
    return lua_yieldk(L, 0, (lua_KContext)w, produce_wait_k);
}

static int l_rt_test_send(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    if (!fs_memlog_of(rt->tp)) return luaL_error(L, "test_send needs the in-memory transport");
    int32_t p;
    int64_t o;
    produce(L, rt, NULL, 1, &p, &o);
    lua_pushinteger(L, p);
    lua_pushinteger(L, o);
    return 2;
}

/* One message the app sent, as a table appended to the one on top of L. */
static int push_output(void *data, const fs_memout *m)
{
    lua_State *L = data;
    lua_createtable(L, 0, 6);
    if (m->key) lua_pushlstring(L, m->key, m->klen), lua_setfield(L, -2, "key_bytes");
    if (m->value) lua_pushlstring(L, m->value, m->vlen), lua_setfield(L, -2, "value_bytes");
    lua_pushinteger(L, m->partition);
    lua_setfield(L, -2, "partition");
    lua_pushinteger(L, (lua_Integer)m->offset);
    lua_setfield(L, -2, "offset");
    if (m->nheaders) {
        lua_newtable(L);
        for (int h = 0; h < m->nheaders; h++) {
            lua_pushlstring(L, m->headers[h].value ? m->headers[h].value : "", m->headers[h].len);
            lua_setfield(L, -2, m->headers[h].name);
        }
        lua_setfield(L, -2, "headers");
    }
    lua_rawseti(L, -2, (lua_Integer)luaL_len(L, -2) + 1);
    return 0;
}

static int l_rt_outputs(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    fs_topic *t = fs_lua_check_topic(L, rt, 2);
    struct fs_memlog *ml = fs_memlog_of(rt->tp);
    lua_newtable(L);
    if (ml) fs_memlog_each_output(ml, t, push_output, L);
    return 1;
}

/* rt:assigned(tid, p): whether this worker holds partition p of the topic (always
 * true on the in-memory transport, where one worker holds everything). */
static int l_rt_assigned(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    fs_topic *t = fs_lua_check_topic(L, rt, 2);
    lua_Integer p = luaL_checkinteger(L, 3);
    int yes = (rt->tp && rt->tp->holds_all) || (p >= 0 && p < t->nparts && t->parts[p] && t->parts[p]->assigned &&
                           !t->parts[p]->revoking);
    lua_pushboolean(L, yes);
    return 1;
}

static int l_rt_broker(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    lua_pushstring(L, rt->broker ? rt->broker : "");
    lua_pushboolean(L, rt->embedded);
    return 2;
}

static int l_rt_now(lua_State *L)
{
    lua_pushnumber(L, (lua_Number)fs_rt_wall_ms(fs_lua_check_rt(L, 1)) / 1000.0);
    return 1;
}

/* stats.recovering[i] = {table=, partition=, done=, total=}: replays queued or
 * running (total is absent until the changelog's end is known). */
static void push_recovering(void *ud, const fs_table *t, int32_t p, int64_t done, int64_t total)
{
    lua_State *L = ud;
    lua_createtable(L, 0, 4);
    lua_pushstring(L, t->name);
    lua_setfield(L, -2, "table");
    lua_pushinteger(L, p);
    lua_setfield(L, -2, "partition");
    lua_pushinteger(L, done);
    lua_setfield(L, -2, "done");
    if (total >= 0) {
        lua_pushinteger(L, total);
        lua_setfield(L, -2, "total");
    }
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
}

static int l_rt_stats(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    rt->L = L;
    fs_sync_acks(rt);
    lua_newtable(L);
#define STAT(name, v) (lua_pushinteger(L, (lua_Integer)(v)), lua_setfield(L, -2, name))
    STAT("events_in", rt->events_in);
    STAT("events_acked", rt->events_acked);
    STAT("queued", rt->queued);
    STAT("commits", rt->commits);
    STAT("decode_errors", rt->decode_errors);
    STAT("delivery_errors", rt->delivery_errors);
    STAT("coroutines", rt->nlive);
    STAT("inflight", rt->inflight[0] + rt->inflight[1]);
    STAT("changelog_records", rt->changelog_records);
    STAT("lmdb_writes", rt->lmdb_writes);
    STAT("recovered_records", rt->recovered_records);
#undef STAT
    lua_newtable(L);
    for (int i = 0; i < rt->ntopics; i++) {
        fs_topic *t = rt->topics[i];
        lua_createtable(L, 0, 3);
        lua_pushinteger(L, t->produced);
        lua_setfield(L, -2, "produced");
        lua_pushinteger(L, t->consumed);
        lua_setfield(L, -2, "consumed");
        lua_newtable(L);
        for (int j = 0; j < t->nparts; j++) {
            fs_part *p = t->parts[j];
            if (!p || !p->assigned) continue;
            lua_createtable(L, 0, 2);
            lua_pushinteger(L, fs_part_committable(p));
            lua_setfield(L, -2, "committable");
            lua_pushinteger(L, p->committed);
            lua_setfield(L, -2, "committed");
            lua_rawseti(L, -2, j);
        }
        lua_setfield(L, -2, "partitions");
        lua_setfield(L, -2, t->name);
    }
    lua_setfield(L, -2, "topics");
    lua_newtable(L);
    fs_tables_recovering(rt, push_recovering, L);
    lua_setfield(L, -2, "recovering");
    return 1;
}

/* ---- tables ---- */

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
    fs_table **ts = realloc(rt->tables, (size_t)(rt->ntables + 1) * sizeof *ts);
    fs_table *t = calloc(1, sizeof *t);
    if (!ts || !t) return luaL_error(L, "out of memory");
    rt->tables = ts;
    t->parts = calloc((size_t)parts, sizeof *t->parts);
    if (!t->parts) return luaL_error(L, "out of memory");
    t->rt = rt;
    t->id = rt->ntables;
    t->name = strdup(name);
    t->dir = strdup(dir);
    t->partitions = parts;
    t->global = lua_toboolean(L, 6);
    t->changelog = cl;
    t->sig = strdup(sig);
    cl->table = t;
    cl->compact = 1;
    rt->tables[rt->ntables++] = t;
    lua_pushinteger(L, t->id + 1);
    return 1;
}

/* The table layer's hook (fs_tables_set_hook): calls the Lua function
 * fn(event, partition, table_id[, keys]) registered by rt:table_hook. */
static int table_hook(void *data, const char *event, int32_t p, int tid, const fs_store_op *keys,
                      size_t nkeys)
{
    fs_rt *rt = data;
    lua_State *L = rt->L;
    if (rt->table_hook_ref <= 0) return 0;
    lua_pushcfunction(L, fs_sched_traceback);
    int base = lua_gettop(L);
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
    if (lua_pcall(L, keys ? 4 : 3, 0, base)) {
        fs_rt_fatal(rt, "tables (%s): %s", event, lua_tostring(L, -1));
        lua_pop(L, 2);
        return -1;
    }
    lua_pop(L, 1);
    return 0;
}

/* rt:table_hook(fn): fn(event, partition, table_id[, keys]) with "flush",
 * "hold", "release", "changed". */
static int l_rt_table_hook(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    if (rt->table_hook_ref > 0) luaL_unref(L, LUA_REGISTRYINDEX, rt->table_hook_ref);
    lua_pushvalue(L, 2);
    rt->table_hook_ref = luaL_ref(L, LUA_REGISTRYINDEX);
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
    lua_Integer n;
};

static int scan_cb(void *ud, const void *k, size_t kl, const void *v, size_t vl)
{
    struct scan_ud *s = ud;
    lua_pushlstring(s->L, k, kl);
    lua_rawseti(s->L, -3, ++s->n);
    lua_pushlstring(s->L, v, vl);
    lua_rawseti(s->L, -2, s->n);
    return 0;
}

static int push_scan(lua_State *L, fs_store *st, const char *what)
{
    char err[256];
    lua_newtable(L);
    lua_newtable(L);
    struct scan_ud ud = {L, 0};
    if (st && fs_store_scan(st, scan_cb, &ud, err, sizeof err))
        return luaL_error(L, "%s: %s", what, err);
    return 2;
}

/* rt:table_scan(id, p) -> {key_bytes...}, {value_bytes...} from LMDB */
static int l_rt_table_scan(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    fs_table *t = check_table(L, rt, 2);
    lua_Integer p = luaL_checkinteger(L, 3);
    fs_store *st = p >= 0 && p < t->partitions ? t->parts[p].store : NULL;
    return push_scan(L, st, t->name);
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
    push_scan(L, st, dir);
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

/* ---- module functions ---- */

static int l_sleep(lua_State *L)
{
    double secs = luaL_checknumber(L, 1);
    fs_co *co = fs_co_current(L);
    if (!co) return luaL_error(L, "fstream.sleep must be called from an agent, task or timer");
    return fs_sched_sleep(L, co, (int64_t)llround(secs * 1000));
}

static int l_current(lua_State *L)
{
    fs_co *co = fs_co_current(L);
    if (!co) return 0;
    lua_pushinteger(L, co->id);
    return 1;
}

/* core.ended(thread): true for a coroutine of the scheduler that has ended
 * (died of an error, returned, or was killed) — Lua state it left behind is stale. */
static int l_ended(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTHREAD);
    lua_pushboolean(L, fs_co_ended(lua_tothread(L, 1)));
    return 1;
}

/* core.redirect_stderr(path | nil): points fd 2 at a file, or back. For specs
 * that check what the worker logs. */
static int l_redirect_stderr(lua_State *L)
{
    static int saved = -1;
    fflush(stderr);
    if (lua_isnoneornil(L, 1)) {
        if (saved >= 0) dup2(saved, 2), close(saved), saved = -1;
        return 0;
    }
    int fd = open(luaL_checkstring(L, 1), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return luaL_error(L, "cannot open %s", lua_tostring(L, 1));
    if (saved < 0) saved = dup(2);
    dup2(fd, 2);
    close(fd);
    return 0;
}

/* core.partition_for(key, n): where Kafka's default partitioner puts key. */
static int l_partition_for(lua_State *L)
{
    size_t len;
    const char *k = luaL_checklstring(L, 1, &len);
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_argcheck(L, n > 0 && n <= INT32_MAX, 2, "partition count out of range");
    lua_pushinteger(L, fs_murmur2_partition(k, len, (int32_t)n));
    return 1;
}

/* core.broker_check(url): true, or nil and what is wrong with it (the CLI asks
 * before starting anything, so a typo is one clear line). */
static int l_broker_check(lua_State *L)
{
    const char *bootstrap;
    char err[512];
    if (fs_broker_url_check(luaL_checkstring(L, 1), &bootstrap, err, sizeof err) == 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
}

/* core.log_hold(on): see fs_log_hold. */
static int l_log_hold(lua_State *L)
{
    fs_log_hold(lua_toboolean(L, 1));
    return 0;
}

/* core.index_op(): the opcode of the instruction that the Lua function two
 * levels up is running (nil when that function is not Lua). A table's __index
 * (level 1) asks it to tell `t:update(k, fn)` from `t["update"]`: both index t
 * with "update", but Lua compiles a method call to an instruction of its own
 * (SELF), and the public debug API names neither the instruction nor the
 * program counter. So this reads the saved pc from the frame record that
 * lua_getstack hands out: in every Lua 5.4 release a frame record starts with
 * four pointer-sized fields (function, top, previous, next) followed, for a
 * Lua function, by its saved pc, which points just past the instruction being
 * run. fstream.table asks once at load which opcodes a method call and the
 * three kinds of read give, and refuses to load if they are not told apart. */
#if LUA_VERSION_NUM != 504
#error "core.index_op reads a Lua 5.4 frame record"
#endif
struct lua54_frame {
    void *func, *top, *previous, *next;
    const uint32_t *savedpc;
};

static int l_index_op(lua_State *L)
{
    lua_Debug ar;
    if (!lua_getstack(L, 2, &ar) || !lua_getinfo(L, "S", &ar) || ar.what[0] == 'C') return 0;
    const struct lua54_frame *f = (const struct lua54_frame *)(const void *)ar.i_ci;
    lua_pushinteger(L, (lua_Integer)(f->savedpc[-1] & 0x7F)); /* the opcode: the low 7 bits */
    return 1;
}

static int l_set_log_level(lua_State *L)
{
    int lv = fs_log_parse_level(luaL_checkstring(L, 1));
    if (lv < 0) return luaL_error(L, "unknown log level '%s'", lua_tostring(L, 1));
    fs_log_level = lv;
    return 0;
}

static int l_log(lua_State *L)
{
    int lv = fs_log_parse_level(luaL_checkstring(L, 1));
    if (lv < 0) lv = FS_LOG_INFO;
    if (lv >= fs_log_level) fs_log(lv, "%s", luaL_checkstring(L, 2));
    return 0;
}

static int l_log_enabled(lua_State *L)
{
    int lv = fs_log_parse_level(luaL_checkstring(L, 1));
    lua_pushboolean(L, lv >= fs_log_level);
    return 1;
}

int fs_broker_run(lua_State *L); /* fs_broker.c */

/* rt:carry(key [, value]): a number that outlives a reload (timers keep their
 * rhythm); returns the stored value or nil. */
static int l_rt_carry(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    const char *key = luaL_checkstring(L, 2);
    int set = !lua_isnoneornil(L, 3);
    double *v = fs_carry(rt, key, set);
    if (set) {
        if (!v) return luaL_error(L, "out of memory");
        *v = luaL_checknumber(L, 3);
        return 0;
    }
    if (v) lua_pushnumber(L, *v);
    else lua_pushnil(L);
    return 1;
}

/* rt:reload_setup(path, --broker, --store, watch, broker_url, data_dir): a worker whose loop main.c
 * drives can reload (SIGHUP; with watch, when its files change). */
static int l_rt_reload_setup(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    char err[512];
    if (fs_reload_setup(rt, luaL_checkstring(L, 2), luaL_checkstring(L, 3), luaL_checkstring(L, 4),
                        lua_toboolean(L, 5), luaL_checkstring(L, 6), luaL_checkstring(L, 7), err,
                        sizeof err))
        return luaL_error(L, "%s", err);
    return 0;
}

static int l_rt_reload_watching(lua_State *L)
{
    lua_pushboolean(L, fs_reload_watching(fs_lua_check_rt(L, 1)));
    return 1;
}

/* rt:watch({path, ...}): the files whose change reloads the app (--reload). */
static int l_rt_watch(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    int n = (int)luaL_len(L, 2);
    const char **files = calloc((size_t)n + 1, sizeof *files);
    if (!files) return luaL_error(L, "out of memory");
    for (int i = 0; i < n; i++) {
        lua_geti(L, 2, i + 1);
        files[i] = lua_tostring(L, -1); /* kept alive by the table */
        lua_pop(L, 1);
        if (!files[i]) n = i;
    }
    int rc = fs_reload_watch(rt, files, n);
    free(files);
    if (rc) return luaL_error(L, "cannot watch the app's files: %s", strerror(-rc));
    return 0;
}

/* rt:rebound(): the reloaded version declared everything; fetching restarts. */
static int l_rt_rebound(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    char err[512];
    if (fs_reload_rebound(rt, err, sizeof err)) return luaL_error(L, "%s", err);
    return 0;
}

static const luaL_Reg rt_methods[] = {
    {"carry", l_rt_carry},
    {"reload_setup", l_rt_reload_setup},
    {"reload_watching", l_rt_reload_watching},
    {"watch", l_rt_watch},
    {"rebound", l_rt_rebound},
    {"topic", l_rt_topic},
    {"resolve_topics", l_rt_resolve_topics},
    {"table_inputs", l_rt_table_inputs},
    {"agent", l_rt_agent},
    {"stream", l_rt_stream},
    {"resubscribe", l_rt_resubscribe},
    {"close_agent", l_rt_close_agent},
    {"spawn", l_rt_spawn},
    {"start", l_rt_start},
    {"run", l_rt_run},
    {"run_until_idle", l_rt_run_until_idle},
    {"advance", l_rt_advance},
    {"stop", l_rt_stop},
    {"stopping", l_rt_stopping},
    {"fatal", l_rt_fatal},
    {"produce", l_rt_produce},
    {"produce_wait", l_rt_produce_wait},
    {"test_send", l_rt_test_send},
    {"outputs", l_rt_outputs},
    {"broker", l_rt_broker},
    {"assigned", l_rt_assigned},
    {"now", l_rt_now},
    {"stats", l_rt_stats},
    {"table", l_rt_table},
    {"table_hook", l_rt_table_hook},
    {"table_get", l_rt_table_get},
    {"table_stage", l_rt_table_stage},
    {"table_scan", l_rt_table_scan},
    {"close", l_rt_close},
    {NULL, NULL},
};


static const luaL_Reg core_funcs[] = {
    {"new", l_core_new},
    {"adopt", l_core_adopt},
    {"sleep", l_sleep},
    {"current", l_current},
    {"ended", l_ended},
    {"partition_for", l_partition_for},
    {"index_op", l_index_op},
    {"redirect_stderr", l_redirect_stderr},
    {"set_log_level", l_set_log_level},
    {"log", l_log},
    {"log_hold", l_log_hold},
    {"log_enabled", l_log_enabled},
    {"run_broker", fs_broker_run},
    {"broker_check", l_broker_check},
    {"store_scan", l_store_scan},
    {"http_request", fs_http_request},
    {NULL, NULL},
};

int luaopen_fstream_core(lua_State *L)
{
    /* User coroutines copy the main thread's extra space: make it "no scheduler
     * coroutine" so host functions can tell them apart from ours. */
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    memset(lua_getextraspace(lua_tothread(L, -1)), 0, LUA_EXTRASPACE);
    lua_pop(L, 1);
    fs_sched_track_coroutines(L);

    luaL_newmetatable(L, RT_MT);
    luaL_newlib(L, rt_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_rt_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_rt_close);
    lua_setfield(L, -2, "__close");
    lua_pop(L, 1);
    fs_lua_open_stream(L);

    luaL_newlib(L, core_funcs);
    fs_lua_open_windows(L); /* core.windows: fs_lua_windows.c */
    luaopen_fstream_json(L);
    lua_getfield(L, -1, "null");
    fs_lua_null = lua_touserdata(L, -1);
    lua_setfield(L, -3, "null");
    lua_setfield(L, -2, "json");
    lua_pushinteger(L, (lua_Integer)getpid());
    lua_setfield(L, -2, "pid");
    lua_pushstring(L, rd_kafka_version_str());
    lua_setfield(L, -2, "librdkafka_version");
    return 1;
}
