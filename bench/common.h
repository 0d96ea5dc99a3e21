/* Helpers every bench tool needs, kept here once. Header-only: each tool is a
 * single C file; define BENCH_NAME (the program name for messages) first.
 * These tools must not share code with the runtime, or the ceiling would
 * inherit its costs: nothing here comes from runtime/. */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <time.h>

#ifndef BENCH_NAME
#error "define BENCH_NAME before including common.h"
#endif

typedef struct bench_stats {
    long long delivered;
    long long failed;
    rd_kafka_resp_err_t first_err;
    double last_dr;
    volatile int fatal;
} bench_stats;

static inline double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline void bench_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    bench_stats *st = opaque;
    (void)rk;
    if (m->err) {
        if (!st->failed) st->first_err = m->err;
        st->failed++;
    } else {
        st->delivered++;
    }
    st->last_dr = bench_now();
}

static inline void bench_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    bench_stats *st = opaque;
    fprintf(stderr, BENCH_NAME ": kafka: %s: %s\n", rd_kafka_err2name(err), reason);
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char why[512];
        rd_kafka_fatal_error(rk, why, sizeof why);
        fprintf(stderr, BENCH_NAME ": fatal: %s\n", why);
        st->fatal = 1;
    }
}

static inline int bench_conf_set(rd_kafka_conf_t *conf, const char *k, const char *v)
{
    char err[512];
    if (!conf || !k || !v) return -1;
    if (rd_kafka_conf_set(conf, k, v, err, sizeof err) != RD_KAFKA_CONF_OK) {
        fprintf(stderr, BENCH_NAME ": config %s=%s: %s\n", k, v, err);
        return -1;
    }
    return 0;
}

#endif
