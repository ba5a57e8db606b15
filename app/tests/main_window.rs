//! Drives the real app (no fake engine needed yet) through egui_kittest and its AccessKit tree.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use egui_kittest::{Harness, kittest::Queryable};
use stillmotion_app::gui::{StartOptions, StillmotionApp};

/// A file dropped onto the window, as the windowing integration would hand it to egui.
#[derive(Debug)]
struct DroppedPath(PathBuf);

impl egui::DroppedFile for DroppedPath {
    fn path(&self) -> &Path {
        &self.0
    }

    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|error| error.to_string())
    }
}

fn drop_file(harness: &mut Harness<'_, StillmotionApp>, path: PathBuf) {
    harness
        .input_mut()
        .dropped_files
        .push(Arc::new(DroppedPath(path)));
}

fn write_png(dir: &Path, name: &str, width: u32, height: u32) -> PathBuf {
    let path = dir.join(name);
    image::RgbImage::from_pixel(width, height, image::Rgb([200, 120, 40]))
        .save(&path)
        .unwrap();
    path
}

#[test]
fn start_image_is_shown_with_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let png = write_png(dir.path(), "portrait.png", 48, 80);
    let mut harness =
        Harness::new_eframe(|cc| StillmotionApp::new(cc, StartOptions { image: Some(png) }));
    harness.run();
    harness.get_by_label_contains("portrait.png · 48×80");
    let source = harness.state().source().unwrap();
    assert_eq!((source.width, source.height), (48, 80));
    harness.get_by_label("Open…");
}

#[test]
fn dropped_file_loads_and_a_bad_one_shows_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let png = write_png(dir.path(), "dropped.png", 32, 16);
    let junk = dir.path().join("notes.png");
    std::fs::write(&junk, "not pixels").unwrap();

    let mut harness = Harness::new_eframe(|cc| StillmotionApp::new(cc, StartOptions::default()));
    harness.run();
    harness.get_by_label_contains("Drop an image here");
    assert!(harness.state().source().is_none());

    drop_file(&mut harness, png);
    harness.run();
    harness.get_by_label_contains("dropped.png · 32×16");

    drop_file(&mut harness, junk);
    harness.run();
    let error = harness.state().error().unwrap().to_owned();
    assert!(
        error.contains("not an image") && error.ends_with("notes.png"),
        "{error}"
    );
    harness.get_by_label_contains("not an image");
    // The previous image stays loaded: a failed load never loses the user's work.
    assert_eq!(harness.state().source().unwrap().width, 32);

    harness.get_by_label("Dismiss").click();
    harness.run();
    assert!(harness.state().error().is_none());
}
