#!/usr/bin/env bash
# One prepared run for a lent many-core machine, in the order that matters most if time runs
# out (each part has its own time limit and writes its results before the next starts):
#   1. build the extension in place with every core;
#   2. the thread-invariance tests on this machine's own tiles (the same bits on 1 .. N threads);
#   3. bench/step_parts.py: the 784-512-512-10 step beside its parts and its own phases, at
#      batch 128 and 1024, on 1, 8 and N threads (the gap to PyTorch at N threads);
#   4. bench/scaling.py: element-wise kernels and the steps at 1, 2, 4, ... N threads, beside
#      PyTorch, with this machine's tiles and a 2-CPU machine's (the README's curve).
# Results go to $OUT (default ./many-cores-out): build.log, invariance.txt, parts.{txt,json},
# scaling.{txt,json}, and status.txt (each part's exit code and seconds); the script exits 1
# when a part failed. About 6 minutes on 16 cores (estimated from its parts' times on 2 cores);
# QUICK=1 runs every part but the build at smoke size (1-2 threads) to check the script itself
# (.ci/run does).
#
#   OUT=/path bash bench/many_cores.sh        # THREADS=1,4,16 to choose the step_parts counts
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./many-cores-out}
mkdir -p "$OUT"
N=$(python3 -c "import os; print(len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count())")
THREADS=${THREADS:-1,8,$N}
: > "$OUT/status.txt"

part() {   # part NAME LIMIT_SECONDS LOGFILE COMMAND...: run it, record its exit code and time
    local name=$1 limit=$2 log=$3
    shift 3
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$log" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - start))" | tee -a "$OUT/status.txt"
    [ "$rc" = 0 ] || failed=1
    return 0
}
failed=0

{ echo "date: $(date -u +%FT%TZ)"; echo "cpus: $N"; lscpu 2>/dev/null | grep -E "Model name|^CPU\(s\)|NUMA node\(s\)"; } \
    > "$OUT/machine.txt"
if [ "${QUICK:-0}" = 1 ]; then
    part invariance 300 invariance.txt python3 -m pytest -q -x tests/test_sequential.py \
        -k "fused_backward_is_thread_invariant and relu"
    part step_parts 120 parts.txt python3 bench/step_parts.py --quick --json "$OUT/parts.json"
    part scaling 120 scaling.txt python3 bench/scaling.py --quick --json "$OUT/scaling.json"
else
    part build 300 build.log python3 setup.py build_ext -i -j "$N"
    part invariance 150 invariance.txt python3 -m pytest -q tests -k "bitwise or invariant or many_core"
    part step_parts 200 parts.txt python3 bench/step_parts.py --threads "$THREADS" \
        --batches 128,1024 --rounds 3 --min-time 0.1 --json "$OUT/parts.json"
    part scaling 240 scaling.txt python3 bench/scaling.py --tile-cores 2 --rounds 3 \
        --min-time 0.1 --json "$OUT/scaling.json"
fi
exit "$failed"
