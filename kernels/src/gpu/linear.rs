//! cuBLASLt GEMM with the bias (and GELU) in the epilogue.

use candle_core::{D, DType, Shape, Tensor};
use cudarc::cublaslt::{Activation, Matmul, MatmulConfig};

use super::{empty_like_shape, output_tensor};
use crate::linear::Epilogue;
use crate::{KernelError, Kernels};

const KERNEL: &str = "linear";

pub(crate) fn linear(
    kernels: &Kernels,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
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
    // Row-major y[M, N] = x[M, K]·W[N, K]ᵀ is column-major yᵀ[N, M] = W(as [K, N])ᵀ·xᵀ.
    let config = MatmulConfig {
        transa: true,
        transb: false,
        transc: false,
        m: n as u64,
        n: m as u64,
        k: k as u64,
        alpha: 1.0,
        lda: k as i64,
        ldb: k as i64,
        beta: 0.0,
        ldc: n as i64,
        stride_a: None,
        stride_b: None,
        stride_c: None,
        stride_bias: None,
        batch_size: None,
    };
    let activation = match epilogue {
        Epilogue::None => None,
        Epilogue::GeluTanh => Some(Activation::Gelu),
    };
    let (storage, _) = empty_like_shape(&gpu.device, x.dtype(), &out_shape)?;
    let mut storage = storage;
    macro_rules! run {
        ($t:ty) => {{
            let (xs, xl) = x.storage_and_layout();
            let (ws, wl) = weight.storage_and_layout();
            let (candle_core::Storage::Cuda(xs), candle_core::Storage::Cuda(ws)) = (&*xs, &*ws)
            else {
                return Err(KernelError::BadInput {
                    kernel: KERNEL,
                    problem: "tensors are not on the CUDA device".to_owned(),
                });
            };
            let xv = xs.as_cuda_slice::<$t>()?.slice(xl.start_offset()..);
            let wv = ws.as_cuda_slice::<$t>()?.slice(wl.start_offset()..);
            let bias_guard = bias.as_ref().map(|b| b.storage_and_layout());
            let bias_view = match &bias_guard {
                Some((bs, bl)) => match &**bs {
                    candle_core::Storage::Cuda(bs) => {
                        Some(bs.as_cuda_slice::<$t>()?.slice(bl.start_offset()..))
                    }
                    _ => None,
                },
                None => None,
            };
            let out = storage.as_cuda_slice_mut::<$t>()?;
            // SAFETY: the views cover contiguous x [M, K], W [N, K], bias [N] and the output
            // [M, N] exactly as the config describes; all on candle's stream.
            unsafe {
                gpu.blas_lt.matmul(
                    config,
                    &wv,
                    &xv,
                    out,
                    bias_view.as_ref(),
                    activation.as_ref(),
                )
            }
            .map_err(|e| KernelError::Cuda {
                problem: format!("cuBLASLt GEMM {m}×{k}·{k}×{n}: {e:?}"),
            })?;
        }};
    }
    match x.dtype() {
        DType::BF16 => run!(half::bf16),
        DType::F16 => run!(half::f16),
        other => {
            return Err(KernelError::BadInput {
                kernel: KERNEL,
                problem: format!("dtype {other:?}: cuBLASLt path takes bf16 or f16"),
            });
        }
    }
    Ok(output_tensor(storage, out_shape))
}
