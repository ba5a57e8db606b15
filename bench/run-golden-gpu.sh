#!/usr/bin/env bash
# Runs the golden cases on the GPU machine in f32, bf16 and f16 (DTYPES="..." to choose), from
# the repository root, after `cargo xtask bench-gpu` staged bench/stage/golden/ (carry it and
# bench/stage/flownet.pkl). Writes each run's table to $OUT/<dtype>.txt and a summary line here.
set -u
OUT=${OUT:-/tmp/stillmotion-golden}
mkdir -p "$OUT"
TORCH_SITE=/opt/torch/.venv/lib/python3.12/site-packages
export LD_LIBRARY_PATH=$TORCH_SITE/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
export STILLMOTION_CUDNN_LIBRARY=${STILLMOTION_CUDNN_LIBRARY:-$TORCH_SITE/nvidia/cudnn/lib/libcudnn.so.9}
BIN=/tmp/stillmotion-golden-bin
xz -dc bench/stage/golden/golden.xz > "$BIN" && chmod +x "$BIN"
# The cases from this checkout (the harness's build-time folder does not exist here).
export STILLMOTION_GOLDEN_DIRS=$PWD/tests/golden STILLMOTION_GOLDEN_DEVICE=cuda RUST_BACKTRACE=1
export STILLMOTION_RIFE_WEIGHTS=${STILLMOTION_RIFE_WEIGHTS:-$PWD/bench/stage/flownet.pkl}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
for d in ${DTYPES:-f32 bf16 f16}; do
  start=$(date +%s)
  STILLMOTION_GOLDEN_DTYPE=$d timeout 300 "$BIN" --nocapture > "$OUT/$d.txt" 2>&1
  echo "$d rc=$? $(( $(date +%s) - start ))s: $(grep 'test result' "$OUT/$d.txt" | tr '\n' ' ')"
  echo "  rows passing: $(grep -c '| yes$' "$OUT/$d.txt"), failing: $(grep -c '| NO$' "$OUT/$d.txt")"
  grep '| NO$' "$OUT/$d.txt" | sort -u | head -30
done
