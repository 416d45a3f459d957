#!/usr/bin/env bash
# The word count demo (run by `make demo` once the package is in .venv).
#
# What it does, step by step:
#   1. starts `wallaroo receive`, a TCP server that collects the application's output;
#   2. starts the word count example with `wallaroo-run` on $WORKERS worker processes (default
#      2; the app is unchanged), its TCP source on a free port;
#   3. sends examples/word_count/count_this.txt (the Bill of Rights) with `wallaroo send`;
#   4. waits for one output line per word, prints the final count of every word;
#   5. shows the run's metrics with `wallaroo top --once` (the live dashboard's address too);
#   6. stops the application with SIGTERM and checks that it exited cleanly (status 0).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/.venv/bin"
EXAMPLE="$ROOT/examples/word_count"
TEXT="$EXAMPLE/count_this.txt"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/wallaroo-demo.XXXXXX")"
TIMEOUT=30   # seconds allowed for each step
WORKERS="${WORKERS:-2}"

RECEIVER_PID=""
APP_PID=""

cleanup() {
    for pid in "$APP_PID" "$RECEIVER_PID"; do
        if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

say()  { printf '\n==> %s\n' "$*"; }
fail() {
    printf '\ndemo FAILED: %s\n' "$*" >&2
    for log in "$WORK"/*.log; do
        [[ -s "$log" ]] && { printf -- '--- %s ---\n' "$(basename "$log")" >&2; cat "$log" >&2; }
    done
    exit 1
}

# wait_for_line FILE REGEX PID: wait until FILE has a line matching REGEX, print that line
wait_for_line() {
    local file=$1 regex=$2 pid=$3 deadline=$((SECONDS + TIMEOUT)) line
    while (( SECONDS < deadline )); do
        if line=$(grep -E -m1 "$regex" "$file" 2>/dev/null); then
            printf '%s\n' "$line"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

[[ -x "$BIN/wallaroo-run" ]] || fail "$BIN/wallaroo-run not found; run 'make install' first"

# The number of words in the text = the number of output lines to expect
# (the application splits on whitespace, lowercases, strips punctuation).
WORDS=$("$BIN/python" -c '
import string, sys
print(sum(1 for line in open(sys.argv[1], encoding="utf-8")
            for token in line.lower().split() if token.strip(string.punctuation)))
' "$TEXT")

say "1. Starting the receiver (wallaroo receive) on a free port"
"$BIN/wallaroo" receive --listen 127.0.0.1:0 --expect "$WORDS" --timeout "$TIMEOUT" \
    --output "$WORK/output.txt" 2> "$WORK/receive.log" &
RECEIVER_PID=$!
line=$(wait_for_line "$WORK/receive.log" 'listening on' "$RECEIVER_PID") \
    || fail "the receiver did not start"
OUT_ADDR=${line##* }
echo "    $line"

say "2. Starting the word count application on $WORKERS workers (wallaroo-run --workers $WORKERS)"
(cd "$EXAMPLE" && exec "$BIN/wallaroo-run" --application-module word_count --workers "$WORKERS" \
    --in 'Split and Count@127.0.0.1:0' --out "$OUT_ADDR") 2> "$WORK/wallaroo-run.log" &
APP_PID=$!
line=$(wait_for_line "$WORK/wallaroo-run.log" '^wallaroo: running' "$APP_PID") \
    || fail "the application did not start"
echo "    $line"
IN_ADDR=$(sed -nE 's/.*source "Split and Count" at tcp:\/\/([0-9.]+:[0-9]+).*/\1/p' <<< "$line")
[[ -n "$IN_ADDR" ]] || fail "no address for the source \"Split and Count\" in: $line"

say "3. Sending $(wc -l < "$TEXT" | tr -d ' ') lines of the Bill of Rights to $IN_ADDR (wallaroo send)"
"$BIN/wallaroo" send --host "$IN_ADDR" --file "$TEXT" 2> "$WORK/send.log" \
    || fail "wallaroo send failed"
sed 's/^/    /' "$WORK/send.log"

say "4. Waiting for $WORDS counts (one per word) to reach the receiver"
wait "$RECEIVER_PID" || { RECEIVER_PID=""; fail "the receiver did not get $WORDS lines"; }
RECEIVER_PID=""
echo "    got $(wc -l < "$WORK/output.txt" | tr -d ' ') lines, e.g.:"
head -n 5 "$WORK/output.txt" | sed 's/^/        /'

say "Final count of every word (the last count each word got):"
awk -F' => ' '{ total[$1] = $2 } END { for (w in total) printf "%s => %s\n", w, total[w] }' \
    "$WORK/output.txt" | sort > "$WORK/final.txt"
if command -v column > /dev/null; then
    column -c 100 < "$WORK/final.txt"
else
    cat "$WORK/final.txt"
fi
echo
echo "Most frequent words:"
awk -F' => ' '{ print $2, $1 }' "$WORK/final.txt" | sort -k1,1nr -k2,2 \
    | awk 'NR <= 5 { printf "    %-12s %s\n", $2, $1 }'

say "5. The run's metrics (wallaroo top --once; the workers report every second)"
line=$(wait_for_line "$WORK/wallaroo-run.log" 'metrics: dashboard at' "$APP_PID") \
    || fail "the application did not say where its metrics are"
METRICS_URL=$(sed -nE 's/.*dashboard at (http:[^ ]+).*/\1/p' <<< "$line")
echo "    live dashboard: $METRICS_URL (JSON: ${METRICS_URL}api/metrics, Prometheus: ${METRICS_URL}metrics)"
sleep 1.5   # one more report from every worker, so the counts are final
COLUMNS=110 "$BIN/wallaroo" top --metrics "$METRICS_URL" --once | sed 's/^/    /' \
    || fail "wallaroo top could not read the metrics at $METRICS_URL"

say "6. Stopping the application with SIGTERM"
kill -TERM "$APP_PID"
status=0
wait "$APP_PID" || status=$?
APP_PID=""
(( status == 0 )) || fail "wallaroo-run exited with status $status"
echo "    wallaroo-run exited with status 0"

say "Demo finished: $WORDS words counted."
