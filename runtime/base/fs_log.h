/* fs_log: one-line log records on stderr, `YYYY-mm-ddTHH:MM:SS.mmm [TAG] LEVEL message`
 * (the tag only when set: a supervised worker's index, the supervisor).
 * Safe to call from librdkafka's threads (one fprintf per record). */
#ifndef FS_LOG_H
#define FS_LOG_H

enum { FS_LOG_DEBUG = 0, FS_LOG_INFO, FS_LOG_WARN, FS_LOG_ERROR, FS_LOG_OFF };

extern int fs_log_level;

/* Returns the level for "debug|info|warn|error", or -1. */
int fs_log_parse_level(const char *name);
void fs_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* on: debug and info records are kept back, in order (up to 1 MiB; warnings
 * and errors are written at once); off: the kept ones are written out now,
 * and records are written as they come again. The worker holds what its start
 * logs (topics created, tables recovered) until its banner is out, so that
 * the banner is the first thing it prints. */
void fs_log_hold(int on);
/* Sets the tag every later record carries after its time ("w1" for worker 1 of
 * `--workers N`, "supervisor"); NULL or "" for none. Call it before other
 * threads log: the tag is not locked. Longer tags are cut at 31 bytes. */
void fs_log_set_tag(const char *tag);

#define fs_debug(...) (fs_log_level <= FS_LOG_DEBUG ? fs_log(FS_LOG_DEBUG, __VA_ARGS__) : (void)0)
#define fs_info(...) fs_log(FS_LOG_INFO, __VA_ARGS__)
#define fs_warn(...) fs_log(FS_LOG_WARN, __VA_ARGS__)
#define fs_error(...) fs_log(FS_LOG_ERROR, __VA_ARGS__)

#endif
