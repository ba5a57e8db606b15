//! The `case.toml` manifest and case discovery.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::precision::Precision;

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
    /// The case's own bound in a bf16 run (`[tolerance.bf16]`), instead of the default.
    #[serde(default)]
    pub bf16: Option<DtypeTolerance>,
    /// The case's own bound in an f16 run (`[tolerance.f16]`), instead of the default.
    #[serde(default)]
    pub f16: Option<DtypeTolerance>,
}

/// A case's bound in one reduced precision. Looser than that precision's default needs a reason.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DtypeTolerance {
    pub rel_l2: f64,
    #[serde(default)]
    pub max_abs: Option<f64>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// The bounds a tensor is held to in one precision.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    pub rel_l2: f64,
    pub max_abs: Option<f64>,
}

impl Tolerance {
    /// The bounds in `precision`. In f32, the case's own. In bf16 or f16, the case's
    /// `[tolerance.bf16]` / `[tolerance.f16]` if it has one, else the precision's default
    /// relative L2 (or the case's f32 bound where that is already looser) and no per-element
    /// bound: rounding the weights moves every element, so an f32 `max_abs` says nothing there.
    #[must_use]
    pub fn limits(&self, precision: Precision) -> Limits {
        let own = match precision {
            Precision::F32 => {
                return Limits {
                    rel_l2: self.rel_l2,
                    max_abs: self.max_abs,
                };
            }
            Precision::Bf16 => self.bf16.as_ref(),
            Precision::F16 => self.f16.as_ref(),
        };
        match own {
            Some(own) => Limits {
                rel_l2: own.rel_l2,
                max_abs: own.max_abs,
            },
            None => Limits {
                rel_l2: self.rel_l2.max(precision.default_rel_l2()),
                max_abs: None,
            },
        }
    }
}

/// Checks one bound: positive, and explained when looser than `default`.
fn check_bound(
    table: &str,
    rel_l2: f64,
    default: f64,
    reason: Option<&str>,
    path: &Path,
) -> anyhow::Result<()> {
    if !(rel_l2.is_finite() && rel_l2 > 0.0) {
        bail!("{table}.rel_l2 must be positive: {}", path.display());
    }
    if rel_l2 > default && reason.is_none_or(|r| r.trim().is_empty()) {
        bail!(
            "{table}.rel_l2 = {rel_l2} is looser than {default}: add {table}.reason: {}",
            path.display()
        );
    }
    Ok(())
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
    check_bound(
        "tolerance",
        tolerance.rel_l2,
        DEFAULT_REL_L2,
        tolerance.reason.as_deref(),
        &manifest_path,
    )?;
    let reduced = [
        ("tolerance.bf16", Precision::Bf16, &tolerance.bf16),
        ("tolerance.f16", Precision::F16, &tolerance.f16),
    ];
    for (table, precision, own) in reduced {
        if let Some(own) = own {
            check_bound(
                table,
                own.rel_l2,
                precision.default_rel_l2(),
                own.reason.as_deref(),
                &manifest_path,
            )?;
        }
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

/// The committed folder (where it exists: a harness built elsewhere, such as for a GPU machine,
/// may not find its build-time path) plus every folder in `STILLMOTION_GOLDEN_DIRS`.
#[must_use]
pub fn case_roots() -> Vec<PathBuf> {
    let committed = super::committed_dir();
    let mut roots: Vec<PathBuf> = committed
        .is_dir()
        .then_some(committed)
        .into_iter()
        .collect();
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

    #[test]
    fn reduced_precision_bounds() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("c");
        write_case(&dir, "rel_l2 = 1e-5\nmax_abs = 1e-6");
        let case = load_case(&dir).unwrap();
        let tolerance = &case.manifest.tolerance;
        let f32 = Limits {
            rel_l2: 1e-5,
            max_abs: Some(1e-6),
        };
        assert_eq!(tolerance.limits(Precision::F32), f32);
        // The default per precision, without the f32 per-element bound.
        let bf16 = tolerance.limits(Precision::Bf16);
        assert_eq!((bf16.rel_l2, bf16.max_abs), (1e-2, None));
        assert_eq!(tolerance.limits(Precision::F16).rel_l2, 2e-3);

        // A case looser than the default in f32 keeps its bound in bf16.
        write_case(&dir, "rel_l2 = 2e-2\nreason = \"quantized\"");
        let case = load_case(&dir).unwrap();
        assert_eq!(case.manifest.tolerance.limits(Precision::Bf16).rel_l2, 2e-2);

        // The case's own table wins; looser than the default needs a reason.
        write_case(
            &dir,
            "rel_l2 = 1e-5\n[tolerance.bf16]\nrel_l2 = 5e-3\nmax_abs = 0.5",
        );
        let case = load_case(&dir).unwrap();
        let own = case.manifest.tolerance.limits(Precision::Bf16);
        assert_eq!((own.rel_l2, own.max_abs), (5e-3, Some(0.5)));
        assert_eq!(case.manifest.tolerance.limits(Precision::F16).rel_l2, 2e-3);
        write_case(&dir, "rel_l2 = 1e-5\n[tolerance.f16]\nrel_l2 = 5e-3");
        let error = load_case(&dir).unwrap_err().to_string();
        assert!(error.contains("add tolerance.f16.reason"), "{error}");
        write_case(
            &dir,
            "rel_l2 = 1e-5\n[tolerance.f16]\nrel_l2 = 5e-3\nreason = \"long loop\"",
        );
        assert_eq!(
            load_case(&dir)
                .unwrap()
                .manifest
                .tolerance
                .limits(Precision::F16)
                .rel_l2,
            5e-3
        );
    }
}
