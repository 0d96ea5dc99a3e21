/* fs_runtime: the worker's main loop and lifecycle.
 *
 * One iteration (fs_loop_run_once, with the hooks the worker and the layers
 * above register): wait for I/O or the next timer, pull what the transport
 * has for us, fire due timers, resume every ready coroutine once, advance the
 * checkpoint, then a reload if one is under way. Stopping (SIGTERM/SIGINT): stop fetching, let agents finish the
 * events they hold, then flush outputs, commit and leave the group. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "fs_assign.h"
#include "fs_checkpoint.h"
#include "fs_log.h"
#include "fs_worker.h"
#include "fs_rt.h"
#include "fs_signal.h"

/* How long the stop may wait on the transport for each of: a revocation's
 * checkpoint, the final checkpoint (their deliveries have 30 s each). */
#define FS_CKPT_WAIT_MS 35000
/* The whole stop is over within FS_STOP_HARD_LIMIT_S of the signal, or the
 * watch thread ends the process without a word about what was left. So the
 * stop's waits share what is left of that, less this much kept for what can
 * still block after them: a transaction call already running on the
 * transport's thread (10 s), or a synchronous commit's answer (5 s), then
 * the producer's last flush (5 s). A step that overruns gives up, says what
 * it gave up on, and the stop still ends by itself. */
#define FS_STOP_CLOSE_MS 20000

static void stop_on_signal(void *data, const char *why)
{
    fs_rt_request_stop(data, why);
}

/* Also before the loop runs (tables recovering at start-up): rt is the one
 * that stops. */
void fs_rt_poll_signals(fs_rt *rt)
{
    fs_signals_on_stop(stop_on_signal, rt);
    fs_signals_poll();
}


void fs_rt_request_stop(fs_rt *rt, const char *why)
{
    if (rt->stopping) return;
    rt->stopping = 1;
    fs_signals_stopping();
    rt->stop_deadline = fs_loop_now(&rt->loop) + FS_STOP_TIMEOUT_MS;
    fs_signals_stop_step("waiting for agents to finish their events");
    fs_info("stopping (%s): finishing in-flight events", why);
    fs_wake_streams(rt);
}

/* SIGHUP (signalfd): a reload, which needs the loop anyway. */
static void signal_cb(fs_io *io, uint32_t events)
{
    fs_rt *rt = io->data;
    struct signalfd_siginfo si;
    (void)events;
    while (read(io->fd, &si, sizeof si) == (ssize_t)sizeof si) {
        if ((int)si.ssi_signo != SIGHUP) continue;
        if (rt->on_hup.fn) rt->on_hup.fn(rt->on_hup.data);
        else fs_warn("SIGHUP: this worker cannot reload (its loop is not run by fstream-lua worker)");
    }
}

/* SIGTERM/SIGINT, from the signal thread. */
static void stop_signal_cb(fs_io *io, uint32_t events)
{
    uint64_t v;
    (void)events;
    if (read(io->fd, &v, sizeof v) < 0 && errno != EAGAIN) fs_warn("eventfd read: %s", strerror(errno));
    fs_rt_poll_signals(io->data);
}

static void commit_timer_cb(fs_timer *t)
{
    fs_rt *rt = t->data;
    /* Skipped while a reload drains agents, or while another checkpoint runs. */
    if (!rt->draining) fs_ckpt_start(rt->ckpt, FS_CKPT_PERIODIC, NULL, NULL, NULL);
    fs_timer_start(&rt->loop, t, rt->commit_interval_ms);
}

static fs_io stop_io;

static int setup_signals(fs_rt *rt)
{
    /* Already blocked before librdkafka started its threads (see main.c). */
    fs_signals_block();
    if (fs_signals_start() || fs_signals_fd() < 0) return -1;
    fs_signals_on_stop(stop_on_signal, rt);
    stop_io.fd = fs_signals_fd();
    stop_io.cb = stop_signal_cb;
    stop_io.data = rt;
    if (fs_io_add(&rt->loop, &stop_io, EPOLLIN)) return -1;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGHUP);
    rt->sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (rt->sfd < 0) return -1;
    rt->sio.fd = rt->sfd;
    rt->sio.cb = signal_cb;
    rt->sio.data = rt;
    return fs_io_add(&rt->loop, &rt->sio, EPOLLIN);
}

/* At most `cap` ms, and no later than `until`. */
static int64_t wait_ms(fs_rt *rt, int64_t until, int64_t cap)
{
    int64_t left = until - fs_loop_now(&rt->loop);
    return left < 0 ? 0 : left < cap ? left : cap;
}

static void finish(fs_rt *rt)
{
    rt->closing = 1;
    /* From the signal (its time: the agents' deadline less their share), or
     * from now (a fatal error, which no signal bounds). */
    int64_t now = fs_loop_now(&rt->loop);
    int64_t from = rt->stopping ? rt->stop_deadline - FS_STOP_TIMEOUT_MS : now;
    int64_t until = from + FS_STOP_HARD_LIMIT_S * 1000 - FS_STOP_CLOSE_MS;
    if (until < now) until = now;
    fs_assign_close_by(rt->assign, until);
    /* A revocation waiting for agents goes on now: none will run again. */
    fs_signals_stop_step("finishing a revocation");
    fs_assign_finish(rt->assign, wait_ms(rt, until, FS_CKPT_WAIT_MS));
    int stuck = rt->sched.nlive_agents; /* past the stop deadline, or a fatal error */
    fs_sched_kill_all(&rt->sched); /* cancels HTTP requests still in flight */
    if (stuck)
        for (int i = 0; i < rt->nagents; i++) fs_agent_release_held(rt, rt->agents[i]);
    if (rt->on_close.fn) rt->on_close.fn(rt->on_close.data);
    int synced = 0;
    if (rt->fatal) {
        fs_error("%s", rt->fatal_msg);
        rt->exit_code = 1;
    } else {
        fs_signals_stop_step("in the final checkpoint");
        if (fs_ckpt_run(rt->ckpt, FS_CKPT_STOP, wait_ms(rt, until, FS_CKPT_WAIT_MS)) == 0) {
            fs_info("final checkpoint done: offsets committed");
            synced = 1;
        } else {
            rt->exit_code = 1;
        }
    }
    /* Leaving the group: the transport reports the revocation (bounded by
     * `until`, see fs_assign_close_by), then the last deliveries. */
    fs_signals_stop_step("closing the broker's clients (the last revocation, leaving the group, "
                         "the last deliveries)");
    fs_worker_close(rt);
    /* Only now: leaving the group revokes the partitions, and the revocation
     * writes each table partition's changelog once more. */
    if (synced && rt->ntables)
        fs_info("tables: %lld changelog records and %lld LMDB writes for %lld events; "
                "%lld records recovered",
                (long long)rt->changelog_records, (long long)rt->lmdb_writes,
                (long long)rt->events_in, (long long)rt->recovered_records);
    rt->stopped = 1;
}

/* The worker's subsystems, called by the loop on each turn. */
static void transport_hook(void *data)
{
    fs_worker_poll(data);
}

static void sched_hook(void *data)
{
    fs_rt *rt = data;
    fs_sched_run_ready(&rt->sched);
}

static void checkpoint_hook(void *data)
{
    fs_rt *rt = data;
    fs_assign_poll(rt->assign);
    fs_ckpt_poll(rt->ckpt);
}

/* How long the loop may sleep: not at all while work is queued; briefly while
 * a revocation waits for agents to reach a boundary. */
static int64_t worker_limit(void *data)
{
    fs_rt *rt = data;
    if (fs_sched_busy(&rt->sched) || rt->tp->pending || rt->tail_pending) return 0;
    return fs_assign_revoking(rt->assign) ? 20 : -1;
}

static int hook_worker(fs_rt *rt)
{
    return fs_loop_hook(&rt->loop, FS_LOOP_AFTER_IO, 0, transport_hook, rt) ||
           fs_loop_hook(&rt->loop, FS_LOOP_AFTER_TIMERS, FS_ORDER_SCHED, sched_hook, rt) ||
           fs_loop_hook(&rt->loop, FS_LOOP_AFTER_TIMERS, FS_ORDER_CHECKPOINT, checkpoint_hook, rt) ||
           fs_loop_limit(&rt->loop, worker_limit, rt);
}

int fs_rt_run(fs_rt *rt)
{
    if (rt->handle_signals && setup_signals(rt))
        fs_warn("signalfd failed: SIGTERM will not stop the worker gracefully");
    if (hook_worker(rt)) {
        fs_loop_unhook(&rt->loop, rt);
        fs_error("out of memory starting the loop");
        return 1;
    }
    rt->commit_timer.cb = commit_timer_cb;
    rt->commit_timer.data = rt;
    fs_timer_start(&rt->loop, &rt->commit_timer, rt->commit_interval_ms);
    if (rt->handle_signals) fs_rt_poll_signals(rt); /* one that came while the worker started */
    while (!rt->stopped) {
        if (fs_loop_run_once(&rt->loop, 1000) < 0) fs_rt_fatal(rt, "epoll_wait failed");
        if (rt->fatal) {
            finish(rt);
            break;
        }
        if (rt->stopping) {
            if (rt->sched.nlive_agents == 0) {
                finish(rt);
            } else if (fs_loop_now(&rt->loop) > rt->stop_deadline) {
                char where[512];
                fs_sched_describe(&rt->sched, FS_KIND_AGENT, 4, where, sizeof where);
                fs_warn("%d agent coroutines still busy after %d s (%s); committing what is finished",
                        rt->sched.nlive_agents, FS_STOP_TIMEOUT_MS / 1000, where);
                finish(rt);
            }
        }
    }
    fs_timer_stop(&rt->loop, &rt->commit_timer);
    fs_loop_unhook(&rt->loop, rt);
    return rt->exit_code;
}

/* fstream.testing: run until nothing is left to do at the current fake time. */
int fs_rt_run_until_idle(fs_rt *rt, int64_t max_rounds)
{
    int64_t rounds = 0;
    for (;;) {
        int n = fs_worker_poll(rt);
        /* (real HTTP transfers: not idle until they finish) */
        if (rt->on_idle.fn && rt->on_idle.fn(rt->on_idle.data)) n++;
        n += fs_loop_run_timers(&rt->loop, fs_loop_now(&rt->loop));
        n += fs_sched_run_ready(&rt->sched);
        if (rt->fatal) return -1;
        if (!n) return 0;
        if (++rounds > max_rounds) return 1;
    }
}
