#!/usr/bin/env bash
# One-shot GPU check, sized for a ~9-minute command on one H100 (see benchmarks/README.md).
# Needs: the dependency wheels in .whl/ (pip download, Python 3.12) and a copy of
# phe-dev-coco in gpu_data/ (the device machine cannot see ../shared).
# Order = priority: training throughput vs MONAI (on-device augmentation; batch 32; + torch.compile;
# CUDA graphs), validation Dice of the on-device-augmentation path, fp32 reference, inference.
# Last run (H100, 2026-11-27) had no batch-32 or CUDA-graph step: those are the next things to measure.
set -u
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1  # offline machine: skip the version check at import
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
W=/tmp/hemoseg_gpu; rm -rf "$W"; mkdir -p "$W"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src
LOG="$OUT/log.txt"
say() { echo "== $(date +%T) $*" | tee -a "$LOG"; }
bench() {  # name timeout args...
  local name=$1 t=$2; shift 2
  say "bench $name"
  timeout "$t" python3 benchmarks/bench_models.py --device cuda --no-onnx --warmup 5 --steps 40 --out "$OUT/bench_$name.json" "$@" 2>>"$LOG" | tail -8
}
say "gpu"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG"
python3 -c "import torch, monai; print('torch', torch.__version__, 'monai', monai.__version__)" 2>&1 | tee -a "$LOG"

bench bf16_device 100 --amp --augment device --jobs hemoseg:train,monai:train
bench bf16_device_b32 100 --amp --augment device --batch 32 --jobs hemoseg:train,monai:train
bench bf16_device_compile 210 --amp --augment device --compile --jobs hemoseg:train,monai:train
bench bf16_device_cudagraphs 210 --amp --augment device --compile reduce-overhead --jobs hemoseg:train

say "phe-dev-coco default preset (on-device augmentation, bf16), 30 epochs: compare 0.5368 loader bf16 / 0.5330 loader fp32"
timeout 75 python3 -m hemoseg train gpu_data/phe-dev-coco --out "$W/phe_dev" --epochs 30 --quiet 2>&1 | tail -1 | tee -a "$LOG"
cp "$W/phe_dev/history.csv" "$OUT/phe_device_30ep_history.csv" 2>/dev/null

bench fp32_device 80 --augment device --jobs hemoseg:train,monai:train
bench bf16_infer 60 --amp --jobs hemoseg:infer,monai:infer
say "done"
