/* fs_store: one LMDB environment holding one partition of one table.
 *
 * Two named databases: "data" (encoded key -> encoded value) and "meta"
 * (name -> int64: the changelog offset the data covers, the input offsets it
 * reflects). A batch of writes and the meta values that describe it commit in
 * one write transaction, so data and offsets never disagree. The map grows
 * (doubling) when full instead of failing with MDB_MAP_FULL; a file system
 * that is full is an error (errors name the store's data.mdb). A write that
 * may have changed more than 1 MiB of pages reopens the environment after its
 * commit (LMDB frees the page buffers a transaction used only then).
 *
 * Lifetimes: values returned by fs_store_get are copied into the caller's
 * buffer before the read transaction ends; no transaction is held between
 * calls (nothing is held across a coroutine yield). */
#ifndef FS_STORE_H
#define FS_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "fs_buf.h"

typedef struct fs_store fs_store;

typedef struct fs_store_op {
    const void *key;
    size_t klen;
    const void *val; /* NULL: delete the key */
    size_t vlen;
} fs_store_op;

typedef struct fs_store_meta {
    const char *name;
    int64_t value;
} fs_store_meta;

/* Opens (creating the directory and files as needed) the store in `dir`.
 * readonly: for offline readers (fstream-lua table); fails if it doesn't exist.
 * A writer owns the store alone: it holds an exclusive flock on `dir`/owner.lock
 * until fs_store_close (or its process dies, whatever the way). Several workers
 * may share a data directory (`--workers N`); LMDB alone would let two of them
 * write one partition's files in turn, each with its own idea of the offsets
 * they cover. Returns FS_STORE_BUSY (err says so) while another open store,
 * in this process or another, holds the lock. */
#define FS_STORE_BUSY (-2)
int fs_store_open(fs_store **out, const char *dir, int readonly, char *err, size_t errlen);
/* A standby copy (fs_standby): the same files as an owner's, written from the
 * changelog while another worker owns the partition. It never keeps
 * owner.lock: it takes it around each fs_store_write only, which then
 * returns FS_STORE_BUSY when an owner holds it (a worker sharing the data
 * directory took the partition: the copy must let go). The open itself is
 * FS_STORE_BUSY while an owner holds the lock, or while another copy of the
 * same files is open (it holds `dir`/standby.lock for its life: one writer
 * of a copy at a time). */
int fs_store_open_standby(fs_store **out, const char *dir, char *err, size_t errlen);
void fs_store_close(fs_store *s);

/* Damaged files (truncated, a bad header, data.mdb gone or empty) are found
 * at open: a reader fails with "damaged local state"; a writer moves them to
 * `dir`/damaged-<UTC time>/ and opens new, empty ones, which the caller fills
 * from the changelog. Then this says what was found and where the files went
 * (valid while s is open); NULL when nothing was wrong. A failed write says
 * "no space left on device" when the disk is full, with the file's path. */
const char *fs_store_damage(const fs_store *s);

/* Looks key up; on a hit copies the value into out (reset first) and sets *found. */
int fs_store_get(fs_store *s, const void *key, size_t klen, fs_buf *out, int *found, char *err,
                 size_t errlen);

/* Applies ops and sets meta values in one write transaction. sync=0 skips the
 * fsync (recovery batches; the caller syncs at the end with fs_store_sync). */
int fs_store_write(fs_store *s, const fs_store_op *ops, size_t nops, const fs_store_meta *meta,
                   size_t nmeta, int sync, char *err, size_t errlen);
int fs_store_sync(fs_store *s);
/* Deletes every entry and every meta value (one transaction, synced). */
int fs_store_clear(fs_store *s, char *err, size_t errlen);

/* Reads a meta value; *found is 0 when absent. */
int fs_store_meta_get(fs_store *s, const char *name, int64_t *value, int *found, char *err,
                      size_t errlen);

/* Calls cb for every entry in key order inside one read transaction; cb must
 * copy what it keeps. A non-zero return from cb stops the scan and is returned. */
int fs_store_scan(fs_store *s, int (*cb)(void *ud, const void *k, size_t kl, const void *v, size_t vl),
                  void *ud, char *err, size_t errlen);

/* fs_store_scan from the first key >= from (flen 0: from the start); cb stops
 * the scan where the caller's range ends (a prefix, a count). */
int fs_store_scan_from(fs_store *s, const void *from, size_t flen,
                       int (*cb)(void *ud, const void *k, size_t kl, const void *v, size_t vl),
                       void *ud, char *err, size_t errlen);

/* Copies the last entry (in key order) into k and v; *found is 0 when empty. */
int fs_store_last(fs_store *s, fs_buf *k, fs_buf *v, int *found, char *err, size_t errlen);

size_t fs_store_count(fs_store *s);
const char *fs_store_path(const fs_store *s);

#endif
