//! `x·Wᵀ + b`, optionally followed by GELU (tanh approximation): on CUDA one cuBLASLt GEMM
//! with the bias (and GELU) fused into its epilogue; elsewhere candle's matmul and ops.

use candle_core::{D, Tensor};
use candle_nn::Module;

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
    if x.device().is_cuda()
        && matches!(
            weight.dtype(),
            candle_core::DType::BF16 | candle_core::DType::F16
        )
    {
        return crate::gpu::linear::linear(kernels, &x, weight, bias.as_ref(), epilogue);
    }
    let _ = kernels;
    let _ = x.dim(D::Minus1)?;
    let y = candle_nn::Linear::new(weight.clone(), bias).forward(&x)?;
    Ok(match epilogue {
        Epilogue::None => y,
        Epilogue::GeluTanh => y.gelu()?,
    })
}
