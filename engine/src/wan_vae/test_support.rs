//! Test helpers for the VAE's tiling tests: seeded random weights and inputs, PSNR.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use super::{Config, WanVae};

/// Deterministic standard-normal-ish values (Irwin–Hall of 12 uniforms from an LCG):
/// candle cannot seed its CPU generator, and a seam measurement must not vary per run.
pub fn normal(shape: &[usize], state: &mut u64) -> Tensor {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| {
            let mut sum = 0f32;
            for _ in 0..12 {
                *state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                sum += (*state >> 40) as f32 / (1u64 << 24) as f32;
            }
            sum - 6.0
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// Random weights for `cfg` by name (gains near 1, fan-in-scaled convolutions); the attention
/// output projections are zero unless `attention`.
pub fn random_weights(cfg: &Config, attention: bool) -> HashMap<String, Tensor> {
    let dev = Device::Cpu;
    let mut state = 7;
    let map = VarMap::new();
    WanVae::new(cfg, &VarBuilder::from_varmap(&map, DType::F32, &dev)).unwrap();
    let data = map.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut out = HashMap::new();
    for name in names {
        let dims = data[name].dims().to_vec();
        let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
        let noise = normal(&dims, &mut state);
        let value = if name.ends_with("proj.weight") && !attention {
            noise.zeros_like().unwrap()
        } else if name.ends_with("gamma") {
            ((noise * 0.3).unwrap() + 1.0).unwrap()
        } else if name.ends_with("bias") {
            (noise * 0.1).unwrap()
        } else {
            (noise / (fan_in as f64).sqrt()).unwrap()
        };
        out.insert(name.clone(), value);
    }
    out
}

/// A tiny VAE with [`random_weights`] in `dtype`.
pub fn random_vae_in(cfg: &Config, attention: bool, dtype: DType) -> WanVae {
    let weights = random_weights(cfg, attention)
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(dtype).unwrap()))
        .collect();
    WanVae::new(cfg, &VarBuilder::from_tensors(weights, dtype, &Device::Cpu)).unwrap()
}

/// A tiny f32 VAE with [`random_weights`].
pub fn random_vae(cfg: &Config, attention: bool) -> WanVae {
    random_vae_in(cfg, attention, DType::F32)
}

pub fn psnr(a: &Tensor, b: &Tensor) -> f64 {
    let mse = (a - b).unwrap().sqr().unwrap().mean_all().unwrap();
    // Peak-to-peak range of [-1, 1] is 2.
    10.0 * (4.0 / f64::from(mse.to_scalar::<f32>().unwrap())).log10()
}
