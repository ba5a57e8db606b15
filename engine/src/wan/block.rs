//! One transformer block (`blocks.N`) and its layers: the modulated LayerNorms, self- and
//! cross-attention with q/k RMSNorm, and the GELU(tanh) FFN.

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use stillmotion_kernels::Kernels;
use stillmotion_kernels::glue::{self, Modulation};

use super::attention::attention;
use super::config::Config;
use super::linear::{Lin, tensor_bytes};
use super::rope::Rope;
use super::time::PerToken;
use crate::EngineError;
/// LayerNorm over the last dim in float32 (the reference casts to float32 first), fused with
/// the adaLN modulation that follows it; layers without parameters have no affine part.
#[derive(Clone, Debug)]
pub(super) struct LayerNorm {
    affine: Option<(Tensor, Tensor)>,
    eps: f32,
}

impl LayerNorm {
    pub(super) fn plain(eps: f64) -> Self {
        Self {
            affine: None,
            eps: eps as f32,
        }
    }

    fn affine(dim: usize, eps: f64, vb: &VarBuilder<'_>) -> Result<Self, EngineError> {
        Ok(Self {
            affine: Some((
                vb.get(dim, "weight")?.to_dtype(DType::F32)?,
                vb.get(dim, "bias")?.to_dtype(DType::F32)?,
            )),
            eps: eps as f32,
        })
    }

    fn tensors<'a>(&'a self, out: &mut Vec<&'a Tensor>) {
        if let Some((w, b)) = &self.affine {
            out.extend([w, b]);
        }
    }

    fn with_tensors(&self, cursor: &mut Cursor<'_>) -> Result<Self, EngineError> {
        let affine = match &self.affine {
            Some(_) => Some((cursor.next()?, cursor.next()?)),
            None => None,
        };
        Ok(Self {
            affine,
            eps: self.eps,
        })
    }

    /// The normalised (and modulated) rows, in `dtype` for the layer that consumes them.
    pub(super) fn forward(
        &self,
        kernels: &Kernels,
        x: &Tensor,
        modulation: Option<Modulation<'_>>,
        dtype: DType,
    ) -> Result<Tensor, EngineError> {
        let affine = self.affine.as_ref().map(|(w, b)| (w, b));
        Ok(glue::layer_norm_modulate(
            kernels, x, affine, modulation, self.eps, dtype,
        )?)
    }

    /// The residual stream after adding `y·gate` to `x`, and this norm of it (one pass on CUDA).
    fn forward_after_residual(
        &self,
        kernels: &Kernels,
        (x, y, gate): (&Tensor, &Tensor, Option<(&Tensor, usize)>),
        modulation: Option<Modulation<'_>>,
        dtype: DType,
    ) -> Result<(Tensor, Tensor), EngineError> {
        let affine = self.affine.as_ref().map(|(w, b)| (w, b));
        Ok(glue::residual_norm(
            kernels,
            (x, y, gate),
            affine,
            modulation,
            self.eps,
            dtype,
        )?)
    }
}

/// RMSNorm across all heads (the q/k norm), computed in float32.
#[derive(Clone, Debug)]
struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn new(dim: usize, eps: f64, vb: &VarBuilder<'_>) -> Result<Self, EngineError> {
        Ok(Self {
            weight: vb.get(dim, "weight")?.to_dtype(DType::F32)?,
            eps: eps as f32,
        })
    }

    fn forward(&self, kernels: &Kernels, x: &Tensor) -> Result<Tensor, EngineError> {
        Ok(glue::rms_norm(kernels, x, &self.weight, self.eps)?)
    }

    fn with_tensors(&self, cursor: &mut Cursor<'_>) -> Result<Self, EngineError> {
        Ok(Self {
            weight: cursor.next()?,
            eps: self.eps,
        })
    }
}

/// Self- or cross-attention with q/k RMSNorm (`self_attn`, `cross_attn`).
#[derive(Clone, Debug)]
struct Attention {
    q: Lin,
    k: Lin,
    v: Lin,
    o: Lin,
    norm_q: Option<RmsNorm>,
    norm_k: Option<RmsNorm>,
    num_heads: usize,
}

impl Attention {
    fn new(cfg: &Config, vb: &VarBuilder<'_>) -> Result<Self, EngineError> {
        let dim = cfg.dim;
        let norm = |name: &str| -> Result<Option<RmsNorm>, EngineError> {
            if cfg.qk_norm {
                Ok(Some(RmsNorm::new(dim, cfg.eps, &vb.pp(name))?))
            } else {
                Ok(None)
            }
        };
        Ok(Self {
            q: Lin::new(dim, dim, &vb.pp("q"))?,
            k: Lin::new(dim, dim, &vb.pp("k"))?,
            v: Lin::new(dim, dim, &vb.pp("v"))?,
            o: Lin::new(dim, dim, &vb.pp("o"))?,
            norm_q: norm("norm_q")?,
            norm_k: norm("norm_k")?,
            num_heads: cfg.num_heads,
        })
    }

    fn tensors<'a>(&'a self, out: &mut Vec<&'a Tensor>) -> Result<(), EngineError> {
        for lin in [&self.q, &self.k, &self.v, &self.o] {
            out.extend(lin.tensors()?);
        }
        out.extend(self.norm_q.iter().chain(&self.norm_k).map(|n| &n.weight));
        Ok(())
    }

    fn resident_bytes(&self) -> usize {
        [&self.q, &self.k, &self.v, &self.o]
            .iter()
            .map(|lin| lin.resident_bytes())
            .sum::<usize>()
            + self
                .norm_q
                .iter()
                .chain(&self.norm_k)
                .map(|n| tensor_bytes(&n.weight))
                .sum::<usize>()
    }

    fn with_tensors(&self, cursor: &mut Cursor<'_>) -> Result<Self, EngineError> {
        let (q, k, v, o) = (
            cursor.lin(&self.q)?,
            cursor.lin(&self.k)?,
            cursor.lin(&self.v)?,
            cursor.lin(&self.o)?,
        );
        let mut norm = |n: &Option<RmsNorm>| n.as_ref().map(|n| n.with_tensors(cursor)).transpose();
        let norm_q = norm(&self.norm_q)?;
        let norm_k = norm(&self.norm_k)?;
        Ok(Self {
            q,
            k,
            v,
            o,
            norm_q,
            norm_k,
            num_heads: self.num_heads,
        })
    }

    fn heads(&self, x: &Tensor) -> Result<Tensor, EngineError> {
        let (b, s, c) = x.dims3()?;
        Ok(x.reshape((b, s, self.num_heads, c / self.num_heads))?)
    }

    /// `x` `[B, L, C]` attends to `source` (`x` itself for self-attention, `None`); `rope`
    /// rotates q and k (self-attention only). `x` is taken by value so that it is freed once
    /// projected, before the attention itself: at 480p that is 335 MB less at the block's peak.
    fn forward(
        &self,
        kernels: &Kernels,
        x: Tensor,
        source: Option<&Tensor>,
        rope: Option<&Rope>,
    ) -> Result<Tensor, EngineError> {
        let (b, l, c) = x.dims3()?;
        let normed = |norm: &Option<RmsNorm>, t: Tensor| match norm {
            Some(n) => n.forward(kernels, &t),
            None => Ok(t),
        };
        // q/k norm then RoPE: one pass where both apply (self-attention with qk_norm).
        let project = |lin: &Lin, norm: &Option<RmsNorm>, input: &Tensor| match (norm, rope) {
            (Some(n), Some(rope)) => rope.apply_after_norm(
                kernels,
                &self.heads(&lin.forward(kernels, input)?)?,
                &n.weight,
                n.eps,
            ),
            (_, Some(rope)) => rope.apply(
                kernels,
                &self.heads(&normed(norm, lin.forward(kernels, input)?)?)?,
            ),
            (_, None) => self.heads(&normed(norm, lin.forward(kernels, input)?)?),
        };
        let q = project(&self.q, &self.norm_q, &x)?;
        let source = source.unwrap_or(&x);
        let k = project(&self.k, &self.norm_k, source)?;
        let v = self.heads(&self.v.forward(kernels, source)?)?;
        drop(x);
        let out = attention(kernels, &q, &k, &v)?.reshape((b, l, c))?;
        // q, k and v are dead once attended: freed before the output projection allocates.
        drop((q, k, v));
        self.o.forward(kernels, &out)
    }
}

/// Hands out a streaming slot's tensors in the order [`Block::tensors`] lists them.
struct Cursor<'a>(std::slice::Iter<'a, Tensor>);

impl Cursor<'_> {
    fn next(&mut self) -> Result<Tensor, EngineError> {
        self.0
            .next()
            .cloned()
            .ok_or_else(|| EngineError::BadModelInput {
                problem: "a streaming slot has fewer tensors than its transformer block".to_owned(),
            })
    }

    fn lin(&mut self, lin: &Lin) -> Result<Lin, EngineError> {
        let tensors = (0..lin.tensor_count())
            .map(|_| self.next())
            .collect::<Result<Vec<_>, _>>()?;
        lin.with_tensors(&tensors)
    }
}

/// One transformer block (`blocks.N`).
/// The residual stream between blocks: ready, or a block's last residual add still to do, which
/// the next block fuses with its first norm (one pass over the stream instead of two).
pub(super) enum Residual {
    Ready(Tensor),
    Pending {
        x: Tensor,
        y: Tensor,
        gate: Tensor,
        rows_per_entry: usize,
    },
}

impl Residual {
    /// The stream with any pending add done.
    pub(super) fn finish(self, kernels: &Kernels) -> Result<Tensor, EngineError> {
        match self {
            Self::Ready(x) => Ok(x),
            Self::Pending {
                x,
                y,
                gate,
                rows_per_entry,
            } => Ok(glue::gated_residual(
                kernels,
                &x,
                &y,
                Some((&gate, rows_per_entry)),
            )?),
        }
    }
}

#[derive(Clone, Debug)]
pub(super) struct Block {
    norm1: LayerNorm,
    self_attn: Attention,
    norm3: Option<LayerNorm>,
    cross_attn: Attention,
    norm2: LayerNorm,
    ffn0: Lin,
    ffn2: Lin,
    /// `[1, 6, dim]`: shift, scale, gate (self-attention), shift, scale, gate (FFN).
    modulation: Tensor,
}

impl Block {
    pub(super) fn new(cfg: &Config, vb: &VarBuilder<'_>) -> Result<Self, EngineError> {
        Ok(Self {
            norm1: LayerNorm::plain(cfg.eps),
            self_attn: Attention::new(cfg, &vb.pp("self_attn"))?,
            norm3: if cfg.cross_attn_norm {
                Some(LayerNorm::affine(cfg.dim, cfg.eps, &vb.pp("norm3"))?)
            } else {
                None
            },
            cross_attn: Attention::new(cfg, &vb.pp("cross_attn"))?,
            norm2: LayerNorm::plain(cfg.eps),
            ffn0: Lin::new(cfg.dim, cfg.ffn_dim, &vb.pp("ffn.0"))?,
            ffn2: Lin::new(cfg.ffn_dim, cfg.dim, &vb.pp("ffn.2"))?,
            modulation: vb
                .get((1, 6, cfg.dim), "modulation")?
                .to_dtype(DType::F32)?,
        })
    }

    /// Every tensor of the block in a fixed order, for streaming it from host memory.
    pub(super) fn tensors(&self) -> Result<Vec<&Tensor>, EngineError> {
        let mut out = Vec::new();
        self.norm1.tensors(&mut out);
        self.self_attn.tensors(&mut out)?;
        if let Some(norm) = &self.norm3 {
            norm.tensors(&mut out);
        }
        self.cross_attn.tensors(&mut out)?;
        self.norm2.tensors(&mut out);
        out.extend(self.ffn0.tensors()?);
        out.extend(self.ffn2.tensors()?);
        out.push(&self.modulation);
        Ok(out)
    }

    /// Bytes the block keeps on its device, GGUF layers at their stored block size (which
    /// [`Block::tensors`] cannot list: they do not stream).
    pub(super) fn resident_bytes(&self) -> usize {
        let mut norms = Vec::new();
        self.norm1.tensors(&mut norms);
        if let Some(norm) = &self.norm3 {
            norm.tensors(&mut norms);
        }
        self.norm2.tensors(&mut norms);
        norms.into_iter().map(tensor_bytes).sum::<usize>()
            + self.self_attn.resident_bytes()
            + self.cross_attn.resident_bytes()
            + self.ffn0.resident_bytes()
            + self.ffn2.resident_bytes()
            + tensor_bytes(&self.modulation)
    }

    /// The same block (its scales, norms' epsilons, head count) computing with `tensors`, in
    /// [`Block::tensors`] order, instead of its own: a streaming slot's device tensors.
    pub(super) fn with_tensors(&self, tensors: &[Tensor]) -> Result<Self, EngineError> {
        let mut cursor = Cursor(tensors.iter());
        let norm1 = self.norm1.with_tensors(&mut cursor)?;
        let self_attn = self.self_attn.with_tensors(&mut cursor)?;
        let norm3 = match &self.norm3 {
            Some(norm) => Some(norm.with_tensors(&mut cursor)?),
            None => None,
        };
        let cross_attn = self.cross_attn.with_tensors(&mut cursor)?;
        let norm2 = self.norm2.with_tensors(&mut cursor)?;
        let ffn0 = cursor.lin(&self.ffn0)?;
        let ffn2 = cursor.lin(&self.ffn2)?;
        let modulation = cursor.next()?;
        if cursor.0.next().is_some() {
            return Err(EngineError::BadModelInput {
                problem: "a streaming slot has more tensors than its transformer block".to_owned(),
            });
        }
        Ok(Self {
            norm1,
            self_attn,
            norm3,
            cross_attn,
            norm2,
            ffn0,
            ffn2,
            modulation,
        })
    }

    /// `x` `[B, L, C]` float32, `e0` the time projection rows `[rows, 6, C]`.
    pub(super) fn forward(
        &self,
        kernels: &Kernels,
        x: Residual,
        e0: &PerToken,
        rope: &Rope,
        context: &Tensor,
    ) -> Result<Residual, EngineError> {
        let e = e0.map(|t| t.broadcast_add(&self.modulation))?;
        let parts = (0..6)
            .map(|i| e.part_rows(i))
            .collect::<Result<Vec<_>, _>>()?;
        let rows_per_entry = parts[0].1;
        let modulation = |shift: usize| Modulation {
            shift: &parts[shift].0,
            scale: &parts[shift + 1].0,
            rows_per_entry,
        };
        let dtype = self.ffn0.dtype();

        // Each stage's inputs are freed as soon as they are used (the stream `x` by assignment,
        // the rest by `drop`): a shadowed binding would keep every earlier stream and activation
        // alive to the end of the block, about 2.7 GB more at the FFN at 480p.
        let (mut x, h) = match x {
            Residual::Ready(x) => {
                let h = self
                    .norm1
                    .forward(kernels, &x, Some(modulation(0)), dtype)?;
                (x, h)
            }
            Residual::Pending {
                x,
                y,
                gate,
                rows_per_entry: per,
            } => self.norm1.forward_after_residual(
                kernels,
                (&x, &y, Some((&gate, per))),
                Some(modulation(0)),
                dtype,
            )?,
        };
        let y = self.self_attn.forward(kernels, h, None, Some(rope))?;
        let gate = Some((&parts[2].0, rows_per_entry));
        let h;
        (x, h) = if let Some(norm) = &self.norm3 {
            norm.forward_after_residual(kernels, (&x, &y, gate), None, dtype)?
        } else {
            let x = glue::gated_residual(kernels, &x, &y, gate)?;
            let h = x.to_dtype(dtype)?;
            (x, h)
        };
        drop(y);
        let y = self.cross_attn.forward(kernels, h, Some(context), None)?;

        let h;
        (x, h) = self.norm2.forward_after_residual(
            kernels,
            (&x, &y, None),
            Some(modulation(3)),
            dtype,
        )?;
        drop(y);
        let hidden = self.ffn0.forward_gelu(kernels, &h)?;
        drop(h);
        let y = self.ffn2.forward(kernels, &hidden)?;
        drop(hidden);
        Ok(Residual::Pending {
            x,
            y,
            gate: parts[5].0.clone(),
            rows_per_entry,
        })
    }
}
