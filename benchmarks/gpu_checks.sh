#!/usr/bin/env bash
# The GPU measurements the issues ask for, as one script (each step time-boxed; outputs to $OUT or ./gpu_results):
#   network forward per variant, inference at full width on [24, 512, 512] against the nnU-Net-style reference,
#   training s/iteration at the paper's batch 2 x [16, 320, 320], and (optional) the real rectal case round trip.
# Usage on a CUDA machine from the repository root:  bash benchmarks/gpu_checks.sh [--with-real-case]
set -u
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
  echo "== $name finished in $((SECONDS - start)) s (exit ${PIPESTATUS[0]})"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, SimpleITK as s; print('torch', torch.__version__, torch.cuda.get_device_name(0), 'SimpleITK', s.Version_VersionString())"

step network 120 $PY benchmarks/network.py --device cuda --repeats 5 --warmup 2
step inference 200 $PY benchmarks/inference.py --device cuda --base-channels 32
step training 120 $PY benchmarks/training.py --device cuda --batch-size 2 --patch 16 320 320 --base-channels 32 \
  --iterations 20 --warmup 3
if [ "${1:-}" = "--with-real-case" ]; then
  step real_case 240 $PY benchmarks/real_case.py --device cuda --base-channels 32 --spacing 3 0.86 0.86 \
    --patch 16 160 160 --epochs 40 --iterations-per-epoch 25
fi
