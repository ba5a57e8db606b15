//! Stillmotion's compute kernels.
//!
//! Every kernel here has three parts (see `CODE_STYLE.md`): a safe wrapper that checks dtype,
//! shape and contiguity up front, a pure-candle (or plain Rust) CPU reference that is both the
//! CPU path and the test oracle, and, behind the `cuda` feature, a CUDA implementation with a
//! parity test that runs on a GPU machine.
//!
//! This crate is also the only place (besides one documented loader in `engine`) allowed to use
//! `unsafe`: FFI, kernel launches and the dynamic loading of NVIDIA libraries.

#![allow(
    unsafe_code,
    reason = "FFI, kernel launches and dynamic loading of NVIDIA libraries live here"
)]

pub mod attention;
pub mod conv;
pub mod download;
mod driver;
mod error;
pub mod fp8;
pub mod fp8_stochastic;
pub mod glue;
#[cfg(feature = "cuda")]
mod gpu;
mod kernels;
pub mod linear;
pub mod memory_pool;
pub mod warp;
pub mod weight_stream;

pub use driver::{DriverProbe, probe_cuda_driver};
pub use error::KernelError;
pub use kernels::{AttentionBackend, AttentionChoice, KernelOptions, Kernels};

/// Whether this build of the kernels includes the CUDA implementations.
#[must_use]
pub const fn built_with_cuda() -> bool {
    cfg!(feature = "cuda")
}
