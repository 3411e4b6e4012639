#!/usr/bin/env bash
# Instructions per reading of `http → remap → filter → blackhole` and of the bare-parse
# baseline, counted by callgrind: the same for the same binary and load whatever else the
# machine is doing, so a change to the hot path shows even where timing noise hides it.
#
#   benches/e2e_callgrind.sh [REQUESTS]      (default 2000 requests of 100 readings)
#
# Builds the release binaries (`cargo bench --no-run`), then for each server: starts it
# under `valgrind --tool=callgrind` with instrumentation off, waits until it answers,
# switches instrumentation on, sends REQUESTS requests with `weir-load` (4 in flight, 100
# readings each, as e2e_http sends them), switches it off and reads the instructions
# executed (`Ir`) while the load ran. Prints Ir per reading of each and their ratio.
set -euo pipefail
cd "$(dirname "$0")/.."

requests=${1:-2000}
batch=100
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir-target}"
cargo bench --locked --bench e2e_http --no-run 2>/dev/null
bench_bin=$(cargo bench --locked --bench e2e_http --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "e2e_http" and m.get("executable"):
        print(m["executable"])')
weir="$CARGO_TARGET_DIR/release/weir"
load="$CARGO_TARGET_DIR/release/weir-load"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_for URL: until it answers 200 (a server under callgrind starts slowly).
wait_for() {
    for _ in $(seq 600); do
        curl -sf -o /dev/null "$1" && return 0
        sleep 0.2
    done
    echo "no answer from $1" >&2
    return 1
}

# measure NAME READY_URL LOAD_URL -- COMMAND...: Ir per reading of COMMAND under the load.
measure() {
    local name=$1 ready=$2 url=$3
    shift 4
    local out="$work/$name.callgrind"
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" "$@" \
        >"$work/$name.log" 2>&1 &
    local pid=$!
    wait_for "$ready"
    callgrind_control -i on "$pid" >/dev/null 2>&1
    "$load" --url "$url" --devices 1000 --batch "$batch" --concurrency 4 \
        --requests "$requests" --timeout 120s >"$work/$name.load" 2>&1
    callgrind_control -i off "$pid" >/dev/null 2>&1
    kill -TERM "$pid"
    wait "$pid" || true
    local ir
    ir=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !done { gsub(",", "", $1); print $1; done = 1 }')
    local accepted
    accepted=$(python3 -c 'import json,sys
lines = [l for l in open(sys.argv[1]) if l.startswith("{")]
print(json.loads(lines[-1])["readings_accepted"])' "$work/$name.load")
    echo "$name $ir $accepted"
}

api=$(free_port)
source=$(free_port)
cat >"$work/pipeline.yaml" <<EOF
data_dir: $work/data
api:
  listen: 127.0.0.1:$api
  auth: { public_metrics: true }
log: { level: warn }
sources:
  devices: { type: http, listen: "127.0.0.1:$source" }
transforms:
  shaped:
    type: remap
    inputs: [devices]
    set: { temperature_f: "temperature * 9 / 5 + 32" }
    rename: { vibration: vibration_g }
    drop: [ts]
  valid:
    type: filter
    inputs: [shaped]
    condition: "temperature is number and temperature < 200"
sinks:
  sink: { type: blackhole, inputs: [valid] }
EOF
bare=$(free_port)
read -r _ bare_ir bare_n < <(WEIR_E2E_BARE_SERVE=127.0.0.1:$bare measure bare \
    "http://127.0.0.1:$bare/ready" "http://127.0.0.1:$bare" -- "$bench_bin")
read -r _ weir_ir weir_n < <(measure weir "http://127.0.0.1:$api/ready" \
    "http://127.0.0.1:$source" -- "$weir" run "$work/pipeline.yaml")
python3 - "$bare_ir" "$bare_n" "$weir_ir" "$weir_n" <<'EOF'
import sys
bare_ir, bare_n, weir_ir, weir_n = map(int, sys.argv[1:])
b, w = bare_ir / bare_n, weir_ir / weir_n
print(f"e2e_callgrind: {weir_n} readings through weir, {bare_n} through the baseline")
print(f"  bare-parse baseline  {b:>10,.0f} instructions per reading")
print(f"  weir                 {w:>10,.0f} instructions per reading ({w / b:.2f}x the baseline)")
EOF
