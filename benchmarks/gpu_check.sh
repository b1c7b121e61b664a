#!/usr/bin/env bash
# One-shot GPU check, sized for a 10-minute lease on one H100 (see benchmarks/README.md).
# Needs: the dependency wheels in .whl/ (pip download, Python 3.12) and a copy of
# phe-dev-coco in gpu_data/ (the device machine cannot see ../shared).
# Order = priority: throughput vs MONAI, the 3-minute phe-dev-coco run, fp32 vs bf16 Dice, compile.
set -u
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1  # offline machine: skip the version check at import
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
W=/tmp/hemoseg_gpu; rm -rf "$W"; mkdir -p "$W"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src
LOG="$OUT/log.txt"
say() { echo "== $(date +%T) $*" | tee -a "$LOG"; }
say "gpu"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG"
python3 -c "import torch, monai, albumentations, pycocotools, hemoseg.cli.main; print('torch', torch.__version__, 'monai', monai.__version__)" 2>&1 | tee -a "$LOG"

say "bench bf16+channels_last"
timeout 110 python3 benchmarks/bench_models.py --device cuda --amp --no-onnx --warmup 5 --out "$OUT/bench_bf16.json" 2>>"$LOG" | tail -25

say "phe-dev-coco default preset, 3 min"
timeout 250 python3 -m hemoseg train gpu_data/phe-dev-coco --out "$W/phe" --epochs 400 --max-minutes 3 --quiet 2>&1 | tail -3 | tee -a "$LOG"
timeout 60 python3 -m hemoseg evaluate "$W/phe" gpu_data/phe-dev-coco --split valid --quiet 2>&1 | tail -4 | tee -a "$LOG"
cp "$W/phe/history.csv" "$OUT/phe_history.csv"; cp "$W/phe/train.log" "$OUT/phe_train.log"
cp "$W/phe/eval-valid/metrics.json" "$OUT/phe_valid_metrics.json"

say "bench fp32"
timeout 90 python3 benchmarks/bench_models.py --device cuda --no-onnx --warmup 5 --out "$OUT/bench_fp32.json" 2>>"$LOG" | tail -12

say "phe 30 epochs: bf16 vs fp32 (same seed, same data)"
for p in bf16 fp32; do
  flag=""; [ $p = fp32 ] && flag="--fp32"
  timeout 60 python3 -m hemoseg train gpu_data/phe-dev-coco --out "$W/phe_$p" --epochs 30 $flag --quiet 2>&1 | tail -1 | sed "s/^/$p: /" | tee -a "$LOG"
done

say "bench bf16 + torch.compile"
timeout 130 python3 benchmarks/bench_models.py --device cuda --amp --compile --no-onnx --warmup 5 --out "$OUT/bench_bf16_compile.json" 2>>"$LOG" | tail -12
say "done"
