//! The dtype a golden run computes in (`STILLMOTION_GOLDEN_DTYPE`), and its default tolerance.

use anyhow::bail;
use candle_core::DType;

use super::manifest::DEFAULT_REL_L2;

/// The environment variable choosing the dtype of a golden run: `f32` (the default), `bf16`
/// or `f16`.
pub const DTYPE_VAR: &str = "STILLMOTION_GOLDEN_DTYPE";

/// Default relative L2 bound of a bf16 run: the GPU target ("bf16 near 1e-2"). bf16
/// keeps 8 significant bits (a relative rounding step of 2^-8 ≈ 3.9e-3).
pub const BF16_REL_L2: f64 = 1e-2;

/// Default relative L2 bound of an f16 run: f16 keeps 11 significant bits, 8× finer than bf16,
/// but its 5-bit exponent leaves less headroom, so the bound is 5× (not 8×) tighter.
pub const F16_REL_L2: f64 = 2e-3;

/// The precision a golden run asks the model runners for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Precision {
    /// Reads [`DTYPE_VAR`]; unset or empty means f32.
    pub fn from_env() -> anyhow::Result<Self> {
        match std::env::var(DTYPE_VAR) {
            Ok(value) if !value.trim().is_empty() => Self::parse(&value),
            _ => Ok(Self::F32),
        }
    }

    /// `f32`/`float32`, `bf16`/`bfloat16` or `f16`/`fp16`/`float16` (any case).
    pub fn parse(name: &str) -> anyhow::Result<Self> {
        Ok(match name.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Self::F32,
            "bf16" | "bfloat16" => Self::Bf16,
            "f16" | "fp16" | "float16" | "half" => Self::F16,
            other => bail!("{DTYPE_VAR}={other:?}: use f32, bf16 or f16"),
        })
    }

    /// The precision of a candle dtype, if it is one of the three.
    #[must_use]
    pub fn of(dtype: DType) -> Option<Self> {
        match dtype {
            DType::F32 => Some(Self::F32),
            DType::BF16 => Some(Self::Bf16),
            DType::F16 => Some(Self::F16),
            _ => None,
        }
    }

    #[must_use]
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
            Self::F16 => DType::F16,
        }
    }

    /// The short name printed in the results table.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        }
    }

    /// The relative L2 bound a case gets in this precision unless its manifest sets one.
    #[must_use]
    pub fn default_rel_l2(self) -> f64 {
        match self {
            Self::F32 => DEFAULT_REL_L2,
            Self::Bf16 => BF16_REL_L2,
            Self::F16 => F16_REL_L2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_round_trip() {
        for p in [Precision::F32, Precision::Bf16, Precision::F16] {
            assert_eq!(Precision::parse(p.name()).unwrap(), p);
            assert_eq!(Precision::of(p.dtype()), Some(p));
        }
        assert_eq!(Precision::parse(" BFloat16 ").unwrap(), Precision::Bf16);
        assert_eq!(Precision::parse("fp16").unwrap(), Precision::F16);
        let error = Precision::parse("f64").unwrap_err().to_string();
        assert!(error.contains("use f32, bf16 or f16"), "{error}");
        assert_eq!(Precision::of(DType::F64), None);
        assert!(Precision::F16.default_rel_l2() < Precision::Bf16.default_rel_l2());
        assert!(Precision::F32.default_rel_l2() < Precision::F16.default_rel_l2());
    }
}
