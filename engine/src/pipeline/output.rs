//! The output file's format, from the recipe's output path.

use std::path::Path;

use crate::EngineError;
use crate::video::VideoFormat;

/// The format an output path asks for: by extension, and a path with none is a PNG-frame folder.
pub fn format_for_output(path: &Path) -> Result<VideoFormat, EngineError> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    Ok(match ext.as_deref() {
        None => VideoFormat::PngFrames,
        Some("mp4") => VideoFormat::Mp4H264,
        Some("webm") => VideoFormat::WebmVp9,
        Some("webp") => VideoFormat::AnimatedWebp,
        Some("gif") => VideoFormat::Gif,
        Some(other) => {
            return Err(EngineError::BadRecipe {
                field: "output",
                problem: format!(
                    "has extension .{other}: use .mp4, .webm, .webp, .gif, or no extension for a folder of PNG frames"
                ),
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_pick_formats() {
        assert_eq!(
            format_for_output(Path::new("a/b.MP4")).unwrap(),
            VideoFormat::Mp4H264
        );
        assert_eq!(
            format_for_output(Path::new("frames")).unwrap(),
            VideoFormat::PngFrames
        );
        assert!(format_for_output(Path::new("x.avi")).is_err());
    }
}
