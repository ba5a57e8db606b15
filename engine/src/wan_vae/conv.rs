//! Convolutions of the Wan VAE: a 2D convolution whose im2col buffer stays bounded, and the
//! causal 3D convolution built from it.
//!
//! candle has no conv3d. A causal conv3d with `kt` temporal taps is `kt` conv2d calls over the
//! frames (as the batch), one per tap on a shifted view of the frames, summed. Stacking the
//! shifted windows along channels into one conv2d was measured slower on the CPU (it copies
//! the input `kt` times; see `tests::conv3d_strategies`: 96 channels, 4 frames of 208×120,
//! 2 cores shared at load 14: per tap 10.7–13.1 s, stacked 13.9–19.3 s over four runs).
//!
//! candle's CPU conv2d tiles its im2col; its CUDA conv2d builds the whole im2col buffer,
//! `frames × out_h × out_w × in × kh × kw` elements, gigabytes for one 832×480 frame at 96
//! channels, so off the CPU big convolutions run per frame and per band of output rows (with
//! their halo of input rows).
//!
//! On CUDA with cuDNN, when the job's kernels are handed down through the [`ConvSlot`], each
//! convolution is one cuDNN call instead ([`stillmotion_kernels::conv`]): all taps at once, on
//! tensor cores, without an im2col buffer.

use candle_core::{D, Result, Tensor};
use candle_nn::VarBuilder;
use stillmotion_kernels::Kernels;
use stillmotion_kernels::conv::{ConvGeometry, ConvWeight, conv3d_frames, fused_available};

/// A layer's temporal cache and the kernels of the job's device, handed to each causal conv.
pub struct ConvSlot<'a> {
    pub frames: &'a mut FrameCache,
    pub kernels: Option<&'a Kernels>,
}

/// The kernels to convolve `x` with, when they can run it fused.
fn fused_kernels<'a>(kernels: Option<&'a Kernels>, x: &Tensor) -> Option<&'a Kernels> {
    kernels.filter(|k| fused_available(k, x.device()))
}

/// Largest im2col buffer (in elements) one conv2d call may build: 256 MiB of f32.
const MAX_IM2COL_ELEMS: usize = 64 << 20;

/// A 2D convolution with zero padding `(top, bottom, left, right)` and a square stride.
#[derive(Clone, Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    /// The weight for the fused path (with its channels-last copy on CUDA) and the plain bias.
    fused: ConvWeight,
    plain_bias: Option<Tensor>,
    padding: [usize; 4],
    stride: usize,
}

impl Conv2d {
    /// Loads `weight` `(out, in, kh, kw)` and `bias` `(out)` from `vb`.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        padding: [usize; 4],
        stride: usize,
        vb: &VarBuilder<'_>,
    ) -> Result<Self> {
        let weight = vb.get((out_channels, in_channels, kernel, kernel), "weight")?;
        let bias = vb.get(out_channels, "bias")?;
        Self::from_parts(weight, Some(&bias), padding, stride)
    }

    /// From a weight already shaped `(out, in, kh, kw)`.
    pub fn from_parts(
        weight: Tensor,
        bias: Option<&Tensor>,
        padding: [usize; 4],
        stride: usize,
    ) -> Result<Self> {
        let fused = ConvWeight::new(&weight).map_err(candle_core::Error::wrap)?;
        let plain_bias = bias.cloned();
        let bias = bias.map(|b| b.reshape((1, (), 1, 1))).transpose()?;
        Ok(Self {
            weight,
            bias,
            fused,
            plain_bias,
            padding,
            stride,
        })
    }

    /// [`Self::forward`], fused when `kernels` can run it on `x`'s device.
    pub fn forward_with(&self, x: &Tensor, kernels: Option<&Kernels>) -> Result<Tensor> {
        let Some(kernels) = fused_kernels(kernels, x) else {
            return self.forward(x);
        };
        let [top, bottom, left, right] = self.padding;
        let geometry = ConvGeometry {
            pre_padding: [0, top, left],
            post_padding: [0, bottom, right],
            stride: [1, self.stride, self.stride],
        };
        conv3d_frames(kernels, x, &self.fused, self.plain_bias.as_ref(), geometry)
            .map_err(candle_core::Error::wrap)
    }

    /// `x`: `(n, in, h, w)` → `(n, out, h', w')`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let budget = if x.device().is_cpu() {
            usize::MAX
        } else {
            MAX_IM2COL_ELEMS
        };
        self.forward_within(x, budget)
    }

    fn add_bias(&self, y: Tensor) -> Result<Tensor> {
        match &self.bias {
            Some(bias) => y.broadcast_add(bias),
            None => Ok(y),
        }
    }

    /// [`Self::forward`] with im2col buffers of at most `max_elems` elements.
    fn forward_within(&self, x: &Tensor, max_elems: usize) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let (_, _, kh, kw) = self.weight.dims4()?;
        let [top, bottom, left, right] = self.padding;
        let (hp, wp) = (h + top + bottom, w + left + right);
        let out_h = (hp - kh) / self.stride + 1;
        let out_w = (wp - kw) / self.stride + 1;
        let per_row = out_w * c * kh * kw;
        let symmetric = top == bottom && left == right && top == left;
        if n * out_h * per_row <= max_elems && symmetric {
            let y = x.conv2d(&self.weight, top, self.stride, 1, 1)?;
            return self.add_bias(y);
        }
        let x = x
            .pad_with_zeros(D::Minus2, top, bottom)?
            .pad_with_zeros(D::Minus1, left, right)?;
        let rows = (max_elems / per_row.max(1)).clamp(1, out_h);
        if rows == out_h {
            return self.add_bias(x.conv2d(&self.weight, 0, self.stride, 1, 1)?);
        }
        let mut frames = Vec::with_capacity(n);
        for i in 0..n {
            let frame = x.narrow(0, i, 1)?;
            let mut bands = Vec::with_capacity(out_h.div_ceil(rows));
            let mut r0 = 0;
            while r0 < out_h {
                let r1 = (r0 + rows).min(out_h);
                let in0 = r0 * self.stride;
                let in_len = (r1 - 1) * self.stride + kh - in0;
                let band = frame.narrow(2, in0, in_len)?;
                bands.push(band.conv2d(&self.weight, 0, self.stride, 1, 1)?);
                r0 = r1;
            }
            frames.push(Tensor::cat(&bands, 2)?);
        }
        self.add_bias(Tensor::cat(&frames, 0)?)
    }
}

/// The temporal context a causal convolution carries from one chunk to the next: its last
/// `kt - 1` input frames (fewer at the start of a clip).
pub type FrameCache = Option<Tensor>;

/// A causal 3D convolution `(kt, k, k)`: `kt - 1` frames of temporal context in front (the
/// cache, then zeros), symmetric spatial zero padding.
#[derive(Clone, Debug)]
pub struct CausalConv3d {
    /// One convolution per temporal tap, oldest frame first; the last one carries the bias.
    taps: Vec<Conv2d>,
    stride_t: usize,
    /// All taps at once for the fused path.
    fused: ConvWeight,
    bias: Tensor,
    spatial_padding: usize,
}

impl CausalConv3d {
    /// Loads `weight` `(out, in, kt, k, k)` and `bias` from `vb`.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        (taps, kernel): (usize, usize),
        stride_t: usize,
        spatial_padding: usize,
        vb: &VarBuilder<'_>,
    ) -> Result<Self> {
        let weight = vb.get((out_channels, in_channels, taps, kernel, kernel), "weight")?;
        let bias = vb.get(out_channels, "bias")?;
        let p = spatial_padding;
        let fused = ConvWeight::new(&weight).map_err(candle_core::Error::wrap)?;
        let taps = (0..taps)
            .map(|k| {
                let w = weight.narrow(2, k, 1)?.squeeze(2)?.contiguous()?;
                let b = (k + 1 == taps).then_some(&bias);
                Conv2d::from_parts(w, b, [p, p, p, p], 1)
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            taps,
            stride_t,
            fused,
            bias,
            spatial_padding,
        })
    }

    /// [`Self::forward_frames`], fused when `kernels` can run it on `x`'s device.
    pub fn forward_frames_with(&self, x: &Tensor, kernels: Option<&Kernels>) -> Result<Tensor> {
        let Some(kernels) = fused_kernels(kernels, x) else {
            return self.forward_frames(x);
        };
        let p = self.spatial_padding;
        let geometry = ConvGeometry {
            pre_padding: [0, p, p],
            post_padding: [0, p, p],
            stride: [self.stride_t, 1, 1],
        };
        conv3d_frames(kernels, x, &self.fused, Some(&self.bias), geometry)
            .map_err(candle_core::Error::wrap)
    }

    /// Convolves frames that already hold their temporal context: `(t, in, h, w)` →
    /// `((t - kt) / stride + 1, out, h, w)`.
    pub fn forward_frames(&self, x: &Tensor) -> Result<Tensor> {
        let t = x.dim(0)?;
        let out_t = (t - self.taps.len()) / self.stride_t + 1;
        let mut sum: Option<Tensor> = None;
        for (k, conv) in self.taps.iter().enumerate() {
            let frames = if self.stride_t == 1 {
                x.narrow(0, k, out_t)?
            } else {
                let index: Vec<u32> = (0..out_t).map(|j| (j * self.stride_t + k) as u32).collect();
                x.index_select(&Tensor::new(index, x.device())?, 0)?
            };
            let y = conv.forward(&frames)?;
            sum = Some(match sum {
                Some(acc) => (acc + y)?,
                None => y,
            });
        }
        sum.ok_or_else(|| candle_core::Error::Msg("a causal conv3d needs a tap".to_owned()))
    }

    /// Causal convolution of one chunk `(t, in, h, w)`, continuing from `cache` (the frames of
    /// the previous chunks), which it then updates: the reference's `feat_cache` for one layer.
    pub fn forward(&self, x: &Tensor, slot: ConvSlot<'_>) -> Result<Tensor> {
        let ConvSlot {
            frames: cache,
            kernels,
        } = slot;
        let context = self.taps.len() - 1;
        if context == 0 {
            return self.forward_frames_with(x, kernels);
        }
        let joined = match cache.take() {
            Some(previous) => Tensor::cat(&[&previous, x], 0)?,
            None => x.clone(),
        };
        let t = joined.dim(0)?;
        let keep = context.min(t);
        // Detached: with trainable weights (`Var`s) candle would otherwise keep every earlier
        // chunk's graph alive through the cache, and memory would grow with the clip.
        *cache = Some(joined.narrow(0, t - keep, keep)?.detach());
        let padded = if t < context + x.dim(0)? {
            joined.pad_with_zeros(0, context + x.dim(0)? - t, 0)?
        } else {
            joined
        };
        self.forward_frames_with(&padded, kernels)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::VarBuilder;

    use super::*;

    fn conv3d(in_c: usize, out_c: usize, taps: usize, k: usize, pad: usize) -> CausalConv3d {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (out_c, in_c, taps, k, k), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, out_c, &dev).unwrap();
        let vb = VarBuilder::from_tensors(
            [("weight".to_owned(), w), ("bias".to_owned(), b)].into(),
            DType::F32,
            &dev,
        );
        CausalConv3d::new(in_c, out_c, (taps, k), 1, pad, &vb).unwrap()
    }

    fn rel_l2(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().sqr().unwrap().sum_all().unwrap();
        let n = b.sqr().unwrap().sum_all().unwrap();
        (d.to_scalar::<f32>().unwrap() / n.to_scalar::<f32>().unwrap()).sqrt()
    }

    #[test]
    fn chunked_causal_conv_equals_one_pass() {
        let conv = conv3d(3, 5, 3, 3, 1);
        let x = Tensor::randn(0f32, 1.0, (9, 3, 6, 7), &Device::Cpu).unwrap();
        let whole = conv
            .forward(
                &x,
                ConvSlot {
                    frames: &mut None,
                    kernels: None,
                },
            )
            .unwrap();
        let mut cache = None;
        let parts: Vec<Tensor> = [(0, 1), (1, 4), (5, 1), (6, 3)]
            .iter()
            .map(|&(s, l)| {
                let slot = ConvSlot {
                    frames: &mut cache,
                    kernels: None,
                };
                conv.forward(&x.narrow(0, s, l).unwrap(), slot).unwrap()
            })
            .collect();
        let chunked = Tensor::cat(&parts, 0).unwrap();
        assert_eq!(whole.dims(), &[9, 5, 6, 7]);
        assert!(rel_l2(&chunked, &whole) < 1e-6);
    }

    #[test]
    fn banded_conv2d_equals_direct() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (4, 3, 3, 3), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 4, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 11, 9), &dev).unwrap();
        let conv = Conv2d::from_parts(w.clone(), Some(&b), [0, 1, 0, 1], 2).unwrap();
        let direct = x
            .pad_with_zeros(2, 0, 1)
            .unwrap()
            .pad_with_zeros(3, 0, 1)
            .unwrap()
            .conv2d(&w, 0, 2, 1, 1)
            .unwrap()
            .broadcast_add(&b.reshape((1, 4, 1, 1)).unwrap())
            .unwrap();
        // A budget of two output rows forces several bands per frame.
        let banded = conv.forward_within(&x, 2 * 5 * 3 * 9).unwrap();
        assert_eq!(banded.dims(), direct.dims());
        assert!(rel_l2(&banded, &direct) < 1e-6);
        assert!(rel_l2(&conv.forward(&x).unwrap(), &direct) < 1e-6);
    }

    /// Times the per-tap conv3d against stacking the shifted windows along channels into one
    /// conv2d (run with `--ignored --nocapture`; numbers go in the module doc, not asserted).
    #[test]
    #[ignore = "a measurement, not a check"]
    fn conv3d_strategies() {
        let (c, h, w) = (96, 120, 208);
        let dev = Device::Cpu;
        let weight = Tensor::randn(0f32, 1.0, (c, c, 3, 3, 3), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, c, &dev).unwrap();
        let vb = VarBuilder::from_tensors(
            [
                ("weight".to_owned(), weight.clone()),
                ("bias".to_owned(), bias.clone()),
            ]
            .into(),
            DType::F32,
            &dev,
        );
        let conv = CausalConv3d::new(c, c, (3, 3), 1, 1, &vb).unwrap();
        let stacked_weight = weight
            .permute((0, 2, 1, 3, 4))
            .unwrap()
            .reshape((c, 3 * c, 3, 3))
            .unwrap();
        let bias = bias.reshape((1, c, 1, 1)).unwrap();
        let stacked = |x: &Tensor| {
            let windows: Vec<Tensor> = (0..3).map(|k| x.narrow(0, k, 4).unwrap()).collect();
            Tensor::cat(&windows, 1)
                .unwrap()
                .conv2d(&stacked_weight, 1, 1, 1, 1)
                .unwrap()
                .broadcast_add(&bias)
                .unwrap()
        };
        let x = Tensor::randn(0f32, 1.0, (6, c, h, w), &dev).unwrap();
        assert!(rel_l2(&stacked(&x), &conv.forward_frames(&x).unwrap()) < 1e-5);
        for _ in 0..2 {
            let t0 = std::time::Instant::now();
            conv.forward_frames(&x).unwrap();
            let t1 = std::time::Instant::now();
            stacked(&x);
            let t2 = std::time::Instant::now();
            println!(
                "conv3d {c}ch 4 frames {w}x{h}: per tap {:?}, stacked {:?}",
                t1 - t0,
                t2 - t1
            );
        }
    }
}
