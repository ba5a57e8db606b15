//! Comparisons the end-to-end tests share.

use candle_core::{Result, Tensor};

/// The largest absolute difference between `a` and `b` (same shape).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
}
