//! The typed error of this crate.

/// What can go wrong in a kernel wrapper.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// An input tensor has the wrong dtype, shape or layout for this kernel.
    #[error("{kernel}: {problem}")]
    BadInput {
        kernel: &'static str,
        problem: String,
    },

    /// The operation needs the `cuda` feature, which this build does not have.
    #[error("{kernel} on a CUDA device needs a build with `--features cuda`")]
    CudaNotBuilt { kernel: &'static str },

    /// An error from candle while running a kernel or its reference.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// The kernel has no implementation for this device yet.
    #[error(
        "{kernel} has no kernel for {device} yet (CUDA kernels: issue 12); run this stage on the CPU"
    )]
    NoDeviceKernel {
        kernel: &'static str,
        device: String,
    },

    /// A CUDA call failed (driver, cuBLASLt, cuDNN or one of our kernels).
    #[error("CUDA: {problem}")]
    Cuda { problem: String },
}
