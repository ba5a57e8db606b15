//! The 8-bit attention path (`cuda/sage_attention.cu`): a quantizing pre-pass, then our flash
//! kernel with INT8 q·kᵀ and FP8 (or 16-bit) P·V, on `mma.sync` or, on Hopper with FP8 P·V, on
//! `wgmma` (`cuda/sage_wgmma.cu`).

use candle_core::{DType, Shape, Tensor};
use cudarc::driver::sys::CUtensorMapDataType;
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::{GpuKernels, empty_like_shape, int, output_tensor};
use crate::KernelError;
use crate::attention::{Int8Kernel, KERNEL, bad};

const THREADS: u32 = 128;
/// Keys per tile (`kBlockN`): K's scale group, and V's padding.
const BLOCK_N: usize = 64;
/// Query rows per Q scale (`kQRows`).
const Q_ROWS: usize = 16;
/// Tokens each block of the channel-statistics kernel sums: 512 blocks a head at 32,760
/// tokens, so that enough loads are in flight (each thread reads its channel token by token).
const STATS_TOKENS: usize = 64;
/// Padding bytes of an 8-bit shared row (`kPad8`).
const PAD8: usize = 16;

/// How P·V is multiplied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PvPrecision {
    /// e4m3 (sm_89 and later), V per-channel scaled.
    Fp8,
    /// The input's bf16/f16.
    Half,
}

/// Query rows per block of the pipelined kernel (`sage_wgmma.cu`).
const PIPELINED_ROWS: usize = 128;

/// The pipelined kernel (`sage_wgmma.cu`, `kPipe*`): 128 query rows, 128-key tiles, 4 stages
/// of a K and a V tile of 128 × 128 bytes after Q's, barriers, and 1024 bytes of alignment.
const PIPELINED_KEYS: usize = 128;
const PIPELINED_STAGES: u32 = 4;
const PIPELINED_TILE: u32 = 128 * 128;
const PIPELINED_SHARED: u32 =
    PIPELINED_TILE * (1 + 2 * PIPELINED_STAGES) + 8 * (1 + 3 * PIPELINED_STAGES) + 1024;
const PIPELINED_THREADS: u32 = 256 + 128;

impl Int8Kernel {
    fn pv(self) -> PvPrecision {
        match self {
            Self::MmaSync { fp8_pv: false, .. } => PvPrecision::Half,
            Self::MmaSync { fp8_pv: true, .. } | Self::Pipelined { .. } => PvPrecision::Fp8,
        }
    }
}

/// Device memory owned for the length of one attention call.
struct Buffer {
    _slice: CudaSlice<u8>,
    ptr: u64,
}

fn buffer(gpu: &GpuKernels, bytes: usize, zeroed: bool) -> Result<Buffer, KernelError> {
    use cudarc::driver::DevicePtrMut;
    let stream = gpu.device.cuda_stream();
    let mut slice = if zeroed {
        stream.alloc_zeros::<u8>(bytes.max(1))?
    } else {
        // SAFETY: the pre-pass writes every byte of these buffers before the main kernel
        // reads them (padding rows included).
        unsafe { stream.alloc::<u8>(bytes.max(1)) }?
    };
    let ptr = slice.device_ptr_mut(&stream).0;
    Ok(Buffer { _slice: slice, ptr })
}

fn grid(x: usize, heads: usize, batch: usize) -> Result<(u32, u32, u32), KernelError> {
    let dim = |value: usize, what: &str| {
        u32::try_from(value).map_err(|_| bad(format!("{value} {what} is too many")))
    };
    Ok((
        dim(x, "blocks")?,
        dim(heads, "heads")?,
        dim(batch, "batch")?,
    ))
}

/// What the pre-pass leaves for the main kernel: INT8 Q and K with their scales, V (FP8 and
/// transposed, or the input's) and its column scale, and the buffers behind them, which live
/// until the main kernel has been queued (frees are stream-ordered).
struct Quantized {
    q8: Buffer,
    q_scale: Buffer,
    k8: Buffer,
    k_scale: Buffer,
    v_operand: u64,
    col_scale: u64,
    sq_padded: usize,
    sk_padded: usize,
    _stats: Buffer,
    _v_buffers: Option<(Buffer, Buffer)>,
    // The contiguous inputs the pointers above may point into.
    _inputs: (Tensor, Tensor, Tensor),
}

/// The quantizing pre-pass (`sage_attention.cu`): channel statistics, INT8 Q and smoothed K,
/// and with FP8 P·V the scaled, transposed e4m3 V.
fn quantize(
    gpu: &GpuKernels,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    pv: PvPrecision,
    suffix: &str,
) -> Result<Quantized, KernelError> {
    let (b, sq, h, d) = q.dims4()?;
    let sk = k.dim(1)?;
    let ([q, k, v], [qp, kp, vp]) = super::attention_operands(q, k, v)?;
    let sq_padded = sq.div_ceil(128) * 128;
    // Whole 128-key tiles for the pipelined kernel (two of K's scale groups each).
    let sk_padded = sk.div_ceil(PIPELINED_KEYS) * PIPELINED_KEYS;
    let stream = gpu.device.cuda_stream();
    let (h32, d32) = (int(KERNEL, h)?, int(KERNEL, d)?);
    let (sq32, sk32) = (int(KERNEL, sq)?, int(KERNEL, sk)?);
    let (sq_padded32, sk_padded32) = (int(KERNEL, sq_padded)?, int(KERNEL, sk_padded)?);

    // Channel statistics: K's sums (its mean), V's max |v| (the FP8 scale).
    let channels = b * h * d;
    let stats = buffer(gpu, 4 * channels * 4, true)?;
    let (k_sums, k_absmax, v_sums, v_absmax) = (
        stats.ptr,
        stats.ptr + (channels * 4) as u64,
        stats.ptr + (2 * channels * 4) as u64,
        stats.ptr + (3 * channels * 4) as u64,
    );
    let stats_fn = gpu.sage_function(&format!("stillmotion_sage_channel_stats_{suffix}"))?;
    let tokens32 = int(KERNEL, STATS_TOKENS)?;
    let stat_pass = |x: u64, s: usize, s32: i32, sums: u64, absmax: u64| {
        let config = LaunchConfig {
            grid_dim: grid(h, b, s.div_ceil(STATS_TOKENS))?,
            block_dim: (
                u32::try_from(d).map_err(|_| bad(format!("head dim {d}")))?,
                1,
                1,
            ),
            shared_mem_bytes: 0,
        };
        let mut launch = stream.launch_builder(&stats_fn);
        launch
            .arg(&x)
            .arg(&sums)
            .arg(&absmax)
            .arg(&s32)
            .arg(&h32)
            .arg(&d32)
            .arg(&tokens32);
        // SAFETY: x is a contiguous [B, s, H, D] tensor; sums/absmax hold B·H·D floats; the
        // grid is (H, B, ⌈s/512⌉) with D threads, as the kernel indexes.
        unsafe { launch.launch(config) }?;
        Ok::<(), KernelError>(())
    };
    stat_pass(kp, sk, sk32, k_sums, k_absmax)?;
    if pv == PvPrecision::Fp8 {
        stat_pass(vp, sk, sk32, v_sums, v_absmax)?;
    }

    // INT8 Q (scales carry the softmax scale in log2 units) and smoothed K.
    let quantize = gpu.sage_function(&format!("stillmotion_sage_quantize_{suffix}"))?;
    let q8 = buffer(gpu, b * h * sq_padded * d, false)?;
    let q_scale = buffer(gpu, b * h * (sq_padded / Q_ROWS) * 4, false)?;
    let k8 = buffer(gpu, b * h * sk_padded * d, false)?;
    let k_scale = buffer(gpu, b * h * (sk_padded / BLOCK_N) * 4, false)?;
    let softmax_log2 = std::f32::consts::LOG2_E / (d as f32).sqrt();
    let quantize_pass = |x: u64,
                         sums: u64,
                         (out, scales): (u64, u64),
                         (s32, s_padded, s_padded32): (i32, usize, i32),
                         rows: usize,
                         extra: f32| {
        let config = LaunchConfig {
            grid_dim: grid(s_padded / rows, h, b)?,
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let rows32 = int(KERNEL, rows)?;
        let mut launch = stream.launch_builder(&quantize);
        launch
            .arg(&x)
            .arg(&sums)
            .arg(&out)
            .arg(&scales)
            .arg(&s32)
            .arg(&s_padded32)
            .arg(&h32)
            .arg(&d32)
            .arg(&rows32)
            .arg(&extra);
        // SAFETY: x is contiguous [B, s, H, D]; sums is null or B·H·D floats; out holds
        // B·H·s_padded·D bytes and scales B·H·s_padded/rows floats; one block per group.
        unsafe { launch.launch(config) }?;
        Ok::<(), KernelError>(())
    };
    quantize_pass(
        qp,
        0,
        (q8.ptr, q_scale.ptr),
        (sq32, sq_padded, sq_padded32),
        Q_ROWS,
        softmax_log2,
    )?;
    quantize_pass(
        kp,
        k_sums,
        (k8.ptr, k_scale.ptr),
        (sk32, sk_padded, sk_padded32),
        BLOCK_N,
        1.0,
    )?;

    // FP8 V, transposed, with its per-channel output scale.
    let (v_operand, col_scale, v_buffers) = match pv {
        PvPrecision::Half => (vp, 0, None),
        PvPrecision::Fp8 => {
            let vt = buffer(gpu, b * h * d * sk_padded, false)?;
            let scale = buffer(gpu, channels * 4, false)?;
            let v_fp8 = gpu.sage_function(&format!("stillmotion_sage_v_fp8_{suffix}"))?;
            let config = LaunchConfig {
                grid_dim: grid(sk_padded / BLOCK_N, h, b)?,
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut launch = stream.launch_builder(&v_fp8);
            launch
                .arg(&vp)
                .arg(&v_absmax)
                .arg(&vt.ptr)
                .arg(&scale.ptr)
                .arg(&sk32)
                .arg(&sk_padded32)
                .arg(&h32)
                .arg(&d32);
            // SAFETY: v is contiguous [B, Sk, H, D]; absmax holds B·H·D floats; vt holds
            // B·H·D·sk_padded bytes and scale B·H·D floats; one block per 64-key tile.
            unsafe { launch.launch(config) }?;
            (vt.ptr, scale.ptr, Some((vt, scale)))
        }
    };

    Ok(Quantized {
        q8,
        q_scale,
        k8,
        k_scale,
        v_operand,
        col_scale,
        sq_padded,
        sk_padded,
        _stats: stats,
        _v_buffers: v_buffers,
        _inputs: (q, k, v),
    })
}

/// The pre-pass alone, for the benchmark: what the 8-bit path spends before its main kernel.
pub(crate) fn prepass(
    gpu: &GpuKernels,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    kernel: Int8Kernel,
) -> Result<(), KernelError> {
    let suffix = suffix(q.dtype())?;
    quantize(gpu, q, k, v, kernel.pv(), suffix).map(drop)
}

fn suffix(dtype: DType) -> Result<&'static str, KernelError> {
    match dtype {
        DType::BF16 => Ok("bf16"),
        DType::F16 => Ok("f16"),
        other => Err(bad(format!(
            "the 8-bit path takes bf16 or f16, got {other:?}"
        ))),
    }
}

/// softmax(q·kᵀ/√d)·v through the 8-bit kernels: q `[B, Sq, H, D]`, k/v `[B, Sk, H, D]`,
/// bf16 or f16, D = 64 or 128 (128 on `wgmma`).
pub(crate) fn attention(
    gpu: &GpuKernels,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    kernel: Int8Kernel,
) -> Result<Tensor, KernelError> {
    let (b, sq, h, d) = q.dims4()?;
    match kernel {
        Int8Kernel::MmaSync { block_rows, .. } if !matches!(block_rows, 64 | 128) => {
            return Err(bad(format!("{block_rows} query rows per block: 64 or 128")));
        }
        Int8Kernel::Pipelined { .. } if d != 128 || !gpu.has_wgmma() => {
            return Err(bad(format!(
                "the 8-bit wgmma kernel runs on compute capability 9.0 with head dim 128, got {d}"
            )));
        }
        _ => {}
    }
    let pv = kernel.pv();
    let sk = k.dim(1)?;
    let dtype = q.dtype();
    let suffix = suffix(dtype)?;
    let quantized = quantize(gpu, q, k, v, pv, suffix)?;
    let Quantized {
        ref q8,
        ref q_scale,
        ref k8,
        ref k_scale,
        v_operand,
        col_scale,
        sq_padded,
        sk_padded,
        ..
    } = quantized;
    let stream = gpu.device.cuda_stream();
    let h32 = int(KERNEL, h)?;
    let (sq32, sk32) = (int(KERNEL, sq)?, int(KERNEL, sk)?);
    let (sq_padded32, sk_padded32) = (int(KERNEL, sq_padded)?, int(KERNEL, sk_padded)?);

    let shape = Shape::from((b, sq, h, d));
    let (storage, o) = empty_like_shape(&gpu.device, dtype, &shape)?;
    let (function, rows, threads, shared) = match kernel {
        Int8Kernel::Pipelined { ping_pong } => {
            // Rows of 128 bytes: Q and K [B·H·S_padded, 128], transposed V [B·H·128, sk_padded].
            let rows = |address: u64, row_bytes: usize, rows: usize| {
                super::tensor_map::tiled(
                    address,
                    CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT8,
                    [row_bytes, rows],
                    &[row_bytes],
                    [128, 128],
                )
            };
            let maps = [
                rows(q8.ptr, d, b * h * sq_padded)?,
                rows(k8.ptr, d, b * h * sk_padded)?,
                rows(v_operand, sk_padded, b * h * d)?,
            ];
            let variant = if ping_pong { "" } else { "_lockstep" };
            let function = gpu.sage_wgmma_function(&format!(
                "stillmotion_sage_pipelined_{suffix}_d128{variant}"
            ))?;
            let shared = PIPELINED_SHARED;
            function.set_attribute(
                cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                shared as i32,
            )?;
            let config = LaunchConfig {
                grid_dim: grid(sq_padded / PIPELINED_ROWS, h, b)?,
                block_dim: (PIPELINED_THREADS, 1, 1),
                shared_mem_bytes: shared,
            };
            let mut launch = stream.launch_builder(&function);
            launch
                .arg(&maps[0])
                .arg(&maps[1])
                .arg(&maps[2])
                .arg(&q_scale.ptr)
                .arg(&k_scale.ptr)
                .arg(&col_scale)
                .arg(&o)
                .arg(&sq32)
                .arg(&sk32)
                .arg(&sq_padded32)
                .arg(&sk_padded32)
                .arg(&h32);
            // SAFETY: the maps cover the pre-pass's buffers (Q and K [B·H·S_padded, 128] bytes,
            // transposed V [B·H·128, sk_padded] bytes), which live until this function returns and
            // are only freed stream-ordered after the kernel; the grid covers the padded queries
            // once; o has [B, Sq, H, D] elements.
            unsafe { launch.launch(config) }?;
            return Ok(output_tensor(storage, shape));
        }
        Int8Kernel::MmaSync { block_rows, .. } => {
            // With FP8 P·V and 128-wide heads, 128-row blocks spill registers (ptxas, sm_89).
            let block_rows = if pv == PvPrecision::Fp8 && d == 128 {
                64
            } else {
                block_rows
            };
            let (pv_name, v_bytes) = match pv {
                PvPrecision::Fp8 => ("pv8", d * (BLOCK_N + PAD8)),
                PvPrecision::Half => ("pv16", BLOCK_N * (d + 8) * 2),
            };
            let name = format!("stillmotion_sage_{suffix}_d{d}_m{block_rows}_{pv_name}");
            let shared = (block_rows + BLOCK_N) * (d + PAD8) + v_bytes;
            (gpu.sage_function(&name)?, block_rows, THREADS, shared)
        }
    };
    let shared = u32::try_from(shared).map_err(|_| bad(format!("head dim {d}")))?;
    function.set_attribute(
        cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        shared as i32,
    )?;
    let config = LaunchConfig {
        grid_dim: grid(sq_padded / rows, h, b)?,
        block_dim: (threads, 1, 1),
        shared_mem_bytes: shared,
    };
    let mut launch = stream.launch_builder(&function);
    launch
        .arg(&q8.ptr)
        .arg(&q_scale.ptr)
        .arg(&k8.ptr)
        .arg(&k_scale.ptr)
        .arg(&v_operand)
        .arg(&col_scale)
        .arg(&o)
        .arg(&sq32)
        .arg(&sk32)
        .arg(&sq_padded32)
        .arg(&sk_padded32)
        .arg(&h32);
    // SAFETY: every buffer was sized above for these lengths and filled by the pre-pass on
    // this stream; the grid covers the padded queries once; o has [B, Sq, H, D] elements.
    unsafe { launch.launch(config) }?;
    Ok(output_tensor(storage, shape))
}
