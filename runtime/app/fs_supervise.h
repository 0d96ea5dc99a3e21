/* fs_supervise: `fstream-lua worker APP --workers N`, N worker processes in
 * one consumer group under one small supervisor process.
 *
 * The supervisor runs no Lua and no librdkafka: it starts each worker as a
 * fresh copy of this executable (/proc/self/exe, argv given by fstream.cli),
 * with FSTREAM_WORKER_INDEX=i (1..N) and FSTREAM_WORKERS=N in its
 * environment, in a process group of its own (a terminal's Ctrl-C reaches the
 * supervisor only, which passes it on once) and with SIGTERM as its
 * parent-death signal. It forwards SIGTERM, SIGINT and SIGHUP to every
 * running worker; restarts a worker that crashed (a non-zero exit or a
 * signal) after a backoff of 0.5 s doubling up to 30 s, back to 0.5 s once it
 * had run a minute; leaves a worker that exited 0 stopped; and returns when no
 * worker runs nor waits to be restarted. */
#ifndef FS_SUPERVISE_H
#define FS_SUPERVISE_H

#define FS_SUPERVISE_BACKOFF_MIN_MS 500
#define FS_SUPERVISE_BACKOFF_MAX_MS 30000
#define FS_SUPERVISE_HEALTHY_MS 60000

/* Runs n workers; argvs[i] is worker i+1's NULL-terminated argv (argv[0]
 * included), borrowed for the call. Blocks SIGCHLD for the process. Returns
 * the exit code: 0 when every worker's last run exited 0, 1 otherwise (one
 * ended by a signal or an error, one that could not be started, one waiting
 * for its restart when the stop came). */
int fs_supervise(int n, char *const *const *argvs);

#endif
