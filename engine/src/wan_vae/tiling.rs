//! Spatially tiled decoding: each tile of the latent is decoded over the whole clip on its own
//! (with its own temporal state), and the tiles are blended with linear ramps across their
//! overlap, so peak memory follows the tile size instead of the frame size.

use candle_core::{DType, Result, Tensor};

use super::{Config, WanVae};

/// Tiles of the latent, in latent pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiling {
    /// Tile height and width.
    pub tile: usize,
    /// Rows or columns shared by neighbouring tiles (less than `tile`).
    pub overlap: usize,
}

/// f32 values held at once per output pixel and per channel of the decoder's last stage, for
/// choosing tiles. Calibrated on the CPU (`examples/vae_decode_memory.rs`, base dim 16,
/// 256×256): untiled peak 500 MiB at 17 frames and 533 MiB at 49 (the difference is the output
/// clip), tiled with 17-latent tiles 183 MiB; activations came to about 120 values per pixel
/// and channel, three times a count of live tensors and caches.
const LIVE_VALUES_PER_PIXEL_CHANNEL: usize = 120;

impl Tiling {
    /// The largest square tiles whose decode should fit `budget_bytes`, or `None` when the
    /// whole `lat_h × lat_w` frame fits. Tiles are at least 16 latent pixels; overlap is a
    /// quarter of the tile, at least 8 (64 pixels, as diffusers blends).
    pub fn for_budget(
        cfg: &Config,
        budget_bytes: usize,
        lat_h: usize,
        lat_w: usize,
    ) -> Option<Self> {
        let stride = cfg.spatial_stride();
        let base = cfg.decoder_base_dim.unwrap_or(cfg.base_dim);
        let channels = base * cfg.dim_mult.first().copied().unwrap_or(1);
        let per_latent_pixel = LIVE_VALUES_PER_PIXEL_CHANNEL * channels * stride * stride * 4;
        let fits = budget_bytes / per_latent_pixel.max(1);
        if lat_h * lat_w <= fits {
            return None;
        }
        let tile = (fits as f64).sqrt() as usize;
        let tile = tile.max(16);
        Some(Self {
            tile,
            overlap: (tile / 4).max(8),
        })
    }
}

/// Tile starts along one axis of `len` latent pixels: the last tile ends at `len`.
fn starts(len: usize, tiling: Tiling) -> Vec<usize> {
    if len <= tiling.tile {
        return vec![0];
    }
    let step = (tiling.tile - tiling.overlap).max(1);
    let mut out: Vec<usize> = (0..len - tiling.tile).step_by(step).collect();
    out.push(len - tiling.tile);
    out
}

/// Blend weights along one axis for a tile at pixel `start`, `size` long, in an axis of `len`
/// pixels: ramps of `ramp` pixels on sides that have a neighbour.
fn ramp(start: usize, size: usize, len: usize, ramp: usize) -> Vec<f32> {
    (0..size)
        .map(|i| {
            let mut w = 1f32;
            if ramp > 0 {
                if start > 0 {
                    w = w.min((i as f32 + 0.5) / ramp as f32);
                }
                if start + size < len {
                    w = w.min(((size - i) as f32 - 0.5) / ramp as f32);
                }
            }
            w
        })
        .collect()
}

impl WanVae {
    /// [`WanVae::decode`] in spatial tiles: `(3, 1 + 4(t-1), 8h, 8w)` clamped to [-1, 1].
    pub fn decode_tiled(&self, latents: &Tensor, tiling: Tiling) -> Result<Tensor> {
        let (_, _, lat_h, lat_w) = latents.dims4()?;
        let s = self.config().spatial_stride();
        let (px_h, px_w) = (lat_h * s, lat_w * s);
        let rows = starts(lat_h, tiling);
        let cols = starts(lat_w, tiling);
        let mut acc: Vec<f32> = Vec::new();
        let mut weight_sum = vec![0f32; px_h * px_w];
        let mut num_frames = 0;
        for &r in &rows {
            let th = tiling.tile.min(lat_h);
            let wy = ramp(r * s, th * s, px_h, tiling.overlap * s);
            for &c in &cols {
                let tw = tiling.tile.min(lat_w);
                let wx = ramp(c * s, tw * s, px_w, tiling.overlap * s);
                let tile = latents.narrow(2, r, th)?.narrow(3, c, tw)?;
                let mut frame0 = 0;
                self.decode_each(&tile, |chunk| {
                    let (n, ch, h, w) = chunk.dims4()?;
                    let values = chunk
                        .to_dtype(DType::F32)?
                        .flatten_all()?
                        .to_vec1::<f32>()?;
                    if acc.len() < (frame0 + n) * ch * px_h * px_w {
                        acc.resize((frame0 + n) * ch * px_h * px_w, 0.0);
                    }
                    for (f, frame) in values.chunks_exact(ch * h * w).enumerate() {
                        for (k, plane) in frame.chunks_exact(h * w).enumerate() {
                            let base = ((frame0 + f) * ch + k) * px_h * px_w;
                            for (y, row) in plane.chunks_exact(w).enumerate() {
                                let out = base + (r * s + y) * px_w + c * s;
                                for (x, v) in row.iter().enumerate() {
                                    acc[out + x] += v * wy[y] * wx[x];
                                }
                            }
                        }
                    }
                    frame0 += n;
                    Ok(())
                })?;
                num_frames = frame0;
                for (y, wyv) in wy.iter().enumerate() {
                    for (x, wxv) in wx.iter().enumerate() {
                        weight_sum[(r * s + y) * px_w + c * s + x] += wyv * wxv;
                    }
                }
            }
        }
        let plane = px_h * px_w;
        for (i, v) in acc.iter_mut().enumerate() {
            *v /= weight_sum[i % plane];
        }
        let video = Tensor::from_vec(acc, (num_frames, 3, px_h, px_w), latents.device())?;
        video.transpose(0, 1)?.contiguous()?.clamp(-1f32, 1f32)
    }
}

#[cfg(test)]
mod tests {

    use super::{Tiling, starts};
    use crate::wan_vae::Config;
    use crate::wan_vae::test_support::{normal, psnr, random_vae};

    #[test]
    fn tile_starts_cover_the_axis() {
        let t = Tiling {
            tile: 8,
            overlap: 2,
        };
        assert_eq!(starts(6, t), vec![0]);
        assert_eq!(starts(8, t), vec![0]);
        assert_eq!(starts(20, t), vec![0, 6, 12]);
        assert_eq!(starts(13, t), vec![0, 5]);
    }

    #[test]
    fn budget_picks_tiles_only_when_the_frame_does_not_fit() {
        let cfg = Config::wan21();
        // 832×480 is 104×60 latents.
        assert_eq!(Tiling::for_budget(&cfg, 1 << 40, 60, 104), None);
        let tiling = Tiling::for_budget(&cfg, 4 << 30, 60, 104).unwrap();
        assert!(tiling.tile >= 16 && tiling.tile < 104, "{tiling:?}");
        assert!(tiling.overlap > 0 && tiling.overlap < tiling.tile);
    }

    /// Seams measured: tiled against untiled decode of the same latents (2 latent frames of
    /// 28×28: 5 frames of 224×224 pixels), 3×3 tiles so that two seams cross each way. Random
    /// weights see much further than trained ones (no learnt locality: the receptive field is
    /// the whole stack's, about ±13 latent pixels), so seams are measured on a model without
    /// its global attention (output projection zeroed) and need larger overlaps than trained
    /// weights: 27.8 dB at overlap 4, 40.6 dB at overlap 16 here (on a 16×40 clip with one
    /// row of tiles: 32 dB at overlap 8, 39 dB at 12, 45 dB at 16, 48 dB at 20).
    #[test]
    fn tiled_decode_seams_psnr() {
        let cfg = Config {
            base_dim: 4,
            num_res_blocks: 1,
            ..Config::wan21()
        };
        let z = normal(&[16, 2, 28, 28], &mut 11);
        let vae = random_vae(&cfg, false);
        let whole = vae.decode(&z).unwrap();
        let mut last = 0.0;
        for (tile, overlap) in [(12, 4), (20, 16)] {
            let tiled = vae.decode_tiled(&z, Tiling { tile, overlap }).unwrap();
            assert_eq!(tiled.dims(), &[3, 5, 224, 224]);
            let db = psnr(&tiled, &whole);
            println!(
                "tiled decode (tile {tile}, overlap {overlap}, 3×3 tiles) vs untiled: PSNR {db:.1} dB"
            );
            assert!(
                db > last + 3.0,
                "tile {tile}, overlap {overlap}: {db:.1} dB"
            );
            last = db;
        }
        assert!(last >= 40.0, "{last:.1} dB");
    }

    /// One tile covering the frame is the untiled decode, attention included.
    #[test]
    fn one_tile_is_the_untiled_decode() {
        let cfg = Config {
            base_dim: 4,
            num_res_blocks: 1,
            ..Config::wan21()
        };
        let z = normal(&[16, 2, 12, 20], &mut 11);
        let vae = random_vae(&cfg, true);
        let whole = vae.decode(&z).unwrap();
        let single = vae
            .decode_tiled(
                &z,
                Tiling {
                    tile: 20,
                    overlap: 4,
                },
            )
            .unwrap();
        let diff = (&single - &whole)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-6);
    }
}
