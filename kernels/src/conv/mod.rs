//! 3-D convolution over a clip's frames (the Wan VAE's causal conv3d and its per-frame conv2d).
//!
//! Frames are candle's `(t, c, h, w)`: the clip is one sample whose depth axis is time. Temporal
//! padding is the caller's (the VAE's causal cache), spatial padding may be asymmetric (the
//! VAE's stride-2 downsampling pads right and bottom only).
//!
//! - The CPU path and test oracle, [`reference::conv3d_frames`], is one candle conv2d per
//!   temporal tap, summed: exact in float32.
//! - On CUDA with cuDNN loaded, one cuDNN convolution (the frontend graph API through
//!   `cudnn/shim.cpp`) on channels-last copies: tensor cores in bf16/f16; float32 stays true
//!   float32 (tensor-core engines, which round to TF32, are left out unless cuDNN has nothing
//!   else for the shape), so the golden cases hold on a GPU. Candle's own CUDA conv2d builds a
//!   whole im2col buffer (gigabytes per 480p frame at 96 channels) and runs a plain GEMM.
//!
//! [`ConvWeight`] holds the weight in both layouts, prepared once at load.

pub mod reference;

use candle_core::{Device, Tensor};

use crate::{KernelError, Kernels};

const KERNEL: &str = "conv3d";

fn bad(problem: String) -> KernelError {
    KernelError::BadInput {
        kernel: KERNEL,
        problem,
    }
}

/// A convolution weight `(k, c, kt, kh, kw)`, with its channels-last copy `(k, kt, kh, kw, c)`
/// on CUDA devices.
#[derive(Clone, Debug)]
pub struct ConvWeight {
    weight: Tensor,
    #[cfg_attr(
        not(feature = "cuda"),
        allow(dead_code, reason = "only the CUDA backend reads it")
    )]
    channels_last: Option<Tensor>,
}

impl ConvWeight {
    /// Prepares `weight` `(k, c, kt, kh, kw)` (a `(k, c, kh, kw)` weight is one temporal tap).
    pub fn new(weight: &Tensor) -> Result<Self, KernelError> {
        let weight = match weight.rank() {
            4 => weight.unsqueeze(2)?,
            5 => weight.clone(),
            rank => return Err(bad(format!("a weight of rank {rank}: 4 or 5"))),
        };
        let channels_last = if weight.device().is_cuda() {
            Some(weight.permute((0, 2, 3, 4, 1))?.contiguous()?)
        } else {
            None
        };
        Ok(Self {
            weight,
            channels_last,
        })
    }

    /// The weight `(k, c, kt, kh, kw)`.
    #[must_use]
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    fn dims(&self) -> Result<(usize, usize, usize, usize, usize), KernelError> {
        Ok(self.weight.dims5()?)
    }
}

/// Zero padding before and after each axis (time, height, width) and the stride of each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub pre_padding: [usize; 3],
    pub post_padding: [usize; 3],
    pub stride: [usize; 3],
}

impl ConvGeometry {
    /// No temporal padding, `padding` on every spatial side, stride 1.
    #[must_use]
    pub fn spatial_padding(padding: usize) -> Self {
        Self {
            pre_padding: [0, padding, padding],
            post_padding: [0, padding, padding],
            stride: [1, 1, 1],
        }
    }

    /// The output extent of `axis` (0 time, 1 height, 2 width) for an input of `len`.
    fn output_len(&self, axis: usize, len: usize, kernel: usize) -> Option<usize> {
        let padded = len + self.pre_padding[axis] + self.post_padding[axis];
        let stride = self.stride[axis];
        (padded >= kernel && stride > 0).then(|| (padded - kernel) / stride + 1)
    }
}

/// Whether [`conv3d_frames`] runs fused on `device`: CUDA with cuDNN loaded. Elsewhere callers
/// keep their own path (the reference, or a bounded-memory one on a GPU without cuDNN).
#[must_use]
pub fn fused_available(kernels: &Kernels, device: &Device) -> bool {
    #[cfg(feature = "cuda")]
    {
        device.is_cuda() && crate::gpu::conv::cudnn_loaded(kernels, device)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (kernels, device);
        false
    }
}

/// Convolves frames `x` `(t, c, h, w)` with `weight` `(k, c, kt, kh, kw)` and an optional
/// `bias` `(k)`: `(t', k, h', w')`. Float32, bfloat16 or float16; `x`, weight and bias share
/// the dtype. CPU tensors take the reference; CUDA tensors need cuDNN ([`fused_available`]).
pub fn conv3d_frames(
    kernels: &Kernels,
    x: &Tensor,
    weight: &ConvWeight,
    bias: Option<&Tensor>,
    geometry: ConvGeometry,
) -> Result<Tensor, KernelError> {
    let (t, c, h, w) = x.dims4()?;
    let (k, wc, kt, kh, kw) = weight.dims()?;
    if wc != c {
        return Err(bad(format!("{c} input channels but the weight takes {wc}")));
    }
    if weight.weight.dtype() != x.dtype() || bias.is_some_and(|b| b.dtype() != x.dtype()) {
        return Err(bad(format!(
            "the input is {:?} but the weight is {:?}",
            x.dtype(),
            weight.weight.dtype()
        )));
    }
    if let Some(bias) = bias
        && bias.dims() != [k]
    {
        return Err(bad(format!(
            "bias {:?} for {k} output channels",
            bias.dims()
        )));
    }
    let output = [(0, t, kt), (1, h, kh), (2, w, kw)]
        .map(|(axis, len, kernel)| geometry.output_len(axis, len, kernel));
    let [Some(ot), Some(oh), Some(ow)] = output else {
        return Err(bad(format!(
            "{t}×{h}×{w} frames are smaller than the {kt}×{kh}×{kw} kernel with {geometry:?}"
        )));
    };
    match x.device() {
        Device::Cpu => reference::conv3d_frames(x, &weight.weight, bias, geometry),
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => {
            let filter = weight
                .channels_last
                .as_ref()
                .ok_or_else(|| bad("the weight was prepared on another device".to_owned()))?;
            crate::gpu::conv::conv3d_frames(kernels, x, filter, bias, geometry, [ot, oh, ow])
        }
        other => {
            let _ = (kernels, ot, oh, ow);
            Err(bad(format!("no convolution on {other:?}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::DType;

    use super::*;

    /// A direct seven-loop convolution: the definition, for small shapes.
    fn direct(x: &Tensor, w: &Tensor, bias: &Tensor, g: ConvGeometry) -> Tensor {
        let (t, c, h, wd) = x.dims4().unwrap();
        let (k, _, kt, kh, kw) = w.dims5().unwrap();
        let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let ws: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        let bs: Vec<f32> = bias.to_vec1().unwrap();
        let out = |axis: usize, len: usize, kernel: usize| g.output_len(axis, len, kernel).unwrap();
        let (ot, oh, ow) = (out(0, t, kt), out(1, h, kh), out(2, wd, kw));
        let mut y = vec![0f32; ot * k * oh * ow];
        for (o, yo) in y.iter_mut().enumerate() {
            let (ti, rest) = (o / (k * oh * ow), o % (k * oh * ow));
            let (ko, rest) = (rest / (oh * ow), rest % (oh * ow));
            let (yi, xi) = (rest / ow, rest % ow);
            let mut sum = f64::from(bs[ko]);
            for ci in 0..c {
                for a in 0..kt {
                    for b in 0..kh {
                        for d in 0..kw {
                            let tt = (ti * g.stride[0] + a) as isize - g.pre_padding[0] as isize;
                            let yy = (yi * g.stride[1] + b) as isize - g.pre_padding[1] as isize;
                            let xx = (xi * g.stride[2] + d) as isize - g.pre_padding[2] as isize;
                            if tt < 0 || yy < 0 || xx < 0 {
                                continue;
                            }
                            let (tt, yy, xx) = (tt as usize, yy as usize, xx as usize);
                            if tt >= t || yy >= h || xx >= wd {
                                continue;
                            }
                            let xv = xs[((tt * c + ci) * h + yy) * wd + xx];
                            let wv = ws[(((ko * c + ci) * kt + a) * kh + b) * kw + d];
                            sum += f64::from(xv) * f64::from(wv);
                        }
                    }
                }
            }
            *yo = sum as f32;
        }
        Tensor::from_vec(y, (ot, k, oh, ow), &Device::Cpu).unwrap()
    }

    fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn reference_matches_the_definition() {
        let dev = Device::Cpu;
        let cases = [
            // Causal 3×3×3 with spatial padding, the VAE's common case.
            (
                (5, 3, 6, 7),
                (4, 3, 3, 3, 3),
                ConvGeometry::spatial_padding(1),
            ),
            // Stride-2 downsampling with right/bottom padding only.
            (
                (2, 3, 7, 8),
                (5, 3, 1, 3, 3),
                ConvGeometry {
                    pre_padding: [0, 0, 0],
                    post_padding: [0, 1, 1],
                    stride: [1, 2, 2],
                },
            ),
            // The VAE's temporal downsampling: 3 taps, stride 2 in time.
            (
                (7, 2, 3, 3),
                (2, 2, 3, 1, 1),
                ConvGeometry {
                    pre_padding: [0, 0, 0],
                    post_padding: [0, 0, 0],
                    stride: [2, 1, 1],
                },
            ),
        ];
        for (xs, ws, geometry) in cases {
            let x = Tensor::randn(0f32, 1.0, xs, &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, ws, &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, ws.0, &dev).unwrap();
            let weight = ConvWeight::new(&w).unwrap();
            let ours = conv3d_frames(&Kernels::cpu(), &x, &weight, Some(&b), geometry).unwrap();
            let expected = direct(&x, &w, &b, geometry);
            assert_eq!(ours.dims(), expected.dims(), "{geometry:?}");
            let err = max_abs(&ours, &expected);
            assert!(err < 1e-4, "max abs {err} for {geometry:?}");
        }
    }

    #[test]
    fn refuses_mismatched_inputs() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 3, 4, 4), DType::F32, &dev).unwrap();
        let weight =
            ConvWeight::new(&Tensor::zeros((2, 4, 1, 3, 3), DType::F32, &dev).unwrap()).unwrap();
        let error = conv3d_frames(
            &Kernels::cpu(),
            &x,
            &weight,
            None,
            ConvGeometry::spatial_padding(1),
        )
        .unwrap_err();
        assert!(error.to_string().contains("3 input channels"), "{error}");
        let small =
            ConvWeight::new(&Tensor::zeros((2, 3, 3, 3, 3), DType::F32, &dev).unwrap()).unwrap();
        let error = conv3d_frames(
            &Kernels::cpu(),
            &x.narrow(0, 0, 2).unwrap(),
            &small,
            None,
            ConvGeometry::spatial_padding(1),
        )
        .unwrap_err();
        assert!(error.to_string().contains("smaller than"), "{error}");
    }
}
