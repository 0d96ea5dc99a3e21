/* close_guard.so: preloaded into a worker by spec/workers_spec.lua
 * (LD_PRELOAD), it watches the worker's calls into librdkafka while the
 * group's consumer closes.
 *
 * Inside rd_kafka_consumer_close the worker answers the revocation with
 * rd_kafka_incremental_unassign (or rd_kafka_assign(NULL)). From then on
 * librdkafka 2.0.2 may finish the group at any moment: its main thread
 * purges the queue that serves the group's requests, and a request waiting
 * there never gets its answer (any assign counts as that answer while the
 * consumer closes). rd_kafka_assignment, assign, unassign,
 * rd_kafka_rebalance_protocol, rd_kafka_consumer_group_metadata and a
 * synchronous commit wait for that answer without a timeout, so such a call
 * hangs the stop, or not, depending on which thread runs first (now and
 * then; see runtime/README.md, "The stop"). The guard makes that race
 * visible on every stop: it prints "close_guard: NAME after the close's unassign" on stderr
 * for each such call. Built by meson; not installed. */
#include <dlfcn.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <string.h>

/* The consumer being closed (the worker closes one at a time, on its loop's
 * thread), and whether it has its answer. */
static rd_kafka_t *closing;
static int answered;

/* librdkafka's own function `name`, as a pointer of type `type`. */
#define REAL(name, type) ((type)real(name))
static void (*real(const char *name))(void)
{
    void *p = dlsym(RTLD_NEXT, name);
    void (*f)(void) = NULL;
    memcpy(&f, &p, sizeof f);
    return f;
}

#define in_close (closing && rk == closing)

static void check(rd_kafka_t *rk, const char *name)
{
    if (in_close && answered) fprintf(stderr, "close_guard: %s after the close's unassign\n", name);
}

rd_kafka_resp_err_t rd_kafka_consumer_close(rd_kafka_t *rk)
{
    closing = rk;
    answered = 0;
    rd_kafka_resp_err_t e = REAL("rd_kafka_consumer_close", rd_kafka_resp_err_t (*)(rd_kafka_t *))(rk);
    closing = NULL;
    return e;
}

rd_kafka_error_t *rd_kafka_incremental_unassign(rd_kafka_t *rk, const rd_kafka_topic_partition_list_t *p)
{
    check(rk, "rd_kafka_incremental_unassign");
    rd_kafka_error_t *e = REAL("rd_kafka_incremental_unassign",
                               rd_kafka_error_t * (*)(rd_kafka_t *, const rd_kafka_topic_partition_list_t *))(rk, p);
    if (in_close) answered = 1;
    return e;
}

rd_kafka_error_t *rd_kafka_incremental_assign(rd_kafka_t *rk, const rd_kafka_topic_partition_list_t *p)
{
    check(rk, "rd_kafka_incremental_assign");
    rd_kafka_error_t *e = REAL("rd_kafka_incremental_assign",
                               rd_kafka_error_t * (*)(rd_kafka_t *, const rd_kafka_topic_partition_list_t *))(rk, p);
    /* Closing, librdkafka takes any assign for the unassign. */
    if (in_close) answered = 1;
    return e;
}

rd_kafka_resp_err_t rd_kafka_assign(rd_kafka_t *rk, const rd_kafka_topic_partition_list_t *p)
{
    check(rk, "rd_kafka_assign");
    rd_kafka_resp_err_t e =
        REAL("rd_kafka_assign", rd_kafka_resp_err_t (*)(rd_kafka_t *, const rd_kafka_topic_partition_list_t *))(rk, p);
    if (in_close) answered = 1;
    return e;
}

const char *rd_kafka_rebalance_protocol(rd_kafka_t *rk)
{
    check(rk, "rd_kafka_rebalance_protocol");
    return REAL("rd_kafka_rebalance_protocol", const char *(*)(rd_kafka_t *))(rk);
}

rd_kafka_consumer_group_metadata_t *rd_kafka_consumer_group_metadata(rd_kafka_t *rk)
{
    check(rk, "rd_kafka_consumer_group_metadata");
    return REAL("rd_kafka_consumer_group_metadata", rd_kafka_consumer_group_metadata_t * (*)(rd_kafka_t *))(rk);
}

rd_kafka_resp_err_t rd_kafka_assignment(rd_kafka_t *rk, rd_kafka_topic_partition_list_t **p)
{
    check(rk, "rd_kafka_assignment");
    return REAL("rd_kafka_assignment", rd_kafka_resp_err_t (*)(rd_kafka_t *, rd_kafka_topic_partition_list_t **))(rk, p);
}

rd_kafka_resp_err_t rd_kafka_commit(rd_kafka_t *rk, const rd_kafka_topic_partition_list_t *p, int async)
{
    if (!async) check(rk, "rd_kafka_commit");
    return REAL("rd_kafka_commit",
                rd_kafka_resp_err_t (*)(rd_kafka_t *, const rd_kafka_topic_partition_list_t *, int))(rk, p, async);
}
