//! A LoRA applied on the fly: the linear layer keeps its base weight as stored (plain, float8
//! or GGUF blocks) and carries the low-rank factors beside it, adding
//! `Σ scale·(x·downᵀ)·upᵀ` to its output instead of having `scale·up·down` merged into the
//! weight. Merging into a quantized weight would either grow it to the compute dtype or round
//! the delta away; the factors cost `rank·(in + out)` values a layer.
//!
//! The LoRA backend (`super::lora`) offers a layer's factors as two virtual tensors beside its
//! weight, [`DOWN`] `[R, in]` and [`UP`] `[out, R]`: every LoRA on the layer stacked along the
//! rank (`R = Σ rank`), each LoRA's `strength·alpha/rank` folded into its rows of `up`. One
//! product pair then applies them all, the same sum the merge forms. A layer that reads
//! [`DOWN`] before its weight gets the weight unmerged; any other reader gets it merged.

use candle_core::{D, Tensor};
use candle_nn::VarBuilder;
use stillmotion_kernels::linear::LowRank;

use crate::EngineError;

/// The virtual tensors, relative to the layer's module path.
pub(super) const DOWN: &str = "lora_on_the_fly.down";
pub(super) const UP: &str = "lora_on_the_fly.up";

/// A layer's stacked low-rank factors, in the layer's compute dtype.
#[derive(Clone, Debug)]
pub(super) struct LoraSideCar {
    /// `[R, in]`.
    down: Tensor,
    /// `[out, R]`, scales folded in.
    up: Tensor,
}

impl LoraSideCar {
    /// The factors the backend offers for the layer at `vb`, if any; `vb.dtype()` is the
    /// layer's compute dtype.
    pub(super) fn read(
        out_dim: usize,
        in_dim: usize,
        vb: &VarBuilder<'_>,
    ) -> Result<Option<Self>, EngineError> {
        if !vb.contains_tensor(DOWN) {
            return Ok(None);
        }
        // DOWN first: reading it is what tells the backend to leave the weight unmerged.
        let down = vb.get_unchecked_dtype(DOWN, vb.dtype())?;
        let up = vb.get_unchecked_dtype(UP, vb.dtype())?;
        let rank = down.dim(0)?;
        if down.dims() != [rank, in_dim] || up.dims() != [out_dim, rank] {
            return Err(EngineError::BadCheckpoint {
                problem: format!(
                    "the LoRA factors of {} are {:?} and {:?}, which do not fit a {out_dim}×{in_dim} layer: the LoRA is for another model",
                    vb.prefix(),
                    down.dims(),
                    up.dims()
                ),
            });
        }
        Ok(Some(Self { down, up }))
    }

    /// `down`, `up`: what streams with the layer.
    pub(super) fn tensors(&self) -> [&Tensor; 2] {
        [&self.down, &self.up]
    }

    /// The same factors as other tensors of the same shapes (a streaming slot's).
    pub(super) fn with_tensors(down: Tensor, up: Tensor) -> Self {
        Self { down, up }
    }

    /// The factors as the kernels' fused layer takes them (`linear_low_rank`): on CUDA the
    /// delta goes straight into the layer's output and its GEMM accumulates onto it.
    pub(super) fn low_rank(&self) -> LowRank<'_> {
        LowRank {
            down: &self.down,
            up: &self.up,
        }
    }

    /// The delta `(x·downᵀ)·upᵀ`, `[…, out]`, in the factors' dtype, for the unfused path (the
    /// CPU's, the reference, and GGUF layers'): candle's matmuls.
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor, EngineError> {
        let in_dim = x.dim(D::Minus1)?;
        let mut dims = x.dims().to_vec();
        let rows = x.elem_count() / in_dim.max(1);
        let x = x.to_dtype(self.down.dtype())?.reshape((rows, in_dim))?;
        let low = x.matmul(&self.down.t()?)?;
        let out = low.matmul(&self.up.t()?)?;
        if let Some(last) = dims.last_mut() {
            *last = out.dim(1)?;
        }
        Ok(out.reshape(dims)?)
    }
}
