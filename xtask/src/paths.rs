//! Folders xtask uses: the workspace root and the user's cache folder.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The repository root (the parent of this crate's folder).
pub fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_owned)
        .context("xtask's folder has no parent")
}

/// `$STILLMOTION_CACHE_DIR`, else `$XDG_CACHE_HOME/stillmotion`, else `~/.cache/stillmotion`.
/// The engine uses the same rule (`engine/src/paths.rs`) to find what setup stored.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STILLMOTION_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|dir| !dir.is_empty()) {
        return PathBuf::from(dir).join("stillmotion");
    }
    let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
    home.join(".cache").join("stillmotion")
}
