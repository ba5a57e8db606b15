//! Checkpoint key layouts. The model's names are the original Wan / ComfyUI ones
//! (`blocks.N.self_attn.q.weight`); files with the `model.diffusion_model.` or `model.` prefix
//! and diffusers-layout files are mapped onto them through [`RENAMES`], the one table of
//! differences (mirrors diffusers' `convert_wan_transformer_to_diffusers`).

use std::collections::HashMap;
use std::hash::BuildHasher;

use candle_core::Tensor;

use crate::EngineError;

/// Prefixes that wrap the original keys in ComfyUI and some repacks, longest first.
const PREFIXES: [&str; 3] = ["model.diffusion_model.", "diffusion_model.", "model."];

/// (original, diffusers) module paths. `N.` stands for a block index after `blocks.`.
/// Note diffusers' `norm2` is the original `norm3` (the cross-attention norm) and vice versa.
pub const RENAMES: &[(&str, &str)] = &[
    (
        "time_embedding.0",
        "condition_embedder.time_embedder.linear_1",
    ),
    (
        "time_embedding.2",
        "condition_embedder.time_embedder.linear_2",
    ),
    ("time_projection.1", "condition_embedder.time_proj"),
    (
        "text_embedding.0",
        "condition_embedder.text_embedder.linear_1",
    ),
    (
        "text_embedding.2",
        "condition_embedder.text_embedder.linear_2",
    ),
    ("head.head", "proj_out"),
    ("head.modulation", "scale_shift_table"),
    ("N.self_attn.q", "N.attn1.to_q"),
    ("N.self_attn.k", "N.attn1.to_k"),
    ("N.self_attn.v", "N.attn1.to_v"),
    ("N.self_attn.o", "N.attn1.to_out.0"),
    ("N.self_attn.norm_q", "N.attn1.norm_q"),
    ("N.self_attn.norm_k", "N.attn1.norm_k"),
    ("N.cross_attn.q", "N.attn2.to_q"),
    ("N.cross_attn.k", "N.attn2.to_k"),
    ("N.cross_attn.v", "N.attn2.to_v"),
    ("N.cross_attn.o", "N.attn2.to_out.0"),
    ("N.cross_attn.norm_q", "N.attn2.norm_q"),
    ("N.cross_attn.norm_k", "N.attn2.norm_k"),
    ("N.ffn.0", "N.ffn.net.0.proj"),
    ("N.ffn.2", "N.ffn.net.2"),
    ("N.norm3", "N.norm2"),
    ("N.norm2", "N.norm3"),
    ("N.modulation", "N.scale_shift_table"),
];

/// Which side of [`RENAMES`] a key is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Original,
    Diffusers,
}

/// Splits `blocks.N.rest` into (`blocks.N.`, `N.rest`-style pattern key) for table lookup.
fn split_block(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix("blocks.")?;
    let dot = rest.find('.')?;
    rest[..dot].parse::<usize>().ok()?;
    Some((&key[..="blocks.".len() + dot], &rest[dot + 1..]))
}

/// Renames one key from `from` to the other layout; keys outside the table pass unchanged.
/// The longest matching module path wins, and only whole dotted segments match.
pub fn rename(key: &str, from: Layout) -> String {
    let (block_prefix, body) = split_block(key).map_or(("", key), |(p, b)| (p, b));
    let in_block = !block_prefix.is_empty();
    let mut best: Option<(&str, &str)> = None;
    for &(original, diffusers) in RENAMES {
        let (src, dst) = match from {
            Layout::Original => (original, diffusers),
            Layout::Diffusers => (diffusers, original),
        };
        let (src, dst) = match (src.strip_prefix("N."), dst.strip_prefix("N.")) {
            (Some(s), Some(d)) if in_block => (s, d),
            (None, None) if !in_block => (src, dst),
            _ => continue,
        };
        let matches = body == src || body.strip_prefix(src).is_some_and(|r| r.starts_with('.'));
        if matches && best.is_none_or(|(b, _)| src.len() > b.len()) {
            best = Some((src, dst));
        }
    }
    match best {
        Some((src, dst)) => format!("{block_prefix}{dst}{}", &body[src.len()..]),
        None => key.to_owned(),
    }
}

/// Strips the ComfyUI / repack prefix of a key, if any.
pub fn strip_prefix(key: &str) -> &str {
    PREFIXES
        .iter()
        .find_map(|p| key.strip_prefix(p))
        .unwrap_or(key)
}

/// Tells the layout of a whole state dict from its key names.
pub fn detect_layout<'a>(keys: impl IntoIterator<Item = &'a str>) -> Layout {
    let diffusers_only = [
        "condition_embedder.",
        "proj_out.",
        "scale_shift_table",
        ".attn1.",
    ];
    for key in keys {
        if diffusers_only.iter().any(|m| key.contains(m)) {
            return Layout::Diffusers;
        }
    }
    Layout::Original
}

/// Maps every key of a checkpoint (any supported layout, with or without prefix) to its name
/// in the original layout: returns original name → file key.
pub fn original_names<'a>(
    keys: impl IntoIterator<Item = &'a str>,
) -> Result<HashMap<String, String>, EngineError> {
    let keys: Vec<&str> = keys.into_iter().collect();
    if let Some(key) = keys
        .iter()
        .find(|k| k.contains("img_emb.") || k.contains("k_img.") || k.contains("add_k_proj."))
    {
        return Err(EngineError::BadCheckpoint {
            problem: format!(
                "tensor {key} belongs to a CLIP image branch (Wan2.1 I2V); Stillmotion runs Wan2.2 models, which have none"
            ),
        });
    }
    let layout = detect_layout(keys.iter().map(|k| strip_prefix(k)));
    let mut out = HashMap::with_capacity(keys.len());
    for key in keys {
        let stripped = strip_prefix(key);
        let name = match layout {
            Layout::Original => stripped.to_owned(),
            Layout::Diffusers => rename(stripped, Layout::Diffusers),
        };
        if out.insert(name.clone(), key.to_owned()).is_some() {
            return Err(EngineError::BadCheckpoint {
                problem: format!("two tensors map to {name}: the file mixes key layouts"),
            });
        }
    }
    Ok(out)
}

/// Maps a state dict (any supported layout, with or without prefix) onto the original keys.
pub fn to_original_layout<S: BuildHasher>(
    mut tensors: HashMap<String, Tensor, S>,
) -> Result<HashMap<String, Tensor>, EngineError> {
    let names = original_names(tensors.keys().map(String::as_str))?;
    Ok(names
        .into_iter()
        .filter_map(|(name, key)| tensors.remove(&key).map(|t| (name, t)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffusers_keys_map_to_the_original_ones() {
        let pairs = [
            (
                "condition_embedder.time_embedder.linear_1.weight",
                "time_embedding.0.weight",
            ),
            (
                "condition_embedder.time_proj.bias",
                "time_projection.1.bias",
            ),
            (
                "condition_embedder.text_embedder.linear_2.weight",
                "text_embedding.2.weight",
            ),
            ("proj_out.weight", "head.head.weight"),
            ("scale_shift_table", "head.modulation"),
            ("patch_embedding.weight", "patch_embedding.weight"),
            ("blocks.0.scale_shift_table", "blocks.0.modulation"),
            (
                "blocks.7.attn1.to_out.0.weight",
                "blocks.7.self_attn.o.weight",
            ),
            (
                "blocks.12.attn2.norm_k.weight",
                "blocks.12.cross_attn.norm_k.weight",
            ),
            ("blocks.3.attn1.to_q.bias", "blocks.3.self_attn.q.bias"),
            ("blocks.3.ffn.net.0.proj.weight", "blocks.3.ffn.0.weight"),
            ("blocks.3.ffn.net.2.bias", "blocks.3.ffn.2.bias"),
            ("blocks.39.norm2.weight", "blocks.39.norm3.weight"),
            ("blocks.39.norm3.bias", "blocks.39.norm2.bias"),
        ];
        for (diffusers, original) in pairs {
            assert_eq!(
                rename(diffusers, Layout::Diffusers),
                original,
                "{diffusers}"
            );
            assert_eq!(rename(original, Layout::Original), diffusers, "{original}");
        }
        // Whole segments only: `to_q` must not match inside `to_qkv`.
        assert_eq!(
            rename("blocks.0.attn1.to_qkv.weight", Layout::Diffusers),
            "blocks.0.attn1.to_qkv.weight"
        );
    }

    #[test]
    fn every_table_entry_round_trips() {
        for &(original, diffusers) in RENAMES {
            let o = format!("{}.weight", original.replace("N.", "blocks.5."));
            let d = format!("{}.weight", diffusers.replace("N.", "blocks.5."));
            assert_eq!(rename(&o, Layout::Original), d);
            assert_eq!(rename(&d, Layout::Diffusers), o);
        }
    }

    #[test]
    fn prefixes_are_stripped_and_layouts_detected() {
        assert_eq!(
            strip_prefix("model.diffusion_model.blocks.0.ffn.0.weight"),
            "blocks.0.ffn.0.weight"
        );
        assert_eq!(strip_prefix("model.head.head.bias"), "head.head.bias");
        assert_eq!(
            detect_layout(["blocks.0.self_attn.q.weight"]),
            Layout::Original
        );
        assert_eq!(
            detect_layout(["blocks.0.attn1.to_q.weight"]),
            Layout::Diffusers
        );
        let t = Tensor::zeros(1, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let map = HashMap::from([
            (
                "model.diffusion_model.head.head.weight".to_owned(),
                t.clone(),
            ),
            ("head.head.weight".to_owned(), t),
        ]);
        assert!(
            to_original_layout(map)
                .unwrap_err()
                .to_string()
                .contains("two tensors")
        );
        let t = Tensor::zeros(1, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let wan21 = HashMap::from([("blocks.0.cross_attn.k_img.weight".to_owned(), t)]);
        assert!(
            to_original_layout(wan21)
                .unwrap_err()
                .to_string()
                .contains("Wan2.1")
        );
    }
}
