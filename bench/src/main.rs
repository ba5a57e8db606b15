//! `stillmotion-bench`: timings and GPU-vs-CPU parity of our kernels and models, printed as
//! one JSON object per line so `bench/run-gpu.sh` can put them beside PyTorch's numbers.
//!
//! - `parity`: every kernel and a small DiT on the GPU against the CPU float32 reference;
//! - `attention TOKENS KEYS`: each attention backend (the 8-bit one too), 40 heads × 128, bf16;
//! - `linear M K N`: a linear layer with bias, cuBLASLt epilogue against candle's matmul + add;
//! - `linear-fp8 M K N`: the FP8 GEMM for float8 weights against the bf16 and dequantize paths;
//! - `gguf`: GGUF weights of every Wan type on the GPU against the CPU, timed (see [`gguf`]);
//! - `rife FLOWNET WIDTH HEIGHT FRAMES`: RIFE ×2 of a clip with the real weights, f32 one pair
//!   per pass, f16 one pair per pass, f16 batched from the free memory (see [`bench_rife`]);
//! - `dit WIDTH HEIGHT FRAMES`: one full Wan2.2-I2V-A14B expert forward, random weights, bf16;
//! - `dit-accuracy WIDTH HEIGHT FRAMES`: that forward with each attention backend, timed, and
//!   each output against the default backend's;
//! - `e2e DIR WIDTH HEIGHT FRAMES FLOWNET`: two whole 4-step renders with RIFE ×2 through the
//!   engine thread, from real-size fp8_scaled model files written into `DIR` (see [`e2e`]).
//!
//! Built by `cargo xtask bench-gpu`, run on a GPU machine. Nothing here asserts a timing.

mod block_parts;
mod e2e;
mod fp8;
mod gguf;
mod model_files;
mod random_weights;
mod report;

use std::time::Instant;

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use stillmotion_engine::wan::weights::to_original_layout;
use stillmotion_engine::wan::{Config, WanModel};
use stillmotion_kernels::attention::{
    INT8_MIN_KEYS, Int8Kernel, attention, int8_chosen, int8_explicit, int8_reference, reference,
};
use stillmotion_kernels::glue::{self, Modulation};
use stillmotion_kernels::linear::{Epilogue, linear};
use stillmotion_kernels::{AttentionBackend, AttentionChoice, Kernels};

use report::{
    BF16_BOUND, Checks, DIT_BOUND, INT8_EMULATION_BOUND, INT8_EXACT_BOUND, Line, cosine, rel_l1,
    rel_l2,
};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: usize| -> anyhow::Result<usize> {
        args.get(i).map_or(Ok(default), |s| {
            s.parse().with_context(|| format!("argument {s:?}"))
        })
    };
    let device = Device::new_cuda(0).context("this benchmark needs a CUDA device")?;
    let kernels = Kernels::for_device(&device, &stillmotion_engine::device::kernel_options())?;
    Line::new("setup")
        .text("kernels", &kernels.describe())
        .print();
    match args.first().map(String::as_str) {
        Some("parity") => parity(&device, &kernels),
        Some("gguf") => gguf::run_all(&device, &kernels, std::path::Path::new("tests/golden")),
        Some("attention") => {
            let tokens = number(1, 32_760)?;
            bench_attention(&device, &kernels, tokens, number(2, tokens)?)
        }
        Some("linear") => bench_linear(
            &device,
            &kernels,
            number(1, 32_760)?,
            number(2, 5120)?,
            number(3, 5120)?,
        ),
        Some("block-parts") => block_parts::run(&device, &kernels, number(1, 32_760)?),
        Some("gemm-algorithms") => bench_gemm_algorithms(
            &device,
            &kernels,
            (number(1, 32_760)?, number(2, 5120)?, number(3, 5120)?),
            args.get(4).is_some_and(|a| a == "gelu"),
        ),
        Some("linear-fp8") => fp8::bench(
            &device,
            &kernels,
            number(1, 32_760)?,
            number(2, 5120)?,
            number(3, 5120)?,
        ),
        Some("vae") => bench_vae(&device, number(1, 832)?, number(2, 480)?, number(3, 81)?),
        Some("rife") => bench_rife(
            &device,
            args.get(1).map(String::as_str),
            number(2, 832)?,
            number(3, 480)?,
            number(4, 81)?,
        ),
        Some("dit") => bench_dit(
            &device,
            &kernels,
            number(1, 832)?,
            number(2, 480)?,
            number(3, 81)?,
            args.get(4).map(String::as_str),
            args.get(5).map(|s| s.parse::<usize>()).transpose()?,
        ),
        Some("dit-accuracy") => dit_accuracy(
            &device,
            &kernels,
            (number(1, 832)?, number(2, 480)?, number(3, 81)?),
        ),
        Some("e2e") => e2e::run(
            std::path::Path::new(
                args.get(1)
                    .context("e2e needs a folder for the model files")?,
            ),
            u32::try_from(number(2, 832)?)?,
            u32::try_from(number(3, 480)?)?,
            u32::try_from(number(4, 81)?)?,
            args.get(5).map(std::path::Path::new),
            &args
                .iter()
                .skip(6)
                .map(|a| a.parse::<f64>().with_context(|| format!("budget {a:?}")))
                .collect::<anyhow::Result<Vec<_>>>()?,
        ),
        _ => bail!(
            "usage: stillmotion-bench parity | gguf | attention TOKENS [KEYS] | linear M K N | gemm-algorithms M K N [gelu] | block-parts TOKENS | linear-fp8 M K N | vae WIDTH HEIGHT FRAMES | rife FLOWNET WIDTH HEIGHT FRAMES | dit WIDTH HEIGHT FRAMES [auto|cudnn|flash|int8|int8pv16] [RESIDENT_BLOCKS] | dit-accuracy WIDTH HEIGHT FRAMES | e2e DIR WIDTH HEIGHT FRAMES [FLOWNET [BUDGET_GIB...]]"
        ),
    }
}

/// Seconds per call of `f`, after one warm-up call, over `iterations`.
fn time(
    device: &Device,
    iterations: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    f()?;
    device.synchronize()?;
    let start = Instant::now();
    for _ in 0..iterations {
        f()?;
    }
    device.synchronize()?;
    Ok(start.elapsed().as_secs_f64() / iterations as f64)
}

fn randn(shape: &[usize], device: &Device, dtype: DType) -> anyhow::Result<Tensor> {
    Ok(Tensor::randn(0f32, 1.0, shape, device)?.to_dtype(dtype)?)
}

/// The 16-bit attention backends this GPU has.
fn backends(kernels: &Kernels, device: &Device) -> Vec<(AttentionChoice, &'static str)> {
    let mut list = vec![(AttentionChoice::Flash, "ours")];
    if kernels
        .with_attention(AttentionChoice::Auto)
        .attention_backend(device)
        == AttentionBackend::Cudnn
    {
        list.insert(0, (AttentionChoice::Cudnn, "cudnn"));
    }
    list
}

/// One attention implementation called on q, k, v.
type AttentionRun<'a> = dyn Fn(&Tensor, &Tensor, &Tensor) -> anyhow::Result<Tensor> + 'a;

/// Our 8-bit attention: with FP8 P·V where the GPU has it, and with 16-bit P·V.
const INT8_BACKENDS: [(AttentionChoice, &str, bool); 2] = [
    (AttentionChoice::Int8, "int8", true),
    (AttentionChoice::Int8Pv16, "int8_pv16", false),
];

fn bench_attention(
    device: &Device,
    kernels: &Kernels,
    tokens: usize,
    keys: usize,
) -> anyhow::Result<()> {
    let (heads, dim) = (40, 128);
    let q = randn(&[1, tokens, heads, dim], device, DType::BF16)?;
    let k = randn(&[1, keys, heads, dim], device, DType::BF16)?;
    let v = randn(&[1, keys, heads, dim], device, DType::BF16)?;
    // The float32 reference on the first 256 queries (all keys).
    let rows = tokens.min(256);
    let expected = reference::attention(&q.narrow(1, 0, rows)?, &k, &v)?;
    let flops = 4.0 * (heads * tokens * keys * dim) as f64;
    // Explicit kernels first: our mma.sync kernel with 64- and 128-row blocks (128 is "ours"
    // off Hopper) and the wgmma kernel built for one block an SM ("ours" on Hopper is two);
    // then each backend the attention function picks.
    let mut runs: Vec<(&str, Box<AttentionRun<'_>>)> = vec![
        (
            "ours_m64",
            Box::new(|q, k, v| {
                Ok(stillmotion_kernels::attention::flash_with_block_rows(
                    kernels, q, k, v, 64,
                )?)
            }),
        ),
        (
            "ours_mma_m128",
            Box::new(|q, k, v| {
                Ok(stillmotion_kernels::attention::flash_with_block_rows(
                    kernels, q, k, v, 128,
                )?)
            }),
        ),
        (
            "ours_wgmma_x1",
            Box::new(|q, k, v| {
                Ok(stillmotion_kernels::attention::flash_wgmma(
                    kernels, q, k, v, 1,
                )?)
            }),
        ),
        (
            "ours_pipelined",
            Box::new(|q, k, v| {
                Ok(stillmotion_kernels::attention::flash_pipelined(
                    kernels, q, k, v, false,
                )?)
            }),
        ),
        (
            "ours_pipelined_pingpong",
            Box::new(|q, k, v| {
                Ok(stillmotion_kernels::attention::flash_pipelined(
                    kernels, q, k, v, true,
                )?)
            }),
        ),
        (
            "int8_mma_fp8",
            Box::new(|q, k, v| {
                Ok(int8_explicit(
                    kernels,
                    q,
                    k,
                    v,
                    Int8Kernel::MmaSync {
                        fp8_pv: true,
                        block_rows: 64,
                    },
                )?)
            }),
        ),
        (
            "int8_pipelined_lockstep",
            Box::new(|q, k, v| {
                let kernel = Int8Kernel::Pipelined { ping_pong: false };
                Ok(int8_explicit(kernels, q, k, v, kernel)?)
            }),
        ),
        (
            "int8_pipelined",
            Box::new(|q, k, v| {
                let kernel = Int8Kernel::Pipelined { ping_pong: true };
                Ok(int8_explicit(kernels, q, k, v, kernel)?)
            }),
        ),
    ];
    let int8 = INT8_BACKENDS
        .iter()
        .map(|&(choice, name, _)| (choice, name));
    for (choice, name) in backends(kernels, device).into_iter().chain(int8) {
        let kernels = kernels.with_attention(choice);
        runs.push((
            name,
            Box::new(move |q, k, v| Ok(attention(&kernels, q, k, v)?)),
        ));
    }
    for (name, run) in &runs {
        // A kernel this GPU lacks (wgmma off Hopper) is left out.
        let Ok(out) = run(&q, &k, &v) else { continue };
        let out = out.narrow(1, 0, rows)?;
        let iterations = if tokens > 50_000 { 3 } else { 10 };
        let seconds = time(device, iterations, || {
            run(&q, &k, &v)?;
            Ok(())
        })?;
        Line::new("attention")
            .text("backend", name)
            .int("queries", tokens)
            .int("keys", keys)
            .num("ms", seconds * 1e3)
            .num("tflops", flops / seconds / 1e12)
            .num("rel_l2_vs_f32", rel_l2(&out, &expected)?)
            .num("cos_vs_f32", cosine(&out, &expected)?)
            .print();
    }
    // What the 8-bit path's pre-pass (quantizing q, k, v) takes of its time.
    let kernel = int8_chosen(kernels, &q, true)?;
    let seconds = time(device, 10, || {
        Ok(stillmotion_kernels::attention::int8_prepass(
            kernels, &q, &k, &v, kernel,
        )?)
    })?;
    Line::new("attention")
        .text("backend", "int8_prepass_only")
        .int("queries", tokens)
        .int("keys", keys)
        .num("ms", seconds * 1e3)
        .print();
    Ok(())
}

fn bench_linear(
    device: &Device,
    kernels: &Kernels,
    m: usize,
    k: usize,
    n: usize,
) -> anyhow::Result<()> {
    let x = randn(&[m, k], device, DType::BF16)?;
    let w = (randn(&[n, k], device, DType::F32)? * 0.02)?.to_dtype(DType::BF16)?;
    let b = randn(&[n], device, DType::BF16)?;
    let ours = linear(kernels, &x, &w, Some(&b), Epilogue::None)?;
    let candle = x.matmul(&w.t()?)?.broadcast_add(&b)?;
    let error = rel_l2(&ours, &candle)?;
    let flops = 2.0 * (m * k * n) as f64;
    let fused = time(device, 10, || {
        linear(kernels, &x, &w, Some(&b), Epilogue::None)?;
        Ok(())
    })?;
    let plain = time(device, 10, || {
        x.matmul(&w.t()?)?.broadcast_add(&b)?;
        Ok(())
    })?;
    Line::new("linear")
        .int("m", m)
        .int("k", k)
        .int("n", n)
        .num("cublaslt_bias_ms", fused * 1e3)
        .num("candle_matmul_add_ms", plain * 1e3)
        .num("tflops", flops / fused / 1e12)
        .num("rel_l2_vs_candle", error)
        .print();
    Ok(())
}

/// Every cuBLASLt algorithm the heuristic proposes for one layer's GEMM, timed, beside what
/// `linear` (the heuristic's first) takes: whether choosing by measurement would pay.
fn bench_gemm_algorithms(
    device: &Device,
    kernels: &Kernels,
    (m, k, n): (usize, usize, usize),
    gelu: bool,
) -> anyhow::Result<()> {
    let x = randn(&[m, k], device, DType::BF16)?;
    let w = (randn(&[n, k], device, DType::F32)? * 0.02)?.to_dtype(DType::BF16)?;
    let b = randn(&[n], device, DType::BF16)?;
    let epilogue = if gelu {
        Epilogue::GeluTanh
    } else {
        Epilogue::None
    };
    let ours = time(device, 20, || {
        linear(kernels, &x, &w, Some(&b), epilogue)?;
        Ok(())
    })?;
    let flops = 2.0 * (m * k * n) as f64;
    let timings = stillmotion_kernels::linear::gemm_algorithm_timings(
        kernels,
        (&x, &w, &b),
        epilogue,
        16,
        20,
    )?;
    for t in &timings {
        Line::new("gemm-algorithm")
            .int("m", m)
            .int("k", k)
            .int("n", n)
            .text("epilogue", if gelu { "gelu_bias" } else { "bias" })
            .int("index", t.index)
            .num("ms", t.ms)
            .num("tflops", flops / (t.ms * 1e-3) / 1e12)
            .int("workspace_bytes", t.workspace_bytes)
            .num("waves", f64::from(t.waves))
            .print();
    }
    Line::new("gemm-algorithm")
        .int("m", m)
        .int("k", k)
        .int("n", n)
        .text("algorithm", "linear (cudarc, heuristic first)")
        .num("ms", ours * 1e3)
        .num("tflops", flops / ours / 1e12)
        .print();
    Ok(())
}

/// adaLN parameters for the parity inputs: one entry per sample of 300 tokens.
fn modulation<'a>(shift: &'a Tensor, scale: &'a Tensor) -> Modulation<'a> {
    Modulation {
        shift,
        scale,
        rows_per_entry: 300,
    }
}

/// Every kernel on the GPU against its CPU reference on the same inputs.
/// An 8-bit attention output against the CPU emulation of the same inputs with FP8 or 16-bit
/// P·V and the kernel's softmax tile.
fn int8_against_emulation(
    checks: &mut Checks,
    label: &str,
    out: &Tensor,
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    fp8_pv: bool,
    softmax_keys: usize,
) -> anyhow::Result<()> {
    let on_cpu = |t: &Tensor| t.to_device(&Device::Cpu);
    let emulated = int8_reference::int8_attention(
        &on_cpu(q)?,
        &on_cpu(k)?,
        &on_cpu(v)?,
        fp8_pv,
        softmax_keys,
    )?;
    checks.check(label, rel_l2(out, &emulated)?, INT8_EMULATION_BOUND);
    Ok(())
}

fn parity(device: &Device, kernels: &Kernels) -> anyhow::Result<()> {
    let mut checks = Checks::default();
    let cpu = Kernels::cpu();
    let on_cpu = |t: &Tensor| -> anyhow::Result<Tensor> { Ok(t.to_device(&Device::Cpu)?) };
    let (rows, cols) = (2 * 300, 1024);
    let x = randn(&[2, 300, cols], device, DType::F32)?;
    let shift = (randn(&[2, cols], device, DType::F32)? * 0.1)?;
    let scale = (randn(&[2, cols], device, DType::F32)? * 0.1)?;
    let w = randn(&[cols], device, DType::F32)?;
    let b = randn(&[cols], device, DType::F32)?;
    let gpu_out = glue::layer_norm_modulate(
        kernels,
        &x,
        Some((&w, &b)),
        Some(modulation(&shift, &scale)),
        1e-6,
        DType::F32,
    )?;
    let (xc, sc, cc, wc, bc) = (
        on_cpu(&x)?,
        on_cpu(&shift)?,
        on_cpu(&scale)?,
        on_cpu(&w)?,
        on_cpu(&b)?,
    );
    let cpu_out = glue::layer_norm_modulate(
        &cpu,
        &xc,
        Some((&wc, &bc)),
        Some(modulation(&sc, &cc)),
        1e-6,
        DType::F32,
    )?;
    checks.check("layer_norm_modulate f32", rel_l2(&gpu_out, &cpu_out)?, 1e-5);
    let gpu_bf16 = glue::layer_norm_modulate(
        kernels,
        &x,
        None,
        Some(modulation(&shift, &scale)),
        1e-6,
        DType::BF16,
    )?;
    let cpu_plain = glue::layer_norm_modulate(
        &cpu,
        &xc,
        None,
        Some(modulation(&sc, &cc)),
        1e-6,
        DType::F32,
    )?;
    checks.check(
        "layer_norm_modulate bf16 out",
        rel_l2(&gpu_bf16, &cpu_plain)?,
        BF16_BOUND,
    );

    let y = randn(&[2, 300, cols], device, DType::BF16)?;
    let gpu_res = glue::gated_residual(kernels, &x, &y, Some((&scale, 300)))?;
    let cpu_res = glue::gated_residual(&cpu, &xc, &on_cpu(&y)?, Some((&cc, 300)))?;
    checks.check("gated_residual", rel_l2(&gpu_res, &cpu_res)?, 1e-5);

    let xr = randn(&[rows, cols], device, DType::F32)?;
    let gpu_rms = glue::rms_norm(kernels, &xr, &w, 1e-6)?;
    let cpu_rms = glue::rms_norm(&cpu, &on_cpu(&xr)?, &wc, 1e-6)?;
    checks.check("rms_norm f32", rel_l2(&gpu_rms, &cpu_rms)?, 1e-5);

    // The VAE's channel norm (+ SiLU): float32 against the CPU's candle ops, and bf16 out.
    let frames = randn(&[3, 96, 37, 53], device, DType::F32)?;
    let gamma = randn(&[96, 1, 1, 1], device, DType::F32)?;
    let on_cpu_frames = on_cpu(&frames)?;
    for silu in [false, true] {
        let expected =
            glue::channel_rms_norm(&cpu, &on_cpu_frames, &on_cpu(&gamma)?, 96f64.sqrt(), silu)?;
        let gpu = glue::channel_rms_norm(kernels, &frames, &gamma, 96f64.sqrt(), silu)?;
        checks.check(
            &format!("channel_rms_norm f32 silu {silu}"),
            rel_l2(&gpu, &expected)?,
            1e-5,
        );
        let gpu = glue::channel_rms_norm(
            kernels,
            &frames.to_dtype(DType::BF16)?,
            &gamma.to_dtype(DType::BF16)?,
            96f64.sqrt(),
            silu,
        )?;
        checks.check(
            &format!("channel_rms_norm bf16 silu {silu}"),
            rel_l2(&gpu, &expected)?,
            BF16_BOUND,
        );
    }

    let q = randn(&[2, 300, 8, 128], device, DType::F32)?;
    let cos = randn(&[300, 64], device, DType::F32)?.cos()?;
    let sin = randn(&[300, 64], device, DType::F32)?.sin()?;
    let gpu_rope = glue::rope(kernels, &q, &cos, &sin)?;
    let cpu_rope = glue::rope(&cpu, &on_cpu(&q)?, &on_cpu(&cos)?, &on_cpu(&sin)?)?;
    checks.check("rope f32", rel_l2(&gpu_rope, &cpu_rope)?, 1e-5);

    // The fused passes against the kernels they replace (bit for bit) and the CPU.
    let wq = randn(&[8 * 128], device, DType::F32)?;
    for dtype in [DType::BF16, DType::F32] {
        let qd = q.to_dtype(dtype)?;
        let fused = glue::rms_norm_rope(kernels, &qd, &wq, 1e-6, (&cos, &sin))?;
        let normed = glue::rms_norm(kernels, &qd.reshape((2, 300, 8 * 128))?, &wq, 1e-6)?;
        let apart = glue::rope(kernels, &normed.reshape((2, 300, 8, 128))?, &cos, &sin)?;
        checks.check(
            &format!("rms_norm_rope {dtype:?} vs rms_norm then rope (bit-exact)"),
            rel_l2(&fused, &apart)?,
            0.0,
        );
        let on_cpu_fused = glue::rms_norm_rope(
            &cpu,
            &on_cpu(&qd)?,
            &on_cpu(&wq)?,
            1e-6,
            (&on_cpu(&cos)?, &on_cpu(&sin)?),
        )?;
        let bound = if dtype == DType::F32 {
            1e-5
        } else {
            BF16_BOUND
        };
        checks.check(
            &format!("rms_norm_rope {dtype:?} vs CPU"),
            rel_l2(&fused, &on_cpu_fused)?,
            bound,
        );
    }
    let gate = randn(&[2, cols], device, DType::F32)?;
    for dtype in [DType::BF16, DType::F32] {
        let y = randn(&[2, 300, cols], device, dtype)?;
        for (name, gated, affine, modulated) in [
            ("gate + affine", true, true, false),
            ("modulation", false, false, true),
        ] {
            let gate = gated.then_some((&gate, 300));
            let affine = affine.then_some((&w, &b));
            let modulation = modulated.then(|| modulation(&shift, &scale));
            let (fx, fh) =
                glue::residual_norm(kernels, (&x, &y, gate), affine, modulation, 1e-6, dtype)?;
            let ax = glue::gated_residual(kernels, &x, &y, gate)?;
            let ah = glue::layer_norm_modulate(kernels, &ax, affine, modulation, 1e-6, dtype)?;
            checks.check(
                &format!("residual_norm {dtype:?} {name}: stream vs gated_residual (bit-exact)"),
                rel_l2(&fx, &ax)?,
                0.0,
            );
            checks.check(
                &format!("residual_norm {dtype:?} {name}: norm vs layer_norm_modulate (bit-exact)"),
                rel_l2(&fh, &ah)?,
                0.0,
            );
        }
    }

    for (k_len, d) in [(300, 128), (77, 64), (1000, 128), (100, 128)] {
        let q = randn(&[2, 300, 8, d], device, DType::BF16)?;
        let k = randn(&[2, k_len, 8, d], device, DType::BF16)?;
        let v = randn(&[2, k_len, 8, d], device, DType::BF16)?;
        let expected = reference::attention(&on_cpu(&q)?, &on_cpu(&k)?, &on_cpu(&v)?)?;
        if d == 128 {
            match stillmotion_kernels::attention::flash_wgmma(kernels, &q, &k, &v, 2) {
                Ok(out) => checks.check(
                    &format!("attention ours_wgmma keys {k_len} d {d}"),
                    rel_l2(&out, &expected)?,
                    BF16_BOUND,
                ),
                Err(e) => Line::new("note").text("wgmma", &e.to_string()).print(),
            }
            for (ping_pong, name) in [(false, "pipelined"), (true, "pipelined ping-pong")] {
                match stillmotion_kernels::attention::flash_pipelined(
                    kernels, &q, &k, &v, ping_pong,
                ) {
                    Ok(out) => checks.check(
                        &format!("attention ours_{name} keys {k_len} d {d}"),
                        rel_l2(&out, &expected)?,
                        BF16_BOUND,
                    ),
                    Err(e) => Line::new("note").text(name, &e.to_string()).print(),
                }
            }
            // The f16 build of the pipelined kernel (its TMA maps and products by type).
            let half = |x: &Tensor| x.to_dtype(DType::F16);
            let (qh, kh, vh) = (half(&q)?, half(&k)?, half(&v)?);
            let expected_half = reference::attention(&on_cpu(&qh)?, &on_cpu(&kh)?, &on_cpu(&vh)?)?;
            match stillmotion_kernels::attention::flash_pipelined(kernels, &qh, &kh, &vh, false) {
                Ok(out) => checks.check(
                    &format!("attention ours_pipelined f16 keys {k_len} d {d}"),
                    rel_l2(&out, &expected_half)?,
                    BF16_BOUND,
                ),
                Err(e) => Line::new("note")
                    .text("pipelined f16", &e.to_string())
                    .print(),
            }
        }
        let out64 = stillmotion_kernels::attention::flash_with_block_rows(kernels, &q, &k, &v, 64)?;
        checks.check(
            &format!("attention ours_m64 keys {k_len} d {d}"),
            rel_l2(&out64, &expected)?,
            BF16_BOUND,
        );
        for (choice, name) in backends(kernels, device) {
            let out = attention(&kernels.with_attention(choice), &q, &k, &v)?;
            checks.check(
                &format!("attention {name} keys {k_len} d {d}"),
                rel_l2(&out, &expected)?,
                BF16_BOUND,
            );
        }
    }
    // The 8-bit kernel runs from INT8_MIN_KEYS keys on (shorter ones take the 16-bit path).
    for (k_len, d) in [(INT8_MIN_KEYS + 52, 128), (INT8_MIN_KEYS + 1, 64)] {
        let q = randn(&[2, 300, 8, d], device, DType::BF16)?;
        let k = randn(&[2, k_len, 8, d], device, DType::BF16)?;
        let v = randn(&[2, k_len, 8, d], device, DType::BF16)?;
        let expected = reference::attention(&on_cpu(&q)?, &on_cpu(&k)?, &on_cpu(&v)?)?;
        // From PIPELINED_MIN_KEYS keys on, `auto` runs our pipelined kernel on Hopper.
        let auto = attention(&kernels.with_attention(AttentionChoice::Auto), &q, &k, &v)?;
        checks.check(
            &format!("attention auto keys {k_len} d {d}"),
            rel_l2(&auto, &expected)?,
            BF16_BOUND,
        );
        for (choice, name, fp8) in INT8_BACKENDS {
            let kernels = kernels.with_attention(choice);
            let fp8 =
                fp8 && kernels.attention_backend(device) == AttentionBackend::Int8 { fp8_pv: true };
            let out = attention(&kernels, &q, &k, &v)?;
            let tile = int8_chosen(&kernels, &q, fp8)?;
            int8_against_emulation(
                &mut checks,
                &format!(
                    "attention {name} (fp8 P·V {fp8}) keys {k_len} d {d} vs its CPU emulation"
                ),
                &out,
                (&q, &k, &v),
                fp8,
                tile.softmax_keys(),
            )?;
            checks.check(
                &format!("attention {name} (fp8 P·V {fp8}) keys {k_len} d {d} vs exact f32"),
                rel_l2(&out, &expected)?,
                INT8_EXACT_BOUND,
            );
        }
        // Both FP8 main kernels explicitly (wgmma on Hopper only, head dim 128).
        let fp8_kernels = [
            (
                "mma.sync",
                Int8Kernel::MmaSync {
                    fp8_pv: true,
                    block_rows: 64,
                },
            ),
            (
                "pipelined lockstep",
                Int8Kernel::Pipelined { ping_pong: false },
            ),
            ("pipelined", Int8Kernel::Pipelined { ping_pong: true }),
        ];
        for (name, kernel) in fp8_kernels {
            // A kernel this GPU or head size lacks is noted, not checked.
            let out = match int8_explicit(kernels, &q, &k, &v, kernel) {
                Ok(out) => out,
                Err(e) => {
                    Line::new("note").text(name, &e.to_string()).print();
                    continue;
                }
            };
            int8_against_emulation(
                &mut checks,
                &format!("attention int8 {name} fp8 P·V keys {k_len} d {d} vs its CPU emulation"),
                &out,
                (&q, &k, &v),
                true,
                kernel.softmax_keys(),
            )?;
        }
        // The f16 build of the pipelined 8-bit kernel.
        let half = |x: &Tensor| x.to_dtype(DType::F16);
        let (qh, kh, vh) = (half(&q)?, half(&k)?, half(&v)?);
        let kernel = Int8Kernel::Pipelined { ping_pong: false };
        match int8_explicit(kernels, &qh, &kh, &vh, kernel) {
            Ok(out) => int8_against_emulation(
                &mut checks,
                &format!("attention int8 pipelined f16 keys {k_len} d {d} vs its CPU emulation"),
                &out,
                (&qh, &kh, &vh),
                true,
                kernel.softmax_keys(),
            )?,
            Err(e) => Line::new("note")
                .text("pipelined f16", &e.to_string())
                .print(),
        }
    }

    let image = randn(&[2, 8, 37, 53], device, DType::F32)?;
    let flow = (randn(&[2, 2, 37, 53], device, DType::F32)? * 6.0)?;
    let gpu_warp = stillmotion_kernels::warp::backward_warp_with(kernels, &image, &flow)?;
    let cpu_warp = stillmotion_kernels::warp::backward_warp(&on_cpu(&image)?, &on_cpu(&flow)?)?;
    checks.check(
        "backward_warp (bit-exact)",
        rel_l2(&gpu_warp, &cpu_warp)?,
        0.0,
    );
    // Half dtypes: the kernel blends in f32 and rounds once, as the CPU path does.
    for dtype in [DType::F16, DType::BF16] {
        let (image, flow) = (image.to_dtype(dtype)?, flow.to_dtype(dtype)?);
        let gpu_warp = stillmotion_kernels::warp::backward_warp_with(kernels, &image, &flow)?;
        let cpu_warp = stillmotion_kernels::warp::backward_warp(&on_cpu(&image)?, &on_cpu(&flow)?)?;
        checks.check(
            &format!("backward_warp {dtype:?} (bit-exact)"),
            rel_l2(&gpu_warp, &cpu_warp)?,
            0.0,
        );
    }

    let x = randn(&[300, 512], device, DType::BF16)?;
    let w = (randn(&[768, 512], device, DType::F32)? * 0.05)?.to_dtype(DType::BF16)?;
    let b = randn(&[768], device, DType::BF16)?;
    for (epilogue, name) in [
        (Epilogue::None, "linear bias"),
        (Epilogue::GeluTanh, "linear bias gelu"),
    ] {
        let gpu = linear(kernels, &x, &w, Some(&b), epilogue)?;
        let reference = linear(
            &cpu,
            &on_cpu(&x)?.to_dtype(DType::F32)?,
            &on_cpu(&w)?.to_dtype(DType::F32)?,
            Some(&on_cpu(&b)?.to_dtype(DType::F32)?),
            epilogue,
        )?;
        checks.check(name, rel_l2(&gpu, &reference)?, BF16_BOUND);
    }
    // float8 made on the CPU: candle's CUDA casts to and from float8 are broken (see kernels/fp8).
    let w8 = Tensor::randn(0_f32, 1.0, (512, 384), &Device::Cpu)?
        .to_dtype(DType::F8E4M3)?
        .to_device(device)?;
    {
        for (dtype, bound) in [(DType::F32, 1e-6), (DType::BF16, 4e-3)] {
            let gpu = stillmotion_kernels::fp8::dequantize(kernels, &w8, 0.03, dtype)?;
            let reference =
                stillmotion_kernels::fp8::dequantize(&cpu, &on_cpu(&w8)?, 0.03, DType::F32)?;
            checks.check(
                &format!("fp8 dequantize {dtype:?}"),
                rel_l2(&gpu.to_dtype(DType::F32)?, &reference)?,
                bound,
            );
        }
    }
    fp8::parity(device, kernels, &mut checks)?;
    fp8::lora_requant_parity(device, kernels, &mut checks)?;
    fp8::lora_fused_parity(device, kernels, &mut checks)?;
    conv_parity(device, kernels, &mut checks)?;
    dit_parity(device, &mut checks)?;
    checks.finish()
}

/// cuDNN's convolution (TF32 in float32, tensor cores in bf16) against the CPU reference, and
/// a small Wan VAE decode on the GPU (its convolutions through cuDNN) against the CPU.
fn conv_parity(device: &Device, kernels: &Kernels, checks: &mut Checks) -> anyhow::Result<()> {
    use stillmotion_engine::wan_vae::{Config as VaeConfig, WanVae};
    use stillmotion_kernels::conv::{ConvGeometry, ConvWeight, conv3d_frames, fused_available};
    if !fused_available(kernels, device) {
        Line::new("skip")
            .text("check", "conv3d: cuDNN is not loaded")
            .print();
        return Ok(());
    }
    let on_cpu = |t: &Tensor| -> anyhow::Result<Tensor> { Ok(t.to_device(&Device::Cpu)?) };
    let cpu = Kernels::cpu();
    let down = ConvGeometry {
        pre_padding: [0, 0, 0],
        post_padding: [0, 1, 1],
        stride: [1, 2, 2],
    };
    let cases = [
        (
            "causal 3x3x3",
            [5, 96, 30, 52],
            [64, 96, 3, 3, 3],
            ConvGeometry::spatial_padding(1),
        ),
        (
            "downsample 3x3 s2",
            [3, 64, 31, 40],
            [64, 64, 1, 3, 3],
            down,
        ),
    ];
    for (name, xs, ws, geometry) in cases {
        for (dtype, bound) in [(DType::F32, 1e-5), (DType::BF16, BF16_BOUND)] {
            let x = randn(&xs, device, dtype)?;
            let w = (randn(&ws, device, DType::F32)? * 0.05)?.to_dtype(dtype)?;
            let b = randn(&ws[..1], device, dtype)?;
            let gpu = conv3d_frames(kernels, &x, &ConvWeight::new(&w)?, Some(&b), geometry)?;
            let f32 =
                |t: &Tensor| -> anyhow::Result<Tensor> { Ok(on_cpu(t)?.to_dtype(DType::F32)?) };
            let reference = conv3d_frames(
                &cpu,
                &f32(&x)?,
                &ConvWeight::new(&f32(&w)?)?,
                Some(&f32(&b)?),
                geometry,
            )?;
            checks.check(
                &format!("conv3d {name} {dtype:?}"),
                rel_l2(&gpu, &reference)?,
                bound,
            );
        }
    }

    let weights = random_weights::state_dict_from(&VaeConfig::wan21())?;
    let build = |device: &Device| -> anyhow::Result<WanVae> {
        let vb = VarBuilder::from_tensors(weights.clone(), DType::F32, device);
        Ok(WanVae::new(&VaeConfig::wan21(), &vb)?)
    };
    let latents = Tensor::randn(0_f32, 1.0, (16, 3, 12, 16), &Device::Cpu)?;
    let started = Instant::now();
    let gpu = build(device)?.decode(&latents.to_device(device)?)?;
    Line::new("progress")
        .text("step", "vae decode on the GPU")
        .num("secs", started.elapsed().as_secs_f64())
        .print();
    let reference = build(&Device::Cpu)?.decode(&latents)?;
    Line::new("progress")
        .text("step", "vae decode on the CPU")
        .num("secs", started.elapsed().as_secs_f64())
        .print();
    checks.check(
        "vae decode f32 (cuDNN float32 convs)",
        rel_l2(&gpu, &reference)?,
        1e-4,
    );
    Ok(())
}

/// A small DiT (2 blocks, 128-wide heads) in bf16 on the GPU against float32 on the CPU, same
/// weights and inputs.
fn dit_parity(device: &Device, checks: &mut Checks) -> anyhow::Result<()> {
    let cfg = Config {
        dim: 256,
        ffn_dim: 512,
        num_heads: 2,
        num_layers: 2,
        text_dim: 64,
        text_len: 32,
        ..Config::i2v_a14b()
    };
    let weights = random_weights::state_dict(&cfg, &Device::Cpu, DType::F32, 7)?;
    let cpu_model = WanModel::from_state_dict(&cfg, weights.clone(), DType::F32, &Device::Cpu)?;
    let x = randn(&[1, 16, 5, 16, 16], &Device::Cpu, DType::F32)?;
    let y = randn(&[1, 20, 5, 16, 16], &Device::Cpu, DType::F32)?;
    let t = Tensor::new(&[900f32], &Device::Cpu)?;
    let context = randn(&[1, 20, 64], &Device::Cpu, DType::F32)?;
    let expected = cpu_model.forward(&x, Some(&y), &t, &context)?;
    for (choice, name) in [
        (AttentionChoice::Auto, "auto"),
        (AttentionChoice::Flash, "ours"),
    ] {
        let gpu_model = WanModel::from_state_dict(&cfg, weights.clone(), DType::BF16, device)?;
        let gpu_model = gpu_model
            .clone()
            .with_kernels(gpu_model.kernels().with_attention(choice));
        let to = |t: &Tensor| t.to_device(device);
        let out = gpu_model.forward(&to(&x)?, Some(&to(&y)?), &to(&t)?, &to(&context)?)?;
        checks.check(
            &format!("dit 2 blocks bf16 gpu vs f32 cpu, attention {name}"),
            rel_l2(&out, &expected)?,
            DIT_BOUND,
        );
    }
    // Block swapping: 4 blocks, 1 resident and 3 streamed through two slots, against the
    // same weights resident; the arithmetic is the same, so only a copy racing a block's
    // kernels (or landing in the wrong slot) can make a difference.
    let cfg = Config {
        num_layers: 4,
        ..cfg
    };
    let weights = to_original_layout(random_weights::state_dict(&cfg, device, DType::BF16, 8)?)?;
    let vb = VarBuilder::from_tensors(weights, DType::BF16, device);
    let resident = WanModel::new(&cfg, &vb)?;
    let streamed = WanModel::new_streamed(&cfg, &vb, Some(1))?;
    let to = |t: &Tensor| t.to_device(device);
    let (x, y, t, context) = (to(&x)?, to(&y)?, to(&t)?, to(&context)?);
    let expected = resident.forward(&x, Some(&y), &t, &context)?;
    for round in 0..3 {
        let out = streamed.forward(&x, Some(&y), &t, &context)?;
        checks.check(
            &format!("dit 4 blocks bf16, 3 streamed vs resident, pass {round}"),
            rel_l2(&out, &expected)?,
            0.0,
        );
    }
    Ok(())
}

fn attention_choice_named(name: Option<&str>) -> AttentionChoice {
    match name {
        Some("flash" | "ours") => AttentionChoice::Flash,
        Some("cudnn") => AttentionChoice::Cudnn,
        Some("int8") => AttentionChoice::Int8,
        Some("int8pv16") => AttentionChoice::Int8Pv16,
        _ => AttentionChoice::Auto,
    }
}

/// One full expert forward at the real shapes with each attention backend on the same
/// weights and inputs: time, and the output's error against the default backend's (the
/// end-to-end accuracy of an attention on the DiT's own activations).
fn dit_accuracy(
    device: &Device,
    kernels: &Kernels,
    (width, height, frames): (usize, usize, usize),
) -> anyhow::Result<()> {
    let cfg = Config::i2v_a14b();
    let weights = random_weights::state_dict(&cfg, device, DType::BF16, 11)?;
    let vb = VarBuilder::from_tensors(to_original_layout(weights)?, DType::BF16, device);
    let model = WanModel::new(&cfg, &vb)?;
    drop(vb);
    let (t_lat, h_lat, w_lat) = ((frames - 1) / 4 + 1, height / 8, width / 8);
    let x = randn(&[1, 16, t_lat, h_lat, w_lat], device, DType::F32)?;
    let y = randn(&[1, 20, t_lat, h_lat, w_lat], device, DType::F32)?;
    let t = Tensor::new(&[900f32], device)?;
    let context = (randn(&[1, 512, cfg.text_dim], device, DType::F32)? * 0.1)?;
    let mut baseline: Option<Tensor> = None;
    for name in ["auto", "flash", "int8", "int8pv16"] {
        let model = model
            .clone()
            .with_kernels(kernels.with_attention(attention_choice_named(Some(name))));
        let mut out = None;
        let seconds = time(device, 1, || {
            out = Some(model.forward(&x, Some(&y), &t, &context)?);
            Ok(())
        })?;
        let out = out.context("no forward ran")?.to_dtype(DType::F32)?;
        let mut line = Line::new("dit_accuracy")
            .text("attention", name)
            .text(
                "backend",
                &format!("{:?}", model.kernels().attention_backend(device)),
            )
            .int("width", width)
            .int("height", height)
            .int("frames", frames)
            .num("forward_s", seconds);
        if let Some(base) = &baseline {
            line = line
                .num("rel_l2_vs_auto", rel_l2(&out, base)?)
                .num(
                    "rel_l1_vs_auto",
                    rel_l1(
                        &out.to_device(&Device::Cpu)?,
                        &base.to_device(&Device::Cpu)?,
                    )?,
                )
                .num("cos_vs_auto", cosine(&out, base)?);
        } else {
            baseline = Some(out);
        }
        line.print();
    }
    Ok(())
}

fn bench_dit(
    device: &Device,
    kernels: &Kernels,
    width: usize,
    height: usize,
    frames: usize,
    attention_choice: Option<&str>,
    resident_blocks: Option<usize>,
) -> anyhow::Result<()> {
    let cfg = Config::i2v_a14b();
    let choice = attention_choice_named(attention_choice);
    let load = Instant::now();
    let weights = random_weights::state_dict(&cfg, device, DType::BF16, 11)?;
    // With resident blocks given, the others stream from pinned host memory (block swapping);
    // the random weights are made on the GPU, copied to the host block by block, then freed.
    let vb = VarBuilder::from_tensors(to_original_layout(weights)?, DType::BF16, device);
    let model = WanModel::new_streamed(&cfg, &vb, resident_blocks)?
        .with_kernels(kernels.with_attention(choice));
    drop(vb);
    device.synchronize()?;
    let load_seconds = load.elapsed().as_secs_f64();
    let (t_lat, h_lat, w_lat) = ((frames - 1) / 4 + 1, height / 8, width / 8);
    let x = randn(&[1, 16, t_lat, h_lat, w_lat], device, DType::F32)?;
    let y = randn(&[1, 20, t_lat, h_lat, w_lat], device, DType::F32)?;
    let t = Tensor::new(&[900f32], device)?;
    let context = (randn(&[1, 512, cfg.text_dim], device, DType::F32)? * 0.1)?;
    let seconds = time(device, 2, || {
        model.forward(&x, Some(&y), &t, &context)?;
        Ok(())
    })?;
    Line::new("dit")
        .text("model", "Wan2.2-I2V-A14B expert, random weights, bf16")
        .int("width", width)
        .int("height", height)
        .int("frames", frames)
        .int("tokens", t_lat * (h_lat / 2) * (w_lat / 2))
        .text(
            "attention",
            // The choice and what it resolves to for half tensors; under `Auto` on Hopper the
            // long self-attention runs our pipelined kernel (PIPELINED_MIN_KEYS).
            &format!(
                "{:?} ({:?})",
                model.kernels().attention_choice(),
                model.kernels().attention_backend(device)
            ),
        )
        .int("streamed_blocks", model.streamed_blocks().0)
        .num("pinned_gb", model.streamed_blocks().1 as f64 / 1e9)
        .num("forward_s", seconds)
        .num("build_s", load_seconds)
        .print();
    Ok(())
}

/// The Wan2.1 VAE (random weights at the real shapes) decoding one clip's latents: float32
/// (the dtype diffusers' reference run uses) with cuDNN and with candle's convolutions, and
/// bf16 (the pipeline's GPU path), with the bf16 frames' PSNR against the float32 ones.
fn bench_vae(device: &Device, width: usize, height: usize, frames: usize) -> anyhow::Result<()> {
    use stillmotion_engine::wan_vae::{Config as VaeConfig, WanVae};
    let cfg = VaeConfig::wan21();
    let weights = random_weights::state_dict_from(&cfg)?;
    let build = |dtype: DType| -> anyhow::Result<WanVae> {
        let vb = VarBuilder::from_tensors(weights.clone(), dtype, device);
        Ok(WanVae::new(&cfg, &vb)?)
    };
    let fused = build(DType::F32)?;
    let bf16 = build(DType::BF16)?;
    let latents = randn(
        &[16, (frames - 1) / 4 + 1, height / 8, width / 8],
        device,
        DType::F32,
    )?;
    // cuDNN convolutions (when loaded), then candle's (im2col + GEMM) on the same weights.
    let candle_convs = fused.clone().with_kernels(Kernels::cpu());
    let mut outputs = Vec::new();
    for (vae, convs, dtype) in [
        (&fused, "cudnn", "f32"),
        (&candle_convs, "candle", "f32"),
        (&bf16, "cudnn", "bf16"),
    ] {
        let mut out = None;
        let seconds = time(device, 1, || {
            out = Some(vae.decode(&latents)?.to_dtype(DType::F32)?);
            Ok(())
        })?;
        Line::new("vae")
            .text("model", "Wan2.1 VAE decode, random weights, untiled")
            .text("dtype", dtype)
            .text("convs", convs)
            .int("width", width)
            .int("height", height)
            .int("frames", frames)
            .num("decode_s", seconds)
            .print();
        if convs == "cudnn" {
            outputs.extend(out);
        }
    }
    if let [f32_frames, bf16_frames] = outputs.as_slice() {
        // Frames in [-1, 1]: a peak-to-peak of 2.
        let mse = (bf16_frames - f32_frames)?
            .sqr()?
            .mean_all()?
            .to_scalar::<f32>()?;
        Line::new("vae-precision")
            .text("compare", "bf16 decode vs f32 decode, random weights")
            .num("psnr_db", 10.0 * (4.0 / f64::from(mse)).log10())
            .num("rel_l2", rel_l2(bf16_frames, f32_frames)?)
            .print();
    }
    // Where the bf16 decode's time goes (each part synchronised, so the sum runs a little over).
    let (_, times) = bf16.decode_profiled(&latents)?;
    for (part, total, calls) in times.entries() {
        Line::new("vae-profile")
            .text("part", part)
            .int("calls", *calls)
            .num("total_s", total.as_secs_f64())
            .print();
    }
    Ok(())
}

/// RIFE ×2 of a clip with the real weights, frames in and out as RGB8 (what the app does):
/// f32 one pair per pass (the old path), f16 one pair per pass, and f16 in batches sized
/// from the free memory less the default reserve (what the `interpolate` command does), each
/// timed over the whole clip after a warm-up run; then once more with a [`StageClock`] (the
/// device synchronized at each stage, so slower than the plain run) for where the time goes
/// (a `rife-stages` line and a table on stderr); then the f16 frames' PSNR against f32's.
fn bench_rife(
    device: &Device,
    weights: Option<&str>,
    width: usize,
    height: usize,
    frames: usize,
) -> anyhow::Result<()> {
    use stillmotion_engine::rife::{
        FrameLayout, InterpolationContext, InterpolationSettings, Rife, RifeStage, StageClock,
        interpolate,
    };
    let weights = std::path::Path::new(weights.context("rife needs the path of flownet.pkl")?);
    // A gradient that drifts a little each frame: similar frames, so no pair is a scene cut.
    let clip: Vec<image::RgbImage> = (0..frames)
        .map(|f| {
            image::RgbImage::from_fn(width as u32, height as u32, |x, y| {
                let v = (x + y + 3 * f as u32) % 256;
                image::Rgb([v as u8, (255 - v) as u8, ((x * 7 + f as u32) % 256) as u8])
            })
        })
        .collect();
    let layout = FrameLayout::new(width, height, None)?;
    let free = stillmotion_engine::gpu_memory::GpuMemoryReader::open()
        .and_then(|reader| reader.read())
        .context("reading the GPU's free memory")?
        .free_bytes;
    let reserve =
        (stillmotion_engine::recipe::DEFAULT_RESERVE_VRAM_GB * (1u64 << 30) as f64) as u64;
    let mut outputs = Vec::new();
    for (dtype, batched) in [(DType::F32, false), (DType::F16, false), (DType::F16, true)] {
        let rife = Rife::load_in(weights, device, dtype)?;
        let budget = batched.then(|| free.saturating_sub(reserve));
        // Scene cuts on, as in the app (runs before 26 had them off): their signatures are
        // part of the time.
        let settings = InterpolationSettings {
            memory_budget: budget,
            ..InterpolationSettings::with_multiplier(2)
        };
        let not_cancelled = || false;
        let mut progress = |_| {};
        let mut run = |clock: Option<&mut StageClock>| -> anyhow::Result<Vec<image::RgbImage>> {
            let mut ctx = InterpolationContext {
                is_cancelled: &not_cancelled,
                on_progress: &mut progress,
                clock,
            };
            Ok(interpolate(&rife, &clip, &settings, &mut ctx)?)
        };
        run(None)?;
        device.synchronize()?;
        let start = Instant::now();
        let out = run(None)?;
        device.synchronize()?;
        let seconds = start.elapsed().as_secs_f64();
        let mut clock = StageClock::new(device);
        run(Some(&mut clock))?;
        let mut stages = Line::new("rife-stages")
            .text("dtype", &format!("{dtype:?}").to_lowercase())
            .int("batch", rife.batch_for_budget(&layout, budget))
            .int("width", width)
            .int("height", height)
            .int("frames_in", frames);
        eprintln!(
            "RIFE x2 {width}x{height}, {frames} frames, {dtype:?}, batch {}: stages (device synchronized at each)",
            rife.batch_for_budget(&layout, budget)
        );
        for stage in RifeStage::ALL {
            let stage_seconds = clock.total(stage).as_secs_f64();
            stages = stages.num(&format!("{}_s", stage.name()), stage_seconds);
            eprintln!(
                "  {:<11} {:>9.2} ms  {:>5.1} %",
                stage.name(),
                stage_seconds * 1e3,
                100.0 * stage_seconds / clock.sum().as_secs_f64().max(1e-12)
            );
        }
        eprintln!(
            "  {:<11} {:>9.2} ms  (plain run: {:.2} ms)",
            "total",
            clock.sum().as_secs_f64() * 1e3,
            seconds * 1e3
        );
        stages
            .num("clocked_s", clock.sum().as_secs_f64())
            .num("plain_s", seconds)
            .print();
        Line::new("rife")
            .text(
                "model",
                &format!("RIFE {} x2, real weights", rife.version()),
            )
            .text("dtype", &format!("{dtype:?}").to_lowercase())
            .int("batch", rife.batch_for_budget(&layout, budget))
            .int("width", width)
            .int("height", height)
            .int("frames_in", frames)
            .int("frames_out", out.len())
            .num("seconds", seconds)
            .print();
        outputs.push(out);
    }
    if let [full, _, half] = outputs.as_slice() {
        let (mut squared, mut count) = (0.0_f64, 0_usize);
        for (a, b) in full.iter().zip(half) {
            for (&p, &q) in a.as_raw().iter().zip(b.as_raw()) {
                squared += (f64::from(p) - f64::from(q)).powi(2);
            }
            count += a.as_raw().len();
        }
        let mse = squared / count.max(1) as f64;
        Line::new("rife-precision")
            .text("compare", "f16 batched frames vs f32 frames, RGB8")
            .num("psnr_db", 10.0 * (255.0 * 255.0 / mse.max(1e-10)).log10())
            .print();
    }
    Ok(())
}
