/* fs_lua_topic: the runtime's topic methods — declaring and resolving
 * topics, produce (fire and forget, raw copies, dead letters), send_and_wait's
 * produce_wait, and the in-memory transport's test_send/outputs (on the test
 * runtime only). */
#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fs_lua.h"
#include "fs_trace.h"
#include "fs_worker.h"

/* rt:topic(name, key_codec, value_codec, partitions [, compact [, at_run_time]]) -> id.
 * at_run_time: a topic an agent discovers while running (group_by, through
 * inside the agent); rt:resubscribe() then creates it and subscribes. */
static int l_rt_topic(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    const char *name = luaL_checkstring(L, 2);
    int kc = fs_lua_parse_codec(L, 3), vc = fs_lua_parse_codec(L, 4);
    int parts = (int)luaL_optinteger(L, 5, 8);
    int compact = lua_toboolean(L, 6); /* a changelog: created with cleanup.policy=compact */
    int at_run_time = lua_toboolean(L, 7);
    lua_Number retention = luaL_optnumber(L, 8, 0); /* seconds; created with retention.ms */
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
    /* realloc's result is kept at once: the old block is gone once it moved. */
    fs_topic **ts = realloc(rt->topics, (size_t)(rt->ntopics + 1) * sizeof *ts);
    if (!ts) return luaL_error(L, "out of memory");
    rt->topics = ts;
    t = calloc(1, sizeof *t);
    if (!t || !(t->name = strdup(name))) {
        free(t);
        return luaL_error(L, "out of memory");
    }
    t->rt = rt;
    t->id = rt->ntopics;
    t->key_codec = kc;
    t->value_codec = vc;
    t->partitions = parts > 0 ? parts : 1;
    t->compact = compact;
    t->retention_ms = retention > 0 && retention < 9e15 ? (long long)(retention * 1000) : 0;
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
    if (fs_worker_resolve(rt, ts, n, err, sizeof err)) return luaL_error(L, "%s", err);
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

/* rt:broker_topics([wait_s]) -> {name = partitions}, number | nil, error:
 * the broker's topics as the transport last listed them (pattern topics),
 * and a request for the next listing; `number` grows with each new listing
 * (0: none came yet). wait_s: how long to wait for a first listing (start-up
 * only). A transport without a broker (the in-memory log) lists the topics
 * the runtime knows. */
static void add_listed(void *data, const char *name, int partitions)
{
    lua_State *L = data;
    lua_pushinteger(L, partitions);
    lua_setfield(L, -2, name);
}

static int l_rt_broker_topics(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    int wait_ms = (int)(luaL_optnumber(L, 2, 0) * 1000);
    lua_newtable(L);
    if (!rt->tp || !rt->tp->ops->list_topics) {
        for (int i = 0; i < rt->ntopics; i++) add_listed(L, rt->topics[i]->name, rt->topics[i]->partitions);
        lua_pushinteger(L, 1);
        return 2;
    }
    char err[512];
    long n = rt->tp->ops->list_topics(rt->tp, wait_ms, add_listed, L, err, sizeof err);
    if (n < 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushinteger(L, n);
    return 2;
}

/* One message to send, as read from a produce call's arguments. Its fields
 * are the transport's fs_msg's: key and value point into rt->kbuf/vbuf (valid
 * until the next produce), the headers are owned here until sent. */
typedef struct {
    fs_topic *topic;
    int32_t partition; /* -1: the partitioner chooses */
    const void *key;   /* NULL: no key */
    size_t klen;
    const void *value; /* NULL: a tombstone */
    size_t vlen;
    rd_kafka_headers_t *hdrs;
    int64_t timestamp; /* ms since the epoch; 0: now */
} out_msg;

/* Reads (tid, key, value, partition, headers, timestamp) at 2..7 into m. raw:
 * key and value are bytes already (dead-letter and retry copies keep the
 * original bytes; a test sends malformed ones), else the topic's codecs
 * encode them. Raises on bad arguments before anything is allocated. */
static void read_msg(lua_State *L, fs_rt *rt, int raw, out_msg *m)
{
    fs_topic *t = fs_lua_check_topic(L, rt, 2);
    char err[256];
    int kabs, vabs;
    if (fs_lua_encode_payload(L, 3, raw ? FS_CODEC_RAW : t->key_codec, &rt->kbuf, &kabs, err, sizeof err))
        luaL_error(L, "cannot encode key for %s: %s", t->name, err);
    if (fs_lua_encode_payload(L, 4, raw ? FS_CODEC_RAW : t->value_codec, &rt->vbuf, &vabs, err,
                              sizeof err))
        luaL_error(L, "cannot encode value for %s: %s", t->name, err);
    m->topic = t;
    m->partition = (int32_t)luaL_optinteger(L, 5, -1);
    if (!lua_isnoneornil(L, 6)) luaL_checktype(L, 6, LUA_TTABLE);
    m->key = kabs ? NULL : (rt->kbuf.data ? rt->kbuf.data : "");
    m->value = vabs ? NULL : (rt->vbuf.data ? rt->vbuf.data : "");
    m->klen = kabs ? 0 : rt->kbuf.len;
    m->vlen = vabs ? 0 : rt->vbuf.len;
    m->timestamp = lua_isnoneornil(L, 7) ? 0 : (int64_t)llround(luaL_checknumber(L, 7) * 1000.0);
    m->hdrs = fs_lua_check_headers(L, 6); /* last: nothing raises after it */
}

/* Tracing: what an agent sends for an event with a valid W3C traceparent
 * carries a child of it (same trace id and flags, a new span id) and the
 * event's tracestate. A traceparent the message copied from the event (a
 * forwarder sends the event's headers on) is replaced, or dropped when it is
 * malformed; one the app set itself is left alone. Costs a header lookup per
 * send when the event has headers, nothing per event received. Returns the
 * headers to send (hdrs, or new ones), NULL when there are none. */
static rd_kafka_headers_t *trace(lua_State *L, rd_kafka_headers_t *hdrs)
{
    fs_event *e = fs_lua_event_in_hand(L);
    rd_kafka_headers_t *in = e ? fs_lua_event_headers(e) : NULL;
    const void *tp, *otp, *ts;
    size_t tplen, otplen, tslen;
    if (!in || rd_kafka_header_get_last(in, "traceparent", &tp, &tplen)) return hdrs;
    if (hdrs && !rd_kafka_header_get_last(hdrs, "traceparent", &otp, &otplen)) {
        if (otplen != tplen || (tplen && memcmp(otp, tp, tplen))) return hdrs; /* the app's own */
        rd_kafka_header_remove(hdrs, "traceparent");
        rd_kafka_header_remove(hdrs, "tracestate");
    }
    if (!fs_trace_valid(tp, tplen)) return hdrs;
    if (!hdrs && !(hdrs = rd_kafka_headers_new(2))) return NULL;
    char child[FS_TRACEPARENT_LEN];
    fs_trace_child(tp, child);
    rd_kafka_header_add(hdrs, "traceparent", -1, child, sizeof child);
    if (!rd_kafka_header_get_last(in, "tracestate", &ts, &tslen)) {
        rd_kafka_header_remove(hdrs, "tracestate");
        rd_kafka_header_add(hdrs, "tracestate", -1, ts, (ssize_t)tslen);
    }
    return hdrs;
}

/* The one place the bindings hand a message to the transport (it takes the
 * headers). best_effort: a dead letter, whose failed delivery is logged, not
 * fatal; w: send_and_wait's waiter, or NULL. The flag travels in
 * rt->best_effort only for the length of this call, until the transport takes
 * a send context with the message. */
static int send_msg(fs_rt *rt, out_msg *m, int best_effort, fs_waiter *w, char *err, size_t errlen)
{
    rt->best_effort = best_effort;
    int rc = fs_produce(rt, m->topic, m->partition, m->key, m->klen, m->value, m->vlen, m->hdrs,
                        m->timestamp, w, err, errlen);
    rt->best_effort = 0;
    return rc;
}

static int produce_to(lua_State *L, fs_rt *rt, int raw, int best_effort)
{
    out_msg m;
    char err[256];
    read_msg(L, rt, raw, &m);
    if (!raw) m.hdrs = trace(L, m.hdrs);
    if (send_msg(rt, &m, best_effort, NULL, err, sizeof err)) return luaL_error(L, "%s", err);
    return 0;
}

static int produce(lua_State *L, int raw, int best_effort)
{
    return produce_to(L, fs_lua_check_rt(L, 1), raw, best_effort);
}

/* rt:produce(tid, key, value, partition, headers, timestamp): encoded by the topic's codecs. */
static int l_rt_produce(lua_State *L)
{
    return produce(L, 0, 0);
}

/* ---- topic:send(msg), the per-event send ----
 * Topic.new makes this the own `send` of every topic without a custom
 * serializer: Topic.send's work without its Lua frame. The topic's and the
 * message's fields are read raw, with their names held as upvalues (no C
 * string through Lua's string cache), and go to produce as rt:produce's
 * arguments. Anything out of the ordinary — not a table, a message with a
 * metatable, no running worker, a field of an unexpected type — goes to the
 * Lua send (upvalue 1), which raises the errors Topic.send raises. */
enum {
    SU_LUA = 1,
    SU_APP,
    SU_RT,
    SU_ID,
    SU_KEY, /* then value, partition, headers, timestamp: msg's fields in produce's order */
    SU_MT = SU_KEY + 5,
    SU_TEST_MT,
    SU_N = SU_TEST_MT
};

static int topic_send(lua_State *L)
{
    lua_settop(L, 2);
    if (lua_type(L, 1) != LUA_TTABLE || lua_type(L, 2) != LUA_TTABLE || lua_getmetatable(L, 2)) goto slow;
    lua_pushvalue(L, lua_upvalueindex(SU_APP));
    if (lua_rawget(L, 1) != LUA_TTABLE) goto slow; /* 3: self.app */
    lua_pushvalue(L, lua_upvalueindex(SU_RT));
    if (lua_rawget(L, 3) != LUA_TUSERDATA || !lua_getmetatable(L, 4)) goto slow; /* 4: app.rt, 5: its metatable */
    if (!lua_rawequal(L, 5, lua_upvalueindex(SU_MT)) && !lua_rawequal(L, 5, lua_upvalueindex(SU_TEST_MT)))
        goto slow;
    fs_rt *rt = ((rt_ud *)lua_touserdata(L, 4))->rt;
    if (!rt) goto slow;
    lua_pushvalue(L, lua_upvalueindex(SU_ID));
    if (lua_rawget(L, 1) != LUA_TNUMBER || !lua_isinteger(L, 6)) goto slow; /* 6: self.id */
    for (int f = 0; f < 5; f++) { /* 7..11: msg.key, value, partition, headers, timestamp */
        lua_pushvalue(L, lua_upvalueindex(SU_KEY + f));
        lua_rawget(L, 2);
    }
    if ((!lua_isnil(L, 9) && !lua_isinteger(L, 9)) || (!lua_isnil(L, 10) && !lua_istable(L, 10)) ||
        (!lua_isnil(L, 11) && lua_type(L, 11) != LUA_TNUMBER))
        goto slow;
    /* rt:produce(id, key, value, partition, headers, timestamp)'s stack */
    lua_copy(L, 4, 1);
    lua_copy(L, 6, 2);
    for (int f = 0; f < 5; f++) lua_copy(L, 7 + f, 3 + f);
    lua_settop(L, 7);
    return produce_to(L, rt, 0, 0);
slow:
    lua_settop(L, 2);
    lua_pushvalue(L, lua_upvalueindex(SU_LUA));
    lua_insert(L, 1);
    lua_call(L, 2, LUA_MULTRET);
    return lua_gettop(L);
}

/* core.topic_sender(lua_send) -> the send of topics without a custom serializer. */
static int l_topic_sender(lua_State *L)
{
    static const char *const names[] = {"app", "rt", "id", "key", "value", "partition", "headers", "timestamp"};
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_settop(L, 1);
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) lua_pushstring(L, names[i]);
    luaL_getmetatable(L, RT_MT);
    luaL_getmetatable(L, RT_TEST_MT);
    lua_pushcclosure(L, topic_send, SU_N);
    return 1;
}

/* rt:produce_raw(tid, key_bytes, value_bytes, partition, headers, timestamp):
 * bytes as they are (a retry's copy of the original message). */
static int l_rt_produce_raw(lua_State *L)
{
    return produce(L, 1, 0);
}

/* rt:produce_dead_letter(tid, key_bytes, value_bytes, partition, headers,
 * timestamp): raw, and best effort — a failed delivery is logged, not fatal. */
static int l_rt_produce_dead_letter(lua_State *L)
{
    return produce(L, 1, 1);
}

static int push_delivery(lua_State *L, fs_waiter *w)
{
    if (w->aborted) {
        free(w);
        return luaL_error(L, "send_and_wait: the transaction this message was sent in was aborted, "
                             "so it was never written; the input being processed is processed "
                             "again from the last committed checkpoint");
    }
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
    return push_delivery(L, (fs_waiter *)ctx);
}

/* The coroutine died before the delivery report: the report frees the waiter. */
static void produce_wait_cancel(fs_co *co)
{
    fs_waiter *w = co->pending;
    if (w) w->co = NULL;
}

/* rt:produce_wait(tid, key, value, partition, headers, timestamp) ->
 * {partition=, offset=} | nil, err — yields until delivered. */
static int l_rt_produce_wait(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    fs_co *co = fs_sched_yieldable(L, "send_and_wait must be called from an agent, task or timer");
    out_msg m;
    char err[256];
    read_msg(L, rt, 0, &m);
    m.hdrs = trace(L, m.hdrs);
    /* Allocated once nothing can raise any more. */
    fs_waiter *w = calloc(1, sizeof *w);
    if (!w) {
        if (m.hdrs) rd_kafka_headers_destroy(m.hdrs);
        return luaL_error(L, "out of memory");
    }
    w->partition = -1;
    w->offset = -1;
    if (send_msg(rt, &m, 0, w, err, sizeof err)) {
        free(w);
        return luaL_error(L, "%s", err);
    }
    if (w->done) return push_delivery(L, w);
    w->co = co;
    fs_sched_wait(co, FS_WAIT_DELIVERY, w, produce_wait_cancel);
    return lua_yieldk(L, 0, (lua_KContext)w, produce_wait_k);
}

/* Test runtime: a message as if produced by another client (the in-memory log). */
static int test_send(lua_State *L, int raw)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    out_msg m;
    int32_t p;
    int64_t o;
    read_msg(L, rt, raw, &m);
    int rc = fs_memlog_append(rt, m.topic, m.partition, m.key, m.klen, m.value, m.vlen, m.hdrs,
                              m.timestamp, 1, &p, &o);
    if (m.hdrs) rd_kafka_headers_destroy(m.hdrs);
    if (rc) return luaL_error(L, "partition %d of %s does not exist", (int)m.partition, m.topic->name);
    lua_pushinteger(L, p);
    lua_pushinteger(L, o);
    return 2;
}

/* rt:test_send(tid, key, value, partition, headers, timestamp) -> partition, offset */
static int l_rt_test_send(lua_State *L)
{
    return test_send(L, 0);
}

/* rt:test_send_raw(tid, key_bytes, value_bytes, partition, headers, timestamp) -> partition, offset */
static int l_rt_test_send_raw(lua_State *L)
{
    return test_send(L, 1);
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

/* rt:outputs(tid) -> what the app produced to the topic (the in-memory log). */
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
    int yes = (rt->tp && rt->tp->holds_all) || (p >= 0 && p < t->nparts && fs_part_active(t->parts[p]));
    lua_pushboolean(L, yes);
    return 1;
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

const luaL_Reg fs_lua_topic_methods[] = {
    {"topic", l_rt_topic},
    {"resolve_topics", l_rt_resolve_topics},
    {"table_inputs", l_rt_table_inputs},
    {"broker_topics", l_rt_broker_topics},
    {"assigned", l_rt_assigned},
    {"produce", l_rt_produce},
    {"produce_raw", l_rt_produce_raw},
    {"produce_dead_letter", l_rt_produce_dead_letter},
    {"produce_wait", l_rt_produce_wait},
    {NULL, NULL},
};

const luaL_Reg fs_lua_topic_test_methods[] = {
    {"test_send", l_rt_test_send},
    {"test_send_raw", l_rt_test_send_raw},
    {"outputs", l_rt_outputs},
    {NULL, NULL},
};

const luaL_Reg fs_lua_topic_funcs[] = {
    {"partition_for", l_partition_for},
    {"topic_sender", l_topic_sender},
    {NULL, NULL},
};
