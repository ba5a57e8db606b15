//! The exact float32 attention, chunked over queries so the score matrix of one chunk stays
//! under [`MAX_SCORE_ELEMENTS`]: a 480p 81-frame clip has 32 760 tokens, whose full score
//! matrix (40 heads) would be 43 G elements, and candle's `softmax_last_dim` is wrong past
//! 2^31 elements.

use candle_core::{DType, Tensor};

use super::bad;
use crate::KernelError;

/// Largest score block (`batch · heads · queries · keys`) computed at once.
pub const MAX_SCORE_ELEMENTS: usize = 1 << 28;

/// `q` `[B, Sq, H, D]`, `k`/`v` `[B, Sk, H, D]` → `[B, Sq, H, D]` float32.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor, KernelError> {
    attention_chunked(q, k, v, MAX_SCORE_ELEMENTS)
}

/// [`attention`] with an explicit bound on the score block (tests use small bounds).
pub fn attention_chunked(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    max_score_elements: usize,
) -> Result<Tensor, KernelError> {
    let (b, sq, h, d) = q.dims4()?;
    let (bk, sk, hk, dk) = k.dims4()?;
    if (bk, hk, dk) != (b, h, d) || v.dims() != k.dims() {
        return Err(bad(format!(
            "shapes disagree: q {:?}, k {:?}, v {:?}",
            q.dims(),
            k.dims(),
            v.dims()
        )));
    }
    let scale = 1.0 / (d as f64).sqrt();
    // [B, H, S, D], contiguous for the matmuls.
    let heads_first = |x: &Tensor| -> candle_core::Result<Tensor> {
        x.to_dtype(DType::F32)?.transpose(1, 2)?.contiguous()
    };
    let (q, k, v) = (heads_first(q)?, heads_first(k)?, heads_first(v)?);
    let kt = k.transpose(2, 3)?.contiguous()?;
    let per_query = (b * h * sk).max(1);
    let chunk = (max_score_elements / per_query).clamp(1, sq.max(1));
    let mut outputs = Vec::with_capacity(sq.div_ceil(chunk));
    let mut start = 0;
    while start < sq {
        let len = chunk.min(sq - start);
        let qc = q.narrow(2, start, len)?;
        let scores = (qc.matmul(&kt)? * scale)?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        outputs.push(weights.matmul(&v)?);
        start += len;
    }
    let out = if outputs.len() == 1 {
        outputs.remove(0)
    } else {
        Tensor::cat(&outputs, 2)?
    };
    Ok(out.transpose(1, 2)?.contiguous()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn seeded(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let mut state = seed;
        let values: Vec<f32> = (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn chunked_equals_unchunked_bit_for_bit() {
        let q = seeded((2, 37, 3, 8), 1);
        let k = seeded((2, 23, 3, 8), 2);
        let v = seeded((2, 23, 3, 8), 3);
        let whole = attention(&q, &k, &v).unwrap();
        // 2·3·23 = 138 scores per query: bounds of 1, 5 and 7 queries per chunk (the last
        // chunk shorter), all give the same numbers.
        for bound in [1, 138 * 5, 138 * 7 + 3] {
            let chunked = attention_chunked(&q, &k, &v, bound).unwrap();
            let diff = (&chunked - &whole)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "bound {bound}");
        }
    }

    #[test]
    fn matches_a_direct_softmax_in_float64() {
        let (sq, sk, h, d) = (4, 6, 2, 4);
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (q, k, v) = (
            seeded((1, sq, h, d), 4),
            seeded((1, sk, h, d), 5),
            seeded((1, sk, h, d), 6),
        );
        let out = flat(&attention(&q, &k, &v).unwrap());
        let (q, k, v) = (flat(&q), flat(&k), flat(&v));
        let at = |x: &[f32], s: usize, head: usize, c: usize| f64::from(x[(s * h + head) * d + c]);
        for head in 0..h {
            for i in 0..sq {
                let logits: Vec<f64> = (0..sk)
                    .map(|j| {
                        (0..d)
                            .map(|c| at(&q, i, head, c) * at(&k, j, head, c))
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
                let z: f64 = w.iter().sum();
                for c in 0..d {
                    let expected: f64 = (0..sk).map(|j| w[j] / z * at(&v, j, head, c)).sum();
                    let actual = at(&out, i, head, c);
                    assert!((actual - expected).abs() < 1e-6, "{actual} vs {expected}");
                }
            }
        }
    }
}
