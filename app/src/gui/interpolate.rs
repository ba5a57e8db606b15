//! "Interpolate a clip…": RIFE over an existing clip, without the video models. This is what a
//! machine without a GPU can still do well, so the no-GPU notice points here.

use std::path::{Path, PathBuf};

use stillmotion_engine::recipe::InterpolateRequest;

use super::UiAction;
use crate::ui::theme;

/// The window's id (tests find its area by it).
pub const WINDOW_ID: &str = "interpolate_window";

/// Multipliers offered as buttons (the engine takes 2..=16).
const MULTIPLIERS: [u32; 4] = [2, 3, 4, 8];

/// The form's state; it stays filled in between openings.
#[derive(Clone, Debug, PartialEq)]
pub struct InterpolateForm {
    pub open: bool,
    /// A video file or a folder of PNG frames.
    pub input: Option<PathBuf>,
    pub multiplier: u32,
    /// Also interpolate from the last frame back to the first, for clips that loop.
    pub loop_clip: bool,
    /// Frame rate of a PNG-frame folder (video files carry their own).
    pub frames_fps: u32,
    /// `None`: beside the input, named `<name>-x<multiplier>.mp4`.
    pub output: Option<PathBuf>,
}

impl Default for InterpolateForm {
    fn default() -> Self {
        Self {
            open: false,
            input: None,
            multiplier: 2,
            loop_clip: false,
            frames_fps: 16,
            output: None,
        }
    }
}

impl InterpolateForm {
    /// Where the result goes: the chosen output, else beside the input.
    #[must_use]
    pub fn output_for(&self, input: &Path) -> PathBuf {
        self.output.clone().unwrap_or_else(|| {
            let stem = input
                .file_stem()
                .map_or_else(|| "clip".into(), |stem| stem.to_string_lossy().into_owned());
            input.with_file_name(format!("{stem}-x{}.mp4", self.multiplier))
        })
    }

    /// The engine request, checked; the message says what to fix.
    pub fn request(&self) -> Result<InterpolateRequest, String> {
        let Some(input) = &self.input else {
            return Err("Choose the clip to interpolate first".to_owned());
        };
        let request = InterpolateRequest {
            input: input.clone(),
            frames_fps: self.frames_fps,
            multiplier: self.multiplier,
            // The form offers multipliers; a target frame rate is a CLI flag for now.
            target_fps: None,
            loop_clip: self.loop_clip,
            output: self.output_for(input),
        };
        request
            .validate()
            .map_err(|error| format!("Cannot interpolate: {error:#}"))?;
        Ok(request)
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    )
}

/// Draws the form in its own window while it is open.
#[must_use]
pub fn show(ctx: &egui::Context, form: &mut InterpolateForm) -> Option<UiAction> {
    let mut action = None;
    let mut open = form.open;
    egui::Window::new("Interpolate a clip")
        .id(egui::Id::unique(WINDOW_ID))
        .open(&mut open)
        .resizable(false)
        .collapsible(false)
        .show(ctx, |ui| {
            ui.label(
                "Adds frames between the frames of an existing clip with RIFE. It needs no \
                 video model and runs well without a GPU.",
            );
            egui::Grid::new("interpolate_grid")
                .num_columns(2)
                .show(ui, |ui| {
                    ui.label("Clip");
                    ui.horizontal(|ui| {
                        let shown = form
                            .input
                            .as_deref()
                            .map_or_else(|| "none".into(), file_name);
                        ui.colored_label(theme::WEAK_TEXT, shown);
                        if ui
                            .button("Choose clip…")
                            .on_hover_text("A video (MP4, MOV, WebM, GIF) to interpolate")
                            .clicked()
                        {
                            action = Some(UiAction::ChooseInterpolateInput);
                        }
                    });
                    ui.end_row();

                    ui.label("Multiplier");
                    ui.horizontal(|ui| {
                        for factor in MULTIPLIERS {
                            ui.selectable_value(&mut form.multiplier, factor, format!("×{factor}"))
                                .on_hover_text(format!(
                                    "{factor} output frames per input frame, at {factor}× the \
                                     frame rate"
                                ));
                        }
                    });
                    ui.end_row();

                    ui.label("Loop");
                    ui.checkbox(&mut form.loop_clip, "Blend the last frame into the first")
                        .on_hover_text("For clips that play in a loop");
                    ui.end_row();

                    let label = ui.label("Folder fps");
                    ui.add(egui::DragValue::new(&mut form.frames_fps).range(1..=240))
                        .labelled_by(label.id)
                        .on_hover_text(
                            "Frame rate of a folder of PNG frames (videos carry their own)",
                        );
                    ui.end_row();

                    ui.label("Output");
                    ui.horizontal(|ui| {
                        let shown = match (&form.output, &form.input) {
                            (Some(output), _) => file_name(output),
                            (None, Some(input)) => file_name(&form.output_for(input)),
                            (None, None) => "beside the clip".to_owned(),
                        };
                        ui.colored_label(theme::WEAK_TEXT, shown);
                        if ui
                            .button("Choose output…")
                            .on_hover_text("Where the interpolated clip is saved")
                            .clicked()
                        {
                            action = Some(UiAction::ChooseInterpolateOutput);
                        }
                    });
                    ui.end_row();
                });
            ui.separator();
            if ui
                .add_enabled(form.input.is_some(), egui::Button::new("Interpolate"))
                .on_hover_text("Add this interpolation to the queue")
                .on_disabled_hover_text("Choose a clip first")
                .clicked()
            {
                action = Some(UiAction::SubmitInterpolation);
            }
        });
    form.open &= open;
    action
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_defaults_beside_the_input_and_the_request_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let clip = dir.path().join("waves.mp4");
        let mut form = InterpolateForm {
            multiplier: 3,
            ..InterpolateForm::default()
        };
        assert!(form.request().unwrap_err().contains("Choose the clip"));
        form.input = Some(clip.clone());
        assert!(form.request().unwrap_err().contains("does not exist"));
        std::fs::write(&clip, b"x").unwrap();
        let request = form.request().unwrap();
        assert_eq!(request.output, dir.path().join("waves-x3.mp4"));
        assert_eq!((request.multiplier, request.loop_clip), (3, false));
    }
}
