//! Block swapping: the transformer blocks that do not fit the memory budget live in host
//! memory (page-locked on CUDA) and stream through two device slots, the next block's weights
//! copied while the current one computes (see `stillmotion_kernels::weight_stream`).
//!
//! The blocks are identical in shapes and dtypes, so each streamed block is kept as a [`Block`]
//! whose tensors *are* its slot's device tensors (block `i` reads slot `i % 2`) with its own
//! per-layer values (float8 scales), plus its host copy. A forward pass queues the first two
//! uploads, runs the resident blocks (their compute hides those copies), then each streamed
//! block in turn: wait for its slot, compute, free the slot, queue the upload two blocks on.

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use stillmotion_kernels::Kernels;
use stillmotion_kernels::weight_stream::{HostGroup, WeightStream};

use super::block::{Block, Residual};
use super::config::Config;
use crate::EngineError;

/// Device slots: one block computing while the next one's weights arrive.
const SLOTS: usize = 2;

pub(super) struct StreamedBlocks {
    /// First, so it drops first: dropping it waits for copies still reading the host groups.
    stream: WeightStream,
    /// The blocks after the resident ones, in order, each with its host copy.
    blocks: Vec<(Block, HostGroup)>,
}

impl std::fmt::Debug for StreamedBlocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StreamedBlocks({} blocks, {:?})",
            self.blocks.len(),
            self.stream
        )
    }
}

impl StreamedBlocks {
    /// Blocks `first..cfg.num_layers`, read through `vb` into host memory one at a time and
    /// staged for streaming to `device`.
    pub(super) fn load(
        cfg: &Config,
        vb: &VarBuilder<'_>,
        first: usize,
        kernels: &Kernels,
        device: &Device,
    ) -> Result<Self, EngineError> {
        let host = vb.clone().set_device(Device::Cpu);
        let host_block = |i: usize| Block::new(cfg, &host.pp("blocks").pp(i));
        let template = host_block(first)?;
        let slots = SLOTS.min(cfg.num_layers - first);
        let stream = WeightStream::new(kernels, device, &owned(&template)?, slots)?;
        let mut blocks = Vec::with_capacity(cfg.num_layers - first);
        for (n, i) in (first..cfg.num_layers).enumerate() {
            let block = if n == 0 {
                template.clone()
            } else {
                host_block(i)?
            };
            let staged = stream.stage(&owned(&block)?).map_err(|e| EngineError::BadModelInput {
                problem: format!(
                    "block swapping needs every transformer block stored alike, but block {i} differs from block {first} (a LoRA that changes only some blocks?): {e}; use a larger VRAM budget, or a LoRA on all blocks"
                ),
            })?;
            let on_slot = block.with_tensors(stream.slot(n % slots)?)?;
            blocks.push((on_slot, staged));
        }
        tracing::info!(
            streamed = blocks.len(),
            host_bytes = blocks.iter().map(|(_, h)| h.bytes()).sum::<usize>(),
            slot_bytes = stream.slot_bytes(),
            "transformer blocks staged for block swapping"
        );
        Ok(Self { stream, blocks })
    }

    /// How many blocks stream.
    pub(super) fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Bytes of block weights held in host memory.
    pub(super) fn host_bytes(&self) -> usize {
        self.blocks.iter().map(|(_, h)| h.bytes()).sum()
    }

    /// Runs `resident` then the streamed blocks over `x`, `run` applying one block.
    pub(super) fn forward(
        &self,
        resident: &[Block],
        x: Residual,
        run: impl Fn(&Block, Residual) -> Result<Residual, EngineError>,
    ) -> Result<Residual, EngineError> {
        let slots = self.stream.slot_count();
        for (slot, (_, host)) in self.blocks.iter().take(slots).enumerate() {
            self.stream.upload(slot, host)?;
        }
        let mut x = x;
        for block in resident {
            x = run(block, x)?;
        }
        for (i, (block, _)) in self.blocks.iter().enumerate() {
            let slot = i % slots;
            self.stream.acquire(slot)?;
            let out = run(block, x);
            // Released even when the block failed: its queued kernels may still read the slot,
            // and the next upload must wait for them.
            self.stream.release(slot)?;
            x = out?;
            if let Some((_, next)) = self.blocks.get(i + slots) {
                self.stream.upload(slot, next)?;
            }
        }
        Ok(x)
    }
}

/// Streamed blocks with their device slots freed, between an expert's uses: the host copies
/// (pinned on CUDA) stay, so bringing the expert back allocates two slots and copies nothing
/// from disk. Each block keeps its per-layer values (float8 scales), bound to placeholder
/// tensors of the slots' shapes that hold no memory.
pub(super) struct ParkedBlocks {
    slots: usize,
    blocks: Vec<(Block, HostGroup)>,
}

impl std::fmt::Debug for ParkedBlocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ParkedBlocks({} blocks)", self.blocks.len())
    }
}

/// A tensor of `like`'s shape and dtype that holds one value (a broadcast zero): a block's
/// stand-in weight while it is parked.
fn placeholder(like: &Tensor) -> Result<Tensor, EngineError> {
    Ok(Tensor::zeros((), like.dtype(), &Device::Cpu)?.broadcast_as(like.shape())?)
}

impl StreamedBlocks {
    /// Frees the device slots, keeping the host copies.
    pub(super) fn park(self) -> Result<ParkedBlocks, EngineError> {
        let slots = self.stream.slot_count();
        let placeholders = self
            .stream
            .slot(0)?
            .iter()
            .map(placeholder)
            .collect::<Result<Vec<_>, _>>()?;
        let Self { stream, blocks } = self;
        // Dropping the stream waits for copies still queued into its slots.
        drop(stream);
        let blocks = blocks
            .into_iter()
            .map(|(block, host)| Ok((block.with_tensors(&placeholders)?, host)))
            .collect::<Result<Vec<_>, EngineError>>()?;
        Ok(ParkedBlocks { slots, blocks })
    }
}

impl ParkedBlocks {
    /// New device slots on `device`, the blocks bound to them again, streaming from the same
    /// host copies.
    pub(super) fn restore(
        self,
        kernels: &Kernels,
        device: &Device,
    ) -> Result<StreamedBlocks, EngineError> {
        let Some((first, _)) = self.blocks.first() else {
            return Err(EngineError::BadModelInput {
                problem: "a parked model has no streamed blocks to restore".to_owned(),
            });
        };
        let stream = WeightStream::new(kernels, device, &owned(first)?, self.slots)?;
        let blocks = self
            .blocks
            .into_iter()
            .enumerate()
            .map(|(n, (block, host))| Ok((block.with_tensors(stream.slot(n % self.slots)?)?, host)))
            .collect::<Result<Vec<_>, EngineError>>()?;
        Ok(StreamedBlocks { stream, blocks })
    }

    /// Bytes of block weights held in host memory.
    pub(super) fn host_bytes(&self) -> usize {
        self.blocks.iter().map(|(_, h)| h.bytes()).sum()
    }
}

fn owned(block: &Block) -> Result<Vec<Tensor>, EngineError> {
    Ok(block.tensors()?.into_iter().cloned().collect())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::DType;

    use super::*;
    use crate::wan::WanModel;

    fn tiny() -> Config {
        Config {
            model_type: crate::wan::ModelType::I2v,
            in_dim: 6,
            out_dim: 4,
            dim: 16,
            ffn_dim: 24,
            freq_dim: 8,
            text_dim: 12,
            text_len: 5,
            num_heads: 2,
            num_layers: 5,
            ..Config::t2v_a14b()
        }
    }

    /// Weights named and shaped by the model itself, every block's linear layers float8 with
    /// a scale of their own (what a ComfyUI fp8_scaled file holds).
    fn fp8_weights(cfg: &Config) -> HashMap<String, Tensor> {
        crate::wan::test_support::fp8_scaled_weights(cfg, |shape, i| {
            let values: Vec<f32> = (0..shape.elem_count())
                .map(|j| (((j * 37 + i * 101) % 97) as f32 / 97.0 - 0.5) * 0.8)
                .collect();
            Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
        })
    }

    fn ramp(shape: &[usize], phase: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37 + phase).sin()).collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn streamed_blocks_compute_exactly_what_resident_ones_do() {
        let cfg = tiny();
        let dev = Device::Cpu;
        let vb = VarBuilder::from_tensors(fp8_weights(&cfg), DType::F32, &dev);
        let resident = WanModel::new(&cfg, &vb).unwrap();
        assert_eq!(resident.streamed_blocks(), (0, 0));
        let (x, y) = (ramp(&[1, 4, 2, 2, 4], 0.0), ramp(&[1, 2, 2, 2, 4], 1.0));
        let context = ramp(&[1, 3, 12], 2.0);
        let t = Tensor::new(&[700_i64], &dev).unwrap();
        let expected = resident.forward(&x, Some(&y), &t, &context).unwrap();
        // 5 and 3 streamed blocks reuse both slots; a float8 scale left from the block that
        // used a slot before would change the output.
        for keep in [0, 2, 4] {
            let streamed = WanModel::new_streamed(&cfg, &vb, Some(keep)).unwrap();
            assert_eq!(streamed.streamed_blocks().0, 5 - keep);
            assert!(streamed.streamed_blocks().1 > 0);
            // Parked (slots freed) and restored in between: the same numbers again.
            let parked = streamed.clone().park().err();
            assert!(
                parked.is_some(),
                "a model shared with a copy keeps its blocks"
            );
            let streamed = streamed.park().unwrap().restore().unwrap();
            for _ in 0..2 {
                let out = streamed.forward(&x, Some(&y), &t, &context).unwrap();
                let diff = (&out - &expected)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap();
                assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{keep} resident");
            }
        }
    }

    #[test]
    fn blocks_that_differ_in_layout_cannot_stream() {
        let cfg = tiny();
        let mut weights = fp8_weights(&cfg);
        // One block's layer stored plain while the others are float8.
        weights.remove("blocks.3.ffn.0.scale_weight");
        let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
        let error = WanModel::new_streamed(&cfg, &vb, Some(1))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("block 3") && error.contains("F8E4M3") && error.contains("F32"),
            "{error}"
        );
    }
}
