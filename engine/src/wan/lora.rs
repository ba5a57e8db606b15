//! LoRA files for the DiT, merged into the weights at load.
//!
//! Key formats: `lora_down`/`lora_up` with an optional `alpha` (kohya, ComfyUI), `lora_A`/
//! `lora_B` (peft, diffusers), and full deltas `diff` (weight) / `diff_b` (bias) / `diff_m` (a
//! block's or the head's modulation, as LightX2V's distilled LoRAs carry it); module paths
//! with the `diffusion_model.`, `model.diffusion_model.`, `transformer.` or `lora_unet_`
//! (underscored path) prefix, in the original or diffusers layout. A low-rank pair adds
//! `strength × alpha / rank × up @ down` to the weight (alpha defaults to the rank), a diff adds
//! `strength × diff`. Keys that match nothing are reported by class, never silently dropped.
//!
//! A float8 (`fp8_scaled`) layer is merged on its true weight (stored × scale), then either
//! kept in the compute dtype or, when requantizing (see [`super::lora_requant`]), rounded
//! stochastically back to float8 e4m3 with the layer's own scale. The merge runs on the load's
//! device, the float8 weight and the factors uploaded as they are (also for blocks that stream
//! from host memory): on the CPU it took about 168 s an A14B expert on a 2-core machine;
//! `stillmotion-bench parity` times one layer on the GPU.
//!
//! Where [`LoraMode`] says so, a weight's low-rank pairs are not merged: the backend offers
//! them stacked as the layer's side-car tensors ([`super::lora_side`]) and hands the weight
//! back as stored, once the layer has read those. A weight with a full `diff` is always merged.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use stillmotion_kernels::Kernels;

use super::lora_mode::{LayerStorage, LoraMode};
use super::lora_side;
use super::weights::{Layout, detect_layout, rename};
use crate::EngineError;
use crate::gguf::GGML_TYPE_SUFFIX;

/// One LoRA file and how strongly to apply it (strength is per expert: pass each expert its own).
#[derive(Clone, Debug, PartialEq)]
pub struct LoraSpec {
    pub path: PathBuf,
    pub strength: f64,
}

/// What a LoRA file did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoraReport {
    /// Model tensors changed.
    pub merged: usize,
    /// Unused keys by reason.
    pub unmatched: BTreeMap<&'static str, Vec<String>>,
}

enum Delta {
    LowRank {
        up: Tensor,
        down: Tensor,
        scale: f64,
    },
    Full {
        diff: Tensor,
        scale: f64,
    },
}

const SUFFIXES: [&str; 8] = [
    ".lora_down.weight",
    ".lora_up.weight",
    ".lora_A.weight",
    ".lora_B.weight",
    ".alpha",
    ".diff_b",
    // LightX2V's full delta of a block's (or the head's) modulation: `blocks.N.diff_m`.
    ".diff_m",
    ".diff",
];
const PREFIXES: [&str; 4] = [
    "model.diffusion_model.",
    "diffusion_model.",
    "transformer.",
    "lora_unet_",
];

const NO_LAYER: &str = "no such layer in the model";
const WAN21_IMAGE_BRANCH: &str =
    "k_img/v_img: this is a Wan2.1 I2V LoRA, and Wan2.2 has no CLIP image branch";
const TEXT_ENCODER: &str =
    "text encoder: the LoRA also trains a text encoder, which it is not applied to";

/// The class of a key that names no layer of the model, for the report.
fn no_layer_class(key: &str) -> &'static str {
    if ["k_img", "v_img", "img_emb"]
        .iter()
        .any(|p| key.contains(p))
    {
        WAN21_IMAGE_BRANCH
    } else if key.starts_with("lora_te") || key.contains("text_encoder") {
        TEXT_ENCODER
    } else {
        NO_LAYER
    }
}
const UNKNOWN_KIND: &str = "not a LoRA key (unknown suffix)";
const INCOMPLETE: &str = "half of a low-rank pair (up or down missing)";

/// Deltas per model tensor name, read from LoRA files.
#[derive(Default)]
pub(super) struct LoraDeltas(HashMap<String, Vec<Delta>>);

impl LoraDeltas {
    /// Reads `spec` and matches its keys against `model_names` (the model's tensor names).
    pub(super) fn add(
        &mut self,
        spec: &LoraSpec,
        model_names: &HashSet<String>,
    ) -> Result<LoraReport, EngineError> {
        crate::weights::read_header(&spec.path)?;
        let tensors = candle_core::safetensors::load(&spec.path, &Device::Cpu)?;
        let mut report = LoraReport::default();
        let matcher = KeyMatcher::new(model_names, tensors.keys().map(String::as_str));

        // module → (kind → tensor)
        let mut groups: BTreeMap<String, BTreeMap<&str, (String, Tensor)>> = BTreeMap::new();
        for (key, tensor) in tensors {
            let Some((kind, target)) = matcher.target(&key) else {
                report.unmatched.entry(UNKNOWN_KIND).or_default().push(key);
                continue;
            };
            match target {
                Some(t) if model_names.contains(&t) => {
                    groups
                        .entry(t)
                        .or_default()
                        .insert(kind, (key, tensor.to_dtype(DType::F32)?));
                }
                _ => report
                    .unmatched
                    .entry(no_layer_class(&key))
                    .or_default()
                    .push(key),
            }
        }
        for (target, mut parts) in groups {
            let mut deltas = Vec::new();
            if let Some((_, diff)) = parts
                .remove(".diff")
                .or_else(|| parts.remove(".diff_b"))
                .or_else(|| parts.remove(".diff_m"))
            {
                deltas.push(Delta::Full {
                    diff,
                    scale: spec.strength,
                });
            }
            let up = parts
                .remove(".lora_up.weight")
                .or_else(|| parts.remove(".lora_B.weight"));
            let down = parts
                .remove(".lora_down.weight")
                .or_else(|| parts.remove(".lora_A.weight"));
            let alpha = parts.remove(".alpha");
            match (up, down) {
                (Some((_, up)), Some((_, down))) => {
                    let rank = down.dim(0)?;
                    let alpha = match alpha {
                        Some((_, a)) => f64::from(
                            a.flatten_all()?
                                .to_vec1::<f32>()?
                                .first()
                                .copied()
                                .unwrap_or(0.0),
                        ),
                        None => rank as f64,
                    };
                    deltas.push(Delta::LowRank {
                        up,
                        down,
                        scale: spec.strength * alpha / rank as f64,
                    });
                }
                (None, None) => {
                    if let Some((key, _)) = alpha {
                        report.unmatched.entry(INCOMPLETE).or_default().push(key);
                    }
                }
                (Some((key, _)), None) | (None, Some((key, _))) => {
                    report.unmatched.entry(INCOMPLETE).or_default().push(key);
                }
            }
            // Anything left is a second spelling of a part already taken.
            for (_, (key, _)) in parts {
                report.unmatched.entry(UNKNOWN_KIND).or_default().push(key);
            }
            if !deltas.is_empty() {
                report.merged += 1;
                self.0.entry(target).or_default().extend(deltas);
            }
        }
        Ok(report)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// [`Self::wrap_for`] a load on the CPU.
    #[cfg(test)]
    pub(super) fn wrap(
        self,
        inner: Box<dyn SimpleBackend>,
        requantize: bool,
        mode: LoraMode,
    ) -> (Box<dyn SimpleBackend>, LoraPlacement) {
        self.wrap_for(inner, requantize, mode, &Device::Cpu)
    }

    /// Wraps a weights backend so that tensors with deltas come back merged; with
    /// `requantize`, merged float8 layers come back as float8 (see [`super::lora_requant`]);
    /// low-rank pairs that `mode` puts on the fly come as side-car tensors instead. Returns
    /// how many weights take their pairs on the fly and how many tensors are merged.
    /// `device` is the load's: a float8 layer to requantize that is read into host memory (a
    /// block that streams) still merges and rounds there when it is a GPU, and only its float8
    /// codes come back.
    pub(super) fn wrap_for(
        self,
        inner: Box<dyn SimpleBackend>,
        requantize: bool,
        mode: LoraMode,
        device: &Device,
    ) -> (Box<dyn SimpleBackend>, LoraPlacement) {
        let mut merged = Merged {
            inner,
            deltas: self.0,
            requantize,
            on_the_fly: HashSet::new(),
            taken: Mutex::default(),
            kernels: Mutex::default(),
            device: device.clone(),
        };
        merged.on_the_fly = merged
            .deltas
            .iter()
            .filter(|(name, deltas)| {
                let low_rank_only = deltas.iter().all(|d| matches!(d, Delta::LowRank { .. }));
                low_rank_only
                    && name.ends_with(".weight")
                    && mode.on_the_fly(merged.storage(name), requantize)
            })
            .map(|(name, _)| name.clone())
            .collect();
        let placement = LoraPlacement {
            mode,
            on_the_fly: merged.on_the_fly.len(),
            merged: merged.deltas.len() - merged.on_the_fly.len(),
        };
        (Box::new(merged), placement)
    }
}

/// Where a load put its LoRAs' deltas (see [`LoraMode`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoraPlacement {
    pub mode: LoraMode,
    /// Weights whose low-rank pairs are applied on the fly (when a linear layer reads them).
    pub on_the_fly: usize,
    /// Tensors merged at load.
    pub merged: usize,
}

/// `names` of `model` (tensors under the model's original names, a float8 layer with its
/// `scale_weight`; each a tensor the LoRAs change) with `loras` merged as a load on `device`
/// merges them (every low-rank pair merged; see [`LoraDeltas::wrap_for`]), each "as stored": a
/// float8 layer float8 when `requantize`, else its float32 merge still divided by the scale;
/// other tensors float32.
/// For parity checks (`stillmotion-bench parity`) and tests: the device's merge against the
/// CPU's. `kernels` are `device`'s (a load loads them itself at its first float8 merge); the
/// tensors are read onto `read_on`: `device`, or the CPU as for a block that streams.
pub fn merge_weights<S: std::hash::BuildHasher>(
    model: HashMap<String, Tensor, S>,
    loras: &[LoraSpec],
    names: &[&str],
    requantize: bool,
    (device, kernels, read_on): (&Device, &Kernels, &Device),
) -> Result<Vec<Tensor>, EngineError> {
    let model: HashMap<String, Tensor> = model.into_iter().collect();
    let model_names = model.keys().cloned().collect();
    let mut deltas = LoraDeltas::default();
    for spec in loras {
        deltas.add(spec, &model_names)?;
    }
    let backend = Merged {
        inner: Box::new(model),
        deltas: deltas.0,
        requantize,
        on_the_fly: HashSet::new(),
        taken: Mutex::default(),
        kernels: Mutex::new(Some(kernels.clone())),
        device: device.clone(),
    };
    names
        .iter()
        .map(|name| Ok(backend.get_unchecked(name, DType::F8E4M3, read_on)?))
        .collect()
}

/// Maps LoRA keys to the model tensors they change, as [`LoraDeltas::add`] merges them.
struct KeyMatcher {
    /// kohya's underscored module path → the model's dotted one.
    underscored: HashMap<String, String>,
    layout: Layout,
}

impl KeyMatcher {
    fn new<'a, S: std::hash::BuildHasher>(
        model_names: &HashSet<String, S>,
        keys: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let underscored = model_names
            .iter()
            .filter_map(|n| n.rsplit_once('.').map(|(m, _)| m))
            .map(|m| (m.replace('.', "_"), m.to_owned()))
            .collect();
        let layout = detect_layout(keys.into_iter().map(|k| strip(k).0));
        Self {
            underscored,
            layout,
        }
    }

    /// The key's kind (suffix) and the model tensor it would change (`None`: no module of
    /// that name), or `None` when the suffix is no LoRA kind.
    fn target(&self, key: &str) -> Option<(&'static str, Option<String>)> {
        let kind = SUFFIXES.iter().find(|s| key.ends_with(*s))?;
        let (body, kohya) = strip(&key[..key.len() - kind.len()]);
        let module = if kohya {
            self.underscored.get(body).cloned()
        } else {
            Some(match self.layout {
                Layout::Original => body.to_owned(),
                Layout::Diffusers => rename(body, Layout::Diffusers),
            })
        };
        let target = module.map(|m| {
            let param = match *kind {
                ".diff_b" => "bias",
                ".diff_m" => "modulation",
                _ => "weight",
            };
            format!("{m}.{param}")
        });
        Some((kind, target))
    }
}

/// The model tensors (of `model_names`, the original layout) that the LoRA file at `path`
/// changes, from its header alone: what the memory plan needs to know (a float8 layer a LoRA
/// changes is kept in the model dtype).
pub fn changed_tensors<S: std::hash::BuildHasher>(
    path: &std::path::Path,
    model_names: &HashSet<String, S>,
) -> Result<HashSet<String>, EngineError> {
    let header = crate::weights::read_header(path)?;
    let matcher = KeyMatcher::new(model_names, header.tensors.keys().map(String::as_str));
    Ok(header
        .tensors
        .keys()
        .filter_map(|key| match matcher.target(key)? {
            // An alpha alone changes nothing; its pair names the layer.
            (".alpha", _) => None,
            (_, target) => target,
        })
        .filter(|target| model_names.contains(target))
        .collect())
}

/// Per model weight (of `model_names`) that the LoRA file at `path` gives low-rank pairs and
/// no full `diff`: the pairs' element count (`rank·(in + out)`), from the header alone. What a
/// layer carries when its pairs are applied on the fly (see [`super::LoraMode`]).
pub fn low_rank_elements<S: std::hash::BuildHasher>(
    path: &std::path::Path,
    model_names: &HashSet<String, S>,
) -> Result<HashMap<String, u64>, EngineError> {
    let header = crate::weights::read_header(path)?;
    let matcher = KeyMatcher::new(model_names, header.tensors.keys().map(String::as_str));
    let mut elements: HashMap<String, u64> = HashMap::new();
    let mut full = HashSet::new();
    for (key, entry) in &header.tensors {
        let Some((kind, Some(target))) = matcher.target(key) else {
            continue;
        };
        if !model_names.contains(&target) {
            continue;
        }
        match kind {
            ".alpha" => {}
            ".diff" | ".diff_b" | ".diff_m" => {
                full.insert(target);
            }
            _ => {
                let n = entry.shape.iter().product::<usize>() as u64;
                *elements.entry(target).or_default() += n;
            }
        }
    }
    elements.retain(|target, _| !full.contains(target));
    Ok(elements)
}

/// Splits the prefix off a LoRA module path; `true` when it is kohya's underscored form.
fn strip(key: &str) -> (&str, bool) {
    for p in PREFIXES {
        if let Some(rest) = key.strip_prefix(p) {
            return (rest, p == "lora_unet_");
        }
    }
    (key, false)
}

struct Merged {
    inner: Box<dyn SimpleBackend>,
    deltas: HashMap<String, Vec<Delta>>,
    /// Float8 layers come back as float8 (stochastically rounded), not float32.
    requantize: bool,
    /// Weights whose low-rank pairs are offered as side-car tensors.
    on_the_fly: HashSet<String>,
    /// Those of them whose layer has read the side-car: they come back unmerged.
    taken: Mutex<HashSet<String>>,
    /// The CUDA device's kernels, loaded at the first merge there.
    kernels: Mutex<Option<Kernels>>,
    /// The load's device, where float8 layers read into host memory merge when requantizing.
    device: Device,
}

/// Float8 per-tensor scale names (as `super::linear` reads them).
const SCALE_NAMES: [&str; 2] = ["scale_weight", "weight_scale"];

impl Merged {
    /// How the inner backend stores the weight `name`.
    fn storage(&self, name: &str) -> LayerStorage {
        let module = name.strip_suffix(".weight").unwrap_or(name);
        if self
            .inner
            .contains_tensor(&format!("{name}{GGML_TYPE_SUFFIX}"))
        {
            LayerStorage::Gguf
        } else if SCALE_NAMES
            .iter()
            .any(|s| self.inner.contains_tensor(&format!("{module}.{s}")))
        {
            LayerStorage::Float8
        } else {
            LayerStorage::Plain
        }
    }

    /// The weight a side-car tensor name belongs to, and whether it is the down factor.
    fn side_car_of(name: &str) -> Option<(String, bool)> {
        [(lora_side::DOWN, true), (lora_side::UP, false)]
            .into_iter()
            .find_map(|(part, down)| {
                let module = name.strip_suffix(part)?.strip_suffix('.')?;
                Some((format!("{module}.weight"), down))
            })
    }

    /// The weight's low-rank pairs stacked along the rank: `down` `[R, in]`, or `up`
    /// `[out, R]` with each pair's scale folded in.
    fn side_car(
        &self,
        weight: &str,
        down: bool,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let parts = self.deltas[weight]
            .iter()
            .filter_map(|d| match d {
                Delta::LowRank { up, down: d, scale } => Some(if down {
                    d.flatten_from(1)
                } else {
                    up.flatten_from(1).and_then(|u| u.affine(*scale, 0.0))
                }),
                Delta::Full { .. } => None,
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let stacked = Tensor::cat(&parts, usize::from(!down))?;
        if down {
            self.taken
                .lock()
                .map_err(|_| candle_core::Error::Msg("LoRA side-car registry poisoned".into()))?
                .insert(weight.to_owned());
        }
        stacked.to_dtype(dtype)?.to_device(dev)
    }

    /// Whether `name` is a weight whose layer took its pairs on the fly.
    fn unmerged(&self, name: &str) -> bool {
        self.on_the_fly.contains(name) && self.taken.lock().is_ok_and(|taken| taken.contains(name))
    }

    /// The kernels that merge on `dev`: the CPU's, or the CUDA device's (loaded once).
    fn kernels(&self, dev: &Device) -> candle_core::Result<Kernels> {
        if !dev.is_cuda() {
            return Ok(Kernels::cpu());
        }
        let mut kernels = self
            .kernels
            .lock()
            .map_err(|_| candle_core::Error::Msg("LoRA kernels poisoned".into()))?;
        if let Some(kernels) = &*kernels {
            return Ok(kernels.clone());
        }
        let loaded = Kernels::for_device(dev, &crate::device::kernel_options())
            .map_err(candle_core::Error::wrap)?;
        *kernels = Some(loaded.clone());
        Ok(loaded)
    }

    /// The merged tensor, float32 on `dev`, divided by the layer's scale when it is a float8
    /// layer (then `true`). Every step is an elementwise candle op or one matmul per pair,
    /// the same on every device; only the matmul's summation order may differ between them.
    fn merge(
        &self,
        name: &str,
        deltas: &[Delta],
        dev: &Device,
    ) -> candle_core::Result<(Tensor, bool)> {
        // A float8 layer's stored values are weight / scale: merge on the true weight.
        let module = name.rsplit_once('.').map_or("", |(m, _)| m);
        let scale = match ["scale_weight", "weight_scale"]
            .iter()
            .map(|s| format!("{module}.{s}"))
            .find(|s| name.ends_with(".weight") && self.inner.contains_tensor(s))
        {
            Some(s) => {
                let v = self
                    .inner
                    .get_unchecked(&s, DType::F32, dev)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                v.first().map(|&x| f64::from(x))
            }
            None => None,
        };
        let mut w = if scale.is_some() {
            // Uploaded as stored (one byte a weight) and widened exactly by the kernels:
            // candle's CUDA casts from float8 fail.
            let stored = self.inner.get_unchecked(name, DType::F8E4M3, dev)?;
            if stored.dtype() == DType::F8E4M3 {
                stillmotion_kernels::fp8::dequantize(&self.kernels(dev)?, &stored, 1.0, DType::F32)
                    .map_err(candle_core::Error::wrap)?
            } else {
                stored.to_dtype(DType::F32)?
            }
        } else {
            self.inner.get_unchecked(name, DType::F32, dev)?
        };
        if let Some(scale) = scale {
            w = w.affine(scale, 0.0)?;
        }
        for delta in deltas {
            let d = match delta {
                // A modulation's diff may come flat (`[6, dim]` for `[1, 6, dim]`).
                Delta::Full { diff, scale } => diff
                    .to_device(dev)?
                    .reshape(w.shape())?
                    .affine(*scale, 0.0)?,
                Delta::LowRank { up, down, scale } => {
                    let up = up.to_device(dev)?.flatten_from(1)?;
                    let down = down.to_device(dev)?.flatten_from(1)?;
                    up.matmul(&down)?.reshape(w.shape())?.affine(*scale, 0.0)?
                }
            };
            w = (w + d)?;
        }
        if let Some(scale) = scale {
            w = w.affine(1.0 / scale, 0.0)?;
        }
        Ok((w, scale.is_some()))
    }

    /// The merged tensor in `dtype`. "As stored" ([`DType::F8E4M3`]) gets a float8 layer's
    /// values still divided by the scale: float8 when requantizing, else float32.
    fn merged(
        &self,
        name: &str,
        deltas: &[Delta],
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        // On the load's device, the rounding too: the merged float32 never crosses the bus.
        // A CUDA load's float8 bits may differ from a CPU load's in rare codes (see
        // `super::lora_requant`): cuBLAS may sum the factors' product in another order.
        let requantizing = dtype == DType::F8E4M3 && self.requantize;
        // A block that streams is read into host memory; on a CUDA load its float8 layers
        // still merge and round on the GPU, and only the codes come down.
        let on = if requantizing
            && dev.is_cpu()
            && self.device.is_cuda()
            && self.storage(name) == LayerStorage::Float8
        {
            &self.device
        } else {
            dev
        };
        let (t, scaled) = self.merge(name, deltas, on)?;
        match dtype {
            DType::F8E4M3 if scaled && requantizing => {
                super::lora_requant::requantize(&self.kernels(on)?, &t, name)
                    .map_err(candle_core::Error::wrap)?
                    .to_device(dev)
            }
            DType::F8E4M3 => t.to_device(dev),
            _ => t.to_dtype(dtype)?.to_device(dev),
        }
    }
}

impl SimpleBackend for Merged {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Some((weight, down)) = Self::side_car_of(name)
            && self.on_the_fly.contains(&weight)
        {
            return self.side_car(&weight, down, dtype, dev);
        }
        let Some(deltas) = self.deltas.get(name).filter(|_| !self.unmerged(name)) else {
            return self.inner.get(s, name, h, dtype, dev);
        };
        let t = self.merged(name, deltas, dtype, dev)?;
        if t.shape() != &s {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: s,
                got: t.shape().clone(),
            });
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if let Some((weight, down)) = Self::side_car_of(name)
            && self.on_the_fly.contains(&weight)
        {
            return self.side_car(&weight, down, dtype, dev);
        }
        let Some(deltas) = self.deltas.get(name).filter(|_| !self.unmerged(name)) else {
            return self.inner.get_unchecked(name, dtype, dev);
        };
        self.merged(name, deltas, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        if let Some((weight, _)) = Self::side_car_of(name) {
            return self.on_the_fly.contains(&weight);
        }
        // A GGUF weight a LoRA changes is merged dequantized: hide that it could stay quantized.
        if let Some(weight) = name.strip_suffix(GGML_TYPE_SUFFIX)
            && self.deltas.contains_key(weight)
            && !self.on_the_fly.contains(weight)
        {
            return false;
        }
        self.inner.contains_tensor(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_into_float8_layers_and_reports_unmatched_keys_by_class() {
        let dev = Device::Cpu;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lora.safetensors");
        let t = |v: &[f32], shape: &[usize]| Tensor::from_slice(v, shape, &dev).unwrap();
        let lora = HashMap::from([
            (
                "diffusion_model.a.lora_down.weight",
                t(&[1.0, 0.0], &[1, 2]),
            ),
            ("diffusion_model.a.lora_up.weight", t(&[1.0, 1.0], &[2, 1])),
            ("diffusion_model.a.alpha", t(&[1.0], &[])),
            ("diffusion_model.b.lora_up.weight", t(&[1.0], &[1, 1])),
            ("diffusion_model.a.dora_scale", t(&[1.0], &[1])),
            ("lora_unet_c.lora_down.weight", t(&[1.0, 1.0], &[1, 2])),
        ]);
        candle_core::safetensors::save(&lora, &path).unwrap();
        let model: HashMap<String, Tensor> = HashMap::from([
            (
                "a.weight".to_owned(),
                t(&[1.0, 2.0, 3.0, 4.0], &[2, 2])
                    .to_dtype(DType::F8E4M3)
                    .unwrap(),
            ),
            ("a.scale_weight".to_owned(), t(&[0.5], &[])),
            ("c.weight".to_owned(), t(&[0.0; 4], &[2, 2])),
        ]);
        let names = model.keys().cloned().collect();
        let mut deltas = LoraDeltas::default();
        let report = deltas
            .add(
                &LoraSpec {
                    path,
                    strength: 2.0,
                },
                &names,
            )
            .unwrap();
        assert_eq!(report.merged, 1);
        assert_eq!(
            report.unmatched[NO_LAYER],
            vec!["diffusion_model.b.lora_up.weight"]
        );
        assert_eq!(
            report.unmatched[UNKNOWN_KIND],
            vec!["diffusion_model.a.dora_scale"]
        );
        assert_eq!(
            report.unmatched[INCOMPLETE],
            vec!["lora_unet_c.lora_down.weight"]
        );

        let (merged, _) = deltas.wrap(Box::new(model), false, LoraMode::Merge);
        // As stored: (0.5 w + 2 · up @ down) / 0.5, ready for the layer's own scale.
        let raw = merged
            .get_unchecked("a.weight", DType::F8E4M3, &dev)
            .unwrap();
        assert_eq!(
            raw.to_vec2::<f32>().unwrap(),
            vec![vec![5.0, 2.0], vec![7.0, 4.0]]
        );
        // Requantizing, at strength 0.3 (merged values 1.6 and 3.6, off the e4m3 grid): the
        // float32 merge rounded stochastically to float8 with the key's stream.
        let mut deltas = LoraDeltas::default();
        let spec = LoraSpec {
            path: dir.path().join("lora.safetensors"),
            strength: 0.3,
        };
        deltas.add(&spec, &names).unwrap();
        let model: HashMap<String, Tensor> = HashMap::from([
            (
                "a.weight".to_owned(),
                t(&[1.0, 2.0, 3.0, 4.0], &[2, 2])
                    .to_dtype(DType::F8E4M3)
                    .unwrap(),
            ),
            ("a.scale_weight".to_owned(), t(&[0.5], &[])),
        ]);
        let (requantized, _) = deltas.wrap(Box::new(model), true, LoraMode::Auto);
        let raw = requantized
            .get_unchecked("a.weight", DType::F8E4M3, &dev)
            .unwrap();
        assert_eq!(raw.dtype(), DType::F8E4M3);
        // Other dtypes still get the float32 merge (divided by the scale).
        let merged_values = requantized
            .get_unchecked("a.weight", DType::F32, &dev)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!((merged_values[0] - 1.6).abs() < 1e-6, "{merged_values:?}");
        let expected = super::super::lora_requant::e4m3_values(
            &super::super::lora_requant::stochastic_round_e4m3(
                &merged_values,
                super::super::lora_requant::key_seed("a.weight"),
            ),
        );
        assert_eq!(
            raw.to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            expected
        );
        assert!([1.5, 1.625].contains(&expected[0]) && [3.5, 3.75].contains(&expected[2]));
        let untouched = merged.get_unchecked("c.weight", DType::F32, &dev).unwrap();
        assert_eq!(
            untouched.sum_all().unwrap().to_scalar::<f32>().unwrap(),
            0.0
        );
    }

    /// The merge as a load runs it (here on the CPU device, the same code a CUDA load runs with
    /// the device's kernels) against the documented formula written out: the float8 weight
    /// widened, times its scale, plus each LoRA's `strength · alpha / rank · up @ down` in file
    /// order, divided by the scale, rounded stochastically with the key's stream: bit for bit.
    #[test]
    fn merge_weights_gives_the_documented_formula_bit_for_bit() {
        use super::super::lora_requant::{key_seed, stochastic_round_e4m3};

        let dev = Device::Cpu;
        let dir = tempfile::tempdir().unwrap();
        let (out, inp, rank) = (24, 40, 3);
        let ramp = |n: usize, phase: f32, amp: f32| -> Vec<f32> {
            (0..n)
                .map(|i| (i as f32 * 0.77 + phase).sin() * amp)
                .collect()
        };
        let stored = Tensor::from_vec(ramp(out * inp, 0.0, 300.0), (out, inp), &dev)
            .unwrap()
            .to_dtype(DType::F8E4M3)
            .unwrap();
        let scale = 0.003_f32;
        let mut specs = Vec::new();
        let mut pairs = Vec::new();
        for (n, (strength, alpha)) in [(0.8, Some(2.0_f32)), (1.3, None)].into_iter().enumerate() {
            let down =
                Tensor::from_vec(ramp(rank * inp, n as f32, 0.05), (rank, inp), &dev).unwrap();
            let up = Tensor::from_vec(ramp(out * rank, 2.0 + n as f32, 0.07), (out, rank), &dev)
                .unwrap();
            let mut tensors = HashMap::from([
                (
                    "diffusion_model.l.lora_down.weight".to_owned(),
                    down.clone(),
                ),
                ("diffusion_model.l.lora_up.weight".to_owned(), up.clone()),
            ]);
            if let Some(a) = alpha {
                tensors.insert(
                    "diffusion_model.l.alpha".to_owned(),
                    Tensor::new(a, &dev).unwrap(),
                );
            }
            let path = dir.path().join(format!("lora{n}.safetensors"));
            candle_core::safetensors::save(&tensors, &path).unwrap();
            specs.push(LoraSpec { path, strength });
            let alpha = alpha.map_or(rank as f64, f64::from);
            pairs.push((up, down, strength * alpha / rank as f64));
        }
        let model = HashMap::from([
            ("l.weight".to_owned(), stored.clone()),
            (
                "l.scale_weight".to_owned(),
                Tensor::new(scale, &dev).unwrap(),
            ),
        ]);
        let on = (&dev, &Kernels::cpu(), &dev);
        let merged = merge_weights(model.clone(), &specs, &["l.weight"], true, on).unwrap();
        let exact = merge_weights(model, &specs, &["l.weight"], false, on).unwrap();

        let mut w = stored
            .to_dtype(DType::F32)
            .unwrap()
            .affine(f64::from(scale), 0.0)
            .unwrap();
        for (up, down, s) in &pairs {
            w = (w + up.matmul(down).unwrap().affine(*s, 0.0).unwrap()).unwrap();
        }
        let w = w.affine(1.0 / f64::from(scale), 0.0).unwrap();
        let values = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let bits = |t: &Tensor| -> Vec<u32> {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        assert_eq!(bits(&exact[0]), bits(&w));
        let codes = stochastic_round_e4m3(&values, key_seed("l.weight"));
        assert_eq!(merged[0].dtype(), DType::F8E4M3);
        let expected = Tensor::from_raw_buffer(&codes, DType::F8E4M3, &[out, inp], &dev).unwrap();
        assert_eq!(
            bits(&merged[0].to_dtype(DType::F32).unwrap()),
            bits(&expected.to_dtype(DType::F32).unwrap())
        );
        // The LoRAs moved the weights: some codes differ from the stored ones.
        let moved = bits(&merged[0].to_dtype(DType::F32).unwrap())
            .iter()
            .zip(bits(&stored.to_dtype(DType::F32).unwrap()))
            .filter(|(a, b)| **a != *b)
            .count();
        assert!(moved > out * inp / 20, "{moved}");
    }

    /// LightX2V's distilled LoRAs carry each block's modulation delta as `blocks.N.diff_m`
    /// (and the head's as `head.diff_m`): a full delta on the `modulation` parameter.
    #[test]
    fn diff_m_keys_merge_into_the_modulation_and_foreign_keys_are_reported_by_class() {
        let dev = Device::Cpu;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lora.safetensors");
        let ramp = |n: usize, shape: &[usize]| {
            let v: Vec<f32> = (0..n).map(|i| i as f32).collect();
            Tensor::from_vec(v, shape, &dev).unwrap()
        };
        candle_core::safetensors::save(
            &HashMap::from([
                ("diffusion_model.blocks.0.diff_m", ramp(12, &[1, 6, 2])),
                // Flat: reshaped to the parameter.
                ("lora_unet_head.diff_m", ramp(4, &[2, 2])),
                ("diffusion_model.blocks.1.diff_m", ramp(12, &[1, 6, 2])),
                // Keys of a Wan2.1 I2V LoRA and of a text encoder, reported by class.
                (
                    "diffusion_model.blocks.0.cross_attn.k_img.lora_up.weight",
                    ramp(2, &[2, 1]),
                ),
                ("diffusion_model.img_emb.proj.1.diff_b", ramp(2, &[2])),
                (
                    "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
                    ramp(2, &[1, 2]),
                ),
            ]),
            &path,
        )
        .unwrap();
        let model: HashMap<String, Tensor> = HashMap::from([
            ("blocks.0.modulation".to_owned(), ramp(12, &[1, 6, 2])),
            ("head.modulation".to_owned(), ramp(4, &[1, 2, 2])),
        ]);
        let names: HashSet<String> = model.keys().cloned().collect();
        let mut deltas = LoraDeltas::default();
        let spec = LoraSpec {
            path: path.clone(),
            strength: 0.5,
        };
        let report = deltas.add(&spec, &names).unwrap();
        assert_eq!(report.merged, 2);
        assert_eq!(
            report.unmatched[NO_LAYER],
            vec!["diffusion_model.blocks.1.diff_m"]
        );
        let mut image_branch = report.unmatched[WAN21_IMAGE_BRANCH].clone();
        image_branch.sort();
        assert_eq!(
            image_branch,
            vec![
                "diffusion_model.blocks.0.cross_attn.k_img.lora_up.weight",
                "diffusion_model.img_emb.proj.1.diff_b"
            ]
        );
        assert_eq!(
            report.unmatched[TEXT_ENCODER],
            vec!["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"]
        );
        let (merged, placement) = deltas.wrap(Box::new(model), false, LoraMode::OnTheFly);
        assert_eq!(
            (placement.merged, placement.on_the_fly),
            (2, 0),
            "full deltas merge"
        );
        let values = |name: &str| {
            merged
                .get_unchecked(name, DType::F32, &dev)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let expected = |n: usize| (0..n).map(|i| 1.5 * i as f32).collect::<Vec<_>>();
        assert_eq!(values("blocks.0.modulation"), expected(12));
        assert_eq!(values("head.modulation"), expected(4));
        // The memory plan sees a changed tensor and no low-rank factors.
        assert_eq!(
            changed_tensors(&path, &names).unwrap(),
            HashSet::from([
                "blocks.0.modulation".to_owned(),
                "head.modulation".to_owned()
            ])
        );
        assert!(low_rank_elements(&path, &names).unwrap().is_empty());
    }
}
