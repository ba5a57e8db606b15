//! The VAE's chunked encode and decode hold one chunk at a time: peak memory does not grow
//! with the number of frames. Measured as the process's peak resident size (`VmHWM`), so this
//! file holds one test and runs in its own process.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers unwrap: a failure is the test failing"
)]

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use stillmotion_engine::wan_vae::{Config, WanVae};

#[path = "support/peak_rss.rs"]
mod peak_rss;

fn peak_mib() -> f64 {
    peak_rss::peak_mib().unwrap()
}

#[test]
#[cfg(target_os = "linux")]
fn chunked_encode_and_decode_memory_does_not_grow_with_frames() {
    let cfg = Config {
        base_dim: 8,
        num_res_blocks: 1,
        ..Config::wan21()
    };
    let device = Device::Cpu;
    // Memory depends on shapes, not values: zero weights, as a checkpoint loads plain tensors.
    let vae = WanVae::new(&cfg, &VarBuilder::zeros(DType::F32, &device)).unwrap();
    let (h, w) = (64, 96);
    let encode = |frames: usize| {
        vae.encode_with(frames, |_, len| {
            Tensor::ones((len, 3, h, w), DType::F32, &device)
        })
        .unwrap()
    };
    let decode = |latent_frames: usize| {
        let z = Tensor::zeros((16, latent_frames, h / 8, w / 8), DType::F32, &device).unwrap();
        let mut frames = 0;
        vae.decode_each(&z, |chunk| {
            frames += chunk.dim(0)?;
            Ok(())
        })
        .unwrap();
        frames
    };
    let base = peak_mib();
    assert_eq!(encode(9).dim(1).unwrap(), 3);
    assert_eq!(decode(3), 9);
    let short = peak_mib();
    // Four times the frames: keeping each chunk's activations or caches would add several
    // times the short run's growth.
    assert_eq!(encode(33).dim(1).unwrap(), 9);
    assert_eq!(decode(9), 33);
    let long = peak_mib();
    println!(
        "VAE peak memory: weights {base:.0} MiB, 9 frames +{:.1} MiB, 33 frames +{:.1} MiB more",
        short - base,
        long - short
    );
    assert!(short - base > 8.0, "the short run must be measurable");
    assert!(
        long - short < 0.25 * (short - base),
        "peak grew from {short:.1} to {long:.1} MiB (base {base:.1})"
    );
}
