//! Reads umT5 encoder checkpoints in the layouts users have and names every tensor as the
//! Hugging Face checkpoint does:
//!
//! - ComfyUI's `umt5_xxl_fp16.safetensors`: one file, HF naming, plus the tokenizer as a
//!   `spiece_model` uint8 tensor (left for [`super::tokenizer`]).
//! - diffusers' `text_encoder/` folder: `model.safetensors` or shards with
//!   `model.safetensors.index.json`, HF naming, and a `config.json`.
//! - the official `models_t5_umt5-xxl-enc-bf16.pth`: a PyTorch pickle (read as data by
//!   `candle_core::pickle`, never executed) in Wan-native naming, renamed by [`WAN_RENAMES`].
//! - city96's `umt5-xxl-encoder-*.gguf`: llama.cpp's T5 naming (`enc.blk.N.attn_q.weight`),
//!   renamed by [`gguf_to_hf`]. Block-quantized projections stay quantized (raw blocks with a
//!   `<name>.ggml_type` marker, as `crate::gguf` hands them to the DiT); every other tensor is
//!   dequantized to the model dtype as it is read.
//! - ComfyUI's `umt5_xxl_fp8_e4m3fn_scaled.safetensors`: HF naming, float8 e4m3 weights with a
//!   per-tensor `scale_weight` (and a `scaled_fp8` marker). The projections keep their float8
//!   weights resident and dequantize at use (`super::linear`); other float8 tensors are
//!   dequantized here, `weight.to(float32) * scale`. Unscaled float8 is cast; e5m2 is refused.

use std::collections::{BTreeSet, HashMap};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_nn::var_builder::SimpleBackend;

use crate::gguf::GGML_TYPE_SUFFIX;

use super::{Config, Umt5Encoder};
use crate::EngineError;

/// Wan-native key (inside `blocks.{i}.`) → HF key (inside `encoder.block.{i}.`).
pub const WAN_RENAMES: &[(&str, &str)] = &[
    ("norm1.weight", "layer.0.layer_norm.weight"),
    ("attn.q.weight", "layer.0.SelfAttention.q.weight"),
    ("attn.k.weight", "layer.0.SelfAttention.k.weight"),
    ("attn.v.weight", "layer.0.SelfAttention.v.weight"),
    ("attn.o.weight", "layer.0.SelfAttention.o.weight"),
    (
        "pos_embedding.embedding.weight",
        "layer.0.SelfAttention.relative_attention_bias.weight",
    ),
    ("norm2.weight", "layer.1.layer_norm.weight"),
    ("ffn.gate.0.weight", "layer.1.DenseReluDense.wi_0.weight"),
    ("ffn.fc1.weight", "layer.1.DenseReluDense.wi_1.weight"),
    ("ffn.fc2.weight", "layer.1.DenseReluDense.wo.weight"),
];

/// Wan-native top-level keys → HF keys.
const WAN_TOP_RENAMES: &[(&str, &str)] = &[
    ("token_embedding.weight", "shared.weight"),
    ("norm.weight", "encoder.final_layer_norm.weight"),
];

/// The tensor in ComfyUI's text-encoder files that holds the SentencePiece model.
pub const SPIECE_TENSOR: &str = "spiece_model";

/// Where a checkpoint's files are: the file or folder the user named, resolved.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// What the user named (used in messages).
    pub path: PathBuf,
    /// The weight files to read.
    pub files: Vec<PathBuf>,
    /// `config.json` next to the weights, when there is one (diffusers).
    pub config_json: Option<PathBuf>,
}

impl Checkpoint {
    /// Resolves a `.safetensors` / `.pth` file, an `*.index.json`, or a diffusers folder.
    pub fn locate(path: &Path) -> Result<Self, EngineError> {
        let bad = |problem: &str| EngineError::BadTextEncoder {
            problem: problem.to_owned(),
            path: path.to_owned(),
        };
        let (index, dir) = if path.is_dir() {
            let sharded = path.join("model.safetensors.index.json");
            if sharded.is_file() {
                (Some(sharded), path.to_owned())
            } else if path.join("model.safetensors").is_file() {
                return Ok(Self {
                    path: path.to_owned(),
                    files: vec![path.join("model.safetensors")],
                    config_json: Some(path.join("config.json")).filter(|p| p.is_file()),
                });
            } else {
                return Err(bad(
                    "this folder has neither model.safetensors nor model.safetensors.index.json; \
                     choose the text encoder file or diffusers' text_encoder folder",
                ));
            }
        } else if path.to_string_lossy().ends_with(".json") {
            let dir = path.parent().map_or_else(PathBuf::new, Path::to_owned);
            (Some(path.to_owned()), dir)
        } else if path.is_file() {
            return Ok(Self {
                path: path.to_owned(),
                files: vec![path.to_owned()],
                config_json: None,
            });
        } else {
            return Err(bad("no text encoder file here; check the path"));
        };
        let index = index.unwrap_or_default();
        let text =
            std::fs::read_to_string(&index).map_err(|e| EngineError::io("reading", &index, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| EngineError::BadTextEncoder {
                problem: format!("the shard index is not valid JSON ({e})"),
                path: index.clone(),
            })?;
        let files: BTreeSet<&str> = json
            .get("weight_map")
            .and_then(serde_json::Value::as_object)
            .map(|map| map.values().filter_map(serde_json::Value::as_str).collect())
            .unwrap_or_default();
        if files.is_empty() {
            return Err(EngineError::BadTextEncoder {
                problem: "the shard index has no weight_map".to_owned(),
                path: index,
            });
        }
        Ok(Self {
            path: path.to_owned(),
            files: files.into_iter().map(|f| dir.join(f)).collect(),
            config_json: Some(dir.join("config.json")).filter(|p| p.is_file()),
        })
    }

    /// The encoder's tensors, named as in the HF checkpoint, in `dtype` on `device`.
    ///
    /// Safetensors files are read one tensor at a time (seek and read, no memory map), each
    /// converted and moved before the next is read, so host memory peaks at one tensor rather
    /// than the whole 11 GB checkpoint; pickles are read whole, then converted one by one.
    pub fn read_tensors(
        &self,
        dtype: DType,
        device: &Device,
    ) -> Result<HashMap<String, Tensor>, EngineError> {
        let mut found: Vec<(String, Source)> = Vec::new();
        for file in &self.files {
            let bad = |e: candle_core::Error| EngineError::BadTextEncoder {
                problem: format!("cannot read this checkpoint ({e})"),
                path: file.clone(),
            };
            if crate::gguf::is_gguf(file) {
                let gguf = crate::gguf::GgufFile::open(file)?;
                gguf.expect_architecture(&["t5", "t5encoder", "umt5"], "text encoder")?;
                let names: HashMap<String, String> =
                    gguf.shapes().into_keys().map(|k| (k.clone(), k)).collect();
                let keys: Vec<String> = names.keys().cloned().collect();
                let backend: Arc<dyn SimpleBackend> =
                    Arc::from(gguf.into_backend(names, crate::gguf::QuantizedMatmul::default()));
                found.extend(keys.into_iter().map(|key| {
                    (
                        gguf_to_hf(&key),
                        Source::Gguf(Arc::clone(&backend), file.clone(), key),
                    )
                }));
            } else if file.to_string_lossy().ends_with(".safetensors") {
                found.extend(
                    safetensors_entries(file)?
                        .into_iter()
                        .map(|entry| (entry.name.clone(), Source::File(file.clone(), entry))),
                );
            } else {
                let read = candle_core::pickle::read_all(file).map_err(bad)?;
                found.extend(read.into_iter().map(|(n, t)| (n, Source::Loaded(t))));
            }
        }
        refuse_e5m2(&found, &self.path)?;
        let wan_layout = found.iter().any(|(n, _)| n == "token_embedding.weight");
        let mut out = HashMap::with_capacity(found.len());
        for (name, source) in found {
            let renamed = if wan_layout {
                wan_to_hf(&name)
            } else {
                Some(name.clone())
            };
            // `scaled_fp8` only marks the format; `scale_input` serves ComfyUI's fp8 matmul,
            // not the dequantizing path it (and we) take otherwise.
            let Some(hf) = renamed.filter(|hf| {
                hf != SPIECE_TENSOR
                    && hf != "scaled_fp8"
                    && !hf.ends_with(".scale_input")
                    && !hf.starts_with("decoder.")
            }) else {
                tracing::debug!(tensor = %name, "unused by the umT5 encoder");
                continue;
            };
            // Block-quantized GGUF projections stay quantized: their raw blocks (CPU, u8)
            // and GGML type go to `super::linear`, which builds the QTensor on the device.
            if let Source::Gguf(backend, file, key) = &source
                && is_projection_weight(&hf)
            {
                let marker = format!("{key}{GGML_TYPE_SUFFIX}");
                if backend.contains_tensor(&marker) {
                    let read = |name: &str, dtype| {
                        backend
                            .get_unchecked(name, dtype, &Device::Cpu)
                            .map_err(|e| EngineError::BadTextEncoder {
                                problem: format!("cannot read tensor {key} ({e})"),
                                path: file.clone(),
                            })
                    };
                    out.insert(
                        format!("{hf}{GGML_TYPE_SUFFIX}"),
                        read(&marker, DType::U32)?,
                    );
                    out.insert(hf, read(key, DType::U8)?);
                    continue;
                }
            }
            let tensor = match source {
                Source::Loaded(tensor) => tensor,
                Source::File(file, entry) => entry.read(&file)?,
                // Dequantized one tensor at a time, straight to `dtype`.
                Source::Gguf(backend, file, key) => backend
                    .get_unchecked(&key, DType::F32, &Device::Cpu)
                    .map_err(|e| EngineError::BadTextEncoder {
                        problem: format!("cannot read tensor {key} ({e})"),
                        path: file,
                    })?,
            };
            let tensor = tensor.to_device(device)?;
            // Float8 and scales stay as stored until every scale is known (below).
            let keep = tensor.dtype() == DType::F8E4M3 || hf.ends_with(SCALED_SUFFIX);
            out.insert(
                hf,
                if keep {
                    tensor.to_dtype(if tensor.dtype() == DType::F8E4M3 {
                        DType::F8E4M3
                    } else {
                        DType::F32
                    })?
                } else {
                    tensor.to_dtype(dtype)?
                },
            );
        }
        resolve_float8(&mut out, dtype)?;
        // transformers ties the input embedding; some exports keep only this copy.
        if !out.contains_key("shared.weight")
            && let Some(tied) = out.remove("encoder.embed_tokens.weight")
        {
            out.insert("shared.weight".to_owned(), tied);
        }
        Ok(out)
    }

    /// Loads the encoder onto `device` in `dtype`.
    pub fn load_encoder(
        &self,
        cfg: &Config,
        dtype: DType,
        device: &Device,
    ) -> Result<Umt5Encoder, EngineError> {
        let tensors = self.read_tensors(dtype, device)?;
        let vb = VarBuilder::from_tensors(tensors, dtype, device);
        Umt5Encoder::new(cfg, vb).map_err(|e| EngineError::BadTextEncoder {
            problem: format!(
                "this is not a umT5 encoder checkpoint matching the configuration ({e}); \
                 use umt5_xxl_fp16.safetensors, models_t5_umt5-xxl-enc-bf16.pth or a \
                 diffusers text_encoder folder"
            ),
            path: self.path.clone(),
        })
    }
}

/// Where a tensor comes from: a place in a safetensors file, a pickle already read, or a GGUF
/// file's tensor (by its key there).
enum Source {
    File(PathBuf, Entry),
    Loaded(Tensor),
    Gguf(Arc<dyn SimpleBackend>, PathBuf, String),
}

/// llama.cpp's T5 tensor names (city96's umt5-xxl GGUF files) → HF names, by the same
/// substring replacements ComfyUI-GGUF applies.
const GGUF_T5_RENAMES: &[(&str, &str)] = &[
    ("enc.", "encoder."),
    ("dec.", "decoder."),
    (".blk.", ".block."),
    ("token_embd", "shared"),
    ("output_norm", "final_layer_norm"),
    ("attn_q", "layer.0.SelfAttention.q"),
    ("attn_k", "layer.0.SelfAttention.k"),
    ("attn_v", "layer.0.SelfAttention.v"),
    ("attn_o", "layer.0.SelfAttention.o"),
    ("attn_norm", "layer.0.layer_norm"),
    (
        "attn_rel_b",
        "layer.0.SelfAttention.relative_attention_bias",
    ),
    ("ffn_up", "layer.1.DenseReluDense.wi_1"),
    ("ffn_down", "layer.1.DenseReluDense.wo"),
    ("ffn_gate", "layer.1.DenseReluDense.wi_0"),
    ("ffn_norm", "layer.1.layer_norm"),
];

/// The HF name of a tensor in a GGUF text encoder (names already in HF form pass unchanged).
#[must_use]
pub fn gguf_to_hf(name: &str) -> String {
    if !name.starts_with("enc.") && !name.starts_with("dec.") && !name.starts_with("token_embd") {
        return name.to_owned();
    }
    GGUF_T5_RENAMES
        .iter()
        .fold(name.to_owned(), |n, (from, to)| n.replace(from, to))
}

/// Suffix of ComfyUI's per-tensor float8 scale.
const SCALED_SUFFIX: &str = ".scale_weight";

/// Refuses float8 e5m2 by name (candle cannot hold it; it has no scaled ComfyUI form).
fn refuse_e5m2(found: &[(String, Source)], path: &Path) -> Result<(), EngineError> {
    match found.iter().find(|(_, source)| match source {
        Source::File(_, entry) => entry.raw_dtype == "F8_E5M2",
        _ => false,
    }) {
        Some((name, _)) => Err(EngineError::BadTextEncoder {
            problem: format!(
                "tensor {name} is float8 e5m2, which Stillmotion does not run; use \
                 umt5_xxl_fp8_e4m3fn_scaled.safetensors or umt5_xxl_fp16.safetensors"
            ),
            path: path.to_owned(),
        }),
        None => Ok(()),
    }
}

/// Whether an HF tensor name is the weight of one of the encoder's projections (the layers
/// that keep float8 resident, `super::linear`).
fn is_projection_weight(name: &str) -> bool {
    name.ends_with(".weight")
        && (name.contains(".DenseReluDense.")
            || (name.contains(".SelfAttention.") && !name.contains("relative_attention_bias")))
}

/// ComfyUI float8 (`fp8_e4m3fn` with or without `scale_weight`): projection weights with a
/// scale stay float8 beside their float32 scale; every other float8 tensor is dequantized now
/// (`weight.to(float32) * scale`, or a plain cast without one) to `dtype`.
fn resolve_float8(out: &mut HashMap<String, Tensor>, dtype: DType) -> Result<(), EngineError> {
    let float8: Vec<String> = out
        .iter()
        .filter(|(_, t)| t.dtype() == DType::F8E4M3)
        .map(|(n, _)| n.clone())
        .collect();
    for name in float8 {
        let module = name.strip_suffix(".weight").unwrap_or(&name);
        let scale_name = format!("{module}{SCALED_SUFFIX}");
        if out.contains_key(&scale_name) && is_projection_weight(&name) {
            continue;
        }
        let Some(weight) = out.remove(&name) else {
            continue;
        };
        let mut weight = weight.to_dtype(DType::F32)?;
        if let Some(scale) = out.remove(&scale_name) {
            let values = scale
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let [value] = values[..] else {
                return Err(EngineError::BadCheckpoint {
                    problem: format!(
                        "{scale_name} holds {} values; only per-tensor float8 scales are supported",
                        values.len()
                    ),
                });
            };
            weight = weight.affine(f64::from(value), 0.0)?;
        }
        out.insert(name, weight.to_dtype(dtype)?);
    }
    // Scales left without a float8 weight scale nothing: drop them.
    let orphans: Vec<String> = out
        .keys()
        .filter(|k| k.ends_with(SCALED_SUFFIX))
        .filter(|k| {
            let weight = format!("{}.weight", &k[..k.len() - SCALED_SUFFIX.len()]);
            out.get(&weight).is_none_or(|w| w.dtype() != DType::F8E4M3)
        })
        .cloned()
        .collect();
    for k in orphans {
        out.remove(&k);
    }
    Ok(())
}

/// One tensor's place in a safetensors file. `dtype` is `None` for types candle lacks.
pub(super) struct Entry {
    pub(super) name: String,
    pub(super) dtype: Option<DType>,
    /// The safetensors dtype name, for messages about types candle lacks.
    raw_dtype: String,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: u64,
    end: u64,
}

impl Entry {
    pub(super) fn read(&self, file: &Path) -> Result<Tensor, EngineError> {
        let io = |e| EngineError::io("reading", file, e);
        let dtype = self.dtype.ok_or_else(|| EngineError::BadTextEncoder {
            problem: format!(
                "tensor {} has a data type the encoder cannot use",
                self.name
            ),
            path: file.to_owned(),
        })?;
        let len =
            usize::try_from(self.end - self.start).map_err(|_| EngineError::BadTextEncoder {
                problem: format!("tensor {} is too large", self.name),
                path: file.to_owned(),
            })?;
        let mut handle = std::fs::File::open(file).map_err(io)?;
        handle.seek(SeekFrom::Start(self.start)).map_err(io)?;
        let mut bytes = vec![0_u8; len];
        handle.read_exact(&mut bytes).map_err(io)?;
        Ok(Tensor::from_raw_buffer(
            &bytes,
            dtype,
            &self.shape,
            &Device::Cpu,
        )?)
    }
}

/// The tensors listed in a safetensors header, without reading their data.
pub(super) fn safetensors_entries(file: &Path) -> Result<Vec<Entry>, EngineError> {
    let io = |e| EngineError::io("reading", file, e);
    let bad = || EngineError::BadTextEncoder {
        problem: "this is not a safetensors file (its header is unreadable)".to_owned(),
        path: file.to_owned(),
    };
    let mut handle = std::fs::File::open(file).map_err(io)?;
    let mut len = [0_u8; 8];
    handle.read_exact(&mut len).map_err(io)?;
    let header_len = u64::from_le_bytes(len);
    if header_len > 100_000_000 {
        return Err(bad());
    }
    let mut header = vec![0_u8; header_len as usize];
    handle.read_exact(&mut header).map_err(io)?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|_| bad())?;
    let data_start = 8 + header_len;
    let mut entries = Vec::with_capacity(header.len());
    for (name, info) in header {
        if name == "__metadata__" {
            continue;
        }
        let shape = info["shape"]
            .as_array()
            .ok_or_else(bad)?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize).ok_or_else(bad))
            .collect::<Result<Vec<_>, _>>()?;
        let (Some(start), Some(end)) = (
            info["data_offsets"][0].as_u64(),
            info["data_offsets"][1].as_u64(),
        ) else {
            return Err(bad());
        };
        let raw_dtype = info["dtype"].as_str().ok_or_else(bad)?.to_owned();
        let dtype = match raw_dtype.as_str() {
            "F32" => Some(DType::F32),
            "F16" => Some(DType::F16),
            "BF16" => Some(DType::BF16),
            "F64" => Some(DType::F64),
            "U8" => Some(DType::U8),
            "U32" => Some(DType::U32),
            "I64" => Some(DType::I64),
            "F8_E4M3" => Some(DType::F8E4M3),
            _ => None,
        };
        entries.push(Entry {
            name,
            dtype,
            raw_dtype,
            shape,
            start: data_start + start,
            end: data_start + end.max(start),
        });
    }
    Ok(entries)
}

/// HF name of a Wan-native tensor, or `None` when the encoder does not use it.
#[must_use]
pub fn wan_to_hf(name: &str) -> Option<String> {
    if let Some(&(_, hf)) = WAN_TOP_RENAMES.iter().find(|(wan, _)| *wan == name) {
        return Some(hf.to_owned());
    }
    let rest = name.strip_prefix("blocks.")?;
    let (index, inner) = rest.split_once('.')?;
    let index: usize = index.parse().ok()?;
    let (_, hf) = WAN_RENAMES.iter().find(|(wan, _)| *wan == inner)?;
    Some(format!("encoder.block.{index}.{hf}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wan_names_map_onto_hf_names() {
        assert_eq!(
            wan_to_hf("blocks.23.ffn.gate.0.weight").as_deref(),
            Some("encoder.block.23.layer.1.DenseReluDense.wi_0.weight")
        );
        assert_eq!(
            wan_to_hf("token_embedding.weight").as_deref(),
            Some("shared.weight")
        );
        assert_eq!(wan_to_hf("blocks.x.norm1.weight"), None);
        assert_eq!(wan_to_hf("head.weight"), None);
    }

    #[test]
    fn llama_cpp_t5_names_map_onto_hf_names() {
        for (gguf, hf) in [
            ("token_embd.weight", "shared.weight"),
            ("enc.output_norm.weight", "encoder.final_layer_norm.weight"),
            (
                "enc.blk.7.attn_rel_b.weight",
                "encoder.block.7.layer.0.SelfAttention.relative_attention_bias.weight",
            ),
            (
                "enc.blk.0.attn_norm.weight",
                "encoder.block.0.layer.0.layer_norm.weight",
            ),
            (
                "enc.blk.23.ffn_gate.weight",
                "encoder.block.23.layer.1.DenseReluDense.wi_0.weight",
            ),
            (
                "enc.blk.23.ffn_up.weight",
                "encoder.block.23.layer.1.DenseReluDense.wi_1.weight",
            ),
            (
                "enc.blk.23.ffn_down.weight",
                "encoder.block.23.layer.1.DenseReluDense.wo.weight",
            ),
            (
                "dec.blk.0.attn_q.weight",
                "decoder.block.0.layer.0.SelfAttention.q.weight",
            ),
            ("shared.weight", "shared.weight"),
        ] {
            assert_eq!(gguf_to_hf(gguf), hf, "{gguf}");
        }
    }

    #[test]
    fn a_dit_gguf_given_as_the_text_encoder_is_named() {
        let dit = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/golden/files_dit_gguf_q8_0/wan_t2v_Q8_0.gguf");
        let error = Checkpoint::locate(&dit)
            .unwrap()
            .read_tensors(DType::F32, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("\"wan\"") && error.contains("DiT expert"),
            "{error}"
        );
    }

    #[test]
    fn a_gguf_without_tokenizer_metadata_says_what_to_choose() {
        let dit = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/golden/files_dit_gguf_q8_0/wan_t2v_Q8_0.gguf");
        let error = super::super::PromptTokenizer::open(&dit, 512)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("tokenizer.ggml.tokens") && error.contains("spiece.model"),
            "{error}"
        );
    }

    #[test]
    fn float8_projections_stay_float8_and_the_rest_is_dequantized_with_its_scale() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("umt5_xxl_fp8_e4m3fn_scaled.safetensors");
        let dev = Device::Cpu;
        let f8 = |v: &[f32]| {
            Tensor::new(v, &dev)
                .unwrap()
                .to_dtype(DType::F8E4M3)
                .unwrap()
        };
        let scalar = |v: f32| Tensor::new(v, &dev).unwrap();
        let tensors = HashMap::from([
            ("shared.weight".to_owned(), f8(&[1.0, 2.0])),
            ("shared.scale_weight".to_owned(), scalar(0.5)),
            (
                "encoder.block.0.layer.0.SelfAttention.q.weight".to_owned(),
                f8(&[4.0, -1.0]),
            ),
            (
                "encoder.block.0.layer.0.SelfAttention.q.scale_weight".to_owned(),
                scalar(0.25),
            ),
            (
                "encoder.block.0.layer.0.SelfAttention.q.scale_input".to_owned(),
                scalar(1.0),
            ),
            (
                "encoder.block.0.layer.1.DenseReluDense.wo.weight".to_owned(),
                f8(&[2.0]),
            ),
            ("scaled_fp8".to_owned(), f8(&[])),
        ]);
        candle_core::safetensors::save(&tensors, &path).unwrap();
        let out = Checkpoint::locate(&path)
            .unwrap()
            .read_tensors(DType::BF16, &dev)
            .unwrap();
        let q = "encoder.block.0.layer.0.SelfAttention.q";
        assert_eq!(out[&format!("{q}.weight")].dtype(), DType::F8E4M3);
        assert_eq!(out[&format!("{q}.scale_weight")].dtype(), DType::F32);
        let shared = out["shared.weight"].to_dtype(DType::F32).unwrap();
        assert_eq!(shared.to_vec1::<f32>().unwrap(), vec![0.5, 1.0]);
        // Unscaled float8 is cast plainly.
        let wo = &out["encoder.block.0.layer.1.DenseReluDense.wo.weight"];
        assert_eq!(wo.dtype(), DType::BF16);
        assert!(!out.contains_key("scaled_fp8") && !out.contains_key(&format!("{q}.scale_input")));
        assert!(!out.contains_key("shared.scale_weight"));
    }

    #[test]
    fn float8_e5m2_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("umt5_e5m2.safetensors");
        let header = br#"{"shared.weight":{"dtype":"F8_E5M2","shape":[2],"data_offsets":[0,2]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[0, 0]);
        std::fs::write(&path, bytes).unwrap();
        let error = Checkpoint::locate(&path)
            .unwrap()
            .read_tensors(DType::F32, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("e5m2") && error.contains("e4m3fn_scaled"),
            "{error}"
        );
        assert!(error.ends_with(&path.display().to_string()), "{error}");
    }

    #[test]
    fn a_folder_without_weights_says_what_to_choose() {
        let dir = tempfile::tempdir().unwrap();
        let error = Checkpoint::locate(dir.path()).unwrap_err().to_string();
        assert!(error.contains("text_encoder folder"), "{error}");
    }
}
