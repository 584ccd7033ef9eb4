#!/usr/bin/env bash
# The GPU half of the test suite, for a machine with an NVIDIA GPU (H100/H200) where infire is
# installed (e.g. from the abi3 wheel) with torch, transformers and cuda-python beside it.
# CI has no GPU: `bash tests/run_all.sh` deselects these tests (pytest's `-m 'not gpu'`).
#
#   bash tests/run_gpu.sh [LOG_DIR]  # logs: LOG_DIR/{gpu.txt,<suite>.log} for each suite below
set -uo pipefail
cd "$(dirname "$0")/.."
LOG_DIR=${1:-/tmp/infire-gpu}
mkdir -p "$LOG_DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv |
    tee "$LOG_DIR/gpu.txt"
status=0
for suite in kernels fp8_kernels fp8_fused fp8_kv_kernels models long_context engine fp8 sleep node structured; do
    echo "== tests/test_gpu_$suite.py"
    python3 -m pytest -m gpu -q -p no:cacheprovider "tests/test_gpu_$suite.py" 2>&1 |
        tee "$LOG_DIR/$suite.log" | tail -25
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
done
exit $status
