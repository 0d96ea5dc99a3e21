/* fs_windows: the index of a windowed table's open windows (State layer).
 *
 * Owns, per windowed table and per partition this worker holds: the open
 * windows (or, for hopping tables with `combine`, step-slices) of every key,
 * kept sorted by start per key; the order they close in (a min-heap on
 * (end, key bytes)); the partition's stream time; and for combine tables the
 * time of the last close pass and when the next window is due. It answers
 * "which windows does an event at time T touch" and "what is due at time
 * NOW" without Lua: the values themselves stay in the table's record cache,
 * and the user's update, combine and close functions stay in Lua
 * (lua/fstream/window.lua through runtime/fs_lua_windows.c).
 *
 * Times are seconds as doubles, computed with the same IEEE operations as the
 * Lua code they replace, so window starts are bit-identical to what Lua's
 * arithmetic gives; `*_int` flags remember which numbers Lua holds as
 * integers (they are written into entry keys and handed to callbacks).
 *
 * Ownership: an fs_windows owns its partitions, keys and windows; fs_win.kb
 * and fs_wkey.json are owned by the window and the key. `slot` fields are
 * the caller's (where it keeps the matching Lua values), never read here.
 * Lifetime: a partition's keys and windows live from fs_windows_hold until
 * fs_windows_release (or fs_windows_free); a window until it is removed. */
#ifndef FS_WINDOWS_H
#define FS_WINDOWS_H

#include <stddef.h>
#include <stdint.h>

#include "fs_vec.h"

typedef struct fs_win fs_win;
typedef struct fs_wkey fs_wkey;
typedef struct fs_wpart fs_wpart;
typedef struct fs_windows fs_windows;

/* One open window (or slice) of one key. */
struct fs_win {
    double start, end;
    unsigned char start_int, end_int; /* Lua holds the number as an integer */
    unsigned char pending;            /* opened by an event whose update has not finished */
    int slot;                         /* the caller's */
    size_t heap_idx;                  /* 0: not in the close heap, else position + 1 */
    fs_wkey *key;
    size_t kblen;
    char kb[]; /* the table entry's key bytes, JSON [key, start] */
};

/* A key with open windows in one partition. Freed with its last window. */
struct fs_wkey {
    fs_wkey *next; /* hash chain */
    uint32_t hash;
    int slot;                /* the caller's */
    FS_VEC(fs_win *) wins;   /* sorted by start */
    size_t len;
    char json[]; /* the key's JSON text */
};

struct fs_wpart {
    int held;
    int has_time, has_closed_through, has_next_due;
    double stream_time;    /* the largest event time seen */
    double closed_through; /* combine: `now` of the last close pass */
    double next_due;       /* combine: the next window's end + expires */
    /* idle_close: the caller's clock (ms) at the partition's last event (or
     * when it was taken), and its stream time then; stream time may advance
     * with that clock once the partition has been quiet long enough. */
    int has_quiet;
    int64_t quiet_since;
    double quiet_time;
    fs_wkey **buckets;
    size_t nbuckets, nkeys, nwins;
    FS_VEC(fs_win *) heap; /* without combine: confirmed windows by (end, kb) */
};

struct fs_windows {
    double size, step, expires;
    int combine; /* windows are step-slices, closed by fs_wpart_* combine helpers */
    int32_t nparts;
    fs_wpart *parts; /* nparts of them */
};

fs_windows *fs_windows_new(int32_t nparts, double size, double step, double expires, int combine);
/* forget(data, key) is called for every key before it is freed (its windows
 * are still there to read), so the caller can drop what its slots hold. */
typedef void (*fs_wkey_forget)(void *data, fs_wkey *k);
void fs_windows_free(fs_windows *w, fs_wkey_forget forget, void *data);
/* An empty index for partition p (dropping any left). -1: p out of range. */
int fs_windows_hold(fs_windows *w, int32_t p, fs_wkey_forget forget, void *data);
void fs_windows_release(fs_windows *w, int32_t p, fs_wkey_forget forget, void *data);
/* The held partition p, or NULL. */
fs_wpart *fs_windows_part(fs_windows *w, int32_t p);

uint32_t fs_windows_hash(const char *s, size_t len);
/* The key with this JSON text; created (empty) when `create`. NULL when
 * absent, or when out of memory (*oom set). */
fs_wkey *fs_wpart_key(fs_wpart *wp, const char *json, size_t len, uint32_t hash, int create,
                      int *oom);
/* The index in k->wins of the first window whose start is >= start. */
size_t fs_wkey_lower(const fs_wkey *k, double start);
/* Opens a pending window at k->wins[pos] (pos from fs_wkey_lower). NULL: out of memory. */
fs_win *fs_wpart_open(fs_wpart *wp, fs_wkey *k, size_t pos, double start, int start_int,
                      double end, int end_int, const char *kb, size_t kblen);
/* The window's update finished: it takes part in closing. -1: out of memory. */
int fs_wpart_confirm(fs_windows *w, fs_wpart *wp, fs_win *win);
/* Moves win's end (a session window that grew), keeping the close heap in
 * order. */
void fs_wpart_set_end(fs_wpart *wp, fs_win *win, double end, int end_int);
/* Removes and frees win. Returns its key when that key has no window left
 * (then still allocated: pass it to fs_wpart_drop_key after reading it). */
fs_wkey *fs_wpart_remove(fs_wpart *wp, fs_win *win);
void fs_wpart_drop_key(fs_wpart *wp, fs_wkey *k);

/* Without combine: the window that closes first if it is due at `now`
 * (end + expires < now), else NULL. */
fs_win *fs_wpart_due_window(const fs_windows *w, const fs_wpart *wp, double now);
/* When the partition's next close is due (something closes once the clock
 * passes it), or +infinity. */
double fs_wpart_next_due(const fs_windows *w, const fs_wpart *wp);

/* combine: the end of the first window containing slice u still open at
 * `now` (has_now 0: no close pass yet); 0 when none is. */
int fs_windows_first_open_end(const fs_windows *w, double u, int has_now, double now,
                              double *end);
/* combine: a close pass at `now` finished; the next due time is recomputed. */
void fs_wpart_closed_through(const fs_windows *w, fs_wpart *wp, double now);

#endif
