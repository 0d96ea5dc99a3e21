#!/usr/bin/env bash
# bench/rsspeak.sh PATTERN [INTERVAL_S]
#
# The peak of a process's memory other than file pages, which VmHWM cannot
# give: VmHWM counts LMDB's mapped file pages (RssFile) too. Waits for the
# fstream-lua process whose command line matches PATTERN (pgrep -f), samples
# RssAnon + RssShmem from /proc/PID/status every INTERVAL_S (default 0.02)
# until it exits, then prints one line: pid, the peak (KiB), the second after
# the first sample it came at, and the last VmHWM seen (KiB).
#
# Beside `scripts/bench --scenario recovery,rss`:
#   bench/rsspeak.sh 'wordcount.lua --broker kafka://127.0.0.1:PORT --store lmdb:///tmp/fstream-bench' &
set -euo pipefail
PATTERN=$1 IV=${2:-0.02}
PID=
while [[ -z $PID ]]; do
	# The worker itself, not a shell or env(1) on the way to it.
	for p in $(pgrep -f -- "$PATTERN" || true); do
		[[ $(cat "/proc/$p/comm" 2>/dev/null) == fstream-lua ]] && PID=$p
	done
	[[ -n $PID ]] || sleep 0.05
done
T0=$(date +%s.%N) PEAK=0 AT=0 HWM=0
while [[ -r /proc/$PID/status ]]; do
	read -r a s h < <(awk '/^RssAnon:/ {a = $2} /^RssShmem:/ {s = $2} /^VmHWM:/ {h = $2} END {print a + 0, s + 0, h + 0}' "/proc/$PID/status" 2>/dev/null || echo "0 0 0")
	((h > 0)) && HWM=$h
	if ((a + s > PEAK)); then
		PEAK=$((a + s))
		AT=$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
	fi
	sleep "$IV"
done
printf 'pid=%s peak_anon_shmem_kib=%s at_s=%s last_vmhwm_kib=%s\n' "$PID" "$PEAK" "$AT" "$HWM"
