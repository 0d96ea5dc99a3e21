/* fs_broker: the standalone in-memory broker (`fstream-lua broker`).
 * Transport layer. */
#ifndef FS_BROKER_H
#define FS_BROKER_H

#include <stddef.h>

typedef struct fs_broker_opts {
    int brokers;              /* 1..16 */
    int partitions;           /* of the topics named below */
    const char *address_file; /* NULL, or where "host:port" is written once listening */
    const char *control;      /* NULL, or a FIFO (made if missing) read for fault commands */
    const char *const *topics; /* created at start (borrowed for the call) */
    int ntopics;
} fs_broker_opts;

/* Runs the broker until SIGTERM/SIGINT: 0 then; -1 and a message if it
 * cannot start. With o->control, it also serves the fault-injection commands
 * written to that FIFO, one per line (fs_broker.c lists them). Blocks the
 * calling thread (the whole process is the broker). */
int fs_broker_serve(const fs_broker_opts *o, char *err, size_t errlen);

#endif
