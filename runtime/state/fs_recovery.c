/* fs_recovery: changelog replay as loop work (see fs_recovery.h). */
#include "fs_recovery.h"
#include "fs_kafka.h"
#include "fs_signal.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "fs_log.h"
#include "fs_store.h"
#include "fs_table_types.h"
#include "fs_vec.h"

/* Records applied per step: one LMDB transaction, a few milliseconds. */
#define BATCH 10000
/* While a replay is queued: how often the stop and a stalled changelog are looked at. */
#define TICK_MS 100
/* A changelog created a moment ago may not have a leader yet: short attempts,
 * retried, so that a stop requested meanwhile is seen within a second. */
#define WM_TIMEOUT_MS 1000
#define WM_RETRY_MS 200
#define WM_TRIES 400
/* A replay that receives nothing: warned about every IDLE_WARN_MS, fatal
 * after IDLE_MS. A broker restarted under the worker (a replay started or
 * restarted while it was down, an exactly-once reset's, say) takes tens of
 * seconds to lead its partitions again on a loaded machine: the bound is the
 * one Kafka Streams gives a task that cannot progress (task.timeout.ms). */
#define IDLE_MS 300000
#define IDLE_WARN_MS 30000
#define LOG_EVERY_MS 2000

#define IN_HEADER "fstream-in"

enum { T_QUEUED, T_QUERY, T_RETRY, T_REPLAY };

/* The largest input offset a replayed record's fstream-in header named, per topic. */
typedef struct in_offset {
    char *topic; /* owned */
    int64_t off;
} in_offset;

/* One table partition to replay; owned by the queue until finished or cancelled. */
/* One table partition to replay; owned by the queue until finished or cancelled. */
struct task {
    fs_table *t;
    int32_t p;
    int state, tries, found;
    int waited; /* the replay said it waits for a transaction to be resolved */
    int known; /* the query below answered for it, not looked at yet */
    int64_t qlo, qhi;
    rd_kafka_resp_err_t qerr;
    int64_t start, hi, next, done;
    int64_t t0, last_log, last_data, last_warn; /* monotonic ms */
    FS_VEC(in_offset) inputs;
};

/* Owned by the table layer (see fs_recovery.h); owns its tasks, the eventfd,
 * its timers (armed on rt->loop) and the query thread, which it joins. */
/* One partition whose end the query thread asks for. */
struct wm {
    fs_table *t;
    int32_t p;
    int64_t lo, hi;
    rd_kafka_resp_err_t err;
};

/* Owned by the table layer (see fs_recovery.h); owns its tasks, the eventfd,
 * its timers (armed on rt->loop) and the query thread, which it joins. */
struct fs_recovery {
    fs_rt *rt;
    fs_recovery_done_fn done;
    void *data;
    FS_VEC(struct task *) q; /* FIFO; q.items[0] is the one that runs */
    int efd;                 /* consumer queue wake-ups, and the query thread's answer */
    fs_io io;
    int watching;            /* efd is the recovery consumer queue's io event */
    fs_timer work, tick, retry;
    /* The watermark query in flight (at most one), for every queued partition
     * whose end is not known: asked together before any replay starts, each
     * answer is immediate (later, a query waits behind the replay's fetch, up to
     * fetch.wait.max.ms). A partition cancelled meanwhile just drops its answer. */
    int querying, threaded;
    pthread_t th;
    atomic_int answered;
    atomic_int quit; /* closing: the thread asks no further partition */
    FS_VEC(struct wm) qs;
    fs_store_op *ops;
    rd_kafka_message_t **msgs;
};

static void start_next(fs_recovery *r);

static int64_t now_ms(const fs_recovery *r)
{
    return fs_loop_now(&r->rt->loop);
}

static struct task *running(const fs_recovery *r)
{
    return r->q.len ? r->q.items[0] : NULL;
}

static void task_free(struct task *k)
{
    for (size_t i = 0; i < k->inputs.len; i++) free(k->inputs.items[i].topic);
    fs_vec_free(&k->inputs);
    free(k);
}

static void remove_task(fs_recovery *r, struct task *k)
{
    for (size_t i = 0; i < r->q.len; i++)
        if (r->q.items[i] == k) {
            fs_vec_remove(&r->q, i);
            break;
        }
}

static void unassign(fs_recovery *r)
{
    if (r->rt->recovery) rd_kafka_assign(r->rt->recovery, NULL);
}

/* Takes k off the queue and reports rc; the next replay begins. */
static void finish(fs_recovery *r, struct task *k, int rc)
{
    if (k->state == T_REPLAY) unassign(r);
    fs_table *t = k->t;
    int32_t p = k->p;
    remove_task(r, k);
    task_free(k);
    r->done(r->data, t, p, rc);
    start_next(r);
}

static void fail(fs_recovery *r, struct task *k, const char *what)
{
    fs_rt_fatal(r->rt, "table %s[%d]: %s", k->t->name, (int)k->p, what);
    finish(r, k, -1);
}

static void say_interrupted(const struct task *k, const char *why)
{
    if (k->state == T_REPLAY)
        fs_warn("recovery of table %s[%d] interrupted by %s at %lld of %lld records; "
                "the next start resumes it",
                k->t->name, (int)k->p, why, (long long)k->done, (long long)(k->hi - k->start));
    else if (k->state != T_QUEUED)
        fs_warn("recovery of table %s[%d] interrupted by %s before it began", k->t->name,
                (int)k->p, why);
}

/* ---- the changelog's end, asked on a thread ---- */

static void *query_main(void *arg)
{
    fs_recovery *r = arg;
    for (size_t i = 0; i < r->qs.len; i++) {
        struct wm *w = &r->qs.items[i];
        w->err = RD_KAFKA_RESP_ERR__TIMED_OUT;
        if (atomic_load(&r->quit)) continue;
        w->err = rd_kafka_query_watermark_offsets(r->rt->recovery, w->t->changelog->name, w->p,
                                                  &w->lo, &w->hi, WM_TIMEOUT_MS);
    }
    atomic_store(&r->answered, 1);
    uint64_t one = 1;
    if (write(r->efd, &one, sizeof one) < 0) {
        /* The tick looks at `answered` too. */
    }
    return NULL;
}

static int ensure_consumer(fs_recovery *r)
{
    fs_rt *rt = r->rt;
    if (!rt->recovery) {
        char err[512], g[512];
        snprintf(g, sizeof g, "%s-recovery", rt->group);
        rt->recovery = fs_kafka_reader(rt->tp, g, err, sizeof err);
        if (!rt->recovery) {
            fs_rt_fatal(rt, "recovery consumer: %s", err);
            return -1;
        }
        r->watching = 0;
    }
    if (!r->watching) {
        rd_kafka_queue_t *q = rd_kafka_queue_get_consumer(rt->recovery);
        if (!q) {
            fs_rt_fatal(rt, "recovery consumer: no consumer queue");
            return -1;
        }
        static const char one[8] = {1, 0, 0, 0, 0, 0, 0, 0};
        rd_kafka_queue_io_event_enable(q, r->efd, one, sizeof one);
        rd_kafka_queue_destroy(q);
        r->watching = 1;
    }
    return 0;
}

/* Asks for the end of every queued partition whose end is not known. */
static void ask_ends(fs_recovery *r)
{
    if (r->querying) return; /* its answer comes back here */
    r->qs.len = 0;
    for (size_t i = 0; i < r->q.len; i++) {
        struct task *k = r->q.items[i];
        if (k->known || k->state == T_REPLAY || (k->state == T_RETRY && i > 0)) continue;
        struct wm w = {k->t, k->p, 0, 0, 0};
        if (fs_vec_push(&r->qs, w)) {
            if (i == 0) fs_rt_fatal(r->rt, "recovery: out of memory");
            break;
        }
    }
    if (!r->qs.len) return;
    r->querying = 1;
    atomic_store(&r->answered, 0);
    r->threaded = pthread_create(&r->th, NULL, query_main, r) == 0;
    if (!r->threaded) query_main(r); /* no thread to be had: ask, blocking for a moment */
}

/* Collects the query's answer once the thread is done; 1 if there was one. */
static int reap_query(fs_recovery *r)
{
    if (!r->querying || !atomic_load(&r->answered)) return 0;
    if (r->threaded) pthread_join(r->th, NULL);
    r->querying = r->threaded = 0;
    return 1;
}

/* Drops what the recovery consumer's queue still holds from an earlier
 * assignment (a cancelled replay): its records are filtered by offset anyway,
 * but its end-of-partition event must not end the next replay early. */
static void discard_queued(fs_recovery *r)
{
    rd_kafka_queue_t *q = rd_kafka_queue_get_consumer(r->rt->recovery);
    if (!q) return;
    ssize_t n;
    while ((n = rd_kafka_consume_batch_queue(q, 0, r->msgs, BATCH)) > 0)
        for (ssize_t i = 0; i < n; i++) rd_kafka_message_destroy(r->msgs[i]);
    rd_kafka_queue_destroy(q);
}

static void begin_replay(fs_recovery *r, struct task *k, int64_t lo, int64_t hi)
{
    fs_table *t = k->t;
    struct fs_tpart *tp = &t->parts[k->p];
    const char *cl = t->changelog->name;
    int64_t start = k->start;
    if (start > hi && r->rt->embedded) {
        /* memory://: the broker lived and died with the last run, so its
         * changelog is gone and this state cannot be checked against it. A
         * new run of an in-memory app starts from nothing, like its topics. */
        char err[512];
        fs_warn("table %s[%d]: local state in %s is from an earlier run on memory://, whose "
                "broker kept nothing: discarding it (the table starts empty, as its topics do)",
                t->name, (int)k->p, fs_store_path(tp->store));
        if (fs_store_clear(tp->store, err, sizeof err)) {
            fs_rt_fatal(r->rt, "table %s[%d]: %s", t->name, (int)k->p, err);
            finish(r, k, -1);
            return;
        }
        start = k->start = 0;
        k->found = 0;
    }
    if (start > hi && r->rt->eos && ++k->tries < WM_TRIES) {
        /* Under exactly-once hi is the last stable offset: the commit markers
         * of the transaction LMDB was written after may not be there yet (the
         * coordinator writes them after answering the commit). Ask again. */
        k->state = T_RETRY;
        fs_timer_start(&r->rt->loop, &r->retry, WM_RETRY_MS);
        return;
    }
    if (start > hi) {
        fs_rt_fatal(r->rt,
                    "table %s[%d]: local state (in %s) covers changelog %s up to offset %lld but the "
                    "changelog ends at %lld — was the changelog deleted or recreated? Run "
                    "`fstream-lua reset` to rebuild from what the changelog holds",
                    t->name, (int)k->p, fs_store_path(tp->store), cl, (long long)start, (long long)hi);
        finish(r, k, -1);
        return;
    }
    if (start < lo) {
        if (k->found)
            fs_warn("table %s[%d]: changelog %s starts at %lld but local state stops at %lld: "
                    "%lld records are gone from the broker",
                    t->name, (int)k->p, cl, (long long)lo, (long long)start, (long long)(lo - start));
        start = k->start = lo;
    }
    k->next = start;
    k->hi = hi;
    /* Under exactly-once even an empty tail is read to its end: the end
     * asked for is the last stable offset, and a transaction beyond it may
     * be committed with its markers still on the way (replay_step). */
    if (start >= hi && !r->rt->eos) {
        tp->cl_next = start;
        finish(r, k, 0);
        return;
    }
    if (hi > start)
        fs_info("recovering table %s[%d]: %lld changelog records (offsets %lld..%lld)", t->name,
                (int)k->p, (long long)(hi - start), (long long)start, (long long)(hi - 1));
    discard_queued(r);
    rd_kafka_topic_partition_list_t *a = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(a, cl, k->p)->offset = start;
    rd_kafka_resp_err_t e = rd_kafka_assign(r->rt->recovery, a);
    rd_kafka_topic_partition_list_destroy(a);
    if (e) {
        char what[300];
        snprintf(what, sizeof what, "cannot read its changelog: %s", rd_kafka_err2str(e));
        fail(r, k, what);
        return;
    }
    k->state = T_REPLAY;
    k->t0 = k->last_log = k->last_data = k->last_warn = now_ms(r);
    fs_timer_start(&r->rt->loop, &r->work, 0);
}

static void answered(fs_recovery *r, struct task *k)
{
    rd_kafka_resp_err_t e = k->qerr;
    int64_t lo = k->qlo, hi = k->qhi;
    k->known = 0;
    int transient = e == RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION ||
                    e == RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE ||
                    e == RD_KAFKA_RESP_ERR__TRANSPORT || e == RD_KAFKA_RESP_ERR__TIMED_OUT;
    if (transient && ++k->tries < WM_TRIES) {
        k->state = T_RETRY;
        fs_timer_start(&r->rt->loop, &r->retry, WM_RETRY_MS);
        return;
    }
    if (e == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART || e == RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION) {
        lo = hi = 0;
    } else if (e) {
        char what[600];
        snprintf(what, sizeof what, "cannot read the end of %s: %s", k->t->changelog->name,
                 rd_kafka_err2str(e));
        fail(r, k, what);
        return;
    }
    begin_replay(r, k, lo, hi);
}

/* ---- applying records ---- */

static int note_input(struct task *k, const rd_kafka_message_t *m)
{
    rd_kafka_headers_t *h;
    const void *v;
    size_t vl;
    if (rd_kafka_message_headers(m, &h) || rd_kafka_header_get_last(h, IN_HEADER, &v, &vl) || !v)
        return 0;
    /* "topic@offset;topic@offset;..." (a topic name may hold '@': the last one counts) */
    const char *s = v, *end = s + vl;
    while (s < end) {
        const char *semi = memchr(s, ';', (size_t)(end - s));
        const char *tok_end = semi ? semi : end;
        const char *at = NULL;
        for (const char *c = s; c < tok_end; c++)
            if (*c == '@') at = c;
        if (at && at > s) {
            int64_t off = 0;
            for (const char *c = at + 1; c < tok_end && *c >= '0' && *c <= '9'; c++)
                off = off * 10 + (*c - '0');
            size_t nl = (size_t)(at - s), i;
            for (i = 0; i < k->inputs.len; i++)
                if (strlen(k->inputs.items[i].topic) == nl && !memcmp(k->inputs.items[i].topic, s, nl))
                    break;
            if (i == k->inputs.len) {
                in_offset io = {strndup(s, nl), -1};
                if (!io.topic || fs_vec_push(&k->inputs, io)) {
                    free(io.topic);
                    return -1;
                }
            }
            if (off > k->inputs.items[i].off) k->inputs.items[i].off = off;
        }
        s = tok_end + 1;
    }
    return 0;
}

/* The replay reached the changelog's end: the input offsets the replayed
 * state reflects (never moving one back), then the sync. */
static void complete(fs_recovery *r, struct task *k)
{
    fs_table *t = k->t;
    struct fs_tpart *tp = &t->parts[k->p];
    char err[512];
    FS_VEC(fs_store_meta) meta = {0};
    fs_buf names = {0};
    int rc = 0;
    for (size_t i = 0; i < k->inputs.len && rc == 0; i++) {
        int64_t have;
        int found;
        size_t at = names.len;
        if (fs_buf_add(&names, "in/", 3) ||
            fs_buf_add(&names, k->inputs.items[i].topic, strlen(k->inputs.items[i].topic) + 1)) {
            rc = -1;
            break;
        }
        if (fs_store_meta_get(tp->store, names.data + at, &have, &found, err, sizeof err) == 0 &&
            found && have >= k->inputs.items[i].off) {
            names.len = at;
            continue;
        }
        fs_store_meta m = {NULL, k->inputs.items[i].off};
        if (fs_vec_push(&meta, m)) rc = -1;
    }
    if (rc) {
        snprintf(err, sizeof err, "out of memory");
    } else {
        /* names holds one NUL-ended name per meta entry, in order. */
        const char *nm = names.data;
        for (size_t i = 0; i < meta.len; i++, nm += strlen(nm) + 1) meta.items[i].name = nm;
        if (meta.len) rc = fs_store_write(tp->store, NULL, 0, meta.items, meta.len, 0, err, sizeof err);
    }
    fs_vec_free(&meta);
    fs_buf_free(&names);
    fs_store_sync(tp->store);
    tp->cl_next = k->next;
    if (rc) {
        fail(r, k, err);
        return;
    }
    double secs = (double)(now_ms(r) - k->t0) / 1000.0;
    fs_info("recovered table %s[%d]: %lld records in %.2f s (%.0f records/s)", t->name, (int)k->p,
            (long long)k->done, secs, secs > 0 ? (double)k->done / secs : 0.0);
    finish(r, k, 0);
}

/* Under exactly-once the end asked for is the partition's last stable
 * offset when the query ran. The previous owner's last transaction may be
 * committed by then with its markers not yet written (the coordinator writes
 * them after it answered the commit): the stable offset stops before that
 * transaction while the input offsets it committed are already the group's.
 * Ending there would lose its table writes for good (input resumes after
 * them). So the replay goes on until it reached the high watermark the
 * fetcher last saw: nothing unresolved is left behind it. (An open
 * transaction of a stopped zombie ends within its transaction timeout;
 * the replay's idle limit is longer.) */
static int unresolved(fs_recovery *r, struct task *k)
{
    int64_t lo = -1, hwm = -1;
    if (!r->rt->eos) return 0;
    if (rd_kafka_get_watermark_offsets(r->rt->recovery, k->t->changelog->name, k->p, &lo, &hwm) ||
        hwm < 0)
        return 1; /* nothing fetched yet: its end is not known */
    if (hwm <= k->next) return 0;
    if (!k->waited) {
        k->waited = 1;
        fs_info("recovering table %s[%d]: waiting for the transaction at offsets %lld..%lld of %s to "
                "be resolved", k->t->name, (int)k->p, (long long)k->next, (long long)(hwm - 1),
                k->t->changelog->name);
    }
    return 1;
}

/* One bounded step of the replay: what the consumer queue holds, up to BATCH
 * records, in one LMDB transaction. */
static void replay_step(fs_recovery *r, struct task *k)
{
    fs_rt *rt = r->rt;
    rd_kafka_queue_t *q = rd_kafka_queue_get_consumer(rt->recovery);
    ssize_t n = q ? rd_kafka_consume_batch_queue(q, 0, r->msgs, BATCH) : -1;
    if (q) rd_kafka_queue_destroy(q);
    if (n <= 0) return;
    const char *cl = k->t->changelog->name;
    size_t nops = 0;
    int64_t next = k->next, eof = -1;
    int oom = 0;
    for (ssize_t i = 0; i < n; i++) {
        rd_kafka_message_t *m = r->msgs[i];
        if (m->err) {
            /* The end of the partition being replayed (read_committed: the
             * last stable offset). A transactional changelog ends with a
             * commit marker, which no reader receives: the last record's
             * offset + 1 never reaches hi, this event says the end was
             * reached. Only an end at or past the one asked for counts (an
             * earlier assignment's cannot be: discard_queued). */
            if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                if (m->partition == k->p && m->rkt && m->offset >= k->hi && m->offset >= next &&
                    strcmp(rd_kafka_topic_name(m->rkt), cl) == 0)
                    eof = m->offset;
            } else {
                fs_warn("recovery of %s[%d]: %s", cl, (int)k->p, rd_kafka_message_errstr(m));
            }
            continue;
        }
        /* What an earlier assignment (a cancelled replay) left in the queue. */
        if (m->partition != k->p || m->offset < next) continue;
        if (note_input(k, m)) oom = 1;
        r->ops[nops].key = m->key;
        r->ops[nops].klen = m->key_len;
        r->ops[nops].val = m->payload;
        r->ops[nops].vlen = m->len;
        nops++;
        next = m->offset + 1;
    }
    char err[512];
    int rc = 0;
    if (oom) {
        snprintf(err, sizeof err, "out of memory");
        rc = -1;
    } else if (nops) {
        fs_store_meta meta = {"changelog", next};
        rc = fs_store_write(k->t->parts[k->p].store, r->ops, nops, &meta, 1, 0, err, sizeof err);
    }
    for (ssize_t i = 0; i < n; i++) rd_kafka_message_destroy(r->msgs[i]);
    if (rc) {
        fail(r, k, err);
        return;
    }
    if (nops) {
        k->next = next;
        k->done += (int64_t)nops;
        if (!fs_table_internal(k->t)) rt->recovered_records += (int64_t)nops;
        k->last_data = k->last_warn = now_ms(r);
    }
    /* Ends either way: the next record to read is the end asked for (a
     * changelog without transactions), or the consumer reached the end. */
    if (eof >= 0 && eof > k->next) k->next = eof; /* past the markers: where the tail starts */
    if ((k->next >= k->hi || eof >= 0) && !unresolved(r, k)) {
        complete(r, k);
        return;
    }
    /* The queue's eventfd fires when it turns non-empty: a full batch may have left more. */
    if (n == BATCH) fs_timer_start(&rt->loop, &r->work, 0);
}

/* ---- driving ---- */

static void start_next(fs_recovery *r)
{
    struct task *k = running(r);
    /* Nothing begins once the worker stops: what is queued is dropped. */
    if (!k || r->rt->fatal || r->rt->stopping || r->rt->closing || k->state == T_REPLAY ||
        k->state == T_RETRY)
        return;
    if (k->state == T_QUEUED) {
        struct fs_tpart *tp = &k->t->parts[k->p];
        char err[512];
        int64_t v;
        int found;
        if (fs_store_meta_get(tp->store, "changelog", &v, &found, err, sizeof err)) {
            fail(r, k, err); /* finish starts the next one */
            return;
        }
        k->found = found;
        k->start = found ? v : 0;
        if (ensure_consumer(r)) {
            finish(r, k, -1);
            return;
        }
        k->state = T_QUERY;
        if (!fs_timer_active(&r->tick)) fs_timer_start(&r->rt->loop, &r->tick, TICK_MS);
    }
    if (k->known) answered(r, k);
    else ask_ends(r);
}

/* The query thread is done: its answers go to the partitions still queued. */
static void handle_answer(fs_recovery *r)
{
    if (!reap_query(r)) return;
    for (size_t i = 0; i < r->qs.len; i++) {
        struct wm *w = &r->qs.items[i];
        for (size_t j = 0; j < r->q.len; j++) {
            struct task *k = r->q.items[j];
            if (k->t != w->t || k->p != w->p || k->known || k->state == T_REPLAY) continue;
            k->known = 1;
            k->qlo = w->lo;
            k->qhi = w->hi;
            k->qerr = w->err;
            break;
        }
    }
    r->qs.len = 0;
    start_next(r);
}

static void io_cb(fs_io *io, uint32_t events)
{
    fs_recovery *r = io->data;
    uint64_t v;
    (void)events;
    if (read(io->fd, &v, sizeof v) < 0 && errno != EAGAIN) fs_warn("eventfd read: %s", strerror(errno));
    handle_answer(r);
    struct task *k = running(r);
    if (k && k->state == T_REPLAY) fs_timer_start(&r->rt->loop, &r->work, 0);
}

static void work_cb(fs_timer *tm)
{
    fs_recovery *r = tm->data;
    struct task *k = running(r);
    if (k && k->state == T_REPLAY) replay_step(r, k);
    else start_next(r);
}

static void retry_cb(fs_timer *tm)
{
    fs_recovery *r = tm->data;
    struct task *k = running(r);
    if (k && k->state == T_RETRY) {
        k->state = T_QUERY;
        ask_ends(r);
    }
}

/* Every queued replay ends with rc 1 (a stop). */
static void interrupt_all(fs_recovery *r, const char *why)
{
    size_t queued = 0;
    for (size_t i = 0; i < r->q.len; i++) queued += r->q.items[i]->state == T_QUEUED;
    if (queued)
        fs_warn("recovery of %zu more table partitions interrupted by %s before it began; the next "
                "start does it", queued, why);
    while (r->q.len) {
        struct task *k = r->q.items[0];
        say_interrupted(k, why);
        if (k->state == T_REPLAY) unassign(r);
        fs_table *t = k->t;
        int32_t p = k->p;
        remove_task(r, k);
        task_free(k);
        r->done(r->data, t, p, 1);
    }
}

/* Stop, stalls and progress: whatever the queue's wake-ups do not cover. */
static void check(fs_recovery *r)
{
    fs_rt *rt = r->rt;
    if (rt->stopping) {
        interrupt_all(r, "a stop");
        return;
    }
    handle_answer(r);
    struct task *k = running(r);
    if (k && k->state == T_QUEUED) start_next(r);
    if (!k || k->state != T_REPLAY) return;
    replay_step(r, k); /* a wake-up is never lost for long */
    if (running(r) != k) return;
    int64_t now = now_ms(r);
    if (now - k->last_data > IDLE_MS) {
        char what[64];
        snprintf(what, sizeof what, "%lld of %lld", (long long)k->next, (long long)k->hi);
        fs_rt_fatal(rt, "table %s[%d]: changelog %s stopped at %s: nothing received for %d s",
                    k->t->name, (int)k->p, k->t->changelog->name, what, IDLE_MS / 1000);
        finish(r, k, -1);
        return;
    }
    if (now - k->last_warn >= IDLE_WARN_MS) {
        k->last_warn = now;
        fs_warn("recovering table %s[%d]: nothing received from changelog %s for %lld s (at offset "
                "%lld of %lld; is the broker reachable?); giving up after %d s",
                k->t->name, (int)k->p, k->t->changelog->name, (long long)((now - k->last_data) / 1000),
                (long long)k->next, (long long)k->hi, IDLE_MS / 1000);
    }
    if (now - k->last_log >= LOG_EVERY_MS) {
        int64_t total = k->hi - k->start;
        k->last_log = now;
        fs_info("recovering table %s[%d]: %lld/%lld records (%.0f%%), %.0f records/s", k->t->name,
                (int)k->p, (long long)k->done, (long long)total,
                100.0 * (double)k->done / (double)total,
                (double)k->done * 1000.0 / (double)(now - k->t0 > 0 ? now - k->t0 : 1));
    }
}

static void tick_cb(fs_timer *tm)
{
    fs_recovery *r = tm->data;
    check(r);
    if (r->q.len || r->querying) fs_timer_start(&r->rt->loop, &r->tick, TICK_MS);
}

/* ---- the interface ---- */

fs_recovery *fs_recovery_new(fs_rt *rt, fs_recovery_done_fn done, void *data)
{
    fs_recovery *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->rt = rt;
    r->done = done;
    r->data = data;
    r->ops = malloc(BATCH * sizeof *r->ops);
    r->msgs = malloc(BATCH * sizeof *r->msgs);
    r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (!r->ops || !r->msgs || r->efd < 0) goto fail;
    r->io.fd = r->efd;
    r->io.cb = io_cb;
    r->io.data = r;
    if (fs_io_add(&rt->loop, &r->io, EPOLLIN)) goto fail;
    r->work.cb = work_cb;
    r->tick.cb = tick_cb;
    r->retry.cb = retry_cb;
    r->work.data = r->tick.data = r->retry.data = r;
    return r;
fail:
    if (r->efd >= 0) close(r->efd);
    free(r->ops);
    free(r->msgs);
    free(r);
    return NULL;
}

int fs_recovery_add(fs_recovery *r, fs_table *t, int32_t p)
{
    struct task *k = calloc(1, sizeof *k);
    if (!k) return -1;
    k->t = t;
    k->p = p;
    k->state = T_QUEUED;
    if (fs_vec_push(&r->q, k)) {
        free(k);
        return -1;
    }
    /* Begins from the loop: the partitions of one assignment are queued
     * together first, and their ends asked in one go. */
    if (!fs_timer_active(&r->work)) fs_timer_start(&r->rt->loop, &r->work, 0);
    return 0;
}

int fs_recovery_pending(const fs_recovery *r, const fs_table *t, int32_t p)
{
    for (size_t i = 0; r && i < r->q.len; i++)
        if (r->q.items[i]->p == p && (!t || r->q.items[i]->t == t)) return 1;
    return 0;
}

void fs_recovery_cancel(fs_recovery *r, int32_t p, const char *why)
{
    if (!r) return;
    int head = 0;
    for (size_t i = 0; i < r->q.len;) {
        struct task *k = r->q.items[i];
        if (p >= 0 && k->p != p) {
            i++;
            continue;
        }
        say_interrupted(k, why);
        if (i == 0 && k->state == T_REPLAY) unassign(r);
        head |= i == 0;
        remove_task(r, k);
        task_free(k);
    }
    if (head) start_next(r);
}

int fs_recovery_wait(fs_recovery *r)
{
    fs_rt *rt = r->rt;
    while ((r->q.len || r->querying) && !rt->fatal) {
        /* The worker's loop does not run yet (start-up) or is paused (reload):
         * only this module's work is driven, and the stop signal watched. */
        if (fs_signals_stop_requested()) {
            fs_signals_poll(); /* the worker registered its stop (fs_worker_start) */
            interrupt_all(r, "a stop");
            return 1;
        }
        struct pollfd pfd = {r->efd, POLLIN, 0};
        if (poll(&pfd, 1, 20) > 0) io_cb(&r->io, 0);
        struct task *k = running(r);
        if (k && k->state == T_RETRY && fs_timer_active(&r->retry) &&
            r->retry.when <= fs_loop_now(&rt->loop)) {
            fs_timer_stop(&rt->loop, &r->retry);
            retry_cb(&r->retry);
        }
        check(r);
    }
    return rt->fatal ? -1 : 0;
}

void fs_recovery_each(const fs_recovery *r,
                      void (*fn)(void *ud, const fs_table *t, int32_t p, int64_t done, int64_t total),
                      void *ud)
{
    for (size_t i = 0; r && i < r->q.len; i++) {
        const struct task *k = r->q.items[i];
        fn(ud, k->t, k->p, k->done, k->state == T_REPLAY ? k->hi - k->start : -1);
    }
}

void fs_recovery_free(fs_recovery *r)
{
    if (!r) return;
    fs_rt *rt = r->rt;
    fs_recovery_cancel(r, -1, "a stop");
    atomic_store(&r->quit, 1);
    if (r->querying && r->threaded) pthread_join(r->th, NULL);
    r->querying = 0;
    fs_timer_stop(&rt->loop, &r->work);
    fs_timer_stop(&rt->loop, &r->tick);
    fs_timer_stop(&rt->loop, &r->retry);
    if (rt->recovery) {
        rd_kafka_queue_t *q = rd_kafka_queue_get_consumer(rt->recovery);
        if (q) {
            rd_kafka_queue_io_event_enable(q, -1, NULL, 0);
            rd_kafka_queue_destroy(q);
        }
        rd_kafka_destroy(rt->recovery);
        rt->recovery = NULL;
    }
    fs_io_del(&rt->loop, &r->io);
    close(r->efd);
    fs_vec_free(&r->q);
    fs_vec_free(&r->qs);
    free(r->ops);
    free(r->msgs);
    free(r);
}
