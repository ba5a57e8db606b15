//! The CUDA backends of [`crate::attention::attention`].

use std::ffi::c_void;

use candle_core::{DType, Shape, Tensor};
use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::cudnn::SdpaShape;
use super::{empty_like_shape, int, output_tensor, scratch};
use crate::attention::{Int8Kernel, KERNEL, bad};
use crate::{AttentionBackend, KernelError, Kernels};

/// Query rows per block of our kernel: 64 (one 16-row tile per warp) or 128 (two, which
/// halves shared-memory traffic per FLOP). 128 is the default; the benchmark measures both.
pub(crate) const FLASH_BLOCK_ROWS: usize = 128;
const FLASH_THREADS: u32 = 128;
/// Keys per tile (`kBlockN` in the kernel).
const FLASH_BLOCK_N: usize = 64;
/// `kPad` in the kernel: shared rows are `D + 8` elements.
const FLASH_PAD: usize = 8;

/// The 8-bit main kernel for head dim `d`: FP8 P·V with head dim 128 takes the pipelined
/// wgmma kernel on Hopper, everything else `mma.sync`.
pub(crate) fn int8_kernel(
    gpu: &super::GpuKernels,
    fp8_pv: bool,
    d: usize,
    block_rows: usize,
) -> Int8Kernel {
    if fp8_pv && gpu.has_wgmma() && d == 128 {
        // Lockstep: since the softmax lost a tenth of its instructions, ping-pong's barriers cost
        // more than its ordering gains (27.3 against 27.5 ms at 32,760 tokens, run 50).
        Int8Kernel::Pipelined { ping_pong: false }
    } else {
        Int8Kernel::MmaSync { fp8_pv, block_rows }
    }
}

pub(crate) fn fused(
    kernels: &Kernels,
    backend: AttentionBackend,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
) -> Result<Tensor, KernelError> {
    // On Hopper our kernel is a wgmma one (head dim 128: every Wan2.2 model's): the pipelined
    // one on long key sequences, the plain one where a pipeline of a few tiles barely fills.
    if backend == AttentionBackend::Flash && q.dim(3)? == 128 && super::loaded(kernels)?.has_wgmma()
    {
        return if k.dim(1)? >= crate::attention::PIPELINED_MIN_KEYS {
            pipelined(kernels, q, k, v, false)
        } else {
            wgmma(kernels, q, k, v, 2)
        };
    }
    fused_with_rows(kernels, backend, q, k, v, FLASH_BLOCK_ROWS)
}

pub(crate) fn fused_with_rows(
    kernels: &Kernels,
    backend: AttentionBackend,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    block_rows: usize,
) -> Result<Tensor, KernelError> {
    if !matches!(block_rows, 64 | 128) {
        return Err(bad(format!("{block_rows} query rows per block: 64 or 128")));
    }
    let gpu = super::loaded(kernels)?;
    if let AttentionBackend::Int8 { fp8_pv } = backend {
        // FP8 P·V on Hopper runs on wgmma (head dim 128: every Wan2.2 model's).
        let kernel = int8_kernel(gpu, fp8_pv, q.dim(3)?, block_rows);
        return super::sage::attention(gpu, q, k, v, kernel);
    }
    let (b, sq, h, d) = q.dims4()?;
    let sk = k.dim(1)?;
    let dtype = q.dtype();
    let (_operands, [qp, kp, vp]) = super::attention_operands(q, k, v)?;
    let shape = Shape::from((b, sq, h, d));
    let (storage, o) = empty_like_shape(&gpu.device, dtype, &shape)?;
    let scale = 1.0 / (d as f32).sqrt();
    let stream = gpu.device.cuda_stream();
    match backend {
        AttentionBackend::Cudnn => {
            let cudnn = gpu.cudnn.as_ref().map_err(|reason| KernelError::Cuda {
                problem: format!("cuDNN attention unavailable: {reason}"),
            })?;
            let mut cudnn = cudnn.lock().map_err(|_| KernelError::Cuda {
                problem: "the cuDNN handle's lock was poisoned by a panic".to_owned(),
            })?;
            let call = SdpaShape {
                dtype: i32::from(dtype == DType::F16),
                batch: b as i64,
                heads: h as i64,
                queries: sq as i64,
                keys: sk as i64,
                head_dim: d as i64,
                scale,
            };
            let workspace_bytes = cudnn
                .prepare(call)
                .map_err(|problem| KernelError::Cuda { problem })?;
            let (workspace, workspace_ptr) = scratch(&stream, workspace_bytes)?;
            // SAFETY: q, k, v are contiguous [B, S, H, D] tensors alive for this call, `o`
            // was allocated for the output shape, the workspace has the prepared size; all
            // on candle's stream, whose frees are stream-ordered.
            unsafe {
                cudnn.run(
                    stream.cu_stream().cast::<c_void>(),
                    call,
                    qp,
                    kp,
                    vp,
                    o,
                    workspace_ptr,
                )
            }
            .map_err(|problem| KernelError::Cuda { problem })?;
            drop(workspace);
        }
        // Handled above.
        AttentionBackend::Int8 { .. } | AttentionBackend::Flash | AttentionBackend::Reference => {
            let name = format!(
                "stillmotion_flash_attention_{}_d{d}_m{block_rows}",
                if dtype == DType::F16 { "f16" } else { "bf16" }
            );
            let function = gpu.flash_function(&name)?;
            launch_flash(
                gpu,
                &function,
                (block_rows, FLASH_THREADS),
                (block_rows + 2 * FLASH_BLOCK_N) * (d + FLASH_PAD) * 2,
                [qp, kp, vp, o],
                (b, sq, sk, h),
                scale * std::f32::consts::LOG2_E,
            )?;
        }
    }
    Ok(output_tensor(storage, shape))
}

/// Query rows and keys per block of the wgmma kernel; its shared memory.
const WGMMA_ROWS: usize = 128;
const WGMMA_THREADS: u32 = 256;
/// Q (128 rows), a K and a V tile (64 keys), 128 elements a row, and 1024 bytes to align the
/// atoms.
const WGMMA_SHARED: usize = (WGMMA_ROWS + 2 * 64) * 128 * 2 + 1024;

/// Our wgmma (Hopper) kernel: bf16/f16, head dim 128, on compute capability 9.0, built for
/// `blocks_per_sm` (1 or 2) blocks an SM.
pub(crate) fn wgmma(
    kernels: &Kernels,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    blocks_per_sm: u32,
) -> Result<Tensor, KernelError> {
    if !matches!(blocks_per_sm, 1 | 2) {
        return Err(bad(format!("{blocks_per_sm} blocks an SM: 1 or 2")));
    }
    let gpu = super::loaded(kernels)?;
    if !gpu.has_wgmma() {
        return Err(bad(
            "the wgmma kernel runs on compute capability 9.0 (Hopper)".to_owned(),
        ));
    }
    let (b, sq, h, d) = q.dims4()?;
    let sk = k.dim(1)?;
    let dtype = q.dtype();
    if d != 128 || !matches!(dtype, DType::BF16 | DType::F16) {
        return Err(bad(format!(
            "the wgmma kernel takes bf16/f16 with head dim 128, got {dtype:?} and {d}"
        )));
    }
    let (_operands, [qp, kp, vp]) = super::attention_operands(q, k, v)?;
    let shape = Shape::from((b, sq, h, d));
    let (storage, o) = empty_like_shape(&gpu.device, dtype, &shape)?;
    let name = format!(
        "stillmotion_wgmma_attention_{}_d128_x{blocks_per_sm}",
        if dtype == DType::F16 { "f16" } else { "bf16" }
    );
    let function = gpu.wgmma_function(&name)?;
    launch_flash(
        gpu,
        &function,
        (WGMMA_ROWS, WGMMA_THREADS),
        WGMMA_SHARED,
        [qp, kp, vp, o],
        (b, sq, sk, h),
        std::f32::consts::LOG2_E / (d as f32).sqrt(),
    )?;
    Ok(output_tensor(storage, shape))
}

/// The pipelined kernel (`flash_pipelined_forward` in `wgmma_attention.cu`): 128 query rows a
/// block, two consumer warpgroups and a producer warpgroup loading with TMA.
const FLASH_PIPELINED_ROWS: usize = 128;
const FLASH_PIPELINED_THREADS: u32 = 384;
/// Q, three stages of a K and a V tile (128 × 128 16-bit values each), the barriers, and 1024
/// bytes to align the atoms.
const FLASH_PIPELINED_SHARED: u32 = 128 * 128 * 2 * (1 + 2 * 3) + 8 * (1 + 3 * 3) + 1024;

/// Our pipelined wgmma kernel (Hopper): bf16/f16, head dim 128, compute capability 9.0, with
/// its two consumer warpgroups in lockstep or taking turns (`ping_pong`). Tensors whose
/// address TMA cannot take (not 16-byte aligned) run the plain wgmma kernel.
pub(crate) fn pipelined(
    kernels: &Kernels,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    ping_pong: bool,
) -> Result<Tensor, KernelError> {
    use cudarc::driver::sys::CUtensorMapDataType;
    let gpu = super::loaded(kernels)?;
    let (b, sq, h, d) = q.dims4()?;
    let sk = k.dim(1)?;
    let dtype = q.dtype();
    let (suffix, element) = match dtype {
        DType::BF16 => (
            "bf16",
            CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
        ),
        DType::F16 => ("f16", CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16),
        other => {
            return Err(bad(format!(
                "the pipelined kernel takes bf16/f16, got {other:?}"
            )));
        }
    };
    if d != 128 || !gpu.has_wgmma() {
        return Err(bad(format!(
            "the pipelined kernel runs on compute capability 9.0 with head dim 128, got {d}"
        )));
    }
    let ([q, k, v], [qp, kp, vp]) = super::attention_operands(q, k, v)?;
    if [qp, kp, vp].iter().any(|address| address % 16 != 0) {
        return wgmma(kernels, &q, &k, &v, 2);
    }
    // [B, S, H, D] as 4-D maps, boxes of 64 channels × 1 head × 128 tokens: one column half
    // of a tile.
    let map = |address: u64, s: usize| {
        super::tensor_map::tiled(
            address,
            element,
            [d, h, s, b],
            &[d * 2, h * d * 2, s * h * d * 2],
            [64, 1, 128, 1],
        )
    };
    let maps = [map(qp, sq)?, map(kp, sk)?, map(vp, sk)?];
    let shape = Shape::from((b, sq, h, d));
    let (storage, o) = empty_like_shape(&gpu.device, dtype, &shape)?;
    let variant = if ping_pong { "_pingpong" } else { "" };
    let function = gpu.wgmma_function(&format!(
        "stillmotion_flash_pipelined_{suffix}_d128{variant}"
    ))?;
    function.set_attribute(
        cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        FLASH_PIPELINED_SHARED as i32,
    )?;
    let dim = |value: usize, what: &str| {
        u32::try_from(value).map_err(|_| bad(format!("{value} {what} is too many")))
    };
    let config = LaunchConfig {
        grid_dim: (
            dim(sq.div_ceil(FLASH_PIPELINED_ROWS), "query blocks")?,
            dim(h, "heads")?,
            dim(b, "batch")?,
        ),
        block_dim: (FLASH_PIPELINED_THREADS, 1, 1),
        shared_mem_bytes: FLASH_PIPELINED_SHARED,
    };
    let (sq32, sk32, h32) = (int(KERNEL, sq)?, int(KERNEL, sk)?, int(KERNEL, h)?);
    let scale_log2 = std::f32::consts::LOG2_E / (d as f32).sqrt();
    let stream = gpu.device.cuda_stream();
    let mut launch = stream.launch_builder(&function);
    launch
        .arg(&maps[0])
        .arg(&maps[1])
        .arg(&maps[2])
        .arg(&o)
        .arg(&sq32)
        .arg(&sk32)
        .arg(&h32)
        .arg(&scale_log2);
    // SAFETY: the maps cover q [B, Sq, H, D] and k, v [B, Sk, H, D], contiguous, alive until
    // this function returns and freed stream-ordered after the kernel; o has [B, Sq, H, D]
    // elements; the grid covers the queries once.
    unsafe { launch.launch(config) }?;
    Ok(output_tensor(storage, shape))
}

/// Launches one of our flash kernels (mma.sync or wgmma; they share the signature q, k, v, o,
/// sq, sk, heads, scale in log2 units): one block of `threads` per `rows` queries of each
/// (head, batch), with `shared` bytes of dynamic shared memory.
fn launch_flash(
    gpu: &super::GpuKernels,
    function: &cudarc::driver::CudaFunction,
    (rows, threads): (usize, u32),
    shared: usize,
    [q, k, v, o]: [u64; 4],
    (b, sq, sk, h): (usize, usize, usize, usize),
    scale_log2: f32,
) -> Result<(), KernelError> {
    let shared =
        u32::try_from(shared).map_err(|_| bad(format!("{shared} bytes of shared memory")))?;
    // Above 48 KiB a kernel must opt in to more dynamic shared memory.
    function.set_attribute(
        cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        shared as i32,
    )?;
    let config = LaunchConfig {
        grid_dim: (
            u32::try_from(sq.div_ceil(rows))
                .map_err(|_| bad(format!("{sq} queries is too many")))?,
            u32::try_from(h).map_err(|_| bad(format!("{h} heads")))?,
            u32::try_from(b).map_err(|_| bad(format!("batch {b}")))?,
        ),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: shared,
    };
    let (sq32, sk32, h32) = (
        i32::try_from(sq).map_err(|_| bad(format!("{sq} queries")))?,
        i32::try_from(sk).map_err(|_| bad(format!("{sk} keys")))?,
        i32::try_from(h).map_err(|_| bad(format!("{h} heads")))?,
    );
    let stream = gpu.device.cuda_stream();
    let mut launch = stream.launch_builder(function);
    launch
        .arg(&q)
        .arg(&k)
        .arg(&v)
        .arg(&o)
        .arg(&sq32)
        .arg(&sk32)
        .arg(&h32)
        .arg(&scale_log2);
    // SAFETY: callers pass a kernel with this signature, four device addresses of contiguous
    // [B, S, H, D] tensors alive for the call (o sized for the output), and the shared memory
    // its layout needs; the grid covers every query row exactly once.
    unsafe { launch.launch(config) }?;
    Ok(())
}
