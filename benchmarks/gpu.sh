#!/bin/bash
# Every GPU check in one run, the most wanted first, within a time budget (BUDGET seconds, 540 by
# default, so that it fits one 10-minute session on a rented GPU with room to spare): the CUDA
# tests, the torch Farnebäck against OpenCV, the train step at batch 32 (baseline, +TIME with given
# and with device-made flow labels, an operator profile), ours against transformers in bf16,
# compile at batch 32, the batch-8 table (every loss and backbone, checkpointing, device labels)
# and compile at batch 8, then the figures against the speed goals (gpu_summary.py). A check that
# would overrun the budget is cut short; each benchmark rewrites its JSON after every row, so what
# it measured stays.
#
# It runs from a plain copy of the repository, installed or not (the checkout goes on PYTHONPATH),
# with the machine's python3 (PYTHON to choose another); the GPU checks need torch, transformers,
# einops, OpenCV, PyYAML, safetensors and tqdm, not PyAV or grad-cam. Results and the log go to
# OUT (default benchmarks/results): 8 files. Where the copy has no git, name its commit:
#
#     OUT=/tmp/gpu BENCHMARK_COMMIT=$(git rev-parse --short HEAD) bash benchmarks/gpu.sh
#
# then copy the JSON files into benchmarks/results/ and update the README's CUDA rows from them.
set -uo pipefail # every check runs even when one fails
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results}
py=${PYTHON:-python3}
device=${DEVICE:-cuda} # DEVICE=cpu runs the same steps on tiny models: a rehearsal of the script
end=$((SECONDS + ${BUDGET:-540}))
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$out"

check() { # check NAME SECONDS COMMAND...: COMMAND for at most SECONDS, and never past the budget
    local name=$1 limit=$2 left=$((end - SECONDS)) start=$SECONDS
    shift 2
    if ((left < 20)); then
        echo "== $name: skipped (${left} s of the budget left)"
        return
    fi
    ((limit > left)) && limit=$left
    echo "== $name (at most $limit s)"
    timeout "$limit" "$@"
    echo "== $name: exit $? after $((SECONDS - start)) s"
}

{
    check environment 60 "$py" -c "import torch, transformers, cv2, einops, yaml, timematters
print('torch', torch.__version__, 'transformers', transformers.__version__, 'opencv', cv2.__version__)
print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
    check "CUDA tests" 120 "$py" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py \
        tests/test_farneback.py
    check "flow labels: torch on CUDA against OpenCV" 60 "$py" benchmarks/flow.py --device "$device" \
        --pairs 64 448 --threads none --out "$out/flow_cuda.json"
    check "train step, batch 32" 100 "$py" benchmarks/train_step.py --device "$device" --batch 32 \
        --backbones timesformer --only device-labels --profile "$out/profile_cuda_b32.txt" \
        --out "$out/train_step_cuda_b32.json"
    check "ours against transformers, bf16" 100 "$py" benchmarks/vs_transformers.py --device "$device" \
        --out "$out/vs_transformers_cuda.json"
    check "compile, batch 32" 150 "$py" benchmarks/train_step.py --device "$device" --batch 32 \
        --backbones timesformer --only compile --out "$out/train_step_cuda_b32_compile.json"
    check "train step, batch 8" 150 "$py" benchmarks/train_step.py --device "$device" --batch 8 \
        --only losses,checkpointing,device-labels --out "$out/train_step_cuda.json"
    check "compile, batch 8" 150 "$py" benchmarks/train_step.py --device "$device" --batch 8 \
        --backbones timesformer --only compile --out "$out/train_step_cuda_compile.json"
    "$py" benchmarks/gpu_summary.py "$out"
} 2>&1 | tee "$out/gpu.log"
