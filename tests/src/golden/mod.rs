//! Golden cases: manifest, discovery and comparison.

mod compare;
mod manifest;

pub use compare::{Metrics, compare};
pub use manifest::{Case, CaseManifest, Tolerance, case_roots, discover, load_case};

/// The environment variable naming extra case folders (colon-separated).
pub const EXTRA_DIRS_VAR: &str = "STILLMOTION_GOLDEN_DIRS";

/// The committed cases: `tests/golden/` in this repository.
#[must_use]
pub fn committed_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("golden")
}
