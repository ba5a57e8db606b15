"""Turns `bench/run-gpu.sh`'s results.jsonl into the Markdown rows of bench/RESULTS.md.

Usage: python3 bench/summarize.py OUT_DIR  (reads OUT_DIR/results.jsonl and OUT_DIR/gpu.txt)
Ratios are ours ÷ PyTorch's time (below 1 means we are faster), from the same run.
"""

import json
import sys
from pathlib import Path


def main():
    out = Path(sys.argv[1])
    rows = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines() if l.startswith("{")]
    print(f"GPU: {(out / 'gpu.txt').read_text().strip()}\n")
    parity = [r for r in rows if r["kind"] == "parity"]
    if parity:
        print("| parity (GPU vs CPU float32 reference) | rel L2 | bound | result |\n|---|---|---|---|")
        for r in parity:
            print(f"| {r['kernel']} | {r['rel_l2']:.2e} | {r['bound']:.0e} | {r['result']} |")
        print()
    print("| what | ours | PyTorch | ours ÷ PyTorch (time) |\n|---|---|---|---|")
    torch_attn = {(r["queries"], r["keys"]): r for r in rows
                  if r["kind"] == "attention" and r["backend"] == "torch_sdpa"}
    for r in rows:
        if r["kind"] == "attention" and r["backend"] != "torch_sdpa":
            t = torch_attn.get((r["queries"], r["keys"]))
            ratio = f"{r['ms'] / t['ms']:.2f}" if t else "—"
            theirs = f"{t['ms']:.1f} ms ({t['tflops']:.0f} TFLOP/s)" if t else "—"
            print(f"| attention {r['backend']}, {r['queries']}×{r['keys']} tokens, 40×128 bf16 "
                  f"(rel L2 {r['rel_l2_vs_f32']:.1e} vs f32) | {r['ms']:.1f} ms "
                  f"({r['tflops']:.0f} TFLOP/s) | {theirs} | {ratio} |")
    torch_lin = [r for r in rows if r["kind"] == "linear" and r.get("backend") == "torch"]
    for r in rows:
        if r["kind"] == "linear" and "cublaslt_bias_ms" in r:
            t = torch_lin[0] if torch_lin else None
            print(f"| linear {r['m']}×{r['k']}→{r['n']} + bias (candle matmul+add: "
                  f"{r['candle_matmul_add_ms']:.2f} ms) | {r['cublaslt_bias_ms']:.2f} ms | "
                  f"{t['ms']:.2f} ms | {r['cublaslt_bias_ms'] / t['ms']:.2f} |" if t else "")
    peaks = {r["run"]: r["mib"] for r in rows if r["kind"] == "peak_mem"}
    torch_dit = {(r["width"], r["height"], r["frames"]): r for r in rows
                 if r["kind"] == "dit" and r.get("backend", "").startswith("diffusers_eager")}
    for r in rows:
        if r["kind"] == "dit" and "forward_s" in r and "backend" not in r:
            key = (r["width"], r["height"], r["frames"])
            t = torch_dit.get(key)
            tag = f"{r['height']}"
            mem = peaks.get(f"ours-dit-{tag}")
            tmem = peaks.get(f"torch-dit-{tag}")
            print(f"| DiT A14B expert forward {r['width']}×{r['height']}×{r['frames']} "
                  f"({r['tokens']} tokens), attention {r['attention']} | {r['forward_s']:.2f} s"
                  f"{f', peak {mem / 1024:.1f} GiB (nvidia-smi)' if mem else ''} | "
                  + (f"{t['forward_s']:.2f} s, peak {t['peak_gib']:.1f} GiB allocated"
                     f"{f' / {tmem / 1024:.1f} GiB (nvidia-smi)' if tmem else ''} | "
                     f"{r['forward_s'] / t['forward_s']:.2f} |" if t else "— | — |"))
    for r in rows:
        if r["kind"] == "vae":
            print(f"| Wan2.1 VAE decode {r['width']}×{r['height']}×{r['frames']} | "
                  f"{r['decode_s']:.2f} s | (docs: 2.08 s, not this run) | — |")
        if r["kind"] == "rife":
            print(f"| RIFE ×2 {r['frames_in']}→{r['frames_out']} frames {r['width']}×{r['height']} | "
                  f"{r['seconds']:.2f} s | (docs: 1.00 s per-pair calls, not this run) | — |")


if __name__ == "__main__":
    main()
