/* fs_vec: growable arrays and rings of any element type, instead of arrays
 * grown by hand at each use.
 *
 *   FS_VEC(fs_topic *) topics;          // { items, len, cap }, zero-initialised
 *   if (fs_vec_push(&topics, t)) ...    // -1: out of memory, nothing changed
 *   fs_vec_free(&topics);
 *
 *   FS_RING(fs_event *) q;              // FIFO: { items, cap, head, len }
 *   if (fs_ring_push(&q, e)) ...        // grows (capacity: a power of two)
 *   fs_event *e = fs_ring_shift(&q);    // only when q.len > 0
 *
 * Ownership: the vector owns `items` (not what the elements point to);
 * fs_vec_free/fs_ring_free release it. All operations are macros over a small
 * typed struct so that elements keep their type; growth goes through one
 * function that checks the allocation. */
#ifndef FS_VEC_H
#define FS_VEC_H

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define FS_VEC(T)     \
    struct {          \
        T *items;     \
        size_t len;   \
        size_t cap;   \
    }

#define FS_RING(T)    \
    struct {          \
        T *items;     \
        size_t cap;   \
        size_t head;  \
        size_t len;   \
    }

/* Makes *items hold at least `need` elements of `size` bytes (doubling);
 * 0, or -1 when out of memory (then nothing changed). */
static inline int fs_grow_(void **items, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap) return 0;
    size_t n = *cap ? *cap : 8;
    while (n < need) {
        if (n > ((size_t)-1) / 2 / size) return -1;
        n *= 2;
    }
    void *p = realloc(*items, n * size);
    if (!p) return -1;
    *items = p;
    *cap = n;
    return 0;
}

#define fs_vec_reserve(v, n) \
    fs_grow_((void **)&(v)->items, &(v)->cap, (n), sizeof *(v)->items)
#define fs_vec_push(v, x) \
    (fs_vec_reserve((v), (v)->len + 1) ? -1 : ((v)->items[(v)->len++] = (x), 0))
#define fs_vec_free(v) (free((v)->items), (v)->items = NULL, (v)->len = (v)->cap = 0)
/* Removes element i, keeping the order of the rest. */
#define fs_vec_remove(v, i)                                                     \
    (memmove(&(v)->items[(i)], &(v)->items[(i) + 1],                            \
             ((v)->len - (i) - 1) * sizeof *(v)->items), (v)->len--)

/* Ring growth keeps the live elements in order from index 0 of the new array. */
static inline int fs_ring_grow_(void **items, size_t *cap, size_t *head, size_t len, size_t size)
{
    if (len < *cap) return 0;
    size_t n = *cap ? *cap * 2 : 8;
    if (n < *cap || n > ((size_t)-1) / size) return -1;
    char *p = malloc(n * size);
    if (!p) return -1;
    for (size_t i = 0; i < len; i++)
        memcpy(p + i * size, (char *)*items + ((*head + i) & (*cap - 1)) * size, size);
    free(*items);
    *items = p;
    *cap = n;
    *head = 0;
    return 0;
}

#define fs_ring_at(r, i) ((r)->items[((r)->head + (i)) & ((r)->cap - 1)])
#define fs_ring_push(r, x)                                                                     \
    (fs_ring_grow_((void **)&(r)->items, &(r)->cap, &(r)->head, (r)->len, sizeof *(r)->items) \
         ? -1                                                                                  \
         : (fs_ring_at((r), (r)->len) = (x), (r)->len++, 0))
#define fs_ring_shift(r) \
    ((r)->len--, (r)->head = ((r)->head + 1) & ((r)->cap - 1), (r)->items[((r)->head - 1) & ((r)->cap - 1)])
#define fs_ring_free(r) (free((r)->items), (r)->items = NULL, (r)->cap = (r)->head = (r)->len = 0)

#endif
