//! GGUF weights on CUDA: `gguf` runs, for every GGML type Wan GGUF files use, our quantized
//! linear path ([`quantized_linear`], what the DiT's linear layer calls) on the GPU against the
//! same on the CPU, at M = 1, 8, 512 and 32760 rows, then times each type at the DiT's
//! 32760×5120→5120; and loads two tiny GGUF Wan files from the golden cases onto the GPU and
//! runs one DiT forward against the CPU's. F16 and BF16 GGUF tensors are never kept quantized
//! (the loader hands them out dequantized, `crate::gguf`): their rows run the plain path the
//! model uses for them, dequantized on the CPU and multiplied in the model dtype.
//!
//! Bounds (rel L2 of the GPU output against the CPU's on the same quantized weight and the same
//! bf16-rounded input):
//! - dequantize at use (the default): the GPU dequantizes to bf16 and multiplies in bf16 (f32
//!   accumulation); the CPU in f32. The weight's and the output's rounding to bf16 (2⁻⁹
//!   relative each, independent) give about 2.5e-3 rel L2: [`BF16_BOUND`] (1e-2).
//! - native (candle's `QMatMul`): both sides quantize the activations to 8-bit blocks but not
//!   the same ones (the CPU to Q8_0 / Q8_K by type, CUDA's MMQ/MMVQ kernels to Q8_1), each
//!   about 4e-3 from exact, plus the output's bf16 rounding: [`NATIVE_BOUND`] (3e-2, the
//!   tiny golden models measured 3e-3 to 1e-2 through the CPU's path against exact).
//!
//! Each row also prints both sides against the exact f32 product on the dequantized weight.

use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use stillmotion_engine::gguf::{QuantizedMatmul, quantized_linear};
use stillmotion_engine::wan::{Config, ModelType, WanModel};
use stillmotion_kernels::Kernels;
use stillmotion_kernels::linear::{Epilogue, linear};

use crate::report::{BF16_BOUND, Checks, DIT_BOUND, Line, rel_l2};
use crate::{randn, time};

/// GPU against CPU for candle's native quantized matmul (see the module doc).
const NATIVE_BOUND: f64 = 3e-2;

/// The types of city96's and QuantStack's Wan GGUF files.
const TYPES: [GgmlDType; 12] = [
    GgmlDType::Q8_0,
    GgmlDType::Q6K,
    GgmlDType::Q5K,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q4K,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q3K,
    GgmlDType::Q2K,
    GgmlDType::F16,
    GgmlDType::BF16,
];

/// Rows of each parity run, the DiT's 480p token count last.
const ROWS: [usize; 4] = [1, 8, 512, 32_760];
/// Rows compared for the largest M (first and last half of it): the CPU's product of all
/// 32760 rows would take minutes, and rows are independent in both paths.
const COMPARED_ROWS: usize = 512;

/// A Wan-like weight `[n, k]` (normal, σ 0.02) quantized to `dtype` on the CPU, and a copy of
/// its blocks on `device` (on the CPU for the float types, which the loader reads there and
/// hands out plain, see [`run`]).
fn weight(dtype: GgmlDType, n: usize, k: usize, device: &Device) -> anyhow::Result<[QTensor; 2]> {
    let w = (Tensor::randn(0_f32, 1.0, (n, k), &Device::Cpu)? * 0.02)?;
    let cpu = QTensor::quantize(&w, dtype)?;
    let target = if paths(dtype)[0].0.is_some() {
        device
    } else {
        &Device::Cpu
    };
    let storage = QStorage::from_data(cpu.data()?, target, dtype)?;
    let gpu = QTensor::new(storage, (n, k))?;
    Ok([cpu, gpu])
}

/// The layer as the model runs it on `x`: kept quantized (`Some` matmul), or, for the float
/// types, dequantized when loaded and multiplied plain in `dtype`.
fn run(
    kernels: &Kernels,
    x: &Tensor,
    w: &Arc<QTensor>,
    bias: &Tensor,
    matmul: Option<QuantizedMatmul>,
    dtype: DType,
) -> anyhow::Result<Tensor> {
    if let Some(matmul) = matmul {
        return Ok(quantized_linear(
            kernels,
            x,
            w,
            bias,
            (matmul, Epilogue::None),
            dtype,
        )?);
    }
    // The loader dequantizes float GGUF tensors on the CPU and converts them once.
    let plain = w.dequantize(&Device::Cpu)?.to_dtype(dtype)?;
    let plain = plain.to_device(x.device())?;
    Ok(linear(
        kernels,
        &x.to_dtype(dtype)?,
        &plain,
        Some(&bias.to_dtype(dtype)?),
        Epilogue::None,
    )?)
}

/// The first and last `COMPARED_ROWS / 2` rows of `t` (all of them when it has no more).
fn compared(t: &Tensor) -> anyhow::Result<Tensor> {
    let m = t.dim(0)?;
    if m <= COMPARED_ROWS {
        return Ok(t.clone());
    }
    let half = COMPARED_ROWS / 2;
    Ok(Tensor::cat(
        &[t.narrow(0, 0, half)?, t.narrow(0, m - half, half)?],
        0,
    )?)
}

fn paths(dtype: GgmlDType) -> Vec<(Option<QuantizedMatmul>, &'static str)> {
    if matches!(dtype, GgmlDType::F16 | GgmlDType::BF16) {
        vec![(None, "plain")]
    } else {
        vec![
            (Some(QuantizedMatmul::DequantizeAtUse), "dequantize"),
            (Some(QuantizedMatmul::Native), "native"),
        ]
    }
}

/// `gguf`: the parity rows, the timings, and the tiny GGUF DiT forwards (from `golden`, the
/// repository's `tests/golden`); fails at the end if any parity row is past its bound.
pub fn run_all(device: &Device, kernels: &Kernels, golden: &Path) -> anyhow::Result<()> {
    let mut checks = Checks::default();
    linear_parity(device, kernels, &ROWS, &mut checks)?;
    for dtype in TYPES {
        if let Err(e) = time_type(device, kernels, dtype) {
            Line::new("gguf_time")
                .text("type", &format!("{dtype:?}"))
                .text("error", &e.to_string())
                .print();
        }
    }
    tiny_dit_parity(device, golden, &mut checks)?;
    checks.finish()
}

/// Every type and path at each of `rows`, `device` against the CPU.
fn linear_parity(
    device: &Device,
    kernels: &Kernels,
    rows: &[usize],
    checks: &mut Checks,
) -> anyhow::Result<()> {
    let cpu_kernels = Kernels::cpu();
    let (k, n) = (1024, 1024);
    for dtype in TYPES {
        let [w_cpu, w_gpu] = match weight(dtype, n, k, device) {
            Ok(w) => w,
            Err(e) => {
                Line::new("gguf_parity")
                    .text("type", &format!("{dtype:?}"))
                    .text("error", &e.to_string())
                    .print();
                checks.check(&format!("gguf {dtype:?} weight upload"), 1.0, 0.0);
                continue;
            }
        };
        let (w_cpu, w_gpu) = (Arc::new(w_cpu), Arc::new(w_gpu));
        let exact_w = w_cpu.dequantize(&Device::Cpu)?;
        let bias = (Tensor::randn(0_f32, 1.0, n, &Device::Cpu)? * 0.1)?;
        for &m in rows {
            // The model's activations on CUDA are bf16: both sides get the same bf16 values.
            let x = randn(&[m, k], &Device::Cpu, DType::BF16)?;
            let x_rows = compared(&x)?.to_dtype(DType::F32)?;
            let exact = x_rows.matmul(&exact_w.t()?)?.broadcast_add(&bias)?;
            for (matmul, path) in paths(dtype) {
                let name = format!("gguf {dtype:?} {path} m {m} gpu vs cpu");
                let gpu = run(
                    kernels,
                    &x.to_device(device)?,
                    &w_gpu,
                    &bias.to_device(device)?,
                    matmul,
                    DType::BF16,
                );
                let gpu = match gpu {
                    Ok(y) => compared(&y.to_device(&Device::Cpu)?)?.to_dtype(DType::F32)?,
                    Err(e) => {
                        Line::new("gguf_parity")
                            .text("case", &name)
                            .text("error", &e.to_string())
                            .print();
                        checks.check(&name, 1.0, 0.0);
                        continue;
                    }
                };
                let cpu = run(&cpu_kernels, &x_rows, &w_cpu, &bias, matmul, DType::F32)?;
                Line::new("gguf_parity_detail")
                    .text("case", &name)
                    .num("gpu_vs_exact", rel_l2(&gpu, &exact)?)
                    .num("cpu_vs_exact", rel_l2(&cpu, &exact)?)
                    .print();
                let bound = match matmul {
                    Some(QuantizedMatmul::Native) => NATIVE_BOUND,
                    _ => BF16_BOUND,
                };
                checks.check(&name, rel_l2(&gpu, &cpu)?, bound);
            }
        }
    }
    Ok(())
}

/// One type at the DiT's 32760×5120→5120, each path (bf16 activations and output).
fn time_type(device: &Device, kernels: &Kernels, dtype: GgmlDType) -> anyhow::Result<()> {
    let (m, k, n) = (32_760, 5120, 5120);
    let [w_cpu, w_gpu] = weight(dtype, n, k, device)?;
    let w_gpu = Arc::new(w_gpu);
    let x = randn(&[m, k], device, DType::BF16)?;
    let bias = randn(&[n], device, DType::F32)?;
    let mut line = Line::new("gguf_time")
        .text("type", &format!("{dtype:?}"))
        .int("m", m)
        .int("k", k)
        .int("n", n)
        .int("weight_bytes", w_cpu.storage_size_in_bytes());
    for (matmul, path) in paths(dtype) {
        // The float types are dequantized and uploaded once, at load: only their GEMM is timed.
        let plain = match matmul {
            Some(_) => None,
            None => Some((
                w_cpu
                    .dequantize(&Device::Cpu)?
                    .to_dtype(DType::BF16)?
                    .to_device(device)?,
                bias.to_dtype(DType::BF16)?,
            )),
        };
        let ms = 1e3
            * time(device, 10, || {
                match &plain {
                    Some((w, b)) => linear(kernels, &x, w, Some(b), Epilogue::None).map(drop)?,
                    None => run(kernels, &x, &w_gpu, &bias, matmul, DType::BF16).map(drop)?,
                }
                Ok(())
            })?;
        line = line.num(&format!("{path}_ms"), ms).num(
            &format!("{path}_tflops"),
            2.0 * (m * k * n) as f64 / ms / 1e9,
        );
    }
    line.print();
    Ok(())
}

/// Two golden-case GGUF DiTs (K-quants; Q4_0…Q8_0 with a quantized patch embedding) loaded onto
/// the GPU, one forward on the case's inputs against the CPU's: bf16 against f32 within
/// [`DIT_BOUND`], f32 against f32 within 1e-3 (TF32 GEMMs, if cuBLAS picks them), and the
/// native matmul in bf16 within [`DIT_BOUND`] + [`NATIVE_BOUND`].
fn tiny_dit_parity(device: &Device, golden: &Path, checks: &mut Checks) -> anyhow::Result<()> {
    let base = Config {
        model_type: ModelType::T2v,
        in_dim: 16,
        out_dim: 16,
        text_len: 16,
        num_heads: 2,
        ..Config::t2v_a14b()
    };
    let cases = [
        (
            "files_dit_gguf_kquants/wan_t2v_kquants.gguf",
            Config {
                dim: 256,
                ffn_dim: 256,
                freq_dim: 32,
                text_dim: 24,
                num_layers: 1,
                ..base.clone()
            },
            "files_dit_gguf_kquants/inputs.safetensors",
        ),
        (
            "files_dit_gguf_legacy_quants/wan_t2v_mixed.gguf",
            Config {
                dim: 64,
                ffn_dim: 128,
                freq_dim: 64,
                text_dim: 64,
                num_layers: 2,
                ..base
            },
            "files_dit_gguf_legacy_quants/inputs.safetensors",
        ),
    ];
    for (file, cfg, inputs) in cases {
        let path = golden.join(file);
        let inputs = candle_core::safetensors::load(golden.join(inputs), &Device::Cpu)?;
        let forward = |matmul, dev: &Device, dtype| -> anyhow::Result<Tensor> {
            let (model, _) =
                WanModel::load_with_options(&path, Some(&cfg), &[], matmul, dev, dtype)?;
            let to = |name: &str| inputs[name].to_device(dev);
            let out = model.forward(&to("x")?, None, &to("t")?, &to("context")?)?;
            Ok(out.to_device(&Device::Cpu)?.to_dtype(DType::F32)?)
        };
        let expected = forward(QuantizedMatmul::DequantizeAtUse, &Device::Cpu, DType::F32)?;
        for (matmul, path_name, dtype, bound) in [
            (
                QuantizedMatmul::DequantizeAtUse,
                "dequantize",
                DType::BF16,
                DIT_BOUND,
            ),
            (
                QuantizedMatmul::DequantizeAtUse,
                "dequantize",
                DType::F32,
                1e-3,
            ),
            (
                QuantizedMatmul::Native,
                "native",
                DType::BF16,
                DIT_BOUND + NATIVE_BOUND,
            ),
        ] {
            let name = format!("gguf dit {file} {path_name} {dtype:?} gpu vs f32 cpu");
            match forward(matmul, device, dtype) {
                Ok(out) => checks.check(&name, rel_l2(&out, &expected)?, bound),
                Err(e) => {
                    Line::new("gguf_parity")
                        .text("case", &name)
                        .text("error", &e.to_string())
                        .print();
                    checks.check(&name, 1.0, 0.0);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole `gguf` parity on the CPU against itself, few rows: every type quantizes,
    /// every path runs and the tiny GGUF DiTs load (what can break off the GPU), and a device
    /// equal to the CPU passes every bound.
    #[test]
    fn every_type_and_path_runs_on_the_cpu() {
        let mut checks = Checks::default();
        let cpu = Kernels::cpu();
        linear_parity(&Device::Cpu, &cpu, &[1, 8], &mut checks).unwrap();
        let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden");
        tiny_dit_parity(&Device::Cpu, &golden, &mut checks).unwrap();
        checks.finish().unwrap();
    }
}
