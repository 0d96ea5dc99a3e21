/* fs_trace: W3C Trace Context (traceparent) parsing and child spans. A worker
 * takes part in a trace without recording spans: what it sends for an event
 * carries the event's trace id under a new span id, so a tracing backend sees
 * the message cross the worker. Pure functions, no allocation. */
#ifndef FS_TRACE_H
#define FS_TRACE_H

#include <stddef.h>

/* "00-<32 hex trace id>-<16 hex span id>-<2 hex flags>" */
enum { FS_TRACEPARENT_LEN = 55 };

/* 1 when v (len bytes, not NUL-terminated) is a traceparent this worker
 * propagates: version 00 exactly, or a later version (not ff) with the same
 * first four fields, optionally followed by "-..."; lowercase hex; neither id
 * all zeros. */
int fs_trace_valid(const char *v, size_t len);

/* Writes the child of a valid parent into out (FS_TRACEPARENT_LEN bytes, no
 * NUL): version 00, the parent's trace id and flags, a fresh random span id
 * (never all zeros). */
void fs_trace_child(const char *parent, char out[FS_TRACEPARENT_LEN]);

#endif
