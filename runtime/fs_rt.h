/* fs_rt: one worker's runtime — the objects every subsystem shares.
 *
 * One worker = one process = one lua_State = one fs_rt. The transport is either
 * librdkafka (fs_kafka.c: a real cluster, or the embedded mock cluster) or the
 * in-memory log used by fstream.testing (fs_memlog.c); everything between
 * "a batch of messages arrived" and "an offset may be committed" (fs_stream.c)
 * is shared by both.
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
#include "fs_loop.h"
#include "fs_transport.h"

enum { FS_CODEC_RAW = 0, FS_CODEC_JSON = 1 };
/* A codec value is its kind in the low byte; a json codec carries its decoder's
 * big-integer mode (FS_JSON_BIG_*) above it ("json:string" in Lua). */
#define FS_CODEC_KIND(c) ((c) & 0xff)
#define FS_CODEC_BIG(c) ((c) >> 8)
enum { FS_CO_READY = 1, FS_CO_WAITING, FS_CO_RUNNING, FS_CO_DEAD };
enum { FS_WAIT_NONE = 0, FS_WAIT_SLEEP, FS_WAIT_TAKE, FS_WAIT_DELIVERY, FS_WAIT_YIELD, FS_WAIT_IO };
enum { FS_KIND_AGENT = 0, FS_KIND_TASK = 1 };

typedef struct fs_rt fs_rt;
typedef struct fs_co fs_co;
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

/* A Lua coroutine run by the scheduler (agent instance, task, timer). */
struct fs_co {
    fs_rt *rt;
    lua_State *L;
    int ref;      /* registry ref keeping the thread alive */
    int exit_ref; /* registry ref of on_exit(ok, err, traceback), or LUA_NOREF */
    int id;
    int kind;
    int state;
    int wait;  /* FS_WAIT_* while state == FS_CO_WAITING */
    int nargs; /* values already pushed on L for the next resume */
    fs_timer timer;
    fs_stream *stream;  /* FS_WAIT_TAKE */
    fs_waiter *waiter;  /* FS_WAIT_DELIVERY */
    void *pending;      /* FS_WAIT_IO: an operation owned by its subsystem */
    void (*cancel)(fs_co *co); /* called if the coroutine dies while waiting */
    fs_co *ready_next;  /* ready queue link */
    fs_co *prev, *next; /* list of live coroutines */
    int64_t run_since; /* monotonic ms when the current resume began */
    int interrupted;   /* past agent_timeout: every hook call raises kill_msg */
    char kill_msg[320];
};

/* A partition this worker consumes: tracks which offsets every agent finished. */
struct fs_part {
    fs_topic *topic;
    int32_t id;
    int assigned;
    int revoking; /* revoked, waiting for agents to finish its events in progress */
    uint32_t gen; /* bumped on assign/revoke; events of an older generation are stale */
    struct fs_slot {
        int64_t offset;
        int32_t pending; /* agents that still hold the event */
    } *ring;
    size_t rcap, rhead, rlen;
    uint64_t rbase;     /* sequence number of ring[rhead] */
    int64_t next;       /* offset after the last delivered event, -1 if none yet */
    int64_t committed;  /* last committed offset, -1 if none */
    int64_t snap;       /* committable offset captured by the running checkpoint */
    int64_t delivered;  /* events delivered since assignment (stats) */
};

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

struct fs_agent {
    fs_rt *rt;
    int id;
    char *name;
    fs_event **q; /* ring of events not yet handed to a stream */
    size_t qcap, qhead, qlen;
    fs_stream **streams;
    int nstreams;
    int closed;
};

/* One agent instance's view of its agent's input. Events handed out by the
 * last take are acknowledged by the next take (the agent asked for more). */
struct fs_stream {
    fs_agent *agent;
    fs_event **taken;
    size_t ntaken, captaken;
    size_t nacked; /* taken[0..nacked) are already acknowledged */
    int lua_ref;   /* the Lua Stream table, whose field `i` is the agent's position */
    int manual;    /* noack: events wait in `open` until the agent acks each */
    fs_event **open;
    size_t nopen, capopen;
    fs_co *waiter;
    fs_co *reader; /* the coroutine that last took from this stream, until it dies */
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
};

struct fs_rt {
    lua_State *L; /* main state: on_exit callbacks run here */
    fs_loop loop;
    int tables_in_lua;  /* fstream.testing: tables live in Lua only, no LMDB, no changelog */
    int handle_signals; /* the worker takes SIGTERM/SIGINT/SIGHUP (not an in-process test) */
    char *group;
    char *broker; /* bootstrap servers ("" for in-memory) */
    int embedded; /* memory:// — the worker hosts a mock cluster */

    fs_transport *tp; /* where messages come from and go to; owned (closed by fs_kafka_close) */
    /* The transport's librdkafka consumer (NULL for the in-memory log), for
     * the code that still calls librdkafka itself (rebalance and checkpoint
     * below fs_kafka.c's line, fs_reload.c). Owned by the transport. */
    rd_kafka_t *consumer;
    int sfd; /* signalfd */
    fs_io sio;
    int consume_pending; /* written by the revocation code; read by nobody (goes with it) */
    int subscribed; /* the worker started consuming */
    int prestart; /* agents take their first steps before the first subscription */
    int paused; /* fetching paused: agents have max_queued events waiting */
    rd_kafka_topic_partition_list_t *revoke; /* a revocation waiting for agents, or NULL */
    int64_t revoke_deadline;
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
    struct fs_tables_state *tables_state; /* fs_table.c: its hook, holds, replays */
    /* An assignment waiting for its tables' recovery (fs_tables_hold): the
     * consumer is given the partitions once every held partition is done. */
    rd_kafka_topic_partition_list_t *assigning;
    int assign_waits, assign_failed;

    /* scheduler */
    fs_co *ready_head, *ready_tail;
    fs_co *live;
    int nlive, nlive_agents, next_co_id;
    fs_co *current;
    int64_t agent_timeout_ms; /* a coroutine running this long without yielding is interrupted */

    /* offsets and checkpoints */
    int epoch;
    int64_t inflight[2]; /* undelivered messages per epoch parity */
    int ckpt_active, ckpt_epoch;
    int64_t commit_interval_ms;
    fs_timer commit_timer;
    int64_t queued;        /* events waiting in agent queues */
    int64_t max_queued;    /* stop fetching above this (back-pressure) */
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

/* fs_sched.c */
fs_co *fs_co_current(lua_State *L);
int fs_co_ended(lua_State *thread); /* a scheduler coroutine that has ended (died, killed) */
int fs_sched_spawn(fs_rt *rt, lua_State *L, int fn_idx, int exit_idx, int kind);
void fs_sched_ready(fs_co *co);
int fs_sched_run_ready(fs_rt *rt); /* resumes every ready coroutine once; returns count */
void fs_sched_kill(fs_co *co);
void fs_sched_kill_all(fs_rt *rt);
int fs_sched_sleep(lua_State *L, fs_co *co, int64_t ms);
int fs_sched_traceback(lua_State *L); /* message handler for lua_pcall */
/* Runaway detection (see fs_sched.c). fs_sched_watch_init: on the thread that
 * runs Lua, once. fs_sched_watch: from the watch thread, every tick — pokes the
 * Lua thread when the running coroutine is overdue, past stop_deadline (0:
 * none), or at once with poke_now. fs_sched_track_coroutines: makes the
 * coroutine library of L report which thread executes. */
int fs_sched_watch_init(void);
void fs_sched_watch(int64_t now, int64_t stop_deadline, int poke_now);
int64_t fs_sched_clock_ms(void);
void fs_sched_track_coroutines(lua_State *L);

/* fs_stream.c */
fs_topic *fs_topic_find(fs_rt *rt, const char *name);
fs_part *fs_part_get(fs_topic *t, int32_t partition);
void fs_part_assign(fs_part *p, int64_t committed);
void fs_part_drop_queued(fs_rt *rt, fs_part *p);
void fs_part_revoke(fs_rt *rt, fs_part *p);
void fs_part_restart(fs_part *p); /* forget events in flight; fetching restarts (reload) */
int64_t fs_part_committable(const fs_part *p);
fs_batch *fs_batch_new(int n, int owned);
/* Hands one message to every agent subscribed to its topic; takes ownership of m. */
void fs_dispatch(fs_rt *rt, fs_batch *b, rd_kafka_message_t *m, fs_topic *t, int64_t ts,
                 rd_kafka_headers_t *hdrs);
void fs_batch_done(fs_batch *b); /* dispatch finished adding to b */
void fs_event_ack(fs_rt *rt, fs_event *e);
void fs_event_release(fs_rt *rt, fs_event *e);
void fs_stream_ack_taken(fs_rt *rt, fs_stream *s);
/* noack streams: acknowledges one event handed out earlier; -1 if unknown. */
int fs_stream_ack_event(fs_rt *rt, fs_stream *s, fs_event *e);
int fs_stream_open_add(fs_stream *s, fs_event *e);
int fs_stream_open_remove(fs_stream *s, const fs_event *e);
void fs_agent_close(fs_rt *rt, fs_agent *a);
/* Frees an agent whose events nobody processed: they are released, not acknowledged. */
void fs_agent_free(fs_rt *rt, fs_agent *a, lua_State *L);
void fs_wake_streams(fs_rt *rt); /* wakes every stream waiting in take (stop) */

/* fs_lua.c: acknowledges every event an agent has moved past (reads each
 * stream's position from Lua); called before offsets are snapshotted. */
void fs_sync_acks(fs_rt *rt);
/* fs_lua.c: sets or clears the `fence` flag of every Lua stream, and drops
 * events of revoking partitions that agents have not started yet. */
void fs_fence_streams(fs_rt *rt, int on);
/* fs_lua.c: 1 when no agent is in the middle of an event of a revoking partition. */
int fs_streams_clear(fs_rt *rt);
/* fs_lua_stream.c: co died; nobody is in the middle of an event of the streams
 * it read any more. failed: its on_error policy has dealt with the event in
 * hand, which is acknowledged; otherwise (killed) it stays unacknowledged. */
void fs_streams_orphan(fs_rt *rt, fs_co *co, int failed);

/* fs_kafka.c, the worker's side of the transport (fs_transport.h declares
 * the transport itself). */
/* Opens the worker's transport: librdkafka for broker (memory:// or
 * kafka://...), the in-memory log when broker is NULL. Registers the worker's
 * callbacks; sets rt->tp, rt->broker, rt->embedded. */
int fs_rt_open_transport(fs_rt *rt, const char *broker, char *err, size_t errlen);
/* Resolves the topics, holds what the worker holds from the start, runs the
 * agents' first steps and subscribes. */
int fs_worker_start(fs_rt *rt, char *err, size_t errlen);
/* The loop's turn of the transport: revocations, back-pressure, deliveries,
 * fetching. Returns how many messages it dispatched. */
int fs_worker_poll(fs_rt *rt);
/* Learns the partition count of each topic from the broker's metadata, creating
 * missing ones with their `partitions` first (bounded: 10 s for the metadata,
 * 10 s more for created topics to appear). Blocks: start-up and reloads only. */
int fs_kafka_resolve(fs_rt *rt, fs_topic **ts, int n, char *err, size_t errlen);
void fs_kafka_close(fs_rt *rt);
/* ts_ms: the message timestamp (ms since the epoch), 0 for "now". Takes
 * ownership of hdrs. A waiter delivered at once has done set. (Until the
 * bindings build an fs_msg and call rt->tp->ops->produce themselves.) */
int fs_produce(fs_rt *rt, fs_topic *t, int32_t partition, const void *key, size_t klen,
               const void *val, size_t vlen, rd_kafka_headers_t *hdrs, int64_t ts_ms,
               fs_waiter *w, char *err, size_t errlen);
void fs_checkpoint_begin(fs_rt *rt);
void fs_checkpoint_poll(fs_rt *rt);
int fs_checkpoint_sync(fs_rt *rt, int timeout_ms); /* flush + commit everything now */
/* Before a reload: stage, deliver, write LMDB; commit without failing on a refused commit. */
int fs_checkpoint_reload(fs_rt *rt, int timeout_ms);
/* After a reload, or when an agent added a topic at run time (group_by inside
 * the agent): producer handles for new topics, create them, subscribe to what
 * the agents read. Returns 1 when the subscription changed (the group
 * rebalances), 0 when not, -1 on error. */
int fs_kafka_rebind(fs_rt *rt, char *err, size_t errlen);
/* Creates the topics declared since the last call and opens their producer
 * handles, without touching the subscription. */
int fs_kafka_open_topics(fs_rt *rt, char *err, size_t errlen);
void fs_kafka_revoke_poll(fs_rt *rt); /* completes a pending revocation when agents allow */
/* Changelog readers (fs_table.c) until the transport has a reader operation. */
rd_kafka_t *fs_kafka_new_consumer(fs_rt *rt, const char *group, char *err, size_t errlen);
int fs_kafka_watch_queue(fs_rt *rt, rd_kafka_queue_t *q, int *fd, fs_io *io);
rd_kafka_t *fs_kafka_consumer(fs_transport *tp);

/* fstream.testing's send into the in-memory log (old form of
 * fs_memlog_append_external; does not take hdrs). */
int fs_memlog_append(fs_rt *rt, fs_topic *t, int32_t partition, const void *key, size_t klen,
                     const void *val, size_t vlen, rd_kafka_headers_t *hdrs, int64_t ts_ms,
                     int external, int32_t *part_out, int64_t *offset_out);

/* fs_http.c */
int fs_http_request(lua_State *L); /* core.http_request{...}: yields until done */
void fs_http_poll(fs_rt *rt);       /* test transport: progress transfers without epoll */
void fs_http_close(fs_rt *rt);

/* fs_reload.c: hot reload. main.c provides the factory of fresh states (its
 * bundled modules); without it (the in-process specs) reload is unavailable. */
extern lua_State *(*fs_host_new_state)(void);
int fs_reload_setup(fs_rt *rt, const char *path, const char *broker, const char *store, int watch,
                    const char *broker_url, const char *data_dir, char *err, size_t errlen);
int fs_reload_watching(fs_rt *rt);
int fs_reload_watch(fs_rt *rt, const char *const *files, int n); /* replaces the watched set */
void fs_reload_request(fs_rt *rt, const char *why, int64_t delay_ms);
void fs_reload_poll(fs_rt *rt);
void fs_reload_free(fs_rt *rt);
/* Called by the new version once it declared everything (rt:rebound()). */
int fs_reload_rebound(fs_rt *rt, char *err, size_t errlen);
double *fs_carry(fs_rt *rt, const char *key, int create);

/* fs_runtime.c */
int64_t fs_rt_wall_ms(fs_rt *rt);
void fs_rt_fatal(fs_rt *rt, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int fs_rt_run(fs_rt *rt);
int fs_rt_run_until_idle(fs_rt *rt, int64_t max_ms);
void fs_rt_request_stop(fs_rt *rt, const char *why);
/* SIGTERM/SIGINT are taken by a thread of their own (a second one exits the
 * process at once, whatever the loop is doing). fs_signals_start runs once per
 * process, before the worker connects; fs_rt_poll_signals turns a received
 * signal into a stop request — the loop calls it, and so do places that may
 * run long without the loop (the count hook, changelog recovery).
 * fs_signals_stop_requested: a signal arrived (any thread may ask). */
int fs_signals_start(void);
int fs_watch_start(void); /* only the runaway watch (in-process runtimes) */
void fs_rt_poll_signals(fs_rt *rt);
int fs_signals_stop_requested(void);

#endif
