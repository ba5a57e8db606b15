//! TMA descriptors (`CUtensorMap`) for our Hopper kernels, which take them by value.

use cudarc::driver::sys::{
    CUtensorMap, CUtensorMapDataType, CUtensorMapFloatOOBfill, CUtensorMapInterleave,
    CUtensorMapL2promotion, CUtensorMapSwizzle, cuTensorMapEncodeTiled,
};

use crate::KernelError;

/// An encoded map; the kernels declare the parameter as the same 128 bytes
/// (`const __grid_constant__ TensorMap`, `cuda/wgmma_common.cuh`).
#[repr(transparent)]
pub(crate) struct TensorMap(CUtensorMap);

// SAFETY: CUtensorMap is 128 plain bytes (repr C), passed by value.
unsafe impl cudarc::driver::DeviceRepr for TensorMap {}

/// A map over `dims` elements of `element` (innermost first) at `address`, with the byte
/// strides of every dimension but the first, loaded in boxes of `boxes` elements in the
/// 128-byte swizzle (wgmma's layout for K-major tiles of 128-byte rows). Elements past `dims`
/// load as zeros.
pub(crate) fn tiled<const RANK: usize>(
    address: u64,
    element: CUtensorMapDataType,
    dims: [usize; RANK],
    byte_strides: &[usize],
    boxes: [u32; RANK],
) -> Result<TensorMap, KernelError> {
    let rank = u32::try_from(RANK).map_err(|_| bad_map("rank"))?;
    if byte_strides.len() + 1 != RANK {
        return Err(bad_map("strides: one fewer than the rank"));
    }
    let dims = dims.map(|d| d as u64);
    let strides: Vec<u64> = byte_strides.iter().map(|&s| s as u64).collect();
    let element_strides = [1u32; RANK];
    let mut map = std::mem::MaybeUninit::<CUtensorMap>::zeroed();
    // SAFETY: dims, boxes and element strides have RANK entries and strides RANK − 1; the
    // address is device memory covering the dims that outlives the launch; the map is written
    // by the call before it is read.
    let map = unsafe {
        cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            element,
            rank,
            address as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            element_strides.as_ptr(),
            CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
        .result()?;
        map.assume_init()
    };
    Ok(TensorMap(map))
}

fn bad_map(problem: &str) -> KernelError {
    KernelError::BadInput {
        kernel: "tensor map",
        problem: problem.to_owned(),
    }
}
