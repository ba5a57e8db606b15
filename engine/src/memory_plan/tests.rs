use super::*;
use crate::model_files::fingerprint::fake_safetensors;

/// umT5-XXL's encoder: 5.68 B parameters.
const UMT5_XXL_PARAMS: u64 = 5_680_000_000;
/// The Wan2.1 VAE: 127 M parameters.
const WAN21_VAE_PARAMS: u64 = 127_000_000;

fn wan21_vae() -> VaeSize {
    VaeSize::from_config(&crate::wan_vae::Config::wan21())
}

/// The released Wan2.2 I2V-A14B experts in bf16 (5120 wide, 40 blocks, FFN 13824).
fn a14b_bf16(width: u32, height: u32, frames: u32) -> PlanInputs {
    let dit = DitSize::from_architecture(5120, 13824, 40, 4096, 36, 2);
    PlanInputs {
        sizes: ModelSizes {
            high_noise_weights: dit.total(),
            low_noise_weights: dit.total(),
            dit,
            dit_dequantizes_at_use: false,
            dit_can_stream: true,
            text_encoder: UMT5_XXL_PARAMS * 2,
            vae_weights: WAN21_VAE_PARAMS * 4,
            vae: wan21_vae(),
        },
        tokens: Tokens::new(frames, width, height, 8),
        activation_bytes: 2,
        int8_attention: false,
        fused_attention: false,
    }
}

#[test]
fn the_a14b_architecture_has_14b_parameters_per_expert() {
    let dit = DitSize::from_architecture(5120, 13824, 40, 4096, 36, 1);
    let params = dit.total() as f64;
    assert!((14.0e9..14.5e9).contains(&params), "{params}");
    assert_eq!(dit.num_heads, 40);
    assert_eq!(Tokens::new(81, 832, 480, 8).count, 21 * 30 * 52);
}

#[test]
fn activation_peak_follows_the_documented_terms() {
    let dit = DitSize::from_architecture(5120, 13824, 40, 4096, 36, 2);
    let l = 32_760_u64;
    let expected =
        2 * l * 5120 * 4 + 3 * l * 5120 * 2 + l * 5120 * 2 + 2 * 4 * (1 << 28) + 2 * l * 13824 * 2;
    assert_eq!(dit_activation_peak(&dit, l, 2), expected);
    // About 6.2 GiB at 480p, 81 frames: diffusers' group-offloaded run peaked at 9.3 GiB with
    // one block (0.65 GiB) resident, ours keeps the attention scores in bounded chunks.
    let gib_f = expected as f64 / GIB as f64;
    assert!((5.5..8.0).contains(&gib_f), "{gib_f}");
}

#[test]
fn an_unlimited_or_large_budget_keeps_everything_resident() {
    let inputs = a14b_bf16(832, 480, 81);
    let plan = MemoryPlan::decide(&inputs, None).unwrap();
    assert_eq!(plan.dit, DitPlacement::BothResident);
    assert_eq!(plan.text_encoder, Placement::Device);
    assert_eq!(plan.vae_tile, None);
    // 100 GB: both experts (53 GiB), whole-frame decoding planned at float32 size (17 GiB)
    // and umT5 (11 GiB).
    let plan = MemoryPlan::decide(&inputs, Some(100 * GIB)).unwrap();
    assert_eq!(plan.dit, DitPlacement::BothResident);
    assert_eq!(plan.text_encoder, Placement::Device);
    assert_eq!(plan.vae_tile, None);
    assert!(plan.predicted.peak <= 100 * GIB);
    // 76 GB: the experts and the decode still fit, umT5 no more beside them: it runs alone
    // before the experts load.
    let plan = MemoryPlan::decide(&inputs, Some(76 * GIB)).unwrap();
    assert_eq!(plan.dit, DitPlacement::BothResident);
    assert_eq!(plan.text_encoder, Placement::DeviceThenFreed);
    assert_eq!(plan.vae_tile, None);
    assert!(plan.predicted.peak <= 76 * GIB);
    // 36 GB: one expert (27 GiB) at a time; the whole-frame decode beside it (36.2 GiB) does
    // not fit, so it is tiled.
    let plan = MemoryPlan::decide(&inputs, Some(36 * GIB)).unwrap();
    assert_eq!(plan.dit, DitPlacement::OneAtATime);
    assert_eq!(plan.text_encoder, Placement::DeviceThenFreed);
    assert!(plan.vae_tile.is_some());
    assert!(plan.predicted.peak <= 36 * GIB);
}

#[test]
fn a14b_at_24_16_and_10_gb_swaps_fewer_blocks_as_the_budget_shrinks() {
    let inputs = a14b_bf16(832, 480, 81);
    let mut resident = Vec::new();
    for budget_gb in [24, 16, 10] {
        let budget = budget_gb * GIB;
        let plan = MemoryPlan::decide(&inputs, Some(budget)).unwrap();
        eprintln!("{budget_gb} GB: {}", plan.summary());
        let DitPlacement::BlockSwap {
            resident_blocks,
            total_blocks,
        } = plan.dit
        else {
            panic!("{budget_gb} GB: {:?}", plan.dit);
        };
        assert_eq!(total_blocks, 40);
        // At 10 GB every bf16 block streams (their two slots and the activations fill it).
        assert!(resident_blocks >= 1 || budget_gb == 10, "{budget_gb} GB");
        // umT5-XXL in bf16 (11.4 GB) fits 24 and 16 GB alone, not 10.
        let text = if budget_gb == 10 {
            Placement::Cpu
        } else {
            Placement::DeviceThenFreed
        };
        assert_eq!(plan.text_encoder, text, "{budget_gb} GB");
        let tile = plan.vae_tile.unwrap();
        assert!(
            (MIN_VAE_TILE..104).contains(&tile),
            "{budget_gb} GB: tile {tile}"
        );
        assert!(
            plan.predicted.peak <= budget,
            "{budget_gb} GB: {}",
            plan.summary()
        );
        resident.push(resident_blocks);
    }
    assert!(
        resident[0] > resident[1] && resident[1] > resident[2],
        "{resident:?}"
    );
    // 24 GB: (24 − 6.7 activations − 0.4 non-block) / 0.65 per block − 2 streaming slots.
    assert!((20..=27).contains(&resident[0]), "{resident:?}");
}

#[test]
fn every_budget_that_is_planned_is_respected() {
    let inputs = a14b_bf16(832, 480, 81);
    for budget_gb in 8..=96 {
        if let Ok(plan) = MemoryPlan::decide(&inputs, Some(budget_gb * GIB)) {
            assert!(plan.predicted.peak <= budget_gb * GIB, "{}", plan.summary());
        }
    }
}

#[test]
fn a_render_that_cannot_fit_is_refused_with_what_to_change() {
    let inputs = a14b_bf16(1280, 720, 81);
    let error = MemoryPlan::decide(&inputs, Some(10 * GIB)).unwrap_err();
    let EngineError::MemoryPlanRefused { problem } = &error else {
        panic!("{error:?}");
    };
    for wanted in [
        "smaller resolution",
        "fewer frames",
        "float8",
        "lower the VRAM reserve (--reserve-vram)",
        "10.0 GB",
    ] {
        assert!(problem.contains(wanted), "{wanted:?} missing: {problem}");
    }
    // The same clip at 480p fits the same budget.
    assert!(MemoryPlan::decide(&a14b_bf16(832, 480, 81), Some(10 * GIB)).is_ok());
    // With float8 experts the message no longer suggests them.
    let mut fp8 = inputs;
    fp8.sizes.dit_dequantizes_at_use = true;
    let message = MemoryPlan::decide(&fp8, Some(10 * GIB))
        .unwrap_err()
        .to_string();
    assert!(!message.contains("float8"), "{message}");
}

#[test]
fn sizes_are_read_from_headers_at_the_resident_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let dim = 256;
    let mut tensors: Vec<(String, &str, Vec<usize>)> = vec![
        (
            "model.diffusion_model.patch_embedding.weight".to_owned(),
            "BF16",
            vec![dim, 36, 1, 2, 2],
        ),
        (
            "model.diffusion_model.head.head.weight".to_owned(),
            "BF16",
            vec![64, dim],
        ),
    ];
    for block in 0..3 {
        for (name, shape) in [
            ("self_attn.q.weight", vec![dim, dim]),
            ("ffn.0.weight", vec![1024, dim]),
            ("ffn.2.weight", vec![dim, 1024]),
        ] {
            tensors.push((
                format!("model.diffusion_model.blocks.{block}.{name}"),
                "F8_E4M3",
                shape,
            ));
            tensors.push((
                format!("model.diffusion_model.blocks.{block}.{name}_scale"),
                "F32",
                vec![1],
            ));
        }
    }
    // `weight_scale` marks ComfyUI's scaled float8.
    let path = dir.path().join("dit_fp8.safetensors");
    let borrowed: Vec<(&str, &str, &[usize])> = tensors
        .iter()
        .map(|(n, d, s)| (n.as_str(), *d, s.as_slice()))
        .collect();
    fake_safetensors(&path, &borrowed, &[]);
    let (dit, fp8) = sizes::dit_size(&sizes::headers(&path).unwrap(), 2).unwrap();
    assert!(fp8);
    assert_eq!((dit.dim, dit.ffn_dim, dit.num_blocks), (256, 1024, 3));
    // Float8 stays one byte; the f32 scales become bf16.
    assert_eq!(dit.block_weights, (256 * 256 + 2 * 1024 * 256) + 3 * 2);
    assert_eq!(dit.non_block_weights, (256 * 36 * 4 + 64 * 256) * 2);

    // A PyTorch checkpoint (the official Wan2.1_VAE.pth) is sized from its file.
    let pth = dir.path().join("Wan2.1_VAE.pth");
    let mut pickle = vec![0x80, 2];
    pickle.resize(1000, 0);
    std::fs::write(&pth, pickle).unwrap();
    assert_eq!(sizes::model_bytes_at(&pth, 4).unwrap(), 2000);
    assert_eq!(sizes::model_bytes_at(&pth, 2).unwrap(), 1000);

    let not_dit = dir.path().join("vae.safetensors");
    fake_safetensors(&not_dit, &[("decoder.conv1.weight", "F32", &[4, 4])], &[]);
    assert_eq!(
        sizes::model_bytes(&sizes::headers(&not_dit).unwrap(), 4),
        64
    );
    assert!(matches!(
        sizes::dit_size(&sizes::headers(&not_dit).unwrap(), 2),
        Err(EngineError::BadModelFile { .. })
    ));
}

#[test]
fn float8_experts_run_whole_where_bf16_ones_need_block_swapping() {
    let mut fp8 = a14b_bf16(832, 480, 81);
    let dit = DitSize::from_architecture(5120, 13824, 40, 4096, 36, 1);
    fp8.sizes.dit = dit;
    fp8.sizes.high_noise_weights = dit.total();
    fp8.sizes.low_noise_weights = dit.total();
    fp8.sizes.dit_dequantizes_at_use = true;
    let bf16 = MemoryPlan::decide(&a14b_bf16(832, 480, 81), Some(24 * GIB)).unwrap();
    assert!(matches!(bf16.dit, DitPlacement::BlockSwap { .. }));
    let plan = MemoryPlan::decide(&fp8, Some(24 * GIB)).unwrap();
    assert_eq!(plan.dit, DitPlacement::OneAtATime, "{}", plan.summary());
    assert!(plan.predicted.peak <= 24 * GIB);
}

#[test]
fn the_image_encode_is_tiled_only_when_whole_frames_do_not_fit() {
    let inputs = a14b_bf16(832, 480, 81);
    let unlimited = MemoryPlan::decide(&inputs, None).unwrap();
    assert_eq!(unlimited.vae_encode_tile, None);
    // The encode holds fewer values per pixel than the decode (100 per encoder-input pixel
    // and channel, against 120 per output pixel and channel), so it tiles later.
    let whole_encode = unlimited.predicted.vae_encode_peak;
    assert!(whole_encode < unlimited.predicted.vae_decode_peak);
    for budget_gb in [24, 16, 10] {
        let plan = MemoryPlan::decide(&inputs, Some(budget_gb * GIB)).unwrap();
        if let Some(tile) = plan.vae_encode_tile {
            assert!(
                (MIN_VAE_ENCODE_TILE..104).contains(&tile),
                "{budget_gb} GB: {}",
                plan.summary()
            );
            assert!(plan.predicted.vae_encode_peak < whole_encode);
        }
        assert!(plan.predicted.peak <= budget_gb * GIB, "{}", plan.summary());
        assert!(
            plan.summary().contains("image encode"),
            "{}",
            plan.summary()
        );
    }
    // Where the decode is tiled by a budget, a smaller one tiles the encode too.
    let plan = (8..=40)
        .rev()
        .filter_map(|budget_gb| MemoryPlan::decide(&inputs, Some(budget_gb * GIB)).ok())
        .find(|plan| plan.vae_encode_tile.is_some())
        .expect("some budget tiles the image encode");
    assert!(plan.vae_tile.is_some(), "{}", plan.summary());
    assert!(
        plan.predicted.peak <= plan.budget.unwrap(),
        "{}",
        plan.summary()
    );
}

#[test]
fn the_text_encoder_goes_beside_the_experts_alone_before_them_or_to_the_cpu() {
    // Small experts and VAE, so that only the text encoder's size decides.
    let mut inputs = a14b_bf16(832, 480, 81);
    let dit = DitSize::from_architecture(1024, 4096, 8, 4096, 36, 2);
    inputs.sizes.dit = dit;
    inputs.sizes.high_noise_weights = dit.total();
    inputs.sizes.low_noise_weights = dit.total();
    inputs.tokens = Tokens::new(17, 256, 256, 8);
    let budget = 16 * GIB;
    let with_text = |bytes: u64| {
        let mut inputs = inputs.clone();
        inputs.sizes.text_encoder = bytes;
        MemoryPlan::decide(&inputs, Some(budget)).unwrap()
    };
    // Without the encoder's weights (its activations are counted even then).
    let base = with_text(0);
    assert_eq!(base.text_encoder, Placement::Device);
    let others = base.predicted.peak - TEXT_ENCODER_ACTIVATIONS;
    let beside = budget - base.predicted.peak;
    let alone = budget - TEXT_ENCODER_ACTIVATIONS - inputs.sizes.vae_weights - RUNTIME_OVERHEAD;
    assert!(beside < alone);
    // Fits beside everything: stays on the device, counted in the peak.
    let plan = with_text(beside);
    assert_eq!(plan.text_encoder, Placement::Device);
    assert_eq!(plan.predicted.peak, budget);
    // One byte more: on the device alone, freed before the experts load.
    let plan = with_text(beside + 1);
    assert_eq!(plan.text_encoder, Placement::DeviceThenFreed);
    let text_alone =
        beside + 1 + TEXT_ENCODER_ACTIVATIONS + inputs.sizes.vae_weights + RUNTIME_OVERHEAD;
    assert_eq!(plan.predicted.peak, others.max(text_alone));
    assert!(
        plan.summary()
            .contains("text encoder on the device before the experts load, freed after encoding"),
        "{}",
        plan.summary()
    );
    // The largest that fits alone; its peak is the encoder's, not the experts'.
    let plan = with_text(alone);
    assert_eq!(plan.text_encoder, Placement::DeviceThenFreed);
    assert_eq!(plan.predicted.peak, budget);
    // Too large even alone: the CPU, and the peak no longer counts it.
    let plan = with_text(alone + 1);
    assert_eq!(plan.text_encoder, Placement::Cpu);
    assert_eq!(plan.predicted.peak, others);
}

#[test]
fn a_lora_merged_into_a_float8_layer_counts_at_the_compute_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let dim = 256;
    let mut tensors: Vec<(String, &str, Vec<usize>)> = vec![(
        "model.diffusion_model.patch_embedding.weight".to_owned(),
        "BF16",
        vec![dim, 36, 1, 2, 2],
    )];
    for block in 0..2 {
        for (name, shape) in [("self_attn.q", vec![dim, dim]), ("ffn.0", vec![1024, dim])] {
            let layer = format!("model.diffusion_model.blocks.{block}.{name}");
            tensors.push((format!("{layer}.weight"), "F8_E4M3", shape));
            tensors.push((format!("{layer}.scale_weight"), "F32", vec![1]));
        }
    }
    let dit = dir.path().join("dit_fp8.safetensors");
    let borrowed: Vec<(&str, &str, &[usize])> = tensors
        .iter()
        .map(|(n, d, s)| (n.as_str(), *d, s.as_slice()))
        .collect();
    fake_safetensors(&dit, &borrowed, &[]);
    let headers = sizes::headers(&dit).unwrap();
    let (plain, _) = sizes::dit_size(&headers, 2).unwrap();
    let block = (dim * dim + 1024 * dim) as u64 + 2 * 2;
    assert_eq!(plain.block_weights, block);

    // ComfyUI naming on block 0's q (with an alpha), kohya's on block 1's FFN, and keys that
    // match no layer (ignored, as the merge ignores them).
    let comfy = dir.path().join("lora_comfy.safetensors");
    fake_safetensors(
        &comfy,
        &[
            (
                "diffusion_model.blocks.0.self_attn.q.lora_down.weight",
                "BF16",
                &[4, dim],
            ),
            (
                "diffusion_model.blocks.0.self_attn.q.lora_up.weight",
                "BF16",
                &[dim, 4],
            ),
            ("diffusion_model.blocks.0.self_attn.q.alpha", "F32", &[]),
            (
                "diffusion_model.blocks.0.k_img.lora_up.weight",
                "BF16",
                &[dim, 4],
            ),
            (
                "diffusion_model.blocks.9.ffn.0.lora_up.weight",
                "BF16",
                &[1024, 4],
            ),
        ],
        &[],
    );
    let kohya = dir.path().join("lora_kohya.safetensors");
    fake_safetensors(
        &kohya,
        &[
            (
                "lora_unet_blocks_1_ffn_0.lora_down.weight",
                "BF16",
                &[4, dim],
            ),
            (
                "lora_unet_blocks_1_ffn_0.lora_up.weight",
                "BF16",
                &[1024, 4],
            ),
        ],
        &[],
    );
    let (one, _) = sizes::dit_size_with_loras(&headers, std::slice::from_ref(&comfy), 2).unwrap();
    // Block 0's q becomes bf16: one more byte per element; block 1 unchanged.
    assert_eq!(one.block_weights, block + (dim * dim) as u64);
    assert_eq!(one.non_block_weights, plain.non_block_weights);
    let (both, _) =
        sizes::dit_size_with_loras(&headers, &[comfy.clone(), kohya.clone()], 2).unwrap();
    // Block 1's FFN (the larger layer) becomes bf16 too: the largest block is now block 1.
    assert_eq!(both.block_weights, block + (1024 * dim) as u64);
    // Compute dtype f32 (the CPU): four bytes per merged element.
    let kohya_only = [dir.path().join("lora_kohya.safetensors")];
    let (f32_merge, _) = sizes::dit_size_with_loras(&headers, &kohya_only, 4).unwrap();
    assert_eq!(
        f32_merge.block_weights,
        (dim * dim) as u64 + 4 * (1024 * dim) as u64 + 2 * 4
    );
    // Requantized to float8 at load: one byte a weight again, as without the LoRAs.
    for compute_bytes in [2, 4] {
        let requantize = crate::wan::LoraLoad {
            mode: crate::wan::LoraMode::Merge,
            requantize: true,
        };
        let (requantized, _) = sizes::dit_size_with_merges(
            &headers,
            &[comfy.clone(), kohya.clone()],
            compute_bytes,
            requantize,
        )
        .unwrap();
        assert_eq!(
            requantized.block_weights,
            (dim * dim + 1024 * dim) as u64 + 2 * compute_bytes
        );
        // On the fly (auto, not requantizing): float8 as stored plus the rank-4 factors at the
        // compute dtype; block 1's FFN pair (4·dim + 1024·4) is the larger. Requantizing, auto
        // merges as above.
        for (requantize, extra) in [
            (false, (4 * dim + 1024 * 4) as u64 * compute_bytes),
            (true, 0),
        ] {
            let auto = crate::wan::LoraLoad {
                mode: crate::wan::LoraMode::Auto,
                requantize,
            };
            let (size, _) = sizes::dit_size_with_merges(
                &headers,
                &[comfy.clone(), kohya.clone()],
                compute_bytes,
                auto,
            )
            .unwrap();
            assert_eq!(
                size.block_weights,
                (dim * dim + 1024 * dim) as u64 + 2 * compute_bytes + extra
            );
        }
    }
}

#[test]
fn vae_peaks_are_planned_at_float32_size_on_every_device() {
    let vae = wan21_vae();
    let tokens = Tokens::new(81, 832, 480, 8);
    for tile in [None, Some(40)] {
        assert_eq!(
            2 * vae_decode_peak(&vae, &tokens, tile, 2),
            vae_decode_peak(&vae, &tokens, tile, 4)
        );
        assert_eq!(
            2 * vae_encode_peak(&vae, &tokens, tile, 2),
            vae_encode_peak(&vae, &tokens, tile, 4)
        );
    }
    // The plan sizes the VAE at float32 on every device (the bf16 decode measured above half
    // the f32 peak on the GPU): bf16 and f32 activations give the same VAE predictions.
    let bf16 = a14b_bf16(832, 480, 81);
    let plan = MemoryPlan::decide(&bf16, None).unwrap();
    assert_eq!(
        plan.predicted.vae_decode_peak,
        vae_decode_peak(&vae, &tokens, None, VAE_PLANNING_BYTES)
    );
    assert_eq!(
        plan.predicted.vae_encode_peak,
        vae_encode_peak(&vae, &tokens, None, VAE_PLANNING_BYTES)
    );
}

#[test]
fn float8_weights_add_their_dequantized_ffn_weight_to_the_activations() {
    let bf16 = a14b_bf16(832, 480, 81);
    let mut fp8 = bf16.clone();
    let dit = DitSize::from_architecture(5120, 13824, 40, 4096, 36, 1);
    fp8.sizes.dit = dit;
    fp8.sizes.high_noise_weights = dit.total();
    fp8.sizes.low_noise_weights = dit.total();
    fp8.sizes.dit_dequantizes_at_use = true;
    let tokens = bf16.tokens.count;
    let plain = dit_activation_peak(&dit, tokens, 2);
    let plan = MemoryPlan::decide(&bf16, None).unwrap();
    assert_eq!(plan.predicted.dit_activation_peak, plain);
    let plan = MemoryPlan::decide(&fp8, None).unwrap();
    // 13824 × 5120 bf16: 0.13 GiB beside the FFN's hidden layer.
    assert_eq!(plan.predicted.dit_activation_peak, plain + 13824 * 5120 * 2);
}

#[test]
fn the_8_bit_attention_adds_its_quantized_q_k_v_and_can_change_the_plan() {
    let standard = a14b_bf16(832, 480, 81);
    let int8 = PlanInputs {
        int8_attention: true,
        ..standard.clone()
    };
    let tokens = standard.tokens.count;
    let plain = MemoryPlan::decide(&standard, None).unwrap();
    let quantized = MemoryPlan::decide(&int8, None).unwrap();
    // One byte a value for q, k and v: 3 × 32,760 × 5120 bytes, 0.47 GiB at 480p.
    assert_eq!(
        quantized.predicted.dit_activation_peak,
        plain.predicted.dit_activation_peak + 3 * tokens * 5120
    );
    // A budget that just holds the standard plan's blocks holds one block fewer for 8-bit.
    let resident = |plan: &MemoryPlan| match plan.dit {
        DitPlacement::BlockSwap {
            resident_blocks, ..
        } => resident_blocks,
        other => panic!("{other:?}"),
    };
    let budget = MemoryPlan::decide(&standard, Some(16 * GIB))
        .unwrap()
        .predicted
        .peak;
    let fits = MemoryPlan::decide(&standard, Some(budget)).unwrap();
    let tighter = MemoryPlan::decide(&int8, Some(budget)).unwrap();
    assert!(tighter.predicted.peak <= budget);
    assert_eq!(resident(&tighter) + 1, resident(&fits));
}

#[test]
fn gguf_experts_count_their_quantized_blocks_as_stored() {
    use std::path::Path;

    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/golden/files_dit_gguf_kquants/wan_t2v_kquants.gguf");
    let (size, dequantizes_at_use) = sizes::dit_size(&sizes::headers(&path).unwrap(), 2).unwrap();
    assert!(dequantizes_at_use);
    // What the loaded DiT keeps resident: blocks as stored, float tensors in bf16.
    let file = crate::gguf::GgufFile::open(&path).unwrap();
    assert_eq!(size.total(), file.resident_bytes(2, false) as u64);
    assert!(size.total() * 2 < file.resident_bytes(2, true) as u64);
}

#[test]
fn a_gguf_expert_that_does_not_fit_whole_is_refused_instead_of_block_swapped() {
    let mut gguf = a14b_bf16(832, 480, 81);
    gguf.sizes.dit_can_stream = false;
    gguf.sizes.dit_dequantizes_at_use = true;
    let streamable = MemoryPlan::decide(&a14b_bf16(832, 480, 81), Some(16 * GIB)).unwrap();
    assert!(matches!(streamable.dit, DitPlacement::BlockSwap { .. }));
    let refusal = MemoryPlan::decide(&gguf, Some(16 * GIB))
        .unwrap_err()
        .to_string();
    assert!(refusal.contains("cannot stream"), "{refusal}");
    assert!(refusal.contains("fp8_scaled or bf16 file"), "{refusal}");
    // Where one expert fits, the GGUF expert is planned one at a time as before.
    let fits = MemoryPlan::decide(&gguf, Some(60 * GIB)).unwrap();
    assert_eq!(fits.dit, DitPlacement::OneAtATime);
}

/// On CUDA the attention is fused and the block frees its inputs as it goes: the DiT's term is
/// the largest stage's live tensors plus the pool's slack, far under the chunked CPU term, so
/// the same budget keeps more blocks on the device.
#[test]
fn fused_attention_plans_the_live_peak_and_keeps_more_blocks_resident() {
    let inputs = a14b_bf16(832, 480, 81);
    let (dit, l) = (&inputs.sizes.dit, inputs.tokens.count);
    let (d, f) = (5120, 13824);
    // The norm stage (two streams in f32, the pending output and the normed copy in bf16) is
    // the largest at 480p: 12·L·d bytes, 2.0 GB.
    let live = (2 * l * d * 4 + 2 * l * d * 2)
        .max(l * d * 4 + 4 * l * d * 2)
        .max(l * d * 4 + l * d * 2 + l * f * 2);
    assert_eq!(live, 12 * l * d);
    let fused = dit_activation_peak_fused(dit, l, 2);
    assert_eq!(fused, live + POOL_SLACK);
    assert!(fused + GIB < dit_activation_peak(dit, l, 2));

    let budget = 16 * GIB;
    let resident = |fused_attention: bool| {
        let plan = MemoryPlan::decide(
            &PlanInputs {
                fused_attention,
                ..inputs.clone()
            },
            Some(budget),
        )
        .unwrap();
        assert!(plan.predicted.peak <= budget);
        match plan.dit {
            DitPlacement::BlockSwap {
                resident_blocks, ..
            } => resident_blocks,
            other => panic!("a 16 GB budget swaps bf16 blocks, got {other:?}"),
        }
    };
    let (chunked, fused) = (resident(false), resident(true));
    assert!(fused >= chunked + 2, "{fused} vs {chunked} resident blocks");
}
