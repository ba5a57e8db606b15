//! Launch of `cuda/warp.cu`.

use candle_core::{DType, Tensor};
use cudarc::driver::PushKernelArg;

use super::{device_ptr, empty_like_shape, grid_1d, int, loaded, output_tensor};
use crate::{KernelError, Kernels};

const KERNEL: &str = "backward_warp";

pub(crate) fn backward_warp(
    kernels: &Kernels,
    input: &Tensor,
    flow: &Tensor,
) -> Result<Tensor, KernelError> {
    let gpu = loaded(kernels)?;
    let (input, flow) = (input.contiguous()?, flow.contiguous()?);
    let (b, c, h, w) = input.dims4()?;
    let (b32, c32, h32, w32) = (
        int(KERNEL, b)?,
        int(KERNEL, c)?,
        int(KERNEL, h)?,
        int(KERNEL, w)?,
    );
    let (ip, fp) = (device_ptr(&input, KERNEL)?, device_ptr(&flow, KERNEL)?);
    let (storage, op) = empty_like_shape(&gpu.device, input.dtype(), input.shape())?;
    let name = match input.dtype() {
        DType::F16 => "stillmotion_backward_warp_f16",
        DType::BF16 => "stillmotion_backward_warp_bf16",
        _ => "stillmotion_backward_warp_f32",
    };
    let function = gpu.warp_function(name)?;
    let stream = gpu.device.cuda_stream();
    let mut launch = stream.launch_builder(&function);
    launch
        .arg(&ip)
        .arg(&fp)
        .arg(&op)
        .arg(&b32)
        .arg(&c32)
        .arg(&h32)
        .arg(&w32);
    // One thread per output pixel (no grid-stride loop in this kernel), so the grid must
    // cover every pixel: at 256 threads a block, 2^31 blocks is far beyond any frame.
    let pixels = b * h * w;
    let mut config = grid_1d(pixels, 256);
    config.grid_dim.0 = u32::try_from(pixels.div_ceil(256)).map_err(|_| KernelError::BadInput {
        kernel: KERNEL,
        problem: format!("{pixels} pixels is too many"),
    })?;
    // SAFETY: matches the kernel's signature for the dtype; contiguous input and flow of one
    // dtype (f32, f16 or bf16, picking the kernel above) checked by the wrapper, output
    // allocated with the input's shape and dtype.
    unsafe { launch.launch(config) }?;
    Ok(output_tensor(storage, input.shape().clone()))
}
