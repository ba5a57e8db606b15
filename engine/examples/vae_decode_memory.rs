//! Measures the peak resident memory of a Wan2.1 VAE decode (or, with `--encode`, encode) on
//! the CPU, untiled or tiled.
//!
//! Weights are zeros (the full-size architecture, or `--base-dim` for a smaller one): memory
//! depends on shapes, not values. Peak memory is the process's `VmHWM`, so run one mode per
//! process:
//!
//! ```sh
//! cargo run --release -p stillmotion-engine --example vae_decode_memory -- 81 480 832
//! cargo run --release -p stillmotion-engine --example vae_decode_memory -- 81 480 832 --tile 40
//! cargo run --release -p stillmotion-engine --example vae_decode_memory -- 17 256 256 --encode [--tile 16]
//! ```

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use stillmotion_engine::wan_vae::{Config, Tiling, WanVae};

#[path = "../tests/support/peak_rss.rs"]
mod peak_rss;

fn peak_rss_mib() -> f64 {
    peak_rss::peak_mib().unwrap_or(f64::NAN)
}

fn rss_mib(key: &str) -> f64 {
    peak_rss::status_mib(key).unwrap_or(f64::NAN)
}

fn main() -> Result<(), candle_core::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: usize| {
        args.get(i)
            .and_then(|a| a.parse::<usize>().ok())
            .unwrap_or(default)
    };
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<f64>().ok())
    };
    let (frames, height, width) = (number(0, 81), number(1, 480), number(2, 832));
    let frames_n = frames;
    let mut cfg = Config::wan21();
    if let Some(dim) = flag("--base-dim") {
        cfg.base_dim = dim as usize;
    }
    let device = Device::Cpu;
    // Plain tensors, as a checkpoint loads (a VarMap's `Var`s would record the autograd graph).
    let vb = VarBuilder::zeros(DType::F32, &device);
    let vae = WanVae::new(&cfg, &vb)?;
    let s = cfg.spatial_stride();
    let latents = Tensor::randn(
        0f32,
        1.0,
        (cfg.z_dim, (frames - 1) / 4 + 1, height / s, width / s),
        &device,
    )?;
    let before = peak_rss_mib();
    let start = std::time::Instant::now();
    // `--tile N`: square tiles of N latent pixels, with the overlap the pipeline gives them.
    let tile = flag("--tile").map(|t| t as usize);
    if std::env::var_os("VAE_MEMORY_PER_CHUNK").is_some() {
        let mut n = 0;
        vae.decode_each(&latents, |chunk| {
            n += chunk.dim(0)?;
            println!(
                "{n} frames: RSS {:.0} MiB, peak {:.0} MiB",
                rss_mib("VmRSS:"),
                peak_rss_mib()
            );
            Ok(())
        })?;
        return Ok(());
    }
    if args.iter().any(|a| a == "--encode") {
        // Frames are made per chunk, as the I2V conditioning makes them.
        let frames =
            |_: usize, len: usize| Tensor::ones((len, 3, height, width), DType::F32, &device);
        let tiling = tile.map(|t| Tiling::for_encode(&cfg, t, height / s, width / s));
        let latent = match tiling {
            Some(tiling) => vae.encode_tiled_with(frames_n, (height, width), tiling, frames)?,
            None => vae.encode_with(frames_n, frames)?,
        };
        println!(
            "encoded {:?} ({tiling:?}) in {:.1} s: peak RSS {:.0} MiB (weights and latents: {before:.0} MiB)",
            latent.dims(),
            start.elapsed().as_secs_f64(),
            peak_rss_mib()
        );
        return Ok(());
    }
    let tiling = tile.map(|t| Tiling::for_decode(&cfg, t, height / s, width / s));
    let video = match tiling {
        Some(tiling) => vae.decode_tiled(&latents, tiling)?,
        None => vae.decode(&latents)?,
    };
    println!(
        "decoded {:?} ({tiling:?}) in {:.1} s: peak RSS {:.0} MiB (weights and latents: {before:.0} MiB)",
        video.dims(),
        start.elapsed().as_secs_f64(),
        peak_rss_mib()
    );
    Ok(())
}
