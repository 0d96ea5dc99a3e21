/* fs_kafka: the librdkafka transport (fs_transport.h) — consumer, producer,
 * admin requests, the embedded mock cluster of memory:// and, there, the
 * self-assignment of every partition. librdkafka's threads never touch the
 * worker: they only write to eventfds that wake the loop, and every report
 * (fetched messages, deliveries, rebalances, commits) reaches the upper layer
 * through fs_transport_cb from inside an operation run by the loop.
 *
 * The worker's use of the transport (callbacks, start-up, polling) is in
 * worker/fs_worker.c. */
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "fs_kafka.h"
#include "fs_kafka_lag.h"
#include "fs_kafka_meta.h"
#include "fs_kafka_txn.h"
#include "fs_log.h"
#include "fs_transport.h"
#include "fs_vec.h"
#include <librdkafka/rdkafka_mock.h>

/* ======================= the transport (layer 2) ======================= */

#define FS_CONSUME_BATCH 1024
/* The group consumer's prefetch (see fetch_kick): librdkafka stops fetching
 * once its queue holds FS_FETCH_QUEUE_MSGS messages (queued.min.messages,
 * counted over the whole consumer queue since every partition's queue is
 * forwarded to it) or FS_FETCH_QUEUE_KB KiB; a Fetch response carries at most
 * FS_FETCH_MAX_BYTES, so one response cannot overshoot much. The transport
 * wakes the fetcher again once the worker has taken the queue down to
 * FS_FETCH_KICK_MSGS. */
#define FS_FETCH_QUEUE_MSGS 20000
#define FS_FETCH_QUEUE_KB 16384
#define FS_FETCH_MAX_BYTES 1048576
#define FS_FETCH_KICK_MSGS 4096
#define FS_STR_(x) #x
#define FS_STR(x) FS_STR_(x)
/* How long start-up may wait for the broker's metadata, and again for topics
 * it creates to appear in it (DESIGN: the loop never blocks; this runs before
 * the loop does, or while a reload has paused it). */
#define FS_METADATA_MS 10000
/* How often the end offsets of the assignment are asked for the lag (while
 * fetching runs, Fetch responses bring them too). */
#define FS_LAG_INTERVAL_MS 5000

/* A message that did not fit in librdkafka's queue (QUEUE_FULL): copied here,
 * handed over in order as delivery reports make room. */
struct fs_overflow {
    fs_topic *topic;
    int32_t partition;
    char *key, *val; /* one allocation: key bytes then value bytes; NULL: absent */
    size_t klen, vlen;
    int has_key, has_val;
    rd_kafka_headers_t *hdrs;
    int64_t ts;
    void *opaque;
};

/* A committed-offsets question in flight (ops->committed): asked again while
 * the broker answers UNSTABLE_OFFSET_COMMIT for a partition. */
struct fs_cq {
    void *ctx; /* the caller's */
    fs_tplist parts;
    int tries;
    int waiting; /* for the retry timer, not in flight */
};

/* An offset commit held back while the group's join round runs (see
 * group_joining). */
struct fs_defer {
    fs_tplist offsets;
    void *ctx;
};

/* A producer replaced after a lost assignment (at-least-once, see
 * replace_producer): its queue is served until the report of every send the
 * purge discarded came back (the checkpoints count them), then a thread of
 * its own destroys it (rd_kafka_destroy joins librdkafka's threads: not on
 * the loop). */
struct fs_retired {
    rd_kafka_t *rk;
    rd_kafka_queue_t *q; /* NULL once every report came back */
    int64_t left;        /* reports still to come */
    int64_t since;       /* monotonic ms of the replacement */
    int warned;
    pthread_t th;
    int started; /* th runs (or ran) rd_kafka_destroy */
    int done;    /* atomic: th is over */
};

/* A txn_done to report from the next poll (decided on the loop's thread). */
struct fs_txn_note {
    void *ctx;
    int result;
    char msg[400];
};

typedef struct fs_kafka {
    fs_transport base; /* first: fs_transport * and fs_kafka * convert */
    char *group;
    char *bootstrap;
    char *instance_id; /* group.instance.id of the group consumer, or NULL */
    char *assignor;    /* partition.assignment.strategy of the group consumer */
    int coop_conf;     /* ...as the consumer took it, is the cooperative-sticky one */
    int embedded;         /* memory://: the mock cluster lives in this process */
    int no_create_topics; /* CreateTopics failed: the broker auto-creates (fstream-lua broker) */
    rd_kafka_t *consumer, *producer, *mock_host;
    struct rd_kafka_mock_cluster_s *mock;
    rd_kafka_queue_t *cq, *pq, *aq; /* consumer, producer (delivery reports), admin results */
    fs_lag *lag; /* end offsets asked every FS_LAG_INTERVAL_MS (fs_kafka_lag.h) */
    int cfd, pfd, afd;
    fs_io cio, pio, aio;
    int consume_pending, produce_pending, admin_pending;
    int fetching; /* the last poll was allowed to fetch */
    /* fetch_kick: the fetcher is believed stopped at its queue threshold;
     * the worker paused every partition (ops->pause(NULL)), or some. */
    int fetch_full, paused_all, paused_some;
    int64_t kicks;
    double msg_bytes; /* running mean size of a consumed message (key + value) */
    int subscribed;
    FS_VEC(fs_topic *) topics; /* registered by resolve; the transport owns each t->tx */
    rd_kafka_topic_t *last_rkt;  /* consumer-side topic of the last fetched message */
    fs_topic *last_topic;
    fs_fetched *fetched; /* FS_CONSUME_BATCH scratch */
    rd_kafka_message_t **msgs;
    FS_RING(struct fs_overflow) overflow;
    int draining;              /* drain() runs (it is re-entered from delivery reports) */
    int64_t inflight;          /* accepted by librdkafka (the producer or a retired one), not yet reported */
    FS_VEC(struct fs_retired *) retired; /* producers replaced after a lost assignment */
    FS_VEC(rd_kafka_vu_t) vus; /* produceva scratch */
    /* memory:// — the worker owns its embedded broker, so it is the only
     * member of its group and assigns itself every partition of its
     * subscription instead of joining (the mock's first JoinGroup waits 3 s). */
    int self_assign;
    FS_VEC(char *) self_subs; /* topics self-assigned; NULL items: none yet */
    int self_has_subs;
    int self_pending;  /* the subscription changed: reassign once nothing is revoking */
    int self_revoking; /* cb.revoked was reported; waiting for unassign */
    /* The consumer's close got the worker's answer to its revocation: no
     * request goes to the group's consumer any more (see kafka_unassign). */
    int close_answered;
    int protocol_known; /* base.cooperative was learnt from the group */
    fs_tplist self_owned; /* what the "group" gave: reported assigned, not revoked since */
    /* The producer's settings beyond the defaults: the caller's "k=v" then
     * FSTREAM_KAFKA_PRODUCER's, kept to make the producer again (txn_init,
     * fencing). */
    FS_VEC(char *) pconf;
    /* ---- transactions (txn_init) ----
     * The gate: sends enter librdkafka only while a transaction is open
     * (txn_open); otherwise they wait in the overflow queue, in order. The
     * first txn_quota entries of the overflow queue were sent before
     * txn_seal, so they belong to the sealed transaction and still go. */
    int txn;          /* the producer is transactional */
    char *txn_id;
    int txn_open;     /* a transaction takes sends */
    int txn_begun;    /* rd_kafka_begin_transaction called, not yet ended */
    int txn_dropping; /* txn_abort called: every send is discarded until txn_begin */
    int txn_doomed;   /* a send of this transaction failed: it cannot commit */
    int txn_send_failed; /* a send failed in librdkafka (not purged) since the last producer
                            epoch: its sequence number is a gap only a new epoch closes */
    int txn_lost;     /* the group took our partitions away (session lost) since the last
                         txn_abort: what is open holds a zombie's outputs */
    int txn_lost_sends; /* ...while sends were outstanding, since the last producer epoch: the
                           abort's purge may leave a sequence gap only a new epoch closes */
    int64_t txn_quota;
    FS_RING(fs_report) dropped; /* aborted sends to report (with their err) */
    fs_txn_thread *txth;
    int tfd;
    fs_io tio;
    int txn_pending;      /* the thread's eventfd fired */
    fs_txn_job job;       /* the job on the thread (job_busy) */
    int job_busy;
    void *job_ctx;        /* the ctx txn_done reports for it */
    int commit_waiting;   /* txn_commit waits for the sealed overflow to enter librdkafka */
    int abort_queued;     /* txn_abort came while a job ran */
    void *abort_ctx;
    int recreate_waiting; /* fenced: waiting for the old producer's reports before recreating */
    int64_t recreate_deadline;
    void *recreate_ctx;
    FS_RING(struct fs_txn_note) notes; /* txn_done results to report from poll */
    fs_meta *meta; /* the topic-listing thread, started by the first list_topics */
    FS_VEC(struct fs_cq *) cqs; /* committed-offsets questions, owned */
    /* The group consumer's JoinGroup round, seen by interceptors on
     * librdkafka's broker threads (atomics, monotonic ms): sent at, and the
     * SyncGroup answer that ends it received at. See group_joining. */
    int64_t join_sent_ms, sync_done_ms;
    FS_VEC(struct fs_defer) deferred; /* commits held back while the group joins, in order */
    fs_timer cq_timer;
    int64_t txn_commits, txn_aborts, txn_recreated;
} fs_kafka;

static const fs_transport_ops kafka_ops;

/* ops->committed's retries of UNSTABLE_OFFSET_COMMIT (see kafka_committed). */
#define FS_CQ_RETRY_MS 100
#define FS_CQ_TRIES 300
static void cq_free(fs_kafka *k, struct fs_cq *q);
static void cq_timer_cb(fs_timer *t);

static fs_kafka *kafka_of(fs_transport *tp)
{
    return tp && tp->ops == &kafka_ops ? (fs_kafka *)tp : NULL;
}

/* librdkafka warns "[thrd:T]: TOPIC [P]: offset reset (at offset N, broker B)
 * to cached BEGINNING offset M: REASON" when the broker no longer has the
 * offset a consumer fetches from: the messages N..M-1 were deleted unread (the
 * topic's retention is shorter than the consumer's lag; the embedded broker
 * keeps only about 5 MB per partition). That is data lost, at start-up (a
 * committed offset the log has left behind) or while the worker runs behind;
 * said again in the worker's words, as an error. The same reset follows an
 * offset past the log's end (a topic recreated): then the cached start is
 * not after N and nothing was lost, so nothing more is said. Without a cached
 * log start ("to BEGINNING", which librdkafka then asks the broker for) the
 * two cannot be told apart yet, and the error says so. A partition without a committed offset starts
 * through the same function without an offset and without this warning;
 * auto.offset.reset is earliest, so the reset always goes to the oldest
 * message left. */
static void offset_reset_lost(const char *buf)
{
    if (!strncmp(buf, "[thrd:", 6)) {
        const char *p = strstr(buf, "]: ");
        if (!p) return;
        buf = p + 3;
    }
    char topic[256];
    int partition, broker, used = 0;
    long long from, to;
    if (sscanf(buf, "%255s [%d]: offset reset (at offset %lld, broker %d) to %n", topic, &partition,
               &from, &broker, &used) < 4 || !used)
        return;
    const char *where = buf + used;
    if (sscanf(where, "cached BEGINNING offset %lld", &to) == 1 && to > from)
        fs_error("%s[%d]: offsets %lld to %lld (%lld messages) were deleted by the broker before "
                 "this worker read them: they are lost, and the partition goes on from %lld (the "
                 "topic's retention is shorter than the lag; the embedded broker keeps about 5 MB "
                 "per partition)",
                 topic, partition, from, to - 1, to - from, to);
    else if (!strncmp(where, "BEGINNING:", 10))
        fs_error("%s[%d]: offset %lld is outside what the broker holds: the partition goes on "
                 "from its oldest message, and if that is past %lld the messages in between were "
                 "deleted before this worker read them and are lost (the topic's retention is "
                 "shorter than the lag; the embedded broker keeps about 5 MB per partition)",
                 topic, partition, from, from);
}

static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    int lv = level <= 3 ? FS_LOG_ERROR : level <= 4 ? FS_LOG_WARN : level <= 6 ? FS_LOG_INFO
                                                                              : FS_LOG_DEBUG;
    /* librdkafka is chatty at notice level about things the worker handles itself. */
    if (lv == FS_LOG_INFO) lv = FS_LOG_DEBUG;
    if (lv >= fs_log_level) fs_log(lv, "kafka %s: %s", fac, buf);
    if (level <= 4 && !strcmp(fac, "OFFSET")) offset_reset_lost(buf);
}

static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    fs_kafka *k = opaque;
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char buf[512];
        rd_kafka_fatal_error(rk, buf, sizeof buf);
        if (k && k->base.cb.error) k->base.cb.error(k->base.cb.data, err, buf, 1);
        else fs_error("kafka fatal error: %s", buf);
        return;
    }
    fs_warn("kafka: %s: %s", rd_kafka_err2name(err), reason);
}

/* The producer's and the group consumer's connections give up on data the
 * broker has not acknowledged for this long (TCP_USER_TIMEOUT), well inside
 * the group's session timeout (6 s). A worker cut off from the broker by the
 * network has requests sitting in its sockets' send queues — changelog
 * records, heartbeats with its member id — which the kernel would deliver
 * when the network comes back, after the group handed its partitions on:
 * records landing behind the next owner's, a heartbeat that fences the
 * static member's new incarnation. Aborted instead; librdkafka retries on a
 * new connection what it still holds (the producer is idempotent), and a
 * lost assignment purges that (purge_lost). */
#define FS_TCP_USER_TIMEOUT_MS 3000

static int socket_cb(int domain, int type, int protocol, void *opaque)
{
    (void)opaque;
    int s = socket(domain, type | SOCK_CLOEXEC, protocol);
    unsigned int ms = FS_TCP_USER_TIMEOUT_MS;
    /* Not fatal where unsupported: only the partition case gets worse. */
    if (s >= 0 && type == SOCK_STREAM)
        (void)setsockopt(s, IPPROTO_TCP, TCP_USER_TIMEOUT, &ms, sizeof ms);
    return s;
}

static int conf_set(rd_kafka_conf_t *c, const char *k, const char *v, char *err, size_t errlen)
{
    if (rd_kafka_conf_set(c, k, v, err, errlen) != RD_KAFKA_CONF_OK) return -1;
    return 0;
}

/* fs_sendctx travels as librdkafka's per-message opaque: the waiter pointer
 * (calloc'd, so its two low bits are 0) with the epoch's parity in bit 0 and
 * best_effort in bit 1. No allocation per message. */
static void *ctx_pack(fs_sendctx c)
{
    return (void *)((uintptr_t)c.waiter | (uintptr_t)(c.epoch & 1) | (uintptr_t)(c.best_effort ? 2 : 0));
}

static fs_sendctx ctx_unpack(void *p)
{
    uintptr_t v = (uintptr_t)p;
    fs_sendctx c = {(int)(v & 1), (int)((v >> 1) & 1), (struct fs_waiter *)(v & ~(uintptr_t)3)};
    return c;
}

static void drain(fs_kafka *k);

/* Errors that mean "this message can never be written", whatever the
 * transaction: too large, malformed, a topic or partition that does not
 * exist, not allowed. */
static int refused_for_itself(rd_kafka_resp_err_t e)
{
    switch (e) {
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_INVALID_RECORD:
    case RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE:
    case RD_KAFKA_RESP_ERR_INVALID_TIMESTAMP:
    case RD_KAFKA_RESP_ERR_POLICY_VIOLATION:
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
        return 1;
    default:
        return 0;
    }
}

/* One delivery report (from a DR event, on the loop's thread). */
static void report_dr(fs_kafka *k, const rd_kafka_message_t *m)
{
    k->inflight--;
    fs_report r;
    r.topic = m->rkt ? rd_kafka_topic_opaque(m->rkt) : NULL;
    r.partition = m->partition;
    r.offset = m->err ? -1 : m->offset;
    r.len = m->len;
    r.err = m->err;
    r.ctx = ctx_unpack(m->_private);
    r.aborted = 0;
    /* A transactional producer's failed message fails its transaction
     * (librdkafka makes it abortable, or fatal when fenced; the purge of an
     * abort reports __PURGE_QUEUE/__PURGE_INFLIGHT): the send is discarded
     * with the transaction, not lost — its input is processed again. */
    if (k->txn && m->err) {
        int purged = m->err == RD_KAFKA_RESP_ERR__PURGE_QUEUE ||
                     m->err == RD_KAFKA_RESP_ERR__PURGE_INFLIGHT;
        /* A message the broker refuses for itself is a delivery failure, as
         * under at-least-once (it would fail again after every abort); any
         * other error (a purge, a timeout, the producer's or the
         * transaction's state) discards the send with its transaction. */
        r.aborted = !refused_for_itself(m->err);
        if (!purged) {
            if (!k->txn_doomed)
                fs_warn("send to %s[%d] failed: %s; the transaction will be aborted",
                        m->rkt ? rd_kafka_topic_name(m->rkt) : "?", (int)m->partition,
                        rd_kafka_err2str(m->err));
            k->txn_send_failed = 1;
        }
        k->txn_doomed = 1;
    } else if (m->err == RD_KAFKA_RESP_ERR__PURGE_QUEUE ||
               m->err == RD_KAFKA_RESP_ERR__PURGE_INFLIGHT) {
        r.aborted = 1; /* purge_lost: discarded, not failed */
    }
    if (k->base.cb.delivered) k->base.cb.delivered(k->base.cb.data, &r);
}

/* A send that never reached librdkafka, discarded with its transaction:
 * reported (aborted = 1) by the next poll, not from inside produce. */
static int drop_send(fs_kafka *k, fs_topic *t, int32_t partition, size_t vlen, void *opaque,
                     int err)
{
    fs_report r = {t, partition, -1, vlen, err, ctx_unpack(opaque), 1};
    if (fs_ring_push(&k->dropped, r)) return -1;
    k->base.pending = 1;
    return 0;
}

static void report_dropped(fs_kafka *k)
{
    while (k->dropped.len) {
        fs_report r = fs_ring_shift(&k->dropped);
        if (k->base.cb.delivered) k->base.cb.delivered(k->base.cb.data, &r);
    }
}

/* Empties the overflow queue into the dropped reports (an abort). */
static void drop_overflow(fs_kafka *k)
{
    while (k->overflow.len) {
        struct fs_overflow *o = &fs_ring_at(&k->overflow, 0);
        if (drop_send(k, o->topic, o->partition, o->vlen, o->opaque, RD_KAFKA_RESP_ERR__PURGE_QUEUE))
            break; /* out of memory: the rest waits for the next poll */
        if (o->hdrs) rd_kafka_headers_destroy(o->hdrs);
        free(o->key);
        (void)fs_ring_shift(&k->overflow);
        k->base.backlog--;
    }
    k->txn_quota = 0;
}

static int fencing_code(rd_kafka_resp_err_t code)
{
    return code == RD_KAFKA_RESP_ERR__FENCED || code == RD_KAFKA_RESP_ERR_PRODUCER_FENCED ||
           code == RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH;
}

/* A producer error event: what error_cb does for the consumer. A
 * transactional producer's fatal error is not the worker's end: the
 * transaction's commit reports it (FS_TXN_FENCED or FS_TXN_FATAL) and the
 * abort recreates the producer; only a producer that cannot be recreated
 * (txn_done FS_TXN_FATAL after an abort) stops the worker. */
static void producer_error(fs_kafka *k, rd_kafka_event_t *ev)
{
    rd_kafka_resp_err_t err = rd_kafka_event_error(ev);
    if (!rd_kafka_event_error_is_fatal(ev)) {
        fs_warn("kafka: %s: %s", rd_kafka_err2name(err), rd_kafka_event_error_string(ev));
        return;
    }
    char buf[512];
    rd_kafka_resp_err_t code = rd_kafka_fatal_error(k->producer, buf, sizeof buf);
    if (k->txn) {
        fs_warn("transactional producer %s: %s (the open transaction will be aborted)",
                fencing_code(code) ? "fenced" : "failed", buf);
        k->txn_doomed = 1;
        return;
    }
    if (k->base.cb.error) k->base.cb.error(k->base.cb.data, RD_KAFKA_RESP_ERR__FATAL, buf, 1);
    else fs_error("kafka fatal error: %s", buf);
}

/* Serves the producer's event queue: delivery reports and errors, on the
 * loop's thread (the event API: librdkafka never calls back on a thread of
 * its own, nor on the transaction thread inside commit_transaction's flush).
 * wait_ms > 0: waits that long for the first event (close only). */
static void serve_retired(fs_kafka *k);

static void serve_producer(fs_kafka *k, int wait_ms)
{
    rd_kafka_event_t *ev;
    if (k->retired.len) serve_retired(k);
    while (k->pq && (ev = rd_kafka_queue_poll(k->pq, wait_ms))) {
        wait_ms = 0;
        switch (rd_kafka_event_type(ev)) {
        case RD_KAFKA_EVENT_DR: {
            const rd_kafka_message_t *m;
            while ((m = rd_kafka_event_message_next(ev))) report_dr(k, m);
            break;
        }
        case RD_KAFKA_EVENT_ERROR:
            producer_error(k, ev);
            break;
        default:
            break;
        }
        rd_kafka_event_destroy(ev);
        /* Room in librdkafka's queue again: hand it what waits, in order. */
        if (k->overflow.len) drain(k);
    }
}

static int kafka_assign(fs_transport *tp, const fs_tplist *parts, char *err, size_t errlen);
static int kafka_unassign(fs_transport *tp, const fs_tplist *parts);
static void defer_flush(fs_kafka *k);
static int wake_fetcher(fs_kafka *k);

/* librdkafka list <-> project list, at rebalances and commits only. */
static int from_rd(fs_tplist *out, const rd_kafka_topic_partition_list_t *l)
{
    for (int i = 0; l && i < l->cnt; i++) {
        fs_tp *tp = fs_tplist_add(out, l->elems[i].topic, l->elems[i].partition, l->elems[i].offset);
        if (!tp) return -1;
        tp->err = l->elems[i].err;
    }
    return 0;
}

static rd_kafka_topic_partition_list_t *to_rd(const fs_tplist *l)
{
    rd_kafka_topic_partition_list_t *r = rd_kafka_topic_partition_list_new(l && l->len ? l->len : 1);
    for (int i = 0; l && i < l->len; i++)
        rd_kafka_topic_partition_list_add(r, l->items[i].topic, l->items[i].partition)->offset =
            l->items[i].offset;
    return r;
}

/* The consumer's offset_commit_cb: commits made through ops->commit report
 * with their ctx (commit_queue); this one serves the others (ctx NULL). */
static void kafka_commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                            rd_kafka_topic_partition_list_t *offsets, void *opaque)
{
    fs_kafka *k = opaque;
    (void)rk;
    if (!k->base.cb.commit_done) return;
    fs_tplist l = {0};
    if (from_rd(&l, offsets)) fs_warn("out of memory reporting an offset commit");
    k->base.cb.commit_done(k->base.cb.data, NULL, &l, err);
    fs_tplist_free(&l);
}

/* At-least-once, the assignment lost: what the producer has not delivered
 * yet came from partitions another member may own by now. Written later, a
 * table's changelog record would land after that member's newer ones and
 * take the table back to this worker's stale value. Every undelivered send
 * is discarded (reported aborted: its input was not committed, the next
 * owner processes it again). Bytes already handed to the socket may still
 * arrive; only exactly-once fences those. The purged producer then gives way
 * to a new one (replace_producer). */
static void replace_producer(fs_kafka *k);

static void purge_lost(fs_kafka *k)
{
    if (!k->producer || k->txn) return;
    int64_t n = k->inflight + (int64_t)k->overflow.len;
    int in_librdkafka = k->inflight > 0;
    rd_kafka_purge(k->producer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT |
                                    RD_KAFKA_PURGE_F_NON_BLOCKING);
    drop_overflow(k);
    k->produce_pending = k->base.pending = 1;
    if (n) fs_warn("assignment lost: %lld undelivered sends discarded", (long long)n);
    if (in_librdkafka) replace_producer(k);
}

/* Closes the topic handles made on the producer (they are opened again on
 * the next send, on whatever producer is k->producer then). */
static void close_topic_handles(fs_kafka *k)
{
    for (size_t i = 0; i < k->topics.len; i++)
        if (FS_TXT(k->topics.items[i])->tx) {
            rd_kafka_topic_destroy(FS_TXT(k->topics.items[i])->tx);
            FS_TXT(k->topics.items[i])->tx = NULL;
        }
}

static rd_kafka_t *new_producer(fs_kafka *k, const char *txn_id, char *err, size_t errlen);
static int64_t mono_ms(void);

/* After purge_lost the idempotent producer cannot go on. librdkafka 2.0.2
 * counts a purged request's sequence numbers as acknowledged (a purge fails
 * the request with __PURGE_QUEUE or __PURGE_INFLIGHT, and a failed request
 * moves the partition's next expected sequence past it), while the broker
 * may never have received it: the next request to that partition carries a
 * sequence the broker does not expect, which librdkafka takes for a
 * "sequence desynchronization" and makes the producer fail for good (the
 * worker would stop at the heal). Only a new producer id starts the
 * sequences again, and a non-transactional producer gets one only from a new
 * producer (its own epoch bump is internal to librdkafka: message timeouts,
 * never a purge). So a new producer takes over at once: later sends go to
 * it, and the old one is retired — its queue served for the purge's reports
 * (serve_retired), then destroyed off the loop. Exactly-once has its own
 * way (the transaction's abort, a new producer when fenced). */
static void replace_producer(fs_kafka *k)
{
    char err[512];
    rd_kafka_t *nw = new_producer(k, NULL, err, sizeof err);
    struct fs_retired *r = nw ? calloc(1, sizeof *r) : NULL;
    rd_kafka_queue_t *q = nw ? rd_kafka_queue_get_main(nw) : NULL;
    if (!nw || !r || !q || fs_vec_push(&k->retired, r)) {
        fs_error("assignment lost: cannot make a new producer (%s); the purged one goes on and may "
                 "fail for good at its next send to a partition it had sends in flight for",
                 nw ? "out of memory" : err);
        free(r);
        if (q) rd_kafka_queue_destroy(q);
        if (nw) rd_kafka_destroy(nw);
        return;
    }
    r->rk = k->producer;
    r->q = k->pq; /* keeps waking the loop through the producer's eventfd */
    r->left = k->inflight;
    r->since = mono_ms();
    close_topic_handles(k);
    k->producer = nw;
    k->pq = q;
    static const char one[8] = {1, 0, 0, 0, 0, 0, 0, 0};
    rd_kafka_queue_io_event_enable(k->pq, k->pfd, one, sizeof one);
    fs_info("assignment lost: a new producer takes over (the purged one's sequence numbers are no "
            "longer the broker's); %lld reports of the purged sends to come",
            (long long)r->left);
}

static void *retired_destroy(void *arg)
{
    struct fs_retired *r = arg;
    rd_kafka_destroy(r->rk);
    fs_debug("the producer replaced after a lost assignment is destroyed");
    __atomic_store_n(&r->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

/* A retired producer whose reports have not all come back this long after
 * the purge is worth a warning (they come as soon as librdkafka's threads ran
 * the purge: milliseconds). It is kept until they do. */
#define FS_RETIRED_WARN_MS 10000

/* Serves the retired producers: their delivery reports (the purged sends',
 * reported aborted), then, once every report is in, their destruction on a
 * thread, and the thread's end. */
static void serve_retired(fs_kafka *k)
{
    for (size_t i = 0; i < k->retired.len;) {
        struct fs_retired *r = k->retired.items[i];
        rd_kafka_event_t *ev;
        while (r->q && (ev = rd_kafka_queue_poll(r->q, 0))) {
            if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_DR) {
                const rd_kafka_message_t *m;
                while ((m = rd_kafka_event_message_next(ev))) {
                    report_dr(k, m);
                    r->left--;
                }
            } else if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_ERROR) {
                /* It sends nothing more: its errors (even a fatal one) no longer matter. */
                fs_debug("retired producer: %s", rd_kafka_event_error_string(ev));
            }
            rd_kafka_event_destroy(ev);
        }
        if (r->q && r->left > 0 && !r->warned && mono_ms() - r->since > FS_RETIRED_WARN_MS) {
            r->warned = 1;
            fs_warn("the producer replaced after a lost assignment still owes %lld delivery reports "
                    "after %d s",
                    (long long)r->left, FS_RETIRED_WARN_MS / 1000);
        }
        if (r->q && r->left <= 0) {
            rd_kafka_queue_io_event_enable(r->q, -1, NULL, 0);
            rd_kafka_queue_destroy(r->q);
            r->q = NULL;
            r->started = pthread_create(&r->th, NULL, retired_destroy, r) == 0;
            if (!r->started) { /* no thread: the loop waits for librdkafka's this once */
                rd_kafka_destroy(r->rk);
                r->done = 1;
            }
        }
        if (__atomic_load_n(&r->done, __ATOMIC_ACQUIRE)) {
            if (r->started) pthread_join(r->th, NULL);
            free(r);
            fs_vec_remove(&k->retired, i);
            continue;
        }
        i++;
    }
}

/* Close: what is left of the retired producers goes now (their reports were
 * waited for by the close's flush, or never come). */
static void retired_free(fs_kafka *k)
{
    for (size_t i = 0; i < k->retired.len; i++) {
        struct fs_retired *r = k->retired.items[i];
        if (r->q) {
            rd_kafka_queue_io_event_enable(r->q, -1, NULL, 0);
            rd_kafka_queue_destroy(r->q);
            rd_kafka_destroy(r->rk);
        } else if (r->started) {
            pthread_join(r->th, NULL);
        }
        free(r);
    }
    fs_vec_free(&k->retired);
}

/* The protocol of the rebalance being reported: the group's (librdkafka
 * knows it once the group chose an assignor), or, for memory://'s
 * self-assignment (which never joins), the configured assignor's. */
static int rebalance_cooperative(fs_kafka *k, rd_kafka_t *rk)
{
    if (k->self_assign) return k->coop_conf;
    /* rd_kafka_rebalance_protocol is a request to the group, answered NULL
     * once the group is gone (a revocation reported after the close's
     * answer: a SIGSEGV in strcmp before), and one that could wait for good
     * (see kafka_unassign). Closing, the protocol is the last one reported
     * (or the configured one's, if none was). */
    if (k->base.closing) return k->protocol_known ? k->base.cooperative : k->coop_conf;
    const char *p = rd_kafka_rebalance_protocol(rk);
    if (!p) return k->protocol_known ? k->base.cooperative : k->coop_conf;
    k->protocol_known = 1;
    return strcmp(p, "COOPERATIVE") == 0;
}

static void kafka_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                            rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    fs_kafka *k = opaque;
    int coop = rebalance_cooperative(k, rk);
    k->base.cooperative = coop;
    if (k->base.closing && err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        /* A join round that ended while the consumer closes (a worker
         * stopped as it joined): the worker is leaving, so the partitions are
         * not taken (tables recovering after the transport is gone, nothing
         * to revoke them later). Answered with nothing, so that the close
         * goes on; the group gives them to another member once this one is
         * gone. Nothing else is asked of the consumer (see kafka_unassign). */
        rd_kafka_error_t *e = NULL;
        rd_kafka_topic_partition_list_t *none = rd_kafka_topic_partition_list_new(1);
        if (!k->close_answered) {
            /* Closing, librdkafka takes any assign for the unassign that lets
             * the group end: the close's answer (see kafka_unassign). */
            if (coop) e = rd_kafka_incremental_assign(rk, none);
            else rd_kafka_assign(rk, NULL);
            k->close_answered = 1;
        }
        rd_kafka_topic_partition_list_destroy(none);
        if (e) rd_kafka_error_destroy(e);
        fs_info("assigned %d partitions while stopping: not taken", parts ? parts->cnt : 0);
        return;
    }
    if (coop && !k->self_assign && err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        /* librdkafka pauses the fetchers of the whole assignment until the
         * application answers (incremental_assign): answered at once with
         * nothing, the partitions kept go on fetching, and the added ones
         * join the assignment later, through ops->assign, once the worker
         * knows where each resumes and recovered its tables (an
         * incremental_assign outside the callback is allowed). */
        rd_kafka_topic_partition_list_t *none = rd_kafka_topic_partition_list_new(1);
        rd_kafka_error_t *e = rd_kafka_incremental_assign(rk, none);
        rd_kafka_topic_partition_list_destroy(none);
        if (e) {
            fs_warn("incremental assign: %s", rd_kafka_error_string(e));
            rd_kafka_error_destroy(e);
        }
        /* The resume alone reaches the fetcher at its next wake-up, up to
         * 1 s later (see wake_fetcher); the pause dropped what was queued. */
        else if (!k->paused_all && !k->paused_some) wake_fetcher(k);
    }
    fs_tplist l = {0};
    if (from_rd(&l, parts)) {
        /* Cannot tell the worker: let librdkafka's default handling keep the group going. */
        fs_tplist_free(&l);
        if (k->base.cb.error) k->base.cb.error(k->base.cb.data, RD_KAFKA_RESP_ERR__FAIL,
                                               "out of memory during a rebalance", 1);
        rd_kafka_error_t *e = NULL;
        if (!coop) rd_kafka_assign(rk, err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS ? parts : NULL);
        else if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) e = rd_kafka_incremental_assign(rk, parts);
        else e = rd_kafka_incremental_unassign(rk, parts);
        if (e) rd_kafka_error_destroy(e);
        return;
    }
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        fs_debug("rebalance (%s): %d partitions assigned", coop ? "cooperative" : "eager", l.len);
        if (k->base.cb.assigned) k->base.cb.assigned(k->base.cb.data, &l);
        else kafka_assign(&k->base, &l, NULL, 0);
    } else {
        /* Lost, not revoked (the session expired: the group gave them to
         * another member already). librdkafka has reset its member id, and
         * a TxnOffsetCommit with no member and no generation is not checked
         * by the broker (KIP-447 fences only a stale generation): the
         * transaction is refused here until it is aborted (txn_commit says
         * FS_TXN_FENCED). The worker commits no offset of them either. */
        int lost = !k->self_assign && rd_kafka_assignment_lost(rk);
        if (k->txn && lost) {
            if (!k->txn_lost)
                fs_warn("partitions lost (the group's session expired, another member may hold "
                        "them): the open transaction will be aborted, not committed");
            k->txn_lost = 1;
            /* Cut off from the broker, the producer may hold requests that
             * were built (sequence numbers given) and never answered. The
             * abort purges them from its queues, and librdkafka 2.0.2 then
             * counts their sequence numbers as acknowledged while the broker
             * never saw them: the next transaction's first send to such a
             * partition fails for good ("rewound sequence number", fatal).
             * The abort makes a new producer instead (job_ended). */
            if (k->inflight) k->txn_lost_sends = 1;
        }
        fs_debug("rebalance (%s): %d partitions %s", coop ? "cooperative" : "eager", l.len,
                 lost ? "lost" : "revoked");
        if (lost) purge_lost(k);
        if (k->base.cb.revoked) k->base.cb.revoked(k->base.cb.data, &l, lost);
        else kafka_unassign(&k->base, &l);
    }
    fs_tplist_free(&l);
}

static void wake_cb(fs_io *io, uint32_t events)
{
    fs_kafka *k = io->data;
    uint64_t v;
    (void)events;
    if (read(io->fd, &v, sizeof v) < 0 && errno != EAGAIN) fs_warn("eventfd read: %s", strerror(errno));
    if (io == &k->cio) k->consume_pending = 1;
    else if (io == &k->aio) k->admin_pending = 1;
    else if (io == &k->tio) k->txn_pending = 1;
    else k->produce_pending = 1;
    k->base.pending = 1;
}

/* Makes a librdkafka queue write to an eventfd the loop watches. */
static int watch_queue(fs_loop *loop, rd_kafka_queue_t *q, int *fd, fs_io *io,
                       void (*cb)(fs_io *, uint32_t), void *data)
{
    *fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (*fd < 0) return -1;
    static const char one[8] = {1, 0, 0, 0, 0, 0, 0, 0};
    rd_kafka_queue_io_event_enable(q, *fd, one, sizeof one);
    io->fd = *fd;
    io->cb = cb;
    io->data = data;
    return fs_io_add(loop, io, EPOLLIN);
}

static int set_pair(rd_kafka_conf_t *c, const char *s, size_t len, char *err, size_t errlen);

/* ---- the join round (cooperative rebalances) ----
 * Under the cooperative protocol a member keeps its partitions, and goes on
 * committing their offsets, while the group rebalances. But the coordinator
 * answers one request of a connection at a time, in order: an OffsetCommit
 * sent after this member's JoinGroup waits until the join round is over, and
 * is then refused with ILLEGAL_GENERATION (the round made a new generation),
 * which librdkafka 2.0.2 takes for a lost assignment: it revokes every
 * partition as lost and rejoins (librdkafka issue 4059, fixed in later
 * versions). So commits wait while this member's JoinGroup is unanswered by
 * the SyncGroup that ends the round. librdkafka tells no one when it joins;
 * its interceptors see every request it sends and every response it gets. */
static int64_t mono_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#define FS_APIKEY_JOINGROUP 11
#define FS_APIKEY_SYNCGROUP 14
#define FS_APIKEY_LEAVEGROUP 13
/* A round that shows no end this long after its JoinGroup (an error made
 * librdkafka start over later, say) no longer holds commits back. */
#define FS_JOIN_HOLD_MS 10000

static rd_kafka_resp_err_t join_sent(rd_kafka_t *rk, int sockfd, const char *brokername, int32_t brokerid,
                                     int16_t api, int16_t ver, int32_t corrid, size_t size, void *opaque)
{
    fs_kafka *k = opaque;
    (void)rk, (void)sockfd, (void)brokername, (void)brokerid, (void)ver, (void)corrid, (void)size;
    if (api == FS_APIKEY_JOINGROUP) __atomic_store_n(&k->join_sent_ms, mono_now_ms(), __ATOMIC_RELEASE);
    else if (api == FS_APIKEY_LEAVEGROUP) __atomic_store_n(&k->sync_done_ms, mono_now_ms(), __ATOMIC_RELEASE);
    return RD_KAFKA_RESP_ERR_NO_ERROR;
}

static rd_kafka_resp_err_t sync_received(rd_kafka_t *rk, int sockfd, const char *brokername,
                                         int32_t brokerid, int16_t api, int16_t ver, int32_t corrid,
                                         size_t size, int64_t rtt, rd_kafka_resp_err_t err, void *opaque)
{
    fs_kafka *k = opaque;
    (void)rk, (void)sockfd, (void)brokername, (void)brokerid, (void)ver, (void)corrid, (void)size, (void)rtt,
        (void)err;
    if (api == FS_APIKEY_SYNCGROUP) __atomic_store_n(&k->sync_done_ms, mono_now_ms(), __ATOMIC_RELEASE);
    return RD_KAFKA_RESP_ERR_NO_ERROR;
}

static rd_kafka_resp_err_t join_watch_new(rd_kafka_t *rk, const rd_kafka_conf_t *conf, void *opaque,
                                          char *errstr, size_t errlen)
{
    (void)conf, (void)errstr, (void)errlen;
    rd_kafka_resp_err_t e = rd_kafka_interceptor_add_on_request_sent(rk, "fstream-join", join_sent, opaque);
    if (!e) e = rd_kafka_interceptor_add_on_response_received(rk, "fstream-join", sync_received, opaque);
    return e;
}

/* This member's join round runs (cooperative only: an eager member revokes
 * everything before it joins, so it has nothing to commit meanwhile). */
static int group_joining(fs_kafka *k)
{
    if (!k->base.cooperative || k->self_assign) return 0;
    int64_t sent = __atomic_load_n(&k->join_sent_ms, __ATOMIC_ACQUIRE);
    int64_t done = __atomic_load_n(&k->sync_done_ms, __ATOMIC_ACQUIRE);
    return sent > done && mono_now_ms() - sent < FS_JOIN_HOLD_MS;
}

/* A consumer of this worker's cluster. The group's own consumer (main) gets
 * the rebalance and commit callbacks; others (changelog recovery, global
 * tables) are assign-only and read committed data. */
static rd_kafka_t *new_consumer(fs_kafka *k, const char *group, int main_group, char *err,
                                size_t errlen)
{
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    rd_kafka_conf_set_opaque(c, k);
    rd_kafka_conf_set_log_cb(c, log_cb);
    rd_kafka_conf_set_error_cb(c, error_cb);
    if (main_group) {
        rd_kafka_conf_set_socket_cb(c, socket_cb);
        rd_kafka_conf_set_rebalance_cb(c, kafka_rebalance);
        rd_kafka_conf_set_offset_commit_cb(c, kafka_commit_cb);
        if (rd_kafka_conf_interceptor_add_on_new(c, "fstream-join", join_watch_new, k)) {
            snprintf(err, errlen, "could not watch the consumer group's joins");
            rd_kafka_conf_destroy(c);
            return NULL;
        }
    }
    if (conf_set(c, "bootstrap.servers", k->bootstrap, err, errlen) ||
        conf_set(c, "group.id", group, err, errlen) ||
        conf_set(c, "client.id", group, err, errlen) ||
        conf_set(c, "enable.auto.commit", "false", err, errlen) ||
        conf_set(c, "enable.auto.offset.store", "false", err, errlen) ||
        conf_set(c, "auto.offset.reset", "earliest", err, errlen) ||
        conf_set(c, "isolation.level", "read_committed", err, errlen) ||
        conf_set(c, "enable.partition.eof", main_group ? "false" : "true", err, errlen) ||
        /* librdkafka prefetches up to 64 MiB by default; the worker queues its own
         * events too (max_queued), so 16 MiB keeps memory down without starving it. */
        conf_set(c, "queued.max.messages.kbytes", FS_STR(FS_FETCH_QUEUE_KB), err, errlen) ||
        /* The group's consumer: a small prefetch that fetch_kick keeps flowing.
         * (Recovery and global-table consumers read to an end and stop.) */
        (main_group && (conf_set(c, "queued.min.messages", FS_STR(FS_FETCH_QUEUE_MSGS), err, errlen) ||
                        conf_set(c, "fetch.max.bytes", FS_STR(FS_FETCH_MAX_BYTES), err, errlen))) ||
        (main_group && (conf_set(c, "allow.auto.create.topics", "true", err, errlen) ||
                        conf_set(c, "session.timeout.ms", "6000", err, errlen) ||
                        conf_set(c, "heartbeat.interval.ms", "1500", err, errlen) ||
                        conf_set(c, "partition.assignment.strategy", k->assignor, err, errlen) ||
                        (k->instance_id &&
                         conf_set(c, "group.instance.id", k->instance_id, err, errlen))))) {
        rd_kafka_conf_destroy(c);
        return NULL;
    }
    /* librdkafka's mock broker answers a Fetch that finds no data only when
     * fetch.wait.max.ms (500 ms by default) has passed, even if data arrived
     * meanwhile: on the embedded broker every hop through a topic, and every
     * reload, would wait that long. */
    /* Changelog recovery reads one partition after another up to its end: the
     * fetch left waiting at one's end must not hold the next one up for 500 ms. */
    if ((k->embedded || !main_group) && conf_set(c, "fetch.wait.max.ms", "50", err, errlen)) {
        rd_kafka_conf_destroy(c);
        return NULL;
    }
    /* FSTREAM_KAFKA_DEBUG=cgrp,fetch,...: librdkafka's own debug contexts (log level debug). */
    const char *dbg = getenv("FSTREAM_KAFKA_DEBUG");
    if (dbg && *dbg && conf_set(c, "debug", dbg, err, errlen)) {
        rd_kafka_conf_destroy(c);
        return NULL;
    }
    /* FSTREAM_KAFKA_CONSUMER="key=value,key=value": the group consumer's
     * settings after the defaults (fetch.wait.max.ms, say, for bench/latency.sh). */
    const char *env = main_group ? getenv("FSTREAM_KAFKA_CONSUMER") : NULL;
    for (const char *s = env; s && *s;) {
        const char *end = strchr(s, ',');
        if (!end) end = s + strlen(s);
        if (end > s && set_pair(c, s, (size_t)(end - s), err, errlen)) {
            rd_kafka_conf_destroy(c);
            return NULL;
        }
        s = *end ? end + 1 : end;
    }
    if (main_group) {
        /* What the consumer runs with (FSTREAM_KAFKA_CONSUMER may have set it). */
        char v[256];
        size_t vlen = sizeof v;
        k->coop_conf = rd_kafka_conf_get(c, "partition.assignment.strategy", v, &vlen) == RD_KAFKA_CONF_OK &&
                       strstr(v, "cooperative") != NULL;
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, c, err, errlen);
    if (!rk) rd_kafka_conf_destroy(c);
    return rk;
}

int fs_kafka_assignor_check(const char *assignor, char *err, size_t errlen)
{
    int coop = 0, eager = 0;
    for (const char *s = assignor; s && *s;) {
        const char *end = strchr(s, ',');
        size_t n = end ? (size_t)(end - s) : strlen(s);
        if (n == 18 && strncmp(s, "cooperative-sticky", n) == 0) coop = 1;
        else if ((n == 5 && strncmp(s, "range", n) == 0) || (n == 10 && strncmp(s, "roundrobin", n) == 0))
            eager = 1;
        else {
            snprintf(err, errlen,
                     "unknown partition assignor '%.*s' (cooperative-sticky, range or roundrobin)",
                     (int)n, s);
            return -1;
        }
        s = end ? end + 1 : s + n;
    }
    if (!coop && !eager) {
        snprintf(err, errlen, "no partition assignor given (cooperative-sticky, range or roundrobin)");
        return -1;
    }
    if (coop && eager) {
        snprintf(err, errlen,
                 "partition assignor '%s' mixes cooperative-sticky with eager assignors (librdkafka "
                 "takes one protocol): choose cooperative-sticky, or range/roundrobin",
                 assignor);
        return -1;
    }
    return 0;
}

#define URL_FORMS "memory:// or kafka://HOST[:PORT][,HOST[:PORT]...]"

/* One HOST[:PORT] of a kafka:// URL, [start, end): a name or IPv4 address, or
 * an IPv6 address in brackets; a port from 1 to 65535 (librdkafka's default,
 * 9092, when there is none). NULL when fine, else what is wrong. */
static const char *check_hostport(const char *s, const char *end, char *why, size_t whylen)
{
    const char *h = s, *colon = NULL;
    if (s < end && *s == '[') {
        const char *close = memchr(s, ']', (size_t)(end - s));
        if (!close || close == s + 1) return "an IPv6 address needs its closing ']'";
        for (const char *q = s + 1; q < close; q++)
            if (!isxdigit((unsigned char)*q) && *q != ':' && *q != '.')
                return "that is not an IPv6 address";
        if (close + 1 < end && close[1] != ':') return "']' must be followed by :PORT";
        colon = close + 1 < end ? close + 1 : NULL;
    } else {
        for (const char *q = s; q < end; q++) {
            if (*q == ':') {
                colon = q;
                break;
            }
            if (!isalnum((unsigned char)*q) && *q != '.' && *q != '-' && *q != '_') {
                snprintf(why, whylen, "'%c' cannot be part of a host name", *q);
                return why;
            }
        }
        if ((colon ? colon : end) == h) return "a host is missing";
    }
    if (!colon) return NULL;
    long port = 0;
    const char *q = colon + 1;
    if (q == end) return "the port after ':' is missing";
    for (; q < end; q++) {
        if (!isdigit((unsigned char)*q) || port > 65535)
            return "the port must be a number from 1 to 65535";
        port = port * 10 + (*q - '0');
    }
    if (port < 1 || port > 65535) return "the port must be a number from 1 to 65535";
    return NULL;
}

int fs_broker_url_check(const char *url, const char **bootstrap, char *err, size_t errlen)
{
    char why[64];
    const char *bad = NULL;
    if (strncmp(url, "memory://", 9) == 0) {
        if (url[9]) bad = "memory:// takes nothing after it";
        else *bootstrap = NULL;
    } else if (strncmp(url, "kafka://", 8) == 0) {
        const char *s = url + 8;
        if (!*s) bad = "no host after kafka://";
        while (!bad) {
            const char *end = strchr(s, ',');
            if (!end) end = s + strlen(s);
            bad = check_hostport(s, end, why, sizeof why);
            if (!*end) break;
            s = end + 1;
        }
        if (!bad) *bootstrap = url + 8;
    } else {
        bad = "use " URL_FORMS;
    }
    if (!bad) return 0;
    snprintf(err, errlen, "bad broker URL '%s': %s", url, bad);
    return -1;
}

static void kafka_close(fs_transport *tp);
static int set_pair(rd_kafka_conf_t *c, const char *s, size_t len, char *err, size_t errlen);

/* The producer: the defaults, a transactional one's (txn_id not NULL), then
 * the caller's and FSTREAM_KAFKA_PRODUCER's settings (k->pconf), which win.
 * Delivery reports and errors come as events on its main queue (served by
 * serve_producer on the loop's thread), never as callbacks: in callback mode
 * rd_kafka_flush — which commit_transaction and abort_transaction call on
 * the transaction thread — would run them there. */
static rd_kafka_t *new_producer(fs_kafka *k, const char *txn_id, char *err, size_t errlen)
{
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    rd_kafka_conf_set_opaque(c, k);
    rd_kafka_conf_set_log_cb(c, log_cb);
    rd_kafka_conf_set_events(c, RD_KAFKA_EVENT_DR | RD_KAFKA_EVENT_ERROR);
    rd_kafka_conf_set_socket_cb(c, socket_cb);
    if (conf_set(c, "bootstrap.servers", k->bootstrap, err, errlen) ||
        conf_set(c, "client.id", k->group, err, errlen) ||
        conf_set(c, "linger.ms", "5", err, errlen) ||
        conf_set(c, "enable.idempotence", "true", err, errlen) ||
        conf_set(c, "partitioner", "murmur2_random", err, errlen) ||
        conf_set(c, "queue.buffering.max.messages", "1000000", err, errlen) ||
        conf_set(c, "batch.num.messages", "10000", err, errlen) ||
        /* What the worker consumed it may have to copy (dead letters): let the
         * broker, not the client, decide what is too large. */
        conf_set(c, "message.max.bytes", "16777216", err, errlen) ||
        (txn_id && (conf_set(c, "transactional.id", txn_id, err, errlen) ||
                    /* A stopped zombie's open transaction blocks read_committed
                     * readers of its partitions at most this long (as Kafka
                     * Streams under exactly-once). */
                    conf_set(c, "transaction.timeout.ms", "10000", err, errlen))))
        goto fail;
    for (size_t i = 0; i < k->pconf.len; i++)
        if (set_pair(c, k->pconf.items[i], strlen(k->pconf.items[i]), err, errlen)) goto fail;
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, errlen);
    if (rk) return rk;
fail:
    rd_kafka_conf_destroy(c);
    return NULL;
}

/* One "key=value" of len bytes into c. */
static int set_pair(rd_kafka_conf_t *c, const char *s, size_t len, char *err, size_t errlen)
{
    const char *eq = memchr(s, '=', len);
    char key[256], val[1024];
    size_t kl = eq ? (size_t)(eq - s) : 0, vl = eq ? len - kl - 1 : 0;
    if (!eq || !kl || kl >= sizeof key || vl >= sizeof val) {
        snprintf(err, errlen, "producer setting '%.*s' is not key=value (at most %zu bytes)",
                 (int)len, s, sizeof val - 1);
        return -1;
    }
    memcpy(key, s, kl);
    key[kl] = 0;
    memcpy(val, eq + 1, vl);
    val[vl] = 0;
    return conf_set(c, key, val, err, errlen);
}

fs_transport *fs_kafka_new(fs_loop *loop, const char *broker_url, const char *group,
                           const char *const *conf, const char *instance_id,
                           const char *assignor, char *err, size_t errlen)
{
    const char *servers;
    if (fs_broker_url_check(broker_url, &servers, err, errlen)) return NULL;
    if (!assignor) assignor = "cooperative-sticky";
    if (fs_kafka_assignor_check(assignor, err, errlen)) return NULL;
    fs_kafka *k = calloc(1, sizeof *k);
    if (!k) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    k->base.ops = &kafka_ops;
    k->base.loop = loop;
    k->base.durable = 1;
    k->cfd = k->pfd = k->afd = k->tfd = -1;
    k->cq_timer.cb = cq_timer_cb;
    k->cq_timer.data = k;
    k->group = strdup(group);
    k->assignor = strdup(assignor);
    k->fetched = malloc(FS_CONSUME_BATCH * sizeof *k->fetched);
    k->msgs = malloc(FS_CONSUME_BATCH * sizeof *k->msgs);
    rd_kafka_conf_t *c = NULL;
    if (!k->group || !k->assignor || !k->fetched || !k->msgs) goto oom;
    if (!servers) {
        c = rd_kafka_conf_new();
        rd_kafka_conf_set_log_cb(c, log_cb);
        k->mock_host = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, errlen);
        if (!k->mock_host) goto fail; /* rd_kafka_new keeps conf only on success */
        c = NULL;
        k->mock = rd_kafka_mock_cluster_new(k->mock_host, 1);
        if (!k->mock) {
            snprintf(err, errlen, "could not start the embedded broker");
            goto fail;
        }
        k->bootstrap = strdup(rd_kafka_mock_cluster_bootstraps(k->mock));
        k->embedded = 1;
        /* This broker lives and dies with this process: no other worker can
         * join its group, so the worker takes every partition itself rather
         * than wait out the mock coordinator's 3 s initial rebalance delay. */
        k->self_assign = 1;
    } else {
        k->bootstrap = strdup(servers);
        /* memory:// has no group to rejoin: the worker assigns itself. */
        if (instance_id && !(k->instance_id = strdup(instance_id))) goto oom;
    }
    if (!k->bootstrap) goto oom;

    /* Producer settings of the caller, then of FSTREAM_KAFKA_PRODUCER
     * ("key=value,key=value"), applied after the defaults (new_producer). */
    for (int i = 0; conf && conf[i]; i++) {
        char *kv = strdup(conf[i]);
        if (!kv || fs_vec_push(&k->pconf, kv)) {
            free(kv);
            goto oom;
        }
    }
    const char *env = getenv("FSTREAM_KAFKA_PRODUCER");
    for (const char *s = env; s && *s;) {
        const char *end = strchr(s, ',');
        if (!end) end = s + strlen(s);
        if (end > s) {
            char *kv = strndup(s, (size_t)(end - s));
            if (!kv || fs_vec_push(&k->pconf, kv)) {
                free(kv);
                goto oom;
            }
        }
        s = *end ? end + 1 : end;
    }
    k->producer = new_producer(k, NULL, err, errlen);
    if (!k->producer) goto fail;

    k->consumer = new_consumer(k, k->group, 1, err, errlen);
    if (!k->consumer) goto fail;
    /* Until a group chose its protocol, the configured one says what to expect. */
    k->base.cooperative = k->coop_conf;
    rd_kafka_poll_set_consumer(k->consumer);
    /* Without it, the lag reported while fetching is paused stands still. */
    k->lag = fs_lag_new(k->consumer, FS_LAG_INTERVAL_MS, 2000);
    if (!k->lag) fs_warn("cannot start the end-offset thread: the lag is known from fetches only");
    k->cq = rd_kafka_queue_get_consumer(k->consumer);
    k->pq = rd_kafka_queue_get_main(k->producer);
    k->aq = rd_kafka_queue_new(k->consumer);
    if (!k->cq || !k->pq || !k->aq) goto oom;
    if (watch_queue(loop, k->cq, &k->cfd, &k->cio, wake_cb, k) ||
        watch_queue(loop, k->pq, &k->pfd, &k->pio, wake_cb, k) ||
        watch_queue(loop, k->aq, &k->afd, &k->aio, wake_cb, k)) {
        snprintf(err, errlen, "eventfd: %s", strerror(errno));
        goto fail;
    }
    return &k->base;
oom:
    snprintf(err, errlen, "out of memory");
fail:
    if (c) rd_kafka_conf_destroy(c);
    kafka_close(&k->base);
    return NULL;
}

const char *fs_kafka_bootstrap(const fs_transport *tp)
{
    return tp && tp->ops == &kafka_ops ? ((const fs_kafka *)tp)->bootstrap : "";
}

int fs_kafka_embedded(const fs_transport *tp)
{
    return tp && tp->ops == &kafka_ops && ((const fs_kafka *)tp)->embedded;
}

static int register_topic(fs_kafka *k, fs_topic *t);

/* Producer handle of a topic: a copy of the producer's defaults (the murmur2
 * partitioner among them), plus the topic as opaque so delivery reports find it. */
static int open_topic(fs_kafka *k, fs_topic *t, char *err, size_t errlen)
{
    if (FS_TXT(t)->tx) return 0;
    /* Registered, so that a producer's replacement (txn_init, fencing) and
     * close find every handle made on it. */
    if (register_topic(k, t)) goto oom;
    rd_kafka_topic_conf_t *tc = rd_kafka_default_topic_conf_dup(k->producer);
    if (!tc) goto oom;
    rd_kafka_topic_conf_set_opaque(tc, t);
    FS_TXT(t)->tx = rd_kafka_topic_new(k->producer, FS_TXT(t)->name, tc);
    if (!FS_TXT(t)->tx) {
        rd_kafka_topic_conf_destroy(tc);
        snprintf(err, errlen, "cannot open topic %s: %s", FS_TXT(t)->name,
                 rd_kafka_err2str(rd_kafka_last_error()));
        return -1;
    }
    return 0;
oom:
    snprintf(err, errlen, "out of memory");
    return -1;
}

/* Remembers t (the transport sees only topics resolved through it). */
static int register_topic(fs_kafka *k, fs_topic *t)
{
    for (size_t i = 0; i < k->topics.len; i++)
        if (k->topics.items[i] == t) return 0;
    return fs_vec_push(&k->topics, t);
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Partition count of `name` in md, 0 when the broker does not know it. */
static int count_in(const struct rd_kafka_metadata *md, const char *name)
{
    for (int j = 0; md && j < md->topic_cnt; j++)
        if (strcmp(md->topics[j].topic, name) == 0)
            return md->topics[j].err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ? 0
                                                                                : md->topics[j].partition_cnt;
    return 0;
}

/* Creates the missing topics: directly on the embedded broker, with the admin
 * API elsewhere. A standalone embedded broker (`fstream-lua broker`) has no
 * CreateTopics; there the request fails and the broker auto-creates the topic
 * with its own count when its metadata is asked for. */
static void create_missing(fs_kafka *k, fs_topic **miss, int n)
{
    if (k->mock) {
        for (int i = 0; i < n; i++) {
            rd_kafka_resp_err_t e = rd_kafka_mock_topic_create(k->mock, FS_TXT(miss[i])->name, FS_TXT(miss[i])->partitions, 1);
            if (e) /* the wait for its metadata reports it */
                fs_warn("cannot create topic %s: %s", FS_TXT(miss[i])->name, rd_kafka_err2str(e));
        }
        return;
    }
    if (k->no_create_topics) return;
    char errstr[256];
    rd_kafka_NewTopic_t **nt = calloc((size_t)n, sizeof *nt);
    if (!nt) return;
    size_t cnt = 0;
    for (int i = 0; i < n; i++) {
        nt[cnt] = rd_kafka_NewTopic_new(FS_TXT(miss[i])->name, FS_TXT(miss[i])->partitions, -1, errstr, sizeof errstr);
        if (!nt[cnt]) { /* the wait for its metadata reports it */
            fs_warn("cannot create topic %s: %s", FS_TXT(miss[i])->name, errstr);
            continue;
        }
        /* Changelogs keep the latest value per key: compaction, as Kafka Streams does. */
        if (FS_TXT(miss[i])->compact) rd_kafka_NewTopic_set_config(nt[cnt], "cleanup.policy", "compact");
        if (FS_TXT(miss[i])->retention_ms > 0) {
            char ms[24];
            snprintf(ms, sizeof ms, "%lld", FS_TXT(miss[i])->retention_ms);
            rd_kafka_NewTopic_set_config(nt[cnt], "retention.ms", ms);
        }
        cnt++;
    }
    if (!cnt) {
        free(nt);
        return;
    }
    rd_kafka_AdminOptions_t *o = rd_kafka_AdminOptions_new(k->producer, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    rd_kafka_queue_t *q = rd_kafka_queue_new(k->producer);
    rd_kafka_event_t *ev = NULL;
    if (o && q) {
        rd_kafka_AdminOptions_set_request_timeout(o, 3000, errstr, sizeof errstr);
        rd_kafka_CreateTopics(k->producer, nt, cnt, o, q);
        ev = rd_kafka_queue_poll(q, FS_METADATA_MS);
    }
    const rd_kafka_CreateTopics_result_t *res = ev ? rd_kafka_event_CreateTopics_result(ev) : NULL;
    if (!ev || rd_kafka_event_error(ev)) {
        fs_info("could not create topics (%s); relying on the broker's auto-creation",
                ev ? rd_kafka_event_error_string(ev) : "no answer");
        /* Don't wait for that again at this start (tables' changelogs come next). */
        k->no_create_topics = 1;
    } else if (res) {
        size_t rn;
        const rd_kafka_topic_result_t **tr = rd_kafka_CreateTopics_result_topics(res, &rn);
        for (size_t i = 0; i < rn; i++) {
            rd_kafka_resp_err_t e = rd_kafka_topic_result_error(tr[i]);
            if (e == RD_KAFKA_RESP_ERR_NO_ERROR)
                fs_info("created topic %s", rd_kafka_topic_result_name(tr[i]));
            else if (e != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
                fs_warn("could not create topic %s: %s", rd_kafka_topic_result_name(tr[i]),
                        rd_kafka_topic_result_error_string(tr[i]));
        }
    }
    if (ev) rd_kafka_event_destroy(ev);
    if (q) rd_kafka_queue_destroy(q);
    if (o) rd_kafka_AdminOptions_destroy(o);
    rd_kafka_NewTopic_destroy_array(nt, cnt);
    free(nt);
}

static int kafka_resolve(fs_transport *tp, fs_topic *const *ts, int n, char *err, size_t errlen)
{
    fs_kafka *k = kafka_of(tp);
    for (int i = 0; i < n; i++)
        if (register_topic(k, ts[i])) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
    int todo = 0;
    for (int i = 0; i < n; i++) todo |= !FS_TXT(ts[i])->resolved;
    if (todo) {
        /* Asking for every topic creates none (a request naming a topic may). */
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t e = rd_kafka_metadata(k->producer, 1, NULL, &md, FS_METADATA_MS);
        if (e) {
            snprintf(err, errlen, "no answer from the broker at %s within %d s (%s): is it running?",
                     k->bootstrap, FS_METADATA_MS / 1000, rd_kafka_err2str(e));
            return -1;
        }
        fs_topic **miss = calloc((size_t)n, sizeof *miss);
        if (!miss) {
            rd_kafka_metadata_destroy(md);
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        int nmiss = 0;
        for (int i = 0; i < n; i++) {
            if (FS_TXT(ts[i])->resolved) continue;
            int cnt = count_in(md, FS_TXT(ts[i])->name);
            if (cnt > 0) {
                if (cnt != FS_TXT(ts[i])->partitions)
                    fs_debug("topic %s has %d partitions (the app would create %d)", FS_TXT(ts[i])->name, cnt,
                             FS_TXT(ts[i])->partitions);
                FS_TXT(ts[i])->partitions = cnt;
                FS_TXT(ts[i])->resolved = 1;
            } else {
                int dup = 0; /* the same topic may be named twice */
                for (int j = 0; j < nmiss; j++) dup |= miss[j] == ts[i];
                if (!dup) miss[nmiss++] = ts[i];
            }
        }
        rd_kafka_metadata_destroy(md);
        int rc = 0;
        if (nmiss) create_missing(k, miss, nmiss);
        /* A new topic's count as the broker has it (an auto-created one has the
         * broker's). Asking for one topic is also what makes a broker without
         * CreateTopics create it. */
        int64_t deadline = mono_ms() + FS_METADATA_MS;
        for (int i = 0; i < nmiss && rc == 0; i++) {
            fs_topic *t = miss[i];
            if (open_topic(k, t, err, errlen)) {
                rc = -1;
                break;
            }
            for (;;) {
                int64_t left = deadline - mono_ms();
                md = NULL;
                e = rd_kafka_metadata(k->producer, 0, FS_TXT(t)->tx, &md, left > 100 ? (int)left : 100);
                int cnt = e ? 0 : count_in(md, FS_TXT(t)->name);
                if (md) rd_kafka_metadata_destroy(md);
                if (cnt > 0) {
                    FS_TXT(t)->partitions = cnt;
                    FS_TXT(t)->resolved = 1;
                    break;
                }
                if (mono_ms() >= deadline) {
                    snprintf(err, errlen, "topic %s does not exist and the broker at %s did not create it within %d s (%s)",
                             FS_TXT(t)->name, k->bootstrap, FS_METADATA_MS / 1000,
                             e ? rd_kafka_err2str(e) : "not in its metadata");
                    rc = -1;
                    break;
                }
                struct timespec pause = {0, 100 * 1000 * 1000};
                nanosleep(&pause, NULL);
            }
        }
        free(miss);
        if (rc) return rc;
    }
    for (int i = 0; i < n; i++)
        if (open_topic(k, ts[i], err, errlen)) return -1;
    return 0;
}

/* The topics the worker's agents read now (cb.consumes), as a subscription. */
static rd_kafka_topic_partition_list_t *subscription_of(fs_kafka *k)
{
    rd_kafka_topic_partition_list_t *subs = rd_kafka_topic_partition_list_new((int)k->topics.len + 1);
    for (size_t i = 0; i < k->topics.len; i++) {
        fs_topic *t = k->topics.items[i];
        if (k->base.cb.consumes && k->base.cb.consumes(k->base.cb.data, t))
            rd_kafka_topic_partition_list_add(subs, FS_TXT(t)->name, RD_KAFKA_PARTITION_UA);
    }
    return subs;
}

static int same_topics(const rd_kafka_topic_partition_list_t *a, const rd_kafka_topic_partition_list_t *b)
{
    if (a->cnt != b->cnt) return 0;
    for (int i = 0; i < a->cnt; i++) {
        int found = 0;
        for (int j = 0; j < b->cnt && !found; j++) found = strcmp(a->elems[i].topic, b->elems[j].topic) == 0;
        if (!found) return 0;
    }
    return 1;
}

static void self_subs_clear(fs_kafka *k)
{
    for (size_t i = 0; i < k->self_subs.len; i++) free(k->self_subs.items[i]);
    k->self_subs.len = 0;
}

/* Self-assignment's rd_kafka_subscribe: records the topics, and the loop
 * assigns them. Returns 1 when the topics changed (no subscription yet counts
 * as an empty one, as librdkafka's does), -1 out of memory. */
static int self_subscribe(fs_kafka *k, rd_kafka_topic_partition_list_t *want)
{
    int same = want->cnt == (int)k->self_subs.len;
    for (int i = 0; same && i < want->cnt; i++) {
        int found = 0;
        for (size_t j = 0; j < k->self_subs.len && !found; j++)
            found = strcmp(want->elems[i].topic, k->self_subs.items[j]) == 0;
        same = found;
    }
    if (same && (k->self_has_subs || want->cnt == 0)) return 0;
    self_subs_clear(k);
    for (int i = 0; i < want->cnt; i++) {
        char *name = strdup(want->elems[i].topic);
        if (!name || fs_vec_push(&k->self_subs, name)) {
            free(name);
            return -1;
        }
    }
    k->self_has_subs = 1;
    k->self_pending = 1;
    k->subscribed = 1;
    k->consume_pending = 1;
    return 1;
}

static int kafka_subscribe(fs_transport *tp, char *err, size_t errlen)
{
    fs_kafka *k = kafka_of(tp);
    rd_kafka_topic_partition_list_t *want = subscription_of(k), *have = NULL;
    int rc = 0, was = k->subscribed;
    if (k->self_assign) {
        /* As a group would: revoke and reassign when the topics change. */
        rc = self_subscribe(k, want);
        if (rc < 0) snprintf(err, errlen, "out of memory");
    } else {
        if (!k->subscribed || rd_kafka_subscription(k->consumer, &have)) have = NULL;
        if (!have ? want->cnt > 0 : !same_topics(want, have)) {
            /* A new topic list makes the group rebalance: the usual revocation
             * and assignment follow. */
            rd_kafka_resp_err_t e = want->cnt ? rd_kafka_subscribe(k->consumer, want)
                                              : rd_kafka_unsubscribe(k->consumer);
            if (e) {
                snprintf(err, errlen, "subscribe failed: %s", rd_kafka_err2str(e));
                rc = -1;
            } else {
                k->subscribed = 1;
                rc = 1;
            }
        }
        if (have) rd_kafka_topic_partition_list_destroy(have);
    }
    if (rc > 0 && was) fs_info("subscription changed: %d topics", want->cnt);
    rd_kafka_topic_partition_list_destroy(want);
    k->consume_pending = 1;
    k->base.pending = 1;
    return rc;
}

/* memory://: the assignment the group would give its only member — every
 * partition of every subscribed topic — reported through cb.assigned as a
 * JoinGroup's would be, so tables, recovery, resume offsets and leadership
 * work unchanged. Offsets still go to the embedded broker's coordinator: it
 * takes commits from a consumer that never joined (no group exists, so no
 * member or generation is checked), as Kafka does for a simple consumer.
 * Cooperative: only what the worker does not own yet is reported. */
static void self_assign_now(fs_kafka *k)
{
    fs_tplist l = {0};
    for (size_t i = 0; i < k->self_subs.len; i++) {
        fs_topic *t = NULL;
        for (size_t j = 0; j < k->topics.len && !t; j++)
            if (strcmp(FS_TXT(k->topics.items[j])->name, k->self_subs.items[i]) == 0) t = k->topics.items[j];
        for (int p = 0; t && p < FS_TXT(t)->partitions; p++) {
            if (fs_tplist_find(&k->self_owned, FS_TXT(t)->name, p)) continue;
            if (!fs_tplist_add(&l, FS_TXT(t)->name, p, FS_OFFSET_INVALID) ||
                !fs_tplist_add(&k->self_owned, FS_TXT(t)->name, p, FS_OFFSET_INVALID)) {
                fs_tplist_free(&l);
                if (k->base.cb.error)
                    k->base.cb.error(k->base.cb.data, RD_KAFKA_RESP_ERR__FAIL,
                                     "out of memory assigning partitions", 1);
                return;
            }
        }
    }
    if (!l.len && k->self_owned.len) return; /* nothing new (cooperative) */
    fs_info("memory://: sole member of group %s, assigning itself %d partitions (no JoinGroup)",
            k->group, l.len);
    /* A subscription makes the consumer ask for its topics' metadata; an
     * assignment does not, and a partition without a known leader waits for
     * librdkafka's 1 s offset-query retry. Asking now (a local broker answers
     * in about a millisecond) lets every partition start fetching at once. */
    const struct rd_kafka_metadata *md = NULL;
    if (l.len && !rd_kafka_metadata(k->consumer, 1, NULL, &md, FS_METADATA_MS) && md)
        rd_kafka_metadata_destroy(md);
    k->base.cooperative = k->coop_conf;
    if (l.len && k->base.cb.assigned) k->base.cb.assigned(k->base.cb.data, &l);
    fs_tplist_free(&l);
}

/* The owned partitions a self-assigned subscription no longer covers
 * (cooperative), or all of them (eager), moved out of self_owned into out. */
static int self_leaving(fs_kafka *k, fs_tplist *out)
{
    fs_tplist keep = {0};
    for (int i = 0; i < k->self_owned.len; i++) {
        fs_tp *o = &k->self_owned.items[i];
        int stays = 0;
        for (size_t j = 0; k->coop_conf && j < k->self_subs.len && !stays; j++)
            stays = strcmp(o->topic, k->self_subs.items[j]) == 0;
        if (!fs_tplist_add(stays ? &keep : out, o->topic, o->partition, FS_OFFSET_INVALID)) {
            fs_tplist_free(&keep);
            return -1;
        }
    }
    fs_tplist_free(&k->self_owned);
    k->self_owned = keep;
    return 0;
}

/* A new self-assigned subscription. Eager (as the group's range/roundrobin
 * protocol is): revoke everything held, then assign the new set once the
 * worker answered the revocation (unassign). Cooperative: revoke only the
 * partitions of topics that left the subscription, then assign only those of
 * topics that joined it; the others keep going. */
static void self_reassign(fs_kafka *k)
{
    if (k->self_revoking) return; /* the worker still lets go of them */
    fs_tplist gone = {0};
    if (self_leaving(k, &gone)) {
        fs_tplist_free(&gone);
        if (k->base.cb.error)
            k->base.cb.error(k->base.cb.data, RD_KAFKA_RESP_ERR__FAIL, "out of memory revoking partitions", 1);
        return;
    }
    if (gone.len) {
        k->self_revoking = 1;
        k->base.cooperative = k->coop_conf;
        if (k->base.cb.revoked) k->base.cb.revoked(k->base.cb.data, &gone, 0);
        else kafka_unassign(&k->base, &gone);
        fs_tplist_free(&gone);
        if (k->self_revoking) return;
    }
    fs_tplist_free(&gone);
    k->self_pending = 0;
    self_assign_now(k);
}

static fs_topic *topic_of(fs_kafka *k, rd_kafka_topic_t *rkt)
{
    if (rkt == k->last_rkt) return k->last_topic;
    const char *name = rd_kafka_topic_name(rkt);
    fs_topic *t = NULL;
    for (size_t i = 0; i < k->topics.len && !t; i++)
        if (strcmp(FS_TXT(k->topics.items[i])->name, name) == 0) t = k->topics.items[i];
    k->last_rkt = rkt;
    k->last_topic = t;
    return t;
}

/* Hands librdkafka what waits in the overflow queue, in order, until it is
 * full again. */
static rd_kafka_resp_err_t send_one(fs_kafka *k, fs_topic *t, int32_t partition, const void *key,
                                    size_t klen, const void *val, size_t vlen,
                                    const fs_header *hs, int nh, rd_kafka_headers_t *hdrs,
                                    int64_t ts, void *opaque);

static void drain(fs_kafka *k)
{
    if (k->draining) return;
    k->draining = 1;
    while (k->overflow.len) {
        /* The gate: with no transaction open only what the sealed one was
         * sent before txn_seal goes on; an abort's drops go by poll. */
        int gated = k->txn && !k->txn_open;
        if (k->txn_dropping || (gated && k->txn_quota <= 0)) break;
        struct fs_overflow *o = &fs_ring_at(&k->overflow, 0);
        rd_kafka_resp_err_t e =
            send_one(k, o->topic, o->partition, o->has_key ? o->key : NULL, o->klen,
                     o->has_val ? o->key + o->klen : NULL, o->vlen, NULL, 0, o->hdrs, o->ts, o->opaque);
        if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL) break;
        if (e) {
            /* Refused for good: report it as a failed delivery, like librdkafka
             * would (in a transaction: the transaction is lost with it). */
            if (o->hdrs) rd_kafka_headers_destroy(o->hdrs);
            fs_report r = {o->topic, o->partition, -1, o->vlen, e, ctx_unpack(o->opaque), 0};
            if (k->txn) {
                r.aborted = !refused_for_itself(e);
                k->txn_doomed = 1;
            }
            if (k->base.cb.delivered) k->base.cb.delivered(k->base.cb.data, &r);
        }
        /* else librdkafka owns the headers now */
        free(o->key);
        (void)fs_ring_shift(&k->overflow);
        k->base.backlog--;
        if (gated) k->txn_quota--;
    }
    k->draining = 0;
}

static void txn_service(fs_kafka *k);

/* librdkafka 2.0.2's fetcher stops asking for a partition once the consumer
 * queue holds queued.min.messages (or queued.max.messages.kbytes), and looks
 * again only when its broker thread wakes: for a response on its connection,
 * an operation sent to that thread, or its 1 s idle timeout. While the worker
 * drains a backlog nothing else wakes it, so each time the queue filled, the
 * worker emptied it and then waited out the rest of that second with nothing
 * to do (see BENCHMARKS.md, "Backlog drain"). Pausing and resuming does not
 * wake it either (those operations are served by librdkafka's main thread,
 * which only flags the partition). A seek to a concrete offset does: it
 * wakes the partition's broker thread. So the fetcher is woken by seeking
 * every assigned partition to where the worker has consumed to (the
 * position: the offset after the last message taken from the queue), which
 * fetches exactly what comes next. The seek drops whatever of that partition
 * is still queued, so the queue is emptied first. */
static int wake_fetcher(fs_kafka *k)
{
    rd_kafka_topic_partition_list_t *a = NULL, *l = NULL;
    int rc = -1;
    if (rd_kafka_assignment(k->consumer, &a) || !a) return -1;
    if (rd_kafka_position(k->consumer, a)) goto out;
    l = rd_kafka_topic_partition_list_new(a->cnt > 0 ? a->cnt : 1);
    /* A partition nothing was taken from since its assignment (or the last
     * seek) has no position; the broker thread woken for the others looks at
     * it too. */
    for (int i = 0; i < a->cnt; i++)
        if (a->elems[i].offset >= 0)
            rd_kafka_topic_partition_list_add(l, a->elems[i].topic, a->elems[i].partition)->offset =
                a->elems[i].offset;
    rc = 0;
    if (l->cnt) {
        /* timeout 0: asynchronous, nothing to wait for */
        rd_kafka_error_t *e = rd_kafka_seek_partitions(k->consumer, l, 0);
        if (e) {
            rd_kafka_error_destroy(e);
            rc = -1;
        }
    }
out:
    if (l) rd_kafka_topic_partition_list_destroy(l);
    rd_kafka_topic_partition_list_destroy(a);
    return rc;
}

static ssize_t consume_some(fs_kafka *k, int *handed);

/* The fetcher stopped at its threshold and the queue is nearly empty: what is
 * left goes to the worker (about FS_FETCH_KICK_MSGS, unless the fetcher was
 * not stopped after all and more keeps coming), then the fetcher is woken.
 * Returns the messages handed over. */
static int fetch_kick(fs_kafka *k)
{
    int handed = 0;
    ssize_t n;
    do
        n = consume_some(k, &handed);
    while (n == FS_CONSUME_BATCH && handed < 2 * FS_FETCH_KICK_MSGS);
    if (n < 0) return handed;
    k->fetch_full = 0;
    if (wake_fetcher(k)) {
        fs_warn("could not wake the consumer's fetcher");
        return handed;
    }
    k->kicks++;
    fs_debug("woke the consumer's fetcher (%d messages were left)", handed);
    return handed;
}

/* Is the fetcher stopped at its threshold? qlen: the consumer queue's length. */
static void fetch_watch(fs_kafka *k, int qlen)
{
    if (qlen >= FS_FETCH_QUEUE_MSGS - FS_CONSUME_BATCH ||
        (double)qlen * k->msg_bytes >= FS_FETCH_QUEUE_KB * 1024.0 * 0.9)
        k->fetch_full = 1;
}

static int kafka_poll(fs_transport *tp, int fetch)
{
    fs_kafka *k = kafka_of(tp);
    if (k->deferred.len && !group_joining(k)) defer_flush(k);
    if (fetch && !k->fetching) k->consume_pending = 1; /* fetching restarts: look at once */
    k->fetching = fetch;
    if (k->produce_pending) {
        k->produce_pending = 0;
        serve_producer(k, 0);
    } else if (k->retired.len) {
        serve_retired(k);
    }
    if (k->overflow.len) drain(k);
    if (k->txn) txn_service(k);
    else if (k->dropped.len) report_dropped(k); /* purge_lost's */
    if (k->admin_pending) {
        k->admin_pending = 0;
        rd_kafka_event_t *ev;
        while ((ev = rd_kafka_queue_poll(k->aq, 0))) {
            int type = rd_kafka_event_type(ev);
            fs_tplist l = {0};
            int err = rd_kafka_event_error(ev);
            if (type == RD_KAFKA_EVENT_OFFSET_COMMIT) {
                if (from_rd(&l, rd_kafka_event_topic_partition_list(ev)) && !err) err = RD_KAFKA_RESP_ERR__FAIL;
                if (k->base.cb.commit_done)
                    k->base.cb.commit_done(k->base.cb.data, rd_kafka_event_opaque(ev), &l, err);
            } else if (type == RD_KAFKA_EVENT_LISTCONSUMERGROUPOFFSETS_RESULT) {
                const rd_kafka_ListConsumerGroupOffsets_result_t *res =
                    rd_kafka_event_ListConsumerGroupOffsets_result(ev);
                size_t n = 0;
                const rd_kafka_group_result_t **g =
                    res && !err ? rd_kafka_ListConsumerGroupOffsets_result_groups(res, &n) : NULL;
                if (g && n) {
                    const rd_kafka_error_t *ge = rd_kafka_group_result_error(g[0]);
                    if (ge) err = rd_kafka_error_code(ge);
                    else if (from_rd(&l, rd_kafka_group_result_partitions(g[0])))
                        err = RD_KAFKA_RESP_ERR__FAIL;
                } else if (!err) {
                    err = RD_KAFKA_RESP_ERR__FAIL;
                }
                /* A partition without a committed offset comes back as -1. */
                int unstable = 0;
                for (int i = 0; i < l.len; i++) {
                    if (l.items[i].offset < 0) l.items[i].offset = FS_OFFSET_INVALID;
                    unstable |= l.items[i].err == RD_KAFKA_RESP_ERR_UNSTABLE_OFFSET_COMMIT;
                }
                struct fs_cq *q = rd_kafka_event_opaque(ev);
                if (!err && unstable && ++q->tries < FS_CQ_TRIES) {
                    /* A transaction's offsets wait for its markers: ask again soon. */
                    if (q->tries == 1)
                        fs_debug("committed offsets of group %s are pending in a transaction: "
                                 "asking again", k->group);
                    q->waiting = 1;
                    if (!fs_timer_active(&k->cq_timer))
                        fs_timer_start(k->base.loop, &k->cq_timer, FS_CQ_RETRY_MS);
                } else {
                    void *ctx = q->ctx;
                    cq_free(k, q);
                    if (k->base.cb.committed) k->base.cb.committed(k->base.cb.data, ctx, &l, err);
                }
            }
            fs_tplist_free(&l);
            rd_kafka_event_destroy(ev);
        }
    }
    int handed = 0;
    if (fetch && k->subscribed) {
        if (k->self_pending) self_reassign(k);
        /* (Cooperative: the partitions kept are still taken while some go.) */
        if (k->consume_pending && !(k->self_revoking && !k->coop_conf)) {
            int qlen = rd_kafka_queue_length(k->cq);
            fetch_watch(k, qlen);
            if (consume_some(k, &handed) >= 0 && k->fetch_full && !k->paused_all &&
                !k->paused_some && qlen - FS_CONSUME_BATCH <= FS_FETCH_KICK_MSGS)
                handed += fetch_kick(k);
        }
    }
    k->base.pending = k->produce_pending || k->admin_pending || (k->consume_pending && fetch) ||
                      k->txn_pending || k->notes.len || k->dropped.len ||
                      (k->txn_dropping && k->overflow.len);
    return handed;
}

/* One batch from the consumer queue to the worker; adds the messages handed
 * over to *handed. Returns what librdkafka gave (messages and errors), -1 if
 * it failed (logged). */
static ssize_t consume_some(fs_kafka *k, int *handed)
{
    ssize_t n = rd_kafka_consume_batch_queue(k->cq, 0, k->msgs, FS_CONSUME_BATCH);
    if (n < 0) {
        fs_warn("consume failed: %s", rd_kafka_err2str(rd_kafka_last_error()));
        k->consume_pending = 0;
        return -1;
    }
    k->consume_pending = n == FS_CONSUME_BATCH;
    int m = 0;
    size_t bytes = 0;
    for (ssize_t i = 0; i < n; i++) {
        rd_kafka_message_t *msg = k->msgs[i];
        if (msg->err) {
            if (msg->err == RD_KAFKA_RESP_ERR__FATAL) {
                /* The group consumer's fatal errors come here, not to error_cb
                 * (its main queue is forwarded to this one): e.g. a static
                 * member fenced by a request of its own sent before a network
                 * partition and delivered after it. The consumer never fetches
                 * again: the worker must stop, not sit there. */
                char buf[512];
                rd_kafka_fatal_error(k->consumer, buf, sizeof buf);
                if (k->base.cb.error)
                    k->base.cb.error(k->base.cb.data, RD_KAFKA_RESP_ERR__FATAL, buf, 1);
                else fs_error("kafka fatal error: %s", buf);
            } else if (msg->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                fs_warn("consumer: %s%s%s", msg->rkt ? rd_kafka_topic_name(msg->rkt) : "",
                        msg->rkt ? ": " : "", rd_kafka_message_errstr(msg));
            rd_kafka_message_destroy(msg);
            continue;
        }
        fs_topic *t = topic_of(k, msg->rkt);
        if (!t) {
            rd_kafka_message_destroy(msg);
            continue;
        }
        bytes += msg->len + msg->key_len;
        k->fetched[m].topic = t;
        k->fetched[m].m = msg;
        k->fetched[m].ts = rd_kafka_message_timestamp(msg, NULL);
        k->fetched[m].hdrs = NULL;
        m++;
    }
    if (m) k->msg_bytes += ((double)bytes / m - k->msg_bytes) * (m >= 64 ? 0.5 : m / 128.0);
    if (m && k->base.cb.messages) k->base.cb.messages(k->base.cb.data, k->fetched, m, 0);
    else
        for (int i = 0; i < m; i++) rd_kafka_message_destroy(k->fetched[i].m);
    *handed += m;
    return n;
}

static rd_kafka_resp_err_t send_one(fs_kafka *k, fs_topic *t, int32_t partition, const void *key,
                                    size_t klen, const void *val, size_t vlen,
                                    const fs_header *hs, int nh, rd_kafka_headers_t *hdrs,
                                    int64_t ts, void *opaque)
{
    if (fs_vec_reserve(&k->vus, 8)) return RD_KAFKA_RESP_ERR__FAIL;
    char oerr[256];
    /* A recreated producer (fencing) opens its topic handles again lazily. */
    if (!FS_TXT(t)->tx && open_topic(k, t, oerr, sizeof oerr)) return RD_KAFKA_RESP_ERR__FAIL;
    /* The headers go as one list of ours, never as RD_KAFKA_VTYPE_HEADER
     * entries: when librdkafka 2.0.2's produceva fails in the partitioner (a
     * topic in error, e.g. after TOPIC_AUTHORIZATION_FAILED), it frees the list
     * it built from those entries twice and the worker crashes. A list given
     * with RD_KAFKA_VTYPE_HEADERS stays ours on failure (freed below) and is
     * librdkafka's on success. */
    rd_kafka_headers_t *own = NULL;
    if (nh > 0 && !hdrs) {
        own = rd_kafka_headers_new((size_t)nh);
        for (int i = 0; i < nh; i++)
            rd_kafka_header_add(own, hs[i].name, -1, hs[i].value, hs[i].value ? (ssize_t)hs[i].len : 0);
        hdrs = own;
    }
    rd_kafka_vu_t *v = k->vus.items;
    size_t n = 0;
    v[n].vtype = RD_KAFKA_VTYPE_RKT, v[n++].u.rkt = FS_TXT(t)->tx;
    v[n].vtype = RD_KAFKA_VTYPE_PARTITION, v[n++].u.i32 = partition;
    v[n].vtype = RD_KAFKA_VTYPE_MSGFLAGS, v[n++].u.i = RD_KAFKA_MSG_F_COPY;
    v[n].vtype = RD_KAFKA_VTYPE_VALUE, v[n].u.mem.ptr = (void *)val, v[n++].u.mem.size = vlen;
    v[n].vtype = RD_KAFKA_VTYPE_KEY, v[n].u.mem.ptr = (void *)key, v[n++].u.mem.size = klen;
    v[n].vtype = RD_KAFKA_VTYPE_TIMESTAMP, v[n++].u.i64 = ts;
    v[n].vtype = RD_KAFKA_VTYPE_OPAQUE, v[n++].u.ptr = opaque;
    if (hdrs) v[n].vtype = RD_KAFKA_VTYPE_HEADERS, v[n++].u.headers = hdrs;
    rd_kafka_error_t *e = rd_kafka_produceva(k->producer, v, n);
    if (!e) {
        k->inflight++;
        return RD_KAFKA_RESP_ERR_NO_ERROR;
    }
    if (own) rd_kafka_headers_destroy(own);
    /* A producer that failed for good refuses every send with its fatal
     * error's own code (OUT_OF_ORDER_SEQUENCE_NUMBER, say): __FATAL to the
     * callers, for whom it is not the message's fault (a transaction fails
     * with it, and the abort makes a new producer). */
    rd_kafka_resp_err_t code =
        rd_kafka_error_is_fatal(e) ? RD_KAFKA_RESP_ERR__FATAL : rd_kafka_error_code(e);
    rd_kafka_error_destroy(e);
    return code;
}

/* Copies m into the overflow queue (librdkafka's queue is full, or older
 * messages already wait there: order is kept). */
static int overflow_push(fs_kafka *k, const fs_msg *m, void *opaque)
{
    struct fs_overflow o = {0};
    o.topic = m->topic;
    o.partition = m->partition;
    o.has_key = m->key != NULL;
    o.has_val = m->value != NULL;
    o.klen = m->key ? m->klen : 0;
    o.vlen = m->value ? m->vlen : 0;
    o.ts = m->timestamp;
    o.opaque = opaque;
    o.key = malloc(o.klen + o.vlen + 1);
    if (!o.key) return -1;
    if (o.klen) memcpy(o.key, m->key, o.klen);
    if (o.vlen) memcpy(o.key + o.klen, m->value, o.vlen);
    if (m->nheaders) {
        o.hdrs = rd_kafka_headers_new((size_t)m->nheaders);
        for (int i = 0; o.hdrs && i < m->nheaders; i++)
            rd_kafka_header_add(o.hdrs, m->headers[i].name, -1, m->headers[i].value,
                                m->headers[i].value ? (ssize_t)m->headers[i].len : 0);
        if (!o.hdrs) {
            free(o.key);
            return -1;
        }
    }
    if (fs_ring_push(&k->overflow, o)) {
        if (o.hdrs) rd_kafka_headers_destroy(o.hdrs);
        free(o.key);
        return -1;
    }
    if (++k->base.backlog > k->base.backlog_peak) k->base.backlog_peak = k->base.backlog;
    return 0;
}

static int kafka_produce(fs_transport *tp, const fs_msg *m, fs_sendctx ctx, fs_report *now,
                         char *err, size_t errlen)
{
    fs_kafka *k = kafka_of(tp);
    (void)now;
    void *opaque = ctx_pack(ctx);
    if (k->txn_dropping) {
        /* Aborted, no transaction begun since: discarded (contract of txn_abort). */
        if (drop_send(k, m->topic, m->partition, m->value ? m->vlen : 0, opaque,
                      RD_KAFKA_RESP_ERR__PURGE_QUEUE)) {
            snprintf(err, errlen, "cannot send to %s: out of memory", FS_TXT(m->topic)->name);
            return -1;
        }
        return 0;
    }
    if (!FS_TXT(m->topic)->tx && open_topic(k, m->topic, err, errlen)) return -1;
    rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR__QUEUE_FULL;
    if (!k->overflow.len && (!k->txn || k->txn_open))
        e = send_one(k, m->topic, m->partition, m->key, m->klen, m->value, m->vlen, m->headers,
                     m->nheaders, NULL, m->timestamp, opaque);
    if (k->txn && e && e != RD_KAFKA_RESP_ERR__QUEUE_FULL &&
        (e == RD_KAFKA_RESP_ERR__STATE || e == RD_KAFKA_RESP_ERR__FATAL ||
         e == RD_KAFKA_RESP_ERR__FENCED)) {
        /* The transaction failed already (abortable or fenced producer):
         * this send goes with it. */
        k->txn_doomed = 1;
        if (drop_send(k, m->topic, m->partition, m->value ? m->vlen : 0, opaque, e)) {
            snprintf(err, errlen, "cannot send to %s: out of memory", FS_TXT(m->topic)->name);
            return -1;
        }
        return 0;
    }
    if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
        /* Back-pressure without waiting: the message waits here, delivery
         * reports (which wake the loop) make room. Between transactions
         * (the gate closed) it waits here for the next txn_begin. */
        if (k->base.backlog == 0 && (!k->txn || k->txn_open))
            fs_debug("producer queue full: messages wait in the worker");
        if (overflow_push(k, m, opaque)) {
            snprintf(err, errlen, "cannot send to %s: out of memory", FS_TXT(m->topic)->name);
            return -1;
        }
        return 0;
    }
    if (e) {
        char why[256] = "";
        if (e == RD_KAFKA_RESP_ERR__FATAL) rd_kafka_fatal_error(k->producer, why, sizeof why);
        snprintf(err, errlen, "cannot send to %s: %s", FS_TXT(m->topic)->name,
                 why[0] ? why : rd_kafka_err2str(e));
        return -1;
    }
    return 0;
}

static int64_t kafka_undelivered(fs_transport *tp)
{
    fs_kafka *k = kafka_of(tp);
    return k->inflight + k->base.backlog + (int64_t)k->dropped.len;
}

static int64_t kafka_flush(fs_transport *tp, int timeout_ms)
{
    fs_kafka *k = kafka_of(tp);
    if (timeout_ms <= 0) {
        serve_producer(k, 0);
        if (k->overflow.len) drain(k);
        if (k->dropped.len) report_dropped(k);
        return kafka_undelivered(tp);
    }
    int64_t deadline = mono_ms() + timeout_ms;
    for (;;) {
        if (k->overflow.len) drain(k);
        if (k->dropped.len) report_dropped(k);
        /* Sends waiting for a transaction that will not begin (close) never go. */
        if (kafka_undelivered(tp) == k->base.backlog && k->txn && !k->txn_open) break;
        /* In event mode rd_kafka_flush only waits (it serves no queue), but
         * it makes linger.ms immediate: called with 0, then the events are
         * served here in slices, handing over the overflow queue as room
         * appears. */
        if (k->inflight) rd_kafka_flush(k->producer, 0);
        int64_t left = deadline - mono_ms();
        serve_producer(k, left <= 0 ? 0 : left > 100 ? 100 : (int)left);
        if (k->overflow.len) drain(k);
        if (kafka_undelivered(tp) == 0 || mono_ms() >= deadline) break;
    }
    return kafka_undelivered(tp);
}

/* Cooperative: adds parts to the assignment. A partition already in it (the
 * reset starts its partitions again at their committed offsets) restarts
 * there: by a seek when the offset is known, which leaves the group's
 * assignment alone even while a revocation waits for its answer; else by
 * unassigning and assigning it again. */
static int assign_incremental(fs_kafka *k, const fs_tplist *parts, char *err, size_t errlen)
{
    rd_kafka_topic_partition_list_t *have = NULL;
    if (rd_kafka_assignment(k->consumer, &have) || !have) {
        snprintf(err, errlen, "assign failed: the consumer's assignment is unknown");
        return -1;
    }
    rd_kafka_topic_partition_list_t *add = rd_kafka_topic_partition_list_new(parts->len ? parts->len : 1);
    rd_kafka_topic_partition_list_t *seek = rd_kafka_topic_partition_list_new(parts->len ? parts->len : 1);
    rd_kafka_topic_partition_list_t *again = rd_kafka_topic_partition_list_new(parts->len ? parts->len : 1);
    for (int i = 0; i < parts->len; i++) {
        const fs_tp *tp = &parts->items[i];
        rd_kafka_topic_partition_list_t *to = add;
        if (rd_kafka_topic_partition_list_find(have, tp->topic, tp->partition)) to = tp->offset >= 0 ? seek : again;
        rd_kafka_topic_partition_list_add(to, tp->topic, tp->partition)->offset = tp->offset;
        if (to == again) rd_kafka_topic_partition_list_add(add, tp->topic, tp->partition)->offset = tp->offset;
    }
    rd_kafka_error_t *e = NULL;
    if (again->cnt) e = rd_kafka_incremental_unassign(k->consumer, again);
    if (!e && add->cnt) e = rd_kafka_incremental_assign(k->consumer, add);
    if (!e && seek->cnt) e = rd_kafka_seek_partitions(k->consumer, seek, 0); /* asynchronous */
    int rc = 0;
    if (e) {
        snprintf(err, errlen, "incremental assign failed: %s", rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
        rc = -1;
    } else {
        /* librdkafka keeps a partition's pause flag across unassign/assign:
         * the added ones take the whole assignment's state. */
        rd_kafka_topic_partition_list_t *all = to_rd(parts);
        if (k->paused_all) rd_kafka_pause_partitions(k->consumer, all);
        else rd_kafka_resume_partitions(k->consumer, all);
        rd_kafka_topic_partition_list_destroy(all);
    }
    rd_kafka_topic_partition_list_destroy(have);
    rd_kafka_topic_partition_list_destroy(add);
    rd_kafka_topic_partition_list_destroy(seek);
    rd_kafka_topic_partition_list_destroy(again);
    return rc;
}

static int kafka_assign(fs_transport *tp, const fs_tplist *parts, char *err, size_t errlen)
{
    fs_kafka *k = kafka_of(tp);
    char ebuf[256];
    if (!err) err = ebuf, errlen = sizeof ebuf;
    k->consume_pending = 1;
    k->base.pending = 1;
    if (k->base.cooperative) return assign_incremental(k, parts, err, errlen);
    rd_kafka_topic_partition_list_t *l = to_rd(parts);
    rd_kafka_resp_err_t e = rd_kafka_assign(k->consumer, l);
    /* librdkafka keeps a partition's pause flag across unassign/assign: a new
     * assignment starts fetching everything it holds. */
    if (!e) rd_kafka_resume_partitions(k->consumer, l);
    if (!e) k->paused_all = k->paused_some = 0;
    rd_kafka_topic_partition_list_destroy(l);
    if (e) {
        snprintf(err, errlen, "assign failed: %s", rd_kafka_err2str(e));
        return -1;
    }
    return 0;
}

static int kafka_unassign(fs_transport *tp, const fs_tplist *parts)
{
    fs_kafka *k = kafka_of(tp);
    k->consume_pending = 1;
    k->base.pending = 1;
    k->self_revoking = 0;
    /* Closing, the consumer has its answer already (a revocation queued
     * behind the close's own): nothing is left to let go of. */
    if (k->close_answered) return 0;
    if (!k->base.cooperative) {
        int rc = rd_kafka_assign(k->consumer, NULL) ? -1 : 0;
        k->close_answered = tp->closing && !k->self_assign;
        return rc;
    }
    /* Only what is in the consumer's assignment: a partition the group gave
     * and took back before the worker started fetching it never joined it.
     * The answer is due even when nothing is left (the group waits for it). */
    rd_kafka_topic_partition_list_t *have = NULL, *l = rd_kafka_topic_partition_list_new(
                                                       parts && parts->len ? parts->len : 1);
    if (rd_kafka_assignment(k->consumer, &have) || !have) have = NULL;
    for (int i = 0; parts && have && i < parts->len; i++)
        if (rd_kafka_topic_partition_list_find(have, parts->items[i].topic, parts->items[i].partition))
            rd_kafka_topic_partition_list_add(l, parts->items[i].topic, parts->items[i].partition);
    rd_kafka_error_t *e = rd_kafka_incremental_unassign(k->consumer, l);
    /* Inside rd_kafka_consumer_close, this answer lets librdkafka 2.0.2
     * finish the group: once its partitions have stopped, its main thread
     * purges the queue that serves the group's requests, and a request
     * waiting there then never gets its answer. Those requests wait without
     * a timeout (rd_kafka_assignment, assign, commit): a call made now can
     * hang the stop for good, depending on which thread runs first (a
     * worker of spec/workers_spec.lua did, after "revoking 2 partitions").
     * So after it nothing asks the group's consumer anything; nothing
     * fetches any more either. */
    k->close_answered = tp->closing && !k->self_assign;
    if (e) {
        fs_warn("incremental unassign of %d partitions failed: %s", l->cnt, rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
    } else if (!k->self_assign && !k->paused_all && !k->paused_some && !tp->closing) {
        /* librdkafka paused the fetchers of the partitions kept while it
         * waited for this answer, and resumes them now: wake them (see
         * wake_fetcher; the pause dropped what was queued). */
        wake_fetcher(k);
    }
    if (have) rd_kafka_topic_partition_list_destroy(have);
    rd_kafka_topic_partition_list_destroy(l);
    return e ? -1 : 0;
}

static int kafka_assignment(fs_transport *tp, fs_tplist *out)
{
    fs_kafka *k = kafka_of(tp);
    rd_kafka_topic_partition_list_t *a = NULL;
    if (rd_kafka_assignment(k->consumer, &a) || !a) return -1;
    int rc = from_rd(out, a);
    rd_kafka_topic_partition_list_destroy(a);
    return rc;
}

static int pause_resume(fs_kafka *k, const fs_tplist *parts, int pause)
{
    rd_kafka_topic_partition_list_t *l = NULL;
    if (parts) l = to_rd(parts);
    else if (rd_kafka_assignment(k->consumer, &l) || !l) return -1;
    rd_kafka_resp_err_t e = pause ? rd_kafka_pause_partitions(k->consumer, l)
                                  : rd_kafka_resume_partitions(k->consumer, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (!pause) {
        k->consume_pending = 1;
        k->base.pending = 1;
    }
    return e ? -1 : 0;
}

/* While the worker holds partitions paused nothing is fetched for them, and
 * fetch_kick stays away; the resume wakes the fetcher itself. */
static int kafka_pause(fs_transport *tp, const fs_tplist *parts)
{
    fs_kafka *k = kafka_of(tp);
    if (parts) k->paused_some = 1;
    else k->paused_all = 1;
    return pause_resume(k, parts, 1);
}

static int kafka_resume(fs_transport *tp, const fs_tplist *parts)
{
    fs_kafka *k = kafka_of(tp);
    if (!parts) k->paused_all = k->paused_some = 0;
    int rc = pause_resume(k, parts, 0);
    /* A resume alone reaches the fetcher at its next wake-up, up to 1 s
     * later (see wake_fetcher); the pause dropped what was queued. */
    if (!rc && !k->paused_all && !k->paused_some) {
        k->fetch_full = 0;
        wake_fetcher(k);
    }
    return rc;
}

static int kafka_seek(fs_transport *tp, const fs_tplist *parts, char *err, size_t errlen)
{
    fs_kafka *k = kafka_of(tp);
    rd_kafka_topic_partition_list_t *l = to_rd(parts);
    /* Only assigned partitions are sought, on the consumer's own thread: quick.
     * librdkafka 2.0.2 waits for the answers timeout_ms *microseconds* (it
     * passes milliseconds to a queue pop that takes microseconds; fixed
     * upstream after 2.0.2), so on a busy machine the wait times out while
     * the seeks are still queued. A queued seek is not lost: it carries a
     * version barrier from the moment it is queued (nothing fetched before
     * it is handed out) and is applied before the partition fetches again,
     * as the asynchronous seek of wake_fetcher is. So a timeout is not a
     * failure; the partitions it left unanswered say _IN_PROGRESS. A reload
     * took it for one and exited (the soak, RELIABILITY.md "8. Soak"). */
    rd_kafka_error_t *e = rd_kafka_seek_partitions(k->consumer, l, 10000);
    int rc = 0;
    if (e) {
        if (rd_kafka_error_code(e) != RD_KAFKA_RESP_ERR__TIMED_OUT) {
            snprintf(err, errlen, "%s", rd_kafka_error_string(e));
            rc = -1;
        }
        rd_kafka_error_destroy(e);
    }
    for (int i = 0; rc == 0 && i < l->cnt; i++)
        if (l->elems[i].err && l->elems[i].err != RD_KAFKA_RESP_ERR__IN_PROGRESS) {
            snprintf(err, errlen, "%s[%d]: %s", l->elems[i].topic, (int)l->elems[i].partition,
                     rd_kafka_err2str(l->elems[i].err));
            rc = -1;
        }
    rd_kafka_topic_partition_list_destroy(l);
    k->consume_pending = 1;
    k->base.pending = 1;
    return rc;
}

/* The commits held back during a join round, in order, once it is over. */
static void defer_flush(fs_kafka *k)
{
    for (size_t i = 0; i < k->deferred.len; i++) {
        struct fs_defer *d = &k->deferred.items[i];
        /* (Its answer could be lost: see kafka_unassign.) */
        rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR__DESTROY;
        if (!k->close_answered) {
            rd_kafka_topic_partition_list_t *l = to_rd(&d->offsets);
            e = rd_kafka_commit_queue(k->consumer, l, k->aq, NULL, d->ctx);
            rd_kafka_topic_partition_list_destroy(l);
        }
        if (e && k->base.cb.commit_done) k->base.cb.commit_done(k->base.cb.data, d->ctx, &d->offsets, e);
        fs_tplist_free(&d->offsets);
    }
    k->deferred.len = 0;
}

/* The longest a synchronous commit (the stop's) waits for its answer: a
 * broker that answers at all does so in milliseconds, and the stop's whole
 * bound must hold (see FS_STOP_CLOSE_MS in fs_runtime.c). */
#define FS_COMMIT_SYNC_MS 5000

static int kafka_commit(fs_transport *tp, const fs_tplist *offsets, int flags, void *ctx)
{
    fs_kafka *k = kafka_of(tp);
    /* Its request could wait for good (see kafka_unassign). */
    if (k->close_answered) return -1;
    if (!(flags & FS_COMMIT_SYNC) && (k->deferred.len || group_joining(k))) {
        struct fs_defer d = {{0}, ctx};
        if (fs_tplist_copy(&d.offsets, offsets) || fs_vec_push(&k->deferred, d)) {
            fs_tplist_free(&d.offsets);
            return -1;
        }
        /* The round ends with a rebalance callback, which wakes the loop. */
        fs_debug("offset commit held back while the group's join round runs");
        return 0;
    }
    rd_kafka_topic_partition_list_t *l = to_rd(offsets);
    rd_kafka_resp_err_t e;
    if (flags & FS_COMMIT_SYNC) {
        /* rd_kafka_commit(.., 0) waits for the answer without a timeout: a
         * broker that stopped answering would hold the stop past its bound.
         * The same request, answered on a queue of its own, is waited for
         * FS_COMMIT_SYNC_MS at most (the queue is reference-counted: a late
         * answer finds it still there). */
        rd_kafka_queue_t *q = rd_kafka_queue_new(k->consumer);
        e = rd_kafka_commit_queue(k->consumer, l, q, NULL, NULL);
        if (!e) {
            rd_kafka_event_t *ev = rd_kafka_queue_poll(q, FS_COMMIT_SYNC_MS);
            if (!ev) {
                fs_warn("offset commit not answered in %d s; giving up on it", FS_COMMIT_SYNC_MS / 1000);
                e = RD_KAFKA_RESP_ERR__TIMED_OUT;
            } else {
                e = rd_kafka_event_error(ev);
                rd_kafka_event_destroy(ev);
            }
        }
        rd_kafka_queue_destroy(q);
    } else {
        /* The result comes back on the admin queue, with ctx as its opaque. */
        e = rd_kafka_commit_queue(k->consumer, l, k->aq, NULL, ctx);
    }
    rd_kafka_topic_partition_list_destroy(l);
    return e ? -1 : 0;
}

/* rd_kafka_committed blocks until the coordinator answers (up to its
 * timeout). The admin API asks the same question (OffsetFetch) and answers on
 * a queue the loop watches. It asks for stable offsets (require_stable): an
 * offset committed by a transaction whose markers are not written yet must
 * not be read as the older offset. The broker then answers
 * UNSTABLE_OFFSET_COMMIT for that partition, and librdkafka's admin request
 * does not retry (its consumer's own OffsetFetch does): the question is asked
 * again here, every FS_CQ_RETRY_MS, until the transaction ended (at most its
 * timeout, then the coordinator aborts it) or FS_CQ_TRIES passed. */
static int committed_ask(fs_kafka *k, struct fs_cq *q)
{
    char errstr[256];
    rd_kafka_topic_partition_list_t *l = to_rd(&q->parts);
    rd_kafka_ListConsumerGroupOffsets_t *req = rd_kafka_ListConsumerGroupOffsets_new(k->group, l);
    rd_kafka_topic_partition_list_destroy(l);
    rd_kafka_AdminOptions_t *o =
        rd_kafka_AdminOptions_new(k->consumer, RD_KAFKA_ADMIN_OP_LISTCONSUMERGROUPOFFSETS);
    if (!req || !o) {
        if (req) rd_kafka_ListConsumerGroupOffsets_destroy(req);
        if (o) rd_kafka_AdminOptions_destroy(o);
        return -1;
    }
    rd_kafka_error_t *e = rd_kafka_AdminOptions_set_require_stable_offsets(o, 1);
    if (e) rd_kafka_error_destroy(e);
    rd_kafka_AdminOptions_set_request_timeout(o, 10000, errstr, sizeof errstr);
    rd_kafka_AdminOptions_set_opaque(o, q);
    rd_kafka_ListConsumerGroupOffsets(k->consumer, &req, 1, o, k->aq);
    rd_kafka_ListConsumerGroupOffsets_destroy(req);
    rd_kafka_AdminOptions_destroy(o);
    q->waiting = 0;
    return 0;
}

static void cq_free(fs_kafka *k, struct fs_cq *q)
{
    for (size_t i = 0; i < k->cqs.len; i++)
        if (k->cqs.items[i] == q) {
            fs_vec_remove(&k->cqs, i);
            break;
        }
    fs_tplist_free(&q->parts);
    free(q);
}

static void cq_timer_cb(fs_timer *t)
{
    fs_kafka *k = t->data;
    for (size_t i = 0; i < k->cqs.len;) {
        struct fs_cq *q = k->cqs.items[i];
        if (q->waiting && committed_ask(k, q)) {
            /* Cannot ask again: answer with what is known (nothing). */
            void *ctx = q->ctx;
            cq_free(k, q);
            if (k->base.cb.committed) k->base.cb.committed(k->base.cb.data, ctx, NULL, RD_KAFKA_RESP_ERR__FAIL);
            continue;
        }
        i++;
    }
}

static int kafka_committed(fs_transport *tp, const fs_tplist *parts, void *ctx)
{
    fs_kafka *k = kafka_of(tp);
    struct fs_cq *q = calloc(1, sizeof *q);
    if (!q) return -1;
    q->ctx = ctx;
    if (fs_tplist_copy(&q->parts, parts) || fs_vec_push(&k->cqs, q)) {
        fs_tplist_free(&q->parts);
        free(q);
        return -1;
    }
    if (committed_ask(k, q)) {
        cq_free(k, q);
        return -1;
    }
    return 0;
}


/* ======================= transactions (exactly-once) =======================
 * See fs_transport.h for the contract and fs_kafka_txn.c for what
 * librdkafka's errors mean. The loop's side: the gate (drain, produce),
 * begin/seal (no I/O), starting the thread's jobs, collecting their results,
 * and recreating a fenced producer. */

/* How long one blocking librdkafka transactional call may take (the thread
 * retries retriable failures a few times). */
#define FS_TXN_CALL_MS 10000
/* A fenced producer's in-flight sends are waited for this long before it is
 * replaced anyway. */
#define FS_TXN_RECREATE_WAIT_MS 15000

static void txn_note(fs_kafka *k, void *ctx, int result, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void txn_note(fs_kafka *k, void *ctx, int result, const char *fmt, ...)
{
    struct fs_txn_note n;
    n.ctx = ctx;
    n.result = result;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(n.msg, sizeof n.msg, fmt, ap);
    va_end(ap);
    if (fs_ring_push(&k->notes, n)) {
        /* Cannot even queue the answer: nothing upstream would ever hear of it. */
        if (k->base.cb.error)
            k->base.cb.error(k->base.cb.data, RD_KAFKA_RESP_ERR__FAIL,
                             "out of memory reporting a transaction's end", 1);
        return;
    }
    k->base.pending = 1;
}

static void job_release(fs_txn_job *j)
{
    if (j->offsets) rd_kafka_topic_partition_list_destroy(j->offsets);
    if (j->cgmd) rd_kafka_consumer_group_metadata_destroy(j->cgmd);
    j->offsets = NULL;
    j->cgmd = NULL;
}

static void job_start(fs_kafka *k, void *ctx)
{
    k->job_ctx = ctx;
    k->job_busy = 1;
    if (fs_txn_thread_start(k->txth, &k->job)) { /* cannot happen: one job at a time */
        k->job_busy = 0;
        job_release(&k->job);
        txn_note(k, ctx, FS_TXN_FATAL, "the transaction thread is busy");
    }
}

/* The producer is fenced (fatal): its sends are purged (reported aborted as
 * their events come back), then recreate() replaces it. */
static void begin_recreate(fs_kafka *k, void *ctx, const char *why)
{
    fs_warn("transactional producer %s: %s; purging its sends, then recreating it", k->txn_id, why);
    k->txn_open = 0;
    k->txn_dropping = 1;
    rd_kafka_purge(k->producer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT |
                                    RD_KAFKA_PURGE_F_NON_BLOCKING);
    k->recreate_waiting = 1;
    k->recreate_deadline = mono_ms() + FS_TXN_RECREATE_WAIT_MS;
    k->recreate_ctx = ctx;
    k->base.pending = 1;
}

/* Every report of the fenced producer came back (or the wait ended): a new
 * producer with the same transactional.id takes its place; the thread
 * destroys the old one and runs init_transactions (which aborts what the
 * old one left open). The topic handles belonged to the old producer: they
 * are opened again on the first send. */
static void recreate(fs_kafka *k)
{
    void *ctx = k->recreate_ctx;
    k->recreate_waiting = 0;
    if (k->inflight) {
        fs_warn("%lld sends of the fenced producer were never reported; counting them as gone",
                (long long)k->inflight);
        k->inflight = 0;
    }
    char err[512];
    rd_kafka_t *nw = new_producer(k, k->txn_id, err, sizeof err);
    if (!nw) {
        txn_note(k, ctx, FS_TXN_FATAL, "cannot recreate the fenced producer: %s", err);
        return;
    }
    close_topic_handles(k);
    rd_kafka_queue_io_event_enable(k->pq, -1, NULL, 0);
    rd_kafka_queue_destroy(k->pq);
    rd_kafka_t *old = k->producer;
    k->producer = nw;
    k->pq = rd_kafka_queue_get_main(nw);
    static const char one[8] = {1, 0, 0, 0, 0, 0, 0, 0};
    rd_kafka_queue_io_event_enable(k->pq, k->pfd, one, sizeof one);
    memset(&k->job, 0, sizeof k->job);
    k->job.kind = FS_TXN_JOB_INIT;
    k->job.rk = nw;
    k->job.old = old;
    k->job.timeout_ms = FS_TXN_CALL_MS;
    job_start(k, ctx);
}

/* Aborts what is open (the overflow queue was dropped already). */
static void start_abort(fs_kafka *k, void *ctx)
{
    char buf[256];
    rd_kafka_resp_err_t code = rd_kafka_fatal_error(k->producer, buf, sizeof buf);
    if (code) { /* fenced, or failed otherwise: only a new producer goes on */
        begin_recreate(k, ctx, buf);
        return;
    }
    if (!k->txn_begun) { /* nothing was begun: nothing entered librdkafka */
        txn_note(k, ctx, FS_TXN_OK, "nothing to abort");
        return;
    }
    memset(&k->job, 0, sizeof k->job);
    k->job.kind = FS_TXN_JOB_ABORT;
    k->job.rk = k->producer;
    k->job.timeout_ms = FS_TXN_CALL_MS;
    job_start(k, ctx);
}

static void start_commit(fs_kafka *k)
{
    if (group_joining(k)) return; /* (see group_joining) txn_service starts it after the round */
    /* The generation the offsets are sent with is the one of now (KIP-447):
     * a commit held back by a join round must not carry the round's old one. */
    if (k->job.cgmd && !k->close_answered) { /* (see kafka_unassign) */
        rd_kafka_consumer_group_metadata_t *now = rd_kafka_consumer_group_metadata(k->consumer);
        if (now) {
            rd_kafka_consumer_group_metadata_destroy(k->job.cgmd);
            k->job.cgmd = now;
        }
    }
    k->commit_waiting = 0;
    job_start(k, k->job_ctx);
}

/* The thread finished a job: its result, on the loop's thread. */
static void job_ended(fs_kafka *k, fs_txn_job *j)
{
    void *ctx = k->job_ctx;
    k->job_busy = 0;
    job_release(j);
    switch (j->kind) {
    case FS_TXN_JOB_COMMIT:
        if (j->result == FS_TXN_OK) {
            k->txn_begun = 0;
            k->txn_doomed = 0;
            k->txn_commits++;
        } else {
            /* Still begun: the caller aborts it (a fenced or failed producer
             * is recreated by that abort). A producer that failed for good
             * but not by fencing (e.g. INVALID_TXN_STATE from a coordinator
             * that lost the transaction) is no reason to stop yet: the abort
             * recreates it, and says FS_TXN_FATAL if that fails too. */
            fs_warn("transaction commit failed after %lld ms: %s", (long long)j->ms, j->msg);
            if (j->result == FS_TXN_FATAL) j->result = FS_TXN_ABORTABLE;
        }
        txn_note(k, ctx, j->result, "%s", j->msg);
        break;
    case FS_TXN_JOB_ABORT:
        if (j->result == FS_TXN_OK && (k->txn_send_failed || k->txn_lost_sends)) {
            /* librdkafka 2.0.2 keeps the failed send's sequence number: the
             * next transaction's first send to that partition would fail
             * (OUT_OF_ORDER_SEQUENCE_NUMBER) until an epoch bump. A new
             * producer starts a new epoch at once. The same after a lost
             * assignment with sends outstanding (kafka_rebalance). */
            k->txn_begun = 0;
            begin_recreate(k, ctx, k->txn_send_failed
                                       ? "a send failed in the aborted transaction (a sequence gap "
                                         "only a new producer epoch closes)"
                                       : "the assignment was lost with sends outstanding (the abort's "
                                         "purge may leave a sequence gap only a new producer epoch "
                                         "closes)");
        } else if (j->result == FS_TXN_OK) {
            k->txn_begun = 0;
            k->txn_doomed = 0;
            k->txn_aborts++;
            fs_debug("transaction aborted in %lld ms", (long long)j->ms);
            txn_note(k, ctx, FS_TXN_OK, "aborted");
        } else {
            /* Fenced, or the abort itself failed: a broker gone for a while
             * (timeouts), or back with a coordinator that no longer knows the
             * transaction (INVALID_TXN_STATE, fatal in librdkafka). A new
             * producer's init_transactions fences this one's epoch and aborts
             * whatever it left open; if even that fails, txn_done says
             * FS_TXN_FATAL. */
            begin_recreate(k, ctx, j->msg);
        }
        break;
    case FS_TXN_JOB_INIT:
        if (j->result == FS_TXN_OK) {
            k->txn_begun = 0;
            k->txn_doomed = 0;
            k->txn_aborts++;
            k->txn_recreated++;
            k->txn_send_failed = 0;
            k->txn_lost_sends = 0;
            fs_info("transactional producer %s recreated (%lld ms); the fenced one's "
                    "transaction is aborted", k->txn_id, (long long)j->ms);
            txn_note(k, ctx, FS_TXN_OK, "aborted (producer recreated)");
        } else {
            txn_note(k, ctx, FS_TXN_FATAL, "%s", j->msg);
        }
        break;
    }
}

/* From poll: reports aborted sends, collects the thread's result, starts
 * what waited, reports txn_done — in that order, so that every aborted send
 * is reported before the abort's txn_done. */
static void txn_service(fs_kafka *k)
{
    if (k->txn_dropping && k->overflow.len) drop_overflow(k);
    if (k->dropped.len) report_dropped(k);
    /* Also without the wake-up (a close or a reload's swap drives this
     * poll without the loop, whose epoll would see the eventfd). */
    if (k->txn_pending || k->job_busy) {
        k->txn_pending = 0;
        fs_txn_job *j = fs_txn_thread_done(k->txth);
        if (j) job_ended(k, j);
    }
    if (k->commit_waiting && !k->job_busy && k->txn_quota <= 0) start_commit(k);
    if (k->recreate_waiting && (k->inflight == 0 || mono_ms() >= k->recreate_deadline))
        recreate(k);
    if (k->abort_queued && !k->job_busy && !k->recreate_waiting) {
        k->abort_queued = 0;
        start_abort(k, k->abort_ctx);
    }
    if (k->dropped.len) report_dropped(k);
    while (k->notes.len) {
        struct fs_txn_note n = fs_ring_shift(&k->notes);
        if (k->base.cb.txn_done) k->base.cb.txn_done(k->base.cb.data, n.ctx, n.result, n.msg);
    }
}

#define EOS_INSTEAD                                                                          \
    "Run it against a Kafka cluster (scripts/kafka start, then --broker "                    \
    "kafka://127.0.0.1:19092), or use processing_guarantee = \"at_least_once\""

static int kafka_txn_init(fs_transport *tp, const char *id, char *err, size_t errlen)
{
    fs_kafka *k = kafka_of(tp);
    if (k->embedded) {
        snprintf(err, errlen,
                 "exactly-once is not available on memory://: the embedded broker is librdkafka's "
                 "mock cluster, which accepts transactions but writes no commit or abort markers, "
                 "so aborted output would stay visible to read_committed readers. " EOS_INSTEAD);
        return -1;
    }
    if (k->txn) {
        snprintf(err, errlen, "transactions are initialised already (transactional.id %s)", k->txn_id);
        return -1;
    }
    char *cid = rd_kafka_clusterid(k->producer, FS_METADATA_MS);
    if (!cid) {
        snprintf(err, errlen, "no cluster id from the broker at %s within %d s: is it running?",
                 k->bootstrap, FS_METADATA_MS / 1000);
        return -1;
    }
    int mock = strncmp(cid, "mockCluster", 11) == 0;
    rd_kafka_mem_free(k->producer, cid);
    if (mock) {
        snprintf(err, errlen,
                 "exactly-once is not available on %s: it is an `fstream-lua broker` (librdkafka's "
                 "mock cluster), which accepts transactions but writes no commit or abort markers, "
                 "so aborted output would stay visible to read_committed readers. " EOS_INSTEAD,
                 k->bootstrap);
        return -1;
    }
    char *tid = strdup(id);
    if (!tid) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    rd_kafka_t *nw = new_producer(k, tid, err, errlen);
    if (!nw) {
        free(tid);
        return -1;
    }
    /* Fences an earlier producer of this id and aborts its open transaction. */
    rd_kafka_error_t *e = NULL;
    for (int tries = 0; tries < 3; tries++) {
        if (e) rd_kafka_error_destroy(e);
        e = rd_kafka_init_transactions(nw, 3 * FS_TXN_CALL_MS);
        if (!e || !rd_kafka_error_is_retriable(e)) break;
    }
    if (e) {
        snprintf(err, errlen, "cannot start transactions (transactional.id %s) on %s: %s", tid,
                 k->bootstrap, rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
        rd_kafka_destroy(nw);
        free(tid);
        return -1;
    }
    k->tfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (k->tfd >= 0) {
        k->tio.fd = k->tfd;
        k->tio.cb = wake_cb;
        k->tio.data = k;
    }
    if (k->tfd < 0 || fs_io_add(tp->loop, &k->tio, EPOLLIN) ||
        !(k->txth = fs_txn_thread_new(k->tfd, err, errlen))) {
        if (k->tfd >= 0 && !k->txth) snprintf(err, errlen, "transaction thread: %s", strerror(errno));
        if (k->tfd >= 0) fs_io_del(tp->loop, &k->tio), close(k->tfd);
        k->tfd = -1;
        rd_kafka_destroy(nw);
        free(tid);
        return -1;
    }
    /* The non-transactional producer made at start (resolve used it) goes:
     * whatever it still has is delivered first, then its topic handles. */
    kafka_flush(tp, 5000);
    close_topic_handles(k);
    rd_kafka_queue_io_event_enable(k->pq, -1, NULL, 0);
    rd_kafka_queue_destroy(k->pq);
    rd_kafka_destroy(k->producer);
    k->producer = nw;
    k->pq = rd_kafka_queue_get_main(nw);
    static const char one[8] = {1, 0, 0, 0, 0, 0, 0, 0};
    rd_kafka_queue_io_event_enable(k->pq, k->pfd, one, sizeof one);
    k->txn = 1;
    k->txn_id = tid;
    k->txn_quota = 0; /* closed until the first txn_begin */
    fs_info("transactional producer %s ready", tid);
    return 0;
}

static int kafka_txn_begin(fs_transport *tp, char *err, size_t errlen)
{
    fs_kafka *k = kafka_of(tp);
    if (!k->txn) {
        snprintf(err, errlen, "no transactions: txn_init first");
        return -1;
    }
    if (k->job_busy || k->commit_waiting || k->recreate_waiting || k->abort_queued) {
        snprintf(err, errlen, "the last transaction's commit or abort has not finished");
        return -1;
    }
    if (!k->txn_begun) {
        rd_kafka_error_t *e = rd_kafka_begin_transaction(k->producer);
        if (e) {
            snprintf(err, errlen, "cannot begin a transaction: %s", rd_kafka_error_string(e));
            rd_kafka_error_destroy(e);
            return -1;
        }
        k->txn_begun = 1;
        k->txn_doomed = 0;
    }
    k->txn_open = 1;
    k->txn_dropping = 0;
    k->txn_quota = 0;
    if (k->overflow.len) drain(k);
    k->base.pending = 1;
    return 0;
}

static void kafka_txn_seal(fs_transport *tp)
{
    fs_kafka *k = kafka_of(tp);
    if (!k->txn || !k->txn_open) return;
    k->txn_open = 0;
    /* What waits now was sent into the sealed transaction: it still goes. */
    k->txn_quota = (int64_t)k->overflow.len;
}

static int kafka_txn_commit(fs_transport *tp, const fs_tplist *offsets, void *ctx)
{
    fs_kafka *k = kafka_of(tp);
    if (!k->txn || !k->txn_begun || k->txn_dropping || k->job_busy || k->commit_waiting ||
        k->recreate_waiting || k->abort_queued)
        return -1;
    kafka_txn_seal(tp);
    if (k->txn_lost) {
        txn_note(k, ctx, FS_TXN_FENCED,
                 "this worker lost its partitions (its group session expired): the transaction "
                 "holds a zombie's outputs");
        return 0;
    }
    char buf[256];
    rd_kafka_resp_err_t code = rd_kafka_fatal_error(k->producer, buf, sizeof buf);
    if (code) { /* known already (an error event): no need to ask the broker */
        txn_note(k, ctx, fencing_code(code) ? FS_TXN_FENCED : FS_TXN_ABORTABLE,
                 "the producer failed for good: %s (the abort recreates it)", buf);
        return 0;
    }
    if (k->txn_doomed) {
        txn_note(k, ctx, FS_TXN_ABORTABLE,
                 "a send of this transaction failed (see the warnings before): it must be aborted");
        return 0;
    }
    if (k->close_answered && offsets && offsets->len) {
        /* Its group metadata would be asked of a consumer whose group may be
         * gone, and the request could wait for good (see kafka_unassign). */
        txn_note(k, ctx, FS_TXN_ABORTABLE,
                 "the group's consumer has closed: offsets can no longer be committed");
        return 0;
    }
    memset(&k->job, 0, sizeof k->job);
    k->job.kind = FS_TXN_JOB_COMMIT;
    k->job.rk = k->producer;
    k->job.timeout_ms = FS_TXN_CALL_MS;
    if (offsets && offsets->len) {
        k->job.offsets = to_rd(offsets);
        /* Taken now, on the loop's thread: the generation this commit is for
         * (KIP-447). A rebalance since makes the commit fail (FENCED). */
        k->job.cgmd = rd_kafka_consumer_group_metadata(k->consumer);
        if (!k->job.offsets || !k->job.cgmd) {
            job_release(&k->job);
            return -1;
        }
    }
    k->job_ctx = ctx;
    k->commit_waiting = 1;
    k->base.pending = 1;
    /* The sealed transaction's sends still in the overflow queue enter
     * librdkafka first (commit_transaction would leave them out). */
    if (k->txn_quota <= 0) start_commit(k);
    return 0;
}

static int kafka_txn_abort(fs_transport *tp, void *ctx)
{
    fs_kafka *k = kafka_of(tp);
    if (!k->txn || k->abort_queued) return -1;
    k->txn_open = 0;
    k->txn_dropping = 1;
    k->txn_lost = 0; /* what the zombie sent is dropped now: the next transaction is clean */
    if (k->commit_waiting) { /* asked for, not started: it will not be */
        k->commit_waiting = 0;
        job_release(&k->job);
        txn_note(k, k->job_ctx, FS_TXN_ABORTABLE, "aborted before it was committed");
    }
    drop_overflow(k);
    k->base.pending = 1;
    if (k->job_busy || k->recreate_waiting) {
        k->abort_queued = 1;
        k->abort_ctx = ctx;
        return 0;
    }
    start_abort(k, ctx);
    return 0;
}

static const char *kafka_strerror(int err)
{
    return rd_kafka_err2str((rd_kafka_resp_err_t)err);
}

static void kafka_close(fs_transport *tp)
{
    fs_kafka *k = kafka_of(tp);
    if (!k) return;
    tp->closing = 1;
    if (k->consumer && k->deferred.len) defer_flush(k);
    if (k->consumer) {
        /* A self-assigned worker never joined, so closing revokes nothing:
         * report the revocation leaving the group would (last table writes,
         * offsets, table partitions closed). */
        rd_kafka_topic_partition_list_t *a = NULL;
        if (k->self_assign && !k->self_revoking && !rd_kafka_assignment(k->consumer, &a) && a && a->cnt)
            kafka_rebalance(k->consumer, RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS, a, k);
        if (a) rd_kafka_topic_partition_list_destroy(a);
        fs_lag_free(k->lag); /* it asks the consumer: before the consumer closes */
        k->lag = NULL;
        if (k->cq) rd_kafka_queue_destroy(k->cq);
        k->cq = NULL;
        rd_kafka_consumer_close(k->consumer); /* leaves the group */
    }
    if (k->aq) rd_kafka_queue_destroy(k->aq);
    if (k->txth) {
        /* A job may be waiting for delivery reports only this thread serves
         * (commit_transaction's flush): serve them until it ends (its calls
         * are bounded), then stop the thread. No txn_done at close. */
        while (fs_txn_thread_busy(k->txth)) {
            serve_producer(k, 50);
            fs_txn_job *j = fs_txn_thread_done(k->txth);
            if (j) job_release(j);
        }
        fs_txn_thread_free(k->txth);
        k->txth = NULL;
        k->job_busy = 0;
        job_release(&k->job); /* a commit that waited and never started */
    }
    fs_meta_free(k->meta); /* it asks the consumer: before the consumer goes */
    k->meta = NULL;
    if (k->consumer) rd_kafka_destroy(k->consumer);
    if (k->producer) {
        /* Sends waiting for a transaction that will not begin now are
         * discarded with it (their input was not committed either). */
        if (k->txn && !k->txn_open) k->txn_dropping = 1;
        if (k->txn_dropping) drop_overflow(k);
        if (k->dropped.len) report_dropped(k);
        kafka_flush(tp, 5000);
        if (k->overflow.len)
            fs_warn("%zu messages never reached the producer's queue", k->overflow.len);
        if (tp->backlog_peak)
            fs_info(k->txn ? "producer: up to %lld messages waited in the worker (for the next "
                             "transaction, or for room in librdkafka's queue)"
                           : "producer: up to %lld messages waited for room in librdkafka's queue "
                             "(queue.buffering.max.messages)",
                    (long long)tp->backlog_peak);
        while (k->overflow.len) {
            struct fs_overflow o = fs_ring_shift(&k->overflow);
            if (o.hdrs) rd_kafka_headers_destroy(o.hdrs);
            free(o.key);
        }
        if (k->pq) {
            rd_kafka_queue_io_event_enable(k->pq, -1, NULL, 0);
            rd_kafka_queue_destroy(k->pq);
        }
    }
    retired_free(k);
    close_topic_handles(k);
    if (k->producer) rd_kafka_destroy(k->producer);
    fs_ring_free(&k->overflow);
    fs_ring_free(&k->dropped);
    fs_ring_free(&k->notes);
    fs_timer_stop(tp->loop, &k->cq_timer);
    while (k->cqs.len) cq_free(k, k->cqs.items[k->cqs.len - 1]);
    fs_vec_free(&k->cqs);
    for (size_t i = 0; i < k->deferred.len; i++) fs_tplist_free(&k->deferred.items[i].offsets);
    fs_vec_free(&k->deferred);
    if (k->tfd >= 0) fs_io_del(tp->loop, &k->tio), close(k->tfd);
    for (size_t i = 0; i < k->pconf.len; i++) free(k->pconf.items[i]);
    fs_vec_free(&k->pconf);
    free(k->txn_id);
    if (k->mock) rd_kafka_mock_cluster_destroy(k->mock);
    if (k->mock_host) rd_kafka_destroy(k->mock_host);
    if (k->cfd >= 0) fs_io_del(tp->loop, &k->cio), close(k->cfd);
    if (k->pfd >= 0) fs_io_del(tp->loop, &k->pio), close(k->pfd);
    if (k->afd >= 0) fs_io_del(tp->loop, &k->aio), close(k->afd);
    self_subs_clear(k);
    fs_vec_free(&k->self_subs);
    fs_tplist_free(&k->self_owned);
    fs_vec_free(&k->topics);
    fs_vec_free(&k->vus);
    free(k->fetched);
    free(k->msgs);
    free(k->bootstrap);
    free(k->instance_id);
    free(k->assignor);
    free(k->group);
    free(k);
}

/* Kafka's default partitioner (murmur2 of the key), taken from librdkafka so the
 * in-memory transport places keys where a Java or librdkafka producer would. */
int32_t fs_murmur2_partition(const void *key, size_t len, int32_t n)
{
    return rd_kafka_msg_partitioner_murmur2(NULL, key, len, n, NULL, NULL);
}

/* Pattern topics' listing (ops->list_topics): the metadata thread asks the
 * consumer, the one handle that lives as long as the transport (the producer
 * is replaced under exactly-once). */
static long kafka_list_topics(fs_transport *tp, int wait_ms,
                              void (*fn)(void *data, const char *name, int partitions), void *data,
                              char *err, size_t errlen)
{
    fs_kafka *k = kafka_of(tp);
    if (!k->meta && !(k->meta = fs_meta_new(k->consumer, FS_METADATA_MS, err, errlen))) return -1;
    fs_meta_ask(k->meta);
    return fs_meta_read(k->meta, wait_ms, fn, data, err, errlen);
}

static int64_t kafka_high_watermark(fs_transport *tp, const char *topic, int32_t partition)
{
    fs_kafka *k = (fs_kafka *)tp;
    int64_t lo = -1, hi = -1;
    if (!k->consumer) return -1;
    if (rd_kafka_get_watermark_offsets(k->consumer, topic, partition, &lo, &hi)) hi = -1;
    /* The newer of the two: the fetched one stands still while fetching is paused. */
    int64_t asked = fs_lag_end(k->lag, topic, partition);
    return asked > hi ? asked : hi;
}

static const fs_transport_ops kafka_ops = {
    .name = "kafka",
    .resolve = kafka_resolve,
    .subscribe = kafka_subscribe,
    .poll = kafka_poll,
    .produce = kafka_produce,
    .undelivered = kafka_undelivered,
    .flush = kafka_flush,
    .assign = kafka_assign,
    .unassign = kafka_unassign,
    .assignment = kafka_assignment,
    .pause = kafka_pause,
    .resume = kafka_resume,
    .seek = kafka_seek,
    .commit = kafka_commit,
    .committed = kafka_committed,
    .strerror = kafka_strerror,
    .close = kafka_close,
    .txn_init = kafka_txn_init,
    .txn_begin = kafka_txn_begin,
    .txn_seal = kafka_txn_seal,
    .txn_commit = kafka_txn_commit,
    .txn_abort = kafka_txn_abort,
    .high_watermark = kafka_high_watermark,
    .list_topics = kafka_list_topics,
};

/* Changelog recovery and global tables (the state layer) still read with
 * consumers of their own: assign-only, read_committed, a 50 ms fetch wait.
 * They move onto a reader operation of the transport. */
rd_kafka_t *fs_kafka_reader(fs_transport *tp, const char *group, char *err, size_t errlen)
{
    fs_kafka *k = kafka_of(tp);
    if (!k) {
        snprintf(err, errlen, "no broker to read from");
        return NULL;
    }
    return new_consumer(k, group, 0, err, errlen);
}

/* Wakes the loop (cb on an eventfd registered with it) when q has something. */
int fs_kafka_watch_queue(fs_loop *loop, rd_kafka_queue_t *q, int *fd, fs_io *io,
                         void (*cb)(fs_io *, uint32_t), void *data)
{
    return watch_queue(loop, q, fd, io, cb, data);
}

rd_kafka_t *fs_kafka_group_consumer(fs_transport *tp)
{
    fs_kafka *k = kafka_of(tp);
    return k && !k->self_assign ? k->consumer : NULL;
}
