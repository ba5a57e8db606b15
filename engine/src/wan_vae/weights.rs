//! Loading VAE weights from the files users have, in either key layout.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::{Config, WanVae};
use crate::EngineError;

/// Which names a checkpoint uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightLayout {
    /// The official `Wan2.1_VAE.pth` state dict, also `wan_2.1_vae.safetensors` (ComfyUI).
    Original,
    /// diffusers' `AutoencoderKLWan` (`vae/diffusion_pytorch_model.safetensors`).
    Diffusers,
}

/// Original → diffusers name fragments shared by both VAEs.
const PARTS: [(&str, &str); 13] = [
    (".residual.0.", ".norm1."),
    (".residual.2.", ".conv1."),
    (".residual.3.", ".norm2."),
    (".residual.6.", ".conv2."),
    (".shortcut.", ".conv_shortcut."),
    (".middle.0.", ".mid_block.resnets.0."),
    (".middle.1.", ".mid_block.attentions.0."),
    (".middle.2.", ".mid_block.resnets.1."),
    (".head.0.", ".norm_out."),
    (".head.2.", ".conv_out."),
    ("encoder.conv1.", "encoder.conv_in."),
    ("decoder.conv1.", "decoder.conv_in."),
    ("encoder.downsamples.", "encoder.down_blocks."),
];

/// The rename table: the diffusers name of an original-layout key.
///
/// Wan2.1: the decoder's flat `upsamples.{i}` list becomes `up_blocks.{block}.resnets.{j}` and
/// `up_blocks.{block}.upsamplers.0`, so the map needs `num_res_blocks`. Wan2.2 (`residual`):
/// `downsamples.{i}.downsamples.{j}` and `upsamples.{i}.upsamples.{j}` become
/// `down_blocks.{i}.resnets.{j}` / `.downsampler` and `up_blocks.{i}.resnets.{j}` / `.upsampler`.
pub fn diffusers_key(original: &str, num_res_blocks: usize, residual: bool) -> String {
    if residual {
        for (from, to, resnets, resample) in [
            (
                "encoder.downsamples.",
                "encoder.down_blocks.",
                num_res_blocks,
                "downsampler",
            ),
            (
                "decoder.upsamples.",
                "decoder.up_blocks.",
                num_res_blocks + 1,
                "upsampler",
            ),
        ] {
            let Some(rest) = original.strip_prefix(from) else {
                continue;
            };
            let parts: Vec<&str> = rest.splitn(4, '.').collect();
            if let [block, _, j, tail] = parts.as_slice()
                && let Ok(j) = j.parse::<usize>()
            {
                let inner = if j < resnets {
                    format!("resnets.{j}.{tail}")
                } else {
                    format!("{resample}.{tail}")
                };
                let key = format!("{to}{block}.{inner}");
                return diffusers_key(&key, num_res_blocks, false);
            }
        }
    }
    let mut key = original.to_owned();
    for (from, to) in PARTS {
        key = key.replace(from, to);
    }
    if let Some(rest) = key.strip_prefix("conv1.") {
        key = format!("quant_conv.{rest}");
    } else if let Some(rest) = key.strip_prefix("conv2.") {
        key = format!("post_quant_conv.{rest}");
    }
    if let Some(rest) = key.strip_prefix("decoder.upsamples.")
        && let Some((flat, tail)) = rest.split_once('.')
        && let Ok(flat) = flat.parse::<usize>()
    {
        let resnets = num_res_blocks + 1;
        let (block, j) = (flat / (resnets + 1), flat % (resnets + 1));
        key = if j < resnets {
            format!("decoder.up_blocks.{block}.resnets.{j}.{tail}")
        } else {
            format!("decoder.up_blocks.{block}.upsamplers.0.{tail}")
        };
    }
    key
}

/// Loads a VAE checkpoint (`.safetensors` in either layout, detected from its keys and
/// memory-mapped, or the official `.pth`, read by candle's pickle reader, which runs no code)
/// onto `device` in f32.
pub fn load(cfg: &Config, path: &Path, device: &Device) -> Result<WanVae, EngineError> {
    load_in(cfg, path, device, DType::F32)
}

/// As [`load`], with the weights (and so the whole network) in `dtype`: bf16 on the GPU is the
/// pipeline's fast path, as ComfyUI runs the Wan VAE on recent GPUs.
pub fn load_in(
    cfg: &Config,
    path: &Path,
    device: &Device,
    dtype: DType,
) -> Result<WanVae, EngineError> {
    let is_pth = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("pth") || e.eq_ignore_ascii_case("pt"));
    let vb = if is_pth {
        VarBuilder::from_pth(path, dtype, device).map_err(|e| bad(path, &e))?
    } else {
        // Mapped, its header checked first: tensors are read one at a time from the mapping,
        // never the whole file into memory.
        let mapped = crate::weights::MappedFiles::open(&[path.to_owned()])?;
        // Read as floats, a float8 tensor would lose its per-tensor scale: plausible-looking
        // weights that decode noise. No released Wan VAE is float8; refuse such a file by name.
        if let Some((name, entry)) = mapped.entries().find(|(_, e)| e.dtype.starts_with("F8")) {
            return Err(EngineError::BadWeights {
                problem: format!(
                    "tensor {name} is float8 ({}), which the VAE does not load: use the bf16 or fp32 VAE file (wan_2.1_vae.safetensors or Wan2.1_VAE.pth; wan2.2_vae.safetensors for TI2V-5B)",
                    entry.dtype
                ),
                path: path.to_owned(),
            });
        }
        let names = mapped
            .entries()
            .map(|(name, _)| (name.to_owned(), name.to_owned()))
            .collect();
        mapped.into_var_builder(names, dtype, device)
    };
    let layout = if vb.contains_tensor("encoder.conv1.weight") {
        WeightLayout::Original
    } else if vb.contains_tensor("encoder.conv_in.weight") {
        WeightLayout::Diffusers
    } else {
        return Err(EngineError::BadWeights {
            problem: "this is not a Wan VAE checkpoint (no encoder.conv1 or encoder.conv_in): \
                      pick wan_2.1_vae.safetensors, Wan2.1_VAE.pth or a diffusers vae folder's \
                      diffusion_pytorch_model.safetensors"
                .to_owned(),
            path: path.to_owned(),
        });
    };
    tracing::debug!(?layout, path = %path.display(), "loading the Wan VAE");
    let vb = match layout {
        WeightLayout::Original => vb,
        WeightLayout::Diffusers => {
            let (blocks, residual) = (cfg.num_res_blocks, cfg.residual_shortcuts);
            vb.rename_f(move |name| diffusers_key(name, blocks, residual))
        }
    };
    WanVae::new(cfg, &vb).map_err(|e| bad(path, &e))
}

fn bad(path: &Path, error: &candle_core::Error) -> EngineError {
    EngineError::BadWeights {
        problem: format!(
            "the VAE weights do not fit the configured Wan VAE ({error}); check that the file \
             is the Wan2.1 VAE for the 14B models or the Wan2.2 VAE for TI2V-5B"
        ),
        path: path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::diffusers_key;

    /// A float8 VAE file (as an fp8 export would make it) is refused by name, never read
    /// with its scales dropped.
    #[test]
    fn a_float8_vae_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wan_2.1_vae_fp8_e4m3fn.safetensors");
        crate::model_files::fingerprint::fake_safetensors(
            &path,
            &[
                ("encoder.conv1.weight", "F8_E4M3", &[96, 3, 3, 3, 3]),
                ("encoder.conv1.scale_weight", "F32", &[]),
            ],
            &[],
        );
        let cfg = super::super::Config::wan21();
        let error = super::load(&cfg, &path, &candle_core::Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("encoder.conv1.weight is float8 (F8_E4M3)")
                && error.contains("wan_2.1_vae.safetensors")
                && error.contains("fp8_e4m3fn"),
            "{error}"
        );
    }

    #[test]
    fn renames_follow_diffusers_block_structure() {
        let cases = [
            ("encoder.conv1.weight", "encoder.conv_in.weight"),
            ("conv1.bias", "quant_conv.bias"),
            ("conv2.weight", "post_quant_conv.weight"),
            (
                "encoder.downsamples.3.time_conv.weight",
                "encoder.down_blocks.3.time_conv.weight",
            ),
            (
                "encoder.downsamples.2.shortcut.weight",
                "encoder.down_blocks.2.conv_shortcut.weight",
            ),
            (
                "decoder.middle.1.to_qkv.weight",
                "decoder.mid_block.attentions.0.to_qkv.weight",
            ),
            ("decoder.head.0.gamma", "decoder.norm_out.gamma"),
            (
                "decoder.upsamples.5.residual.0.gamma",
                "decoder.up_blocks.1.resnets.1.norm1.gamma",
            ),
            (
                "decoder.upsamples.7.resample.1.weight",
                "decoder.up_blocks.1.upsamplers.0.resample.1.weight",
            ),
            (
                "decoder.upsamples.14.residual.6.bias",
                "decoder.up_blocks.3.resnets.2.conv2.bias",
            ),
        ];
        for (original, diffusers) in cases {
            assert_eq!(diffusers_key(original, 2, false), diffusers, "{original}");
        }
        let wan22 = [
            (
                "encoder.downsamples.1.downsamples.0.residual.3.gamma",
                "encoder.down_blocks.1.resnets.0.norm2.gamma",
            ),
            (
                "encoder.downsamples.1.downsamples.2.time_conv.bias",
                "encoder.down_blocks.1.downsampler.time_conv.bias",
            ),
            (
                "decoder.upsamples.0.upsamples.2.shortcut.weight",
                "decoder.up_blocks.0.resnets.2.conv_shortcut.weight",
            ),
            (
                "decoder.upsamples.2.upsamples.3.resample.1.weight",
                "decoder.up_blocks.2.upsampler.resample.1.weight",
            ),
            (
                "decoder.middle.0.residual.0.gamma",
                "decoder.mid_block.resnets.0.norm1.gamma",
            ),
            ("conv1.weight", "quant_conv.weight"),
        ];
        for (original, diffusers) in wan22 {
            assert_eq!(diffusers_key(original, 2, true), diffusers, "{original}");
        }
    }
}
