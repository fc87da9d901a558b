#!/usr/bin/env bash
# The attention, training and serving benchmarks on a GPU, in one call of under 10 minutes.
#
# Prepare here (wheels the GPU image lacks, and a copy of the datasets, both git-ignored):
#   bash benchmarks/prepare_gpu_carry.sh
# then run on the lent machine from the repo root, carrying .whl and .gpu_data:
#   bash benchmarks/gpu.sh          # everything (~8 min on an H100; timeouts cap it at 560 s)
#   bash benchmarks/gpu.sh quick    # training benchmark on ML-100K only (~2 min)
# Tables go to stdout and, with JSON, to $OUT (default benchmarks/results/gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
export RECATTN_SHARED_DATA=${RECATTN_SHARED_DATA:-$PWD/.gpu_data}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__, jax.devices())' | tee -a "$OUT/gpu.txt"

if [ "${1:-full}" = quick ]; then
  timeout 150 python3 benchmarks/train_bench.py --datasets ml-100k --epochs 5 \
    --variants padded/reference packed/auto packed/auto/bf16 --out "$OUT/train_gpu.json" | tee "$OUT/train.txt"
  exit
fi
timeout 180 python3 benchmarks/attention_bench.py --masks causal local padded \
  --impls reference xla cudnn pallas blockwise auto --max-run-gib 24 | tee "$OUT/attention.txt"
timeout 240 python3 benchmarks/train_bench.py --datasets ml-100k amazon-sports --epochs 15 \
  --variants padded/reference padded/auto packed/reference packed/auto packed/auto/bf16 \
  --out "$OUT/train_gpu.json" | tee "$OUT/train.txt"
timeout 140 python3 benchmarks/serving_bench.py --quick --skip-recbole --skip-http --out "$OUT/serving_gpu.json" | tee "$OUT/serving.txt"
