/* fs_table_types: what a table is — its partitions' stores and staged writes.
 * Shared by fs_table.c (holds, staging, writes) and fs_recovery.c (changelog
 * replay into the stores), which must not include each other's headers the
 * other way round: fs_table uses fs_recovery, fs_recovery only these types.
 * State layer. Lifetimes: see fs_table.h. */
#ifndef FS_TABLE_TYPES_H
#define FS_TABLE_TYPES_H

#include <stddef.h>
#include <stdint.h>

#include "fs_buf.h"
#include "fs_rt.h"
#include "fs_store.h"
#include "fs_vec.h"

/* A write staged by the running checkpoint: key and value in the partition's
 * arena, the value right after the key. 16 bytes: a burst of distinct keys
 * stages one per key (BENCHMARKS.md, issue 14). */
struct fs_staged {
    size_t off;          /* the key's */
    uint32_t klen, vlen; /* vlen FS_STAGED_DEL: a delete */
};
#define FS_STAGED_DEL UINT32_MAX
#define FS_STAGED_KEY(tp, op) ((tp)->arena.data + (op)->off)
#define FS_STAGED_VAL(tp, op) ((op)->vlen == FS_STAGED_DEL ? NULL : (tp)->arena.data + (op)->off + (op)->klen)
#define FS_STAGED_VLEN(op) ((op)->vlen == FS_STAGED_DEL ? 0 : (size_t)(op)->vlen)

struct fs_table {
    fs_rt *rt;
    int id;
    char *name;
    char *dir; /* <data dir>/<table> */
    int partitions;
    int global; /* every worker holds every partition and tails the changelog */
    fs_topic *changelog;
    char *sig; /* what must not change across a reload (partitions, encodings, windows) */
    struct fs_tpart {
        struct fs_store *store; /* open while this worker holds the partition */
        fs_buf arena;           /* staged keys and values */
        FS_VEC(struct fs_staged) ops;
        size_t sent;     /* ops[0..sent) went to the changelog (fs_tables_send_staged) */
        int64_t cl_next; /* changelog offset after the last delivered staged record */
        fs_buf in_hdr;   /* "topic@offset;..." input offsets this flush reflects, NUL-ended */
        int hooked;      /* the hook was told "hold" (recovery over), not "release" yet */
    } *parts;
};

/* Tables whose name starts with "__" are the runtime's own (the web server's
 * __workers): their records are left out of the worker's counts
 * (changelog_records, lmdb_writes, recovered_records), which describe the app's tables. */
static inline int fs_table_internal(const struct fs_table *t)
{
    return t->name[0] == '_' && t->name[1] == '_';
}

#endif
