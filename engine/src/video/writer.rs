//! [`VideoWriter`]: streams RGB8 frames to a finished file, or leaves nothing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use image::RgbImage;

#[cfg(feature = "ffmpeg")]
use super::encode::LibavSink;
#[cfg(feature = "ffmpeg")]
use super::paths::publish_file;
use super::paths::{claim, free_target, partial_path, publish_dir};
use super::recipe::{EmbeddedRecipe, write_sidecar};
use super::{EncodeSettings, VideoFormat};
use crate::EngineError;

enum Sink {
    #[cfg(feature = "ffmpeg")]
    Libav(LibavSink),
    Png,
}

/// Writes one output. Frames are pushed one at a time; [`VideoWriter::finish`] publishes the
/// file under its final name. Dropping the writer before that (cancel, error, panic) deletes
/// the partial output.
pub struct VideoWriter {
    sink: Option<Sink>,
    /// This process's lock on the partial output (`paths::claim`), held until the writer goes.
    _claimed: std::fs::File,
    target: PathBuf,
    partial: PathBuf,
    width: u32,
    height: u32,
    frames: u64,
    recipe: Option<EmbeddedRecipe>,
}

impl VideoWriter {
    /// Starts writing a `width`×`height` clip meant for `target` (the extension is set from the
    /// format; a taken name becomes `name-1.ext`, …). `recipe` goes into the file where the
    /// container allows and into a sidecar `.json` at [`finish`](Self::finish).
    pub fn create(
        target: &Path,
        settings: &EncodeSettings,
        width: u32,
        height: u32,
        recipe: Option<EmbeddedRecipe>,
    ) -> Result<Self, EngineError> {
        let target = match settings.format.extension() {
            Some(ext) => target.with_extension(ext),
            None => target.with_extension(""),
        };
        let target = free_target(&target);
        let partial = partial_path(&target);
        let fail = |problem: String| EngineError::VideoWrite {
            problem,
            path: target.clone(),
        };
        if width == 0 || height == 0 {
            return Err(fail(format!("cannot write {width}×{height} frames")));
        }
        // Claimed before anything is written, so a later writer can tell this partial output
        // from a killed render's leftover.
        let png = settings.format == VideoFormat::PngFrames;
        if png {
            std::fs::create_dir(&partial)
                .map_err(|error| EngineError::io("creating the frame folder", &partial, error))?;
        }
        let claimed = claim(&partial).map_err(|error| {
            remove(&partial);
            EngineError::io("claiming the partial output", &partial, error)
        })?;
        let sink = if png {
            Sink::Png
        } else {
            Self::open_libav(&partial, settings, width, height, recipe.as_ref()).map_err(fail)?
        };
        tracing::debug!(target = %target.display(), ?settings, width, height, "video writer opened");
        Ok(Self {
            sink: Some(sink),
            _claimed: claimed,
            target,
            partial,
            width,
            height,
            frames: 0,
            recipe,
        })
    }

    #[cfg(feature = "ffmpeg")]
    fn open_libav(
        partial: &Path,
        settings: &EncodeSettings,
        width: u32,
        height: u32,
        recipe: Option<&EmbeddedRecipe>,
    ) -> Result<Sink, String> {
        let comment = recipe
            .filter(|_| settings.format.embeds_recipe())
            .map(EmbeddedRecipe::to_json);
        LibavSink::open(partial, settings, width, height, comment.as_deref())
            .map(Sink::Libav)
            .inspect_err(|_| remove(partial))
    }

    /// Without libav only the PNG folder can be written.
    #[cfg(not(feature = "ffmpeg"))]
    fn open_libav(
        _partial: &Path,
        settings: &EncodeSettings,
        _width: u32,
        _height: u32,
        _recipe: Option<&EmbeddedRecipe>,
    ) -> Result<Sink, String> {
        Err(format!(
            "this build of Stillmotion has no video encoder (built without the `ffmpeg` \
             feature), so it cannot write {:?}; choose PNG frames or use a build with it",
            settings.format
        ))
    }

    /// The name the file will have if nothing takes it first.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Frames written so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Adds one frame. Returns [`EngineError::Cancelled`] (and deletes the partial output)
    /// when `cancel` is set.
    pub fn push(&mut self, frame: &RgbImage, cancel: &AtomicBool) -> Result<(), EngineError> {
        if cancel.load(Ordering::Relaxed) {
            self.abandon();
            return Err(EngineError::Cancelled);
        }
        if frame.dimensions() != (self.width, self.height) {
            let (w, h) = frame.dimensions();
            let problem = format!(
                "frame {} is {w}×{h} but the video is {}×{}",
                self.frames, self.width, self.height
            );
            self.abandon();
            return Err(self.error(problem));
        }
        let result = match self.sink.as_mut() {
            #[cfg(feature = "ffmpeg")]
            Some(Sink::Libav(encoder)) => encoder.push(frame.as_raw()),
            Some(Sink::Png) => {
                let path = self.partial.join(format!("frame_{:05}.png", self.frames));
                frame
                    .save_with_format(&path, image::ImageFormat::Png)
                    .map_err(|error| format!("writing {} failed ({error})", path.display()))
            }
            None => Err("the writer was already closed".to_owned()),
        };
        match result {
            Ok(()) => {
                self.frames += 1;
                Ok(())
            }
            Err(problem) => {
                self.abandon();
                Err(self.error(problem))
            }
        }
    }

    /// Completes the file, publishes it under a free name, writes the sidecar, and returns the
    /// final path.
    pub fn finish(mut self) -> Result<PathBuf, EngineError> {
        if self.frames == 0 {
            self.abandon();
            return Err(self.error("no frames were written".to_owned()));
        }
        let published = match self.sink.take() {
            #[cfg(feature = "ffmpeg")]
            Some(Sink::Libav(encoder)) => match encoder.finish() {
                Ok(()) => publish_file(&self.partial, &self.target),
                Err(problem) => Err(self.error(problem)),
            },
            Some(Sink::Png) => publish_dir(&self.partial, &self.target),
            None => Err(self.error("the writer was already closed".to_owned())),
        };
        let path = match published {
            Ok(path) => path,
            Err(error) => {
                remove(&self.partial);
                return Err(error);
            }
        };
        if let Some(recipe) = &self.recipe {
            write_sidecar(&path, recipe)?;
        }
        tracing::info!(path = %path.display(), frames = self.frames, "video written");
        Ok(path)
    }

    fn error(&self, problem: String) -> EngineError {
        EngineError::VideoWrite {
            problem,
            path: self.target.clone(),
        }
    }

    /// Closes libav (so the file handle is gone) and deletes the partial output.
    fn abandon(&mut self) {
        self.sink = None;
        remove(&self.partial);
    }
}

impl Drop for VideoWriter {
    fn drop(&mut self) {
        if self.sink.is_some() {
            self.abandon();
        }
    }
}

/// Deletes a partial file or folder; a failure is logged, not raised (cleanup of cleanup).
fn remove(partial: &Path) {
    let result = if partial.is_dir() {
        std::fs::remove_dir_all(partial)
    } else if partial.exists() {
        std::fs::remove_file(partial)
    } else {
        Ok(())
    };
    if let Err(error) = result {
        tracing::warn!(%error, path = %partial.display(), "could not delete a partial video");
    }
}
