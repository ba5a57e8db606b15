//! The FP8 GEMM for float8 weights (`kernels::linear::linear_fp8`): `linear-fp8 M K N` times it
//! against the bf16 GEMM and today's dequantize-then-bf16 path, and [`parity`] checks it
//! against its CPU definition. [`lora_requant_parity`] checks the LoRA merge into float8
//! layers and its stochastic requantization on the device against the CPU's, and
//! [`lora_fused_parity`] a LoRA on the fly fused into the bf16 and FP8 GEMMs against the
//! unfused layer.

use candle_core::{DType, Device, Tensor};
use stillmotion_kernels::Kernels;
use stillmotion_kernels::fp8::{dequantize, quantize_activation};
use stillmotion_kernels::linear::{
    Epilogue, Fp8Weight, LowRank, fp8_gemm, linear, linear_fp8, linear_fp8_low_rank,
    linear_fp8_reference, linear_low_rank,
};

use crate::report::{BF16_BOUND, Checks, Line, rel_l2};
use crate::{randn, time};

/// The GPU FP8 GEMM against its CPU definition in float32 (no final rounding). Both quantize x
/// to the same e4m3 bits (checked bit-exact below), every e4m3 × e4m3 product is exact in
/// float32, and the sums differ only in order (~1e-6); what remains is the GEMM's one rounding
/// of each output to bf16, at most 2⁻⁹ = 1.95e-3 of the value, so at most that in rel L2.
const FP8_BF16_BOUND: f64 = 2.5e-3;
/// The same for float16 output: 2⁻¹² = 2.4e-4 of each value.
const FP8_F16_BOUND: f64 = 5e-4;

/// A Wan-like float8 weight `[n, k]` stored as ComfyUI's fp8_scaled files do (made on the
/// CPU: candle's CUDA casts to float8 are broken), with its scale, on `device`.
fn fp8_weight(n: usize, k: usize, device: &Device) -> anyhow::Result<(Tensor, f64)> {
    let w = (Tensor::randn(0_f32, 1.0, (n, k), &Device::Cpu)? * 0.02)?;
    let amax = w.abs()?.max_all()?.to_scalar::<f32>()?;
    let scale = f64::from(amax / 448.0);
    let stored = w.affine(1.0 / scale, 0.0)?.to_dtype(DType::F8E4M3)?;
    Ok((stored.to_device(device)?, scale))
}

/// `linear-fp8 M K N`: the FP8 GEMM (activation quantization included) with bias against the
/// bf16 GEMM with bias (cuBLASLt epilogue, weight already bf16) and the dequantize+bf16 path
/// (the weight dequantized at every call, today's path for float8 files), each with its rel
/// L2 against the float32 product of the first rows with the weight as stored.
pub fn bench(
    device: &Device,
    kernels: &Kernels,
    m: usize,
    k: usize,
    n: usize,
) -> anyhow::Result<()> {
    let x = randn(&[m, k], device, DType::BF16)?;
    let b = randn(&[n], device, DType::BF16)?;
    let (stored, scale) = fp8_weight(n, k, device)?;
    let weight = Fp8Weight {
        weight: &stored,
        scale,
        input_scale: None,
    };
    let bf16_w = dequantize(kernels, &stored, scale, DType::BF16)?;
    let rows = m.min(256);
    let exact = x
        .narrow(0, 0, rows)?
        .to_dtype(DType::F32)?
        .matmul(&dequantize(kernels, &stored, scale, DType::F32)?.t()?)?
        .broadcast_add(&b.to_dtype(DType::F32)?)?;
    let head = |y: &Tensor| -> anyhow::Result<f64> { rel_l2(&y.narrow(0, 0, rows)?, &exact) };
    let flops = 2.0 * (m * k * n) as f64;
    let run_fp8 = |epilogue| fp8_gemm(kernels, &x, weight, Some(&b), epilogue, DType::BF16);
    let fp8 = run_fp8(Epilogue::None)?;
    let bf16 = linear(kernels, &x, &bf16_w, Some(&b), Epilogue::None)?;
    let bf16_ms = 1e3
        * time(device, 10, || {
            linear(kernels, &x, &bf16_w, Some(&b), Epilogue::None)?;
            Ok(())
        })?;
    let dequantize_ms = 1e3
        * time(device, 10, || {
            let w = dequantize(kernels, &stored, scale, DType::BF16)?;
            linear(kernels, &x, &w, Some(&b), Epilogue::None)?;
            Ok(())
        })?;
    let mut line = Line::new("linear_fp8")
        .int("m", m)
        .int("k", k)
        .int("n", n)
        .text("fp8_gemm", fp8.as_ref().err().map_or("yes", String::as_str))
        .num("bf16_ms", bf16_ms)
        .num("dequantize_bf16_ms", dequantize_ms)
        .num("bf16_tflops", flops / bf16_ms / 1e9)
        .num("rel_l2_bf16_vs_f32", head(&bf16)?);
    if let Ok(fp8) = fp8 {
        let fp8_ms = 1e3
            * time(device, 10, || {
                run_fp8(Epilogue::None)?.map_err(anyhow::Error::msg)?;
                Ok(())
            })?;
        let gelu_ms = 1e3
            * time(device, 10, || {
                run_fp8(Epilogue::GeluTanh)?.map_err(anyhow::Error::msg)?;
                Ok(())
            })?;
        let quantize_ms = 1e3
            * time(device, 10, || {
                quantize_activation(kernels, &x, None)?;
                Ok(())
            })?;
        line = line
            .num("fp8_ms", fp8_ms)
            .num("fp8_gelu_ms", gelu_ms)
            .num("quantize_ms", quantize_ms)
            .num("fp8_tflops", flops / fp8_ms / 1e9)
            .num("speedup_vs_bf16", bf16_ms / fp8_ms)
            .num("speedup_vs_dequantize_bf16", dequantize_ms / fp8_ms)
            .num("rel_l2_fp8_vs_f32", head(&fp8)?)
            .num("rel_l2_fp8_vs_bf16", rel_l2(&fp8, &bf16)?);
    }
    line.print();
    Ok(())
}

/// The FP8 GEMM on the GPU against [`linear_fp8_reference`], the activation quantization
/// bit for bit against the CPU's, and the fallback where cuBLASLt's FP8 rules do not hold.
pub fn parity(device: &Device, kernels: &Kernels, checks: &mut Checks) -> anyhow::Result<()> {
    let cpu = Device::Cpu;
    // Quantization: vector kernels (n a multiple of 8) and scalar ones, dynamic and file scales.
    for (shape, dtype, input_scale) in [
        ((300, 512), DType::BF16, None),
        ((300, 512), DType::F16, Some(0.01_f32)),
        ((3, 37), DType::BF16, None),
        ((7, 64), DType::F32, None),
    ] {
        let x = (randn(&[shape.0, shape.1], device, dtype)? * 3.0)?;
        let gpu = quantize_activation(kernels, &x, input_scale)?;
        let reference = quantize_activation(&Kernels::cpu(), &x.to_device(&cpu)?, input_scale)?;
        let values =
            |t: &Tensor| -> anyhow::Result<Tensor> { Ok(t.to_device(&cpu)?.to_dtype(DType::F32)?) };
        let name = format!("fp8 quantize {dtype:?} {shape:?} input scale {input_scale:?}");
        checks.check(
            &format!("{name} (bit-exact)"),
            rel_l2(&values(&gpu.values)?, &values(&reference.values)?)?,
            0.0,
        );
        checks.check(
            &format!("{name}: scale"),
            rel_l2(&gpu.scale, &reference.scale)?,
            0.0,
        );
    }
    // The GEMM: odd M, bias or none, GELU or none, bf16 and f16, file input scale or none.
    let mut ran = false;
    for (m, k, n, dtype, epilogue, bias, input_scale) in [
        (300, 512, 768, DType::BF16, Epilogue::None, true, None),
        (300, 512, 768, DType::BF16, Epilogue::GeluTanh, true, None),
        (77, 256, 128, DType::BF16, Epilogue::GeluTanh, false, None),
        (77, 256, 128, DType::BF16, Epilogue::None, false, Some(0.02)),
        (300, 512, 768, DType::F16, Epilogue::None, true, None),
    ] {
        let x = randn(&[1, m, k], device, dtype)?;
        let b = randn(&[n], device, dtype)?;
        let (stored, scale) = fp8_weight(n, k, device)?;
        let weight = Fp8Weight {
            weight: &stored,
            scale,
            input_scale,
        };
        let bias = bias.then_some(&b);
        let name = format!(
            "linear fp8 {m}×{k}→{n} {dtype:?} {epilogue:?} bias {} input scale {input_scale:?}",
            bias.is_some()
        );
        let gpu = match fp8_gemm(kernels, &x, weight, bias, epilogue, dtype)? {
            Ok(gpu) => gpu,
            Err(why) => {
                Line::new("skip")
                    .text("check", &format!("{name}: no FP8 GEMM ({why})"))
                    .print();
                continue;
            }
        };
        ran = true;
        let cpu_stored = stored.to_device(&cpu)?;
        let cpu_bias = bias.map(|b| b.to_device(&cpu)).transpose()?;
        let cpu_weight = Fp8Weight {
            weight: &cpu_stored,
            ..weight
        };
        // In the GEMM's own dtype: x is quantized in that dtype (its 1/scale rounded to it, as
        // ComfyUI's fp8 linear does). A float32 reference would quantize differently, and the
        // e4m3 steps where the two roundings part were the whole of an earlier "parity gap".
        let reference = linear_fp8_reference(
            &x.to_device(&cpu)?,
            cpu_weight,
            cpu_bias.as_ref(),
            epilogue,
            dtype,
        )?;
        let bound = if dtype == DType::F16 {
            FP8_F16_BOUND
        } else {
            FP8_BF16_BOUND
        };
        checks.check(&name, rel_l2(&gpu, &reference)?, bound);
    }
    // K not a multiple of 16: no FP8 GEMM; linear_fp8 dequantizes (today's path) instead.
    let x = randn(&[40, 200], device, DType::BF16)?;
    let (stored, scale) = fp8_weight(64, 200, device)?;
    let weight = Fp8Weight {
        weight: &stored,
        scale,
        input_scale: None,
    };
    anyhow::ensure!(
        fp8_gemm(kernels, &x, weight, None, Epilogue::None, DType::BF16)?.is_err(),
        "the FP8 GEMM ran with K = 200, which cuBLASLt's FP8 rules exclude"
    );
    let fallback = linear_fp8(kernels, &x, weight, None, Epilogue::None, DType::BF16)?;
    let exact = x
        .to_dtype(DType::F32)?
        .matmul(&dequantize(kernels, &stored, scale, DType::F32)?.t()?)?;
    checks.check(
        "linear fp8 K=200 falls back to dequantize+bf16",
        rel_l2(&fallback, &exact)?,
        BF16_BOUND,
    );
    // A GPU with FP8 tensor cores where no case ran means a descriptor cuBLASLt refuses.
    let expected = kernels.has_fp8_tensor_cores();
    checks.check(
        &format!("linear fp8 ran on this GPU (FP8 tensor cores: {expected})"),
        if ran || !expected { 0.0 } else { 1.0 },
        0.0,
    );
    Ok(())
}

/// The bits of a float8 tensor's values (through the CPU's exact widening), for code-by-code
/// comparison.
fn float8_bits(t: &Tensor) -> anyhow::Result<Vec<u32>> {
    let values = t
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(values.iter().map(|v| v.to_bits()).collect())
}

/// How many of two equally long code lists differ.
fn differing(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

/// The stochastic float8 rounding of a LoRA-merged float8 layer on the device:
/// (a) the kernel alone against its CPU definition on the same float32 values (special values
/// included): identical codes; (b) the whole merge on the device (float8 weight and factors
/// uploaded, dequantized, merged by cuBLAS, rounded by the kernel) against the CPU's merge of
/// an A14B FFN layer with two LoRAs: the fraction of codes that differ (the merged float32
/// may differ in its last bit between the two matmuls, which moves a code only where it lands
/// on the other side of its random threshold) and the rel L2 of the dequantized weights.
pub fn lora_requant_parity(
    device: &Device,
    kernels: &Kernels,
    checks: &mut Checks,
) -> anyhow::Result<()> {
    use stillmotion_engine::wan::lora::{LoraSpec, merge_weights};
    use stillmotion_engine::wan::lora_requant::{key_seed, stochastic_round_e4m3};
    use stillmotion_kernels::fp8_stochastic::stochastic_round;

    let cpu = Device::Cpu;
    // (a): wide normals (saturating past 448), tiny ones (subnormal e4m3), and the specials.
    let mut values = Tensor::randn(0_f32, 1.0, 1 << 20, &cpu)?.to_vec1::<f32>()?;
    for (i, v) in values.iter_mut().enumerate() {
        *v *= [200.0, 1.0, 0.01, 1e-3][i % 4];
    }
    values.extend([
        0.0,
        -0.0,
        448.0,
        -448.0,
        464.0,
        -1e30,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        1e-40,
        -1e-40,
        1.0 / 64.0,
        1.0 / 64.0 - 1e-9,
        1.031_25,
        0.001_953_125,
    ]);
    let seed = key_seed("blocks.0.ffn.0.weight");
    let n = values.len();
    let gpu = stochastic_round(
        kernels,
        &Tensor::from_vec(values.clone(), n, &cpu)?.to_device(device)?,
        seed,
    )?;
    let reference = Tensor::from_raw_buffer(
        &stochastic_round_e4m3(&values, seed),
        DType::F8E4M3,
        &[n],
        &cpu,
    )?;
    let differ = differing(&float8_bits(&gpu)?, &float8_bits(&reference)?);
    checks.check(
        &format!("fp8 stochastic rounding kernel, {n} values: differing codes (exact: 0)"),
        differ as f64,
        0.0,
    );

    // (b): a 13824×5120 float8 layer, a rank-64 and a rank-16 LoRA (alpha given and not).
    let (out, inp) = (13_824, 5120);
    let (stored, scale) = fp8_weight(out, inp, &cpu)?;
    let dir = std::env::temp_dir().join(format!("stillmotion-bench-lora-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut specs = Vec::new();
    for (n, (rank, alpha, strength)) in [(64, Some(64.0_f32), 1.0), (16, None, 0.7)]
        .into_iter()
        .enumerate()
    {
        let mut tensors = std::collections::HashMap::from([
            (
                "diffusion_model.blocks.0.ffn.0.lora_down.weight".to_owned(),
                (Tensor::randn(0_f32, 1.0, (rank, inp), &cpu)? * 0.01)?,
            ),
            (
                "diffusion_model.blocks.0.ffn.0.lora_up.weight".to_owned(),
                (Tensor::randn(0_f32, 1.0, (out, rank), &cpu)? * 0.01)?,
            ),
        ]);
        if let Some(alpha) = alpha {
            tensors.insert(
                "diffusion_model.blocks.0.ffn.0.alpha".to_owned(),
                Tensor::new(alpha, &cpu)?,
            );
        }
        let path = dir.join(format!("lora{n}.safetensors"));
        candle_core::safetensors::save(&tensors, &path)?;
        specs.push(LoraSpec { path, strength });
    }
    #[allow(
        clippy::cast_possible_truncation,
        reason = "fp8_weight's scale is a float32 value"
    )]
    let model = std::collections::HashMap::from([
        ("blocks.0.ffn.0.weight".to_owned(), stored),
        (
            "blocks.0.ffn.0.scale_weight".to_owned(),
            Tensor::new(scale as f32, &cpu)?,
        ),
    ]);
    let names = ["blocks.0.ffn.0.weight"];
    let merge = |requantize: bool, on: &Device| -> anyhow::Result<(Tensor, f64)> {
        on.synchronize()?;
        let start = std::time::Instant::now();
        let on_kernels = if on.is_cuda() {
            kernels.clone()
        } else {
            Kernels::cpu()
        };
        let t = merge_weights(
            model.clone(),
            &specs,
            &names,
            requantize,
            (on, &on_kernels, on),
        )?
        .remove(0);
        on.synchronize()?;
        Ok((t, start.elapsed().as_secs_f64()))
    };
    // Once to load the device's kernels and warm cuBLAS; the second is timed.
    merge(true, device)?;
    let (gpu, gpu_s) = merge(true, device)?;
    let (reference, cpu_s) = merge(true, &cpu)?;
    let (gpu_f32, _) = merge(false, device)?;
    let (cpu_f32, _) = merge(false, &cpu)?;
    // A block that streams reads its layers into host memory: its merge still runs on the GPU.
    let host = merge_weights(model.clone(), &specs, &names, true, (device, kernels, &cpu))?;
    std::fs::remove_dir_all(&dir)?;
    anyhow::ensure!(
        host[0].device().is_cpu(),
        "the streamed layer is not in host memory"
    );
    checks.check(
        "LoRA merge + requantize of a streamed (host) layer vs a resident one: differing codes (exact: 0)",
        differing(&float8_bits(&host[0])?, &float8_bits(&gpu)?) as f64,
        0.0,
    );
    let (gpu_bits, cpu_bits) = (float8_bits(&gpu)?, float8_bits(&reference)?);
    let fraction = differing(&gpu_bits, &cpu_bits) as f64 / gpu_bits.len() as f64;
    Line::new("lora_requant")
        .int("out", out)
        .int("in", inp)
        .num("gpu_merge_ms", gpu_s * 1e3)
        .num("cpu_merge_ms", cpu_s * 1e3)
        .int("differing_codes", differing(&gpu_bits, &cpu_bits))
        .print();
    checks.check(
        "LoRA merge + requantize on the device vs the CPU: fraction of differing codes",
        fraction,
        1e-4,
    );
    let dequantized = |t: &Tensor| -> anyhow::Result<Tensor> {
        Ok(t.to_device(&cpu)?
            .to_dtype(DType::F32)?
            .affine(scale, 0.0)?)
    };
    // Each differing code is one e4m3 step, at most 1/8 of its value: rel L2 at most
    // √fraction / 8, 1.25e-3 at the fraction's bound.
    checks.check(
        "LoRA merge + requantize on the device vs the CPU: dequantized weights",
        rel_l2(&dequantized(&gpu)?, &dequantized(&reference)?)?,
        2e-3,
    );
    // The float32 merge alone (no rounding): the two matmuls' summation orders.
    checks.check(
        "LoRA merge (float32, not requantized) on the device vs the CPU",
        rel_l2(&gpu_f32.to_device(&cpu)?, &cpu_f32)?,
        1e-6,
    );
    Ok(())
}

/// The unfused layer with a LoRA on the fly: the GEMM without its epilogue, the delta, an
/// add, then the epilogue (what the engine did before the fused path, and still does on the
/// CPU).
fn unfused_low_rank(
    y: &Tensor,
    x: &Tensor,
    low_rank: LowRank<'_>,
    epilogue: Epilogue,
) -> anyhow::Result<Tensor> {
    let y = (y + low_rank.delta(x)?.to_dtype(y.dtype())?)?;
    Ok(match epilogue {
        Epilogue::None => y,
        Epilogue::GeluTanh => y.gelu()?,
    })
}

/// A LoRA on the fly fused into the layer's GEMM (the delta written into the output, the GEMM
/// accumulating onto it with bias and GELU fused) against the unfused layer, on random bf16
/// data: at a 480p-like FFN shape (4096 tokens, 5120 → 13824, rank 64), plain bf16 and float8
/// weights, with and without GELU, timed; and at a small shape with an odd rank and factors
/// that are views into a larger buffer (not 256-byte aligned).
pub fn lora_fused_parity(
    device: &Device,
    kernels: &Kernels,
    checks: &mut Checks,
) -> anyhow::Result<()> {
    for (m, k, n, rank, sliced) in [(4096, 5120, 13_824, 64, false), (77, 256, 128, 37, true)] {
        let x = randn(&[1, m, k], device, DType::BF16)?;
        let b = randn(&[n], device, DType::BF16)?;
        let (stored, scale) = fp8_weight(n, k, device)?;
        let w = dequantize(kernels, &stored, scale, DType::BF16)?;
        // Factors of a LightX2V-like size: the delta a few percent of the output.
        let (down, up) = if sliced {
            let down = (randn(&[rank + 1, k], device, DType::BF16)? * 0.02)?;
            let up = (randn(&[n, rank + 3], device, DType::BF16)? * 0.02)?;
            (down.narrow(0, 1, rank)?, up.narrow(1, 3, rank)?)
        } else {
            (
                (randn(&[rank, k], device, DType::BF16)? * 0.02)?,
                (randn(&[n, rank], device, DType::BF16)? * 0.02)?,
            )
        };
        let low_rank = LowRank {
            down: &down,
            up: &up,
        };
        let weight = Fp8Weight {
            weight: &stored,
            scale,
            input_scale: None,
        };
        let fp8_runs = fp8_gemm(kernels, &x, weight, Some(&b), Epilogue::None, DType::BF16)?;
        for epilogue in [Epilogue::None, Epilogue::GeluTanh] {
            let name = |kind: &str| {
                format!(
                    "LoRA fused into the {kind} GEMM {m}×{k}→{n} rank {rank} {epilogue:?}{}",
                    if sliced { " (factor views)" } else { "" }
                )
            };
            let fused = || linear_low_rank(kernels, &x, &w, Some(&b), low_rank, epilogue);
            let unfused = || -> anyhow::Result<Tensor> {
                let y = linear(kernels, &x, &w, Some(&b), Epilogue::None)?;
                unfused_low_rank(&y, &x, low_rank, epilogue)
            };
            let (f, u) = (fused()?, unfused()?);
            let rel = rel_l2(&f, &u)?;
            let fused_ms = 1e3
                * time(device, 5, || {
                    fused()?;
                    Ok(())
                })?;
            let unfused_ms = 1e3
                * time(device, 5, || {
                    unfused()?;
                    Ok(())
                })?;
            Line::new("lora_fused")
                .text("gemm", "bf16")
                .text("epilogue", &format!("{epilogue:?}"))
                .int("m", m)
                .int("rank", rank)
                .num("fused_ms", fused_ms)
                .num("unfused_ms", unfused_ms)
                .num("rel_l2", rel)
                .print();
            checks.check(&name("bf16"), rel, BF16_BOUND);

            let fused8 = || {
                linear_fp8_low_rank(
                    kernels,
                    &x,
                    weight,
                    Some(&b),
                    low_rank,
                    epilogue,
                    DType::BF16,
                )
            };
            let unfused8 = || -> anyhow::Result<Tensor> {
                let y = linear_fp8(kernels, &x, weight, Some(&b), Epilogue::None, DType::BF16)?;
                unfused_low_rank(&y, &x, low_rank, epilogue)
            };
            let (f, u) = (fused8()?, unfused8()?);
            let rel = rel_l2(&f, &u)?;
            let fused_ms = 1e3
                * time(device, 5, || {
                    fused8()?;
                    Ok(())
                })?;
            let unfused_ms = 1e3
                * time(device, 5, || {
                    unfused8()?;
                    Ok(())
                })?;
            Line::new("lora_fused")
                .text(
                    "gemm",
                    if fp8_runs.is_ok() {
                        "fp8"
                    } else {
                        "fp8 (no FP8 GEMM here: dequantized)"
                    },
                )
                .text("epilogue", &format!("{epilogue:?}"))
                .int("m", m)
                .int("rank", rank)
                .num("fused_ms", fused_ms)
                .num("unfused_ms", unfused_ms)
                .num("rel_l2", rel)
                .print();
            checks.check(&name("FP8"), rel, BF16_BOUND);
        }
    }
    Ok(())
}
