#!/usr/bin/env bash
# The hot-reload pause (BENCHMARKS.md, "Hot reload"): how long a worker
# processes no event while `--reload` swaps in a new version of its app,
# under a steady load.
#
# One worker runs bench/reload_app.lua (a copy in a scratch dir) with
# --reload, on a standalone embedded broker (`fstream-lua broker`, the
# default) or on a real Kafka broker (--broker kafka: scripts/kafka); kcat
# produces numbered events (key "k<n mod 100>", value "<n> xxx...", 100
# bytes a line) at a fixed rate, 3,000/s by default; the app sends
# "<VERSION> <n> <ms>" per event, ms being the wall clock when it processed
# the event. The script rewrites the copy --reloads times (VERSION 2, 3, ...),
# --interval seconds apart, each time waiting for the worker's
# "reloaded ... in N ms" line. Then the load stops, every input gets its
# output, and from the outputs alone:
#
#   pause(k) = first ms of version k+1 - last ms of version k
#
# the time from the last event the old version processed to the first one
# the new version did, i.e. with no event processed (drain, checkpoint, swap,
# seek, fetch again). Printed: median and worst over the reloads, the
# worker's own "reloaded in N ms" (start of the drain to the end of the
# swap: no refetch), the largest gap between two outputs of one version (no
# reload in between: what the load and the fetching alone give, the floor of
# the measure), and
# "no gap": PASS when every number in the input topic has an output.
#
# The embedded broker is librdkafka's mock cluster, which answers a Fetch
# that finds no data only after the consumer's full fetch.wait.max.ms (500 ms
# in the worker), even when data arrives meanwhile: the worker then takes its
# input in bursts every 500 ms, and both the pause and the floor come out as
# multiples of that cycle. Its numbers say whether a reload completes and
# loses nothing; the pause itself is measured with --broker kafka.
#
# Kept apart from scripts/bench (whose other scenarios need a Kafka broker);
# `scripts/bench --scenario reload` calls this script. See usage().
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd -P)

usage() {
	cat <<'EOF'
usage: bench/reload.sh [--broker embedded|kafka|kafka://HOST:PORT] [--port N]
                       [--build DIR] [--reloads N] [--rate R] [--interval S]
                       [--partitions N] [--size N] [--json FILE] [--keep]

  --broker B        embedded (default): a standalone `fstream-lua broker`
                    (librdkafka's mock cluster: fetches come every 500 ms,
                    see the header of this script);
                    kafka: a real broker started with scripts/kafka in
                    .kafka/reload on --port, stopped and deleted afterwards
                    (one already running there is reused and left running);
                    kafka://HOST:PORT: a Kafka broker already running
  --port N          port of --broker kafka (default 19792; N+1 is its
                    controller)

  --build DIR       meson build dir (default $BENCH_BUILD_DIR, else build-rel;
                    set up as a release build if missing, then compiled)
  --reloads N       reloads to measure (default 20)
  --rate R          input events per second (default 3000)
  --interval S      seconds each version runs before the next rewrite
                    (default 1.5)
  --partitions N    partitions of the input and output topics (default 4)
  --size N          bytes per input line, the number padded (default 100)
  --json FILE       also write the results as JSON to FILE
  --keep            keep the scratch dir (worker log, inputs, outputs)

Results (text and JSON) also go to bench/results/reload/ (git-ignored).
Exit status 1 when an input has no output, a reload failed or never
completed, or the worker died.
EOF
}

die() {
	echo "bench/reload.sh: $*" >&2
	exit 1
}

say() {
	echo "bench/reload.sh: $*" >&2
}

BUILD=${BENCH_BUILD_DIR:-build-rel}
RELOADS=20
RATE=3000
INTERVAL=1.5
PARTITIONS=4
JSON_OUT=""
BROKER=embedded
PORT=19792
SIZE=100
KEEP=0

while (($#)); do
	case $1 in
	--broker) BROKER=${2:?--broker needs a value}; shift 2 ;;
	--port) PORT=${2:?--port needs a number}; shift 2 ;;
	--build) BUILD=${2:?--build needs a dir}; shift 2 ;;
	--reloads) RELOADS=${2:?--reloads needs a number}; shift 2 ;;
	--rate) RATE=${2:?--rate needs a number}; shift 2 ;;
	--interval) INTERVAL=${2:?--interval needs seconds}; shift 2 ;;
	--partitions) PARTITIONS=${2:?--partitions needs a number}; shift 2 ;;
	--size) SIZE=${2:?--size needs a number}; shift 2 ;;
	--json) JSON_OUT=${2:?--json needs a file}; shift 2 ;;
	--keep) KEEP=1; shift ;;
	-h | --help) usage; exit 0 ;;
	*) die "unknown argument '$1' (see --help)" ;;
	esac
done
[[ $RELOADS =~ ^[1-9][0-9]*$ ]] || die "--reloads must be a positive number"
[[ $RATE =~ ^[1-9][0-9]*$ ]] || die "--rate must be a positive number"
[[ $PARTITIONS =~ ^[1-9][0-9]*$ ]] || die "--partitions must be a positive number"
[[ $SIZE =~ ^[1-9][0-9]*$ ]] || die "--size must be a positive number"
[[ $INTERVAL =~ ^[0-9]+(\.[0-9]+)?$ && $INTERVAL != 0 ]] || die "--interval must be a positive number of seconds"
case $BROKER in
embedded | kafka) ;;
kafka://*) [[ $BROKER =~ ^kafka://[^/]+:[0-9]+/?$ ]] || die "--broker kafka://HOST:PORT expected, got '$BROKER'" ;;
*) die "--broker must be embedded, kafka or kafka://HOST:PORT" ;;
esac
[[ $PORT =~ ^[1-9][0-9]*$ ]] || die "--port must be a number"
command -v kcat >/dev/null || die "kcat not found (apt-get install kcat)"
command -v python3 >/dev/null || die "python3 not found"
[[ -z $JSON_OUT ]] || JSON_OUT=$(realpath -m -- "$JSON_OUT")

cd "$ROOT"
BUILD=$(realpath -m -- "$BUILD")
if [[ ! -f $BUILD/build.ninja ]]; then
	say "setting up a release build in $BUILD"
	meson setup "$BUILD" --buildtype=release >/dev/null
fi
meson compile -C "$BUILD" >/dev/null || die "meson compile -C $BUILD failed"
# What was built: the commit, "+dirty" if lua/ or runtime/ (the Lua side is
# bundled into the binary) differed from it.
GIT=$(git rev-parse --short HEAD 2>/dev/null || echo none)
git diff --quiet HEAD -- lua runtime 2>/dev/null || GIT="$GIT+dirty"
BUILDTYPE=$(meson introspect "$BUILD" --buildoptions |
	python3 -c 'import json,sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"] == "buildtype"))')
[[ $BUILDTYPE == release ]] || say "warning: $BUILD is a '$BUILDTYPE' build, not release; results record that"
FSTREAM=$BUILD/fstream-lua
[[ -x $FSTREAM ]] || die "$FSTREAM was not built"
APP_SRC=$ROOT/bench/reload_app.lua
grep -qx 'local VERSION = 1' "$APP_SRC" || die "$APP_SRC has no line 'local VERSION = 1' to rewrite"

# --- cleanup -------------------------------------------------------------------

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fstream-reload.XXXXXX")
CHILDREN=()
KAFKA_DIR=$ROOT/.kafka/reload
KAFKA_STARTED=0

cleanup() {
	local rc=$? pid i t
	trap - EXIT INT TERM
	[[ ! -d $WORK ]] || touch "$WORK/load.stop"
	# Newest first: the load and the worker go before the broker they use.
	for ((i = ${#CHILDREN[@]} - 1; i >= 0; i--)); do
		kill -TERM "${CHILDREN[$i]}" 2>/dev/null || true
	done
	for pid in "${CHILDREN[@]}"; do
		for ((t = 0; t < 100; t++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	if ((KAFKA_STARTED)); then
		say "stopping the Kafka broker in $KAFKA_DIR"
		"$ROOT/scripts/kafka" clean --dir "$KAFKA_DIR" >/dev/null 2>&1 ||
			say "could not stop it; run scripts/kafka clean --dir $KAFKA_DIR"
	fi
	if ((KEEP)); then
		say "scratch dir kept: $WORK"
	else
		rm -rf -- "$WORK"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

forget_child() {
	local pid=$1 i
	for i in "${!CHILDREN[@]}"; do
		[[ ${CHILDREN[$i]} == "$pid" ]] && unset 'CHILDREN[i]'
	done
	CHILDREN=("${CHILDREN[@]}")
}

show_tail() {
	local f=$1 n=${2:-20}
	[[ -s $f ]] || return 0
	echo "----- last lines of $(basename "$f") -----" >&2
	tail -n "$n" "$f" >&2
}

# Waits until `grep -c PATTERN LOG` reaches N, or dies (worker gone, timeout).
wait_lines() {
	local log=$1 pattern=$2 n=$3 timeout=$4 what=$5 deadline c=0
	deadline=$((SECONDS + timeout))
	while ((SECONDS < deadline)); do
		c=$(grep -c -- "$pattern" "$log" || true)
		((c >= n)) && return 0
		if ! kill -0 "$WORKER_PID" 2>/dev/null; then
			show_tail "$log" 40
			die "the worker exited while waiting for $what"
		fi
		if grep -q 'reload of .* failed' "$log"; then
			show_tail "$log" 40
			die "a reload failed (waiting for $what)"
		fi
		sleep 0.05
	done
	show_tail "$log" 40
	die "no $what after ${timeout}s"
}

# --- broker, topics, worker ----------------------------------------------------

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
APP_ID="bench-reload-$STAMP-$$"
IN="$APP_ID-in"
OUT="$APP_ID-out"
CHANGELOG="$APP_ID-key_counts-changelog"

case $BROKER in
embedded)
	say "embedded broker ($PARTITIONS partitions per topic)"
	(cd "$WORK" && exec "$FSTREAM" broker --address-file "$WORK/broker.addr" --partitions "$PARTITIONS") \
		>"$WORK/broker.log" 2>&1 &
	BROKER_PID=$!
	CHILDREN+=("$BROKER_PID")
	for ((t = 0; t < 100; t++)); do
		[[ -s $WORK/broker.addr ]] && break
		kill -0 "$BROKER_PID" 2>/dev/null || { show_tail "$WORK/broker.log"; die "the broker exited"; }
		sleep 0.1
	done
	ADDR=$(<"$WORK/broker.addr")
	[[ $ADDR =~ ^[^:]+:[0-9]+$ ]] || die "no broker address in $WORK/broker.addr"
	BROKER_DESC="embedded (fstream-lua broker, librdkafka mock cluster)"
	;;
kafka)
	if "$ROOT/scripts/kafka" status --dir "$KAFKA_DIR" >/dev/null 2>&1; then
		say "reusing the Kafka broker running in $KAFKA_DIR"
	else
		KAFKA_STARTED=1
		"$ROOT/scripts/kafka" clean --dir "$KAFKA_DIR" >/dev/null 2>&1 || true
		say "starting Kafka on port $PORT in $KAFKA_DIR"
	fi
	ADDR=$("$ROOT/scripts/kafka" start --dir "$KAFKA_DIR" --port "$PORT" 2>"$WORK/kafka.err" | tail -n 1) ||
		{ show_tail "$WORK/kafka.err"; die "scripts/kafka start failed"; }
	BROKER_DESC="Kafka $(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ROOT/third_party/kafka/pom.xml" 2>/dev/null) (scripts/kafka)"
	;;
*)
	ADDR=${BROKER#kafka://}
	ADDR=${ADDR%/}
	BROKER_DESC="Kafka at $ADDR (already running)"
	;;
esac
say "broker $ADDR: $BROKER_DESC"

if [[ $BROKER == embedded ]]; then
	# The broker has no CreateTopics: asking for a topic's metadata creates it.
	for t in "$IN" "$OUT" "$CHANGELOG"; do
		kcat -L -b "$ADDR" -t "$t" -m 10 >"$WORK/meta.txt" 2>&1 || { cat "$WORK/meta.txt" >&2; die "cannot create $t"; }
		grep -q "topic \"$t\" with $PARTITIONS partitions" "$WORK/meta.txt" ||
			{ cat "$WORK/meta.txt" >&2; die "$t was not created with $PARTITIONS partitions"; }
	done
else
	# bench-loadgen -n 0 creates a topic and waits until it can be written;
	# the changelog compacted, as the runtime would create it.
	LOADGEN=$BUILD/bench/bench-loadgen
	[[ -x $LOADGEN ]] || die "$LOADGEN was not built"
	for t in "$IN" "$OUT" "$CHANGELOG"; do
		args=(-b "$ADDR" -t "$t" -n 0 -p "$PARTITIONS")
		[[ $t != "$CHANGELOG" ]] || args+=(--compact)
		"$LOADGEN" "${args[@]}" >/dev/null 2>"$WORK/loadgen.err" || { show_tail "$WORK/loadgen.err"; die "cannot create $t"; }
	done
fi

# The worker watches the script's directory: a directory of its own.
mkdir -p "$WORK/app"
APP=$WORK/app/reload_app.lua
cp -- "$APP_SRC" "$APP"

say "worker: $APP --reload on kafka://$ADDR"
(cd "$WORK" && exec env BENCH_APP="$APP_ID" BENCH_IN="$IN" BENCH_OUT="$OUT" BENCH_PARTITIONS="$PARTITIONS" \
	"$FSTREAM" worker "$APP" --reload --broker "kafka://$ADDR" --store "lmdb://$WORK/store" -l info) \
	>"$WORK/worker.log" 2>&1 &
WORKER_PID=$!
CHILDREN+=("$WORKER_PID")

# --- load ----------------------------------------------------------------------

# Numbered lines at RATE per second, in 5 ms ticks, until the stop file
# appears; the last number goes to load.count. Each line "k<n%100>:<n> xx..."
# is SIZE bytes: kcat 1.7.1 passed 10-byte lines at 3,000/s on in bursts
# every 30-40 ms (about 1 KB of input each), which the worker then processed
# as bursts too; with 100-byte lines it sends each 5 ms tick as it comes.
# linger.ms=1: kcat sends what it read at once.
cat >"$WORK/load.py" <<'EOF'
import os, sys, time
rate, size, stop, count = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
out = sys.stdout
n, t0 = 0, time.monotonic()
def line(i):
    s = "k%d:%d " % (i % 100, i)
    return s + "x" * max(0, size - len(s) - 1) + "\n"
while not os.path.exists(stop):
    want = int((time.monotonic() - t0) * rate)
    if want > n:
        out.write("".join(line(i) for i in range(n + 1, want + 1)))
        out.flush()
        n = want
    time.sleep(0.005)
with open(count, "w") as f:
    f.write("%d\n" % n)
EOF
say "load: $RATE events/s of $SIZE bytes into $IN"
mkfifo "$WORK/load.fifo"
kcat -P -b "$ADDR" -t "$IN" -K: -X linger.ms=1 -X message.timeout.ms=10000 <"$WORK/load.fifo" 2>"$WORK/kcat-p.err" &
KCAT_PID=$!
CHILDREN+=("$KCAT_PID")
python3 "$WORK/load.py" "$RATE" "$SIZE" "$WORK/load.stop" "$WORK/load.count" >"$WORK/load.fifo" 2>"$WORK/load.err" &
LOAD_PID=$!
CHILDREN+=("$LOAD_PID")

wait_lines "$WORK/worker.log" 'info  assigned [0-9]* partitions' 1 60 "partition assignment"
say "worker assigned its partitions; version 1 runs for ${INTERVAL}s"

# --- reloads -------------------------------------------------------------------

: >"$WORK/writes.txt"
# How busy the machine was meanwhile (other sessions share its cores).
proc_ticks() { awk '{ sub(/.*\) /, ""); split($0, f, " "); print f[12] + f[13] }' "/proc/$1/stat" 2>/dev/null || echo 0; }
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit }' /proc/stat; }
MARK_MACHINE=$(machine_ticks)
MARK_WORKER=$(proc_ticks "$WORKER_PID")
for ((k = 1; k <= RELOADS; k++)); do
	sleep "$INTERVAL"
	kill -0 "$LOAD_PID" 2>/dev/null || { show_tail "$WORK/load.err"; die "the load generator stopped"; }
	kill -0 "$KCAT_PID" 2>/dev/null || { show_tail "$WORK/kcat-p.err"; die "kcat -P stopped"; }
	v=$((k + 1))
	# A new file renamed over the old one: the worker never reads half a file.
	sed "s/^local VERSION = [0-9]*\$/local VERSION = $v/" "$APP_SRC" >"$WORK/app/.next.lua"
	echo "$k $(date +%s%3N)" >>"$WORK/writes.txt"
	mv -f -- "$WORK/app/.next.lua" "$APP"
	wait_lines "$WORK/worker.log" 'info  reloaded .* in [0-9]* ms' "$k" 30 "reload $k (VERSION $v)"
	printf '.' >&2
done
echo >&2
say "$RELOADS reloads done; version $((RELOADS + 1)) runs for ${INTERVAL}s"
# busy% of the whole machine and the worker's share of it (100 = every core).
BUSY=$(awk -v a="$MARK_MACHINE" -v b="$(machine_ticks)" -v w0="$MARK_WORKER" -v w1="$(proc_ticks "$WORKER_PID")" 'BEGIN {
	split(a, x, " "); split(b, y, " "); d = y[2] - x[2]
	if (d > 0) printf "%.0f %.0f", 100 * (y[1] - x[1]) / d, 100 * (w1 - w0) / d; else print "null null" }')
read -r BUSY_PCT WORKER_PCT <<<"$BUSY"
sleep "$INTERVAL"

touch "$WORK/load.stop"
LOAD_RC=0
wait "$LOAD_PID" || LOAD_RC=$?
forget_child "$LOAD_PID"
((LOAD_RC == 0)) || { show_tail "$WORK/load.err"; die "the load generator failed ($LOAD_RC)"; }
KCAT_RC=0
wait "$KCAT_PID" || KCAT_RC=$?
forget_child "$KCAT_PID"
((KCAT_RC == 0)) || { show_tail "$WORK/kcat-p.err"; die "kcat -P failed ($KCAT_RC)"; }
PRODUCED=$(<"$WORK/load.count")
say "load stopped after $PRODUCED events; waiting for every one's output"

# --- every input out -----------------------------------------------------------

kcat -C -b "$ADDR" -t "$IN" -e -q -f '%s\n' 2>"$WORK/kcat.err" | cut -d' ' -f1 >"$WORK/in.txt" ||
	{ show_tail "$WORK/kcat.err"; die "cannot read $IN"; }
INPUTS=$(sort -u "$WORK/in.txt" | wc -l)
deadline=$((SECONDS + 60))
while :; do
	kcat -C -b "$ADDR" -t "$OUT" -e -q -f '%s\n' >"$WORK/out.txt" 2>"$WORK/kcat.err" ||
		{ show_tail "$WORK/kcat.err"; die "cannot read $OUT"; }
	done_n=$(awk '{ print $2 }' "$WORK/out.txt" | sort -u | wc -l)
	((done_n >= INPUTS)) && break
	((SECONDS < deadline)) || { say "only $done_n of $INPUTS inputs have an output after 60 s"; break; }
	kill -0 "$WORKER_PID" 2>/dev/null || { say "the worker exited; $done_n of $INPUTS inputs have an output"; break; }
	sleep 0.5
done

# The worker's CPU time, then SIGTERM, as it is meant to stop.
WORKER_CPU_S=$(awk -v h="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); split($0, f, " "); printf "%.2f", (f[12] + f[13]) / h }' \
	"/proc/$WORKER_PID/stat" 2>/dev/null || echo null)
kill -TERM "$WORKER_PID" 2>/dev/null || true
for ((t = 0; t < 300; t++)); do
	kill -0 "$WORKER_PID" 2>/dev/null || break
	sleep 0.1
done
kill -0 "$WORKER_PID" 2>/dev/null && { say "the worker ignored SIGTERM for 30 s; killing it"; kill -KILL "$WORKER_PID" 2>/dev/null || true; }
WORKER_RC=0
wait "$WORKER_PID" || WORKER_RC=$?
forget_child "$WORKER_PID"
((WORKER_RC == 0)) || { show_tail "$WORK/worker.log"; say "the worker exited $WORKER_RC after SIGTERM (expected 0)"; }

# --- statistics ----------------------------------------------------------------

RESULTS_DIR=$ROOT/bench/results/reload
mkdir -p "$RESULTS_DIR"
TXT=$RESULTS_DIR/reload-$STAMP.txt
JSON=$RESULTS_DIR/reload-$STAMP.json

cat >"$WORK/stats.py" <<'EOF'
import json, os, re, statistics, sys
(work, reloads, rate, size, interval, partitions, produced, worker_rc, cpu_s, busy, worker_pct,
 build, buildtype, git, broker, json_path) = sys.argv[1:]
reloads = int(reloads)

inputs = set()
for line in open(work + "/in.txt"):
    inputs.add(int(line))

out = []                      # (ms, version, n) per output
for line in open(work + "/out.txt"):
    v, n, ms = line.split()
    out.append((float(ms), int(v), int(n)))
seen = {}
for _, _, n in out:
    seen[n] = seen.get(n, 0) + 1
missing = sorted(inputs - set(seen))
dups = sum(c - 1 for c in seen.values())

by_v = {}
for ms, v, n in sorted(out):
    by_v.setdefault(v, []).append(ms)
first = {v: l[0] for v, l in by_v.items()}
last = {v: l[-1] for v, l in by_v.items()}

reported = [int(m) for m in re.findall(r"info  reloaded .* in (\d+) ms", open(work + "/worker.log").read())]
pauses, problems = [], []
for k in range(1, reloads + 1):
    if k not in by_v or k + 1 not in by_v:
        problems.append("reload %d: no output of version %d" % (k, k if k not in by_v else k + 1))
        pauses.append(None)
        continue
    pauses.append(round(first[k + 1] - last[k], 3))
    if first[k + 1] < last[k]:
        problems.append("reload %d: version %d processed an event at %.3f, before version %d's last at %.3f"
                        % (k, k + 1, first[k + 1], k, last[k]))
if len(reported) != reloads:
    problems.append("%d 'reloaded' lines in the worker's log for %d rewrites" % (len(reported), reloads))
if int(worker_rc) != 0:
    problems.append("the worker exited %s after SIGTERM (expected 0)" % worker_rc)
extra = sorted(set(by_v) - set(range(1, reloads + 2)))
if extra:
    problems.append("outputs of unexpected versions %s" % extra)

# The floor of the measure: the largest gap between two consecutive outputs
# of one version (no reload in between), per version; not version 1, which
# starts with the backlog of the worker's start-up.
floors = []
for v, l in sorted(by_v.items()):
    if v > 1 and len(l) > 1:
        floors.append(max(b - a for a, b in zip(l, l[1:])))

writes = {}
for line in open(work + "/writes.txt"):
    k, t = line.split()
    writes[int(k)] = float(t)
write_to_first = [round(first[k + 1] - writes[k], 3) for k in range(1, reloads + 1)
                  if k in writes and k + 1 in first]

def summary(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"n": len(xs), "median": round(statistics.median(xs), 1), "worst": round(max(xs), 1),
            "best": round(min(xs), 1), "mean": round(statistics.mean(xs), 1)}

p = summary(pauses)
r = summary(reported)
f = summary(floors)
w = summary(write_to_first)
span_s = (max(last.values()) - min(first.values())) / 1000 if out else 0
no_gap = not missing and len(inputs) == int(produced)
ok = no_gap and not problems
res = {
    "broker": broker, "reloads": reloads, "rate": int(rate), "size": int(size), "interval_s": float(interval), "partitions": int(partitions),
    "build": build, "buildtype": buildtype, "git": git,
    "produced": int(produced), "inputs": len(inputs), "outputs": len(out), "duplicates": dups,
    "missing": len(missing), "missing_first": missing[:20], "no_gap": "PASS" if no_gap else "FAIL",
    "pause_ms": p, "pauses_ms": pauses,
    "worker_reloaded_ms": r, "worker_reloaded_each_ms": reported,
    "floor_ms": f, "write_to_first_output_ms": w,
    "processed_per_s": round(len(out) / span_s) if span_s > 0 else None,
    "worker_cpu_s": None if cpu_s == "null" else float(cpu_s), "worker_exit": int(worker_rc),
    "machine_busy_pct": None if busy == "null" else int(busy), "worker_pct": None if worker_pct == "null" else int(worker_pct),
    "nproc": os.cpu_count(),
    "target_median_ms": 100, "target_met": bool(p and p["median"] <= 100),
    "problems": problems, "pass": ok,
}
with open(json_path, "w") as fh:
    json.dump(res, fh, indent=1)
    fh.write("\n")

def fmt(s):
    return "n/a" if not s else "median %.1f ms, worst %.1f ms (best %.1f, mean %.1f, n=%d)" % (
        s["median"], s["worst"], s["best"], s["mean"], s["n"])
print("reload pause (first output of version k+1 - last of version k): %s" % fmt(p))
print("  each (ms): %s" % " ".join("-" if x is None else "%.0f" % x for x in pauses))
print("worker's 'reloaded in N ms':                                   %s" % fmt(r))
print("  each (ms): %s" % " ".join(str(x) for x in reported))
print("rewrite -> first output of the new version (100 ms debounce in): %s" % fmt(w))
print("floor: largest gap between two outputs of one version (2..):    %s" % fmt(f))
print("load: %d events of %s bytes at %s/s (%d partitions), %d outputs, %d duplicates; worker CPU %s s, exit %d"
      % (len(inputs), size, rate, int(partitions), len(out), dups, cpu_s, int(worker_rc)))
print("during the reloads the machine (%d cores) was %s%% busy, the worker %s%% of it"
      % (os.cpu_count(), busy, worker_pct))
print("no gap (every input number has an output): %s%s" % (
    res["no_gap"], "" if no_gap else " - %d of %d missing (first: %s), %s produced"
    % (len(missing), len(inputs), missing[:10], produced)))
for pr in problems:
    print("PROBLEM: " + pr)
print("target median <= 100 ms: %s" % ("met" if res["target_met"] else "NOT met"))
print("broker: %s; build %s (%s), git %s" % (broker, build, buildtype, git))
sys.exit(0 if ok else 1)
EOF
STATS_RC=0
python3 "$WORK/stats.py" "$WORK" "$RELOADS" "$RATE" "$SIZE" "$INTERVAL" "$PARTITIONS" "$PRODUCED" "$WORKER_RC" \
	"$WORKER_CPU_S" "$BUSY_PCT" "$WORKER_PCT" "$BUILD" "$BUILDTYPE" "$GIT" "$BROKER_DESC" "$JSON" | tee "$TXT" || STATS_RC=$?
[[ -z $JSON_OUT ]] || cp -- "$JSON" "$JSON_OUT"
say "results in $TXT and $JSON"
if ((STATS_RC != 0)); then
	show_tail "$WORK/worker.log" 30
	die "FAILED (see above)"
fi
