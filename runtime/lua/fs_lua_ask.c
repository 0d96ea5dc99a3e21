/* fs_lua_ask: what request/reply (fstream/ask.lua) and channels
 * (fstream/channel.lua) need from C — a coroutine that parks until another
 * coroutine wakes it, a deadline passes or the worker stops; the reply
 * address of the event an agent holds; and the worker's reply reader.
 *
 * A park (fs_sched_park) holds nothing across the yield: the waker's data
 * travels in Lua tables, the resume carries only whether core.unpark woke
 * it.
 *
 * The reply reader (rt:replies_open/take/wait) is an assign-only consumer of
 * the worker's own reply topic, outside the consumer group: declaring it
 * changes no subscription, so the first ask neither rebalances the group nor
 * waits on a revocation that waits on the asking agent's event. It reads
 * every partition from the beginning (the topic is new with the process, and
 * kept over a reload: the reader belongs to the runtime, not to a Lua state)
 * and read_committed, so under exactly-once a reply shows once its
 * transaction committed. Its queue's eventfd only readies the one Lua task
 * that waits on it; the task takes the replies. */
#include <errno.h>
#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs_kafka.h"
#include "fs_log.h"
#include "fs_lua.h"
#include "fs_sched.h"

#define FS_REPLIES_BATCH 256

struct fs_replies {
    rd_kafka_t *rk;
    rd_kafka_queue_t *q;
    int fd;
    fs_io io;
    fs_co *waiter; /* the task parked in rt:replies_wait, cleared when it resumes or dies */
};

/* core.park([seconds]) -> true when core.unpark woke it, nothing when the
 * deadline passed first or the worker is stopping (the caller looks at
 * rt:stopping()). Without seconds it waits until woken, or the stop. */
static int l_park(lua_State *L)
{
    double secs = luaL_optnumber(L, 1, -1);
    fs_co *co = fs_sched_yieldable(L, "waiting for a reply or a channel must happen in an agent, task or timer");
    double ms = secs >= 0 ? ceil(secs * 1000) : -1;
    if (ms > 1e12) ms = 1e12; /* far enough: never reached, and fits the timer */
    return fs_sched_park(L, co, (int64_t)ms);
}

/* core.unpark(thread) -> whether the thread was parked and is now ready to
 * run (it then gets true from core.park). A thread that is not parked — a
 * coroutine that runs, sleeps, waits for events, or has ended — is left
 * alone: the waker's message stays where it put it. */
static int l_unpark(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTHREAD);
    lua_State *T = lua_tothread(L, 1);
    fs_co *co = *(fs_co **)lua_getextraspace(T);
    /* A thread that never was the scheduler's has NULL here; one it released
     * points at a dead record whose L is NULL. */
    if (!co || co->L != T || co->state != FS_CO_WAITING || co->wait != FS_WAIT_PARK) {
        lua_pushboolean(L, 0);
        return 1;
    }
    if (!lua_checkstack(T, 1)) return luaL_error(L, "out of memory");
    lua_pushboolean(T, 1);
    co->nargs = 1;
    fs_sched_ready(co);
    lua_pushboolean(L, 1);
    return 1;
}

/* core.reply_to() -> reply topic, correlation id of the event the running
 * agent coroutine holds, or nothing (no event in hand, or not an ask). Asked
 * once per stream:yield; a message without headers costs one lookup. */
static int l_reply_to(lua_State *L)
{
    fs_event *e = fs_lua_event_in_hand(L);
    if (!e) return 0;
    rd_kafka_headers_t *h = fs_lua_event_headers(e);
    const void *to, *id;
    size_t tl, il;
    if (!h || rd_kafka_header_get_last(h, "fstream-reply-to", &to, &tl) || !to ||
        rd_kafka_header_get_last(h, "fstream-correlation-id", &id, &il) || !id)
        return 0;
    lua_pushlstring(L, to, tl);
    lua_pushlstring(L, id, il);
    return 2;
}

/* ---- the reply reader ---- */

static void replies_wake(fs_io *io, uint32_t events)
{
    struct fs_replies *r = io->data;
    uint64_t v;
    (void)events;
    if (read(io->fd, &v, sizeof v) < 0 && errno != EAGAIN) fs_warn("eventfd read: %s", strerror(errno));
    if (r->waiter) {
        fs_co *co = r->waiter;
        r->waiter = NULL;
        fs_sched_ready(co);
    }
}

void fs_lua_replies_close(fs_rt *rt)
{
    struct fs_replies *r = rt->replies;
    if (!r) return;
    rt->replies = NULL;
    if (r->fd >= 0) {
        fs_io_del(&rt->loop, &r->io);
        close(r->fd);
    }
    if (r->q) rd_kafka_queue_destroy(r->q);
    if (r->rk) rd_kafka_destroy(r->rk);
    free(r);
}

/* rt:replies_open(topic_id) -> true, or false when the transport has no
 * reader (the in-memory one of fstream.testing: the caller reads the topic
 * with an agent instead). Raises when the reader cannot be made. Opening it
 * again (a reloaded version) keeps the one there is. */
static int l_rt_replies_open(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    fs_topic *t = fs_lua_check_topic(L, rt, 2);
    if (rt->replies) {
        lua_pushboolean(L, 1);
        return 1;
    }
    if (!rt->tp || !rt->tp->durable) {
        lua_pushboolean(L, 0);
        return 1;
    }
    struct fs_replies *r = calloc(1, sizeof *r);
    if (!r) return luaL_error(L, "out of memory");
    r->fd = -1;
    char err[512], group[512];
    snprintf(group, sizeof group, "%s-replies", rt->group);
    r->rk = fs_kafka_reader(rt->tp, group, err, sizeof err);
    rd_kafka_topic_partition_list_t *parts = NULL;
    if (!r->rk) goto fail;
    r->q = rd_kafka_queue_get_consumer(r->rk);
    parts = rd_kafka_topic_partition_list_new(t->partitions > 0 ? t->partitions : 1);
    if (!r->q || !parts) {
        snprintf(err, sizeof err, "out of memory");
        goto fail;
    }
    for (int32_t p = 0; p < t->partitions; p++)
        rd_kafka_topic_partition_list_add(parts, t->name, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_resp_err_t e = rd_kafka_assign(r->rk, parts);
    rd_kafka_topic_partition_list_destroy(parts);
    if (e) {
        snprintf(err, sizeof err, "cannot read %s: %s", t->name, rd_kafka_err2str(e));
        goto fail;
    }
    if (fs_kafka_watch_queue(&rt->loop, r->q, &r->fd, &r->io, replies_wake, r)) {
        snprintf(err, sizeof err, "cannot watch the reply queue: %s", strerror(errno));
        goto fail;
    }
    rt->replies = r;
    lua_pushboolean(L, 1);
    return 1;
fail:
    if (r->fd >= 0) close(r->fd);
    if (r->q) rd_kafka_queue_destroy(r->q);
    if (r->rk) rd_kafka_destroy(r->rk);
    free(r);
    return luaL_error(L, "reply reader: %s", err);
}

/* rt:replies_take() -> { {id, value, error}, ... }: the replies that arrived
 * (at most FS_REPLIES_BATCH; empty when none). id: the correlation id;
 * value: the JSON payload decoded (nil when absent); error: the answering
 * agent's failure, or why the value could not be decoded. Messages without
 * a correlation id are dropped. */
static int l_rt_replies_take(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    struct fs_replies *r = rt->replies;
    rd_kafka_message_t *msgs[FS_REPLIES_BATCH];
    ssize_t n = r ? rd_kafka_consume_batch_queue(r->q, 0, msgs, FS_REPLIES_BATCH) : 0;
    lua_createtable(L, n > 0 ? (int)n : 0, 0);
    int out = 0;
    for (ssize_t i = 0; i < n; i++) {
        rd_kafka_message_t *m = msgs[i];
        rd_kafka_headers_t *h = NULL;
        const void *id = NULL, *ev = NULL;
        size_t il = 0, el = 0;
        if (m->err) {
            if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) fs_warn("reply reader: %s", rd_kafka_message_errstr(m));
        } else if (!rd_kafka_message_headers(m, &h) &&
                   !rd_kafka_header_get_last(h, "fstream-correlation-id", &id, &il) && id) {
            if (rd_kafka_header_get_last(h, "fstream-error", &ev, &el)) ev = NULL;
            lua_createtable(L, 3, 0);
            lua_pushlstring(L, id, il);
            lua_rawseti(L, -2, 1);
            char derr[256];
            if (m->payload && fs_lua_push_payload(L, FS_CODEC_JSON, m->payload, m->len, derr, sizeof derr) == 0) {
                lua_rawseti(L, -2, 2);
            } else if (m->payload) {
                lua_pushfstring(L, "the reply could not be decoded: %s", derr);
                lua_rawseti(L, -2, 3);
            }
            if (ev) {
                lua_pushlstring(L, ev, el);
                lua_rawseti(L, -2, 3);
            }
            lua_rawseti(L, -2, ++out);
        }
        rd_kafka_message_destroy(m);
    }
    return 1;
}

static void replies_cancel(fs_co *co)
{
    struct fs_replies *r = co->pending;
    co->pending = NULL;
    if (r && r->waiter == co) r->waiter = NULL;
}

static int replies_wait_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    struct fs_replies *r = (struct fs_replies *)ctx;
    fs_co *co = fs_co_current(L);
    if (r->waiter == co) r->waiter = NULL;
    return 0;
}

/* rt:replies_wait(): parks the calling task until replies arrive (or the
 * worker stops: a park that fs_sched_unpark_all ends too). */
static int l_rt_replies_wait(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    struct fs_replies *r = rt->replies;
    if (!r) return luaL_error(L, "rt:replies_wait: no reply reader (closed: the worker stops)");
    fs_co *co = fs_sched_yieldable(L, "rt:replies_wait must be called from a task");
    if (r->waiter && r->waiter != co) return luaL_error(L, "rt:replies_wait: another task waits on the reply reader");
    r->waiter = co;
    fs_sched_wait(co, FS_WAIT_PARK, r, replies_cancel);
    return lua_yieldk(L, 0, (lua_KContext)r, replies_wait_k);
}

/* rt:replies_close(): the reader task ends because the worker stops: the
 * reader goes before the transport (the embedded cluster with it) closes. */
static int l_rt_replies_close(lua_State *L)
{
    fs_lua_replies_close(fs_lua_check_rt(L, 1));
    return 0;
}

const luaL_Reg fs_lua_ask_methods[] = {
    {"replies_close", l_rt_replies_close},
    {"replies_open", l_rt_replies_open},
    {"replies_take", l_rt_replies_take},
    {"replies_wait", l_rt_replies_wait},
    {NULL, NULL},
};

const luaL_Reg fs_lua_ask_funcs[] = {
    {"park", l_park},
    {"unpark", l_unpark},
    {"reply_to", l_reply_to},
    {NULL, NULL},
};
