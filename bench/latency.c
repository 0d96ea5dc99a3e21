/* bench-latency: end-to-end latency of a consume -> produce job at a steady
 * input rate.
 *
 *   bench-latency -b BOOTSTRAP --in TOPIC --out TOPIC [-r RATE] [-d SECONDS]
 *                 [--warmup SECONDS] [--linger-ms MS] [--fetch-wait-ms MS]
 *                 [--ready-file F] [--timeline]
 *
 * One thread produces ~100-byte JSON orders to --in at RATE messages per
 * second (default 20,000) for SECONDS (default 20), paced every millisecond;
 * each order's "id" is the wall-clock time of its produce call in
 * microseconds (the job under test, bench/stateless.lua, copies id into its
 * output). The main thread reads --out from its end (assign-only, no group)
 * and, for every output record whose id was sent after the warm-up (default
 * 3 s: the job's group join and first fetches are not steady state),
 * records two latencies:
 *   recv - the time this reader got it, minus the id;
 *   ts   - the output record's timestamp, minus the id: the broker's append
 *          time when --out has message.timestamp.type=LogAppendTime (then it
 *          leaves this reader's fetch out), the job's produce call otherwise
 *          (CreateTime: it leaves the job's own batching out).
 * Both clocks are this machine's CLOCK_REALTIME, so the tool must run where
 * the job runs. The record timestamps have millisecond resolution.
 *
 * It stops once every order sent after the warm-up has come out, or 30 s after
 * the last send. Prints one JSON line on stdout:
 *   {"rate":..,"sent":..,"measured":..,"missing":..,"timestamp_type":"..",
 *    "recv_ms":{"p50":..,"p90":..,"p99":..,"p999":..,"max":..},"ts_ms":{...}}
 * With --timeline, each second's count and recv p99 and max go to stderr
 * (periodic stalls show up there). Exits 3 when some order never came out.
 *
 * --linger-ms (default 5, librdkafka's own default and the worker's) is this
 * producer's linger: part of what is measured, as for any producer. The
 * embedded broker (librdkafka's mock) answers a fetch with one producer
 * batch per partition, so at 20,000/s batches of 1 ms fall behind there,
 * batches of 5 ms do not. --fetch-wait-ms (default 5) is this reader's
 * fetch.wait.max.ms, small so that it adds little to recv. --ready-file is created once the reader
 * is positioned at the end of --out and before the first send. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif

#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#define BENCH_NAME "bench-latency"
#include "common.h"

#define BENCH_DRAIN_S 30
#define BENCH_MAX_SECONDS 3600

typedef struct lat_opts {
    const char *bootstrap, *in, *out, *ready_file;
    double rate, seconds, warmup;
    const char *linger_ms, *fetch_wait_ms;
    int timeline;
} lat_opts;

typedef struct producer_state {
    const lat_opts *o;
    rd_kafka_t *rk;
    bench_stats st;
    int64_t measure_from_us; /* ids from here on are measured */
    atomic_llong sent, measured_sent;
    atomic_int done;
    double last_send_mono;
} producer_state;

static int64_t wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void *produce_thread(void *arg)
{
    producer_state *ps = arg;
    const lat_opts *o = ps->o;
    uint64_t rng = 0x5eed2024c0ffeeULL;
    char key[32], val[256];
    double t0 = bench_now();
    long long total = (long long)(o->rate * o->seconds);
    long long sent = 0;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    while (sent < total && !ps->st.fatal) {
        long long due = (long long)((bench_now() - t0) * o->rate) + 1;
        if (due > total) due = total;
        while (sent < due) {
            unsigned account = (unsigned)(rng_next(&rng) % 1000);
            unsigned amount = (unsigned)(rng_next(&rng) % 100000);
            unsigned price = (unsigned)(rng_next(&rng) % 10000) + 1;
            int klen = snprintf(key, sizeof key, "a-%u", account);
            int64_t id = wall_us();
            int vlen = snprintf(val, sizeof val,
                                "{\"id\":%lld,\"account_id\":\"%s\",\"amount\":%u.%02u,"
                                "\"price\":%u.%02u,\"note\":\"abcdefghijklmnopqrstuvwxy\"}",
                                (long long)id, key, amount / 100, amount % 100, price / 100,
                                price % 100);
            rd_kafka_resp_err_t err;
            while ((err = rd_kafka_producev(ps->rk, RD_KAFKA_V_TOPIC(o->in),
                                            RD_KAFKA_V_KEY(key, (size_t)klen),
                                            RD_KAFKA_V_VALUE(val, (size_t)vlen),
                                            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                            RD_KAFKA_V_END)) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
                rd_kafka_poll(ps->rk, 1);
            if (err) {
                fprintf(stderr, BENCH_NAME ": produce: %s\n", rd_kafka_err2str(err));
                ps->st.fatal = 1;
                break;
            }
            sent++;
            atomic_store(&ps->sent, sent);
            if (id >= ps->measure_from_us) atomic_fetch_add(&ps->measured_sent, 1);
        }
        rd_kafka_poll(ps->rk, 0);
        next.tv_nsec += 1000000L;
        if (next.tv_nsec >= 1000000000L) {
            next.tv_sec++;
            next.tv_nsec -= 1000000000L;
        }
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR) {
        }
    }
    rd_kafka_flush(ps->rk, 30000);
    ps->last_send_mono = bench_now();
    atomic_store(&ps->done, 1);
    return NULL;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Percentiles of v (sorted here) in ms, as a JSON object. */
static void print_pcts(const char *name, int64_t *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp_i64);
    static const double q[] = {0.50, 0.90, 0.99, 0.999};
    static const char *qn[] = {"p50", "p90", "p99", "p999"};
    printf("\"%s\":{", name);
    for (int i = 0; i < 4; i++) {
        size_t k = n ? (size_t)(q[i] * (double)(n - 1) + 0.5) : 0;
        printf("\"%s\":%.2f,", qn[i], n ? (double)v[k] / 1000.0 : 0.0);
    }
    printf("\"max\":%.2f}", n ? (double)v[n - 1] / 1000.0 : 0.0);
}

static void usage(void)
{
    fprintf(stderr, "usage: " BENCH_NAME " -b BOOTSTRAP --in TOPIC --out TOPIC [-r RATE] [-d SECONDS]\n"
                    "       [--warmup SECONDS] [--linger-ms MS] [--fetch-wait-ms MS] [--ready-file F]\n"
                    "       [--timeline]\n");
}

int main(int argc, char **argv)
{
    lat_opts o = {.rate = 20000, .seconds = 20, .warmup = 3, .linger_ms = "5", .fetch_wait_ms = "5"};
    static const struct option longopts[] = {
        {"bootstrap", required_argument, NULL, 'b'}, {"in", required_argument, NULL, 'i'},
        {"out", required_argument, NULL, 'o'},       {"rate", required_argument, NULL, 'r'},
        {"seconds", required_argument, NULL, 'd'},   {"warmup", required_argument, NULL, 'w'},
        {"linger-ms", required_argument, NULL, 'L'}, {"fetch-wait-ms", required_argument, NULL, 'F'},
        {"ready-file", required_argument, NULL, 'R'}, {"timeline", no_argument, NULL, 'T'},
        {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "b:r:d:", longopts, NULL)) != -1) {
        switch (c) {
        case 'b': o.bootstrap = optarg; break;
        case 'i': o.in = optarg; break;
        case 'o': o.out = optarg; break;
        case 'r': o.rate = atof(optarg); break;
        case 'd': o.seconds = atof(optarg); break;
        case 'w': o.warmup = atof(optarg); break;
        case 'L': o.linger_ms = optarg; break;
        case 'F': o.fetch_wait_ms = optarg; break;
        case 'R': o.ready_file = optarg; break;
        case 'T': o.timeline = 1; break;
        default: usage(); return 2;
        }
    }
    if (!o.bootstrap || !o.in || !o.out || !(o.rate > 0) || !(o.seconds > 0) ||
        o.seconds > BENCH_MAX_SECONDS || !(o.warmup >= 0) || o.warmup >= o.seconds) {
        usage();
        return 2;
    }

    /* The reader: every partition of --out, from its end. */
    char err[512];
    rd_kafka_conf_t *cc = rd_kafka_conf_new();
    char group[64];
    snprintf(group, sizeof group, BENCH_NAME "-%ld", (long)getpid());
    if (bench_conf_set(cc, "bootstrap.servers", o.bootstrap) || bench_conf_set(cc, "group.id", group) ||
        bench_conf_set(cc, "enable.auto.commit", "false") ||
        bench_conf_set(cc, "fetch.wait.max.ms", o.fetch_wait_ms) ||
        bench_conf_set(cc, "enable.partition.eof", "false"))
        return 2;
    rd_kafka_t *consumer = rd_kafka_new(RD_KAFKA_CONSUMER, cc, err, sizeof err);
    if (!consumer) {
        fprintf(stderr, BENCH_NAME ": %s\n", err);
        return 1;
    }
    rd_kafka_poll_set_consumer(consumer);
    const struct rd_kafka_metadata *md = NULL;
    int parts = -1;
    if (rd_kafka_metadata(consumer, 1, NULL, &md, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        for (int i = 0; i < md->topic_cnt; i++)
            if (!strcmp(md->topics[i].topic, o.out) && !md->topics[i].err)
                parts = md->topics[i].partition_cnt;
        rd_kafka_metadata_destroy(md);
    }
    if (parts <= 0) {
        fprintf(stderr, BENCH_NAME ": topic %s not found (create it first)\n", o.out);
        return 1;
    }
    rd_kafka_topic_partition_list_t *tl = rd_kafka_topic_partition_list_new(parts);
    for (int p = 0; p < parts; p++)
        rd_kafka_topic_partition_list_add(tl, o.out, p)->offset = RD_KAFKA_OFFSET_END;
    rd_kafka_assign(consumer, tl);
    rd_kafka_topic_partition_list_destroy(tl);
    /* Let the reader resolve its end offsets before anything is sent. */
    for (int i = 0; i < 20; i++) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(consumer, 100);
        if (m) rd_kafka_message_destroy(m);
    }

    producer_state ps = {.o = &o};
    rd_kafka_conf_t *pc = rd_kafka_conf_new();
    rd_kafka_conf_set_opaque(pc, &ps.st);
    rd_kafka_conf_set_dr_msg_cb(pc, bench_dr_cb);
    rd_kafka_conf_set_error_cb(pc, bench_error_cb);
    if (bench_conf_set(pc, "bootstrap.servers", o.bootstrap) || bench_conf_set(pc, "linger.ms", o.linger_ms) ||
        bench_conf_set(pc, "partitioner", "murmur2_random"))
        return 2;
    ps.rk = rd_kafka_new(RD_KAFKA_PRODUCER, pc, err, sizeof err);
    if (!ps.rk) {
        fprintf(stderr, BENCH_NAME ": %s\n", err);
        return 1;
    }
    if (o.ready_file) {
        FILE *f = fopen(o.ready_file, "w");
        if (f) fclose(f);
    }

    size_t cap = (size_t)(o.rate * o.seconds) + 1024;
    int64_t *recv = malloc(cap * sizeof *recv), *ts = malloc(cap * sizeof *ts);
    int nsec = (int)o.seconds + 2;
    int *sec = malloc(cap * sizeof *sec); /* the second of the run each sample was sent in */
    int64_t *sent_at = malloc(cap * sizeof *sent_at);
    if (!recv || !ts || !sec || !sent_at) {
        fprintf(stderr, BENCH_NAME ": out of memory\n");
        return 1;
    }
    int64_t start_us = wall_us();
    ps.measure_from_us = start_us + (int64_t)(o.warmup * 1e6);
    pthread_t thr;
    if (pthread_create(&thr, NULL, produce_thread, &ps)) {
        fprintf(stderr, BENCH_NAME ": cannot start the producer thread\n");
        return 1;
    }
    size_t n = 0;
    int ts_type = RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
    for (;;) {
        if (atomic_load(&ps.done)) {
            if ((long long)n >= atomic_load(&ps.measured_sent)) break;
            if (bench_now() - ps.last_send_mono > BENCH_DRAIN_S) break;
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll(consumer, 100);
        if (!m) continue;
        int64_t now = wall_us();
        if (m->err) {
            fprintf(stderr, BENCH_NAME ": consume: %s\n", rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            continue;
        }
        /* The job re-encodes the order: find its "id" wherever it put it. */
        char buf[64];
        const char *p = m->payload ? memmem(m->payload, m->len, "\"id\":", 5) : NULL;
        if (p) {
            size_t left = m->len - (size_t)(p + 5 - (const char *)m->payload);
            size_t k = left < sizeof buf - 1 ? left : sizeof buf - 1;
            memcpy(buf, p + 5, k);
            buf[k] = 0;
            int64_t id = (int64_t)strtod(buf, NULL);
            if (id >= ps.measure_from_us && n < cap) {
                rd_kafka_timestamp_type_t tt;
                int64_t t = rd_kafka_message_timestamp(m, &tt);
                ts_type = tt;
                recv[n] = now - id;
                ts[n] = t * 1000 - id;
                sec[n] = (int)((id - start_us) / 1000000);
                sent_at[n] = id;
                n++;
            }
        }
        rd_kafka_message_destroy(m);
    }
    pthread_join(thr, NULL);
    long long measured_sent = atomic_load(&ps.measured_sent);
    if (o.timeline) {
        int64_t *tmp = malloc(cap * sizeof *tmp);
        for (int s = 0; s < nsec && tmp; s++) {
            size_t k = 0;
            for (size_t i = 0; i < n; i++)
                if (sec[i] == s) tmp[k++] = recv[i];
            if (!k) continue;
            qsort(tmp, k, sizeof *tmp, cmp_i64);
            fprintf(stderr, "second %d: %zu measured, recv p50 %.1f ms, p99 %.1f ms, max %.1f ms\n", s, k,
                    (double)tmp[k / 2] / 1000.0, (double)tmp[(size_t)(0.99 * (double)(k - 1))] / 1000.0,
                    (double)tmp[k - 1] / 1000.0);
        }
        free(tmp);
        /* Every 100 ms slice of sends whose worst latency passed 25 ms, by
         * wall-clock time: to hold against the job's own log lines. */
        size_t nslices = (size_t)nsec * 10;
        int64_t *worst = calloc(nslices, sizeof *worst);
        for (size_t i = 0; worst && i < n; i++) {
            int64_t sl = (sent_at[i] - start_us) / 100000;
            if (sl >= 0 && (size_t)sl < nslices && recv[i] > worst[sl]) worst[sl] = recv[i];
        }
        for (size_t sl = 0; worst && sl < nslices; sl++) {
            if (worst[sl] <= 25000) continue;
            int64_t at = start_us + (int64_t)sl * 100000;
            time_t t = (time_t)(at / 1000000);
            struct tm tm;
            localtime_r(&t, &tm);
            char hms[16];
            strftime(hms, sizeof hms, "%H:%M:%S", &tm);
            fprintf(stderr, "sent %s.%03d+100ms: recv max %.1f ms\n", hms, (int)(at % 1000000 / 1000),
                    (double)worst[sl] / 1000.0);
        }
        free(worst);
    }
    printf("{\"rate\":%.0f,\"sent\":%lld,\"measured\":%zu,\"missing\":%lld,\"failed\":%lld,"
           "\"timestamp_type\":\"%s\",",
           o.rate, atomic_load(&ps.sent), n, measured_sent - (long long)n, ps.st.failed,
           ts_type == RD_KAFKA_TIMESTAMP_LOG_APPEND_TIME ? "LogAppendTime" : "CreateTime");
    print_pcts("recv_ms", recv, n);
    printf(",");
    print_pcts("ts_ms", ts, n);
    printf("}\n");
    free(recv);
    free(ts);
    free(sec);
    free(sent_at);
    rd_kafka_consumer_close(consumer);
    rd_kafka_destroy(consumer);
    rd_kafka_destroy(ps.rk);
    return (long long)n < measured_sent ? 3 : 0;
}
