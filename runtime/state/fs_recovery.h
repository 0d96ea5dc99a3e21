/* fs_recovery: changelog replay as work the loop drives.
 *
 * A queue of table partitions to bring up to their changelog's end, replayed
 * one at a time (FIFO) by one assign-only consumer. Nothing blocks the loop:
 * the changelog's end is asked for on a helper thread (librdkafka has no
 * asynchronous watermark query), retried on a timer while the changelog has no
 * leader yet; records are applied a bounded batch (one LMDB transaction) per
 * loop iteration, woken by the consumer queue's eventfd. Between iterations
 * the replay holds no librdkafka message or queue handle.
 *
 * A stop (rt->stopping) interrupts every replay at its next step: LMDB keeps
 * each batch written with the changelog offset it covers, so the next start
 * resumes there.
 *
 * Lifetimes: the fs_recovery object belongs to the table layer (fs_table.c),
 * which creates it with the first replay and frees it at close. It creates
 * rt->recovery (the consumer) and destroys it in fs_recovery_free. A queued
 * table partition's store must stay open until its done callback or
 * fs_recovery_cancel. */
#ifndef FS_RECOVERY_H
#define FS_RECOVERY_H

#include <stdint.h>

#include "fs_rt.h"

typedef struct fs_recovery fs_recovery;

/* Called from the loop when t's partition p is recovered (rc 0), failed (rc -1,
 * fatal set) or interrupted by a stop (rc 1). Not called after a cancel. */
typedef void (*fs_recovery_done_fn)(void *data, fs_table *t, int32_t p, int rc);

fs_recovery *fs_recovery_new(fs_rt *rt, fs_recovery_done_fn done, void *data);
/* Cancels what is queued (logging where each replay stopped), waits for a
 * watermark query in flight, closes the consumer. NULL is fine. */
void fs_recovery_free(fs_recovery *r);

/* Queues the replay of t's partition p (its store open). -1: out of memory. */
int fs_recovery_add(fs_recovery *r, fs_table *t, int32_t p);
/* 1 when t's partition p is queued or replaying (t NULL: any table's p). */
int fs_recovery_pending(const fs_recovery *r, const fs_table *t, int32_t p);
/* Drops the replay of every table's partition p (p -1: every partition),
 * saying `why` it stopped ("a stop", "a revocation"). */
void fs_recovery_cancel(fs_recovery *r, int32_t p, const char *why);
/* Runs the loop until nothing is queued: start-up and reload, before the
 * worker's loop runs. 1 if a stop signal came first (replays cancelled), -1 on
 * a fatal error. */
int fs_recovery_wait(fs_recovery *r);

void fs_recovery_each(const fs_recovery *r,
                      void (*fn)(void *ud, const fs_table *t, int32_t p, int64_t done,
                                 int64_t total),
                      void *ud);

#endif
