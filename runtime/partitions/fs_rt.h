/* fs_rt: one worker's runtime — the object graph every layer from here up
 * shares (layer: partitions, the lowest that reads it).
 *
 * One worker = one process = one Lua VM = one fs_rt. It holds the topics with
 * their partitions, the agents with their streams, the tables, the counters,
 * and each subsystem's own state: the scheduler (embedded), the transport
 * (fs_transport.h: librdkafka or the in-memory log), and opaque pointers to
 * the state of the layers above (checkpoint, assignment, tables, reload),
 * which only those layers dereference. Lower layers (core, transport) never
 * see an fs_rt.
 *
 * Lifetimes: topics, partitions and agents live as long as the runtime.
 * Events live in batches; an event is released when every agent that received
 * it has acknowledged it, and its batch (and librdkafka messages) when all of
 * its events are released. */
#ifndef FS_RT_H
#define FS_RT_H

#include <librdkafka/rdkafka.h>
#include <lua.h>
#include <stdint.h>

#include "fs_buf.h"
#include "fs_fatal.h"
#include "fs_loop.h"
#include "fs_part.h"
#include "fs_transport.h"
#include "fs_sched.h"

enum { FS_CODEC_RAW = 0, FS_CODEC_JSON = 1 };
/* A codec value is its kind in the low byte; a json codec carries its decoder's
 * big-integer mode (FS_JSON_BIG_*) above it ("json:string" in Lua). */
#define FS_CODEC_KIND(c) ((c) & 0xff)
#define FS_CODEC_BIG(c) ((c) >> 8)

typedef struct fs_rt fs_rt;
typedef struct fs_topic fs_topic;
typedef struct fs_part fs_part;
typedef struct fs_agent fs_agent;
typedef struct fs_stream fs_stream;
typedef struct fs_event fs_event;
typedef struct fs_batch fs_batch;
typedef struct fs_waiter fs_waiter;
typedef struct fs_table fs_table;
struct fs_store;
struct fs_reload;
struct fs_tables_state;

struct fs_topic {
    /* What the transport reads and writes (fs_transport.h): name, partitions,
     * resolved, compact and its handle tx. First, so that a transport sees
     * an fs_topic as an fs_txtopic without this header. */
    union {
        fs_txtopic txt;
        struct FS_TXTOPIC_MEMBERS;
    };
    fs_rt *rt;
    int id;
    int key_codec, value_codec;
    int table_input;       /* its events write tables: partition p holds tables' partition p */
    fs_agent **subs;
    int nsubs;
    fs_part **parts;
    int nparts;
    fs_table *table;  /* set on a table's changelog topic */
    int64_t produced, consumed;
};

struct fs_event {
    rd_kafka_message_t *m;
    fs_batch *batch;
    fs_part *part;
    uint64_t seq;
    uint32_t gen;
    int32_t refs;
    int64_t ts;               /* milliseconds since the epoch, -1 unknown */
    rd_kafka_headers_t *hdrs; /* owned here only for in-memory messages */
};

struct fs_batch {
    int live;
    int owned; /* 1: messages were allocated by fs_memlog, 0: librdkafka's */
    int n;
    fs_event ev[];
};

/* Bounds of the agents' processing-time histogram, in nanoseconds (the
 * last bucket is everything above the last bound). */
#define FS_LAT_BOUNDS                                                                          \
    {100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000, 25000000, 50000000,          \
     100000000, 250000000, 500000000, 1000000000, 2500000000, 5000000000, 10000000000}
enum { FS_LAT_NBOUNDS = 16 };

/* How long an agent's events took, from its cursor moving onto one to the
 * next move (fs_lua_stream.c measures; /metrics reads). */
struct fs_agent_stats {
    int64_t processed;
    int64_t ns_sum;
    int64_t buckets[FS_LAT_NBOUNDS + 1];
};

struct fs_agent {
    fs_rt *rt;
    int id;
    char *name;
    struct fs_agent_stats stats;
    fs_event **q; /* ring of events not yet handed to a stream */
    size_t qcap, qhead, qlen;
    fs_stream **streams;
    int nstreams;
    int closed;
};

/* One agent instance's view of its agent's input. Events handed out by the
 * last take are acknowledged by the next take (the agent asked for more).
 * The agent's cursor in that take is owned here: the Lua side moves it with
 * stream methods and asks for it, C never reads it out of a Lua table. */
struct fs_stream {
    fs_agent *agent;
    fs_event **taken;
    size_t ntaken, captaken;
    size_t nacked; /* taken[0..nacked) are already acknowledged */
    int lua_ref;   /* the Lua buffer takes fill (fs_lua_stream.c binds it), or 0 */
    int manual;    /* noack: events wait in `open` until the agent acks each */
    fs_event **open;
    size_t nopen, capopen;
    fs_co *waiter;
    fs_co *reader; /* the coroutine that last took from this stream, until it dies */
    /* Cursor: the buffer holds nbuf entries (pairs in items mode) matching
     * taken[0..nbuf); the agent is at entry pos (0: none handed out yet), and
     * everything before pos is finished. fence: a revocation is pending. */
    size_t pos, nbuf;
    int mode;
    int fence;
    int held; /* its reader waits because of the hold (woken when it is released) */
    int64_t moved_ns; /* monotonic time the cursor moved onto the event in hand, 0: none */
    /* Registered by the buffer's owner (fs_lua_stream.c binds it): a fence
     * dropped entries, entry `from` moves to `to` (1-based). ctx: what the
     * caller of fs_stream_fence_step passed, NULL from fs_fence_streams. */
    void (*move)(fs_stream *s, size_t from, size_t to, void *ctx);
};

/* A send_and_wait in flight. Owned by the delivery report; co is cleared if
 * the coroutine dies first. */
struct fs_waiter {
    fs_co *co;
    int epoch;
    rd_kafka_resp_err_t err;
    int32_t partition;
    int64_t offset;
    int done; /* delivered during the send (the in-memory log): no report follows */
    int aborted; /* discarded by a transaction abort (exactly-once): it was never sent */
};

struct fs_rt {
    /* The main VM: the main thread of the state that runs the app. Set when the
     * runtime is created (core.new) and handed to the next state by a hot
     * reload (core.adopt, fs_reload.c) — never "the state that called last". */
    lua_State *L;
    fs_loop loop;
    int tables_in_lua;  /* fstream.testing: tables live in Lua only, no LMDB, no changelog */
    int handle_signals; /* the worker takes SIGTERM/SIGINT/SIGHUP (not an in-process test) */
    char *group;
    char *broker; /* bootstrap servers ("" for in-memory) */
    int embedded; /* memory:// — the worker hosts a mock cluster */

    fs_transport *tp; /* where messages come from and go to; owned (closed by fs_worker_close) */
    int sfd; /* signalfd */
    fs_io sio;
    int subscribed; /* the worker started consuming */
    int prestart; /* agents take their first steps before the first subscription */
    int paused; /* fetching paused: agents have max_queued events waiting */
    /* What the worker tells the layers above it, registered by them (one
     * each; the worker never calls them by name): SIGHUP (the reload), the
     * stop (the HTTP client cancels its transfers), a round of
     * fstream.testing's run_until_idle (the HTTP client progresses without
     * the loop; returns 1 while it has work), the runtime freed (the reload
     * lets go of its state). data outlives the registration. */
    struct {
        void (*fn)(void *data);
        void *data;
    } on_hup, on_close, on_free;
    struct {
        int (*fn)(void *data);
        void *data;
    } on_idle;
    /* Checkpoints (fs_checkpoint.h) and assignment/revocation (fs_assign.h):
     * created with the transport, freed when it closes. */
    struct fs_ckpt *ckpt;
    struct fs_assign *assign;
    int64_t wall_offset_ms; /* fake clock: epoch ms at fake time 0 */

    fs_topic **topics;
    int ntopics;
    fs_agent **agents;
    int nagents;
    fs_table **tables;
    int ntables;
    rd_kafka_t *recovery; /* assign-only consumer that replays changelogs */
    rd_kafka_t *tail;     /* assign-only consumer following global tables' changelogs */
    rd_kafka_queue_t *tq;
    int tfd, tail_pending;
    fs_io tio;
    int table_hook_ref;   /* fs_lua.c: the Lua function the table hook calls */
    struct fs_replies *replies; /* fs_lua_ask.c: the reply reader of asks, or NULL */
    struct fs_tables_state *tables_state; /* fs_table.c: its hook, holds, replays */
    int standby_replicas;       /* the app's standby_replicas (0: none) */
    struct fs_standby *standby; /* fs_standby.c: the standby copies this worker keeps, or NULL */

    fs_sched sched; /* coroutines (fs_sched.h); its VM is L */

    /* offsets and checkpoints */
    int epoch;
    int64_t inflight[2]; /* undelivered messages per epoch parity */
    int64_t epoch_sends; /* sends of the current epoch (a checkpoint with none and no offset to
                            commit needs no transaction) */
    int64_t epoch_bytes; /* their keys' and values' bytes */
    /* Exactly-once: how much the open transaction may take in (set by the
     * checkpoint, fs_checkpoint.c; 0: no bound). The send that reaches either
     * bound sets txn_full: no new event is handed to agents (fs_worker_poll;
     * they finish those they have) until a checkpoint seals the transaction
     * (its stage clears txn_full; fs_ckpt_poll starts one at once). */
    int64_t txn_cap_sends, txn_cap_bytes;
    int txn_full;
    /* Exactly-once (processing_guarantee): the checkpoint strategy is the
     * transactional one; txn_id is "<group>-<slot id>" (slot_fd: the flock'ed
     * slot file under <data_dir>/.eos, held for the process's life). */
    int eos;
    char *data_dir;
    char *txn_id;
    int slot_fd;
    int test_hooks; /* the runtime has the test metatable's methods (specs only) */
    int64_t txn_commits, txn_aborts, resets;
    int64_t txn_last_ms; /* duration of the last transaction commit (ms) */
    /* The hold (fs_stream_cursor.c): while set, agents stop at their next
     * event boundary (stream next/take wait) until it is cleared; nothing is
     * dropped. passes: ids of the coroutines in a window close pass (Lua says
     * when one starts and ends; a dead one no longer counts). */
    int hold;
    FS_VEC(int) passes;
    int64_t commit_interval_ms;
    fs_timer commit_timer;
    int64_t queued;        /* events waiting in agent queues */
    int64_t max_queued;    /* stop fetching above this (back-pressure) */
    int64_t queued_bytes;  /* their keys' and values' bytes */
    int64_t max_queued_bytes; /* stop fetching above this too (max_queued_bytes) */
    int64_t commits, events_in, events_acked, decode_errors, delivery_errors;
    int64_t changelog_records, lmdb_writes, recovered_records;
    int best_effort; /* the send being made is a dead letter (see dr_cb) */

    /* fs_http.c: libcurl multi driven by this loop */
    void *curlm;
    fs_timer http_timer;
    int http_inflight;

    /* lifecycle */
    int stopping, stopped, exit_code, signals;
    int closing; /* finish() runs: no coroutine will run again, nothing waits for one */
    int64_t stop_deadline;
    int fatal;
    char fatal_msg[512];

    fs_buf kbuf, vbuf;

    /* hot reload (fs_reload.c) */
    void *ud;                 /* the Lua object that owns this runtime in L (fs_lua.c) */
    struct fs_reload *reload; /* NULL unless the worker's loop can swap states */
    int draining;             /* a reload waits for agents: no fetching, no checkpoints */
    int rebinding;            /* the new version is declaring its topics, tables and agents */
    struct fs_carry {
        char *key;
        double value;
    } *carry; /* values that outlive a reload (timers' next due times) */
    int ncarry;
};

/* fs_stream.c */
fs_topic *fs_topic_find(fs_rt *rt, const char *name);
fs_part *fs_part_get(fs_topic *t, int32_t partition); /* created REVOKED on first use */
/* Events of a fencing partition still waiting in agent queues are dropped:
 * whoever owns the partition next receives them again. */
void fs_part_drop_queued(fs_rt *rt, fs_part *p);
fs_batch *fs_batch_new(int n, int owned);
/* Hands one message to every agent subscribed to its topic; takes ownership of m. */
void fs_dispatch(fs_rt *rt, fs_batch *b, rd_kafka_message_t *m, fs_topic *t, int64_t ts,
                 rd_kafka_headers_t *hdrs);
void fs_batch_done(fs_batch *b); /* dispatch finished adding to b */
void fs_event_ack(fs_rt *rt, fs_event *e);
/* What an event counts for in queued_bytes: its key and value. */
static inline int64_t fs_event_bytes(const fs_event *e)
{
    return (int64_t)(e->m->len + e->m->key_len);
}
void fs_event_release(fs_rt *rt, fs_event *e);
void fs_stream_ack_taken(fs_rt *rt, fs_stream *s);
/* noack streams: acknowledges one event handed out earlier; -1 if unknown. */
int fs_stream_ack_event(fs_rt *rt, fs_stream *s, fs_event *e);
int fs_stream_open_add(fs_stream *s, fs_event *e);
int fs_stream_open_remove(fs_stream *s, const fs_event *e);
void fs_agent_close(fs_rt *rt, fs_agent *a);
/* At a stop past its deadline: lets go of the events the agent still holds, unacknowledged. */
void fs_agent_release_held(fs_rt *rt, fs_agent *a);
/* Frees an agent whose events nobody processed: they are released, not acknowledged. */
void fs_agent_free(fs_rt *rt, fs_agent *a, lua_State *L);
void fs_wake_streams(fs_rt *rt); /* wakes every stream waiting in take, and every park (stop) */

/* fs_stream_cursor.c: acknowledges every event an agent has moved past (each
 * stream's cursor); called before offsets are snapshotted. */
void fs_sync_acks(fs_rt *rt);
/* fs_stream_cursor.c: sets or clears the fence of every stream; clearing
 * drops from the agents' buffers the events of revoking partitions that they
 * have not started yet. */
void fs_fence_streams(fs_rt *rt, int on);
/* fs_stream_cursor.c: the agent asks for its next event while s is fenced:
 * everything up to its cursor is finished, the rest of revoked partitions is
 * dropped (ctx is handed to s->move). */
void fs_stream_fence_step(fs_rt *rt, fs_stream *s, void *ctx);
/* fs_stream_cursor.c: 1 when no agent is in the middle of an event of a revoking partition. */
int fs_streams_clear(fs_rt *rt);
/* fs_stream_cursor.c: the hold. on: agents stop at their next event boundary
 * (stream next/take wait); off: those waiting go on. */
void fs_hold_agents(fs_rt *rt, int on);
/* 1 when every stream is at an event boundary (no event at a cursor
 * unacknowledged; noack streams are the agent's business) and no window
 * close pass is under way. */
int fs_streams_quiet(fs_rt *rt);
/* A window close pass starts (on) or ends in coroutine co_id (0: none). -1 out of memory. */
int fs_window_pass(fs_rt *rt, int co_id, int on);

/* fs_send.c: the runtime's sends (agents, tables, dead letters), counted
 * in the checkpoint epoch they belong to. ts_ms: the message timestamp (ms since the epoch), 0 for "now". Takes
 * ownership of hdrs. A waiter delivered at once has done set. (Until the
 * bindings build an fs_msg and call rt->tp->ops->produce themselves.) */
int fs_produce(fs_rt *rt, fs_topic *t, int32_t partition, const void *key, size_t klen,
               const void *val, size_t vlen, rd_kafka_headers_t *hdrs, int64_t ts_ms,
               fs_waiter *w, char *err, size_t errlen);

/* Records that the worker cannot go on (fs_fatal.h): any layer may, without
 * calling up into the worker. */
__attribute__((format(printf, 2, 3))) static inline void fs_rt_fatal(fs_rt *rt, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fs_fatal_vset(&rt->fatal, rt->fatal_msg, sizeof rt->fatal_msg, fmt, ap);
    va_end(ap);
}

#endif
