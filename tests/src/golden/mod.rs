//! Golden cases: manifest, discovery, comparison, and the run over them in a chosen precision.

mod check;
mod compare;
mod manifest;
mod precision;

pub use check::{Row, check_case, table};
pub use compare::{Metrics, compare};
pub use manifest::{
    Case, CaseManifest, DtypeTolerance, Limits, Tolerance, case_roots, discover, load_case,
};
pub use precision::{BF16_REL_L2, DTYPE_VAR, F16_REL_L2, Precision};

/// The environment variable naming extra case folders (colon-separated).
pub const EXTRA_DIRS_VAR: &str = "STILLMOTION_GOLDEN_DIRS";

/// The committed cases: `tests/golden/` in this repository.
#[must_use]
pub fn committed_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("golden")
}
