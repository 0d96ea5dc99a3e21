/* fs_checkpoint: the commit protocol (see fs_checkpoint.h). Each occasion is a
 * row of `occasions`; the steps below are the same for all of them. */
#include "fs_checkpoint.h"

#include <malloc.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fs_log.h"
#include "fs_rt.h"
#include "fs_table.h"

enum { IDLE = 0, QUIESCE, DELIVER, COMMIT };

struct fs_ckpt {
    fs_rt *rt;
    fs_transport *tp;
    const fs_ckpt_strategy *s;
    const fs_agent_hooks *agents;
    void *agents_data;
    /* the running checkpoint */
    int phase;
    int occasion;
    int epoch;        /* the send epoch it covers */
    int64_t deadline; /* loop clock: delivery must be over by then (0: no limit) */
    int has_only;
    fs_tplist only;    /* the partitions whose offsets it commits, when has_only */
    fs_tplist offsets; /* the commit in flight */
    int blocking;      /* driven by fs_ckpt_drain: the loop does not turn */
    int staged_sent;   /* at-least-once: the tables' records went out after the epoch's messages */
    int staged_begun;  /* ... some of them (fs_tables_send_bound() in flight at a time) */
    int64_t staged_n;  /* how many went out, in how many rounds (the debug log) */
    int staged_rounds;
    void (*done)(void *data, int rc);
    void *data;
    /* A checkpoint gave up before its sends were delivered: the next one
     * waits for every send, not only its own epoch's. */
    int drain_all;
    char commit_tag; /* its address identifies this module's commits */
    /* exactly-once */
    int64_t quiesce_deadline; /* loop clock: agents must be at a boundary by then */
    int64_t sends;            /* sends of the epoch the running checkpoint covers */
    int64_t bytes;            /* their keys' and values' bytes */
    int staged;               /* the running checkpoint staged (sends, bytes, t_stage are its) */
    int full;                 /* its transaction reached a bound while taking in */
    int64_t t_stage;          /* loop clock at its stage */
    int64_t cap_sends, cap_bytes; /* the bounds of a transaction (fs_rt.txn_cap_*) */
    int64_t steady_sends;         /* twice the bound the last shrink set: growth slows above */
    int64_t t_commit;         /* monotonic ms when txn_commit was called */
    int blocked;              /* a failed transaction waits for its reset */
    int doomed;               /* a send of the open transaction failed */
    char doom[300];
    char why[400]; /* why the running checkpoint failed, for the failure handler */
    void (*on_fail)(void *data, const char *what, const char *why);
    void *fail_data;
    void (*abort_done)(void *data, int result, const char *msg);
    void *abort_data;
    char txn_tag, abort_tag; /* their addresses mark our txn_commit / txn_abort */
    int64_t t_start; /* monotonic ns when the running checkpoint started */
    fs_ckpt_stats stats[FS_CKPT_NOCCASIONS];
};

/* The occasions. force: tables re-stage each held partition's newest record
 * with the input offsets, so that the next owner (or the next start) resumes
 * exactly there. wait_commit: the checkpoint ends when the broker answered
 * the commit (the periodic one commits in the background; a failure is
 * logged and the next one retries). refused_ok: the positions are used
 * whatever the broker says (a reload restarts from them in this process).
 * deliver_ms: how long delivery may take (0: as long as it takes; the
 * producer's own timeout ends it). stage_volatile: on a transport that keeps
 * nothing (fstream.testing), the periodic checkpoint still stages (the tables'
 * Lua side runs its flush) but persists and commits nothing; other occasions
 * do nothing there. */
static const struct occasion {
    const char *name;
    int force, wait_commit, refused_ok;
    int64_t deliver_ms;
    int stage_volatile;
} occasions[] = {
    [FS_CKPT_PERIODIC] = {"periodic", 0, 0, 0, 0, 1},
    [FS_CKPT_REVOKE] = {"revocation", 1, 1, 0, 30000, 0},
    [FS_CKPT_RELOAD] = {"reload", 0, 1, 1, 30000, 0},
    [FS_CKPT_STOP] = {"stop", 1, 1, 0, 30000, 0},
};

_Static_assert(sizeof occasions / sizeof occasions[0] == FS_CKPT_NOCCASIONS, "one row per occasion");

const char *fs_ckpt_occasion_name(int occasion)
{
    return occasion >= 0 && occasion < FS_CKPT_NOCCASIONS ? occasions[occasion].name : "?";
}

fs_rt *fs_ckpt_rt(fs_ckpt *ck)
{
    return ck->rt;
}

fs_transport *fs_ckpt_transport(fs_ckpt *ck)
{
    return ck->tp;
}

int fs_ckpt_active(const fs_ckpt *ck)
{
    return ck->phase != IDLE;
}

/* ---- agents (registered by the layer that runs them) ---- */

void fs_ckpt_set_agents(fs_ckpt *ck, const fs_agent_hooks *h, void *data)
{
    ck->agents = h;
    ck->agents_data = data;
}

void fs_ckpt_sync_acks(fs_ckpt *ck)
{
    if (ck->agents && ck->agents->sync_acks) ck->agents->sync_acks(ck->agents_data);
}

void fs_ckpt_fence(fs_ckpt *ck, int on)
{
    if (ck->agents && ck->agents->fence) ck->agents->fence(ck->agents_data, on);
}

int fs_ckpt_agents_clear(fs_ckpt *ck)
{
    return !ck->agents || !ck->agents->clear || ck->agents->clear(ck->agents_data);
}

void fs_ckpt_hold(fs_ckpt *ck, int on)
{
    if (ck->agents && ck->agents->hold) ck->agents->hold(ck->agents_data, on);
}

int fs_ckpt_agents_quiet(fs_ckpt *ck)
{
    return !ck->agents || !ck->agents->quiet || ck->agents->quiet(ck->agents_data);
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

const fs_ckpt_stats *fs_ckpt_stats_of(const fs_ckpt *ck, int occasion)
{
    return occasion >= 0 && occasion < FS_CKPT_NOCCASIONS ? &ck->stats[occasion] : NULL;
}

/* One checkpoint of `occasion` ended after d ns. */
static void record(fs_ckpt *ck, int occasion, int64_t d, int failed)
{
    static const int64_t bounds[FS_CKPT_NBOUNDS] = FS_CKPT_BOUNDS;
    fs_ckpt_stats *st = &ck->stats[occasion];
    int b = 0;
    while (b < FS_CKPT_NBOUNDS && d > bounds[b]) b++;
    st->buckets[b]++;
    st->count++;
    st->ns_sum += d;
    if (failed) st->failed++;
}

/* ---- exactly-once: how much a transaction takes in ----
 * (fs_checkpoint.h, FS_CKPT_TXN_MAX_SENDS, says why the bound adapts.) */

static int64_t clamp(int64_t v, int64_t lo, int64_t hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* The bounds of the next transactions: n sends, b bytes (clamped). why: what
 * made them shrink, logged; growing is only worth a debug line. */
static void set_caps(fs_ckpt *ck, int64_t n, int64_t b, const char *why)
{
    n = clamp(n, FS_CKPT_TXN_MIN_SENDS, FS_CKPT_TXN_MAX_SENDS);
    b = clamp(b, FS_CKPT_TXN_MIN_BYTES, FS_CKPT_TXN_MAX_BYTES);
    if (n == ck->cap_sends && b == ck->cap_bytes) return;
    if (why) {
        ck->steady_sends = 2 * n;
        fs_info("exactly-once: %s; a transaction now takes in at most %lld messages or %lld KiB",
                why, (long long)n, (long long)(b / 1024));
    } else {
        fs_debug("exactly-once: a transaction now takes in at most %lld messages or %lld KiB",
                 (long long)n, (long long)(b / 1024));
    }
    ck->cap_sends = ck->rt->txn_cap_sends = n;
    ck->cap_bytes = ck->rt->txn_cap_bytes = b;
}

/* The running checkpoint's transaction failed after its stage. Whatever the
 * cause, what it delivered within the deadline is what the broker can take
 * in that time now: the next transactions take a quarter of it, so that they
 * deliver in about a quarter of the deadline. Without this, a backlog (after
 * a broker outage, on a loaded machine) went whole into every transaction
 * after the reset, missed the deadline every time, and nothing progressed. */
static void caps_after_failure(fs_ckpt *ck)
{
    if (!ck->cap_sends || !ck->staged) return;
    int64_t left = ck->rt->inflight[ck->epoch & 1];
    int64_t delivered = ck->sends > left ? ck->sends - left : 0;
    int64_t b = ck->sends ? (int64_t)((double)ck->bytes * (double)delivered / (double)ck->sends) : 0;
    char why[160];
    snprintf(why, sizeof why, "the failed transaction delivered %lld of its %lld messages",
             (long long)delivered, (long long)ck->sends);
    set_caps(ck, delivered / 4, b / 4, why);
}

/* The running checkpoint's transaction committed, `took` ms after its stage
 * (delivery and commit). Slower than half the deadline: the next ones take
 * what would have taken a quarter of it, before one fails. Fast and limited
 * by the bound: twice as much. */
static void caps_after_commit(fs_ckpt *ck)
{
    if (!ck->cap_sends || !ck->staged) return;
    int64_t took = fs_loop_now(&ck->rt->loop) - ck->t_stage;
    const int64_t d = FS_CKPT_TXN_DELIVER_MS;
    if (took > d / 2 && ck->sends > 0) {
        double f = (double)(d / 4) / (double)took;
        int64_t n = (int64_t)((double)ck->sends * f), b = (int64_t)((double)ck->bytes * f);
        char why[160];
        snprintf(why, sizeof why, "a transaction of %lld messages took %lld ms to deliver and commit",
                 (long long)ck->sends, (long long)took);
        set_caps(ck, n < ck->cap_sends ? n : ck->cap_sends, b < ck->cap_bytes ? b : ck->cap_bytes, why);
    } else if (ck->full && took < d / 4) {
        /* Doubling up to twice what the last shrink found deliverable (a
         * small transaction goes through faster than its share of a slow
         * broker's rate), a quarter more each time above it. */
        int up = ck->cap_sends < ck->steady_sends;
        set_caps(ck, up ? ck->cap_sends * 2 : ck->cap_sends + ck->cap_sends / 4,
                 up ? ck->cap_bytes * 2 : ck->cap_bytes + ck->cap_bytes / 4, NULL);
    }
}

/* ---- the at-least-once strategy ---- */

static int alo_persist(fs_ckpt *ck)
{
    return fs_tables_write(ck->rt, 1);
}

static int alo_commit(fs_ckpt *ck, const fs_tplist *offsets)
{
    if (!occasions[ck->occasion].wait_commit) {
        /* In the background: the transport's answer comes to
         * fs_ckpt_on_commit_done without our tag, and only a failure is logged. */
        ck->tp->ops->commit(ck->tp, offsets, 0, NULL);
        fs_ckpt_committed(ck, 0, NULL);
        return 0;
    }
    if (!ck->blocking) return ck->tp->ops->commit(ck->tp, offsets, 0, &ck->commit_tag);
    /* The loop no longer turns: wait for the answer here. (A transport that
     * also reports it through commit_done finds the checkpoint over.) */
    int rc = ck->tp->ops->commit(ck->tp, offsets, FS_COMMIT_SYNC, &ck->commit_tag);
    fs_ckpt_committed(ck, rc ? -1 : 0, "the broker did not take it");
    return 0;
}

const fs_ckpt_strategy fs_ckpt_at_least_once = {
    .name = "at_least_once",
    .persist = alo_persist,
    .commit = alo_commit,
};

/* ---- the exactly-once strategy ---- */

static int eos_persist(fs_ckpt *ck)
{
    return fs_tables_write(ck->rt, 1);
}

static int eos_commit(fs_ckpt *ck, const fs_tplist *offsets)
{
    ck->t_commit = mono_ms();
    return ck->tp->ops->txn_commit(ck->tp, offsets, &ck->txn_tag);
}

static void eos_seal(fs_ckpt *ck)
{
    ck->tp->ops->txn_seal(ck->tp);
}

static int eos_reopen(fs_ckpt *ck, char *err, size_t errlen)
{
    return ck->tp->ops->txn_begin(ck->tp, err, errlen);
}

/* The checkpoint failed: nothing of its transaction may become visible, and
 * what the worker did since the last commit (table writes in Lua's caches,
 * positions in the input) must be forgotten. Agents stay held; the failure
 * handler (fs_assign's reset) aborts and resets. While closing, or after a
 * fatal error, nothing follows: the worker stops without committing, and the
 * broker aborts the transaction (or the next start's txn_init does). */
static void eos_abort(fs_ckpt *ck)
{
    fs_rt *rt = ck->rt;
    if (rt->fatal || rt->closing || !ck->on_fail) {
        fs_ckpt_hold(ck, 0);
        return;
    }
    fs_ckpt_hold(ck, 1);
    ck->blocked = 1;
    ck->on_fail(ck->fail_data, occasions[ck->occasion].name,
                ck->why[0] ? ck->why : "the checkpoint could not finish");
}

const fs_ckpt_strategy fs_ckpt_exactly_once = {
    .name = "exactly_once",
    .persist = eos_persist,
    .commit = eos_commit,
    .abort = eos_abort,
    .persist_after_commit = 1,
    .transactional = 1,
    .seal = eos_seal,
    .reopen = eos_reopen,
};

int fs_ckpt_transactional(const fs_ckpt *ck)
{
    return ck->s->transactional;
}

void fs_ckpt_on_failure(fs_ckpt *ck, void (*fn)(void *data, const char *what, const char *why),
                        void *data)
{
    ck->on_fail = fn;
    ck->fail_data = data;
}

void fs_ckpt_block(fs_ckpt *ck, int on)
{
    ck->blocked = on;
}

void fs_ckpt_doom(fs_ckpt *ck, const char *why)
{
    if (ck->doomed) return;
    ck->doomed = 1;
    snprintf(ck->doom, sizeof ck->doom, "%s", why);
}

void fs_ckpt_send_failed(fs_ckpt *ck, const char *topic, const char *why)
{
    if (ck->doomed) return;
    ck->doomed = 1;
    snprintf(ck->doom, sizeof ck->doom, "a message to %s could not be delivered (%s)", topic, why);
    fs_warn("%s: the open transaction cannot commit; it is aborted at the next checkpoint", ck->doom);
}

int fs_ckpt_abort_txn(fs_ckpt *ck, void (*done)(void *data, int result, const char *msg), void *data,
                      char *err, size_t errlen)
{
    if (!ck->s->transactional) return 1;
    ck->abort_done = done;
    ck->abort_data = data;
    ck->rt->txn_aborts++;
    if (ck->tp->ops->txn_abort(ck->tp, &ck->abort_tag)) {
        ck->abort_done = NULL;
        snprintf(err, errlen, "the transport could not start the abort");
        return -1;
    }
    return 0;
}

int fs_ckpt_reopen(fs_ckpt *ck, char *err, size_t errlen)
{
    ck->doomed = 0;
    ck->blocked = 0;
    if (!ck->s->transactional) return 0;
    /* The aborted transaction's sends are gone: the next one starts empty
     * (and takes in again). Their counts too: the abort reported every send
     * it could, but a producer recreated after a long outage drops those
     * librdkafka never reported (fs_kafka.c, recreate), and a count left
     * above zero kept drain_all waiting at every later checkpoint, which
     * then failed at its deadline, reset, and failed again, for ever. */
    ck->rt->inflight[0] = ck->rt->inflight[1] = 0;
    ck->drain_all = 0;
    ck->rt->epoch_sends = 0;
    ck->rt->epoch_bytes = 0;
    ck->rt->txn_full = 0;
    return ck->s->reopen(ck, err, errlen);
}

/* ---- the protocol ---- */

fs_ckpt *fs_ckpt_new(fs_rt *rt, fs_transport *tp, const fs_ckpt_strategy *s)
{
    fs_ckpt *ck = calloc(1, sizeof *ck);
    if (!ck) return NULL;
    ck->rt = rt;
    ck->tp = tp;
    ck->s = s;
    /* (fstream.testing's in-memory log delivers at once: nothing to bound.) */
    if (s->transactional && tp->durable) {
        ck->cap_sends = FS_CKPT_TXN_MAX_SENDS;
        ck->cap_bytes = FS_CKPT_TXN_MAX_BYTES;
        rt->txn_cap_sends = ck->cap_sends;
        rt->txn_cap_bytes = ck->cap_bytes;
    }
    return ck;
}

void fs_ckpt_free(fs_ckpt *ck)
{
    if (!ck) return;
    fs_tplist_free(&ck->only);
    fs_tplist_free(&ck->offsets);
    free(ck);
}

static void end(fs_ckpt *ck, int rc)
{
    if (ck->phase == IDLE) return;
    int occasion = ck->occasion;
    void (*done)(void *, int) = ck->done;
    void *data = ck->data;
    ck->phase = IDLE;
    ck->done = NULL;
    record(ck, occasion, mono_ns() - ck->t_start, rc < 0);
    if (rc < 0 && ck->s->transactional && !ck->rt->fatal && !ck->rt->closing) caps_after_failure(ck);
    ck->staged = 0;
    fs_tplist_free(&ck->only);
    fs_tplist_free(&ck->offsets);
    ck->has_only = 0;
    /* Over before the strategy hears of the failure: its handler may look. */
    if (rc < 0 && ck->s->abort) ck->s->abort(ck);
    /* A checkpoint frees what a burst of table writes held (staged records,
     * delivered messages); hand it back rather than keep it as resident memory. */
    if (occasion == FS_CKPT_PERIODIC && rc == 0 && ck->tp->durable && ck->rt->ntables) malloc_trim(0);
    if (done) done(data, rc);
}

void fs_ckpt_abandon(fs_ckpt *ck)
{
    if (ck->phase == IDLE) return;
    fs_warn("the %s checkpoint is abandoned: nothing of it is stored or committed",
            occasions[ck->occasion].name);
    ck->drain_all = 1; /* the next one waits for the discarded sends' reports */
    snprintf(ck->why, sizeof ck->why, "abandoned (assignment lost)");
    end(ck, -1);
}

static int in_scope(fs_ckpt *ck, const fs_part *p)
{
    /* A transaction covers every partition's outputs: it commits every
     * partition's offsets, whatever the occasion asked for. */
    return !ck->has_only || ck->s->transactional || fs_tplist_find(&ck->only, p->topic->name, p->id);
}

/* stage: everything acknowledged so far, and the table entries it wrote,
 * belong to this checkpoint; later sends to the next epoch. */
static int stage(fs_ckpt *ck)
{
    fs_rt *rt = ck->rt;
    fs_ckpt_sync_acks(ck);
    if (ck->s->begin && ck->s->begin(ck)) return -1;
    if (fs_tables_flush(rt, occasions[ck->occasion].force)) return -1;
    for (int i = 0; i < rt->ntopics; i++)
        for (int j = 0; j < rt->topics[i]->nparts; j++) {
            fs_part *p = rt->topics[i]->parts[j];
            if (fs_part_consuming(p)) p->snap = fs_part_committable(p);
        }
    ck->epoch = rt->epoch;
    rt->epoch++;
    ck->sends = rt->epoch_sends;
    ck->bytes = rt->epoch_bytes;
    ck->full = rt->txn_full;
    rt->epoch_sends = 0;
    rt->epoch_bytes = 0;
    rt->txn_full = 0;
    ck->staged = 1;
    if (ck->s->transactional) {
        /* Later sends belong to the next transaction; agents go on now (also
         * those the bound on this one's intake held). */
        ck->s->seal(ck);
        ck->t_stage = fs_loop_now(&rt->loop);
        ck->deadline = ck->t_stage + FS_CKPT_TXN_DELIVER_MS;
        fs_ckpt_hold(ck, 0);
    }
    return 0;
}

static void report_undelivered(fs_ckpt *ck)
{
    long long n = (long long)ck->tp->ops->undelivered(ck->tp);
    long long ms = (long long)occasions[ck->occasion].deliver_ms;
    if (ck->s->transactional) {
        snprintf(ck->why, sizeof ck->why, "%lld of the transaction's %lld messages were not delivered in %d ms",
                 (long long)ck->rt->inflight[ck->epoch & 1], (long long)ck->sends, FS_CKPT_TXN_DELIVER_MS);
        return;
    }
    switch (ck->occasion) {
    case FS_CKPT_REVOKE:
        fs_warn("producer flush timed out during rebalance; not committing");
        break;
    case FS_CKPT_STOP:
        fs_error("could not deliver %lld messages in %lld ms; not committing their input", n, ms);
        break;
    default:
        fs_error("could not deliver %lld messages in %lld ms", n, ms);
    }
}

/* Exactly-once: the transaction commits with every consuming partition's
 * snapshot (those that moved); offsets count as committed, and LMDB is
 * written, only once the broker said so (txn_committed). */
static void settle_txn(fs_ckpt *ck)
{
    fs_rt *rt = ck->rt;
    if (ck->doomed) {
        snprintf(ck->why, sizeof ck->why, "%s", ck->doom);
        end(ck, -1);
        return;
    }
    fs_tplist_free(&ck->offsets);
    for (int i = 0; i < rt->ntopics; i++) {
        fs_topic *t = rt->topics[i];
        for (int j = 0; j < t->nparts; j++) {
            fs_part *p = t->parts[j];
            if (!fs_part_consuming(p) || p->snap < 0 || p->snap <= p->committed) continue;
            if (!fs_tplist_add(&ck->offsets, t->name, p->id, p->snap)) {
                fs_rt_fatal(rt, "out of memory committing offsets");
                end(ck, -1);
                return;
            }
        }
    }
    /* Nothing sent and no input moved: no commit; the transaction (still
     * empty, sealed at stage) takes sends again. */
    if (!ck->offsets.len && !ck->sends) {
        char err[256];
        if (ck->s->reopen(ck, err, sizeof err)) {
            fs_rt_fatal(rt, "exactly-once: could not reopen the transaction: %s", err);
            end(ck, -1);
            return;
        }
        end(ck, 0);
        return;
    }
    rt->commits++;
    ck->phase = COMMIT;
    if (ck->s->commit(ck, &ck->offsets) && ck->phase == COMMIT) {
        snprintf(ck->why, sizeof ck->why, "the transaction's commit could not be started");
        end(ck, -1);
    }
}

static void txn_committed(fs_ckpt *ck)
{
    fs_rt *rt = ck->rt;
    int64_t ms = mono_ms() - ck->t_commit;
    char err[256];
    int reopen = ck->s->reopen(ck, err, sizeof err);
    for (int i = 0; i < ck->offsets.len; i++) {
        fs_part *p = NULL;
        fs_topic *t = fs_topic_find(rt, ck->offsets.items[i].topic);
        if (t) p = fs_part_get(t, ck->offsets.items[i].partition);
        if (p && ck->offsets.items[i].offset > p->committed) p->committed = ck->offsets.items[i].offset;
    }
    rt->txn_commits++;
    rt->txn_last_ms = ms;
    caps_after_commit(ck);
    fs_debug("checkpoint transaction committed in %lld ms (%d offsets, %lld messages)", (long long)ms,
             ck->offsets.len, (long long)ck->sends);
    int rc = ck->s->persist && ck->s->persist(ck) ? -1 : 0;
    if (reopen) {
        fs_rt_fatal(rt, "exactly-once: could not open the next transaction: %s", err);
        rc = -1;
    }
    end(ck, rc);
}

void fs_ckpt_on_txn_done(fs_ckpt *ck, void *ctx, int result, const char *msg)
{
    if (ctx == &ck->abort_tag) {
        void (*done)(void *, int, const char *) = ck->abort_done;
        ck->abort_done = NULL;
        if (done) done(ck->abort_data, result, msg);
        return;
    }
    if (ctx != &ck->txn_tag || ck->phase != COMMIT) return;
    if (result == FS_TXN_OK) {
        txn_committed(ck);
        return;
    }
    if (result == FS_TXN_FATAL) { /* the producer cannot go on: nothing more is committed */
        fs_rt_fatal(ck->rt, "exactly-once: the transaction's commit failed for good (%s); stopping "
                            "without committing (the input is processed again on restart)",
                    msg ? msg : "fatal producer error");
        end(ck, -1);
        return;
    }
    snprintf(ck->why, sizeof ck->why, "the transaction's commit failed: %s", msg ? msg : "unknown error");
    if (result == FS_TXN_FENCED)
        strncat(ck->why, " (this worker was fenced: a newer member of the group took its partitions)",
                sizeof ck->why - strlen(ck->why) - 1);
    end(ck, -1);
}

/* persist and commit, in the strategy's order. */
static void settle(fs_ckpt *ck)
{
    fs_rt *rt = ck->rt;
    if (!ck->tp->durable) { /* an in-memory run keeps nothing */
        end(ck, 0);
        return;
    }
    if (!ck->s->persist_after_commit && ck->s->persist && ck->s->persist(ck)) {
        end(ck, -1);
        return;
    }
    if (ck->s->transactional) {
        settle_txn(ck);
        return;
    }
    fs_tplist_free(&ck->offsets);
    for (int i = 0; i < rt->ntopics; i++) {
        fs_topic *t = rt->topics[i];
        for (int j = 0; j < t->nparts; j++) {
            fs_part *p = t->parts[j];
            if (!fs_part_consuming(p) || !in_scope(ck, p)) continue;
            if (p->snap < 0 || p->snap <= p->committed) continue;
            if (!fs_tplist_add(&ck->offsets, t->name, p->id, p->snap)) {
                fs_rt_fatal(rt, "out of memory committing offsets");
                end(ck, -1);
                return;
            }
            p->committed = p->snap;
        }
    }
    if (!ck->offsets.len) {
        fs_ckpt_committed(ck, 0, NULL);
        return;
    }
    rt->commits++;
    fs_debug("committing %d partition offsets", ck->offsets.len);
    ck->phase = COMMIT;
    if (ck->s->commit(ck, &ck->offsets) && ck->phase == COMMIT)
        fs_ckpt_committed(ck, -1, "the commit could not be sent");
}

void fs_ckpt_committed(fs_ckpt *ck, int err, const char *errstr)
{
    if (ck->phase == IDLE) return;
    const struct occasion *o = &occasions[ck->occasion];
    int rc = 0;
    if (err && o->wait_commit) {
        fs_warn("offset commit failed: %s", errstr ? errstr : "unknown error");
        if (!o->refused_ok) rc = -1;
    }
    if (rc == 0 && ck->s->persist_after_commit && ck->s->persist && ck->s->persist(ck)) rc = -1;
    end(ck, rc);
}

void fs_ckpt_on_commit_done(fs_ckpt *ck, void *ctx, const fs_tplist *offsets, int err)
{
    if (ctx == &ck->commit_tag) {
        if (ck->phase == COMMIT) fs_ckpt_committed(ck, err, err ? ck->tp->ops->strerror(err) : NULL);
        return;
    }
    /* A background commit: only a failure is news. */
    if (err) {
        fs_warn("offset commit failed: %s (the next checkpoint retries)", ck->tp->ops->strerror(err));
        return;
    }
    for (int i = 0; offsets && i < offsets->len; i++)
        if (offsets->items[i].err)
            fs_warn("offset commit of %s[%d] failed: %s", offsets->items[i].topic,
                    (int)offsets->items[i].partition, ck->tp->ops->strerror(offsets->items[i].err));
}

/* At-least-once, once the epoch's messages are delivered: the tables'
 * changelog records staged for this checkpoint go out, counted in its epoch so
 * the deliver step waits for them too (fs_table_stage says why they wait).
 * Returns 1 while there is more to wait for (or the checkpoint ended). */
static int delivering(fs_ckpt *ck);
static int send_staged(fs_ckpt *ck)
{
    fs_rt *rt = ck->rt;
    char err[256];
    ck->staged_begun = 1;
    /* Once the epoch's messages are delivered its count holds only these records. */
    int64_t room = fs_tables_send_bound() - rt->inflight[ck->epoch & 1];
    if (room <= 0) return 1;
    int epoch = rt->epoch, more;
    rt->epoch = ck->epoch;
    int n = fs_tables_send_staged(rt, room, &more, err, sizeof err);
    rt->epoch = epoch;
    if (n < 0) {
        snprintf(ck->why, sizeof ck->why, "sending the tables' changelog records failed: %s", err);
        fs_error("%s", ck->why);
        end(ck, -1);
        return 1;
    }
    ck->staged_n += n;
    ck->staged_rounds += n > 0;
    ck->staged_sent = !more;
    if (!more && ck->staged_rounds > 1)
        fs_debug("changelog records: %lld sent in %d rounds (at most %lld in flight)", (long long)ck->staged_n,
                 ck->staged_rounds, (long long)fs_tables_send_bound());
    return more || (n > 0 && delivering(ck));
}

/* The deliver step; returns 1 while it must wait. */
static int delivering(fs_ckpt *ck)
{
    fs_rt *rt = ck->rt;
    int64_t all = rt->inflight[0] + rt->inflight[1];
    if (all == 0) ck->drain_all = 0;
    int64_t left = ck->drain_all ? all : rt->inflight[ck->epoch & 1];
    if (left <= 0) return 0;
    if (ck->deadline && fs_loop_now(&rt->loop) >= ck->deadline) {
        report_undelivered(ck);
        ck->drain_all = 1;
        end(ck, -1);
        return 1;
    }
    return 1;
}

void fs_ckpt_poll(fs_ckpt *ck)
{
    if (ck->phase == IDLE) {
        /* The open transaction is full and agents wait: seal it now rather
         * than at the next commit interval (not from a blocking drain, which
         * runs its own checkpoint; nor while a reload drains or a reset runs). */
        fs_rt *rt = ck->rt;
        if (rt->txn_full && !ck->blocking && !ck->blocked && !rt->draining && !rt->fatal)
            fs_ckpt_start(ck, FS_CKPT_PERIODIC, NULL, NULL, NULL);
        return;
    }
    if (ck->rt->fatal) { /* the worker stops; nothing more is committed */
        end(ck, -1);
        return;
    }
    if (ck->phase == QUIESCE) {
        if (!fs_ckpt_agents_quiet(ck)) {
            if (fs_loop_now(&ck->rt->loop) < ck->quiesce_deadline) return;
            snprintf(ck->why, sizeof ck->why,
                     "agents were still in the middle of an event %d ms after the checkpoint began "
                     "(an event must finish within half the transaction timeout)",
                     FS_CKPT_QUIESCE_MS);
            end(ck, -1);
            return;
        }
        ck->phase = DELIVER;
        if (stage(ck)) {
            snprintf(ck->why, sizeof ck->why, "staging the tables' entries failed");
            end(ck, -1);
            return;
        }
    }
    if (ck->phase == DELIVER) {
        /* The records the in-flight bound held back go out as earlier ones are delivered. */
        if (ck->staged_begun && !ck->staged_sent && send_staged(ck) != 0) return;
        if (delivering(ck)) return;
        if (!ck->s->transactional && !ck->staged_begun && send_staged(ck) != 0) return;
        ck->phase = COMMIT;
        settle(ck);
    }
    /* COMMIT: the answer comes to fs_ckpt_committed. */
}

int fs_ckpt_start(fs_ckpt *ck, int occasion, const fs_tplist *only,
                  void (*done)(void *data, int rc), void *data)
{
    fs_rt *rt = ck->rt;
    if (ck->phase != IDLE) return 1;
    if (ck->blocked) return -1; /* a failed transaction waits for its reset */
    /* The worker stops without committing (a send failed for good, say): no
     * checkpoint may begin either. Its stage would write the tables'
     * changelog records, whose headers name the input offsets they reflect,
     * and the next owner's replay resumes there — past the events whose sends
     * were lost (at-least-once: their changelog records are read as soon as
     * they are delivered). */
    if (rt->fatal) return -1;
    const struct occasion *o = &occasions[occasion];
    if (!ck->tp->durable && !o->stage_volatile) {
        if (done) done(data, 0);
        return 0;
    }
    fs_tplist_free(&ck->only);
    ck->has_only = 0;
    if (only) {
        if (fs_tplist_copy(&ck->only, only)) {
            fs_rt_fatal(rt, "out of memory starting a checkpoint");
            return -1;
        }
        ck->has_only = 1;
    }
    ck->occasion = occasion;
    ck->done = done;
    ck->data = data;
    ck->why[0] = 0;
    ck->staged_sent = ck->staged_begun = ck->staged_rounds = 0;
    ck->staged_n = 0;
    ck->t_start = mono_ns();
    if (ck->s->transactional) {
        /* Quiesce first: agents stop at their next event boundary. */
        ck->phase = QUIESCE;
        ck->quiesce_deadline = fs_loop_now(&rt->loop) + FS_CKPT_QUIESCE_MS;
        fs_ckpt_hold(ck, 1);
        fs_ckpt_poll(ck);
        return 0;
    }
    ck->phase = DELIVER;
    ck->deadline = o->deliver_ms ? fs_loop_now(&rt->loop) + o->deliver_ms : 0;
    if (stage(ck)) {
        end(ck, -1);
        return 0;
    }
    fs_ckpt_poll(ck);
    return 0;
}

void fs_ckpt_drain(fs_ckpt *ck, int64_t max_ms)
{
    fs_loop *l = &ck->rt->loop;
    int64_t until = fs_loop_now(l) + max_ms;
    ck->blocking = 1;
    for (;;) {
        fs_ckpt_poll(ck);
        if (ck->phase == IDLE) break;
        if (fs_loop_now(l) >= until) {
            fs_warn("%s checkpoint not over after %lld ms; giving up on it",
                    occasions[ck->occasion].name, (long long)max_ms);
            if (ck->phase == DELIVER) ck->drain_all = 1;
            if (!ck->why[0])
                snprintf(ck->why, sizeof ck->why, "the %s checkpoint was not over after %lld ms",
                         occasions[ck->occasion].name, (long long)max_ms);
            end(ck, -1);
            break;
        }
        /* Delivery reports (waiting a little for them), commit answers. */
        ck->tp->ops->flush(ck->tp, ck->phase == DELIVER ? 100 : 10);
        ck->tp->ops->poll(ck->tp, 0);
        /* A transaction's commit answers from the transport's thread:
         * flush returns at once then, so do not spin. */
        if (ck->phase == COMMIT && ck->s->transactional) poll(NULL, 0, 1);
    }
    ck->blocking = 0;
}

static void run_done(void *data, int rc)
{
    *(int *)data = rc;
}

int fs_ckpt_run(fs_ckpt *ck, int occasion, int64_t max_ms)
{
    /* A transaction's commit may be in flight: let it end (abandoning it
     * would abort what it covers). */
    if (ck->phase != IDLE && ck->s->transactional) fs_ckpt_drain(ck, max_ms);
    if (ck->phase != IDLE) {
        /* Superseded: this one commits at least as far, once every send
         * (those of the abandoned one too) is delivered. */
        ck->drain_all = 1;
        end(ck, -1);
    }
    int rc = 0;
    ck->blocking = 1;
    int started = fs_ckpt_start(ck, occasion, NULL, run_done, &rc);
    ck->blocking = 0;
    if (started) return -1;
    if (ck->phase != IDLE) fs_ckpt_drain(ck, max_ms);
    return rc;
}
