//! Video files in and out: the writer that turns RGB8 frames into a player-ready file, the
//! recipe stored inside it and beside it, and the reader that decodes existing clips.
//!
//! Everything goes through libav (`ffmpeg-next`); the PNG frame sequence through `image`.
//!
//! **Colour.** Frames are full-range RGB (what the VAE decodes to). For YUV formats they are
//! converted by swscale (the `scale` filter) with the BT.709 matrix to limited ("tv") range,
//! and the stream is tagged BT.709 primaries / transfer / matrix, limited range, so players do
//! not wash out or shift the colours. Animated WebP is the exception: libwebp defines its YUV
//! as BT.601 limited range and has no tags, so it gets the BT.601 matrix. GIF is paletted RGB.
//!
//! **Odd sizes.** 4:2:0 needs even sides: an odd last column or row is cropped (never padded:
//! padding invents pixels a player would show as a border). Wan's outputs are multiples of 16,
//! so this only touches clips from elsewhere. GIF, WebP and PNG keep odd sizes.
//!
//! **Files.** A writer streams to `name.ext.partial` beside the target and renames it only when
//! complete; cancelling, an error, or dropping the writer removes it. An existing file is never
//! overwritten: the next free numbered name (`name-1.ext`, `name-2.ext`, …) is used.

#[cfg(feature = "ffmpeg")]
mod encode;
#[cfg(feature = "ffmpeg")]
mod graph;
#[cfg(feature = "ffmpeg")]
mod hvc1;
mod paths;
#[cfg_attr(not(feature = "ffmpeg"), path = "reader_without_libav.rs")]
pub mod reader;
pub mod recipe;
pub mod writer;

use std::path::Path;

use image::RgbImage;

pub use reader::VideoReader;
pub use recipe::{EmbeddedRecipe, ModelFileRecord, read_recipe};
pub use writer::VideoWriter;

use crate::EngineError;

/// Whether this build can read and write video containers (libav). Builds without the engine's
/// `ffmpeg` feature (the GPU benchmark, headless parity runs on machines without libav) write
/// PNG frame folders only.
pub const HAS_LIBAV: bool = cfg!(feature = "ffmpeg");

/// A decoded clip.
#[derive(Clone, Debug)]
pub struct DecodedVideo {
    pub fps: FrameRate,
    pub width: u32,
    pub height: u32,
    pub frames: Vec<RgbImage>,
}

/// Decodes a whole clip, refusing clips with more than `max_frames` frames or frames over
/// `max_pixels`.
pub fn read_video(
    path: &Path,
    max_frames: usize,
    max_pixels: u64,
) -> Result<DecodedVideo, EngineError> {
    let mut reader = VideoReader::open(path, max_pixels)?;
    let mut frames = Vec::new();
    while let Some(frame) = reader.next_frame()? {
        if frames.len() == max_frames {
            return Err(reader.error(format!("the clip has more than {max_frames} frames")));
        }
        frames.push(frame);
    }
    let Some(first) = frames.first() else {
        return Err(reader.error("the video has no decodable frame".to_owned()));
    };
    Ok(DecodedVideo {
        fps: reader.fps(),
        width: first.width(),
        height: first.height(),
        frames,
    })
}
/// A frame rate as an exact fraction (16/1 for Wan; 48/1 or 30000/1001 after interpolation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FrameRate {
    pub numerator: u32,
    pub denominator: u32,
}

impl FrameRate {
    /// Wan2.2's native output rate.
    pub const WAN: Self = Self::whole(16);

    /// `fps` frames per second.
    pub const fn whole(fps: u32) -> Self {
        Self {
            numerator: fps,
            denominator: 1,
        }
    }

    pub fn as_f64(self) -> f64 {
        f64::from(self.numerator) / f64::from(self.denominator)
    }

    /// The exact fraction for a rate given as a decimal: the smallest denominator up to 1001
    /// within 1e-9 (relative) of `fps`, so 24 is 24/1, 29.97 is 2997/100 and 30000/1001 as a
    /// float is 30000/1001. `None` for rates that are not positive and finite.
    pub fn from_fps(fps: f64) -> Option<Self> {
        if !(fps.is_finite() && fps > 0.0 && fps < f64::from(u32::MAX) / 1001.0) {
            return None;
        }
        let mut best: Option<(f64, Self)> = None;
        for denominator in 1..=1001_u32 {
            let numerator = (fps * f64::from(denominator)).round();
            if numerator < 1.0 {
                continue;
            }
            let rate = Self {
                numerator: numerator as u32,
                denominator,
            };
            let error = (rate.as_f64() - fps).abs() / fps;
            if error <= 1e-9 {
                return Some(rate);
            }
            if best.is_none_or(|(e, _)| error < e) {
                best = Some((error, rate));
            }
        }
        best.map(|(_, rate)| rate)
    }
}

/// The container and codec of an output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VideoFormat {
    /// MP4 with H.264 (libx264), yuv420p: plays everywhere. The default.
    #[default]
    Mp4H264,
    /// MP4 with H.265 (libx265), yuv420p, tagged `hvc1` so Apple players open it: smaller,
    /// less universally playable.
    Mp4H265,
    /// WebM with VP9 (libvpx-vp9), yuv420p.
    WebmVp9,
    /// Animated WebP (libwebp), looping; for sharing.
    AnimatedWebp,
    /// Animated GIF with one palette for the clip, looping; for sharing.
    Gif,
    /// A folder of `frame_00000.png`, `frame_00001.png`, …: lossless RGB.
    PngFrames,
}

impl VideoFormat {
    /// The file extension (none for the PNG folder).
    pub fn extension(self) -> Option<&'static str> {
        match self {
            Self::Mp4H264 | Self::Mp4H265 => Some("mp4"),
            Self::WebmVp9 => Some("webm"),
            Self::AnimatedWebp => Some("webp"),
            Self::Gif => Some("gif"),
            Self::PngFrames => None,
        }
    }

    /// Whether the container carries the recipe itself (all formats also get a sidecar).
    pub fn embeds_recipe(self) -> bool {
        matches!(self, Self::Mp4H264 | Self::Mp4H265 | Self::WebmVp9)
    }
}

/// How to encode: format, rate and quality.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct EncodeSettings {
    pub format: VideoFormat,
    pub fps: FrameRate,
    /// Constant rate factor for H.264/H.265/VP9 (lower is better; 0–51, VP9 0–63). WebP uses
    /// `100 - 1.5 × crf` as its quality.
    pub crf: u8,
    /// x264/x265 speed preset (`ultrafast` … `veryslow`); VP9 maps it to `cpu-used`.
    pub preset: String,
}

impl Default for EncodeSettings {
    fn default() -> Self {
        Self {
            format: VideoFormat::Mp4H264,
            fps: FrameRate::WAN,
            crf: 17,
            preset: "medium".to_owned(),
        }
    }
}

#[cfg(test)]
mod frame_rate_tests {
    use super::FrameRate;

    #[test]
    fn decimal_rates_become_exact_fractions() {
        let rate = |fps: f64| FrameRate::from_fps(fps).map(|r| (r.numerator, r.denominator));
        assert_eq!(rate(24.0), Some((24, 1)));
        assert_eq!(rate(29.97), Some((2997, 100)));
        assert_eq!(rate(30000.0 / 1001.0), Some((30000, 1001)));
        assert_eq!(rate(24000.0 / 1001.0), Some((24000, 1001)));
        assert_eq!(rate(12.5), Some((25, 2)));
        assert_eq!(rate(0.0), None);
        assert_eq!(rate(f64::NAN), None);
    }
}
