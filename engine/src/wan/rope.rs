//! 3-axis rotary position embedding (frame, height, width), theta 10 000.
//!
//! A head of size `d` is split into `d/2` complex pairs of adjacent channels: the first
//! `d/2 − 2·(d/12)` rotate with the frame index, the next `d/12` with the row, the last `d/12`
//! with the column (`rope_params` / `rope_apply` in the official `model.py`). The official code
//! multiplies in complex float64; we build the cos/sin tables in float64, round them once to
//! float32 and rotate in float32, which equals the float64 result to float32 rounding
//! (proved in the tests below).

use candle_core::{Device, Tensor};

use stillmotion_kernels::Kernels;

use crate::EngineError;

const THETA: f64 = 10_000.0;

/// Per-token cos and sin tables, `[tokens, head_dim / 2]` each, in float32.
#[derive(Clone, Debug)]
pub struct Rope {
    pub cos: Tensor,
    pub sin: Tensor,
}

/// Complex-pair counts of the (frame, height, width) axes for a head of `head_dim`.
pub fn axis_pairs(head_dim: usize) -> [usize; 3] {
    let pairs = head_dim / 2;
    let spatial = pairs / 3;
    [pairs - 2 * spatial, spatial, spatial]
}

/// Rotation angles (float64) of every token of a `grid` = (frames, rows, columns) of patches,
/// row-major over the grid, `head_dim / 2` per token.
pub fn angles(grid: [usize; 3], head_dim: usize) -> Vec<f64> {
    let axes = axis_pairs(head_dim);
    // Each axis' frequencies are those of a rotary table of width 2·pairs, as the official
    // `rope_params(1024, 2 * pairs)` builds them.
    let freqs: Vec<Vec<f64>> = axes
        .iter()
        .map(|&n| {
            let width = (2 * n) as f64;
            (0..n)
                .map(|j| 1.0 / THETA.powf((2 * j) as f64 / width))
                .collect()
        })
        .collect();
    let [f, h, w] = grid;
    let mut out = Vec::with_capacity(f * h * w * head_dim / 2);
    for fi in 0..f {
        for hi in 0..h {
            for wi in 0..w {
                for (axis, pos) in [fi, hi, wi].into_iter().enumerate() {
                    out.extend(freqs[axis].iter().map(|fr| pos as f64 * fr));
                }
            }
        }
    }
    out
}

impl Rope {
    /// Tables for a grid of patches, on `device`.
    pub fn new(grid: [usize; 3], head_dim: usize, device: &Device) -> Result<Self, EngineError> {
        let tokens = grid.iter().product::<usize>();
        let angles = angles(grid, head_dim);
        let table = |f: fn(f64) -> f64| -> Result<Tensor, EngineError> {
            let values: Vec<f32> = angles.iter().map(|&a| f(a) as f32).collect();
            Ok(Tensor::from_vec(values, (tokens, head_dim / 2), device)?)
        };
        Ok(Self {
            cos: table(f64::cos)?,
            sin: table(f64::sin)?,
        })
    }

    /// Rotates `x` = `[batch, tokens, heads, head_dim]` (float32 on the CPU, like the official
    /// code; x's dtype from the CUDA kernel, as the official code casts back before attention).
    pub fn apply(&self, kernels: &Kernels, x: &Tensor) -> Result<Tensor, EngineError> {
        Ok(stillmotion_kernels::glue::rope(
            kernels, x, &self.cos, &self.sin,
        )?)
    }

    /// [`Self::apply`] to x `[B, S, H, D]` after the RMS norm (over each token's H·D values)
    /// with `weight`: one pass on CUDA.
    pub fn apply_after_norm(
        &self,
        kernels: &Kernels,
        x: &Tensor,
        weight: &Tensor,
        eps: f32,
    ) -> Result<Tensor, EngineError> {
        Ok(stillmotion_kernels::glue::rms_norm_rope(
            kernels,
            x,
            weight,
            eps,
            (&self.cos, &self.sin),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The official computation: complex multiply in float64, then round to float32.
    fn rotate_f64(x: &[f32], angles: &[f64], heads: usize, d: usize) -> Vec<f32> {
        let tokens = angles.len() / (d / 2);
        let mut out = vec![0.0_f32; x.len()];
        for t in 0..tokens {
            for h in 0..heads {
                for j in 0..d / 2 {
                    let i = (t * heads + h) * d + 2 * j;
                    let (re, im) = (f64::from(x[i]), f64::from(x[i + 1]));
                    let a = angles[t * d / 2 + j];
                    let (c, s) = (a.cos(), a.sin());
                    out[i] = (re * c - im * s) as f32;
                    out[i + 1] = (re * s + im * c) as f32;
                }
            }
        }
        out
    }

    #[test]
    fn axis_split_matches_the_official_rope_params() {
        // d=128: rope_params(1024, 44), (1024, 42), (1024, 42) -> 22 + 21 + 21 pairs.
        assert_eq!(axis_pairs(128), [22, 21, 21]);
        assert_eq!(axis_pairs(16), [4, 2, 2]);
        let a = angles([2, 3, 4], 16);
        assert_eq!(a.len(), 24 * 8);
        // Token (1, 2, 3): frame pairs rotate by 1·freq, row pairs by 2·freq, column by 3·freq.
        let t = (3 * 4 + 2 * 4 + 3) * 8;
        assert_eq!(a[t], 1.0);
        assert_eq!(a[t + 4], 2.0);
        assert_eq!(a[t + 6], 3.0);
        assert!((a[t + 1] - 1.0 / 10_000_f64.powf(2.0 / 8.0)).abs() < 1e-15);
        assert!((a[t + 7] - 3.0 / 100.0).abs() < 1e-15);
    }

    #[test]
    fn float32_rotation_equals_the_float64_reference_to_rounding() {
        let (grid, heads, d) = ([5, 30, 52], 2, 128);
        let tokens: usize = grid.iter().product();
        let n = tokens * heads * d;
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 2003) as f32 / 1001.0) - 1.0)
            .collect();
        let rope = Rope::new(grid, d, &Device::Cpu).unwrap();
        let xt = Tensor::from_vec(x.clone(), (1, tokens, heads, d), &Device::Cpu).unwrap();
        let ours = rope
            .apply(&Kernels::cpu(), &xt)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let reference = rotate_f64(&x, &angles(grid, d), heads, d);
        let max_err = ours
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0_f32, f32::max);
        // |x| ≤ 1: a few float32 ulps of 1 (the float32 table entries are within ½ ulp).
        assert!(max_err < 4e-7, "max error {max_err}");
    }
}
