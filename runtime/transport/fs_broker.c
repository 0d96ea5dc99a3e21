/* fs_broker: `fstream-lua broker` — librdkafka's mock cluster as a standalone
 * process that outlives workers (crash/restart tests, several local workers).
 * Keeps everything in memory; stops on SIGTERM/SIGINT. */
#include <lauxlib.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "fs_log.h"

/* core.run_broker{brokers=N, address_file=F, topics={{name, partitions}...}} */
int fs_broker_run(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "brokers");
    int nbrokers = (int)luaL_optinteger(L, -1, 1);
    lua_getfield(L, 1, "address_file");
    const char *addr_file = luaL_optstring(L, -1, NULL);
    lua_getfield(L, 1, "partitions");
    int partitions = (int)luaL_optinteger(L, -1, 8);
    lua_pop(L, 3);
    if (nbrokers < 1 || nbrokers > 16) return luaL_error(L, "--brokers must be 1..16");

    char err[512];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    rd_kafka_t *host = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof err);
    if (!host) {
        rd_kafka_conf_destroy(c);
        return luaL_error(L, "%s", err);
    }
    rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(host, nbrokers);
    if (!mc) {
        rd_kafka_destroy(host);
        return luaL_error(L, "could not start the embedded broker");
    }
    /* Topics named on the command line get a known partition count; others are
     * auto-created by the mock cluster when first used. */
    lua_getfield(L, 1, "topics");
    if (lua_istable(L, -1)) {
        lua_Integer n = luaL_len(L, -1);
        for (lua_Integer i = 1; i <= n; i++) {
            lua_geti(L, -1, i);
            rd_kafka_resp_err_t e = rd_kafka_mock_topic_create(mc, luaL_checkstring(L, -1), partitions, 1);
            if (e) {
                const char *name = lua_tostring(L, -1);
                rd_kafka_mock_cluster_destroy(mc);
                rd_kafka_destroy(host);
                return luaL_error(L, "cannot create topic %s: %s", name, rd_kafka_err2str(e));
            }
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    const char *bootstrap = rd_kafka_mock_cluster_bootstraps(mc);
    printf("fstream-lua broker listening on %s (in memory: nothing is kept after exit)\n", bootstrap);
    fflush(stdout);
    if (addr_file) {
        char tmp[4096];
        if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", addr_file) >= sizeof tmp) {
            rd_kafka_mock_cluster_destroy(mc);
            rd_kafka_destroy(host);
            return luaL_error(L, "--address-file path too long (%zu bytes at most)", sizeof tmp - 5);
        }
        FILE *f = fopen(tmp, "w");
        if (!f || fprintf(f, "%s\n", bootstrap) < 0 || fclose(f) || rename(tmp, addr_file)) {
            rd_kafka_mock_cluster_destroy(mc);
            rd_kafka_destroy(host);
            return luaL_error(L, "cannot write %s", addr_file);
        }
    }
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigprocmask(SIG_BLOCK, &set, NULL);
    int sig = 0;
    sigwait(&set, &sig);
    fs_info("broker stopping (%s)", strsignal(sig));
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(host);
    return 0;
}
