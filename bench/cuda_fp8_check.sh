#!/usr/bin/env bash
# The FP8 one-row GEMVs on a GPU, in one pass: their tests, each kernel alone, then single-stream
# FP8 decode in the engine with each choice of INFIRE_FP8_GEMV, alternately, and the FP8 ready
# time. For a machine with an NVIDIA H100/H200 where infire is installed (the abi3 wheel) beside
# torch and cuda-python.
#   1. tests/test_gpu_fp8_kernels.py (gemv.cu's, gemv_fp8.cu's and gemv_fp8_mma.cu's FP8 GEMVs
#      against fp64) and tests/test_gpu_fp8_fused.py (fp8_fused.cu against the unfused kernels,
#      and through the engine);
#   2. bench/gemv_fp8_bench.py: each kernel and variant alone per projection of Llama-3.1-8B,
#      with the copy rate of the same run and a check of each output against *_fp8_m1's;
#   3. `bench/cuda_bench.py decode --quantization fp8` ROUNDS times for each of CHOICES
#      (INFIRE_FP8_GEMV: "auto" is the engine's default, by shape), interleaved;
#   4. `bench/cuda_bench.py startup --quantization fp8` (the issue's ready time, page cache hot);
#   5. tests/test_gpu_fp8.py's decode test through each GEMV, where the default model is in
#      infire's cache on the machine (`python -m infire download`), else a line saying it did not
#      run.
# Writes OUT_DIR/{gpu.txt,fp8_kernels.log,gemv_fp8.json,decode_<choice>_<round>.json,
# startup_fp8.json,fp8_decode.log}; the summary goes to stdout. About 7 minutes on an H100, a
# fifth of it writing the 16 GB checkpoint the first time. The fused kernels' throughput A/B
# (`INFIRE_FP8_FUSED=1`, kernels/cuda/NOTES.md) is another call: `bench/cuda_bench.py throughput
# --quantization fp8 --kv-cache-dtype fp8` with and without it.
#
#   bash bench/cuda_fp8_check.sh OUT_DIR [ROUNDS [CHOICES...]]   # CHOICES: auto v2 plain mma
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${1:?usage: bash bench/cuda_fp8_check.sh OUT_DIR [ROUNDS [CHOICES...]]}
ROUNDS=${2:-2}
shift $(($# < 2 ? $# : 2))
CHOICES=("$@")
[ ${#CHOICES[@]} -gt 0 ] || CHOICES=(auto v2)
mkdir -p "$OUT"
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv |
    tee "$OUT/gpu.txt"

echo "== tests/test_gpu_fp8_kernels.py tests/test_gpu_fp8_fused.py"
python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu_fp8_kernels.py \
    tests/test_gpu_fp8_fused.py >"$OUT/fp8_kernels.log" 2>&1 || status=1
tail -3 "$OUT/fp8_kernels.log"

echo "== bench/gemv_fp8_bench.py"
python3 bench/gemv_fp8_bench.py --out "$OUT/gemv_fp8.json" 2>&1 || status=1

summary() { grep -E "^\| (decode\w*|startup\w*|ceilings|weight_bytes) \|" ; }
for round in $(seq 1 "$ROUNDS"); do
    for choice in "${CHOICES[@]}"; do
        echo "== decode, INFIRE_FP8_GEMV=$choice (round $round, $(date -u +%T))"
        if [ "$choice" = auto ]; then unset INFIRE_FP8_GEMV; else export INFIRE_FP8_GEMV=$choice; fi
        python3 bench/cuda_bench.py decode --quantization fp8 \
            --out "$OUT/decode_${choice}_${round}.json" 2>&1 | summary || status=1
    done
done
unset INFIRE_FP8_GEMV

echo "== startup, --quantization fp8"
python3 bench/cuda_bench.py startup --quantization fp8 --out "$OUT/startup_fp8.json" 2>&1 |
    summary || status=1

echo "== tests/test_gpu_fp8.py, decode through each GEMV"
if python3 -c "
import sys
from infire.model_resolution import DEFAULT_MODEL_NAME, DEFAULT_MODEL_SIZE, cache_dir
p = cache_dir() / DEFAULT_MODEL_NAME
sys.exit(0 if p.is_file() and p.stat().st_size == DEFAULT_MODEL_SIZE else 1)"; then
    python3 -m pytest -m gpu -q -s -p no:cacheprovider tests/test_gpu_fp8.py -k decode \
        >"$OUT/fp8_decode.log" 2>&1 || status=1
    grep -E "decode against|passed|failed|skipped|error" "$OUT/fp8_decode.log" | tail -12
else
    echo "the default model is not in infire's cache on this machine (and it cannot be" \
        "downloaded here): not run" | tee "$OUT/fp8_decode.log"
fi
exit $status
