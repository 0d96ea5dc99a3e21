/* fs_mem: the counting allocator of the Lua state (see fs_mem.h). */
#include <lauxlib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "fs_mem.h"

int fs_mem_guard;

/* ------------------------------------------------------------ small blocks
 *
 * Most of what a Lua state allocates is small and short-lived: the tables and
 * strings of decoded messages, hash parts, closures. Through glibc each costs
 * a malloc and, when the collector sweeps it, a free that overflows glibc's
 * per-thread cache in bursts of thousands and falls through to its bins
 * (_int_free, unlink_chunk, malloc_consolidate: 15 % of a stateless worker).
 * A state belongs to one thread and Lua tells the size of every block it
 * frees, so a pool needs neither locks nor block headers: blocks up to
 * POOL_MAX bytes come from slabs of one size class each, a slab's free blocks
 * on a list of its own.
 *
 * The slabs are carved from one address range reserved per state (untouched
 * pages cost nothing), so whether a block is the pool's is one comparison of
 * its address, and a slab's record is found by its index in the range. A slab
 * whose last block is freed goes back to the system (madvise) unless the
 * state's empty slabs are still under an eighth of what it holds in the pool:
 * memory a burst took is returned as soon as the collector frees it, and a
 * collection cycle's garbage does not page slabs out and in every cycle.
 * Pages of a slab are touched in order as blocks are first handed out, so a
 * slab with few blocks in use costs few resident pages.
 *
 * Blocks larger than POOL_MAX, and every block once the range is used up or
 * could not be reserved, go to the system allocator (or the wrapped one).
 * Under AddressSanitizer the pool is left out so that ASan sees every block. */

#if defined(__SANITIZE_ADDRESS__)
#define POOL_ENABLED 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define POOL_ENABLED 0
#endif
#endif
#ifndef POOL_ENABLED
#define POOL_ENABLED 1
#endif

#define POOL_MAX 512                    /* largest pooled block, bytes */
#define SLAB_SHIFT 14                   /* 16 KiB slabs */
#define SLAB_SIZE ((size_t)1 << SLAB_SHIFT)
#define POOL_RANGE ((size_t)1 << 30)    /* address space reserved per state */
#define POOL_SLABS (POOL_RANGE >> SLAB_SHIFT)

/* Size classes: 8-byte steps up to 128 bytes (Lua's tables are 56, short
 * strings 24 + length + 1, hash nodes 24 each), 16-byte steps up to 256,
 * 32-byte steps up to POOL_MAX. */
#define NCLASSES (16 + 8 + 8)

typedef struct slab {
    void *free;            /* freed blocks of this slab, linked through their first word */
    uint32_t used;         /* blocks handed out and not freed */
    uint32_t fresh;        /* offset of the first block never handed out */
    uint8_t cls;           /* size class; meaningful while the slab is in use */
    uint8_t state;         /* SLAB_* */
    struct slab *next, *prev; /* the class's partial list, or the empty lists */
} slab;

enum {
    SLAB_CURRENT, /* the class allocates from it */
    SLAB_FULL,    /* in use, no free block, on no list */
    SLAB_PARTIAL, /* in use with free blocks: on its class's partial list */
    SLAB_EMPTY,   /* no block in use, pages still resident: on the empty list */
    SLAB_RETURNED /* no block in use, pages given back: on the returned list */
};

typedef struct pool {
    char *base;             /* the reserved range; NULL: no pool */
    slab *slabs;            /* one record per slab of the range (reserved too) */
    size_t nslabs;          /* slabs carved so far (the range's high-water mark) */
    slab *cur[NCLASSES];    /* the slab each class allocates from */
    slab *partial[NCLASSES];/* slabs in use with free blocks */
    slab *empty;            /* empty slabs kept resident */
    slab *returned;         /* empty slabs whose pages went back */
    size_t nused;           /* slabs holding blocks (current, full, partial) */
    size_t nempty;          /* length of the empty list */
} pool;

static const uint16_t class_size[NCLASSES] = {
    8,   16,  24,  32,  40,  48,  56,  64,  72,  80,  88,  96,  104, 112, 120, 128,
    144, 160, 176, 192, 208, 224, 240, 256, 288, 320, 352, 384, 416, 448, 480, 512,
};

/* Size class of n bytes (1..POOL_MAX), by 8-byte step. */
static uint8_t class_of[POOL_MAX / 8 + 1];

static void pool_classes_init(void)
{
    int c = 0;
    for (size_t i = 1; i <= POOL_MAX / 8; i++) {
        while (class_size[c] < i * 8) c++;
        class_of[i] = (uint8_t)c;
    }
    class_of[0] = 0;
}

static inline size_t size_class(size_t n)
{
    return class_of[(n + 7) >> 3];
}

static inline char *slab_addr(const pool *p, const slab *s)
{
    return p->base + ((size_t)(s - p->slabs) << SLAB_SHIFT);
}

static inline int pool_owns(const pool *p, const void *ptr)
{
    return p->base && (uintptr_t)ptr - (uintptr_t)p->base < POOL_RANGE;
}

static void pool_init(pool *p)
{
    memset(p, 0, sizeof *p);
    if (!POOL_ENABLED) return;
    if (!class_of[1]) pool_classes_init();
    /* Reserved, not committed: pages exist once touched. The range is aligned
     * to a slab (mmap gives pages): the slab of an address is its offset's
     * high bits. */
    void *b = mmap(NULL, POOL_RANGE, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (b == MAP_FAILED) return;
    void *r = mmap(NULL, POOL_SLABS * sizeof(slab), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r == MAP_FAILED) {
        munmap(b, POOL_RANGE);
        return;
    }
    p->base = b;
    p->slabs = r;
}

static void pool_destroy(pool *p)
{
    if (!p->base) return;
    munmap(p->base, POOL_RANGE);
    munmap(p->slabs, POOL_SLABS * sizeof(slab));
    p->base = NULL;
}

static inline void list_push(slab **head, slab *s)
{
    s->prev = NULL;
    s->next = *head;
    if (*head) (*head)->prev = s;
    *head = s;
}

static inline void list_remove(slab **head, slab *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        *head = s->next;
    if (s->next) s->next->prev = s->prev;
}

/* A slab for class c with nothing in it: a resident empty one, else a
 * returned one, else a new one from the range; NULL when the range is used up. */
static slab *slab_take(pool *p, size_t c)
{
    slab *s;
    if ((s = p->empty) != NULL) {
        list_remove(&p->empty, s);
        p->nempty--;
    } else if ((s = p->returned) != NULL) {
        list_remove(&p->returned, s);
    } else if (p->nslabs < POOL_SLABS) {
        s = &p->slabs[p->nslabs++];
    } else {
        return NULL;
    }
    s->free = NULL;
    s->used = 0;
    s->fresh = 0;
    s->cls = (uint8_t)c;
    s->state = SLAB_CURRENT;
    p->nused++;
    return s;
}

/* The slow path of an allocation: class c's current slab is full (or there
 * is none). Takes a partial slab, else an empty one. */
static void *pool_refill(pool *p, size_t c)
{
    slab *s = p->cur[c];
    if (s) s->state = s->free ? SLAB_PARTIAL : SLAB_FULL; /* never partial here, kept exact */
    if ((s = p->partial[c]) != NULL) {
        list_remove(&p->partial[c], s);
        s->state = SLAB_CURRENT;
    } else if ((s = slab_take(p, c)) == NULL) {
        p->cur[c] = NULL;
        return NULL;
    }
    p->cur[c] = s;
    void *b = s->free;
    if (b) {
        s->free = *(void **)b;
    } else {
        b = slab_addr(p, s) + s->fresh;
        s->fresh += class_size[c];
    }
    s->used++;
    return b;
}

static inline void *pool_alloc(pool *p, size_t n)
{
    size_t c = size_class(n);
    slab *s = p->cur[c];
    if (s) {
        void *b = s->free;
        if (b) {
            s->free = *(void **)b;
            s->used++;
            return b;
        }
        if (s->fresh + class_size[c] <= SLAB_SIZE) {
            b = slab_addr(p, s) + s->fresh;
            s->fresh += class_size[c];
            s->used++;
            return b;
        }
    }
    return p->base ? pool_refill(p, c) : NULL;
}

/* A slab whose last block was freed (not a current one). */
static void slab_release(pool *p, slab *s)
{
    p->nused--;
    /* keep up to an eighth of the slabs in use resident, at least a few */
    if (p->nempty < 4 || p->nempty < p->nused / 8) {
        s->state = SLAB_EMPTY;
        list_push(&p->empty, s);
        p->nempty++;
        return;
    }
    /* over the bound: this slab, and as many kept ones as the bound now
     * asks for (it shrinks as the state's pool empties after a burst) */
    for (;;) {
        madvise(slab_addr(p, s), SLAB_SIZE, MADV_DONTNEED);
        s->state = SLAB_RETURNED;
        list_push(&p->returned, s);
        if (p->nempty <= 4 || p->nempty <= p->nused / 8) break;
        s = p->empty;
        list_remove(&p->empty, s);
        p->nempty--;
    }
}

static inline void pool_free(pool *p, void *b)
{
    slab *s = &p->slabs[((uintptr_t)b - (uintptr_t)p->base) >> SLAB_SHIFT];
    *(void **)b = s->free;
    s->free = b;
    s->used--;
    if (s->state == SLAB_CURRENT) return;
    if (s->used == 0) {
        if (s->state == SLAB_PARTIAL) list_remove(&p->partial[s->cls], s);
        slab_release(p, s);
    } else if (s->state == SLAB_FULL) {
        s->state = SLAB_PARTIAL;
        list_push(&p->partial[s->cls], s);
    }
}

/* ---------------------------------------------------------------- counter */

typedef struct fs_mem {
    size_t used;           /* bytes the state holds: Lua's own total, kept here too */
    size_t limit;          /* SIZE_MAX: none */
    unsigned long refused; /* allocations refused because of the limit */
    int retrying;          /* the last growth was refused: the next one is Lua's retry */
    lua_Alloc prev;        /* a state made elsewhere: its allocator, which we wrap */
    void *prev_ud;
    int owned;             /* made by fs_mem_newstate: freed by fs_mem_close */
    struct fs_mem *next;   /* wrapped states: kept reachable for the process's life */
    pool pool;
} fs_mem;

/* Counters of states made elsewhere: their owner closes them with lua_close,
 * so they live as long as the process (one per such state, a few bytes). */
static fs_mem *wrapped;

/* The system's (or the wrapped) allocator. */
static inline void *sys_realloc(fs_mem *m, void *ptr, size_t osize, size_t nsize)
{
    if (m->prev) return m->prev(m->prev_ud, ptr, osize, nsize);
    if (nsize == 0) {
        free(ptr);
        return NULL;
    }
    return realloc(ptr, nsize);
}

/* The allocation proper, without the counting: small blocks from the pool,
 * the rest from the system. A shrink never fails (Lua relies on it): a pooled
 * block that cannot move to a smaller class stays where it is, which is
 * harmless since a pooled block's class is its slab's, not what Lua says. */
static inline void *block_realloc(fs_mem *m, void *ptr, size_t osize, size_t nsize)
{
    pool *p = &m->pool;
    if (ptr && pool_owns(p, ptr)) {
        if (nsize == 0) {
            pool_free(p, ptr);
            return NULL;
        }
        size_t oc = p->slabs[((uintptr_t)ptr - (uintptr_t)p->base) >> SLAB_SHIFT].cls;
        if (nsize <= POOL_MAX && size_class(nsize) == oc) return ptr;
        void *q = nsize <= POOL_MAX ? pool_alloc(p, nsize) : NULL;
        if (!q) q = sys_realloc(m, NULL, 0, nsize);
        if (!q) return nsize <= class_size[oc] ? ptr : NULL;
        memcpy(q, ptr, osize < nsize ? osize : nsize);
        pool_free(p, ptr);
        return q;
    }
    if (nsize == 0 || nsize > POOL_MAX) return sys_realloc(m, ptr, osize, nsize);
    void *q = pool_alloc(p, nsize);
    if (!q) return sys_realloc(m, ptr, osize, nsize);
    if (ptr) {
        memcpy(q, ptr, osize < nsize ? osize : nsize);
        sys_realloc(m, ptr, osize, 0);
    }
    return q;
}

static void *mem_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    fs_mem *m = ud;
    size_t old = ptr ? osize : 0; /* without a block, osize tells its kind */
    if (nsize == 0) {
        m->used -= old;
        return ptr ? block_realloc(m, ptr, osize, 0) : NULL;
    }
    /* Lua requires that shrinking never fails: only growth is refused. A
     * refusal makes Lua collect all garbage and ask again; that retry must
     * leave 1/16 of the limit free. Otherwise a coroutine whose live data
     * nearly fills the limit goes on, each allocation past it costing a
     * full collection of everything the state holds that frees a little
     * garbage: a runaway agent then fails after 4x as many full
     * collections (56 instead of 14 for three 64 MiB hogs). */
    if (nsize > old) {
        size_t cap = m->retrying ? m->limit - m->limit / 16 : m->limit;
        m->retrying = 0;
        if (fs_mem_guard && m->used + (nsize - old) > cap) {
            m->refused++;
            m->retrying = 1;
            return NULL;
        }
    }
    void *p = block_realloc(m, ptr, old, nsize);
    if (p) m->used += nsize - old; /* wraps around for a shrink: still exact */
    return p;
}

static int panic(lua_State *L)
{
    const char *msg = lua_tostring(L, -1);
    fprintf(stderr, "fstream-lua: unprotected error in a call to Lua: %s\n", msg ? msg : "(not a string)");
    return 0; /* Lua aborts */
}

lua_State *fs_mem_newstate(void)
{
    fs_mem *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->limit = SIZE_MAX;
    m->owned = 1;
    pool_init(&m->pool);
    lua_State *L = lua_newstate(mem_alloc, m);
    if (!L) {
        pool_destroy(&m->pool);
        free(m);
        return NULL;
    }
    lua_atpanic(L, panic);
    return L;
}

static fs_mem *counter(lua_State *L)
{
    void *ud;
    return lua_getallocf(L, &ud) == mem_alloc ? ud : NULL;
}

void fs_mem_close(lua_State *L)
{
    fs_mem *m = counter(L);
    lua_close(L);
    if (m && m->owned) {
        pool_destroy(&m->pool);
        free(m);
    }
}

int fs_mem_set_limit(lua_State *L, size_t limit)
{
    fs_mem *m = counter(L);
    if (!m) {
        if (!limit) return 0; /* nothing to enforce: leave the allocator alone */
        m = calloc(1, sizeof *m);
        if (!m) return -1;
        m->prev = lua_getallocf(L, &m->prev_ud);
        /* From now on every block is freed through here: start from what the
         * state holds, Lua's own count, so that the count stays exact. Blocks
         * allocated before stay the wrapped allocator's (the pool knows its
         * own by their address). */
        m->used = (size_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024 + (size_t)lua_gc(L, LUA_GCCOUNTB, 0);
        pool_init(&m->pool);
        m->next = wrapped;
        wrapped = m;
        lua_setallocf(L, mem_alloc, m);
    }
    m->limit = limit ? limit : SIZE_MAX;
    return 0;
}

int fs_mem_get(lua_State *L, size_t *used, size_t *limit, unsigned long *refused)
{
    fs_mem *m = counter(L);
    if (!m) return 0;
    *used = m->used;
    *limit = m->limit == SIZE_MAX ? 0 : m->limit;
    *refused = m->refused;
    return 1;
}

int fs_mem_pool_get(lua_State *L, size_t *held)
{
    fs_mem *m = counter(L);
    if (!m || !m->pool.base) return 0;
    *held = (m->pool.nused + m->pool.nempty) * SLAB_SIZE;
    return 1;
}
