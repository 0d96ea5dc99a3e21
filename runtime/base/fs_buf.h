/* fs_buf: a growable byte buffer reused across messages.
 *
 * Ownership: the buffer owns `data`; fs_buf_free releases it. Callers that
 * encode one message at a time call fs_buf_reset and keep the capacity, so the
 * steady state allocates nothing per message. */
#ifndef FS_BUF_H
#define FS_BUF_H

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

typedef struct fs_buf {
    char *data;
    size_t len;
    size_t cap;
} fs_buf;

/* Makes room for `extra` more bytes; returns 0, or -1 when out of memory. */
static inline int fs_buf_reserve(fs_buf *b, size_t extra)
{
    if (b->len + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra) cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p) return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

static inline int fs_buf_add(fs_buf *b, const void *s, size_t n)
{
    if (fs_buf_reserve(b, n)) return -1;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    return 0;
}

static inline int fs_buf_addc(fs_buf *b, char c)
{
    if (b->len == b->cap && fs_buf_reserve(b, 1)) return -1;
    b->data[b->len++] = c;
    return 0;
}

static inline void fs_buf_reset(fs_buf *b)
{
    b->len = 0;
}

static inline void fs_buf_free(fs_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

#endif
