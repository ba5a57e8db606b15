//! The CUDA side of the build: detecting an NVIDIA GPU, installing the pinned CUDA 13.0
//! toolchain from PyPI, and building candle with its NVIDIA libraries loaded at run time.
//!
//! Why each step (details in `docs/gpu.md`): the driver on our target machines is CUDA 13.0,
//! which cannot load PTX from a newer nvcc, so nvcc is pinned to 13.0; candle-core 0.11.1 links
//! cudarc with `dynamic-linking`, which makes the binary refuse to start without libcuda, so we
//! build against a copy of candle-core whose cudarc uses `dynamic-loading` instead.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// CUDA 13.0 packages from PyPI: the compiler toolchain, then the run-time libraries candle opens.
const TOOLCHAIN_PACKAGES: &[&str] = &[
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-cccl==13.0.85",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-nvrtc==13.0.88",
    "nvidia-cublas==13.0.2.14",
    "nvidia-curand==10.4.0.35",
];

/// cuDNN for the fused attention: the frontend's headers (header-only graph API) and the
/// library with its headers. The build needs the headers; the app opens the library at run time.
const CUDNN_PACKAGES: &[&str] = &[
    "nvidia-cudnn-frontend==1.32.0",
    "nvidia-cudnn-cu13==9.19.0.56",
];

const CANDLE_CORE: &str = "candle-core-0.11.1";

/// An NVIDIA GPU that answered `nvidia-smi`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gpu {
    pub name: String,
    /// Compute capability without the dot, as candle's build wants it (`90` for an H100).
    pub compute_cap: String,
}

impl std::fmt::Display for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, compute capability {}", self.name, self.compute_cap)
    }
}

/// The first GPU `nvidia-smi` reports, or `None` when there is no working driver.
pub fn detect_nvidia_gpu() -> Option<Gpu> {
    let output = Command::new("nvidia-smi")
        .args(["--query-gpu=name,compute_cap", "--format=csv,noheader"])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    parse_gpu(&String::from_utf8_lossy(&output.stdout))
}

fn parse_gpu(csv: &str) -> Option<Gpu> {
    let line = csv.lines().next()?;
    let (name, cap) = line.rsplit_once(',')?;
    let compute_cap: String = cap.trim().chars().filter(char::is_ascii_digit).collect();
    (!compute_cap.is_empty()).then(|| Gpu {
        name: name.trim().to_owned(),
        compute_cap,
    })
}

/// An installed CUDA toolchain.
pub struct Toolchain {
    pub cuda_home: PathBuf,
    /// `pip install --target` folder of [`CUDNN_PACKAGES`].
    pub cudnn_site: PathBuf,
}

impl Toolchain {
    /// Sets up a cargo build command: toolkit on PATH, target architecture, patched candle-core.
    pub fn apply(&self, build: &mut Command, gpu: &Gpu) -> anyhow::Result<()> {
        let patched = patched_candle_core()?;
        build
            .env("CUDA_HOME", &self.cuda_home)
            .env("CUDA_COMPUTE_CAP", &gpu.compute_cap)
            .env("PATH", prepend_path("PATH", &self.cuda_home.join("bin")))
            .env(
                "STILLMOTION_CUDNN_INCLUDE",
                self.cudnn_site.join("nvidia").join("cudnn").join("include"),
            )
            .env(
                "STILLMOTION_CUDNN_FRONTEND_INCLUDE",
                self.cudnn_site.join("include"),
            )
            .arg("--config")
            .arg(format!(
                "patch.crates-io.candle-core.path={:?}",
                patched.display().to_string()
            ));
        Ok(())
    }

    /// Lets the app find the CUDA libraries this toolchain brought.
    pub fn apply_runtime(&self, app: &mut Command, _gpu: &Gpu) {
        app.env(
            "LD_LIBRARY_PATH",
            prepend_path("LD_LIBRARY_PATH", &self.cuda_home.join("lib")),
        )
        .env("STILLMOTION_CUDNN_LIBRARY", self.cudnn_library());
    }

    /// The cuDNN library installed beside the headers.
    pub fn cudnn_library(&self) -> PathBuf {
        self.cudnn_site
            .join("nvidia")
            .join("cudnn")
            .join("lib")
            .join("libcudnn.so.9")
    }
}

fn prepend_path(variable: &str, dir: &Path) -> std::ffi::OsString {
    let mut paths = vec![dir.to_owned()];
    if let Some(existing) = std::env::var_os(variable) {
        paths.extend(std::env::split_paths(&existing));
    }
    std::env::join_paths(paths).unwrap_or_else(|_| dir.as_os_str().to_owned())
}

/// Installs the pinned toolchain under the cache folder once, and returns it.
pub fn ensure_toolchain() -> anyhow::Result<Toolchain> {
    let site = super::paths::cache_dir().join("cuda13-pip").join("site");
    let cuda_home = site.join("nvidia").join("cu13");
    let nvcc = cuda_home.join("bin").join("nvcc");
    if !nvcc.is_file() {
        println!("xtask: installing the CUDA 13.0 toolchain from PyPI (about 700 MB, once)");
        super::cargo::run(
            Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--no-deps", "--target"])
                .arg(&site)
                .args(TOOLCHAIN_PACKAGES),
        )
        .context(
            "installing the CUDA toolchain needs python3 with pip (apt-get install python3-pip)",
        )?;
    }
    let cudnn_site = super::paths::cache_dir().join("cudnn-pip").join("site");
    if !cudnn_site
        .join("include")
        .join("cudnn_frontend.h")
        .is_file()
    {
        println!(
            "xtask: installing cuDNN 9.19 and its frontend headers from PyPI (about 370 MB, once)"
        );
        super::cargo::run(
            Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--no-deps", "--target"])
                .arg(&cudnn_site)
                .args(CUDNN_PACKAGES),
        )
        .context("installing cuDNN needs python3 with pip (apt-get install python3-pip)")?;
    }
    let lib = cuda_home.join("lib");
    link_if_missing(Path::new("lib"), &cuda_home.join("lib64"))?;
    link_if_missing(Path::new("libcudart.so.13"), &lib.join("libcudart.so"))?;
    let version = super::cargo::output(Command::new(&nvcc).arg("--version"))?;
    if !version.contains("release 13.0") {
        bail!("{} is not CUDA 13.0: {version}", nvcc.display());
    }
    Ok(Toolchain {
        cuda_home,
        cudnn_site,
    })
}

fn link_if_missing(target: &Path, link: &Path) -> anyhow::Result<()> {
    if link.symlink_metadata().is_ok() {
        return Ok(());
    }
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} -> {}", link.display(), target.display()))
}

/// A copy of candle-core whose cudarc is loaded at run time (`dynamic-loading`), so the app
/// starts on machines without an NVIDIA driver. Made once from cargo's registry source.
fn patched_candle_core() -> anyhow::Result<PathBuf> {
    let patched = super::paths::cache_dir().join("patched").join(CANDLE_CORE);
    let manifest = patched.join("Cargo.toml");
    if manifest.is_file() {
        return Ok(patched);
    }
    super::cargo::run(&mut super::cargo::command(&["fetch", "--locked"]))?;
    let original = registry_source(CANDLE_CORE)?;
    copy_tree(&original, &patched)?;
    let text = std::fs::read_to_string(&manifest)?;
    if !text.contains("\"dynamic-linking\"") {
        bail!("{CANDLE_CORE}'s manifest no longer names dynamic-linking; update xtask/src/cuda.rs");
    }
    std::fs::write(
        &manifest,
        text.replace("\"dynamic-linking\"", "\"dynamic-loading\""),
    )?;
    Ok(patched)
}

fn registry_source(package: &str) -> anyhow::Result<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"),
        PathBuf::from,
    );
    let registry = cargo_home.join("registry").join("src");
    for index in
        std::fs::read_dir(&registry).with_context(|| format!("listing {}", registry.display()))?
    {
        let candidate = index?.path().join(package);
        if candidate.join("Cargo.toml").is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "{package} is not in {}; run cargo fetch",
        registry.display()
    )
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let destination = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &destination)?;
        } else {
            std::fs::copy(entry.path(), &destination)?;
        }
    }
    Ok(())
}

/// Compile-checks the `cuda` feature, our CUDA kernels and the cuDNN shim included, installing
/// the pinned toolchain first. Runs on machines without a GPU (CI): nothing is executed.
pub fn compile_check() -> anyhow::Result<()> {
    println!("xtask: compile-checking the `cuda` feature (kernels built with nvcc, nothing run)");
    let toolchain = ensure_toolchain()?;
    let gpu = detect_nvidia_gpu().unwrap_or(Gpu {
        name: "none (compile check)".to_owned(),
        compute_cap: "90".to_owned(),
    });
    let lock = std::fs::read("Cargo.lock").context("reading Cargo.lock")?;
    // Clippy rather than check: the CUDA-only code is linted too (the plain clippy run cannot
    // see it), at the cost of a check.
    let mut check = super::cargo::command(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--features",
        "stillmotion-app/cuda",
    ]);
    // `apply` adds cargo's `--config` patch, which must come before clippy's own arguments.
    toolchain.apply(&mut check, &gpu)?;
    check.args(["--", "-D", "warnings"]);
    let result = super::cargo::run(&mut check);
    // The patch rewrites candle-core's entry in Cargo.lock; the repository keeps the plain one.
    std::fs::write("Cargo.lock", lock).context("restoring Cargo.lock")?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nvidia_smi_csv() {
        assert_eq!(
            parse_gpu("NVIDIA H100 80GB HBM3, 9.0\n"),
            Some(Gpu {
                name: "NVIDIA H100 80GB HBM3".to_owned(),
                compute_cap: "90".to_owned()
            })
        );
        assert_eq!(parse_gpu(""), None);
        assert_eq!(parse_gpu("No devices were found"), None);
    }
}
