//! Output names: never overwrite, write beside the target, publish atomically.

use std::path::{Path, PathBuf};

use crate::EngineError;

/// `name.ext` → `name-<n>.ext` (`n` = 0 gives `path` itself).
pub(super) fn numbered(path: &Path, n: u32) -> PathBuf {
    if n == 0 {
        return path.to_owned();
    }
    let stem = path
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{n}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{n}"),
    };
    path.with_file_name(name)
}

/// The sidecar JSON beside `output` (`clip.mp4` → `clip.json`, a frame folder `clip` → `clip.json`).
pub fn sidecar_path(output: &Path) -> PathBuf {
    output.with_extension("json")
}

/// The in-progress name beside `target`: `clip.mp4` → `clip.mp4.partial`.
pub(super) fn partial_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    target.with_file_name(name)
}

/// Whether `target`, its sidecar or its partial file is taken.
fn taken(target: &Path) -> bool {
    target.exists() || sidecar_path(target).exists() || partial_path(target).exists()
}

/// The first free name among `path`, `path-1`, `path-2`, ….
pub(super) fn free_target(path: &Path) -> PathBuf {
    (0..u32::MAX)
        .map(|n| numbered(path, n))
        .find(|candidate| !taken(candidate))
        .unwrap_or_else(|| path.to_owned())
}

/// Moves the finished `partial` file to `target` (or the next free numbered name if someone
/// took `target` meanwhile) without ever replacing an existing file; returns the final path.
#[cfg_attr(
    not(feature = "ffmpeg"),
    allow(dead_code, reason = "only the libav sinks write single files")
)]
pub(super) fn publish_file(partial: &Path, target: &Path) -> Result<PathBuf, EngineError> {
    let mut n = 0;
    loop {
        let candidate = numbered(target, n);
        n += 1;
        // A hard link fails if the name exists, so a file that appeared meanwhile is never clobbered.
        match std::fs::hard_link(partial, &candidate) {
            Ok(()) => {
                std::fs::remove_file(partial).map_err(|error| {
                    EngineError::io("removing the partial file", partial, error)
                })?;
                return Ok(candidate);
            }
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            // Filesystems without hard links (FAT, some network shares): check, then rename.
            Err(_) if !candidate.exists() => {
                std::fs::rename(partial, &candidate).map_err(|error| {
                    EngineError::io("renaming the finished video", &candidate, error)
                })?;
                return Ok(candidate);
            }
            Err(_) => {}
        }
    }
}

/// Renames the finished `partial` folder to `target` or the next free numbered name.
pub(super) fn publish_dir(partial: &Path, target: &Path) -> Result<PathBuf, EngineError> {
    let candidate = (0..u32::MAX)
        .map(|n| numbered(target, n))
        .find(|candidate| !candidate.exists() && !sidecar_path(candidate).exists())
        .unwrap_or_else(|| target.to_owned());
    std::fs::rename(partial, &candidate).map_err(|error| {
        EngineError::io("renaming the finished frame folder", &candidate, error)
    })?;
    Ok(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_numbered_and_never_clobbered() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("clip.mp4");
        assert_eq!(free_target(&target), target);
        std::fs::write(&target, b"old").unwrap();
        assert_eq!(free_target(&target), dir.path().join("clip-1.mp4"));
        std::fs::write(dir.path().join("clip-1.json"), b"{}").unwrap();
        assert_eq!(free_target(&target), dir.path().join("clip-2.mp4"));
        assert_eq!(partial_path(&target), dir.path().join("clip.mp4.partial"));

        let partial = partial_path(&target);
        std::fs::write(&partial, b"new").unwrap();
        let published = publish_file(&partial, &target).unwrap();
        assert_eq!(published, dir.path().join("clip-1.mp4"));
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(std::fs::read(&published).unwrap(), b"new");
        assert!(!partial.exists());
    }
}
