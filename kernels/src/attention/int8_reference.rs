//! The CPU reference of the 8-bit attention kernels (`cuda/sage_attention.cu`,
//! `cuda/sage_wgmma.cu`): the same quantization, the same key tiles of the online softmax (64
//! keys, or 128 in the pipelined Hopper kernel), and the same rounding of P and V, in float32
//! candle ops. It is what the GPU kernel is checked against, and it measures what
//! 8 bits cost against the exact [`super::reference::attention`].
//!
//! - K is smoothed (its per-channel mean over the keys subtracted), then quantized to INT8 per
//!   64 keys of a head; Q per 16 query rows of a head. Products of INT8 values summed over a
//!   head (|Σ| ≤ 127²·128 < 2²⁴) are exact in float32, as the kernel's int32 accumulation is.
//! - P = exp2(s − running max) ∈ (0, 1]; with FP8 P·V it is scaled by 448 and rounded to e4m3,
//!   and V is scaled per channel to ±448 and rounded to e4m3; with 16-bit P·V, P is rounded to
//!   the input type and V used as it is.

use candle_core::{D, DType, Tensor};

use crate::KernelError;

/// Keys per tile and per K scale (`kBlockN`).
const KEY_TILE: usize = 64;
/// Query rows per Q scale (`kQRows`).
const Q_ROWS: usize = 16;
/// The largest finite e4m3 value.
const FP8_MAX: f64 = 448.0;

/// softmax(q·kᵀ/√d)·v as the 8-bit kernel computes it: q `[B, Sq, H, D]`, k/v `[B, Sk, H, D]`
/// in bf16 or f16 (the type P is rounded to with 16-bit P·V), any device; float32 out.
/// `softmax_keys` (64 or 128, see [`super::Int8Kernel::softmax_keys`]) is the key tile over
/// which each step of the online softmax takes its maximum and rounds P; K's scales stay per 64
/// keys either way.
pub fn int8_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    fp8_pv: bool,
    softmax_keys: usize,
) -> Result<Tensor, KernelError> {
    if softmax_keys == 0 || !softmax_keys.is_multiple_of(KEY_TILE) {
        return Err(super::bad(format!(
            "{softmax_keys} keys a softmax tile: a multiple of {KEY_TILE}"
        )));
    }
    let half = q.dtype();
    let (_, sq, _, d) = q.dims4()?;
    let sk = k.dim(1)?;
    // [B, H, S, D] in float32.
    let heads_first = |x: &Tensor| -> candle_core::Result<Tensor> {
        x.to_dtype(DType::F32)?.transpose(1, 2)?.contiguous()
    };
    let (q, k, v) = (heads_first(q)?, heads_first(k)?, heads_first(v)?);
    let softmax_log2 = std::f64::consts::LOG2_E / (d as f64).sqrt();

    let (q_int, q_scale) = quantize_groups(&q, Q_ROWS)?;
    let q_scale = (per_row(&q_scale, Q_ROWS, sq)? * softmax_log2)?;
    let k = k.broadcast_sub(&k.mean_keepdim(2)?)?;
    let (k_int, k_scale) = quantize_groups(&k, KEY_TILE)?;
    let (v, col_scale) = if fp8_pv {
        let absmax = v.abs()?.max_keepdim(2)?; // [B, H, 1, D]
        let safe = absmax.clamp(f32::MIN_POSITIVE, f32::MAX)?;
        // An all-zero channel stays zero (0 / tiny), as in the kernel.
        let v8 = round_e4m3(&v.broadcast_div(&safe)?.affine(FP8_MAX, 0.0)?)?;
        (v8, Some((absmax / (FP8_MAX * FP8_MAX))?))
    } else {
        (v, None)
    };

    let (b, h) = (q.dim(0)?, q.dim(1)?);
    let mut out = Tensor::zeros((b, h, sq, d), DType::F32, q.device())?;
    let mut row_max = Tensor::full(f32::NEG_INFINITY, (b, h, sq, 1), q.device())?;
    let mut row_sum = Tensor::zeros((b, h, sq, 1), DType::F32, q.device())?;
    for start in (0..sk).step_by(softmax_keys) {
        let len = softmax_keys.min(sk - start);
        // Each 64-key scale group of the tile with its own K scale.
        let groups = (start..start + len)
            .step_by(KEY_TILE)
            .map(|group| {
                let group_len = KEY_TILE.min(start + len - group);
                q_int
                    .matmul(&k_int.narrow(2, group, group_len)?.t()?)?
                    .broadcast_mul(&q_scale)?
                    .broadcast_mul(&k_scale.narrow(2, group / KEY_TILE, 1)?)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let scores = Tensor::cat(&groups, D::Minus1)?;
        let new_max = row_max.maximum(&scores.max_keepdim(D::Minus1)?)?;
        let rescale = exp2(&(row_max - &new_max)?)?;
        let p = exp2(&scores.broadcast_sub(&new_max)?)?;
        row_sum = ((row_sum * &rescale)? + p.sum_keepdim(D::Minus1)?)?;
        let v_tile = v.narrow(2, start, len)?;
        let partial = if fp8_pv {
            round_e4m3(&p.affine(FP8_MAX, 0.0)?)?.matmul(&v_tile)?
        } else {
            p.to_dtype(half)?.to_dtype(DType::F32)?.matmul(&v_tile)?
        };
        out = (out.broadcast_mul(&rescale)? + partial)?;
        row_max = new_max;
    }
    let mut out = out.broadcast_div(&row_sum)?;
    if let Some(col_scale) = col_scale {
        out = out.broadcast_mul(&col_scale)?;
    }
    Ok(out.transpose(1, 2)?.contiguous()?)
}

fn exp2(x: &Tensor) -> candle_core::Result<Tensor> {
    x.affine(std::f64::consts::LN_2, 0.0)?.exp()
}

/// e4m3 rounding (nearest even, saturating at ±448), back in float32.
fn round_e4m3(x: &Tensor) -> candle_core::Result<Tensor> {
    x.to_dtype(DType::F8E4M3)?.to_dtype(DType::F32)
}

/// INT8 values (as float32) and one scale per `rows` rows of each head, for x `[B, H, S, D]`:
/// scale = max |x| / 127 over the group (1 for an all-zero group), values rounded to the
/// nearest integer. Returns `[B, H, S, D]` and the scales `[B, H, groups, 1]`.
fn quantize_groups(x: &Tensor, rows: usize) -> candle_core::Result<(Tensor, Tensor)> {
    let (b, h, s, d) = x.dims4()?;
    let groups = s.div_ceil(rows);
    let padded = if groups * rows == s {
        x.clone()
    } else {
        x.pad_with_zeros(2, 0, groups * rows - s)?
    };
    let grouped = padded.reshape((b, h, groups, rows * d))?;
    let absmax = grouped.abs()?.max_keepdim(D::Minus1)?;
    let nonzero = absmax.ge(f32::MIN_POSITIVE)?;
    let scale = nonzero.where_cond(&(&absmax / 127.0)?, &absmax.ones_like()?)?;
    let values = grouped
        .broadcast_div(&scale)?
        .round()?
        .clamp(-127f32, 127f32)?
        .reshape((b, h, groups * rows, d))?
        .narrow(2, 0, s)?;
    Ok((values, scale))
}

/// Group scales `[B, H, groups, 1]` as one per row `[B, H, s, 1]`.
fn per_row(scale: &Tensor, rows: usize, s: usize) -> candle_core::Result<Tensor> {
    let (b, h, groups, _) = scale.dims4()?;
    scale
        .repeat((1, 1, 1, rows))?
        .reshape((b, h, groups * rows, 1))?
        .narrow(2, 0, s)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::int8_attention;
    use crate::attention::reference;

    fn rel_l2(a: &Tensor, b: &Tensor) -> f32 {
        let diff = (a - b).unwrap().sqr().unwrap().sum_all().unwrap();
        let norm = b.sqr().unwrap().sum_all().unwrap();
        (diff.to_scalar::<f32>().unwrap() / norm.to_scalar::<f32>().unwrap()).sqrt()
    }

    fn inputs(sq: usize, sk: usize, d: usize, k_offset: f32) -> (Tensor, Tensor, Tensor) {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (1, sq, 2, d), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (1, sk, 2, d), &dev).unwrap();
        // A per-channel offset, as real K has: smoothing must remove it.
        let offset =
            (Tensor::randn(0f32, 1.0, (1, 1, 2, d), &dev).unwrap() * f64::from(k_offset)).unwrap();
        let k = k.broadcast_add(&offset).unwrap();
        let v = Tensor::randn(0f32, 1.0, (1, sk, 2, d), &dev).unwrap();
        let bf16 = |x: Tensor| x.to_dtype(DType::BF16).unwrap();
        (bf16(q), bf16(k), bf16(v))
    }

    #[test]
    fn eight_bits_stay_close_to_exact_attention_at_odd_lengths() {
        let (q, k, v) = inputs(45, 150, 64, 0.0);
        let exact = reference::attention(&q, &k, &v).unwrap();
        for fp8 in [false, true] {
            let tiles = [64, 128].map(|keys| int8_attention(&q, &k, &v, fp8, keys).unwrap());
            for (ours, keys) in tiles.iter().zip([64, 128]) {
                assert_eq!(ours.dims(), exact.dims());
                let error = rel_l2(ours, &exact);
                // SageAttention2's published error on such inputs is a few percent.
                assert!(error < 4e-2, "fp8 P·V {fp8}, {keys} keys: rel L2 {error}");
                assert!(
                    error > 1e-5,
                    "fp8 P·V {fp8}, {keys} keys: no quantization error at all ({error})"
                );
            }
            // 150 keys are three 64-key tiles or two of 128: P is rounded against other
            // maxima, so the two differ, by less than either's error.
            let between = rel_l2(&tiles[1], &tiles[0]);
            assert!(
                between > 0.0 && between < 2e-2,
                "fp8 P·V {fp8}: 128- against 64-key tiles {between}"
            );
        }
    }

    #[test]
    fn a_softmax_tile_must_be_whole_scale_groups() {
        let (q, k, v) = inputs(16, 150, 64, 0.0);
        for keys in [0, 96] {
            let error = int8_attention(&q, &k, &v, true, keys)
                .unwrap_err()
                .to_string();
            assert!(error.contains("a multiple of 64"), "{keys}: {error}");
        }
    }

    #[test]
    fn smoothing_k_removes_a_channel_offset_from_the_error() {
        let (q, k, v) = inputs(32, 128, 128, 0.0);
        let (_, k_shifted, _) = inputs(32, 128, 128, 30.0);
        // Same q, v; k with and without a large per-channel offset (the exact softmax of the
        // offset keys differs, so compare each against its own exact result).
        let plain = rel_l2(
            &int8_attention(&q, &k, &v, true, 64).unwrap(),
            &reference::attention(&q, &k, &v).unwrap(),
        );
        let shifted = rel_l2(
            &int8_attention(&q, &k_shifted, &v, true, 64).unwrap(),
            &reference::attention(&q, &k_shifted, &v).unwrap(),
        );
        assert!(
            shifted < 2.0 * plain + 1e-2,
            "offset K: rel L2 {shifted} against {plain} without the offset"
        );
    }
}
