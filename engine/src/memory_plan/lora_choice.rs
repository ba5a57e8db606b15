//! Where each expert's LoRAs go under [`LoraMode::Auto`], decided with the memory plan.
//!
//! Merging a LoRA into a plain layer (or a float8 one whose merge is requantized) keeps its
//! size: such an expert is always merged. Merging into a GGUF layer (dequantized to the compute
//! dtype) or a float8 one (kept in the compute dtype) grows it; such an expert is merged when
//! the plan made with it merged needs no more block swapping than the plan with its growing
//! layers on the fly ([`DitPlacement`] compared by [`swap_depth`]: both experts resident, one at
//! a time, then fewer resident blocks) and keeps the text encoder where that plan has it (on the
//! device, then on the device alone, then on the CPU, where umT5 takes tens of seconds a
//! prompt: more than the pairs cost over a render), or when the on-the-fly plan is refused and
//! the merged one is not (the on-the-fly layers' transient can outweigh a small model's growth). Both
//! merged is tried first, then each alone ([`resolve_auto`]). Without a budget (the CPU)
//! nothing is decided: the growing layers go on the fly, the deterministic reference path.

use super::{DitPlacement, ExpertSize, MemoryPlan, Placement, PlanInputs, gib};
use crate::sampling::Expert;
use crate::wan::{LoraLoad, LoraMode};

/// How one expert takes its LoRAs, as the job resolved it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpertLora {
    /// A concrete mode (never [`LoraMode::Auto`]) and whether float8 merges are requantized.
    pub load: LoraLoad,
    /// Why `Auto` became `load.mode`, for the log; `None` where nothing was decided (no LoRAs,
    /// or a mode the user chose).
    pub reason: Option<String>,
}

/// Both experts' [`ExpertLora`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpertLoras {
    pub high_noise: ExpertLora,
    pub low_noise: ExpertLora,
}

impl ExpertLoras {
    /// Both experts loading `load` (nothing decided).
    #[must_use]
    pub fn both(load: LoraLoad) -> Self {
        let lora = ExpertLora { load, reason: None };
        Self {
            high_noise: lora.clone(),
            low_noise: lora,
        }
    }

    #[must_use]
    pub fn get(&self, expert: Expert) -> &ExpertLora {
        match expert {
            Expert::HighNoise => &self.high_noise,
            Expert::LowNoise => &self.low_noise,
        }
    }
}

/// One expert's size each way `Auto` can take its LoRAs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AutoOptions {
    /// Every pair merged ([`LoraMode::Merge`]).
    pub merged: ExpertSize,
    /// Pairs on the fly where a merge grows the layer ([`LoraMode::QuantizedOnTheFly`]).
    pub on_the_fly: ExpertSize,
}

impl AutoOptions {
    /// Whether merging grows the expert anywhere (more bytes, or a larger block).
    fn merge_grows(&self) -> bool {
        let (m, f) = (&self.merged.dit, &self.on_the_fly.dit);
        m.total() > f.total() || m.block_weights > f.block_weights
    }
}

/// How much block swapping a DiT placement means: smaller is less (both experts resident, one
/// at a time, then block swapping with fewer blocks streamed).
#[must_use]
pub fn swap_depth(placement: DitPlacement) -> (u8, u64) {
    match placement {
        DitPlacement::BothResident => (0, 0),
        DitPlacement::OneAtATime => (1, 0),
        DitPlacement::BlockSwap {
            resident_blocks,
            total_blocks,
        } => (2, total_blocks.saturating_sub(resident_blocks)),
    }
}

/// How far from the device a text encoder placement is: smaller is nearer.
fn text_depth(placement: Placement) -> u8 {
    match placement {
        Placement::Device => 0,
        Placement::DeviceThenFreed => 1,
        Placement::Cpu => 2,
    }
}

fn describe(plan: Option<&MemoryPlan>) -> String {
    let Some(plan) = plan else {
        return "refused".to_owned();
    };
    let dit = match plan.dit {
        DitPlacement::BothResident => "both experts resident".to_owned(),
        DitPlacement::OneAtATime => "one expert at a time".to_owned(),
        DitPlacement::BlockSwap {
            resident_blocks,
            total_blocks,
        } => format!("block swapping, {resident_blocks} of {total_blocks} blocks resident"),
    };
    let text = match plan.text_encoder {
        Placement::Device => "on the device",
        Placement::DeviceThenFreed => "on the device alone",
        Placement::Cpu => "on the CPU",
    };
    format!("{dit}, text encoder {text}")
}

/// Resolves `Auto` for both experts: `base` holds every size but the experts', `options` each
/// expert's two sizes (high-noise, low-noise), `requantize` whether float8 merges are
/// requantized. Returns each expert's choice and the size it loads at.
///
/// Both experts merged is tried first, then the high-noise one alone, then the low-noise one
/// (each only where its merge grows it): the first whose plan swaps no more blocks than the
/// plan with every growing layer on the fly wins (trying one at a time alone would miss a
/// pair that fits only together, once neither carries the on-the-fly transient).
#[must_use]
pub fn resolve_auto(
    base: &PlanInputs,
    options: [AutoOptions; 2],
    requantize: bool,
    budget: Option<u64>,
) -> (ExpertLoras, [ExpertSize; 2]) {
    let grows = options.map(|option| option.merge_grows());
    let sizes_for = |merge: [bool; 2]| {
        [0, 1].map(|i| {
            if merge[i] || !grows[i] {
                options[i].merged
            } else {
                options[i].on_the_fly
            }
        })
    };
    let plan = |merge: [bool; 2]| {
        let [high, low] = sizes_for(merge);
        let inputs = PlanInputs {
            sizes: base.sizes.with_experts(&high, &low),
            ..base.clone()
        };
        budget.and_then(|budget| MemoryPlan::decide(&inputs, Some(budget)).ok())
    };
    let on_the_fly = plan([false, false]);
    let acceptable = |merged: &Option<MemoryPlan>| match (merged, &on_the_fly) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(m), Some(f)) => {
            swap_depth(m.dit) <= swap_depth(f.dit)
                && text_depth(m.text_encoder) <= text_depth(f.text_encoder)
        }
    };
    let candidates = [
        (grows[0] || grows[1]).then_some([true, true]),
        (grows[0] && grows[1]).then_some([true, false]),
        (grows[0] && grows[1]).then_some([false, true]),
    ];
    let merge = match budget {
        Some(_) => candidates
            .into_iter()
            .flatten()
            .find(|&merge| acceptable(&plan(merge)))
            .unwrap_or([false, false]),
        None => [false, false],
    };
    let chosen = sizes_for(merge);
    let [high_noise, low_noise] = [0, 1].map(|i| {
        let option = &options[i];
        let name = ["high-noise", "low-noise"][i];
        let storage = option.on_the_fly.storage_name();
        let merged_weights = gib(option.merged.dit.total());
        let fits = if grows[i] {
            budget.map(|_| merge[i])
        } else {
            Some(true)
        };
        let reason = match (grows[i], budget) {
            (false, _) => format!("{name} expert ({storage}) LoRA merged: merging grows no layer"),
            (true, None) => format!(
                "{name} expert ({storage}) LoRA kept on the fly where merging grows a layer: no device budget to merge against"
            ),
            (true, Some(budget)) if merge[i] => format!(
                "{name} expert ({storage}) LoRA merged: {merged_weights} merged fits the {} budget ({})",
                gib(budget),
                describe(plan(merge).as_ref())
            ),
            (true, Some(budget)) => {
                let mut with_it = merge;
                with_it[i] = true;
                format!(
                    "{name} expert ({storage}) LoRA kept on the fly: merged it would need {merged_weights} (on the fly {}), so the plan at the {} budget would be {} instead of {}",
                    gib(option.on_the_fly.dit.total()),
                    gib(budget),
                    describe(plan(with_it).as_ref()),
                    describe(plan(merge).as_ref())
                )
            }
        };
        ExpertLora {
            load: LoraLoad {
                mode: LoraMode::Auto.resolve(fits),
                requantize,
            },
            reason: Some(reason),
        }
    });
    (
        ExpertLoras {
            high_noise,
            low_noise,
        },
        chosen,
    )
}
