//! Build script for `stillmotion-kernels`.
//!
//! With the `cuda` feature, candle's kernels link `-lcudart` without a search path, so we add
//! the CUDA toolkit's library folder here (see `docs/gpu.md`). The CUDA sources of our own
//! kernels are compiled here as well once they exist (issue: CUDA kernels).

fn main() {
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=CUDA_PATH");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let cuda_home = std::env::var("CUDA_HOME")
        .or_else(|_| std::env::var("CUDA_PATH"))
        .unwrap_or_else(|_| "/opt/cuda13".to_owned());
    for lib in ["lib64", "lib"] {
        let dir = std::path::Path::new(&cuda_home).join(lib);
        if dir.is_dir() {
            println!("cargo:rustc-link-search=native={}", dir.display());
        }
    }
}
