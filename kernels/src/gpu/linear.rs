//! cuBLASLt GEMM with the bias (and GELU) in the epilogue, optionally accumulating onto a
//! LoRA's low-rank delta written into the output first (β = 1: `D = act(A·B + C + bias)` with
//! C = D).

use candle_core::cuda::CudaStorage;
use candle_core::{D, DType, Shape, Tensor};
use cudarc::cublaslt::{Activation, Matmul, MatmulConfig};

use super::{GpuKernels, device_ptr, empty_like_shape, output_tensor};
use crate::linear::{Epilogue, LowRank};
use crate::{KernelError, Kernels};

const KERNEL: &str = "linear";

/// Row-major `y[M, N] (+)= x[M, K]·W[N, K]ᵀ` as cuBLASLt's column-major
/// `yᵀ[N, M] = W(as [K, N])ᵀ·xᵀ`; `beta` 1 accumulates onto what the output holds.
fn config(m: usize, k: usize, n: usize, beta: f32) -> MatmulConfig {
    MatmulConfig {
        transa: true,
        transb: false,
        transc: false,
        m: n as u64,
        n: m as u64,
        k: k as u64,
        alpha: 1.0,
        lda: k as i64,
        ldb: k as i64,
        beta,
        ldc: n as i64,
        stride_a: None,
        stride_b: None,
        stride_c: None,
        stride_bias: None,
        batch_size: None,
    }
}

/// A contiguous tensor whose first element is 256-byte aligned (the alignment cuBLASLt's
/// algorithm heuristic assumes by default): `t` itself, or a fresh copy of a view into the
/// middle of a buffer (a streaming slot's factors).
fn aligned(t: &Tensor) -> Result<Tensor, KernelError> {
    let t = t.contiguous()?;
    if device_ptr(&t, KERNEL)? % 256 == 0 {
        Ok(t)
    } else {
        Ok(t.copy()?)
    }
}

/// `out[M, N] = a[M, K]·b[N, K]ᵀ (+ out) (+ bias)`, then the activation, through cuBLASLt; the
/// tensors contiguous, of `out`'s dtype (bf16 or f16), on the device.
#[allow(
    clippy::too_many_arguments,
    reason = "one GEMM's operands, shape and epilogue"
)]
fn gemm(
    gpu: &GpuKernels,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    activation: Option<&Activation>,
    out: &mut CudaStorage,
    (m, k, n): (usize, usize, usize),
    beta: f32,
) -> Result<(), KernelError> {
    let config = config(m, k, n, beta);
    macro_rules! run {
        ($t:ty) => {{
            let (xs, xl) = a.storage_and_layout();
            let (ws, wl) = b.storage_and_layout();
            let (candle_core::Storage::Cuda(xs), candle_core::Storage::Cuda(ws)) = (&*xs, &*ws)
            else {
                return Err(KernelError::BadInput {
                    kernel: KERNEL,
                    problem: "tensors are not on the CUDA device".to_owned(),
                });
            };
            let xv = xs.as_cuda_slice::<$t>()?.slice(xl.start_offset()..);
            let wv = ws.as_cuda_slice::<$t>()?.slice(wl.start_offset()..);
            let bias_guard = bias.map(Tensor::storage_and_layout);
            let bias_view = match &bias_guard {
                Some((bs, bl)) => match &**bs {
                    candle_core::Storage::Cuda(bs) => {
                        Some(bs.as_cuda_slice::<$t>()?.slice(bl.start_offset()..))
                    }
                    _ => None,
                },
                None => None,
            };
            let out = out.as_cuda_slice_mut::<$t>()?;
            // SAFETY: the views cover contiguous a [M, K], b [N, K], bias [N] and the output
            // [M, N] exactly as the config describes; all on candle's stream. With β = 1 the
            // output holds the addend, written by work queued before on the same stream.
            unsafe {
                gpu.blas_lt
                    .matmul(config, &wv, &xv, out, bias_view.as_ref(), activation)
            }
            .map_err(|e| KernelError::Cuda {
                problem: format!("cuBLASLt GEMM {m}×{k}·{k}×{n}: {e:?}"),
            })?;
        }};
    }
    match a.dtype() {
        DType::BF16 => run!(half::bf16),
        DType::F16 => run!(half::f16),
        other => {
            return Err(KernelError::BadInput {
                kernel: KERNEL,
                problem: format!("dtype {other:?}: cuBLASLt path takes bf16 or f16"),
            });
        }
    }
    Ok(())
}

/// The low-rank delta `(x·downᵀ)·upᵀ` written into `out` (`[M, N]`, x's dtype), the addend of
/// the layer's GEMM that follows with β = 1. `x` is `[M, K]` in `out`'s dtype.
pub(crate) fn low_rank_into(
    gpu: &GpuKernels,
    x: &Tensor,
    low_rank: LowRank<'_>,
    out: &mut CudaStorage,
    (m, n): (usize, usize),
) -> Result<(), KernelError> {
    let dtype = x.dtype();
    let down = low_rank.down.to_dtype(dtype)?;
    let up = aligned(&low_rank.up.to_dtype(dtype)?)?;
    let factors = LowRank {
        down: &down,
        up: &up,
    };
    // [M, R]: candle's matmul, a fresh buffer.
    let low = factors.low(x)?;
    // A rank that is not a multiple of 8 gives rows of a size that is no multiple of 16 bytes,
    // which cuBLASLt's tensor-core algorithms want: zero columns added to both factors change
    // no sum.
    let rank = low.dim(1)?;
    let padding = rank.next_multiple_of(8) - rank;
    let (low, up) = if padding == 0 {
        (aligned(&low)?, up)
    } else {
        (
            low.pad_with_zeros(1, 0, padding)?,
            up.pad_with_zeros(1, 0, padding)?,
        )
    };
    gemm(gpu, &low, &up, None, None, out, (m, rank + padding, n), 0.0)
}

/// `epilogue(x·Wᵀ + b (+ low-rank delta))` on the device, x and the weight bf16 or f16 of one
/// dtype.
pub(crate) fn linear_with(
    kernels: &Kernels,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    low_rank: Option<LowRank<'_>>,
    epilogue: Epilogue,
) -> Result<Tensor, KernelError> {
    let gpu = super::loaded(kernels)?;
    let k = x.dim(D::Minus1)?;
    let (n, wk) = weight.dims2()?;
    if wk != k {
        return Err(KernelError::BadInput {
            kernel: KERNEL,
            problem: format!("x has {k} features, the weight {:?}", weight.dims()),
        });
    }
    let m = x.elem_count() / k.max(1);
    let mut out_dims = x.dims().to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = n;
    }
    let out_shape = Shape::from(out_dims);
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    let bias = bias.map(Tensor::contiguous).transpose()?;
    let activation = match epilogue {
        Epilogue::None => None,
        Epilogue::GeluTanh => Some(Activation::Gelu),
    };
    let (mut storage, _) = empty_like_shape(&gpu.device, x.dtype(), &out_shape)?;
    let beta = match low_rank {
        Some(low_rank) if m > 0 && low_rank.down.dim(0)? > 0 => {
            low_rank_into(gpu, &x.reshape((m, k))?, low_rank, &mut storage, (m, n))?;
            1.0
        }
        _ => 0.0,
    };
    gemm(
        gpu,
        &x,
        &weight,
        bias.as_ref(),
        activation.as_ref(),
        &mut storage,
        (m, k, n),
        beta,
    )?;
    Ok(output_tensor(storage, out_shape))
}
