/* fs_checkpoint: the commit protocol, written once (layer: checkpoint).
 *
 *   stage    agents' acknowledgements are synced; tables stage their dirty
 *            entries (produced to the changelogs); the committable offset of
 *            every partition in scope is snapshotted; the send epoch moves on,
 *            so the sends this checkpoint covers are those of the old epoch
 *   deliver  wait, driven by the loop, until every send of that epoch is
 *            delivered (or the occasion's deadline passes: nothing is committed)
 *   persist  staged table entries go to LMDB with the snapshotted input offsets
 *   commit   the snapshotted offsets are committed (for occasions that need
 *            it, the protocol waits for the broker's answer)
 *
 * Every occasion is a call of that protocol with parameters (fs_ckpt_occasion):
 * the periodic checkpoint (commit_interval), a revocation (only the revoked
 * partitions' offsets), a reload (a refused commit is fine: the new version
 * restarts from these positions anyway) and the stop. What the steps do is the
 * strategy's (fs_ckpt_strategy): at-least-once today; exactly-once adds a
 * transactional one.
 *
 * One checkpoint runs at a time. fs_ckpt_start refuses (1) while one runs:
 * the periodic one is skipped then, a revocation retries on the next turn of
 * the loop. Running each to its end keeps the epoch rule simple: when a
 * checkpoint stages, every send of the epoch before its own was delivered by
 * the previous checkpoint, so waiting for its own epoch covers everything
 * produced before its snapshot. (A checkpoint that gave up on delivery leaves
 * `drain_all` set: the next one waits for every send.)
 *
 * Ownership: an fs_ckpt belongs to its runtime (fs_rt.ckpt) and lives as long
 * as it; it points to the runtime and its transport, which outlive it. The
 * `only` list a request names is copied. */
#ifndef FS_CHECKPOINT_H
#define FS_CHECKPOINT_H

#include <stdint.h>

#include "fs_transport.h"

typedef struct fs_rt fs_rt;
typedef struct fs_ckpt fs_ckpt;

enum fs_ckpt_occasion { FS_CKPT_PERIODIC, FS_CKPT_REVOKE, FS_CKPT_RELOAD, FS_CKPT_STOP };

/* The policy. Each hook returns 0, or -1 when the checkpoint fails (after
 * setting the runtime's fatal state or logging why); NULL hooks do nothing.
 *
 * at-least-once: begin/abort are NULL; persist writes LMDB; commit commits
 * the offsets through the transport; persist runs before commit, so a crash
 * between the two resumes from LMDB's offsets (the later of the two).
 *
 * exactly-once (fs_ckpt_exactly_once): a transaction is always open (the
 * worker opened the first at start, each commit opens the next), so begin is
 * NULL; commit is txn_commit (send_offsets_to_transaction with the group's
 * metadata, then commit_transaction, on the transport's thread), whose end
 * comes back through fs_ckpt_on_txn_done; persist runs after the commit
 * (persist_after_commit: LMDB is never ahead of Kafka); abort hands the
 * failure to the reset (see `transactional` below). */
typedef struct fs_ckpt_strategy {
    const char *name;
    int (*begin)(fs_ckpt *ck);
    int (*persist)(fs_ckpt *ck);
    /* Sends `offsets` (never empty) to be committed. Returns 0 and later
     * calls fs_ckpt_committed (or before returning), or -1 at once. */
    int (*commit)(fs_ckpt *ck, const fs_tplist *offsets);
    void (*abort)(fs_ckpt *ck);
    int persist_after_commit;
    /* A checkpoint is a transaction (exactly-once). Then the protocol adds:
     *   quiesce  before stage, agents are held at their next event boundary
     *            (fs_agent_hooks.hold) until every stream is at one and no
     *            window close pass runs (.quiet); bounded by
     *            FS_CKPT_QUIESCE_MS, past which the checkpoint fails
     *   seal     after stage: later sends wait for the next transaction, and
     *            the hold is released (agents go on at once)
     *   commit   every consuming partition's snapshot, whatever the
     *            occasion's scope (one transaction holds every partition's
     *            outputs); the checkpoint always waits for the answer and a
     *            refusal is always a failure
     *   reopen   after the commit, before persist: the next transaction opens
     *   abort    on any failure: the open transaction must be aborted and
     *            every held partition reset to its committed state; the
     *            registered failure handler (fs_ckpt_on_failure) does that */
    int transactional;
    void (*seal)(fs_ckpt *ck);
    int (*reopen)(fs_ckpt *ck, char *err, size_t errlen);
} fs_ckpt_strategy;

extern const fs_ckpt_strategy fs_ckpt_at_least_once;
extern const fs_ckpt_strategy fs_ckpt_exactly_once;

/* How long an exactly-once checkpoint waits for agents to reach an event
 * boundary (half the producer's transaction.timeout.ms of 10 s: a
 * transaction must commit before the broker aborts it), and for the
 * deliveries of its transaction. */
#define FS_CKPT_QUIESCE_MS 5000
#define FS_CKPT_TXN_DELIVER_MS 10000

/* Exactly-once: what one transaction may take in, in sends and in their keys'
 * and values' bytes (fs_rt.txn_cap_sends/_bytes; after the send that
 * reaches a bound no new event is handed to agents until the next checkpoint
 * seals the transaction, and one starts at once). A transaction must deliver within FS_CKPT_TXN_DELIVER_MS,
 * and librdkafka times its messages out at transaction.timeout.ms (the same
 * 10 s), so no deadline can grow past what a slow broker delivers in that
 * time: the bound adapts instead. It starts at the maximum; a failed
 * transaction sets it to a quarter of what that one delivered; a committed
 * one whose delivery and commit took more than half the deadline sets it to
 * what would have taken a quarter of it; a committed one that reached the
 * bound and took less than a quarter of the deadline doubles it (up to twice
 * what the last shrink set; a quarter more each time above). */
#define FS_CKPT_TXN_MIN_SENDS 100
#define FS_CKPT_TXN_MAX_SENDS 100000
#define FS_CKPT_TXN_MIN_BYTES (64 * 1024)
#define FS_CKPT_TXN_MAX_BYTES (64 * 1024 * 1024)

fs_ckpt *fs_ckpt_new(fs_rt *rt, fs_transport *tp, const fs_ckpt_strategy *s);
void fs_ckpt_free(fs_ckpt *ck);

/* What the checkpoint and the partition orchestration need from whoever runs
 * the agents (the Lua layer registers it; an upper layer, so a registration).
 * sync_acks: acknowledge every event an agent has moved past, before offsets
 * are snapshotted. fence(on): on, agents start no event of a fencing
 * partition; off, the events of such partitions they have not started are
 * dropped (the next owner gets them). clear: 1 when no agent is in the middle
 * of an event of a fencing partition. data outlives the registration. */
typedef struct fs_agent_hooks {
    void (*sync_acks)(void *data);
    void (*fence)(void *data, int on);
    int (*clear)(void *data);
    /* hold(on): agents stop at their next event boundary / go on. quiet: 1
     * when every agent is at an event boundary and no window close pass runs. */
    void (*hold)(void *data, int on);
    int (*quiet)(void *data);
} fs_agent_hooks;
void fs_ckpt_set_agents(fs_ckpt *ck, const fs_agent_hooks *h, void *data);
void fs_ckpt_sync_acks(fs_ckpt *ck);
void fs_ckpt_fence(fs_ckpt *ck, int on);
int fs_ckpt_agents_clear(fs_ckpt *ck);
void fs_ckpt_hold(fs_ckpt *ck, int on);
int fs_ckpt_agents_quiet(fs_ckpt *ck);

/* ---- exactly-once: failures and the reset (fs_assign) ----
 * A failed transactional checkpoint leaves agents held, blocks further
 * checkpoints (fs_ckpt_start: -1) and calls the failure handler with what
 * failed and why; the handler (fs_assign's reset) aborts the transaction
 * (fs_ckpt_abort_txn), resets the partitions, opens the next transaction and
 * lets checkpoints run again (fs_ckpt_reopen). Not called while the worker
 * closes or after a fatal error. */
void fs_ckpt_on_failure(fs_ckpt *ck, void (*fn)(void *data, const char *what, const char *why),
                        void *data);
int fs_ckpt_transactional(const fs_ckpt *ck);
/* Aborts the open transaction; done(data, result, msg) follows (fs_txn_result).
 * Returns 0 started, 1 nothing to abort (not transactional: done is not
 * called), -1 could not start (msg in err). */
int fs_ckpt_abort_txn(fs_ckpt *ck, void (*done)(void *data, int result, const char *msg), void *data,
                      char *err, size_t errlen);
/* Opens the next transaction after a reset and unblocks checkpoints; the
 * aborted transaction's counts (sends, bytes, undelivered) start again at
 * zero. -1 with a message. */
int fs_ckpt_reopen(fs_ckpt *ck, char *err, size_t errlen);
/* A checkpoint may not start (-1) while on (a reset in progress). */
void fs_ckpt_block(fs_ckpt *ck, int on);
/* Ends the running checkpoint, if any, as failed without persisting or
 * committing anything (its sends were discarded: a lost assignment). */
void fs_ckpt_abandon(fs_ckpt *ck);
/* A send of the open transaction failed (not aborted): the transaction cannot
 * commit; the checkpoint that covers it fails (and resets). */
void fs_ckpt_send_failed(fs_ckpt *ck, const char *topic, const char *why);
/* The open transaction must not commit (why: in words): the next checkpoint
 * fails, aborts and resets (the test trigger's way under exactly-once). */
void fs_ckpt_doom(fs_ckpt *ck, const char *why);
/* Transport callback (fs_transport_cb.txn_done), routed here by the worker. */
void fs_ckpt_on_txn_done(fs_ckpt *ck, void *ctx, int result, const char *msg);

/* Starts a checkpoint. only: the partitions whose offsets it commits (NULL:
 * every partition this worker consumes). done(data, rc) reports its end: 0
 * committed (or nothing to commit), -1 failed (nothing committed; the input
 * is processed again). It may be called before fs_ckpt_start returns.
 * Returns 0 when started, 1 when another checkpoint runs (try later; done is
 * not called), -1 when it could not start (done is not called; also while a
 * failed transaction waits for its reset). */
int fs_ckpt_start(fs_ckpt *ck, int occasion, const fs_tplist *only,
                  void (*done)(void *data, int rc), void *data);
int fs_ckpt_active(const fs_ckpt *ck);

/* How long checkpoints took, per occasion, from fs_ckpt_start to their end
 * (failed ones included; those are also counted in `failed`). Read by
 * /metrics (fstream_checkpoint_duration_seconds). Bounds in nanoseconds; the
 * last bucket is everything above the last bound. */
#define FS_CKPT_BOUNDS                                                                         \
    {1000000, 5000000, 10000000, 25000000, 50000000, 100000000, 250000000, 500000000,         \
     1000000000, 2500000000, 5000000000, 10000000000, 30000000000}
enum { FS_CKPT_NBOUNDS = 13, FS_CKPT_NOCCASIONS = 4 };
typedef struct fs_ckpt_stats {
    int64_t count, failed, ns_sum;
    int64_t buckets[FS_CKPT_NBOUNDS + 1];
} fs_ckpt_stats;
/* The statistics of an occasion (fs_ckpt_occasion), and its name. */
const fs_ckpt_stats *fs_ckpt_stats_of(const fs_ckpt *ck, int occasion);
const char *fs_ckpt_occasion_name(int occasion);
/* Advances the running checkpoint; the loop calls it on every turn. */
void fs_ckpt_poll(fs_ckpt *ck);
/* Drives the running checkpoint to its end, waiting on the transport (at most
 * max_ms): for when the loop no longer turns (the stop, a reload's swap). */
void fs_ckpt_drain(fs_ckpt *ck, int64_t max_ms);
/* Runs a whole checkpoint now (after the running one ends), bounded as above.
 * Returns its rc. */
int fs_ckpt_run(fs_ckpt *ck, int occasion, int64_t max_ms);

/* The commit a strategy sent is over: err 0 = taken. For the strategies. */
void fs_ckpt_committed(fs_ckpt *ck, int err, const char *errstr);
fs_rt *fs_ckpt_rt(fs_ckpt *ck);
fs_transport *fs_ckpt_transport(fs_ckpt *ck);

/* Transport callback (fs_transport_cb.commit_done), routed here by the worker. */
void fs_ckpt_on_commit_done(fs_ckpt *ck, void *ctx, const fs_tplist *offsets, int err);

#endif
