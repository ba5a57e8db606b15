//! The reader of a build without libav (the engine's `ffmpeg` feature off): every container is
//! refused with a message that says so, and recipes are read from sidecars only.

use std::path::{Path, PathBuf};

use image::RgbImage;

use super::FrameRate;
use crate::EngineError;

const NO_LIBAV: &str = "this build of Stillmotion has no video decoder (built without the `ffmpeg` feature); \
     use a build with it, or a folder of PNG frames";

/// No container tags without libav: the caller falls back to the sidecar.
#[expect(
    clippy::unnecessary_wraps,
    reason = "the same signature as the libav reader's"
)]
pub(super) fn metadata_tag(_path: &Path, _key: &str) -> Result<Option<String>, EngineError> {
    Ok(None)
}

/// A reader that cannot be opened in this build.
pub struct VideoReader {
    path: PathBuf,
}

impl VideoReader {
    /// Refuses every file: this build cannot decode video.
    pub fn open(path: &Path, _max_pixels: u64) -> Result<Self, EngineError> {
        Err(Self {
            path: path.to_owned(),
        }
        .error(NO_LIBAV.to_owned()))
    }

    pub fn fps(&self) -> FrameRate {
        FrameRate::WAN
    }

    pub fn size(&self) -> (u32, u32) {
        (0, 0)
    }

    pub fn next_frame(&mut self) -> Result<Option<RgbImage>, EngineError> {
        Err(self.error(NO_LIBAV.to_owned()))
    }

    pub(super) fn error(&self, problem: String) -> EngineError {
        EngineError::VideoRead {
            problem,
            path: self.path.clone(),
        }
    }
}
