/* fs_http: non-blocking HTTP for Lua coroutines, on libcurl's multi interface.
 *
 * curl tells us which sockets to watch (CURLMOPT_SOCKETFUNCTION) and when to
 * call it back (CURLMOPT_TIMERFUNCTION); both go into the worker's own epoll
 * loop, so a request never blocks the thread: the calling coroutine yields,
 * other agents keep running, and the finished transfer marks it ready. */
#include <curl/curl.h>
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

#include "fs_http.h"
#include "fs_log.h"
#include "fs_rt.h"

typedef struct http_req {
    fs_rt *rt;
    fs_co *co; /* NULL once the coroutine is gone */
    CURL *easy;
    struct curl_slist *req_headers;
    fs_buf body, headers;
    char *upload;
    CURLcode result;
    long status;
    int done;
    char errbuf[CURL_ERROR_SIZE];
} http_req;

typedef struct http_sock {
    fs_io io;
    fs_rt *rt;
    int registered;
} http_sock;

static void check_done(fs_rt *rt)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(rt->curlm, &left))) {
        if (msg->msg != CURLMSG_DONE) continue;
        http_req *r = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&r);
        r->result = msg->data.result;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &r->status);
        curl_multi_remove_handle(rt->curlm, msg->easy_handle);
        rt->http_inflight--;
        r->done = 1;
        /* The coroutine owns r until it resumes (cancel frees it if it dies first). */
        if (r->co) fs_sched_ready(r->co);
    }
}

static void sock_event(fs_io *io, uint32_t events)
{
    http_sock *hs = io->data;
    int flags = 0, running;
    if (events & EPOLLIN) flags |= CURL_CSELECT_IN;
    if (events & EPOLLOUT) flags |= CURL_CSELECT_OUT;
    if (events & (EPOLLERR | EPOLLHUP)) flags |= CURL_CSELECT_ERR;
    fs_rt *rt = hs->rt;
    curl_multi_socket_action(rt->curlm, io->fd, flags, &running);
    check_done(rt);
}

static int sock_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    (void)easy;
    fs_rt *rt = userp;
    http_sock *hs = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (hs) {
            if (hs->registered) fs_io_del(&rt->loop, &hs->io);
            free(hs);
            curl_multi_assign(rt->curlm, s, NULL);
        }
        return 0;
    }
    if (!hs) {
        hs = calloc(1, sizeof *hs);
        if (!hs) return -1;
        hs->io.fd = s;
        hs->io.cb = sock_event;
        hs->io.data = hs;
        hs->rt = rt;
        curl_multi_assign(rt->curlm, s, hs);
    }
    uint32_t ev = (what & CURL_POLL_IN ? EPOLLIN : 0) | (what & CURL_POLL_OUT ? EPOLLOUT : 0);
    if (hs->registered) fs_io_mod(&rt->loop, &hs->io, ev);
    else if (fs_io_add(&rt->loop, &hs->io, ev) == 0) hs->registered = 1;
    return 0;
}

static void timer_fired(fs_timer *t)
{
    fs_rt *rt = t->data;
    int running;
    curl_multi_socket_action(rt->curlm, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(rt);
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    fs_rt *rt = userp;
    if (timeout_ms < 0) fs_timer_stop(&rt->loop, &rt->http_timer);
    else fs_timer_start(&rt->loop, &rt->http_timer, timeout_ms);
    return 0;
}

static void http_close_hook(void *data)
{
    fs_http_close(data);
}

static int http_idle_hook(void *data)
{
    fs_rt *rt = data;
    if (!rt->http_inflight) return 0;
    fs_http_poll(rt);
    return 1;
}

static int ensure_multi(fs_rt *rt)
{
    if (rt->curlm) return 0;
    static int global_init;
    if (!global_init) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT)) return -1;
        global_init = 1;
    }
    rt->curlm = curl_multi_init();
    if (!rt->curlm) return -1;
    curl_multi_setopt(rt->curlm, CURLMOPT_SOCKETFUNCTION, sock_cb);
    curl_multi_setopt(rt->curlm, CURLMOPT_SOCKETDATA, rt);
    curl_multi_setopt(rt->curlm, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(rt->curlm, CURLMOPT_TIMERDATA, rt);
    rt->http_timer.cb = timer_fired;
    rt->http_timer.data = rt;
    /* The worker tells us when it stops, and fstream.testing's idle rounds. */
    rt->on_close.fn = http_close_hook;
    rt->on_close.data = rt;
    rt->on_idle.fn = http_idle_hook;
    rt->on_idle.data = rt;
    return 0;
}

static size_t collect(char *p, size_t size, size_t n, void *ud)
{
    fs_buf *b = ud;
    return fs_buf_add(b, p, size * n) ? 0 : size * n;
}

static void req_free(http_req *r)
{
    if (r->easy) curl_easy_cleanup(r->easy);
    curl_slist_free_all(r->req_headers);
    fs_buf_free(&r->body);
    fs_buf_free(&r->headers);
    free(r->upload);
    free(r);
}

/* The coroutine died while its request was in flight: abandon the transfer. */
static void cancel(fs_co *co)
{
    http_req *r = co->pending;
    co->pending = NULL;
    if (!r) return;
    if (!r->done) {
        curl_multi_remove_handle(r->rt->curlm, r->easy);
        r->rt->http_inflight--;
    }
    req_free(r);
}

static int push_response(lua_State *L, http_req *r)
{
    if (r->result != CURLE_OK) {
        lua_pushnil(L);
        lua_pushstring(L, r->errbuf[0] ? r->errbuf : curl_easy_strerror(r->result));
        req_free(r);
        return 2;
    }
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, r->status);
    lua_setfield(L, -2, "status");
    lua_pushlstring(L, r->body.data ? r->body.data : "", r->body.len);
    lua_setfield(L, -2, "body");
    /* Response headers, lower-cased names; the last one of a name wins. */
    lua_newtable(L);
    const char *p = r->headers.data, *end = p ? p + r->headers.len : NULL;
    while (p && p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol) eol = end;
        const char *colon = memchr(p, ':', (size_t)(eol - p));
        if (colon) {
            luaL_Buffer b;
            luaL_buffinit(L, &b);
            for (const char *c = p; c < colon; c++)
                luaL_addchar(&b, (char)(*c >= 'A' && *c <= 'Z' ? *c + 32 : *c));
            luaL_pushresult(&b);
            const char *v = colon + 1, *ve = eol;
            while (v < ve && (*v == ' ' || *v == '\t')) v++;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ')) ve--;
            lua_pushlstring(L, v, (size_t)(ve - v));
            lua_settable(L, -3);
        }
        p = eol + 1;
    }
    lua_setfield(L, -2, "headers");
    req_free(r);
    return 1;
}

static int request_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    http_req *r = (http_req *)ctx;
    fs_co *co = fs_co_current(L);
    if (!r->done) { /* woken for another reason (cannot happen today): wait again */
        fs_sched_wait(co, FS_WAIT_IO, r, cancel);
        return lua_yieldk(L, 0, ctx, request_k);
    }
    return push_response(L, r); /* the scheduler dropped the cancel at the resume */
}

/* core.http_request{method=, url=, headers=, body=, timeout=} -> response | nil, err */
int fs_http_request(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    fs_co *co = fs_sched_yieldable(L, "fstream.http.request must be called from an agent, task or timer");
    fs_rt *rt = co->rt;
    lua_getfield(L, 1, "url");
    const char *url = luaL_checkstring(L, -1);
    lua_getfield(L, 1, "method");
    const char *method = luaL_optstring(L, -1, "GET");
    lua_getfield(L, 1, "body");
    size_t blen = 0;
    const char *body = luaL_optlstring(L, -1, NULL, &blen);
    lua_getfield(L, 1, "timeout");
    double timeout = luaL_optnumber(L, -1, 30.0);
    lua_getfield(L, 1, "headers");
    int hidx = lua_gettop(L);
    if (!lua_isnil(L, hidx)) luaL_checktype(L, hidx, LUA_TTABLE);
    if (ensure_multi(rt)) return luaL_error(L, "libcurl could not start");

    http_req *r = calloc(1, sizeof *r);
    if (!r) return luaL_error(L, "out of memory");
    r->rt = rt;
    r->easy = curl_easy_init();
    if (!r->easy) {
        free(r);
        return luaL_error(L, "libcurl could not start");
    }
    if (body) {
        r->upload = malloc(blen ? blen : 1);
        if (r->upload) memcpy(r->upload, body, blen);
    }
    if (!lua_isnil(L, hidx)) {
        lua_pushnil(L);
        while (lua_next(L, hidx)) {
            if (lua_type(L, -2) == LUA_TSTRING && lua_isstring(L, -1)) {
                lua_pushfstring(L, "%s: %s", lua_tostring(L, -2), lua_tostring(L, -1));
                r->req_headers = curl_slist_append(r->req_headers, lua_tostring(L, -1));
                lua_pop(L, 1);
            }
            lua_pop(L, 1);
        }
    }
    CURL *e = r->easy;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    if (strcmp(method, "HEAD") == 0) curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    if (r->upload) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->upload);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)blen);
    }
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->req_headers);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &r->body);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, collect);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, &r->headers);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
    curl_easy_setopt(e, CURLOPT_PRIVATE, r);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(timeout * 1000));
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
    if (curl_multi_add_handle(rt->curlm, e) != CURLM_OK) {
        req_free(r);
        return luaL_error(L, "libcurl refused the request");
    }
    rt->http_inflight++;
    r->co = co;
    fs_sched_wait(co, FS_WAIT_IO, r, cancel);
    return lua_yieldk(L, 0, (lua_KContext)r, request_k);
}

void fs_http_poll(fs_rt *rt)
{
    if (!rt->curlm || !rt->http_inflight) return;
    int running;
    /* Without the fake clock's timers: let curl do its timeouts now. */
    fs_loop_poll(&rt->loop, 5);
    curl_multi_socket_action(rt->curlm, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(rt);
}

void fs_http_close(fs_rt *rt)
{
    if (!rt->curlm) return;
    fs_timer_stop(&rt->loop, &rt->http_timer);
    curl_multi_cleanup(rt->curlm);
    rt->curlm = NULL;
}

const luaL_Reg fs_lua_http_funcs[] = {
    {"http_request", fs_http_request},
    {NULL, NULL},
};
