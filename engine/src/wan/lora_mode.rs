//! Where a LoRA's low-rank pairs go: merged into the layer's weight at load, or kept beside it
//! and applied on the fly (see [`super::lora_side`]). Full `diff`/`diff_b` deltas (biases,
//! norms, modulation) are always merged.

use serde::{Deserialize, Serialize};

/// How a DiT expert takes its LoRAs' low-rank pairs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraMode {
    /// On the fly where merging would grow a quantized layer (GGUF blocks always; float8 when
    /// the merge is not requantized), merged everywhere else.
    #[default]
    Auto,
    /// Every pair merged into its weight at load (the weights then match a merged checkpoint).
    Merge,
    /// Every pair on the fly: no weight changes at load; each changed layer does two small
    /// products more per call.
    OnTheFly,
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

impl LoraMode {
    /// Whether a layer stored as `storage` applies its low-rank pairs on the fly; `requantize`
    /// whether a float8 merge would be rounded back to float8 (see
    /// [`super::LoraRequantize::resolve`]).
    #[must_use]
    pub fn on_the_fly(self, storage: LayerStorage, requantize: bool) -> bool {
        match self {
            Self::Merge => false,
            Self::OnTheFly => true,
            Self::Auto => match storage {
                LayerStorage::Plain => false,
                LayerStorage::Float8 => !requantize,
                LayerStorage::Gguf => true,
            },
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
            }
        }
        for (mode, text) in [
            (LoraMode::Auto, "\"auto\""),
            (LoraMode::Merge, "\"merge\""),
            (LoraMode::OnTheFly, "\"on_the_fly\""),
        ] {
            assert_eq!(serde_json::to_string(&mode).unwrap(), text);
            assert_eq!(serde_json::from_str::<LoraMode>(text).unwrap(), mode);
        }
    }
}
