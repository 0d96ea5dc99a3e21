#!/usr/bin/env bash
# Start-up time: from `fstream-lua worker` to the first processed event on
# memory://, over N runs (default 5). Prints each run and the median in ms.
#   bench/startup.sh [N] [fstream-lua binary]
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
N=${1:-5}
BIN=${2:-$ROOT/build/fstream-lua}
times=()
for ((i = 0; i < N; i++)); do
	dir=$(mktemp -d); out=$dir/log
	t0=$(date +%s%N)
	(cd "$dir" && exec "$BIN" worker "$ROOT/bench/startup_app.lua" -l warn) >"$out" 2>&1 &
	pid=$!
	until grep -q '^processed' "$out"; do
		if ! kill -0 "$pid" 2>/dev/null; then cat "$out" >&2; exit 1; fi
		sleep 0.005
	done
	t1=$(date +%s%N)
	kill -TERM "$pid"; wait "$pid" || true
	rm -rf "$dir"
	ms=$(((t1 - t0) / 1000000))
	times+=("$ms")
	echo "run $((i + 1)): $ms ms"
done
sorted=$(printf '%s\n' "${times[@]}" | sort -n)
echo "median: $(echo "$sorted" | sed -n "$(((N + 1) / 2))p") ms"
