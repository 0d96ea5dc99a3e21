/* fs_assign: assignment and revocation, as steps of the loop (see fs_assign.h). */
#include "fs_assign.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs_buf.h"
#include "fs_log.h"
#include "fs_rt.h"
#include "fs_table.h"
#include "fs_vec.h"

#define FS_REVOKE_WAIT_MS 10000
/* The most the revocation reported by the transport's close may wait on the
 * transport for its checkpoint (whose deliveries have 30 s), unless the stop
 * has less time left (fs_assign_close_by). */
#define FS_CLOSE_REVOKE_MS 35000

/* Steps of a revocation. */
enum { R_NONE = 0, R_FENCE, R_CHECKPOINT, R_CHECKPOINTING, R_RELEASE };
/* Steps of a reset (see fs_assign_reset). */
enum { X_NONE = 0, X_ABORT, X_ABORTING, X_FENCE, X_CLEAR };

/* What the transport reported (or a reset asked) while another change was in progress. */
enum { C_REVOKE = 0, C_ASSIGN = 1, C_RESET = 2 };
struct change {
    int assign; /* C_* */
    int lost;   /* C_REVOKE: the partitions were lost */
    fs_tplist parts;
    char *why; /* C_RESET: "what\0why" */
};

struct fs_assign {
    fs_rt *rt;
    fs_transport *tp;
    fs_ckpt *ck;
    /* the assignment in progress */
    int assigning;
    fs_tplist parts;   /* offsets: the committed ones once known, then where each resumes */
    int asking;        /* the committed offsets are not known yet */
    int holds;         /* table recoveries not over */
    int failed;        /* a recovery failed or was stopped: the assignment is never made */
    /* Their addresses mark our committed-offsets questions; alternating, so
     * that the answer to a dropped assignment's question is not taken for
     * the next one's. */
    char committed_tag[2];
    int asked;
    /* the revocation in progress */
    int revoke_step;
    fs_tplist revoke;
    int revoke_some; /* other partitions stay held (cooperative): they keep being fetched */
    int revoke_lost; /* lost: no checkpoint, nothing of them written */
    int64_t revoke_deadline;
    FS_VEC(struct change) queue;
    fs_buf names;
    /* the reset in progress */
    int reset_step;
    fs_tplist reset;      /* the partitions it resets */
    char reset_what[64];  /* what failed (a checkpoint's occasion, "a test") */
    char reset_why[400];  /* why */
    int64_t reset_deadline;
    int64_t close_by; /* loop clock: the stop must be over by then (0: not set) */
};

static void ckpt_failed(void *data, const char *what, const char *why);

fs_assign *fs_assign_new(fs_rt *rt, fs_transport *tp, fs_ckpt *ck)
{
    fs_assign *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    a->rt = rt;
    a->tp = tp;
    a->ck = ck;
    fs_ckpt_on_failure(ck, ckpt_failed, a);
    return a;
}

void fs_assign_free(fs_assign *a)
{
    if (!a) return;
    fs_tplist_free(&a->parts);
    fs_tplist_free(&a->revoke);
    fs_tplist_free(&a->reset);
    for (size_t i = 0; i < a->queue.len; i++) {
        fs_tplist_free(&a->queue.items[i].parts);
        free(a->queue.items[i].why);
    }
    fs_vec_free(&a->queue);
    fs_buf_free(&a->names);
    free(a);
}

int fs_assign_busy(const fs_assign *a)
{
    return a && (a->assigning || a->revoke_step != R_NONE || a->reset_step != X_NONE);
}

int fs_assign_revoking(const fs_assign *a)
{
    return a && (a->revoke_step != R_NONE || a->reset_step != X_NONE);
}

int fs_assign_stops_fetching(const fs_assign *a)
{
    return a && ((a->revoke_step != R_NONE && !a->revoke_some) || a->reset_step != X_NONE);
}

/* "topic[p] topic[p] ..." for the logs, in a buffer that grows. */
static const char *names_of(fs_assign *a, const fs_tplist *l)
{
    fs_buf_reset(&a->names);
    for (int i = 0; i < l->len; i++) {
        char one[32];
        int n = snprintf(one, sizeof one, "[%d]", (int)l->items[i].partition);
        if ((i && fs_buf_addc(&a->names, ' ')) ||
            fs_buf_add(&a->names, l->items[i].topic, strlen(l->items[i].topic)) ||
            fs_buf_add(&a->names, one, (size_t)n))
            return "(too many to list: out of memory)";
    }
    if (fs_buf_addc(&a->names, 0)) return "(too many to list: out of memory)";
    return a->names.data;
}

static fs_part *part_of(fs_rt *rt, const fs_tp *tp)
{
    fs_topic *t = fs_topic_find(rt, tp->topic);
    return t ? fs_part_get(t, tp->partition) : NULL;
}

static int table_input(fs_rt *rt, const fs_tp *tp)
{
    fs_topic *t = fs_topic_find(rt, tp->topic);
    return t && t->table_input;
}

/* The first of the list's table inputs with partition number l->items[i]'s:
 * tables are held once per partition number. */
static int first_of_number(fs_rt *rt, const fs_tplist *l, int i)
{
    for (int j = 0; j < i; j++)
        if (l->items[j].partition == l->items[i].partition && table_input(rt, &l->items[j])) return 0;
    return 1;
}

/* Partition number p of the tables stays needed: some table input's
 * partition p is held and not in `going`. */
static int tables_still_needed(fs_rt *rt, int32_t p, const fs_tplist *going)
{
    for (int i = 0; i < rt->ntopics; i++) {
        fs_topic *t = rt->topics[i];
        if (!t->table_input || p >= t->nparts || !fs_part_held(t->parts[p])) continue;
        if (!fs_tplist_find(going, t->name, p)) return 1;
    }
    return 0;
}

/* Tables follow partition numbers, so every topic that writes them must be
 * co-partitioned: partition p of each on one worker. Range assignment keeps
 * that (equal partition counts); cooperative-sticky balances partitions one by
 * one and does not. Returns the first table input whose partition p this
 * worker would hold without another table input's partition p, or NULL. */
/* Some agent reads t now (it is in the subscription). */
static int topic_read(const fs_topic *t)
{
    for (int i = 0; i < t->nsubs; i++)
        if (!t->subs[i]->closed) return 1;
    return 0;
}

static const char *copartition_broken(fs_rt *rt, const fs_tplist *adding, int32_t *pp, const char **other)
{
    int partitioned = 0;
    for (int i = 0; i < rt->ntables && !partitioned; i++) partitioned = !rt->tables[i]->global;
    if (!partitioned) return NULL;
    for (int i = 0; i < rt->ntopics; i++) {
        fs_topic *t = rt->topics[i];
        if (!t->table_input || !topic_read(t)) continue;
        for (int32_t p = 0; p < t->nparts; p++) {
            int has = fs_part_held(t->parts[p]) || fs_tplist_find(adding, t->name, p);
            for (int j = 0; has && j < rt->ntopics; j++) {
                fs_topic *u = rt->topics[j];
                if (u == t || !u->table_input || !topic_read(u) || p >= u->nparts) continue;
                if (!fs_part_held(u->parts[p]) && !fs_tplist_find(adding, u->name, p)) {
                    *pp = p;
                    *other = u->name;
                    return t->name;
                }
            }
        }
    }
    return NULL;
}

static void next_change(fs_assign *a);
static void revoke_start(fs_assign *a, const fs_tplist *parts, int lost);
static void reset_start(fs_assign *a, const char *what, const char *why);

/* ---- assignment ---- */

/* Offsets known and tables recovered: fetching starts. */
static void assign_complete(fs_assign *a)
{
    fs_rt *rt = a->rt;
    if (!a->assigning || a->asking || a->holds > 0 || a->failed) return;
    for (int i = 0; i < a->parts.len; i++) {
        fs_tp *tp = &a->parts.items[i];
        fs_topic *t = fs_topic_find(rt, tp->topic);
        fs_part *p = t ? fs_part_get(t, tp->partition) : NULL;
        int64_t committed = tp->offset >= 0 ? tp->offset : -1;
        /* The transport starts from the committed one. Cooperative: said
         * explicitly, so that a partition still in the consumer's assignment
         * (a reset) restarts there with a seek. */
        tp->offset = a->tp->cooperative && committed >= 0 ? committed : FS_OFFSET_INVALID;
        /* LMDB may be ahead of the commit (killed between the two): resume there. */
        int64_t stored = t ? fs_tables_resume_offset(rt, t->name, tp->partition, committed) : -1;
        if (stored > committed) {
            fs_info("%s[%d]: resuming at %lld from local state (committed: %lld)", t->name,
                    (int)tp->partition, (long long)stored, (long long)committed);
            tp->offset = stored;
            committed = stored;
        }
        if (p) fs_part_activate(p, committed);
    }
    char err[256];
    /* An eager assignment replaces the whole, unpaused (back-pressure); a
     * cooperative one joins the rest, and the transport pauses it with them. */
    if (!a->tp->cooperative) rt->paused = 0;
    if (a->tp->ops->assign(a->tp, &a->parts, err, sizeof err))
        fs_rt_fatal(rt, "could not start fetching the assigned partitions: %s", err);
    a->assigning = 0;
    fs_tplist_free(&a->parts);
    next_change(a);
}

static void held(void *data, int32_t p, int rc)
{
    fs_assign *a = data;
    (void)p;
    if (!a->assigning) return;
    /* A failure (fatal) or a stop: the worker stops, and the assignment waits
     * until fs_assign_finish drops it. */
    if (rc) a->failed = 1;
    a->holds--;
    assign_complete(a);
}

void fs_assign_on_committed(fs_assign *a, void *ctx, const fs_tplist *offsets, int err)
{
    if (ctx != &a->committed_tag[a->asked & 1] || !a->assigning || !a->asking) return;
    a->asking = 0;
    for (int i = 0; i < a->parts.len; i++) {
        fs_tp *tp = &a->parts.items[i];
        const fs_tp *c = err || !offsets ? NULL : fs_tplist_find(offsets, tp->topic, tp->partition);
        /* Unknown: resume where the group has it; a gap is then not reported. */
        tp->offset = c && !c->err ? c->offset : FS_OFFSET_INVALID;
    }
    assign_complete(a);
}

static void assign_start(fs_assign *a, const fs_tplist *parts)
{
    fs_rt *rt = a->rt;
    fs_tplist_free(&a->parts);
    if (fs_tplist_copy(&a->parts, parts)) {
        fs_rt_fatal(rt, "out of memory taking an assignment");
        return;
    }
    fs_info("assigned %d partitions%s: %s", parts->len, a->tp->cooperative ? " (incremental)" : "",
            names_of(a, parts));
    if (a->tp->cooperative && !rt->embedded) {
        int32_t p = 0;
        const char *other = NULL, *t = copartition_broken(rt, parts, &p, &other);
        if (t) {
            fs_rt_fatal(rt,
                        "the cooperative-sticky assignor gave this worker %s[%d] without %s[%d], but both "
                        "write the app's tables, which follow partition numbers: run every worker of "
                        "the group with partition_assignor = \"range\" (it keeps co-partitioned topics "
                        "together)",
                        t, (int)p, other, (int)p);
            return;
        }
    }
    a->assigning = 1;
    a->failed = 0;
    a->asking = 1;
    /* Held until every recovery below is asked for: done may come at once. */
    a->holds = 1;
    /* Partition numbers whose tables are held already (cooperative: a topic
     * joined the subscription, and another table input of that number stays
     * held): their tables are ready and keep what they cache. */
    FS_VEC(int32_t) ready = {0};
    for (int i = 0; i < a->parts.len; i++) {
        int32_t n = a->parts.items[i].partition;
        if (table_input(rt, &a->parts.items[i]) && tables_still_needed(rt, n, &a->parts) &&
            fs_vec_push(&ready, n)) {
            fs_vec_free(&ready);
            fs_rt_fatal(rt, "out of memory taking an assignment");
            return;
        }
    }
    for (int i = 0; i < a->parts.len; i++) {
        fs_part *p = part_of(rt, &a->parts.items[i]);
        if (p) fs_part_take(p);
    }
    /* Where each partition resumes, so a gap (log start moved past it) is reported. */
    a->asked++;
    if (!a->parts.len || a->tp->ops->committed(a->tp, &a->parts, &a->committed_tag[a->asked & 1])) {
        a->asking = 0;
        for (int i = 0; i < a->parts.len; i++) a->parts.items[i].offset = FS_OFFSET_INVALID;
    }
    /* Tables follow their partitions: opened and recovered before any event
     * of the partition reaches an agent. */
    for (int i = 0; i < a->parts.len && !a->failed; i++) {
        fs_tp *tp = &a->parts.items[i];
        if (!table_input(rt, tp)) continue; /* forwarders' inputs, the leader topic */
        int is_ready = 0;
        for (size_t j = 0; j < ready.len && !is_ready; j++) is_ready = ready.items[j] == tp->partition;
        if (is_ready) continue;
        for (int j = 0; j < a->parts.len; j++)
            if (a->parts.items[j].partition == tp->partition && table_input(rt, &a->parts.items[j]))
                fs_part_recover(part_of(rt, &a->parts.items[j]));
        if (!first_of_number(rt, &a->parts, i)) continue;
        a->holds++;
        if (fs_tables_hold(rt, tp->partition, held, a)) {
            a->holds--;
            a->failed = 1;
        }
    }
    fs_vec_free(&ready);
    a->holds--;
    assign_complete(a);
}

/* The worker closes while tables still recover: their replays stop (LMDB
 * keeps what they wrote, and the next owner resumes from there). */
static void assign_drop(fs_assign *a)
{
    if (!a->assigning) return;
    a->assigning = 0;
    for (int i = 0; i < a->parts.len; i++) {
        fs_tp *tp = &a->parts.items[i];
        fs_part *p = part_of(a->rt, tp);
        if (table_input(a->rt, tp) && first_of_number(a->rt, &a->parts, i) &&
            !tables_still_needed(a->rt, tp->partition, &a->parts))
            fs_tables_release(a->rt, tp->partition);
        if (p) fs_part_revoke(p);
    }
    fs_tplist_free(&a->parts);
}

void fs_assign_on_assigned(fs_assign *a, const fs_tplist *parts)
{
    if (a->tp->holds_all) {
        /* Nothing to join, recover or resume: the worker held every
         * partition from the start (fs_worker_start). */
        for (int i = 0; i < parts->len; i++) {
            fs_part *p = part_of(a->rt, &parts->items[i]);
            if (p && !fs_part_held(p)) fs_part_assign(p, -1);
        }
        return;
    }
    /* An eager assignment replaces one still waiting for its offsets or
     * tables (memory://'s self-assignment when the subscription changes
     * meanwhile): the transport was not answered yet, so nothing of the old
     * one fetched. A cooperative one adds to it: it waits its turn. */
    if (!a->tp->cooperative && a->assigning && a->revoke_step == R_NONE && !a->queue.len) assign_drop(a);
    /* An empty assignment is answered too (the group waits for it). */
    if (fs_assign_busy(a)) {
        struct change c = {C_ASSIGN, 0, {0}, NULL};
        if (fs_tplist_copy(&c.parts, parts) || fs_vec_push(&a->queue, c)) {
            fs_tplist_free(&c.parts);
            fs_rt_fatal(a->rt, "out of memory taking an assignment");
        }
        return;
    }
    assign_start(a, parts);
}

/* ---- revocation ---- */

static void revoke_checkpointed(void *data, int rc)
{
    fs_assign *a = data;
    /* A failed checkpoint said why; the partitions go anyway. */
    if (rc < 0 && fs_ckpt_transactional(a->ck) && a->revoke_step == R_CHECKPOINTING &&
        !a->rt->closing && !a->rt->fatal)
        fs_warn("exactly-once: the %d revoked partitions are released without committing or "
                "storing anything since the last commit (their next owner resumes there); the "
                "transaction is aborted and the partitions kept are reset next",
                a->revoke.len);
    if (a->revoke_step == R_CHECKPOINTING) a->revoke_step = R_RELEASE;
}

static void revoke_release(fs_assign *a)
{
    fs_rt *rt = a->rt;
    for (int i = 0; i < a->revoke.len; i++) {
        fs_tp *tp = &a->revoke.items[i];
        int seen = 0; /* tables are released once per partition number */
        for (int j = 0; j < i; j++) seen |= a->revoke.items[j].partition == tp->partition;
        /* ...and only when no table input of that number stays (a
         * cooperative revocation of a forwarder's input partition, say). */
        if (!seen && !tables_still_needed(rt, tp->partition, &a->revoke)) fs_tables_release(rt, tp->partition);
    }
    for (int i = 0; i < a->revoke.len; i++) {
        fs_part *p = part_of(rt, &a->revoke.items[i]);
        if (p) {
            fs_part_drop_queued(rt, p);
            fs_part_revoke(p);
        }
    }
    int lost = a->revoke_lost;
    a->tp->ops->unassign(a->tp, &a->revoke);
    fs_tplist_free(&a->revoke);
    a->revoke_step = R_NONE;
    a->revoke_some = a->revoke_lost = 0;
    /* At-least-once: checkpoints were blocked while the lost partitions went
     * (fs_assign_on_revoked); a reset unblocks them by itself. */
    if (lost && !fs_ckpt_transactional(a->ck) && a->reset_step == X_NONE) fs_ckpt_block(a->ck, 0);
    fs_info("revocation done");
    /* Exactly-once: the open transaction holds what was done for the lost
     * partitions (a zombie's outputs): it is aborted, and what stays held is
     * reset to its last commit. */
    if (lost && fs_ckpt_transactional(a->ck) && !rt->closing && !rt->fatal)
        fs_assign_reset(a, "partitions lost",
                        "the group's session expired and another member holds them now");
    next_change(a);
}

/* One step of the revocation; returns 1 while it waits. */
static int revoke_advance(fs_assign *a)
{
    fs_rt *rt = a->rt;
    switch (a->revoke_step) {
    case R_FENCE:
        fs_ckpt_sync_acks(a->ck);
        if (!fs_ckpt_agents_clear(a->ck)) {
            /* Once the worker is closing no agent runs again: waiting would
             * hold the transport's close, which serves this revocation, forever. */
            if (fs_loop_now(&rt->loop) < a->revoke_deadline && !rt->stopped && !rt->closing &&
                !a->tp->closing)
                return 1;
            fs_warn("agents still busy with events of revoked partitions after 10 s; revoking "
                    "anyway (those events will be processed again by the next owner)");
        }
        fs_ckpt_fence(a->ck, 0); /* drops what agents had not started */
        a->revoke_step = a->revoke_lost ? R_RELEASE : R_CHECKPOINT;
        if (a->revoke_lost) {
            revoke_release(a);
            return 0;
        }
        /* fall through */
    case R_CHECKPOINT:
        a->revoke_step = R_CHECKPOINTING;
        switch (fs_ckpt_start(a->ck, FS_CKPT_REVOKE, &a->revoke, revoke_checkpointed, a)) {
        case 1: /* the periodic checkpoint runs: this one follows it */
            a->revoke_step = R_CHECKPOINT;
            return 1;
        case -1:
            a->revoke_step = R_RELEASE;
            break;
        }
        if (a->revoke_step == R_CHECKPOINTING) return 1;
        /* fall through */
    case R_RELEASE:
        revoke_release(a);
        return 0;
    case R_CHECKPOINTING:
        return 1;
    default:
        return 0;
    }
}

static void revoke_start(fs_assign *a, const fs_tplist *parts, int lost)
{
    fs_rt *rt = a->rt;
    /* Agents may be in the middle of an event of these partitions (a table
     * write, a send, a sleep). Committing now would count that event twice
     * when the next owner replays it, so the revocation waits — the transport
     * holds the rebalance until unassign — while a fence stops agents from
     * starting further events of these partitions. */
    a->revoke_some = 0;
    for (int i = 0; i < rt->ntopics && !a->revoke_some; i++)
        for (int j = 0; j < rt->topics[i]->nparts && !a->revoke_some; j++)
            a->revoke_some = fs_part_held(rt->topics[i]->parts[j]) &&
                             !fs_tplist_find(parts, rt->topics[i]->name, j);
    /* Lost: released without a checkpoint (revoke_advance); nothing of them
     * is committed or written. */
    a->revoke_lost = lost;
    fs_info("revoking %d partitions%s: %s", parts->len,
            lost ? " (lost)" : a->revoke_some ? " (incremental: the others keep going)" : "",
            names_of(a, parts));
    fs_tplist_free(&a->revoke);
    if (fs_tplist_copy(&a->revoke, parts)) {
        fs_rt_fatal(rt, "out of memory revoking partitions");
        a->tp->ops->unassign(a->tp, parts);
        return;
    }
    a->revoke_deadline = fs_loop_now(&rt->loop) + FS_REVOKE_WAIT_MS;
    for (int i = 0; i < parts->len; i++) {
        fs_part *p = part_of(rt, &parts->items[i]);
        if (!p) continue;
        fs_part_fence(p);
        fs_part_drop_queued(rt, p);
    }
    fs_ckpt_fence(a->ck, 1);
    a->revoke_step = R_FENCE;
    revoke_advance(a);
}

void fs_assign_on_revoked(fs_assign *a, const fs_tplist *parts, int lost)
{
    /* At-least-once, the assignment lost (the session expired while the
     * broker was out of reach): another member owns these partitions and has
     * written their tables' changelogs since. A checkpoint now would write
     * this worker's older values after those (and store them locally with a
     * changelog position past the new owner's records): nothing of theirs is
     * checkpointed any more. The transport discarded what it had not
     * delivered; the running checkpoint is abandoned, and none starts until
     * the revocation released the tables without writing. Their input since
     * the last commit is the next owner's to process again. Exactly-once:
     * the open transaction holds what was done for them; the revocation
     * releases them without a checkpoint too, and a reset aborts it after
     * (revoke_release; the transport refuses to commit it meanwhile:
     * kafka_rebalance, txn_lost). */
    if (lost && !fs_ckpt_transactional(a->ck)) {
        fs_warn("assignment lost (the group's session expired; another member may hold the %d "
                "partitions): releasing them without a checkpoint, their input since the last "
                "commit is processed again by the next owner",
                parts->len);
        fs_ckpt_abandon(a->ck);
        fs_ckpt_block(a->ck, 1);
    }
    if (fs_assign_busy(a)) {
        struct change c = {C_REVOKE, lost, {0}, NULL};
        if (fs_tplist_copy(&c.parts, parts) || fs_vec_push(&a->queue, c)) {
            fs_tplist_free(&c.parts);
            fs_rt_fatal(a->rt, "out of memory revoking partitions");
        }
    } else {
        revoke_start(a, parts, lost);
    }
    /* Closing: the transport waits for the answer inside this call. */
    if (a->rt->closing || a->tp->closing) {
        int64_t max = FS_CLOSE_REVOKE_MS;
        if (a->close_by) {
            int64_t left = a->close_by - fs_loop_now(&a->rt->loop);
            if (left < max) max = left > 0 ? left : 0;
        }
        fs_assign_finish(a, max);
    }
}

void fs_assign_close_by(fs_assign *a, int64_t until)
{
    a->close_by = until;
}

static void next_change(fs_assign *a)
{
    while (!fs_assign_busy(a) && a->queue.len) {
        struct change c = a->queue.items[0];
        fs_vec_remove(&a->queue, 0);
        if (c.assign == C_ASSIGN) assign_start(a, &c.parts);
        else if (c.assign == C_RESET) reset_start(a, c.why, c.why + strlen(c.why) + 1);
        else revoke_start(a, &c.parts, c.lost);
        fs_tplist_free(&c.parts);
        free(c.why);
    }
}

/* ---- reset: back to the last committed state ----
 * After a failed transaction (or a test's request): agents are held; the
 * open transaction is aborted (every send since the last commit is
 * discarded); every held partition is fenced and agents finish the event in
 * hand (bounded, as a revocation); the tables' partitions are released
 * without writing what they staged or cached (Lua drops its record caches,
 * window indexes and stream times); the partitions go REVOKED, the next
 * transaction opens, the hold is released, and the partitions take the
 * assignment path again — committed offsets asked, tables re-held (LMDB and
 * the changelog's committed tail), fetching restarted at the committed
 * offsets. */
static int reset_advance(fs_assign *a);

static void reset_aborted(void *data, int result, const char *msg)
{
    fs_assign *a = data;
    if (a->reset_step != X_ABORTING) return;
    if (result == FS_TXN_FATAL) {
        fs_rt_fatal(a->rt,
                    "exactly-once: the transaction could not be aborted (%s); stopping without "
                    "committing (the input is processed again on restart)",
                    msg ? msg : "fatal producer error");
        return;
    }
    if (result != FS_TXN_OK) fs_warn("exactly-once: aborting the transaction: %s", msg ? msg : "failed");
    a->reset_step = X_FENCE;
    reset_advance(a);
}

/* One step of the reset; returns 1 while it waits. */
static int reset_advance(fs_assign *a)
{
    fs_rt *rt = a->rt;
    char err[256];
    switch (a->reset_step) {
    case X_ABORT:
        /* A checkpoint of the old state may still run (at-least-once, or a
         * revocation's): the reset follows it. */
        if (fs_ckpt_active(a->ck)) return 1;
        fs_ckpt_block(a->ck, 1);
        switch (fs_ckpt_abort_txn(a->ck, reset_aborted, a, err, sizeof err)) {
        case 0:
            a->reset_step = X_ABORTING;
            return 1;
        case -1:
            fs_rt_fatal(rt, "exactly-once: %s; stopping without committing", err);
            return 1;
        }
        a->reset_step = X_FENCE; /* nothing to abort */
        /* fall through */
    case X_FENCE: {
        fs_tplist_free(&a->reset);
        for (int i = 0; i < rt->ntopics; i++) {
            fs_topic *t = rt->topics[i];
            for (int j = 0; j < t->nparts; j++) {
                fs_part *p = t->parts[j];
                if (!fs_part_held(p)) continue;
                if (!fs_tplist_add(&a->reset, t->name, p->id, FS_OFFSET_INVALID)) {
                    fs_rt_fatal(rt, "out of memory resetting partitions");
                    return 1;
                }
                fs_part_fence(p);
                fs_part_drop_queued(rt, p);
            }
        }
        fs_ckpt_fence(a->ck, 1);
        a->reset_deadline = fs_loop_now(&rt->loop) + FS_REVOKE_WAIT_MS;
        a->reset_step = X_CLEAR;
    }
        /* fall through */
    case X_CLEAR:
        /* Agents held at a boundary are done with their event; one in the
         * middle of an event (a sleep, an HTTP call) finishes it first: its
         * table writes must land in the caches that are dropped, its sends
         * (after the abort) are discarded. */
        fs_ckpt_sync_acks(a->ck);
        if (!fs_ckpt_agents_clear(a->ck)) {
            if (fs_loop_now(&rt->loop) < a->reset_deadline && !rt->stopping && !rt->closing) return 1;
            fs_warn("reset: agents still busy with an event after %d s; resetting anyway",
                    FS_REVOKE_WAIT_MS / 1000);
        }
        fs_ckpt_fence(a->ck, 0);
        break;
    case X_ABORTING:
        return 1;
    default:
        return 0;
    }
    /* Release without writing, then take the partitions again. */
    for (int i = 0; i < a->reset.len; i++) {
        fs_tp *tp = &a->reset.items[i];
        int seen = 0;
        for (int j = 0; j < i; j++) seen |= a->reset.items[j].partition == tp->partition;
        if (!seen) fs_tables_release(rt, tp->partition);
        fs_part *p = part_of(rt, tp);
        if (p) {
            fs_part_drop_queued(rt, p);
            fs_part_revoke(p);
        }
    }
    fs_tables_forget_global(rt);
    rt->resets++;
    if (fs_ckpt_transactional(a->ck))
        fs_warn("exactly-once: %s (%s): its transaction was aborted and %d partitions were reset "
                "to their last committed state; their input is processed again",
                a->reset_what, a->reset_why, a->reset.len);
    else
        fs_warn("%s (%s): %d partitions were reset to their last committed state; their input is "
                "processed again",
                a->reset_what, a->reset_why, a->reset.len);
    a->reset_step = X_NONE;
    if (fs_ckpt_reopen(a->ck, err, sizeof err)) {
        fs_rt_fatal(rt, "exactly-once: could not open a transaction after the reset: %s", err);
        return 0;
    }
    fs_ckpt_hold(a->ck, 0);
    fs_tplist parts = a->reset;
    a->reset = (fs_tplist){0};
    if (parts.len) assign_start(a, &parts);
    fs_tplist_free(&parts);
    if (!a->assigning) next_change(a);
    return 0;
}

static void reset_start(fs_assign *a, const char *what, const char *why)
{
    snprintf(a->reset_what, sizeof a->reset_what, "%s", what);
    snprintf(a->reset_why, sizeof a->reset_why, "%s", why);
    fs_ckpt_hold(a->ck, 1);
    /* Driven by the loop (fs_assign_poll), never from inside the caller: a
     * failing checkpoint's callback, or Lua (the test trigger). */
    a->reset_step = X_ABORT;
}

void fs_assign_reset(fs_assign *a, const char *what, const char *why)
{
    fs_ckpt_hold(a->ck, 1); /* at once: nothing more goes into the doomed transaction */
    if (fs_assign_busy(a)) {
        size_t lw = strlen(what), ly = strlen(why);
        struct change c = {C_RESET, 0, {0}, malloc(lw + ly + 2)};
        if (c.why) {
            memcpy(c.why, what, lw + 1);
            memcpy(c.why + lw + 1, why, ly + 1);
        }
        if (!c.why || fs_vec_push(&a->queue, c)) {
            free(c.why);
            fs_rt_fatal(a->rt, "out of memory queueing a reset");
        }
        return;
    }
    reset_start(a, what, why);
}

/* The checkpoint's failure handler: a failed transaction resets. */
static void ckpt_failed(void *data, const char *what, const char *why)
{
    char occasion[64];
    snprintf(occasion, sizeof occasion, "the %s checkpoint failed", what);
    fs_assign_reset(data, occasion, why);
}

void fs_assign_poll(fs_assign *a)
{
    if (a->revoke_step != R_NONE) revoke_advance(a);
    if (a->reset_step != X_NONE) reset_advance(a);
}

void fs_assign_finish(fs_assign *a, int64_t max_ms)
{
    fs_rt *rt = a->rt;
    int64_t until = fs_loop_now(&rt->loop) + max_ms;
    /* A reset in progress is abandoned: no agent runs again, and the stop
     * commits nothing while its transaction is not reopened. */
    if (a->reset_step != X_NONE) {
        a->reset_step = X_NONE;
        fs_tplist_free(&a->reset);
        fs_ckpt_fence(a->ck, 0);
    }
    for (;;) {
        assign_drop(a);
        if (a->revoke_step == R_NONE) {
            /* Queued assignments are not taken any more; queued revocations
             * still get their answer. */
            if (!a->queue.len) break;
            struct change c = a->queue.items[0];
            fs_vec_remove(&a->queue, 0);
            if (c.assign == C_REVOKE) revoke_start(a, &c.parts, c.lost);
            fs_tplist_free(&c.parts);
            free(c.why);
            continue;
        }
        a->revoke_deadline = 0;
        if (!revoke_advance(a)) continue;
        /* Waiting for a checkpoint (the running periodic one, or its own):
         * at most until the stop's time is up, then it is given up (the
         * drain says so) and the partitions go without it. */
        int64_t left = until - fs_loop_now(&rt->loop);
        if (left <= 0)
            fs_warn("stopping: no time left for the checkpoint of the %d revoked partitions; "
                    "releasing them without it (their input since the last commit is processed "
                    "again)",
                    a->revoke.len);
        fs_ckpt_drain(a->ck, left > 0 ? left : 0);
        if (a->revoke_step == R_CHECKPOINTING) a->revoke_step = R_RELEASE;
    }
}
