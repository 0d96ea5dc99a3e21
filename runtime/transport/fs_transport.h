/* fs_transport: where messages come from and go to — a small table of
 * operations with two implementations:
 *
 *   fs_kafka.c   librdkafka: a real cluster, or the embedded mock cluster of
 *                memory:// (there the worker is its group's only member and
 *                assigns itself every partition instead of joining; it reports
 *                that through the same assigned/revoked callbacks a group
 *                rebalance uses, so the layers above cannot tell the two apart).
 *   fs_memlog.c  the in-memory log of fstream.testing: partition logs kept for
 *                the runtime's life, delivered synchronously, no group.
 *
 * Layer 2: this header and its implementations call only the core (fs_loop,
 * fs_log) and librdkafka. They know nothing of Lua, agents, tables or
 * checkpoints. What an upper layer must learn (a batch was fetched, a message
 * was delivered, partitions were assigned, a commit finished) it learns through
 * the callbacks it registered in fs_transport_cb — like fs_loop's timers and
 * I/O handlers, never through a call upwards.
 *
 * No "if (test)" outside the implementations: what differs between them is
 * either an operation here or a property named for what it means
 * (fs_transport.durable, .holds_all).
 *
 * Lifetimes: a transport is created by its implementation's constructor
 * (fs_kafka_new, fs_memlog_new), lives as long as the worker's runtime
 * (across hot reloads) and is freed by ops->close. It never owns a topic:
 * fs_topic belongs to the runtime; the transport keeps a private handle in
 * fs_topic.tx (freed at close) and reads name/partitions/compact. */
#ifndef FS_TRANSPORT_H
#define FS_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

#include "fs_loop.h"

typedef struct fs_transport fs_transport;
typedef struct fs_topic fs_topic;
struct fs_waiter;
/* A fetched message is librdkafka's message struct (the in-memory log makes
 * one). fs_event stores it and the codecs read payload and key from it without
 * a copy; a forward declaration keeps this header free of librdkafka. Only the
 * code that reads the fields (fs_stream, fs_lua_stream) includes rdkafka.h. */
struct rd_kafka_message_s;
struct rd_kafka_headers_s;
struct fs_memlog;

/* ---- topics ----
 * A topic belongs to the runtime (fs_topic, fs_rt.h); what a transport reads
 * and writes of it comes first in it, as these members, so the transport
 * takes an fs_topic * as an fs_txtopic * (FS_TXT) and includes nothing of
 * the layers above. */
#define FS_TXTOPIC_MEMBERS                                                                   \
    {                                                                                        \
        char *name;                                                                          \
        int partitions; /* the broker's count once resolved; before, the count to create */ \
        int resolved;   /* partitions is the broker's (ops->resolve) */                     \
        int compact;    /* created with cleanup.policy=compact (a changelog) */              \
        long long retention_ms; /* > 0: created with that retention.ms (reply topics) */    \
        void *tx;       /* the transport's own handle, owned and freed by it */              \
    }
typedef struct fs_txtopic FS_TXTOPIC_MEMBERS fs_txtopic;
#define FS_TXT(t) ((fs_txtopic *)(void *)(t))

/* ---- partition lists ----
 * A project struct, not rd_kafka_topic_partition_list_t, so that the layers
 * above (partitions, checkpoint, reload) build and read lists without
 * librdkafka's headers and without its allocation/copy rules, and so that the
 * in-memory log can take the same lists. The kafka implementation converts at
 * its boundary (only at rebalances and commits: never per message).
 * Ownership: the list owns `items` and every topic name in it (copied in by
 * fs_tplist_add); fs_tplist_free releases them. A list handed to a callback
 * is valid only during the call. */
typedef struct fs_tp {
    char *topic;
    int32_t partition;
    int64_t offset; /* start/commit offset; FS_OFFSET_INVALID: none (the committed one) */
    int err;        /* per-partition result of a commit or committed query, 0 if fine */
} fs_tp;

#define FS_OFFSET_INVALID (-1001) /* same value as RD_KAFKA_OFFSET_INVALID */
#define FS_OFFSET_BEGINNING (-2)

typedef struct fs_tplist {
    fs_tp *items;
    int len, cap;
} fs_tplist;

/* Appends (topic, partition, offset); NULL when out of memory. */
fs_tp *fs_tplist_add(fs_tplist *l, const char *topic, int32_t partition, int64_t offset);
fs_tp *fs_tplist_find(const fs_tplist *l, const char *topic, int32_t partition);
int fs_tplist_copy(fs_tplist *dst, const fs_tplist *src); /* dst empty; -1 out of memory */
void fs_tplist_free(fs_tplist *l);

/* ---- messages to produce ---- */
typedef struct fs_header {
    const char *name;  /* NUL-terminated */
    const void *value; /* NULL: a header without a value */
    size_t len;
} fs_header;

/* One message to send. Every pointer is borrowed for the duration of the
 * produce call only: the transport copies what it keeps. */
typedef struct fs_msg {
    fs_topic *topic;
    int32_t partition; /* -1: the partitioner chooses (murmur2 of the key, as Kafka's) */
    const void *key;   /* NULL: no key (not the same as an empty key) */
    size_t klen;
    const void *value; /* NULL: no value (a tombstone) */
    size_t vlen;
    const fs_header *headers;
    int nheaders;
    int64_t timestamp; /* ms since the epoch; 0: now */
} fs_msg;

/* What a send is for, given to produce and handed back with its delivery
 * report. Replaces the opaque that meant "tag 1-4 or a pointer". */
typedef struct fs_sendctx {
    int epoch;       /* checkpoint epoch the send belongs to; only its parity travels */
    int best_effort; /* a dead letter: its failure is logged, not fatal */
    struct fs_waiter *waiter; /* send_and_wait: who waits (never dereferenced here) */
} fs_sendctx;

/* A delivery report. Valid during the callback only. */
typedef struct fs_report {
    fs_topic *topic;
    int32_t partition;
    int64_t offset; /* -1 when not delivered */
    size_t len;     /* value bytes */
    int err;        /* 0: delivered; else ops->strerror(err) says why */
    fs_sendctx ctx;
    /* 1: discarded by a transaction abort (ops->txn_abort), err is set too.
     * Not a delivery failure: the input that produced it is processed again. */
    int aborted;
} fs_report;

/* One fetched message and what the transport knows of it. */
typedef struct fs_fetched {
    fs_topic *topic;
    struct rd_kafka_message_s *m;
    int64_t ts;                     /* ms since the epoch, -1 unknown */
    struct rd_kafka_headers_s *hdrs; /* the in-memory log's copy (owned with m), else NULL */
} fs_fetched;

/* ---- callbacks the transport reports to ----
 * Registered by the upper layer with fs_transport.cb (each may be NULL).
 * They run on the loop's thread, from inside an operation (poll, produce,
 * flush, close): never from librdkafka's threads. `data` is cb.data. */
typedef struct fs_transport_cb {
    void *data;
    /* Fetched messages, in fetch order (per partition: offset order). Takes
     * ownership of every msgs[i].m and .hdrs: free them with
     * fs_transport_msg_free(m, hdrs, owned). Called with n > 0. */
    void (*messages)(void *data, const struct fs_fetched *msgs, int n, int owned);
    void (*delivered)(void *data, const fs_report *r);
    /* The transport gives the worker these partitions. The upper layer answers
     * with ops->assign (a list with start offsets) — at once or later, e.g.
     * after ops->committed answered; until then nothing of them is fetched.
     * fs_transport.cooperative says whether they add to what the worker holds
     * (the others keep being fetched) or are all it holds (eager: everything
     * was revoked before). */
    void (*assigned)(void *data, const fs_tplist *parts);
    /* The transport takes these partitions away. The upper layer answers with
     * ops->unassign(parts) once it let go of them (agents finished, offsets
     * committed); fetching of them stays stopped until then (eager: of every
     * partition, all being revoked; cooperative: the others go on). lost: the
     * group gave them to another member already (this member's session
     * expired): their offsets must not be committed. */
    void (*revoked)(void *data, const fs_tplist *parts, int lost);
    /* ops->commit finished. ctx: what commit was given. offsets: with per-partition err. */
    void (*commit_done)(void *data, void *ctx, const fs_tplist *offsets, int err);
    /* ops->committed answered: offsets hold the committed offset of each partition
     * asked for (FS_OFFSET_INVALID: none), or err != 0 and the offsets are unknown. */
    void (*committed)(void *data, void *ctx, const fs_tplist *offsets, int err);
    /* A transport error. fatal: the transport cannot go on (the worker should stop). */
    void (*error)(void *data, int err, const char *msg, int fatal);
    /* Whether the worker's agents read topic t now. The transport asks when it
     * computes its subscription (ops->subscribe; the in-memory log: every poll,
     * having no group to rebalance). */
    int (*consumes)(void *data, fs_topic *t);
    /* ops->txn_commit or ops->txn_abort finished (ctx: what it was given).
     * result: FS_TXN_OK, or why not (fs_txn_result); msg says it in words,
     * valid during the call only. */
    void (*txn_done)(void *data, void *ctx, int result, const char *msg);
} fs_transport_cb;

/* ---- transactions (exactly-once) ----
 * One transactional producer per worker. Every send goes into the open
 * transaction; while none is open (before the first txn_begin, after
 * txn_seal, during a commit or an abort) sends wait in the transport's
 * overflow queue, in order, and enter the next transaction when txn_begin
 * opens it. The blocking librdkafka calls (send_offsets_to_transaction,
 * commit_transaction, abort_transaction, init_transactions of a recreated
 * producer) run on a thread of the transport; their end is reported through
 * cb.txn_done from a later poll, on the loop's thread. No other callback ever
 * runs on that thread. */
enum fs_txn_result {
    FS_TXN_OK = 0,
    FS_TXN_ABORTABLE, /* this transaction failed (a send, the offsets, a timeout): abort it */
    FS_TXN_FENCED,    /* the group or another producer fenced us (a zombie): abort it;
                         the transport recreates its producer during the abort */
    FS_TXN_FATAL,     /* the producer cannot go on (after an abort: the worker must stop) */
};

/* ---- operations ----
 * Return conventions: int 0 on success, -1 with a message in err[errlen].
 * Nothing here blocks the loop except where it says "start-up" or "close". */
typedef struct fs_transport_ops {
    const char *name;
    /* Learns each topic's partition count (fs_topic.partitions, .resolved) and
     * creates missing ones with their declared count and `compact`; opens the
     * producer handle. Registers the topics with the transport (idempotent).
     * Start-up and reload only: bounded (10 s + 10 s), may block. */
    int (*resolve)(fs_transport *tp, fs_topic *const *ts, int n, char *err, size_t errlen);
    /* Computes the subscription (the resolved topics cb.consumes says are read)
     * and subscribes when it changed. 1: changed (a rebalance follows),
     * 0: unchanged, -1: error. */
    int (*subscribe)(fs_transport *tp, char *err, size_t errlen);
    /* Serves the transport's queues: delivery reports, rebalances, commit
     * results; when fetch is set, hands fetched messages to cb.messages.
     * Returns how many messages it handed over. Never blocks (but memory://
     * asks its in-process broker for metadata when it assigns itself
     * partitions: about a millisecond). */
    int (*poll)(fs_transport *tp, int fetch);
    /* Sends one message. 0: accepted, cb.delivered reports later; 1: delivered
     * already (the in-memory log), *now filled, no callback follows; -1: error.
     * Never blocks: when the client's queue is full the message waits in the
     * transport's overflow queue (in order) and fs_transport.backlog grows. */
    int (*produce)(fs_transport *tp, const fs_msg *m, fs_sendctx ctx, fs_report *now,
                   char *err, size_t errlen);
    /* Messages sent and not yet reported (overflow queue included). */
    int64_t (*undelivered)(fs_transport *tp);
    /* Pushes delivery along: moves the overflow queue into the client and
     * serves delivery reports, waiting at most timeout_ms (0: never waits —
     * the loop's form; > 0 only at close). Returns undelivered(). */
    int64_t (*flush)(fs_transport *tp, int timeout_ms);
    /* Starts fetching these partitions at their offsets (FS_OFFSET_INVALID:
     * the committed one, else the beginning). Eager: replaces the assignment.
     * Cooperative: adds them to it; one already in it restarts at its offset
     * (the reset); they take the pause of the whole assignment (pause(NULL)). */
    int (*assign)(fs_transport *tp, const fs_tplist *parts, char *err, size_t errlen);
    /* Completes a revocation: parts is the list cb.revoked reported. Eager:
     * unassigns everything; cooperative: only those. */
    int (*unassign)(fs_transport *tp, const fs_tplist *parts);
    /* The current assignment (into an empty list). */
    int (*assignment)(fs_transport *tp, fs_tplist *out);
    /* Stops / restarts fetching (NULL: the whole assignment). A new
     * assignment always starts unpaused. */
    int (*pause)(fs_transport *tp, const fs_tplist *parts);
    int (*resume)(fs_transport *tp, const fs_tplist *parts);
    /* Restarts fetching of assigned partitions at the given offsets. Waits
     * (up to 10 s) for librdkafka to apply it: reloads only, loop paused. */
    int (*seek)(fs_transport *tp, const fs_tplist *parts, char *err, size_t errlen);
    /* Commits offsets (the next offset to read). FS_COMMIT_SYNC: waits for the
     * answer (the last commit at close only); otherwise returns at once and
     * cb.commit_done(ctx, ...) follows from a later poll. */
    int (*commit)(fs_transport *tp, const fs_tplist *offsets, int flags, void *ctx);
    /* Asks the group's committed offsets of these partitions without blocking:
     * cb.committed(ctx, ...) follows from a later poll (or from inside this
     * call when the answer is known at once). */
    int (*committed)(fs_transport *tp, const fs_tplist *parts, void *ctx);
    const char *(*strerror)(int err);
    /* Leaves the group and frees everything (bounded waits: close only).
     * A revocation still open is reported (cb.revoked) and must be answered
     * (unassign) from the callback. */
    void (*close)(fs_transport *tp);

    /* Transactions (NULL in a transport without them: the in-memory log).
     * txn_init: makes the producer transactional with this transactional.id,
     * fencing an earlier producer of the same id (its open transaction is
     * aborted). Start-up only: bounded, may block. -1 with a message when the
     * cluster cannot give exactly-once (the embedded broker, a standalone
     * `fstream-lua broker`: both are librdkafka's mock cluster, which accepts
     * transactions but writes no commit markers and hides no aborted data). */
    int (*txn_init)(fs_transport *tp, const char *id, char *err, size_t errlen);
    /* Opens a transaction (no I/O) and hands it the sends that waited. */
    int (*txn_begin)(fs_transport *tp, char *err, size_t errlen);
    /* The open transaction takes no more sends: they wait for the next one. */
    void (*txn_seal)(fs_transport *tp);
    /* Commits the open transaction together with these input offsets (the
     * next offset to read; sent with the consumer group's metadata, KIP-447).
     * Asynchronous: cb.txn_done(ctx, ...) follows. Returns -1 when it could
     * not even start (then no callback). */
    int (*txn_commit)(fs_transport *tp, const fs_tplist *offsets, void *ctx);
    /* Aborts the open transaction: everything sent since the last commit,
     * and whatever is sent until the next txn_begin, is discarded — each
     * reported through cb.delivered with aborted = 1. After FS_TXN_FENCED the
     * producer is recreated here. Asynchronous: cb.txn_done(ctx, ...). */
    int (*txn_abort)(fs_transport *tp, void *ctx);

    /* The partition's high watermark as the consumer last saw it (cached by
     * the client from fetch answers: no I/O), or -1 when not known yet. NULL
     * in a transport without one (the in-memory log). Read by /metrics. */
    int64_t (*high_watermark)(fs_transport *tp, const char *topic, int32_t partition);

    /* The broker's topics, for pattern topics: calls fn(data, name, partitions)
     * for each topic of the newest listing the transport holds, and asks for
     * the next one (made on a thread of the transport). Waits up to wait_ms
     * for a first listing: start-up only; 0 anywhere else, the loop never
     * blocks. Returns the listing's number (a higher one is newer), 0 when
     * none came yet, -1 with a message in err when the last request failed.
     * NULL in a transport without a broker (the in-memory log). */
    long (*list_topics)(fs_transport *tp, int wait_ms,
                        void (*fn)(void *data, const char *name, int partitions), void *data,
                        char *err, size_t errlen);
} fs_transport_ops;

#define FS_COMMIT_SYNC 1

/* The part every implementation shares; it embeds this as its first member. */
struct fs_transport {
    const fs_transport_ops *ops;
    fs_transport_cb cb;
    fs_loop *loop; /* the worker's loop: wake-up fds are registered here */
    /* Offsets and state outlive the process: checkpoints commit, tables are
     * stored (librdkafka). 0: everything is forgotten at exit (in-memory log). */
    int durable;
    /* This worker holds every partition of every topic, always (the in-memory
     * log). memory:// self-assignment is 0: it still revokes on resubscribe. */
    int holds_all;
    /* Assignments and revocations are incremental (the group's cooperative
     * protocol, KIP-429, or memory://'s self-assignment with the
     * cooperative-sticky assignor configured): cb.assigned adds partitions,
     * cb.revoked takes some away, and the others keep being fetched and
     * processed meanwhile. 0: eager (a rebalance revokes everything, then
     * assigns the new whole). Set by the implementation before it reports. */
    int cooperative;
    /* poll has work now (a wake-up fd fired, more fetched messages wait): the
     * loop must not sleep. Set by the implementation only. */
    int pending;
    /* ops->close runs: a revocation reported now (cb.revoked) must be
     * answered before the callback returns — no agent will run again. */
    int closing;
    /* Messages waiting in the overflow queue because the client's own queue
     * is full (librdkafka's queue.buffering.max.messages). They are handed to
     * the client in order as delivery reports make room; the upper layer
     * stops fetching while there are many (back-pressure). */
    int64_t backlog;
    int64_t backlog_peak; /* the most ever waiting (stats, specs) */
};

/* ---- the implementations ---- */

/* librdkafka. broker_url: memory:// or kafka://HOST[:PORT],...; group: the
 * consumer group (and client.id). conf: extra producer settings "k=v",
 * NULL-terminated, or NULL; then those of $FSTREAM_KAFKA_PRODUCER
 * ("k=v,k=v", e.g. queue.buffering.max.messages=50). instance_id: the group
 * consumer's group.instance.id (static membership: a member that comes back
 * with it within the session timeout gets its partitions back without a
 * rebalance), copied; NULL for none. assignor: the group consumer's
 * partition.assignment.strategy ("cooperative-sticky", "range",
 * "roundrobin", or an eager pair "range,roundrobin"); NULL:
 * cooperative-sticky. The transport registers its wake-up fds on loop. NULL
 * and a message on failure. */
fs_transport *fs_kafka_new(fs_loop *loop, const char *broker_url, const char *group,
                           const char *const *conf, const char *instance_id,
                           const char *assignor, char *err, size_t errlen);
/* Checks an assignor name for fs_kafka_new: -1 and a message when unknown,
 * or when it mixes the cooperative protocol with the eager ones. */
int fs_kafka_assignor_check(const char *assignor, char *err, size_t errlen);
/* The bootstrap servers the kafka transport talks to ("" for the in-memory log). */
const char *fs_kafka_bootstrap(const fs_transport *tp);
int fs_kafka_embedded(const fs_transport *tp); /* memory:// */
/* Checks a broker URL: memory:// (*bootstrap = NULL) or kafka://HOST[:PORT],...
 * (*bootstrap points into url, after the scheme). -1 and a message if neither. */
int fs_broker_url_check(const char *url, const char **bootstrap, char *err, size_t errlen);
int32_t fs_murmur2_partition(const void *key, size_t len, int32_t n);

/* In-memory log. now_ms: the clock that stamps messages sent without a
 * timestamp (the runtime's wall clock, fake under fstream.testing). */
fs_transport *fs_memlog_new(fs_loop *loop, int64_t (*now_ms)(void *data), void *now_data);
/* The in-memory log behind tp, or NULL when tp is another transport. */
struct fs_memlog *fs_memlog_of(fs_transport *tp);
/* A test's own send (fstream.testing's send): appended like a produce but not
 * counted as an output of the app. */
int fs_memlog_append_external(struct fs_memlog *ml, const fs_msg *m, int32_t *part_out,
                              int64_t *offset_out, char *err, size_t errlen);
/* What the app produced to t, in partition then offset order (per-partition
 * order is what Kafka promises); stops when fn returns nonzero. The message's
 * pointers are valid during the call. */
typedef struct fs_memout {
    int32_t partition;
    int64_t offset;
    const void *key, *value; /* NULL: absent */
    size_t klen, vlen;
    const fs_header *headers;
    int nheaders;
} fs_memout;
int fs_memlog_each_output(struct fs_memlog *ml, fs_topic *t,
                          int (*fn)(void *data, const fs_memout *m), void *data);

/* Frees a fetched message handed to cb.messages (owned: the in-memory log's). */
void fs_transport_msg_free(struct rd_kafka_message_s *m, struct rd_kafka_headers_s *hdrs,
                           int owned);

#endif
