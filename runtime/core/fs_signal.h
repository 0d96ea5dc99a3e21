/* fs_signal: SIGTERM/SIGINT and the runaway watch (layer: core).
 *
 * SIGTERM/SIGINT are taken by a thread of their own (a second one exits the
 * process at once, whatever the loop is doing; so does a stop that is not over
 * within FS_STOP_HARD_LIMIT_S). The same thread pokes a coroutine that runs
 * too long (fs_sched_watch). It never touches a runtime: it counts signals and
 * wakes the loop through an eventfd (fs_signals_fd); fs_signals_poll, on the
 * loop's thread, turns a new one into a call of the stop callback the worker
 * registered. The loop calls it, and so do places that may run long without
 * the loop (the scheduler's count hook).
 *
 * State: one per process (signals are); the registered callback's data must
 * outlive its registration. */
#ifndef FS_SIGNAL_H
#define FS_SIGNAL_H

/* How long agents may take to finish after a stop is requested. */
#define FS_STOP_TIMEOUT_MS 30000
/* After the first SIGTERM/SIGINT the whole stop — agents (FS_STOP_TIMEOUT_MS),
 * final delivery and commit, leaving the group — must be over within this, or
 * the watch thread ends the process (exit code 1, nothing more committed). */
#define FS_STOP_HARD_LIMIT_S 75

/* Once per process, before the worker connects: SIGTERM/SIGINT blocked in
 * every thread (main.c) go to the watch thread. */
int fs_signals_start(void);
/* Blocks SIGTERM, SIGINT and SIGHUP in the calling thread (and the threads it
 * starts afterwards): the watch thread and the worker's signalfd take them. */
void fs_signals_block(void);
int fs_watch_start(void); /* only the runaway watch (in-process runtimes) */
int fs_signals_stop_requested(void); /* a signal arrived (any thread may ask) */
/* Who is told of a stop signal: fn(data, "SIGTERM" | "SIGINT"). */
void fs_signals_on_stop(void (*fn)(void *data, const char *why), void *data);
void fs_signals_poll(void);     /* a signal not yet told: tell it now */
void fs_signals_stopping(void); /* the worker stops: a further signal exits at once */
int fs_signals_fd(void);        /* readable when a signal came; -1 without the thread */
/* What the stop is doing (a string that lives as long as the process): the
 * watch thread names it if the stop overruns FS_STOP_HARD_LIMIT_S. */
void fs_signals_stop_step(const char *what);

#endif
