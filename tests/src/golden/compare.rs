//! Comparing an output tensor with the reference's.

use anyhow::{Context, bail};
use candle_core::{DType, Tensor};

/// Error of one tensor against its expected value, computed in f64.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Metrics {
    pub max_abs: f64,
    /// ‖actual − expected‖₂ / ‖expected‖₂ (or the absolute norm when expected is all zeros).
    pub rel_l2: f64,
}

/// Compares two tensors of the same shape (any float dtype, any device).
pub fn compare(actual: &Tensor, expected: &Tensor) -> anyhow::Result<Metrics> {
    if actual.dims() != expected.dims() {
        bail!(
            "shape {:?} differs from the expected {:?}",
            actual.dims(),
            expected.dims()
        );
    }
    let flat = |t: &Tensor| -> anyhow::Result<Vec<f64>> {
        t.to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()
            .context("reading tensor values")
    };
    let (actual, expected) = (flat(actual)?, flat(expected)?);
    let mut max_abs = 0.0_f64;
    let mut diff_sq = 0.0_f64;
    let mut norm_sq = 0.0_f64;
    for (a, e) in actual.iter().zip(&expected) {
        let d = a - e;
        if !d.is_finite() {
            // NaN or infinity in either: the comparison fails loudly rather than passing.
            return Ok(Metrics {
                max_abs: f64::INFINITY,
                rel_l2: f64::INFINITY,
            });
        }
        max_abs = max_abs.max(d.abs());
        diff_sq += d * d;
        norm_sq += e * e;
    }
    let rel_l2 = if norm_sq > 0.0 {
        (diff_sq / norm_sq).sqrt()
    } else {
        diff_sq.sqrt()
    };
    Ok(Metrics { max_abs, rel_l2 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn metrics_are_exact_on_known_values() {
        let e = Tensor::new(&[3.0_f32, 4.0], &Device::Cpu).unwrap();
        let a = Tensor::new(&[3.0_f32, 4.5], &Device::Cpu).unwrap();
        let m = compare(&a, &e).unwrap();
        assert!((m.max_abs - 0.5).abs() < 1e-12);
        assert!((m.rel_l2 - 0.1).abs() < 1e-12);
        assert_eq!(compare(&e, &e).unwrap().rel_l2, 0.0);
    }

    #[test]
    fn nan_and_shape_mismatch_fail() {
        let e = Tensor::new(&[1.0_f32, 2.0], &Device::Cpu).unwrap();
        let nan = Tensor::new(&[1.0_f32, f32::NAN], &Device::Cpu).unwrap();
        assert!(compare(&nan, &e).unwrap().rel_l2.is_infinite());
        let short = Tensor::new(&[1.0_f32], &Device::Cpu).unwrap();
        assert!(compare(&short, &e).is_err());
    }
}
