/* fs_windows: the index of open windows per windowed table and partition.
 * See fs_windows.h. No Lua here: the binding (fs_lua_windows.c) turns what
 * is found into the Lua strings and calls the user's functions. */
#include "fs_windows.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

fs_windows *fs_windows_new(int32_t nparts, double size, double step, double expires, int combine)
{
    if (nparts < 1) return NULL;
    fs_windows *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->parts = calloc((size_t)nparts, sizeof *w->parts);
    if (!w->parts) {
        free(w);
        return NULL;
    }
    w->nparts = nparts;
    w->size = size;
    w->step = step;
    w->expires = expires;
    w->combine = combine;
    return w;
}

static void part_clear(fs_wpart *wp, fs_wkey_forget forget, void *data)
{
    for (size_t b = 0; b < wp->nbuckets; b++) {
        fs_wkey *k = wp->buckets[b];
        while (k) {
            fs_wkey *next = k->next;
            if (forget) forget(data, k);
            for (size_t i = 0; i < k->wins.len; i++) free(k->wins.items[i]);
            fs_vec_free(&k->wins);
            free(k);
            k = next;
        }
    }
    free(wp->buckets);
    fs_vec_free(&wp->heap);
    memset(wp, 0, sizeof *wp);
}

void fs_windows_free(fs_windows *w, fs_wkey_forget forget, void *data)
{
    if (!w) return;
    for (int32_t p = 0; p < w->nparts; p++) part_clear(&w->parts[p], forget, data);
    free(w->parts);
    free(w);
}

int fs_windows_hold(fs_windows *w, int32_t p, fs_wkey_forget forget, void *data)
{
    if (p < 0 || p >= w->nparts) return -1;
    part_clear(&w->parts[p], forget, data);
    w->parts[p].held = 1;
    return 0;
}

void fs_windows_release(fs_windows *w, int32_t p, fs_wkey_forget forget, void *data)
{
    if (p >= 0 && p < w->nparts) part_clear(&w->parts[p], forget, data);
}

fs_wpart *fs_windows_part(fs_windows *w, int32_t p)
{
    if (p < 0 || p >= w->nparts || !w->parts[p].held) return NULL;
    return &w->parts[p];
}

uint32_t fs_windows_hash(const char *s, size_t len)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static int grow_buckets(fs_wpart *wp)
{
    size_t n = wp->nbuckets ? wp->nbuckets * 2 : 16;
    fs_wkey **b = calloc(n, sizeof *b);
    if (!b) return -1;
    for (size_t i = 0; i < wp->nbuckets; i++) {
        fs_wkey *k = wp->buckets[i];
        while (k) {
            fs_wkey *next = k->next;
            k->next = b[k->hash & (n - 1)];
            b[k->hash & (n - 1)] = k;
            k = next;
        }
    }
    free(wp->buckets);
    wp->buckets = b;
    wp->nbuckets = n;
    return 0;
}

fs_wkey *fs_wpart_key(fs_wpart *wp, const char *json, size_t len, uint32_t hash, int create,
                      int *oom)
{
    *oom = 0;
    if (wp->nbuckets) {
        for (fs_wkey *k = wp->buckets[hash & (wp->nbuckets - 1)]; k; k = k->next)
            if (k->hash == hash && k->len == len && memcmp(k->json, json, len) == 0) return k;
    }
    if (!create) return NULL;
    if (wp->nkeys >= wp->nbuckets && grow_buckets(wp)) {
        *oom = 1;
        return NULL;
    }
    fs_wkey *k = calloc(1, sizeof *k + len);
    if (!k) {
        *oom = 1;
        return NULL;
    }
    memcpy(k->json, json, len);
    k->len = len;
    k->hash = hash;
    k->slot = -1;
    size_t b = hash & (wp->nbuckets - 1);
    k->next = wp->buckets[b];
    wp->buckets[b] = k;
    wp->nkeys++;
    return k;
}

size_t fs_wkey_lower(const fs_wkey *k, double start)
{
    size_t lo = 0, hi = k->wins.len;
    /* Events mostly touch a key's newest windows: look at the end first. */
    if (hi && k->wins.items[hi - 1]->start < start) return hi;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (k->wins.items[mid]->start < start) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

fs_win *fs_wpart_open(fs_wpart *wp, fs_wkey *k, size_t pos, double start, int start_int,
                      double end, int end_int, const char *kb, size_t kblen)
{
    if (fs_vec_reserve(&k->wins, k->wins.len + 1)) return NULL;
    fs_win *win = calloc(1, sizeof *win + kblen);
    if (!win) return NULL;
    win->start = start;
    win->end = end;
    win->start_int = (unsigned char)start_int;
    win->end_int = (unsigned char)end_int;
    win->pending = 1;
    win->slot = -1;
    win->key = k;
    win->kblen = kblen;
    memcpy(win->kb, kb, kblen);
    memmove(&k->wins.items[pos + 1], &k->wins.items[pos], (k->wins.len - pos) * sizeof *k->wins.items);
    k->wins.items[pos] = win;
    k->wins.len++;
    wp->nwins++;
    return win;
}

/* ---- the close heap: by end, then by key bytes ---- */

static int before(const fs_win *a, const fs_win *b)
{
    if (a->end != b->end) return a->end < b->end;
    size_t n = a->kblen < b->kblen ? a->kblen : b->kblen;
    int c = memcmp(a->kb, b->kb, n);
    return c < 0 || (c == 0 && a->kblen < b->kblen);
}

static void place(fs_wpart *wp, size_t i, fs_win *win)
{
    wp->heap.items[i] = win;
    win->heap_idx = i + 1;
}

static void sift_up(fs_wpart *wp, size_t i)
{
    fs_win *win = wp->heap.items[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!before(win, wp->heap.items[parent])) break;
        place(wp, i, wp->heap.items[parent]);
        i = parent;
    }
    place(wp, i, win);
}

static void sift_down(fs_wpart *wp, size_t i)
{
    fs_win *win = wp->heap.items[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= wp->heap.len) break;
        if (c + 1 < wp->heap.len && before(wp->heap.items[c + 1], wp->heap.items[c])) c++;
        if (!before(wp->heap.items[c], win)) break;
        place(wp, i, wp->heap.items[c]);
        i = c;
    }
    place(wp, i, win);
}

static void heap_remove(fs_wpart *wp, fs_win *win)
{
    size_t i = win->heap_idx - 1;
    win->heap_idx = 0;
    fs_win *last = wp->heap.items[--wp->heap.len];
    if (i == wp->heap.len) return;
    place(wp, i, last);
    sift_up(wp, i);
    sift_down(wp, last->heap_idx - 1);
}

/* ---- combine: when slices' windows are due ---- */

int fs_windows_first_open_end(const fs_windows *w, double u, int has_now, double now, double *end)
{
    double e = u + w->step;
    if (has_now && e + w->expires < now) {
        e = e + w->step * ceil((now - w->expires - e) / w->step);
        if (e + w->expires < now) e = e + w->step;
    }
    if (e > u + w->size) return 0;
    *end = e;
    return 1;
}

static void note_slice(const fs_windows *w, fs_wpart *wp, double u)
{
    double e;
    if (!fs_windows_first_open_end(w, u, wp->has_closed_through, wp->closed_through, &e)) return;
    if (!wp->has_next_due || e + w->expires < wp->next_due) {
        wp->next_due = e + w->expires;
        wp->has_next_due = 1;
    }
}

void fs_wpart_closed_through(const fs_windows *w, fs_wpart *wp, double now)
{
    wp->closed_through = now;
    wp->has_closed_through = 1;
    wp->has_next_due = 0;
    for (size_t b = 0; b < wp->nbuckets; b++)
        for (fs_wkey *k = wp->buckets[b]; k; k = k->next)
            for (size_t i = 0; i < k->wins.len; i++)
                if (!k->wins.items[i]->pending) note_slice(w, wp, k->wins.items[i]->start);
}

int fs_wpart_confirm(fs_windows *w, fs_wpart *wp, fs_win *win)
{
    if (!win->pending) return 0;
    if (w->combine) {
        win->pending = 0;
        note_slice(w, wp, win->start);
        return 0;
    }
    if (fs_vec_reserve(&wp->heap, wp->heap.len + 1)) return -1;
    win->pending = 0;
    wp->heap.items[wp->heap.len++] = win;
    sift_up(wp, wp->heap.len - 1);
    return 0;
}

void fs_wpart_set_end(fs_wpart *wp, fs_win *win, double end, int end_int)
{
    double old = win->end;
    win->end = end;
    win->end_int = (unsigned char)end_int;
    if (!win->heap_idx) return;
    if (end < old) sift_up(wp, win->heap_idx - 1);
    else sift_down(wp, win->heap_idx - 1);
}

fs_wkey *fs_wpart_remove(fs_wpart *wp, fs_win *win)
{
    fs_wkey *k = win->key;
    if (win->heap_idx) heap_remove(wp, win);
    size_t pos = fs_wkey_lower(k, win->start);
    while (pos < k->wins.len && k->wins.items[pos] != win) pos++; /* (equal starts cannot happen) */
    if (pos < k->wins.len) fs_vec_remove(&k->wins, pos);
    free(win);
    wp->nwins--;
    return k->wins.len ? NULL : k;
}

void fs_wpart_drop_key(fs_wpart *wp, fs_wkey *k)
{
    fs_wkey **pp = &wp->buckets[k->hash & (wp->nbuckets - 1)];
    while (*pp && *pp != k) pp = &(*pp)->next;
    if (*pp) *pp = k->next;
    wp->nkeys--;
    fs_vec_free(&k->wins);
    free(k);
}

fs_win *fs_wpart_due_window(const fs_windows *w, const fs_wpart *wp, double now)
{
    if (!wp->heap.len) return NULL;
    fs_win *top = wp->heap.items[0];
    return top->end + w->expires < now ? top : NULL;
}

double fs_wpart_next_due(const fs_windows *w, const fs_wpart *wp)
{
    if (w->combine) return wp->has_next_due ? wp->next_due : INFINITY;
    return wp->heap.len ? wp->heap.items[0]->end + w->expires : INFINITY;
}
