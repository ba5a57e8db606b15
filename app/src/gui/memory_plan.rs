//! A job's memory plan in its queue row: whether the render fits the device's memory budget,
//! how (which components stay resident, what is swapped, tiled or moved to the CPU), the
//! predicted peak against the budget, and on a refusal the engine's message naming what to
//! change.

use stillmotion_engine::memory_plan::{DitPlacement, MemoryPlan, Placement, gib};
use stillmotion_engine::runtime::JobId;

use crate::ui::theme;

/// The one-line verdict ("fits: both experts resident").
#[must_use]
pub fn headline(plan: &MemoryPlan) -> String {
    let how = match plan.dit {
        DitPlacement::BothResident => "both experts resident".to_owned(),
        DitPlacement::OneAtATime => "one expert at a time".to_owned(),
        DitPlacement::BlockSwap {
            resident_blocks, ..
        } => format!("block swap with {resident_blocks} blocks resident"),
    };
    format!("Memory plan: fits, {how}")
}

/// Each decision of the plan in words, one line each.
#[must_use]
pub fn details(plan: &MemoryPlan) -> Vec<String> {
    let p = &plan.predicted;
    let experts = match plan.dit {
        DitPlacement::BothResident => format!(
            "Experts: both stay on the device ({} + {})",
            gib(p.high_noise_weights),
            gib(p.low_noise_weights)
        ),
        DitPlacement::OneAtATime => format!(
            "Experts: one at a time, swapped at the boundary ({} each)",
            gib(p.high_noise_weights.max(p.low_noise_weights))
        ),
        DitPlacement::BlockSwap {
            resident_blocks,
            total_blocks,
        } => format!(
            "Experts: block swap, {resident_blocks} of {total_blocks} blocks resident ({} a block)",
            gib(p.dit_block_weights)
        ),
    };
    let text_encoder = match plan.text_encoder {
        Placement::Device => "Text encoder: on the device".to_owned(),
        Placement::Cpu => {
            "Text encoder: on the CPU (it does not fit beside the experts)".to_owned()
        }
        Placement::DeviceThenFreed => {
            "Text encoder: on the device before the experts load, freed after encoding".to_owned()
        }
    };
    let vae = match plan.vae_tile {
        None => format!("VAE decode: whole frames ({})", gib(p.vae_decode_peak)),
        Some(tile) => {
            let pixels = tile * plan.vae_stride;
            format!(
                "VAE decode: in {pixels}×{pixels} pixel tiles ({})",
                gib(p.vae_decode_peak)
            )
        }
    };
    let encode = match plan.vae_encode_tile {
        None => format!("Image encode: whole frames ({})", gib(p.vae_encode_peak)),
        Some(tile) => {
            let pixels = tile * plan.vae_stride;
            format!(
                "Image encode: in {pixels}×{pixels} pixel tiles ({})",
                gib(p.vae_encode_peak)
            )
        }
    };
    vec![
        experts,
        text_encoder,
        encode,
        vae,
        format!(
            "Activations: {} for {} tokens",
            gib(p.dit_activation_peak),
            plan.tokens.count
        ),
        peak_line(plan),
    ]
}

/// "Predicted peak 21.3 GB of a 22.0 GB budget".
fn peak_line(plan: &MemoryPlan) -> String {
    match plan.budget {
        Some(budget) => format!(
            "Predicted peak {} of a {} budget",
            gib(plan.predicted.peak),
            gib(budget)
        ),
        None => format!(
            "Predicted peak {} (no memory limit: a CPU render)",
            gib(plan.predicted.peak)
        ),
    }
}

/// Draws the plan of job `id`, open while the job is active.
pub fn show(ui: &mut egui::Ui, id: JobId, plan: &MemoryPlan, open: bool) {
    egui::CollapsingHeader::new(headline(plan))
        .id_salt(("memory plan", id))
        .default_open(open)
        .show(ui, |ui| {
            for line in details(plan) {
                ui.label(line);
            }
            if let Some(budget) = plan.budget.filter(|&budget| budget > 0) {
                #[allow(
                    clippy::cast_precision_loss,
                    reason = "a gauge: byte counts far below 2^52 are exact enough"
                )]
                let fraction = plan.predicted.peak as f32 / budget as f32;
                ui.add(
                    egui::ProgressBar::new(fraction.clamp(0.0, 1.0))
                        .text(format!("{:.0} % of the budget", fraction * 100.0)),
                )
                .on_hover_text(
                    "The budget is the GPU's memory minus the VRAM reserve you set; the peak is \
                     predicted from the model files before anything loads.",
                );
            }
        });
}

/// The headline of a job the memory plan refused.
pub const REFUSAL_HEADLINE: &str = "Memory plan: does not fit";

/// Draws a refusal: the plan found no placement that fits, and the engine's message says
/// what to change.
pub fn show_refusal(ui: &mut egui::Ui, message: &str) {
    ui.colored_label(theme::ERROR_TEXT, REFUSAL_HEADLINE);
    ui.colored_label(theme::ERROR_TEXT, message);
}

#[cfg(test)]
mod tests {
    use super::*;
    use stillmotion_engine::memory_plan::{GIB, Predictions, Tokens};

    fn plan(dit: DitPlacement, text_encoder: Placement, vae_tile: Option<u64>) -> MemoryPlan {
        MemoryPlan {
            budget: Some(20 * GIB),
            tokens: Tokens::new(81, 832, 480, 8),
            dit,
            text_encoder,
            vae_tile,
            // The encode tiles when the decode does (its peak per pixel is lower).
            vae_encode_tile: vae_tile.map(|t| t + 4),
            vae_stride: 8,
            predicted: Predictions {
                high_noise_weights: 14 * GIB,
                low_noise_weights: 14 * GIB,
                dit_block_weights: GIB / 2,
                dit_non_block_weights: GIB / 4,
                dit_activation_peak: 3 * GIB,
                text_encoder: 11 * GIB,
                vae_weights: GIB / 2,
                vae_decode_peak: 4 * GIB,
                vae_encode_peak: 3 * GIB,
                peak: 18 * GIB,
            },
        }
    }

    #[test]
    fn every_placement_is_named_in_words() {
        let swap = plan(
            DitPlacement::BlockSwap {
                resident_blocks: 12,
                total_blocks: 40,
            },
            Placement::Cpu,
            Some(32),
        );
        assert_eq!(
            headline(&swap),
            "Memory plan: fits, block swap with 12 blocks resident"
        );
        let lines = details(&swap);
        assert!(
            lines[0].contains("12 of 40 blocks resident"),
            "{}",
            lines[0]
        );
        assert!(lines[1].contains("on the CPU"), "{}", lines[1]);
        assert!(
            lines[2].starts_with("Image encode: in 288×288 pixel tiles"),
            "{}",
            lines[2]
        );
        assert!(lines[3].contains("256×256 pixel tiles"), "{}", lines[3]);
        assert!(lines[5].starts_with("Predicted peak 18.0 GB of a 20.0 GB budget"));

        let one = plan(DitPlacement::OneAtATime, Placement::Device, None);
        assert_eq!(headline(&one), "Memory plan: fits, one expert at a time");
        let lines = details(&one);
        assert!(lines[0].contains("one at a time"), "{}", lines[0]);
        assert_eq!(lines[1], "Text encoder: on the device");
        assert!(lines[2].starts_with("Image encode: whole frames"));
        assert!(lines[3].starts_with("VAE decode: whole frames"));

        let freed = plan(DitPlacement::OneAtATime, Placement::DeviceThenFreed, None);
        assert_eq!(
            details(&freed)[1],
            "Text encoder: on the device before the experts load, freed after encoding"
        );
    }
}
