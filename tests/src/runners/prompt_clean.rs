//! `prompt_clean`: the official pipeline's prompt cleaning on its own.
//!
//! Config key `texts`: a JSON list of strings, relative to the case. Outputs `codepoints`
//! (every cleaned string's Unicode scalar values, concatenated, int64) and `lengths` (each
//! cleaned string's length in code points).

use anyhow::Context as _;
use candle_core::{Device, Tensor};
use stillmotion_engine::umt5::clean_prompt;

use super::Outputs;
use crate::golden::Case;

#[derive(serde::Deserialize)]
struct Keys {
    texts: String,
}

pub fn run(case: &Case, device: &Device) -> anyhow::Result<Outputs> {
    let keys: Keys = case.config()?;
    let path = case.file(&keys.texts);
    let texts: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("parsing {}", path.display()))?;
    let cleaned: Vec<String> = texts.iter().map(|t| clean_prompt(t)).collect();
    let codepoints: Vec<i64> = cleaned
        .iter()
        .flat_map(|t| t.chars().map(|c| i64::from(u32::from(c))))
        .collect();
    let lengths: Vec<i64> = cleaned.iter().map(|t| t.chars().count() as i64).collect();
    Ok(Outputs::from([
        ("codepoints".to_owned(), Tensor::new(codepoints, device)?),
        ("lengths".to_owned(), Tensor::new(lengths, device)?),
    ]))
}
