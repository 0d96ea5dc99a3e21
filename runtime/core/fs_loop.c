#include "fs_loop.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

int fs_loop_init(fs_loop *l, int fake_clock)
{
    *l = (fs_loop){.epfd = -1, .fake_clock = fake_clock};
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    return l->epfd < 0 ? -1 : 0;
}

void fs_loop_close(fs_loop *l)
{
    if (l->epfd >= 0) close(l->epfd);
    l->epfd = -1;
    free(l->heap);
    l->heap = NULL;
    l->nheap = l->capheap = 0;
    free(l->hooks);
    l->hooks = NULL;
    l->nhooks = l->caphooks = 0;
}

int64_t fs_loop_now(const fs_loop *l)
{
    if (l->fake_clock) return l->fake_now;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void fs_loop_set_fake_now(fs_loop *l, int64_t to)
{
    if (to > l->fake_now) l->fake_now = to;
}

/* Heap ordered by (when, seq); heap_idx is kept 1-based so 0 means "not armed". */
static int before(const fs_timer *a, const fs_timer *b)
{
    return a->when < b->when || (a->when == b->when && a->seq < b->seq);
}

static void place(fs_loop *l, size_t i, fs_timer *t)
{
    l->heap[i] = t;
    t->heap_idx = i + 1;
}

static void sift_up(fs_loop *l, size_t i)
{
    fs_timer *t = l->heap[i];
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!before(t, l->heap[p])) break;
        place(l, i, l->heap[p]);
        i = p;
    }
    place(l, i, t);
}

static void sift_down(fs_loop *l, size_t i)
{
    fs_timer *t = l->heap[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= l->nheap) break;
        if (c + 1 < l->nheap && before(l->heap[c + 1], l->heap[c])) c++;
        if (!before(l->heap[c], t)) break;
        place(l, i, l->heap[c]);
        i = c;
    }
    place(l, i, t);
}

void fs_timer_stop(fs_loop *l, fs_timer *t)
{
    if (!t->heap_idx) return;
    size_t i = t->heap_idx - 1;
    t->heap_idx = 0;
    fs_timer *last = l->heap[--l->nheap];
    if (i == l->nheap) return;
    place(l, i, last);
    sift_down(l, i);
    sift_up(l, last->heap_idx - 1);
}

int fs_timer_start(fs_loop *l, fs_timer *t, int64_t delay_ms)
{
    fs_timer_stop(l, t);
    if (l->nheap == l->capheap) {
        size_t cap = l->capheap ? l->capheap * 2 : 64;
        fs_timer **h = realloc(l->heap, cap * sizeof *h);
        if (!h) return -1;
        l->heap = h;
        l->capheap = cap;
    }
    t->when = fs_loop_now(l) + (delay_ms > 0 ? delay_ms : 0);
    t->seq = ++l->seq;
    place(l, l->nheap++, t);
    sift_up(l, l->nheap - 1);
    return 0;
}

int64_t fs_loop_next_when(const fs_loop *l)
{
    return l->nheap ? l->heap[0]->when : INT64_MAX;
}

int64_t fs_loop_next_timeout(const fs_loop *l)
{
    if (!l->nheap) return -1;
    int64_t d = l->heap[0]->when - fs_loop_now(l);
    return d > 0 ? d : 0;
}

int fs_loop_run_timers(fs_loop *l, int64_t now)
{
    int n = 0;
    while (l->nheap && l->heap[0]->when <= now) {
        fs_timer *t = l->heap[0];
        fs_timer_stop(l, t);
        t->cb(t);
        n++;
    }
    return n;
}

int fs_io_add(fs_loop *l, fs_io *io, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = io};
    return epoll_ctl(l->epfd, EPOLL_CTL_ADD, io->fd, &ev);
}

int fs_io_mod(fs_loop *l, fs_io *io, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = io};
    return epoll_ctl(l->epfd, EPOLL_CTL_MOD, io->fd, &ev);
}

void fs_io_del(fs_loop *l, fs_io *io)
{
    epoll_ctl(l->epfd, EPOLL_CTL_DEL, io->fd, NULL);
}

int fs_loop_poll(fs_loop *l, int timeout_ms)
{
    struct epoll_event evs[16];
    int n = epoll_wait(l->epfd, evs, 16, timeout_ms);
    if (n < 0) return errno == EINTR ? 0 : -1;
    for (int i = 0; i < n; i++) {
        fs_io *io = evs[i].data.ptr;
        io->cb(io, evs[i].events);
    }
    return n;
}

static int add_hook(fs_loop *l, fs_hook h)
{
    if (l->nhooks == l->caphooks) {
        size_t cap = l->caphooks ? l->caphooks * 2 : 16;
        fs_hook *n = realloc(l->hooks, cap * sizeof *n);
        if (!n) return -1;
        l->hooks = n;
        l->caphooks = cap;
    }
    size_t i = l->nhooks;
    /* Insert after every hook that sorts before or equal: stable order. */
    while (i > 0 && (l->hooks[i - 1].phase > h.phase ||
                     (l->hooks[i - 1].phase == h.phase && l->hooks[i - 1].order > h.order))) {
        l->hooks[i] = l->hooks[i - 1];
        i--;
    }
    l->hooks[i] = h;
    l->nhooks++;
    return 0;
}

int fs_loop_hook(fs_loop *l, int phase, int order, void (*fn)(void *data), void *data)
{
    return add_hook(l, (fs_hook){.phase = phase, .order = order, .fn = fn, .data = data});
}

/* Limits sort after every hook (phase 2): they are read, never run. */
int fs_loop_limit(fs_loop *l, int64_t (*limit)(void *data), void *data)
{
    return add_hook(l, (fs_hook){.phase = 2, .limit = limit, .data = data});
}

void fs_loop_unhook(fs_loop *l, void *data)
{
    size_t k = 0;
    for (size_t i = 0; i < l->nhooks; i++)
        if (l->hooks[i].data != data) l->hooks[k++] = l->hooks[i];
    l->nhooks = k;
}

int64_t fs_loop_sleep_ms(const fs_loop *l, int64_t max_ms)
{
    int64_t t = fs_loop_next_timeout(l);
    if (max_ms >= 0 && (t < 0 || t > max_ms)) t = max_ms;
    for (size_t i = 0; i < l->nhooks && t != 0; i++) {
        if (!l->hooks[i].limit) continue;
        int64_t m = l->hooks[i].limit(l->hooks[i].data);
        if (m >= 0 && (t < 0 || m < t)) t = m;
    }
    return t;
}

static void run_phase(fs_loop *l, int phase)
{
    for (size_t i = 0; i < l->nhooks; i++)
        if (l->hooks[i].phase == phase && l->hooks[i].fn) l->hooks[i].fn(l->hooks[i].data);
}

int fs_loop_run_once(fs_loop *l, int64_t max_ms)
{
    int64_t t = fs_loop_sleep_ms(l, max_ms);
    int rc = fs_loop_poll(l, t > INT32_MAX ? INT32_MAX : (int)t);
    run_phase(l, FS_LOOP_AFTER_IO);
    fs_loop_run_timers(l, fs_loop_now(l));
    run_phase(l, FS_LOOP_AFTER_TIMERS);
    return rc < 0 ? -1 : 0;
}
