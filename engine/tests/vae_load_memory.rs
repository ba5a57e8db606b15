//! The VAE loader maps its safetensors file rather than reading it whole: loading a checkpoint
//! whose file also holds 256 MiB the VAE never asks for leaves the process's peak resident size
//! (`VmHWM`) almost where it was. Measured process-wide, so this file holds one test and runs in
//! its own process.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers unwrap: a failure is the test failing"
)]

use std::io::Write as _;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use stillmotion_engine::wan_vae::{Config, load};

/// Bytes of the tensor no layer asks for; written as a hole, so the file costs no disk or RAM.
const UNUSED_BYTES: u64 = 256 << 20;

#[path = "support/peak_rss.rs"]
mod peak_rss;

fn peak_mib() -> f64 {
    peak_rss::peak_mib().unwrap()
}

/// The tiny VAE of the pipeline case, plus an unused `UNUSED_BYTES` tensor at the end of the
/// file, written as a safetensors file without ever holding the big tensor in memory.
fn write_checkpoint(tiny: &Path, path: &Path) {
    let tensors = candle_core::safetensors::load(tiny, &Device::Cpu).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for name in names {
        let tensor = tensors[name].to_dtype(DType::F32).unwrap();
        let start = data.len();
        for value in tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap() {
            data.extend_from_slice(&value.to_le_bytes());
        }
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": tensor.dims(), "data_offsets": [start, data.len()]}),
        );
    }
    let start = data.len() as u64;
    header.insert(
        "unused.padding".to_owned(),
        serde_json::json!({"dtype": "F32", "shape": [UNUSED_BYTES / 4], "data_offsets": [start, start + UNUSED_BYTES]}),
    );
    let mut text = serde_json::Value::Object(header).to_string();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut file = std::fs::File::create(path).unwrap();
    file.write_all(&(text.len() as u64).to_le_bytes()).unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file.write_all(&data).unwrap();
    file.set_len(8 + text.len() as u64 + start + UNUSED_BYTES)
        .unwrap();
}

#[test]
#[cfg(target_os = "linux")]
fn loading_the_vae_maps_the_file_instead_of_reading_it_whole() {
    let case =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/pipeline_i2v_official_tiny");
    let cfg: Config =
        serde_json::from_str(&std::fs::read_to_string(case.join("wan_2.1_vae.json")).unwrap())
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wan_2.1_vae.safetensors");
    write_checkpoint(&case.join("wan_2.1_vae.safetensors"), &path);

    let before = peak_mib();
    let vae = load(&cfg, &path, &Device::Cpu).unwrap();
    let grown = peak_mib() - before;
    println!(
        "VAE load: peak resident size grew {grown:.1} MiB for a {} MiB file",
        (std::fs::metadata(&path).unwrap().len() >> 20)
    );
    // Reading the file whole would add the unused 256 MiB.
    assert!(grown < 32.0, "the load grew the peak by {grown:.1} MiB");

    // The mapped weights are the checkpoint's: a decode matches one from a plain load.
    let reference = load(&cfg, &case.join("wan_2.1_vae.safetensors"), &Device::Cpu).unwrap();
    let z = Tensor::randn(0f32, 1.0, (16, 1, 2, 2), &Device::Cpu).unwrap();
    let a = vae.decode(&z).unwrap();
    let b = reference.decode(&z).unwrap();
    let diff = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff == 0.0, "decodes differ by {diff}");
}
