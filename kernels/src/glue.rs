//! The elementwise glue of the transformer block, fused on CUDA (`cuda/glue.cu`).
//!
//! Each function's CPU branch is the reference: the candle ops the model ran before the
//! kernels existed, in the same order, so CPU results are unchanged. The CUDA kernels compute
//! the same formulas in one pass (float32 arithmetic, one rounding to the output type).

use candle_core::{D, DType, Tensor};

use crate::{KernelError, Kernels};

fn bad(kernel: &'static str, problem: String) -> KernelError {
    KernelError::BadInput { kernel, problem }
}

/// adaLN parameters: `[entries, C]` float32 tables, one entry per `rows_per_entry` rows of x
/// (the sequence length when a sample's tokens share a timestep, 1 for per-token timesteps).
#[derive(Clone, Copy, Debug)]
pub struct Modulation<'a> {
    pub shift: &'a Tensor,
    pub scale: &'a Tensor,
    pub rows_per_entry: usize,
}

/// Views `table` `[entries, C]` so it broadcasts against `x` viewed as `[entries, rows, C]`.
fn per_entry(table: &Tensor, rows_per_entry: usize, x_rows: usize) -> Result<Tensor, KernelError> {
    let (entries, cols) = table.dims2()?;
    if entries * rows_per_entry != x_rows {
        return Err(bad(
            "modulation",
            format!("{entries} entries × {rows_per_entry} rows do not cover {x_rows} rows"),
        ));
    }
    Ok(table.reshape((entries, 1, cols))?)
}

/// `(LayerNorm(x)·w + b)·(1 + scale) + shift` over the last dim of float32 `x`, returned as
/// `out_dtype` (the dtype of the linear layer that consumes it).
pub fn layer_norm_modulate(
    kernels: &Kernels,
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    modulation: Option<Modulation<'_>>,
    eps: f32,
    out_dtype: DType,
) -> Result<Tensor, KernelError> {
    let cols = x.dim(D::Minus1)?;
    let rows = x.elem_count() / cols.max(1);
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() && x.dtype() == DType::F32 {
        return crate::gpu::glue::layer_norm_modulate(
            kernels, x, affine, modulation, eps, out_dtype,
        );
    }
    let _ = kernels;
    let x32 = x.to_dtype(DType::F32)?.contiguous()?;
    let (weight, bias) = match affine {
        Some((w, b)) => (w.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?),
        None => (
            Tensor::ones(cols, DType::F32, x.device())?,
            Tensor::zeros(cols, DType::F32, x.device())?,
        ),
    };
    let normed = candle_nn::ops::layer_norm(&x32, &weight, &bias, eps)?;
    let out = match modulation {
        None => normed,
        Some(m) => {
            let shape = normed.shape().clone();
            let entries = rows / m.rows_per_entry.max(1);
            let grouped = normed.reshape((entries, m.rows_per_entry, cols))?;
            let scale = (per_entry(m.scale, m.rows_per_entry, rows)? + 1.0)?;
            let shift = per_entry(m.shift, m.rows_per_entry, rows)?;
            grouped
                .broadcast_mul(&scale)?
                .broadcast_add(&shift)?
                .reshape(shape)?
        }
    };
    Ok(out.to_dtype(out_dtype)?)
}

/// RMSNorm over the last dim with a float32 `weight` (Wan's q/k norm across heads). On the
/// CPU the whole computation is float32; the CUDA kernel normalises in float32, rounds to x's
/// type, then multiplies by the weight, as the official code does under autocast.
pub fn rms_norm(
    kernels: &Kernels,
    x: &Tensor,
    weight: &Tensor,
    eps: f32,
) -> Result<Tensor, KernelError> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        return crate::gpu::glue::rms_norm(kernels, x, weight, eps);
    }
    let _ = kernels;
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    Ok(candle_nn::ops::rms_norm(
        &x,
        &weight.to_dtype(DType::F32)?,
        eps,
    )?)
}

/// `x + y·gate` with float32 `x` (the residual stream), any-dtype `y`, and an optional
/// per-entry float32 `gate` `[entries, C]`.
pub fn gated_residual(
    kernels: &Kernels,
    x: &Tensor,
    y: &Tensor,
    gate: Option<(&Tensor, usize)>,
) -> Result<Tensor, KernelError> {
    if x.dims() != y.dims() || x.dtype() != DType::F32 {
        return Err(bad(
            "gated_residual",
            format!(
                "x {:?} {:?} and y {:?} must match, x float32",
                x.dims(),
                x.dtype(),
                y.dims()
            ),
        ));
    }
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        return crate::gpu::glue::gated_residual(kernels, x, y, gate);
    }
    let _ = kernels;
    let y = y.to_dtype(DType::F32)?;
    let added = match gate {
        None => y,
        Some((gate, rows_per_entry)) => {
            let cols = x.dim(D::Minus1)?;
            let rows = x.elem_count() / cols.max(1);
            let entries = rows / rows_per_entry.max(1);
            y.reshape((entries, rows_per_entry, cols))?
                .broadcast_mul(&per_entry(gate, rows_per_entry, rows)?)?
                .reshape(x.shape())?
        }
    };
    Ok((x + added)?)
}

/// Rotates `x` `[B, S, H, D]` by the per-token angles whose cosines and sines are `cos`, `sin`
/// `[S, D/2]` float32, treating each (even, odd) pair as a complex number. The CPU reference
/// returns float32; the CUDA kernel returns x's dtype (the official code casts back).
pub fn rope(
    kernels: &Kernels,
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
) -> Result<Tensor, KernelError> {
    let (b, s, h, d) = x.dims4()?;
    if cos.dims() != [s, d / 2] || sin.dims() != [s, d / 2] || d % 2 != 0 {
        return Err(bad(
            "rope",
            format!(
                "tables {:?} / {:?} do not fit x {:?}",
                cos.dims(),
                sin.dims(),
                x.dims()
            ),
        ));
    }
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        return crate::gpu::glue::rope(kernels, x, cos, sin);
    }
    let _ = kernels;
    let x = x.to_dtype(DType::F32)?.reshape((b, s, h, d / 2, 2))?;
    let re = x.narrow(D::Minus1, 0, 1)?;
    let im = x.narrow(D::Minus1, 1, 1)?;
    let cos = cos.reshape((1, s, 1, d / 2, 1))?;
    let sin = sin.reshape((1, s, 1, d / 2, 1))?;
    let out_re = (re.broadcast_mul(&cos)? - im.broadcast_mul(&sin)?)?;
    let out_im = (re.broadcast_mul(&sin)? + im.broadcast_mul(&cos)?)?;
    Ok(Tensor::cat(&[out_re, out_im], D::Minus1)?.reshape((b, s, h, d))?)
}

/// `rope(rms_norm(x))` for x `[B, S, H, D]`, the norm over each token's H·D values (Wan's q/k
/// norm, then its RoPE). The CPU branch is those two functions; the CUDA kernel is one pass,
/// bit-identical to the two CUDA kernels.
pub fn rms_norm_rope(
    kernels: &Kernels,
    x: &Tensor,
    weight: &Tensor,
    eps: f32,
    (cos, sin): (&Tensor, &Tensor),
) -> Result<Tensor, KernelError> {
    let (b, s, h, d) = x.dims4()?;
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() && cos.dims() == [s, d / 2] && sin.dims() == [s, d / 2] {
        return crate::gpu::glue::rms_norm_rope(kernels, x, weight, eps, (cos, sin));
    }
    let normed = rms_norm(kernels, &x.reshape((b, s, h * d))?, weight, eps)?;
    rope(kernels, &normed.reshape((b, s, h, d))?, cos, sin)
}

/// The residual add and the norm after it: `(x + y·gate, layer_norm_modulate(x + y·gate))`.
/// The CPU branch is [`gated_residual`] then [`layer_norm_modulate`]; on CUDA one pass reads x
/// and y once and writes both (bit-identical to the two kernels) when the norm's output is y's
/// dtype, rows are at most 6144 wide and the gate and modulation share their rows per entry.
pub fn residual_norm(
    kernels: &Kernels,
    (x, y, gate): (&Tensor, &Tensor, Option<(&Tensor, usize)>),
    affine: Option<(&Tensor, &Tensor)>,
    modulation: Option<Modulation<'_>>,
    eps: f32,
    out_dtype: DType,
) -> Result<(Tensor, Tensor), KernelError> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() && x.dtype() == DType::F32 && y.dtype() == out_dtype {
        let per_entry = match (gate.map(|g| g.1), modulation.map(|m| m.rows_per_entry)) {
            (Some(a), Some(b)) if a != b => None,
            (Some(a), _) | (None, Some(a)) => Some(a),
            (None, None) => Some(1),
        };
        if let Some(per_entry) = per_entry
            && x.dims() == y.dims()
            && x.dim(D::Minus1)? <= crate::gpu::glue::RESIDUAL_NORM_MAX_COLS
        {
            return crate::gpu::glue::residual_norm(
                kernels,
                x,
                y,
                gate.map(|g| g.0),
                affine,
                modulation,
                (per_entry, eps),
            );
        }
    }
    let x = gated_residual(kernels, x, y, gate)?;
    let h = layer_norm_modulate(kernels, &x, affine, modulation, eps, out_dtype)?;
    Ok((x, h))
}

/// The Wan VAE's channel-wise RMS norm of frames `x` `(t, c, h, w)`:
/// `x / max(‖x‖₂, 1e-12) · scale · γ` over the channels of each pixel (`F.normalize` on dim 1),
/// then SiLU when `silu`. `gamma` holds `c` values in any shape (the checkpoints store
/// `(c, 1, 1, 1)`). The CPU branch is the candle ops the VAE ran before, in x's dtype; the CUDA
/// kernel (used when `kernels` are loaded for x's device) reads x twice and writes once
/// instead of seven passes, in float32 with one rounding.
pub fn channel_rms_norm(
    kernels: &Kernels,
    x: &Tensor,
    gamma: &Tensor,
    scale: f64,
    silu: bool,
) -> Result<Tensor, KernelError> {
    let (_, c, _, _) = x.dims4()?;
    if gamma.elem_count() != c {
        return Err(bad(
            "channel_rms_norm",
            format!("{} gains for {c} channels", gamma.elem_count()),
        ));
    }
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() && kernels.gpu.is_some() {
        return crate::gpu::glue::channel_rms_norm(kernels, x, gamma, scale, silu);
    }
    let _ = kernels;
    let gamma = gamma.reshape((1, c, 1, 1))?.to_dtype(x.dtype())?;
    let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?;
    let y = (x.broadcast_div(&norm)? * scale)?.broadcast_mul(&gamma)?;
    Ok(if silu { y.silu()? } else { y })
}
