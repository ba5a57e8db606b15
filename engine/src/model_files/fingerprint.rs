//! A model file's fingerprint from its header and name: format, dtype, role and variant.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::EngineError;
use crate::wan::weights::strip_prefix;
use crate::weights::{Header, read_header};

/// The container format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Safetensors,
    /// GGUF: loadable for the diffusion transformer only.
    Gguf,
    /// A PyTorch pickle (`.pt`, `.pth`, `.ckpt`, `.pkl`): not loaded (it can run code).
    Pickle,
}

/// What a file is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A Wan diffusion transformer (one expert of an A14B pair, or TI2V-5B).
    DitExpert,
    /// The umT5 text encoder.
    TextEncoder,
    Vae,
    Lora,
    Rife,
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Wan21,
    Wan22,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    B14,
    B5,
    B1_3,
}

/// Which expert of a Wan2.2 A14B pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Noise {
    High,
    Low,
}

/// Everything the header and file name tell about a model file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    pub format: Format,
    /// The dtype holding most of the bytes (safetensors name: `BF16`, `F8_E4M3`, ...).
    pub dtype: Option<String>,
    /// ComfyUI float8 with per-tensor scales (`scaled_fp8` marker, `scale_weight` or
    /// `weight_scale` tensors).
    pub scaled_fp8: bool,
    pub role: Role,
    /// DiT: channels in (36 I2V, 16 T2V, 48 TI2V). VAE: latent channels (16 Wan2.1, 48 Wan2.2).
    pub channels: Option<usize>,
    pub family: Option<Family>,
    pub size: Option<Size>,
    pub noise: Option<Noise>,
    pub tensors: usize,
    /// File size in bytes.
    pub bytes: u64,
}

/// Fingerprints the file at `path` from its header (and its name, for the expert).
pub fn fingerprint(path: &Path) -> Result<Fingerprint, EngineError> {
    let mut magic = [0_u8; 4];
    let bytes = std::fs::metadata(path)
        .map_err(|e| EngineError::io("reading a model file's size", path, e))?
        .len();
    File::open(path)
        .and_then(|mut f| f.read(&mut magic))
        .map_err(|e| EngineError::io("reading a model file", path, e))?;
    let other = |format| Fingerprint {
        format,
        dtype: None,
        scaled_fp8: false,
        role: if format == Format::Pickle && name_has(path, &["flownet", "rife"]) {
            Role::Rife
        } else {
            Role::Unknown
        },
        channels: None,
        family: None,
        size: None,
        noise: noise_from_name(&path.to_string_lossy()),
        tensors: 0,
        bytes,
    };
    if magic == *b"GGUF" {
        let mut header = crate::gguf::GgufFile::open(path)?.header();
        // llama.cpp's T5 names (GGUF text encoders) read as the HF names the roles know.
        header.tensors = std::mem::take(&mut header.tensors)
            .into_iter()
            .map(|(k, v)| (crate::umt5::weights::gguf_to_hf(&k), v))
            .collect();
        return Ok(Fingerprint {
            format: Format::Gguf,
            ..from_header(&header)
        });
    }
    match read_header(path) {
        Ok(header) => Ok(from_header(&header)),
        // A safetensors header length may begin like a pickle: decide only after that failed.
        Err(_) if matches!(magic, [0x80, 2..=5, ..]) || magic == *b"PK\x03\x04" => {
            Ok(other(Format::Pickle))
        }
        Err(e) => Err(e),
    }
}

fn name_has(path: &Path, words: &[&str]) -> bool {
    let name = path.to_string_lossy().to_lowercase();
    words.iter().any(|w| name.contains(w))
}

/// The expert a file or folder name (or metadata text) names.
pub(super) fn noise_from_name(text: &str) -> Option<Noise> {
    let t = text.to_lowercase().replace(['-', ' ', '.'], "_");
    if t.contains("high_noise")
        || t.contains("highnoise")
        || t.contains("_high_")
        || t.contains("_high/")
    {
        Some(Noise::High)
    } else if t.contains("low_noise")
        || t.contains("lownoise")
        || t.contains("_low_")
        || t.contains("_low/")
    {
        Some(Noise::Low)
    } else {
        None
    }
}

/// The fingerprint of a checked safetensors header.
pub fn from_header(header: &Header) -> Fingerprint {
    let keys: BTreeMap<&str, &crate::weights::TensorEntry> = header
        .tensors
        .iter()
        .map(|(k, v)| (strip_prefix(k), v))
        .collect();
    let has = |k: &str| keys.contains_key(k);
    let any = |pat: &str| keys.keys().any(|k| k.contains(pat));
    let shape = |k: &str| keys.get(k).map(|e| e.shape.clone()).unwrap_or_default();

    let mut by_dtype: BTreeMap<&str, u64> = BTreeMap::new();
    for t in header.tensors.values() {
        *by_dtype.entry(t.dtype.as_str()).or_default() += t.bytes;
    }
    let dtype = by_dtype
        .iter()
        .max_by_key(|(_, b)| **b)
        .map(|(d, _)| (*d).to_owned());
    let scaled_fp8 = has("scaled_fp8") || any(".scale_weight") || any(".weight_scale");

    let mut fp = Fingerprint {
        format: Format::Safetensors,
        dtype,
        scaled_fp8,
        role: Role::Unknown,
        channels: None,
        family: None,
        size: None,
        noise: None,
        tensors: header.tensors.len(),
        bytes: header.file_len,
    };
    let lora = [
        "lora_down",
        "lora_up",
        "lora_A",
        "lora_B",
        ".diff",
        "lora_unet_",
    ];
    if lora.iter().any(|p| any(p)) {
        fp.role = Role::Lora;
        fp.noise = noise_from_name(&header.path.to_string_lossy());
    } else if has("patch_embedding.weight") && (any("self_attn.q") || any("attn1.to_q")) {
        fp.role = Role::DitExpert;
        let patch = shape("patch_embedding.weight");
        let (dim, channels) = (patch.first().copied(), patch.get(1).copied());
        fp.channels = channels;
        fp.size = match dim {
            Some(5120) => Some(Size::B14),
            Some(3072) => Some(Size::B5),
            Some(1536) => Some(Size::B1_3),
            _ => None,
        };
        let clip_branch = any("img_emb.") || any("k_img.") || any("add_k_proj.");
        let meta: String = header
            .metadata
            .values()
            .cloned()
            .collect::<Vec<_>>()
            .join(" ");
        fp.noise =
            noise_from_name(&header.path.to_string_lossy()).or_else(|| noise_from_name(&meta));
        fp.family = if clip_branch {
            Some(Family::Wan21)
        } else if channels == Some(48) || fp.noise.is_some() || channels == Some(36) {
            Some(Family::Wan22)
        } else {
            None
        };
    } else if has("shared.weight") && any("SelfAttention")
        || has("token_embedding.weight") && any("attn.q")
    {
        fp.role = Role::TextEncoder;
    } else if any("decoder.")
        && (any("encoder.") || has("conv2.weight") || has("post_quant_conv.weight"))
    {
        fp.role = Role::Vae;
        let z = ["decoder.conv1.weight", "decoder.conv_in.weight"]
            .iter()
            .find_map(|k| shape(k).get(1).copied());
        fp.channels = z;
        fp.family = match z {
            Some(16) => Some(Family::Wan21),
            Some(48) => Some(Family::Wan22),
            _ => None,
        };
    } else if (any("block0.") || any("blocks.0.conv0.")) && any("conv") {
        // ComfyUI's RIFE files may name the IFBlocks `blocks.N.` (rife::weights reads both).
        fp.role = Role::Rife;
    }
    fp
}

/// Writes a safetensors file with a real header whose data region is a hole (sparse file), so
/// fixtures can claim the shapes of real 14B models without their bytes.
#[cfg(test)]
pub(crate) fn fake_safetensors(
    path: &Path,
    tensors: &[(&str, &str, &[usize])],
    metadata: &[(&str, &str)],
) -> u64 {
    let mut header = serde_json::Map::new();
    let mut offset = 0_u64;
    for (name, dtype, shape) in tensors {
        let size = match *dtype {
            "F32" => 4,
            "BF16" | "F16" => 2,
            _ => 1,
        };
        let end = offset + shape.iter().product::<usize>() as u64 * size;
        header.insert(
            (*name).to_owned(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    if !metadata.is_empty() {
        let meta: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
            .collect();
        header.insert("__metadata__".to_owned(), meta.into());
    }
    let text = serde_json::Value::Object(header).to_string();
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(text.as_bytes());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, &bytes).unwrap();
    let total = bytes.len() as u64 + offset;
    File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(total)
        .unwrap();
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dit_experts_are_told_apart_by_header_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir
            .path()
            .join("wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors");
        fake_safetensors(
            &path,
            &[
                (
                    "model.diffusion_model.patch_embedding.weight",
                    "BF16",
                    &[5120, 36, 1, 2, 2],
                ),
                (
                    "model.diffusion_model.blocks.0.self_attn.q.weight",
                    "F8_E4M3",
                    &[5120, 5120],
                ),
                (
                    "model.diffusion_model.blocks.0.self_attn.q.scale_weight",
                    "F32",
                    &[],
                ),
                ("model.diffusion_model.scaled_fp8", "F8_E4M3", &[0]),
            ],
            &[],
        );
        let fp = fingerprint(&path).unwrap();
        assert_eq!(fp.role, Role::DitExpert);
        assert_eq!(fp.channels, Some(36));
        assert_eq!(fp.size, Some(Size::B14));
        assert_eq!(fp.noise, Some(Noise::High));
        assert_eq!(fp.family, Some(Family::Wan22));
        assert_eq!(fp.dtype.as_deref(), Some("F8_E4M3"));
        assert!(fp.scaled_fp8);

        // Noise from metadata when the name says nothing; diffusers keys; 5B with 48 channels.
        let path = dir.path().join("expert.safetensors");
        fake_safetensors(
            &path,
            &[
                ("patch_embedding.weight", "BF16", &[3072, 48, 1, 2, 2]),
                ("blocks.0.attn1.to_q.weight", "BF16", &[3072, 3072]),
            ],
            &[("modelspec.title", "Wan2.2 low noise expert")],
        );
        let fp = fingerprint(&path).unwrap();
        assert_eq!(
            (fp.size, fp.channels, fp.noise),
            (Some(Size::B5), Some(48), Some(Noise::Low))
        );
        assert!(!fp.scaled_fp8);
    }

    #[test]
    fn other_roles_and_formats_are_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let vae = dir.path().join("v.safetensors");
        fake_safetensors(
            &vae,
            &[
                ("decoder.conv1.weight", "BF16", &[384, 48, 3, 3, 3]),
                ("encoder.conv1.weight", "BF16", &[160, 12, 3, 3, 3]),
            ],
            &[],
        );
        let fp = fingerprint(&vae).unwrap();
        assert_eq!(
            (fp.role, fp.channels, fp.family),
            (Role::Vae, Some(48), Some(Family::Wan22))
        );
        let t5 = dir.path().join("t.safetensors");
        fake_safetensors(
            &t5,
            &[
                ("shared.weight", "BF16", &[256_384, 8]),
                (
                    "encoder.block.0.layer.0.SelfAttention.q.weight",
                    "BF16",
                    &[8, 8],
                ),
            ],
            &[],
        );
        assert_eq!(fingerprint(&t5).unwrap().role, Role::TextEncoder);
        let lora = dir.path().join("l.safetensors");
        fake_safetensors(
            &lora,
            &[(
                "diffusion_model.blocks.0.self_attn.q.lora_down.weight",
                "BF16",
                &[4, 8],
            )],
            &[],
        );
        assert_eq!(fingerprint(&lora).unwrap().role, Role::Lora);
        let gguf = dir.path().join("m.gguf");
        std::fs::write(&gguf, b"GGUF\x03\0\0\0").unwrap();
        let err = fingerprint(&gguf).unwrap_err().to_string();
        assert!(
            err.contains("GGUF header") && err.contains("download it again"),
            "{err}"
        );
        let golden = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/golden/files_dit_gguf_q8_0/wan_t2v_Q8_0.gguf");
        let fp = fingerprint(&golden).unwrap();
        assert_eq!(
            (fp.format, fp.role, fp.channels),
            (Format::Gguf, Role::DitExpert, Some(16))
        );
        assert_eq!(fp.dtype.as_deref(), Some("Q8_0"));
        let umt5 = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/golden/umt5_gguf_city96_q8_0/umt5_tiny_Q8_0.gguf");
        let fp = fingerprint(&umt5).unwrap();
        assert_eq!((fp.format, fp.role), (Format::Gguf, Role::TextEncoder));
        let rife = dir.path().join("flownet.pkl");
        std::fs::write(&rife, b"\x80\x02}q\0").unwrap();
        let fp = fingerprint(&rife).unwrap();
        assert_eq!((fp.format, fp.role), (Format::Pickle, Role::Rife));
        for block in ["block0", "module.blocks.0"] {
            let comfy = dir.path().join(format!("rife_v4.26-{block}.safetensors"));
            fake_safetensors(
                &comfy,
                &[
                    ("encode.cnn0.weight", "F32", &[16, 3, 3, 3]),
                    (&format!("{block}.conv0.0.0.weight"), "F32", &[96, 7, 3, 3]),
                ],
                &[],
            );
            assert_eq!(fingerprint(&comfy).unwrap().role, Role::Rife, "{block}");
        }
    }
}
