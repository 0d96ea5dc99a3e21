#!/usr/bin/env bash
# chaos/soak_producer.sh ADDR TOPIC RATE WORDS BASE_CS STOP_FILE PROGRESS_FILE
#
# The soak's external producer (scripts/soak): sends 1, 2, 3, ... to TOPIC,
# paced by the clock at RATE messages/s until STOP_FILE exists. The messages
# are those of spec/support/eos_producer.sh (key w<n % WORDS>, value
# {"n":n,"w":"w<k>","ts":T} with T = (BASE_CS + 2n) / 100 s), so the eos
# checkers' rules apply; unlike it, the pace is held against the wall clock
# (a batch every 50 ms carrying what the clock says is due), so a slow batch
# is made up for and the rate stays RATE over minutes. PROGRESS_FILE gets the
# next number to send after every batch (what was handed to kcat so far).
#
# kcat is restarted if it exits (as eos_producer.sh does); the numbers a dead
# kcat was handed may be lost in part, never sent twice (idempotent producer):
# the checker takes the input topic, read back, as the truth.
set -uo pipefail
ADDR=$1 TOPIC=$2 RATE=$3 WORDS=$4 BASE=$5 STOP=$6 PROGRESS=$7
echo 1 >"$PROGRESS"
START=${EPOCHREALTIME/./}

gen() {
	local n t k due now
	n=$(<"$PROGRESS")
	while [[ ! -e $STOP ]]; do
		now=${EPOCHREALTIME/./}
		# Numbers due by now since START (microseconds), at least one batch ahead.
		due=$(((now - START) * RATE / 1000000 + 1))
		if ((due >= n)); then
			echo $((due + 1)) >"$PROGRESS"
			for ((; n <= due; n++)); do
				t=$((BASE + 100 * n / RATE))
				k=$((n % WORDS))
				printf 'w%d\t{"n":%d,"w":"w%d","ts":%d.%02d}\n' "$k" "$n" "$k" $((t / 100)) $((t % 100)) || return 1
			done
		fi
		sleep 0.05
	done
}

while :; do
	gen | kcat -P -b "$ADDR" -t "$TOPIC" -K $'\t' -X enable.idempotence=true -X linger.ms=5 \
		-X message.timeout.ms=600000 2>/dev/null
	rc=$?
	[[ -e $STOP ]] && exit 0
	echo "soak_producer: kcat exited ($rc) before number $(<"$PROGRESS"); starting it again" >&2
	sleep 0.5
done
