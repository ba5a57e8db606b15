//! LoRA applied on the fly against the same LoRA merged at load: every key style, plain,
//! float8 (dequantized and FP8-GEMM products), GGUF blocks and block swapping.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use stillmotion_kernels::Kernels;

use super::linear::Lin;
use super::lora::{LoraDeltas, LoraSpec};
use super::test_support::{case_config, fp8_scaled_weights, golden, rel_l2, run_case};
use super::{Config, LoraMode, QuantizedMatmul, WanModel};
use crate::gguf::GgufFile;

/// Deterministic values of `shape`, about ±`amplitude`.
fn wave(shape: &[usize], seed: f32, amplitude: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| ((i as f32 + seed) * 0.37).sin() * amplitude)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// A LoRA file with a `lora_down`/`lora_up` pair (alpha = 2 × rank) of rank `rank` on each
/// `(module, in, out)`, keys prefixed `diffusion_model.`.
fn save_lora(dir: &Path, name: &str, layers: &[(String, usize, usize)], rank: usize) -> PathBuf {
    let mut tensors = HashMap::new();
    for (i, (module, in_dim, out_dim)) in layers.iter().enumerate() {
        let key = format!("diffusion_model.{module}");
        let seed = i as f32 * 7.0;
        tensors.insert(
            format!("{key}.lora_down.weight"),
            wave(&[rank, *in_dim], seed, 0.3),
        );
        tensors.insert(
            format!("{key}.lora_up.weight"),
            wave(&[*out_dim, rank], seed + 3.0, 0.3),
        );
        tensors.insert(
            format!("{key}.alpha"),
            Tensor::new(2.0 * rank as f32, &Device::Cpu).unwrap(),
        );
    }
    let path = dir.join(name);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    path
}

/// Every linear layer of a block (`blocks.N.…`) of a model of `cfg`: module, in, out.
fn block_linears(cfg: &Config) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    for b in 0..cfg.num_layers {
        for attn in ["self_attn", "cross_attn"] {
            for l in ["q", "k", "v", "o"] {
                out.push((format!("blocks.{b}.{attn}.{l}"), cfg.dim, cfg.dim));
            }
        }
        out.push((format!("blocks.{b}.ffn.0"), cfg.dim, cfg.ffn_dim));
        out.push((format!("blocks.{b}.ffn.2"), cfg.ffn_dim, cfg.dim));
    }
    out
}

fn load(path: &Path, case: &str, loras: &[LoraSpec], mode: LoraMode) -> WanModel {
    let config = case_config(case);
    let (model, reports) = WanModel::load_with_lora_mode(
        path,
        Some(&config),
        loras,
        mode,
        QuantizedMatmul::DequantizeAtUse,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    assert!(
        reports.iter().all(|r| r.merged > 0),
        "a LoRA matched nothing: {reports:?}"
    );
    model
}

/// The golden merge case (lora_down/up + alpha, lora_A/B, kohya `lora_unet_`, the patch
/// embedding's conv pair, diff and diff_b) on the fly, and a diffusers-layout LoRA
/// (`transformer.` prefix, peft `lora_A`/`lora_B`) stacked with a second LoRA on the same layers.
#[test]
fn on_the_fly_equals_the_merge_in_every_key_style() {
    let case = "files_dit_lora_merge";
    let path = golden(case).join("wan_t2v.safetensors");
    let spec = LoraSpec {
        path: golden(case).join("lora.safetensors"),
        strength: 0.8,
    };
    let merged = load(&path, case, std::slice::from_ref(&spec), LoraMode::Merge);
    let on_the_fly = load(&path, case, &[spec], LoraMode::OnTheFly);
    let (a, expected) = run_case(case, &merged);
    let (b, _) = run_case(case, &on_the_fly);
    let (vs_merge, vs_reference) = (rel_l2(&b, &a), rel_l2(&b, &expected));
    println!(
        "golden LoRA case on the fly: rel L2 {vs_merge:.2e} vs merged, {vs_reference:.2e} vs reference"
    );
    assert!(
        vs_merge < 1e-5 && vs_reference < 1e-4,
        "{vs_merge} {vs_reference}"
    );
    // Float32 weights: the merge keeps their size, on the fly adds the rank-4 factors of the
    // four pairs (q, ffn.0, cross-attention k, the patch embedding's 16·1·2·2 inputs).
    let cfg = case_config(case);
    let factors = 4
        * 4
        * [
            (cfg.dim, cfg.dim),
            (cfg.dim, cfg.ffn_dim),
            (cfg.dim, cfg.dim),
            (64, cfg.dim),
        ]
        .iter()
        .map(|(i, o)| i + o)
        .sum::<usize>();
    assert_eq!(
        on_the_fly.resident_bytes(),
        merged.resident_bytes() + factors
    );

    let dir = tempfile::tempdir().unwrap();
    let mut diffusers = HashMap::new();
    for (i, (module, in_dim, out_dim)) in [
        ("blocks.0.attn1.to_q", cfg.dim, cfg.dim),
        ("blocks.1.attn2.to_out.0", cfg.dim, cfg.dim),
        ("blocks.1.ffn.net.0.proj", cfg.dim, cfg.ffn_dim),
        ("proj_out", cfg.dim, 16 * 4),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = i as f32 * 5.0;
        diffusers.insert(
            format!("transformer.{module}.lora_A.weight"),
            wave(&[3, in_dim], seed, 0.3),
        );
        diffusers.insert(
            format!("transformer.{module}.lora_B.weight"),
            wave(&[out_dim, 3], seed + 1.0, 0.3),
        );
    }
    let diffusers_path = dir.path().join("diffusers.safetensors");
    candle_core::safetensors::save(&diffusers, &diffusers_path).unwrap();
    let layers = vec![
        ("blocks.0.self_attn.q".to_owned(), cfg.dim, cfg.dim),
        ("blocks.1.ffn.0".to_owned(), cfg.dim, cfg.ffn_dim),
    ];
    let second = save_lora(dir.path(), "second.safetensors", &layers, 2);
    let loras = [
        LoraSpec {
            path: diffusers_path,
            strength: 0.6,
        },
        LoraSpec {
            path: second,
            strength: -0.9,
        },
    ];
    let merged = load(&path, case, &loras, LoraMode::Merge);
    let on_the_fly = load(&path, case, &loras, LoraMode::OnTheFly);
    let plain = load(&path, case, &[], LoraMode::Merge);
    let (a, _) = run_case(case, &merged);
    let (b, _) = run_case(case, &on_the_fly);
    let (without, _) = run_case(case, &plain);
    let err = rel_l2(&b, &a);
    println!("diffusers-layout + stacked LoRAs on the fly: rel L2 {err:.2e} vs merged");
    assert!(err < 1e-5, "{err}");
    assert!(rel_l2(&a, &without) > 1e-2, "the LoRAs changed nothing");
}

/// Weights named and shaped by the model, every block's linear layers float8 with a scale of
/// their own (an fp8_scaled file).
fn fp8_weights(cfg: &Config) -> HashMap<String, Tensor> {
    fp8_scaled_weights(cfg, |shape, i| wave(shape.dims(), i as f32 * 11.0, 0.4))
}

fn tiny() -> Config {
    Config {
        model_type: super::ModelType::I2v,
        in_dim: 6,
        out_dim: 4,
        dim: 16,
        ffn_dim: 24,
        freq_dim: 8,
        text_dim: 12,
        text_len: 5,
        num_heads: 2,
        num_layers: 4,
        ..Config::t2v_a14b()
    }
}

/// `weights` with `loras` taken as `mode` says (float8 merges not requantized), `keep` blocks
/// resident (`None`: all).
fn build(
    cfg: &Config,
    weights: &HashMap<String, Tensor>,
    loras: &[LoraSpec],
    mode: LoraMode,
    keep: Option<usize>,
) -> WanModel {
    let names: HashSet<String> = weights.keys().cloned().collect();
    let mut deltas = LoraDeltas::default();
    for spec in loras {
        deltas.add(spec, &names).unwrap();
    }
    let backend: Box<dyn candle_nn::var_builder::SimpleBackend> = Box::new(weights.clone());
    let backend = if deltas.is_empty() {
        backend
    } else {
        deltas.wrap(backend, false, mode).0
    };
    let vb = VarBuilder::from_backend(backend, DType::F32, Device::Cpu);
    WanModel::new_streamed(cfg, &vb, keep).unwrap()
}

fn tiny_inputs() -> [Tensor; 4] {
    let dev = Device::Cpu;
    [
        wave(&[1, 4, 2, 2, 4], 0.0, 1.0),
        wave(&[1, 2, 2, 2, 4], 1.0, 1.0),
        Tensor::new(&[700_i64], &dev).unwrap(),
        wave(&[1, 3, 12], 2.0, 1.0),
    ]
}

fn forward(model: &WanModel) -> Tensor {
    let [x, y, t, context] = tiny_inputs();
    model.forward(&x, Some(&y), &t, &context).unwrap()
}

/// Float8 layers keep their float8 weights and carry the factors; with block swapping the
/// factors stream with their block (through both slots, parked and restored in between).
#[test]
fn float8_layers_keep_float8_weights_and_the_factors_stream_with_their_block() {
    let cfg = tiny();
    let weights = fp8_weights(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let rank = 4;
    let spec = LoraSpec {
        path: save_lora(dir.path(), "all.safetensors", &block_linears(&cfg), rank),
        strength: 0.7,
    };
    let loras = std::slice::from_ref(&spec);
    let merged = build(&cfg, &weights, loras, LoraMode::Merge, None);
    let auto = build(&cfg, &weights, loras, LoraMode::Auto, None);
    let plain = build(&cfg, &weights, &[], LoraMode::Auto, None);
    let expected = forward(&merged);
    let out = forward(&auto);
    let err = rel_l2(&out, &expected);
    println!("fp8_scaled, LoRA on every block layer on the fly: rel L2 {err:.2e} vs merged");
    assert!(err < 1e-5, "{err}");
    assert!(rel_l2(&expected, &forward(&plain)) > 1e-2);

    // Memory: the float8 weights as stored plus the float32 factors, nothing merged.
    let factors: usize = block_linears(&cfg)
        .iter()
        .map(|(_, i, o)| rank * (i + o) * 4)
        .sum();
    assert_eq!(auto.resident_bytes(), plain.resident_bytes() + factors);
    let float8_weights: usize = block_linears(&cfg).iter().map(|(_, i, o)| i * o).sum();
    // Merged, every float8 weight is float32: three more bytes a value.
    assert_eq!(
        merged.resident_bytes(),
        plain.resident_bytes() + 3 * float8_weights
    );

    for keep in [0, 1, 3] {
        let streamed = build(&cfg, &weights, loras, LoraMode::Auto, Some(keep));
        assert_eq!(streamed.streamed_blocks().0, cfg.num_layers - keep);
        let streamed = streamed.park().unwrap().restore().unwrap();
        for _ in 0..2 {
            let diff = (forward(&streamed) - &out)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(diff, 0.0, "{keep} resident blocks");
        }
    }
}

/// With the FP8 GEMM on, the float8 product runs on e4m3 inputs and the factors' product is
/// added to it: the output stays as close to the exact merge as the FP8 product alone is to
/// the dequantized one, where dropping the LoRA would be far off.
#[test]
fn the_fp8_matmul_path_adds_the_factors() {
    let cfg = tiny();
    let weights = fp8_weights(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let spec = LoraSpec {
        path: save_lora(dir.path(), "all.safetensors", &block_linears(&cfg), 4),
        strength: 0.7,
    };
    let loras = std::slice::from_ref(&spec);
    let fp8 = Kernels::cpu().with_fp8_matmul(true);
    let merged = forward(&build(&cfg, &weights, loras, LoraMode::Merge, None));
    let plain = build(&cfg, &weights, &[], LoraMode::Auto, None);
    let plain_error = rel_l2(
        &forward(&plain.clone().with_kernels(fp8.clone())),
        &forward(&plain),
    );
    let auto = build(&cfg, &weights, loras, LoraMode::Auto, None).with_kernels(fp8.clone());
    let err = rel_l2(&forward(&auto), &merged);
    let without = rel_l2(&forward(&plain.with_kernels(fp8)), &merged);
    println!(
        "FP8 GEMM + LoRA on the fly vs exact merge: rel L2 {err:.2e} (FP8 GEMM alone {plain_error:.2e}; LoRA dropped {without:.2e})"
    );
    assert!(
        err > 1e-6 && err < 4.0 * plain_error,
        "{err} vs {plain_error}"
    );
    assert!(without > 5.0 * err, "{without} vs {err}");

    // One layer, exactly: the FP8 reference product plus x·downᵀ·upᵀ·scale.
    let names: HashSet<String> = weights.keys().cloned().collect();
    let mut deltas = LoraDeltas::default();
    deltas.add(&spec, &names).unwrap();
    let (backend, placement) = deltas.wrap(Box::new(weights.clone()), false, LoraMode::Auto);
    assert_eq!(placement.on_the_fly, block_linears(&cfg).len());
    let vb = VarBuilder::from_backend(backend, DType::F32, Device::Cpu);
    let lin = Lin::new(cfg.dim, cfg.ffn_dim, &vb.pp("blocks.1.ffn.0")).unwrap();
    assert!(lin.has_lora_side_car());
    assert_eq!(lin.stored_dtype(), DType::F8E4M3);
    let x = wave(&[1, 5, cfg.dim], 4.0, 1.0);
    let y = lin
        .forward(&Kernels::cpu().with_fp8_matmul(true), &x)
        .unwrap();
    let lora = candle_core::safetensors::load(&spec.path, &Device::Cpu).unwrap();
    let down = &lora["diffusion_model.blocks.1.ffn.0.lora_down.weight"];
    let up = &lora["diffusion_model.blocks.1.ffn.0.lora_up.weight"];
    let scale = weights["blocks.1.ffn.0.scale_weight"]
        .to_scalar::<f32>()
        .unwrap();
    let weight = stillmotion_kernels::linear::Fp8Weight {
        weight: &weights["blocks.1.ffn.0.weight"],
        scale: f64::from(scale),
        input_scale: None,
    };
    let base = stillmotion_kernels::linear::linear_fp8_reference(
        &x,
        weight,
        Some(&weights["blocks.1.ffn.0.bias"]),
        stillmotion_kernels::linear::Epilogue::None,
        DType::F32,
    )
    .unwrap();
    let x2 = x.reshape((5, cfg.dim)).unwrap();
    let delta = x2
        .matmul(&down.t().unwrap())
        .unwrap()
        .matmul(&(up * (0.7 * 2.0)).unwrap().t().unwrap())
        .unwrap()
        .reshape((1, 5, cfg.ffn_dim))
        .unwrap();
    let expected = (base + delta).unwrap();
    assert!(rel_l2(&y, &expected) < 1e-6, "{}", rel_l2(&y, &expected));
}

/// GGUF layers keep their quantized blocks (storage and bytes of the file) and take the pairs
/// on the fly; the model's output equals the merge into the dequantized weights.
#[test]
fn gguf_layers_stay_quantized_and_match_the_merge() {
    let case = "files_dit_gguf_legacy_quants";
    let path = golden(case).join("wan_t2v_mixed.gguf");
    let cfg = case_config(case);
    let dir = tempfile::tempdir().unwrap();
    let layers = vec![
        ("blocks.0.self_attn.q".to_owned(), cfg.dim, cfg.dim),
        ("blocks.1.ffn.2".to_owned(), cfg.ffn_dim, cfg.dim),
        ("blocks.1.cross_attn.v".to_owned(), cfg.dim, cfg.dim),
    ];
    let lora_path = save_lora(dir.path(), "gguf.safetensors", &layers, 4);
    let mut with_diff = candle_core::safetensors::load(&lora_path, &Device::Cpu).unwrap();
    with_diff.insert(
        "diffusion_model.head.head.diff_b".to_owned(),
        wave(&[cfg.out_dim * 4], 5.0, 0.2),
    );
    candle_core::safetensors::save(&with_diff, &lora_path).unwrap();
    let spec = LoraSpec {
        path: lora_path,
        strength: 0.7,
    };
    let loras = std::slice::from_ref(&spec);
    let merged = load(&path, case, loras, LoraMode::Merge);
    let auto = load(&path, case, loras, LoraMode::Auto);
    let (a, without) = run_case(case, &merged);
    let (b, _) = run_case(case, &auto);
    let err = rel_l2(&b, &a);
    println!("GGUF + LoRA on the fly: rel L2 {err:.2e} vs merged into the dequantized weights");
    assert!(err < 1e-5, "{err}");
    assert!(rel_l2(&a, &without) > 1e-2, "the LoRA changed nothing");

    // The layers themselves: blocks as the file stores them, plus the factors.
    let gguf = GgufFile::open(&path).unwrap();
    let header = gguf.header();
    let names: HashMap<String, String> = gguf
        .shapes()
        .keys()
        .map(|k| (k.clone(), k.clone()))
        .collect();
    let model_names: HashSet<String> = names.keys().cloned().collect();
    for (mode, on_the_fly) in [(LoraMode::Auto, true), (LoraMode::Merge, false)] {
        let mut deltas = LoraDeltas::default();
        deltas.add(&spec, &model_names).unwrap();
        let backend = GgufFile::open(&path)
            .unwrap()
            .into_backend(names.clone(), QuantizedMatmul::DequantizeAtUse);
        let (backend, placement) = deltas.wrap(backend, false, mode);
        assert_eq!(placement.on_the_fly, if on_the_fly { 3 } else { 0 });
        assert_eq!(placement.merged, if on_the_fly { 1 } else { 4 });
        let vb = VarBuilder::from_backend(backend, DType::BF16, Device::Cpu);
        for (module, in_dim, out_dim) in &layers {
            let lin = Lin::new(*in_dim, *out_dim, &vb.pp(module)).unwrap();
            let stored = &header.tensors[&format!("{module}.weight")];
            assert_eq!(lin.has_lora_side_car(), on_the_fly, "{module}");
            if on_the_fly {
                assert!(stored.dtype.starts_with('Q'), "{module}: {}", stored.dtype);
                assert_eq!(lin.stored_dtype(), DType::U8, "{module}");
                assert_eq!(lin.weight_bytes() as u64, stored.bytes, "{module}");
            } else {
                // Merged: dequantized to bf16, two bytes a value.
                assert_eq!(lin.stored_dtype(), DType::BF16, "{module}");
                assert_eq!(lin.weight_bytes(), in_dim * out_dim * 2, "{module}");
            }
        }
    }
}

/// A weight read by something other than a linear layer (no side-car read first) still comes
/// back merged: the LoRA is never dropped.
#[test]
fn a_weight_read_without_its_side_car_comes_back_merged() {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let layers = vec![("a".to_owned(), 2, 2)];
    let spec = LoraSpec {
        path: save_lora(dir.path(), "a.safetensors", &layers, 1),
        strength: 1.0,
    };
    let weights = HashMap::from([
        (
            "a.weight".to_owned(),
            Tensor::zeros((2, 2), DType::F32, &dev).unwrap(),
        ),
        (
            "a.bias".to_owned(),
            Tensor::zeros(2, DType::F32, &dev).unwrap(),
        ),
    ]);
    let names: HashSet<String> = weights.keys().cloned().collect();
    let mut deltas = LoraDeltas::default();
    deltas.add(&spec, &names).unwrap();
    let (backend, _) = deltas.wrap(Box::new(weights), false, LoraMode::OnTheFly);
    let sum = |t: Tensor| {
        t.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let down = format!("a.{}", super::lora_side::DOWN);
    assert!(backend.contains_tensor(&down));
    assert!(sum(backend.get_unchecked("a.weight", DType::F32, &dev).unwrap()) > 0.0);
    let down = backend.get_unchecked(&down, DType::F32, &dev).unwrap();
    assert_eq!(down.dims(), [1, 2]);
    assert_eq!(
        sum(backend.get_unchecked("a.weight", DType::F32, &dev).unwrap()),
        0.0
    );
}
