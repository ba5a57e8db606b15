//! The decoder: latents `(t, z, h, w)` → pixels `(1 + 4(t-1), 3, 8h, 8w)`, causal in time.

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

/// Keys: `conv1`, `middle.{0,1,2}`, `upsamples.{i}`, `head.{0,2}`.
#[derive(Clone, Debug)]
pub struct Decoder3d {
    conv1: CausalConv3d,
    middle: (ResidualBlock, AttentionBlock, ResidualBlock),
    upsamples: Vec<Layer>,
    head_norm: RmsNorm,
    head_conv: CausalConv3d,
}

impl Decoder3d {
    pub fn new(cfg: &Config, vb: &VarBuilder<'_>) -> Result<Self> {
        let last_mult = cfg.dim_mult.last().copied().unwrap_or(1);
        let dims: Vec<usize> = std::iter::once(last_mult)
            .chain(cfg.dim_mult.iter().rev().copied())
            .map(|m| m * cfg.base_dim)
            .collect();
        let mut scale = 1.0 / f64::from(1u32 << cfg.dim_mult.len().saturating_sub(2));
        let vm = vb.pp("middle");
        let middle = (
            ResidualBlock::new(dims[0], dims[0], &vm.pp(0))?,
            AttentionBlock::new(dims[0], &vm.pp(1))?,
            ResidualBlock::new(dims[0], dims[0], &vm.pp(2))?,
        );
        let mut upsamples = Vec::new();
        let vu = vb.pp("upsamples");
        for (i, pair) in dims.windows(2).enumerate() {
            let (mut in_dim, out_dim) = (pair[0], pair[1]);
            // The previous stage's upsampling conv halved the channels (the reference hard-codes
            // stages 1 to 3).
            if (1..=3).contains(&i) {
                in_dim /= 2;
            }
            for _ in 0..=cfg.num_res_blocks {
                let block = ResidualBlock::new(in_dim, out_dim, &vu.pp(upsamples.len()))?;
                upsamples.push(Layer::Residual(block));
                if cfg.attn_scales.contains(&scale) {
                    let block = AttentionBlock::new(out_dim, &vu.pp(upsamples.len()))?;
                    upsamples.push(Layer::Attention(block));
                }
                in_dim = out_dim;
            }
            if i != cfg.dim_mult.len() - 1 {
                // Decoding reverses the encoder's temporal downsampling.
                let temporal = cfg.temporal_downsample.iter().rev().nth(i).copied();
                let mode = if temporal.unwrap_or(false) {
                    ResampleMode::Upsample3d
                } else {
                    ResampleMode::Upsample2d
                };
                let block = Resample::new(out_dim, mode, true, &vu.pp(upsamples.len()))?;
                upsamples.push(Layer::Resample(block));
                scale *= 2.0;
            }
        }
        let out_dim = dims[dims.len() - 1];
        Ok(Self {
            conv1: CausalConv3d::new(cfg.z_dim, dims[0], (3, 3), 1, 1, &vb.pp("conv1"))?,
            middle,
            upsamples,
            head_norm: RmsNorm::new(out_dim, false, &vb.pp("head.0"))?,
            head_conv: CausalConv3d::new(out_dim, 3, (3, 3), 1, 1, &vb.pp("head.2"))?,
        })
    }

    /// One chunk (one latent frame in the reference's loop), continuing from `state`.
    pub fn forward(&self, x: &Tensor, state: &mut ChunkState) -> Result<Tensor> {
        state.begin_chunk();
        let mut x = self.conv1.forward(x, state.next_frames())?;
        x = self.middle.0.forward(&x, state)?;
        x = self.middle.1.forward(&x)?;
        x = self.middle.2.forward(&x, state)?;
        for layer in &self.upsamples {
            let device = x.device().clone();
            x = match layer {
                Layer::Residual(block) => block.forward(&x, state)?,
                Layer::Attention(block) => {
                    state.timed("attention", &device, |_| block.forward(&x))?
                }
                Layer::Resample(block) => {
                    state.timed("resample", &device, |s| block.forward(&x, s))?
                }
            };
        }
        let x = self.head_norm.forward_silu(&x, state.kernels())?;
        self.head_conv.forward(&x, state.next_frames())
    }
}
