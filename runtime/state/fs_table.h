/* fs_table: tables' partitions on this worker (the state layer).
 *
 * A table has one LMDB store (fs_store) per partition this worker holds and the
 * writes staged by the running checkpoint (produced to the changelog, written
 * to LMDB once the changelog has them). Holding a partition opens its stores
 * and replays its changelogs (fs_recovery), as work the loop drives.
 *
 * Upward news (a partition is held or released, a checkpoint stages, a global
 * table changed) goes through one hook that the layer above registers
 * (fs_tables_set_hook); nothing here calls Lua.
 *
 * Lifetimes: fs_table objects are created by the Lua binding (rt:table) and
 * live as long as the runtime (fs_tables_close frees them). A partition's
 * store is open from fs_tables_hold until fs_tables_release. */
#ifndef FS_TABLE_H
#define FS_TABLE_H

#include <stddef.h>
#include <stdint.h>

#include "fs_rt.h"
#include "fs_store.h"
#include "fs_table_types.h"

/* The layer above's hook: event "hold" | "release" | "flush" | "changed";
 * tid 0 = every partitioned table, else a global table's id + 1; p -1 for
 * "flush". keys (for "changed" only, else NULL): the keys of the records just
 * applied, valid during the call. Non-zero return: the hook failed (it has set
 * the runtime's fatal error). */
typedef int (*fs_table_hook_fn)(void *data, const char *event, int32_t p, int tid,
                                const fs_store_op *keys, size_t nkeys);
/* Registers the hook (replacing the last one); data is the caller's, kept
 * until the hook is replaced or the runtime closes. -1: out of memory. */
int fs_tables_set_hook(fs_rt *rt, fs_table_hook_fn fn, void *data);

/* Opens partition p of every table and starts replaying its changelog; done(data, p, rc) is
 * called from the loop once every table's partition p is recovered (rc 0), or failed (rc -1,
 * fatal set), or interrupted by a stop (rc 1). May call done before returning. done may be
 * NULL. Returns -1 (fatal set, done never called) when p cannot be held at all.
 * fs_tables_release of p before done cancels the replay, and done is not called. */
int fs_tables_hold(fs_rt *rt, int32_t p, void (*done)(void *data, int32_t p, int rc), void *data);
/* Closes partition p (after a checkpoint); a replay of it still running is
 * cancelled (LMDB keeps what it wrote: the next hold resumes from there). */
void fs_tables_release(fs_rt *rt, int32_t p);
/* Lua stages dirty entries (changelog + staging). force: also give every held
 * partition with nothing to stage one record carrying the input offsets (at a
 * revocation or shutdown: the next owner must resume exactly there). */
int fs_tables_flush(fs_rt *rt, int force);
int fs_tables_write(fs_rt *rt, int use_snap); /* staged entries -> LMDB with offsets */
/* At-least-once: at most max of the staged entries not sent yet -> their
 * changelogs, in staging order; how many, or -1. *more: whether some are left. */
int fs_tables_send_staged(fs_rt *rt, int64_t max, int *more, char *err, size_t errlen);
/* How many of a checkpoint's changelog records may wait for delivery at once.
 * librdkafka holds each one (message, copied key and value, the input-offsets
 * header: ~ 400 bytes) until the broker acknowledges it: a burst of 200,000
 * distinct keys sent in one go peaked at ~ 55 MB more (BENCHMARKS.md, issue 14). */
#define FS_TABLES_SEND_INFLIGHT 16384
/* FS_TABLES_SEND_INFLIGHT, or FSTREAM_CHANGELOG_INFLIGHT records (read once). */
int64_t fs_tables_send_bound(void);
/* Where input partition p of topic resumes, given the group's committed
 * offset (-1: none): the least of what its tables applied (see fs_table.c). */
int64_t fs_tables_resume_offset(fs_rt *rt, const char *topic, int32_t p, int64_t committed);
int fs_table_stage(fs_rt *rt, fs_table *t, int32_t p, const void *k, size_t kl, const void *v,
                   size_t vl, char *err, size_t errlen);
/* Cancels every replay in flight (logging where each stopped) and closes the
 * recovery consumer: before the transport it talks to closes. */
void fs_tables_stop_recovery(fs_rt *rt);
/* A reset (exactly-once abort): global tables drop what they staged and their
 * Lua side's caches (their partitions stay held; LMDB has what committed). */
void fs_tables_forget_global(fs_rt *rt);
void fs_tables_close(fs_rt *rt);
/* Recovers global tables (the loop's work, awaited: start-up runs before the
 * worker's loop, and agents may read a global table at once), then follows them. */
int fs_tables_start_global(fs_rt *rt);
/* After a reload: opens tables the new version added, and hands every held
 * partition to the new Lua tables ("hold"). Waits for the replays it starts. */
int fs_tables_rebind(fs_rt *rt);
void fs_tables_tail_poll(fs_rt *rt); /* apply what other workers wrote to them */

/* Recovery progress for stats (a readiness probe): fn for every table
 * partition whose replay is queued or running. */
void fs_tables_recovering(fs_rt *rt,
                          void (*fn)(void *ud, const fs_table *t, int32_t p, int64_t done,
                                     int64_t total),
                          void *ud);

#endif
