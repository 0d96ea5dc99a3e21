/* bench-watch: measures how fast a topic fills, from outside the program
 * being measured.
 *
 *   bench-watch -b BOOTSTRAP -t TOPIC -n COUNT [-g GROUP] [--timeout S] [--ready-file F]
 *
 * The benchmark driver runs the ceiling and fstream-lua under this same
 * watcher, so both numbers come from one clock and one definition: the time
 * from the first poll at which the topic holds more messages than when the
 * watcher started, to the first poll at which it holds COUNT. Each program's
 * start-up (group join, Lua load) is thereby left out for both alike.
 *
 * "Holds" is the sum of the partitions' high watermarks, polled every 20 ms,
 * so the resolution is 20 ms plus one ListOffsets round trip per partition.
 * COUNT is absolute: the driver gives the watcher a fresh topic.
 *
 * With -g, "holds" is instead the sum of consumer group GROUP's committed
 * offsets on TOPIC (a partition without a commit counts 0): the clock of a job
 * that produces nothing per message, such as a word count that only updates a
 * table, and the definition of a drain as "until the group has committed
 * every offset". The watcher's handle carries the group id only to ask for the
 * group's offsets; it never subscribes, so it never joins the group.
 *
 * --ready-file is created once the partitions are known and the baseline is
 * taken, so the driver can start the measured program only after that.
 *
 * Prints one JSON line on stdout:
 *   {"first_s":..,"done_s":..,"first_count":..,"count":..,"seconds":..,
 *    "msgs_per_sec":..}
 * with first_s/done_s in seconds since the watcher started and msgs_per_sec =
 * (COUNT - first_count) / (done_s - first_s). Exits 3 on timeout, still
 * printing what it saw with "timeout":true. */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>

#define BENCH_NAME "bench-watch"
#include "common.h"

#define BENCH_TICK_NS (20 * 1000 * 1000L)
#define BENCH_QUERY_TIMEOUT_MS 5000

typedef struct bench_opts {
    const char *bootstrap;
    const char *topic;
    long long count;
    double timeout_s;
    const char *ready_file;
    const char *group;
} bench_opts;


static void bench_sleep_until(struct timespec *next)
{
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, next, NULL) == EINTR) {
    }
}

/* Looks the topic up in a full metadata listing instead of asking for it by
 * name, because a by-name request may make the broker auto-create the topic
 * with its default partition count before the real creator gets to it. */
static int bench_partition_count(rd_kafka_t *rk, const char *topic)
{
    const struct rd_kafka_metadata *md = NULL;
    int cnt = -1;

    if (!rk || !topic) return -1;
    if (rd_kafka_metadata(rk, 1, NULL, &md, BENCH_QUERY_TIMEOUT_MS)) goto fail;
    for (int i = 0; i < md->topic_cnt; i++) {
        if (strcmp(md->topics[i].topic, topic) != 0) continue;
        if (!md->topics[i].err && md->topics[i].partition_cnt > 0)
            cnt = md->topics[i].partition_cnt;
        break;
    }
fail:
    if (md) rd_kafka_metadata_destroy(md);
    return cnt;
}

/* Sum of the group's committed offsets on the topic, or -1 if the query failed. */
static long long bench_committed(rd_kafka_t *rk, const char *topic, int parts)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(parts);
    if (!l) return -1;
    for (int p = 0; p < parts; p++) rd_kafka_topic_partition_list_add(l, topic, p);
    long long sum = -1;
    if (!rd_kafka_committed(rk, l, BENCH_QUERY_TIMEOUT_MS)) {
        sum = 0;
        for (int i = 0; i < l->cnt; i++) {
            if (l->elems[i].err) {
                sum = -1;
                break;
            }
            if (l->elems[i].offset > 0) sum += l->elems[i].offset;
        }
    }
    rd_kafka_topic_partition_list_destroy(l);
    return sum;
}

/* Sum of high watermarks (or with -g of committed offsets), or -1 if any
 * partition could not be queried. */
static long long bench_sum(rd_kafka_t *rk, const char *topic, int parts, const char *group)
{
    long long sum = 0;
    if (!rk || !topic || parts < 1) return -1;
    if (group) return bench_committed(rk, topic, parts);
    for (int p = 0; p < parts; p++) {
        int64_t lo = 0, hi = 0;
        if (rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &hi, BENCH_QUERY_TIMEOUT_MS))
            return -1;
        sum += hi;
    }
    return sum;
}

static void bench_usage(FILE *f)
{
    fprintf(f, "usage: bench-watch -b BOOTSTRAP -t TOPIC -n COUNT [-g GROUP] [--timeout S] "
               "[--ready-file F]\n");
}

static int bench_parse(int argc, char **argv, bench_opts *o)
{
    static const struct option longopts[] = {{"timeout", required_argument, NULL, 'T'},
                                             {"ready-file", required_argument, NULL, 'R'},
                                             {"help", no_argument, NULL, 'h'},
                                             {0, 0, 0, 0}};
    char *end;
    int c;

    if (!o) return -1;
    *o = (bench_opts){.count = -1, .timeout_s = 300.0};
    while ((c = getopt_long(argc, argv, "b:t:n:g:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'b':
            o->bootstrap = optarg;
            break;
        case 't':
            o->topic = optarg;
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
        case 'R':
            o->ready_file = optarg;
            break;
        case 'g':
            o->group = optarg;
            break;
        case 'h':
            bench_usage(stdout);
            exit(0);
        default:
            return -1;
        }
    }
    if (optind != argc || !o->bootstrap || !o->topic || o->count < 1) return -1;
    return 0;
}

static void bench_report(long long first_count, long long count, double first_s, double done_s,
                         long long target, int timed_out)
{
    double secs = first_s >= 0 && done_s > first_s ? done_s - first_s : 0.0;
    double rate = secs > 0 ? (double)(target - first_count) / secs : 0.0;
    printf("{\"first_s\":%.3f,\"done_s\":%.3f,\"first_count\":%lld,\"count\":%lld,"
           "\"seconds\":%.3f,\"msgs_per_sec\":%.0f%s}\n",
           first_s, done_s, first_count, count, secs, rate, timed_out ? ",\"timeout\":true" : "");
    fflush(stdout);
}

int main(int argc, char **argv)
{
    bench_opts o;
    int rc = 1;
    char err[512];
    rd_kafka_conf_t *conf = NULL;
    rd_kafka_t *rk = NULL;

    if (bench_parse(argc, argv, &o)) {
        bench_usage(stderr);
        return 2;
    }
    conf = rd_kafka_conf_new();
    /* A consumer handle without a group: it never joins anything, and unlike
     * a producer handle its metadata requests never auto-create topics. */
    if (rd_kafka_conf_set(conf, "bootstrap.servers", o.bootstrap, err, sizeof err) ||
        rd_kafka_conf_set(conf, "client.id", "bench-watch", err, sizeof err) ||
        (o.group && (rd_kafka_conf_set(conf, "group.id", o.group, err, sizeof err) ||
                     rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof err)))) {
        fprintf(stderr, "bench-watch: config: %s\n", err);
        goto fail;
    }
    rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (!rk) {
        fprintf(stderr, "bench-watch: %s\n", err);
        goto fail;
    }
    conf = NULL;

    double t0 = bench_now();
    double deadline = t0 + o.timeout_s;
    int parts = -1;
    while ((parts = bench_partition_count(rk, o.topic)) < 0) {
        if (bench_now() > deadline) {
            fprintf(stderr, "bench-watch: topic %s did not appear in %.0f s\n", o.topic,
                    o.timeout_s);
            bench_report(0, 0, -1, -1, o.count, 1);
            rc = 3;
            goto fail;
        }
        struct timespec ts = {0, 100 * 1000 * 1000L};
        nanosleep(&ts, NULL);
    }
    long long base = -1;
    while ((base = bench_sum(rk, o.topic, parts, o.group)) < 0) {
        if (bench_now() > deadline) {
            fprintf(stderr, "bench-watch: cannot read watermarks of %s\n", o.topic);
            rc = 3;
            goto fail;
        }
        struct timespec ts = {0, 100 * 1000 * 1000L};
        nanosleep(&ts, NULL);
    }
    if (o.ready_file) {
        FILE *f = fopen(o.ready_file, "w");
        if (!f) {
            fprintf(stderr, "bench-watch: %s: %s\n", o.ready_file, strerror(errno));
            goto fail;
        }
        fprintf(f, "%d %lld\n", parts, base);
        fclose(f);
    }
    if (base >= o.count)
        fprintf(stderr, "bench-watch: %s already holds %lld >= %lld messages\n", o.topic, base,
                o.count);

    long long first_count = -1, cur = base;
    double first_s = -1.0, done_s = -1.0;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (;;) {
        double now = bench_now();
        if (now > deadline) {
            fprintf(stderr, "bench-watch: timeout: %s holds %lld of %lld messages\n", o.topic, cur,
                    o.count);
            bench_report(first_count, cur, first_s, now - t0, o.count, 1);
            rc = 3;
            goto fail;
        }
        long long s = bench_sum(rk, o.topic, parts, o.group);
        /* The moment of a sample is taken after its queries return, so a slow
         * round trip makes the interval later, never shorter than reality. */
        double at = bench_now() - t0;
        if (s >= 0) {
            cur = s;
            if (first_count < 0 && cur > base) {
                first_count = cur;
                first_s = at;
            }
            if (cur >= o.count) {
                done_s = at;
                break;
            }
        }
        next.tv_nsec += BENCH_TICK_NS;
        if (next.tv_nsec >= 1000000000L) {
            next.tv_nsec -= 1000000000L;
            next.tv_sec++;
        }
        /* After a slow poll, skip the missed ticks instead of bursting
         * through them: bursts would only load the broker being measured. */
        struct timespec now_ts;
        clock_gettime(CLOCK_MONOTONIC, &now_ts);
        if (now_ts.tv_sec > next.tv_sec ||
            (now_ts.tv_sec == next.tv_sec && now_ts.tv_nsec > next.tv_nsec))
            next = now_ts;
        bench_sleep_until(&next);
    }
    bench_report(first_count, cur, first_s, done_s, o.count, 0);
    rc = 0;
fail:
    if (rk) rd_kafka_destroy(rk);
    if (conf) rd_kafka_conf_destroy(conf);
    return rc;
}
