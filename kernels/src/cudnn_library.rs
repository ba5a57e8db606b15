//! Making cuDNN loadable for the whole process before CUDA work starts.
//!
//! candle's convolutions go through cudarc's cuDNN bindings, which open `libcudnn.so.9` by
//! soname at first use and panic when it is missing. Opening the library ourselves from a
//! known path first (with `RTLD_GLOBAL`, kept open for the life of the process) makes that
//! later look-up find the already loaded copy, wherever it lives; and when no candidate
//! loads, the caller learns it up front and can choose the CPU instead of a panic.

use std::path::{Path, PathBuf};

/// Opens the first candidate that loads (a full path, or a soname for the system loader) and
/// keeps it loaded; returns which one, or every candidate's failure.
pub fn preload_cudnn(candidates: &[PathBuf]) -> Result<PathBuf, String> {
    let mut reasons = Vec::new();
    for candidate in candidates {
        match open_global(candidate) {
            Ok(()) => return Ok(candidate.clone()),
            Err(reason) => reasons.push(format!("{}: {reason}", candidate.display())),
        }
    }
    Err(if reasons.is_empty() {
        "no cuDNN library to try".to_owned()
    } else {
        reasons.join("; ")
    })
}

#[cfg(unix)]
fn open_global(path: &Path) -> Result<(), String> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: loading cuDNN runs its initialisers, which are made to be loaded this way (it
    // is how every CUDA framework opens it).
    let library =
        unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) }.map_err(|e| e.to_string())?;
    // Kept loaded on purpose: the process's later look-ups by soname resolve to it.
    let _handle = library.into_raw();
    Ok(())
}

#[cfg(not(unix))]
fn open_global(_path: &Path) -> Result<(), String> {
    Err("preloading cuDNN is implemented for Linux only".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_libraries_are_reported_by_name() {
        let error = preload_cudnn(&[PathBuf::from("/nonexistent/libcudnn.so.9")]).unwrap_err();
        assert!(error.contains("/nonexistent/libcudnn.so.9"), "{error}");
        assert_eq!(preload_cudnn(&[]).unwrap_err(), "no cuDNN library to try");
    }
}
