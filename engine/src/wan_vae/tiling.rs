//! Spatial tiles as diffusers' `AutoencoderKLWan.enable_tiling` describes them, shared by the
//! tiled encode ([`super::tiled_encode`]) and decode ([`super::tiled_decode`]), and the blend
//! both use between neighbouring tiles (`blend_v` / `blend_h`).

use candle_core::{Result, Tensor};

use super::Config;

/// Tiles in sample pixels, named as diffusers' `enable_tiling` names them. The encode reads them
/// in encoder-input pixels (for the Wan2.2 VAE: patchified pixels, half the image's), the decode
/// in output pixels; see each for how they map to latents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiling {
    /// Tile height and width (diffusers' `tile_sample_min_height` / `_width`).
    pub tile_height: usize,
    pub tile_width: usize,
    /// Distance between tile starts (`tile_sample_stride_height` / `_width`); neighbouring
    /// tiles are blended over `tile − stride`.
    pub stride_height: usize,
    pub stride_width: usize,
}

/// The least overlap, in latent pixels, of the tiles the pipeline encodes and decodes in. Tiled
/// against untiled decode of the same latents, on random weights without attention (which see
/// much further than trained ones): 43.6 dB at the smallest tiles ([`MIN_TILE`], overlap 16 or
/// more, `tiled_decode.rs`); diffusers' grid at 32-latent tiles overlapping by 8 gave 38.6 dB,
/// and the pipeline's earlier decode overlap of 8 with its own blend 32–37 dB. The encode's
/// seams are in `tiled_encode.rs`.
pub const MIN_TILE_OVERLAP: usize = 16;

/// The smallest tile side the pipeline encodes or decodes in, in latent pixels: twice the
/// overlap, so that tiles advance by at least as much as they share.
pub const MIN_TILE: usize = 2 * MIN_TILE_OVERLAP;

impl Tiling {
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

    /// The decode tiling the pipeline uses for a `lat_h × lat_w` latent frame in tiles of at
    /// most `side` latent pixels a side (the memory plan's `vae_tile`; raised to [`MIN_TILE`]),
    /// overlapping by at least a quarter of a tile and [`MIN_TILE_OVERLAP`] (see
    /// [`Self::grid`]); in output pixels.
    pub fn for_decode(cfg: &Config, side: usize, lat_h: usize, lat_w: usize) -> Self {
        Self::grid(cfg.spatial_stride(), side, lat_h, lat_w)
    }

    /// The encode tiling the pipeline uses, as [`Self::for_decode`] (`side` is the memory
    /// plan's `vae_encode_tile`) but in encoder-input pixels (patchified for Wan2.2).
    pub fn for_encode(cfg: &Config, side: usize, lat_h: usize, lat_w: usize) -> Self {
        let unit = cfg.spatial_stride() / cfg.patch_size.max(1);
        Self::grid(unit, side, lat_h, lat_w)
    }

    /// Tiles of `side` latent pixels (`unit` pixels each; `side` raised to [`MIN_TILE`])
    /// advancing by the same stride along each axis, as diffusers' grid does, overlapping by at
    /// least a quarter of a tile and [`MIN_TILE_OVERLAP`], with as few tiles as that allows and
    /// the last one (which diffusers cuts short at the frame's edge, never shifts back) as long
    /// as the stride rather than a sliver; an axis that fits one tile is not split.
    fn grid(unit: usize, side: usize, lat_h: usize, lat_w: usize) -> Self {
        let side = side.max(MIN_TILE);
        let overlap = (side / 4).max(MIN_TILE_OVERLAP);
        let axis = |len: usize| {
            if len <= side {
                return (side * unit, side * unit);
            }
            let tiles = len.div_ceil(side - overlap);
            (side * unit, len.div_ceil(tiles) * unit)
        };
        let (tile_height, stride_height) = axis(lat_h);
        let (tile_width, stride_width) = axis(lat_w);
        Self {
            tile_height,
            tile_width,
            stride_height,
            stride_width,
        }
    }
}

/// `b` with its first `extent` rows (`dim` 2) or columns (`dim` 3) ramped from `a`'s last ones
/// to its own, as diffusers' `blend_v` / `blend_h`: `a · (1 − y/e) + b · (y/e)`, with `e` no
/// more than either tile's extent along `dim`.
pub(super) fn blend(a: &Tensor, b: &Tensor, dim: usize, extent: usize) -> Result<Tensor> {
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

/// The last `extent` rows (`dim` 2) or columns (`dim` 3) of `t`, all of it if shorter: all that
/// [`blend`] reads of a neighbour.
pub(super) fn tail(t: &Tensor, dim: usize, extent: usize) -> Result<Tensor> {
    let len = t.dim(dim)?;
    let keep = extent.min(len);
    t.narrow(dim, len - keep, keep)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::{Tiling, blend, tail};
    use crate::wan_vae::Config;

    #[test]
    fn blend_ramps_from_the_neighbour() {
        let a = Tensor::new(&[[[[1f32], [2.], [3.], [4.]]]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[[[[10f32], [20.], [30.]]]], &Device::Cpu).unwrap();
        let out = blend(&a, &b, 2, 2).unwrap().flatten_all().unwrap();
        // Row 0 is all `a`'s second-to-last row, row 1 half of each.
        assert_eq!(out.to_vec1::<f32>().unwrap(), vec![3.0, 12.0, 30.0]);
        // Only the tail of `a` is read.
        let short = blend(&tail(&a, 2, 2).unwrap(), &b, 2, 2).unwrap();
        assert_eq!(
            short.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![3.0, 12.0, 30.0]
        );
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
    fn pipeline_tilings_are_whole_latents_with_the_least_overlap() {
        let cfg = Config::wan21();
        // 832×480: 104×60 latents in 40-latent tiles: 5 columns every 21, 3 rows every 20.
        let t = Tiling::for_decode(&cfg, 40, 60, 104);
        assert_eq!(
            (t.tile_height, t.stride_height, t.tile_width, t.stride_width),
            (320, 160, 320, 168)
        );
        // Smaller tiles are raised to twice the least overlap; an axis that fits is not split.
        let t = Tiling::for_decode(&cfg, 10, 30, 104);
        assert_eq!(
            (t.tile_height, t.stride_height, t.tile_width, t.stride_width),
            (256, 256, 256, 120)
        );
        // Encode tiles: the same grid in encoder-input pixels.
        assert_eq!(
            Tiling::for_encode(&cfg, 40, 60, 104),
            Tiling::for_decode(&cfg, 40, 60, 104)
        );
        // Wan2.2 encodes patchified pixels: 16-pixel latents are 8 of them.
        let t = Tiling::for_encode(&Config::wan22(), 32, 44, 80);
        assert_eq!(
            (t.tile_height, t.stride_height, t.tile_width, t.stride_width),
            (256, 120, 256, 128)
        );
    }
}
