//! The `case.toml` manifest and case discovery.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Tolerance of a case. Anything looser than 1e-4 relative L2 must say why.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tolerance {
    /// Maximum relative L2 error, ‖actual − expected‖ / ‖expected‖, per tensor.
    pub rel_l2: f64,
    /// Optional maximum absolute error per element.
    #[serde(default)]
    pub max_abs: Option<f64>,
    /// Why the tolerance is looser than the default, if it is.
    #[serde(default)]
    pub reason: Option<String>,
}

/// The default tolerance for float32 CPU parity.
pub const DEFAULT_REL_L2: f64 = 1e-4;

/// One golden case as written by `tests/reference/generate.py`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseManifest {
    /// Which runner computes this case (e.g. `wan_dit`, `flow_schedule`).
    pub component: String,
    pub description: String,
    /// Weight files, relative to the case folder, in the layout users have.
    #[serde(default)]
    pub weights: Vec<String>,
    /// Input tensors (safetensors), relative to the case folder.
    #[serde(default)]
    pub inputs: Option<String>,
    /// Expected output tensors (safetensors), relative to the case folder.
    pub expected: String,
    /// Component-specific settings (model config, sampler settings, …).
    #[serde(default)]
    pub config: toml::Table,
    pub tolerance: Tolerance,
    /// How the case was made: generator, seed, package versions. Informational.
    #[serde(default)]
    pub reference: toml::Table,
}

/// A case: its manifest and its folder.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub dir: PathBuf,
    pub manifest: CaseManifest,
}

impl Case {
    /// Path of a file named in the manifest.
    #[must_use]
    pub fn file(&self, relative: &str) -> PathBuf {
        self.dir.join(relative)
    }

    /// Deserializes the `[config]` table into a component's own config type.
    pub fn config<T: serde::de::DeserializeOwned>(&self) -> anyhow::Result<T> {
        toml::Value::Table(self.manifest.config.clone())
            .try_into()
            .with_context(|| format!("[config] of golden case {}", self.dir.display()))
    }
}

/// Reads and checks one case folder.
pub fn load_case(dir: &Path) -> anyhow::Result<Case> {
    let manifest_path = dir.join("case.toml");
    let text = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("reading {}", manifest_path.display()))?;
    let manifest: CaseManifest =
        toml::from_str(&text).with_context(|| format!("parsing {}", manifest_path.display()))?;
    let tolerance = &manifest.tolerance;
    if !(tolerance.rel_l2.is_finite() && tolerance.rel_l2 > 0.0) {
        bail!(
            "tolerance.rel_l2 must be positive: {}",
            manifest_path.display()
        );
    }
    if tolerance.rel_l2 > DEFAULT_REL_L2
        && tolerance
            .reason
            .as_deref()
            .is_none_or(|r| r.trim().is_empty())
    {
        bail!(
            "tolerance.rel_l2 = {} is looser than {DEFAULT_REL_L2}: add tolerance.reason: {}",
            tolerance.rel_l2,
            manifest_path.display()
        );
    }
    let named = manifest
        .weights
        .iter()
        .chain(&manifest.inputs)
        .chain([&manifest.expected]);
    for file in named {
        if !dir.join(file).is_file() {
            bail!("case names {file}, which is missing: {}", dir.display());
        }
    }
    let name = dir.file_name().map_or_else(
        || dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    Ok(Case {
        name,
        dir: dir.to_owned(),
        manifest,
    })
}

/// Every case folder (a folder holding `case.toml`) directly under each of `roots`, sorted.
pub fn discover(roots: &[PathBuf]) -> anyhow::Result<Vec<Case>> {
    let mut cases = Vec::new();
    for root in roots {
        let entries =
            std::fs::read_dir(root).with_context(|| format!("listing {}", root.display()))?;
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.join("case.toml").is_file())
            .collect();
        dirs.sort();
        for dir in dirs {
            cases.push(load_case(&dir)?);
        }
    }
    Ok(cases)
}

/// The committed folder plus every folder in `STILLMOTION_GOLDEN_DIRS`.
#[must_use]
pub fn case_roots() -> Vec<PathBuf> {
    let mut roots = vec![super::committed_dir()];
    if let Some(extra) = std::env::var_os(super::EXTRA_DIRS_VAR) {
        roots.extend(std::env::split_paths(&extra).filter(|p| !p.as_os_str().is_empty()));
    }
    roots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Demo {
        steps: u32,
    }

    fn write_case(dir: &Path, tolerance: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("expected.safetensors"), b"").unwrap();
        std::fs::write(
            dir.join("case.toml"),
            format!(
                "component = \"demo\"\ndescription = \"d\"\nexpected = \"expected.safetensors\"\n\
                 [config]\nsteps = 4\n[tolerance]\n{tolerance}\n"
            ),
        )
        .unwrap();
    }

    #[test]
    fn loose_tolerance_needs_a_reason_and_files_must_exist() {
        let root = tempfile::tempdir().unwrap();
        write_case(&root.path().join("a_ok"), "rel_l2 = 1e-5");
        write_case(&root.path().join("b_loose"), "rel_l2 = 1e-2");
        let error = discover(&[root.path().to_owned()]).unwrap_err().to_string();
        assert!(error.contains("add tolerance.reason"), "{error}");

        write_case(
            &root.path().join("b_loose"),
            "rel_l2 = 1e-2\nreason = \"bf16 weights\"",
        );
        let cases = discover(&[root.path().to_owned()]).unwrap();
        assert_eq!(
            cases.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["a_ok", "b_loose"]
        );

        assert_eq!(cases[0].config::<Demo>().unwrap().steps, 4);

        std::fs::remove_file(root.path().join("a_ok/expected.safetensors")).unwrap();
        let error = discover(&[root.path().to_owned()]).unwrap_err().to_string();
        assert!(error.contains("missing"), "{error}");
    }
}
