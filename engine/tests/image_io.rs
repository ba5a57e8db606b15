//! Source images: every format and pixel layout users bring becomes RGB8, and every bad file
//! (made here) is refused with a message that says what is wrong.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers unwrap: a failure is the test failing"
)]

use std::path::{Path, PathBuf};

use image::codecs::gif::GifEncoder;
use image::{DynamicImage, Frame, ImageBuffer, Luma, LumaA, Rgb, Rgba, RgbaImage};
use stillmotion_engine::image_input::{LoadOptions, load, load_rgb8};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn close(actual: [u8; 3], expected: [u8; 3], slack: u8) -> bool {
    actual
        .iter()
        .zip(expected)
        .all(|(a, e)| a.abs_diff(e) <= slack)
}

#[test]
fn every_layout_becomes_rgb8() {
    let dir = tempfile::tempdir().unwrap();
    let options = LoadOptions {
        background: Some([0, 255, 0]),
        ..LoadOptions::default()
    };
    let save = |name: &str, image: DynamicImage| {
        let path = dir.path().join(name);
        image.save(&path).unwrap();
        path
    };
    let rgb = image::RgbImage::from_pixel(6, 4, Rgb([200, 100, 50]));
    for name in ["a.png", "a.bmp", "a.tiff", "a.webp", "a.gif"] {
        let loaded = load(&save(name, DynamicImage::ImageRgb8(rgb.clone())), &options).unwrap();
        assert_eq!(loaded.rgb.dimensions(), (6, 4), "{name}");
        // GIF quantises to a palette; the others are lossless.
        let slack = if name.ends_with("gif") { 8 } else { 0 };
        assert!(
            close(loaded.rgb.get_pixel(2, 2).0, [200, 100, 50], slack),
            "{name}: {:?}",
            loaded.rgb.get_pixel(2, 2)
        );
        assert!(loaded.notes.is_empty(), "{name}: {:?}", loaded.notes);
    }
    let jpeg = load(
        &save("a.jpg", DynamicImage::ImageRgb8(rgb.clone())),
        &options,
    )
    .unwrap();
    assert!(close(jpeg.rgb.get_pixel(2, 2).0, [200, 100, 50], 3));

    let deep = ImageBuffer::from_pixel(4, 4, Rgb([65535_u16, 32896, 0]));
    let loaded = load(&save("deep.png", DynamicImage::ImageRgb16(deep)), &options).unwrap();
    assert_eq!(loaded.rgb.get_pixel(0, 0).0, [255, 128, 0]);

    let gray = ImageBuffer::from_pixel(4, 4, Luma([77_u8]));
    let loaded = load(&save("gray.png", DynamicImage::ImageLuma8(gray)), &options).unwrap();
    assert_eq!(loaded.rgb.get_pixel(1, 1).0, [77, 77, 77]);
    let gray16 = ImageBuffer::from_pixel(4, 4, Luma([257_u16 * 30]));
    let loaded = load(
        &save("gray16.png", DynamicImage::ImageLuma16(gray16)),
        &options,
    )
    .unwrap();
    assert_eq!(loaded.rgb.get_pixel(1, 1).0, [30, 30, 30]);

    // Alpha: opaque stays, transparent becomes the background, half mixes.
    let mut rgba = RgbaImage::from_pixel(4, 1, Rgba([255, 0, 0, 255]));
    rgba.put_pixel(1, 0, Rgba([255, 0, 0, 0]));
    rgba.put_pixel(2, 0, Rgba([255, 0, 0, 128]));
    let loaded = load(&save("alpha.png", DynamicImage::ImageRgba8(rgba)), &options).unwrap();
    assert_eq!(loaded.rgb.get_pixel(0, 0).0, [255, 0, 0]);
    assert_eq!(loaded.rgb.get_pixel(1, 0).0, [0, 255, 0]);
    assert_eq!(loaded.rgb.get_pixel(2, 0).0, [128, 127, 0]);
    assert!(
        loaded.notes.iter().any(|n| n.contains("transparent")),
        "{:?}",
        loaded.notes
    );
    let dropped = LoadOptions {
        background: None,
        ..options
    };
    let loaded = load(&dir.path().join("alpha.png"), &dropped).unwrap();
    assert_eq!(
        loaded.rgb.get_pixel(1, 0).0,
        [255, 0, 0],
        "alpha dropped like PIL's convert"
    );
    let gray_alpha = ImageBuffer::from_pixel(2, 2, LumaA([200_u8, 0]));
    let loaded = load(
        &save("la.png", DynamicImage::ImageLumaA8(gray_alpha)),
        &options,
    )
    .unwrap();
    assert_eq!(loaded.rgb.get_pixel(0, 0).0, [0, 255, 0]);
}

#[test]
fn fixtures_cmyk_palette_exif_and_animations() {
    let options = LoadOptions {
        background: Some([0, 0, 0]),
        ..LoadOptions::default()
    };
    let cmyk = load(&data("cmyk.jpg"), &options).unwrap();
    assert_eq!(cmyk.rgb.dimensions(), (16, 8));
    // Pillow reads the same file as (255, 0, 0) and (0, 127, 127).
    assert!(
        close(cmyk.rgb.get_pixel(2, 2).0, [255, 0, 0], 4),
        "{:?}",
        cmyk.rgb.get_pixel(2, 2)
    );
    assert!(
        close(cmyk.rgb.get_pixel(12, 2).0, [0, 127, 127], 4),
        "{:?}",
        cmyk.rgb.get_pixel(12, 2)
    );

    let palette = load(&data("palette.png"), &options).unwrap();
    assert_eq!(palette.rgb.get_pixel(1, 1).0, [255, 0, 0]);
    assert_eq!(palette.rgb.get_pixel(6, 1).0, [0, 0, 255]);
    assert_eq!(
        palette.rgb.get_pixel(0, 0).0,
        [0, 0, 0],
        "transparent index over the background"
    );

    // Orientation 6: the stored left (red) half ends up on top once rotated clockwise.
    let rotated = load(&data("exif6.jpg"), &options).unwrap();
    assert_eq!(rotated.rgb.dimensions(), (8, 16));
    assert!(
        close(rotated.rgb.get_pixel(4, 2).0, [255, 0, 0], 8),
        "{:?}",
        rotated.rgb.get_pixel(4, 2)
    );
    assert!(
        close(rotated.rgb.get_pixel(4, 13).0, [0, 0, 255], 8),
        "{:?}",
        rotated.rgb.get_pixel(4, 13)
    );

    for name in ["anim.png", "anim.webp"] {
        let loaded = load(&data(name), &options).unwrap();
        assert_eq!(
            loaded.rgb.get_pixel(3, 3).0,
            [255, 0, 0],
            "{name}: first frame"
        );
        assert!(
            loaded.notes.iter().any(|n| n.contains("animated")),
            "{name}: {:?}",
            loaded.notes
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let gif = dir.path().join("anim.gif");
    {
        let mut encoder = GifEncoder::new(std::fs::File::create(&gif).unwrap());
        let frames = [[255, 0, 0, 255], [0, 0, 255, 255]]
            .map(|c| Frame::new(RgbaImage::from_pixel(8, 8, Rgba(c))));
        encoder.encode_frames(frames).unwrap();
    }
    let loaded = load(&gif, &options).unwrap();
    assert_eq!(loaded.rgb.get_pixel(3, 3).0, [255, 0, 0]);
    assert!(
        loaded.notes.iter().any(|n| n.contains("animated")),
        "{:?}",
        loaded.notes
    );
}

/// A BMP header declaring `width`×`height` at 24 bits with no pixel data behind it.
fn bmp_header(width: i32, height: i32) -> Vec<u8> {
    let mut bytes = b"BM".to_vec();
    bytes.extend(70_u32.to_le_bytes()); // file size (a lie, as in a bomb)
    bytes.extend([0; 4]);
    bytes.extend(54_u32.to_le_bytes()); // pixel data offset
    bytes.extend(40_u32.to_le_bytes()); // BITMAPINFOHEADER
    bytes.extend(width.to_le_bytes());
    bytes.extend(height.to_le_bytes());
    bytes.extend(1_u16.to_le_bytes());
    bytes.extend(24_u16.to_le_bytes());
    bytes.extend([0; 24]);
    bytes.extend([0; 16]);
    bytes
}

#[test]
fn bad_images_are_refused_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let encoded = |format: image::ImageFormat| {
        let mut bytes = std::io::Cursor::new(Vec::new());
        let pattern = image::RgbImage::from_fn(64, 64, |x, y| {
            Rgb([x as u8 * 4, y as u8 * 4, (x ^ y) as u8])
        });
        pattern.write_to(&mut bytes, format).unwrap();
        bytes.into_inner()
    };
    let png = encoded(image::ImageFormat::Png);
    let jpeg = encoded(image::ImageFormat::Jpeg);
    let gif = encoded(image::ImageFormat::Gif);
    let mut avif = vec![0, 0, 0, 0x1c];
    avif.extend(b"ftypavif\0\0\0\0avifmif1miaf");

    let corpus: Vec<(PathBuf, &str)> = vec![
        (write("notes.png", b"these are not pixels"), "not an image"),
        (write("empty.jpg", b""), "not an image"),
        (write("cut.png", &png[..png.len() / 2]), "truncated"),
        (write("cut.jpg", &jpeg[..jpeg.len() * 2 / 3]), "truncated"),
        (write("cut.gif", &gif[..gif.len() / 2]), "truncated"),
        (
            write("bomb.bmp", &bmp_header(20_000, 20_000)),
            "megapixel limit",
        ),
        (write("photo.avif", &avif), "AVIF"),
    ];
    for (path, expected) in &corpus {
        let message = load(path, &LoadOptions::default()).unwrap_err().to_string();
        assert!(message.contains(expected), "{}: {message}", path.display());
        assert!(
            message.ends_with(&*path.file_name().unwrap().to_string_lossy()),
            "{message}"
        );
    }
    let small = write("small.png", &png);
    let message = load_rgb8(&small, 1000).unwrap_err().to_string();
    assert!(message.contains("64×64"), "{message}");
    let missing = load_rgb8(&dir.path().join("gone.png"), 1000)
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("reading image") && missing.ends_with("gone.png"),
        "{missing}"
    );
}

/// A real AVIF file (encoded here by the image crate's own AV1 encoder) is refused by name with
/// what to do, since this build has no AVIF decoder.
#[test]
fn real_avif_is_refused_with_advice() {
    use image::ImageEncoder as _;

    let dir = tempfile::tempdir().unwrap();
    let pattern = image::RgbImage::from_fn(16, 16, |x, y| Rgb([x as u8 * 16, y as u8 * 16, 90]));
    let mut bytes = Vec::new();
    image::codecs::avif::AvifEncoder::new_with_speed_quality(&mut bytes, 10, 80)
        .write_image(pattern.as_raw(), 16, 16, image::ExtendedColorType::Rgb8)
        .unwrap();
    assert_eq!(&bytes[4..8], b"ftyp", "the encoder wrote an ISO-BMFF file");
    let path = dir.path().join("real.avif");
    std::fs::write(&path, &bytes).unwrap();
    let message = load(&path, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("AVIF") && message.contains("convert") && message.ends_with("real.avif"),
        "{message}"
    );
    // Content decides, not the name: the same file named .png is still AVIF.
    let renamed = dir.path().join("real.png");
    std::fs::write(&renamed, &bytes).unwrap();
    let message = load(&renamed, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(message.contains("AVIF"), "{message}");
}

/// AVIF files from real encoders (libavif through Pillow: 8-bit, 8-bit with alpha; ffmpeg with
/// libaom: 10-bit) are each refused by name with what to do: the libdav1d the `image` crate's
/// decoder needs is newer than Debian 12's (see the image_input module doc).
#[test]
fn avif_from_other_encoders_is_refused_with_advice() {
    for name in ["avif-rgb8.avif", "avif-rgba8.avif", "avif-rgb10.avif"] {
        let path = data(name);
        let message = load(&path, &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("AVIF images cannot be read by this build")
                && message.contains("convert the image to PNG, JPEG or WebP")
                && message.ends_with(name),
            "{message}"
        );
    }
}

/// By default a transparent image reads as the references read it (`convert("RGB")` in the
/// official Wan script, ComfyUI's LoadImage and diffusers' load_image): alpha dropped, the
/// stored colour kept, with a note saying so.
#[test]
fn default_drops_alpha_like_the_references() {
    let dir = tempfile::tempdir().unwrap();
    let mut rgba = RgbaImage::from_pixel(3, 1, Rgba([10, 20, 30, 255]));
    rgba.put_pixel(1, 0, Rgba([200, 100, 50, 0]));
    rgba.put_pixel(2, 0, Rgba([0, 0, 0, 0]));
    let path = dir.path().join("cutout.png");
    rgba.save(&path).unwrap();
    let loaded = load(&path, &LoadOptions::default()).unwrap();
    assert_eq!(loaded.rgb.get_pixel(0, 0).0, [10, 20, 30]);
    assert_eq!(loaded.rgb.get_pixel(1, 0).0, [200, 100, 50]);
    assert_eq!(loaded.rgb.get_pixel(2, 0).0, [0, 0, 0]);
    assert!(
        loaded
            .notes
            .iter()
            .any(|n| n.contains("transparent") && n.contains("background")),
        "{:?}",
        loaded.notes
    );
    assert_eq!(load_rgb8(&path, 1 << 20).unwrap(), loaded.rgb);
    // An opaque RGBA image gets no note.
    let opaque = dir.path().join("opaque.png");
    RgbaImage::from_pixel(2, 2, Rgba([1, 2, 3, 255]))
        .save(&opaque)
        .unwrap();
    assert!(
        load(&opaque, &LoadOptions::default())
            .unwrap()
            .notes
            .is_empty()
    );
}
