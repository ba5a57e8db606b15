//! `umt5`: the umT5 text encoder on token ids and an attention mask.
//!
//! Config keys: the encoder's (`engine::umt5::Config`, HF `UMT5Config` names) and
//! `checkpoint` (file, shard index or folder, relative to the case). Inputs `input_ids`,
//! `attention_mask` (`[batch, len]`, int64). Outputs `hidden_states` (the masked forward over
//! the whole padded batch) and `context` (each sample's real tokens encoded alone, zero-padded
//! to `text_len`: what the Wan pipeline hands the DiT). A bf16/f16 run loads the weights in that
//! dtype (the ids and mask are integers either way).

use anyhow::Context as _;
use candle_core::{DType, Device, Tensor};
use stillmotion_engine::umt5::{self, Checkpoint, Config};

use super::{Outputs, inputs, take};
use crate::golden::Case;

#[derive(serde::Deserialize)]
struct Keys {
    checkpoint: String,
}

pub fn run(case: &Case, device: &Device, dtype: DType) -> anyhow::Result<Outputs> {
    let cfg: Config = case.config()?;
    let keys: Keys = case.config()?;
    let encoder =
        Checkpoint::locate(&case.file(&keys.checkpoint))?.load_encoder(&cfg, dtype, device)?;
    let mut tensors = inputs(case, device)?;
    let ids = take(&mut tensors, "input_ids")?;
    let mask = take(&mut tensors, "attention_mask")?;
    let hidden = encoder.forward(&ids, Some(&mask))?;

    let lengths = mask.sum(1)?.to_vec1::<i64>()?;
    let mut contexts = Vec::with_capacity(lengths.len());
    for (b, &len) in lengths.iter().enumerate() {
        let len = usize::try_from(len).context("negative mask length")?;
        let real = ids.get(b)?.narrow(0, 0, len)?.unsqueeze(0)?;
        let states = encoder.forward(&real, None)?.squeeze(0)?;
        contexts.push(umt5::pad_context(&states, cfg.text_len)?);
    }
    let context = Tensor::stack(&contexts, 0)?;
    Ok(Outputs::from([
        ("hidden_states".to_owned(), hidden),
        ("context".to_owned(), context),
    ]))
}
