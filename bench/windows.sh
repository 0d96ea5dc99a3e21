#!/usr/bin/env bash
# Windowed-table benchmarks (BENCHMARKS.md, "Windows"). Three parts, each
# optional, see usage():
#   inproc  bench/windows.lua through fstream.testing: no broker, no LMDB, so
#           the numbers are the window code's own
#   perf    perf record of one in-process scenario, on a Lua interpreter
#           linked from Debian's liblua5.4.a (the packaged lua5.4 is stripped,
#           so perf could not name Lua's own functions), plus the Lua-level
#           profile bench/windows.lua takes with a count hook
#   e2e     the same app as a worker on a real Kafka broker (scripts/kafka),
#           input loaded with kcat, timed by bench-watch on the topic the app
#           writes one message per closed window to
# Kept apart from scripts/bench, which other table scenarios extend.
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd -P)

usage() {
	cat <<'EOF'
usage: bench/windows.sh [inproc] [perf] [e2e] [micro] [options]
                        (no part named: inproc)

  inproc                 every default scenario of bench/windows.lua, median of --runs
  micro                  bench/windows.lua --micro (per-window pieces alone)
  perf                   profile --perf-scenario (default hop60) in process
  e2e                    --e2e-scenario on a real broker, --runs times

  --build DIR            meson build dir (default build-rel; set up as a
                         release build if missing, then compiled)
  --runs N               runs per measurement (default 3)
  --scenario LIST        inproc scenarios (default: windows.lua's "all")
  --perf-scenario NAME   default hop60
  --e2e-scenario LIST    default "hop60 hop60c"
  --e2e-seconds N        stream seconds of input (default 100)
  --e2e-rate N           events per key per second on the broker (default 2)
  --port N               broker port (default 19692; N+1 is its controller)
  --keep-broker          leave the broker running afterwards
  -- ARGS                passed on to bench/windows.lua (inproc)

Results go to bench/results/windows/ (git-ignored) and stdout.
EOF
}

die() {
	echo "bench/windows.sh: $*" >&2
	exit 1
}

say() {
	echo "bench/windows.sh: $*" >&2
}

BUILD=build-rel
RUNS=3
SCENARIOS=""
PERF_SCENARIO=hop60
E2E_SCENARIOS="hop60 hop60c"
E2E_SECONDS=100
E2E_RATE=2
PORT=19692
KEEP_BROKER=0
PARTS=()
EXTRA=()

while (($#)); do
	case $1 in
	inproc | perf | e2e | micro) PARTS+=("$1"); shift ;;
	--build) BUILD=${2:?--build needs a dir}; shift 2 ;;
	--runs) RUNS=${2:?--runs needs a number}; shift 2 ;;
	--scenario) SCENARIOS=${2:?--scenario needs a list}; shift 2 ;;
	--perf-scenario) PERF_SCENARIO=${2:?}; shift 2 ;;
	--e2e-scenario) E2E_SCENARIOS=${2:?}; shift 2 ;;
	--e2e-seconds) E2E_SECONDS=${2:?}; shift 2 ;;
	--e2e-rate) E2E_RATE=${2:?}; shift 2 ;;
	--port) PORT=${2:?}; shift 2 ;;
	--keep-broker) KEEP_BROKER=1; shift ;;
	--) shift; EXTRA=("$@"); break ;;
	-h | --help) usage; exit 0 ;;
	*) die "unknown argument '$1' (see --help)" ;;
	esac
done
((${#PARTS[@]})) || PARTS=(inproc)

cd "$ROOT"
BUILD=$(realpath -m -- "$BUILD")
OUTDIR=$ROOT/bench/results/windows
mkdir -p "$OUTDIR"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)

if [[ ! -f $BUILD/build.ninja ]]; then
	say "setting up a release build in $BUILD"
	meson setup "$BUILD" --buildtype=release >/dev/null
fi
meson compile -C "$BUILD" >/dev/null || die "meson compile -C $BUILD failed"
export FSTREAM_BUILD=$BUILD

# What was measured: the runtime's commit and whether the Lua side (loaded
# from lua/ in process, bundled into the binary for e2e) had local edits.
describe_tree() {
	local dirty=""
	git diff --quiet HEAD -- lua runtime 2>/dev/null || dirty=" (lua/ or runtime/ modified in the work tree)"
	echo "commit $(git rev-parse --short HEAD)$dirty; window.lua at $(git log -1 --format=%h -- lua/fstream/window.lua); $BUILD/fstream-lua (Lua bundled) built $(date -u -r "$BUILD/fstream-lua" +%FT%TZ)"
	echo "$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
}

run_inproc() {
	local out=$OUTDIR/inproc-$STAMP.txt
	local args=(--runs "$RUNS")
	[[ -n $SCENARIOS ]] && args+=(--scenario "$SCENARIOS")
	say "in process: lua5.4 bench/windows.lua ${args[*]} ${EXTRA[*]:-} -> $out"
	{
		describe_tree
		lua5.4 bench/windows.lua "${args[@]}" "${EXTRA[@]}"
	} | tee "$out"
}

run_micro() {
	lua5.4 bench/windows.lua --micro | tee "$OUTDIR/micro-$STAMP.txt"
}

# A Lua 5.4 interpreter with symbols: Debian's static liblua5.4.a behind a
# minimal main() (the fstream_core.so module needs the Lua API exported: -E).
build_luahost() {
	local dir=$OUTDIR/luahost
	mkdir -p "$dir"
	cat >"$dir/luahost.c" <<'EOF'
/* lua5.4 FILE ARGS... with the interpreter's symbols visible to perf. */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    if (argc < 2) return 2;
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    lua_createtable(L, argc, 0);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i - 1);
    }
    lua_setglobal(L, "arg");
    if (luaL_loadfile(L, argv[1])) {
        fprintf(stderr, "%s\n", lua_tostring(L, -1));
        return 1;
    }
    for (int i = 2; i < argc; i++) lua_pushstring(L, argv[i]);
    if (lua_pcall(L, argc - 2, 0, 0)) {
        fprintf(stderr, "%s\n", lua_tostring(L, -1));
        return 1;
    }
    lua_close(L);
    return 0;
}
EOF
	local liblua
	liblua=$(find /usr/lib -name liblua5.4.a 2>/dev/null | head -n 1)
	[[ -n $liblua ]] || die "liblua5.4.a not found (apt-get install liblua5.4-dev)"
	cc -O2 -I/usr/include/lua5.4 -o "$dir/lua" "$dir/luahost.c" -Wl,-E \
		-Wl,--whole-archive "$liblua" -Wl,--no-whole-archive -lm -ldl ||
		die "could not build the profiling interpreter"
	LUAHOST=$dir/lua
}

run_perf() {
	command -v perf >/dev/null || die "perf is not installed"
	build_luahost
	local data=$OUTDIR/perf-$PERF_SCENARIO-$STAMP.data rep=$OUTDIR/perf-$PERF_SCENARIO-$STAMP.txt
	# 10 CPU seconds timed, so the untimed warm-up and event generation stay
	# a small part of what perf sees.
	say "perf record: $PERF_SCENARIO -> $rep"
	perf record -q -F 999 --call-graph dwarf,16384 -o "$data" -- \
		"$LUAHOST" bench/windows.lua --runs 1 --cpu 10 --scenario "$PERF_SCENARIO" >/dev/null 2>&1 ||
		die "perf record failed"
	{
		describe_tree
		echo "== perf, self time by function =="
		perf report -i "$data" --no-children --sort symbol --stdio --percent-limit 1 -g none 2>/dev/null |
			grep -v '^#' | grep -v '^$'
		echo "== perf, time including callees =="
		perf report -i "$data" --children --sort symbol --stdio --percent-limit 4 -g none 2>/dev/null |
			grep -v '^#' | grep -v '^$'
		echo "== Lua count-hook profile (Lua VM instructions, not time) =="
		lua5.4 bench/windows.lua --runs 1 --cpu 3 --scenario "$PERF_SCENARIO" --lua-profile 2>&1 >/dev/null
	} | tee "$rep"
	rm -f "$data"
}

# ---------------------------------------------------------------- e2e
ADDR=""
BROKER_STARTED=0
CHILDREN=()
KAFKA_DIR=$ROOT/.kafka/winbench
WORK=""

cleanup() {
	local rc=$? pid
	trap - EXIT INT TERM
	for pid in "${CHILDREN[@]}"; do
		kill -0 "$pid" 2>/dev/null || continue
		kill -TERM "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	if ((BROKER_STARTED && !KEEP_BROKER)); then
		say "stopping the broker in $KAFKA_DIR"
		scripts/kafka stop --dir "$KAFKA_DIR" >/dev/null 2>&1 || say "could not stop it: scripts/kafka stop --dir $KAFKA_DIR"
	fi
	[[ -n $WORK ]] && rm -rf -- "$WORK"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

json_field() { # json_field NAME < line
	sed -n "s/.*\"$1\":\\([^,}]*\\).*/\\1/p"
}

wait_leaders() { # every partition of topic $1 has a leader
	local t
	for ((t = 0; t < 100; t++)); do
		if kcat -L -b "$ADDR" -t "$1" 2>/dev/null | grep -q 'partition 0, leader [0-9]' &&
			! kcat -L -b "$ADDR" -t "$1" 2>/dev/null | grep -Eq 'leader -1|Err'; then
			return 0
		fi
		sleep 0.1
	done
	die "topic $1 has partitions without a leader after 10 s"
}

run_e2e() {
	command -v kcat >/dev/null || die "kcat is not installed"
	local loadgen=$BUILD/bench/bench-loadgen watch=$BUILD/bench/bench-watch
	[[ -x $loadgen && -x $watch ]] || die "bench tools missing in $BUILD/bench"
	WORK=$(mktemp -d "${TMPDIR:-/tmp}/winbench.XXXXXX")
	if scripts/kafka status --dir "$KAFKA_DIR" >/dev/null 2>&1; then
		say "reusing the broker running in $KAFKA_DIR"
	else
		BROKER_STARTED=1
	fi
	ADDR=$(scripts/kafka start --port "$PORT" --dir "$KAFKA_DIR" | tail -n 1) || die "scripts/kafka start failed"
	say "broker $ADDR"

	# One input topic for every run (each run is a fresh consumer group).
	local input=winbench-in-$STAMP events
	events=$((E2E_SECONDS * E2E_RATE * 1000))
	"$loadgen" -b "$ADDR" -t "$input" -n 0 -p 8 >/dev/null 2>"$WORK/loadgen.err" ||
		die "could not create $input: $(tail -n 3 "$WORK/loadgen.err")"
	say "loading $events events ($E2E_SECONDS s x 1,000 keys x $E2E_RATE/s) into $input"
	lua5.4 bench/windows.lua --emit "$E2E_SECONDS" --rate "$E2E_RATE" |
		kcat -P -b "$ADDR" -t "$input" -K $'\t' -z lz4 \
			-X topic.partitioner=murmur2_random -X linger.ms=20 -X batch.num.messages=10000 ||
		die "kcat could not load $input"
	local out=$OUTDIR/e2e-$STAMP.txt
	describe_tree | tee "$out"
	echo "input: $events events, $E2E_SECONDS stream s, 1,000 keys, $E2E_RATE events/key/s, 8 partitions" | tee -a "$out"
	local sc run
	for sc in $E2E_SCENARIOS; do
		local expect step
		expect=$(lua5.4 bench/windows.lua --expect-closes "$sc" "$E2E_SECONDS" --rate "$E2E_RATE")
		case $sc in tumbling*) step=${sc#tumbling} ;; *) step=1 ;; esac
		for ((run = 1; run <= RUNS; run++)); do
			local id=winbench-$sc-$STAMP-$run outt=winbench-out-$sc-$STAMP-$run
			"$loadgen" -b "$ADDR" -t "$outt" -n 0 -p 8 >/dev/null 2>"$WORK/loadgen.err" ||
				die "could not create $outt: $(tail -n 3 "$WORK/loadgen.err")"
			local ready=$WORK/$outt.ready wjson=$WORK/$outt.json
			"$watch" -b "$ADDR" -t "$outt" -n "$expect" --timeout 600 --ready-file "$ready" >"$wjson" 2>"$WORK/$outt.watch.err" &
			local wpid=$!
			CHILDREN+=("$wpid")
			local t=0
			while [[ ! -f $ready ]] && ((t++ < 600)); do sleep 0.1; done
			[[ -f $ready ]] || die "bench-watch on $outt never got ready"
			# A worker that creates its changelog itself can ask for the
			# topic's end before the new partitions have a leader and stop
			# ("Not leader for partition"), so the changelog is made first,
			# compacted as the worker would make it, and waited for.
			scripts/kafka create-topic "$id-w-changelog" 8 --config cleanup.policy=compact \
				--port "$PORT" >/dev/null 2>&1 || die "could not create $id-w-changelog"
			wait_leaders "$id-w-changelog"
			WINBENCH_SCENARIO=$sc WINBENCH_APP=$id WINBENCH_IN=$input WINBENCH_OUT=$outt \
				"$BUILD/fstream-lua" worker bench/windows_app.lua --broker "kafka://$ADDR" \
				--store "lmdb://$WORK/$id-data" >"$WORK/$id.log" 2>&1 &
			local wk=$!
			CHILDREN+=("$wk")
			local rc=0
			while kill -0 "$wpid" 2>/dev/null; do
				if ! kill -0 "$wk" 2>/dev/null; then
					tail -n 5 "$WORK/$id.log" >&2
					die "$sc run $run: the worker stopped before the last window closed"
				fi
				sleep 0.2
			done
			wait "$wpid" || rc=$?
			kill -TERM "$wk" 2>/dev/null || true
			wait "$wk" 2>/dev/null || true
			local line rate
			line=$(tail -n 1 "$wjson")
			((rc == 0)) || {
				tail -n 20 "$WORK/$id.log" >&2
				die "$sc run $run: bench-watch exit $rc: $line"
			}
			rate=$(json_field msgs_per_sec <<<"$line")
			# A stream second holds 1,000 x rate events and closes 1,000 / step
			# windows, so events/s = closes/s x rate x step.
			printf '%-8s run %d: %s closes in %s s -> %.0f closes/s, %.0f events/s; %s\n' "$sc" "$run" \
				"$expect" "$(json_field seconds <<<"$line")" "$rate" \
				"$(awk -v r="$rate" -v e="$E2E_RATE" -v s="$step" 'BEGIN{print r*e*s}')" \
				"$(grep -o 'tables: .*' "$WORK/$id.log" | tail -n 1)" | tee -a "$out"
		done
	done
}

for part in "${PARTS[@]}"; do
	case $part in
	inproc) run_inproc ;;
	micro) run_micro ;;
	perf) run_perf ;;
	e2e) run_e2e ;;
	esac
done
