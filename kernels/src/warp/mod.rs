//! Backward warping along an optical-flow field (RIFE's `warp`).
//!
//! `backward_warp(input, flow)` samples `input` at each pixel moved by `flow` pixels: PyTorch's
//! `grid_sample(..., mode="bilinear", padding_mode="border", align_corners=True)` on the grid
//! RIFE builds from the flow. The CPU path is the exact reference in [`reference`]; a CUDA
//! kernel plugs in at [`backward_warp`]'s device dispatch (issue 12) and is checked against the
//! reference on a GPU machine.

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
/// both float32 on the same device; flow channel 0 is horizontal, 1 vertical, in pixels.
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
    if input.dtype() != DType::F32 || flow.dtype() != DType::F32 {
        return Err(bad(format!(
            "needs float32 input and flow, got {:?} and {:?}",
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
            let input_values = input.flatten_all()?.to_vec1::<f32>()?;
            let flow_values = flow.flatten_all()?.to_vec1::<f32>()?;
            let out = reference::backward_warp(&input_values, &flow_values, shape);
            Ok(Tensor::from_vec(
                out,
                (batch, channels, height, width),
                &Device::Cpu,
            )?)
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
    }
}
