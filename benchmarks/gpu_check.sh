#!/usr/bin/env bash
# The prepared GPU check (issues 3, 5, 10, 19): one short run on one H100/H200, results as JSON under $OUT.
#   the Triton OT kernels against the tensor path (same results, solve and loss times; gpu_ot_kernel.py), OT pairs/s (ours vs POT batched), evaluation at K = 100 (10k gallery and 60,502 SOP-scale queries),
#   training steps of resnet50 at 224 px, batch 112: global vs DIML losses, fp32 / bf16 / channels-last / compile.
# The device machine has torch but not POT or pytorch-metric-learning: their wheels travel in .whl/ (README of the
# device tool); run from the repository root with OUT set.
set -u
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 OUT
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
ONLY=${1:-all}  # e.g. "ot train" or "kernel train-fp32": run only the steps named, or whose names start with these words
step() { local name=$1 limit=$2; shift 2
  if [ "$ONLY" != all ] && ! echo " $ONLY " | grep -q -e " ${name%%-*} " -e " $name "; then return; fi
  echo "== $name"; local t0=$(date +%s)
  timeout "$limit" "$@" 2>&1 | tail -40; echo "== $name: rc=${PIPESTATUS[0]} $(( $(date +%s) - t0 )) s"; }
step kernel 150 python3 benchmarks/gpu_ot_kernel.py
step ot 170 python3 benchmarks/gpu_ot.py
step eval 200 python3 benchmarks/gpu_eval.py
B="python3 benchmarks/bench_train.py --device cuda --backbone resnet50 --size 224 --batch 112 --steps 10"
step train-fp32 90 $B --json "$OUT/train_fp32.json"
step train-bf16 90 $B --amp --json "$OUT/train_bf16.json"
step train-bf16-cl 90 $B --amp --channels-last --json "$OUT/train_bf16_cl.json"
step train-compile 200 $B --amp --channels-last --compile --cases margin --json "$OUT/train_compile.json"
