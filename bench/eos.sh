#!/usr/bin/env bash
# bench/eos.sh --broker kafka://HOST:PORT [-n COUNT] [--rounds R] [--keys K] [--tail T]
#              [--only throughput|recovery]
#
# Exactly-once against at-least-once, on a running broker (scripts/kafka start):
#
# throughput  COUNT JSON orders (~100 bytes) and COUNT words, 4 partitions each,
#             loaded once; bench-ceiling drains the orders once; then R rounds,
#             each draining both inputs with bench/eos_app.lua under
#             at_least_once and exactly_once (alternating which goes first),
#             commit_interval 0.1 s, a fresh group and output topic per drain.
#             Per drain: seconds from the first to the COUNTth visible output
#             (bench-watch; its ListOffsets are read_committed, so under
#             exactly-once an output counts once its transaction committed),
#             the worker's CPU (utime + stime) and peak RSS (VmHWM). Under
#             exactly-once the worker runs at log level debug and the
#             transaction commit latencies are read from its log.
# recovery    a word-count table of K keys, built by a worker from a changelog
#             bench-loadgen wrote, checkpointed into LMDB; the worker is
#             killed with SIGKILL; T more records are appended to the changelog
#             (records LMDB does not have, as a crash between a commit and
#             LMDB's write leaves, only larger); a restarted worker on the same
#             store replays them. Reports the time to recovered, and how many
#             records the log says were replayed.
#
# Prints one line per measurement and a summary; the raw logs stay in
# $BENCH_KEEP (a directory) when set. $BENCH_BUILD_DIR: the meson build to run
# (default build-rel, configured --buildtype=release if missing).
# $BENCH_GUARANTEES: the guarantees throughput compares (default
# "at_least_once exactly_once"); $BENCH_RECOVERY_GUARANTEE: recovery's
# (default exactly_once). $BENCH_COMMIT_RE: the extended regex (one group: milliseconds) that finds
# a transaction commit's duration in a debug log line.
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
BUILD=$(realpath -m -- "${BENCH_BUILD_DIR:-$ROOT/build-rel}")
N=1000000 ROUNDS=2 KEYS=1000000 TAIL=100000 ONLY="" ADDR=""
PARTS=4
COMMIT_RE=${BENCH_COMMIT_RE:-'transaction committed in ([0-9.]+) ms \([0-9]+ offsets'}

die() { echo "bench/eos.sh: $*" >&2; exit 1; }
say() { echo "bench/eos.sh: $*" >&2; }

while (($#)); do
	case $1 in
	--broker) [[ ${2:-} =~ ^kafka://([^/]+:[0-9]+)/?$ ]] || die "--broker kafka://HOST:PORT"; ADDR=${BASH_REMATCH[1]}; shift 2 ;;
	-n) N=$2; shift 2 ;;
	--rounds) ROUNDS=$2; shift 2 ;;
	--keys) KEYS=$2; shift 2 ;;
	--tail) TAIL=$2; shift 2 ;;
	--only) ONLY=$2; shift 2 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown argument $1" ;;
	esac
done
[[ -n $ADDR ]] || die "--broker kafka://HOST:PORT is required (scripts/kafka start --port P --dir D)"

if [[ ! -f $BUILD/build.ninja ]]; then
	meson setup "$BUILD" --buildtype=release >&2
fi
meson compile -C "$BUILD" >&2 || die "the build failed"
FSTREAM=$BUILD/fstream-lua LOADGEN=$BUILD/bench/bench-loadgen CEILING=$BUILD/bench/bench-ceiling
WATCH=$BUILD/bench/bench-watch
APP=$ROOT/bench/eos_app.lua
STAMP=$(date -u +%Y%m%dT%H%M%SZ)-$$
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fstream-eos-bench.XXXXXX")
CHILDREN=()
cleanup() {
	local pid
	for pid in "${CHILDREN[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
	if [[ -n ${BENCH_KEEP:-} ]]; then
		mkdir -p "$BENCH_KEEP" && cp -r "$WORK"/. "$BENCH_KEEP"/ && say "logs kept in $BENCH_KEEP"
	fi
	rm -rf "$WORK"
}
trap cleanup EXIT
CLK=$(getconf CLK_TCK)

say "$(date -u '+%Y-%m-%d %H:%M:%S') UTC, commit $(git -C "$ROOT" rev-parse --short HEAD), build $BUILD, broker $ADDR"
say "$("$FSTREAM" --version 2>&1 | head -n 1)"

load() { # TOPIC COUNT LOADGEN-ARGS...
	local t=$1 n=$2
	shift 2
	"$LOADGEN" -b "$ADDR" -t "$t" -n "$n" -p "$PARTS" "$@" 2>"$WORK/loadgen.err" >"$WORK/loadgen.out" ||
		{ tail "$WORK/loadgen.err" >&2; die "bench-loadgen failed on $t"; }
}

# Starts bench-watch on TOPIC for N outputs; returns once it has its baseline.
WPID=""
watch_start() {
	local t=$1 n=$2
	rm -f "$WORK/ready"
	"$WATCH" -b "$ADDR" -t "$t" -n "$n" --timeout 600 --ready-file "$WORK/ready" >"$WORK/watch.json" 2>"$WORK/watch.err" &
	WPID=$!
	CHILDREN+=("$WPID")
	while [[ ! -f $WORK/ready ]]; do
		kill -0 "$WPID" 2>/dev/null || { cat "$WORK/watch.err" >&2; die "bench-watch failed"; }
		sleep 0.05
	done
}

json_get() { sed -n "s/.*\"$2\":\\([0-9.]*\\).*/\\1/p" <<<"$1"; }

# --- throughput -------------------------------------------------------------

RESULTS=()
LATENCIES="$WORK/latencies.txt"
: >"$LATENCIES"

# drain KIND GUARANTEE IN ROUND: one worker drains IN; prints and records a line.
drain() {
	local kind=$1 g=$2 in=$3 round=$4 out app log level=info pid hwm ticks secs store=""
	out=eos-bench-out-$kind-$g-$round-$STAMP
	app=eos-bench-$kind-$g-$round-$STAMP
	log=$WORK/$app.log
	load "$out" 0
	[[ $g == exactly_once ]] && level=debug
	local args=()
	if [[ $kind == wordcount ]]; then
		store=$WORK/$app-store
		args=(--store "lmdb://$store")
	fi
	watch_start "$out" "$N"
	BENCH_KIND=$kind BENCH_APP=$app BENCH_IN=$in BENCH_OUT=$out BENCH_GUARANTEE=$g BENCH_COMMIT_INTERVAL=0.1 \
		"$FSTREAM" worker "$APP" --broker "kafka://$ADDR" "${args[@]}" -l "$level" >"$log" 2>&1 &
	pid=$!
	CHILDREN+=("$pid")
	if ! wait "$WPID"; then
		tail -n 20 "$log" >&2
		die "$kind/$g: the outputs did not all appear (bench-watch: $(cat "$WORK/watch.json"))"
	fi
	hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
	ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat")
	kill -TERM "$pid"
	local rc=0
	wait "$pid" || rc=$?
	((rc == 0)) || { tail -n 20 "$log" >&2; say "$kind/$g: worker exited $rc after SIGTERM"; }
	secs=$(json_get "$(cat "$WORK/watch.json")" seconds)
	local cpu
	cpu=$(awk -v t="$ticks" -v h="$CLK" 'BEGIN { printf "%.2f", t / h }')
	if [[ $g == exactly_once ]]; then
		grep -oE "$COMMIT_RE" "$log" | sed -E "s/$COMMIT_RE/\\1/" >"$WORK/$app.lat" || true
		cat "$WORK/$app.lat" >>"$LATENCIES"
	fi
	local line
	line=$(printf '%-9s %-13s round %d: %6.2f s  %7.0f msg/s  cpu %5.2f s (%.2f us/msg)  peak rss %d MiB' \
		"$kind" "$g" "$round" "$secs" "$(awk -v n="$N" -v s="$secs" 'BEGIN { print n / s }')" "$cpu" \
		"$(awk -v c="$cpu" -v n="$N" 'BEGIN { print c * 1e6 / n }')" $((hwm / 1024)))
	[[ $g == exactly_once ]] && line+=$(printf '  %d commits' "$(wc -l <"$WORK/$app.lat")")
	echo "$line"
	RESULTS+=("$kind $g $secs $cpu $hwm")
	[[ -z $store ]] || rm -rf "$store"
}

throughput() {
	local sin=eos-bench-orders-$STAMP win=eos-bench-words-$STAMP r
	say "loading $N orders into $sin and $N words into $win ($PARTS partitions)"
	load "$sin" "$N" --kind json -s 100
	load "$win" "$N" --kind words --partition-by key
	local cout=eos-bench-ceiling-$STAMP
	load "$cout" 0
	watch_start "$cout" "$N"
	"$CEILING" -b "$ADDR" -i "$sin" -o "$cout" -n "$N" -g "eos-bench-ceiling-$STAMP" --timeout 600 \
		>"$WORK/ceiling.out" 2>"$WORK/ceiling.err" || { tail "$WORK/ceiling.err" >&2; die "bench-ceiling failed"; }
	wait "$WPID" || die "bench-watch on the ceiling's output failed"
	local cs
	cs=$(json_get "$(cat "$WORK/watch.json")" seconds)
	printf 'ceiling   (orders, at-least-once, commit every 2.8 s): %6.2f s  %7.0f msg/s\n' "$cs" \
		"$(awk -v n="$N" -v s="$cs" 'BEGIN { print n / s }')"
	for ((r = 1; r <= ROUNDS; r++)); do
		local order=(${BENCH_GUARANTEES:-at_least_once exactly_once})
		((r % 2 == 0)) && order=($(printf '%s\n' "${order[@]}" | tac))
		for g in "${order[@]}"; do drain stateless "$g" "$sin" "$r"; done
		for g in "${order[@]}"; do drain wordcount "$g" "$win" "$r"; done
	done
	echo "--- medians over $ROUNDS rounds (seconds, cpu seconds, peak rss KiB)"
	local kind g
	for kind in stateless wordcount; do
		for g in at_least_once exactly_once; do
			printf '%s\n' "${RESULTS[@]}" | awk -v k="$kind" -v g="$g" '$1 == k && $2 == g { s[++n] = $3; c[n] = $4; m[n] = $5 }
				function med(a, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
					return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
				END { if (n) printf "%-9s %-13s %6.2f s  cpu %5.2f s  rss %d MiB\n", k, g, med(s, n), med(c, n), med(m, n) / 1024 }'
		done
	done
	if [[ -s $LATENCIES ]]; then
		sort -g "$LATENCIES" | awk '{ a[NR] = $1 } END {
			p50 = a[int((NR + 1) / 2)]; i99 = int(NR * 0.99 + 0.999); if (i99 < 1) i99 = 1; if (i99 > NR) i99 = NR
			printf "transaction commit latency: %d commits, median %.1f ms, p99 %.1f ms, max %.1f ms\n", NR, p50, a[i99], a[NR] }'
	else
		echo "transaction commit latency: no line matched /$COMMIT_RE/ in the exactly-once logs"
	fi
}

# --- recovery -----------------------------------------------------------------

recovery() {
	local app=eos-bench-recovery-$STAMP store log t0 pid n
	store=$WORK/$app-store
	local changelog=$app-word_counts-changelog
	say "recovery: $KEYS keys into $changelog (compacted, $PARTS partitions)"
	load "$changelog" "$KEYS" --kind changelog --partition-by key --compact
	load "$app-in" 0
	load "$app-out" 0
	local env=(BENCH_KIND=wordcount BENCH_APP=$app BENCH_IN=$app-in BENCH_OUT=$app-out BENCH_GUARANTEE=${BENCH_RECOVERY_GUARANTEE:-exactly_once})
	# 1. A first worker builds the table (the whole changelog) and checkpoints it.
	log=$WORK/$app-build.log
	t0=$(date +%s.%N)
	env "${env[@]}" "$FSTREAM" worker "$APP" --broker "kafka://$ADDR" --store "lmdb://$store" -l info >"$log" 2>&1 &
	pid=$!
	CHILDREN+=("$pid")
	for ((n = 0; n < 6000; n++)); do
		kill -0 "$pid" 2>/dev/null || { tail "$log" >&2; die "recovery: the first worker exited"; }
		(($(grep -c 'recovered table word_counts\[' "$log" || true) >= PARTS)) && break
		sleep 0.1
	done
	echo "full rebuild of $KEYS keys (empty store): $(python3 "$ROOT/bench/tablestats.py" recovery "$log" "$t0" "$PARTS")"
	sleep 1
	kill -KILL "$pid"
	wait "$pid" 2>/dev/null || true
	# 2. The uncheckpointed tail: records past the offsets LMDB recorded.
	say "recovery: appending $TAIL records to $changelog"
	load "$changelog" "$TAIL" --kind changelog --partition-by key --compact
	# 3. The restart after kill -9.
	log=$WORK/$app-restart.log
	t0=$(date +%s.%N)
	env "${env[@]}" "$FSTREAM" worker "$APP" --broker "kafka://$ADDR" --store "lmdb://$store" -l info >"$log" 2>&1 &
	pid=$!
	CHILDREN+=("$pid")
	for ((n = 0; n < 3000; n++)); do
		kill -0 "$pid" 2>/dev/null || { tail "$log" >&2; die "recovery: the restarted worker exited"; }
		(($(grep -c 'recovered table word_counts\[' "$log" || true) >= PARTS)) && break
		sleep 0.05
	done
	local stats
	stats=$(python3 "$ROOT/bench/tablestats.py" recovery "$log" "$t0" "$PARTS")
	echo "restart after kill -9 with a $TAIL-record tail: $stats"
	grep -E 'recovering table|recovered table' "$log" | sed 's/^/    /'
	kill -TERM "$pid"
	wait "$pid" || say "recovery: the restarted worker exited $? after SIGTERM"
	local keys
	keys=$(env "${env[@]}" "$FSTREAM" table "$APP" word_counts --store "lmdb://$store" 2>/dev/null | wc -l)
	echo "table after the restart: $keys keys (expected $KEYS)"
}

case $ONLY in
"") throughput; recovery ;;
throughput) throughput ;;
recovery) recovery ;;
*) die "--only throughput|recovery" ;;
esac
