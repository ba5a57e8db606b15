//! Build script for `stillmotion-kernels`.
//!
//! Without the `cuda` feature it does nothing. With it:
//! - each `cuda/*.cu` file becomes a fatbin (SASS for every architecture we ship, plus PTX of
//!   the newest for GPUs after it) that the crate embeds and loads at run time;
//! - `cudnn/shim.cpp`, our C ABI over cuDNN's fused attention and convolutions, is compiled with the host
//!   C++ compiler against the cuDNN frontend headers; nothing links libcudnn (it is opened at
//!   run time, so a machine without cuDNN still runs);
//! - candle's kernels link `-lcudart` without a search path, so the toolkit's library folder is
//!   added here (see `docs/gpu.md`).
//!
//! `cargo xtask` installs the CUDA 13.0 toolchain and the cuDNN headers and passes their
//! folders through `CUDA_HOME` and `STILLMOTION_CUDNN_INCLUDE` /
//! `STILLMOTION_CUDNN_FRONTEND_INCLUDE`. `STILLMOTION_CUDA_ARCHS` (e.g. `90a`) narrows the
//! architectures for a faster developer build.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Every architecture a user's GPU may have: Ampere, Ampere consumer, Ada, Hopper, Blackwell
/// data centre, Blackwell consumer.
const ARCHITECTURES: &str = "80,86,89,90a,100,120";

/// Our CUDA sources, and whether each may use fast (approximate) math: attention's exp2 may;
/// the warp must not (it is bit-exact with its reference) and the norms need not.
const CUDA_SOURCES: &[(&str, bool)] = &[
    ("flash_attention", true),
    ("sage_attention", true),
    ("sage_wgmma", true),
    ("wgmma_attention", true),
    ("glue", false),
    ("warp", false),
    ("fp8", false),
];
/// Headers the sources include.
const CUDA_HEADERS: &[&str] = &["mma_common.cuh", "wgmma_common.cuh"];

fn main() {
    for variable in [
        "CUDA_HOME",
        "CUDA_PATH",
        "STILLMOTION_CUDA_ARCHS",
        "STILLMOTION_CUDNN_INCLUDE",
        "STILLMOTION_CUDNN_FRONTEND_INCLUDE",
    ] {
        println!("cargo:rerun-if-env-changed={variable}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let cuda_home = PathBuf::from(
        std::env::var("CUDA_HOME")
            .or_else(|_| std::env::var("CUDA_PATH"))
            .unwrap_or_else(|_| "/opt/cuda13".to_owned()),
    );
    for lib in ["lib64", "lib"] {
        let dir = cuda_home.join(lib);
        if dir.is_dir() {
            println!("cargo:rustc-link-search=native={}", dir.display());
        }
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_else(|_| fail("OUT_DIR")));
    compile_fatbins(&cuda_home, &out_dir);
    compile_cudnn_shim(&cuda_home);
}

fn fail(what: &str) -> ! {
    panic!("stillmotion-kernels build: {what}")
}

fn compile_fatbins(cuda_home: &Path, out_dir: &Path) {
    let nvcc = cuda_home.join("bin").join("nvcc");
    let nvcc = if nvcc.is_file() {
        nvcc
    } else {
        PathBuf::from("nvcc")
    };
    let archs = std::env::var("STILLMOTION_CUDA_ARCHS").unwrap_or_else(|_| ARCHITECTURES.into());
    let archs: Vec<&str> = archs
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect();
    for header in CUDA_HEADERS {
        println!("cargo:rerun-if-changed=cuda/{header}");
    }
    for &(source, fast_math) in CUDA_SOURCES {
        let input = PathBuf::from("cuda").join(format!("{source}.cu"));
        println!("cargo:rerun-if-changed={}", input.display());
        let output = out_dir.join(format!("{source}.fatbin"));
        let mut command = Command::new(&nvcc);
        command
            .args(["--fatbin", "-O3", "-std=c++17"])
            .arg("-o")
            .arg(&output)
            .arg(&input);
        if fast_math {
            command.arg("--use_fast_math");
        }
        for (i, arch) in archs.iter().enumerate() {
            // SASS for each; PTX of the newest too, so a later GPU can JIT it.
            let code = if i + 1 == archs.len() {
                format!("[sm_{arch},compute_{arch}]")
            } else {
                format!("sm_{arch}")
            };
            command.arg(format!("-gencode=arch=compute_{arch},code={code}"));
        }
        let status = command.status().unwrap_or_else(|error| {
            fail(&format!(
                "cannot run {} ({error}); `cargo xtask` installs the CUDA 13.0 toolchain (docs/gpu.md)",
                nvcc.display()
            ))
        });
        if !status.success() {
            fail(&format!("nvcc failed on {}", input.display()));
        }
    }
}

fn compile_cudnn_shim(cuda_home: &Path) {
    let include = |variable: &str, what: &str| -> PathBuf {
        let dir = std::env::var_os(variable).map_or_else(
            || {
                fail(&format!(
                    "{variable} is not set: it names the folder of the {what}; `cargo xtask` installs them (docs/gpu.md)"
                ))
            },
            PathBuf::from,
        );
        if !dir.is_dir() {
            fail(&format!("{variable}={} is not a folder", dir.display()));
        }
        dir
    };
    let cudnn = include("STILLMOTION_CUDNN_INCLUDE", "cuDNN 9 headers");
    let frontend = include(
        "STILLMOTION_CUDNN_FRONTEND_INCLUDE",
        "cuDNN frontend headers",
    );
    let shim = Path::new("cudnn").join("shim.cpp");
    println!("cargo:rerun-if-changed={}", shim.display());
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file(&shim)
        .include(frontend)
        .include(cudnn)
        .include(cuda_home.join("include"))
        .define("NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING", None)
        .define("CUDNN_FRONTEND_SKIP_JSON_LIB", None)
        .flag_if_supported("-Wno-unused-function")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-missing-field-initializers")
        .flag_if_supported("-Wno-sign-compare")
        .compile("stillmotion_cudnn_shim");
    println!("cargo:rustc-link-lib=dylib=dl");
}
