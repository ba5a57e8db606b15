//! The preview player of a finished clip: frames are decoded by the engine's video reader (or
//! read from a folder of PNG frames) on a named thread and kept in memory as RGB; only the frame
//! on screen is uploaded, into one texture, so a long clip never takes GPU memory the renderer
//! needs. Playback runs at the clip's own rate (times the chosen speed) from egui's clock, so it
//! needs no timer thread.

use std::path::{Path, PathBuf};

use crossbeam_channel::{Receiver, Sender, bounded};
use stillmotion_engine::image_input::{self, RgbImage};

use super::UiAction;
use super::clip_frames::ClipFrames;
use crate::ui::theme;

/// Clips longer than this are previewed up to here (about 2 minutes at 16 fps); the file itself
/// is untouched.
pub const MAX_PREVIEW_FRAMES: usize = 2_000;
/// Memory the decoded frames of one preview may take (RGB8); a longer clip is previewed up to
/// here (720p: about 580 frames).
pub const MAX_PREVIEW_BYTES: u64 = 1 << 31;
/// Decoded frames taken per UI frame, so loading never stalls the UI.
const FRAMES_PER_UI_FRAME: usize = 8;
/// Playback speeds offered (× the clip's frame rate).
pub const SPEEDS: [f32; 5] = [0.25, 0.5, 1.0, 1.5, 2.0];

/// What the decoding thread reports.
enum Decoded {
    Opened {
        fps: f64,
        width: u32,
        height: u32,
    },
    Frame(RgbImage),
    /// The clip goes on, but the preview stops at the frames sent.
    Truncated,
    Failed(String),
    Done,
}

/// A clip loaded into the preview and its playback state.
pub struct ClipPlayer {
    path: PathBuf,
    fps: f64,
    size: (u32, u32),
    frames: Vec<RgbImage>,
    /// The one texture on screen, and which frame it holds.
    texture: Option<(egui::TextureHandle, usize)>,
    /// Set when the preview stops before the clip does: the frames previewed.
    truncated_at: Option<usize>,
    decoding: Option<Receiver<Decoded>>,
    error: Option<String>,
    playing: bool,
    /// Start again at the end instead of stopping.
    pub looping: bool,
    /// Multiplies the clip's frame rate.
    pub speed: f32,
    /// The clip was interpolated ×m from frames of which every m-th is kept (RIFE keeps the
    /// originals), so "before" can show just those.
    interpolated: Option<u32>,
    /// Show only the frames from before interpolation (each held for m frames).
    pub before_interpolation: bool,
    /// Current frame, fractional between frames while playing.
    position: f64,
    /// egui time of the last playback advance.
    last_time: Option<f64>,
}

impl ClipPlayer {
    /// Starts decoding `path` on its own thread; `autoplay` starts playback as frames arrive.
    pub fn open(ctx: &egui::Context, path: PathBuf, autoplay: bool) -> Self {
        let (sender, receiver) = bounded(4);
        let mut player = Self {
            path: path.clone(),
            fps: 16.0,
            size: (0, 0),
            frames: Vec::new(),
            texture: None,
            truncated_at: None,
            decoding: Some(receiver),
            error: None,
            playing: autoplay,
            looping: true,
            speed: 1.0,
            interpolated: None,
            before_interpolation: false,
            position: 0.0,
            last_time: None,
        };
        let wake = ctx.clone();
        let spawned = std::thread::Builder::new()
            .name("clip-decoder".to_owned())
            .spawn(move || decode(&path, &sender, &wake));
        if let Err(error) = spawned {
            player.error = Some(format!("Could not start the clip decoder: {error}"));
            player.decoding = None;
        }
        player
    }

    /// The clip's file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The clip's frame rate (frames per second).
    #[must_use]
    pub fn fps(&self) -> f64 {
        self.fps
    }

    /// Frames decoded so far.
    #[must_use]
    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }

    /// Index of the frame shown.
    #[must_use]
    pub fn frame_index(&self) -> usize {
        let index =
            (self.position.floor().max(0.0) as usize).min(self.frames.len().saturating_sub(1));
        let stride = self.stride();
        index / stride * stride
    }

    /// Says the clip was interpolated ×`factor` (`None` or 1: it was not), which offers the
    /// before/after comparison.
    pub fn set_interpolation_factor(&mut self, factor: Option<u32>) {
        self.interpolated = factor.filter(|&factor| factor > 1);
        self.before_interpolation &= self.interpolated.is_some();
    }

    /// The interpolation factor the clip was made with, if it was interpolated.
    #[must_use]
    pub fn interpolation_factor(&self) -> Option<u32> {
        self.interpolated
    }

    /// Frames between shown frames: the interpolation factor while showing "before", else 1.
    fn stride(&self) -> usize {
        match self.interpolated {
            Some(factor) if self.before_interpolation => factor as usize,
            _ => 1,
        }
    }

    /// The decoded frame on screen (RGB8), once decoded.
    #[must_use]
    pub fn current_frame(&self) -> Option<&RgbImage> {
        self.frames.get(self.frame_index())
    }

    #[must_use]
    pub fn is_playing(&self) -> bool {
        self.playing
    }

    /// Whether every frame has been decoded (or decoding stopped on an error).
    #[must_use]
    pub fn is_loaded(&self) -> bool {
        self.decoding.is_none()
    }

    /// Why the clip could not be decoded, if it could not.
    #[must_use]
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    pub fn toggle_play(&mut self) {
        self.set_playing(!self.playing);
    }

    pub fn set_playing(&mut self, playing: bool) {
        if playing && self.is_loaded() && self.frame_index() + 1 >= self.frames.len() {
            self.position = 0.0; // Play from the end starts over.
        }
        self.playing = playing;
        self.last_time = None;
    }

    /// Pauses and moves `delta` frames (wrapping when looping, else clamped).
    pub fn step(&mut self, delta: i64) {
        self.playing = false;
        let count = self.frames.len() as i64;
        if count == 0 {
            return;
        }
        let stride = self.stride() as i64;
        let last = (count - 1) / stride * stride;
        let target = self.frame_index() as i64 + delta * stride;
        let target = match (target < 0, target > last) {
            (true, _) if self.looping => last,
            (true, _) => 0,
            (_, true) if self.looping => 0,
            (_, true) => last,
            _ => target,
        };
        self.position = target as f64;
    }

    /// Shows frame `index` (clamped).
    pub fn seek(&mut self, index: usize) {
        self.position = index.min(self.frames.len().saturating_sub(1)) as f64;
        self.last_time = None;
    }

    /// The texture showing the current frame, uploaded when the frame changed.
    fn current_texture(&mut self, ctx: &egui::Context) -> Option<&egui::TextureHandle> {
        let index = self.frame_index();
        let frame = self.frames.get(index)?;
        let image = || {
            let (width, height) = frame.dimensions();
            egui::ColorImage::from_rgb([width as usize, height as usize], frame.as_raw())
        };
        match &mut self.texture {
            Some((texture, shown)) if *shown != index => {
                texture.set(image(), egui::TextureOptions::LINEAR);
                *shown = index;
            }
            Some(_) => {}
            None => {
                let texture =
                    ctx.load_texture("clip-preview", image(), egui::TextureOptions::LINEAR);
                self.texture = Some((texture, index));
            }
        }
        self.texture.as_ref().map(|(texture, _)| texture)
    }

    /// Takes decoded frames and advances playback; call once per frame from `logic`.
    pub fn poll(&mut self, ctx: &egui::Context) {
        self.receive(ctx);
        let now = ctx.input(|input| input.time);
        if !self.playing || self.frames.is_empty() {
            self.last_time = None;
            return;
        }
        let elapsed = self.last_time.map_or(0.0, |last| (now - last).max(0.0));
        self.last_time = Some(now);
        self.position += elapsed * self.fps * f64::from(self.speed);
        let count = self.frames.len() as f64;
        if self.position >= count {
            if !self.is_loaded() {
                self.position = count - 1.0; // Wait for the decoder.
            } else if self.looping {
                self.position %= count;
            } else {
                self.position = count - 1.0;
                self.playing = false;
            }
        }
        if self.playing {
            let until_next = (self.position.floor() + 1.0 - self.position)
                / (self.fps * f64::from(self.speed)).max(1e-3);
            let delay = std::time::Duration::try_from_secs_f64(until_next.max(0.001))
                .unwrap_or(std::time::Duration::from_millis(16));
            ctx.request_repaint_after(delay);
        }
    }

    fn receive(&mut self, ctx: &egui::Context) {
        let Some(receiver) = &self.decoding else {
            return;
        };
        let mut finished = false;
        for message in receiver.try_iter().take(FRAMES_PER_UI_FRAME) {
            match message {
                Decoded::Opened { fps, width, height } => {
                    self.fps = fps;
                    self.size = (width, height);
                }
                Decoded::Frame(frame) => self.frames.push(frame),
                Decoded::Truncated => self.truncated_at = Some(self.frames.len()),
                Decoded::Failed(message) => {
                    self.error = Some(message);
                    finished = true;
                }
                Decoded::Done => finished = true,
            }
        }
        if finished {
            self.decoding = None;
        } else {
            // More may be waiting behind the per-frame budget.
            ctx.request_repaint_after(std::time::Duration::from_millis(5));
        }
    }
}

/// The decoding thread: sends the clip's frames until done, an error, or the player is gone.
fn decode(path: &Path, sender: &Sender<Decoded>, wake: &egui::Context) {
    let send = |message: Decoded| {
        let sent = sender.send(message).is_ok();
        wake.request_repaint();
        sent
    };
    let mut reader = match ClipFrames::open(path, image_input::DEFAULT_MAX_PIXELS) {
        Ok(reader) => reader,
        Err(error) => {
            send(Decoded::Failed(format!("{error:#}")));
            return;
        }
    };
    let (width, height) = reader.size();
    let frame_bytes = u64::from(width) * u64::from(height) * 3;
    let limit = MAX_PREVIEW_FRAMES.min((MAX_PREVIEW_BYTES / frame_bytes.max(1)).max(1) as usize);
    if !send(Decoded::Opened {
        fps: reader.fps(),
        width,
        height,
    }) {
        return;
    }
    for sent in 0.. {
        match reader.next_frame() {
            Ok(Some(_)) if sent == limit => {
                if !send(Decoded::Truncated) {
                    return;
                }
                break;
            }
            Ok(Some(frame)) => {
                if !send(Decoded::Frame(frame)) {
                    return; // The player was closed.
                }
            }
            Ok(None) => break,
            Err(error) => {
                send(Decoded::Failed(format!("{error:#}")));
                return;
            }
        }
    }
    send(Decoded::Done);
}

/// `seconds` as `m:ss.cc`.
fn clock(seconds: f64) -> String {
    let seconds = seconds.max(0.0);
    let minutes = (seconds / 60.0).floor();
    format!("{minutes:.0}:{:05.2}", seconds - minutes * 60.0)
}

/// Draws the player: the frame, transport controls, scrub bar, counter, and file actions.
#[must_use]
pub fn show(ui: &mut egui::Ui, player: &mut ClipPlayer) -> Option<UiAction> {
    let mut action = None;
    ui.horizontal(|ui| {
        ui.heading("Preview");
        let name = player.path.file_name().map_or_else(
            || player.path.display().to_string(),
            |name| name.to_string_lossy().into_owned(),
        );
        ui.label(name)
            .on_hover_text(player.path.display().to_string());
        if ui
            .button("Open file")
            .on_hover_text("Open the clip in your default video player")
            .clicked()
        {
            action = Some(UiAction::OpenFile(player.path.clone()));
        }
        if ui
            .button("Show in folder")
            .on_hover_text("Open the folder that holds the clip")
            .clicked()
        {
            action = Some(UiAction::ShowInFolder(player.path.clone()));
        }
    });
    if let Some(error) = &player.error {
        ui.colored_label(theme::ERROR_TEXT, format!("Cannot preview: {error}"));
    }
    let count = player.frames.len();
    let controls_height = 4.0 * ui.spacing().interact_size.y + 24.0;
    let (width, height) = player.size;
    if let Some(texture) = player.current_texture(ui.ctx()) {
        let available = ui.available_size() - egui::vec2(0.0, controls_height);
        let scale = (available.x / width.max(1) as f32)
            .min(available.y / height.max(1) as f32)
            .clamp(0.05, 1.0);
        let size = egui::vec2(width as f32 * scale, height as f32 * scale);
        ui.add(egui::Image::new(texture).fit_to_exact_size(size))
            .on_hover_text("Left/Right arrow keys step one frame, Space plays or pauses");
    } else if player.error.is_none() {
        ui.colored_label(theme::WEAK_TEXT, "Loading the clip…");
    }

    // Wraps rather than clipping when the central area is narrow.
    ui.horizontal_wrapped(|ui| {
        let label = if player.playing { "Pause" } else { "Play" };
        if ui
            .button(label)
            .on_hover_text("Play or pause (Space)")
            .clicked()
        {
            player.toggle_play();
        }
        if ui
            .button("Previous frame")
            .on_hover_text("Step back one frame (Left arrow key)")
            .clicked()
        {
            player.step(-1);
        }
        if ui
            .button("Next frame")
            .on_hover_text("Step forward one frame (Right arrow key)")
            .clicked()
        {
            player.step(1);
        }
        ui.checkbox(&mut player.looping, "Loop")
            .on_hover_text("Start again at the end");
        if let Some(factor) = player.interpolated {
            ui.checkbox(&mut player.before_interpolation, "Before interpolation")
                .on_hover_text(format!(
                    "Show only the frames the model made (every {factor}th, each held for \
                     {factor} frames), to compare with the interpolated clip"
                ));
        }
        let label = ui.label("Speed");
        egui::ComboBox::from_id_salt("playback_speed")
            .selected_text(format!("{}×", player.speed))
            .show_ui(ui, |ui| {
                for speed in SPEEDS {
                    ui.selectable_value(&mut player.speed, speed, format!("{speed}×"))
                        .on_hover_text("Playback speed");
                }
            })
            .response
            .labelled_by(label.id)
            .on_hover_text("Playback speed (× the clip's frame rate)");
    });
    ui.horizontal(|ui| {
        let mut frame = player.frame_index();
        let last = count.saturating_sub(1);
        // The scrub bar takes the row's width, less room for its name.
        ui.spacing_mut().slider_width = (ui.available_width() - 70.0).max(80.0);
        let slider = ui
            .add_enabled(
                count > 1,
                egui::Slider::new(&mut frame, 0..=last)
                    .show_value(false)
                    .text("Position"),
            )
            .on_hover_text("Drag to scrub through the clip");
        if slider.changed() {
            player.playing = false;
            player.seek(frame);
        }
    });
    let fps = player.fps.max(1e-3);
    let mut counter = format!(
        "Frame {} / {} · {} / {}",
        if count == 0 {
            0
        } else {
            player.frame_index() + 1
        },
        count,
        clock(player.frame_index() as f64 / fps),
        clock(count as f64 / fps),
    );
    if !player.is_loaded() {
        counter.push_str(" · loading");
    }
    if player.truncated_at.is_some() {
        counter.push_str(" · preview ends here, the file goes on");
    }
    ui.label(counter)
        .on_hover_text(format!("{:.3} frames per second", player.fps));

    // Only while no widget has keyboard focus: a focused widget takes the keys itself (text
    // editing, Space clicks a button, arrows move focus or a slider), and both would act.
    if ui.ctx().memory(|memory| memory.focused().is_none()) {
        let (left, right, space) = ui.input(|input| {
            (
                input.key_pressed(egui::Key::ArrowLeft),
                input.key_pressed(egui::Key::ArrowRight),
                input.key_pressed(egui::Key::Space),
            )
        });
        if left {
            player.step(-1);
        }
        if right {
            player.step(1);
        }
        if space {
            player.toggle_play();
        }
    }
    action
}

#[cfg(test)]
mod tests {
    use super::clock;

    #[test]
    fn clock_shows_minutes_and_hundredths() {
        assert_eq!(clock(0.0), "0:00.00");
        assert_eq!(clock(5.0625), "0:05.06");
        assert_eq!(clock(75.5), "1:15.50");
    }
}
