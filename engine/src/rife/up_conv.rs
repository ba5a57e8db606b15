//! RIFE's `ConvTranspose2d(k=4, stride=2, padding=1)` (each IFBlock's `lastconv`, the Head's
//! `cnn3`) as a stride-1 3×3 convolution with four times the output channels, one per output
//! phase, followed by PixelShuffle(2). On CUDA that convolution is cuDNN's; candle's CUDA
//! transposed convolution is a naive loop per output element, and the last IFBlock's runs on
//! 416×240×52 outputs per pair.
//!
//! Why it is the same sum: the transposed convolution writes input `(iy, ix)` through tap
//! `(ky, kx)` to output `(2·iy + ky − 1, 2·ix + kx − 1)`. Output `(2i + a, 2j + b)` (phase
//! `(a, b)`) therefore reads input `(i + dy, j + dx)` through tap `ky = a + 1 − 2·dy`,
//! `kx = b + 1 − 2·dx`, for `dy, dx ∈ {−1, 0, 1}` where the tap lies in `0..4`: a 3×3
//! neighbourhood with padding 1. The phase weight of output channel `4·o + 2·a + b` is that tap
//! of the transposed weight, or 0; PixelShuffle(2) puts channel `4·o + 2·a + b` at phase
//! `(a, b)` of channel `o`. Only the summation order differs from the transposed convolution.
//!
//! The CPU keeps candle's transposed convolution: it is the reference the golden cases check.
//! So does float32 on CUDA, where the phase convolution runs without tensor cores.

use candle_core::{DType, Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig, VarBuilder};
use stillmotion_kernels::Kernels;
use stillmotion_kernels::conv::fused_available;

use super::model::{Conv3x3, pixel_shuffle2};

const KERNEL_SIZE: usize = 4;

/// `ConvTranspose2d(in, out, 4, stride=2, padding=1)`: doubles height and width.
#[derive(Clone, Debug)]
pub(super) struct UpConv {
    transposed: ConvTranspose2d,
    /// The phase convolution, for CUDA weights only.
    phases: Option<Conv3x3>,
}

impl UpConv {
    pub(super) fn new(
        in_channels: usize,
        out_channels: usize,
        vb: VarBuilder<'_>,
    ) -> candle_core::Result<Self> {
        let cfg = ConvTranspose2dConfig {
            padding: 1,
            output_padding: 0,
            stride: 2,
            dilation: 1,
        };
        let transposed =
            candle_nn::conv_transpose2d(in_channels, out_channels, KERNEL_SIZE, cfg, vb)?;
        let phases = if transposed.weight().device().is_cuda() {
            Some(Conv3x3::from_conv(phase_conv(&transposed)?, 1)?)
        } else {
            None
        };
        Ok(Self { transposed, phases })
    }

    pub(super) fn forward(&self, kernels: &Kernels, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.phases {
            // In float32 cuDNN has no tensor cores to spend on the phase convolution's 9 taps
            // (4 live): candle's transposed convolution is faster there (bench run 39).
            Some(phases) if x.dtype() != DType::F32 && fused_available(kernels, x.device()) => {
                pixel_shuffle2(&phases.forward(kernels, x)?)
            }
            _ => self.transposed.forward(x),
        }
    }
}

/// The 3×3 convolution (padding 1) whose output channel `4·o + 2·a + b` is phase `(a, b)` of
/// the transposed convolution's channel `o` (see the module documentation).
pub(super) fn phase_conv(transposed: &ConvTranspose2d) -> candle_core::Result<Conv2d> {
    let weight = transposed.weight();
    let (cin, cout, kh, kw) = weight.dims4()?;
    if (kh, kw) != (KERNEL_SIZE, KERNEL_SIZE) {
        candle_core::bail!("RIFE's up-convolution has 4×4 taps, this one {kh}×{kw}");
    }
    let taps: Vec<f32> = weight.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let mut phases = vec![0f32; cout * 4 * cin * 9];
    let tap = |phase: usize, d: usize| (phase + 3).checked_sub(2 * d);
    for o in 0..cout {
        for (a, b) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            let out = 4 * o + 2 * a + b;
            for c in 0..cin {
                // d = dy + 1 ∈ 0..3, so the tap a + 1 − 2·dy is a + 3 − 2·d.
                for dy in 0..3 {
                    let Some(ky) = tap(a, dy).filter(|&k| k < KERNEL_SIZE) else {
                        continue;
                    };
                    for dx in 0..3 {
                        let Some(kx) = tap(b, dx).filter(|&k| k < KERNEL_SIZE) else {
                            continue;
                        };
                        phases[((out * cin + c) * 3 + dy) * 3 + dx] =
                            taps[((c * cout + o) * KERNEL_SIZE + ky) * KERNEL_SIZE + kx];
                    }
                }
            }
        }
    }
    let device = weight.device();
    let phase_weight =
        Tensor::from_vec(phases, (cout * 4, cin, 3, 3), device)?.to_dtype(weight.dtype())?;
    let bias = transposed
        .bias()
        .map(|b| b.unsqueeze(1)?.repeat((1, 4))?.flatten_all()?.contiguous())
        .transpose()?;
    let cfg = Conv2dConfig {
        padding: 1,
        ..Conv2dConfig::default()
    };
    Ok(Conv2d::new(phase_weight, bias, cfg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The phase convolution and PixelShuffle(2) equal the transposed convolution, on the CPU
    /// with candle's convolutions on both sides.
    #[test]
    fn the_phase_convolution_is_the_transposed_convolution() {
        let device = Device::Cpu;
        let (cin, cout) = (6, 5);
        let weight = Tensor::randn(0f32, 1.0, (cin, cout, 4, 4), &device).unwrap();
        let bias = Tensor::randn(0f32, 1.0, cout, &device).unwrap();
        let cfg = ConvTranspose2dConfig {
            padding: 1,
            output_padding: 0,
            stride: 2,
            dilation: 1,
        };
        let transposed = ConvTranspose2d::new(weight, Some(bias), cfg);
        let x = Tensor::randn(0f32, 1.0, (2, cin, 7, 9), &device).unwrap();
        let expected = transposed.forward(&x).unwrap();
        let phases = phase_conv(&transposed).unwrap();
        let got = pixel_shuffle2(&phases.forward(&x).unwrap()).unwrap();
        assert_eq!(got.dims(), expected.dims());
        assert_eq!(got.dims(), &[2, cout, 14, 18]);
        let diff = (&got - &expected)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        let norm = expected.sqr().unwrap().sum_all().unwrap();
        let rel = (diff.to_scalar::<f32>().unwrap() / norm.to_scalar::<f32>().unwrap()).sqrt();
        assert!(rel < 1e-6, "rel L2 {rel}");
    }
}
