//! The Wan VAE's building blocks: RMS norm, residual block, spatial attention, resampling, and
//! the per-layer temporal state that lets encode and decode run chunk by chunk.
//!
//! Tensors here are frames-first, `(t, c, h, w)`: convolutions treat frames as the batch.

use candle_core::{Device, Result, Tensor};
use candle_nn::VarBuilder;
use stillmotion_kernels::Kernels;
use stillmotion_kernels::glue::channel_rms_norm;

use super::conv::{CausalConv3d, Conv2d, ConvSlot, FrameCache};
use super::profile::{StageTimes, timed};

/// The temporal state of one layer between chunks (the reference's `feat_cache[idx]`).
#[derive(Debug, Default)]
pub struct Slot {
    /// Whether a chunk has gone through (the reference's `'Rep'` marker for upsampling).
    started: bool,
    frames: FrameCache,
}

/// Every layer's [`Slot`] for one encode or decode, handed out in layer order each chunk.
#[derive(Debug, Default)]
pub struct ChunkState {
    slots: Vec<Slot>,
    cursor: usize,
    /// The device's kernels, for fused convolutions (`None`: candle's own).
    kernels: Option<Kernels>,
    /// Time by kind of layer, when the caller asked for it (the benchmark).
    profile: Option<StageTimes>,
}

impl ChunkState {
    pub fn with_kernels(kernels: Option<Kernels>) -> Self {
        Self {
            kernels,
            ..Self::default()
        }
    }

    pub fn kernels(&self) -> Option<&Kernels> {
        self.kernels.as_ref()
    }

    /// Starts recording time by kind of layer ([`Self::timed`]).
    pub fn with_profile(mut self) -> Self {
        self.profile = Some(StageTimes::default());
        self
    }

    pub fn take_profile(&mut self) -> Option<StageTimes> {
        self.profile.take()
    }

    /// Runs `f`, timed under `label` when profiling (not nested: inside `f` nothing is timed).
    pub fn timed<T>(
        &mut self,
        label: &'static str,
        device: &Device,
        f: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<T> {
        let mut profile = self.profile.take();
        let out = timed(profile.as_mut(), label, device, || f(self));
        self.profile = profile;
        out
    }

    /// Call before each chunk: layers take their slots again from the first.
    pub fn begin_chunk(&mut self) {
        self.cursor = 0;
    }

    fn next(&mut self) -> &mut Slot {
        if self.cursor == self.slots.len() {
            self.slots.push(Slot::default());
        }
        self.cursor += 1;
        &mut self.slots[self.cursor - 1]
    }

    /// The next layer's cached frames, with the kernels to convolve them with.
    pub fn next_frames(&mut self) -> ConvSlot<'_> {
        if self.cursor == self.slots.len() {
            self.slots.push(Slot::default());
        }
        self.cursor += 1;
        ConvSlot {
            frames: &mut self.slots[self.cursor - 1].frames,
            kernels: self.kernels.as_ref(),
        }
    }
}

/// Channel-wise RMS norm as the reference computes it: `x / max(‖x‖₂, 1e-12) · √c · γ` over
/// channels (`F.normalize`), no bias.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    gamma: Tensor,
    scale: f64,
}

impl RmsNorm {
    /// `gamma` is stored `(c, 1, 1, 1)` for video norms and `(c, 1, 1)` for image norms.
    pub fn new(dim: usize, images: bool, vb: &VarBuilder<'_>) -> Result<Self> {
        let gamma = if images {
            vb.get((dim, 1, 1), "gamma")?
        } else {
            vb.get((dim, 1, 1, 1), "gamma")?
        };
        Ok(Self {
            gamma: gamma.reshape((1, dim, 1, 1))?,
            scale: (dim as f64).sqrt(),
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, None, false)
    }

    /// The norm then SiLU, fused into one pass when `kernels` run on x's device.
    pub fn forward_silu(&self, x: &Tensor, kernels: Option<&Kernels>) -> Result<Tensor> {
        self.apply(x, kernels, true)
    }

    fn apply(&self, x: &Tensor, kernels: Option<&Kernels>, silu: bool) -> Result<Tensor> {
        let cpu = Kernels::cpu();
        channel_rms_norm(kernels.unwrap_or(&cpu), x, &self.gamma, self.scale, silu)
            .map_err(candle_core::Error::wrap)
    }
}

/// `x + conv(silu(norm(conv(silu(norm(x))))))`, with a 1×1×1 shortcut when channels change.
/// Keys: `residual.{0,2,3,6}`, `shortcut`.
#[derive(Clone, Debug)]
pub struct ResidualBlock {
    norm1: RmsNorm,
    conv1: CausalConv3d,
    norm2: RmsNorm,
    conv2: CausalConv3d,
    shortcut: Option<CausalConv3d>,
}

impl ResidualBlock {
    pub fn new(in_dim: usize, out_dim: usize, vb: &VarBuilder<'_>) -> Result<Self> {
        let shortcut = if in_dim == out_dim {
            None
        } else {
            Some(CausalConv3d::new(
                in_dim,
                out_dim,
                (1, 1),
                1,
                0,
                &vb.pp("shortcut"),
            )?)
        };
        Ok(Self {
            norm1: RmsNorm::new(in_dim, false, &vb.pp("residual.0"))?,
            conv1: CausalConv3d::new(in_dim, out_dim, (3, 3), 1, 1, &vb.pp("residual.2"))?,
            norm2: RmsNorm::new(out_dim, false, &vb.pp("residual.3"))?,
            conv2: CausalConv3d::new(out_dim, out_dim, (3, 3), 1, 1, &vb.pp("residual.6"))?,
            shortcut,
        })
    }

    pub fn forward(&self, x: &Tensor, state: &mut ChunkState) -> Result<Tensor> {
        let device = x.device();
        let h = match &self.shortcut {
            Some(conv) => state.timed("shortcut conv", device, |s| {
                conv.forward_frames_with(x, s.kernels())
            })?,
            None => x.clone(),
        };
        let y = state.timed("norm+silu", device, |s| {
            self.norm1.forward_silu(x, s.kernels())
        })?;
        let y = state.timed("causal conv", device, |s| {
            self.conv1.forward(&y, s.next_frames())
        })?;
        let y = state.timed("norm+silu", device, |s| {
            self.norm2.forward_silu(&y, s.kernels())
        })?;
        let y = state.timed("causal conv", device, |s| {
            self.conv2.forward(&y, s.next_frames())
        })?;
        state.timed("residual add", device, |_| y + h)
    }
}

/// Single-head self-attention over the pixels of each frame. Keys: `norm`, `to_qkv`, `proj`.
#[derive(Clone, Debug)]
pub struct AttentionBlock {
    norm: RmsNorm,
    to_qkv: Conv2d,
    proj: Conv2d,
    dim: usize,
}

impl AttentionBlock {
    pub fn new(dim: usize, vb: &VarBuilder<'_>) -> Result<Self> {
        Ok(Self {
            norm: RmsNorm::new(dim, true, &vb.pp("norm"))?,
            to_qkv: Conv2d::new(dim, 3 * dim, 1, [0; 4], 1, &vb.pp("to_qkv"))?,
            proj: Conv2d::new(dim, dim, 1, [0; 4], 1, &vb.pp("proj"))?,
            dim,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (t, c, h, w) = x.dims4()?;
        let scale = 1.0 / (self.dim as f64).sqrt();
        // One frame at a time keeps the (hw × hw) scores to a single frame's.
        let mut frames = Vec::with_capacity(t);
        for i in 0..t {
            let frame = x.narrow(0, i, 1)?;
            let qkv = self.to_qkv.forward(&self.norm.forward(&frame)?)?;
            let qkv = qkv.reshape((3 * c, h * w))?.t()?;
            let q = qkv.narrow(1, 0, c)?.contiguous()?;
            let k = qkv.narrow(1, c, c)?.contiguous()?;
            let v = qkv.narrow(1, 2 * c, c)?.contiguous()?;
            let scores = (q.matmul(&k.t()?)? * scale)?;
            let weights = candle_nn::ops::softmax_last_dim(&scores)?;
            let out = weights.matmul(&v)?.t()?.reshape((1, c, h, w))?;
            frames.push(self.proj.forward(&out)?);
        }
        Tensor::cat(&frames, 0)? + x
    }
}

/// Spatial ×2 / ÷2 resampling, optionally with a temporal ×2 / ÷2 (`time_conv`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResampleMode {
    Upsample2d,
    Upsample3d,
    Downsample2d,
    Downsample3d,
}

/// Keys: `resample.1` (the spatial conv), `time_conv`.
#[derive(Clone, Debug)]
pub struct Resample {
    mode: ResampleMode,
    conv: Conv2d,
    time_conv: Option<CausalConv3d>,
}

impl Resample {
    /// `halve_on_upsample`: the Wan2.1 upsampling conv halves the channels; Wan2.2's keeps them.
    pub fn new(
        dim: usize,
        mode: ResampleMode,
        halve_on_upsample: bool,
        vb: &VarBuilder<'_>,
    ) -> Result<Self> {
        let spatial = vb.pp("resample.1");
        let (conv, time_conv) = match mode {
            ResampleMode::Upsample2d | ResampleMode::Upsample3d => {
                let out = if halve_on_upsample { dim / 2 } else { dim };
                let conv = Conv2d::new(dim, out, 3, [1; 4], 1, &spatial)?;
                let time = (mode == ResampleMode::Upsample3d)
                    .then(|| CausalConv3d::new(dim, 2 * dim, (3, 1), 1, 0, &vb.pp("time_conv")))
                    .transpose()?;
                (conv, time)
            }
            ResampleMode::Downsample2d | ResampleMode::Downsample3d => {
                // ZeroPad2d((0, 1, 0, 1)) then a stride-2 conv: pads right and bottom only.
                let conv = Conv2d::new(dim, dim, 3, [0, 1, 0, 1], 2, &spatial)?;
                let time = (mode == ResampleMode::Downsample3d)
                    .then(|| CausalConv3d::new(dim, dim, (3, 1), 2, 0, &vb.pp("time_conv")))
                    .transpose()?;
                (conv, time)
            }
        };
        Ok(Self {
            mode,
            conv,
            time_conv,
        })
    }

    pub fn forward(&self, x: &Tensor, state: &mut ChunkState) -> Result<Tensor> {
        let kernels = state.kernels().cloned();
        let kernels = kernels.as_ref();
        match (self.mode, &self.time_conv) {
            (ResampleMode::Upsample2d | ResampleMode::Downsample2d, _) | (_, None) => {
                self.spatial(x, kernels)
            }
            (ResampleMode::Upsample3d, Some(time_conv)) => {
                let slot = state.next();
                // The first chunk (the first latent frame) is not doubled in time.
                if !slot.started {
                    slot.started = true;
                    return self.spatial(x, kernels);
                }
                let (t, c, h, w) = x.dims4()?;
                let conv_slot = ConvSlot {
                    frames: &mut slot.frames,
                    kernels,
                };
                let y = time_conv.forward(x, conv_slot)?;
                // Channels (2, c): the first half is frame 2i, the second 2i + 1.
                let y = y.reshape((2 * t, c, h, w))?;
                self.spatial(&y, kernels)
            }
            (ResampleMode::Downsample3d, Some(time_conv)) => {
                let y = self.spatial(x, kernels)?;
                let slot = state.next();
                let t = y.dim(0)?;
                let last = y.narrow(0, t - 1, 1)?;
                // The first chunk passes through; later ones see the previous chunk's last frame.
                let out = match slot.frames.take() {
                    Some(previous) if slot.started => time_conv
                        .forward_frames_with(&Tensor::cat(&[&previous, &y], 0)?, kernels)?,
                    _ => y,
                };
                slot.started = true;
                slot.frames = Some(last.detach());
                Ok(out)
            }
        }
    }

    fn spatial(&self, x: &Tensor, kernels: Option<&Kernels>) -> Result<Tensor> {
        match self.mode {
            ResampleMode::Upsample2d | ResampleMode::Upsample3d => {
                let (_, _, h, w) = x.dims4()?;
                // Nearest-exact at an exact ×2 repeats each pixel.
                self.conv
                    .forward_with(&x.upsample_nearest2d(2 * h, 2 * w)?, kernels)
            }
            ResampleMode::Downsample2d | ResampleMode::Downsample3d => {
                self.conv.forward_with(x, kernels)
            }
        }
    }
}

/// `(c, t, h, w)` → `(t, c, h, w)`, contiguous.
pub fn to_frames(x: &Tensor) -> Result<Tensor> {
    x.transpose(0, 1)?.contiguous()
}

/// `(t, c, h, w)` → `(c, t, h, w)`, contiguous.
pub fn from_frames(x: &Tensor) -> Result<Tensor> {
    x.transpose(0, 1)?.contiguous()
}
