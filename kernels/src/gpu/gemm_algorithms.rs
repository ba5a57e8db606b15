//! Every algorithm cuBLASLt proposes for one bf16/f16 GEMM with the bias (and GELU) epilogue,
//! each timed on the device: the evidence for (or against) choosing GEMM algorithms by
//! measurement instead of taking the heuristic's first answer, as [`super::linear`] does.

use candle_core::{D, DType, Tensor};
use cudarc::cublaslt::sys::{cublasLtEpilogue_t as Ep, cublasLtMatmulDescAttributes_t as Attr};
use cudarc::cublaslt::{MatmulShared, result, sys};

use super::fp8_linear::{
    MAX_WORKSPACE, Owned, layout, matmul_in_place, set_attribute, workspace_preference,
};
use super::{device_ptr, empty_like_shape, loaded, scratch};
use crate::linear::{AlgorithmTiming, Epilogue};
use crate::{KernelError, Kernels};

const KERNEL: &str = "gemm_algorithms";

fn cublas(what: &str, error: result::CublasError) -> KernelError {
    KernelError::Cuda {
        problem: format!("cuBLASLt algorithm timing, {what}: {error:?}"),
    }
}

/// Up to `count` algorithms for `x·Wᵀ + b` (x `[M, K]`, W `[N, K]`, b `[N]`, all bf16 or all
/// f16 and contiguous), in the heuristic's order, each run `iterations` times after one warm-up.
pub(crate) fn time_algorithms(
    kernels: &Kernels,
    (x, weight, bias): (&Tensor, &Tensor, &Tensor),
    epilogue: Epilogue,
    count: usize,
    iterations: usize,
) -> Result<Vec<AlgorithmTiming>, KernelError> {
    let gpu = loaded(kernels)?;
    let k = x.dim(D::Minus1)?;
    let (n, _) = weight.dims2()?;
    let m = x.elem_count() / k.max(1);
    let data_type = match x.dtype() {
        DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
        DType::F16 => sys::cudaDataType::CUDA_R_16F,
        other => {
            return Err(KernelError::BadInput {
                kernel: KERNEL,
                problem: format!("dtype {other:?}: bf16 or f16"),
            });
        }
    };
    let desc = Owned(
        result::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        )
        .map_err(|e| cublas("creating the descriptor", e))?,
        result::destroy_matmul_desc,
    );
    // The same operation as `super::linear`: column-major yᵀ[N, M] = Wᵀ·xᵀ.
    set_attribute(desc.0, Attr::CUBLASLT_MATMUL_DESC_TRANSA, &1_i32)?;
    set_attribute(desc.0, Attr::CUBLASLT_MATMUL_DESC_TRANSB, &0_i32)?;
    let chosen = match epilogue {
        Epilogue::None => Ep::CUBLASLT_EPILOGUE_BIAS,
        Epilogue::GeluTanh => Ep::CUBLASLT_EPILOGUE_GELU_BIAS,
    };
    set_attribute(desc.0, Attr::CUBLASLT_MATMUL_DESC_EPILOGUE, &chosen)?;
    let bias_ptr = device_ptr(bias, KERNEL)?;
    set_attribute(desc.0, Attr::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_ptr)?;
    set_attribute(
        desc.0,
        Attr::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
        &data_type,
    )?;
    let a = layout(data_type, k, n, k)?;
    let b = layout(data_type, k, m, k)?;
    let c = layout(data_type, n, m, n)?;
    let preference = workspace_preference(MAX_WORKSPACE)?;
    let handle = *gpu.blas_lt.handle();
    let requested = i32::try_from(count).unwrap_or(i32::MAX);
    // SAFETY: an all-zero heuristic result is a valid value of this plain C struct; cuBLASLt
    // overwrites the first `returned` entries.
    let mut results: Vec<sys::cublasLtMatmulHeuristicResult_t> =
        vec![unsafe { std::mem::zeroed() }; count];
    let mut returned = 0_i32;
    // SAFETY: the descriptors are alive and describe the operands; `results` has room for
    // `requested` entries.
    unsafe {
        sys::cublasLtMatmulAlgoGetHeuristic(
            handle,
            desc.0,
            a.0,
            b.0,
            c.0,
            c.0,
            preference.0,
            requested,
            results.as_mut_ptr(),
            &raw mut returned,
        )
    }
    .result()
    .map_err(|e| cublas("asking for algorithms", e))?;
    results.truncate(usize::try_from(returned).unwrap_or(0));

    let (x_ptr, w_ptr) = (device_ptr(x, KERNEL)?, device_ptr(weight, KERNEL)?);
    let out_shape = candle_core::Shape::from((m, n));
    let (_out, out_ptr) = empty_like_shape(&gpu.device, x.dtype(), &out_shape)?;
    let stream = gpu.device.cuda_stream();
    let mut timings = Vec::with_capacity(results.len());
    for (index, heuristic) in results.iter().enumerate() {
        let (workspace, workspace_ptr) = scratch(&stream, heuristic.workspaceSize)?;
        let run = || {
            // SAFETY: A = W [N, K], B = x [M, K], C = D the output [M, N], the bias [N], all
            // contiguous on candle's stream and alive until the stream is synchronised below;
            // the workspace has the size this algorithm asked for.
            unsafe {
                matmul_in_place(
                    (handle, desc.0),
                    0.0,
                    [(w_ptr, a.0), (x_ptr, b.0)],
                    (out_ptr, c.0),
                    (heuristic, workspace_ptr),
                    stream.cu_stream().cast(),
                )
            }
            .map_err(|e| cublas(&format!("algorithm {index}"), e))
        };
        run()?;
        let timing = cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT;
        let start = stream.record_event(Some(timing))?;
        for _ in 0..iterations {
            run()?;
        }
        let end = stream.record_event(Some(timing))?;
        let ms = f64::from(start.elapsed_ms(&end)?) / iterations.max(1) as f64;
        drop(workspace);
        timings.push(AlgorithmTiming {
            index,
            ms,
            workspace_bytes: heuristic.workspaceSize,
            waves: heuristic.wavesCount,
        });
    }
    stream.synchronize()?;
    Ok(timings)
}
