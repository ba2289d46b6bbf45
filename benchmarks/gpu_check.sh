#!/usr/bin/env bash
# The prepared GPU check (issues 3, 5, 10, 19, 26, 27): one short run on one H100/H200, results as JSON under $OUT.
#   the Triton OT kernels against the tensor path (same results, solve and loss times; gpu_ot_kernel.py), OT pairs/s (ours vs POT batched), evaluation at K = 100 (10k gallery and 60,502 SOP-scale queries),
#   training steps of resnet50 at 224 px, batch 112: global vs DIML losses, fp32 / bf16 / channels-last / compile (interleaved rounds: median and spread),
#   the same with deterministic kernels (issue 27: the cost of a spec's deterministic: true, against train-bf16-cl),
#   the input path (issue 26, gpu_input.py): float vs uint8 vs decoded-cache loaders feeding the resnet50 step, GPU-busy share,
#   the end-to-end smoke (issue 26, specs/gpu_smoke.yaml): the launcher, real JPEGs, one and two trials per GPU, the time
#   split and MLflow's GPU utilisation per trial (needs Ray and MLflow installed: a cluster node, not the bare device image).
# The device machine has torch but not POT or pytorch-metric-learning: their wheels travel in .whl/ (README of the
# device tool); run from the repository root with OUT set.
#   bash benchmarks/gpu_check.sh [STEPS]              e.g. "input train-compile"; default: all
#   bash benchmarks/gpu_check.sh --dry-run [STEPS]    on any machine: validate specs/gpu_smoke.yaml with the launcher's
#                                                     dry run and check that every command the steps run exists
set -u
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
if [ "$DRY" = 0 ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 OUT
ONLY=${1:-all}  # e.g. "ot train" or "kernel train-fp32": run only the steps named, or whose names start with these words
MISSING=0
step() { local name=$1 limit=$2; shift 2
  if [ "$ONLY" != all ] && ! echo " $ONLY " | grep -q -e " ${name%%-*} " -e " $name "; then return; fi
  if [ "$DRY" = 1 ]; then  # the command's program and, for python3 / bash, its script must exist
    local ok=yes; command -v "$1" >/dev/null 2>&1 || ok="no: $1 not found"
    if [ "$ok" = yes ] && { [ "$1" = python3 ] || [ "$1" = bash ]; } && [ "${2:-}" != -m ] && [ "${2:-}" != -c ] \
      && [ ! -f "${2:-}" ]; then ok="no: ${2:-} not found"; fi
    if [ "$ok" = yes ] && [ "$1" = python3 ] && [ "${2:-}" = -m ]; then
      python3 -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$3') is None)" || ok="no: module $3"
    fi
    echo "== $name (dry run, limit ${limit} s): $* -> $ok"; [ "$ok" = yes ] || MISSING=1; return; fi
  echo "== $name"; local t0=$(date +%s)
  timeout "$limit" "$@" 2>&1 | tail -40; echo "== $name: rc=${PIPESTATUS[0]} $(( $(date +%s) - t0 )) s"; }
if [ "$DRY" = 0 ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
else
  for tool in nvidia-smi; do command -v $tool >/dev/null || echo "note: $tool is not on this machine (the GPU machine has it)"; done
fi
step kernel 150 python3 benchmarks/gpu_ot_kernel.py
step ot 170 python3 benchmarks/gpu_ot.py
step eval 200 python3 benchmarks/gpu_eval.py
B="python3 benchmarks/bench_train.py --device cuda --backbone resnet50 --size 224 --batch 112 --steps 10 --rounds 3"
step train-fp32 120 $B --json "$OUT/train_fp32.json"
step train-bf16 120 $B --amp --json "$OUT/train_bf16.json"
step train-bf16-cl 120 $B --amp --channels-last --json "$OUT/train_bf16_cl.json"
step train-compile 300 $B --amp --channels-last --compile --json "$OUT/train_compile.json"
# the cost of a spec's deterministic: true (issue 27): the bf16 channels-last step again with deterministic kernels
step train-deterministic 120 $B --amp --channels-last --deterministic --cases margin --json "$OUT/train_deterministic.json"
step input 240 python3 benchmarks/gpu_input.py --workers 6
# the end-to-end smoke: digits as a CUB tree of 448 px JPEGs, then two launches of specs/gpu_smoke.yaml
SMOKE=${SMOKE_DIR:-$OUT/smoke}
export DIML_DATA=$SMOKE/data
L="python3 -m pipeline.launch specs/gpu_smoke.yaml --set tracking.uri=sqlite:///$SMOKE/mlflow.db --set tracking.artifact_location=$SMOKE/art --set launch.storage_path=$SMOKE/ray"
if [ "$DRY" = 1 ]; then
  mkdir -p "$DIML_DATA/digits_cub"  # the dry run validates the spec's data.root: an empty folder stands in
  step smoke-validate 120 python3 -m pipeline.launch specs/gpu_smoke.yaml --dry-run --assume-resources CPU=16,GPU=1
  if [ "$ONLY" = all ] || echo " $ONLY " | grep -q " smoke"; then  # the validation itself runs here too
    python3 -m pipeline.launch specs/gpu_smoke.yaml --dry-run --assume-resources CPU=16,GPU=1 \
      --set resources.gpus_per_worker=1 >/dev/null && \
    python3 -m pipeline.launch specs/gpu_smoke.yaml --dry-run --assume-resources CPU=16,GPU=1 | tail -12 \
      || { echo "specs/gpu_smoke.yaml does not validate (above)"; MISSING=1; }
  fi
  step smoke-data 120 python3 benchmarks/make_real_cub.py
  step smoke-report 60 python3 benchmarks/gpu_smoke_report.py
  [ "$MISSING" = 0 ] && echo "dry run: every command exists" || { echo "dry run: something is missing (above)"; exit 1; }
  exit 0
fi
if [ "$ONLY" != all ] && ! echo " $ONLY " | grep -q " smoke"; then exit 0; fi
if ! python3 -c "import ray, mlflow, pydantic, sklearn" 2>/dev/null; then
  echo "== smoke: skipped (needs the project's dependencies: pip install -e .[gpu-metrics] on this machine)"; exit 0
fi
[ -d "$DIML_DATA/digits_cub/CUB_200_2011" ] || \
  step smoke-data 300 python3 benchmarks/make_real_cub.py "$DIML_DATA/digits_cub" --size 448 --copies 6
step smoke-two-per-gpu 900 $L --set tracking.experiment=gpu-smoke-2pergpu
step smoke-one-per-gpu 900 $L --set tracking.experiment=gpu-smoke-1pergpu --set resources.gpus_per_worker=1
step smoke-report 60 python3 benchmarks/gpu_smoke_report.py "sqlite:///$SMOKE/mlflow.db" gpu-smoke-2pergpu gpu-smoke-1pergpu
