//! What the DiT's unit tests share: running a golden case on a model, and a model's weights as
//! an `fp8_scaled` file holds them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;

use super::{Config, WanModel};

/// The folder of golden case `case`.
pub(super) fn golden(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/golden")
        .join(case)
}

/// The case's model config (`[config]` of its case.toml, runner keys ignored by serde).
pub(super) fn case_config(case: &str) -> Config {
    let text = std::fs::read_to_string(golden(case).join("case.toml")).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap();
    table["config"].clone().try_into().unwrap()
}

/// The model's output on the case's inputs, and the case's expected output.
pub(super) fn run_case(case: &str, model: &WanModel) -> (Tensor, Tensor) {
    let dev = Device::Cpu;
    let inputs =
        candle_core::safetensors::load(golden(case).join("inputs.safetensors"), &dev).unwrap();
    let out = model
        .forward(
            &inputs["x"],
            inputs.get("y"),
            &inputs["t"],
            &inputs["context"],
        )
        .unwrap();
    let expected = candle_core::safetensors::load(golden(case).join("expected.safetensors"), &dev)
        .unwrap()
        .remove("out")
        .unwrap();
    (out, expected)
}

/// ‖a − b‖ / ‖b‖ in float32.
pub(super) fn rel_l2(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    let diff = (&a - &b).unwrap().sqr().unwrap().sum_all().unwrap();
    let norm = b.sqr().unwrap().sum_all().unwrap();
    (diff.to_scalar::<f32>().unwrap() / norm.to_scalar::<f32>().unwrap()).sqrt()
}

/// Weights named and shaped by the model itself, `values(shape, i)` for the i-th name in sorted
/// order; every block's linear layer float8 with a scale of its own (what a ComfyUI
/// `fp8_scaled` file holds).
pub(super) fn fp8_scaled_weights(
    cfg: &Config,
    values: impl Fn(&Shape, usize) -> Tensor,
) -> HashMap<String, Tensor> {
    let dev = Device::Cpu;
    let varmap = candle_nn::VarMap::new();
    WanModel::new(cfg, &VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
    let vars = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let mut out = HashMap::new();
    for (i, name) in names.into_iter().enumerate() {
        let tensor = values(vars[name].as_tensor().shape(), i);
        if name.starts_with("blocks.") && name.ends_with(".weight") && tensor.rank() == 2 {
            let scale = 0.01 + i as f32 * 0.003;
            let stored = (tensor / f64::from(scale))
                .unwrap()
                .to_dtype(DType::F8E4M3)
                .unwrap();
            out.insert(name.clone(), stored);
            let prefix = name.trim_end_matches("weight");
            out.insert(
                format!("{prefix}scale_weight"),
                Tensor::new(scale, &dev).unwrap(),
            );
        } else {
            out.insert(name.clone(), tensor);
        }
    }
    out
}
