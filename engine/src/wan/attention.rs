//! The one entry point for every attention in the transformer: scaled dot-product attention
//! without a mask, `[B, S, H, D]` in and out.
//!
//! The implementation lives in `stillmotion_kernels::attention`: the exact float32 reference
//! on the CPU (chunked over queries, so no score block passes candle's 2^31-element softmax
//! limit), and on CUDA cuDNN's fused attention or our own flash-attention kernel.

use candle_core::Tensor;
use stillmotion_kernels::Kernels;

use crate::EngineError;

/// `q` `[B, Sq, H, D]`, `k`/`v` `[B, Sk, H, D]` → `[B, Sq, H, D]`.
pub fn attention(
    kernels: &Kernels,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
) -> Result<Tensor, EngineError> {
    Ok(stillmotion_kernels::attention::attention(kernels, q, k, v)?)
}
