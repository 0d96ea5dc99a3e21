/* bench-ceiling: the fastest honest consume->produce loop librdkafka allows,
 * the number fstream-lua is compared against.
 *
 *   bench-ceiling -b BOOTSTRAP -i IN -o OUT -n COUNT [-g GROUP] [--timeout S]
 *                 [--commit-every S] [-X key=value ...]
 *
 * "Honest" means it keeps the same delivery guarantee as the runtime: offsets
 * are committed only after the producer has flushed everything consumed before
 * them (at-least-once), at about the runtime's commit cadence (every 2.8 s, or
 * every S seconds with --commit-every: a drain timed by committed offsets gives
 * it the worker's commit_interval). It does no
 * decoding or encoding at all: payload and key are copied through as-is.
 *
 * -X sets a librdkafka property on both clients (librdkafka ignores, with a
 * warning, properties that belong to the other client type), so a driver can
 * align this loop's settings with the runtime's.
 *
 * Prints one JSON line on stdout:
 *   {"messages":..,"seconds":..,"msgs_per_sec":..}
 * where seconds runs from the first message consumed to the last delivery. */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <time.h>

#include <librdkafka/rdkafka.h>

#define BENCH_NAME "bench-ceiling"
#include "common.h"

#define BENCH_BATCH 10000
#define BENCH_COMMIT_EVERY_S 2.8 /* default of --commit-every */
#define BENCH_MAX_X 64

typedef struct bench_opts {
    const char *bootstrap;
    const char *in;
    const char *out;
    const char *group;
    long long count;
    double timeout_s;
    double commit_every_s;
    const char *x[BENCH_MAX_X];
    int nx;
} bench_opts;



/* Applies the -X key=value overrides after the defaults so they win. */
static int bench_conf_overrides(rd_kafka_conf_t *conf, const bench_opts *o)
{
    if (!conf || !o) return -1;
    for (int i = 0; i < o->nx; i++) {
        char kv[1024];
        if (strlen(o->x[i]) >= sizeof kv) return -1;
        strcpy(kv, o->x[i]);
        char *eq = strchr(kv, '=');
        if (!eq) {
            fprintf(stderr, "bench-ceiling: -X %s: expected key=value\n", o->x[i]);
            return -1;
        }
        *eq = '\0';
        if (bench_conf_set(conf, kv, eq + 1)) return -1;
    }
    return 0;
}

/* Sends one consumed message on, waiting for room in the local queue. */
static int bench_forward(rd_kafka_t *prod, rd_kafka_topic_t *out, const rd_kafka_message_t *m)
{
    if (!prod || !out || !m) return -1;
    while (rd_kafka_produce(out, RD_KAFKA_PARTITION_UA, RD_KAFKA_MSG_F_COPY, m->payload, m->len,
                            m->key, m->key_len, NULL) == -1) {
        rd_kafka_resp_err_t e = rd_kafka_last_error();
        if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            fprintf(stderr, "bench-ceiling: produce: %s\n", rd_kafka_err2str(e));
            return -1;
        }
        rd_kafka_poll(prod, 10);
    }
    return 0;
}

/* Flushes, then commits what was stored: the order is the at-least-once
 * guarantee, since a stored offset only covers messages already produced. */
static int bench_checkpoint(rd_kafka_t *prod, rd_kafka_t *cons, bench_stats *st, int async)
{
    if (!prod || !cons || !st) return -1;
    while (rd_kafka_outq_len(prod) > 0 && !st->fatal)
        rd_kafka_flush(prod, 1000);
    if (st->fatal || st->failed) return -1;
    rd_kafka_resp_err_t e = rd_kafka_commit(cons, NULL, async);
    if (e && e != RD_KAFKA_RESP_ERR__NO_OFFSET) {
        fprintf(stderr, "bench-ceiling: commit: %s\n", rd_kafka_err2str(e));
        return -1;
    }
    return 0;
}

static void bench_usage(FILE *f)
{
    fprintf(f, "usage: bench-ceiling -b BOOTSTRAP -i IN -o OUT -n COUNT [-g GROUP] "
               "[--timeout S] [--commit-every S] [-X key=value ...]\n");
}

static int bench_parse(int argc, char **argv, bench_opts *o)
{
    static const struct option longopts[] = {
        {"timeout", required_argument, NULL, 'T'},
        {"commit-every", required_argument, NULL, 'C'},
        {"help", no_argument, NULL, 'h'},
        {0, 0, 0, 0}};
    char *end;
    int c;

    if (!o) return -1;
    memset(o, 0, sizeof *o);
    o->group = "bench-ceiling";
    o->count = -1;
    o->timeout_s = 600.0;
    o->commit_every_s = BENCH_COMMIT_EVERY_S;
    while ((c = getopt_long(argc, argv, "b:i:o:n:g:X:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'b':
            o->bootstrap = optarg;
            break;
        case 'i':
            o->in = optarg;
            break;
        case 'o':
            o->out = optarg;
            break;
        case 'g':
            o->group = optarg;
            break;
        case 'n':
            errno = 0;
            o->count = strtoll(optarg, &end, 10);
            if (errno || *end || o->count < 1) return -1;
            break;
        case 'T':
            o->timeout_s = strtod(optarg, &end);
            if (*end || !(o->timeout_s > 0)) return -1;
            break;
        case 'C':
            o->commit_every_s = strtod(optarg, &end);
            if (*end || !(o->commit_every_s > 0)) return -1;
            break;
        case 'X':
            if (o->nx == BENCH_MAX_X) return -1;
            o->x[o->nx++] = optarg;
            break;
        case 'h':
            bench_usage(stdout);
            exit(0);
        default:
            return -1;
        }
    }
    if (optind != argc || !o->bootstrap || !o->in || !o->out || o->count < 1) return -1;
    return 0;
}

int main(int argc, char **argv)
{
    bench_opts o;
    bench_stats st = {0};
    int rc = 1;
    char err[512];
    rd_kafka_conf_t *pconf = NULL, *cconf = NULL;
    rd_kafka_t *prod = NULL, *cons = NULL;
    rd_kafka_topic_t *out = NULL;
    rd_kafka_queue_t *q = NULL;
    rd_kafka_topic_partition_list_t *sub = NULL;
    rd_kafka_message_t **batch = NULL;
    int subscribed = 0;

    if (bench_parse(argc, argv, &o)) {
        bench_usage(stderr);
        return 2;
    }
    batch = malloc(sizeof *batch * BENCH_BATCH);
    if (!batch) goto fail;

    pconf = rd_kafka_conf_new();
    /* Mirrors the runtime's producer (runtime/transport/fs_kafka.c): the comparison is
     * meant to price the runtime's own work, not a difference in client
     * tuning, so keep the two in step (or align them with -X). */
    if (bench_conf_set(pconf, "bootstrap.servers", o.bootstrap) ||
        bench_conf_set(pconf, "client.id", "bench-ceiling") ||
        bench_conf_set(pconf, "linger.ms", "5") ||
        bench_conf_set(pconf, "enable.idempotence", "true") ||
        bench_conf_set(pconf, "acks", "all") ||
        bench_conf_set(pconf, "partitioner", "murmur2_random") ||
        bench_conf_set(pconf, "queue.buffering.max.messages", "1000000") ||
        bench_conf_set(pconf, "batch.num.messages", "10000") || bench_conf_overrides(pconf, &o))
        goto fail;
    rd_kafka_conf_set_opaque(pconf, &st);
    rd_kafka_conf_set_dr_msg_cb(pconf, bench_dr_cb);
    rd_kafka_conf_set_error_cb(pconf, bench_error_cb);
    prod = rd_kafka_new(RD_KAFKA_PRODUCER, pconf, err, sizeof err);
    if (!prod) {
        fprintf(stderr, "bench-ceiling: producer: %s\n", err);
        goto fail;
    }
    pconf = NULL;
    out = rd_kafka_topic_new(prod, o.out, NULL);
    if (!out) {
        fprintf(stderr, "bench-ceiling: topic %s: %s\n", o.out,
                rd_kafka_err2str(rd_kafka_last_error()));
        goto fail;
    }

    cconf = rd_kafka_conf_new();
    /* Offsets are stored by hand, per partition, only for messages already
     * handed to the producer; auto-store would also cover messages fetched but
     * cut off by -n, and commit them unproduced. */
    if (bench_conf_set(cconf, "bootstrap.servers", o.bootstrap) ||
        bench_conf_set(cconf, "client.id", "bench-ceiling") ||
        bench_conf_set(cconf, "group.id", o.group) ||
        bench_conf_set(cconf, "auto.offset.reset", "earliest") ||
        bench_conf_set(cconf, "enable.auto.commit", "false") ||
        bench_conf_set(cconf, "enable.auto.offset.store", "false") ||
        /* Prefetch the whole backlog. With librdkafka's default (stop at
         * 100,000 queued messages) its fetcher, once stopped, sleeps until
         * its 1 s timeout after the queue has drained: a 1,000,000-message
         * drain then took 4.2-5.0 s instead of 1.2-1.4 s (2026-11-29). The
         * ceiling is the fastest the library moves messages, memory aside. */
        bench_conf_set(cconf, "queued.min.messages", "10000000") ||
        bench_conf_set(cconf, "queued.max.messages.kbytes", "2097151") ||
        bench_conf_overrides(cconf, &o))
        goto fail;
    rd_kafka_conf_set_opaque(cconf, &st);
    rd_kafka_conf_set_error_cb(cconf, bench_error_cb);
    cons = rd_kafka_new(RD_KAFKA_CONSUMER, cconf, err, sizeof err);
    if (!cons) {
        fprintf(stderr, "bench-ceiling: consumer: %s\n", err);
        goto fail;
    }
    cconf = NULL;
    /* One queue for messages, rebalances and errors, so the batch call below
     * serves all of them and nothing else needs polling. */
    rd_kafka_poll_set_consumer(cons);
    q = rd_kafka_queue_get_consumer(cons);
    if (!q) goto fail;

    sub = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(sub, o.in, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(cons, sub);
    if (e) {
        fprintf(stderr, "bench-ceiling: subscribe %s: %s\n", o.in, rd_kafka_err2str(e));
        goto fail;
    }
    subscribed = 1;

    long long consumed = 0;
    double started = bench_now();
    double first = 0.0;
    double last_commit = started;
    while (consumed < o.count) {
        if (st.fatal) goto fail;
        if (bench_now() - started > o.timeout_s) {
            fprintf(stderr, "bench-ceiling: timeout after %.0f s with %lld of %lld messages\n",
                    o.timeout_s, consumed, o.count);
            goto fail;
        }
        ssize_t n = rd_kafka_consume_batch_queue(q, 100, batch, BENCH_BATCH);
        if (n < 0) {
            fprintf(stderr, "bench-ceiling: consume: %s\n",
                    rd_kafka_err2str(rd_kafka_last_error()));
            goto fail;
        }
        rd_kafka_message_t *last = NULL;
        int bad = 0;
        for (ssize_t i = 0; i < n; i++) {
            rd_kafka_message_t *m = batch[i];
            if (m->err && !bad) {
                /* Consumer errors here are informational (e.g. a partition
                 * that briefly lost its leader); librdkafka retries itself. */
                fprintf(stderr, "bench-ceiling: consume: %s\n", rd_kafka_message_errstr(m));
            }
            if (bad || m->err || consumed >= o.count) {
                rd_kafka_message_destroy(m);
                continue;
            }
            if (consumed == 0) first = bench_now();
            if (bench_forward(prod, out, m)) {
                bad = 1;
                rd_kafka_message_destroy(m);
                continue;
            }
            consumed++;
            /* Storing only where a partition's run in the batch ends keeps the
             * bookkeeping per batch, not per message. */
            if (last && (last->rkt != m->rkt || last->partition != m->partition))
                rd_kafka_offset_store(last->rkt, last->partition, last->offset);
            if (last) rd_kafka_message_destroy(last);
            last = m;
        }
        if (last) {
            rd_kafka_offset_store(last->rkt, last->partition, last->offset);
            rd_kafka_message_destroy(last);
        }
        if (bad) goto fail;
        rd_kafka_poll(prod, 0);
        if (bench_now() - last_commit >= o.commit_every_s) {
            if (bench_checkpoint(prod, cons, &st, 1)) goto fail;
            last_commit = bench_now();
        }
    }
    if (bench_checkpoint(prod, cons, &st, 0)) goto fail;

    double secs = st.last_dr - first;
    double rate = secs > 0 ? (double)consumed / secs : 0.0;
    printf("{\"messages\":%lld,\"seconds\":%.3f,\"msgs_per_sec\":%.0f}\n", consumed, secs, rate);
    fflush(stdout);
    rc = 0;
fail:
    if (rc && st.failed)
        fprintf(stderr, "bench-ceiling: %lld deliveries failed, first: %s\n", st.failed,
                rd_kafka_err2str(st.first_err));
    if (sub) rd_kafka_topic_partition_list_destroy(sub);
    if (q) rd_kafka_queue_destroy(q);
    if (cons) {
        if (subscribed) rd_kafka_consumer_close(cons);
        rd_kafka_destroy(cons);
    }
    if (out) rd_kafka_topic_destroy(out);
    if (prod) {
        /* On the error path this drops what is still queued: the run has
         * already failed and waiting would only delay the report. */
        if (rc) rd_kafka_purge(prod, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        rd_kafka_destroy(prod);
    }
    if (pconf) rd_kafka_conf_destroy(pconf);
    if (cconf) rd_kafka_conf_destroy(cconf);
    free(batch);
    return rc;
}
