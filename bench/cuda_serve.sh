#!/usr/bin/env bash
# Serving bench on the Llama-3.1-8B-shaped checkpoint (random weights, written once by
# bench/cuda_bench.py's write_checkpoint): starts `infire serve` on the GPU, runs bench/serve.py
# at a few Poisson rates and a 64-request burst (64 concurrent streams), then the same arrivals
# through infire.Engine in process, so the HTTP layer's TTFT cost is measured in one run.
# Server and in-process engine each take 45% of the GPU's memory, with the engine's default
# async scheduling (on for CUDA); ASYNC=0 turns it off in both.
#
#   [ASYNC=0] bash bench/cuda_serve.sh [OUT_JSON]      # default bench/results/serve_cuda.json
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-/tmp/llama8b-random}
OUT=${1:-bench/results/serve_cuda.json}
PORT=${PORT:-8000}
ASYNC_FLAG=()
if [ "${ASYNC:-1}" = 0 ]; then ASYNC_FLAG=(--no-async-scheduling); fi
python3 -c "import sys; sys.path.insert(0, 'bench'); from pathlib import Path
from cuda_bench import LLAMA_3_1_8B, write_checkpoint
write_checkpoint(Path('$MODEL'), LLAMA_3_1_8B)"
python3 -m infire serve --model "$MODEL" --port "$PORT" --device cuda \
    --gpu-memory-utilization 0.45 --max-num-seqs 64 ${ASYNC_FLAG[@]+"${ASYNC_FLAG[@]}"} &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
python3 - "$PORT" <<'PY'
import sys, time, urllib.request
for _ in range(600):
    try:
        if urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health").status == 200:
            sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit("the server did not become ready")
PY
GPU=$(python3 -c "import torch; print(torch.cuda.get_device_name())")
python3 bench/serve.py --url "http://127.0.0.1:$PORT" --rates 8 32 1000 --requests 64 \
    --new-tokens 128 --prompt-ids 256 --server-pid "$SERVER" \
    --machine "$GPU, $(nproc) cores" --tag cuda --out "$OUT" \
    --in-process "$MODEL" --device cuda --gpu-memory-utilization 0.45 --max-num-seqs 64 \
    ${ASYNC_FLAG[@]+"${ASYNC_FLAG[@]}"}
