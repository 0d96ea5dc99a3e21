#!/usr/bin/env bash
# chaos/soak_producer.sh ADDR TOPIC RATE WORDS BASE_CS STOP_FILE PROGRESS_FILE
#
# The soak's external producer (scripts/soak): sends 1, 2, 3, ... to TOPIC,
# paced by the clock at RATE messages/s until STOP_FILE exists. The messages
# are spec/support/numbered.sh's (as spec/support/eos_producer.sh sends them)
# with event time following the clock: T = (BASE_CS + 100n / RATE) / 100 s.
# Unlike eos_producer.sh, the pace is held against the wall clock (a batch
# every 50 ms carrying what the clock says is due), so a slow batch is made
# up for and the rate stays RATE over minutes. PROGRESS_FILE gets the next
# number to send before every batch (what was handed to kcat so far). kcat is
# started again if it exits.
set -uo pipefail
ADDR=$1 TOPIC=$2 RATE=$3 WORDS=$4 BASE=$5 STOP=$6 PROGRESS=$7
TS_NUM=100 TS_DEN=$RATE
source "$(dirname -- "${BASH_SOURCE[0]}")/../spec/support/numbered.sh"
echo 1 >"$PROGRESS"
START=${EPOCHREALTIME/./}
stopped() { [[ -e $STOP ]]; }

gen() {
	local n due now
	n=$(<"$PROGRESS")
	while ! stopped; do
		now=${EPOCHREALTIME/./}
		# Numbers due by now since START (microseconds), at least one batch ahead.
		due=$(((now - START) * RATE / 1000000 + 1))
		if ((due >= n)); then
			echo $((due + 1)) >"$PROGRESS"
			emit "$n" "$due" || return 1
			n=$((due + 1))
		fi
		sleep 0.05
	done
}

send soak_producer gen stopped "$PROGRESS"
