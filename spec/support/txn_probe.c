/* txn-probe: drives the kafka transport's transaction operations
 * (fs_transport.h: txn_init/begin/seal/commit/abort) against a broker, the
 * way the checkpoint layer will, and prints what the transport reported.
 * spec/transport_txn_spec.lua runs it and checks the topics with an
 * independent read_committed reader (kcat). Built by meson, not installed.
 *
 *   txn-probe URL commit TOPIC ID N M   begin, N sends, seal, M sends (wait
 *                                       for the next transaction), commit;
 *                                       then abort (the M are discarded)
 *   txn-probe URL abort TOPIC ID N M    begin, N sends, abort at once, M sends
 *                                       before the next begin; then begin,
 *                                       one send "after-abort", commit
 *   txn-probe URL fence TOPIC ID        two transports with one transactional.id:
 *                                       the second fences the first
 *   txn-probe URL refuse TOPIC ID       txn_init must refuse (memory://, a mock)
 *   txn-probe URL doomed TOPIC ID       a send the broker refuses (2 MB) fails the
 *                                       transaction: reported aborted, the commit
 *                                       says ABORTABLE; abort, then a transaction
 *                                       with one send "after-doomed" commits
 *   txn-probe URL unstable TOPIC ID     a producer of its own sends offset 5 of
 *                                       TOPIC[0] for group ID in a transaction it
 *                                       keeps open for 2 s: ops->committed must
 *                                       answer only after the commit, with 5
 *   txn-probe URL latency TOPIC ID N M  N transactions of M sends each: the
 *                                       time from txn_commit to its txn_done
 *                                       (median, p99, max), for BENCHMARKS
 *   txn-probe URL loop TOPIC ID N M     N transactions of M sends ("t<i>-<j>"), one
 *                                       every 100 ms, each aborted when its commit
 *                                       fails (a broker restarted meanwhile); prints
 *                                       "loop-ok <i>" for each committed one
 *   txn-probe URL lost TOPIC ID 0 M     joins group $TXN_PROBE_GROUP on TOPIC, begins
 *                                       a transaction with M sends, prints "ready",
 *                                       then (stopped and continued by the spec
 *                                       meanwhile) waits for the group to take its
 *                                       partitions away, commits (must be FENCED)
 *                                       and aborts
 *   txn-probe URL member TOPIC ID S     a plain member of that group for S seconds
 *   txn-probe URL table TOPIC ID N      a table's changelog: N records, JSON keys
 *                                       "k0".."k<N-1>" with values 1..N, committed;
 *                                       then the same keys = 999999, aborted
 *
 * TXN_PROBE_PARTITIONS: the topic's partitions when the probe creates it (2).
 *
 * Every line it prints is "key value ..." for the spec to match. Exit 0 when
 * everything went as the mode expects, 1 otherwise (with a "FAIL" line). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "fs_log.h"
#include "fs_loop.h"
#include "fs_transport.h"

struct fs_topic FS_TXTOPIC_MEMBERS;

typedef struct probe {
    const char *name;
    fs_transport *tp;
    int64_t ok, aborted, failed;
    int64_t aborted_without_err;
    int done, result;
    char msg[512];
    int assigned, revoked;
    int answered, cerr;
    int64_t coffset, cperr;
} probe;

static fs_loop loop;
static int failures;

static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("FAIL ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    failures++;
}

static void on_delivered(void *data, const fs_report *r)
{
    probe *p = data;
    if (r->aborted) {
        p->aborted++;
        if (!r->err) p->aborted_without_err++;
    } else if (r->err) {
        p->failed++;
        printf("%s delivery-failed %s\n", p->name, p->tp->ops->strerror(r->err));
    } else {
        p->ok++;
    }
}

static void on_txn_done(void *data, void *ctx, int result, const char *msg)
{
    probe *p = data;
    (void)ctx;
    p->done = 1;
    p->result = result;
    snprintf(p->msg, sizeof p->msg, "%s", msg ? msg : "");
}

static void on_committed(void *data, void *ctx, const fs_tplist *offsets, int err)
{
    probe *p = data;
    (void)ctx;
    p->answered = 1;
    p->cerr = err;
    p->coffset = offsets && offsets->len ? offsets->items[0].offset : -1;
    p->cperr = offsets && offsets->len ? offsets->items[0].err : -1;
}

static void on_assigned(void *data, const fs_tplist *parts)
{
    probe *p = data;
    char err[256];
    p->assigned = parts->len;
    printf("%s assigned %d\n", p->name, parts->len);
    if (p->tp->ops->assign(p->tp, parts, err, sizeof err)) printf("FAIL assign: %s\n", err);
}

static void on_revoked(void *data, const fs_tplist *parts, int lost)
{
    probe *p = data;
    (void)lost;
    p->revoked++;
    printf("%s revoked %d\n", p->name, parts->len);
    p->tp->ops->unassign(p->tp, parts);
}

static int consumes_all(void *data, fs_topic *t)
{
    (void)data;
    (void)t;
    return 1;
}

static void on_messages(void *data, const struct fs_fetched *msgs, int n, int owned)
{
    (void)data;
    for (int i = 0; i < n; i++) fs_transport_msg_free(msgs[i].m, msgs[i].hdrs, owned);
}

static void on_error(void *data, int err, const char *msg, int fatal)
{
    probe *p = data;
    (void)err;
    printf("%s transport-error%s %s\n", p->name, fatal ? "-fatal" : "", msg);
}

static const char *result_name(int r)
{
    switch (r) {
    case FS_TXN_OK: return "OK";
    case FS_TXN_ABORTABLE: return "ABORTABLE";
    case FS_TXN_FENCED: return "FENCED";
    case FS_TXN_FATAL: return "FATAL";
    }
    return "?";
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Runs the loop (both transports) until cond(p) or 40 s. */
static int run_until(probe **ps, int n, int (*cond)(probe *), probe *p)
{
    int64_t deadline = now_ms() + 40000;
    while (!cond(p)) {
        if (now_ms() > deadline) return -1;
        fs_loop_run_once(&loop, 20);
        for (int i = 0; i < n; i++) {
            ps[i]->tp->ops->poll(ps[i]->tp, 0);
            ps[i]->tp->ops->flush(ps[i]->tp, 0);
        }
    }
    return 0;
}

static int is_done(probe *p)
{
    return p->done;
}

static int all_reported(probe *p)
{
    return p->tp->ops->undelivered(p->tp) == 0;
}

static probe *new_probe(const char *name, const char *url, fs_topic *t, const char *group)
{
    probe *p = calloc(1, sizeof *p);
    char err[512];
    if (!p) exit(2);
    p->name = name;
    /* Eager: each probe's assignment is its whole (what the fencing checks count). */
    p->tp = fs_kafka_new(&loop, url, group, NULL, NULL, "range,roundrobin", err, sizeof err);
    if (!p->tp) {
        printf("FAIL %s cannot make the transport: %s\n", name, err);
        exit(1);
    }
    p->tp->cb.data = p;
    p->tp->cb.delivered = on_delivered;
    p->tp->cb.txn_done = on_txn_done;
    p->tp->cb.error = on_error;
    p->tp->cb.committed = on_committed;
    p->tp->cb.assigned = on_assigned;
    p->tp->cb.revoked = on_revoked;
    p->tp->cb.consumes = consumes_all;
    p->tp->cb.messages = on_messages;
    fs_topic *ts[1] = {t};
    if (p->tp->ops->resolve(p->tp, ts, 1, err, sizeof err)) {
        printf("FAIL %s resolve: %s\n", name, err);
        exit(1);
    }
    return p;
}

static void init(probe *p, const char *id)
{
    char err[1024];
    if (p->tp->ops->txn_init(p->tp, id, err, sizeof err)) {
        printf("FAIL %s txn_init: %s\n", p->name, err);
        exit(1);
    }
    printf("%s init ok\n", p->name);
}

static void begin(probe *p)
{
    char err[512];
    if (p->tp->ops->txn_begin(p->tp, err, sizeof err)) fail("%s txn_begin: %s", p->name, err);
}

static void send1(probe *p, fs_topic *t, const char *key, const char *val)
{
    char err[512];
    fs_msg m = {0};
    m.topic = t;
    m.partition = -1;
    m.key = key;
    m.klen = key ? strlen(key) : 0;
    m.value = val;
    m.vlen = strlen(val);
    fs_sendctx ctx = {0, 0, NULL};
    fs_report now;
    if (p->tp->ops->produce(p->tp, &m, ctx, &now, err, sizeof err) < 0)
        fail("%s produce: %s", p->name, err);
}

static void send_n(probe *p, fs_topic *t, const char *prefix, int n)
{
    char v[64];
    for (int i = 0; i < n; i++) {
        snprintf(v, sizeof v, "%s-%d", prefix, i);
        send1(p, t, NULL, v);
    }
}

/* Commits (with these input offsets, or none) or aborts and waits for
 * txn_done; returns the result. */
static int finish_with(probe **ps, int n, probe *p, int commit, const fs_tplist *offsets)
{
    p->done = 0;
    int rc = commit ? p->tp->ops->txn_commit(p->tp, offsets, NULL) : p->tp->ops->txn_abort(p->tp, NULL);
    if (rc) {
        fail("%s %s could not start", p->name, commit ? "txn_commit" : "txn_abort");
        return -1;
    }
    if (run_until(ps, n, is_done, p)) {
        fail("%s %s: no txn_done within 40 s", p->name, commit ? "commit" : "abort");
        return -1;
    }
    printf("%s %s %s %s\n", p->name, commit ? "commit" : "abort", result_name(p->result), p->msg);
    return p->result;
}

static int finish(probe **ps, int n, probe *p, int commit)
{
    return finish_with(ps, n, p, commit, NULL);
}

static void counts(probe *p)
{
    printf("%s counts ok=%lld aborted=%lld failed=%lld undelivered=%lld backlog=%lld\n", p->name,
           (long long)p->ok, (long long)p->aborted, (long long)p->failed,
           (long long)p->tp->ops->undelivered(p->tp), (long long)p->tp->backlog);
    if (p->aborted_without_err) fail("%s: %lld aborted reports without err", p->name, (long long)p->aborted_without_err);
}

static void expect(int64_t got, int64_t want, const char *what)
{
    if (got != want) fail("%s: %lld, expected %lld", what, (long long)got, (long long)want);
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: txn-probe URL commit|abort|fence|refuse|table TOPIC ID [N [M]]\n");
        return 2;
    }
    const char *url = argv[1], *mode = argv[2], *id = argv[4];
    int n = argc > 5 ? atoi(argv[5]) : 10, m = argc > 6 ? atoi(argv[6]) : 5;
    const char *lv = getenv("TXN_PROBE_LOG");
    fs_log_level = lv ? fs_log_parse_level(lv) : FS_LOG_WARN;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (fs_loop_init(&loop, 0)) return 2;
    fs_topic topic = {0};
    topic.name = argv[3];
    const char *np = getenv("TXN_PROBE_PARTITIONS");
    topic.partitions = np ? atoi(np) : 2;
    topic.compact = strcmp(mode, "table") == 0; /* a changelog */
    const char *group = getenv("TXN_PROBE_GROUP");
    probe *a = new_probe("a", url, &topic, group ? group : id);
    probe *ps[2] = {a, NULL};

    if (strcmp(mode, "refuse") == 0) {
        char err[1024];
        if (a->tp->ops->txn_init(a->tp, id, err, sizeof err) == 0) {
            fail("txn_init accepted %s", url);
        } else {
            printf("refused %s\n", err);
        }
    } else if (strcmp(mode, "commit") == 0) {
        init(a, id);
        begin(a);
        send_n(a, &topic, "c", n);
        a->tp->ops->txn_seal(a->tp);
        send_n(a, &topic, "late", m); /* for the next transaction */
        finish(ps, 1, a, 1);
        /* The sealed transaction's n are reported; the late m still wait. */
        counts(a);
        expect(a->ok, n, "delivered before the commit's txn_done");
        expect(a->tp->ops->undelivered(a->tp), m, "sends waiting for the next transaction");
        finish(ps, 1, a, 0);
        run_until(ps, 1, all_reported, a);
        counts(a);
        expect(a->aborted, m, "late sends reported aborted");
    } else if (strcmp(mode, "abort") == 0) {
        init(a, id);
        begin(a);
        send_n(a, &topic, "x", n);
        a->done = 0;
        if (a->tp->ops->txn_abort(a->tp, NULL)) fail("txn_abort could not start");
        send_n(a, &topic, "y", m); /* after the abort, before the next begin */
        if (run_until(ps, 1, is_done, a)) fail("abort: no txn_done");
        printf("a abort %s %s\n", result_name(a->result), a->msg);
        run_until(ps, 1, all_reported, a);
        counts(a);
        expect(a->aborted + a->ok, n + m, "every send reported once");
        expect(a->aborted, n + m, "sends reported aborted");
        begin(a);
        send1(a, &topic, NULL, "after-abort");
        finish(ps, 1, a, 1);
        run_until(ps, 1, all_reported, a);
        counts(a);
    } else if (strcmp(mode, "fence") == 0) {
        init(a, id);
        begin(a);
        send_n(a, &topic, "zombie", n);
        run_until(ps, 1, all_reported, a); /* written (uncommitted) before the fencing */
        counts(a);
        probe *b = new_probe("b", url, &topic, id);
        ps[1] = b;
        init(b, id); /* fences a, aborts its open transaction */
        int r = finish(ps, 2, a, 1);
        if (r != FS_TXN_FENCED) fail("a's commit after the fencing: %s, expected FENCED", result_name(r));
        r = finish(ps, 2, a, 0); /* recreates a's producer (which fences b in turn) */
        if (r != FS_TXN_OK) fail("a's abort: %s, expected OK", result_name(r));
        begin(a);
        send_n(a, &topic, "after-fence", m);
        r = finish(ps, 2, a, 1);
        if (r != FS_TXN_OK) fail("a's commit after recreation: %s, expected OK", result_name(r));
        run_until(ps, 2, all_reported, a);
        counts(a);
        b->tp->ops->close(b->tp);
        free(b);
    } else if (strcmp(mode, "doomed") == 0) {
        init(a, id);
        begin(a);
        send1(a, &topic, NULL, "doomed-small");
        size_t big = 2 * 1024 * 1024;
        char *v = malloc(big + 1);
        if (!v) return 2;
        memset(v, 'x', big);
        v[big] = 0;
        send1(a, &topic, NULL, v);
        free(v);
        run_until(ps, 1, all_reported, a);
        counts(a);
        int r = finish(ps, 1, a, 1);
        if (r != FS_TXN_ABORTABLE) fail("commit of a failed transaction: %s, expected ABORTABLE", result_name(r));
        if (finish(ps, 1, a, 0) != FS_TXN_OK) fail("abort after the failed commit");
        begin(a);
        send1(a, &topic, NULL, "after-doomed");
        if (finish(ps, 1, a, 1) != FS_TXN_OK) fail("commit after the abort");
        run_until(ps, 1, all_reported, a);
        counts(a);
    } else if (strcmp(mode, "unstable") == 0) {
        char err[512], rid[300];
        snprintf(rid, sizeof rid, "%s-raw", id);
        rd_kafka_conf_t *c = rd_kafka_conf_new();
        if (rd_kafka_conf_set(c, "bootstrap.servers", url + strlen("kafka://"), err, sizeof err) ||
            rd_kafka_conf_set(c, "transactional.id", rid, err, sizeof err)) {
            printf("FAIL conf: %s\n", err);
            return 1;
        }
        rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof err);
        if (!rk) {
            printf("FAIL producer: %s\n", err);
            return 1;
        }
        rd_kafka_error_t *e = rd_kafka_init_transactions(rk, 30000);
        if (!e) e = rd_kafka_begin_transaction(rk);
        rd_kafka_topic_partition_list_t *offs = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(offs, topic.name, 0)->offset = 5;
        rd_kafka_consumer_group_metadata_t *md = rd_kafka_consumer_group_metadata_new(id);
        if (!e) e = rd_kafka_send_offsets_to_transaction(rk, offs, md, 30000);
        rd_kafka_consumer_group_metadata_destroy(md);
        rd_kafka_topic_partition_list_destroy(offs);
        if (e) {
            printf("FAIL raw transaction: %s\n", rd_kafka_error_string(e));
            rd_kafka_error_destroy(e);
            return 1;
        }
        fs_tplist parts = {0};
        fs_tplist_add(&parts, topic.name, 0, FS_OFFSET_INVALID);
        if (a->tp->ops->committed(a->tp, &parts, NULL)) fail("committed could not ask");
        fs_tplist_free(&parts);
        /* No answer while the transaction holding the offset is open. */
        int64_t until = now_ms() + 2000;
        while (now_ms() < until && !a->answered) {
            fs_loop_run_once(&loop, 20);
            a->tp->ops->poll(a->tp, 0);
        }
        if (a->answered)
            fail("answered while the offsets were pending: offset %lld, err %d, partition err %lld",
                 (long long)a->coffset, a->cerr, (long long)a->cperr);
        e = rd_kafka_commit_transaction(rk, 30000);
        if (e) {
            fail("raw commit: %s", rd_kafka_error_string(e));
            rd_kafka_error_destroy(e);
        }
        rd_kafka_destroy(rk);
        until = now_ms() + 20000;
        while (now_ms() < until && !a->answered) {
            fs_loop_run_once(&loop, 20);
            a->tp->ops->poll(a->tp, 0);
        }
        printf("a committed answered=%d err=%d offset=%lld partition-err=%lld\n", a->answered,
               a->cerr, (long long)a->coffset, (long long)a->cperr);
        if (!a->answered || a->cerr || a->coffset != 5 || a->cperr)
            fail("committed offset after the commit");
    } else if (strcmp(mode, "loop") == 0) {
        init(a, id);
        int committed = 0, failed = 0;
        char prefix[32];
        for (int i = 0; i < n; i++) {
            char err[512];
            if (a->tp->ops->txn_begin(a->tp, err, sizeof err)) {
                printf("a txn %d begin failed: %s\n", i, err);
            } else {
                snprintf(prefix, sizeof prefix, "t%d", i);
                send_n(a, &topic, prefix, m);
                run_until(ps, 1, all_reported, a);
                a->done = 0;
                if (!a->tp->ops->txn_commit(a->tp, NULL, NULL) && !run_until(ps, 1, is_done, a) &&
                    a->result == FS_TXN_OK) {
                    printf("loop-ok %d\n", i);
                    committed++;
                    goto next;
                }
                printf("a txn %d commit %s %s\n", i, result_name(a->result), a->msg);
            }
            failed++;
            a->done = 0;
            if (a->tp->ops->txn_abort(a->tp, NULL) || run_until(ps, 1, is_done, a)) {
                fail("txn %d: abort did not finish", i);
                break;
            }
            printf("a txn %d abort %s %s\n", i, result_name(a->result), a->msg);
            if (a->result != FS_TXN_OK) {
                fail("txn %d: abort %s", i, result_name(a->result));
                break;
            }
        next:;
            int64_t until = now_ms() + 100;
            while (now_ms() < until) {
                fs_loop_run_once(&loop, 20);
                a->tp->ops->poll(a->tp, 0);
                a->tp->ops->flush(a->tp, 0);
            }
        }
        run_until(ps, 1, all_reported, a);
        printf("loop committed=%d failed=%d\n", committed, failed);
        counts(a);
    } else if (strcmp(mode, "lost") == 0 || strcmp(mode, "member") == 0) {
        int lost = strcmp(mode, "lost") == 0;
        char err[512];
        if (lost) init(a, id);
        if (a->tp->ops->subscribe(a->tp, err, sizeof err) < 0) fail("subscribe: %s", err);
        int64_t until = now_ms() + 60000;
        while (!a->assigned && now_ms() < until) {
            fs_loop_run_once(&loop, 20);
            a->tp->ops->poll(a->tp, 1);
        }
        if (!a->assigned) fail("no assignment within 60 s");
        if (lost) {
            begin(a);
            send_n(a, &topic, "zombie", m);
            run_until(ps, 1, all_reported, a);
            printf("ready\n");
            /* Stopped past the session timeout and continued by the spec:
             * librdkafka notices the loss and revokes (the rebalance callback). */
            until = now_ms() + 60000;
            while (!a->revoked && now_ms() < until) {
                fs_loop_run_once(&loop, 20);
                a->tp->ops->poll(a->tp, 1);
            }
            if (!a->revoked) fail("the partitions were never taken away");
            /* Without input offsets: a worker whose partitions were all taken
             * has none to send, so no TxnOffsetCommit can be refused by the
             * broker (with offsets it answers UNKNOWN_MEMBER_ID); only the
             * transport's own rule stops the zombie's outputs. TXN_PROBE_OFFSETS=1:
             * with offsets. */
            fs_tplist offs = {0};
            const char *wo = getenv("TXN_PROBE_OFFSETS");
            for (int32_t i = 0; wo && *wo == '1' && i < topic.partitions; i++)
                fs_tplist_add(&offs, topic.name, i, 1);
            int r = finish_with(ps, 1, a, 1, &offs);
            fs_tplist_free(&offs);
            if (r != FS_TXN_FENCED) fail("the zombie's commit: %s, expected FENCED", result_name(r));
            if (finish(ps, 1, a, 0) != FS_TXN_OK) fail("the zombie's abort");
        } else {
            until = now_ms() + (int64_t)n * 1000;
            while (now_ms() < until) {
                fs_loop_run_once(&loop, 20);
                a->tp->ops->poll(a->tp, 1);
            }
        }
    } else if (strcmp(mode, "latency") == 0) {
        init(a, id);
        int64_t *ms = calloc((size_t)(n > 0 ? n : 1), sizeof *ms);
        if (!ms) return 2;
        for (int i = 0; i < n; i++) {
            begin(a);
            send_n(a, &topic, "l", m);
            run_until(ps, 1, all_reported, a); /* as the checkpoint: deliver, then commit */
            a->done = 0;
            int64_t t0 = now_ms();
            if (a->tp->ops->txn_commit(a->tp, NULL, NULL) || run_until(ps, 1, is_done, a) ||
                a->result != FS_TXN_OK) {
                fail("commit %d", i);
                break;
            }
            ms[i] = now_ms() - t0;
        }
        for (int i = 1; i < n; i++) /* insertion sort: n is small */
            for (int j = i; j > 0 && ms[j - 1] > ms[j]; j--) {
                int64_t x = ms[j];
                ms[j] = ms[j - 1];
                ms[j - 1] = x;
            }
        if (n > 0)
            printf("latency transactions=%d sends=%d median_ms=%lld p99_ms=%lld max_ms=%lld\n", n, m,
                   (long long)ms[n / 2], (long long)ms[(n * 99) / 100 < n ? (n * 99) / 100 : n - 1],
                   (long long)ms[n - 1]);
        free(ms);
    } else if (strcmp(mode, "table") == 0) {
        init(a, id);
        begin(a);
        char k[32], v[32];
        for (int i = 0; i < n; i++) {
            snprintf(k, sizeof k, "\"k%d\"", i);
            snprintf(v, sizeof v, "%d", i + 1);
            send1(a, &topic, k, v);
        }
        if (finish(ps, 1, a, 1) != FS_TXN_OK) fail("table commit");
        /* A second transaction that is aborted: its records must never be
         * replayed, and the log ends with an abort marker. */
        begin(a);
        for (int i = 0; i < n; i++) {
            snprintf(k, sizeof k, "\"k%d\"", i);
            send1(a, &topic, k, "999999");
        }
        run_until(ps, 1, all_reported, a);
        if (finish(ps, 1, a, 0) != FS_TXN_OK) fail("table abort");
        counts(a);
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    a->tp->ops->close(a->tp);
    free(a);
    fs_loop_close(&loop);
    printf(failures ? "probe failed\n" : "probe ok\n");
    return failures ? 1 : 0;
}
