//! `x·Wᵀ + b`, optionally followed by GELU (tanh approximation): on CUDA one cuBLASLt GEMM
//! with the bias (and GELU) fused into its epilogue; elsewhere candle's matmul and ops.
//!
//! [`linear_fp8`] is the same layer for a float8 e4m3 weight with a per-tensor scale when
//! [`Kernels::fp8_matmul`] is on: the input is quantized to e4m3 too (see
//! [`crate::fp8::quantize_activation`]) and multiplied in FP8 (cuBLASLt, float32 accumulation,
//! both scales applied in the epilogue), the arithmetic of ComfyUI's fp8 matmul
//! (`torch._scaled_mm`). [`linear_fp8_reference`] defines it on the CPU.
//!
//! [`linear_low_rank`] and [`linear_fp8_low_rank`] add a LoRA applied on the fly, `(x·downᵀ)·upᵀ`
//! ([`LowRank`]), to the product before the bias and the epilogue. On CUDA the delta is written
//! straight into the output buffer and the layer's GEMM accumulates onto it (cuBLASLt's
//! `D = act(α·A·B + β·C + bias)` with β = 1, C = D), so the bias and GELU stay fused and no
//! output-sized transient is made; elsewhere (and where the fused GEMM cannot run) the layer
//! without its epilogue, plus the delta, then the epilogue, each rounded to the layer's dtype.

use candle_core::{D, DType, Tensor};
use candle_nn::Module;

use crate::fp8::{QuantizedActivation, dequantize, quantize_activation};
use crate::{KernelError, Kernels};

/// What follows the GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    None,
    /// GELU with the tanh approximation (Wan's FFN and text embedding).
    GeluTanh,
}

/// `x` `[…, K]` (cast to the weight's dtype), `weight` `[N, K]`, `bias` `[N]` → `[…, N]`.
pub fn linear(
    kernels: &Kernels,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    epilogue: Epilogue,
) -> Result<Tensor, KernelError> {
    let x = x.to_dtype(weight.dtype())?;
    let bias = bias.map(|b| b.to_dtype(weight.dtype())).transpose()?;
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() && matches!(weight.dtype(), DType::BF16 | DType::F16) {
        return crate::gpu::linear::linear_with(kernels, &x, weight, bias.as_ref(), None, epilogue);
    }
    let _ = kernels;
    let _ = x.dim(D::Minus1)?;
    let y = candle_nn::Linear::new(weight.clone(), bias).forward(&x)?;
    Ok(match epilogue {
        Epilogue::None => y,
        Epilogue::GeluTanh => y.gelu()?,
    })
}

/// One cuBLASLt algorithm's time for a GEMM (see [`gemm_algorithm_timings`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AlgorithmTiming {
    /// Its place in the heuristic's answer: 0 is what [`linear`] runs.
    pub index: usize,
    pub ms: f64,
    pub workspace_bytes: usize,
    /// The heuristic's estimate of the waves the GPU's SMs run it in.
    pub waves: f32,
}

/// Up to `count` of the algorithms cuBLASLt proposes for [`linear`]'s GEMM with a bias on these
/// operands (bf16 or f16 on a CUDA device), each timed over `iterations` runs: benchmark
/// evidence for choosing algorithms by measurement. Errors on the CPU.
pub fn gemm_algorithm_timings(
    kernels: &Kernels,
    (x, weight, bias): (&Tensor, &Tensor, &Tensor),
    epilogue: Epilogue,
    count: usize,
    iterations: usize,
) -> Result<Vec<AlgorithmTiming>, KernelError> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        let (x, weight, bias) = (x.contiguous()?, weight.contiguous()?, bias.contiguous()?);
        return crate::gpu::gemm_algorithms::time_algorithms(
            kernels,
            (&x, &weight, &bias),
            epilogue,
            count,
            iterations,
        );
    }
    let _ = (kernels, weight, bias, epilogue, count, iterations);
    Err(KernelError::BadInput {
        kernel: "gemm_algorithms",
        problem: format!("times cuBLASLt on a CUDA device, not {:?}", x.device()),
    })
}

/// A LoRA's low-rank factors applied on the fly, every pair of the layer stacked along the rank
/// `R`: `down` `[R, K]`, `up` `[N, R]` with each pair's `strength·alpha/rank` folded in.
#[derive(Clone, Copy, Debug)]
pub struct LowRank<'a> {
    pub down: &'a Tensor,
    pub up: &'a Tensor,
}

impl LowRank<'_> {
    /// The delta `(x·downᵀ)·upᵀ`, `[…, N]`, in the factors' dtype (x cast to it): candle's
    /// matmuls, the unfused path's arithmetic.
    pub fn delta(&self, x: &Tensor) -> Result<Tensor, KernelError> {
        let low = self.low(x)?;
        // candle's CUDA matmul takes only plain or transposed contiguous operands: a factor
        // that is a view into a wider buffer is copied first.
        let out = low.matmul(&self.up.contiguous()?.t()?)?;
        let mut dims = x.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = out.dim(1)?;
        }
        Ok(out.reshape(dims)?)
    }

    /// `x·downᵀ` as a `[rows, R]` matrix in the factors' dtype.
    pub(crate) fn low(&self, x: &Tensor) -> Result<Tensor, KernelError> {
        let k = x.dim(D::Minus1)?;
        let rows = x.elem_count() / k.max(1);
        let x = x.to_dtype(self.down.dtype())?.reshape((rows, k))?;
        Ok(x.matmul(&self.down.contiguous()?.t()?)?)
    }

    /// Checks the factors against a `[n, k]` layer.
    fn check(&self, kernel: &'static str, n: usize, k: usize) -> Result<(), KernelError> {
        let (r, dk) = self.down.dims2()?;
        let (un, ur) = self.up.dims2()?;
        if dk != k || un != n || ur != r {
            return Err(KernelError::BadInput {
                kernel,
                problem: format!(
                    "low-rank factors {:?} and {:?} do not fit a {n}×{k} layer",
                    self.down.dims(),
                    self.up.dims()
                ),
            });
        }
        Ok(())
    }
}

/// The unfused arithmetic of a layer with a low-rank addend: `y` (the layer's product plus
/// bias, no epilogue yet) plus the delta rounded to y's dtype, then the epilogue.
fn add_low_rank(
    y: &Tensor,
    x: &Tensor,
    low_rank: LowRank<'_>,
    epilogue: Epilogue,
) -> Result<Tensor, KernelError> {
    let y = (y + low_rank.delta(x)?.to_dtype(y.dtype())?)?;
    Ok(match epilogue {
        Epilogue::None => y,
        Epilogue::GeluTanh => y.gelu()?,
    })
}

/// [`linear`] with a LoRA on the fly: `epilogue(x·Wᵀ + (x·downᵀ)·upᵀ + b)`. On CUDA with a
/// bf16/f16 weight: the delta GEMM into the output, then the layer's cuBLASLt GEMM onto it with
/// the bias (and GELU) fused; elsewhere [`linear`] without the epilogue, plus
/// [`LowRank::delta`], then the epilogue (the CPU reference).
pub fn linear_low_rank(
    kernels: &Kernels,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    low_rank: LowRank<'_>,
    epilogue: Epilogue,
) -> Result<Tensor, KernelError> {
    let (n, k) = weight.dims2()?;
    low_rank.check("linear_low_rank", n, k)?;
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() && matches!(weight.dtype(), DType::BF16 | DType::F16) {
        let x = x.to_dtype(weight.dtype())?;
        let bias = bias.map(|b| b.to_dtype(weight.dtype())).transpose()?;
        return crate::gpu::linear::linear_with(
            kernels,
            &x,
            weight,
            bias.as_ref(),
            Some(low_rank),
            epilogue,
        );
    }
    let y = linear(kernels, x, weight, bias, Epilogue::None)?;
    add_low_rank(&y, x, low_rank, epilogue)
}

/// A float8 e4m3 weight `[N, K]` with its per-tensor scale (`scale_weight` / `weight_scale`),
/// and the input scale its file gives (`scale_input` / `input_scale`), if any.
#[derive(Clone, Copy, Debug)]
pub struct Fp8Weight<'a> {
    pub weight: &'a Tensor,
    pub scale: f64,
    pub input_scale: Option<f64>,
}

impl Fp8Weight<'_> {
    #[allow(
        clippy::cast_possible_truncation,
        reason = "the scales are float32 in the file"
    )]
    fn input_scale_f32(&self) -> Option<f32> {
        self.input_scale.map(|s| s as f32)
    }
}

impl Kernels {
    /// The same kernels with the FP8 GEMM for float8 weights on or off (off by default).
    #[must_use]
    pub fn with_fp8_matmul(&self, on: bool) -> Self {
        let mut kernels = self.clone();
        kernels.fp8_matmul = on;
        kernels
    }

    /// Whether float8 weights multiply in FP8 ([`linear_fp8`]) instead of being dequantized to
    /// the compute dtype first. On a GPU without FP8 tensor cores (before compute capability
    /// 8.9) or for shapes cuBLASLt's FP8 GEMM does not take, the layer dequantizes anyway.
    #[must_use]
    pub fn fp8_matmul(&self) -> bool {
        self.fp8_matmul
    }
}

/// `x·(float(W)·scale)ᵀ + b` (then the epilogue) with `x` cast to `dtype` (bfloat16, float16
/// or float32) and quantized to e4m3, the product accumulated in float32 and rounded once to
/// `dtype`. On CUDA: cuBLASLt's FP8 GEMM where the GPU and shapes allow it, else the weight
/// dequantized and [`linear`] (today's path); on the CPU: [`linear_fp8_reference`].
pub fn linear_fp8(
    kernels: &Kernels,
    x: &Tensor,
    weight: Fp8Weight<'_>,
    bias: Option<&Tensor>,
    epilogue: Epilogue,
    dtype: DType,
) -> Result<Tensor, KernelError> {
    let x = x.to_dtype(dtype)?;
    let bias = bias.map(|b| b.to_dtype(dtype)).transpose()?;
    if x.device().is_cpu() {
        return linear_fp8_reference(&x, weight, bias.as_ref(), epilogue, dtype);
    }
    match fp8_gemm(kernels, &x, weight, bias.as_ref(), epilogue, dtype)? {
        Ok(y) => return Ok(y),
        Err(why) => tracing::debug!("FP8 GEMM unavailable, dequantizing instead: {why}"),
    }
    let dequantized = dequantize(kernels, weight.weight, weight.scale, dtype)?;
    linear(kernels, &x, &dequantized, bias.as_ref(), epilogue)
}

/// [`linear_fp8`] with a LoRA on the fly: `epilogue(FP8 product + (x·downᵀ)·upᵀ + b)`. On CUDA
/// the delta goes into the output and the FP8 GEMM accumulates onto it (C bf16/f16 with FP8
/// A and B, β = 1), bias and GELU fused; where the FP8 GEMM cannot run, the weight is
/// dequantized and [`linear_low_rank`] runs; on the CPU [`linear_fp8_reference`] without the
/// epilogue, plus the delta, then the epilogue.
pub fn linear_fp8_low_rank(
    kernels: &Kernels,
    x: &Tensor,
    weight: Fp8Weight<'_>,
    bias: Option<&Tensor>,
    low_rank: LowRank<'_>,
    epilogue: Epilogue,
    dtype: DType,
) -> Result<Tensor, KernelError> {
    let (n, k) = weight.weight.dims2()?;
    low_rank.check("linear_fp8_low_rank", n, k)?;
    let x = x.to_dtype(dtype)?;
    let bias = bias.map(|b| b.to_dtype(dtype)).transpose()?;
    if x.device().is_cpu() {
        let y = linear_fp8_reference(&x, weight, bias.as_ref(), Epilogue::None, dtype)?;
        return add_low_rank(&y, &x, low_rank, epilogue);
    }
    #[cfg(feature = "cuda")]
    match crate::gpu::fp8_linear::linear(
        kernels,
        &x,
        weight,
        bias.as_ref(),
        Some(low_rank),
        epilogue,
    )? {
        Ok(y) => return Ok(y),
        Err(why) => tracing::debug!("FP8 GEMM unavailable, dequantizing instead: {why}"),
    }
    let dequantized = dequantize(kernels, weight.weight, weight.scale, dtype)?;
    linear_low_rank(kernels, &x, &dequantized, bias.as_ref(), low_rank, epilogue)
}

/// [`linear_fp8`]'s FP8 GEMM alone: `Ok(Ok(y))` where it ran (a CUDA device with FP8 tensor
/// cores, `dtype` bfloat16 or float16, K and N multiples of 16, an algorithm from cuBLASLt),
/// `Ok(Err(why))` where it cannot (the CPU included), so a caller can tell the two paths apart.
pub fn fp8_gemm(
    kernels: &Kernels,
    x: &Tensor,
    weight: Fp8Weight<'_>,
    bias: Option<&Tensor>,
    epilogue: Epilogue,
    dtype: DType,
) -> Result<Result<Tensor, String>, KernelError> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        let x = x.to_dtype(dtype)?;
        return crate::gpu::fp8_linear::linear(kernels, &x, weight, bias, None, epilogue);
    }
    let _ = (kernels, weight, bias, epilogue, dtype);
    Ok(Err(format!("no FP8 GEMM on {:?}", x.device())))
}

impl Kernels {
    /// Whether these kernels run on a GPU with FP8 tensor cores (compute capability 8.9 or
    /// later), where [`fp8_gemm`] is expected to run.
    #[must_use]
    pub fn has_fp8_tensor_cores(&self) -> bool {
        #[cfg(feature = "cuda")]
        if let Some(gpu) = &self.gpu {
            return gpu.has_fp8_mma();
        }
        false
    }
}

/// The CPU definition of [`linear_fp8`]: x quantized as [`quantize_activation`] does, the
/// float32 product of the e4m3 values (each product exact; sums in float32), times
/// `input scale · weight scale` (rounded to float32 once), plus the bias, the epilogue in
/// float32, then one rounding to `dtype`. Tensors on the CPU.
pub fn linear_fp8_reference(
    x: &Tensor,
    weight: Fp8Weight<'_>,
    bias: Option<&Tensor>,
    epilogue: Epilogue,
    dtype: DType,
) -> Result<Tensor, KernelError> {
    const KERNEL: &str = "linear_fp8_reference";
    if !x.device().is_cpu() || !weight.weight.device().is_cpu() {
        return Err(KernelError::BadInput {
            kernel: KERNEL,
            problem: "the reference runs on CPU tensors".to_owned(),
        });
    }
    let x = x.to_dtype(dtype)?;
    let k = x.dim(D::Minus1)?;
    let (n, wk) = weight.weight.dims2()?;
    if wk != k {
        return Err(KernelError::BadInput {
            kernel: KERNEL,
            problem: format!("x has {k} features, the weight {:?}", weight.weight.dims()),
        });
    }
    let QuantizedActivation { values, scale } =
        quantize_activation(&Kernels::cpu(), &x, weight.input_scale_f32())?;
    let x_scale = scale.to_vec1::<f32>()?[0];
    #[allow(
        clippy::cast_possible_truncation,
        reason = "the weight scale is a float32 in the file"
    )]
    let product_scale = x_scale * weight.scale as f32;
    let xq = values.to_dtype(DType::F32)?.reshape(((), k))?;
    let wq = weight.weight.to_dtype(DType::F32)?;
    let mut y = xq.matmul(&wq.t()?)?.affine(f64::from(product_scale), 0.0)?;
    if let Some(bias) = bias {
        y = y.broadcast_add(&bias.to_dtype(DType::F32)?)?;
    }
    if epilogue == Epilogue::GeluTanh {
        y = y.gelu()?;
    }
    let mut dims = x.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = n;
    }
    Ok(y.reshape(dims)?.to_dtype(dtype)?)
}

#[cfg(test)]
mod tests;
