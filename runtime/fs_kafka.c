/* fs_kafka: the librdkafka transport — consumer, producer, the embedded mock
 * cluster (memory://), rebalances, and the at-least-once checkpoint:
 * snapshot committable offsets, wait until every message produced before the
 * snapshot is delivered, then commit. librdkafka's threads never touch Lua:
 * they only write to eventfds that wake the loop. */
#include <ctype.h>
#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "fs_log.h"
#include "fs_rt.h"
#include "fs_table.h"
#include <librdkafka/rdkafka_mock.h>

#define FS_CONSUME_BATCH 1024

static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    int lv = level <= 3 ? FS_LOG_ERROR : level <= 4 ? FS_LOG_WARN : level <= 6 ? FS_LOG_INFO
                                                                              : FS_LOG_DEBUG;
    /* librdkafka is chatty at notice level about things the worker handles itself. */
    if (lv == FS_LOG_INFO) lv = FS_LOG_DEBUG;
    if (lv >= fs_log_level) fs_log(lv, "kafka %s: %s", fac, buf);
}

static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    fs_rt *rt = opaque;
    (void)rk;
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char buf[512];
        rd_kafka_fatal_error(rk, buf, sizeof buf);
        fs_rt_fatal(rt, "kafka fatal error: %s", buf);
        return;
    }
    fs_warn("kafka: %s: %s", rd_kafka_err2name(err), reason);
}

static int conf_set(rd_kafka_conf_t *c, const char *k, const char *v, char *err, size_t errlen)
{
    if (rd_kafka_conf_set(c, k, v, err, errlen) != RD_KAFKA_CONF_OK) return -1;
    return 0;
}

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    fs_rt *rt = opaque;
    (void)rk;
    /* Opaque: 1/2 = a send of epoch parity 0/1, 3/4 = the same but best effort
     * (a dead letter: its failure is logged, not fatal), else a waiter. */
    uintptr_t tag = (uintptr_t)m->_private;
    fs_waiter *w = tag > 4 ? (fs_waiter *)m->_private : NULL;
    int best_effort = tag == 3 || tag == 4;
    int epoch = w ? w->epoch : (int)((tag - 1) & 1);
    rt->inflight[epoch & 1]--;
    fs_topic *t = m->rkt ? rd_kafka_topic_opaque(m->rkt) : NULL;
    if (t && t->table && !m->err && m->partition < t->table->partitions &&
        m->offset + 1 > t->table->parts[m->partition].cl_next)
        t->table->parts[m->partition].cl_next = m->offset + 1;
    if (m->err) {
        rt->delivery_errors++;
        if (best_effort)
            fs_error("could not deliver a dead letter to %s[%d] (%zu bytes): %s — it is lost; "
                     "the original is still on its topic",
                     rd_kafka_topic_name(m->rkt), (int)m->partition, m->len,
                     rd_kafka_err2str(m->err));
        else if (!w)
            fs_rt_fatal(rt,
                        "delivery to %s failed: %s — stopping without committing, so the "
                        "input that produced it is processed again on restart",
                        rd_kafka_topic_name(m->rkt), rd_kafka_err2str(m->err));
    }
    if (w) {
        w->err = m->err;
        w->partition = m->partition;
        w->offset = m->offset;
        if (w->co) fs_sched_ready(w->co);
        else free(w);
    }
}

static void commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                      rd_kafka_topic_partition_list_t *offsets, void *opaque)
{
    (void)rk;
    (void)opaque;
    if (err == RD_KAFKA_RESP_ERR__NO_OFFSET) return;
    if (err) {
        fs_warn("offset commit failed: %s (the next checkpoint retries)", rd_kafka_err2str(err));
        return;
    }
    for (int i = 0; offsets && i < offsets->cnt; i++)
        if (offsets->elems[i].err)
            fs_warn("offset commit of %s[%d] failed: %s", offsets->elems[i].topic,
                    (int)offsets->elems[i].partition, rd_kafka_err2str(offsets->elems[i].err));
}

/* Commits the committable offset of every assigned partition (or only those in
 * `only`) that moved since the last commit. */
static int commit_parts(fs_rt *rt, rd_kafka_topic_partition_list_t *only, int use_snap, int sync)
{
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(16);
    for (int i = 0; i < rt->ntopics; i++) {
        fs_topic *t = rt->topics[i];
        for (int j = 0; j < t->nparts; j++) {
            fs_part *p = t->parts[j];
            if (!p || !p->assigned) continue;
            if (only && !rd_kafka_topic_partition_list_find(only, t->name, p->id)) continue;
            int64_t off = use_snap ? p->snap : fs_part_committable(p);
            if (off < 0 || off <= p->committed) continue;
            rd_kafka_topic_partition_list_add(list, t->name, p->id)->offset = off;
            p->committed = off;
        }
    }
    int rc = 0;
    if (list->cnt) {
        rt->commits++;
        fs_debug("committing %d partition offsets", list->cnt);
        rd_kafka_resp_err_t err = rd_kafka_commit(rt->consumer, list, !sync);
        if (err && sync) {
            fs_warn("offset commit failed: %s", rd_kafka_err2str(err));
            rc = -1;
        }
    }
    rd_kafka_topic_partition_list_destroy(list);
    return rc;
}

static int same_topics(const rd_kafka_topic_partition_list_t *a, const rd_kafka_topic_partition_list_t *b);

/* How long start-up may wait for the broker's metadata, and again for topics
 * it creates to appear in it (DESIGN: the loop never blocks; this runs before
 * the loop does, or while a reload has paused it). */
#define FS_METADATA_MS 10000

static int table_input(fs_rt *rt, const rd_kafka_topic_partition_list_t *parts, int i)
{
    fs_topic *t = fs_topic_find(rt, parts->elems[i].topic);
    return t && t->table_input;
}

/* Hands the consumer the assignment whose tables are recovered. */
static void assign_now(fs_rt *rt)
{
    rd_kafka_topic_partition_list_t *parts = rt->assigning;
    rd_kafka_t *rk = rt->consumer;
    rt->assigning = NULL;
    /* Ask where each partition resumes so a gap (log start moved past it) is reported. */
    rd_kafka_topic_partition_list_t *c = rd_kafka_topic_partition_list_copy(parts);
    if (rd_kafka_committed(rk, c, 10000)) {
        for (int i = 0; i < c->cnt; i++) c->elems[i].offset = RD_KAFKA_OFFSET_INVALID;
    }
    for (int i = 0; i < c->cnt; i++) {
        fs_topic *t = fs_topic_find(rt, c->elems[i].topic);
        fs_part *p = t ? fs_part_get(t, c->elems[i].partition) : NULL;
        int64_t committed = c->elems[i].offset >= 0 ? c->elems[i].offset : -1;
        /* LMDB may be ahead of the commit (killed between the two): resume there. */
        int64_t stored = t ? fs_tables_resume_offset(rt, t->name, c->elems[i].partition) : -1;
        if (stored > committed) {
            fs_info("%s[%d]: resuming at %lld from local state (committed: %lld)", t->name,
                    (int)c->elems[i].partition, (long long)stored, (long long)committed);
            parts->elems[i].offset = stored;
            committed = stored;
        }
        if (p) fs_part_assign(p, committed);
    }
    rd_kafka_topic_partition_list_destroy(c);
    rd_kafka_assign(rk, parts);
    /* librdkafka keeps a partition's pause flag across unassign/assign: a
     * partition paused by back-pressure before the rebalance and given back
     * to this worker would never be fetched again. A new assignment starts
     * fetching everything it holds. */
    rd_kafka_resume_partitions(rk, parts);
    rd_kafka_topic_partition_list_destroy(parts);
    rt->paused = 0;
    rt->consume_pending = 1;
}

/* fs_tables_hold's done. A failure (fatal) or a stop leaves the assignment
 * waiting: the worker stops, and assign_cancel answers it. */
static void assign_held(void *data, int32_t p, int rc)
{
    fs_rt *rt = data;
    (void)p;
    if (!rt->assigning) return;
    if (rc) rt->assign_failed = 1;
    if (--rt->assign_waits == 0 && !rt->assign_failed) assign_now(rt);
}

/* Drops an assignment still waiting for its tables: their replays stop (LMDB
 * keeps what they wrote; the next owner resumes from there). */
static void assign_cancel(fs_rt *rt)
{
    rd_kafka_topic_partition_list_t *a = rt->assigning;
    if (!a) return;
    rt->assigning = NULL;
    for (int i = 0; i < a->cnt; i++) {
        int seen = 0;
        for (int j = 0; j < i; j++) seen |= a->elems[j].partition == a->elems[i].partition;
        if (!seen && table_input(rt, a, i)) fs_tables_release(rt, a->elems[i].partition);
    }
    rd_kafka_topic_partition_list_destroy(a);
}

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    fs_rt *rt = opaque;
    (void)rk; /* rt->consumer */
    char names[1024];
    size_t n = 0;
    names[0] = 0;
    for (int i = 0; i < parts->cnt && n < sizeof names - 64; i++)
        n += (size_t)snprintf(names + n, sizeof names - n, "%s%s[%d]", i ? " " : "",
                              parts->elems[i].topic, (int)parts->elems[i].partition);
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        fs_info("assigned %d partitions: %s", parts->cnt, names);
        /* Tables follow their partitions: they are opened and recovered (work the
         * loop drives) before the consumer gets the partitions, so no event of a
         * partition reaches an agent before its tables are whole. */
        assign_cancel(rt);
        rt->assigning = rd_kafka_topic_partition_list_copy(parts);
        rt->assign_waits = 1; /* held until every hold below is asked */
        rt->assign_failed = 0;
        for (int i = 0; i < parts->cnt; i++) {
            int32_t p = parts->elems[i].partition;
            if (!table_input(rt, parts, i)) continue; /* forwarders' inputs, the leader topic */
            int seen = 0;
            for (int j = 0; j < i; j++) seen |= parts->elems[j].partition == p && table_input(rt, parts, j);
            if (seen) continue;
            rt->assign_waits++;
            if (fs_tables_hold(rt, p, assign_held, rt)) {
                rt->assign_waits--;
                rt->assign_failed = 1;
                break;
            }
        }
        assign_held(rt, -1, 0);
    } else {
        /* Agents may be in the middle of an event of these partitions (a table
         * write, a send, a sleep). Committing now would count that event twice
         * when the next owner replays it, so the unassignment waits — librdkafka
         * holds the rebalance until rd_kafka_assign(NULL) — while a fence stops
         * agents from starting further events of these partitions. */
        fs_info("revoking %d partitions: %s", parts->cnt, names);
        assign_cancel(rt);
        if (rt->revoke) rd_kafka_topic_partition_list_destroy(rt->revoke);
        rt->revoke = rd_kafka_topic_partition_list_copy(parts);
        rt->revoke_deadline = fs_loop_now(&rt->loop) + 10000;
        for (int i = 0; i < parts->cnt; i++) {
            fs_topic *t = fs_topic_find(rt, parts->elems[i].topic);
            fs_part *p = t ? fs_part_get(t, parts->elems[i].partition) : NULL;
            if (!p) continue;
            p->revoking = 1;
            fs_part_drop_queued(rt, p);
        }
        fs_fence_streams(rt, 1);
        fs_kafka_revoke_poll(rt);
    }
}

void fs_kafka_revoke_poll(fs_rt *rt)
{
    if (!rt->revoke) return;
    fs_sync_acks(rt);
    if (!fs_streams_clear(rt)) {
        /* Once the worker is closing no agent runs again: waiting would block
         * rd_kafka_consumer_close, which serves this revocation, forever. */
        if (fs_loop_now(&rt->loop) < rt->revoke_deadline && !rt->stopped && !rt->closing) return;
        fs_warn("agents still busy with events of revoked partitions after 10 s; revoking anyway "
                "(those events will be processed again by the next owner)");
    }
    rd_kafka_topic_partition_list_t *parts = rt->revoke;
    rt->revoke = NULL;
    fs_fence_streams(rt, 0); /* drops what agents had not started */
    fs_tables_flush(rt, 1);
    /* Outputs of acknowledged events must be delivered before their offsets commit. */
    if (rd_kafka_flush(rt->producer, 30000))
        fs_warn("producer flush timed out during rebalance; not committing");
    else if (!rt->fatal && fs_tables_write(rt, 0) == 0)
        commit_parts(rt, parts, 0, 1);
    for (int i = 0; i < parts->cnt; i++) {
        int32_t p = parts->elems[i].partition;
        int seen = 0;
        for (int j = 0; j < i; j++) seen |= parts->elems[j].partition == p;
        if (!seen) fs_tables_release(rt, p);
    }
    for (int i = 0; i < parts->cnt; i++) {
        fs_topic *t = fs_topic_find(rt, parts->elems[i].topic);
        fs_part *p = t ? fs_part_get(t, parts->elems[i].partition) : NULL;
        if (p) fs_part_revoke(rt, p);
    }
    rd_kafka_topic_partition_list_destroy(parts);
    rt->ckpt_active = 0;
    rd_kafka_assign(rt->consumer, NULL);
    rt->consume_pending = 1;
    fs_info("revocation done");
}

/* memory:// (rt->self_assign): the assignment the group would give its only
 * member — every partition of every subscribed topic — handed to the same
 * rebalance callback a JoinGroup would call, so tables, recovery, resume
 * offsets and leadership (partition 0 of the leader topic) work unchanged.
 * Offsets still go to the embedded broker's coordinator: it takes commits
 * from a consumer that never joined (no group exists, so no member or
 * generation is checked), as Kafka does for a simple consumer. */
static void self_assign_now(fs_rt *rt)
{
    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(16);
    for (int i = 0; rt->self_subs && i < rt->self_subs->cnt; i++) {
        fs_topic *t = fs_topic_find(rt, rt->self_subs->elems[i].topic);
        for (int p = 0; t && p < t->partitions; p++)
            rd_kafka_topic_partition_list_add(parts, t->name, p)->offset = RD_KAFKA_OFFSET_INVALID;
    }
    fs_info("memory://: sole member of group %s, assigning itself %d partitions (no JoinGroup)",
            rt->group, parts->cnt);
    /* A subscription makes the consumer ask for its topics' metadata; an
     * assignment does not, and a partition without a known leader waits for
     * librdkafka's 1 s offset-query retry. Asking now (a local broker answers
     * in about a millisecond) lets every partition start fetching at once. */
    const struct rd_kafka_metadata *md = NULL;
    if (parts->cnt && !rd_kafka_metadata(rt->consumer, 1, NULL, &md, FS_METADATA_MS) && md)
        rd_kafka_metadata_destroy(md);
    if (parts->cnt) rebalance_cb(rt->consumer, RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS, parts, rt);
    rd_kafka_topic_partition_list_destroy(parts);
}

/* A new self-assigned subscription: revoke everything held (the checkpoint and
 * table release a group rebalance would do; eager, as the group's
 * range/roundrobin protocol is), then assign the new set. Called from the
 * loop; returns while agents still finish events of revoked partitions and is
 * called again once the revocation is done. */
static void self_reassign(fs_rt *rt)
{
    assign_cancel(rt);
    rd_kafka_topic_partition_list_t *a = NULL;
    if (rd_kafka_assignment(rt->consumer, &a) || !a) return;
    if (a->cnt) rebalance_cb(rt->consumer, RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS, a, rt);
    rd_kafka_topic_partition_list_destroy(a);
    if (rt->revoke) return;
    rt->self_pending = 0;
    self_assign_now(rt);
}

/* Self-assignment's rd_kafka_subscribe: records the topics, and the loop
 * assigns them. Returns 1 when the topics changed (no subscription yet counts
 * as an empty one, as librdkafka's does). */
static int self_subscribe(fs_rt *rt, rd_kafka_topic_partition_list_t *want)
{
    if (rt->self_subs ? same_topics(want, rt->self_subs) : want->cnt == 0) return 0;
    if (rt->self_subs) rd_kafka_topic_partition_list_destroy(rt->self_subs);
    rt->self_subs = rd_kafka_topic_partition_list_copy(want);
    rt->self_pending = 1;
    rt->subscribed = 1;
    rt->consume_pending = 1;
    return 1;
}

static void wake_cb(fs_io *io, uint32_t events)
{
    fs_rt *rt = io->data;
    uint64_t v;
    (void)events;
    if (read(io->fd, &v, sizeof v) < 0 && errno != EAGAIN) fs_warn("eventfd read: %s", strerror(errno));
    if (io == &rt->cio) rt->consume_pending = 1;
    else if (io == &rt->tio) rt->tail_pending = 1;
    else rt->produce_pending = 1;
}

int fs_kafka_watch_queue(fs_rt *rt, rd_kafka_queue_t *q, int *fd, fs_io *io)
{
    *fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (*fd < 0) return -1;
    static const char one[8] = {1, 0, 0, 0, 0, 0, 0, 0};
    rd_kafka_queue_io_event_enable(q, *fd, one, sizeof one);
    io->fd = *fd;
    io->cb = wake_cb;
    io->data = rt;
    return fs_io_add(&rt->loop, io, EPOLLIN);
}

/* A consumer of this worker's cluster. The group consumer (group == rt->group)
 * gets the rebalance and commit callbacks; others (changelog recovery) are
 * assign-only and read committed data. */
rd_kafka_t *fs_kafka_new_consumer(fs_rt *rt, const char *group, char *err, size_t errlen)
{
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    int main_group = strcmp(group, rt->group) == 0;
    rd_kafka_conf_set_opaque(c, rt);
    rd_kafka_conf_set_log_cb(c, log_cb);
    rd_kafka_conf_set_error_cb(c, error_cb);
    if (main_group) {
        rd_kafka_conf_set_rebalance_cb(c, rebalance_cb);
        rd_kafka_conf_set_offset_commit_cb(c, commit_cb);
    }
    if (conf_set(c, "bootstrap.servers", rt->broker, err, errlen) ||
        conf_set(c, "group.id", group, err, errlen) ||
        conf_set(c, "client.id", group, err, errlen) ||
        conf_set(c, "enable.auto.commit", "false", err, errlen) ||
        conf_set(c, "enable.auto.offset.store", "false", err, errlen) ||
        conf_set(c, "auto.offset.reset", "earliest", err, errlen) ||
        conf_set(c, "isolation.level", "read_committed", err, errlen) ||
        conf_set(c, "enable.partition.eof", main_group ? "false" : "true", err, errlen) ||
        /* librdkafka prefetches up to 64 MiB by default; the worker queues its own
         * events too (max_queued), so 16 MiB keeps memory down without starving it. */
        conf_set(c, "queued.max.messages.kbytes", "16384", err, errlen) ||
        (main_group && (conf_set(c, "allow.auto.create.topics", "true", err, errlen) ||
                        conf_set(c, "session.timeout.ms", "6000", err, errlen) ||
                        conf_set(c, "heartbeat.interval.ms", "1500", err, errlen) ||
                        conf_set(c, "partition.assignment.strategy", "range,roundrobin", err,
                                 errlen)))) {
        rd_kafka_conf_destroy(c);
        return NULL;
    }
    /* librdkafka's mock broker answers a Fetch that finds no data only when
     * fetch.wait.max.ms (500 ms by default) has passed, even if data arrived
     * meanwhile: on the embedded broker every hop through a topic, and every
     * reload, would wait that long. */
    /* Changelog recovery reads one partition after another up to its end: the
     * fetch left waiting at one's end must not hold the next one up for 500 ms. */
    if ((rt->embedded || !main_group) && conf_set(c, "fetch.wait.max.ms", "50", err, errlen)) {
        rd_kafka_conf_destroy(c);
        return NULL;
    }
    /* FSTREAM_KAFKA_DEBUG=cgrp,fetch,...: librdkafka's own debug contexts (log level debug). */
    const char *dbg = getenv("FSTREAM_KAFKA_DEBUG");
    if (dbg && *dbg && conf_set(c, "debug", dbg, err, errlen)) {
        rd_kafka_conf_destroy(c);
        return NULL;
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, c, err, errlen);
    if (!rk) rd_kafka_conf_destroy(c);
    return rk;
}

#define URL_FORMS "memory:// or kafka://HOST[:PORT][,HOST[:PORT]...]"

/* One HOST[:PORT] of a kafka:// URL, [start, end): a name or IPv4 address, or
 * an IPv6 address in brackets; a port from 1 to 65535 (librdkafka's default,
 * 9092, when there is none). NULL when fine, else what is wrong. */
static const char *check_hostport(const char *s, const char *end, char *why, size_t whylen)
{
    const char *h = s, *colon = NULL;
    if (s < end && *s == '[') {
        const char *close = memchr(s, ']', (size_t)(end - s));
        if (!close || close == s + 1) return "an IPv6 address needs its closing ']'";
        for (const char *q = s + 1; q < close; q++)
            if (!isxdigit((unsigned char)*q) && *q != ':' && *q != '.')
                return "that is not an IPv6 address";
        if (close + 1 < end && close[1] != ':') return "']' must be followed by :PORT";
        colon = close + 1 < end ? close + 1 : NULL;
    } else {
        for (const char *q = s; q < end; q++) {
            if (*q == ':') {
                colon = q;
                break;
            }
            if (!isalnum((unsigned char)*q) && *q != '.' && *q != '-' && *q != '_') {
                snprintf(why, whylen, "'%c' cannot be part of a host name", *q);
                return why;
            }
        }
        if ((colon ? colon : end) == h) return "a host is missing";
    }
    if (!colon) return NULL;
    long port = 0;
    const char *q = colon + 1;
    if (q == end) return "the port after ':' is missing";
    for (; q < end; q++) {
        if (!isdigit((unsigned char)*q) || port > 65535)
            return "the port must be a number from 1 to 65535";
        port = port * 10 + (*q - '0');
    }
    if (port < 1 || port > 65535) return "the port must be a number from 1 to 65535";
    return NULL;
}

int fs_broker_url_check(const char *url, const char **bootstrap, char *err, size_t errlen)
{
    char why[64];
    const char *bad = NULL;
    if (strncmp(url, "memory://", 9) == 0) {
        if (url[9]) bad = "memory:// takes nothing after it";
        else *bootstrap = NULL;
    } else if (strncmp(url, "kafka://", 8) == 0) {
        const char *s = url + 8;
        if (!*s) bad = "no host after kafka://";
        while (!bad) {
            const char *end = strchr(s, ',');
            if (!end) end = s + strlen(s);
            bad = check_hostport(s, end, why, sizeof why);
            if (!*end) break;
            s = end + 1;
        }
        if (!bad) *bootstrap = url + 8;
    } else {
        bad = "use " URL_FORMS;
    }
    if (!bad) return 0;
    snprintf(err, errlen, "bad broker URL '%s': %s", url, bad);
    return -1;
}

int fs_kafka_open(fs_rt *rt, const char *broker, char *err, size_t errlen)
{
    char bootstrap[1024];
    rd_kafka_conf_t *c = NULL;
    const char *servers;
    if (fs_broker_url_check(broker, &servers, err, errlen)) return -1;
    if (!servers) {
        c = rd_kafka_conf_new();
        rd_kafka_conf_set_log_cb(c, log_cb);
        rt->mock_host = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, errlen);
        if (!rt->mock_host) goto fail; /* rd_kafka_new keeps conf only on success */
        c = NULL;
        rt->mock = rd_kafka_mock_cluster_new(rt->mock_host, 1);
        if (!rt->mock) {
            snprintf(err, errlen, "could not start the embedded broker");
            return -1;
        }
        snprintf(bootstrap, sizeof bootstrap, "%s", rd_kafka_mock_cluster_bootstraps(rt->mock));
        rt->embedded = 1;
        /* This broker lives and dies with this process: no other worker can
         * join its group, so the worker takes every partition itself rather
         * than wait out the mock coordinator's 3 s initial rebalance delay. */
        rt->self_assign = 1;
    } else {
        snprintf(bootstrap, sizeof bootstrap, "%s", servers);
    }
    rt->broker = strdup(bootstrap);

    c = rd_kafka_conf_new();
    rd_kafka_conf_set_opaque(c, rt);
    rd_kafka_conf_set_log_cb(c, log_cb);
    rd_kafka_conf_set_error_cb(c, error_cb);
    rd_kafka_conf_set_dr_msg_cb(c, dr_cb);
    if (conf_set(c, "bootstrap.servers", bootstrap, err, errlen) ||
        conf_set(c, "client.id", rt->group, err, errlen) ||
        conf_set(c, "linger.ms", "5", err, errlen) ||
        conf_set(c, "enable.idempotence", "true", err, errlen) ||
        conf_set(c, "partitioner", "murmur2_random", err, errlen) ||
        conf_set(c, "queue.buffering.max.messages", "1000000", err, errlen) ||
        conf_set(c, "batch.num.messages", "10000", err, errlen) ||
        /* What the worker consumed it may have to copy (dead letters): let the
         * broker, not the client, decide what is too large. */
        conf_set(c, "message.max.bytes", "16777216", err, errlen))
        goto fail;
    rt->producer = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, errlen);
    if (!rt->producer) goto fail;
    c = NULL;

    rt->consumer = fs_kafka_new_consumer(rt, rt->group, err, errlen);
    if (!rt->consumer) return -1;
    rd_kafka_poll_set_consumer(rt->consumer);
    rt->cq = rd_kafka_queue_get_consumer(rt->consumer);
    rt->pq = rd_kafka_queue_get_main(rt->producer);
    if (fs_kafka_watch_queue(rt, rt->cq, &rt->cfd, &rt->cio) ||
        fs_kafka_watch_queue(rt, rt->pq, &rt->pfd, &rt->pio)) {
        snprintf(err, errlen, "eventfd: %s", strerror(errno));
        return -1;
    }
    return 0;
fail:
    if (c) rd_kafka_conf_destroy(c);
    return -1;
}

/* Producer handle of a topic: a copy of the producer's defaults (the murmur2
 * partitioner among them), plus the topic as opaque so delivery reports find it. */
static void open_topic(fs_rt *rt, fs_topic *t)
{
    rd_kafka_topic_conf_t *tc = rd_kafka_default_topic_conf_dup(rt->producer);
    rd_kafka_topic_conf_set_opaque(tc, t);
    t->rkt = rd_kafka_topic_new(rt->producer, t->name, tc);
}

/* What the worker's agents read: every topic with an open subscriber. */
static rd_kafka_topic_partition_list_t *subscription_of(fs_rt *rt)
{
    rd_kafka_topic_partition_list_t *subs = rd_kafka_topic_partition_list_new(rt->ntopics);
    for (int i = 0; i < rt->ntopics; i++) {
        fs_topic *t = rt->topics[i];
        int consumed = 0;
        for (int j = 0; j < t->nsubs; j++) consumed |= !t->subs[j]->closed;
        if (consumed && !t->table) rd_kafka_topic_partition_list_add(subs, t->name, RD_KAFKA_PARTITION_UA);
    }
    return subs;
}

static int same_topics(const rd_kafka_topic_partition_list_t *a, const rd_kafka_topic_partition_list_t *b)
{
    if (a->cnt != b->cnt) return 0;
    for (int i = 0; i < a->cnt; i++) {
        int found = 0;
        for (int j = 0; j < b->cnt && !found; j++) found = strcmp(a->elems[i].topic, b->elems[j].topic) == 0;
        if (!found) return 0;
    }
    return 1;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Partition count of `name` in md, 0 when the broker does not know it. */
static int count_in(const struct rd_kafka_metadata *md, const char *name)
{
    for (int j = 0; md && j < md->topic_cnt; j++)
        if (strcmp(md->topics[j].topic, name) == 0)
            return md->topics[j].err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ? 0
                                                                                : md->topics[j].partition_cnt;
    return 0;
}

/* Creates the missing topics: directly on the embedded broker, with the admin
 * API elsewhere. A standalone embedded broker (`fstream-lua broker`) has no
 * CreateTopics; there the request fails and the broker auto-creates the topic
 * with its own count when its metadata is asked for. */
static void create_missing(fs_rt *rt, fs_topic **miss, int n)
{
    if (rt->mock) {
        for (int i = 0; i < n; i++) rd_kafka_mock_topic_create(rt->mock, miss[i]->name, miss[i]->partitions, 1);
        return;
    }
    if (rt->no_create_topics) return;
    char errstr[256];
    rd_kafka_NewTopic_t **nt = calloc((size_t)n, sizeof *nt);
    if (!nt) return;
    size_t k = 0;
    for (int i = 0; i < n; i++) {
        nt[k] = rd_kafka_NewTopic_new(miss[i]->name, miss[i]->partitions, -1, errstr, sizeof errstr);
        if (!nt[k]) { /* the wait for its metadata reports it */
            fs_warn("cannot create topic %s: %s", miss[i]->name, errstr);
            continue;
        }
        /* Changelogs keep the latest value per key: compaction, as Kafka Streams does. */
        if (miss[i]->compact) rd_kafka_NewTopic_set_config(nt[k], "cleanup.policy", "compact");
        k++;
    }
    if (!k) {
        free(nt);
        return;
    }
    rd_kafka_AdminOptions_t *o = rd_kafka_AdminOptions_new(rt->producer, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    rd_kafka_AdminOptions_set_request_timeout(o, 3000, errstr, sizeof errstr);
    rd_kafka_queue_t *q = rd_kafka_queue_new(rt->producer);
    rd_kafka_CreateTopics(rt->producer, nt, k, o, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, FS_METADATA_MS);
    const rd_kafka_CreateTopics_result_t *res = ev ? rd_kafka_event_CreateTopics_result(ev) : NULL;
    if (!ev || rd_kafka_event_error(ev)) {
        fs_info("could not create topics (%s); relying on the broker's auto-creation",
                ev ? rd_kafka_event_error_string(ev) : "no answer");
        /* Don't wait for that again at this start (tables' changelogs come next). */
        rt->no_create_topics = 1;
    } else if (res) {
        size_t cnt;
        const rd_kafka_topic_result_t **tr = rd_kafka_CreateTopics_result_topics(res, &cnt);
        for (size_t i = 0; i < cnt; i++) {
            rd_kafka_resp_err_t e = rd_kafka_topic_result_error(tr[i]);
            if (e == RD_KAFKA_RESP_ERR_NO_ERROR)
                fs_info("created topic %s", rd_kafka_topic_result_name(tr[i]));
            else if (e != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
                fs_warn("could not create topic %s: %s", rd_kafka_topic_result_name(tr[i]),
                        rd_kafka_topic_result_error_string(tr[i]));
        }
    }
    if (ev) rd_kafka_event_destroy(ev);
    rd_kafka_queue_destroy(q);
    rd_kafka_AdminOptions_destroy(o);
    rd_kafka_NewTopic_destroy_array(nt, k);
    free(nt);
}

int fs_kafka_resolve(fs_rt *rt, fs_topic **ts, int n, char *err, size_t errlen)
{
    if (rt->test) {
        for (int i = 0; i < n; i++) ts[i]->resolved = 1;
        return 0;
    }
    int todo = 0;
    for (int i = 0; i < n; i++) todo |= !ts[i]->resolved;
    if (!todo) return 0;
    /* Asking for every topic creates none (a request naming a topic may). */
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(rt->producer, 1, NULL, &md, FS_METADATA_MS);
    if (e) {
        snprintf(err, errlen, "no answer from the broker at %s within %d s (%s): is it running?",
                 rt->broker, FS_METADATA_MS / 1000, rd_kafka_err2str(e));
        return -1;
    }
    fs_topic **miss = calloc((size_t)n, sizeof *miss);
    if (!miss) {
        rd_kafka_metadata_destroy(md);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int nmiss = 0;
    for (int i = 0; i < n; i++) {
        if (ts[i]->resolved) continue;
        int cnt = count_in(md, ts[i]->name);
        if (cnt > 0) {
            if (cnt != ts[i]->partitions)
                fs_debug("topic %s has %d partitions (the app would create %d)", ts[i]->name, cnt,
                         ts[i]->partitions);
            ts[i]->partitions = cnt;
            ts[i]->resolved = 1;
        } else {
            int dup = 0; /* the same topic may be named twice */
            for (int j = 0; j < nmiss; j++) dup |= miss[j] == ts[i];
            if (!dup) miss[nmiss++] = ts[i];
        }
    }
    rd_kafka_metadata_destroy(md);
    int rc = 0;
    if (nmiss) create_missing(rt, miss, nmiss);
    /* A new topic's count as the broker has it (an auto-created one has the
     * broker's). Asking for one topic is also what makes a broker without
     * CreateTopics create it. */
    int64_t deadline = mono_ms() + FS_METADATA_MS;
    for (int i = 0; i < nmiss && rc == 0; i++) {
        fs_topic *t = miss[i];
        if (!t->rkt) open_topic(rt, t);
        for (;;) {
            int64_t left = deadline - mono_ms();
            md = NULL;
            e = rd_kafka_metadata(rt->producer, 0, t->rkt, &md, left > 100 ? (int)left : 100);
            int cnt = e ? 0 : count_in(md, t->name);
            if (md) rd_kafka_metadata_destroy(md);
            if (cnt > 0) {
                t->partitions = cnt;
                t->resolved = 1;
                break;
            }
            if (mono_ms() >= deadline) {
                snprintf(err, errlen, "topic %s does not exist and the broker at %s did not create it within %d s (%s)",
                         t->name, rt->broker, FS_METADATA_MS / 1000,
                         e ? rd_kafka_err2str(e) : "not in its metadata");
                rc = -1;
                break;
            }
            struct timespec pause = {0, 100 * 1000 * 1000};
            nanosleep(&pause, NULL);
        }
    }
    free(miss);
    return rc;
}

/* Every topic nobody resolved yet (declared by code that bypassed the app). */
static int resolve_all(fs_rt *rt, char *err, size_t errlen)
{
    return fs_kafka_resolve(rt, rt->topics, rt->ntopics, err, errlen);
}

int fs_kafka_start(fs_rt *rt, char *err, size_t errlen)
{
    if (resolve_all(rt, err, errlen)) return -1;
    if (rt->fatal || fs_tables_start_global(rt)) {
        if (rt->fatal) snprintf(err, errlen, "%s", rt->fatal_msg);
        else snprintf(err, errlen, "stopped while recovering global tables");
        return -1;
    }
    for (int i = 0; i < rt->ntopics; i++)
        if (!rt->topics[i]->rkt) open_topic(rt, rt->topics[i]);
    /* Agents run up to their first wait before the group is joined: one that
     * regroups its stream (group_by inside the agent) declares its repartition
     * topic now, and the first subscription has it. (Changing the subscription
     * while the join is in flight costs a rebalance, and a session timeout on
     * the embedded broker, which keeps the abandoned member.) */
    rt->prestart = 1;
    fs_sched_run_ready(rt);
    rt->prestart = 0;
    if (fs_kafka_open_topics(rt, err, errlen)) return -1;
    rd_kafka_topic_partition_list_t *subs = subscription_of(rt);
    int rc = 0;
    if (rt->self_assign) {
        self_subscribe(rt, subs);
    } else if (subs->cnt) {
        rd_kafka_resp_err_t e = rd_kafka_subscribe(rt->consumer, subs);
        if (e) {
            snprintf(err, errlen, "subscribe failed: %s", rd_kafka_err2str(e));
            rc = -1;
        } else {
            rt->subscribed = 1;
            rt->consume_pending = 1;
        }
    }
    rd_kafka_topic_partition_list_destroy(subs);
    return rc;
}

static fs_topic *topic_of(fs_rt *rt, rd_kafka_topic_t *rkt, rd_kafka_topic_t **last_rkt,
                          fs_topic **last)
{
    if (rkt == *last_rkt) return *last;
    *last_rkt = rkt;
    *last = fs_topic_find(rt, rd_kafka_topic_name(rkt));
    return *last;
}

void fs_kafka_poll(fs_rt *rt)
{
    if (rt->produce_pending) {
        rt->produce_pending = 0;
        rd_kafka_poll(rt->producer, 0);
    }
    if (rt->tail_pending) fs_tables_tail_poll(rt);
    if (rt->revoke) {
        fs_kafka_revoke_poll(rt);
        return;
    }
    if (!rt->subscribed || rt->stopping || rt->draining) return;
    if (rt->self_pending) {
        self_reassign(rt);
        if (rt->revoke) return;
    }
    /* Back-pressure pauses fetching, but the queue is still served: rebalances
     * and commit results arrive on it, and a worker that stops reading it would
     * never answer a rebalance. */
    int over = rt->queued >= rt->max_queued;
    if (over != rt->paused && (over || rt->queued < rt->max_queued / 2)) {
        rd_kafka_topic_partition_list_t *a = NULL;
        if (!rd_kafka_assignment(rt->consumer, &a) && a) {
            if (over) rd_kafka_pause_partitions(rt->consumer, a);
            else rd_kafka_resume_partitions(rt->consumer, a);
            rd_kafka_topic_partition_list_destroy(a);
        }
        rt->paused = over;
        fs_debug("%s fetching (%lld events queued)", over ? "paused" : "resumed", (long long)rt->queued);
    }
    if (!rt->consume_pending) return;
    rd_kafka_message_t *msgs[FS_CONSUME_BATCH];
    ssize_t n = rd_kafka_consume_batch_queue(rt->cq, 0, msgs, FS_CONSUME_BATCH);
    if (n < 0) {
        fs_warn("consume failed: %s", rd_kafka_err2str(rd_kafka_last_error()));
        return;
    }
    rt->consume_pending = n == FS_CONSUME_BATCH;
    if (n == 0) return;
    fs_batch *b = fs_batch_new((int)n, 0);
    if (!b) {
        fs_rt_fatal(rt, "out of memory");
        for (ssize_t i = 0; i < n; i++) rd_kafka_message_destroy(msgs[i]);
        return;
    }
    rd_kafka_topic_t *last_rkt = NULL;
    fs_topic *last = NULL;
    for (ssize_t i = 0; i < n; i++) {
        rd_kafka_message_t *m = msgs[i];
        if (m->err) {
            if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                fs_warn("consumer: %s%s%s", m->rkt ? rd_kafka_topic_name(m->rkt) : "",
                        m->rkt ? ": " : "", rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            continue;
        }
        fs_topic *t = topic_of(rt, m->rkt, &last_rkt, &last);
        if (!t) {
            rd_kafka_message_destroy(m);
            continue;
        }
        fs_dispatch(rt, b, m, t, rd_kafka_message_timestamp(m, NULL), NULL);
    }
    fs_batch_done(b);
}

int fs_produce(fs_rt *rt, fs_topic *t, int32_t partition, const void *key, size_t klen,
               const void *val, size_t vlen, rd_kafka_headers_t *hdrs, int64_t ts_ms,
               fs_waiter *w, char *err, size_t errlen)
{
    if (rt->test) {
        int32_t p;
        int64_t off;
        int rc = fs_memlog_append(rt, t, partition, key, klen, val, vlen, hdrs, ts_ms, 0, &p, &off);
        if (hdrs) rd_kafka_headers_destroy(hdrs);
        if (rc) {
            snprintf(err, errlen, "partition %d of %s does not exist", (int)partition, t->name);
            return -1;
        }
        if (w) {
            w->partition = p;
            w->offset = off;
            w->err = 0;
        }
        t->produced++;
        return 0;
    }
    int epoch = rt->epoch;
    void *opaque = (void *)(uintptr_t)(1 + (epoch & 1) + (rt->best_effort ? 2 : 0));
    if (w) {
        w->epoch = epoch;
        opaque = w;
    }
    for (int tries = 0;; tries++) {
        rd_kafka_resp_err_t e;
        if (hdrs)
            e = rd_kafka_producev(rt->producer, RD_KAFKA_V_RKT(t->rkt), RD_KAFKA_V_PARTITION(partition),
                                  RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                  RD_KAFKA_V_VALUE((void *)val, vlen), RD_KAFKA_V_KEY(key, klen),
                                  RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_TIMESTAMP(ts_ms),
                                  RD_KAFKA_V_OPAQUE(opaque), RD_KAFKA_V_END);
        else
            e = rd_kafka_producev(rt->producer, RD_KAFKA_V_RKT(t->rkt), RD_KAFKA_V_PARTITION(partition),
                                  RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                  RD_KAFKA_V_VALUE((void *)val, vlen), RD_KAFKA_V_KEY(key, klen),
                                  RD_KAFKA_V_TIMESTAMP(ts_ms), RD_KAFKA_V_OPAQUE(opaque),
                                  RD_KAFKA_V_END);
        if (!e) break;
        if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            /* Back-pressure: serve delivery reports until there is room again. */
            if (tries == 1000) fs_warn("producer queue full for 10 s; still waiting for the broker");
            rd_kafka_poll(rt->producer, 10);
            continue;
        }
        if (hdrs) rd_kafka_headers_destroy(hdrs);
        snprintf(err, errlen, "cannot send to %s: %s", t->name, rd_kafka_err2str(e));
        return -1;
    }
    rt->inflight[epoch & 1]++;
    t->produced++;
    return 0;
}

void fs_checkpoint_begin(fs_rt *rt)
{
    if (rt->ckpt_active || rt->draining) return;
    fs_sync_acks(rt);
    /* Tables stage their dirty entries now: their changelog records belong to this
     * checkpoint's epoch, like every output produced before the snapshot. */
    if (fs_tables_flush(rt, 0)) return;
    for (int i = 0; i < rt->ntopics; i++)
        for (int j = 0; j < rt->topics[i]->nparts; j++) {
            fs_part *p = rt->topics[i]->parts[j];
            if (p && p->assigned) p->snap = fs_part_committable(p);
        }
    rt->ckpt_epoch = rt->epoch;
    rt->epoch++;
    rt->ckpt_active = 1;
    fs_checkpoint_poll(rt);
}

void fs_checkpoint_poll(fs_rt *rt)
{
    if (!rt->ckpt_active || rt->inflight[rt->ckpt_epoch & 1] > 0 || rt->fatal) return;
    rt->ckpt_active = 0;
    if (rt->test) return;
    if (fs_tables_write(rt, 1)) return;
    commit_parts(rt, NULL, 1, 0);
    /* A checkpoint frees what a burst of table writes held (staged records,
     * delivered messages); hand it back rather than keep it as resident memory. */
    if (rt->ntables) malloc_trim(0);
}

int fs_checkpoint_sync(fs_rt *rt, int timeout_ms)
{
    if (rt->test || !rt->consumer) return 0;
    rt->ckpt_active = 0;
    fs_sync_acks(rt);
    if (fs_tables_flush(rt, 1)) return -1;
    if (rd_kafka_flush(rt->producer, timeout_ms)) {
        fs_error("could not deliver %d messages in %d ms; not committing their input",
                 rd_kafka_outq_len(rt->producer), timeout_ms);
        return -1;
    }
    if (rt->fatal || fs_tables_write(rt, 0)) return -1;
    return commit_parts(rt, NULL, 0, 1);
}

int fs_checkpoint_reload(fs_rt *rt, int timeout_ms)
{
    if (rt->test || !rt->consumer) return 0;
    rt->ckpt_active = 0;
    fs_sync_acks(rt);
    if (fs_tables_flush(rt, 0)) return -1;
    if (rd_kafka_flush(rt->producer, timeout_ms)) {
        fs_error("could not deliver %d messages in %d ms", rd_kafka_outq_len(rt->producer), timeout_ms);
        return -1;
    }
    if (rt->fatal || fs_tables_write(rt, 0)) return -1;
    /* The new version restarts from these offsets whether or not the broker
     * takes the commit now (it refuses during a rebalance): a refusal only
     * means that a restart after a crash reprocesses more. */
    commit_parts(rt, NULL, 0, 1);
    return 0;
}

int fs_kafka_open_topics(fs_rt *rt, char *err, size_t errlen)
{
    if (rt->test || !rt->consumer) return 0;
    /* New topics are created before anything asks for their metadata (a
     * producer handle does): brokers auto-create with their own defaults. */
    if (resolve_all(rt, err, errlen)) return -1;
    for (int i = 0; i < rt->ntopics; i++)
        if (!rt->topics[i]->rkt) open_topic(rt, rt->topics[i]);
    if (rt->fatal) {
        snprintf(err, errlen, "%s", rt->fatal_msg);
        return -1;
    }
    return 0;
}

int fs_kafka_rebind(fs_rt *rt, char *err, size_t errlen)
{
    if (rt->test || !rt->consumer) return 0;
    if (fs_kafka_open_topics(rt, err, errlen)) return -1;
    rd_kafka_topic_partition_list_t *want = subscription_of(rt), *have = NULL;
    int rc = 0;
    if (rt->self_assign) {
        /* As a group would: revoke and reassign when the topics change. */
        rc = self_subscribe(rt, want);
        if (rc) fs_info("subscription changed: %d topics", want->cnt);
        rt->consume_pending = 1;
        rd_kafka_topic_partition_list_destroy(want);
        return rc;
    }
    if (rd_kafka_subscription(rt->consumer, &have)) have = NULL;
    if (!have || !same_topics(want, have)) {
        /* A new topic list makes the group rebalance: the usual revocation and
         * assignment follow, with the new agents in place. */
        rd_kafka_resp_err_t e = want->cnt ? rd_kafka_subscribe(rt->consumer, want)
                                          : rd_kafka_unsubscribe(rt->consumer);
        if (e) {
            snprintf(err, errlen, "subscribe failed: %s", rd_kafka_err2str(e));
            rc = -1;
        } else {
            fs_info("subscription changed: %d topics", want->cnt);
            rt->subscribed = 1;
            rc = 1;
        }
    }
    if (have) rd_kafka_topic_partition_list_destroy(have);
    rd_kafka_topic_partition_list_destroy(want);
    rt->consume_pending = 1;
    return rc;
}

void fs_kafka_close(fs_rt *rt)
{
    /* A stop while tables recover: librdkafka still waits for the assignment
     * (eager protocol); it gets none, and the replays end where they are. */
    if (rt->assigning) {
        assign_cancel(rt);
        if (rt->consumer && !rt->self_assign) rd_kafka_assign(rt->consumer, NULL);
    }
    fs_tables_stop_recovery(rt); /* before the embedded cluster it talks to goes away */
    if (rt->tail) {
        if (rt->tq) rd_kafka_queue_destroy(rt->tq);
        rt->tq = NULL;
        rd_kafka_destroy(rt->tail);
        rt->tail = NULL;
        if (rt->tfd > 0) close(rt->tfd);
        rt->tfd = -1;
    }
    if (rt->consumer) {
        if (rt->cq) rd_kafka_queue_destroy(rt->cq);
        rt->cq = NULL;
        /* A self-assigned worker never joined, so closing revokes nothing:
         * do the revocation leaving the group would (last table writes,
         * offsets, table partitions closed). */
        rd_kafka_topic_partition_list_t *a = NULL;
        if (rt->self_assign && !rt->revoke && !rd_kafka_assignment(rt->consumer, &a) && a && a->cnt)
            rebalance_cb(rt->consumer, RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS, a, rt);
        if (a) rd_kafka_topic_partition_list_destroy(a);
        if (rt->revoke) {
            rt->revoke_deadline = 0;
            fs_kafka_revoke_poll(rt);
        }
        rd_kafka_consumer_close(rt->consumer); /* leaves the group */
        rd_kafka_destroy(rt->consumer);
        rt->consumer = NULL;
    }
    for (int i = 0; i < rt->ntopics; i++)
        if (rt->topics[i]->rkt) {
            rd_kafka_topic_destroy(rt->topics[i]->rkt);
            rt->topics[i]->rkt = NULL;
        }
    if (rt->producer) {
        if (rt->pq) rd_kafka_queue_destroy(rt->pq);
        rt->pq = NULL;
        rd_kafka_flush(rt->producer, 5000);
        rd_kafka_destroy(rt->producer);
        rt->producer = NULL;
    }
    if (rt->self_subs) rd_kafka_topic_partition_list_destroy(rt->self_subs);
    rt->self_subs = NULL;
    if (rt->mock) rd_kafka_mock_cluster_destroy(rt->mock);
    rt->mock = NULL;
    if (rt->mock_host) rd_kafka_destroy(rt->mock_host);
    rt->mock_host = NULL;
    if (rt->cfd > 0) close(rt->cfd);
    if (rt->pfd > 0) close(rt->pfd);
    rt->cfd = rt->pfd = -1;
}

/* Kafka's default partitioner (murmur2 of the key), taken from librdkafka so the
 * in-memory transport places keys where a Java or librdkafka producer would. */
int32_t fs_murmur2_partition(const void *key, size_t len, int32_t n)
{
    return rd_kafka_msg_partitioner_murmur2(NULL, key, len, n, NULL, NULL);
}
