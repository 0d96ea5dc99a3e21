/* fs_bundle: the Lua side (the lua/fstream modules) compiled into the binary.
 * fs_bundle.c is generated at build time by scripts/embed-lua. */
#ifndef FS_BUNDLE_H
#define FS_BUNDLE_H

#include <stddef.h>

struct fs_bundled {
    const char *name;      /* module name, e.g. "fstream.app" */
    const char *chunkname; /* "@lua/fstream/app.lua": tracebacks show the source path */
    const char *src;
    size_t len;
};

extern const struct fs_bundled fs_bundle[]; /* ends with a NULL name */

#endif
