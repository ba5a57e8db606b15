//! Where a LoRA's low-rank pairs go: merged into the layer's weight at load, or kept beside it
//! and applied on the fly (see [`super::lora_side`]). Full `diff`/`diff_b` deltas (biases,
//! norms, modulation) are always merged.
//!
//! The user chooses a [`LoraMode`]; a job resolves [`LoraMode::Auto`] per expert, once, with
//! its memory plan (`memory_plan::lora_choice`), and both the plan's sizes and the loader get
//! the resolved mode, so that they cannot disagree.

use serde::{Deserialize, Serialize};

/// How a DiT expert takes its LoRAs' low-rank pairs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraMode {
    /// Merged where memory allows, else on the fly where merging would grow a layer, per
    /// expert: a job resolves it to [`LoraMode::Merge`] or [`LoraMode::QuantizedOnTheFly`]
    /// with its memory plan. Where no plan decides (no device budget: the CPU), it acts as
    /// [`LoraMode::QuantizedOnTheFly`], the deterministic reference path.
    #[default]
    Auto,
    /// Every pair merged into its weight at load (the weights then match a merged checkpoint).
    Merge,
    /// Every pair on the fly: no weight changes at load; each changed layer does two small
    /// products more per call.
    OnTheFly,
    /// On the fly where merging would grow a layer (GGUF blocks always; float8 when the merge
    /// is not requantized), merged everywhere else: what [`LoraMode::Auto`] resolves to when
    /// the merged expert would not fit.
    QuantizedOnTheFly,
}

/// How a layer's weight is stored, for [`LoraMode::on_the_fly`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerStorage {
    /// Float weights: a merge keeps them their size.
    Plain,
    /// ComfyUI `fp8_scaled` float8 with a per-tensor scale.
    Float8,
    /// GGUF blocks (Q4_0…Q8_0, K-quants), kept quantized.
    Gguf,
}

impl LayerStorage {
    /// Whether merging a LoRA into a layer stored so grows it (to the compute dtype): GGUF
    /// blocks always, float8 unless `requantize` rounds the merge back to float8.
    #[must_use]
    pub fn merge_grows(self, requantize: bool) -> bool {
        match self {
            Self::Plain => false,
            Self::Float8 => !requantize,
            Self::Gguf => true,
        }
    }
}

impl LoraMode {
    /// Whether a layer stored as `storage` applies its low-rank pairs on the fly; `requantize`
    /// whether a float8 merge would be rounded back to float8 (see
    /// [`super::LoraRequantize::resolve`]).
    #[must_use]
    pub fn on_the_fly(self, storage: LayerStorage, requantize: bool) -> bool {
        match self {
            Self::Merge => false,
            Self::OnTheFly => true,
            Self::Auto | Self::QuantizedOnTheFly => storage.merge_grows(requantize),
        }
    }

    /// The mode an expert loads with: `Auto` merges when `merged_fits` (the memory plan with
    /// the expert merged needs no more block swapping than with its growing layers on the fly)
    /// and goes on the fly where a merge grows a layer otherwise, or when no plan decides
    /// (`None`: no device budget, the deterministic CPU path); any other mode stays.
    #[must_use]
    pub fn resolve(self, merged_fits: Option<bool>) -> Self {
        match (self, merged_fits) {
            (Self::Auto, Some(true)) => Self::Merge,
            (Self::Auto, _) => Self::QuantizedOnTheFly,
            (mode, _) => mode,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_goes_on_the_fly_only_where_a_merge_would_grow_a_quantized_layer() {
        use LayerStorage::{Float8, Gguf, Plain};
        let auto = LoraMode::Auto;
        assert!(!auto.on_the_fly(Plain, false) && !auto.on_the_fly(Plain, true));
        assert!(auto.on_the_fly(Float8, false) && !auto.on_the_fly(Float8, true));
        assert!(auto.on_the_fly(Gguf, false) && auto.on_the_fly(Gguf, true));
        for storage in [Plain, Float8, Gguf] {
            for requantize in [false, true] {
                assert!(!LoraMode::Merge.on_the_fly(storage, requantize));
                assert!(LoraMode::OnTheFly.on_the_fly(storage, requantize));
                assert_eq!(
                    LoraMode::QuantizedOnTheFly.on_the_fly(storage, requantize),
                    auto.on_the_fly(storage, requantize),
                    "unresolved auto acts as its on-the-fly resolution"
                );
                assert_eq!(
                    storage.merge_grows(requantize),
                    auto.on_the_fly(storage, requantize)
                );
            }
        }
        for (mode, text) in [
            (LoraMode::Auto, "\"auto\""),
            (LoraMode::Merge, "\"merge\""),
            (LoraMode::OnTheFly, "\"on_the_fly\""),
            (LoraMode::QuantizedOnTheFly, "\"quantized_on_the_fly\""),
        ] {
            assert_eq!(serde_json::to_string(&mode).unwrap(), text);
            assert_eq!(serde_json::from_str::<LoraMode>(text).unwrap(), mode);
        }
    }

    #[test]
    fn auto_resolves_by_whether_the_merged_expert_fits_and_other_modes_stay() {
        use LoraMode::{Auto, Merge, OnTheFly, QuantizedOnTheFly};
        assert_eq!(Auto.resolve(Some(true)), Merge);
        assert_eq!(Auto.resolve(Some(false)), QuantizedOnTheFly);
        assert_eq!(
            Auto.resolve(None),
            QuantizedOnTheFly,
            "no budget: today's path"
        );
        for mode in [Merge, OnTheFly, QuantizedOnTheFly] {
            for fits in [Some(true), Some(false), None] {
                assert_eq!(mode.resolve(fits), mode);
            }
        }
    }
}
