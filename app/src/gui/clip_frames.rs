//! The frames of a finished clip, whatever it was written as: a video file (decoded by the
//! engine's reader) or a folder of PNG frames (the `png_frames` output format), read in name
//! order at the rate its recipe says.

use std::path::{Path, PathBuf};

use stillmotion_engine::EngineError;
use stillmotion_engine::image_input::{self, RgbImage};
use stillmotion_engine::recipe::Recipe;
use stillmotion_engine::video::VideoReader;

/// The rate a frame folder plays at when its recipe does not say (Wan's 16 fps).
pub const FOLDER_FALLBACK_FPS: f64 = 16.0;

/// An open clip, read one frame at a time.
pub enum ClipFrames {
    Video(Box<VideoReader>),
    Folder {
        /// The first frame, read at open for the size, until it is taken.
        first: Option<RgbImage>,
        rest: std::vec::IntoIter<PathBuf>,
        size: (u32, u32),
        fps: f64,
        max_pixels: u64,
    },
}

impl ClipFrames {
    /// Opens `path`: a folder is read as PNG frames, anything else as a video.
    ///
    /// # Errors
    /// The reader's error; a folder without PNG files; a frame that is not a readable image.
    pub fn open(path: &Path, max_pixels: u64) -> Result<Self, EngineError> {
        if !path.is_dir() {
            return Ok(Self::Video(Box::new(VideoReader::open(path, max_pixels)?)));
        }
        let mut paths = png_files(path)?;
        if paths.is_empty() {
            return Err(EngineError::io(
                "reading the frames of a folder",
                path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the folder holds no PNG frames",
                ),
            ));
        }
        let first = image_input::load_rgb8(&paths.remove(0), max_pixels)?;
        Ok(Self::Folder {
            size: first.dimensions(),
            first: Some(first),
            rest: paths.into_iter(),
            fps: folder_fps(path),
            max_pixels,
        })
    }

    /// Frames per second.
    #[must_use]
    pub fn fps(&self) -> f64 {
        match self {
            Self::Video(reader) => reader.fps().as_f64(),
            Self::Folder { fps, .. } => *fps,
        }
    }

    /// Width and height of a frame.
    #[must_use]
    pub fn size(&self) -> (u32, u32) {
        match self {
            Self::Video(reader) => reader.size(),
            Self::Folder { size, .. } => *size,
        }
    }

    /// The next frame, or `None` at the end.
    ///
    /// # Errors
    /// The decoder's error, or a frame file that cannot be read.
    pub fn next_frame(&mut self) -> Result<Option<RgbImage>, EngineError> {
        match self {
            Self::Video(reader) => reader.next_frame(),
            Self::Folder {
                first,
                rest,
                max_pixels,
                ..
            } => match first.take() {
                Some(frame) => Ok(Some(frame)),
                None => rest
                    .next()
                    .map(|path| image_input::load_rgb8(&path, *max_pixels))
                    .transpose(),
            },
        }
    }
}

/// The PNG files of `dir`, in name order (`frame_00000.png`, `frame_00001.png`, …).
fn png_files(dir: &Path) -> Result<Vec<PathBuf>, EngineError> {
    let listing = |error| EngineError::io("listing the frames of a folder", dir, error);
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(listing)? {
        let path = entry.map_err(listing)?.path();
        if path.is_file()
            && path
                .extension()
                .is_some_and(|ext| ext.eq_ignore_ascii_case("png"))
        {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// The output rate its recipe (the sidecar beside the folder) gives, else 16 fps.
fn folder_fps(dir: &Path) -> f64 {
    stillmotion_engine::video::read_recipe(dir)
        .ok()
        .and_then(|embedded| serde_json::from_value::<Recipe>(embedded.recipe).ok())
        .map(|recipe| recipe.output_fps())
        .filter(|fps| fps.is_finite() && *fps > 0.0)
        .unwrap_or(FOLDER_FALLBACK_FPS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_plays_its_png_frames_in_name_order_at_the_fallback_rate() {
        let dir = tempfile::tempdir().unwrap();
        let clip = dir.path().join("clip");
        std::fs::create_dir(&clip).unwrap();
        for (index, shade) in [(2, 30_u8), (0, 10), (1, 20)] {
            RgbImage::from_pixel(6, 4, image::Rgb([shade, 0, 0]))
                .save(clip.join(format!("frame_{index:05}.png")))
                .unwrap();
        }
        std::fs::write(clip.join("notes.txt"), "not a frame").unwrap();
        let mut frames = ClipFrames::open(&clip, 1 << 20).unwrap();
        assert_eq!(frames.size(), (6, 4));
        assert!((frames.fps() - FOLDER_FALLBACK_FPS).abs() < f64::EPSILON);
        let mut shades = Vec::new();
        while let Some(frame) = frames.next_frame().unwrap() {
            shades.push(frame.get_pixel(0, 0)[0]);
        }
        assert_eq!(shades, [10, 20, 30]);

        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(ClipFrames::open(&empty, 1 << 20).is_err());
    }
}
