/* fs_mem: the Lua state's allocator, which counts what the state holds and
 * enforces the app's max_memory (core layer).
 *
 * The limit applies only while the scheduler runs a coroutine (an agent, a
 * task, a timer: fs_sched.c raises fs_mem_guard around lua_resume). There an
 * allocation that would pass it fails, Lua answers with a full emergency
 * collection and, if that is not enough, raises "not enough memory" inside
 * the coroutine, which is a protected call: the coroutine dies and its on_exit
 * applies the agent's on_error policy. Outside coroutines the runtime's own C
 * code calls the Lua API where an error could not be caught (the loop runs
 * outside any protected call: pushing an event's values, the traceback of a
 * failed coroutine, on_exit itself), so there the state may go past the limit:
 * the host's allocations are bounded by back-pressure (max_queued,
 * max_queued_bytes), not by this. The limit is therefore a bound on what agent
 * code can make the state allocate, not on the process's RSS.
 *
 * Counting costs one add per allocation (and one compare when a block grows).
 *
 * Blocks up to 512 bytes come from a pool of the state's own (fs_mem.c: size
 * classes in 16 KiB slabs, no locks since a state belongs to one thread),
 * which gives a slab's pages back once its last block is freed and the
 * state's empty slabs pass an eighth of those in use. */
#ifndef FS_MEM_H
#define FS_MEM_H

#include <lua.h>
#include <stddef.h>

/* Non-zero while a coroutine runs: allocations past the limit fail. */
extern int fs_mem_guard;

/* A new Lua state with the counting allocator (no limit yet), the same panic
 * handler as luaL_newstate's; NULL when out of memory. */
lua_State *fs_mem_newstate(void);

/* Closes a state; frees its counter if fs_mem_newstate made it. */
void fs_mem_close(lua_State *L);

/* Sets the limit in bytes (0: none) on L's state, first wrapping its
 * allocator if it was made elsewhere (a state the Lua interpreter created:
 * fstream.testing in busted). -1 when out of memory. */
int fs_mem_set_limit(lua_State *L, size_t limit);

/* What L's state holds now and its limit (0: none), and how many allocations
 * were refused; 0 when the state's allocator is not counting. */
int fs_mem_get(lua_State *L, size_t *used, size_t *limit, unsigned long *refused);

/* The bytes L's small-block pool holds (its slabs in use and the empty ones
 * it keeps; a returned slab costs nothing) into *held; 0 when the state has
 * no pool (not counting, the pool's address range could not be reserved, or
 * an AddressSanitizer build, which leaves the pool out). */
int fs_mem_pool_get(lua_State *L, size_t *held);

#endif
