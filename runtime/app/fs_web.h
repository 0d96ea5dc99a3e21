/* fs_web: the worker's web server (libmicrohttpd driven by the worker's own
 * epoll loop). App layer.
 *
 * MHD runs without threads of its own (MHD_USE_EPOLL, external polling): its
 * epoll fd is one fs_io of the worker's loop and its timeouts one fs_timer,
 * so every MHD callback runs on the loop thread, between coroutines. Those
 * callbacks never run Lua: a complete request is suspended
 * (MHD_suspend_connection), queued, and the coroutine waiting in
 * rt:web_next() is marked ready. Lua (fstream/web.lua) answers with
 * rt:web_respond(), which resumes the connection; MHD then writes the answer
 * with non-blocking sockets, so a slow reader costs a buffer, never a wait.
 *
 * What is refused before Lua sees it: a missing or wrong token (401), a body
 * above max_body (413), a path with a ".." segment (400), more requests
 * waiting for Lua than the queue holds (503). MHD bounds the rest: the
 * number of connections, the memory of each (request line and headers), and
 * idle connections (timeout).
 *
 * Ownership: a server belongs to its runtime (found with the runtime's
 * pointer, so it outlives a hot reload, which keeps the runtime and replaces
 * the Lua state); rt:web_stop() or the runtime's end frees it. A request
 * belongs to its MHD connection; Lua refers to it by number only, so a
 * request that is gone is simply not found. */
#ifndef FS_WEB_H
#define FS_WEB_H

#include <lauxlib.h>

/* Runtime methods (fs_lua_module.c adds them to fstream.Runtime):
 *   rt:web_start{bind=, port=, token=, max_body=, max_connections=,
 *                timeout=, port_tries=} -> "http://ADDR:PORT"
 *   rt:web_address() -> the address, or nil when no server runs
 *   rt:web_next() -> id, method, path, query, headers, body (yields)
 *   rt:web_hold(id): the calling coroutine answers request id; if it ends
 *                    without answering, the request gets a 500
 *   rt:web_respond(id, status, headers, body) -> true, or false when the
 *                    request is gone
 *   rt:web_stats() -> {requests=, rejected=, connections=, queued=}
 *   rt:web_stop() */
extern const luaL_Reg fs_lua_web_methods[];

#endif
