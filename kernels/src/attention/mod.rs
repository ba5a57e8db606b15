//! Scaled dot-product attention without a mask: softmax(q·kᵀ/√d)·v for q `[B, Sq, H, D]` and
//! k, v `[B, Sk, H, D]`, in the layout the transformer produces (no transposing copies on the
//! GPU).
//!
//! Backends (see [`crate::AttentionBackend`]): the exact float32 [`reference`] on the CPU (and
//! for float32 tensors anywhere); on CUDA for bf16/f16 with head dims 64 and 128, cuDNN's fused
//! flash attention when the library loads, else our own kernel (wgmma on Hopper, mma.sync
//! elsewhere); on request our 8-bit kernel,
//! whose CPU emulation is [`int8_reference`].

pub mod int8_reference;
pub mod reference;

use candle_core::{DType, Tensor};

use crate::{AttentionBackend, AttentionChoice, KernelError, Kernels};

pub(crate) const KERNEL: &str = "attention";

/// Key sequences shorter than this run the 16-bit attention even when the 8-bit one is asked
/// for: on the text's 512 keys the 8-bit pre-pass made it 3.4× slower than cuDNN (H200).
pub const INT8_MIN_KEYS: usize = 2048;

/// Key sequences from this length on run our pipelined kernel instead of cuDNN under
/// [`crate::AttentionChoice::Auto`] on Hopper (head dim 128): 34.3 against 38.3 ms at 32,760²
/// tokens, but 0.88 against 0.67 ms on the text's 512 keys, where its pipeline barely fills
/// (H100, run 51).
pub const PIPELINED_MIN_KEYS: usize = 2048;

pub(crate) fn bad(problem: String) -> KernelError {
    KernelError::BadInput {
        kernel: KERNEL,
        problem,
    }
}

/// The error of a CUDA-only entry point given tensors elsewhere: `what` ("the wgmma kernel
/// runs") and where q is.
fn not_on_cuda(what: &str, q: &Tensor) -> KernelError {
    bad(format!(
        "{what} on CUDA tensors, got {:?}",
        q.device().location()
    ))
}

/// Attention with the best backend `kernels` has for these tensors. The result has q's dtype
/// (float32 for the reference).
pub fn attention(
    kernels: &Kernels,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
) -> Result<Tensor, KernelError> {
    let (b, _, h, d) = q.dims4()?;
    let (bk, sk, hk, dk) = k.dims4()?;
    if (bk, hk, dk) != (b, h, d) || v.dims() != k.dims() || sk == 0 {
        return Err(bad(format!(
            "shapes disagree: q {:?}, k {:?}, v {:?}",
            q.dims(),
            k.dims(),
            v.dims()
        )));
    }
    let half = matches!(q.dtype(), DType::BF16 | DType::F16);
    let backend = match kernels.attention_backend(q.device()) {
        // The pre-pass costs more than 8 bits save on a short key sequence.
        AttentionBackend::Int8 { .. } if sk < INT8_MIN_KEYS => kernels
            .with_attention(AttentionChoice::Auto)
            .attention_backend(q.device()),
        AttentionBackend::Cudnn
            if kernels.attention_choice() == AttentionChoice::Auto
                && sk >= PIPELINED_MIN_KEYS
                && kernels.has_pipelined_flash(q.device(), d) =>
        {
            AttentionBackend::Flash
        }
        backend => backend,
    };
    match backend {
        AttentionBackend::Reference => reference::attention(q, k, v),
        _ if !half || !matches!(d, 64 | 128) => reference::attention(q, k, v),
        #[cfg(feature = "cuda")]
        backend => crate::gpu::attention::fused(kernels, backend, q, k, v),
        #[cfg(not(feature = "cuda"))]
        _ => reference::attention(q, k, v),
    }
}

/// Which main kernel runs after the pre-pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int8Kernel {
    /// `mma.sync` (every GPU), with `block_rows` (64 or 128) query rows per block.
    MmaSync { fp8_pv: bool, block_rows: usize },
    /// `wgmma` with FP8 P·V fed by TMA loads a producer warpgroup issues into a ring of
    /// stages, 128-key tiles (compute capability 9.0, head dim 128); with `ping_pong` its two
    /// consumer warpgroups take turns on the tensor cores.
    Pipelined { ping_pong: bool },
}

impl Int8Kernel {
    /// Keys a step of its online softmax covers: what [`int8_reference::int8_attention`]
    /// must be told to compute the same thing.
    #[must_use]
    pub fn softmax_keys(self) -> usize {
        match self {
            Self::Pipelined { .. } => 128,
            Self::MmaSync { .. } => 64,
        }
    }
}

/// The 8-bit path's quantizing pre-pass alone (its output dropped), for the benchmark to
/// time what comes before `kernel`'s main kernel. bf16/f16, CUDA only.
pub fn int8_prepass(
    kernels: &Kernels,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    kernel: Int8Kernel,
) -> Result<(), KernelError> {
    #[cfg(feature = "cuda")]
    if q.device().is_cuda() {
        return crate::gpu::sage::prepass(crate::gpu::loaded(kernels)?, q, k, v, kernel);
    }
    let _ = (kernels, k, v, kernel);
    Err(not_on_cuda("the 8-bit kernels run", q))
}

/// The 8-bit main kernel [`attention`] runs for these q on this GPU, for the benchmark's
/// comparison with [`int8_reference::int8_attention`]. CUDA only.
pub fn int8_chosen(kernels: &Kernels, q: &Tensor, fp8_pv: bool) -> Result<Int8Kernel, KernelError> {
    #[cfg(feature = "cuda")]
    if q.device().is_cuda() {
        let gpu = crate::gpu::loaded(kernels)?;
        return Ok(crate::gpu::attention::int8_kernel(
            gpu,
            fp8_pv,
            q.dim(3)?,
            crate::gpu::attention::FLASH_BLOCK_ROWS,
        ));
    }
    let _ = (kernels, fp8_pv);
    Err(not_on_cuda("the 8-bit kernels run", q))
}

/// The 8-bit path with an explicit main kernel, for the benchmark; [`attention`] picks one for
/// [`AttentionBackend::Int8`]. bf16/f16, CUDA only.
pub fn int8_explicit(
    kernels: &Kernels,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    kernel: Int8Kernel,
) -> Result<Tensor, KernelError> {
    #[cfg(feature = "cuda")]
    if q.device().is_cuda() {
        return crate::gpu::sage::attention(crate::gpu::loaded(kernels)?, q, k, v, kernel);
    }
    let _ = (kernels, k, v, kernel);
    Err(not_on_cuda("the 8-bit kernels run", q))
}

/// Our flash kernel with an explicit number of query rows per block (64 or 128), for the
/// benchmark that compares them; [`attention`] uses the default. bf16/f16, head dim 64 or 128,
/// CUDA only.
pub fn flash_with_block_rows(
    kernels: &Kernels,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    block_rows: usize,
) -> Result<Tensor, KernelError> {
    #[cfg(feature = "cuda")]
    if q.device().is_cuda() {
        return crate::gpu::attention::fused_with_rows(
            kernels,
            AttentionBackend::Flash,
            q,
            k,
            v,
            block_rows,
        );
    }
    let _ = (kernels, k, v, block_rows);
    Err(not_on_cuda("our flash kernel runs", q))
}

/// Our pipelined wgmma kernel explicitly, lockstep or ping-pong, for the benchmark. bf16/f16,
/// head dim 128, compute capability 9.0 only.
pub fn flash_pipelined(
    kernels: &Kernels,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    ping_pong: bool,
) -> Result<Tensor, KernelError> {
    #[cfg(feature = "cuda")]
    if q.device().is_cuda() {
        return crate::gpu::attention::pipelined(kernels, q, k, v, ping_pong);
    }
    let _ = (kernels, k, v, ping_pong);
    Err(not_on_cuda("the pipelined kernel runs", q))
}

/// Our plain wgmma kernel explicitly (what [`attention`] runs for our kernel on Hopper below
/// [`PIPELINED_MIN_KEYS`] keys, with 2 blocks an SM), for the benchmark. bf16/f16, head dim
/// 128, compute capability 9.0 only.
pub fn flash_wgmma(
    kernels: &Kernels,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    blocks_per_sm: u32,
) -> Result<Tensor, KernelError> {
    #[cfg(feature = "cuda")]
    if q.device().is_cuda() {
        return crate::gpu::attention::wgmma(kernels, q, k, v, blocks_per_sm);
    }
    let _ = (kernels, k, v, blocks_per_sm);
    Err(not_on_cuda("the wgmma kernel runs", q))
}
