#include "fs_store.h"

#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <lmdb.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "fs_log.h"

#define FS_STORE_INITIAL_MAP (64u << 20)

struct fs_store {
    MDB_env *env;
    MDB_dbi data, meta;
    size_t mapsize;
    char *path;
    int lockfd; /* writers: owner.lock, flocked while open; -1 otherwise */
    int standby; /* a standby copy: owner.lock flocked only during each write */
    int copyfd;  /* a standby copy: standby.lock, flocked while open (one copy per directory) */
    char damage[4600]; /* what fs_store_open found damaged and moved aside; "" if nothing */
};

static int fail(char *err, size_t errlen, const char *what, int rc)
{
    if (err) snprintf(err, errlen, "%s: %s", what, mdb_strerror(rc));
    return -1;
}

/* A store whose environment could not be opened again (reopen_env). */
static int no_env(const fs_store *s, char *err, size_t errlen)
{
    if (err) snprintf(err, errlen, "%s/data.mdb: not open (a reopen failed)", s->path);
    return -1;
}

static int mkdirs(const char *path)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(tmp, 0755) && errno != EEXIST) return -1;
        *p = '/';
    }
    return mkdir(tmp, 0755) && errno != EEXIST ? -1 : 0;
}

/* LMDB's answers that mean the files are not what LMDB wrote (rather than
 * "cannot open": permissions, no memory, no space). */
static int damaged_rc(int rc)
{
    return rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH || rc == MDB_CORRUPTED ||
           rc == MDB_PAGE_NOTFOUND || rc == MDB_PANIC || rc == MDB_INCOMPATIBLE || rc == MDB_BAD_DBI;
}

/* Free bytes for an unprivileged writer on the file system holding path. */
static unsigned long long free_bytes(const char *path)
{
    struct statvfs v;
    if (statvfs(path, &v)) return ~0ull;
    return (unsigned long long)v.f_bavail * v.f_frsize;
}

/* Below this, a failed write is put down to a full file system: LMDB reports
 * a short pwrite (what a full disk gives) as EIO, not ENOSPC. */
#define FS_STORE_LOW_SPACE (1u << 20)

/* err = "PATH/data.mdb: WHAT: why", where why says "no space left on device"
 * when that is what happened (LMDB's EIO for a short write included). */
static int fail_at(const fs_store *s, char *err, size_t errlen, const char *what, int rc)
{
    if (!err) return -1;
    unsigned long long left = free_bytes(s->path);
    int full = rc == ENOSPC || rc == EDQUOT || (rc == EIO && left < FS_STORE_LOW_SPACE);
    if (full)
        snprintf(err, errlen, "%s/data.mdb: %s: no space left on device (%llu KiB free on its file system)",
                 s->path, what, left == ~0ull ? 0ull : left / 1024);
    else
        snprintf(err, errlen, "%s/data.mdb: %s: %s", s->path, what, mdb_strerror(rc));
    return -1;
}

/* LMDB maps lock.mdb shared and writes it through the map: on a file system
 * that is full, touching a page of it that has no block yet kills the process
 * with SIGBUS. Its blocks are reserved here first, where a full disk is an
 * error (ENOSPC) with a message. 8 KiB is the size LMDB gives it (126 readers). */
#define FS_STORE_LOCK_SIZE 8192

static int reserve_lock(const char *dir, int readonly, char *err, size_t errlen)
{
    char file[4200];
    if (snprintf(file, sizeof file, "%s/lock.mdb", dir) >= (int)sizeof file) {
        snprintf(err, errlen, "%s: path too long", dir);
        return -1;
    }
    int fd = open(file, readonly ? O_RDWR | O_CLOEXEC : O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return 0; /* LMDB says why, or (readonly) opens it its own way */
    struct stat st;
    off_t len = fstat(fd, &st) == 0 && st.st_size > FS_STORE_LOCK_SIZE ? st.st_size : FS_STORE_LOCK_SIZE;
    int rc = posix_fallocate(fd, 0, len);
    close(fd);
    if (rc == ENOSPC || rc == EDQUOT) {
        snprintf(err, errlen, "%s: cannot reserve %s: no space left on device (%llu KiB free on its file system)",
                 dir, file, free_bytes(dir) / 1024);
        return -1;
    }
    return 0; /* another failure (a file system without fallocate): LMDB goes on as before */
}

/* Opens the LMDB environment of s in dir. Returns 0, an LMDB or errno code,
 * with *damage set when the files are damaged (what was found in why). */
static int open_env(fs_store *s, const char *dir, int readonly, int *damage, char *why, size_t whylen)
{
    char file[4200];
    struct stat st;
    *damage = 0;
    int rc = mdb_env_create(&s->env);
    if (rc) return rc;
    mdb_env_set_maxdbs(s->env, 2);
    /* The initial map (FSTREAM_LMDB_MAP_SIZE bytes overrides 64 MiB) only reserves
     * address space; an existing, bigger file keeps its size. */
    s->mapsize = FS_STORE_INITIAL_MAP;
    const char *env = getenv("FSTREAM_LMDB_MAP_SIZE");
    if (env && strtoull(env, NULL, 10) >= 65536) s->mapsize = (size_t)strtoull(env, NULL, 10);
    if (snprintf(file, sizeof file, "%s/data.mdb", dir) >= (int)sizeof file) return ENAMETOOLONG;
    int have = stat(file, &st) == 0;
    if (have && st.st_size == 0) {
        /* LMDB would take an empty file for a new environment. */
        *damage = 1;
        snprintf(why, whylen, "data.mdb is empty");
        return MDB_INVALID;
    }
    if (have && (size_t)st.st_size > s->mapsize) s->mapsize = (size_t)st.st_size;
    mdb_env_set_mapsize(s->env, s->mapsize);
    /* NOTLS: transactions are not tied to threads (one loop thread anyway). */
    rc = mdb_env_open(s->env, dir, MDB_NOTLS | (readonly ? MDB_RDONLY : 0), 0644);
    if (rc) {
        if (damaged_rc(rc)) {
            *damage = 1;
            snprintf(why, whylen, "LMDB cannot open it: %s", mdb_strerror(rc));
        }
        return rc;
    }
    if (have) {
        /* A file shorter than its last page (truncated, a copy cut short) is
         * read through the map: LMDB would die with SIGBUS on the missing pages. */
        MDB_envinfo info;
        MDB_stat ms;
        if (mdb_env_info(s->env, &info) == 0 && mdb_env_stat(s->env, &ms) == 0 &&
            stat(file, &st) == 0 &&
            (unsigned long long)st.st_size < ((unsigned long long)info.me_last_pgno + 1) * ms.ms_psize) {
            *damage = 1;
            snprintf(why, whylen, "data.mdb is %lld bytes but its pages reach %llu", (long long)st.st_size,
                     ((unsigned long long)info.me_last_pgno + 1) * ms.ms_psize);
            return MDB_CORRUPTED;
        }
    }
    MDB_txn *txn;
    rc = mdb_txn_begin(s->env, NULL, readonly ? MDB_RDONLY : 0, &txn);
    if (rc) goto out;
    rc = mdb_dbi_open(txn, "data", readonly ? 0 : MDB_CREATE, &s->data);
    if (!rc) rc = mdb_dbi_open(txn, "meta", readonly ? 0 : MDB_CREATE, &s->meta);
    if (rc) {
        mdb_txn_abort(txn);
        goto out;
    }
    rc = mdb_txn_commit(txn);
out:
    if (rc && damaged_rc(rc)) {
        *damage = 1;
        snprintf(why, whylen, "LMDB cannot read it: %s", mdb_strerror(rc));
    }
    return rc;
}

/* Moves the damaged data.mdb and lock.mdb of dir into dir/damaged-<UTC time>/
 * (kept for the user); aside gets that directory. */
static int move_aside(const char *dir, char *aside, size_t asidelen, char *err, size_t errlen)
{
    char stamp[32], from[4200], to[4300];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm);
    for (int n = 0;; n++) {
        int len = n ? snprintf(aside, asidelen, "%s/damaged-%s-%d", dir, stamp, n)
                    : snprintf(aside, asidelen, "%s/damaged-%s", dir, stamp);
        if (len >= (int)asidelen) {
            snprintf(err, errlen, "%s: path too long", dir);
            return -1;
        }
        if (mkdir(aside, 0755) == 0) break;
        if (errno != EEXIST || n > 100) {
            snprintf(err, errlen, "cannot create %s: %s", aside, strerror(errno));
            return -1;
        }
    }
    static const char *const files[] = {"data.mdb", "lock.mdb"};
    for (int i = 0; i < 2; i++) {
        snprintf(from, sizeof from, "%s/%s", dir, files[i]);
        snprintf(to, sizeof to, "%s/%s", aside, files[i]);
        if (rename(from, to) && errno != ENOENT) {
            snprintf(err, errlen, "cannot move %s to %s: %s", from, aside, strerror(errno));
            return -1;
        }
    }
    return 0;
}

static int open_store(fs_store **out, const char *dir, int readonly, int standby, char *err,
                      size_t errlen);

int fs_store_open(fs_store **out, const char *dir, int readonly, char *err, size_t errlen)
{
    return open_store(out, dir, readonly, 0, err, errlen);
}

int fs_store_open_standby(fs_store **out, const char *dir, char *err, size_t errlen)
{
    return open_store(out, dir, 0, 1, err, errlen);
}

/* LMDB callocs a 2 MiB dirty-page list per writable environment. glibc serves
 * it from a fresh mmap (untouched, zero for free) until the first one is freed;
 * then its dynamic mmap threshold rises above 2 MiB, and each later list comes
 * from the heap, where calloc must clear it: 2 MiB resident per environment
 * that a reopen (FS_STORE_DIRTY_KEEP) would add. A fixed threshold keeps such
 * blocks in their own maps, which free() also hands straight back. Fixing it
 * also fixes the heap's trim threshold, which glibc would otherwise raise with
 * it: set to twice the map threshold as glibc does, so that freeing at the top
 * of the heap does not shrink and regrow it all the time (a checkpoint's
 * malloc_trim gives the rest back). */
static void fix_mmap_threshold(void)
{
#if defined(M_MMAP_THRESHOLD) && defined(M_TRIM_THRESHOLD)
    static int done;
    if (!done) {
        mallopt(M_MMAP_THRESHOLD, 2 << 20);
        mallopt(M_TRIM_THRESHOLD, 4 << 20);
    }
    done = 1;
#endif
}

static int open_store(fs_store **out, const char *dir, int readonly, int standby, char *err,
                      size_t errlen)
{
    *out = NULL;
    if (!readonly) fix_mmap_threshold();
    struct stat st;
    if (readonly && stat(dir, &st)) {
        snprintf(err, errlen, "%s: no such store", dir);
        return -1;
    }
    if (!readonly && mkdirs(dir)) {
        snprintf(err, errlen, "cannot create %s: %s", dir, strerror(errno));
        return -1;
    }
    fs_store *s = calloc(1, sizeof *s);
    if (s) s->lockfd = s->copyfd = -1, s->standby = standby;
    if (s) s->path = strdup(dir);
    if (!s || !s->path) {
        free(s);
        snprintf(err, errlen, "%s: out of memory", dir);
        return -1;
    }
    char file[4200], why[300];
    int opened_before = 0; /* LMDB had files here: a data.mdb missing now was lost */
    if (standby) {
        /* Two workers sharing a data directory may both keep a copy of a
         * partition: each writing the same files from its own position in the
         * changelog would mix old values into new ones. The first one keeps
         * the copy; the other finds these files busy (they are its copy too). */
        if (snprintf(file, sizeof file, "%s/standby.lock", dir) >= (int)sizeof file) {
            snprintf(err, errlen, "%s: path too long", dir);
            fs_store_close(s);
            return -1;
        }
        s->copyfd = open(file, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (s->copyfd < 0 || flock(s->copyfd, LOCK_EX | LOCK_NB)) {
            int busy = s->copyfd >= 0 && errno == EWOULDBLOCK;
            snprintf(err, errlen, "%s: %s", file, busy ? "another worker keeps this copy" : strerror(errno));
            fs_store_close(s);
            return busy ? FS_STORE_BUSY : -1;
        }
    }
    if (!readonly) {
        /* Before LMDB: the owner's writes must be over before anyone reads the
         * offsets the files cover. flock (not fcntl) so that a second open in
         * this process is refused too, and the kernel drops it with the process. */
        if (snprintf(file, sizeof file, "%s/owner.lock", dir) >= (int)sizeof file) {
            snprintf(err, errlen, "%s: path too long", dir);
            fs_store_close(s);
            return -1;
        }
        s->lockfd = open(file, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (s->lockfd < 0) {
            snprintf(err, errlen, "cannot open %s: %s", file, strerror(errno));
            fs_store_close(s);
            return -1;
        }
        if (flock(s->lockfd, LOCK_EX | LOCK_NB)) {
            int busy = errno == EWOULDBLOCK;
            if (busy) snprintf(err, errlen, "%s: in use by another worker (it holds %s)", dir, file);
            else snprintf(err, errlen, "%s: cannot lock %s: %s", dir, file, strerror(errno));
            fs_store_close(s);
            return busy ? FS_STORE_BUSY : -1;
        }
        char data[4200];
        snprintf(file, sizeof file, "%s/lock.mdb", dir);
        snprintf(data, sizeof data, "%s/data.mdb", dir);
        opened_before = stat(file, &st) == 0 && stat(data, &st) != 0;
    }
    if (reserve_lock(dir, readonly, err, errlen)) {
        fs_store_close(s);
        return -1;
    }
    int damage;
    int rc = open_env(s, dir, readonly, &damage, why, sizeof why);
    if (rc == 0 && opened_before) {
        /* Nothing to move aside: the replay refills the new, empty file. */
        snprintf(s->damage, sizeof s->damage, "data.mdb was missing (lock.mdb was there)");
    } else if (damage && !readonly) {
        /* A worker rebuilds the partition from its changelog: the files go
         * aside (the user may want them), new ones take their place. */
        char aside[4200];
        mdb_env_close(s->env);
        s->env = NULL;
        if (move_aside(dir, aside, sizeof aside, err, errlen)) {
            fs_store_close(s);
            return -1;
        }
        snprintf(s->damage, sizeof s->damage, "%s; moved to %s", why, aside);
        if (reserve_lock(dir, 0, err, errlen)) {
            fs_store_close(s);
            return -1;
        }
        rc = open_env(s, dir, 0, &damage, why, sizeof why);
    }
    if (rc) {
        if (damage)
            snprintf(err, errlen, "%s: damaged local state: %s (a worker moves it aside and rebuilds it "
                                  "from the changelog when it takes the partition)", dir, why);
        else
            fail_at(s, err, errlen, "cannot open it", rc);
        fs_store_close(s);
        return -1;
    }
    /* A standby lets go at once: an owner may come any time (fs_store_write). */
    if (standby) flock(s->lockfd, LOCK_UN);
    *out = s;
    return 0;
}

const char *fs_store_damage(const fs_store *s)
{
    return s->damage[0] ? s->damage : NULL;
}

void fs_store_close(fs_store *s)
{
    if (!s) return;
    if (s->env) mdb_env_close(s->env);
    if (s->lockfd >= 0) close(s->lockfd); /* after LMDB: its last writes are in */
    if (s->copyfd >= 0) close(s->copyfd);
    free(s->path);
    free(s);
}

const char *fs_store_path(const fs_store *s)
{
    return s->path;
}

int fs_store_get(fs_store *s, const void *key, size_t klen, fs_buf *out, int *found, char *err,
                 size_t errlen)
{
    if (!s->env) return no_env(s, err, errlen);
    MDB_txn *txn;
    *found = 0;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc) return fail(err, errlen, "read", rc);
    MDB_val k = {klen, (void *)key}, v;
    rc = mdb_get(txn, s->data, &k, &v);
    if (rc == 0) {
        fs_buf_reset(out);
        /* The value lives in the map only until the transaction ends: copy it. */
        if (fs_buf_add(out, v.mv_data, v.mv_size)) rc = ENOMEM;
        else *found = 1;
    } else if (rc == MDB_NOTFOUND) {
        rc = 0;
    }
    mdb_txn_abort(txn);
    return rc ? fail(err, errlen, "read", rc) : 0;
}

/* Pages a write transaction may dirty, at most, in one database: each op
 * copies the pages on its path from the root (depth), and no more pages than
 * the tree has after the writes (plus the ones it freed, which the free list
 * counts). */
static size_t dirty_bound(MDB_txn *txn, MDB_dbi dbi, size_t nops)
{
    MDB_stat st;
    if (mdb_stat(txn, dbi, &st)) return 0;
    size_t pages = st.ms_branch_pages + st.ms_leaf_pages + st.ms_overflow_pages;
    size_t depth = st.ms_depth ? st.ms_depth : 1;
    return nops < pages / depth ? nops * depth : pages;
}

/* The LMDB library keeps every page buffer a write transaction dirtied on a
 * list of its environment, for reuse, until the environment closes: one
 * transaction that rewrote 5,000 pages of a partition keeps 20 MiB of malloc'd
 * memory for the life of the worker. Past this many pages the store reopens
 * its environment after the commit, which frees them (a reopen costs well under
 * a millisecond; a checkpoint of a partition's usual few hundred keys never
 * reaches it). */
#define FS_STORE_DIRTY_KEEP (1u << 20)

/* FS_STORE_DIRTY_KEEP, or FSTREAM_LMDB_DIRTY_KEEP bytes (read once). */
static size_t dirty_keep(void)
{
    static size_t keep;
    if (!keep) {
        const char *env = getenv("FSTREAM_LMDB_DIRTY_KEEP");
        unsigned long long v = env ? strtoull(env, NULL, 10) : 0;
        keep = v >= 4096 ? (size_t)v : FS_STORE_DIRTY_KEEP;
    }
    return keep;
}

static int write_once(fs_store *s, const fs_store_op *ops, size_t nops, const fs_store_meta *meta,
                      size_t nmeta, int *reopen)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc) return rc;
    for (size_t i = 0; i < nops && !rc; i++) {
        MDB_val k = {ops[i].klen, (void *)ops[i].key};
        if (ops[i].val) {
            MDB_val v = {ops[i].vlen, (void *)ops[i].val};
            rc = mdb_put(txn, s->data, &k, &v, 0);
        } else {
            rc = mdb_del(txn, s->data, &k, NULL);
            if (rc == MDB_NOTFOUND) rc = 0;
        }
    }
    for (size_t i = 0; i < nmeta && !rc; i++) {
        MDB_val k = {strlen(meta[i].name), (void *)meta[i].name};
        MDB_val v = {sizeof(int64_t), (void *)&meta[i].value};
        rc = mdb_put(txn, s->meta, &k, &v, 0);
    }
    if (rc) {
        mdb_txn_abort(txn);
        return rc;
    }
    size_t keep = dirty_keep();
    MDB_stat ms;
    /* Small writes (the usual checkpoint) skip the stat calls: a tree of depth 4
     * holds millions of keys. */
    if ((nops + nmeta) * 4 * 4096 > keep && mdb_env_stat(s->env, &ms) == 0) {
        size_t pages = dirty_bound(txn, s->data, nops) + dirty_bound(txn, s->meta, nmeta) +
                       dirty_bound(txn, 0, (size_t)-1); /* the free list: all of it */
        if (pages * ms.ms_psize > keep) *reopen = (int)(pages < INT_MAX ? pages : INT_MAX);
    }
    return mdb_txn_commit(txn);
}

/* Closes and opens s's environment again (see FS_STORE_DIRTY_KEEP). No
 * transaction is open, and owner.lock stays held: nobody else may write
 * meanwhile. On failure s has no environment left and every later call fails. */
static int reopen_env(fs_store *s, char *err, size_t errlen)
{
    char why[300];
    int damage;
    mdb_env_close(s->env);
    s->env = NULL;
    int rc = open_env(s, s->path, 0, &damage, why, sizeof why);
    if (rc == 0) return 0;
    if (s->env) mdb_env_close(s->env);
    s->env = NULL;
    if (damage) {
        snprintf(err, errlen, "%s/data.mdb: reopen after a large write: %s", s->path, why);
        return -1;
    }
    return fail_at(s, err, errlen, "reopen after a large write", rc);
}

static int write_locked(fs_store *s, const fs_store_op *ops, size_t nops, const fs_store_meta *meta,
                        size_t nmeta, int sync, char *err, size_t errlen);

int fs_store_write(fs_store *s, const fs_store_op *ops, size_t nops, const fs_store_meta *meta,
                   size_t nmeta, int sync, char *err, size_t errlen)
{
    if (s->standby && flock(s->lockfd, LOCK_EX | LOCK_NB)) {
        int busy = errno == EWOULDBLOCK;
        snprintf(err, errlen, "%s: %s", s->path, busy ? "an owner holds it now" : strerror(errno));
        return busy ? FS_STORE_BUSY : -1;
    }
    int rc = write_locked(s, ops, nops, meta, nmeta, sync, err, errlen);
    if (s->standby) flock(s->lockfd, LOCK_UN);
    return rc;
}

static int write_locked(fs_store *s, const fs_store_op *ops, size_t nops, const fs_store_meta *meta,
                        size_t nmeta, int sync, char *err, size_t errlen)
{
    int reopen = 0;
    if (!s->env) return no_env(s, err, errlen);
    mdb_env_set_flags(s->env, MDB_NOSYNC, !sync);
    for (;;) {
        int rc = write_once(s, ops, nops, meta, nmeta, &reopen);
        if (rc == 0) break;
        if (rc != MDB_MAP_FULL) {
            if (!sync) mdb_env_set_flags(s->env, MDB_NOSYNC, 0);
            return fail_at(s, err, errlen, "write", rc);
        }
        /* No transaction is open now, so the map may grow. */
        s->mapsize *= 2;
        rc = mdb_env_set_mapsize(s->env, s->mapsize);
        if (rc) {
            if (!sync) mdb_env_set_flags(s->env, MDB_NOSYNC, 0);
            return fail_at(s, err, errlen, "grow map", rc);
        }
    }
    if (!sync) mdb_env_set_flags(s->env, MDB_NOSYNC, 0);
    if (!reopen) return 0;
    fs_debug("store %s: reopening it after a write of %zu keys (up to %d pages): frees LMDB's page buffers",
             s->path, nops, reopen);
    return reopen_env(s, err, errlen);
}

int fs_store_clear(fs_store *s, char *err, size_t errlen)
{
    if (!s->env) return no_env(s, err, errlen);
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc) return fail(err, errlen, "clear", rc);
    if ((rc = mdb_drop(txn, s->data, 0)) || (rc = mdb_drop(txn, s->meta, 0))) {
        mdb_txn_abort(txn);
        return fail(err, errlen, "clear", rc);
    }
    rc = mdb_txn_commit(txn);
    if (rc) return fail_at(s, err, errlen, "clear", rc);
    rc = mdb_env_sync(s->env, 1);
    return rc ? fail_at(s, err, errlen, "clear: sync", rc) : 0;
}

int fs_store_sync(fs_store *s)
{
    if (!s->env) return EBADF;
    return mdb_env_sync(s->env, 1);
}

int fs_store_meta_get(fs_store *s, const char *name, int64_t *value, int *found, char *err,
                      size_t errlen)
{
    if (!s->env) return no_env(s, err, errlen);
    MDB_txn *txn;
    *found = 0;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc) return fail(err, errlen, "read meta", rc);
    MDB_val k = {strlen(name), (void *)name}, v;
    rc = mdb_get(txn, s->meta, &k, &v);
    if (rc == 0 && v.mv_size == sizeof(int64_t)) {
        memcpy(value, v.mv_data, sizeof(int64_t));
        *found = 1;
    }
    mdb_txn_abort(txn);
    return rc && rc != MDB_NOTFOUND ? fail(err, errlen, "read meta", rc) : 0;
}

int fs_store_scan(fs_store *s, int (*cb)(void *ud, const void *k, size_t kl, const void *v, size_t vl),
                  void *ud, char *err, size_t errlen)
{
    return fs_store_scan_from(s, NULL, 0, cb, ud, err, errlen);
}

int fs_store_scan_from(fs_store *s, const void *from, size_t flen,
                       int (*cb)(void *ud, const void *k, size_t kl, const void *v, size_t vl),
                       void *ud, char *err, size_t errlen)
{
    if (!s->env) return no_env(s, err, errlen);
    MDB_txn *txn;
    MDB_cursor *cur;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc) return fail(err, errlen, "scan", rc);
    rc = mdb_cursor_open(txn, s->data, &cur);
    if (rc) {
        mdb_txn_abort(txn);
        return fail(err, errlen, "scan", rc);
    }
    /* LMDB rejects an empty key: an empty `from` is the first entry. */
    MDB_val k = {flen, (void *)from}, v;
    int stop = 0;
    for (rc = mdb_cursor_get(cur, &k, &v, flen ? MDB_SET_RANGE : MDB_FIRST); rc == 0 && !stop;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))
        stop = cb(ud, k.mv_data, k.mv_size, v.mv_data, v.mv_size);
    mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    if (stop) return stop;
    return rc == MDB_NOTFOUND ? 0 : fail(err, errlen, "scan", rc);
}

int fs_store_last(fs_store *s, fs_buf *k, fs_buf *v, int *found, char *err, size_t errlen)
{
    if (!s->env) return no_env(s, err, errlen);
    MDB_txn *txn;
    MDB_cursor *cur;
    *found = 0;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc) return fail(err, errlen, "read", rc);
    rc = mdb_cursor_open(txn, s->data, &cur);
    if (rc == 0) {
        MDB_val mk, mv;
        rc = mdb_cursor_get(cur, &mk, &mv, MDB_LAST);
        if (rc == 0) {
            fs_buf_reset(k);
            fs_buf_reset(v);
            if (fs_buf_add(k, mk.mv_data, mk.mv_size) || fs_buf_add(v, mv.mv_data, mv.mv_size))
                rc = ENOMEM;
            else
                *found = 1;
        } else if (rc == MDB_NOTFOUND) {
            rc = 0;
        }
        mdb_cursor_close(cur);
    }
    mdb_txn_abort(txn);
    return rc ? fail(err, errlen, "read", rc) : 0;
}

size_t fs_store_count(fs_store *s)
{
    MDB_txn *txn;
    MDB_stat st;
    if (!s->env || mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn)) return 0;
    size_t n = mdb_stat(txn, s->data, &st) ? 0 : st.ms_entries;
    mdb_txn_abort(txn);
    return n;
}
