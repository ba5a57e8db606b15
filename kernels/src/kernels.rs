//! [`Kernels`]: the kernels of one device, created once and passed to the models that use them.

use std::path::PathBuf;
#[cfg(feature = "cuda")]
use std::sync::Arc;

use candle_core::Device;

use crate::KernelError;

/// Which attention implementation a caller asks for on a CUDA device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttentionChoice {
    /// cuDNN's fused attention where the library loads, otherwise our own kernel.
    #[default]
    Auto,
    /// cuDNN only: an error where it is missing (benchmarks, parity tests).
    Cudnn,
    /// Our own flash-attention kernel.
    Flash,
    /// Our 8-bit kernel for long key sequences (self-attention): INT8 q·kᵀ with smoothed K, and
    /// FP8 P·V where that is faster than 16-bit (Ada, consumer Blackwell), 16-bit P·V elsewhere.
    /// Slightly less exact. Short key sequences (cross-attention to the text) keep `Auto`.
    Int8,
    /// The 8-bit kernel with 16-bit P·V on any GPU (for measuring the two against each other).
    Int8Pv16,
}

/// The attention implementation that actually runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionBackend {
    /// Exact float32 softmax(q·kᵀ/√d)·v in candle ops, chunked over queries (the CPU path).
    Reference,
    /// cuDNN's fused flash attention.
    Cudnn,
    /// Our own flash-attention kernel (`cuda/flash_attention.cu`).
    Flash,
    /// Our 8-bit kernel (`cuda/sage_attention.cu`), with FP8 or 16-bit P·V.
    Int8 { fp8_pv: bool },
}

/// How to set up the kernels of a device.
#[derive(Clone, Debug, Default)]
pub struct KernelOptions {
    /// libcudnn candidates, tried in order (a path, or a soname for the system loader).
    pub cudnn_libraries: Vec<PathBuf>,
    pub attention: AttentionChoice,
    /// Float8 weights multiply in FP8 (`linear::linear_fp8`) instead of dequantizing first.
    pub fp8_matmul: bool,
}

/// The kernels of one device. Cheap to clone; a CPU instance holds nothing.
#[derive(Clone)]
pub struct Kernels {
    pub(crate) attention: AttentionChoice,
    pub(crate) fp8_matmul: bool,
    #[cfg(feature = "cuda")]
    pub(crate) gpu: Option<Arc<crate::gpu::GpuKernels>>,
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kernels({})", self.describe())
    }
}

impl Kernels {
    /// The CPU kernels: every operation runs its reference.
    #[must_use]
    pub fn cpu() -> Self {
        Self {
            attention: AttentionChoice::Auto,
            fp8_matmul: false,
            #[cfg(feature = "cuda")]
            gpu: None,
        }
    }

    /// Loads the kernels for `device`. On a CUDA device this loads our fatbins and opens cuDNN
    /// and cuBLASLt; a missing cuDNN is not an error unless [`AttentionChoice::Cudnn`] is asked.
    pub fn for_device(device: &Device, options: &KernelOptions) -> Result<Self, KernelError> {
        match device {
            Device::Cpu => Ok(Self::cpu()
                .with_attention(options.attention)
                .with_fp8_matmul(options.fp8_matmul)),
            #[cfg(feature = "cuda")]
            Device::Cuda(cuda) => {
                let gpu = crate::gpu::GpuKernels::load(cuda, &options.cudnn_libraries)?;
                if let (AttentionChoice::Cudnn, Err(reason)) = (options.attention, &gpu.cudnn) {
                    return Err(KernelError::Cuda {
                        problem: format!("cuDNN attention was asked for but {reason}"),
                    });
                }
                Ok(Self {
                    attention: options.attention,
                    fp8_matmul: options.fp8_matmul,
                    gpu: Some(Arc::new(gpu)),
                })
            }
            other => Err(KernelError::CudaNotBuilt {
                kernel: if other.is_cuda() {
                    "kernels"
                } else {
                    "kernels (Metal)"
                },
            }),
        }
    }

    /// The same kernels with another attention choice.
    #[must_use]
    pub fn with_attention(&self, attention: AttentionChoice) -> Self {
        let mut kernels = self.clone();
        kernels.attention = attention;
        kernels
    }

    /// The attention implementation asked for.
    #[must_use]
    pub fn attention_choice(&self) -> AttentionChoice {
        self.attention
    }

    /// Whether our pipelined attention kernel runs here for head dim `d` (Hopper, 128).
    #[must_use]
    pub fn has_pipelined_flash(&self, device: &Device, d: usize) -> bool {
        #[cfg(feature = "cuda")]
        if let (Some(gpu), true) = (&self.gpu, device.is_cuda()) {
            return d == 128 && gpu.has_wgmma();
        }
        let _ = (device, d);
        false
    }

    /// The attention implementation used for tensors of `device` in half precision.
    #[must_use]
    pub fn attention_backend(&self, device: &Device) -> AttentionBackend {
        #[cfg(feature = "cuda")]
        if let (Some(gpu), true) = (&self.gpu, device.is_cuda()) {
            return match self.attention {
                AttentionChoice::Cudnn => AttentionBackend::Cudnn,
                AttentionChoice::Auto if gpu.cudnn.is_ok() => AttentionBackend::Cudnn,
                AttentionChoice::Flash | AttentionChoice::Auto => AttentionBackend::Flash,
                AttentionChoice::Int8 => AttentionBackend::Int8 {
                    fp8_pv: gpu.fp8_mma_is_fast() || gpu.has_wgmma(),
                },
                AttentionChoice::Int8Pv16 => AttentionBackend::Int8 { fp8_pv: false },
            };
        }
        let _ = device;
        AttentionBackend::Reference
    }

    /// One line for logs and the status bar.
    #[must_use]
    pub fn describe(&self) -> String {
        #[cfg(feature = "cuda")]
        if let Some(gpu) = &self.gpu {
            return match &gpu.cudnn {
                Ok(cudnn) => match cudnn.lock() {
                    Ok(c) => format!(
                        "CUDA kernels; cuDNN {} attention from {} (choice {:?})",
                        c.version, c.library, self.attention
                    ),
                    Err(_) => "CUDA kernels; cuDNN attention (lock poisoned)".to_owned(),
                },
                Err(reason) => {
                    format!("CUDA kernels; our own attention kernel (cuDNN unavailable: {reason})")
                }
            };
        }
        "CPU reference kernels".to_owned()
    }
}
