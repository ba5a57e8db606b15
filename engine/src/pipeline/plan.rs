//! The memory plan of a render job, from its recipe, its model files' headers and the device.

use candle_core::{DType, Device};

use std::path::{Path, PathBuf};

use super::models::{expert_loras, vae_config};
use crate::EngineError;
use crate::image_input::fit::{self, FitMode};
use crate::memory_plan::lora_choice::{AutoOptions, resolve_auto};
use crate::memory_plan::{
    ExpertLoras, ExpertSize, GIB, MemoryPlan, ModelSizes, PlanInputs, Tokens, VaeSize, sizes,
};
use crate::recipe::{ImageFit, Recipe};
use crate::sampling::Expert;
use crate::wan::{LoraLoad, LoraMode};

fn required<'a>(path: Option<&'a PathBuf>, field: &'static str) -> Result<&'a Path, EngineError> {
    path.map(PathBuf::as_path)
        .ok_or_else(|| EngineError::BadRecipe {
            field,
            problem: "is not set: choose the model file".to_owned(),
        })
}

/// A job's memory plan, and how each expert takes its LoRAs (resolved with it): the loader
/// gets the same choice the plan's sizes were read with.
#[derive(Clone, Debug)]
pub struct JobPlan {
    pub memory: MemoryPlan,
    pub loras: ExpertLoras,
}

/// The plan for `recipe` on `device` computing in `dtype`. On CUDA the budget is the device's
/// memory minus the recipe's reserve; on the CPU there is no budget (the plan only reports).
/// `budget_override` replaces the device's budget (tests). [`LoraMode::Auto`] is resolved here,
/// per expert, against that budget (`memory_plan::lora_choice`).
pub fn plan_for(
    recipe: &Recipe,
    device: &Device,
    dtype: DType,
    budget_override: Option<u64>,
) -> Result<JobPlan, EngineError> {
    let files = &super::resolve_model_files(&recipe.models, recipe.model)?;
    let vae = required(files.vae.as_ref(), "vae")?;
    let vae_cfg = vae_config(vae, recipe.model)?;
    let compute_bytes = dtype.size_in_bytes() as u64;
    let budget = budget_override.or_else(|| {
        crate::gpu_memory::of_device(device).map(|memory| {
            let reserve = (recipe.reserve_vram_gb * GIB as f64) as u64;
            memory.total_bytes.saturating_sub(reserve)
        })
    });
    let loras = [Expert::HighNoise, Expert::LowNoise].map(|expert| -> Vec<PathBuf> {
        expert_loras(recipe, expert)
            .into_iter()
            .map(|spec| spec.path)
            .collect()
    });
    let headers = [
        sizes::headers(required(files.high_noise.as_ref(), "high_noise")?)?,
        sizes::headers(required(files.low_noise.as_ref(), "low_noise")?)?,
    ];
    let requantize = recipe.lora_requantize.resolve(device);
    let expert_size = |index: usize, mode| {
        let lora = LoraLoad { mode, requantize };
        ExpertSize::of(&headers[index], &loras[index], compute_bytes, lora)
    };
    // Auto's two candidates; any other mode is taken as it is.
    let first = match recipe.lora_mode {
        LoraMode::Auto => LoraMode::QuantizedOnTheFly,
        mode => mode,
    };
    let sizes = [expert_size(0, first)?, expert_size(1, first)?];
    // The VAE runs in bf16 on CUDA, f32 on the CPU (`ModelCache::vae`): the DiT's compute dtype.
    let vae_bytes = compute_bytes;
    let model_sizes = ModelSizes::read(
        (&sizes[0], &sizes[1]),
        required(files.text_encoder.as_ref(), "text_encoder")?,
        (vae, VaeSize::from_config(&vae_cfg), vae_bytes),
        compute_bytes,
    )?;
    let stride = u32::try_from(vae_cfg.spatial_stride()).unwrap_or(8);
    let (width, height) = fitted_size(recipe)?;
    let mut inputs = PlanInputs {
        sizes: model_sizes,
        tokens: Tokens::new(recipe.num_frames, width, height, stride),
        activation_bytes: compute_bytes,
        // The 8-bit kernels run on the GPU only; the CPU ignores the choice.
        int8_attention: device.is_cuda() && recipe.attention == crate::recipe::AttentionMode::Int8,
        // Every CUDA attention backend (cuDNN, ours, the 8-bit kernels) is fused.
        fused_attention: device.is_cuda(),
    };
    let mut loras = if recipe.lora_mode == LoraMode::Auto {
        let options = [
            AutoOptions {
                merged: expert_size(0, LoraMode::Merge)?,
                on_the_fly: sizes[0],
            },
            AutoOptions {
                merged: expert_size(1, LoraMode::Merge)?,
                on_the_fly: sizes[1],
            },
        ];
        let (mut chosen, [high, low]) = resolve_auto(&inputs, options, requantize, budget);
        inputs.sizes = inputs.sizes.with_experts(&high, &low);
        for (expert, paths) in [Expert::HighNoise, Expert::LowNoise]
            .into_iter()
            .zip(&loras)
        {
            let lora = match expert {
                Expert::HighNoise => &mut chosen.high_noise,
                Expert::LowNoise => &mut chosen.low_noise,
            };
            if paths.is_empty() {
                lora.reason = None;
            }
            if let Some(reason) = &lora.reason {
                tracing::info!(?expert, mode = ?lora.load.mode, "{reason}");
            }
        }
        chosen
    } else {
        ExpertLoras::both(LoraLoad {
            mode: recipe.lora_mode,
            requantize,
        })
    };
    for (lora, size) in [&mut loras.high_noise, &mut loras.low_noise]
        .into_iter()
        .zip(&sizes)
    {
        // Only float8 layers are requantized: elsewhere the switch changes nothing loaded,
        // so it does not reach the model cache's key either.
        lora.load.requantize &= size.is_float8();
    }
    Ok(JobPlan {
        memory: MemoryPlan::decide(&inputs, budget)?,
        loras,
    })
}

/// Refuses, before anything loads, a model file whose header shows it is not what its slot
/// takes: another kind of model (a VAE given as the text encoder, a LoRA as an expert), a DiT
/// for another task (T2V's 16 input channels where the I2V-A14B experts take 36, TI2V-5B's 48)
/// or a Wan2.1 one (its CLIP image branch), a VAE of the other family (Wan2.2's 48 latent
/// channels for the A14B model, or the reverse), a truncated file. What a header does not tell
/// (a folder, a PyTorch pickle, an unknown layout) passes: the loaders name their own problems.
pub fn refuse_mismatched_files(recipe: &Recipe) -> Result<(), EngineError> {
    use crate::model_files::{Family, Role, fingerprint};
    let files = super::resolve_model_files(&recipe.models, recipe.model)?;
    let (model, dit_channels, vae_channels, vae_name) = match recipe.model {
        crate::preset::ModelFamily::Wan22I2vA14b => {
            ("Wan2.2 I2V-A14B", 36, 16, "the Wan2.1 VAE (wan_2.1_vae)")
        }
        crate::preset::ModelFamily::Wan22Ti2v5b => {
            ("Wan2.2 TI2V-5B", 48, 48, "the Wan2.2 VAE (wan2.2_vae)")
        }
    };
    let slots = [
        (
            files.high_noise.as_ref(),
            Role::DitExpert,
            "high-noise expert",
        ),
        (
            files.low_noise.as_ref(),
            Role::DitExpert,
            "low-noise expert",
        ),
        (
            files.text_encoder.as_ref(),
            Role::TextEncoder,
            "text encoder",
        ),
        (files.vae.as_ref(), Role::Vae, "VAE"),
    ];
    let loras = recipe
        .loras
        .iter()
        .map(|lora| (Some(&lora.path), Role::Lora, "LoRA"));
    for (path, role, slot) in slots.into_iter().chain(loras) {
        let Some(path) = path.filter(|p| p.is_file()) else {
            continue;
        };
        let fp = fingerprint(path)?;
        let refuse = |problem: String| EngineError::BadModelFile {
            problem,
            path: path.clone(),
        };
        let kind = |role: Role| match role {
            Role::DitExpert => "a diffusion transformer (DiT expert)",
            Role::TextEncoder => "a text encoder",
            Role::Vae => "a VAE",
            Role::Lora => "a LoRA",
            Role::Rife => "a RIFE interpolation model",
            Role::Unknown => "an unknown model",
        };
        if fp.role != Role::Unknown && fp.role != role {
            return Err(refuse(format!(
                "this file was given as the {slot} but it is {}: choose {} file for the {slot}",
                kind(fp.role),
                kind(role)
            )));
        }
        match role {
            Role::DitExpert if fp.family == Some(Family::Wan21) => {
                return Err(refuse(format!(
                    "this {slot} is a Wan2.1 model (it has a CLIP image branch): choose the {model} expert file"
                )));
            }
            // Only the released input widths count: a patch embedding stored flattened (a GGUF
            // without its original shape) tells no channel count.
            Role::DitExpert
                if fp
                    .channels
                    .is_some_and(|c| c != dit_channels && [16, 36, 48].contains(&c)) =>
            {
                let task = match fp.channels {
                    Some(16) => "a text-to-video (T2V) model, 16 input channels",
                    Some(48) => "a TI2V-5B model, 48 input channels",
                    _ => "an image-to-video model, 36 input channels",
                };
                return Err(refuse(format!(
                    "this {slot} is {task}, where {model} takes {dit_channels}: choose the {model} expert file"
                )));
            }
            Role::Vae
                if fp
                    .channels
                    .is_some_and(|c| c != vae_channels && [16, 48].contains(&c)) =>
            {
                let which = match fp.channels {
                    Some(48) => "the Wan2.2 (TI2V-5B) VAE, 48 latent channels",
                    _ => "the Wan2.1 VAE, 16 latent channels",
                };
                return Err(refuse(format!(
                    "this VAE is {which}, where {model} takes {vae_channels}: choose {vae_name}"
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The size the recipe's image is fitted to, from the image file's header (its dimensions and
/// EXIF orientation; no pixels decoded): the official fit keeps the image's aspect at about
/// the recipe's area, so the clip (and every activation) may be taller or wider than the
/// recipe's `width`×`height`.
fn fitted_size(recipe: &Recipe) -> Result<(u32, u32), EngineError> {
    let mode = match recipe.image_fit {
        ImageFit::CenterCrop => return Ok((recipe.width, recipe.height)),
        ImageFit::Official => FitMode::Wan {
            max_area: recipe.width * recipe.height,
        },
    };
    let (source_width, source_height) = image_dimensions(&recipe.image)?;
    let plan = fit::plan(mode, source_width, source_height)?;
    Ok((plan.width, plan.height))
}

/// The image's width and height as displayed (EXIF orientation applied), from its header.
fn image_dimensions(path: &Path) -> Result<(u32, u32), EngineError> {
    use image::ImageDecoder as _;
    use image::metadata::Orientation;
    let bad = |problem: String| EngineError::BadImage {
        problem,
        path: path.to_owned(),
    };
    let mut decoder = image::ImageReader::open(path)
        .map_err(|e| EngineError::io("reading image", path, e))?
        .with_guessed_format()
        .map_err(|e| EngineError::io("reading image", path, e))?
        .into_decoder()
        .map_err(|e| bad(format!("cannot read the image ({e})")))?;
    let (width, height) = decoder.dimensions();
    let orientation = decoder
        .orientation()
        .map_err(|e| bad(format!("cannot read the image's orientation ({e})")))?;
    let turned = matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    );
    Ok(if turned {
        (height, width)
    } else {
        (width, height)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preset;
    use crate::recipe::RecipeChoices;

    /// The tiny GGUF expert (Q8_0/Q4_0 blocks) as both experts, each with the case's LoRA.
    fn gguf_recipe() -> Recipe {
        quantized_recipe("files_dit_gguf_lora_on_the_fly", "wan_t2v_q8_q4.gguf")
    }

    /// The tiny quantized expert of golden `case` (`file`) as both experts, each with the
    /// case's LoRA (on float8 or GGUF layers).
    fn quantized_recipe(case: &str, file: &str) -> Recipe {
        let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden");
        let pipeline = golden.join("pipeline_i2v_official_tiny");
        let gguf = golden.join(case);
        let preset = preset::find("wan22-i2v-a14b-official-480p").unwrap();
        let mut recipe = Recipe::from_layers(&preset, RecipeChoices::default());
        recipe.models.high_noise = Some(gguf.join(file));
        recipe.models.low_noise = Some(gguf.join(file));
        recipe.models.text_encoder = Some(pipeline.join("umt5.safetensors"));
        recipe.models.vae = Some(pipeline.join("wan_2.1_vae.safetensors"));
        // One token: the on-the-fly layers' transient, which grows with the tokens, stays
        // below what merging the tiny layers adds.
        recipe.image_fit = ImageFit::CenterCrop;
        (recipe.width, recipe.height, recipe.num_frames) = (16, 16, 1);
        recipe.loras = vec![crate::recipe::LoraChoice {
            path: gguf.join("lora.safetensors"),
            strength_high_noise: 0.7,
            strength_low_noise: 0.7,
        }];
        recipe
    }

    #[test]
    fn auto_merges_a_quantized_expert_only_while_the_budget_keeps_the_plan() {
        for (case, file, storage) in [
            (
                "files_dit_gguf_lora_on_the_fly",
                "wan_t2v_q8_q4.gguf",
                "GGUF",
            ),
            (
                "files_dit_fp8_lora_on_the_fly",
                "wan_t2v_fp8_scaled.safetensors",
                "float8",
            ),
        ] {
            auto_merges_only_while_the_budget_keeps_the_plan(
                &quantized_recipe(case, file),
                storage,
            );
        }
    }

    fn auto_merges_only_while_the_budget_keeps_the_plan(recipe: &Recipe, storage: &str) {
        use crate::memory_plan::{DitPlacement, RUNTIME_OVERHEAD};
        assert_eq!(recipe.lora_mode, LoraMode::Auto);
        let plan = |budget| plan_for(recipe, &Device::Cpu, DType::F32, budget).unwrap();
        let modes = |plan: &JobPlan| {
            [
                plan.loras.high_noise.load.mode,
                plan.loras.low_noise.load.mode,
            ]
        };
        // No budget (the CPU): the quantized layers take the pairs on the fly, as before.
        let cpu = plan(None);
        assert_eq!(modes(&cpu), [LoraMode::QuantizedOnTheFly; 2]);
        let fly = cpu.memory.predicted;
        // Merged the quantized layers become f32: the experts grow.
        let merged = plan(Some(1 << 40));
        assert_eq!(modes(&merged), [LoraMode::Merge; 2]);
        let m = merged.memory.predicted;
        assert!(
            m.high_noise_weights > fly.high_noise_weights,
            "{m:?} {fly:?}"
        );
        // Exactly enough for both merged experts resident beside the rest (here the VAE's
        // whole-frame decode or encode beside them is the larger need), then one byte less.
        let both = m.high_noise_weights
            + m.low_noise_weights
            + RUNTIME_OVERHEAD
            + m.vae_weights
            + m.dit_activation_peak
                .max(m.vae_decode_peak)
                .max(m.vae_encode_peak);
        let just = plan(Some(both));
        assert_eq!(modes(&just), [LoraMode::Merge; 2]);
        assert_eq!(just.memory.dit, DitPlacement::BothResident);
        assert_eq!(just.memory.predicted.low_noise_weights, m.low_noise_weights);
        assert_eq!(just.memory.tokens.count, 1);
        let short = plan(Some(both - 1));
        assert_eq!(
            modes(&short),
            [LoraMode::Merge, LoraMode::QuantizedOnTheFly]
        );
        assert_eq!(short.memory.dit, DitPlacement::BothResident);
        assert_eq!(
            short.memory.predicted.high_noise_weights,
            m.high_noise_weights
        );
        assert_eq!(
            short.memory.predicted.low_noise_weights,
            fly.low_noise_weights
        );
        let reason = short.loras.low_noise.reason.as_deref().unwrap();
        assert!(
            reason.contains(&format!("({storage}) LoRA kept on the fly")),
            "{reason}"
        );
        // Requantizing float8 merges grows nothing: merged whatever the budget; GGUF has no
        // float8 layer, so its experts load (and are keyed) without the switch.
        let mut requantized = recipe.clone();
        requantized.lora_requantize = crate::wan::LoraRequantize::Always;
        let plan = plan_for(&requantized, &Device::Cpu, DType::F32, Some(both - 1)).unwrap();
        let gguf = storage == "GGUF";
        let expected = if gguf {
            [LoraMode::Merge, LoraMode::QuantizedOnTheFly]
        } else {
            [LoraMode::Merge; 2]
        };
        assert_eq!(modes(&plan), expected, "{storage}");
        assert_eq!(plan.loras.high_noise.load.requantize, !gguf, "{storage}");
        // A chosen mode is passed on as it is; no LoRAs, nothing to explain.
        let mut chosen = recipe.clone();
        chosen.lora_mode = LoraMode::OnTheFly;
        let plan = plan_for(&chosen, &Device::Cpu, DType::F32, Some(both)).unwrap();
        assert_eq!(modes(&plan), [LoraMode::OnTheFly; 2]);
        assert_eq!(plan.loras.high_noise.reason, None);
        chosen.lora_mode = LoraMode::Auto;
        chosen.loras.clear();
        let plan = plan_for(&chosen, &Device::Cpu, DType::F32, Some(both)).unwrap();
        assert_eq!(plan.loras.low_noise.reason, None);
    }

    #[test]
    fn each_expert_loads_the_way_the_plan_sized_it() {
        use super::super::ModelCache;
        let recipe = gguf_recipe();
        let budget = |plan: &JobPlan| {
            let m = &plan.memory.predicted;
            m.high_noise_weights
                + m.low_noise_weights
                + crate::memory_plan::RUNTIME_OVERHEAD
                + m.vae_weights
                + m.dit_activation_peak
                    .max(m.vae_decode_peak)
                    .max(m.vae_encode_peak)
                - 1
        };
        // The loader needs the head count beside the file (the plan reads headers only).
        let dir = tempfile::tempdir().unwrap();
        let gguf = dir.path().join("wan_t2v_q8_q4.gguf");
        std::fs::copy(recipe.models.high_noise.as_ref().unwrap(), &gguf).unwrap();
        std::fs::write(
            gguf.with_extension("json"),
            r#"{"model_type": "t2v", "patch_size": [1, 2, 2], "in_dim": 16, "out_dim": 16, "qk_norm": true, "cross_attn_norm": true, "dim": 64, "ffn_dim": 128, "freq_dim": 64, "text_dim": 64, "text_len": 16, "num_heads": 2, "num_layers": 2, "eps": 1e-06}"#,
        )
        .unwrap();
        let mut recipe = recipe;
        recipe.models.high_noise = Some(gguf.clone());
        recipe.models.low_noise = Some(gguf);
        let merged = plan_for(&recipe, &Device::Cpu, DType::F32, Some(1 << 40)).unwrap();
        let plan = plan_for(&recipe, &Device::Cpu, DType::F32, Some(budget(&merged))).unwrap();
        let mut cache = ModelCache::default();
        let mut loaded = Vec::new();
        for expert in [Expert::HighNoise, Expert::LowNoise] {
            let lora = plan.loras.get(expert).load;
            let model = cache
                .expert(&recipe, expert, (DType::F32, &Device::Cpu), (None, lora))
                .unwrap();
            loaded.push((lora.mode, model.resident_bytes() as u64));
        }
        assert_eq!(loaded[0].0, LoraMode::Merge);
        assert_eq!(loaded[1].0, LoraMode::QuantizedOnTheFly);
        assert!(loaded[0].1 > loaded[1].1, "{loaded:?}");
    }

    #[test]
    fn files_given_for_the_wrong_slot_or_model_are_refused_before_loading() {
        let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden");
        let tiny = golden.join("pipeline_i2v_official_tiny");
        let preset = preset::find("wan22-i2v-a14b-official-480p").unwrap();
        let mut recipe = Recipe::from_layers(&preset, RecipeChoices::default());
        recipe.models.high_noise = Some(tiny.join("high_noise.safetensors"));
        recipe.models.low_noise = Some(tiny.join("low_noise.safetensors"));
        recipe.models.text_encoder = Some(tiny.join("umt5.safetensors"));
        recipe.models.vae = Some(tiny.join("wan_2.1_vae.safetensors"));
        recipe.loras = vec![crate::recipe::LoraChoice {
            path: golden.join("files_dit_lora_merge/lora.safetensors"),
            strength_high_noise: 1.0,
            strength_low_noise: 1.0,
        }];
        refuse_mismatched_files(&recipe).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let wan21 = dir.path().join("wan21_i2v_14b.safetensors");
        crate::model_files::fingerprint::fake_safetensors(
            &wan21,
            &[
                ("patch_embedding.weight", "BF16", &[32, 36, 1, 2, 2]),
                ("blocks.0.self_attn.q.weight", "BF16", &[32, 32]),
                ("blocks.0.cross_attn.k_img.weight", "BF16", &[32, 32]),
            ],
            &[],
        );
        let truncated = dir.path().join("high_noise.safetensors");
        let bytes = std::fs::read(tiny.join("high_noise.safetensors")).unwrap();
        std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
        let refused = |change: &dyn Fn(&mut Recipe), words: &[&str], file: &Path| {
            let mut wrong = recipe.clone();
            change(&mut wrong);
            let error = refuse_mismatched_files(&wrong).unwrap_err();
            let EngineError::BadModelFile { path, .. } = &error else {
                panic!("{error:?}");
            };
            assert_eq!(path, file);
            let text = error.to_string();
            assert!(words.iter().all(|w| text.contains(w)), "{text}");
        };
        let vae = tiny.join("wan_2.1_vae.safetensors");
        refused(
            &|r| r.models.text_encoder = Some(vae.clone()),
            &["given as the text encoder but it is a VAE"],
            &vae,
        );
        let t2v = golden.join("files_dit_gguf_lora_on_the_fly/wan_t2v_q8_q4.gguf");
        refused(
            &|r| r.models.low_noise = Some(t2v.clone()),
            &[
                "low-noise expert is a text-to-video (T2V) model",
                "takes 36",
            ],
            &t2v,
        );
        refused(
            &|r| r.models.high_noise = Some(wan21.clone()),
            &["Wan2.1 model", "Wan2.2 I2V-A14B expert"],
            &wan21,
        );
        let vae22 = golden.join("vae22_official/wan2.2_vae.safetensors");
        refused(
            &|r| r.models.vae = Some(vae22.clone()),
            &["Wan2.2 (TI2V-5B) VAE", "wan_2.1_vae"],
            &vae22,
        );
        let expert = tiny.join("low_noise.safetensors");
        refused(
            &|r| r.loras[0].path.clone_from(&expert),
            &["given as the LoRA but it is a diffusion transformer"],
            &expert,
        );
        refused(
            &|r| r.models.high_noise = Some(truncated.clone()),
            &["truncated"],
            &truncated,
        );
    }

    #[test]
    fn tokens_follow_the_size_the_image_is_fitted_to() {
        let golden = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/golden/pipeline_i2v_official_tiny");
        let dir = tempfile::tempdir().unwrap();
        let preset = preset::find("wan22-i2v-a14b-official-480p").unwrap();
        let mut recipe = Recipe::from_layers(&preset, RecipeChoices::default());
        recipe.models.high_noise = Some(golden.join("high_noise.safetensors"));
        recipe.models.low_noise = Some(golden.join("low_noise.safetensors"));
        recipe.models.text_encoder = Some(golden.join("umt5.safetensors"));
        recipe.models.vae = Some(golden.join("wan_2.1_vae.safetensors"));
        // A portrait image for a landscape recipe: the official fit keeps the portrait.
        let image = dir.path().join("portrait.png");
        image::RgbImage::new(300, 600).save(&image).unwrap();
        recipe.image = image;
        let (w, h) = (recipe.width, recipe.height);
        assert!(w > h);
        let (fw, fh) = fit::wan_output_size(300, 600, w * h).unwrap();
        assert!(fh > fw);
        let plan = plan_for(&recipe, &Device::Cpu, DType::F32, None)
            .unwrap()
            .memory;
        assert_eq!(plan.tokens, Tokens::new(recipe.num_frames, fw, fh, 8));
        assert_ne!(plan.tokens, Tokens::new(recipe.num_frames, w, h, 8));
        // ComfyUI's centre crop makes exactly the recipe's size.
        recipe.image_fit = ImageFit::CenterCrop;
        let plan = plan_for(&recipe, &Device::Cpu, DType::F32, None)
            .unwrap()
            .memory;
        assert_eq!(plan.tokens, Tokens::new(recipe.num_frames, w, h, 8));
    }
}
