//! Random weights at a model's real shapes, in the original Wan key layout, generated on the
//! target device (no real Wan2.2 weights can be downloaded where the benchmark runs).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::var_builder::SimpleBackend;
use stillmotion_engine::wan::Config;

/// Every tensor of a Wan DiT with `cfg`'s shapes: weights ~ N(0, 0.02²), norm scales 1.
pub fn state_dict(
    cfg: &Config,
    device: &Device,
    dtype: DType,
    seed: u64,
) -> anyhow::Result<HashMap<String, Tensor>> {
    if device.is_cuda() {
        device.set_seed(seed)?;
    }
    let shapes = dit_shapes(cfg);
    let mut tensors = HashMap::with_capacity(shapes.len());
    for (name, shape) in shapes {
        let tensor = if name.contains("norm") && name.ends_with(".weight") {
            Tensor::ones(shape.as_slice(), dtype, device)?
        } else {
            (Tensor::randn(0f32, 0.02, shape.as_slice(), device)?).to_dtype(dtype)?
        };
        tensors.insert(name, tensor);
    }
    Ok(tensors)
}

/// The name and shape of every tensor of a Wan DiT with `cfg`, in the original key layout.
pub fn dit_shapes(cfg: &Config) -> Vec<(String, Vec<usize>)> {
    let (dim, ffn, [pt, ph, pw]) = (cfg.dim, cfg.ffn_dim, cfg.patch_size);
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        (
            "patch_embedding.weight".into(),
            vec![dim, cfg.in_dim, pt, ph, pw],
        ),
        ("patch_embedding.bias".into(), vec![dim]),
        ("text_embedding.0.weight".into(), vec![dim, cfg.text_dim]),
        ("text_embedding.0.bias".into(), vec![dim]),
        ("text_embedding.2.weight".into(), vec![dim, dim]),
        ("text_embedding.2.bias".into(), vec![dim]),
        ("time_embedding.0.weight".into(), vec![dim, cfg.freq_dim]),
        ("time_embedding.0.bias".into(), vec![dim]),
        ("time_embedding.2.weight".into(), vec![dim, dim]),
        ("time_embedding.2.bias".into(), vec![dim]),
        ("time_projection.1.weight".into(), vec![6 * dim, dim]),
        ("time_projection.1.bias".into(), vec![6 * dim]),
        (
            "head.head.weight".into(),
            vec![cfg.out_dim * pt * ph * pw, dim],
        ),
        ("head.head.bias".into(), vec![cfg.out_dim * pt * ph * pw]),
        ("head.modulation".into(), vec![1, 2, dim]),
    ];
    for i in 0..cfg.num_layers {
        let p = format!("blocks.{i}");
        for attn in ["self_attn", "cross_attn"] {
            for proj in ["q", "k", "v", "o"] {
                shapes.push((format!("{p}.{attn}.{proj}.weight"), vec![dim, dim]));
                shapes.push((format!("{p}.{attn}.{proj}.bias"), vec![dim]));
            }
            shapes.push((format!("{p}.{attn}.norm_q.weight"), vec![dim]));
            shapes.push((format!("{p}.{attn}.norm_k.weight"), vec![dim]));
        }
        shapes.push((format!("{p}.norm3.weight"), vec![dim]));
        shapes.push((format!("{p}.norm3.bias"), vec![dim]));
        shapes.push((format!("{p}.ffn.0.weight"), vec![ffn, dim]));
        shapes.push((format!("{p}.ffn.0.bias"), vec![ffn]));
        shapes.push((format!("{p}.ffn.2.weight"), vec![dim, ffn]));
        shapes.push((format!("{p}.ffn.2.bias"), vec![dim]));
        shapes.push((format!("{p}.modulation"), vec![1, 6, dim]));
    }
    shapes
}

/// A weight source that makes up every tensor a model asks for: N(0, 0.02²), or ones for
/// norm scales (`gamma`, `*norm*.weight`). Lets any model be built at its real shapes.
pub struct RandomBackend;

impl SimpleBackend for RandomBackend {
    fn get(
        &self,
        shape: candle_core::Shape,
        name: &str,
        _hints: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        if name.ends_with("gamma") || (name.contains("norm") && name.ends_with("weight")) {
            Tensor::ones(shape, dtype, device)
        } else {
            Tensor::randn(0f32, 0.02, shape, device)?.to_dtype(dtype)
        }
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _device: &Device,
    ) -> candle_core::Result<Tensor> {
        candle_core::bail!("random weights need a shape for {name}")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// Every tensor the Wan VAE with `cfg` asks for, random on the CPU (for GPU-vs-CPU parity).
pub fn state_dict_from(
    cfg: &stillmotion_engine::wan_vae::Config,
) -> anyhow::Result<HashMap<String, Tensor>> {
    let recorder = Recording::default();
    let vb =
        candle_nn::VarBuilder::from_backend(Box::new(recorder.clone()), DType::F32, Device::Cpu);
    stillmotion_engine::wan_vae::WanVae::new(cfg, &vb)?;
    let tensors = recorder
        .tensors
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    Ok(tensors.clone())
}

/// [`RandomBackend`] that keeps what it handed out.
#[derive(Clone, Default)]
struct Recording {
    tensors: std::sync::Arc<std::sync::Mutex<HashMap<String, Tensor>>>,
}

impl SimpleBackend for Recording {
    fn get(
        &self,
        shape: candle_core::Shape,
        name: &str,
        hints: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = RandomBackend.get(shape, name, hints, dtype, device)?;
        if let Ok(mut tensors) = self.tensors.lock() {
            tensors.insert(name.to_owned(), tensor.clone());
        }
        Ok(tensor)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        RandomBackend.get_unchecked(name, dtype, device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        RandomBackend.contains_tensor(name)
    }
}
