//! Flags of `stillmotion interpolate`.

use std::path::PathBuf;

use stillmotion_engine::EngineError;
use stillmotion_engine::recipe::InterpolateRequest;

/// `stillmotion interpolate`: RIFE frame interpolation of an existing clip.
#[derive(Clone, Debug, clap::Args)]
pub struct InterpolateArgs {
    /// The clip: a video file (MP4, MOV, WebM, GIF) or a folder of PNG frames.
    #[arg(long = "in")]
    pub input: PathBuf,
    /// Frames per input pair: 2 doubles the frame rate.
    #[arg(long, default_value_t = 2)]
    pub multiplier: u32,
    /// Resample to this frame rate (e.g. 24, 30, 29.97) instead of multiplying; frames that
    /// fall on input frames are kept exactly.
    #[arg(long, conflicts_with = "multiplier")]
    pub target_fps: Option<f64>,
    /// Frame rate of a PNG-frame folder (a video file's own rate is used otherwise).
    #[arg(long, default_value_t = 16)]
    pub fps: u32,
    /// Also interpolate from the last frame back to the first, for seamless loops.
    #[arg(long = "loop")]
    pub loop_clip: bool,
    /// Output: a video file (.mp4, .webm, .webp, .gif) or a folder for PNG frames.
    #[arg(long)]
    pub out: PathBuf,
    /// Print one JSON event per line on stdout instead of a progress line.
    #[arg(long)]
    pub json: bool,
}

impl InterpolateArgs {
    /// The validated request; a refusal names the flag.
    pub fn to_request(&self) -> anyhow::Result<InterpolateRequest> {
        let request = InterpolateRequest {
            input: self.input.clone(),
            frames_fps: self.fps,
            multiplier: self.multiplier,
            target_fps: self.target_fps,
            loop_clip: self.loop_clip,
            output: self.out.clone(),
        };
        request.validate().map_err(|error| match error {
            EngineError::BadRecipe { field, problem } => anyhow::anyhow!("--{field} {problem}"),
            other => anyhow::Error::new(other),
        })?;
        Ok(request)
    }
}
