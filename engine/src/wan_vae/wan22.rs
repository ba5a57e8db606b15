//! The Wan2.2 VAE's encoder and decoder (48 latent channels, 4×16×16 with the 2×2 patchify):
//! the Wan2.1 blocks grouped into residual down/up blocks whose shortcuts are parameter-free
//! space/time-to-channel averages (`AvgDown3D`) and channel-to-space/time repeats (`DupUp3D`).
//!
//! Reference: `wan/modules/vae2_2.py` (`Down_ResidualBlock`, `Up_ResidualBlock`, `WanVAE_`).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::Config;
use super::blocks::{AttentionBlock, ChunkState, Resample, ResampleMode, ResidualBlock, RmsNorm};
use super::conv::CausalConv3d;

/// Pixels `(t, 3, 2h, 2w)` → `(t, 12, h, w)`, channel `c·4 + w_sub·2 + h_sub` (the reference's
/// `b c f (h q) (w r) -> b (c r q) f h w`).
pub fn patchify(x: &Tensor) -> Result<Tensor> {
    let (t, c, h, w) = x.dims4()?;
    x.reshape(vec![t, c, h / 2, 2, w / 2, 2])?
        .permute([0, 1, 5, 3, 2, 4])?
        .reshape((t, c * 4, h / 2, w / 2))
}

/// The inverse of [`patchify`].
pub fn unpatchify(x: &Tensor) -> Result<Tensor> {
    let (t, c4, h, w) = x.dims4()?;
    let c = c4 / 4;
    x.reshape(vec![t, c, 2, 2, h, w])?
        .permute([0, 1, 4, 3, 5, 2])?
        .reshape((t, c, h * 2, w * 2))
}

/// `AvgDown3D`: folds `ft × fs × fs` neighbours into channels and averages groups of them down
/// to `out` channels. Pads the front with zero frames to a multiple of `ft` (per chunk).
fn avg_down(x: &Tensor, out: usize, ft: usize, fs: usize) -> Result<Tensor> {
    let t = x.dim(0)?;
    let pad = (ft - t % ft) % ft;
    let x = if pad > 0 {
        x.pad_with_zeros(0, pad, 0)?
    } else {
        x.clone()
    };
    let (t, c, h, w) = x.dims4()?;
    let (t2, h2, w2) = (t / ft, h / fs, w / fs);
    let group = c * ft * fs * fs / out;
    x.reshape(vec![t2, ft, c, h2, fs, w2, fs])?
        .permute([0, 2, 1, 4, 6, 3, 5])?
        .reshape(vec![t2, out, group, h2, w2])?
        .mean(2)
}

/// `DupUp3D`: repeats each channel, then unfolds channels into `ft × fs × fs` neighbours. On the
/// first chunk the first `ft - 1` frames are dropped (the causal first frame is not doubled).
fn dup_up(x: &Tensor, out: usize, ft: usize, fs: usize, first_chunk: bool) -> Result<Tensor> {
    let (t, c, h, w) = x.dims4()?;
    let repeats = out * ft * fs * fs / c;
    let x = x
        .unsqueeze(2)?
        .broadcast_as(vec![t, c, repeats, h, w])?
        .reshape(vec![t, out, ft, fs, fs, h, w])?
        .permute([0, 2, 1, 5, 3, 6, 4])?
        .reshape((t * ft, out, h * fs, w * fs))?;
    if first_chunk && ft > 1 {
        x.narrow(0, ft - 1, t * ft - (ft - 1))
    } else {
        Ok(x)
    }
}

#[derive(Clone, Debug)]
enum Layer {
    Residual(ResidualBlock),
    Resample(Resample),
}

impl Layer {
    fn forward(&self, x: &Tensor, state: &mut ChunkState) -> Result<Tensor> {
        match self {
            Self::Residual(block) => block.forward(x, state),
            Self::Resample(block) => block.forward(x, state),
        }
    }
}

/// Keys: `downsamples.{j}` (residual blocks, then the resample).
#[derive(Clone, Debug)]
struct DownBlock {
    layers: Vec<Layer>,
    out_dim: usize,
    ft: usize,
    fs: usize,
}

impl DownBlock {
    fn forward(&self, x: &Tensor, state: &mut ChunkState) -> Result<Tensor> {
        let mut y = x.clone();
        for layer in &self.layers {
            y = layer.forward(&y, state)?;
        }
        y + avg_down(x, self.out_dim, self.ft, self.fs)?
    }
}

/// Keys: `upsamples.{j}` (residual blocks, then the resample).
#[derive(Clone, Debug)]
struct UpBlock {
    layers: Vec<Layer>,
    /// `(out_dim, ft, fs)` of the `DupUp3D` shortcut, on blocks that upsample.
    shortcut: Option<(usize, usize, usize)>,
}

impl UpBlock {
    fn forward(&self, x: &Tensor, state: &mut ChunkState, first_chunk: bool) -> Result<Tensor> {
        let mut y = x.clone();
        for layer in &self.layers {
            y = layer.forward(&y, state)?;
        }
        match self.shortcut {
            Some((out, ft, fs)) => y + dup_up(x, out, ft, fs, first_chunk)?,
            None => Ok(y),
        }
    }
}

fn temporal(flags: &[bool], i: usize) -> bool {
    flags.get(i).copied().unwrap_or(false)
}

/// Keys: `conv1`, `downsamples.{i}.downsamples.{j}`, `middle.{0,1,2}`, `head.{0,2}`.
#[derive(Clone, Debug)]
pub struct Encoder22 {
    conv1: CausalConv3d,
    blocks: Vec<DownBlock>,
    middle: (ResidualBlock, AttentionBlock, ResidualBlock),
    head_norm: RmsNorm,
    head_conv: CausalConv3d,
}

impl Encoder22 {
    pub fn new(cfg: &Config, vb: &VarBuilder<'_>) -> Result<Self> {
        let dims: Vec<usize> = std::iter::once(1)
            .chain(cfg.dim_mult.iter().copied())
            .map(|m| m * cfg.base_dim)
            .collect();
        let in_channels = 3 * cfg.patch_size * cfg.patch_size;
        let conv1 = CausalConv3d::new(in_channels, dims[0], (3, 3), 1, 1, &vb.pp("conv1"))?;
        let mut blocks = Vec::new();
        for (i, pair) in dims.windows(2).enumerate() {
            let (mut in_dim, out_dim) = (pair[0], pair[1]);
            let t_down = temporal(&cfg.temporal_downsample, i);
            let down = i != cfg.dim_mult.len() - 1;
            let vd = vb.pp(format!("downsamples.{i}.downsamples"));
            let mut layers = Vec::new();
            for j in 0..cfg.num_res_blocks {
                layers.push(Layer::Residual(ResidualBlock::new(
                    in_dim,
                    out_dim,
                    &vd.pp(j),
                )?));
                in_dim = out_dim;
            }
            if down {
                let mode = if t_down {
                    ResampleMode::Downsample3d
                } else {
                    ResampleMode::Downsample2d
                };
                let block = Resample::new(out_dim, mode, false, &vd.pp(layers.len()))?;
                layers.push(Layer::Resample(block));
            }
            blocks.push(DownBlock {
                layers,
                out_dim,
                ft: if t_down { 2 } else { 1 },
                fs: if down { 2 } else { 1 },
            });
        }
        let out_dim = dims[dims.len() - 1];
        let vm = vb.pp("middle");
        Ok(Self {
            conv1,
            blocks,
            middle: (
                ResidualBlock::new(out_dim, out_dim, &vm.pp(0))?,
                AttentionBlock::new(out_dim, &vm.pp(1))?,
                ResidualBlock::new(out_dim, out_dim, &vm.pp(2))?,
            ),
            head_norm: RmsNorm::new(out_dim, false, &vb.pp("head.0"))?,
            head_conv: CausalConv3d::new(out_dim, 2 * cfg.z_dim, (3, 3), 1, 1, &vb.pp("head.2"))?,
        })
    }

    /// One chunk of patchified frames, continuing from `state`.
    pub fn forward(&self, x: &Tensor, state: &mut ChunkState) -> Result<Tensor> {
        state.begin_chunk();
        let mut x = self.conv1.forward(x, state.next_frames())?;
        for block in &self.blocks {
            x = block.forward(&x, state)?;
        }
        x = self.middle.0.forward(&x, state)?;
        x = self.middle.1.forward(&x)?;
        x = self.middle.2.forward(&x, state)?;
        let x = self.head_norm.forward_silu(&x, state.kernels())?;
        self.head_conv.forward(&x, state.next_frames())
    }
}

/// Keys: `conv1`, `middle.{0,1,2}`, `upsamples.{i}.upsamples.{j}`, `head.{0,2}`.
#[derive(Clone, Debug)]
pub struct Decoder22 {
    conv1: CausalConv3d,
    middle: (ResidualBlock, AttentionBlock, ResidualBlock),
    blocks: Vec<UpBlock>,
    head_norm: RmsNorm,
    head_conv: CausalConv3d,
}

impl Decoder22 {
    pub fn new(cfg: &Config, vb: &VarBuilder<'_>) -> Result<Self> {
        let base = cfg.decoder_base_dim.unwrap_or(cfg.base_dim);
        let last_mult = cfg.dim_mult.last().copied().unwrap_or(1);
        let dims: Vec<usize> = std::iter::once(last_mult)
            .chain(cfg.dim_mult.iter().rev().copied())
            .map(|m| m * base)
            .collect();
        let vm = vb.pp("middle");
        let middle = (
            ResidualBlock::new(dims[0], dims[0], &vm.pp(0))?,
            AttentionBlock::new(dims[0], &vm.pp(1))?,
            ResidualBlock::new(dims[0], dims[0], &vm.pp(2))?,
        );
        let upsample_flags: Vec<bool> = cfg.temporal_downsample.iter().rev().copied().collect();
        let mut blocks = Vec::new();
        for (i, pair) in dims.windows(2).enumerate() {
            let (in_dim, out_dim) = (pair[0], pair[1]);
            let t_up = temporal(&upsample_flags, i);
            let up = i != cfg.dim_mult.len() - 1;
            let vu = vb.pp(format!("upsamples.{i}.upsamples"));
            let mut layers = Vec::new();
            let mut dim = in_dim;
            for j in 0..=cfg.num_res_blocks {
                layers.push(Layer::Residual(ResidualBlock::new(
                    dim,
                    out_dim,
                    &vu.pp(j),
                )?));
                dim = out_dim;
            }
            if up {
                let mode = if t_up {
                    ResampleMode::Upsample3d
                } else {
                    ResampleMode::Upsample2d
                };
                let block = Resample::new(out_dim, mode, false, &vu.pp(layers.len()))?;
                layers.push(Layer::Resample(block));
            }
            let shortcut = up.then_some((out_dim, if t_up { 2 } else { 1 }, 2));
            blocks.push(UpBlock { layers, shortcut });
        }
        let out_dim = dims[dims.len() - 1];
        let out_channels = 3 * cfg.patch_size * cfg.patch_size;
        Ok(Self {
            conv1: CausalConv3d::new(cfg.z_dim, dims[0], (3, 3), 1, 1, &vb.pp("conv1"))?,
            middle,
            blocks,
            head_norm: RmsNorm::new(out_dim, false, &vb.pp("head.0"))?,
            head_conv: CausalConv3d::new(out_dim, out_channels, (3, 3), 1, 1, &vb.pp("head.2"))?,
        })
    }

    /// One latent frame, continuing from `state`; returns patchified pixels.
    pub fn forward(&self, x: &Tensor, state: &mut ChunkState, first_chunk: bool) -> Result<Tensor> {
        state.begin_chunk();
        let mut x = self.conv1.forward(x, state.next_frames())?;
        x = self.middle.0.forward(&x, state)?;
        x = self.middle.1.forward(&x)?;
        x = self.middle.2.forward(&x, state)?;
        for block in &self.blocks {
            x = block.forward(&x, state, first_chunk)?;
        }
        let x = self.head_norm.forward_silu(&x, state.kernels())?;
        self.head_conv.forward(&x, state.next_frames())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::{patchify, unpatchify};

    #[test]
    fn patchify_orders_channels_c_w_h() {
        // One frame, one channel, 2×2 pixels: value = 10·row + col.
        let x = Tensor::new(&[0f32, 1.0, 10.0, 11.0], &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 2, 2))
            .unwrap();
        let p = patchify(&x).unwrap();
        // Channel c·4 + w_sub·2 + h_sub: (h0 w0), (h1 w0), (h0 w1), (h1 w1).
        assert_eq!(
            p.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [0.0, 10.0, 1.0, 11.0]
        );
        assert_eq!(
            unpatchify(&p)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            [0.0, 1.0, 10.0, 11.0]
        );
    }
}
