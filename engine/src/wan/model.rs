//! The network: patch embedding, time and text embeddings, transformer blocks, head.
//! Layer names mirror the original checkpoint keys.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use stillmotion_kernels::Kernels;
use stillmotion_kernels::glue::Modulation;

use super::block::{Block, LayerNorm, Residual};
use super::config::Config;
use super::linear::Lin;
use super::rope::Rope;
use super::streamed::{ParkedBlocks, StreamedBlocks};
use super::time::{PerToken, Timesteps};
use super::weights::to_original_layout;
use crate::EngineError;

/// The Wan2.x diffusion transformer.
#[derive(Clone, Debug)]
pub struct WanModel {
    cfg: Config,
    patch_embedding: Lin,
    text_embedding0: Lin,
    text_embedding2: Lin,
    time_embedding0: Lin,
    time_embedding2: Lin,
    time_projection: Lin,
    /// The blocks on the device: all of them, or the first ones under block swapping.
    blocks: Vec<Block>,
    /// The blocks after `blocks`, streamed from host memory (block swapping).
    streamed: Option<Arc<StreamedBlocks>>,
    head_norm: LayerNorm,
    head: Lin,
    /// `[1, 2, dim]`: shift, scale of the output norm.
    head_modulation: Tensor,
    /// The fused kernels of the weights' device (CPU references on the CPU).
    kernels: Kernels,
}

/// An expert moved off its device between uses (see [`WanModel::park`]): its resident tensors
/// in host memory, its streamed blocks' host copies without their device slots.
#[derive(Debug)]
pub struct ParkedModel {
    model: WanModel,
    streamed: Option<ParkedBlocks>,
    device: Device,
}

impl ParkedModel {
    /// The model back on its device: the resident tensors uploaded from host memory, new
    /// streaming slots for the streamed blocks. Computes exactly what it did before parking.
    pub fn restore(self) -> Result<WanModel, EngineError> {
        let mut model = self.model.moved(&self.device)?;
        model.streamed = match self.streamed {
            Some(parked) => Some(Arc::new(parked.restore(&model.kernels, &self.device)?)),
            None => None,
        };
        Ok(model)
    }

    pub fn config(&self) -> &Config {
        &self.model.cfg
    }

    /// Host bytes of weights it holds: the resident tensors moved here and the streamed
    /// blocks' copies.
    #[must_use]
    pub fn host_bytes(&self) -> usize {
        self.model.resident_bytes() + self.streamed.as_ref().map_or(0, ParkedBlocks::host_bytes)
    }
}

fn bytes_of(tensor: &Tensor) -> usize {
    tensor.elem_count() * tensor.dtype().size_in_bytes()
}

impl WanModel {
    /// Bytes of the tensors kept on the model's device, the streaming slots not counted:
    /// what parking moves to host memory.
    #[must_use]
    pub fn resident_bytes(&self) -> usize {
        let lins = [
            &self.patch_embedding,
            &self.text_embedding0,
            &self.text_embedding2,
            &self.time_embedding0,
            &self.time_embedding2,
            &self.time_projection,
            &self.head,
        ];
        // Each layer counts its own storage: GGUF blocks cannot be listed as tensors.
        let lin_bytes: usize = lins.iter().map(|lin| lin.resident_bytes()).sum();
        let block_bytes: usize = self.blocks.iter().map(Block::resident_bytes).sum();
        lin_bytes + block_bytes + bytes_of(&self.head_modulation)
    }

    /// Moves the model off its device until [`ParkedModel::restore`]: the resident tensors to
    /// host memory (on the CPU they stay where they are), the streaming slots freed. GGUF
    /// block-quantized layers cannot move (an error; the caller frees the model instead).
    pub fn park(mut self) -> Result<ParkedModel, EngineError> {
        let device = self.head_modulation.device().clone();
        let streamed = match self.streamed.take() {
            Some(shared) => Some(
                Arc::try_unwrap(shared)
                    .map_err(|_| EngineError::BadModelInput {
                        problem: "the model's streamed blocks are shared with a copy of it, so they cannot leave the device".to_owned(),
                    })?
                    .park()?,
            ),
            None => None,
        };
        let model = self.moved(&Device::Cpu)?;
        Ok(ParkedModel {
            model,
            streamed,
            device,
        })
    }

    /// The same model with its resident tensors on `device` (the streamed blocks shared).
    fn moved(&self, device: &Device) -> Result<Self, EngineError> {
        let lin = |lin: &Lin| -> Result<Lin, EngineError> {
            let tensors = lin
                .tensors()?
                .into_iter()
                .map(|t| t.to_device(device))
                .collect::<Result<Vec<_>, _>>()?;
            lin.with_tensors(&tensors)
        };
        let blocks = self
            .blocks
            .iter()
            .map(|block| {
                let tensors = block
                    .tensors()?
                    .into_iter()
                    .map(|t| t.to_device(device))
                    .collect::<Result<Vec<_>, _>>()?;
                block.with_tensors(&tensors)
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        Ok(Self {
            cfg: self.cfg.clone(),
            patch_embedding: lin(&self.patch_embedding)?,
            text_embedding0: lin(&self.text_embedding0)?,
            text_embedding2: lin(&self.text_embedding2)?,
            time_embedding0: lin(&self.time_embedding0)?,
            time_embedding2: lin(&self.time_embedding2)?,
            time_projection: lin(&self.time_projection)?,
            blocks,
            streamed: self.streamed.clone(),
            head_norm: self.head_norm.clone(),
            head: lin(&self.head)?,
            head_modulation: self.head_modulation.to_device(device)?,
            kernels: self.kernels.clone(),
        })
    }

    /// Builds the model from weights in the original key layout (see
    /// [`super::weights::to_original_layout`]).
    pub fn new(cfg: &Config, vb: &VarBuilder<'_>) -> Result<Self, EngineError> {
        Self::new_streamed(cfg, vb, None)
    }

    /// As [`WanModel::new`], keeping only the first `resident_blocks` transformer blocks on
    /// the device (all when `None`) and streaming the others from host memory at every
    /// forward pass (see [`super::streamed`]).
    pub fn new_streamed(
        cfg: &Config,
        vb: &VarBuilder<'_>,
        resident_blocks: Option<usize>,
    ) -> Result<Self, EngineError> {
        cfg.validate()?;
        let resident = resident_blocks
            .unwrap_or(cfg.num_layers)
            .min(cfg.num_layers);
        let kernels = Kernels::for_device(vb.device(), &crate::device::kernel_options())?;
        let [pt, ph, pw] = cfg.patch_size;
        let patch_in = cfg.in_dim * pt * ph * pw;
        // The Conv3d with kernel = stride = patch is a matmul over flattened patches.
        let patch_embedding = Lin::reshaped(
            (cfg.dim, cfg.in_dim, pt, ph, pw),
            cfg.dim,
            patch_in,
            &vb.pp("patch_embedding"),
        )?;
        let blocks = (0..resident)
            .map(|i| Block::new(cfg, &vb.pp("blocks").pp(i)))
            .collect::<Result<Vec<_>, _>>()?;
        let streamed = if resident < cfg.num_layers {
            let streamed = StreamedBlocks::load(cfg, vb, resident, &kernels, vb.device())?;
            Some(Arc::new(streamed))
        } else {
            None
        };
        let out_width = cfg.out_dim * pt * ph * pw;
        Ok(Self {
            cfg: cfg.clone(),
            patch_embedding,
            text_embedding0: Lin::new(cfg.text_dim, cfg.dim, &vb.pp("text_embedding.0"))?,
            text_embedding2: Lin::new(cfg.dim, cfg.dim, &vb.pp("text_embedding.2"))?,
            time_embedding0: Lin::new(cfg.freq_dim, cfg.dim, &vb.pp("time_embedding.0"))?,
            time_embedding2: Lin::new(cfg.dim, cfg.dim, &vb.pp("time_embedding.2"))?,
            time_projection: Lin::new(cfg.dim, 6 * cfg.dim, &vb.pp("time_projection.1"))?,
            blocks,
            streamed,
            head_norm: LayerNorm::plain(cfg.eps),
            head: Lin::new(cfg.dim, out_width, &vb.pp("head.head"))?,
            head_modulation: vb
                .get((1, 2, cfg.dim), "head.modulation")?
                .to_dtype(DType::F32)?,
            kernels,
        })
    }

    /// The same model running on other kernels (an attention backend chosen by the caller).
    #[must_use]
    pub fn with_kernels(mut self, kernels: Kernels) -> Self {
        self.kernels = kernels;
        self
    }

    /// The kernels this model runs on.
    pub fn kernels(&self) -> &Kernels {
        &self.kernels
    }

    /// Builds the model from a loaded state dict in any supported key layout (original,
    /// ComfyUI-prefixed or diffusers), with weights in `dtype`.
    pub fn from_state_dict<S: BuildHasher>(
        cfg: &Config,
        tensors: HashMap<String, Tensor, S>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, EngineError> {
        let tensors = to_original_layout(tensors)?;
        Self::new(cfg, &VarBuilder::from_tensors(tensors, dtype, device))
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Transformer blocks streamed from host memory at every forward pass (0 when all are
    /// resident) and the host bytes they hold.
    #[must_use]
    pub fn streamed_blocks(&self) -> (usize, usize) {
        self.streamed
            .as_ref()
            .map_or((0, 0), |s| (s.len(), s.host_bytes()))
    }

    /// Predicts the flow for latents `x` `[B, C, F, H, W]`.
    ///
    /// - `y`: conditioning concatenated to `x` along channels (I2V: mask 4 + image latent 16).
    /// - `t`: timesteps, `[B]`, or `[B, tokens]` per token (TI2V), any numeric dtype.
    /// - `context`: text embeddings `[B, L, text_dim]`, zero-padded here to `text_len` as the
    ///   official forward does.
    ///
    /// Returns `[B, out_dim, F, H, W]` float32.
    pub fn forward(
        &self,
        x: &Tensor,
        y: Option<&Tensor>,
        t: &Tensor,
        context: &Tensor,
    ) -> Result<Tensor, EngineError> {
        let cfg = &self.cfg;
        let x = match y {
            Some(y) => Tensor::cat(&[x, y], 1)?,
            None => x.clone(),
        };
        let (b, c, f, h, w) = x.dims5()?;
        let [pt, ph, pw] = cfg.patch_size;
        if c != cfg.in_dim || f % pt != 0 || h % ph != 0 || w % pw != 0 {
            return Err(EngineError::BadModelInput {
                problem: format!(
                    "latents of shape {:?} do not fit the model: it takes {} channels (x and y together) and frames, height, width divisible by {:?}",
                    x.dims(),
                    cfg.in_dim,
                    cfg.patch_size
                ),
            });
        }
        let grid = [f / pt, h / ph, w / pw];
        let tokens = grid.iter().product::<usize>();

        // Patch embedding: [B, C, F, H, W] -> [B, tokens, C·pt·ph·pw] in (c, pt, ph, pw) order.
        let patches = x
            .reshape(vec![b, c, grid[0], pt, grid[1], ph, grid[2], pw])?
            .permute(vec![0, 2, 4, 6, 1, 3, 5, 7])?
            .reshape((b, tokens, c * pt * ph * pw))?;
        let kernels = &self.kernels;
        let x = self
            .patch_embedding
            .forward(kernels, &patches)?
            .to_dtype(DType::F32)?;

        // Time embedding, once per distinct timestep.
        let steps = Timesteps::from_tensor(t, b, tokens)?;
        let sinusoid = steps.sinusoid(cfg.freq_dim, cfg.time_embedding, x.device())?;
        let e = self
            .time_embedding2
            .forward(
                kernels,
                &self.time_embedding0.forward(kernels, &sinusoid)?.silu()?,
            )?
            .to_dtype(DType::F32)?;
        let rows = steps.values.len();
        let e0 = self
            .time_projection
            .forward(kernels, &e.silu()?)?
            .to_dtype(DType::F32)?
            .reshape((rows, 6, cfg.dim))?;
        let e0 = PerToken::new(e0, &steps, b, tokens)?;

        let context = self.embed_text(context)?;
        let rope = Rope::new(grid, cfg.head_dim(), x.device())?;
        let run = |block: &Block, x: Residual| block.forward(kernels, x, &e0, &rope, &context);
        let stream = if let Some(streamed) = &self.streamed {
            streamed.forward(&self.blocks, Residual::Ready(x), run)?
        } else {
            let mut stream = Residual::Ready(x);
            for block in &self.blocks {
                stream = run(block, stream)?;
            }
            stream
        };
        let x = stream.finish(kernels)?;

        // Head: modulated norm and projection back to patches.
        let e = PerToken::new(e.reshape((rows, 1, cfg.dim))?, &steps, b, tokens)?
            .map(|e| e.broadcast_add(&self.head_modulation))?;
        let ((shift, rows_per_entry), (scale, _)) = (e.part_rows(0)?, e.part_rows(1)?);
        let normed = self.head_norm.forward(
            kernels,
            &x,
            Some(Modulation {
                shift: &shift,
                scale: &scale,
                rows_per_entry,
            }),
            self.head.dtype(),
        )?;
        let out = self.head.forward(kernels, &normed)?.to_dtype(DType::F32)?;

        // Unpatchify: [B, tokens, pt·ph·pw·c] -> [B, c, F, H, W].
        let co = cfg.out_dim;
        Ok(out
            .reshape(vec![b, grid[0], grid[1], grid[2], pt, ph, pw, co])?
            .permute(vec![0, 7, 1, 4, 2, 5, 3, 6])?
            .reshape((b, co, f, h, w))?)
    }

    /// Pads the context to `text_len` with zero rows (before the MLP, as the official code
    /// does: the padded rows become real keys) and embeds it.
    fn embed_text(&self, context: &Tensor) -> Result<Tensor, EngineError> {
        let (b, len, width) = context.dims3()?;
        let text_len = self.cfg.text_len;
        if !self.cfg.pad_context && width == self.cfg.text_dim {
            let h = self.text_embedding0.forward_gelu(&self.kernels, context)?;
            return self.text_embedding2.forward(&self.kernels, &h);
        }
        if width != self.cfg.text_dim || len > text_len {
            return Err(EngineError::BadModelInput {
                problem: format!(
                    "text context of shape {:?} does not fit: the model takes at most {text_len} rows of {}",
                    context.dims(),
                    self.cfg.text_dim
                ),
            });
        }
        let context = if len < text_len {
            let pad = Tensor::zeros(
                (b, text_len - len, width),
                context.dtype(),
                context.device(),
            )?;
            Tensor::cat(&[context, &pad], 1)?
        } else {
            context.clone()
        };
        let h = self.text_embedding0.forward_gelu(&self.kernels, &context)?;
        self.text_embedding2.forward(&self.kernels, &h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::IndexOp;

    fn tiny() -> Config {
        Config {
            model_type: super::super::ModelType::I2v,
            in_dim: 6,
            out_dim: 4,
            dim: 16,
            ffn_dim: 24,
            freq_dim: 8,
            text_dim: 12,
            text_len: 5,
            num_heads: 2,
            num_layers: 2,
            ..Config::t2v_a14b()
        }
    }

    /// A tiny model with deterministic, non-trivial weights: names and shapes come from the
    /// model itself (through a `VarMap`), values from a fixed sequence.
    fn tiny_model(cfg: &Config) -> WanModel {
        let dev = Device::Cpu;
        let varmap = candle_nn::VarMap::new();
        WanModel::new(cfg, &VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
        let vars = varmap.data().lock().unwrap();
        let mut names: Vec<&String> = vars.keys().collect();
        names.sort();
        let tensors: HashMap<String, Tensor> = names
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let shape = vars[name].as_tensor().shape().clone();
                let n = shape.elem_count();
                let values: Vec<f32> = (0..n)
                    .map(|j| (((j * 37 + i * 101) % 97) as f32 / 97.0 - 0.5) * 0.8)
                    .collect();
                (name.clone(), Tensor::from_vec(values, shape, &dev).unwrap())
            })
            .collect();
        WanModel::from_state_dict(cfg, tensors, DType::F32, &dev).unwrap()
    }

    fn ramp(shape: &[usize], phase: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37 + phase).sin()).collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn per_token_timesteps_equal_per_sample_ones_and_batches_are_independent() {
        let cfg = tiny();
        let model = tiny_model(&cfg);
        let (x, y) = (ramp(&[2, 4, 3, 2, 4], 0.0), ramp(&[2, 2, 3, 2, 4], 1.0));
        let context = ramp(&[2, 3, 12], 2.0);
        let tokens = 6; // 3 frames × 1 row × 2 columns of patches
        let t = Tensor::new(&[700_i64, 20], &Device::Cpu).unwrap();
        let out = model.forward(&x, Some(&y), &t, &context).unwrap();
        assert_eq!(out.dims(), [2, 4, 3, 2, 4]);
        let per_token = t
            .unsqueeze(1)
            .unwrap()
            .broadcast_as((2, tokens))
            .unwrap()
            .contiguous()
            .unwrap();
        let out_tokens = model.forward(&x, Some(&y), &per_token, &context).unwrap();
        assert_eq!(max_diff(&out, &out_tokens), 0.0);
        // One differing token sends the whole batch through the gather path: sample 0 (all
        // 700) must still equal the per-sample result, sample 1 (one token at 700) must not.
        let mixed = Tensor::new(
            &[
                [700.0_f32, 700.0, 700.0, 700.0, 700.0, 700.0],
                [20.0, 20.0, 20.0, 20.0, 20.0, 700.0],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let out_mixed = model.forward(&x, Some(&y), &mixed, &context).unwrap();
        assert_eq!(max_diff(&out_mixed.i(0).unwrap(), &out.i(0).unwrap()), 0.0);
        assert!(max_diff(&out_mixed.i(1).unwrap(), &out.i(1).unwrap()) > 0.0);
        for b in 0..2 {
            let one = model
                .forward(
                    &x.narrow(0, b, 1).unwrap(),
                    Some(&y.narrow(0, b, 1).unwrap()),
                    &t.narrow(0, b, 1).unwrap(),
                    &context.narrow(0, b, 1).unwrap(),
                )
                .unwrap();
            assert!(max_diff(&one, &out.narrow(0, b, 1).unwrap()) < 1e-6);
        }
    }

    #[test]
    fn context_padding_to_text_len_is_part_of_the_model() {
        let cfg = tiny();
        let model = tiny_model(&cfg);
        let (x, y) = (ramp(&[1, 4, 1, 2, 2], 0.0), ramp(&[1, 2, 1, 2, 2], 1.0));
        let t = Tensor::new(&[500_i64], &Device::Cpu).unwrap();
        let short = ramp(&[1, 3, 12], 2.0);
        let padded = Tensor::cat(
            &[
                &short,
                &Tensor::zeros((1, 2, 12), DType::F32, &Device::Cpu).unwrap(),
            ],
            1,
        )
        .unwrap();
        let a = model.forward(&x, Some(&y), &t, &short).unwrap();
        let b = model.forward(&x, Some(&y), &t, &padded).unwrap();
        assert_eq!(max_diff(&a, &b), 0.0);
    }

    #[test]
    fn inputs_that_do_not_fit_are_rejected_with_a_reason() {
        let model = tiny_model(&tiny());
        let t = Tensor::new(&[500_i64], &Device::Cpu).unwrap();
        let context = ramp(&[1, 3, 12], 2.0);
        let message = |r: Result<Tensor, EngineError>| r.unwrap_err().to_string();
        let no_y = ramp(&[1, 4, 1, 2, 2], 0.0);
        assert!(message(model.forward(&no_y, None, &t, &context)).contains("6 channels"));
        let odd = ramp(&[1, 6, 1, 3, 2], 0.0);
        assert!(message(model.forward(&odd, None, &t, &context)).contains("divisible"));
        let good = ramp(&[1, 6, 1, 2, 2], 0.0);
        let long = ramp(&[1, 6, 12], 2.0);
        assert!(message(model.forward(&good, None, &t, &long)).contains("at most 5 rows"));
        let bad_t = Tensor::new(&[1_i64, 2, 3], &Device::Cpu).unwrap();
        assert!(message(model.forward(&good, None, &bad_t, &context)).contains("timesteps"));
    }
}
