//! How a failed job is told to scripts: a stable [`FailureKind`] for every [`EngineError`]
//! (the CLI's exit code and its JSON `code` come from it), and the recognition of GPU
//! out-of-memory errors inside candle's and cudarc's errors, which only say so in their text.

use crate::EngineError;

/// What kind of failure an error is, in words that stay stable across versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The request cannot be done as asked: an invalid recipe, a missing or unusable input or
    /// model file, a device that is not there. Changing the request fixes it.
    InvalidRequest,
    /// The memory plan found no placement that fits the device's budget.
    PlanRefused,
    /// The GPU ran out of memory while the job ran.
    OutOfMemory,
    /// The user cancelled the job.
    Cancelled,
    /// Anything else that went wrong while the job ran.
    Failed,
}

impl FailureKind {
    /// The kind's stable name (`invalid_request`, `plan_refused`, `out_of_memory`,
    /// `cancelled`, `failed`).
    #[must_use]
    pub fn code(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::PlanRefused => "plan_refused",
            Self::OutOfMemory => "out_of_memory",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
        }
    }

    /// Whether the request itself is at fault (not the run): the CLI exits with 2 for these.
    #[must_use]
    pub fn is_request_problem(self) -> bool {
        matches!(self, Self::InvalidRequest | Self::PlanRefused)
    }
}

impl EngineError {
    /// The kind of this failure.
    #[must_use]
    pub fn kind(&self) -> FailureKind {
        match self {
            Self::Cancelled => FailureKind::Cancelled,
            Self::MemoryPlanRefused { .. } => FailureKind::PlanRefused,
            Self::OutOfMemory { .. } => FailureKind::OutOfMemory,
            Self::BadImage { .. }
            | Self::BadPreset { .. }
            | Self::BadRecipe { .. }
            | Self::DeviceUnavailable(_)
            | Self::BadCheckpoint { .. }
            | Self::BadFit { .. }
            | Self::BadRifeWeights { .. }
            | Self::BadTextEncoder { .. }
            | Self::BadTokenizer { .. }
            | Self::BadWeights { .. }
            | Self::BadModelFile { .. } => FailureKind::InvalidRequest,
            // New variants are runtime failures until classified here.
            _ => FailureKind::Failed,
        }
    }

    /// This error as [`EngineError::OutOfMemory`] when it is a GPU allocation failure that
    /// candle, cuBLAS or a kernel reported (only their text says so); otherwise unchanged.
    #[must_use]
    pub fn classify_out_of_memory(self) -> Self {
        let text = match &self {
            Self::Candle(error) => error_chain(error),
            Self::Kernel(error) => error_chain(error),
            _ => return self,
        };
        match OUT_OF_MEMORY_MARKERS.iter().find(|m| text.contains(**m)) {
            Some(marker) => Self::OutOfMemory {
                problem: format!(
                    "the GPU ran out of memory ({marker}): render fewer frames or a smaller \
                     resolution, use float8 (fp8_scaled) or GGUF model files, close other \
                     programs that use the GPU, or raise the VRAM reserve (--reserve-vram) so \
                     the memory plan keeps more of the GPU free and offloads more"
                ),
            },
            None => self,
        }
    }
}

/// What the CUDA driver (cudarc's `DriverError`), the runtime API, cuBLAS (`CublasError`) and
/// cuDNN call an allocation failure.
const OUT_OF_MEMORY_MARKERS: [&str; 4] = [
    "CUDA_ERROR_OUT_OF_MEMORY",
    "cudaErrorMemoryAllocation",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
];

/// The error's message and every source's, one per line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push('\n');
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `candle_core::Error::Cuda` wraps candle's `CudaError`, which is transparent over
    /// cudarc's `DriverError`, whose Display is its Debug: this is the text of a failed
    /// allocation (cudarc 0.19, candle 0.11). The CUDA build also checks the real types.
    const DRIVER_OOM: &str = r#"DriverError(CUDA_ERROR_OUT_OF_MEMORY, "out of memory")"#;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Text(&'static str);

    fn candle_cuda(text: &'static str) -> EngineError {
        EngineError::Candle(candle_core::Error::Cuda(Box::new(Text(text))))
    }

    #[test]
    fn a_cuda_allocation_failure_becomes_out_of_memory_with_what_to_change() {
        for error in [
            candle_cuda(DRIVER_OOM),
            // Inside candle's backtrace and context wrappers.
            EngineError::Candle(
                candle_core::Error::Cuda(Box::new(Text(DRIVER_OOM))).context("alloc 512 MiB"),
            ),
            candle_cuda("CublasError(CUBLAS_STATUS_ALLOC_FAILED)"),
            EngineError::Kernel(stillmotion_kernels::KernelError::Cuda {
                problem: format!("allocating the attention workspace: {DRIVER_OOM}"),
            }),
        ] {
            let classified = error.classify_out_of_memory();
            assert_eq!(
                classified.kind(),
                FailureKind::OutOfMemory,
                "{classified:?}"
            );
            let message = classified.to_string();
            for advice in [
                "fewer frames",
                "float8",
                "close other programs",
                "raise the VRAM reserve (--reserve-vram)",
            ] {
                assert!(message.contains(advice), "{message}");
            }
        }
    }

    #[test]
    fn other_errors_are_not_out_of_memory() {
        for error in [
            candle_cuda(
                r#"DriverError(CUDA_ERROR_ILLEGAL_ADDRESS, "an illegal memory access was encountered")"#,
            ),
            EngineError::MemoryPlanRefused {
                problem: "out of memory budget".to_owned(),
            },
            EngineError::Candle(candle_core::Error::Msg("shape mismatch".to_owned())),
        ] {
            let kind = error.kind();
            assert_eq!(error.classify_out_of_memory().kind(), kind);
        }
    }

    #[test]
    fn request_problems_are_told_apart_from_runtime_failures() {
        let refused = EngineError::MemoryPlanRefused {
            problem: String::new(),
        };
        let bad = EngineError::BadRecipe {
            field: "frames",
            problem: String::new(),
        };
        assert!(refused.kind().is_request_problem() && bad.kind().is_request_problem());
        assert_eq!(refused.kind().code(), "plan_refused");
        assert_eq!(bad.kind().code(), "invalid_request");
        assert!(
            !candle_cuda(DRIVER_OOM)
                .classify_out_of_memory()
                .kind()
                .is_request_problem()
        );
        assert_eq!(EngineError::Cancelled.kind(), FailureKind::Cancelled);
        assert_eq!(candle_cuda("boom").kind(), FailureKind::Failed);
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn the_real_cudarc_errors_are_recognised() {
        use candle_core::cuda_backend::cudarc::cublas::result::CublasError;
        use candle_core::cuda_backend::cudarc::cublas::sys::cublasStatus_t;
        use candle_core::cuda_backend::cudarc::driver::result::DriverError;
        use candle_core::cuda_backend::cudarc::driver::sys::CUresult;
        let driver =
            candle_core::Error::Cuda(Box::new(DriverError(CUresult::CUDA_ERROR_OUT_OF_MEMORY)));
        let cublas = candle_core::Error::Cuda(Box::new(CublasError(
            cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED,
        )));
        for error in [driver, cublas] {
            let classified = EngineError::Candle(error).classify_out_of_memory();
            assert_eq!(
                classified.kind(),
                FailureKind::OutOfMemory,
                "{classified:?}"
            );
        }
    }
}
