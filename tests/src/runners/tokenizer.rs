//! `tokenizer`: the umT5 prompt tokenizer from all three forms users have.
//!
//! Config keys: `text_len`; `prompts` (a JSON file `{"clean": [...], "raw": [...]}`);
//! `tokenizer_json`, `spiece_model`, `encoder_file` (a text-encoder safetensors embedding the
//! model as a `spiece_model` tensor), optionally `gguf_file` (a GGUF text encoder with the
//! tokenizer in its `tokenizer.ggml.*` metadata), all relative to the case. Outputs `clean.ids` /
//! `clean.lengths` (prompts cleaned as the official pipeline does, then tokenized) and
//! `raw.ids` / `raw.lengths` (tokenized as given): every prompt's real ids (`</s>` included)
//! concatenated, and each prompt's count. The ids are computed from each form; a form that
//! disagrees with `tokenizer.json` fails the case, naming the form and the prompt.

use anyhow::{Context as _, bail};
use candle_core::{Device, Tensor};
use stillmotion_engine::umt5::{PromptTokenizer, PromptTokens};

use super::Outputs;
use crate::golden::Case;

#[derive(serde::Deserialize)]
struct Keys {
    text_len: usize,
    prompts: String,
    tokenizer_json: String,
    spiece_model: String,
    encoder_file: String,
    /// Optional: a GGUF text encoder carrying the tokenizer as `tokenizer.ggml.*` metadata.
    gguf_file: Option<String>,
}

#[derive(serde::Deserialize)]
struct Prompts {
    clean: Vec<String>,
    raw: Vec<String>,
}

type Encoder = fn(&PromptTokenizer, &str) -> Result<PromptTokens, stillmotion_engine::EngineError>;

pub fn run(case: &Case, device: &Device) -> anyhow::Result<Outputs> {
    let keys: Keys = case.config()?;
    let path = case.file(&keys.prompts);
    let prompts: Prompts = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("parsing {}", path.display()))?;
    let mut forms = vec![
        (
            "tokenizer.json",
            PromptTokenizer::from_tokenizer_json(&case.file(&keys.tokenizer_json), keys.text_len)?,
        ),
        (
            "spiece.model",
            PromptTokenizer::open(&case.file(&keys.spiece_model), keys.text_len)?,
        ),
        (
            "spiece_model tensor",
            PromptTokenizer::from_text_encoder_file(&case.file(&keys.encoder_file), keys.text_len)?,
        ),
    ];
    if let Some(gguf) = &keys.gguf_file {
        forms.push((
            "GGUF tokenizer.ggml metadata",
            PromptTokenizer::open(&case.file(gguf), keys.text_len)?,
        ));
    }
    let runs: [(&str, &[String], Encoder); 2] = [
        ("clean", &prompts.clean, PromptTokenizer::encode),
        ("raw", &prompts.raw, PromptTokenizer::encode_raw),
    ];
    let mut outputs = Outputs::new();
    for (name, texts, encode) in runs {
        let mut reference: Option<Vec<Vec<u32>>> = None;
        for (form, tokenizer) in &forms {
            let ids = texts
                .iter()
                .map(|text| Ok(encode(tokenizer, text)?.ids))
                .collect::<anyhow::Result<Vec<_>>>()?;
            match &reference {
                None => reference = Some(ids),
                Some(first) => {
                    if let Some(i) = (0..ids.len()).find(|&i| ids[i] != first[i]) {
                        bail!(
                            "{form} gives other {name} ids than tokenizer.json for prompt {i} \
                             {:?}: {:?} vs {:?}",
                            texts[i],
                            ids[i],
                            first[i]
                        );
                    }
                }
            }
        }
        let ids = reference.unwrap_or_default();
        let lengths: Vec<i64> = ids.iter().map(|row| row.len() as i64).collect();
        let flat: Vec<i64> = ids.iter().flatten().map(|&id| i64::from(id)).collect();
        outputs.insert(format!("{name}.ids"), Tensor::new(flat, device)?);
        outputs.insert(format!("{name}.lengths"), Tensor::new(lengths, device)?);
    }
    Ok(outputs)
}
