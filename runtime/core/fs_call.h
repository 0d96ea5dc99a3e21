/* fs_call: how C calls into Lua, and how C keeps Lua values alive.
 *
 * Core layer. Every protected call the runtime makes goes through fs_call,
 * which runs the function under one message handler (fs_call_msgh), as lua.c's
 * docall does. Every registry reference the runtime takes goes through
 * fs_ref/fs_unref, which count the references alive in this process: the
 * count is the stat `lua_refs` of rt:stats(), so a reference that is never
 * released shows up as a number that does not come back down. */
#ifndef FS_CALL_H
#define FS_CALL_H

#include <lua.h>

enum {
    FS_CALL_TRACEBACK = 1, /* append a traceback to the error message */
    FS_CALL_RAW = 2,       /* leave the error object untouched (it is raised again) */
};

/* Calls the function below the nargs arguments on top of L, like lua_pcall.
 * On error, returns the status with the message on top: a string (non-string
 * error objects are converted with __tostring or named by type), followed by
 * a traceback with FS_CALL_TRACEBACK; with FS_CALL_RAW the object as raised. */
int fs_call(lua_State *L, int nargs, int nresults, int flags);

/* The message handler fs_call installs; also usable as a lua_pcall handler
 * when a call must be made by hand (it always adds the traceback). */
int fs_call_msgh(lua_State *L);

/* Replaces the value at idx by a string saying what it is (an error message),
 * without raising. Returns that string (valid while it stays on the stack). */
const char *fs_call_message(lua_State *L, int idx);

/* Pops the value on top of L and returns a reference to it in the registry
 * (LUA_REFNIL for nil: not counted). The reference keeps the value alive until
 * fs_unref; it is valid in every thread of L's state. */
int fs_ref(lua_State *L);
/* Releases a reference taken by fs_ref. No-op for LUA_NOREF, LUA_REFNIL and 0
 * (the "none" of calloc'ed structs). L: any thread of the state that owns it. */
void fs_unref(lua_State *L, int ref);
/* References taken and not yet released, in every state of this process. */
long fs_refs_live(void);

#endif
