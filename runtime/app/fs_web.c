/* fs_web: the worker's web server on libmicrohttpd, driven by the worker's
 * loop (see fs_web.h for the model and the ownership rules). */
#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fs_assign.h"
#include "fs_buf.h"
#include "fs_log.h"
#include "fs_lua.h"
#include "fs_store.h"
#include "fs_table_types.h"
#include "fs_web.h"

enum { REQ_RECEIVING = 0, REQ_QUEUED, REQ_IN_LUA, REQ_ANSWERED };

typedef struct web_req web_req;
typedef struct fs_web fs_web;

struct web_req {
    fs_web *web;
    struct MHD_Connection *conn;
    uint64_t id;
    int state;
    unsigned reject;  /* status refused with before Lua sees the request, or 0 */
    int reject_sent;  /* that refusal is queued (the body may still be arriving) */
    fs_buf body;
    const char *method, *url; /* MHD's, valid until the request completes */
    struct MHD_Response *resp; /* the answer, queued once the connection resumes */
    unsigned status;
    fs_co *holder;       /* the coroutine that answers it (rt:web_hold), or NULL */
    web_req *qnext;      /* waiting for Lua */
    web_req *prev, *next; /* live requests handed to Lua (IN_LUA) */
};

struct fs_web {
    fs_rt *rt;
    struct MHD_Daemon *d;
    fs_io io;
    fs_timer timer;
    char address[96];
    char *token;
    size_t max_body;
    int max_queue;
    int need_run; /* a connection resumed: MHD must run this turn */
    web_req *qhead, *qtail;
    int nqueued;
    web_req *inlua; /* requests Lua holds an id of */
    fs_co *waiter;  /* the coroutine in web_next */
    uint64_t next_id;
    int64_t requests, rejected, connections;
    /* One answer Lua said may be repeated (rt:web_cache: the built-in
     * /metrics, which renders at most every 0.1 s anyway): until the loop's
     * clock passes cache_until, a GET of cache_path is answered with it from
     * access_cb, without suspending the connection or waking the Lua side. */
    char *cache_path;
    struct MHD_Response *cache_resp;
    unsigned cache_status;
    int64_t cache_until, cache_hits;
    fs_web *next_server;
};

/* Servers by runtime: a hot reload keeps the runtime and replaces the Lua
 * state, so the server cannot live in a Lua object. */
static fs_web *servers;

static fs_web *web_of(fs_rt *rt)
{
    for (fs_web *w = servers; w; w = w->next_server)
        if (w->rt == rt) return w;
    return NULL;
}

static void arm_timer(fs_web *w)
{
    MHD_UNSIGNED_LONG_LONG ms;
    if (MHD_get_timeout(w->d, &ms) == MHD_YES)
        fs_timer_start(&w->rt->loop, &w->timer, ms > 60000 ? 60000 : (int64_t)ms);
    else fs_timer_stop(&w->rt->loop, &w->timer);
}

static void run_mhd(fs_web *w)
{
    w->need_run = 0;
    MHD_run(w->d);
    arm_timer(w);
}

static void io_cb(fs_io *io, uint32_t events)
{
    (void)events;
    run_mhd(io->data);
}

static void timer_cb(fs_timer *t)
{
    run_mhd(t->data);
}

/* After the coroutines ran (they may have answered): let MHD write. */
static void after_sched_hook(void *data)
{
    fs_web *w = data;
    if (w->need_run) run_mhd(w);
}

static int64_t web_limit(void *data)
{
    return ((fs_web *)data)->need_run ? 0 : -1;
}

static void drop_cache(fs_web *w)
{
    if (w->cache_resp) MHD_destroy_response(w->cache_resp);
    w->cache_resp = NULL;
    free(w->cache_path);
    w->cache_path = NULL;
}

static void unlink_inlua(web_req *r)
{
    if (r->prev) r->prev->next = r->next;
    else if (r->web->inlua == r) r->web->inlua = r->next;
    if (r->next) r->next->prev = r->prev;
    r->prev = r->next = NULL;
}

static void unhold(web_req *r)
{
    if (r->holder) {
        fs_sched_hold(r->holder, NULL, NULL);
        r->holder = NULL;
    }
}

static struct MHD_Response *text_response(const char *text)
{
    return MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
}

/* The answer to a request Lua had (or will never get to): resume the
 * connection; MHD queues it when it calls us back. */
static int answer(web_req *r, unsigned status, struct MHD_Response *resp)
{
    if (!resp) return -1;
    if (r->state == REQ_IN_LUA) unlink_inlua(r);
    unhold(r);
    r->resp = resp;
    r->status = status;
    r->state = REQ_ANSWERED;
    MHD_resume_connection(r->conn);
    r->web->need_run = 1;
    return 0;
}

static int same_token(const char *got, const char *want)
{
    /* Constant time in the token's length: no early exit on the first difference. */
    size_t n = strlen(want), m = strlen(got);
    unsigned char diff = (unsigned char)(n != m);
    for (size_t i = 0; i < n; i++) diff |= (unsigned char)(want[i] ^ (i < m ? got[i] : 0));
    return diff == 0;
}

/* A path segment ".." (also percent-encoded): refused, whatever the route. */
static int has_dotdot(const char *url)
{
    const char *s = url;
    while (*s) {
        const char *e = strchr(s, '/');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        if ((n == 2 && strncmp(s, "..", 2) == 0) || (n == 4 && strncasecmp(s, "%2e.", 4) == 0) ||
            (n == 4 && strncasecmp(s, ".%2e", 4) == 0) || (n == 6 && strncasecmp(s, "%2e%2e", 6) == 0))
            return 1;
        if (!e) break;
        s = e + 1;
    }
    return 0;
}

static const char *reject_text(unsigned status)
{
    switch (status) {
    case 400: return "bad request: a path may not contain '..'\n";
    case 401: return "unauthorized: send Authorization: Bearer <token>\n";
    case 413: return "request body too large\n";
    default: return "server busy: too many requests waiting\n";
    }
}

static enum MHD_Result access_cb(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload,
                                 size_t *upload_size, void **con_cls)
{
    (void)version;
    fs_web *w = cls;
    web_req *r = *con_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) return MHD_NO; /* MHD closes the connection */
        r->web = w;
        r->conn = conn;
        r->method = method;
        r->url = url;
        *con_cls = r;
        w->requests++;
        /* The dashboard's page holds no data: it is served without the token,
         * which it takes from the URL's fragment for the data it fetches. */
        int page = strcmp(url, "/") == 0 && (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0);
        if (w->token && !page) {
            const char *auth = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
            if (!auth || strncmp(auth, "Bearer ", 7) != 0 || !same_token(auth + 7, w->token))
                r->reject = 401;
        }
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        if (!r->reject && cl && strtoull(cl, NULL, 10) > w->max_body) r->reject = 413;
        if (!r->reject && has_dotdot(url)) r->reject = 400;
        if (!r->reject) return MHD_YES; /* the body, if any, comes next */
    }
    if (*upload_size) {
        /* A body without Content-Length (chunked) is bounded here. */
        if (!r->reject && r->body.len + *upload_size > w->max_body) {
            r->reject = 413;
            fs_buf_free(&r->body);
        }
        if (!r->reject && fs_buf_add(&r->body, upload, *upload_size)) r->reject = 503;
        /* Refused or not, the rest of the body is read and dropped: MHD
         * sends an answer queued in the middle of a body only once the body
         * is over, and a client that is still sending would not read it. */
        *upload_size = 0;
        return MHD_YES;
    }
    if (r->state == REQ_ANSWERED) {
        enum MHD_Result rc = MHD_queue_response(conn, r->status, r->resp);
        MHD_destroy_response(r->resp);
        r->resp = NULL;
        return rc;
    }
    if (!r->reject && w->cache_resp && !r->body.len && strcmp(url, w->cache_path) == 0 &&
        strcmp(method, "GET") == 0) {
        if (fs_loop_now(&w->rt->loop) < w->cache_until) {
            w->cache_hits++;
            return MHD_queue_response(conn, w->cache_status, w->cache_resp);
        }
        drop_cache(w);
    }
    if (!r->reject && w->nqueued >= w->max_queue) r->reject = 503;
    if (r->reject) {
        if (r->reject_sent) return MHD_YES; /* answered while the body kept coming */
        w->rejected++;
        struct MHD_Response *resp = text_response(reject_text(r->reject));
        if (!resp) return MHD_NO;
        MHD_add_response_header(resp, "Content-Type", "text/plain; charset=utf-8");
        if (r->reject == 401) MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
        /* The rest of a refused body is not worth reading. */
        if (r->reject == 413) MHD_add_response_header(resp, "Connection", "close");
        enum MHD_Result rc = MHD_queue_response(conn, r->reject, resp);
        r->reject_sent = 1;
        MHD_destroy_response(resp);
        return rc;
    }
    /* Complete: Lua answers it, on the loop, when the web coroutine runs. */
    MHD_suspend_connection(conn);
    r->state = REQ_QUEUED;
    if (w->qtail) w->qtail->qnext = r;
    else w->qhead = r;
    w->qtail = r;
    w->nqueued++;
    if (w->waiter) {
        fs_sched_ready(w->waiter);
        w->waiter = NULL;
    }
    return MHD_YES;
}

static void completed_cb(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls, (void)conn, (void)toe;
    web_req *r = *con_cls;
    if (!r) return;
    *con_cls = NULL;
    if (r->state == REQ_IN_LUA) unlink_inlua(r);
    unhold(r);
    if (r->state == REQ_ANSWERED && r->resp) MHD_destroy_response(r->resp);
    fs_buf_free(&r->body);
    free(r);
}

static void notify_conn(void *cls, struct MHD_Connection *conn, void **socket_ctx,
                        enum MHD_ConnectionNotificationCode code)
{
    (void)conn, (void)socket_ctx;
    fs_web *w = cls;
    w->connections += code == MHD_CONNECTION_NOTIFY_STARTED ? 1 : -1;
}

/* Keeps percent escapes in the path (a table key may hold "/" as %2F); the
 * Lua side decodes each segment, and query values are decoded below. */
static size_t keep_escapes(void *cls, struct MHD_Connection *c, char *s)
{
    (void)cls, (void)c;
    return strlen(s);
}

static void log_mhd(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && msg[n - 1] == '\n') msg[--n] = 0;
    fs_debug("web: %s", msg);
}

/* A listening socket on bind:port, or the next free port up to `tries`
 * ports further (several workers on one machine). -1 with err set. */
static int listen_on(const char *bind_addr, int port, int tries, int *port_out, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t len;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    int family;
    if (inet_pton(AF_INET, bind_addr, &a4->sin_addr) == 1) {
        family = a4->sin_family = AF_INET;
        len = sizeof *a4;
    } else if (inet_pton(AF_INET6, bind_addr, &a6->sin6_addr) == 1) {
        family = a6->sin6_family = AF_INET6;
        len = sizeof *a6;
    } else {
        snprintf(err, errlen, "web bind address '%s' is not an IPv4 or IPv6 address", bind_addr);
        return -1;
    }
    int last = 0;
    for (int i = 0; i < (port == 0 ? 1 : tries); i++) {
        int p = port == 0 ? 0 : port + i;
        if (p > 65535) break;
        int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            snprintf(err, errlen, "web: socket: %s", strerror(errno));
            return -1;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
        if (family == AF_INET) a4->sin_port = htons((uint16_t)p);
        else a6->sin6_port = htons((uint16_t)p);
        if (bind(fd, (struct sockaddr *)&ss, len) == 0 && listen(fd, 128) == 0) {
            struct sockaddr_storage got;
            socklen_t glen = sizeof got;
            getsockname(fd, (struct sockaddr *)&got, &glen);
            *port_out = ntohs(family == AF_INET ? ((struct sockaddr_in *)&got)->sin_port
                                                : ((struct sockaddr_in6 *)&got)->sin6_port);
            return fd;
        }
        last = errno;
        close(fd);
        if (last != EADDRINUSE) break;
    }
    if (last == EADDRINUSE)
        snprintf(err, errlen, "web: ports %d to %d on %s are all taken", port, port + tries - 1, bind_addr);
    else snprintf(err, errlen, "web: cannot listen on %s:%d: %s", bind_addr, port, strerror(last));
    return -1;
}

static void web_free(fs_web *w)
{
    if (w->d) {
        /* MHD refuses to stop with suspended connections: answer them all. */
        for (web_req *r = w->qhead; r; r = r->qnext) {
            r->state = REQ_IN_LUA; /* not linked: answer() only unlinks when linked */
            r->prev = r->next = NULL;
            answer(r, 503, text_response("the worker is stopping\n"));
        }
        w->qhead = w->qtail = NULL;
        while (w->inlua) answer(w->inlua, 503, text_response("the worker is stopping\n"));
        MHD_run(w->d); /* queue what was answered; the stop closes the connections */
        fs_io_del(&w->rt->loop, &w->io);
        MHD_stop_daemon(w->d);
    }
    fs_timer_stop(&w->rt->loop, &w->timer);
    fs_loop_unhook(&w->rt->loop, w);
    for (fs_web **p = &servers; *p; p = &(*p)->next_server)
        if (*p == w) {
            *p = w->next_server;
            break;
        }
    drop_cache(w);
    free(w->token);
    free(w);
}

static lua_Integer opt_int(lua_State *L, int t, const char *k, lua_Integer def)
{
    lua_getfield(L, t, k);
    lua_Integer v = luaL_optinteger(L, -1, def);
    lua_pop(L, 1);
    return v;
}

static int l_web_start(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    if (web_of(rt)) return luaL_error(L, "the web server already runs");
    lua_getfield(L, 2, "bind");
    const char *bind_addr = luaL_optstring(L, -1, "127.0.0.1");
    lua_getfield(L, 2, "token");
    const char *token = luaL_optstring(L, -1, NULL);
    int port = (int)opt_int(L, 2, "port", 6066);
    int tries = (int)opt_int(L, 2, "port_tries", 100);
    lua_Integer max_body = opt_int(L, 2, "max_body", 1 << 20);
    unsigned max_conn = (unsigned)opt_int(L, 2, "max_connections", 256);
    unsigned timeout = (unsigned)opt_int(L, 2, "timeout", 30);
    if (port < 0 || port > 65535) return luaL_error(L, "web port must be 0..65535");
    if (max_body < 0 || max_conn < 1) return luaL_error(L, "web limits must be positive");

    fs_web *w = calloc(1, sizeof *w);
    if (!w || (token && !(w->token = strdup(token)))) {
        free(w);
        return luaL_error(L, "out of memory");
    }
    w->rt = rt;
    w->max_body = (size_t)max_body;
    w->max_queue = (int)max_conn;
    char err[256];
    int got_port = 0;
    int fd = listen_on(bind_addr, port, tries, &got_port, err, sizeof err);
    if (fd < 0) {
        free(w->token);
        free(w);
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    w->d = MHD_start_daemon(MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG, 0, NULL, NULL,
                            access_cb, w, MHD_OPTION_LISTEN_SOCKET, fd, MHD_OPTION_NOTIFY_COMPLETED,
                            completed_cb, w, MHD_OPTION_NOTIFY_CONNECTION, notify_conn, w,
                            MHD_OPTION_CONNECTION_LIMIT, max_conn, MHD_OPTION_CONNECTION_TIMEOUT,
                            timeout, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)32768,
                            MHD_OPTION_UNESCAPE_CALLBACK, keep_escapes, NULL,
                            MHD_OPTION_EXTERNAL_LOGGER, log_mhd, NULL, MHD_OPTION_END);
    const union MHD_DaemonInfo *info = w->d ? MHD_get_daemon_info(w->d, MHD_DAEMON_INFO_EPOLL_FD) : NULL;
    if (!info) {
        if (w->d) MHD_stop_daemon(w->d);
        else close(fd);
        free(w->token);
        free(w);
        lua_pushnil(L);
        lua_pushstring(L, "web: libmicrohttpd could not start");
        return 2;
    }
    w->io.fd = info->epoll_fd;
    w->io.cb = io_cb;
    w->io.data = w;
    w->timer.cb = timer_cb;
    w->timer.data = w;
    /* After the scheduler (order 10): answers written in this turn go out in it. */
    int added = fs_io_add(&rt->loop, &w->io, EPOLLIN) == 0;
    if (!added || fs_loop_hook(&rt->loop, FS_LOOP_AFTER_TIMERS, 15, after_sched_hook, w) ||
        fs_loop_limit(&rt->loop, web_limit, w)) {
        if (added) fs_io_del(&rt->loop, &w->io);
        fs_loop_unhook(&rt->loop, w);
        MHD_stop_daemon(w->d);
        free(w->token);
        free(w);
        return luaL_error(L, "web: cannot register with the loop");
    }
    snprintf(w->address, sizeof w->address, strchr(bind_addr, ':') ? "http://[%s]:%d" : "http://%s:%d",
             bind_addr, got_port);
    w->next_server = servers;
    servers = w;
    arm_timer(w);
    lua_pushstring(L, w->address);
    return 1;
}

static int l_web_address(lua_State *L)
{
    fs_web *w = web_of(fs_lua_check_rt(L, 1));
    if (!w) return 0;
    lua_pushstring(L, w->address);
    return 1;
}

static void next_cancel(fs_co *co)
{
    fs_web *w = co->pending;
    co->pending = NULL;
    if (w && w->waiter == co) w->waiter = NULL;
}

static int decode_pct(char *s)
{
    char *o = s;
    for (char *p = s; *p; p++) {
        if (*p == '+') *o++ = ' ';
        else if (*p == '%' && p[1] && p[2]) {
            char hex[3] = {p[1], p[2], 0}, *end;
            long v = strtol(hex, &end, 16);
            if (*end) *o++ = *p;
            else {
                *o++ = (char)v;
                p += 2;
            }
        } else *o++ = *p;
    }
    return (int)(o - s);
}

static enum MHD_Result push_arg(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    (void)kind;
    lua_State *L = cls;
    size_t kl = strlen(key), vl = value ? strlen(value) : 0;
    char *k = malloc(kl + vl + 2);
    if (!k) return MHD_NO;
    memcpy(k, key, kl + 1);
    char *v = k + kl + 1;
    if (value) memcpy(v, value, vl + 1);
    else v[0] = 0;
    int kn = decode_pct(k), vn = decode_pct(v);
    lua_pushlstring(L, k, (size_t)kn);
    lua_pushlstring(L, v, (size_t)vn);
    free(k);
    lua_rawset(L, -3); /* the last of a repeated name wins */
    return MHD_YES;
}

static enum MHD_Result push_header(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    (void)kind;
    lua_State *L = cls;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (const char *c = key; *c; c++) luaL_addchar(&b, (char)(*c >= 'A' && *c <= 'Z' ? *c + 32 : *c));
    luaL_pushresult(&b);
    lua_pushstring(L, value ? value : "");
    lua_rawset(L, -3);
    return MHD_YES;
}

/* id, method, path (still percent-encoded), query, headers, body */
static int push_request(lua_State *L, fs_web *w)
{
    web_req *r = w->qhead;
    w->qhead = r->qnext;
    if (!w->qhead) w->qtail = NULL;
    r->qnext = NULL;
    w->nqueued--;
    r->state = REQ_IN_LUA;
    r->id = ++w->next_id;
    r->next = w->inlua;
    if (w->inlua) w->inlua->prev = r;
    w->inlua = r;
    lua_pushinteger(L, (lua_Integer)r->id);
    lua_pushstring(L, r->method);
    const char *q = strchr(r->url, '?'); /* MHD cut the query off already; be sure */
    lua_pushlstring(L, r->url, q ? (size_t)(q - r->url) : strlen(r->url));
    lua_newtable(L);
    MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, push_arg, L);
    lua_newtable(L);
    MHD_get_connection_values(r->conn, MHD_HEADER_KIND, push_header, L);
    lua_pushlstring(L, r->body.data ? r->body.data : "", r->body.len);
    return 6;
}

static int next_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    fs_web *w = web_of((fs_rt *)ctx);
    if (!w) return 0; /* stopped meanwhile */
    if (!w->qhead) {
        fs_co *co = fs_co_current(L);
        w->waiter = co;
        fs_sched_wait(co, FS_WAIT_IO, w, next_cancel);
        return lua_yieldk(L, 0, ctx, next_k);
    }
    return push_request(L, w);
}

static int l_web_next(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    fs_co *co = fs_sched_yieldable(L, "rt:web_next must be called from a task");
    fs_web *w = web_of(rt);
    if (!w) return 0;
    if (w->qhead) return push_request(L, w);
    w->waiter = co;
    fs_sched_wait(co, FS_WAIT_IO, w, next_cancel);
    return lua_yieldk(L, 0, (lua_KContext)rt, next_k);
}

static web_req *find_req(fs_web *w, lua_Integer id)
{
    for (web_req *r = w ? w->inlua : NULL; r; r = r->next)
        if ((lua_Integer)r->id == id) return r;
    return NULL;
}

/* The coroutine that held the request ended without answering it. */
static void hold_release(fs_co *co, void *held, int failed)
{
    (void)co;
    web_req *r = held;
    r->holder = NULL;
    if (r->state != REQ_IN_LUA) return;
    answer(r, failed ? 500 : 503,
           text_response(failed ? "internal server error (see the worker's log)\n"
                                : "the handler ended without an answer\n"));
}

static int l_web_hold(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    web_req *r = find_req(web_of(rt), luaL_checkinteger(L, 2));
    fs_co *co = fs_co_current(L);
    if (!r || !co) return 0;
    unhold(r);
    r->holder = co;
    fs_sched_hold(co, r, hold_release);
    return 0;
}

/* The headers table at idx onto resp; 0, or -1 with resp destroyed and the
 * error on the stack's top (for luaL_error's caller). */
static int add_headers(lua_State *L, int idx, struct MHD_Response *resp)
{
    if (lua_isnil(L, idx)) return 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) == LUA_TSTRING && lua_isstring(L, -1) &&
            MHD_add_response_header(resp, lua_tostring(L, -2), lua_tostring(L, -1)) != MHD_YES) {
            MHD_destroy_response(resp);
            lua_pushfstring(L, "invalid response header '%s'", lua_tostring(L, -2));
            return -1;
        }
        lua_pop(L, 1);
    }
    return 0;
}

/* rt:web_cache(path, seconds, status, headers, body): for the next `seconds`
 * (loop clock), GET path is answered with this from C; rt:web_cache() drops
 * it (a reload: the new version's pages may take the path over). */
static int l_web_cache(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    fs_web *w = web_of(rt);
    if (!w) return 0;
    drop_cache(w);
    if (lua_isnoneornil(L, 2)) return 0;
    const char *path = luaL_checkstring(L, 2);
    lua_Number secs = luaL_checknumber(L, 3);
    lua_Integer status = luaL_checkinteger(L, 4);
    if (!lua_isnil(L, 5)) luaL_checktype(L, 5, LUA_TTABLE);
    size_t blen;
    const char *body = luaL_checklstring(L, 6, &blen);
    if (status < 100 || status > 999) return luaL_error(L, "HTTP status %d is not one", (int)status);
    if (!(secs > 0)) return 0;
    struct MHD_Response *resp = MHD_create_response_from_buffer(blen, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!resp) return luaL_error(L, "out of memory");
    if (add_headers(L, 5, resp)) return lua_error(L);
    if (!(w->cache_path = strdup(path))) {
        MHD_destroy_response(resp);
        return luaL_error(L, "out of memory");
    }
    w->cache_resp = resp;
    w->cache_status = (unsigned)status;
    w->cache_until = fs_loop_now(&rt->loop) + (int64_t)(secs * 1000.0);
    return 0;
}

static int l_web_respond(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    web_req *r = find_req(web_of(rt), luaL_checkinteger(L, 2));
    lua_Integer status = luaL_checkinteger(L, 3);
    if (!lua_isnil(L, 4)) luaL_checktype(L, 4, LUA_TTABLE);
    size_t blen = 0;
    const char *body = luaL_optlstring(L, 5, "", &blen);
    if (status < 100 || status > 999) return luaL_error(L, "HTTP status %d is not one", (int)status);
    if (!r) {
        lua_pushboolean(L, 0);
        return 1;
    }
    struct MHD_Response *resp = MHD_create_response_from_buffer(blen, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!resp) return luaL_error(L, "out of memory");
    if (add_headers(L, 4, resp)) return lua_error(L);
    answer(r, (unsigned)status, resp);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_web_stats(lua_State *L)
{
    fs_web *w = web_of(fs_lua_check_rt(L, 1));
    if (!w) return 0;
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, w->requests);
    lua_setfield(L, -2, "requests");
    lua_pushinteger(L, w->rejected);
    lua_setfield(L, -2, "rejected");
    lua_pushinteger(L, w->connections);
    lua_setfield(L, -2, "connections");
    lua_pushinteger(L, w->nqueued);
    lua_setfield(L, -2, "queued");
    lua_pushinteger(L, w->cache_hits);
    lua_setfield(L, -2, "cached");
    return 1;
}

static int l_web_stop(lua_State *L)
{
    fs_web *w = web_of(fs_lua_check_rt(L, 1));
    if (w) {
        if (w->waiter) {
            /* The coroutine's cancel still points at w: detach it. */
            w->waiter->pending = NULL;
            w->waiter = NULL;
        }
        web_free(w);
    }
    return 0;
}

static const char *part_state(int s)
{
    switch (s) {
    case FS_PART_ASSIGNED: return "assigned";
    case FS_PART_RECOVERING: return "recovering";
    case FS_PART_ACTIVE: return "active";
    case FS_PART_FENCING: return "fencing";
    default: return "revoked";
    }
}

/* rt:web_partitions() -> list of {topic=, partition=, state=, delivered=,
 * next=, committed=, committable=} for every partition this worker holds
 * (input topics; changelogs are the tables' business). */
static int l_web_partitions(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    fs_sync_acks(rt);
    lua_newtable(L);
    lua_Integer n = 0;
    for (int i = 0; i < rt->ntopics; i++) {
        fs_topic *t = rt->topics[i];
        if (t->table) continue;
        for (int j = 0; j < t->nparts; j++) {
            fs_part *p = t->parts[j];
            if (!fs_part_held(p)) continue;
            lua_createtable(L, 0, 7);
            lua_pushstring(L, t->name);
            lua_setfield(L, -2, "topic");
            lua_pushinteger(L, p->id);
            lua_setfield(L, -2, "partition");
            lua_pushstring(L, part_state(p->state));
            lua_setfield(L, -2, "state");
            lua_pushinteger(L, p->delivered);
            lua_setfield(L, -2, "delivered");
            lua_pushinteger(L, p->next);
            lua_setfield(L, -2, "next");
            lua_pushinteger(L, p->committed);
            lua_setfield(L, -2, "committed");
            int64_t hi = rt->tp && rt->tp->ops->high_watermark
                             ? rt->tp->ops->high_watermark(rt->tp, t->name, p->id)
                             : -1;
            if (hi >= 0) {
                lua_pushinteger(L, hi);
                lua_setfield(L, -2, "high");
            }
            if (fs_part_consuming(p)) {
                lua_pushinteger(L, fs_part_committable(p));
                lua_setfield(L, -2, "committable");
            }
            lua_rawseti(L, -2, ++n);
        }
    }
    return 1;
}

/* rt:web_consuming(): the worker subscribed, has been given its partitions
 * (some partition was assigned once, or it reads nothing) and no assignment
 * or revocation is in progress. */
static int l_web_consuming(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    int seen = 0, inputs = 0;
    for (int i = 0; i < rt->ntopics && !seen; i++) {
        fs_topic *t = rt->topics[i];
        if (t->table || !t->nsubs) continue;
        inputs = 1;
        for (int j = 0; j < t->nparts && !seen; j++) seen = t->parts[j] && t->parts[j]->gen > 0;
    }
    if (rt->tp && rt->tp->holds_all) seen = 1;
    lua_pushboolean(L, rt->subscribed && (seen || !inputs) && !(rt->assign && fs_assign_busy(rt->assign)));
    return 1;
}

/* rt:web_agents() -> list of {name=, processed=, seconds_sum=, buckets={n per
 * bound, then above the last}} in agent order; bounds() gives the bounds. */
static int l_web_agents(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    lua_createtable(L, rt->nagents, 0);
    for (int i = 0; i < rt->nagents; i++) {
        fs_agent *a = rt->agents[i];
        lua_createtable(L, 0, 4);
        lua_pushstring(L, a->name);
        lua_setfield(L, -2, "name");
        lua_pushinteger(L, a->stats.processed);
        lua_setfield(L, -2, "processed");
        lua_pushnumber(L, (double)a->stats.ns_sum / 1e9);
        lua_setfield(L, -2, "seconds_sum");
        lua_createtable(L, FS_LAT_NBOUNDS + 1, 0);
        for (int b = 0; b <= FS_LAT_NBOUNDS; b++) {
            lua_pushinteger(L, a->stats.buckets[b]);
            lua_rawseti(L, -2, b + 1);
        }
        lua_setfield(L, -2, "buckets");
        lua_pushboolean(L, a->closed);
        lua_setfield(L, -2, "closed");
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

/* core-independent: the histogram's bounds in seconds. */
static int l_web_latency_bounds(lua_State *L)
{
    static const int64_t bounds[FS_LAT_NBOUNDS] = FS_LAT_BOUNDS;
    (void)fs_lua_check_rt(L, 1);
    lua_createtable(L, FS_LAT_NBOUNDS, 0);
    for (int b = 0; b < FS_LAT_NBOUNDS; b++) {
        lua_pushnumber(L, (double)bounds[b] / 1e9);
        lua_rawseti(L, -2, b + 1);
    }
    return 1;
}

/* rt:web_tables() -> list of {name=, partition=, keys=} for every table
 * partition this worker has open (an LMDB stat: no scan). Keys staged in
 * the record cache and not yet checkpointed are not counted. */
static int l_web_tables(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    lua_newtable(L);
    lua_Integer n = 0;
    for (int i = 0; i < rt->ntables; i++) {
        fs_table *t = rt->tables[i];
        for (int p = 0; p < t->partitions; p++) {
            if (!t->parts || !t->parts[p].store) continue;
            lua_createtable(L, 0, 3);
            lua_pushstring(L, t->name);
            lua_setfield(L, -2, "name");
            lua_pushinteger(L, p);
            lua_setfield(L, -2, "partition");
            lua_pushinteger(L, (lua_Integer)fs_store_count(t->parts[p].store));
            lua_setfield(L, -2, "keys");
            lua_rawseti(L, -2, ++n);
        }
    }
    return 1;
}

struct page_scan {
    lua_State *L;
    const char *after, *prefix;
    size_t afterlen, prefixlen;
    int has_after, limit, n;
};

static int page_cb(void *ud, const void *k, size_t kl, const void *v, size_t vl)
{
    struct page_scan *ps = ud;
    if (kl && *(const char *)k == 0) return 0; /* the runtime's own entries (window stream time) */
    if (ps->has_after) {
        size_t m = kl < ps->afterlen ? kl : ps->afterlen;
        int c = memcmp(k, ps->after, m);
        if (c < 0 || (c == 0 && kl <= ps->afterlen)) return 0;
    }
    if (ps->prefixlen) {
        int c = memcmp(k, ps->prefix, kl < ps->prefixlen ? kl : ps->prefixlen);
        if (c < 0 || (c == 0 && kl < ps->prefixlen)) return 0;
        if (c > 0) return 1; /* past every key with the prefix: keys are in order */
    }
    if (ps->n == ps->limit) return 2; /* one more exists: the caller gives a cursor */
    ps->n++;
    lua_pushlstring(ps->L, k, kl);
    lua_rawseti(ps->L, -3, ps->n);
    lua_pushlstring(ps->L, v, vl);
    lua_rawseti(ps->L, -2, ps->n);
    return 0;
}

/* rt:web_table_page(table_id, p, after, prefix, limit) -> keys, values, more:
 * the stored entries of one table partition in key order (LMDB: what the
 * last checkpoint wrote), keys after `after` (bytes, or nil) starting with
 * `prefix` (bytes, or ""), at most `limit`; more is true when others follow. */
static int l_web_table_page(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    lua_Integer id = luaL_checkinteger(L, 2), p = luaL_checkinteger(L, 3);
    struct page_scan ps = {.L = L};
    ps.after = luaL_optlstring(L, 4, NULL, &ps.afterlen);
    ps.has_after = ps.after != NULL;
    ps.prefix = luaL_optlstring(L, 5, "", &ps.prefixlen);
    ps.limit = (int)luaL_checkinteger(L, 6);
    if (id < 1 || id > rt->ntables) return luaL_error(L, "unknown table id %d", (int)id);
    fs_table *t = rt->tables[id - 1];
    fs_store *st = p >= 0 && p < t->partitions && t->parts ? t->parts[p].store : NULL;
    lua_newtable(L);
    lua_newtable(L);
    char err[256];
    int rc = st ? fs_store_scan(st, page_cb, &ps, err, sizeof err) : 0;
    if (rc < 0) return luaL_error(L, "%s: %s", t->name, err);
    lua_pushboolean(L, rc == 2);
    return 3;
}

const luaL_Reg fs_lua_web_methods[] = {
    {"web_table_page", l_web_table_page},
    {"web_agents", l_web_agents},
    {"web_latency_bounds", l_web_latency_bounds},
    {"web_tables", l_web_tables},
    {"web_partitions", l_web_partitions},
    {"web_consuming", l_web_consuming},
    {"web_start", l_web_start},
    {"web_address", l_web_address},
    {"web_next", l_web_next},
    {"web_hold", l_web_hold},
    {"web_respond", l_web_respond},
    {"web_cache", l_web_cache},
    {"web_stats", l_web_stats},
    {"web_stop", l_web_stop},
    {NULL, NULL},
};
