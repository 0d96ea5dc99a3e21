/* fs_fatal: "this worker cannot go on" (layer: core). Any layer may record it
 * (the first reason wins); the worker's loop sees it, stops without committing
 * and exits with the message. The state is a flag and a message buffer owned
 * by whoever holds them (fs_rt.fatal, fs_rt.fatal_msg); recording it needs no
 * call into the worker. */
#ifndef FS_FATAL_H
#define FS_FATAL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

__attribute__((format(printf, 4, 0))) static inline void
fs_fatal_vset(int *flag, char *msg, size_t size, const char *fmt, va_list ap)
{
    if (*flag) return;
    vsnprintf(msg, size, fmt, ap);
    *flag = 1;
}

#endif
