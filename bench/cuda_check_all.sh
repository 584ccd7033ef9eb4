#!/usr/bin/env bash
# One GPU validation and benchmark pass, for a machine with an NVIDIA H100/H200 where infire is
# installed (e.g. from the abi3 wheel) beside torch, transformers and cuda-python:
#   1. the GPU tests (tests/run_gpu.sh);
#   2. bench/cuda_bench.py all, with transformers' continuous batching as the baseline;
#   3. the offline throughput again with async scheduling off (2. runs with the engine's
#      default, on: the A/B);
#   4. the decode step's GEMMs at 1..256 rows against their floor, the one-row GEMVs against
#      cuBLAS (stdout only), and the sampling kernels;
#   5. the serving bench (HTTP against in process), with and then without async scheduling.
# Writes 9 files under OUT_DIR (gpu/{gpu.txt,kernels.log,models.log,engine.log},
# cuda_all.json, throughput_sync.json, sampling.json, serve.json, serve_sync.json); progress
# goes to stdout.
# About 7 minutes on an H200, most of it writing the 16 GB checkpoint and the baseline.
#
#   bash bench/cuda_check_all.sh OUT_DIR
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash bench/cuda_check_all.sh OUT_DIR}
mkdir -p "$OUT"
status=0
bash tests/run_gpu.sh "$OUT/gpu" | grep -E "passed|failed|error|NVIDIA" || status=1
summary() { grep -E "^\| (decode\w*|ttft|throughput|startup|baseline_\w+) \|" | grep -vE \
    "prompt_tokens|max_num|requests|new_tokens|output_tokens|limit_output"; }
python3 bench/cuda_bench.py all --baseline transformers --out "$OUT/cuda_all.json" 2>&1 |
    summary || status=1
python3 bench/cuda_bench.py throughput --async-scheduling off \
    --out "$OUT/throughput_sync.json" 2>&1 | summary || status=1
python3 bench/cuda_step_profile.py gemm 2>&1 || status=1
python3 bench/gemv_bench.py 2>&1 | tail -12 || status=1
python3 bench/sampling_bench.py --out "$OUT/sampling.json" 2>&1 || status=1
bash bench/cuda_serve.sh "$OUT/serve.json" 2>&1 | tail -12 || status=1
ASYNC=0 PORT=8001 bash bench/cuda_serve.sh "$OUT/serve_sync.json" 2>&1 | tail -12 || status=1
exit $status
