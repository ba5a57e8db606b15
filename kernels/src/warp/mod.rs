//! Backward warping along an optical-flow field (RIFE's `warp`).
//!
//! `backward_warp(input, flow)` samples `input` at each pixel moved by `flow` pixels: PyTorch's
//! `grid_sample(..., mode="bilinear", padding_mode="border", align_corners=True)` on the grid
//! RIFE builds from the flow. The CPU path is the exact reference in [`reference`]; a CUDA
//! kernel plugs in at [`backward_warp`]'s device dispatch (issue 12) and is checked against the
//! reference on a GPU machine.
//!
//! f16 and bf16 tensors are warped in f32 and rounded once to their dtype (to nearest, ties
//! to even), on the CPU by upcasting around the reference, on CUDA inside the kernel: the
//! two agree bit for bit. PyTorch's CUDA `grid_sample` also blends half inputs in f32.

pub mod reference;

use candle_core::{DType, Device, Tensor};

use crate::{KernelError, Kernels};

const KERNEL: &str = "backward_warp";

fn bad(problem: String) -> KernelError {
    KernelError::BadInput {
        kernel: KERNEL,
        problem,
    }
}

/// Warps `input` `(batch, channels, height, width)` along `flow` `(batch, 2, height, width)`,
/// both of one float dtype (f32, f16 or bf16) on the same device; flow channel 0 is
/// horizontal, 1 vertical, in pixels.
/// Returns a tensor shaped like `input`. CPU only: CUDA tensors need
/// [`backward_warp_with`] and the device's kernels.
pub fn backward_warp(input: &Tensor, flow: &Tensor) -> Result<Tensor, KernelError> {
    backward_warp_with(&Kernels::cpu(), input, flow)
}

/// [`backward_warp`] with the kernels of the tensors' device (the CUDA kernel is bit-exact
/// with the CPU reference).
pub fn backward_warp_with(
    kernels: &Kernels,
    input: &Tensor,
    flow: &Tensor,
) -> Result<Tensor, KernelError> {
    #[cfg(not(feature = "cuda"))]
    let _ = kernels;
    let (batch, channels, height, width) = input.dims4().map_err(|e| bad(e.to_string()))?;
    let flow_dims = flow.dims4().map_err(|e| bad(e.to_string()))?;
    if flow_dims != (batch, 2, height, width) {
        return Err(bad(format!(
            "flow must be (batch, 2, height, width) = ({batch}, 2, {height}, {width}), got {flow_dims:?}"
        )));
    }
    let dtype = input.dtype();
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) || flow.dtype() != dtype {
        return Err(bad(format!(
            "needs f32, f16 or bf16 input and flow of the same dtype, got {:?} and {:?}",
            input.dtype(),
            flow.dtype()
        )));
    }
    if height < 2 || width < 2 {
        return Err(bad(format!(
            "needs at least 2×2 pixels, got {height}×{width}"
        )));
    }
    if !input.device().same_device(flow.device()) {
        return Err(bad("input and flow are on different devices".to_owned()));
    }
    match input.device() {
        Device::Cpu => {
            let shape = reference::WarpShape {
                batch,
                channels,
                height,
                width,
            };
            let input_values = input
                .flatten_all()?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?;
            let flow_values = flow.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            let out = reference::backward_warp(&input_values, &flow_values, shape);
            Ok(
                Tensor::from_vec(out, (batch, channels, height, width), &Device::Cpu)?
                    .to_dtype(dtype)?,
            )
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(_) if kernels.gpu.is_some() => {
            crate::gpu::warp::backward_warp(kernels, input, flow)
        }
        Device::Cuda(_) | Device::Metal(_) => Err(KernelError::NoDeviceKernel {
            kernel: KERNEL,
            device: format!("{:?}", input.device().location()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapper_checks_shapes_and_runs_on_cpu() {
        let input = Tensor::arange(0f32, 24.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 3, 4))
            .unwrap();
        let flow = Tensor::zeros((1, 2, 3, 4), DType::F32, &Device::Cpu).unwrap();
        let out = backward_warp(&input, &flow).unwrap();
        let diff = (out - &input)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5);

        let wrong = Tensor::zeros((1, 3, 3, 4), DType::F32, &Device::Cpu).unwrap();
        let error = backward_warp(&input, &wrong).unwrap_err().to_string();
        assert!(error.contains("flow must be"), "{error}");
        let half = input.to_dtype(DType::F16).unwrap();
        assert!(backward_warp(&half, &flow).is_err());
        let integer = input.to_dtype(DType::U32).unwrap();
        assert!(backward_warp(&integer, &flow.to_dtype(DType::U32).unwrap()).is_err());
    }

    #[test]
    fn half_dtypes_warp_in_f32_and_round_once() {
        let input = (Tensor::arange(0f32, 48.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 3, 4, 4))
            .unwrap()
            * 0.37)
            .unwrap()
            .sin()
            .unwrap();
        let flow = (Tensor::arange(0f32, 32.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 4, 4))
            .unwrap()
            * 0.3)
            .unwrap()
            .cos()
            .unwrap();
        for dtype in [DType::F16, DType::BF16] {
            let (input, flow) = (
                input.to_dtype(dtype).unwrap(),
                flow.to_dtype(dtype).unwrap(),
            );
            let out = backward_warp(&input, &flow).unwrap();
            assert_eq!(out.dtype(), dtype);
            let expected = backward_warp(
                &input.to_dtype(DType::F32).unwrap(),
                &flow.to_dtype(DType::F32).unwrap(),
            )
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
            let same = out
                .to_dtype(DType::F32)
                .unwrap()
                .eq(&expected.to_dtype(DType::F32).unwrap())
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .min_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(same, 1.0, "{dtype:?}");
        }
    }
}
