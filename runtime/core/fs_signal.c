/* fs_signal: the signal and runaway-watch thread (see fs_signal.h). */
#include "fs_signal.h"

#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "fs_log.h"
#include "fs_sched.h"

/* The watch thread. In a worker, SIGTERM and SIGINT are blocked in every
 * thread (main.c, before librdkafka starts its own) and this thread takes them
 * with sigtimedwait. It never touches the runtime: it counts, wakes the loop
 * through an eventfd, and exits the process itself on a second signal — the
 * loop may be stuck (an agent that does not yield, a blocking call into
 * librdkafka) and could not read it. Every tick it also looks for a coroutine
 * that runs too long (fs_sched_watch). In-process (fstream.testing) it only
 * does the latter. */
#define FS_WATCH_TICK_MS 100

static struct {
    int started, take_signals;
    int efd;
    atomic_int received; /* SIGTERM/SIGINT so far */
    atomic_int last;     /* the last one's number */
    atomic_int stopping; /* the worker stops already: any signal exits at once */
    _Atomic(const char *) step; /* what the stop does now (fs_signals_stop_step) */
    int handled;         /* loop side: signals already turned into a stop */
    void (*on_stop)(void *data, const char *why);
    void *on_stop_data;
} sigs = {.efd = -1};

static void *watch_thread(void *arg)
{
    (void)arg;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    int64_t stop_at = 0;
    for (;;) {
        struct timespec tick = {0, FS_WATCH_TICK_MS * 1000000L};
        siginfo_t si;
        int sig = -1;
        if (sigs.take_signals) sig = sigtimedwait(&set, &si, &tick);
        else nanosleep(&tick, NULL);
        int64_t now = fs_sched_clock_ms();
        if (sig > 0) {
            if (stop_at || atomic_load(&sigs.stopping)) {
                fs_error("second %s: exiting at once without committing", strsignal(sig));
                _exit(128 + sig);
            }
            stop_at = now;
            atomic_store(&sigs.last, sig);
            atomic_fetch_add(&sigs.received, 1);
            uint64_t one = 1;
            if (write(sigs.efd, &one, sizeof one) < 0) {
                /* The loop also looks at `received` whenever it runs. */
            }
            fs_sched_watch(now, 0, 1); /* a coroutine that does not yield learns of the stop */
            continue;
        }
        if (stop_at && now - stop_at > FS_STOP_HARD_LIMIT_S * 1000) {
            const char *step = atomic_load(&sigs.step);
            fs_error("the stop did not finish within %d s (it was %s): exiting now, without "
                     "committing what is not committed yet",
                     FS_STOP_HARD_LIMIT_S, step ? step : "waiting for agents");
            _exit(1);
        }
        fs_sched_watch(now, stop_at ? stop_at + FS_STOP_TIMEOUT_MS : 0, 0);
    }
    return NULL;
}

static int watch_start(int take_signals)
{
    if (sigs.started) return 0;
    if (fs_sched_watch_init()) return -1;
    if (take_signals) {
        sigs.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (sigs.efd < 0) return -1;
    }
    sigs.take_signals = take_signals;
    /* The thread and the SIGURG handler live in this image. When it is the Lua
     * module (fstream_core.so), lua_close would unload it under the sleeping
     * thread (a crash at exit): keep it loaded for the life of the process.
     * (In the executable there is nothing to pin, and the lookup finds nothing.) */
    Dl_info self;
    if (dladdr(&sigs, &self) && self.dli_fname)
        (void)dlopen(self.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
    /* The thread must not take the scheduler's poke, whatever the caller's mask. */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGURG);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&t, &attr, watch_thread, NULL);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc) {
        if (sigs.efd >= 0) close(sigs.efd);
        sigs.efd = -1;
        return -1;
    }
    sigs.started = 1;
    return 0;
}

void fs_signals_block(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigprocmask(SIG_BLOCK, &set, NULL);
}

int fs_signals_start(void)
{
    return watch_start(1);
}

int fs_watch_start(void)
{
    return watch_start(0);
}

int fs_signals_stop_requested(void)
{
    return atomic_load(&sigs.received) > 0;
}

void fs_signals_on_stop(void (*fn)(void *data, const char *why), void *data)
{
    sigs.on_stop = fn;
    sigs.on_stop_data = data;
}

void fs_signals_poll(void)
{
    int n = atomic_load(&sigs.received);
    if (n == sigs.handled || !sigs.on_stop) return;
    sigs.handled = n;
    int sig = atomic_load(&sigs.last);
    sigs.on_stop(sigs.on_stop_data, sig == SIGINT ? "SIGINT" : "SIGTERM");
}

void fs_signals_stopping(void)
{
    atomic_store(&sigs.stopping, 1);
}

void fs_signals_stop_step(const char *what)
{
    atomic_store(&sigs.step, what);
}

int fs_signals_fd(void)
{
    return sigs.efd;
}

