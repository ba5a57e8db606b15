//! The FP8 GEMM: the activation quantized by `cuda/fp8.cu`, then cuBLASLt's FP8 matmul with
//! float32 accumulation, both per-tensor scales (`A_SCALE_POINTER` for the weight,
//! `B_SCALE_POINTER` for the activation) and the bias (and GELU) in the epilogue.
//!
//! cuBLASLt's FP8 rules (cublasLtMatmul, "FP8 requirements"): compute capability 8.9 or later;
//! A transposed and B not ("TN": both K-major, which a row-major weight `[N, K]` and activation
//! `[M, K]` are); compute type 32F, scale type 32F; pointers 16-byte aligned and leading
//! dimensions multiples of 16 bytes (K and N multiples of 16 here); C, D and the bias bf16 (or
//! all f16). Where one of those does not hold, or cuBLASLt offers no algorithm, [`linear`]
//! returns the reason instead of a result, and the caller dequantizes the weight instead.
//!
//! With a LoRA on the fly its delta is written into the output first (`super::linear`'s
//! `low_rank_into`, in the output's dtype) and the FP8 GEMM accumulates onto it: C is that
//! bf16/f16 buffer, β = 1, D = C.

use std::ffi::c_void;

use candle_core::backend::BackendDevice;
use candle_core::cuda::CudaStorageSlice;
use candle_core::{CudaStorage, D, DType, Shape, Tensor};
use cudarc::cublaslt::sys::{cublasLtEpilogue_t as Ep, cublasLtMatmulDescAttributes_t as Attr};
use cudarc::cublaslt::{MatmulShared, result, sys};
use cudarc::driver::{DevicePtr, LaunchConfig, PushKernelArg};

use super::{GpuKernels, device_ptr, empty_like_shape, int, loaded, output_tensor, scratch};
use crate::fp8::QuantizedActivation;
use crate::linear::{Epilogue, Fp8Weight, LowRank};
use crate::{KernelError, Kernels};

const KERNEL: &str = "linear_fp8";
const THREADS: u32 = 256;
/// Values per vector step of the quantization kernels.
const PACK: usize = 8;
/// Enough blocks to fill any GPU; grid-stride loops cover the rest.
const MAX_BLOCKS: usize = 4096;
/// cuBLASLt's recommended workspace on Hopper; only the chosen algorithm's size is allocated.
pub(super) const MAX_WORKSPACE: usize = 32 << 20;
/// The scales buffer: the activation's at 0, the weight's at 4 (16 bytes on).
const SCALES: usize = 8;
/// Byte offset of the weight scale in it.
const WEIGHT_SCALE_OFFSET: u64 = 16;

fn cublas(what: &str, error: result::CublasError) -> KernelError {
    KernelError::Cuda {
        problem: format!("cuBLASLt FP8 GEMM, {what}: {error:?}"),
    }
}

/// x (contiguous, bf16/f16/f32) quantized into fresh float8 storage; the scale goes to
/// `scales[0]` and `weight_scale` to `scales[4]` (`scales_ptr`: [`SCALES`] float32 on the
/// device).
fn quantize_into(
    gpu: &GpuKernels,
    x: &Tensor,
    input_scale: Option<f32>,
    weight_scale: f32,
    scales_ptr: u64,
) -> Result<(CudaStorage, u64), KernelError> {
    let suffix = match x.dtype() {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::F32 => "f32",
        other => {
            return Err(KernelError::BadInput {
                kernel: KERNEL,
                problem: format!("quantizes float32, bfloat16 or float16, not {other:?}"),
            });
        }
    };
    let n = x.elem_count();
    let xp = device_ptr(x, KERNEL)?;
    let vector = xp % 16 == 0 && n.is_multiple_of(PACK);
    let kind = if vector { "vec_" } else { "" };
    let stream = gpu.device.cuda_stream();
    // SAFETY: the quantization kernel writes all n values before anything reads them.
    let values = unsafe { gpu.device.alloc_uninit(x.shape(), DType::F8E4M3) }?;
    let CudaStorageSlice::F8E4M3(slice) = &values.slice else {
        return Err(KernelError::Cuda {
            problem: "candle allocated float8 storage of another dtype".to_owned(),
        });
    };
    let values_ptr = slice.device_ptr(&stream).0;
    let amax = stream.alloc_zeros::<u32>(1)?;
    let amax_ptr = amax.device_ptr(&stream).0;
    let items = if vector { n / PACK } else { n };
    let blocks = items.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS);
    let config = LaunchConfig {
        grid_dim: (int(KERNEL, blocks)? as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let n64 = n as i64;
    if input_scale.is_none() {
        let function = gpu.fp8_function(&format!("stillmotion_fp8_amax_{kind}{suffix}"))?;
        let mut launch = stream.launch_builder(&function);
        launch.arg(&xp).arg(&n64).arg(&amax_ptr);
        // SAFETY: matches the kernel's signature; x holds n values (16-byte aligned and a
        // whole number of packs for the vector kernel); amax is one zeroed u32.
        unsafe { launch.launch(config) }?;
    }
    let function = gpu.fp8_function(&format!("stillmotion_fp8_quantize_{kind}{suffix}"))?;
    let input = input_scale.unwrap_or(0.0);
    let mut launch = stream.launch_builder(&function);
    launch
        .arg(&xp)
        .arg(&values_ptr)
        .arg(&scales_ptr)
        .arg(&amax_ptr)
        .arg(&input)
        .arg(&weight_scale)
        .arg(&n64);
    // SAFETY: matches the kernel's signature; the output holds n bytes (fresh, so aligned for
    // the vector kernel's 8-byte stores), scales two floats; grid-stride loops cover n.
    unsafe { launch.launch(config) }?;
    // Freed in stream order, after the kernels that read it.
    drop(amax);
    Ok((values, values_ptr))
}

/// [`crate::fp8::quantize_activation`] on the GPU.
pub(crate) fn quantize_activation(
    kernels: &Kernels,
    x: &Tensor,
    input_scale: Option<f32>,
) -> Result<QuantizedActivation, KernelError> {
    let gpu = loaded(kernels)?;
    let x = x.contiguous()?;
    let scales_shape = Shape::from(SCALES);
    let (scales, scales_ptr) = empty_like_shape(&gpu.device, DType::F32, &scales_shape)?;
    let (values, _) = quantize_into(gpu, &x, input_scale, 1.0, scales_ptr)?;
    Ok(QuantizedActivation {
        values: output_tensor(values, x.shape().clone()),
        scale: output_tensor(scales, scales_shape).narrow(0, 0, 1)?,
    })
}

/// A cuBLASLt descriptor, destroyed when dropped.
pub(super) struct Owned<T: Copy>(
    pub(super) T,
    pub(super) unsafe fn(T) -> Result<(), result::CublasError>,
);

impl<T: Copy> Drop for Owned<T> {
    fn drop(&mut self) {
        // SAFETY: created by cuBLASLt for this value and destroyed only here.
        let _ = unsafe { (self.1)(self.0) };
    }
}

pub(super) fn set_attribute<V>(
    desc: sys::cublasLtMatmulDesc_t,
    attribute: sys::cublasLtMatmulDescAttributes_t,
    value: &V,
) -> Result<(), KernelError> {
    // SAFETY: `value` has the type cuBLASLt documents for `attribute` (an int32 enum, or a
    // 64-bit device pointer); it reads size_of::<V>() bytes from it during the call.
    unsafe {
        result::set_matmul_desc_attribute(
            desc,
            attribute,
            std::ptr::from_ref(value).cast::<c_void>(),
            size_of::<V>(),
        )
    }
    .map_err(|e| cublas(&format!("setting {attribute:?}"), e))
}

pub(super) fn layout(
    dtype: sys::cudaDataType,
    rows: usize,
    cols: usize,
    ld: usize,
) -> Result<Owned<sys::cublasLtMatrixLayout_t>, KernelError> {
    let handle = result::create_matrix_layout(dtype, rows as u64, cols as u64, ld as i64)
        .map_err(|e| cublas("creating a matrix layout", e))?;
    Ok(Owned(handle, result::destroy_matrix_layout))
}

/// Algorithm preferences that allow at most `limit` bytes of workspace.
pub(super) fn workspace_preference(
    limit: usize,
) -> Result<Owned<sys::cublasLtMatmulPreference_t>, KernelError> {
    let preference = Owned(
        result::create_matmul_pref().map_err(|e| cublas("creating preferences", e))?,
        result::destroy_matmul_pref,
    );
    // SAFETY: the attribute takes a size_t; cuBLASLt reads it during the call.
    unsafe {
        result::set_matmul_pref_attribute(
            preference.0,
            sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            std::ptr::from_ref(&limit).cast::<c_void>(),
            size_of::<usize>(),
        )
    }
    .map_err(|e| cublas("setting the workspace limit", e))?;
    Ok(preference)
}

/// `D = op(A)·op(B) + β·D`: one cuBLASLt matmul whose C is its output D (`out`), with the
/// algorithm `heuristic` chose and a workspace of the size it asked for.
///
/// # Safety
/// Every address is a live device buffer on `stream` of the shape and type its layout
/// describes (the descriptor's scale and bias pointers too), alive until the queued call runs
/// (frees are stream-ordered); the workspace holds `heuristic.workspaceSize` bytes.
pub(super) unsafe fn matmul_in_place(
    (handle, desc): (sys::cublasLtHandle_t, sys::cublasLtMatmulDesc_t),
    beta: f32,
    [(a, a_layout), (b, b_layout)]: [(u64, sys::cublasLtMatrixLayout_t); 2],
    (out, out_layout): (u64, sys::cublasLtMatrixLayout_t),
    (heuristic, workspace): (&sys::cublasLtMatmulHeuristicResult_t, u64),
    stream: sys::cudaStream_t,
) -> Result<(), result::CublasError> {
    let alpha = 1.0_f32;
    // SAFETY: the caller's contract covers every pointer; alpha and beta live through the call.
    unsafe {
        result::matmul(
            handle,
            desc,
            std::ptr::from_ref(&alpha).cast::<c_void>(),
            std::ptr::from_ref(&beta).cast::<c_void>(),
            a as *const c_void,
            a_layout,
            b as *const c_void,
            b_layout,
            out as *const c_void,
            out_layout,
            out as *mut c_void,
            out_layout,
            std::ptr::from_ref(&heuristic.algo),
            workspace as *mut c_void,
            heuristic.workspaceSize,
            stream,
        )
    }
}

/// The float8 weight's device address (its first element), or `None` when it is not a
/// contiguous float8 tensor.
fn weight_ptr(gpu: &GpuKernels, weight: &Tensor) -> Option<u64> {
    if weight.dtype() != DType::F8E4M3 || !weight.is_contiguous() {
        return None;
    }
    let (storage, layout) = weight.storage_and_layout();
    let candle_core::Storage::Cuda(cuda) = &*storage else {
        return None;
    };
    let CudaStorageSlice::F8E4M3(slice) = &cuda.slice else {
        return None;
    };
    let stream = gpu.device.cuda_stream();
    Some(slice.device_ptr(&stream).0 + layout.start_offset() as u64)
}

/// What an FP8 GEMM's cuBLASLt algorithm depends on: the shape, the output type and the
/// epilogue (the operands' alignment is fixed: 256 bytes for the weight and the fresh buffers).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) struct AlgorithmKey {
    m: usize,
    k: usize,
    n: usize,
    dtype: u32,
    epilogue: u32,
    /// β = 1 (a low-rank delta in C) or 0.
    accumulate: bool,
}

/// `x·(float(W)·scale)ᵀ + b (+ (x·downᵀ)·upᵀ)` through cuBLASLt's FP8 GEMM, `x` bf16 or f16 on
/// the device, the result in x's dtype; `Ok(Err(why))` where the GEMM cannot run here (see the
/// module documentation).
pub(crate) fn linear(
    kernels: &Kernels,
    x: &Tensor,
    weight: Fp8Weight<'_>,
    bias: Option<&Tensor>,
    low_rank: Option<LowRank<'_>>,
    epilogue: Epilogue,
) -> Result<Result<Tensor, String>, KernelError> {
    let gpu = loaded(kernels)?;
    let dtype = x.dtype();
    let k = x.dim(D::Minus1)?;
    let (n, wk) = weight.weight.dims2()?;
    if wk != k {
        return Err(KernelError::BadInput {
            kernel: KERNEL,
            problem: format!("x has {k} features, the weight {:?}", weight.weight.dims()),
        });
    }
    let m = x.elem_count() / k.max(1);
    let data_type = match dtype {
        DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
        DType::F16 => sys::cudaDataType::CUDA_R_16F,
        other => return Ok(Err(format!("output dtype {other:?} (bf16 or f16 only)"))),
    };
    if !gpu.has_fp8_mma() {
        return Ok(Err(
            "this GPU has no FP8 tensor cores (compute capability below 8.9)".to_owned(),
        ));
    }
    if m == 0 || !k.is_multiple_of(16) || !n.is_multiple_of(16) {
        return Ok(Err(format!(
            "{m}×{k}·{k}×{n}: K and N must be multiples of 16"
        )));
    }
    // 256 bytes: the alignment cuBLASLt's algorithm heuristic assumes by default (fresh
    // allocations have it; a view into the middle of a buffer may not).
    let Some(w_ptr) = weight_ptr(gpu, weight.weight).filter(|p| p % 256 == 0) else {
        return Ok(Err(
            "the weight is not a contiguous, 256-byte aligned float8 tensor".to_owned(),
        ));
    };
    let bias = match bias {
        None => None,
        Some(b) => {
            let b = b.to_dtype(dtype)?.contiguous()?;
            let b = if device_ptr(&b, KERNEL)? % 16 == 0 {
                b
            } else {
                b.copy()?
            };
            Some(b)
        }
    };
    let bias_ptr = bias.as_ref().map(|b| device_ptr(b, KERNEL)).transpose()?;
    let low_rank = match low_rank {
        Some(low_rank) if low_rank.down.dim(0)? > 0 => Some(low_rank),
        _ => None,
    };

    let scales_shape = Shape::from(SCALES);
    let (scales, scales_ptr) = empty_like_shape(&gpu.device, DType::F32, &scales_shape)?;
    let desc = Owned(
        result::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        )
        .map_err(|e| cublas("creating the descriptor", e))?,
        result::destroy_matmul_desc,
    );
    // Row-major y[M, N] = x[M, K]·W[N, K]ᵀ is column-major yᵀ[N, M] = Wᵀ·xᵀ with A = W as a
    // column-major [K, N] (transposed: "T") and B = x as a column-major [K, M] ("N").
    set_attribute(desc.0, Attr::CUBLASLT_MATMUL_DESC_TRANSA, &1_i32)?;
    set_attribute(desc.0, Attr::CUBLASLT_MATMUL_DESC_TRANSB, &0_i32)?;
    set_attribute(
        desc.0,
        Attr::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
        &(scales_ptr + WEIGHT_SCALE_OFFSET),
    )?;
    set_attribute(
        desc.0,
        Attr::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
        &scales_ptr,
    )?;
    let chosen = match (epilogue, bias_ptr) {
        (Epilogue::None, None) => Ep::CUBLASLT_EPILOGUE_DEFAULT,
        (Epilogue::None, Some(_)) => Ep::CUBLASLT_EPILOGUE_BIAS,
        (Epilogue::GeluTanh, None) => Ep::CUBLASLT_EPILOGUE_GELU,
        (Epilogue::GeluTanh, Some(_)) => Ep::CUBLASLT_EPILOGUE_GELU_BIAS,
    };
    set_attribute(desc.0, Attr::CUBLASLT_MATMUL_DESC_EPILOGUE, &chosen)?;
    if let Some(ptr) = bias_ptr {
        set_attribute(desc.0, Attr::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &ptr)?;
        set_attribute(
            desc.0,
            Attr::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
            &data_type,
        )?;
    }
    let fp8 = sys::cudaDataType::CUDA_R_8F_E4M3;
    let a = layout(fp8, k, n, k)?;
    let b = layout(fp8, k, m, k)?;
    let c = layout(data_type, n, m, n)?;
    let preference = workspace_preference(MAX_WORKSPACE)?;
    let handle = *gpu.blas_lt.handle();
    // The heuristic query costs tens of microseconds and a DiT forward makes about 400 of
    // these GEMMs on a few shapes: ask once per shape and epilogue.
    let key = AlgorithmKey {
        m,
        k,
        n,
        dtype: data_type as u32,
        epilogue: chosen as u32,
        accumulate: low_rank.is_some(),
    };
    let cached = gpu
        .fp8_algorithms
        .lock()
        .ok()
        .and_then(|algorithms| algorithms.get(&key).copied());
    let heuristic = match cached {
        Some(heuristic) => heuristic,
        // SAFETY: every descriptor is alive and describes the operands above.
        None => match unsafe {
            result::get_matmul_algo_heuristic(handle, desc.0, a.0, b.0, c.0, c.0, preference.0)
        } {
            Ok(heuristic) => {
                if let Ok(mut algorithms) = gpu.fp8_algorithms.lock() {
                    algorithms.insert(key, heuristic);
                }
                heuristic
            }
            Err(error) => {
                return Ok(Err(format!(
                    "cuBLASLt has no FP8 algorithm for {m}×{k}·{k}×{n} with {chosen:?}: {error:?}"
                )));
            }
        },
    };

    let x = x.contiguous()?;
    #[allow(
        clippy::cast_possible_truncation,
        reason = "the scales are float32 in the file"
    )]
    let (input_scale, weight_scale) = (weight.input_scale.map(|s| s as f32), weight.scale as f32);
    let (values, x_ptr) = quantize_into(gpu, &x, input_scale, weight_scale, scales_ptr)?;
    let mut out_dims = x.dims().to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = n;
    }
    let out_shape = Shape::from(out_dims);
    let (mut out, out_ptr) = empty_like_shape(&gpu.device, dtype, &out_shape)?;
    let beta = match low_rank {
        Some(low_rank) => {
            super::linear::low_rank_into(gpu, &x.reshape((m, k))?, low_rank, &mut out, (m, n))?;
            1.0_f32
        }
        None => 0.0_f32,
    };
    let stream = gpu.device.cuda_stream();
    let (workspace, workspace_ptr) = scratch(&stream, heuristic.workspaceSize)?;
    // SAFETY: A is the float8 weight [N, K] (16-byte aligned), B the quantized x [M, K] (fresh),
    // C = D the fresh output [M, N] (holding the low-rank delta, queued before on the same
    // stream, when β = 1), the bias [N] of D's type (16-byte aligned), scales two floats
    // written by the quantization queued before on the same stream; the workspace has the
    // size the algorithm asked for. Every buffer outlives the queued GEMM: frees are
    // stream-ordered.
    unsafe {
        matmul_in_place(
            (handle, desc.0),
            beta,
            [(w_ptr, a.0), (x_ptr, b.0)],
            (out_ptr, c.0),
            (&heuristic, workspace_ptr),
            stream.cu_stream().cast(),
        )
    }
    .map_err(|e| cublas(&format!("{m}×{k}·{k}×{n}"), e))?;
    drop((workspace, values, scales, bias));
    Ok(Ok(output_tensor(out, out_shape)))
}
