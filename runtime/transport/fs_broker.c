/* fs_broker: `fstream-lua broker` — librdkafka's mock cluster as a standalone
 * process that outlives workers (crash/restart tests, several local workers).
 * Keeps everything in memory; stops on SIGTERM/SIGINT. Transport layer: the
 * command line reaches it through the Lua binding (fs_lua_misc.c). */
#include "fs_broker.h"

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "fs_log.h"

/* The cluster's host client has no bootstrap servers by design: its
 * configuration notice would only confuse; real problems still show. */
static void host_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    if (level <= 4) fs_warn("broker: %s: %s", fac, buf);
    else fs_debug("broker: %s: %s", fac, buf);
}

static void stop(rd_kafka_mock_cluster_t *mc, rd_kafka_t *host)
{
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(host);
}

int fs_broker_serve(const fs_broker_opts *o, char *err, size_t errlen)
{
    if (o->brokers < 1 || o->brokers > 16) {
        snprintf(err, errlen, "--brokers must be 1..16");
        return -1;
    }
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(c, host_log);
    rd_kafka_t *host = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, errlen);
    if (!host) {
        rd_kafka_conf_destroy(c);
        return -1;
    }
    rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(host, o->brokers);
    if (!mc) {
        rd_kafka_destroy(host);
        snprintf(err, errlen, "could not start the embedded broker");
        return -1;
    }
    /* Topics named on the command line get a known partition count; others are
     * auto-created by the mock cluster when first used. */
    for (int i = 0; i < o->ntopics; i++) {
        rd_kafka_resp_err_t e = rd_kafka_mock_topic_create(mc, o->topics[i], o->partitions, 1);
        if (e) {
            snprintf(err, errlen, "cannot create topic %s: %s", o->topics[i], rd_kafka_err2str(e));
            stop(mc, host);
            return -1;
        }
    }
    const char *bootstrap = rd_kafka_mock_cluster_bootstraps(mc);
    printf("fstream-lua broker listening on %s (in memory: nothing is kept after exit)\n", bootstrap);
    fflush(stdout);
    if (o->address_file) {
        char tmp[4096];
        if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", o->address_file) >= sizeof tmp) {
            snprintf(err, errlen, "--address-file path too long (%zu bytes at most)", sizeof tmp - 5);
            stop(mc, host);
            return -1;
        }
        FILE *f = fopen(tmp, "w");
        int bad = !f || fprintf(f, "%s\n", bootstrap) < 0;
        if (f && fclose(f)) bad = 1;
        if (bad || rename(tmp, o->address_file)) {
            snprintf(err, errlen, "cannot write %s", o->address_file);
            stop(mc, host);
            return -1;
        }
    }
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigprocmask(SIG_BLOCK, &set, NULL);
    int sig = 0;
    sigwait(&set, &sig);
    fs_info("broker stopping (%s)", strsignal(sig));
    stop(mc, host);
    return 0;
}
