/* fs_lua_stream: a Lua Stream's C side ("fstream.Stream") — taking batches of
 * events into the stream's Lua buffer, the agent's cursor in it (held here in
 * the fs_stream: Lua moves it with next/seek and asks for it with cursor),
 * acknowledging events (by position, or one by one for noack streams). While
 * partitions are revoked, next() steps the fence (fs_stream_cursor.c), which
 * moves the buffer's entries through the callback bound here. */
#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fs_call.h"
#include "fs_json.h"
#include "fs_log.h"
#include "fs_lua.h"
#include "fs_rt.h"

#define FS_MAX_TAKE 4096
/* The payload bytes one fill of an iterating stream brings into the Lua state
 * (at least one event): a batch of 1 MiB messages would otherwise be
 * decoded a thousand at a time, past any max_memory. take(n) batches get
 * their n values as asked. */
#define FS_TAKE_BYTES (1 << 20)

/* What e->hdrs holds for a consumed message found to have no headers.
 * librdkafka keeps the headers it parsed with the message, but not that there
 * were none: each rd_kafka_message_headers() on such a message builds and
 * frees a parse buffer again (an event's send, its events-mode table and a
 * forwarder's origin would each pay it). Only librdkafka's messages (not
 * owned, whose e->hdrs is never destroyed) get the mark. */
static char no_headers;
#define NO_HEADERS ((rd_kafka_headers_t *)&no_headers)

rd_kafka_headers_t *fs_lua_event_headers(fs_event *e)
{
    rd_kafka_headers_t *h = e->hdrs;
    if (h == NO_HEADERS) return NULL;
    if (!h && !e->batch->owned && rd_kafka_message_headers(e->m, &h)) {
        e->hdrs = NO_HEADERS;
        h = NULL;
    }
    return h;
}

static void push_headers(lua_State *L, fs_event *e)
{
    rd_kafka_headers_t *h = fs_lua_event_headers(e);
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

/* The stream methods' upvalue 1 is the metatable: the check costs no
 * registry lookup by name (some run per event: cursor, meta, origin). */
static stream_ud *check_stream(lua_State *L, int idx)
{
    stream_ud *u = lua_touserdata(L, idx);
    if (!u || !lua_getmetatable(L, idx) || !lua_rawequal(L, -1, lua_upvalueindex(1)))
        luaL_typeerror(L, idx, STREAM_MT);
    lua_pop(L, 1);
    if (!u->owner || !u->owner->rt) luaL_error(L, "runtime is closed");
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

/* Stack slots of take(max, mode [, timeout [, want]]) and its continuation. */
enum { TK_MAX = 2, TK_MODE, TK_TIMEOUT, TK_WANT, TK_ARMED, TK_BUF };

/* Fills the bound buffer from the agent's queue and puts the cursor at its
 * start; stops before an event that fails to decode and returns it as the
 * second result (it is acknowledged with the rest). */
static int fill(lua_State *L, stream_ud *u)
{
    fs_stream *s = u->s;
    fs_agent *a = s->agent;
    fs_rt *rt = u->rt;
    lua_Integer max = luaL_checkinteger(L, TK_MAX);
    int mode = (int)luaL_checkinteger(L, TK_MODE);
    int capped = luaL_optinteger(L, TK_WANT, 1) <= 1; /* an iteration, not take(n) */
    size_t bytes = 0;
    const int buf = TK_BUF;
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
    while (n < max && a->qlen && !(capped && bytes >= FS_TAKE_BYTES)) {
        fs_event *e = a->q[a->qhead];
        a->qhead = (a->qhead + 1) % a->qcap;
        a->qlen--;
        rt->queued--;
        rt->queued_bytes -= fs_event_bytes(e);
        bytes += fs_event_bytes(e);
        s->taken[s->ntaken++] = e;
        if (s->manual && fs_stream_open_add(s, e)) return luaL_error(L, "out of memory");
        fs_topic *t = e->part->topic;
        rd_kafka_message_t *m = e->m;
        int bad = 0;
        if (mode == MODE_VALUE) {
            bad = fs_lua_push_payload(L, t->value_codec, m->payload, m->len, err, sizeof err);
            if (!bad) lua_rawseti(L, buf, ++n);
        } else if (mode == MODE_ITEMS) {
            bad = fs_lua_push_payload(L, t->key_codec, m->key, m->key_len, err, sizeof err);
            if (!bad) {
                bad = fs_lua_push_payload(L, t->value_codec, m->payload, m->len, err, sizeof err);
                if (bad) lua_pop(L, 1);
            }
            if (!bad) {
                lua_rawseti(L, buf, 2 * n + 2);
                lua_rawseti(L, buf, 2 * n + 1);
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
            else lua_rawseti(L, buf, ++n);
        }
        if (bad) {
            rt->decode_errors++;
            /* The agent never sees it: done here, even under noack. */
            if (s->manual && fs_stream_open_remove(s, e) == 0) fs_event_ack(rt, e);
            s->mode = mode;
            s->nbuf = (size_t)n;
            s->pos = 0;
            lua_pushinteger(L, n);
            fs_lua_push_event(L, e, 1);
            lua_pushstring(L, err);
            lua_setfield(L, -2, "error");
            return 2;
        }
    }
    s->mode = mode;
    s->nbuf = (size_t)n;
    s->pos = 0;
    lua_pushinteger(L, n);
    return 1;
}

static int fill_entry(lua_State *L)
{
    return fill(L, lua_touserdata(L, 1)); /* (fill_protected's call: the stream's) */
}

/* fill under a protected call. An error while it decodes (Lua's "not enough
 * memory" under max_memory, an interrupt) would otherwise leave the events it
 * had taken unseen in the taken list, and the restarted agent's next take
 * would acknowledge them: lost. So the event being decoded when it failed
 * becomes the event in hand (the agent's on_error policy deals with it: it
 * is the one that did not fit), and those taken before it go back to the
 * head of the agent's queue, to be taken again. */
static int fill_protected(lua_State *L, stream_ud *u)
{
    fs_stream *s = u->s;
    fs_agent *a = s->agent;
    size_t from = s->ntaken;
    int top = lua_gettop(L);
    lua_pushcfunction(L, fill_entry);
    for (int i = 1; i <= TK_BUF; i++) lua_pushvalue(L, i);
    if (lua_pcall(L, TK_BUF, LUA_MULTRET, 0) == LUA_OK) return lua_gettop(L) - top;
    if (s->ntaken > from) {
        fs_event *failed = s->taken[--s->ntaken];
        while (s->ntaken > from) {
            fs_event *e = s->taken[--s->ntaken];
            if (s->manual) fs_stream_open_remove(s, e);
            /* Taken from this queue just now: there is room at its head. */
            a->qhead = (a->qhead + a->qcap - 1) % a->qcap;
            a->q[a->qhead] = e;
            a->qlen++;
            u->rt->queued++;
            u->rt->queued_bytes += fs_event_bytes(e);
        }
        s->taken[s->ntaken++] = failed;
        if (s->nacked > from) s->nacked = from;
        s->mode = (int)luaL_checkinteger(L, TK_MODE);
        s->nbuf = s->pos = s->ntaken; /* the cursor on it: the event in hand */
    }
    return lua_error(L);
}

/* The wait of a take: cleared if the coroutine dies first. */
static void take_cancel(fs_co *co)
{
    fs_stream *s = co->pending;
    if (s && s->waiter == co) s->waiter = NULL;
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
    double timeout = luaL_optnumber(L, TK_TIMEOUT, -1);
    lua_Integer want = luaL_optinteger(L, TK_WANT, 1);
    lua_Integer max = luaL_checkinteger(L, TK_MAX);
    if (want > max) want = max;
    if (want > FS_MAX_TAKE) want = FS_MAX_TAKE; /* what one fill can take */
    if (want < 1) want = 1;
    int stopping = u->rt->stopping || s->agent->closed;
    /* (Also while stopping: agents finish their queues then, and a
     * checkpoint may still cut between their events.) */
    if (u->rt->hold && !s->agent->closed && co && lua_isyieldable(L)) {
        /* The hold (a checkpoint cuts between events): start nothing now;
         * releasing it wakes the stream's waiter, as new events do. */
        s->held = 1;
        s->waiter = co;
        fs_sched_wait(co, FS_WAIT_TAKE, s, take_cancel);
        return lua_yieldk(L, 0, ctx, take_k);
    }
    int timed_out = timeout >= 0 && co && lua_toboolean(L, TK_ARMED) && !fs_timer_active(&co->timer);
    if ((lua_Integer)s->agent->qlen >= want || (s->agent->qlen && (stopping || timed_out))) {
        if (co) fs_timer_stop(&u->rt->loop, &co->timer);
        return fill_protected(L, u);
    }
    if (stopping) {
        lua_pushnil(L);
        return 1;
    }
    if (timed_out) {
        lua_pushboolean(L, 0); /* nothing came in time */
        return 1;
    }
    co = fs_sched_yieldable(L, "a stream can only be read from an agent or task coroutine");
    if (timeout >= 0 && !lua_toboolean(L, TK_ARMED) && s->agent->qlen > 0) {
        /* The deadline counts from the first event of the batch; the slot
         * remembers that it is armed. */
        lua_pushboolean(L, 1);
        lua_replace(L, TK_ARMED);
        if (fs_timer_start(&u->rt->loop, &co->timer, (int64_t)llround(timeout * 1000)))
            return luaL_error(L, "out of memory");
    }
    s->waiter = co;
    fs_sched_wait(co, FS_WAIT_TAKE, s, take_cancel);
    return lua_yieldk(L, 0, ctx, take_k);
}

/* What a dead agent coroutine held: the streams it read have nobody in the
 * middle of an event any more. failed: its on_error policy has dealt with the
 * event in hand, which is acknowledged; otherwise (killed) it stays
 * unacknowledged. Called by the scheduler's cleanup of the coroutine. */
static void reader_release(fs_co *co, void *held, int failed)
{
    fs_stream *s = held;
    fs_rt *rt = co->rt;
    if (s->reader != co) return;
    s->reader = NULL;
    if (!failed || s->manual) return;
    /* The failed event (the cursor's) went through on_error: it is done, as
     * it would be when a restarted instance asks for the next one. */
    size_t done = s->pos;
    if (done > s->ntaken) done = s->ntaken;
    for (; s->nacked < done; s->nacked++) fs_event_ack(rt, s->taken[s->nacked]);
}

fs_event *fs_lua_event_in_hand(lua_State *L)
{
    fs_co *co = fs_co_current(L);
    if (!co || co->release != reader_release) return NULL;
    fs_stream *s = co->held;
    if (s->reader != co || s->pos == 0 || s->pos > s->ntaken || s->pos > s->nbuf) return NULL;
    return s->taken[s->pos - 1];
}

/* stream:take(max, mode [, timeout [, want]]) -> n [, bad_event] | false (timed
 * out, nothing taken) | nil (the stream ended). Acknowledges the previous batch
 * first: the agent asked for more. Fills the bound buffer; the cursor is at its
 * start (or empty while it waits). */
static int l_stream_take(lua_State *L)
{
    stream_ud *u = check_stream(L, 1);
    fs_stream *s = u->s;
    if (s->lua_ref <= 0) return luaL_error(L, "stream:take before stream:bind");
    lua_settop(L, TK_WANT);
    lua_pushboolean(L, 0); /* deadline armed */
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->lua_ref);
    fs_stream_ack_taken(u->rt, s);
    s->pos = s->nbuf = 0;
    fs_co *co = fs_co_current(L);
    if (co && s->reader != co) {
        /* One stream in hand per coroutine: one that moves on to another
         * stream is no longer in the middle of the first one's events. */
        if (co->release == reader_release && co->held != s) {
            fs_stream *prev = co->held;
            if (prev->reader == co) prev->reader = NULL;
        }
        s->reader = co;
        fs_sched_hold(co, s, reader_release);
    }
    return take_k(L, 0, (lua_KContext)u);
}

/* The fence dropped entries of the buffer: entry `from` moves to `to`
 * (1-based). ctx: the thread of the call that fenced, or NULL (the loop:
 * the main VM). */
static void buf_move(fs_stream *s, size_t from, size_t to, void *ctx)
{
    lua_State *L = ctx ? ctx : s->agent->rt->L;
    int width = s->mode == MODE_ITEMS ? 2 : 1;
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->lua_ref);
    for (int k = 0; k < width; k++) {
        lua_rawgeti(L, -1, width * (lua_Integer)(from - 1) + 1 + k);
        lua_rawseti(L, -2, width * (lua_Integer)(to - 1) + 1 + k);
    }
    lua_pop(L, 1);
}

/* stream:bind(buf): the Lua table that takes fill (and fences compact). */
static int l_stream_bind(lua_State *L)
{
    stream_ud *u = check_stream(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    fs_unref(L, u->s->lua_ref);
    lua_pushvalue(L, 2);
    u->s->lua_ref = fs_ref(L);
    u->s->move = buf_move;
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
    if ((size_t)i <= s->nbuf) s->nbuf--; /* the Lua side removes its entry */
    if (s->pos > s->nbuf) s->pos = s->nbuf;
    return 0;
}

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The event in hand is finished (the agent asks for the next): its time
 * goes to the agent's histogram. */
static void event_done(fs_stream *s, int64_t now)
{
    static const int64_t bounds[FS_LAT_NBOUNDS] = FS_LAT_BOUNDS;
    struct fs_agent_stats *st = &s->agent->stats;
    int64_t d = now - s->moved_ns;
    int b = 0;
    while (b < FS_LAT_NBOUNDS && d > bounds[b]) b++;
    st->buckets[b]++;
    st->ns_sum += d;
    st->processed++;
    s->moved_ns = 0;
}

static int next_k(lua_State *L, int status, lua_KContext ctx);

/* The hold is set: the event in hand is finished (acknowledged now, so the
 * checkpoint sees this stream at a boundary); wait until the hold is
 * released, then go on in k. Returns -1 when this thread cannot wait here
 * (then the agent goes on: only a coroutine of the scheduler can stop
 * half-way). */
static int hold_here(lua_State *L, stream_ud *u, lua_KContext ctx, lua_KFunction k)
{
    fs_stream *s = u->s;
    fs_rt *rt = u->rt;
    fs_co *co = fs_co_current(L);
    if (!co || !lua_isyieldable(L) || s->agent->closed) return -1;
    if (!s->manual) {
        size_t done = s->pos < s->ntaken ? s->pos : s->ntaken;
        for (; s->nacked < done; s->nacked++) fs_event_ack(rt, s->taken[s->nacked]);
    }
    s->held = 1;
    s->waiter = co;
    fs_sched_wait(co, FS_WAIT_TAKE, s, take_cancel);
    return lua_yieldk(L, 0, ctx, k);
}

/* The cursor's move itself, once no hold stops it; now: when the agent
 * moves onto the next event (its processing time starts there). */
static size_t cursor_move(lua_State *L, stream_ud *u, int mode, int64_t now)
{
    fs_stream *s = u->s;
    if (s->fence) fs_stream_fence_step(u->rt, s, L);
    if (s->pos >= s->nbuf || s->mode != mode) return 0;
    s->moved_ns = now;
    return ++s->pos;
}

static int next_move(lua_State *L, stream_ud *u, int64_t now)
{
    size_t i = cursor_move(L, u, (int)lua_tointeger(L, 2), now);
    if (!i) return 0;
    lua_pushinteger(L, (lua_Integer)i);
    return 1;
}

static int next_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    stream_ud *u = (stream_ud *)ctx;
    fs_co *co = fs_co_current(L);
    if (co && u->s->waiter == co) u->s->waiter = NULL;
    if (!u->owner->rt) return luaL_error(L, "runtime is closed");
    if (u->rt->hold && hold_here(L, u, ctx, next_k) >= 0) return 0; /* not reached: it yields */
    return next_move(L, u, mono_ns());
}

/* stream:next(mode) -> i | nil: moves the cursor to the next entry of the
 * buffer and returns its index, or nil when the buffer is spent or holds
 * another mode's entries (the Lua side takes again). The per-event call: the
 * metatable is upvalue 1, so the check costs no registry lookup. */
static int l_stream_next(lua_State *L)
{
    stream_ud *u = lua_touserdata(L, 1);
    if (!u || !lua_getmetatable(L, 1) || !lua_rawequal(L, -1, lua_upvalueindex(1)))
        return luaL_typeerror(L, 1, STREAM_MT);
    if (!u->owner->rt) return luaL_error(L, "runtime is closed");
    /* The event in hand is finished: its time goes to the agent's histogram
     * (a hold's wait is not counted in it). */
    int64_t now = mono_ns();
    if (u->s->moved_ns) event_done(u->s, now);
    /* The per-event cost of the hold: this one test. */
    if (u->rt->hold) {
        lua_settop(L, 2);
        int rc = hold_here(L, u, (lua_KContext)u, next_k);
        if (rc >= 0) return rc;
    }
    return next_move(L, u, now);
}

/* ---- the iterators: `for v in stream do` and `for k, v in stream:items() do` ----
 * An agent's per-event call, in C: the cursor's move (as next does) and the
 * entry's value (or key and value) out of the buffer, without a Lua frame.
 * Lua's slow(stream, i) is called only when the buffer is spent or holds
 * another mode's entries (i = nil: it refills, then moves on), or for an
 * event of the agent's retry topic (i: it may wait out the retry's backoff
 * first); what it returns is the iteration's result. Upvalues: 1 the C
 * stream, 2 the Lua stream, 3 its buffer, 4 slow, 5 the retry topic (light
 * userdata) or nil. The mode is the continuations' context. */
static int iter_results(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    return lua_gettop(L);
}

static int iter_step(lua_State *L, stream_ud *u, int mode, int64_t now)
{
    size_t i = cursor_move(L, u, mode, now);
    if (i && (lua_isnil(L, lua_upvalueindex(5)) ||
              u->s->taken[i - 1]->part->topic != lua_touserdata(L, lua_upvalueindex(5)))) {
        if (mode == MODE_VALUE) {
            lua_rawgeti(L, lua_upvalueindex(3), (lua_Integer)i);
            return 1;
        }
        lua_rawgeti(L, lua_upvalueindex(3), 2 * (lua_Integer)i - 1);
        lua_rawgeti(L, lua_upvalueindex(3), 2 * (lua_Integer)i);
        return 2;
    }
    lua_pushvalue(L, lua_upvalueindex(4));
    lua_pushvalue(L, lua_upvalueindex(2));
    if (i) lua_pushinteger(L, (lua_Integer)i);
    else lua_pushnil(L);
    lua_callk(L, 2, LUA_MULTRET, mode, iter_results);
    return lua_gettop(L);
}

static int iter_hold_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    stream_ud *u = lua_touserdata(L, lua_upvalueindex(1));
    fs_co *co = fs_co_current(L);
    lua_settop(L, 0); /* (what the resume passed: the results are counted from an empty stack) */
    if (co && u->s->waiter == co) u->s->waiter = NULL;
    if (!u->owner->rt) return luaL_error(L, "runtime is closed");
    if (u->rt->hold && hold_here(L, u, ctx, iter_hold_k) >= 0) return 0; /* not reached: it yields */
    return iter_step(L, u, (int)ctx, mono_ns());
}

static int iterate(lua_State *L, int mode)
{
    stream_ud *u = lua_touserdata(L, lua_upvalueindex(1));
    if (!u->owner->rt) return luaL_error(L, "runtime is closed");
    lua_settop(L, 0); /* (the generic for's state and control) */
    int64_t now = mono_ns();
    if (u->s->moved_ns) event_done(u->s, now);
    if (u->rt->hold) {
        int rc = hold_here(L, u, mode, iter_hold_k);
        if (rc >= 0) return rc;
    }
    return iter_step(L, u, mode, now);
}

static int l_iter_value(lua_State *L)
{
    return iterate(L, MODE_VALUE);
}

static int l_iter_items(lua_State *L)
{
    return iterate(L, MODE_ITEMS);
}

/* stream:iterator(mode, stream, buf, slow [, retry_tid]) -> the iterator of
 * values (mode 0) or items (1) over the stream bound to buf. */
static int l_stream_iterator(lua_State *L)
{
    stream_ud *u = check_stream(L, 1);
    lua_Integer mode = luaL_checkinteger(L, 2);
    luaL_argcheck(L, mode == MODE_VALUE || mode == MODE_ITEMS, 2, "a value or items mode");
    luaL_checktype(L, 3, LUA_TTABLE);
    luaL_checktype(L, 4, LUA_TTABLE);
    luaL_checktype(L, 5, LUA_TFUNCTION);
    lua_settop(L, 6);
    if (!lua_isnil(L, 6)) {
        lua_pushlightuserdata(L, fs_lua_check_topic(L, u->rt, 6));
        lua_replace(L, 6);
    }
    lua_remove(L, 2);
    lua_pushcclosure(L, mode == MODE_VALUE ? l_iter_value : l_iter_items, 5);
    return 1;
}

/* stream:cursor() -> i, n, mode: the entry in hand (0: none), the entries in
 * the buffer, their mode. */
static int l_stream_cursor(lua_State *L)
{
    fs_stream *s = check_stream(L, 1)->s;
    lua_pushinteger(L, (lua_Integer)s->pos);
    lua_pushinteger(L, (lua_Integer)s->nbuf);
    lua_pushinteger(L, s->mode);
    return 3;
}

/* stream:seek(i [, mode]): puts the cursor at entry i (clamped to the buffer);
 * mode: the Lua side rewrote the buffer's entries in that mode. */
static int l_stream_seek(lua_State *L)
{
    fs_stream *s = check_stream(L, 1)->s;
    lua_Integer i = luaL_checkinteger(L, 2);
    if (!lua_isnoneornil(L, 3)) s->mode = (int)luaL_checkinteger(L, 3);
    s->pos = i < 0 ? 0 : (size_t)i > s->nbuf ? s->nbuf : (size_t)i;
    return 0;
}

/* stream:partition() -> the partition of the event in hand, or nil. */
static int l_stream_partition(lua_State *L)
{
    fs_stream *s = check_stream(L, 1)->s;
    if (s->pos < 1 || s->pos > s->ntaken) return 0;
    lua_pushinteger(L, s->taken[s->pos - 1]->m->partition);
    return 1;
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
    u->s->pos = u->s->nbuf = 0;
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
    rd_kafka_headers_t *h = fs_lua_event_headers(e);
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
    {"iterator", l_stream_iterator},
    {"take", l_stream_take},
    {"ack", l_stream_ack},
    {"bind", l_stream_bind},
    {"drop", l_stream_drop},
    {"cursor", l_stream_cursor},
    {"seek", l_stream_seek},
    {"partition", l_stream_partition},
    {"set_manual", l_stream_set_manual},
    {"ack_event", l_stream_ack_event},
    {"meta", l_stream_meta},
    {"raw", l_stream_raw},
    {NULL, NULL},
};

void fs_lua_open_stream(lua_State *L)
{
    luaL_newmetatable(L, STREAM_MT);
    lua_newtable(L);
    lua_pushvalue(L, -2);
    luaL_setfuncs(L, stream_methods, 1);
    lua_pushvalue(L, -2);
    lua_pushcclosure(L, l_stream_next, 1);
    lua_setfield(L, -2, "next");
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}
