//! The CUDA side of the kernels: our fatbins loaded on one device, cuDNN's attention when the
//! library is present, and a cuBLASLt handle for GEMMs with fused epilogues.
//!
//! Everything here works on candle's own stream and allocator, so our launches order with
//! candle's kernels without extra synchronisation.

pub(crate) mod attention;
pub(crate) mod conv;
mod cudnn;
pub(crate) mod download;
pub(crate) mod fp8_linear;
pub(crate) mod fp8_round;
pub(crate) mod gemm_algorithms;
pub(crate) mod glue;
mod launch;
pub(crate) mod linear;
pub(crate) mod pool;
pub(crate) mod sage;
pub(crate) mod stream;
pub(crate) mod tensor_map;
pub(crate) mod warp;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use candle_core::CudaDevice;
use cudarc::cublaslt::CudaBlasLT;
use cudarc::driver::{CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;

use cudnn::Cudnn;
pub(crate) use launch::{device_ptr, empty_like_shape, grid_1d, output_tensor, scratch};

use crate::KernelError;

const FLASH_FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/flash_attention.fatbin"));
const GLUE_FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/glue.fatbin"));
const SAGE_FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sage_attention.fatbin"));
const SAGE_WGMMA_FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sage_wgmma.fatbin"));
const WGMMA_FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/wgmma_attention.fatbin"));
const WARP_FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/warp.fatbin"));
const FP8_FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fp8.fatbin"));

/// Our kernels and the vendor libraries, ready on one CUDA device.
pub(crate) struct GpuKernels {
    pub(crate) device: CudaDevice,
    flash: Arc<CudaModule>,
    sage: Arc<CudaModule>,
    sage_wgmma: Arc<CudaModule>,
    wgmma: Arc<CudaModule>,
    glue: Arc<CudaModule>,
    warp: Arc<CudaModule>,
    fp8: Arc<CudaModule>,
    pub(crate) cudnn: Result<Mutex<Cudnn>, String>,
    pub(crate) blas_lt: CudaBlasLT,
    /// The FP8 GEMM's cuBLASLt algorithm for each shape met so far.
    pub(crate) fp8_algorithms: Mutex<
        std::collections::HashMap<
            fp8_linear::AlgorithmKey,
            cudarc::cublaslt::sys::cublasLtMatmulHeuristicResult_t,
        >,
    >,
}

impl GpuKernels {
    pub(crate) fn load(
        device: &CudaDevice,
        cudnn_candidates: &[PathBuf],
    ) -> Result<Self, KernelError> {
        let stream = device.cuda_stream();
        let context = stream.context();
        let load = |bytes: &[u8]| {
            context
                .load_module(Ptx::from_binary(bytes.to_vec()))
                .map_err(|e| KernelError::Cuda {
                    problem: format!("loading our kernels: {e}"),
                })
        };
        let flash = load(FLASH_FATBIN)?;
        let sage = load(SAGE_FATBIN)?;
        let sage_wgmma = load(SAGE_WGMMA_FATBIN)?;
        let wgmma = load(WGMMA_FATBIN)?;
        let glue = load(GLUE_FATBIN)?;
        let warp = load(WARP_FATBIN)?;
        let fp8 = load(FP8_FATBIN)?;
        let blas_lt = CudaBlasLT::new(stream.clone()).map_err(|e| KernelError::Cuda {
            problem: format!("creating a cuBLASLt handle: {e}"),
        })?;
        let cudnn = Cudnn::open_first(cudnn_candidates).map(Mutex::new);
        if let Err(reason) = &cudnn {
            tracing::info!("cuDNN attention unavailable, using our own kernel: {reason}");
        }
        Ok(Self {
            device: device.clone(),
            flash,
            sage,
            sage_wgmma,
            wgmma,
            glue,
            warp,
            fp8,
            cudnn,
            blas_lt,
            fp8_algorithms: Mutex::default(),
        })
    }

    pub(crate) fn flash_function(&self, name: &str) -> Result<CudaFunction, KernelError> {
        function(&self.flash, name)
    }

    pub(crate) fn sage_function(&self, name: &str) -> Result<CudaFunction, KernelError> {
        function(&self.sage, name)
    }

    pub(crate) fn sage_wgmma_function(&self, name: &str) -> Result<CudaFunction, KernelError> {
        function(&self.sage_wgmma, name)
    }

    pub(crate) fn wgmma_function(&self, name: &str) -> Result<CudaFunction, KernelError> {
        function(&self.wgmma, name)
    }

    /// Whether the GPU has the warpgroup tensor-core instruction our wgmma kernel is built for
    /// (compute capability 9.0: Hopper).
    pub(crate) fn has_wgmma(&self) -> bool {
        self.device
            .cuda_stream()
            .context()
            .compute_capability()
            .is_ok_and(|capability| capability == (9, 0))
    }

    /// Whether the GPU has FP8 tensor cores (compute capability 8.9 and later), which
    /// cuBLASLt's FP8 GEMM needs.
    pub(crate) fn has_fp8_mma(&self) -> bool {
        self.device
            .cuda_stream()
            .context()
            .compute_capability()
            .is_ok_and(|capability| capability >= (8, 9))
    }

    /// Whether FP8 `mma.sync` products beat 16-bit ones here: on the consumer GPUs with FP8
    /// tensor cores (Ada 8.9, Blackwell 12.x), where a product accumulating in float32 runs at
    /// twice the 16-bit rate. Hopper and data-centre Blackwell run `mma.sync` FP8 slower than
    /// 16-bit (H200: 79.6 against 62.3 ms for 32,760² tokens, bench/RESULTS.md run 18): their
    /// fast FP8 is the warpgroup instruction only.
    pub(crate) fn fp8_mma_is_fast(&self) -> bool {
        self.device
            .cuda_stream()
            .context()
            .compute_capability()
            .is_ok_and(|(major, minor)| (major, minor) == (8, 9) || major == 12)
    }

    pub(crate) fn glue_function(&self, name: &str) -> Result<CudaFunction, KernelError> {
        function(&self.glue, name)
    }

    pub(crate) fn warp_function(&self, name: &str) -> Result<CudaFunction, KernelError> {
        function(&self.warp, name)
    }

    pub(crate) fn fp8_function(&self, name: &str) -> Result<CudaFunction, KernelError> {
        function(&self.fp8, name)
    }
}

/// The CUDA side of `kernels`, or the error every launcher gives for CPU kernels.
pub(crate) fn loaded(kernels: &crate::Kernels) -> Result<&GpuKernels, KernelError> {
    kernels.gpu.as_deref().ok_or_else(|| KernelError::Cuda {
        problem: "no CUDA kernels loaded for this device".to_owned(),
    })
}

/// A size as the kernels' 32-bit `int` parameter.
pub(crate) fn int(kernel: &'static str, value: usize) -> Result<i32, KernelError> {
    i32::try_from(value).map_err(|_| KernelError::BadInput {
        kernel,
        problem: format!("{value} does not fit a 32-bit int"),
    })
}

fn function(module: &Arc<CudaModule>, name: &str) -> Result<CudaFunction, KernelError> {
    module.load_function(name).map_err(|e| KernelError::Cuda {
        problem: format!("kernel {name}: {e}"),
    })
}

/// q, and k and v in q's dtype, contiguous, with their device addresses: what each attention
/// kernel reads. The tensors keep the addresses valid while the caller holds them.
pub(crate) fn attention_operands(
    q: &candle_core::Tensor,
    k: &candle_core::Tensor,
    v: &candle_core::Tensor,
) -> Result<([candle_core::Tensor; 3], [u64; 3]), KernelError> {
    let dtype = q.dtype();
    let tensors = [
        q.contiguous()?,
        k.to_dtype(dtype)?.contiguous()?,
        v.to_dtype(dtype)?.contiguous()?,
    ];
    let kernel = crate::attention::KERNEL;
    let addresses = [
        device_ptr(&tensors[0], kernel)?,
        device_ptr(&tensors[1], kernel)?,
        device_ptr(&tensors[2], kernel)?,
    ];
    Ok((tensors, addresses))
}
