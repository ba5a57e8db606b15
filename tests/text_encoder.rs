//! The umT5 text encoder end to end on a tiny random model: prompt in, context out, with the
//! tokenizer read from the encoder file itself (as ComfyUI ships it) and the encoding cache.

#![allow(clippy::unwrap_used, reason = "test helpers unwrap")]

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};
use stillmotion_engine::umt5::{Checkpoint, Config, TextEncoder};
use stillmotion_tests::compare::max_abs_diff;
use stillmotion_tests::golden::committed_dir;

fn tiny_config() -> Config {
    Config {
        vocab_size: 1024,
        d_model: 16,
        d_kv: 4,
        d_ff: 24,
        num_heads: 2,
        num_layers: 2,
        text_len: 64,
        ..Config::umt5_xxl()
    }
}

/// A random encoder in HF naming, with the SentencePiece model embedded as ComfyUI does.
fn write_encoder(path: &Path, cfg: &Config) {
    let dev = Device::Cpu;
    let randn =
        |shape: &[usize], std: f64| Tensor::randn(0.0_f32, std as f32, shape, &dev).unwrap();
    let (d, inner, ff) = (cfg.d_model, cfg.inner_dim(), cfg.d_ff);
    let mut tensors = HashMap::from([
        ("shared.weight".to_owned(), randn(&[cfg.vocab_size, d], 1.0)),
        (
            "encoder.final_layer_norm.weight".to_owned(),
            Tensor::ones(d, DType::F32, &dev).unwrap(),
        ),
    ]);
    for i in 0..cfg.num_layers {
        let p = format!("encoder.block.{i}.layer.");
        for (name, shape) in [
            ("0.SelfAttention.q.weight", [inner, d]),
            ("0.SelfAttention.k.weight", [inner, d]),
            ("0.SelfAttention.v.weight", [inner, d]),
            ("0.SelfAttention.o.weight", [d, inner]),
            (
                "0.SelfAttention.relative_attention_bias.weight",
                [cfg.relative_attention_num_buckets, cfg.num_heads],
            ),
            ("1.DenseReluDense.wi_0.weight", [ff, d]),
            ("1.DenseReluDense.wi_1.weight", [ff, d]),
            ("1.DenseReluDense.wo.weight", [d, ff]),
        ] {
            tensors.insert(format!("{p}{name}"), randn(&shape, 0.3));
        }
        for norm in ["0.layer_norm.weight", "1.layer_norm.weight"] {
            tensors.insert(
                format!("{p}{norm}"),
                Tensor::ones(d, DType::F32, &dev).unwrap(),
            );
        }
    }
    let spiece = std::fs::read(
        committed_dir()
            .join("tokenizer_spm_nfkc_byte_fallback")
            .join("spiece.model"),
    )
    .unwrap();
    let len = spiece.len();
    tensors.insert(
        "spiece_model".to_owned(),
        Tensor::from_vec(spiece, len, &dev).unwrap(),
    );
    candle_core::safetensors::save(&tensors, path).unwrap();
}

#[test]
fn prompt_to_padded_context_with_the_embedded_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("umt5_tiny.safetensors");
    let cfg = tiny_config();
    write_encoder(&file, &cfg);
    let encoder = TextEncoder::load(&file, &file, Some(&cfg), DType::F32, &Device::Cpu).unwrap();

    let prompt = "  a cat sits on the mat &amp; the sun shines  ";
    let tokens = encoder.tokenizer().encode(prompt).unwrap();
    let real = tokens.ids.len();
    assert!(real > 5 && real < cfg.text_len, "{tokens:?}");
    assert_eq!(tokens.ids.last(), Some(&1), "</s> is appended");

    let context = encoder.encode_prompt(prompt).unwrap();
    assert_eq!(context.dims(), [cfg.text_len, cfg.d_model]);
    let padding = context.i(real..).unwrap().abs().unwrap().sum_all().unwrap();
    assert_eq!(padding.to_scalar::<f32>().unwrap(), 0.0);
    let row_norms = context.i(..real).unwrap().sqr().unwrap().sum(1).unwrap();
    assert!(row_norms.to_vec1::<f32>().unwrap().iter().all(|&n| n > 0.0));

    // The pipeline runs all text_len tokens with a mask; encoding only the real ones (what
    // we do) must give the same rows.
    let model = Checkpoint::locate(&file)
        .unwrap()
        .load_encoder(&cfg, DType::F32, &Device::Cpu)
        .unwrap();
    let (ids, mask) = tokens.padded(cfg.text_len);
    let ids = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mask = Tensor::new(mask, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let masked = model
        .forward(&ids, Some(&mask))
        .unwrap()
        .squeeze(0)
        .unwrap();
    let diff = max_abs_diff(&masked.i(..real).unwrap(), &context.i(..real).unwrap()).unwrap();
    assert!(diff < 1e-4, "masked full-length forward differs by {diff}");

    // Loading nothing, the fingerprint names the same encoder (the encoding cache's key).
    assert_eq!(
        &TextEncoder::fingerprint_of(&file, Some(&cfg), DType::F32).unwrap(),
        encoder.fingerprint()
    );

    let long = encoder
        .tokenizer()
        .encode(&"cinematic ".repeat(200))
        .unwrap();
    assert!(long.truncated);
    assert_eq!(long.ids.len(), cfg.text_len);
    assert_eq!(long.ids.last(), Some(&1), "</s> survives truncation");
}

#[test]
fn half_precision_runs_close_to_float32() {
    let case = committed_dir().join("umt5_comfyui_file_masked");
    let cfg: Config = {
        let text = std::fs::read_to_string(case.join("case.toml")).unwrap();
        let manifest: toml::Table = toml::from_str(&text).unwrap();
        manifest["config"].clone().try_into().unwrap()
    };
    let checkpoint = Checkpoint::locate(&case.join("umt5_tiny.safetensors")).unwrap();
    let inputs =
        candle_core::safetensors::load(case.join("inputs.safetensors"), &Device::Cpu).unwrap();
    let (ids, mask) = (&inputs["input_ids"], &inputs["attention_mask"]);
    let reference = checkpoint
        .load_encoder(&cfg, DType::F32, &Device::Cpu)
        .unwrap()
        .forward(ids, Some(mask))
        .unwrap();
    for dtype in [DType::BF16, DType::F16] {
        let out = checkpoint
            .load_encoder(&cfg, dtype, &Device::Cpu)
            .unwrap()
            .forward(ids, Some(mask))
            .unwrap();
        assert_eq!(out.dtype(), dtype);
        let out = out.to_dtype(DType::F32).unwrap();
        let rel = ((&out - &reference)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap())
        .to_scalar::<f32>()
        .unwrap()
        .sqrt()
            / reference
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .sqrt();
        assert!(rel < 3e-2, "{dtype:?}: relative L2 {rel}");
    }
}
