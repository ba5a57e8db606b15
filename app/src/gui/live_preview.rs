//! The live preview of a running render: the engine's cheap latent → RGB projection of each
//! denoising step (its `Event::Preview`), animated in the central area so a bad seed can be
//! stopped at step one.

use std::time::{Duration, Instant};

use stillmotion_engine::runtime::JobId;
use stillmotion_engine::sampling::LatentPreview;

use crate::ui::theme;

/// Each latent frame stands for 4 video frames at 16 fps (redrawn every 250 ms).
const LATENT_FRAMES_PER_SEC: f32 = 4.0;

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

    /// Which latent frame is on screen now (the preview loops).
    fn frame_on_screen(&self) -> usize {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a non-negative frame count, far below usize::MAX"
        )]
        let elapsed = (self.since.elapsed().as_secs_f32() * LATENT_FRAMES_PER_SEC) as usize;
        elapsed % self.textures.len().max(1)
    }
}

/// Draws the live preview over the available area, labelled with its step.
pub fn show(ui: &mut egui::Ui, live: &LivePreview) {
    let preview = &live.preview;
    ui.horizontal(|ui| {
        ui.strong(format!(
            "Live preview · step {}/{}",
            preview.step + 1,
            preview.total_steps
        ))
        .on_hover_text(
            "A rough look at what this step is heading towards (no VAE decode: colours and \
             detail are approximate). Cancel the job in the queue if it looks wrong.",
        );
        ui.colored_label(
            theme::WEAK_TEXT,
            format!("{} latent frames", preview.frames.len()),
        );
    });
    let index = live.frame_on_screen();
    if let Some(texture) = live.textures.get(index) {
        let available = ui.available_size();
        #[allow(clippy::cast_precision_loss, reason = "preview sizes are small")]
        let aspect = preview.width as f32 / preview.height.max(1) as f32;
        let width = available.x.min(available.y * aspect).max(1.0);
        ui.add(
            egui::Image::new((texture.id(), egui::vec2(width, width / aspect)))
                .alt_text(format!("Live preview, latent frame {}", index + 1)),
        );
    }
    ui.ctx().request_repaint_after(Duration::from_millis(250));
}
