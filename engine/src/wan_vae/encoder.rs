//! The encoder: pixels `(t, 3, h, w)` → posterior moments `(t', 2z, h/8, w/8)`, causal in time.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::Config;
use super::blocks::{AttentionBlock, ChunkState, Resample, ResampleMode, ResidualBlock, RmsNorm};
use super::conv::CausalConv3d;

#[derive(Clone, Debug)]
enum Layer {
    Residual(ResidualBlock),
    Attention(AttentionBlock),
    Resample(Resample),
}

impl Layer {
    fn forward(&self, x: &Tensor, state: &mut ChunkState) -> Result<Tensor> {
        match self {
            Self::Residual(block) => block.forward(x, state),
            Self::Attention(block) => block.forward(x),
            Self::Resample(block) => block.forward(x, state),
        }
    }
}

/// Keys: `conv1`, `downsamples.{i}`, `middle.{0,1,2}`, `head.{0,2}`.
#[derive(Clone, Debug)]
pub struct Encoder3d {
    conv1: CausalConv3d,
    downsamples: Vec<Layer>,
    middle: (ResidualBlock, AttentionBlock, ResidualBlock),
    head_norm: RmsNorm,
    head_conv: CausalConv3d,
}

impl Encoder3d {
    pub fn new(cfg: &Config, vb: &VarBuilder<'_>) -> Result<Self> {
        let dims: Vec<usize> = std::iter::once(1)
            .chain(cfg.dim_mult.iter().copied())
            .map(|m| m * cfg.base_dim)
            .collect();
        let conv1 = CausalConv3d::new(3, dims[0], (3, 3), 1, 1, &vb.pp("conv1"))?;
        let mut downsamples = Vec::new();
        let mut scale = 1.0;
        let vd = vb.pp("downsamples");
        for (i, pair) in dims.windows(2).enumerate() {
            let (mut in_dim, out_dim) = (pair[0], pair[1]);
            for _ in 0..cfg.num_res_blocks {
                let block = ResidualBlock::new(in_dim, out_dim, &vd.pp(downsamples.len()))?;
                downsamples.push(Layer::Residual(block));
                if cfg.attn_scales.contains(&scale) {
                    let block = AttentionBlock::new(out_dim, &vd.pp(downsamples.len()))?;
                    downsamples.push(Layer::Attention(block));
                }
                in_dim = out_dim;
            }
            if i != cfg.dim_mult.len() - 1 {
                let mode = if cfg.temporal_downsample.get(i).copied().unwrap_or(false) {
                    ResampleMode::Downsample3d
                } else {
                    ResampleMode::Downsample2d
                };
                let block = Resample::new(out_dim, mode, true, &vd.pp(downsamples.len()))?;
                downsamples.push(Layer::Resample(block));
                scale /= 2.0;
            }
        }
        let out_dim = dims[dims.len() - 1];
        let vm = vb.pp("middle");
        Ok(Self {
            conv1,
            downsamples,
            middle: (
                ResidualBlock::new(out_dim, out_dim, &vm.pp(0))?,
                AttentionBlock::new(out_dim, &vm.pp(1))?,
                ResidualBlock::new(out_dim, out_dim, &vm.pp(2))?,
            ),
            head_norm: RmsNorm::new(out_dim, false, &vb.pp("head.0"))?,
            head_conv: CausalConv3d::new(out_dim, 2 * cfg.z_dim, (3, 3), 1, 1, &vb.pp("head.2"))?,
        })
    }

    /// One chunk of frames, continuing from `state`.
    pub fn forward(&self, x: &Tensor, state: &mut ChunkState) -> Result<Tensor> {
        state.begin_chunk();
        let mut x = self.conv1.forward(x, state.next_frames())?;
        for layer in &self.downsamples {
            x = layer.forward(&x, state)?;
        }
        x = self.middle.0.forward(&x, state)?;
        x = self.middle.1.forward(&x)?;
        x = self.middle.2.forward(&x, state)?;
        let x = self.head_norm.forward_silu(&x, state.kernels())?;
        self.head_conv.forward(&x, state.next_frames())
    }
}
