//! `Auto` resolved on the memory plan with fake sizes, and the on-the-fly transient.

use super::lora_choice::{AutoOptions, resolve_auto, swap_depth};
use super::*;
use crate::wan::LoraMode::{Merge, QuantizedOnTheFly};

/// A14B-shaped experts: on the fly at `fly_bytes` a parameter with rank-64 pairs on GGUF
/// layers (FFN-wide outputs), merged at `merged_bytes`; `gguf` whether the blocks are GGUF
/// (cannot stream) or float8.
fn options(fly_bytes: u64, merged_bytes: u64, gguf: bool) -> AutoOptions {
    let arch = |bytes| DitSize::from_architecture(5120, 13824, 40, 4096, 36, bytes);
    let mut on_the_fly = arch(fly_bytes);
    on_the_fly.lora_on_the_fly = OnTheFlyLoras {
        rank: 64,
        gguf_output: if gguf { 13824 } else { 0 },
    };
    let expert = |dit| ExpertSize {
        dit,
        dequantizes_at_use: true,
        can_stream: !gguf,
    };
    AutoOptions {
        merged: expert(arch(merged_bytes)),
        on_the_fly: expert(on_the_fly),
    }
}

fn base(option: &AutoOptions) -> PlanInputs {
    PlanInputs {
        sizes: ModelSizes {
            high_noise_weights: 0,
            low_noise_weights: 0,
            dit: option.on_the_fly.dit,
            dit_dequantizes_at_use: true,
            dit_can_stream: option.on_the_fly.can_stream,
            text_encoder: 11 * GIB,
            vae_weights: GIB / 2,
            vae: VaeSize::from_config(&crate::wan_vae::Config::wan21()),
        },
        tokens: Tokens::new(81, 832, 480, 8),
        activation_bytes: 2,
        int8_attention: false,
        fused_attention: false,
    }
}

/// The smallest budget at which `high` and `low` stay both resident: what the plan's
/// both-resident test adds up (the activations taken from an unlimited plan of those sizes).
fn both_resident_budget(inputs: &PlanInputs, high: &ExpertSize, low: &ExpertSize) -> u64 {
    let sizes = inputs.sizes.with_experts(high, low);
    let plan = MemoryPlan::decide(
        &PlanInputs {
            sizes: sizes.clone(),
            ..inputs.clone()
        },
        None,
    )
    .unwrap();
    sizes.high_noise_weights
        + sizes.low_noise_weights
        + plan.predicted.dit_activation_peak
        + RUNTIME_OVERHEAD
        + sizes.vae_weights
}

#[test]
fn a_gguf_expert_is_merged_exactly_while_the_merged_plan_keeps_both_resident() {
    let option = options(1, 2, true);
    let mut inputs = base(&option);
    // A text encoder no budget here holds (on the CPU either way): the DiT placement decides.
    inputs.sizes.text_encoder = 1000 * GIB;
    let (m, f) = (&option.merged, &option.on_the_fly);
    let both_merged = both_resident_budget(&inputs, m, m);
    assert!(both_merged > both_resident_budget(&inputs, m, f));

    // Just enough: both merged, both resident.
    let (loras, chosen) = resolve_auto(&inputs, [option; 2], false, Some(both_merged));
    assert_eq!(chosen, [*m, *m]);
    for lora in [&loras.high_noise, &loras.low_noise] {
        assert_eq!(lora.load.mode, Merge);
        let reason = lora.reason.as_deref().unwrap();
        assert!(reason.contains("(GGUF) LoRA merged"), "{reason}");
        assert!(reason.contains("both experts resident"), "{reason}");
    }
    // One byte short: the high-noise expert still merges beside the other on the fly; the
    // low-noise one merged would send the plan to one expert at a time, so it stays on the fly.
    let (loras, chosen) = resolve_auto(&inputs, [option; 2], false, Some(both_merged - 1));
    assert_eq!(chosen, [*m, *f]);
    assert_eq!(loras.high_noise.load.mode, Merge);
    assert_eq!(loras.low_noise.load.mode, QuantizedOnTheFly);
    let reason = loras.low_noise.reason.as_deref().unwrap();
    assert!(
        reason.contains("low-noise expert (GGUF) LoRA kept on the fly")
            && reason.contains("would be one expert at a time, ")
            && reason.contains("instead of both experts resident, "),
        "{reason}"
    );
    // The plan with the choice is what the on-the-fly alternative promised.
    let sizes = inputs.sizes.with_experts(&chosen[0], &chosen[1]);
    let plan = MemoryPlan::decide(&PlanInputs { sizes, ..inputs }, Some(both_merged - 1)).unwrap();
    assert_eq!(plan.dit, DitPlacement::BothResident);
}

#[test]
fn a_gguf_expert_that_only_fits_on_the_fly_stays_on_the_fly() {
    let option = options(1, 2, true);
    let inputs = base(&option);
    let (m, f) = (option.merged, option.on_the_fly);
    // One expert at a time: merged it needs its merged bytes beside the activations; GGUF
    // blocks cannot stream, so below that the merged plan is refused.
    let one_merged = both_resident_budget(&inputs, &m, &m) - m.dit.total();
    let (loras, chosen) = resolve_auto(&inputs, [option; 2], false, Some(one_merged));
    assert_eq!(chosen, [m, m]);
    assert_eq!(loras.low_noise.load.mode, Merge);
    let (loras, chosen) = resolve_auto(&inputs, [option; 2], false, Some(one_merged - 1));
    assert_eq!(chosen, [f, f]);
    let reason = loras.high_noise.reason.as_deref().unwrap();
    assert!(
        reason.contains("kept on the fly") && reason.contains("would be refused"),
        "{reason}"
    );
}

#[test]
fn a_float8_expert_merges_only_when_it_swaps_no_more_blocks_than_on_the_fly() {
    let option = options(1, 2, false);
    let inputs = base(&option);
    // 24 GB: on the fly the float8 experts (14 GB) go one at a time, merged (28 GB) they
    // would swap blocks.
    let (loras, _) = resolve_auto(&inputs, [option; 2], false, Some(24 * GIB));
    assert_eq!(loras.high_noise.load.mode, QuantizedOnTheFly);
    assert_eq!(loras.low_noise.load.mode, QuantizedOnTheFly);
    let reason = loras.high_noise.reason.as_deref().unwrap();
    assert!(
        reason.contains("(float8)") && reason.contains("block swapping"),
        "{reason}"
    );
    // 12 GB: both swap blocks, merged more of them.
    let (loras, _) = resolve_auto(&inputs, [option; 2], false, Some(12 * GIB));
    assert_eq!(loras.high_noise.load.mode, QuantizedOnTheFly);
    // Requantized, the merge grows nothing: merged at any budget; the choice carries it.
    let same = AutoOptions {
        merged: option.on_the_fly,
        on_the_fly: option.on_the_fly,
    };
    let (loras, _) = resolve_auto(&inputs, [same; 2], true, Some(12 * GIB));
    assert_eq!(loras.high_noise.load.mode, Merge);
    assert!(loras.high_noise.load.requantize);
    // No budget (the CPU): the growing layers go on the fly, as before plans decided.
    let (loras, chosen) = resolve_auto(&inputs, [option; 2], false, None);
    assert_eq!(chosen, [option.on_the_fly; 2]);
    assert_eq!(loras.high_noise.load.mode, QuantizedOnTheFly);
    assert!(
        loras
            .low_noise
            .reason
            .as_deref()
            .unwrap()
            .contains("no device budget"),
        "{loras:?}"
    );
}

#[test]
fn a_merge_that_would_send_the_text_encoder_off_the_device_stays_on_the_fly() {
    let option = options(1, 2, true);
    let mut inputs = base(&option);
    // A text encoder larger than a merged expert: both merged experts still fit resident
    // where, on the fly, the encoder just fits beside them.
    inputs.sizes.text_encoder = 40 * GIB;
    let (m, f) = (option.merged, option.on_the_fly);
    let fly = {
        let sizes = inputs.sizes.with_experts(&f, &f);
        let inputs = PlanInputs {
            sizes,
            ..inputs.clone()
        };
        MemoryPlan::decide(&inputs, None).unwrap()
    };
    let budget = fly.predicted.peak;
    assert!(budget >= both_resident_budget(&inputs, &m, &m));
    let (loras, chosen) = resolve_auto(&inputs, [option; 2], false, Some(budget));
    assert_eq!(chosen, [f, f]);
    let reason = loras.high_noise.reason.as_deref().unwrap();
    assert!(
        reason.contains("text encoder on the device alone instead of both experts resident, text encoder on the device"),
        "{reason}"
    );
}

#[test]
fn swap_depth_orders_placements_by_how_much_they_stream() {
    let swap = |resident_blocks| DitPlacement::BlockSwap {
        resident_blocks,
        total_blocks: 40,
    };
    let order = [
        DitPlacement::BothResident,
        DitPlacement::OneAtATime,
        swap(40),
        swap(39),
        swap(0),
    ];
    for pair in order.windows(2) {
        assert!(swap_depth(pair[0]) < swap_depth(pair[1]), "{pair:?}");
    }
}

#[test]
fn on_the_fly_loras_add_their_low_rank_product_and_a_gguf_delta_to_the_activations() {
    let l = 32_760;
    let none = OnTheFlyLoras::default();
    assert_eq!(lora_on_the_fly_transient(&none, l, 2), 0);
    let float8 = OnTheFlyLoras {
        rank: 64,
        gguf_output: 0,
    };
    assert_eq!(lora_on_the_fly_transient(&float8, l, 2), l * 64 * 2);
    let gguf = OnTheFlyLoras {
        rank: 64,
        gguf_output: 13824,
    };
    let bytes = lora_on_the_fly_transient(&gguf, l, 2);
    assert_eq!(bytes, l * 64 * 2 + l * 13824 * 2);
    // About 0.9 GB at 480p, 81 frames: the FFN's first layer's delta.
    let gb = bytes as f64 / GIB as f64;
    assert!((0.8..1.0).contains(&gb), "{gb}");

    // The plan counts it in the DiT's activations, for either expert's pairs.
    let option = options(1, 2, true);
    let inputs = base(&option);
    let plain = |lora| {
        let mut expert = option.on_the_fly;
        expert.dit.lora_on_the_fly = lora;
        expert
    };
    let activations = |high: &ExpertSize, low: &ExpertSize| {
        let sizes = inputs.sizes.with_experts(high, low);
        let inputs = PlanInputs {
            sizes,
            ..inputs.clone()
        };
        MemoryPlan::decide(&inputs, None)
            .unwrap()
            .predicted
            .dit_activation_peak
    };
    let without = activations(&plain(none), &plain(none));
    let tokens = inputs.tokens.count;
    assert_eq!(
        activations(&plain(none), &plain(gguf)) - without,
        lora_on_the_fly_transient(&gguf, tokens, 2)
    );
    assert_eq!(
        activations(&plain(float8), &plain(none)) - without,
        lora_on_the_fly_transient(&float8, tokens, 2)
    );
}

#[test]
fn the_on_the_fly_terms_are_read_from_the_lora_headers() {
    use crate::wan::LoraLoad;
    let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden");
    let terms = |case: &str, file: &str, copies: usize, mode| {
        let dir = golden.join(case);
        let headers = sizes::headers(&dir.join(file)).unwrap();
        let loras = vec![dir.join("lora.safetensors"); copies];
        let lora = LoraLoad {
            mode,
            requantize: false,
        };
        let (dit, _) = sizes::dit_size_with_merges(&headers, &loras, 4, lora).unwrap();
        dit.lora_on_the_fly
    };
    // GGUF: rank-4 pairs on 64-wide outputs (q, cross-attention o, FFN out, patch embedding);
    // two copies of the LoRA stack to rank 8 on each layer.
    let gguf = ("files_dit_gguf_lora_on_the_fly", "wan_t2v_q8_q4.gguf");
    let expected = OnTheFlyLoras {
        rank: 4,
        gguf_output: 64,
    };
    assert_eq!(terms(gguf.0, gguf.1, 1, QuantizedOnTheFly), expected);
    assert_eq!(
        terms(gguf.0, gguf.1, 1, crate::wan::LoraMode::Auto),
        expected
    );
    assert_eq!(
        terms(gguf.0, gguf.1, 2, QuantizedOnTheFly),
        OnTheFlyLoras {
            rank: 8,
            gguf_output: 64
        }
    );
    assert_eq!(terms(gguf.0, gguf.1, 1, Merge), OnTheFlyLoras::default());
    // Float8: the pairs' product only (the delta accumulates in the layer's own product).
    let fp8 = (
        "files_dit_fp8_lora_on_the_fly",
        "wan_t2v_fp8_scaled.safetensors",
    );
    assert_eq!(
        terms(fp8.0, fp8.1, 1, QuantizedOnTheFly),
        OnTheFlyLoras {
            rank: 4,
            gguf_output: 0
        }
    );
    assert_eq!(terms(fp8.0, fp8.1, 1, Merge), OnTheFlyLoras::default());
}
