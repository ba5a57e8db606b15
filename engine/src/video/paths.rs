//! Output names: never overwrite, write beside the target, publish atomically.

use std::fs::{File, OpenOptions, TryLockError};
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

/// Whether `target`, its sidecar or its partial file is taken. A partial file that no writer
/// holds ([`claim`]) is a killed render's leftover: it is removed, and does not take the name.
fn taken(target: &Path) -> bool {
    let partial = partial_path(target);
    if partial.exists() {
        remove_if_abandoned(&partial);
    }
    target.exists() || sidecar_path(target).exists() || partial.exists()
}

/// Claims `partial` (a file, created here if missing, or a frame folder) for this process with
/// an exclusive advisory lock, held as long as the returned handle lives. The operating system
/// drops the lock when the process ends, however it ends (a crash, a kill, a power cut), so a
/// partial output whose lock is free belongs to no running writer.
pub(super) fn claim(partial: &Path) -> std::io::Result<File> {
    let file = if partial.is_dir() {
        File::open(partial)?
    } else {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(partial)?
    };
    file.try_lock().map_err(|error| match error {
        TryLockError::Error(error) => error,
        TryLockError::WouldBlock => std::io::Error::new(
            std::io::ErrorKind::ResourceBusy,
            "another writer holds this partial output",
        ),
    })?;
    Ok(file)
}

/// Deletes `partial` when no writer holds it (see [`claim`]); keeps it when one does, or when
/// its lock cannot be read (a filesystem without locks): never a live writer's file.
fn remove_if_abandoned(partial: &Path) {
    let Ok(file) = File::open(partial) else {
        return;
    };
    if file.try_lock().is_err() {
        return;
    }
    let removed = if partial.is_dir() {
        std::fs::remove_dir_all(partial)
    } else {
        std::fs::remove_file(partial)
    };
    match removed {
        Ok(()) => tracing::info!(
            path = %partial.display(),
            "removed the partial output of a render that was killed"
        ),
        Err(error) => tracing::warn!(
            %error,
            path = %partial.display(),
            "could not remove the partial output of a killed render"
        ),
    }
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

    #[test]
    fn a_killed_renders_partial_output_is_removed_and_a_live_writers_kept() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("clip.mp4");
        let partial = partial_path(&target);
        // Left by a render that was killed: no process holds it.
        std::fs::write(&partial, b"half a video").unwrap();
        assert_eq!(free_target(&target), target);
        assert!(!partial.exists(), "the leftover is removed");

        // A writer that is still running holds its claim: the name stays taken.
        let held = claim(&partial).unwrap();
        assert_eq!(free_target(&target), dir.path().join("clip-1.mp4"));
        assert!(partial.exists(), "a live writer's file is never removed");
        assert!(claim(&partial).is_err(), "one claim at a time");
        // Its process ends (the lock goes with it, however it ends).
        drop(held);
        assert_eq!(free_target(&target), target);
        assert!(!partial.exists());

        // A frame folder left behind, frames and all.
        let frames = dir.path().join("frames");
        let folder = partial_path(&frames);
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("frame_00000.png"), b"png").unwrap();
        let held = claim(&folder).unwrap();
        assert_eq!(free_target(&frames), dir.path().join("frames-1"));
        drop(held);
        assert_eq!(free_target(&frames), frames);
        assert!(!folder.exists());
    }
}
