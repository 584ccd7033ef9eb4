#!/usr/bin/env bash
# Same-run A/B of two builds on one GPU: `python bench/cuda_bench.py all` (decode, TTFT,
# offline throughput with the host CPU, start-up) alternately on wheel A and wheel B, ROUNDS
# times (A B, then B A, ...), with the same engine sizes on both (256 sequences, 8192 tokens:
# an older build's defaults differ). Each run's JSON and log go to OUT_DIR; the summary rows to
# stdout. Installs each wheel with pip (--no-deps) before its run, so run it where replacing the
# installed infire is fine.
#
#   bash bench/cuda_ab.sh A.whl B.whl OUT_DIR [ROUNDS [CUDA_BENCH_ARGS...]]
#
# Arguments after ROUNDS go to every `cuda_bench.py all` run (e.g. `--quantization fp8
# --kv-cache-dtype fp8` for an A/B of the FP8 path).
set -uo pipefail
cd "$(dirname "$0")/.."
A=${1:?usage: bash bench/cuda_ab.sh A.whl B.whl OUT_DIR [ROUNDS]}
B=${2:?usage}
OUT=${3:?usage}
ROUNDS=${4:-2}
shift $(($# < 4 ? $# : 4))
EXTRA=("$@")
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
summary() { grep -E "^\| (decode\w*|ttft|throughput|startup\w*|cpu\w*) " ; }
run() { # label wheel round
    python3 -m pip install --no-deps --force-reinstall -q "$2" || return 1
    echo "== $1 (round $3, $(date -u +%T))"
    python3 bench/cuda_bench.py all --max-num-seqs 256 --max-num-batched-tokens 8192 \
        "${EXTRA[@]}" --out "$OUT/$1_$3.json" > "$OUT/$1_$3.log" 2>&1
    summary < "$OUT/$1_$3.log"
}
status=0
for round in $(seq 1 "$ROUNDS"); do
    if [ $((round % 2)) -eq 1 ]; then order="A B"; else order="B A"; fi
    for side in $order; do
        wheel=$A; [ "$side" = B ] && wheel=$B
        run "$side" "$wheel" "$round" || status=1
    done
done
exit $status
