/* fs_worker: the worker's side of the transport — the callbacks it registers
 * on the transport (fetched messages to the agents, delivery reports,
 * assignments and revocations to fs_assign, commit results to the
 * checkpoint), opening and starting the transport, the loop's poll with
 * back-pressure, and closing. Worker layer: calls every layer below. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "fs_assign.h"
#include "fs_checkpoint.h"
#include "fs_kafka.h"
#include "fs_log.h"
#include "fs_rt.h"
#include "fs_standby.h"
#include "fs_table.h"
#include "fs_transport.h"
#include "fs_worker.h"

/* ============ the worker's side (checkpoint layer; moves out) ============
 * Everything below runs on top of the transport: the callbacks registered on
 * it, start-up, the loop's poll, and the at-least-once checkpoint. It moves to
 * fs_checkpoint.c / fs_part.c; the transport above never calls into it. */

/* The agents' cursors (fs_stream_cursor.c) as the checkpoint's agent hooks
 * (data: the fs_rt): the checkpoint layer reaches them only through these. */
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

static void hook_hold(void *data, int on)
{
    fs_hold_agents(data, on);
}

static int hook_quiet(void *data)
{
    return fs_streams_quiet(data);
}

static const fs_agent_hooks agent_hooks = {hook_sync_acks, hook_fence, hook_clear, hook_hold,
                                           hook_quiet};

/* Milliseconds since the epoch: the fake clock's under fstream.testing. */
int64_t fs_rt_wall_ms(fs_rt *rt)
{
    if (rt->loop.fake_clock) return rt->wall_offset_ms + fs_loop_now(&rt->loop);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

/* ---- callbacks registered on the transport ---- */

static void on_messages(void *data, const fs_fetched *msgs, int n, int owned)
{
    fs_rt *rt = data;
    fs_batch *b = fs_batch_new(n, owned);
    if (!b) {
        fs_rt_fatal(rt, "out of memory");
        for (int i = 0; i < n; i++) fs_transport_msg_free(msgs[i].m, msgs[i].hdrs, owned);
        return;
    }
    for (int i = 0; i < n; i++) fs_dispatch(rt, b, msgs[i].m, msgs[i].topic, msgs[i].ts, msgs[i].hdrs);
    fs_batch_done(b);
}

static void on_delivered(void *data, const fs_report *r)
{
    fs_rt *rt = data;
    fs_waiter *w = r->ctx.waiter;
    /* (Not below zero: an exactly-once reset counts the aborted sends gone.) */
    if (rt->inflight[r->ctx.epoch & 1] > 0) rt->inflight[r->ctx.epoch & 1]--;
    fs_topic *t = r->topic;
    if (t && t->table && !r->err && r->partition < t->table->partitions &&
        r->offset + 1 > t->table->parts[r->partition].cl_next)
        t->table->parts[r->partition].cl_next = r->offset + 1;
    if (r->aborted) {
        /* Discarded by a transaction abort (or with the transaction it was
         * in): not a failure of delivery. The input that produced it is
         * processed again after the reset. */
        if (w) w->aborted = 1;
    } else if (r->err) {
        rt->delivery_errors++;
        /* The broker refused the message itself: under exactly-once the
         * open transaction cannot commit any more (aborted at the next
         * checkpoint); what follows is as under at-least-once. */
        if (rt->eos) fs_ckpt_send_failed(rt->ckpt, t ? t->name : "?", rt->tp->ops->strerror(r->err));
        if (r->ctx.best_effort)
            fs_error("could not deliver a dead letter to %s[%d] (%zu bytes): %s — it is lost; "
                     "the original is still on its topic",
                     t ? t->name : "?", (int)r->partition, r->len, rt->tp->ops->strerror(r->err));
        else if (!w)
            fs_rt_fatal(rt,
                        "delivery to %s failed: %s — stopping without committing, so the "
                        "input that produced it is processed again on restart",
                        t ? t->name : "?", rt->tp->ops->strerror(r->err));
    }
    if (w) {
        w->err = r->err;
        w->partition = r->partition;
        w->offset = r->offset;
        if (w->co) fs_sched_ready(w->co);
        else free(w);
    }
}

/* Partitions given and taken, commits and committed offsets answered: the
 * orchestration and the checkpoint (fs_assign.c, fs_checkpoint.c). */
static void on_assigned(void *data, const fs_tplist *l)
{
    fs_assign_on_assigned(((fs_rt *)data)->assign, l);
}

static void on_revoked(void *data, const fs_tplist *l, int lost)
{
    fs_assign_on_revoked(((fs_rt *)data)->assign, l, lost);
}

static void on_commit_done(void *data, void *ctx, const fs_tplist *offsets, int err)
{
    fs_ckpt_on_commit_done(((fs_rt *)data)->ckpt, ctx, offsets, err);
}

static void on_txn_done(void *data, void *ctx, int result, const char *msg)
{
    fs_ckpt_on_txn_done(((fs_rt *)data)->ckpt, ctx, result, msg);
}

static void on_committed(void *data, void *ctx, const fs_tplist *offsets, int err)
{
    fs_assign_on_committed(((fs_rt *)data)->assign, ctx, offsets, err);
}

static void on_error(void *data, int err, const char *msg, int fatal)
{
    (void)err;
    if (fatal) fs_rt_fatal(data, "kafka fatal error: %s", msg);
    else fs_warn("transport: %s", msg);
}

/* What the worker's agents read: every topic with an open subscriber. */
static int consumes(void *data, fs_topic *t)
{
    (void)data;
    if (t->table) return 0;
    for (int j = 0; j < t->nsubs; j++)
        if (!t->subs[j]->closed) return 1;
    return 0;
}

static int64_t wall_ms(void *data)
{
    return fs_rt_wall_ms(data);
}

/* ---- the worker's use of the transport ---- */

static int eos_identity(fs_rt *rt, char *err, size_t errlen);

int fs_rt_open_transport(fs_rt *rt, const char *broker, const char *instance_id,
                         const char *assignor, char *err, size_t errlen)
{
    const char *bootstrap = NULL;
    if (broker && rt->eos && fs_broker_url_check(broker, &bootstrap, err, errlen) == 0 && !bootstrap) {
        snprintf(err, errlen,
                 "processing_guarantee exactly_once needs a Kafka cluster, and %s is the embedded "
                 "broker: librdkafka's mock cluster takes transactions but writes no commit "
                 "markers and does not hide aborted messages from read_committed readers, so "
                 "nothing would be exactly-once. Use --broker kafka://HOST:PORT (a Kafka cluster; "
                 "scripts/kafka start runs one locally), or --guarantee at_least_once",
                 broker);
        return -1;
    }
    /* "auto": stable across restarts in this data directory (the slot file's
     * id), distinct for each worker running on it, and for each host. */
    char auto_id[400];
    if (broker && instance_id && strcmp(instance_id, "auto") == 0) {
        if (!rt->txn_id && eos_identity(rt, err, errlen)) return -1;
        char host[256];
        if (gethostname(host, sizeof host)) snprintf(host, sizeof host, "localhost");
        host[sizeof host - 1] = 0;
        snprintf(auto_id, sizeof auto_id, "%s-%s", host, rt->txn_id + strlen(rt->group) + 1);
        instance_id = auto_id;
    }
    fs_transport *tp = broker ? fs_kafka_new(&rt->loop, broker, rt->group, NULL, instance_id, assignor, err,
                                           errlen)
                              : fs_memlog_new(&rt->loop, wall_ms, rt);
    if (tp && broker && instance_id) fs_info("static group member: group.instance.id %s", instance_id);
    if (tp && broker && !fs_kafka_embedded(tp))
        fs_info("partition assignor: %s (%s rebalances)", assignor ? assignor : "cooperative-sticky",
                tp->cooperative ? "incremental" : "eager");
    if (!tp) {
        if (!broker) snprintf(err, errlen, "out of memory");
        return -1;
    }
    tp->cb.data = rt;
    tp->cb.messages = on_messages;
    tp->cb.delivered = on_delivered;
    tp->cb.assigned = on_assigned;
    tp->cb.revoked = on_revoked;
    tp->cb.commit_done = on_commit_done;
    tp->cb.committed = on_committed;
    tp->cb.error = on_error;
    tp->cb.consumes = consumes;
    tp->cb.txn_done = on_txn_done;
    rt->tp = tp;
    rt->ckpt = fs_ckpt_new(rt, tp, rt->eos ? &fs_ckpt_exactly_once : &fs_ckpt_at_least_once);
    if (rt->ckpt) fs_ckpt_set_agents(rt->ckpt, &agent_hooks, rt);
    rt->assign = rt->ckpt ? fs_assign_new(rt, tp, rt->ckpt) : NULL;
    if (!rt->assign) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    rt->broker = strdup(fs_kafka_bootstrap(tp));
    rt->embedded = fs_kafka_embedded(tp);
    if (!rt->broker) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

int fs_worker_resolve(fs_rt *rt, fs_topic **ts, int n, char *err, size_t errlen)
{
    return rt->tp->ops->resolve(rt->tp, ts, n, err, errlen);
}

/* Every topic nobody resolved yet (declared by code that bypassed the app). */
static int resolve_all(fs_rt *rt, char *err, size_t errlen)
{
    return fs_worker_resolve(rt, rt->topics, rt->ntopics, err, errlen);
}

/* ---- exactly-once: the worker's transactional identity ----
 * transactional.id = "<group>-<slot id>": the first slot file
 * <data dir>/.eos/slot-N this process can lock (flock, held until it exits)
 * holds a random id written once. A worker restarted in the same data dir
 * (after kill -9, say) takes the same slot, so its txn_init fences the dead
 * process's producer and aborts its open transaction at once; two workers
 * sharing a data dir get different slots. */
#define FS_EOS_SLOTS 1024

/* Appends formatted text (no NUL) to b, growing it; -1 out of memory. */
__attribute__((format(printf, 2, 3))) static int buf_printf(fs_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || fs_buf_reserve(b, (size_t)n + 1)) return -1;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

static int mkdir_p(char *path)
{
    for (char *p = path + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            int rc = mkdir(path, 0755);
            *p = '/';
            if (rc && errno != EEXIST) return -1;
        }
    return mkdir(path, 0755) && errno != EEXIST ? -1 : 0;
}

static int random_id(char *out, size_t n)
{
    unsigned char b[8];
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t got = read(fd, b, sizeof b);
    close(fd);
    if (got != (ssize_t)sizeof b) return -1;
    snprintf(out, n, "%02x%02x%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]);
    return 0;
}

/* Takes a slot and sets rt->txn_id; -1 with a message. */
static int eos_identity(fs_rt *rt, char *err, size_t errlen)
{
    fs_buf path = {0};
    char id[64];
    int rc = -1;
    if (buf_printf(&path, "%s/.eos", rt->data_dir) || fs_buf_addc(&path, 0)) goto oom;
    if (mkdir_p(path.data)) {
        snprintf(err, errlen, "cannot create %s for the exactly-once slot files: %s", path.data, strerror(errno));
        goto out;
    }
    size_t base = path.len - 1;
    for (int n = 0; n < FS_EOS_SLOTS; n++) {
        path.len = base;
        if (buf_printf(&path, "/slot-%d", n) || fs_buf_addc(&path, 0)) goto oom;
        int fd = open(path.data, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) {
            snprintf(err, errlen, "cannot open %s: %s", path.data, strerror(errno));
            goto out;
        }
        if (flock(fd, LOCK_EX | LOCK_NB)) { /* another worker's */
            close(fd);
            continue;
        }
        ssize_t got = pread(fd, id, sizeof id - 1, 0);
        id[got > 0 ? got : 0] = 0;
        id[strcspn(id, "\n")] = 0;
        if (!id[0]) { /* a new slot: its id, once */
            if (random_id(id, sizeof id) || pwrite(fd, id, strlen(id), 0) != (ssize_t)strlen(id) || fsync(fd)) {
                snprintf(err, errlen, "cannot write %s: %s", path.data, strerror(errno));
                close(fd);
                goto out;
            }
        }
        fs_buf tid = {0};
        if (buf_printf(&tid, "%s-%s", rt->group, id) || fs_buf_addc(&tid, 0)) {
            fs_buf_free(&tid);
            close(fd);
            goto oom;
        }
        rt->txn_id = tid.data;
        rt->slot_fd = fd;
        rc = 0;
        goto out;
    }
    snprintf(err, errlen, "all %d exactly-once slots under %s are taken by running workers", FS_EOS_SLOTS,
             rt->data_dir);
    goto out;
oom:
    snprintf(err, errlen, "out of memory");
out:
    fs_buf_free(&path);
    return rc;
}

/* Makes the producer transactional and opens the first transaction: after
 * the topics are resolved (the producer exists), before anything is sent or
 * subscribed. */
static int eos_start(fs_rt *rt, char *err, size_t errlen)
{
    if (!rt->eos) return 0;
    if (!rt->tp->ops->txn_init) {
        snprintf(err, errlen, "processing_guarantee exactly_once: the %s transport has no transactions",
                 rt->tp->ops->name);
        return -1;
    }
    if (!rt->txn_id && eos_identity(rt, err, errlen)) return -1;
    fs_info("exactly-once: transactional.id %s", rt->txn_id);
    if (rt->tp->ops->txn_init(rt->tp, rt->txn_id, err, errlen)) return -1;
    return rt->tp->ops->txn_begin(rt->tp, err, errlen);
}

int fs_worker_start(fs_rt *rt, char *err, size_t errlen)
{
    if (rt->tp->holds_all) {
        /* Every partition is this worker's from the start. */
        rt->subscribed = 1;
        int maxp = 0;
        for (int i = 0; i < rt->ntables; i++)
            if (rt->tables[i]->partitions > maxp) maxp = rt->tables[i]->partitions;
        for (int p = 0; p < maxp; p++) fs_tables_hold(rt, p, NULL, NULL);
        fs_tables_start_global(rt);
        return 0;
    }
    if (resolve_all(rt, err, errlen)) return -1;
    if (eos_start(rt, err, errlen)) return -1;
    if (rt->fatal || fs_tables_start_global(rt)) {
        if (rt->fatal) snprintf(err, errlen, "%s", rt->fatal_msg);
        else snprintf(err, errlen, "stopped while recovering global tables");
        return -1;
    }
    /* Agents run up to their first wait before the group is joined: one that
     * regroups its stream (group_by inside the agent) declares its repartition
     * topic now, and the first subscription has it. (Changing the subscription
     * while the join is in flight costs a rebalance, and a session timeout on
     * the embedded broker, which keeps the abandoned member.) */
    rt->prestart = 1;
    fs_sched_run_ready(&rt->sched);
    rt->prestart = 0;
    if (fs_worker_open_topics(rt, err, errlen)) return -1;
    if (rt->tp->ops->subscribe(rt->tp, err, errlen) < 0) return -1;
    rt->subscribed = 1;
    if (fs_standby_start(rt)) {
        snprintf(err, errlen, "%s", rt->fatal_msg);
        return -1;
    }
    return 0;
}

/* Stop fetching above max_queued events (or max_queued_bytes of their keys
 * and values) waiting for agents, or when the producer's overflow queue holds
 * max_queued messages; resume below half. The bytes bound is what keeps a
 * flood of big messages from filling memory: max_queued alone lets 20,000
 * events of 1 MiB wait. */
static void back_pressure(fs_rt *rt)
{
    int64_t backlog = rt->tp->backlog;
    int64_t maxb = rt->max_queued_bytes > 0 ? rt->max_queued_bytes : INT64_MAX;
    int over = rt->queued >= rt->max_queued || backlog >= rt->max_queued || rt->queued_bytes >= maxb;
    int under = rt->queued < rt->max_queued / 2 && backlog < rt->max_queued / 2 && rt->queued_bytes < maxb / 2;
    if (over != rt->paused && (over || under)) {
        if (over) rt->tp->ops->pause(rt->tp, NULL);
        else rt->tp->ops->resume(rt->tp, NULL);
        rt->paused = over;
        fs_debug("%s fetching (%lld events of %lld bytes queued, %lld sends waiting)", over ? "paused" : "resumed",
                 (long long)rt->queued, (long long)rt->queued_bytes, (long long)backlog);
    }
}

int fs_worker_poll(fs_rt *rt)
{
    if (rt->tail_pending) fs_tables_tail_poll(rt);
    /* No fetching while every partition is let go of (their events are
     * stale); a cooperative revocation of some lets the others go on. */
    int fetch = !fs_assign_stops_fetching(rt->assign) && rt->subscribed && !rt->stopping && !rt->draining;
    /* Exactly-once: the open transaction took in what it may (fs_send.c). */
    if (rt->txn_full) fetch = 0;
    /* Back-pressure pauses fetching, but the queue is still served: rebalances
     * and commit results arrive on it, and a worker that stops reading it would
     * never answer a rebalance. */
    if (fetch) back_pressure(rt);
    return rt->tp->ops->poll(rt->tp, fetch);
}


int fs_worker_open_topics(fs_rt *rt, char *err, size_t errlen)
{
    if (!rt->tp->durable) return 0;
    /* New topics are created before anything asks for their metadata (a
     * producer handle does): brokers auto-create with their own defaults. */
    if (resolve_all(rt, err, errlen)) return -1;
    if (rt->fatal) {
        snprintf(err, errlen, "%s", rt->fatal_msg);
        return -1;
    }
    return 0;
}

int fs_worker_rebind(fs_rt *rt, char *err, size_t errlen)
{
    if (!rt->tp->durable) return 0;
    if (fs_worker_open_topics(rt, err, errlen)) return -1;
    int rc = rt->tp->ops->subscribe(rt->tp, err, errlen);
    if (rc >= 0) rt->subscribed = 1;
    return rc;
}

void fs_worker_close(fs_rt *rt)
{
    fs_standby_free(rt); /* its describing thread uses the group's consumer */
    fs_tables_stop_recovery(rt); /* before the embedded cluster it talks to goes away */
    if (rt->tail) {
        if (rt->tq) rd_kafka_queue_destroy(rt->tq);
        rt->tq = NULL;
        rd_kafka_destroy(rt->tail);
        rt->tail = NULL;
        if (rt->tfd > 0) fs_io_del(&rt->loop, &rt->tio), close(rt->tfd);
        rt->tfd = -1;
    }
    /* The worker lets go of everything now (no agent runs again); closing
     * the transport may report one more revocation, answered at once. */
    rt->closing = 1;
    if (rt->assign) fs_assign_finish(rt->assign, 30000);
    if (rt->tp) rt->tp->ops->close(rt->tp);
    rt->tp = NULL;
    fs_assign_free(rt->assign);
    rt->assign = NULL;
    fs_ckpt_free(rt->ckpt);
    rt->ckpt = NULL;
}

