/* fs_broker: `fstream-lua broker` — librdkafka's mock cluster as a standalone
 * process that outlives workers (crash/restart tests, several local workers).
 * Keeps everything in memory; stops on SIGTERM/SIGINT. Transport layer: the
 * command line reaches it through the Lua binding (fs_lua_misc.c).
 *
 * --control FIFO: fault injection while it runs. Each line written to the
 * FIFO is one command, answered by a log line "control: LINE: what was done"
 * (info) or "control: LINE: why not" (warn):
 *   down B | up B                  broker B (1..N) drops its connections and
 *                                  refuses new ones | accepts them again
 *   rtt B MS                       broker B answers every request MS later
 *   errors API COUNT CODE          the next COUNT requests of API (to any
 *                                  broker, from any client) fail with CODE
 *   broker-errors B API COUNT CODE [MS]   the same on broker B only, each
 *                                  answer delayed MS
 *   clear API                      forget the cluster's pending errors of API
 *                                  (not those of broker-errors)
 *   pending B API                  how many broker-errors of API broker B has
 *                                  still to answer with
 *   topic-error TOPIC CODE         metadata reports TOPIC with CODE (0: none)
 *   leader TOPIC P B               broker B leads TOPIC's partition P
 * API is a request name (Produce, Fetch, OffsetCommit, JoinGroup, ...) or its
 * number; CODE a librdkafka error name (NOT_LEADER_FOR_PARTITION, _TRANSPORT
 * to drop the connection) or number. The FIFO is opened read-write, so a
 * writer that closes it (echo ... > FIFO) is no end of input. */
#include "fs_broker.h"

#include <errno.h>
#include <fcntl.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs_log.h"

/* Kafka protocol request types by name (the ones a worker sends). */
static const struct {
    const char *name;
    int16_t key;
} api_keys[] = {
    {"Produce", 0},          {"Fetch", 1},           {"ListOffsets", 2},      {"Metadata", 3},
    {"OffsetCommit", 8},     {"OffsetFetch", 9},     {"FindCoordinator", 10}, {"JoinGroup", 11},
    {"Heartbeat", 12},       {"LeaveGroup", 13},     {"SyncGroup", 14},       {"DescribeGroups", 15},
    {"ListGroups", 16},      {"ApiVersions", 18},    {"CreateTopics", 19},    {"InitProducerId", 22},
    {"OffsetForLeaderEpoch", 23}, {"AddPartitionsToTxn", 24}, {"AddOffsetsToTxn", 25},
    {"EndTxn", 26},          {"TxnOffsetCommit", 28},
};

/* A whole decimal number in lo..hi. */
static int number(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

static int api_key(const char *s, int16_t *out)
{
    for (size_t i = 0; i < sizeof api_keys / sizeof api_keys[0]; i++)
        if (strcasecmp(s, api_keys[i].name) == 0) {
            *out = api_keys[i].key;
            return 0;
        }
    long v;
    if (number(s, 0, 100, &v)) return -1;
    *out = (int16_t)v;
    return 0;
}

static const char *api_name(int16_t key)
{
    for (size_t i = 0; i < sizeof api_keys / sizeof api_keys[0]; i++)
        if (api_keys[i].key == key) return api_keys[i].name;
    return "request";
}

/* An error code by librdkafka's name (with or without RD_KAFKA_RESP_ERR_) or number. */
static int err_code(const char *s, rd_kafka_resp_err_t *out)
{
    if (strncasecmp(s, "RD_KAFKA_RESP_ERR_", 18) == 0) s += 18;
    const struct rd_kafka_err_desc *d;
    size_t n;
    rd_kafka_get_err_descs(&d, &n);
    for (size_t i = 0; i < n; i++)
        if (d[i].name && strcasecmp(s, d[i].name) == 0) {
            *out = d[i].code;
            return 0;
        }
    long v;
    if (number(s, -200, 1000, &v)) return -1;
    *out = (rd_kafka_resp_err_t)v;
    return 0;
}

#define FS_CONTROL_ARGS 8

/* One command line (no newline; modified). 0 and what was done in out, -1
 * and why not, 1 for a blank or comment line. */
static int control(rd_kafka_mock_cluster_t *mc, int brokers, char *line, char *out, size_t outlen)
{
    char *av[FS_CONTROL_ARGS], *save = NULL;
    int ac = 0;
    for (char *t = strtok_r(line, " \t\r", &save); t; t = strtok_r(NULL, " \t\r", &save)) {
        if (ac == FS_CONTROL_ARGS) {
            snprintf(out, outlen, "too many words");
            return -1;
        }
        av[ac++] = t;
    }
    if (ac == 0 || av[0][0] == '#') return 1;
    const char *cmd = av[0];
    long b = 0, cnt = 0, ms = 0, part = 0;
    int16_t key = 0;
    rd_kafka_resp_err_t code = 0, e = 0;
#define NEED(n, usage)                                                                             \
    if (ac != (n)) {                                                                               \
        snprintf(out, outlen, "usage: %s", usage);                                                 \
        return -1;                                                                                 \
    }
#define BROKER(s)                                                                                  \
    if (number(s, 1, brokers, &b)) {                                                               \
        snprintf(out, outlen, "no broker '%s' (the cluster has 1..%d)", s, brokers);               \
        return -1;                                                                                 \
    }
#define API(s)                                                                                     \
    if (api_key(s, &key)) {                                                                        \
        snprintf(out, outlen, "unknown request type '%s' (Produce, Fetch, OffsetCommit, ...)", s); \
        return -1;                                                                                 \
    }
#define CODE(s)                                                                                    \
    if (err_code(s, &code)) {                                                                      \
        snprintf(out, outlen, "unknown error code '%s' (NOT_LEADER_FOR_PARTITION, ...)", s);       \
        return -1;                                                                                 \
    }
#define COUNT(s)                                                                                   \
    if (number(s, 1, 100000, &cnt)) {                                                              \
        snprintf(out, outlen, "COUNT must be 1..100000, not '%s'", s);                             \
        return -1;                                                                                 \
    }
    if (strcmp(cmd, "down") == 0 || strcmp(cmd, "up") == 0) {
        NEED(2, "down|up BROKER");
        BROKER(av[1]);
        int down = cmd[0] == 'd';
        e = down ? rd_kafka_mock_broker_set_down(mc, (int32_t)b)
                 : rd_kafka_mock_broker_set_up(mc, (int32_t)b);
        if (!e)
            snprintf(out, outlen, down ? "broker %ld is down (its connections closed, new ones refused)"
                                       : "broker %ld is up",
                     b);
    } else if (strcmp(cmd, "rtt") == 0) {
        NEED(3, "rtt BROKER MS");
        BROKER(av[1]);
        if (number(av[2], 0, 3600000, &ms)) {
            snprintf(out, outlen, "MS must be 0..3600000, not '%s'", av[2]);
            return -1;
        }
        e = rd_kafka_mock_broker_set_rtt(mc, (int32_t)b, (int)ms);
        if (!e) snprintf(out, outlen, "broker %ld answers %ld ms late", b, ms);
    } else if (strcmp(cmd, "errors") == 0) {
        NEED(4, "errors API COUNT CODE");
        API(av[1]);
        COUNT(av[2]);
        CODE(av[3]);
        rd_kafka_resp_err_t *codes = malloc((size_t)cnt * sizeof *codes);
        if (!codes) {
            snprintf(out, outlen, "out of memory");
            return -1;
        }
        for (long i = 0; i < cnt; i++) codes[i] = code;
        rd_kafka_mock_push_request_errors_array(mc, key, (size_t)cnt, codes);
        free(codes);
        snprintf(out, outlen, "the next %ld %s requests fail with %s", cnt, api_name(key),
                 rd_kafka_err2name(code));
    } else if (strcmp(cmd, "broker-errors") == 0) {
        if (ac != 5 && ac != 6) NEED(6, "broker-errors BROKER API COUNT CODE [MS]");
        BROKER(av[1]);
        API(av[2]);
        COUNT(av[3]);
        CODE(av[4]);
        if (ac == 6 && number(av[5], 0, 3600000, &ms)) {
            snprintf(out, outlen, "MS must be 0..3600000, not '%s'", av[5]);
            return -1;
        }
        for (long i = 0; i < cnt && !e; i++)
            e = rd_kafka_mock_broker_push_request_error_rtts(mc, (int32_t)b, key, 1, code, (int)ms);
        if (!e)
            snprintf(out, outlen, "the next %ld %s requests to broker %ld fail with %s after %ld ms",
                     cnt, api_name(key), b, rd_kafka_err2name(code), ms);
    } else if (strcmp(cmd, "clear") == 0) {
        NEED(2, "clear API");
        API(av[1]);
        rd_kafka_mock_clear_request_errors(mc, key);
        snprintf(out, outlen, "no more %s errors pending", api_name(key));
    } else if (strcmp(cmd, "pending") == 0) {
        NEED(3, "pending BROKER API");
        BROKER(av[1]);
        API(av[2]);
        size_t n = 0;
        e = rd_kafka_mock_broker_error_stack_cnt(mc, (int32_t)b, key, &n);
        if (!e) snprintf(out, outlen, "%zu %s errors pending on broker %ld", n, api_name(key), b);
    } else if (strcmp(cmd, "topic-error") == 0) {
        NEED(3, "topic-error TOPIC CODE");
        CODE(av[2]);
        rd_kafka_mock_topic_set_error(mc, av[1], code);
        snprintf(out, outlen, "metadata reports %s with %s", av[1], rd_kafka_err2name(code));
    } else if (strcmp(cmd, "leader") == 0) {
        NEED(4, "leader TOPIC PARTITION BROKER");
        if (number(av[2], 0, 1000000, &part)) {
            snprintf(out, outlen, "PARTITION must be 0, 1, ..., not '%s'", av[2]);
            return -1;
        }
        BROKER(av[3]);
        e = rd_kafka_mock_partition_set_leader(mc, av[1], (int32_t)part, (int32_t)b);
        if (!e) snprintf(out, outlen, "broker %ld leads %s[%ld]", b, av[1], part);
    } else {
        snprintf(out, outlen,
                 "unknown command (down, up, rtt, errors, broker-errors, clear, pending, topic-error, "
                 "leader)");
        return -1;
    }
#undef NEED
#undef BROKER
#undef API
#undef CODE
#undef COUNT
    if (e) {
        snprintf(out, outlen, "%s", rd_kafka_err2str(e));
        return -1;
    }
    return 0;
}

/* Longest command line; a longer one is refused whole, not cut. */
#define FS_CONTROL_LINE_MAX 1024

struct fs_control_in {
    int fd;
    char buf[FS_CONTROL_LINE_MAX + 1];
    size_t len;
    int skipping; /* inside a line that was too long: drop up to its newline */
};

static void run_line(rd_kafka_mock_cluster_t *mc, int brokers, char *line)
{
    char copy[FS_CONTROL_LINE_MAX + 1], out[512];
    snprintf(copy, sizeof copy, "%s", line);
    size_t n = strlen(copy);
    while (n && (copy[n - 1] == '\r' || copy[n - 1] == ' ')) copy[--n] = 0;
    int rc = control(mc, brokers, line, out, sizeof out);
    if (rc == 0) fs_info("control: %s: %s", copy, out);
    else if (rc < 0) fs_warn("control: %s: %s", copy, out);
}

/* Reads what the FIFO holds and runs every complete line. */
static void read_control(rd_kafka_mock_cluster_t *mc, int brokers, struct fs_control_in *in)
{
    for (;;) {
        ssize_t r = read(in->fd, in->buf + in->len, FS_CONTROL_LINE_MAX - in->len);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return; /* EAGAIN: all read (read-write, so never EOF) */
        in->len += (size_t)r;
        size_t start = 0;
        for (size_t i = 0; i < in->len; i++) {
            if (in->buf[i] != '\n') continue;
            in->buf[i] = 0;
            if (!in->skipping) run_line(mc, brokers, in->buf + start);
            in->skipping = 0;
            start = i + 1;
        }
        memmove(in->buf, in->buf + start, in->len - start);
        in->len -= start;
        if (in->len == FS_CONTROL_LINE_MAX) {
            if (!in->skipping)
                fs_warn("control: a line longer than %d bytes, ignored", FS_CONTROL_LINE_MAX);
            in->skipping = 1;
            in->len = 0;
        }
    }
}

/* The FIFO at path, made when missing (*made = 1), open read-write and non-blocking. */
static int open_control(const char *path, int *made, char *err, size_t errlen)
{
    struct stat st;
    *made = 0;
    if (stat(path, &st) == 0) {
        if (!S_ISFIFO(st.st_mode)) {
            snprintf(err, errlen, "--control %s exists and is not a FIFO", path);
            return -1;
        }
    } else if (errno != ENOENT || mkfifo(path, 0600)) {
        snprintf(err, errlen, "--control %s: %s", path, strerror(errno));
        return -1;
    } else {
        *made = 1;
    }
    int fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "--control %s: %s", path, strerror(errno));
        if (*made) unlink(path);
        return -1;
    }
    return fd;
}

/* The cluster's host client has no bootstrap servers by design: its
 * configuration notice would only confuse; real problems still show. */
static void host_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    if (level <= 4) fs_warn("broker: %s: %s", fac, buf);
    else fs_debug("broker: %s: %s", fac, buf);
}

/* Until SIGTERM or SIGINT (blocked, read from a signalfd), runs what the
 * control FIFO says. Returns the signal. */
static int serve_control(rd_kafka_mock_cluster_t *mc, int brokers, int cfd, const sigset_t *set)
{
    int sfd = signalfd(-1, set, SFD_CLOEXEC);
    if (sfd < 0) {
        fs_warn("control: signalfd: %s; commands are not served", strerror(errno));
        int sig = 0;
        sigwait(set, &sig);
        return sig;
    }
    static struct fs_control_in in; /* one broker per process */
    in.fd = cfd;
    for (;;) {
        struct pollfd p[2] = {{sfd, POLLIN, 0}, {cfd, POLLIN, 0}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            fs_warn("control: poll: %s; commands are not served", strerror(errno));
            break;
        }
        if (p[0].revents) break;
        if (p[1].revents) read_control(mc, brokers, &in);
    }
    close(sfd);
    int sig = 0;
    sigwait(set, &sig);
    return sig;
}

int fs_broker_serve(const fs_broker_opts *o, char *err, size_t errlen)
{
    if (o->brokers < 1 || o->brokers > 16) {
        snprintf(err, errlen, "--brokers must be 1..16");
        return -1;
    }
    int made = 0, cfd = -1, rc = -1;
    if (o->control && (cfd = open_control(o->control, &made, err, errlen)) < 0) return -1;
    rd_kafka_mock_cluster_t *mc = NULL;
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(c, host_log);
    rd_kafka_t *host = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, errlen);
    if (!host) {
        rd_kafka_conf_destroy(c);
        goto out;
    }
    mc = rd_kafka_mock_cluster_new(host, o->brokers);
    if (!mc) {
        snprintf(err, errlen, "could not start the embedded broker");
        goto out;
    }
    /* Topics named on the command line get a known partition count; others are
     * auto-created by the mock cluster when first used. */
    for (int i = 0; i < o->ntopics; i++) {
        rd_kafka_resp_err_t e = rd_kafka_mock_topic_create(mc, o->topics[i], o->partitions, 1);
        if (e) {
            snprintf(err, errlen, "cannot create topic %s: %s", o->topics[i], rd_kafka_err2str(e));
            goto out;
        }
    }
    const char *bootstrap = rd_kafka_mock_cluster_bootstraps(mc);
    printf("fstream-lua broker listening on %s (in memory: nothing is kept after exit)\n", bootstrap);
    if (o->control) printf("fault injection: write commands to %s (see --help)\n", o->control);
    fflush(stdout);
    if (o->address_file) {
        char tmp[4096];
        if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", o->address_file) >= sizeof tmp) {
            snprintf(err, errlen, "--address-file path too long (%zu bytes at most)", sizeof tmp - 5);
            goto out;
        }
        FILE *f = fopen(tmp, "w");
        int bad = !f || fprintf(f, "%s\n", bootstrap) < 0;
        if (f && fclose(f)) bad = 1;
        if (bad || rename(tmp, o->address_file)) {
            snprintf(err, errlen, "cannot write %s", o->address_file);
            goto out;
        }
    }
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigprocmask(SIG_BLOCK, &set, NULL);
    int sig = 0;
    if (cfd >= 0) sig = serve_control(mc, o->brokers, cfd, &set);
    else sigwait(&set, &sig);
    fs_info("broker stopping (%s)", strsignal(sig));
    rc = 0;
out:
    if (mc) rd_kafka_mock_cluster_destroy(mc);
    if (host) rd_kafka_destroy(host);
    if (cfd >= 0) close(cfd);
    if (made) unlink(o->control);
    return rc;
}
