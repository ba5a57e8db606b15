//! Spatially tiled encoding, as diffusers' `AutoencoderKLWan.tiled_encode` does it: tiles of
//! the encoder's input start every `stride` pixels from the top-left corner (the last ones may
//! be cut short by the frame's edge), each is encoded over the whole clip with its own temporal
//! state, and neighbouring latent tiles are blended in order (row by row, left to right) with a
//! linear ramp over their overlap: the tile above first, then the tile to the left, each time
//! against the neighbour as already blended. Each tile then keeps its first `stride / s` latent
//! rows and columns.
//!
//! Peak memory follows the tile size: only latent tiles (a 64th of the pixels per channel for
//! the Wan2.1 VAE) are kept between tiles.

use candle_core::{Result, Tensor};

use super::blocks::{from_frames, to_frames};
use super::wan22::patchify;
use super::{Config, WanVae};

/// Tiles of the encoder's input, in its pixels (for the Wan2.2 VAE these are patchified pixels:
/// half the image's), named as diffusers' `enable_tiling` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodeTiling {
    /// Tile height and width (diffusers' `tile_sample_min_height` / `_width`).
    pub tile_height: usize,
    pub tile_width: usize,
    /// Distance between tile starts (`tile_sample_stride_height` / `_width`); the overlap is
    /// `tile − stride`.
    pub stride_height: usize,
    pub stride_width: usize,
}

/// f32 values held at once per encoder-input pixel and per channel of the encoder's first
/// stage, for choosing tiles. Measured on the CPU (`examples/vae_decode_memory.rs --encode`,
/// base dim 16, 17 frames): 256×256 untiled peaked 348 MiB above the weights (87 values),
/// 128-pixel tiles 94 MiB (94 values per tile pixel); rounded up.
const LIVE_VALUES_PER_PIXEL_CHANNEL: usize = 100;

impl EncodeTiling {
    /// diffusers' defaults: 256-pixel tiles every 192 pixels.
    pub const DIFFUSERS: Self = Self {
        tile_height: 256,
        tile_width: 256,
        stride_height: 192,
        stride_width: 192,
    };

    /// Square `tile` tiles every `stride` pixels.
    pub fn square(tile: usize, stride: usize) -> Self {
        Self {
            tile_height: tile,
            tile_width: tile,
            stride_height: stride,
            stride_width: stride,
        }
    }

    /// The largest square tiles whose encode should fit `budget_bytes`, or `None` when the whole
    /// `height × width` frame (image pixels) fits. Tiles are a multiple of 4 latent pixels (so the
    /// stride is whole latent pixels), at least 128 encoder pixels, and overlap by a quarter as
    /// diffusers' defaults (256, stride 192) do.
    pub fn for_budget(
        cfg: &Config,
        budget_bytes: usize,
        height: usize,
        width: usize,
    ) -> Option<Self> {
        let patch = cfg.patch_size.max(1);
        let (h, w) = (height / patch, width / patch);
        let channels = cfg.base_dim * cfg.dim_mult.first().copied().unwrap_or(1);
        let per_pixel = LIVE_VALUES_PER_PIXEL_CHANNEL * channels * 4;
        let fits = budget_bytes / per_pixel.max(1);
        if h * w <= fits {
            return None;
        }
        let unit = (cfg.spatial_stride() / patch).max(1) * 4;
        let tile = ((fits as f64).sqrt() as usize / unit * unit).max(128);
        Some(Self::square(tile, tile / 4 * 3))
    }
}

/// `b` with its first `extent` rows (`dim` 2) or columns (`dim` 3) ramped from `a`'s last ones
/// to its own: `a · (1 − y/e) + b · (y/e)`.
fn blend(a: &Tensor, b: &Tensor, dim: usize, extent: usize) -> Result<Tensor> {
    let extent = extent.min(a.dim(dim)?).min(b.dim(dim)?);
    if extent == 0 {
        return Ok(b.clone());
    }
    let mut shape = [1usize; 4];
    shape[dim] = extent;
    // The reference computes each weight in f64 and multiplies by it as an f32 scalar.
    let ramp: Vec<f32> = (0..extent)
        .map(|y| (y as f64 / extent as f64) as f32)
        .collect();
    let keep: Vec<f32> = (0..extent)
        .map(|y| (1.0 - y as f64 / extent as f64) as f32)
        .collect();
    let ramp = Tensor::from_vec(ramp, shape.as_slice(), b.device())?.to_dtype(b.dtype())?;
    let keep = Tensor::from_vec(keep, shape.as_slice(), b.device())?.to_dtype(b.dtype())?;
    let tail = a.narrow(dim, a.dim(dim)? - extent, extent)?;
    let head = b.narrow(dim, 0, extent)?;
    let mixed = (tail.broadcast_mul(&keep)? + head.broadcast_mul(&ramp)?)?;
    let rest = b.narrow(dim, extent, b.dim(dim)? - extent)?;
    Tensor::cat(&[mixed, rest], dim)
}

impl WanVae {
    /// [`WanVae::encode`] in spatial tiles, as diffusers' `encode` with tiling enabled: tiled
    /// only when the image is wider or taller than a tile (diffusers compares the image's
    /// pixels even for the Wan2.2 VAE), otherwise the untiled encode.
    pub fn encode_tiled(&self, video: &Tensor, tiling: EncodeTiling) -> Result<Tensor> {
        let (_, num_frames, height, width) = video.dims4()?;
        self.encode_tiled_with(num_frames, (height, width), tiling, |start, len| {
            to_frames(&video.narrow(1, start, len)?)
        })
    }

    /// [`WanVae::encode_with`] in spatial tiles (see [`WanVae::encode_tiled`]): `frames(start,
    /// len)` gives whole frames `(len, 3, height, width)`, asked for again for each tile.
    pub fn encode_tiled_with(
        &self,
        num_frames: usize,
        (height, width): (usize, usize),
        tiling: EncodeTiling,
        mut frames: impl FnMut(usize, usize) -> Result<Tensor>,
    ) -> Result<Tensor> {
        if width <= tiling.tile_width && height <= tiling.tile_height {
            return self.encode_with(num_frames, frames);
        }
        let cfg = self.config();
        let patch = cfg.patch_size.max(1);
        let s = cfg.spatial_stride() / patch;
        let (in_h, in_w) = (height / patch, width / patch);
        let (stride_h, stride_w) = (tiling.stride_height.max(1), tiling.stride_width.max(1));
        let (lat_stride_h, lat_stride_w) = (stride_h / s, stride_w / s);
        let blend_h = tiling.tile_height / s - lat_stride_h;
        let blend_w = tiling.tile_width / s - lat_stride_w;
        let mut above: Vec<Tensor> = Vec::new();
        let mut rows = Vec::new();
        for top in (0..in_h).step_by(stride_h) {
            let tile_h = tiling.tile_height.min(in_h - top);
            let mut row: Vec<Tensor> = Vec::new();
            for left in (0..in_w).step_by(stride_w) {
                let tile_w = tiling.tile_width.min(in_w - left);
                let mut tile = self.encode_moments(num_frames, |start, len| {
                    frames(start, len)?
                        .narrow(2, top * patch, tile_h * patch)?
                        .narrow(3, left * patch, tile_w * patch)
                })?;
                if let Some(up) = above.get(row.len()) {
                    tile = blend(up, &tile, 2, blend_h)?;
                }
                if let Some(prev) = row.last() {
                    tile = blend(prev, &tile, 3, blend_w)?;
                }
                row.push(tile);
            }
            let kept = row
                .iter()
                .map(|t| {
                    t.narrow(2, 0, t.dim(2)?.min(lat_stride_h))?.narrow(
                        3,
                        0,
                        t.dim(3)?.min(lat_stride_w),
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            rows.push(Tensor::cat(&kept, 3)?);
            above = row;
        }
        let mu = Tensor::cat(&rows, 2)?;
        let (lat_h, lat_w) = (in_h / s, in_w / s);
        let mu = mu
            .narrow(2, 0, mu.dim(2)?.min(lat_h))?
            .narrow(3, 0, mu.dim(3)?.min(lat_w))?;
        from_frames(&self.normalise(&mu)?)
    }

    /// The untiled encode of one tile's frames to the raw posterior mean `(t, z, h/s, w/s)`
    /// (not normalised), patchifying for the Wan2.2 VAE.
    pub(super) fn encode_moments(
        &self,
        num_frames: usize,
        frames: impl FnMut(usize, usize) -> Result<Tensor>,
    ) -> Result<Tensor> {
        self.encode_raw(num_frames, frames)?
            .narrow(1, 0, self.config().z_dim)
    }

    pub(super) fn patchify_input(&self, x: Tensor) -> Result<Tensor> {
        if self.config().patch_size == 2 {
            patchify(&x)
        } else {
            Ok(x)
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Tensor;

    use super::{EncodeTiling, blend};
    use crate::wan_vae::Config;
    use crate::wan_vae::test_support::{normal, psnr, random_vae};

    fn tiny() -> Config {
        Config {
            base_dim: 4,
            num_res_blocks: 1,
            ..Config::wan21()
        }
    }

    #[test]
    fn blend_ramps_from_the_neighbour() {
        let a = Tensor::new(&[[[[1f32], [2.], [3.], [4.]]]], &candle_core::Device::Cpu).unwrap();
        let b = Tensor::new(&[[[[10f32], [20.], [30.]]]], &candle_core::Device::Cpu).unwrap();
        let out = blend(&a, &b, 2, 2).unwrap().flatten_all().unwrap();
        // Row 0 is all `a`'s second-to-last row, row 1 half of each.
        assert_eq!(out.to_vec1::<f32>().unwrap(), vec![3.0, 12.0, 30.0]);
        let out = blend(&a, &b, 2, 9).unwrap().flatten_all().unwrap();
        let third = 1.0 / 3.0;
        let expected = [
            2.0,
            3.0 * (1.0 - third) + 20.0 * third,
            4.0 * third + 30.0 * (1.0 - third),
        ];
        for (x, e) in out.to_vec1::<f32>().unwrap().iter().zip(expected) {
            assert!((x - e).abs() < 1e-5, "{x} vs {e}");
        }
    }

    #[test]
    fn budget_tiles_are_whole_latents_and_shrink_with_the_budget() {
        let cfg = Config::wan21();
        assert_eq!(EncodeTiling::for_budget(&cfg, 1 << 40, 480, 832), None);
        let big = EncodeTiling::for_budget(&cfg, 8 << 30, 480, 832).unwrap();
        let small = EncodeTiling::for_budget(&cfg, 1 << 30, 480, 832).unwrap();
        assert!(small.tile_height < big.tile_height, "{small:?} {big:?}");
        for t in [big, small] {
            assert_eq!(t.tile_height % 32, 0, "{t:?}");
            assert_eq!(t.stride_height % 8, 0, "{t:?}");
            assert!(
                t.stride_height < t.tile_height && t.tile_height < 480,
                "{t:?}"
            );
        }
        // Wan2.2 tiles are in patchified pixels: 16-pixel latents are 8 of them.
        let t = EncodeTiling::for_budget(&Config::wan22(), 4 << 30, 704, 1280).unwrap();
        assert_eq!(t.stride_height % 8, 0, "{t:?}");
    }

    /// A frame no larger than a tile is encoded untiled (diffusers' gate); a larger one in tiles
    /// whose seams stay within the bound on a model with local weights.
    #[test]
    fn tiled_encode_matches_untiled() {
        let cfg = tiny();
        let vae = random_vae(&cfg, true);
        let video = (normal(&[3, 5, 64, 96], &mut 5) * 0.5).unwrap();
        let whole = vae.encode(&video).unwrap();
        let one = vae
            .encode_tiled(&video, EncodeTiling::square(96, 64))
            .unwrap();
        let diff = (&one - &whole).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        let tiled = vae
            .encode_tiled(&video, EncodeTiling::square(48, 32))
            .unwrap();
        assert_eq!(tiled.dims(), whole.dims());
    }

    /// Seams measured: tiled encode, then decode, against the untiled encode and decode of the
    /// same clip (5 frames of 128×320). Random weights have no learnt locality (the encoder sees
    /// about ±15 latent pixels), and diffusers' blend mixes the two tiles' edge values (the
    /// upper tile's last rows with the lower tile's first ones), so seams here stay visible far
    /// longer than with trained weights: about 24 dB at 128-pixel tiles every 64, 34 dB at 256
    /// every 128 (one seam across this clip). The test pins that the seams close as the
    /// overlap grows and where they stand; the 40 dB bound is for trained weights.
    #[test]
    fn tiled_encode_seams_psnr() {
        let cfg = tiny();
        let vae = random_vae(&cfg, false);
        let video = (normal(&[3, 5, 128, 320], &mut 5) * 0.5).unwrap();
        let lat = vae.encode(&video).unwrap();
        let dec = vae.decode(&lat).unwrap();
        let mut last = 0.0;
        for (tile, stride) in [(128, 64), (256, 128)] {
            let t = vae
                .encode_tiled(&video, EncodeTiling::square(tile, stride))
                .unwrap();
            let rel = (&t - &lat)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .sqrt()
                .unwrap();
            let rel = (rel / lat.sqr().unwrap().sum_all().unwrap().sqrt().unwrap()).unwrap();
            let rel = rel.to_scalar::<f32>().unwrap();
            let db = psnr(&vae.decode(&t).unwrap(), &dec);
            println!(
                "tiled encode {tile}/{stride}: latent rel L2 {rel:.2e}, decoded PSNR {db:.1} dB"
            );
            assert!(db > last + 5.0, "{tile}/{stride}: {db:.1} dB");
            last = db;
        }
        assert!(last >= 30.0, "{last:.1} dB");
    }
}
