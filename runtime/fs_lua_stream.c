/* fs_lua_stream: a Lua Stream's C side ("fstream.Stream") — taking batches of
 * events into a Lua table, acknowledging them (by position, or one by one for
 * noack streams), and fencing streams while partitions are revoked. */
#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fs_checkpoint.h"
#include "fs_json.h"
#include "fs_log.h"
#include "fs_lua.h"
#include "fs_rt.h"

#define FS_MAX_TAKE 4096

static void push_headers(lua_State *L, fs_event *e)
{
    rd_kafka_headers_t *h = e->hdrs;
    if (!h && !e->batch->owned && rd_kafka_message_headers(e->m, &h)) h = NULL;
    lua_newtable(L);
    if (!h) return;
    const char *name;
    const void *v;
    size_t vl;
    for (size_t i = 0; !rd_kafka_header_get_all(h, i, &name, &v, &vl); i++) {
        lua_pushlstring(L, v ? v : "", v ? vl : 0);
        lua_setfield(L, -2, name);
    }
}


static stream_ud *check_stream(lua_State *L, int idx)
{
    stream_ud *u = luaL_checkudata(L, idx, STREAM_MT);
    lua_getiuservalue(L, idx, 1);
    rt_ud *r = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (!r || !r->rt) luaL_error(L, "runtime is closed");
    return u;
}

void fs_lua_push_event(lua_State *L, fs_event *e, int err_only)
{
    fs_topic *t = e->part->topic;
    lua_createtable(L, 0, 8);
    lua_pushstring(L, t->name);
    lua_setfield(L, -2, "topic");
    lua_pushinteger(L, e->m->partition);
    lua_setfield(L, -2, "partition");
    lua_pushinteger(L, e->m->offset);
    lua_setfield(L, -2, "offset");
    if (e->ts >= 0) {
        lua_pushnumber(L, (lua_Number)e->ts / 1000.0);
        lua_setfield(L, -2, "timestamp");
    }
    lua_pushlightuserdata(L, e); /* identifies the event for stream:ack_event (noack) */
    lua_setfield(L, -2, "_event");
    if (err_only) {
        if (e->m->key) lua_pushlstring(L, e->m->key, e->m->key_len), lua_setfield(L, -2, "key_bytes");
        if (e->m->payload)
            lua_pushlstring(L, e->m->payload, e->m->len), lua_setfield(L, -2, "value_bytes");
    }
    push_headers(L, e);
    lua_setfield(L, -2, "headers");
}

/* Fills buf from the agent's queue; stops before an event that fails to decode
 * and returns it as the second result (it is acknowledged with the rest). */
static int fill(lua_State *L, stream_ud *u)
{
    fs_stream *s = u->s;
    fs_agent *a = s->agent;
    fs_rt *rt = u->rt;
    lua_Integer max = luaL_checkinteger(L, 3);
    int mode = (int)luaL_checkinteger(L, 4);
    if (max < 1) max = 1;
    if (max > FS_MAX_TAKE) max = FS_MAX_TAKE;
    if ((size_t)max > s->captaken) {
        fs_event **tk = realloc(s->taken, (size_t)max * sizeof *tk);
        if (!tk) return luaL_error(L, "out of memory");
        s->taken = tk;
        s->captaken = (size_t)max;
    }
    char err[256];
    lua_Integer n = 0;
    while (n < max && a->qlen) {
        fs_event *e = a->q[a->qhead];
        a->qhead = (a->qhead + 1) % a->qcap;
        a->qlen--;
        rt->queued--;
        s->taken[s->ntaken++] = e;
        if (s->manual && fs_stream_open_add(s, e)) return luaL_error(L, "out of memory");
        fs_topic *t = e->part->topic;
        rd_kafka_message_t *m = e->m;
        int bad = 0;
        if (mode == MODE_VALUE) {
            bad = fs_lua_push_payload(L, t->value_codec, m->payload, m->len, err, sizeof err);
            if (!bad) lua_rawseti(L, 2, ++n);
        } else if (mode == MODE_ITEMS) {
            bad = fs_lua_push_payload(L, t->key_codec, m->key, m->key_len, err, sizeof err);
            if (!bad) {
                bad = fs_lua_push_payload(L, t->value_codec, m->payload, m->len, err, sizeof err);
                if (bad) lua_pop(L, 1);
            }
            if (!bad) {
                lua_rawseti(L, 2, 2 * n + 2);
                lua_rawseti(L, 2, 2 * n + 1);
                n++;
            }
        } else {
            fs_lua_push_event(L, e, 0);
            if (m->key) {
                bad = fs_lua_push_payload(L, t->key_codec, m->key, m->key_len, err, sizeof err);
                if (!bad) lua_setfield(L, -2, "key");
            }
            if (!bad) {
                bad = fs_lua_push_payload(L, t->value_codec, m->payload, m->len, err, sizeof err);
                if (!bad) lua_setfield(L, -2, "value");
            }
            if (bad) lua_pop(L, 1);
            else lua_rawseti(L, 2, ++n);
        }
        if (bad) {
            rt->decode_errors++;
            /* The agent never sees it: done here, even under noack. */
            if (s->manual && fs_stream_open_remove(s, e) == 0) fs_event_ack(rt, e);
            lua_pushinteger(L, n);
            fs_lua_push_event(L, e, 1);
            lua_pushstring(L, err);
            lua_setfield(L, -2, "error");
            return 2;
        }
    }
    lua_pushinteger(L, n);
    return 1;
}

/* Waits for events: until at least `want` are queued, or (with a timeout)
 * until the timer armed at the first wait fires. */
static int take_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    stream_ud *u = (stream_ud *)ctx;
    fs_stream *s = u->s;
    fs_co *co = fs_co_current(L);
    if (co && s->waiter == co) s->waiter = NULL;
    if (co) co->stream = NULL;
    double timeout = luaL_optnumber(L, 5, -1);
    lua_Integer want = luaL_optinteger(L, 6, 1);
    lua_Integer max = luaL_checkinteger(L, 3);
    if (want > max) want = max;
    if (want > FS_MAX_TAKE) want = FS_MAX_TAKE; /* what one fill can take */
    if (want < 1) want = 1;
    int stopping = u->rt->stopping || s->agent->closed;
    int timed_out = timeout >= 0 && co && lua_toboolean(L, 7) && !fs_timer_active(&co->timer);
    if ((lua_Integer)s->agent->qlen >= want || (s->agent->qlen && (stopping || timed_out))) {
        if (co) fs_timer_stop(&u->rt->loop, &co->timer);
        return fill(L, u);
    }
    if (stopping) {
        lua_pushnil(L);
        return 1;
    }
    if (timed_out) {
        lua_pushboolean(L, 0); /* nothing came in time */
        return 1;
    }
    if (!co) return luaL_error(L, "a stream can only be read from an agent or task coroutine");
    if (timeout >= 0 && !lua_toboolean(L, 7) && s->agent->qlen > 0) {
        /* The deadline counts from the first event of the batch; slot 7 remembers
         * that it is armed. */
        lua_settop(L, 6);
        lua_pushboolean(L, 1);
        if (fs_timer_start(&u->rt->loop, &co->timer, (int64_t)llround(timeout * 1000)))
            return luaL_error(L, "out of memory");
    }
    s->waiter = co;
    co->stream = s;
    co->state = FS_CO_WAITING;
    co->wait = FS_WAIT_TAKE;
    return lua_yieldk(L, 0, ctx, take_k);
}

/* stream:take(buf, max, mode [, timeout [, want]]) -> n [, bad_event] | false (timed
 * out, nothing taken) | nil (the stream ended). Acknowledges the previous batch
 * first: the agent asked for more. */
static int l_stream_take(lua_State *L)
{
    stream_ud *u = check_stream(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 6);
    lua_pushboolean(L, 0); /* slot 7: deadline armed */
    fs_stream_ack_taken(u->rt, u->s);
    fs_co *co = fs_co_current(L);
    if (co) u->s->reader = co;
    return take_k(L, 0, (lua_KContext)u);
}

/* stream:bind(tbl): the Lua Stream whose field `i` tells how far the agent got. */
static int l_stream_bind(lua_State *L)
{
    stream_ud *u = check_stream(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    if (u->s->lua_ref > 0) luaL_unref(L, LUA_REGISTRYINDEX, u->s->lua_ref);
    lua_pushvalue(L, 2);
    u->s->lua_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

/* stream:drop(i): the i-th event of the last take failed Lua-side decoding; it
 * is acknowledged and removed so positions keep matching the Lua buffer. */
static int l_stream_drop(lua_State *L)
{
    stream_ud *u = check_stream(L, 1);
    fs_stream *s = u->s;
    lua_Integer i = luaL_checkinteger(L, 2);
    if (i < 1 || (size_t)i > s->ntaken || (size_t)i <= s->nacked) return 0;
    if (s->manual) fs_stream_open_remove(s, s->taken[i - 1]);
    fs_event_ack(u->rt, s->taken[i - 1]);
    memmove(&s->taken[i - 1], &s->taken[i], (s->ntaken - (size_t)i) * sizeof *s->taken);
    s->ntaken--;
    return 0;
}

void fs_sync_acks(fs_rt *rt)
{
    lua_State *L = rt->L;
    for (int a = 0; a < rt->nagents; a++) {
        fs_agent *ag = rt->agents[a];
        for (int j = 0; j < ag->nstreams; j++) {
            fs_stream *s = ag->streams[j];
            if (s->lua_ref <= 0 || s->ntaken <= s->nacked || s->manual) continue;
            lua_rawgeti(L, LUA_REGISTRYINDEX, s->lua_ref);
            lua_getfield(L, -1, "i");
            lua_Integer pos = lua_tointeger(L, -1);
            lua_pop(L, 2);
            /* Event `pos` is in progress; everything before it is finished. */
            size_t done = pos > 1 ? (size_t)(pos - 1) : 0;
            if (done > s->ntaken) done = s->ntaken;
            for (; s->nacked < done; s->nacked++) fs_event_ack(rt, s->taken[s->nacked]);
        }
    }
}

/* Removes from a stream's buffer the events after position `i` that belong to
 * partitions being revoked (the agent has not started them); they are
 * acknowledged here and will be delivered to the partition's next owner. The
 * Lua Stream table is at stack index tbl. */
static void drop_revoked(fs_rt *rt, fs_stream *s, lua_State *L, int tbl)
{
    lua_getfield(L, tbl, "i");
    lua_Integer i = lua_tointeger(L, -1);
    lua_getfield(L, tbl, "n");
    lua_Integer n = lua_tointeger(L, -1);
    lua_getfield(L, tbl, "mode");
    int pairs = lua_tointeger(L, -1) == MODE_ITEMS;
    lua_getfield(L, tbl, "buf");
    int buf = lua_gettop(L);
    if (n > (lua_Integer)s->ntaken) n = (lua_Integer)s->ntaken;
    /* A stream waiting in take has handed everything out (its i is stale). */
    if (i > n) i = n;
    if (i < 0) i = 0;
    lua_Integer w = i;
    for (lua_Integer j = i + 1; j <= n; j++) {
        fs_event *e = s->taken[j - 1];
        if (!fs_part_active(e->part)) {
            if (s->manual) fs_stream_open_remove(s, e);
            fs_event_release(rt, e);
            continue;
        }
        w++;
        if (w != j) {
            s->taken[w - 1] = e;
            int width = pairs ? 2 : 1;
            for (int k = 0; k < width; k++) {
                lua_rawgeti(L, buf, width * (j - 1) + 1 + k);
                lua_rawseti(L, buf, width * (w - 1) + 1 + k);
            }
        }
    }
    /* An event that failed to decode sits after the buffer's entries: keep it. */
    size_t tail = s->ntaken - (size_t)n;
    if (tail && w != n) memmove(&s->taken[w], &s->taken[n], tail * sizeof *s->taken);
    s->ntaken = (size_t)w + tail;
    lua_pushinteger(L, w);
    lua_setfield(L, tbl, "n");
    lua_settop(L, tbl);
}

/* stream:fence(tbl): the agent asks for the next event while a revocation is
 * pending: everything up to its position is finished, the rest of revoked
 * partitions is dropped. */
static int l_stream_fence(lua_State *L)
{
    stream_ud *u = check_stream(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    fs_stream *s = u->s;
    lua_getfield(L, 2, "i");
    lua_Integer i = lua_tointeger(L, -1);
    lua_pop(L, 1);
    for (; !s->manual && (lua_Integer)s->nacked < i && s->nacked < s->ntaken; s->nacked++)
        fs_event_ack(u->rt, s->taken[s->nacked]);
    drop_revoked(u->rt, s, L, 2);
    return 0;
}

void fs_fence_streams(fs_rt *rt, int on)
{
    lua_State *L = rt->L;
    for (int a = 0; a < rt->nagents; a++) {
        fs_agent *ag = rt->agents[a];
        for (int j = 0; j < ag->nstreams; j++) {
            fs_stream *s = ag->streams[j];
            if (s->lua_ref <= 0) continue;
            lua_rawgeti(L, LUA_REGISTRYINDEX, s->lua_ref);
            int tbl = lua_gettop(L);
            if (on) lua_pushboolean(L, 1);
            else lua_pushnil(L);
            lua_setfield(L, tbl, "fence");
            if (!on) drop_revoked(rt, s, L, tbl);
            lua_settop(L, tbl - 1);
        }
    }
}

int fs_streams_clear(fs_rt *rt)
{
    lua_State *L = rt->L;
    for (int a = 0; a < rt->nagents; a++) {
        fs_agent *ag = rt->agents[a];
        for (int j = 0; j < ag->nstreams; j++) {
            fs_stream *s = ag->streams[j];
            /* A stream whose reader died has nobody who could finish an event. */
            if (!s->reader) continue;
            for (size_t k = 0; k < s->nopen; k++)
                if (fs_part_fencing(s->open[k]->part)) return 0; /* not acknowledged yet */
            if (s->lua_ref <= 0 || s->ntaken == 0 || s->manual) continue;
            lua_rawgeti(L, LUA_REGISTRYINDEX, s->lua_ref);
            lua_getfield(L, -1, "i");
            lua_Integer pos = lua_tointeger(L, -1);
            lua_pop(L, 2);
            /* Event `pos` is in progress unless already acknowledged. */
            if (pos >= 1 && (size_t)pos <= s->ntaken && (size_t)pos > s->nacked &&
                fs_part_fencing(s->taken[pos - 1]->part))
                return 0;
        }
    }
    return 1;
}

static void hook_sync_acks(void *data)
{
    fs_sync_acks(data);
}

static void hook_fence(void *data, int on)
{
    fs_fence_streams(data, on);
}

static int hook_clear(void *data)
{
    return fs_streams_clear(data);
}

const fs_agent_hooks fs_lua_agent_hooks = {hook_sync_acks, hook_fence, hook_clear};

void fs_streams_orphan(fs_rt *rt, fs_co *co, int failed)
{
    lua_State *L = rt->L;
    for (int a = 0; a < rt->nagents; a++) {
        fs_agent *ag = rt->agents[a];
        for (int j = 0; j < ag->nstreams; j++) {
            fs_stream *s = ag->streams[j];
            if (s->reader != co) continue;
            s->reader = NULL;
            if (!failed || s->manual || s->lua_ref <= 0) continue;
            /* The failed event (position i) went through on_error: it is done,
             * as it would be when a restarted instance asks for the next one. */
            lua_rawgeti(L, LUA_REGISTRYINDEX, s->lua_ref);
            lua_getfield(L, -1, "i");
            lua_Integer pos = lua_tointeger(L, -1);
            lua_pop(L, 2);
            size_t done = pos > 0 ? (size_t)pos : 0;
            if (done > s->ntaken) done = s->ntaken;
            for (; s->nacked < done; s->nacked++) fs_event_ack(rt, s->taken[s->nacked]);
        }
    }
}

/* stream:set_manual(): noack mode — events are acknowledged one by one. */
static int l_stream_set_manual(lua_State *L)
{
    check_stream(L, 1)->s->manual = 1;
    return 0;
}

/* stream:ack_event(ev._event) -> true | nil, "unknown event" */
static int l_stream_ack_event(lua_State *L)
{
    stream_ud *u = check_stream(L, 1);
    luaL_checktype(L, 2, LUA_TLIGHTUSERDATA);
    if (fs_stream_ack_event(u->rt, u->s, lua_touserdata(L, 2))) {
        lua_pushnil(L);
        lua_pushstring(L, "event already acknowledged or not from this stream");
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* stream:ack() — acknowledge what the last take handed out (the agent ended). */
static int l_stream_ack(lua_State *L)
{
    stream_ud *u = check_stream(L, 1);
    fs_stream_ack_taken(u->rt, u->s);
    return 0;
}

/* stream:raw(i) -> {topic, partition, offset, timestamp, key_bytes, value_bytes, headers}
 * of the i-th event of the last take: the original message, for dead letters. */
static int l_stream_raw(lua_State *L)
{
    stream_ud *u = check_stream(L, 1);
    lua_Integer i = luaL_checkinteger(L, 2);
    if (i < 1 || (size_t)i > u->s->ntaken) return 0;
    fs_lua_push_event(L, u->s->taken[i - 1], 1);
    return 1;
}

/* stream:meta(i) -> topic, partition, offset, timestamp of the i-th event of the last take */
static int l_stream_meta(lua_State *L)
{
    stream_ud *u = check_stream(L, 1);
    lua_Integer i = luaL_checkinteger(L, 2);
    if (i < 1 || (size_t)i > u->s->ntaken) return 0;
    fs_event *e = u->s->taken[i - 1];
    lua_pushstring(L, e->part->topic->name);
    lua_pushinteger(L, e->m->partition);
    lua_pushinteger(L, e->m->offset);
    if (e->ts >= 0) lua_pushnumber(L, (lua_Number)e->ts / 1000.0);
    else lua_pushnil(L);
    return 4;
}

/* stream:origin(i [, with_key]) -> timestamp | nil, headers | nil [, key] of the
 * i-th event of the last take: what a forwarder (group_by, through) keeps when
 * it sends the event on. No table unless the message has headers; the key is
 * decoded by its topic's key codec (nil when absent). */
static int l_stream_origin(lua_State *L)
{
    stream_ud *u = check_stream(L, 1);
    lua_Integer i = luaL_checkinteger(L, 2);
    int with_key = lua_toboolean(L, 3);
    if (i < 1 || (size_t)i > u->s->ntaken) return 0;
    fs_event *e = u->s->taken[i - 1];
    if (e->ts >= 0) lua_pushnumber(L, (lua_Number)e->ts / 1000.0);
    else lua_pushnil(L);
    rd_kafka_headers_t *h = e->hdrs;
    if (!h && !e->batch->owned && rd_kafka_message_headers(e->m, &h)) h = NULL;
    if (h && rd_kafka_header_cnt(h)) push_headers(L, e);
    else lua_pushnil(L);
    if (!with_key) return 2;
    char err[256];
    if (!e->m->key) lua_pushnil(L);
    else if (fs_lua_push_payload(L, e->part->topic->key_codec, e->m->key, e->m->key_len, err, sizeof err))
        return luaL_error(L, "cannot decode the key of %s[%d]@%lld: %s", e->part->topic->name,
                          (int)e->m->partition, (long long)e->m->offset, err);
    return 3;
}

static const luaL_Reg stream_methods[] = {
    {"origin", l_stream_origin},
    {"take", l_stream_take},
    {"ack", l_stream_ack},
    {"bind", l_stream_bind},
    {"drop", l_stream_drop},
    {"fence", l_stream_fence},
    {"set_manual", l_stream_set_manual},
    {"ack_event", l_stream_ack_event},
    {"meta", l_stream_meta},
    {"raw", l_stream_raw},
    {NULL, NULL},
};

void fs_lua_open_stream(lua_State *L)
{
    luaL_newmetatable(L, STREAM_MT);
    luaL_newlib(L, stream_methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}
