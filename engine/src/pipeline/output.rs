//! The output file's format, from the recipe's output path.

use std::path::Path;

use crate::EngineError;
use crate::recipe::VideoCodec;
use crate::video::VideoFormat;

/// The format of a recipe's output: its path's, with `codec` choosing within the container
/// (H.265 in an MP4). A codec the container cannot hold is refused, naming the one that can.
pub fn format_for_recipe(
    path: &Path,
    codec: Option<VideoCodec>,
) -> Result<VideoFormat, EngineError> {
    let by_extension = format_for_output(path)?;
    let refuse = |problem: &str| EngineError::BadRecipe {
        field: "codec",
        problem: format!("{problem}: {}", path.display()),
    };
    Ok(match (by_extension, codec) {
        (format, None) => format,
        (VideoFormat::Mp4H264, Some(VideoCodec::H264)) => VideoFormat::Mp4H264,
        (VideoFormat::Mp4H264, Some(VideoCodec::H265)) => VideoFormat::Mp4H265,
        (VideoFormat::WebmVp9, Some(VideoCodec::Vp9)) => VideoFormat::WebmVp9,
        (VideoFormat::Mp4H264, Some(VideoCodec::Vp9)) => {
            return Err(refuse(
                "vp9 is written to .webm files; give --out a .webm name",
            ));
        }
        (VideoFormat::WebmVp9, Some(_)) => {
            return Err(refuse(
                "h264 and h265 are written to .mp4 files; give --out a .mp4 name",
            ));
        }
        (_, Some(_)) => {
            return Err(refuse(
                "applies to .mp4 (h264, h265) and .webm (vp9) outputs only; WebP, GIF and PNG frames have their own",
            ));
        }
    })
}

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

    #[test]
    fn a_codec_chooses_within_its_container_and_mp4_stays_h264_by_default() {
        let mp4 = Path::new("clip.mp4");
        assert_eq!(format_for_recipe(mp4, None).unwrap(), VideoFormat::Mp4H264);
        assert_eq!(
            format_for_recipe(mp4, Some(VideoCodec::H264)).unwrap(),
            VideoFormat::Mp4H264
        );
        assert_eq!(
            format_for_recipe(mp4, Some(VideoCodec::H265)).unwrap(),
            VideoFormat::Mp4H265
        );
        let webm = Path::new("clip.webm");
        assert_eq!(
            format_for_recipe(webm, Some(VideoCodec::Vp9)).unwrap(),
            VideoFormat::WebmVp9
        );
        for (path, codec, hint) in [
            (mp4, VideoCodec::Vp9, ".webm"),
            (webm, VideoCodec::H265, ".mp4"),
            (Path::new("frames"), VideoCodec::H264, "own"),
        ] {
            let message = format_for_recipe(path, Some(codec))
                .unwrap_err()
                .to_string();
            assert!(
                message.starts_with("codec") && message.contains(hint),
                "{message}"
            );
        }
    }
}
