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
    rife_rows(rows, peaks)


def rife_rows(rows, peaks):
    """Ours f32 one pair per pass against PyTorch's f32 one pair per call, ours f16 (one pair
    per pass, then batched) against PyTorch's fp16 batches; docs figures where PyTorch did not
    run."""
    theirs = {r["dtype"]: r for r in rows if r["kind"] == "rife" and r.get("backend") == "torch"}
    for r in rows:
        if r["kind"] != "rife" or r.get("backend") == "torch":
            continue
        dtype = r.get("dtype", "f32")
        t = theirs.get("float32" if dtype == "f32" else "float16")
        docs = "1.00 s per-pair calls" if dtype == "f32" else "0.116 s in fp16 batches of 16"
        how = f"{dtype}, batch {r.get('batch', 1)}"
        theirs_text = (f"{t['seconds']:.3f} s ({t['mode']}"
                       f"{'' if t.get('finite', True) else ', NaN output'})" if t
                       else f"(docs: {docs}, not this run)")
        ratio = f"{r['seconds'] / t['seconds']:.2f}" if t else "—"
        print(f"| RIFE ×2 {r['frames_in']}→{r['frames_out']} frames {r['width']}×{r['height']}, "
              f"{how} | {r['seconds']:.3f} s | {theirs_text} | {ratio} |")
    for r in rows:
        if r["kind"] == "rife-precision":
            who = "PyTorch" if r.get("backend") == "torch" else "ours"
            print(f"| RIFE {who}: {r['compare']} | PSNR {r['psnr_db']:.1f} dB | | |")
    stages = [r for r in rows if r["kind"] == "rife-stages"]
    if stages:
        names = [k[:-2] for k in stages[0] if k.endswith("_s") and k not in ("clocked_s", "plain_s")]
        print()
        print("| RIFE stages (device synchronized at each) | " + " | ".join(names) + " | clocked | plain |")
        print("|---" * (len(names) + 3) + "|")
        for r in stages:
            cells = [f"{r[n + '_s'] * 1e3:.1f} ms" for n in names]
            print(f"| {r['width']}×{r['height']}×{r['frames_in']}, {r['dtype']}, batch {r['batch']} | "
                  + " | ".join(cells) + f" | {r['clocked_s']:.3f} s | {r['plain_s']:.3f} s |")
        print()
    for tag in ("ours-rife-480", "torch-rife-480"):
        if tag in peaks:
            print(f"| RIFE peak device memory, {tag} (nvidia-smi, whole process) | "
                  f"{peaks[tag] / 1024:.1f} GiB | | |")


if __name__ == "__main__":
    main()
