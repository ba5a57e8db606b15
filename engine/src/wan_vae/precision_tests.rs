//! The VAE in f16 on the CPU against f32, on the same weights and inputs: how far the
//! half-precision encode and decode land (the references run their VAE in f32; ComfyUI runs it
//! in bf16 on GPUs that have it). bf16 cannot run on the CPU: candle 0.11's CPU matmul (under
//! every convolution) answers "unsupported dtype BF16 for op matmul".

use candle_core::{DType, Tensor};

use super::Config;
use super::test_support::{normal, psnr, random_vae_in};

fn rel_l2(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    let diff = (&a - &b)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .sqrt()
        .unwrap();
    let norm = b.sqr().unwrap().sum_all().unwrap().sqrt().unwrap();
    (diff / norm).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn half_precision_vae_against_f32() {
    let cfg = Config {
        base_dim: 4,
        num_res_blocks: 1,
        ..Config::wan21()
    };
    let video = (normal(&[3, 5, 64, 64], &mut 5) * 0.5).unwrap();
    let z = normal(&[16, 2, 8, 8], &mut 9);
    let f32_vae = random_vae_in(&cfg, true, DType::F32);
    let latent = f32_vae.encode(&video).unwrap();
    let pixels = f32_vae.decode(&z).unwrap();
    let vae = random_vae_in(&cfg, true, DType::F16);
    let half_latent = vae.encode(&video.to_dtype(DType::F16).unwrap()).unwrap();
    assert_eq!(half_latent.dtype(), DType::F16);
    let half_pixels = vae
        .decode(&z.to_dtype(DType::F16).unwrap())
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let enc = rel_l2(&half_latent, &latent);
    let dec = rel_l2(&half_pixels, &pixels);
    let db = psnr(&half_pixels, &pixels);
    println!("f16 VAE vs f32: encode rel L2 {enc:.2e}, decode rel L2 {dec:.2e} ({db:.1} dB)");
    // Measured 8.8e-4, 3.5e-3 and 61.7 dB.
    assert!(enc < 3e-3, "f16 encode rel L2 {enc}");
    assert!(db > 55.0 && dec < 1e-2, "f16 decode {dec:.2e}, {db:.1} dB");
    // The pipeline hands a half-precision VAE f32 pixels and latents: it converts them itself.
    let from_f32 = vae.encode(&video).unwrap();
    assert_eq!(rel_l2(&from_f32, &half_latent), 0.0);
    let decoded = vae.decode(&z).unwrap().to_dtype(DType::F32).unwrap();
    assert_eq!(rel_l2(&decoded, &half_pixels), 0.0);
}
