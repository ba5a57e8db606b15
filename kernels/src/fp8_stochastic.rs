//! Float32 values to float8 e4m3fn codes, rounded stochastically with a counter-based random
//! stream: the requantization of a LoRA-merged float8 layer (the engine's
//! `wan::lora_requant` says why stochastic, and which seed a tensor gets).
//!
//! The random number of element `i` is SplitMix64's output number `i + 1` of the stream seeded
//! with `seed`; its top 24 bits make a uniform `u` in `[0, 1)`, and the value rounds up (in
//! magnitude) when `u < (|v| - lo) / step`. Values at or beyond e4m3's largest finite value
//! (448) saturate to ±448; NaN stays NaN; values already on the grid come back unchanged.
//!
//! [`stochastic_round_codes`] is the CPU definition (threads split the elements; each
//! element's number depends only on its index, so the split does not change the result).
//! [`stochastic_round`] runs it, or on CUDA the kernel `cuda/fp8.cu`
//! (`stillmotion_fp8_stochastic_round`), which computes the same codes for the same float32
//! inputs: every step is exact in float32 (scaling by a power of two, flooring, a fraction below
//! 2²³, a 24-bit integer to float), written with explicit rounding intrinsics.

use candle_core::{DType, Device, Tensor};

use crate::{KernelError, Kernels};

const KERNEL: &str = "fp8_stochastic_round";

/// Largest finite float8 e4m3fn value, and its code (`0.1111.110`).
const E4M3_MAX: f32 = 448.0;
const E4M3_MAX_CODE: u8 = 0x7e;
/// e4m3fn's NaN code (`S.1111.111`).
const E4M3_NAN_CODE: u8 = 0x7f;
/// Smallest normal e4m3 value, 2⁻⁶; below it the grid is the subnormal step 2⁻⁹.
const E4M3_MIN_NORMAL: f32 = 1.0 / 64.0;
const E4M3_INV_SUBNORMAL_STEP: f32 = 512.0;
/// Elements per thread below which splitting costs more than it saves.
const MIN_PER_THREAD: usize = 1 << 16;

/// SplitMix64's output number `index + 1` from `seed`.
#[must_use]
pub fn splitmix64(seed: u64, index: u64) -> u64 {
    let mut z = seed.wrapping_add(index.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The 24-bit random number of element `index` of `seed`'s stream.
#[allow(
    clippy::cast_possible_truncation,
    reason = "the top 24 bits of a u64 fit a u32"
)]
#[must_use]
pub fn element_random(seed: u64, index: u64) -> u32 {
    (splitmix64(seed, index) >> 40) as u32
}

/// The e4m3fn code of `v` rounded to a neighbouring e4m3 value: up (in magnitude) with
/// probability `(|v| - lo) / step`, `random` the uniform's 24 bits.
///
/// Positive e4m3 codes grow with the value, one step a code: a normal value `2^e · n / 8`
/// (`n` in 8..16) has code `(e + 6) · 8 + n`, a subnormal `n · 2⁻⁹` code `n`; so rounding up is
/// the next code, which carries into the exponent at the top of a binade.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss,
    reason = "exponents and codes are small; `random` has 24 bits, exact in f32"
)]
#[must_use]
pub fn stochastic_e4m3_code(v: f32, random: u32) -> u8 {
    let sign = if v.is_sign_negative() { 0x80 } else { 0 };
    let a = v.abs();
    if a.is_nan() {
        return sign | E4M3_NAN_CODE;
    }
    if a >= E4M3_MAX {
        return sign | E4M3_MAX_CODE;
    }
    let (inv_step, base) = if a < E4M3_MIN_NORMAL {
        (E4M3_INV_SUBNORMAL_STEP, 0)
    } else {
        // a in [2^e, 2^(e+1)), e in -6..=8: the step is 2^(e-3) (3 mantissa bits).
        let e = ((a.to_bits() >> 23) & 0xff) as i32 - 127;
        let inv_step = f32::from_bits(((3 - e + 127) as u32) << 23);
        (inv_step, ((e + 6) * 8) as u32)
    };
    // Exact in f32: scaling by a power of two, flooring, and the fraction below 2^23.
    let steps = a * inv_step;
    let n = steps.floor();
    let fraction = steps - n;
    let u = random as f32 * (1.0 / 16_777_216.0);
    let code = base + n as u32 + u32::from(u < fraction);
    sign | code as u8
}

/// The e4m3fn codes of `values`, each stochastically rounded with the `i`-th number of
/// `seed`'s stream: the CPU definition of [`stochastic_round`].
#[must_use]
pub fn stochastic_round_codes(values: &[f32], seed: u64) -> Vec<u8> {
    let round_chunk = |offset: usize, chunk: &[f32], out: &mut [u8]| {
        for (i, (o, &v)) in out.iter_mut().zip(chunk).enumerate() {
            *o = stochastic_e4m3_code(v, element_random(seed, (offset + i) as u64));
        }
    };
    let mut out = vec![0_u8; values.len()];
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(values.len() / MIN_PER_THREAD)
        .max(1);
    if threads == 1 {
        round_chunk(0, values, &mut out);
        return out;
    }
    let per = values.len().div_ceil(threads);
    let mut failed = Vec::new();
    std::thread::scope(|scope| {
        for (n, (chunk, out)) in values.chunks(per).zip(out.chunks_mut(per)).enumerate() {
            let spawned = std::thread::Builder::new()
                .name(format!("fp8-requantize-{n}"))
                .spawn_scoped(scope, move || round_chunk(n * per, chunk, out));
            if spawned.is_err() {
                failed.push(n);
            }
        }
    });
    // Chunks no thread could be had for round here, with the same numbers.
    for n in failed {
        let range = n * per..((n + 1) * per).min(values.len());
        round_chunk(range.start, &values[range.clone()], &mut out[range]);
    }
    out
}

/// `values` (float32, any shape) as float8 e4m3 on their device, each rounded stochastically
/// with `seed`'s stream (element `i` of the row-major order takes number `i`). On the CPU:
/// [`stochastic_round_codes`]; on CUDA our kernel, which gives the same codes.
pub fn stochastic_round(
    kernels: &Kernels,
    values: &Tensor,
    seed: u64,
) -> Result<Tensor, KernelError> {
    if values.dtype() != DType::F32 {
        return Err(KernelError::BadInput {
            kernel: KERNEL,
            problem: format!("rounds float32 values, not {:?}", values.dtype()),
        });
    }
    match values.device() {
        Device::Cpu => {
            let flat = values.flatten_all()?.to_vec1::<f32>()?;
            let codes = stochastic_round_codes(&flat, seed);
            drop(flat);
            Ok(Tensor::from_raw_buffer(
                &codes,
                DType::F8E4M3,
                values.dims(),
                &Device::Cpu,
            )?)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => crate::gpu::fp8_round::stochastic_round(kernels, values, seed),
        other => {
            let _ = kernels;
            Err(KernelError::BadInput {
                kernel: KERNEL,
                problem: format!("no float8 rounding on {other:?}"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tensor_path_gives_the_codes_of_the_slice_path_in_row_major_order() {
        let values: Vec<f32> = (0..6 * 7)
            .map(|i| (i as f32 * 0.73).sin() * 300.0)
            .collect();
        let t = Tensor::from_vec(values.clone(), (6, 7), &Device::Cpu).unwrap();
        let q = stochastic_round(&Kernels::cpu(), &t, 99).unwrap();
        assert_eq!(q.dtype(), DType::F8E4M3);
        assert_eq!(q.dims(), &[6, 7]);
        let codes = stochastic_round_codes(&values, 99);
        let expected = Tensor::from_raw_buffer(&codes, DType::F8E4M3, &[6, 7], &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let got = q.to_dtype(DType::F32).unwrap();
        assert_eq!(
            got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            expected.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        // A transposed view rounds in its own row-major order, as the CUDA path's copy does.
        let tt = stochastic_round(&Kernels::cpu(), &t.t().unwrap(), 99).unwrap();
        let transposed: Vec<f32> = t
            .t()
            .unwrap()
            .contiguous()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let codes = stochastic_round_codes(&transposed, 99);
        let expected = Tensor::from_raw_buffer(&codes, DType::F8E4M3, &[42], &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(
            tt.to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            expected
        );
        assert!(stochastic_round(&Kernels::cpu(), &t.to_dtype(DType::BF16).unwrap(), 1).is_err());
    }

    /// Codes pinned from the rule by hand: 1.0 + a quarter step (1.03125) rounds up exactly when
    /// u < 1/4; −0.0 keeps its sign; 448 and beyond saturate; NaN keeps its sign.
    #[test]
    fn hand_checked_codes() {
        // 1.0 = 2^0 · 8/8: code (0 + 6) · 8 + 8 = 56 = 0x38; one step up 0x39.
        let quarter = 1 << 22; // u = 1/4 exactly
        assert_eq!(stochastic_e4m3_code(1.031_25, quarter - 1), 0x39);
        assert_eq!(stochastic_e4m3_code(1.031_25, quarter), 0x38);
        assert_eq!(stochastic_e4m3_code(-1.031_25, 0), 0xb9);
        assert_eq!(stochastic_e4m3_code(-0.0, 0), 0x80);
        assert_eq!(stochastic_e4m3_code(448.0, 0), 0x7e);
        assert_eq!(stochastic_e4m3_code(-1e30, 0), 0xfe);
        assert_eq!(stochastic_e4m3_code(f32::NAN, 0), 0x7f);
        assert_eq!(stochastic_e4m3_code(-f32::NAN, 0), 0xff);
        // The largest subnormal 7 · 2⁻⁹ plus half a step: to 7 or to the smallest normal 8.
        let v = 7.5 / 512.0;
        assert_eq!(stochastic_e4m3_code(v, (1 << 23) - 1), 0x08);
        assert_eq!(stochastic_e4m3_code(v, 1 << 23), 0x07);
        // SplitMix64's first output from seed 0 (the published test vector).
        assert_eq!(splitmix64(0, 0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(element_random(0, 0), 0xe2_20a8);
    }
}
