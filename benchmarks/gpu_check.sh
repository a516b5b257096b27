#!/usr/bin/env bash
# The learner's CUDA path in one run (issue 17 item 6), for a session lent a GPU: under 8
# minutes, each section in its own process printing PASS or FAIL, so one failure never hides
# the rest (sections: benchmarks/gpu_check.py).
#
#   benchmarks/gpu_check.sh                      # the GPU check (default model, L 256/1024/4096)
#   benchmarks/gpu_check.sh --device cpu --quick # every section with tiny sizes (CPU test)
#   PYTHON=.venv/bin/python GPU_CHECK_LOG=out.log benchmarks/gpu_check.sh --lengths 256 1024
#
# Needs Python >= 3.10 with torch (and numpy) only: no Ray, Redis, gymnasium or Hydra; the
# repo root goes on PYTHONPATH, nothing is installed. Other arguments go to every section.
set -u
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
LOG=${GPU_CHECK_LOG:-gpu_check.log}
DEVICE=cuda
QUICK=0
ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=$2; shift 2 ;;
        --quick) QUICK=1; ARGS+=(--quick); shift ;;
        *) ARGS+=("$1"); shift ;;
    esac
done
# seconds per section: 30 + 200 + 60 + 60 + 100 = 450 s at most (the device budget is 8 min)
SECTIONS=(imports:30 throughput:200 syncs:60 checkpoint:60 variants:100)
: >"$LOG"
passed=0
failed=()
start=$(date +%s)
for entry in "${SECTIONS[@]}"; do
    name=${entry%%:*}
    limit=${entry##*:}
    [ "$QUICK" = 1 ] && limit=120
    echo "=== $name (limit ${limit}s)" | tee -a "$LOG"
    out=$(timeout -k 5 "$limit" "$PY" -m benchmarks.gpu_check "$name" --device "$DEVICE" \
        "${ARGS[@]}" 2>&1)
    rc=$?
    printf '%s\n' "$out" | grep -v '^USDT:' | tee -a "$LOG"
    if [ $rc -eq 0 ] && printf '%s\n' "$out" | grep -q "^PASS $name\$"; then
        passed=$((passed + 1))
        continue
    fi
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        echo "FAIL $name: timed out after ${limit}s" | tee -a "$LOG"
    elif ! printf '%s\n' "$out" | grep -q "^FAIL $name"; then
        echo "FAIL $name: exit code $rc" | tee -a "$LOG"
    fi
    failed+=("$name")
done
echo "gpu_check: $passed passed, ${#failed[@]} failed${failed:+ (${failed[*]})}," \
    "$(($(date +%s) - start)) s, device $DEVICE; log: $LOG" | tee -a "$LOG"
[ ${#failed[@]} -eq 0 ]
