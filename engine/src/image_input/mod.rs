//! Loading the user's source image into RGB8, refusing what cannot be used with a clear reason,
//! and fitting it to the model's size ([`fit`]).
//!
//! Reads PNG (and APNG), JPEG (including CMYK), WebP, BMP, TIFF, GIF and the other formats the
//! `image` crate decodes. AVIF is refused with advice: the `image` crate decodes AVIF only with
//! its `avif-native` feature (its `avif` feature is an encoder), which binds the system's
//! libdav1d, and the systems we build on ship one too old for it. image 0.25.10 pulls `dav1d`
//! 0.11 → `dav1d-sys` 0.8.3, whose build script asks pkg-config for `dav1d >= 1.3.0` (1.3.0
//! changed the ABI: soname 7) or else clones and builds libdav1d 1.5.0 from git with meson, a
//! vendored C library we do not want. Debian 12 ships libdav1d 1.0.0 (`libdav1d-dev
//! 1.0.0-2+deb12u1`: "Package 'dav1d' has version '1.0.0', required version is '>= 1.3.0'"),
//! Ubuntu 22.04 0.9.2 and Ubuntu 24.04 1.4.1, so only the last could turn the feature on.
//! Revisit when Debian 13 (1.5.1) is the oldest system we build on. Detection
//! ([`is_avif`]) reads the `ftyp` box's major and compatible brands.
//! 16-bit, grayscale and palette images become RGB8; EXIF orientation is applied; animations
//! give their first frame with a note.
//!
//! Transparency: by default the alpha channel is dropped and the colour stored under it kept,
//! because that is what both references feed the model: the official Wan script
//! (`Image.open(path).convert("RGB")`) and ComfyUI's `LoadImage` (`i.convert("RGB")`, the alpha
//! going to a separate mask that the Wan templates do not use), as does diffusers' `load_image`.
//! So a transparent PNG conditions the same clip here as there. A chosen background
//! ([`LoadOptions::background`]) composites over a colour instead.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

pub use image::RgbImage;

use crate::EngineError;

pub mod fit;

pub use fit::{FitMode, FitPlan, FittedImage, Rect, fit_image};

/// Default cap on decoded pixels: 64 megapixels covers 8K photos and stops decompression bombs.
pub const DEFAULT_MAX_PIXELS: u64 = 64 * 1024 * 1024;

/// How to load a source image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Refuse images that decode to more pixels than this.
    pub max_pixels: u64,
    /// Transparent pixels are composited over this colour (straight alpha, in sRGB values, as
    /// image editors flatten). `None` (the default) drops the alpha channel and keeps the colour
    /// stored under it, as the official Wan script and ComfyUI do (see the module doc).
    pub background: Option<[u8; 3]>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_pixels: DEFAULT_MAX_PIXELS,
            background: None,
        }
    }
}

/// A loaded source image and what loading did to it, for the UI to show.
#[derive(Clone, Debug)]
pub struct LoadedImage {
    pub rgb: RgbImage,
    /// The decoded format (`"Png"`, `"Jpeg"`, …).
    pub format: String,
    /// Conversions worth telling the user: first frame of an animation, alpha flattened, …
    pub notes: Vec<String>,
}

/// Loads `path` as RGB8 with EXIF orientation applied, refusing images over `max_pixels`.
/// Alpha is dropped as the references do ([`LoadOptions::default`]).
pub fn load_rgb8(path: &Path, max_pixels: u64) -> Result<RgbImage, EngineError> {
    let options = LoadOptions {
        max_pixels,
        ..LoadOptions::default()
    };
    load(path, &options).map(|loaded| loaded.rgb)
}

/// Loads the image file at `path`.
pub fn load(path: &Path, options: &LoadOptions) -> Result<LoadedImage, EngineError> {
    let size = std::fs::metadata(path)
        .map_err(|error| EngineError::io("reading image", path, error))?
        .len();
    // Compressed data beyond 8 bytes a pixel at the limit is no photo; do not read it all in.
    if size > options.max_pixels.saturating_mul(8).max(64 << 20) {
        return Err(EngineError::BadImage {
            problem: format!(
                "the file is {} MB, too large for a source image",
                size >> 20
            ),
            path: path.to_owned(),
        });
    }
    let bytes =
        std::fs::read(path).map_err(|error| EngineError::io("reading image", path, error))?;
    load_bytes(&bytes, options, path)
}

/// Loads an image from memory (a paste or a drop of data); `origin` names it in errors.
pub fn load_bytes(
    bytes: &[u8],
    options: &LoadOptions,
    origin: &Path,
) -> Result<LoadedImage, EngineError> {
    let bad = |problem: String| EngineError::BadImage {
        problem,
        path: origin.to_owned(),
    };
    // Decide by content, not by extension: a renamed text file must read as "not an image".
    let format = if is_avif(bytes) {
        return Err(bad(
            "AVIF images cannot be read by this build (it has no AVIF decoder); \
             convert the image to PNG, JPEG or WebP first"
                .to_owned(),
        ));
    } else {
        image::guess_format(bytes).map_err(|_| {
            bad(
                "not an image Stillmotion can read (use PNG, JPEG, WebP, BMP, TIFF or GIF)"
                    .to_owned(),
            )
        })?
    };
    let mut reader = ImageReader::new(Cursor::new(bytes));
    reader.set_format(format);
    let mut limits = Limits::default();
    // Room for the largest allowed image at 16-bit RGBA plus the decoder's own buffers.
    limits.max_alloc = Some(
        options
            .max_pixels
            .saturating_mul(8)
            .saturating_add(64 << 20),
    );
    reader.limits(limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|error| bad(format!("cannot decode this image ({error})")))?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > options.max_pixels {
        return Err(bad(format!(
            "image is {width}×{height}, more than the {} megapixel limit; downscale it first",
            options.max_pixels / (1024 * 1024)
        )));
    }
    if width == 0 || height == 0 {
        return Err(bad(format!("image is {width}×{height}, it has no pixels")));
    }
    let mut notes = Vec::new();
    // Only after the size check: counting frames decodes the second one.
    if is_animated(bytes, format) {
        notes.push("the image is animated; its first frame is used".to_owned());
    }
    let orientation = decoder
        .orientation()
        .map_err(|error| bad(format!("cannot read the image's orientation ({error})")))?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(|error| {
        bad(format!(
            "cannot decode this image; it may be truncated or damaged ({error})"
        ))
    })?;
    if format == ImageFormat::Jpeg && !has_jpeg_end(bytes) {
        // JPEG decoders fill a cut-off file with grey instead of failing.
        return Err(bad(
            "the JPEG file is truncated (its end marker is missing); save it again".to_owned(),
        ));
    }
    image.apply_orientation(orientation);
    let rgb = match options.background {
        Some(background) if image.color().has_alpha() => {
            if has_transparency(&image) {
                notes.push("transparent areas are filled with the background colour".to_owned());
            }
            flatten(&image, background)
        }
        _ => {
            if image.color().has_alpha() && has_transparency(&image) {
                notes.push(
                    "the image has transparent areas; they keep the colour stored under them, \
                     as ComfyUI and the official Wan script read it (choose a background colour \
                     to flatten it instead)"
                        .to_owned(),
                );
            }
            image.to_rgb8()
        }
    };
    Ok(LoadedImage {
        rgb,
        format: format!("{format:?}"),
        notes,
    })
}

/// AVIF files are ISO-BMFF: an `ftyp` box (size, `ftyp`, major brand, minor version,
/// compatible brands) naming `avif` (a still image) or `avis` (a sequence), as the major brand
/// (libavif, ffmpeg) or only among the compatible ones (writers that lead with `mif1`).
fn is_avif(bytes: &[u8]) -> bool {
    if bytes.len() < 12 || &bytes[4..8] != b"ftyp" {
        return false;
    }
    let size = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let compatible = bytes.get(16..size.min(bytes.len())).unwrap_or_default();
    std::iter::once(&bytes[8..12])
        .chain(compatible.chunks_exact(4))
        .any(|brand| brand == b"avif" || brand == b"avis")
}

/// A JPEG ends with the EOI marker (trailing padding some cameras add is allowed).
fn has_jpeg_end(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(4096)..];
    tail.windows(2).any(|pair| pair == [0xFF, 0xD9])
}

/// Whether the file holds more than one frame (animated GIF, APNG, animated WebP).
fn is_animated(bytes: &[u8], format: ImageFormat) -> bool {
    use image::AnimationDecoder as _;
    match format {
        ImageFormat::Gif => image::codecs::gif::GifDecoder::new(Cursor::new(bytes))
            .is_ok_and(|decoder| decoder.into_frames().take(2).count() > 1),
        ImageFormat::Png => image::codecs::png::PngDecoder::new(Cursor::new(bytes))
            .and_then(|decoder| decoder.is_apng())
            .unwrap_or(false),
        ImageFormat::WebP => image::codecs::webp::WebPDecoder::new(Cursor::new(bytes))
            .is_ok_and(|decoder| decoder.has_animation()),
        _ => false,
    }
}

fn has_transparency(image: &DynamicImage) -> bool {
    match image {
        DynamicImage::ImageRgba8(rgba) => rgba.pixels().any(|p| p.0[3] < 255),
        DynamicImage::ImageLumaA8(la) => la.pixels().any(|p| p.0[1] < 255),
        other => other.to_rgba16().pixels().any(|p| p.0[3] < u16::MAX),
    }
}

/// Composites straight alpha over `background`: `c·a + bg·(1 − a)`, rounded, at 16-bit precision.
fn flatten(image: &DynamicImage, background: [u8; 3]) -> RgbImage {
    let rgba = image.to_rgba16();
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let alpha = f32::from(a) / 65535.0;
        let mix = |c: u16, bg: u8| {
            let value = f32::from(c) / 65535.0 * 255.0 * alpha + f32::from(bg) * (1.0 - alpha);
            value.round().clamp(0.0, 255.0) as u8
        };
        image::Rgb([
            mix(r, background[0]),
            mix(g, background[1]),
            mix(b, background[2]),
        ])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avif_is_known_by_its_major_or_compatible_brand() {
        let ftyp = |major: &[u8; 4], compatible: &[&[u8; 4]]| {
            let size = 16 + 4 * compatible.len() as u32;
            let mut bytes = size.to_be_bytes().to_vec();
            bytes.extend(b"ftyp");
            bytes.extend(major);
            bytes.extend([0; 4]);
            for brand in compatible {
                bytes.extend(*brand);
            }
            // The next box, whose bytes must not be read as brands.
            bytes.extend(b"\0\0\0\x08avif");
            bytes
        };
        assert!(is_avif(&ftyp(b"avif", &[b"mif1"])));
        assert!(is_avif(&ftyp(b"avis", &[])));
        assert!(is_avif(&ftyp(b"mif1", &[b"miaf", b"avif"])));
        assert!(!is_avif(&ftyp(b"heic", &[b"mif1", b"heic"])));
        assert!(!is_avif(&ftyp(b"mif1", &[])));
        assert!(!is_avif(b"\0\0\0\x10ftyp"));
        assert!(!is_avif(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"));
    }

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
