//! The live preview of a running render (its `Event::Preview`s), animated in the central area
//! so a bad seed can be stopped at step one: the engine's cheap latent → RGB projection of each
//! denoising step, and, when the job sends them, the VAE decodes of every few steps, which stay
//! on screen in place of the projections until a newer one comes.

use std::time::{Duration, Instant};

use stillmotion_engine::runtime::JobId;
use stillmotion_engine::sampling::{LatentPreview, PreviewChoice, PreviewKind};

use crate::ui::theme;

/// Each latent frame stands for 4 video frames at 16 fps (redrawn every 250 ms).
const LATENT_FRAMES_PER_SEC: f32 = 4.0;
/// A VAE preview has every video frame: played at the clip's 16 fps.
const VIDEO_FRAMES_PER_SEC: f32 = 16.0;

/// Whether a preview of `kind` for `job_id` takes the place of what is `shown` (its job and
/// kind): another job's, or anything but a projection over a VAE decode of the same job.
#[must_use]
pub fn replaces(shown: Option<(JobId, PreviewKind)>, job_id: JobId, kind: PreviewKind) -> bool {
    match shown {
        Some((shown_job, PreviewKind::VaeDecode)) if shown_job == job_id => {
            kind == PreviewKind::VaeDecode
        }
        _ => true,
    }
}

/// The latest preview of the running render, uploaded as one texture per latent frame.
pub struct LivePreview {
    pub job_id: JobId,
    pub preview: LatentPreview,
    textures: Vec<egui::TextureHandle>,
    since: Instant,
}

impl LivePreview {
    #[must_use]
    pub fn new(ctx: &egui::Context, job_id: JobId, preview: LatentPreview) -> Self {
        let textures = preview
            .frames
            .iter()
            .enumerate()
            .map(|(index, frame)| {
                ctx.load_texture(
                    format!("live preview {index}"),
                    egui::ColorImage::from_rgb([preview.width, preview.height], frame),
                    egui::TextureOptions::LINEAR,
                )
            })
            .collect();
        Self {
            job_id,
            preview,
            textures,
            since: Instant::now(),
        }
    }

    /// The job and kind of what is on screen.
    #[must_use]
    pub fn shows(&self) -> (JobId, PreviewKind) {
        (self.job_id, self.preview.kind)
    }

    /// Which frame is on screen now (the preview loops).
    fn frame_on_screen(&self) -> usize {
        let rate = match self.preview.kind {
            PreviewKind::Projection => LATENT_FRAMES_PER_SEC,
            PreviewKind::VaeDecode => VIDEO_FRAMES_PER_SEC,
        };
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a non-negative frame count, far below usize::MAX"
        )]
        let elapsed = (self.since.elapsed().as_secs_f32() * rate) as usize;
        elapsed % self.textures.len().max(1)
    }
}

/// Draws the live preview over the available area, labelled with its step and which preview it
/// is, and why (the job's `choice`).
pub fn show(ui: &mut egui::Ui, live: &LivePreview, choice: Option<&PreviewChoice>) {
    let preview = &live.preview;
    ui.horizontal(|ui| {
        let (title, tip, frames) = match preview.kind {
            PreviewKind::Projection => (
                "Fast preview",
                "A rough look at what this step is heading towards (no VAE decode: colours and \
                 detail are approximate). Cancel the job in the queue if it looks wrong.",
                "latent frames",
            ),
            PreviewKind::VaeDecode => (
                "VAE preview",
                "What this step is heading towards, decoded by the VAE at reduced size (it \
                 stays until the next VAE preview). Cancel the job in the queue if it looks \
                 wrong.",
                "frames",
            ),
        };
        ui.strong(format!(
            "{title} · step {}/{}",
            preview.step + 1,
            preview.total_steps
        ))
        .on_hover_text(tip);
        ui.colored_label(
            theme::WEAK_TEXT,
            format!(
                "{} {frames}, {}×{}",
                preview.frames.len(),
                preview.width,
                preview.height
            ),
        );
    });
    if let Some(choice) = choice {
        let summary = match (choice.kind, choice.every) {
            (PreviewKind::VaeDecode, Some(1)) => "VAE preview every step".to_owned(),
            (PreviewKind::VaeDecode, Some(n)) => format!("VAE preview every {n} steps"),
            (PreviewKind::VaeDecode, None) => "VAE preview after the first step".to_owned(),
            (PreviewKind::Projection, _) => "fast preview only".to_owned(),
        };
        ui.colored_label(theme::WEAK_TEXT, summary)
            .on_hover_text(&choice.reason);
    }
    let index = live.frame_on_screen();
    if let Some(texture) = live.textures.get(index) {
        let available = ui.available_size();
        #[allow(clippy::cast_precision_loss, reason = "preview sizes are small")]
        let aspect = preview.width as f32 / preview.height.max(1) as f32;
        let width = available.x.min(available.y * aspect).max(1.0);
        ui.add(
            egui::Image::new((texture.id(), egui::vec2(width, width / aspect))).alt_text(
                match preview.kind {
                    PreviewKind::Projection => format!("Live preview, latent frame {}", index + 1),
                    PreviewKind::VaeDecode => format!("Live preview, frame {}", index + 1),
                },
            ),
        );
    }
    ui.ctx().request_repaint_after(Duration::from_millis(250));
}

#[cfg(test)]
mod tests {
    use super::*;
    use PreviewKind::{Projection, VaeDecode};

    #[test]
    fn a_vae_preview_stays_until_a_newer_one_or_another_job() {
        assert!(replaces(None, 1, Projection));
        assert!(replaces(Some((1, Projection)), 1, Projection));
        assert!(replaces(Some((1, Projection)), 1, VaeDecode));
        assert!(!replaces(Some((1, VaeDecode)), 1, Projection));
        assert!(replaces(Some((1, VaeDecode)), 1, VaeDecode));
        assert!(replaces(Some((1, VaeDecode)), 2, Projection));
    }
}
