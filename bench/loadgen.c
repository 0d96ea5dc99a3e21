/* bench-loadgen: fills a topic with synthetic records for the benchmarks.
 *
 *   bench-loadgen -b BOOTSTRAP -t TOPIC -n COUNT [-p PARTITIONS] [-s SIZE]
 *                 [--kind json|words|zipf|keys|changelog] [--keys K]
 *                 [--partition-by index|key] [--compact]
 *
 * Kinds: json (100-byte orders), words (1,000-word vocabulary, uniform),
 * zipf (100,000 words, Zipf s=1.0), keys (K keys "k0".."k<K-1>", uniform),
 * changelog (record i is what a table's changelog holds after counting key
 * "k<i>" once: key "\"k<i>\"" (JSON), value "1"). For the keyed kinds the key
 * and the value are the same word, as a word-count input has them.
 *
 * --partition-by index (the default) spreads record i to partition
 * i % PARTITIONS. --partition-by key puts it where Kafka's default partitioner
 * (murmur2) puts its key, which a table needs: a table's rows live in the
 * partition of the event that wrote them, so a word spread round-robin would
 * end up counted in pieces, one per partition. For changelog the hash is over
 * the bare k<i>, the input key that would have produced that row, so a worker
 * later counting input keyed "k<i>" finds the row in the partition it reads.
 * --compact creates the topic with cleanup.policy=compact, as the runtime
 * creates changelogs.
 *
 * Every kind is generated from a fixed seed, so two runs with the same
 * arguments write byte-identical topics and a checker can recompute what it
 * expects without reading the input back. With -n 0 it only creates the topic,
 * which is how scripts/bench pre-creates output topics with the right
 * partition count.
 *
 * Prints one JSON line on stdout: {"messages":..,"failed":..,"seconds":..,
 * "msgs_per_sec":..,"librdkafka":".."} where seconds runs from the first produce
 * call to the last delivery report.
 * Exits non-zero if any message failed delivery. */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>

#define BENCH_NAME "bench-loadgen"
#include "common.h"

#define BENCH_WORDS_VOCAB 1000
#define BENCH_ZIPF_KEYS 100000
#define BENCH_DEFAULT_KEYS 1000000
#define BENCH_MAX_SIZE (1024 * 1024)
#define BENCH_SEED 0x5eed2024c0ffeeULL

enum bench_kind {
    BENCH_KIND_JSON,
    BENCH_KIND_WORDS,
    BENCH_KIND_ZIPF,
    BENCH_KIND_KEYS,
    BENCH_KIND_CHANGELOG
};

typedef struct bench_opts {
    const char *bootstrap;
    const char *topic;
    long long count;
    int partitions;
    size_t size;
    enum bench_kind kind;
    long long keys;
    int by_key;
    int compact;
} bench_opts;


typedef struct bench_gen {
    enum bench_kind kind;
    uint64_t rng;
    size_t size;
    long long keys;
    /* words: a shuffled block of the whole vocabulary, consumed in order, so
     * every complete block of 1,000 messages holds each word exactly once and
     * the expected counts are exact rather than merely expected. */
    unsigned perm[BENCH_WORDS_VOCAB];
    unsigned perm_pos;
    double *zipf_cdf;
    char key[32];
    size_t key_len;
    /* The bytes --partition-by key hashes: the key itself, except for
     * changelog records, whose key is the JSON encoding of this. */
    const char *pkey;
    size_t pkey_len;
    char *val;
    size_t val_len;
} bench_gen;


/* splitmix64: tiny, seedable and good enough for benchmark data; libc rand()
 * would make the data depend on the platform. */
static uint64_t bench_rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static double bench_rng_unit(uint64_t *s)
{
    return (double)(bench_rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

/* Word number idx written as `digits` syllables, one per decimal digit: the
 * mapping is a bijection, so word <-> index needs no table on either side. */
static size_t bench_word(char *dst, unsigned idx, int digits)
{
    static const char *const syl[10] = {"ba", "ke", "li", "mo", "nu", "ra", "se", "ti", "vo", "zu"};
    size_t n = (size_t)digits * 2;
    for (int d = digits - 1; d >= 0; d--) {
        memcpy(dst + (size_t)d * 2, syl[idx % 10], 2);
        idx /= 10;
    }
    dst[n] = '\0';
    return n;
}

static int bench_gen_init(bench_gen *g, enum bench_kind kind, size_t size, long long keys)
{
    if (!g) return -1;
    memset(g, 0, sizeof *g);
    g->kind = kind;
    g->size = size;
    g->keys = keys;
    g->rng = BENCH_SEED;
    g->val = malloc(size + 256);
    if (!g->val) goto fail;
    for (unsigned i = 0; i < BENCH_WORDS_VOCAB; i++)
        g->perm[i] = i;
    g->perm_pos = BENCH_WORDS_VOCAB;
    if (kind == BENCH_KIND_ZIPF) {
        g->zipf_cdf = malloc(sizeof(double) * BENCH_ZIPF_KEYS);
        if (!g->zipf_cdf) goto fail;
        double sum = 0.0;
        for (unsigned k = 0; k < BENCH_ZIPF_KEYS; k++) {
            sum += 1.0 / (double)(k + 1);
            g->zipf_cdf[k] = sum;
        }
        for (unsigned k = 0; k < BENCH_ZIPF_KEYS; k++)
            g->zipf_cdf[k] /= sum;
    }
    return 0;
fail:
    free(g->val);
    free(g->zipf_cdf);
    g->val = NULL;
    g->zipf_cdf = NULL;
    return -1;
}

static void bench_gen_free(bench_gen *g)
{
    if (!g) return;
    free(g->val);
    free(g->zipf_cdf);
    g->val = NULL;
    g->zipf_cdf = NULL;
}

static unsigned bench_zipf_pick(bench_gen *g)
{
    double u = bench_rng_unit(&g->rng);
    unsigned lo = 0, hi = BENCH_ZIPF_KEYS - 1;
    while (lo < hi) {
        unsigned mid = lo + (hi - lo) / 2;
        if (g->zipf_cdf[mid] < u)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Fills g->key/g->val with record number id. */
static void bench_gen_next(bench_gen *g, long long id)
{
    if (g->kind == BENCH_KIND_JSON) {
        unsigned account = (unsigned)(bench_rng_next(&g->rng) % 1000);
        unsigned amount = (unsigned)(bench_rng_next(&g->rng) % 100000);
        unsigned price = (unsigned)(bench_rng_next(&g->rng) % 10000) + 1;
        g->key_len = (size_t)snprintf(g->key, sizeof g->key, "a-%u", account);
        g->pkey = g->key;
        g->pkey_len = g->key_len;
        int n = snprintf(g->val, g->size + 256,
                         "{\"id\":%lld,\"account_id\":\"%s\",\"amount\":%u.%02u,"
                         "\"price\":%u.%02u,\"note\":\"",
                         id, g->key, amount / 100, amount % 100, price / 100, price % 100);
        size_t len = (size_t)n;
        /* The note pads the record to SIZE so payload size is a parameter of
         * the run, not an accident of the numbers drawn. */
        while (len + 2 < g->size) {
            g->val[len] = (char)('a' + (char)(len % 26));
            len++;
        }
        g->val[len++] = '"';
        g->val[len++] = '}';
        g->val_len = len;
        return;
    }
    g->pkey = g->key;
    if (g->kind == BENCH_KIND_KEYS) {
        unsigned long long n = bench_rng_next(&g->rng) % (unsigned long long)g->keys;
        g->key_len = (size_t)snprintf(g->key, sizeof g->key, "k%llu", n);
        g->pkey_len = g->key_len;
        memcpy(g->val, g->key, g->key_len);
        g->val_len = g->key_len;
        return;
    }
    if (g->kind == BENCH_KIND_CHANGELOG) {
        /* key = "\"k<id>\"": the pkey points inside it, past the quote. */
        g->key_len = (size_t)snprintf(g->key, sizeof g->key, "\"k%lld\"", id);
        g->pkey = g->key + 1;
        g->pkey_len = g->key_len - 2;
        g->val[0] = '1';
        g->val_len = 1;
        return;
    }
    unsigned idx;
    int digits;
    if (g->kind == BENCH_KIND_WORDS) {
        if (g->perm_pos == BENCH_WORDS_VOCAB) {
            for (unsigned i = BENCH_WORDS_VOCAB - 1; i > 0; i--) {
                unsigned j = (unsigned)(bench_rng_next(&g->rng) % (i + 1));
                unsigned t = g->perm[i];
                g->perm[i] = g->perm[j];
                g->perm[j] = t;
            }
            g->perm_pos = 0;
        }
        idx = g->perm[g->perm_pos++];
        digits = 3;
    } else {
        idx = bench_zipf_pick(g);
        digits = 5;
    }
    g->key_len = bench_word(g->key, idx, digits);
    g->pkey_len = g->key_len;
    memcpy(g->val, g->key, g->key_len);
    g->val_len = g->key_len;
}

static int bench_create_topic(rd_kafka_t *rk, const char *topic, int partitions, int compact)
{
    char err[512];
    int rc = -1;
    rd_kafka_NewTopic_t *nt = NULL;
    rd_kafka_AdminOptions_t *ao = NULL;
    rd_kafka_queue_t *q = NULL;
    rd_kafka_event_t *ev = NULL;

    if (!rk || !topic || partitions < 1) return -1;
    /* -1 replicas = the broker's default.replication.factor, so the same call
     * works on a one-broker dev cluster and a real one. */
    nt = rd_kafka_NewTopic_new(topic, partitions, -1, err, sizeof err);
    if (!nt) {
        fprintf(stderr, "bench-loadgen: new topic: %s\n", err);
        goto fail;
    }
    if (compact && rd_kafka_NewTopic_set_config(nt, "cleanup.policy", "compact")) goto fail;
    ao = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    if (!ao) goto fail;
    if (rd_kafka_AdminOptions_set_operation_timeout(ao, 30000, err, sizeof err) ||
        rd_kafka_AdminOptions_set_request_timeout(ao, 30000, err, sizeof err)) {
        fprintf(stderr, "bench-loadgen: admin options: %s\n", err);
        goto fail;
    }
    q = rd_kafka_queue_new(rk);
    if (!q) goto fail;
    rd_kafka_CreateTopics(rk, &nt, 1, ao, q);
    ev = rd_kafka_queue_poll(q, 60000);
    if (!ev) {
        fprintf(stderr, "bench-loadgen: create topic %s: no answer in 60 s\n", topic);
        goto fail;
    }
    if (rd_kafka_event_error(ev)) {
        fprintf(stderr, "bench-loadgen: create topic %s: %s\n", topic,
                rd_kafka_event_error_string(ev));
        goto fail;
    }
    const rd_kafka_CreateTopics_result_t *res = rd_kafka_event_CreateTopics_result(ev);
    size_t n = 0;
    const rd_kafka_topic_result_t **tr = res ? rd_kafka_CreateTopics_result_topics(res, &n) : NULL;
    for (size_t i = 0; i < n; i++) {
        rd_kafka_resp_err_t e = rd_kafka_topic_result_error(tr[i]);
        if (e && e != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
            const char *why = rd_kafka_topic_result_error_string(tr[i]);
            fprintf(stderr, "bench-loadgen: create topic %s: %s: %s\n", topic, rd_kafka_err2name(e),
                    why ? why : "");
            goto fail;
        }
    }
    rc = 0;
fail:
    if (ev) rd_kafka_event_destroy(ev);
    if (q) rd_kafka_queue_destroy(q);
    if (ao) rd_kafka_AdminOptions_destroy(ao);
    if (nt) rd_kafka_NewTopic_destroy(nt);
    return rc;
}

/* Waits until every partition of the topic has a leader and returns how many
 * there are: a freshly created topic is not produceable at once, and an
 * existing topic may have a different count than asked for. */
static int bench_wait_partitions(rd_kafka_t *rk, rd_kafka_topic_t *rkt, double timeout_s)
{
    if (!rk || !rkt) return -1;
    double deadline = bench_now() + timeout_s;
    while (bench_now() < deadline) {
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, rkt, &md, 5000);
        int cnt = -1;
        if (!e && md && md->topic_cnt == 1 && !md->topics[0].err &&
            md->topics[0].partition_cnt > 0) {
            cnt = md->topics[0].partition_cnt;
            for (int i = 0; i < md->topics[0].partition_cnt; i++)
                if (md->topics[0].partitions[i].leader < 0) cnt = -1;
        }
        if (md) rd_kafka_metadata_destroy(md);
        if (cnt > 0) return cnt;
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return -1;
}

static void bench_usage(FILE *f)
{
    fprintf(f, "usage: bench-loadgen -b BOOTSTRAP -t TOPIC -n COUNT [-p PARTITIONS] "
               "[-s SIZE] [--kind json|words|zipf|keys|changelog] [--keys K]\n"
               "                     [--partition-by index|key] [--compact]\n");
}

static int bench_parse(int argc, char **argv, bench_opts *o)
{
    static const struct option longopts[] = {{"kind", required_argument, NULL, 'k'},
                                             {"keys", required_argument, NULL, 'K'},
                                             {"partition-by", required_argument, NULL, 'P'},
                                             {"compact", no_argument, NULL, 'C'},
                                             {"help", no_argument, NULL, 'h'},
                                             {0, 0, 0, 0}};
    char *end;
    int c;

    if (!o) return -1;
    *o = (bench_opts){.count = -1,
                      .partitions = 8,
                      .size = 100,
                      .kind = BENCH_KIND_JSON,
                      .keys = BENCH_DEFAULT_KEYS,
                      .by_key = -1};
    while ((c = getopt_long(argc, argv, "b:t:n:p:s:k:h", longopts, NULL)) != -1) {
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
            if (errno || *end || o->count < 0) return -1;
            break;
        case 'p': {
            long p = strtol(optarg, &end, 10);
            if (*end || p < 1 || p > 100000) return -1;
            o->partitions = (int)p;
            break;
        }
        case 's': {
            long s = strtol(optarg, &end, 10);
            if (*end || s < 1 || s > BENCH_MAX_SIZE) return -1;
            o->size = (size_t)s;
            break;
        }
        case 'k':
            if (!strcmp(optarg, "json"))
                o->kind = BENCH_KIND_JSON;
            else if (!strcmp(optarg, "words"))
                o->kind = BENCH_KIND_WORDS;
            else if (!strcmp(optarg, "zipf"))
                o->kind = BENCH_KIND_ZIPF;
            else if (!strcmp(optarg, "keys"))
                o->kind = BENCH_KIND_KEYS;
            else if (!strcmp(optarg, "changelog"))
                o->kind = BENCH_KIND_CHANGELOG;
            else
                return -1;
            break;
        case 'K':
            errno = 0;
            o->keys = strtoll(optarg, &end, 10);
            if (errno || *end || o->keys < 1) return -1;
            break;
        case 'P':
            if (!strcmp(optarg, "index"))
                o->by_key = 0;
            else if (!strcmp(optarg, "key"))
                o->by_key = 1;
            else
                return -1;
            break;
        case 'C':
            o->compact = 1;
            break;
        case 'h':
            bench_usage(stdout);
            exit(0);
        default:
            return -1;
        }
    }
    if (optind != argc || !o->bootstrap || !o->topic || o->count < 0) return -1;
    /* A changelog spread round-robin would not be one a table could have
     * written, so it is keyed unless asked otherwise. */
    if (o->by_key < 0) o->by_key = o->kind == BENCH_KIND_CHANGELOG;
    return 0;
}

int main(int argc, char **argv)
{
    bench_opts o;
    bench_stats st = {0};
    bench_gen gen;
    int gen_ok = 0;
    int rc = 1;
    char err[512];
    rd_kafka_conf_t *conf = NULL;
    rd_kafka_t *rk = NULL;
    rd_kafka_topic_t *rkt = NULL;

    if (bench_parse(argc, argv, &o)) {
        bench_usage(stderr);
        return 2;
    }
    if (bench_gen_init(&gen, o.kind, o.size, o.keys)) {
        fprintf(stderr, "bench-loadgen: out of memory\n");
        goto fail;
    }
    gen_ok = 1;

    conf = rd_kafka_conf_new();
    /* Throughput settings: the loader must never be the bottleneck of a run,
     * and acks=all + idempotence makes "delivered" mean "in the log once". */
    if (bench_conf_set(conf, "bootstrap.servers", o.bootstrap) ||
        bench_conf_set(conf, "client.id", "bench-loadgen") ||
        bench_conf_set(conf, "linger.ms", "5") ||
        bench_conf_set(conf, "batch.num.messages", "100000") ||
        bench_conf_set(conf, "queue.buffering.max.messages", "1000000") ||
        bench_conf_set(conf, "acks", "all") || bench_conf_set(conf, "enable.idempotence", "true"))
        goto fail;
    rd_kafka_conf_set_opaque(conf, &st);
    rd_kafka_conf_set_dr_msg_cb(conf, bench_dr_cb);
    rd_kafka_conf_set_error_cb(conf, bench_error_cb);
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (!rk) {
        fprintf(stderr, "bench-loadgen: %s\n", err);
        goto fail;
    }
    conf = NULL; /* owned by rk now */

    if (bench_create_topic(rk, o.topic, o.partitions, o.compact)) goto fail;
    rkt = rd_kafka_topic_new(rk, o.topic, NULL);
    if (!rkt) {
        fprintf(stderr, "bench-loadgen: topic %s: %s\n", o.topic,
                rd_kafka_err2str(rd_kafka_last_error()));
        goto fail;
    }
    int parts = bench_wait_partitions(rk, rkt, 60.0);
    if (parts < 0) {
        fprintf(stderr, "bench-loadgen: topic %s has no leaders after 60 s\n", o.topic);
        goto fail;
    }
    if (parts != o.partitions)
        fprintf(stderr, "bench-loadgen: topic %s already has %d partitions (asked for %d)\n",
                o.topic, parts, o.partitions);

    double start = bench_now();
    for (long long i = 0; i < o.count && !st.fatal; i++) {
        bench_gen_next(&gen, i);
        int32_t part = o.by_key ? rd_kafka_msg_partitioner_murmur2(rkt, gen.pkey, gen.pkey_len,
                                                                   parts, NULL, NULL)
                                : (int32_t)(i % parts);
        while (rd_kafka_produce(rkt, part, RD_KAFKA_MSG_F_COPY, gen.val, gen.val_len, gen.key,
                                gen.key_len, NULL) == -1) {
            rd_kafka_resp_err_t e = rd_kafka_last_error();
            if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
                fprintf(stderr, "bench-loadgen: produce: %s\n", rd_kafka_err2str(e));
                goto fail;
            }
            /* The local queue is full: serving delivery reports is what frees
             * room, so wait on them rather than spin. */
            rd_kafka_poll(rk, 10);
        }
        if ((i & 1023) == 0) rd_kafka_poll(rk, 0);
    }
    /* message.timeout.ms bounds every message's life, so this ends even if the
     * broker goes away. */
    while (rd_kafka_outq_len(rk) > 0 && !st.fatal)
        rd_kafka_flush(rk, 1000);
    if (st.fatal) goto fail;

    double secs = st.delivered + st.failed > 0 ? st.last_dr - start : 0.0;
    double rate = secs > 0 ? (double)st.delivered / secs : 0.0;
    /* The version is the library actually linked, which is what the results
     * should name, not whatever headers the build saw. */
    printf("{\"messages\":%lld,\"failed\":%lld,\"seconds\":%.3f,\"msgs_per_sec\":%.0f,"
           "\"librdkafka\":\"%s\"}\n",
           st.delivered, st.failed, secs, rate, rd_kafka_version_str());
    fflush(stdout);
    fprintf(stderr, "bench-loadgen: %lld messages to %s in %.3f s: %.0f msgs/s\n", st.delivered,
            o.topic, secs, rate);
    if (st.failed) {
        fprintf(stderr, "bench-loadgen: %lld deliveries failed, first: %s\n", st.failed,
                rd_kafka_err2str(st.first_err));
        goto fail;
    }
    if (st.delivered != o.count) goto fail;
    rc = 0;
fail:
    if (rkt) rd_kafka_topic_destroy(rkt);
    if (rk) rd_kafka_destroy(rk);
    if (conf) rd_kafka_conf_destroy(conf);
    if (gen_ok) bench_gen_free(&gen);
    return rc;
}
