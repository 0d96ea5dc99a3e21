/* fs_http: the HTTP client of processors (libcurl multi driven by the
 * worker's loop). App layer. */
#ifndef FS_HTTP_H
#define FS_HTTP_H

#include <lua.h>

#include "fs_rt.h"

/* fs_http.c */
#include <lauxlib.h>

int fs_http_request(lua_State *L); /* core.http_request{...}: yields until done */
/* The module functions of this file (fs_lua_module.c puts them in fstream.core). */
extern const luaL_Reg fs_lua_http_funcs[];
void fs_http_poll(fs_rt *rt);       /* test transport: progress transfers without epoll */
void fs_http_close(fs_rt *rt);


#endif
