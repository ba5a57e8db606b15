//! Requantizing a LoRA-merged float8 layer back to float8 e4m3 with its own scale, rounding
//! stochastically, as ComfyUI does when it patches float8 weights (`comfy/float.py`
//! `stochastic_rounding`, seeded per weight key in `comfy/model_patcher.py`).
//!
//! Why stochastic: a LoRA's delta to one weight is usually far smaller than half an e4m3 step
//! (the grid has 3 mantissa bits: steps of 1/16 to 1/8 of the value), so rounding to nearest
//! would give back the unmerged weight almost everywhere and the LoRA would vanish. Rounding up
//! with probability `(v - lo) / (hi - lo)` keeps every value's expectation exact, so the
//! deltas survive on average over the many weights a matmul sums.
//!
//! Deterministic: the random number of element `i` of the tensor named `key` (the model's name
//! in the original layout, e.g. `blocks.0.self_attn.q.weight`) is SplitMix64's output number
//! `i + 1` of the stream seeded with the 64-bit FNV-1a hash of the key's UTF-8 bytes; its top
//! 24 bits make a uniform `u` in `[0, 1)`, and the value rounds up when `u < (v - lo) / step`.
//! It runs on the CPU at load, after a CPU merge (`super::lora`), and the float8 bits go up to
//! the device: CPU and CUDA loads give the same bits. Threads split the elements; each element's
//! number depends only on its index, so the split does not change the result.
//!
//! Values at or beyond e4m3's largest finite value (448) saturate to ±448, as ComfyUI clamps;
//! NaN stays NaN. Inputs already on the grid come back unchanged (their fraction is 0).

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

/// When a LoRA merged into a float8 (`fp8_scaled`) layer is requantized to float8.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraRequantize {
    /// On CUDA, where the merged layer's memory is what limits a render (see [`Self::resolve`]);
    /// never on the CPU.
    #[default]
    Auto,
    /// Always: the layer stays one byte a weight, the merge rounded stochastically.
    Always,
    /// Never: the merged layer is kept in the compute dtype (exact, twice the memory in bf16).
    Never,
}

impl LoraRequantize {
    /// Whether a load on `device` requantizes. `Auto` requantizes on CUDA, as ComfyUI always
    /// does for float8 weights: an fp8_scaled file was chosen for its memory, and with a LoRA
    /// on every linear (LightX2V) the compute-dtype merge doubles an A14B expert (14 to 28 GB).
    /// It does not depend on the memory budget, so one recipe gives the same weights on every
    /// GPU. On the CPU (no device budget; the reference path) the merge stays exact.
    #[must_use]
    pub fn resolve(self, device: &Device) -> bool {
        match self {
            Self::Auto => device.is_cuda(),
            Self::Always => true,
            Self::Never => false,
        }
    }
}

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

/// The seed of a tensor's stream: 64-bit FNV-1a of the key's bytes.
#[must_use]
pub fn key_seed(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// SplitMix64's output number `index + 1` from `seed`.
fn splitmix(seed: u64, index: u64) -> u64 {
    let mut z = seed.wrapping_add(index.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The e4m3fn code of `v` rounded to a neighbouring e4m3 value: up (in magnitude) with
/// probability `(|v| - lo) / step`, `random` the uniform's 24 bits.
///
/// Positive e4m3 codes grow with the value, one step a code: a normal value `2^e · n / 8`
/// (`n` in 8..16) has code `(e + 6) · 8 + n`, a subnormal `n · 2⁻⁹` code `n`; so rounding up is
/// the next code, which carries into the exponent at the top of a binade.
fn round_one(v: f32, random: u32) -> u8 {
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

/// The e4m3fn codes of `values` (already divided by the layer's scale), each stochastically
/// rounded with the `i`-th number of `seed`'s stream.
#[must_use]
pub fn stochastic_round_e4m3(values: &[f32], seed: u64) -> Vec<u8> {
    let round_chunk = |offset: usize, chunk: &[f32], out: &mut [u8]| {
        for (i, (o, &v)) in out.iter_mut().zip(chunk).enumerate() {
            let random = (splitmix(seed, (offset + i) as u64) >> 40) as u32;
            *o = round_one(v, random);
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

/// The merged float32 `merged` (already divided by the layer's scale, any device) as float8
/// e4m3 on the same device, rounded stochastically with the stream of `key` (the model's
/// tensor name).
pub(super) fn requantize(merged: &Tensor, key: &str) -> candle_core::Result<Tensor> {
    let device = merged.device().clone();
    let shape = merged.shape().clone();
    let values = merged
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let codes = stochastic_round_e4m3(&values, key_seed(key));
    drop(values);
    // Built on the CPU (candle's CUDA casts to float8 are not to be trusted) and uploaded at
    // one byte a weight.
    Tensor::from_raw_buffer(&codes, DType::F8E4M3, shape.dims(), &Device::Cpu)?.to_device(&device)
}

/// The values of e4m3fn `codes`, through candle's float8 conversion.
#[cfg(test)]
pub(super) fn e4m3_values(codes: &[u8]) -> Vec<f32> {
    Tensor::from_raw_buffer(codes, DType::F8E4M3, &[codes.len()], &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every e4m3fn finite value, from the bit patterns.
    fn grid() -> Vec<f32> {
        let codes: Vec<u8> = (0_u8..=255).collect();
        let mut v: Vec<f32> = e4m3_values(&codes)
            .into_iter()
            .filter(|x| x.is_finite())
            .collect();
        v.sort_by(f32::total_cmp);
        v.dedup();
        v
    }

    #[test]
    fn results_lie_on_the_grid_between_the_two_neighbours() {
        let grid = grid();
        assert_eq!(
            grid.len(),
            253,
            "126 positive, 126 negative finite values and 0"
        );
        let values: Vec<f32> = (0..20_000)
            .map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * 2.0 * 460.0 * (i as f32 * 1e-4))
            .collect();
        let out = e4m3_values(&stochastic_round_e4m3(&values, 7));
        for (&v, &q) in values.iter().zip(&out) {
            let pos = grid.partition_point(|&g| g < q);
            assert_eq!(grid[pos], q, "{q} is no e4m3 value");
            let clamped = v.clamp(-448.0, 448.0);
            let lo = grid[grid.partition_point(|&g| g <= clamped) - 1];
            let hi = grid[grid.partition_point(|&g| g < clamped).min(grid.len() - 1)];
            assert!(q == lo || q == hi, "{v} → {q}, neighbours {lo} and {hi}");
        }
        // Every finite code's value comes back as that code, whatever the random number.
        let codes: Vec<u8> = (0_u8..=255).filter(|c| c & 0x7f != 0x7f).collect();
        for (&code, v) in codes.iter().zip(e4m3_values(&codes)) {
            for random in [0, 1 << 23, (1 << 24) - 1] {
                assert_eq!(round_one(v, random), code, "{v}");
            }
        }
        // On-grid values and the special ones.
        let special = [
            0.0,
            -0.0,
            448.0,
            -448.0,
            1000.0,
            f32::NAN,
            0.001_953_125,
            1.125,
        ];
        let out = e4m3_values(&stochastic_round_e4m3(&special, 3));
        assert_eq!(&out[..4], &[0.0, -0.0, 448.0, -448.0]);
        assert_eq!(out[4], 448.0);
        assert!(out[5].is_nan());
        assert_eq!(&out[6..], &[0.001_953_125, 1.125]);
    }

    /// A delta a quarter of a step above a grid value: round to nearest loses it entirely;
    /// the stochastic mean keeps it within its standard error.
    #[test]
    fn the_mean_of_rounded_values_is_the_exact_value() {
        let n = 1 << 20;
        for (base, step) in [
            (1.0_f32, 0.125_f32),
            (0.007_812_5, 1.0 / 512.0),
            (288.0, 32.0),
        ] {
            let exact = base + 0.25 * step;
            let values = vec![exact; n];
            let out = e4m3_values(&stochastic_round_e4m3(
                &values,
                key_seed("blocks.0.ffn.0.weight"),
            ));
            let mean = out.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64;
            let nearest = Tensor::new(exact, &Device::Cpu)
                .unwrap()
                .to_dtype(DType::F8E4M3)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(nearest, base, "round to nearest drops the delta");
            // Bernoulli(1/4) steps: standard error step·√(p(1-p)/n) = 4.2e-4 step; 5 of them.
            let bound = 5.0 * f64::from(step) * (0.25_f64 * 0.75 / n as f64).sqrt();
            println!(
                "{exact}: stochastic mean {mean} (error {:.2e}, bound {bound:.2e}), nearest {nearest}",
                (mean - f64::from(exact)).abs()
            );
            assert!((mean - f64::from(exact)).abs() < bound, "{mean} vs {exact}");
        }
    }

    #[test]
    fn the_same_key_gives_the_same_bits_and_another_key_others() {
        let values: Vec<f32> = (0..300_000)
            .map(|i| (i as f32 * 0.37).sin() * 3.0)
            .collect();
        let a = stochastic_round_e4m3(&values, key_seed("blocks.1.self_attn.q.weight"));
        let b = stochastic_round_e4m3(&values, key_seed("blocks.1.self_attn.q.weight"));
        let c = stochastic_round_e4m3(&values, key_seed("blocks.1.self_attn.k.weight"));
        assert_eq!(a, b);
        let differ = a.iter().zip(&c).filter(|(x, y)| x != y).count();
        assert!(differ > values.len() / 10, "{differ}");
        // The threaded split gives what one thread gives (element i always uses number i).
        let single: Vec<u8> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let random =
                    (splitmix(key_seed("blocks.1.self_attn.q.weight"), i as u64) >> 40) as u32;
                round_one(v, random)
            })
            .collect();
        assert_eq!(a, single);
        // The documented hash: FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c.
        assert_eq!(key_seed("a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn the_option_is_written_in_snake_case_and_auto_means_cuda_only() {
        for (choice, text) in [
            (LoraRequantize::Auto, "\"auto\""),
            (LoraRequantize::Always, "\"always\""),
            (LoraRequantize::Never, "\"never\""),
        ] {
            assert_eq!(serde_json::to_string(&choice).unwrap(), text);
            assert_eq!(
                serde_json::from_str::<LoraRequantize>(text).unwrap(),
                choice
            );
        }
        assert!(!LoraRequantize::Auto.resolve(&Device::Cpu));
        assert!(LoraRequantize::Always.resolve(&Device::Cpu));
        assert!(!LoraRequantize::Never.resolve(&Device::Cpu));
    }

    #[test]
    fn requantize_gives_float8_on_the_grid_of_the_scaled_values() {
        let values: Vec<f32> = (0..64).map(|i| i as f32 * 0.3 - 9.0).collect();
        let t = Tensor::from_vec(values.clone(), (8, 8), &Device::Cpu).unwrap();
        let q = requantize(&t, "w").unwrap();
        assert_eq!(q.dtype(), DType::F8E4M3);
        assert_eq!(q.dims(), &[8, 8]);
        let back = q
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(
            back,
            e4m3_values(&stochastic_round_e4m3(&values, key_seed("w")))
        );
    }

    /// One A14B FFN layer (13824 × 5120, 70.8 M weights) requantized on the CPU, timed, and the
    /// time extrapolated to one expert's block linears (40 blocks × (8 · 5120² + 2 · 5120 ·
    /// 13824) = 14.0 G weights, 198 such layers). Ignored: a timing, not a check; run it with
    /// `cargo test -p stillmotion-engine --lib requantize_time -- --ignored --nocapture`.
    #[test]
    #[ignore = "a timing"]
    fn requantize_time_of_one_a14b_ffn_layer() {
        let (out, inp) = (13_824, 5120);
        let values: Vec<f32> = (0..out * inp)
            .map(|i| ((i as f32) * 0.618_034).fract() * 400.0 - 200.0)
            .collect();
        let merged = Tensor::from_vec(values, (out, inp), &Device::Cpu).unwrap();
        let start = std::time::Instant::now();
        let q = requantize(&merged, "blocks.0.ffn.0.weight").unwrap();
        let seconds = start.elapsed().as_secs_f64();
        assert_eq!(q.dtype(), DType::F8E4M3);
        let expert = 40.0 * (8.0 * 5120.0 * 5120.0 + 2.0 * 5120.0 * 13_824.0);
        println!(
            "requantize 13824x5120 on {} threads: {seconds:.3} s; one A14B expert's linears: {:.1} s",
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            seconds * expert / (out * inp) as f64
        );
    }
}
