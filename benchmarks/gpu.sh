#!/bin/bash
# Every GPU check in one run (at most 12 minutes on one H100/H200): the CUDA tests, the train-step
# benchmark at batch 8 and 32 (losses, checkpointing, compile, device flow labels), ours vs
# transformers in bf16 and the flow benchmark on CUDA. Results: benchmarks/results/*_cuda*.json.
set -uo pipefail  # every check runs even when one fails
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results}
mkdir -p "$out"
timeout 120 python -m pytest -q -m gpu tests 2>&1 | tail -5
timeout 240 python benchmarks/train_step.py --device cuda --batch 8 --out "$out/train_step_cuda.json"
timeout 180 python benchmarks/train_step.py --device cuda --batch 32 --only options \
    --backbones timesformer --out "$out/train_step_cuda_b32.json"
timeout 90 python benchmarks/vs_transformers.py --device cuda --out "$out/vs_transformers_cuda.json"
timeout 90 python benchmarks/flow.py --device cuda --pairs 64 448 --threads 1 \
    --out "$out/flow_cuda.json"
