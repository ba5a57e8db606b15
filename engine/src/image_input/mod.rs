//! Loading the user's source image into RGB8, refusing what cannot be used with a clear reason.

use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader};

pub use image::RgbImage;

use crate::EngineError;

pub mod fit;

pub use fit::{FitMode, FitPlan, FittedImage, Rect, fit_image};

/// Default cap on decoded pixels: 64 megapixels covers 8K photos and stops decompression bombs.
pub const DEFAULT_MAX_PIXELS: u64 = 64 * 1024 * 1024;

/// Loads `path` as RGB8 with EXIF orientation applied, refusing images over `max_pixels`.
pub fn load_rgb8(path: &Path, max_pixels: u64) -> Result<RgbImage, EngineError> {
    let bad = |problem: String| EngineError::BadImage {
        problem,
        path: path.to_owned(),
    };
    // Decide by content, not by extension: a renamed text file must read as "not an image".
    let format = sniff_format(path)?.ok_or_else(|| {
        bad("not an image Stillmotion can read (use PNG, JPEG, WebP, BMP, TIFF or GIF)".to_owned())
    })?;
    let mut reader =
        ImageReader::open(path).map_err(|error| EngineError::io("opening image", path, error))?;
    reader.set_format(format);
    let mut decoder = reader
        .into_decoder()
        .map_err(|error| bad(format!("cannot decode this image ({error})")))?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(bad(format!(
            "image is {width}×{height}, more than the {} megapixel limit; downscale it first",
            max_pixels / (1024 * 1024)
        )));
    }
    let orientation = decoder
        .orientation()
        .map_err(|error| bad(format!("cannot read the image's orientation ({error})")))?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(|error| {
        bad(format!(
            "cannot decode this image; it may be truncated or damaged ({error})"
        ))
    })?;
    image.apply_orientation(orientation);
    Ok(image.to_rgb8())
}

/// The image format from the file's first bytes, or `None` when they match no known format.
fn sniff_format(path: &Path) -> Result<Option<image::ImageFormat>, EngineError> {
    use std::io::Read as _;
    let mut header = Vec::with_capacity(64);
    std::fs::File::open(path)
        .and_then(|file| file.take(64).read_to_end(&mut header))
        .map_err(|error| EngineError::io("reading image", path, error))?;
    Ok(image::guess_format(&header).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_a_png_and_refuses_junk_and_oversize() {
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("ok.png");
        RgbImage::from_pixel(20, 10, image::Rgb([10, 20, 30]))
            .save(&png)
            .unwrap();
        let image = load_rgb8(&png, DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!(image.dimensions(), (20, 10));
        assert_eq!(image.get_pixel(3, 3).0, [10, 20, 30]);

        let too_big = load_rgb8(&png, 199).unwrap_err().to_string();
        assert!(
            too_big.contains("20×10") && too_big.ends_with("ok.png"),
            "{too_big}"
        );

        let junk = dir.path().join("notes.png");
        std::fs::write(&junk, b"these are not pixels").unwrap();
        let message = load_rgb8(&junk, DEFAULT_MAX_PIXELS)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("not an image") && message.ends_with("notes.png"),
            "{message}"
        );

        let bytes = std::fs::read(&png).unwrap();
        let truncated = dir.path().join("cut.png");
        std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
        let message = load_rgb8(&truncated, DEFAULT_MAX_PIXELS)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("truncated") || message.contains("cannot decode"),
            "{message}"
        );
    }
}
