//! Loading a [`WanModel`] from its files: a single safetensors file (original, ComfyUI-prefixed,
//! diffusers or ComfyUI fp8_scaled), or a folder of shards with `config.json`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::var_builder::SimpleBackend;

use super::config::Config;
use super::lora::{LoraDeltas, LoraReport, LoraSpec};
use super::lora_mode::LoraMode;
use super::model::WanModel;
use super::weights::original_names;
use crate::EngineError;
use crate::gguf::{GgufFile, QuantizedMatmul, is_gguf};
use crate::weights::{MappedFiles, model_files};

/// The only quantized format the model runs (see `super::linear`).
const FLOAT8_FORMAT: &str = "float8_e4m3fn";

/// How a load takes its LoRAs: where the low-rank pairs go ([`LoraMode`]), and whether float8
/// layers a merge changes are requantized (see [`super::lora_requant`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoraLoad {
    pub mode: LoraMode,
    pub requantize: bool,
}

impl LoraLoad {
    /// Every pair merged, float8 merges kept in the compute dtype (the plain loaders).
    const MERGE: Self = Self {
        mode: LoraMode::Merge,
        requantize: false,
    };
}

impl WanModel {
    /// Loads the transformer at `path` (a `.safetensors` file or a model folder) with weights
    /// in `dtype`; float8 weights stay float8. The config comes from the folder's `config.json`,
    /// else from the tensor shapes.
    pub fn load(path: &Path, device: &Device, dtype: DType) -> Result<Self, EngineError> {
        Self::load_with_config(path, None, device, dtype)
    }

    /// As [`WanModel::load`], with `config` overriding the files' own.
    pub fn load_with_config(
        path: &Path,
        config: Option<&Config>,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, EngineError> {
        Ok(Self::load_with_loras(path, config, &[], device, dtype)?.0)
    }

    /// As [`WanModel::load_with_config`], merging `loras` into the weights (see
    /// [`super::lora`]); returns what each LoRA file matched. GGUF weights stay quantized and
    /// are dequantized at use (see [`QuantizedMatmul`]).
    pub fn load_with_loras(
        path: &Path,
        config: Option<&Config>,
        loras: &[LoraSpec],
        device: &Device,
        dtype: DType,
    ) -> Result<(Self, Vec<LoraReport>), EngineError> {
        Self::load_with_options(
            path,
            config,
            loras,
            QuantizedMatmul::default(),
            device,
            dtype,
        )
    }

    /// As [`WanModel::load_with_loras`], keeping only the first `resident_blocks` transformer
    /// blocks on the device and streaming the others from host memory (block swapping, see
    /// [`WanModel::new_streamed`]). GGUF block-quantized files cannot stream.
    pub fn load_streamed(
        path: &Path,
        config: Option<&Config>,
        loras: &[LoraSpec],
        resident_blocks: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<(Self, Vec<LoraReport>), EngineError> {
        let matmul = QuantizedMatmul::default();
        let target = (device, dtype, Some(resident_blocks));
        Self::load_inner(path, config, (loras, LoraLoad::MERGE), matmul, target)
    }

    /// As [`WanModel::load_with_loras`] (with block swapping when `resident_blocks` is set, as
    /// [`WanModel::load_streamed`]), taking the LoRAs as `lora` says: low-rank pairs merged or
    /// applied on the fly per its [`LoraMode`], and with `requantize`, float8 layers a merge
    /// changes rounded back to float8 with their own scale instead of kept in `dtype` (see
    /// [`super::lora_requant`]; [`super::LoraRequantize::resolve`] decides it for a render).
    pub fn load_merged(
        path: &Path,
        config: Option<&Config>,
        loras: &[LoraSpec],
        lora: LoraLoad,
        resident_blocks: Option<usize>,
        device: &Device,
        dtype: DType,
    ) -> Result<(Self, Vec<LoraReport>), EngineError> {
        let matmul = QuantizedMatmul::default();
        let target = (device, dtype, resident_blocks);
        Self::load_inner(path, config, (loras, lora), matmul, target)
    }

    /// As [`WanModel::load_with_options`], with the LoRAs' low-rank pairs placed by `mode`
    /// (float8 merges not requantized).
    pub fn load_with_lora_mode(
        path: &Path,
        config: Option<&Config>,
        loras: &[LoraSpec],
        mode: LoraMode,
        matmul: QuantizedMatmul,
        device: &Device,
        dtype: DType,
    ) -> Result<(Self, Vec<LoraReport>), EngineError> {
        let lora = LoraLoad {
            mode,
            requantize: false,
        };
        Self::load_inner(path, config, (loras, lora), matmul, (device, dtype, None))
    }

    /// As [`WanModel::load_with_loras`], choosing how layers kept quantized (GGUF) multiply.
    /// A layer a LoRA changes is merged on its dequantized weight and kept plain.
    pub fn load_with_options(
        path: &Path,
        config: Option<&Config>,
        loras: &[LoraSpec],
        matmul: QuantizedMatmul,
        device: &Device,
        dtype: DType,
    ) -> Result<(Self, Vec<LoraReport>), EngineError> {
        let loras = (loras, LoraLoad::MERGE);
        Self::load_inner(path, config, loras, matmul, (device, dtype, None))
    }

    /// `loras` with how to take them; `target` as [`Self::build`].
    fn load_inner(
        path: &Path,
        config: Option<&Config>,
        loras: (&[LoraSpec], LoraLoad),
        matmul: QuantizedMatmul,
        target: (&Device, DType, Option<usize>),
    ) -> Result<(Self, Vec<LoraReport>), EngineError> {
        let files = model_files(path)?;
        if let [file] = files.as_slice()
            && is_gguf(file)
        {
            let gguf = GgufFile::open(file)?;
            gguf.expect_architecture(&["wan"], "diffusion transformer")?;
            let shapes = gguf.shapes();
            let names = original_names(shapes.keys().map(String::as_str))?;
            let config = match config {
                Some(config) => config.clone(),
                None => Config::detect(&original_shapes(&names, &shapes))?,
            };
            let backend = gguf.into_backend(names.clone(), matmul);
            return Self::build(&config, backend, &names, loras, target);
        }
        let mapped = MappedFiles::open(&files)?;
        check_quantization(&mapped)?;
        let names = original_names(mapped.entries().map(|(k, _)| k))?;
        let config = match config {
            Some(config) => config.clone(),
            None => folder_config(path)?.map_or_else(
                || {
                    let shapes = mapped
                        .entries()
                        .map(|(k, e)| (k.to_owned(), e.shape.clone()))
                        .collect();
                    Config::detect(&original_shapes(&names, &shapes))
                },
                Ok,
            )?,
        };
        tracing::debug!(files = files.len(), ?config, "loading the Wan transformer");
        let backend = mapped.into_backend(names.clone());
        Self::build(&config, backend, &names, loras, target)
    }

    /// Builds the model on `backend`, with `loras` merged or applied on the fly as `lora`
    /// says, on the target's device in its dtype with its resident blocks.
    fn build(
        config: &Config,
        backend: Box<dyn SimpleBackend>,
        names: &HashMap<String, String>,
        (loras, lora): (&[LoraSpec], LoraLoad),
        (device, dtype, resident_blocks): (&Device, DType, Option<usize>),
    ) -> Result<(Self, Vec<LoraReport>), EngineError> {
        let model_names = names.keys().cloned().collect();
        let mut deltas = LoraDeltas::default();
        let reports = loras
            .iter()
            .map(|spec| deltas.add(spec, &model_names))
            .collect::<Result<Vec<_>, _>>()?;
        for (spec, report) in loras.iter().zip(&reports) {
            tracing::info!(lora = %spec.path.display(), merged = report.merged, unmatched = ?report.unmatched, "LoRA matched");
        }
        let backend = if deltas.is_empty() {
            backend
        } else {
            let (backend, placement) = deltas.wrap_for(backend, lora.requantize, lora.mode, device);
            tracing::info!(
                mode = ?placement.mode,
                on_the_fly = placement.on_the_fly,
                merged = placement.merged,
                requantize = lora.requantize,
                "LoRA placement: low-rank pairs of {} layers applied on the fly, {} tensors merged",
                placement.on_the_fly,
                placement.merged
            );
            backend
        };
        let vb = candle_nn::VarBuilder::from_backend(backend, dtype, device.clone());
        Ok((Self::new_streamed(config, &vb, resident_blocks)?, reports))
    }
}

/// Shapes under the model's names (`names`: model name → file key).
fn original_shapes(
    names: &HashMap<String, String>,
    shapes: &HashMap<String, Vec<usize>>,
) -> HashMap<String, Vec<usize>> {
    names
        .iter()
        .filter_map(|(name, key)| shapes.get(key).map(|s| (name.clone(), s.clone())))
        .collect()
}

/// The `config.json` beside the weights, when `path` is a folder that has one.
fn folder_config(path: &Path) -> Result<Option<Config>, EngineError> {
    let file = path.join("config.json");
    if !path.is_dir() || !file.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&file)
        .map_err(|e| EngineError::io("reading the model's config", &file, e))?;
    Config::from_json(&text).map(Some)
}

/// Refuses, by name, quantized formats the model cannot run: float8 e5m2 and any ComfyUI
/// `comfy_quant` format other than float8 e4m3fn with a per-tensor scale.
fn check_quantization(mapped: &MappedFiles) -> Result<(), EngineError> {
    let refuse = |path: &Path, problem: String| EngineError::BadModelFile {
        problem,
        path: path.to_owned(),
    };
    for header in mapped.headers() {
        if let Some((name, _)) = header.tensors.iter().find(|(_, t)| t.dtype == "F8_E5M2") {
            return Err(refuse(
                &header.path,
                format!(
                    "tensor {name} is float8 e5m2, which Stillmotion does not run: use the fp8_e4m3fn (or fp8_scaled) file of the model"
                ),
            ));
        }
        let mut formats: Vec<(String, String)> = Vec::new();
        if let Some(meta) = header.metadata.get("_quantization_metadata") {
            let json: serde_json::Value = serde_json::from_str(meta).map_err(|_| {
                refuse(
                    &header.path,
                    "its _quantization_metadata is not valid JSON: download the file again"
                        .to_owned(),
                )
            })?;
            if let Some(layers) = json.get("layers").and_then(serde_json::Value::as_object) {
                for (layer, conf) in layers {
                    let format = conf.get("format").and_then(serde_json::Value::as_str);
                    formats.push((layer.clone(), format.unwrap_or("unnamed").to_owned()));
                }
            }
        }
        for name in header
            .tensors
            .keys()
            .filter(|k| k.ends_with(".comfy_quant"))
        {
            let json: serde_json::Value =
                serde_json::from_slice(mapped.bytes(name)?).unwrap_or(serde_json::Value::Null);
            let format = json.get("format").and_then(serde_json::Value::as_str);
            formats.push((name.clone(), format.unwrap_or("unnamed").to_owned()));
        }
        if let Some((layer, format)) = formats.iter().find(|(_, f)| f != FLOAT8_FORMAT) {
            return Err(refuse(
                &header.path,
                format!(
                    "layer {layer} is quantized as {format}, which Stillmotion does not run (only {FLOAT8_FORMAT} with a per-tensor scale): use an fp8_scaled or bf16 file of the model"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use candle_core::Tensor;

    use super::*;
    use crate::wan::test_support::{case_config, golden, rel_l2, run_case};

    /// A file without a `config.json`, loaded with no config: the loader reads the config from
    /// the tensor shapes (heads of 128), which gives the case's config but for `text_len`, which
    /// no tensor holds (the released models' 512). A file whose width is no multiple of 128 is
    /// refused with what to do.
    #[test]
    fn a_file_without_a_config_is_configured_from_its_shapes() {
        let case = "files_dit_gguf_kquants";
        let (model, _) = WanModel::load_with_options(
            &golden(case).join("wan_t2v_kquants.gguf"),
            None,
            &[],
            QuantizedMatmul::DequantizeAtUse,
            &Device::Cpu,
            DType::F32,
        )
        .unwrap();
        let expected = Config {
            text_len: 512,
            ..case_config(case)
        };
        assert_eq!(model.config(), &expected);
        assert_eq!(model.config().num_heads, 2);

        let narrow = golden("files_dit_lora_merge").join("wan_t2v.safetensors");
        let err = WanModel::load(&narrow, &Device::Cpu, DType::F32)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("hidden size 32") && err.contains("config.json"),
            "{err}"
        );
    }

    /// fp16 and bf16 safetensors (what most released experts and ComfyUI's `_fp16`/`_bf16`
    /// files are) load converted to the compute dtype: the golden f32 case's weights saved in
    /// either give the f32 file's output within that precision's rounding (the weights' own:
    /// 2⁻¹¹ relative for fp16, 2⁻⁸ for bf16, a few times that through the blocks).
    #[test]
    fn half_precision_safetensors_load_converted_to_the_compute_dtype() {
        let case = "wan_dit_t2v_comfy_prefix";
        let file = golden(case).join("diffusion_model.safetensors");
        let cfg = case_config(case);
        let full = WanModel::load_with_config(&file, Some(&cfg), &Device::Cpu, DType::F32).unwrap();
        let (reference, _) = run_case(case, &full);
        let dir = tempfile::tempdir().unwrap();
        for (dtype, bound) in [(DType::F16, 2e-3), (DType::BF16, 2e-2)] {
            let tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
            let half: HashMap<String, Tensor> = tensors
                .into_iter()
                .map(|(name, t)| (name, t.to_dtype(dtype).unwrap()))
                .collect();
            let path = dir.path().join(format!("{dtype:?}.safetensors"));
            candle_core::safetensors::save(&half, &path).unwrap();
            let header = crate::weights::read_header(&path).unwrap();
            assert!(header.tensors.values().all(|t| t.dtype != "F32"));
            let model =
                WanModel::load_with_config(&path, Some(&cfg), &Device::Cpu, DType::F32).unwrap();
            let (out, _) = run_case(case, &model);
            let error = rel_l2(&out, &reference);
            println!("{dtype:?} file: rel L2 {error:.2e} against the f32 file");
            assert!(error > 0.0 && error < bound, "{dtype:?}: {error}");
        }
    }

    #[test]
    fn a_text_encoder_gguf_given_as_the_dit_is_named() {
        let umt5 = golden("umt5_gguf_city96_q8_0").join("umt5_tiny_Q8_0.gguf");
        let err = WanModel::load(&umt5, &Device::Cpu, DType::F32)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t5encoder") && err.contains("choose it as the text encoder"),
            "{err}"
        );
    }

    #[test]
    fn native_quantized_matmul_stays_close_to_the_dequantized_model() {
        // The K-quant golden file through candle's QMatMul (activations quantized to Q8_K),
        // against the reference on the dequantized weights; the golden case checks the exact
        // dequantize-at-use path of the same file.
        let case = "files_dit_gguf_kquants";
        let path = golden(case).join("wan_t2v_kquants.gguf");
        let config = case_config(case);
        let dev = Device::Cpu;
        let (native, _) = WanModel::load_with_options(
            &path,
            Some(&config),
            &[],
            QuantizedMatmul::Native,
            &dev,
            DType::F32,
        )
        .unwrap();
        let (out, expected) = run_case(case, &native);
        let err = rel_l2(&out, &expected);
        println!("K-quant GGUF through QMatMul: rel L2 {err:.3e} against the dequantized model");
        assert!(err < 2e-2 && err > 0.0, "{err}");
    }

    #[test]
    fn a_gguf_experts_resident_bytes_count_its_blocks_as_stored() {
        // Parking checks host memory against this count: GGUF layers were left out of it.
        let case = "files_dit_gguf_kquants";
        let path = golden(case).join("wan_t2v_kquants.gguf");
        let model =
            WanModel::load_with_config(&path, Some(&case_config(case)), &Device::Cpu, DType::F32)
                .unwrap();
        let file = GgufFile::open(&path).unwrap();
        assert_eq!(model.resident_bytes(), file.resident_bytes(4, false));
    }

    #[test]
    fn a_lora_on_gguf_weights_merges_into_its_layers_dequantized() {
        let case = "files_dit_gguf_legacy_quants";
        let gguf_path = golden(case).join("wan_t2v_mixed.gguf");
        let config = case_config(case);
        let dev = Device::Cpu;
        let dir = tempfile::tempdir().unwrap();

        // The same weights dequantized into a safetensors file: the LoRA's reference.
        let gguf = GgufFile::open(&gguf_path).unwrap();
        let names: HashMap<String, String> = gguf
            .shapes()
            .keys()
            .map(|k| (k.clone(), k.clone()))
            .collect();
        let backend = gguf.into_backend(names.clone(), QuantizedMatmul::default());
        let plain: HashMap<String, Tensor> = names
            .keys()
            .map(|k| {
                (
                    k.clone(),
                    backend.get_unchecked(k, DType::F32, &dev).unwrap(),
                )
            })
            .collect();
        let plain_path = dir.path().join("dequantized.safetensors");
        candle_core::safetensors::save(&plain, &plain_path).unwrap();

        let t = |shape: &[usize], seed: f32| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|i| ((i as f32 + seed) * 0.37).sin() * 0.2)
                .collect();
            Tensor::from_vec(v, shape, &dev).unwrap()
        };
        let lora = HashMap::from([
            (
                "diffusion_model.blocks.0.self_attn.q.lora_down.weight",
                t(&[4, 64], 1.0),
            ),
            (
                "diffusion_model.blocks.0.self_attn.q.lora_up.weight",
                t(&[64, 4], 2.0),
            ),
            (
                "diffusion_model.blocks.1.ffn.2.lora_A.weight",
                t(&[4, 128], 3.0),
            ),
            (
                "diffusion_model.blocks.1.ffn.2.lora_B.weight",
                t(&[64, 4], 4.0),
            ),
            ("diffusion_model.head.head.diff_b", t(&[64], 5.0)),
        ]);
        let lora_path = dir.path().join("lora.safetensors");
        candle_core::safetensors::save(&lora, &lora_path).unwrap();
        let loras = [LoraSpec {
            path: lora_path,
            strength: 0.7,
        }];

        let (merged, reports) =
            WanModel::load_with_loras(&gguf_path, Some(&config), &loras, &dev, DType::F32).unwrap();
        assert_eq!(reports[0].merged, 3, "{reports:?}");
        let (reference, _) =
            WanModel::load_with_loras(&plain_path, Some(&config), &loras, &dev, DType::F32)
                .unwrap();
        let (out, without_lora) = run_case(case, &merged);
        let (expected, _) = run_case(case, &reference);
        let err = rel_l2(&out, &expected);
        assert!(err < 1e-5, "GGUF + LoRA vs dequantized + LoRA: {err}");
        assert!(
            rel_l2(&out, &without_lora) > 1e-2,
            "the LoRA changed nothing"
        );
    }

    fn save(path: &Path, tensors: &[(&str, Tensor)], metadata: Option<HashMap<String, String>>) {
        safetensors::serialize_to_file(tensors.iter().map(|(k, t)| (*k, t)), metadata, path)
            .unwrap();
    }

    #[test]
    fn unsupported_quantization_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let w = Tensor::zeros((2, 2), DType::U8, &dev).unwrap();

        let int8 = dir.path().join("int8.safetensors");
        let meta = HashMap::from([(
            "_quantization_metadata".to_owned(),
            r#"{"format_version": "1.0", "layers": {"blocks.0.ffn.0": {"format": "int8_blockwise"}}}"#
                .to_owned(),
        )]);
        save(&int8, &[("blocks.0.ffn.0.weight", w.clone())], Some(meta));
        let err = WanModel::load(&int8, &dev, DType::F32)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("blocks.0.ffn.0") && err.contains("int8_blockwise"),
            "{err}"
        );

        let nvfp4 = dir.path().join("nvfp4.safetensors");
        let quant = Tensor::new(br#"{"format": "nvfp4"}"#.as_slice(), &dev).unwrap();
        save(
            &nvfp4,
            &[
                ("blocks.0.ffn.0.weight", w),
                ("blocks.0.ffn.0.comfy_quant", quant),
            ],
            None,
        );
        let err = WanModel::load(&nvfp4, &dev, DType::F32)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nvfp4"), "{err}");

        // candle cannot hold e5m2: write the header by hand.
        let e5m2 = dir.path().join("e5m2.safetensors");
        let header =
            br#"{"blocks.0.ffn.0.weight":{"dtype":"F8_E5M2","shape":[2],"data_offsets":[0,2]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[0, 0]);
        std::fs::write(&e5m2, bytes).unwrap();
        let err = WanModel::load(&e5m2, &dev, DType::F32)
            .unwrap_err()
            .to_string();
        assert!(err.contains("e5m2") && err.contains("e4m3fn"), "{err}");
    }
}
