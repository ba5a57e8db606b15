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
//! It runs where the merge runs (`super::lora`): on a CPU load on the CPU (threads split the
//! elements; each element's number depends only on its index, so the split does not change the
//! result), on a CUDA load on the device, after a device merge (the float8 weight and the LoRA
//! factors go up, never the float32 merge), where a CPU merge took minutes per A14B expert.
//! The kernel gives the CPU's codes for the same float32 values, but the merged values
//! themselves may differ in their last bit between cuBLAS's and the CPU's matmul (another
//! summation order), and a value whose last bit moves can land on the other side of its random
//! threshold: a CUDA load may differ from a CPU load in those rare codes (about one in 10⁵ or
//! fewer; `stillmotion-bench parity` measures it), each by one e4m3 step.
//!
//! Values at or beyond e4m3's largest finite value (448) saturate to ±448, as ComfyUI clamps;
//! NaN stays NaN. Inputs already on the grid come back unchanged (their fraction is 0).

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use stillmotion_kernels::Kernels;
use stillmotion_kernels::fp8_stochastic::{stochastic_round, stochastic_round_codes};

use crate::EngineError;

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

/// The seed of a tensor's stream: 64-bit FNV-1a of the key's bytes.
#[must_use]
pub fn key_seed(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The e4m3fn codes of `values` (already divided by the layer's scale), each stochastically
/// rounded with the `i`-th number of `seed`'s stream: the CPU definition, which the kernels
/// crate holds beside its CUDA kernel ([`stillmotion_kernels::fp8_stochastic`]).
#[must_use]
pub fn stochastic_round_e4m3(values: &[f32], seed: u64) -> Vec<u8> {
    stochastic_round_codes(values, seed)
}

/// The merged float32 `merged` (already divided by the layer's scale) as float8 e4m3 on the
/// same device, rounded stochastically with the stream of `key` (the model's tensor name): on
/// the CPU by [`stochastic_round_e4m3`], on CUDA by the kernels' kernel (the same codes for the
/// same float32 values), so the merged float32 never crosses the bus.
pub(super) fn requantize(
    kernels: &Kernels,
    merged: &Tensor,
    key: &str,
) -> Result<Tensor, EngineError> {
    let merged = merged.to_dtype(DType::F32)?;
    Ok(stochastic_round(kernels, &merged, key_seed(key))?)
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
    use stillmotion_kernels::fp8_stochastic::{
        splitmix64 as splitmix, stochastic_e4m3_code as round_one,
    };

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
        let q = requantize(&Kernels::cpu(), &t, "w").unwrap();
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
        let q = requantize(&Kernels::cpu(), &merged, "blocks.0.ffn.0.weight").unwrap();
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
