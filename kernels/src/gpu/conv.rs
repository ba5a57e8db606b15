//! The CUDA backend of [`crate::conv::conv3d_frames`]: cuDNN on channels-last copies.

use std::ffi::c_void;

use candle_core::{DType, Device, Shape, Tensor};

use super::cudnn::ConvCall;
use super::{device_ptr, empty_like_shape, output_tensor, scratch};
use crate::conv::ConvGeometry;
use crate::{KernelError, Kernels};

const KERNEL: &str = "conv3d";

pub(crate) fn cudnn_loaded(kernels: &Kernels, device: &Device) -> bool {
    super::loaded(kernels)
        .is_ok_and(|gpu| gpu.cudnn.is_ok() && device.same_device(&Device::Cuda(gpu.device.clone())))
}

fn cuda_error(problem: String) -> KernelError {
    KernelError::Cuda { problem }
}

/// `x` `(t, c, h, w)`, `filter` `(k, kt, kh, kw, c)` contiguous; output `(t', k, h', w')`.
pub(crate) fn conv3d_frames(
    kernels: &Kernels,
    x: &Tensor,
    filter: &Tensor,
    bias: Option<&Tensor>,
    geometry: ConvGeometry,
    [ot, oh, ow]: [usize; 3],
) -> Result<Tensor, KernelError> {
    let gpu = super::loaded(kernels)?;
    let cudnn = gpu
        .cudnn
        .as_ref()
        .map_err(|reason| cuda_error(format!("cuDNN convolution unavailable: {reason}")))?;
    let (t, c, h, w) = x.dims4()?;
    let (k, kt, kh, kw, _) = filter.dims5()?;
    let dtype = x.dtype();
    let code = match dtype {
        DType::BF16 => 0,
        DType::F16 => 1,
        DType::F32 => 2,
        other => {
            return Err(KernelError::BadInput {
                kernel: KERNEL,
                problem: format!("dtype {other:?}: float32, bfloat16 or float16"),
            });
        }
    };
    let int = |v: usize| i64::try_from(v).map_err(|_| cuda_error(format!("size {v}")));
    let mut shape = [0_i64; 18];
    // The shim's order: n, c, d, h, w, then k, t, r, s; our frames are the depth axis.
    let values = [c, t, h, w, k, kt, kh, kw]
        .into_iter()
        .chain(geometry.pre_padding)
        .chain(geometry.post_padding)
        .chain(geometry.stride);
    // n = 1: the frames are the depth axis of one sample.
    shape[0] = 1;
    for (slot, value) in shape[1..].iter_mut().zip(values) {
        *slot = int(value)?;
    }
    let call = ConvCall { dtype: code, shape };

    // Channels-last input, made in one tiled transpose of the frames (t, c, h·w) → (t, h·w, c)
    // (candle's strided copy of a permute reads with a stride of h·w); the output comes back
    // channels-last and is transposed back once, with the bias added in the same pass.
    let x_cl = super::glue::transpose_last2(kernels, &x.reshape((t, c, h * w))?, None)?;
    let out_shape = Shape::from((ot, oh, ow, k));
    let (storage, y_ptr) = empty_like_shape(&gpu.device, dtype, &out_shape)?;
    let (x_ptr, f_ptr) = (device_ptr(&x_cl, KERNEL)?, device_ptr(filter, KERNEL)?);
    let stream = gpu.device.cuda_stream();
    {
        let mut cudnn = cudnn.lock().map_err(|_| {
            cuda_error("the cuDNN handle's lock was poisoned by a panic".to_owned())
        })?;
        let workspace_bytes = cudnn.prepare_conv(&call).map_err(cuda_error)?;
        let (workspace, workspace_ptr) = scratch(&stream, workspace_bytes)?;
        // SAFETY: x_cl and the filter are contiguous channels-last tensors alive for this
        // call, the output was allocated for (t', h', w', k), the workspace has the prepared
        // size; all on candle's stream, whose frees are stream-ordered.
        unsafe {
            cudnn.run_conv(
                stream.cu_stream().cast::<c_void>(),
                &call,
                x_ptr,
                f_ptr,
                y_ptr,
                workspace_ptr,
            )
        }
        .map_err(cuda_error)?;
        drop(workspace);
    }
    drop(x_cl);
    let y = output_tensor(storage, out_shape).reshape((ot, oh * ow, k))?;
    Ok(super::glue::transpose_last2(kernels, &y, bias)?.reshape((ot, k, oh, ow))?)
}
