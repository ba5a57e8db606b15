//! Fitting the source image to the model's resolution, the two ways users know.
//!
//! - [`FitMode::Wan`] is the official Wan2.2 preprocessing (`wan/image2video.py`, `generate`):
//!   the output size keeps the aspect ratio with an area close to `max_area` and sides that are
//!   multiples of 16 (VAE stride 8 × patch 2), and the whole image is resized, never cropped,
//!   with torch's `F.interpolate(mode="bicubic", align_corners=False)` on the [-1, 1] tensor
//!   (no antialias, no clamp: bicubic overshoot is kept, as the reference keeps it).
//! - [`FitMode::CenterCrop`] is ComfyUI's `WanImageToVideo` node (`common_upscale(..,
//!   "bilinear", "center")`): crop the centre to the target aspect, then bilinear resize to
//!   exactly W×H.
//!
//! Both resizers reproduce torch's CPU kernels (source index, tap clamping, weights in f32);
//! the golden cases `image_fit_*` prove it.

use candle_core::{Device, Tensor};

use super::RgbImage;
use crate::EngineError;

/// Sides of the model's input are multiples of this (VAE stride 8 × DiT patch 2).
pub const SIDE_MULTIPLE: u32 = 16;

/// The area of Wan's 480p sizes (832×480), used as `max_area`.
pub const AREA_480P: u32 = 480 * 832;
/// The area of Wan's 720p sizes (1280×720).
pub const AREA_720P: u32 = 720 * 1280;

/// How the source image becomes the model's input size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FitMode {
    /// Official Wan: keep the aspect, area ≈ `max_area`, sides multiples of 16, no crop.
    Wan { max_area: u32 },
    /// ComfyUI: centre crop to the target aspect, then resize to exactly `width`×`height`.
    CenterCrop { width: u32, height: u32 },
}

/// A rectangle in source-image pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// What fitting will do to an image: the part of the source that is used and the output size.
/// The UI draws `used` over the source to show what the model will see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FitPlan {
    pub source_width: u32,
    pub source_height: u32,
    /// The part of the source that is kept (the whole image for [`FitMode::Wan`]).
    pub used: Rect,
    pub width: u32,
    pub height: u32,
}

/// The fitted image: channels-first RGB in [-1, 1] (bicubic may overshoot slightly), `plan`'s size.
#[derive(Clone, Debug)]
pub struct FittedImage {
    pub plan: FitPlan,
    /// `3 × height × width` values, row-major per channel.
    pub pixels: Vec<f32>,
}

impl FittedImage {
    /// The pixels as a `[3, height, width]` f32 tensor.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor, EngineError> {
        let shape = (3, self.plan.height as usize, self.plan.width as usize);
        Ok(Tensor::from_slice(&self.pixels, shape, device)?)
    }
}

/// The official Wan output size `(width, height)` for a `width`×`height` source and `max_area`,
/// or `None` when a side would round down to zero (an extreme aspect ratio).
///
/// Mirrors `wan/image2video.py`: `lat_h = round(sqrt(max_area * h / w) // 8 // 2 * 2)`, in f64.
pub fn wan_output_size(width: u32, height: u32, max_area: u32) -> Option<(u32, u32)> {
    if width == 0 || height == 0 {
        return None;
    }
    let aspect = f64::from(height) / f64::from(width);
    let area = f64::from(max_area);
    // Python's `//` on floats floors; the two floor-divisions equal one by 16 for non-negative values.
    let side = |value: f64| ((value.sqrt() / 8.0).floor() / 2.0).floor() * 2.0 * 8.0;
    let out_h = side(area * aspect);
    let out_w = side(area / aspect);
    (out_h >= 1.0 && out_w >= 1.0).then_some((out_w as u32, out_h as u32))
}

/// Plans fitting a `source_width`×`source_height` image with `mode`.
pub fn plan(mode: FitMode, source_width: u32, source_height: u32) -> Result<FitPlan, EngineError> {
    let whole = Rect {
        x: 0,
        y: 0,
        width: source_width,
        height: source_height,
    };
    let refuse = |problem: String| EngineError::BadFit { problem };
    match mode {
        FitMode::Wan { max_area } => {
            let (width, height) = wan_output_size(source_width, source_height, max_area)
                .ok_or_else(|| {
                    refuse(format!(
                        "a {source_width}×{source_height} image at an area of {max_area} pixels \
                         leaves a side under 16 pixels; crop it to a less extreme aspect ratio"
                    ))
                })?;
            Ok(FitPlan {
                source_width,
                source_height,
                used: whole,
                width,
                height,
            })
        }
        FitMode::CenterCrop { width, height } => {
            if width == 0 || height == 0 || source_width == 0 || source_height == 0 {
                return Err(refuse(format!(
                    "cannot fit a {source_width}×{source_height} image to {width}×{height}"
                )));
            }
            Ok(FitPlan {
                source_width,
                source_height,
                used: center_crop(source_width, source_height, width, height),
                width,
                height,
            })
        }
    }
}

/// ComfyUI's centre crop: offsets `round((old - old * ratio) / 2)` with Python's round.
fn center_crop(source_width: u32, source_height: u32, width: u32, height: u32) -> Rect {
    let old_aspect = f64::from(source_width) / f64::from(source_height);
    let new_aspect = f64::from(width) / f64::from(height);
    let offset = |old: u32, ratio: f64| {
        let old = f64::from(old);
        round_half_even((old - old * ratio) / 2.0) as u32
    };
    let (x, y) = if old_aspect > new_aspect {
        (offset(source_width, new_aspect / old_aspect), 0)
    } else if old_aspect < new_aspect {
        (0, offset(source_height, old_aspect / new_aspect))
    } else {
        (0, 0)
    };
    Rect {
        x,
        y,
        width: source_width - 2 * x,
        height: source_height - 2 * y,
    }
}

/// Python 3's `round`: halves go to the even neighbour.
fn round_half_even(value: f64) -> f64 {
    let rounded = value.round();
    if (value - value.trunc()).abs() == 0.5 && rounded % 2.0 != 0.0 {
        rounded - value.signum()
    } else {
        rounded
    }
}

/// Fits `image` with `mode`; the result is what the VAE encodes as frame 0.
pub fn fit_image(image: &RgbImage, mode: FitMode) -> Result<FittedImage, EngineError> {
    let plan = plan(mode, image.width(), image.height())?;
    let used = plan.used;
    let (width, height) = (used.width as usize, used.height as usize);
    let mut planes = vec![0.0_f32; 3 * width * height];
    // torchvision's to_tensor divides by 255; the official code then maps to [-1, 1] *before*
    // resizing, ComfyUI resizes [0, 1] values and maps afterwards. The order changes rounding only.
    let to_signed = matches!(mode, FitMode::Wan { .. });
    for (y, row) in (used.y..used.y + used.height).enumerate() {
        for (x, column) in (used.x..used.x + used.width).enumerate() {
            let pixel = image.get_pixel(column, row).0;
            for (c, value) in pixel.iter().enumerate() {
                let unit = f32::from(*value) / 255.0;
                planes[(c * height + y) * width + x] =
                    if to_signed { (unit - 0.5) / 0.5 } else { unit };
            }
        }
    }
    let (out_w, out_h) = (plan.width as usize, plan.height as usize);
    let pixels = match mode {
        FitMode::Wan { .. } => resize(&planes, 3, (height, width), (out_h, out_w), &Cubic),
        FitMode::CenterCrop { .. } => {
            let mut unit = resize(&planes, 3, (height, width), (out_h, out_w), &Linear);
            for value in &mut unit {
                *value = *value * 2.0 - 1.0;
            }
            unit
        }
    };
    Ok(FittedImage { plan, pixels })
}

/// One output coordinate's source taps (already clamped to the input) and their weights.
struct Taps<const N: usize> {
    index: [usize; N],
    weight: [f32; N],
}

trait Kernel<const N: usize> {
    fn taps(&self, scale: f32, out_index: usize, in_size: usize) -> Taps<N>;
}

/// torch's bicubic (`A = -0.75`); the source index is not clamped at 0, the taps are.
struct Cubic;

impl Kernel<4> for Cubic {
    fn taps(&self, scale: f32, out_index: usize, in_size: usize) -> Taps<4> {
        const A: f32 = -0.75;
        let source = scale * (out_index as f32 + 0.5) - 0.5;
        let floor = (source.floor() as i64).min(in_size as i64 - 1);
        let t = (source - floor as f32).clamp(0.0, 1.0);
        let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
        let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
        let weight = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
        let index =
            std::array::from_fn(|j| (floor - 1 + j as i64).clamp(0, in_size as i64 - 1) as usize);
        Taps { index, weight }
    }
}

/// torch's bilinear: the source index is clamped at 0 and the second tap stays inside.
struct Linear;

impl Kernel<2> for Linear {
    fn taps(&self, scale: f32, out_index: usize, in_size: usize) -> Taps<2> {
        let source = (scale * (out_index as f32 + 0.5) - 0.5).max(0.0);
        let first = source as usize;
        let step = usize::from(first < in_size - 1);
        let lambda = (source - first as f32).min(1.0);
        Taps {
            index: [first, first + step],
            weight: [1.0 - lambda, lambda],
        }
    }
}

/// Resizes `channels` planes of `in_hw` to `out_hw`, summing height taps of width-interpolated
/// rows in f32, in the order torch's CPU kernel does.
fn resize<const N: usize>(
    planes: &[f32],
    channels: usize,
    (in_h, in_w): (usize, usize),
    (out_h, out_w): (usize, usize),
    kernel: &impl Kernel<N>,
) -> Vec<f32> {
    let scale_h = in_h as f32 / out_h as f32;
    let scale_w = in_w as f32 / out_w as f32;
    let rows: Vec<Taps<N>> = (0..out_h).map(|y| kernel.taps(scale_h, y, in_h)).collect();
    let columns: Vec<Taps<N>> = (0..out_w).map(|x| kernel.taps(scale_w, x, in_w)).collect();
    let mut out = vec![0.0_f32; channels * out_h * out_w];
    for c in 0..channels {
        let plane = &planes[c * in_h * in_w..(c + 1) * in_h * in_w];
        for (y, row) in rows.iter().enumerate() {
            for (x, column) in columns.iter().enumerate() {
                let mut value = 0.0_f32;
                for (&ry, &wy) in row.index.iter().zip(&row.weight) {
                    let line = &plane[ry * in_w..(ry + 1) * in_w];
                    let mut across = 0.0_f32;
                    for (&rx, &wx) in column.index.iter().zip(&column.weight) {
                        across += line[rx] * wx;
                    }
                    value += across * wy;
                }
                out[(c * out_h + y) * out_w + x] = value;
            }
        }
    }
    out
}

/// A named aspect ratio at one of Wan's resolutions, with its official output size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AspectBucket {
    /// `"16:9"`, `"1:1"`, …
    pub label: &'static str,
    pub width: u32,
    pub height: u32,
}

/// Aspect ratios offered for a resolution, landscape, square and portrait.
const ASPECTS: [(&str, u32, u32); 9] = [
    ("21:9", 21, 9),
    ("16:9", 16, 9),
    ("3:2", 3, 2),
    ("4:3", 4, 3),
    ("1:1", 1, 1),
    ("3:4", 3, 4),
    ("2:3", 2, 3),
    ("9:16", 9, 16),
    ("9:21", 9, 21),
];

/// The aspect buckets at `max_area` (use [`AREA_480P`] or [`AREA_720P`]), each sized with the
/// official formula, so a bucket's size is exactly what [`FitMode::Wan`] gives that aspect.
/// 16:9 at 480p is 832×464 (the formula's floor; Wan's own 832×480 preset is 16:9.2).
pub fn aspect_buckets(max_area: u32) -> Vec<AspectBucket> {
    ASPECTS
        .iter()
        .filter_map(|&(label, w, h)| {
            wan_output_size(w, h, max_area).map(|(width, height)| AspectBucket {
                label,
                width,
                height,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_sizes_of_the_presets() {
        // The reference's float64 `480 / 832 * 399360` is a hair under 480², so an exact 832×480
        // landscape image comes out 832×464 officially; portrait 480×832 stays.
        assert_eq!(wan_output_size(832, 480, AREA_480P), Some((832, 464)));
        assert_eq!(wan_output_size(480, 832, AREA_480P), Some((480, 832)));
        assert_eq!(wan_output_size(1280, 720, AREA_720P), Some((1280, 720)));
        assert_eq!(wan_output_size(1000, 1000, AREA_480P), Some((624, 624)));
        assert_eq!(wan_output_size(5000, 1, AREA_480P), None);
        for area in [AREA_480P, AREA_720P] {
            let buckets = aspect_buckets(area);
            assert_eq!(buckets.len(), 9);
            for bucket in &buckets {
                assert_eq!(bucket.width % SIDE_MULTIPLE, 0, "{bucket:?}");
                assert_eq!(bucket.height % SIDE_MULTIPLE, 0, "{bucket:?}");
                assert!(bucket.width * bucket.height <= area, "{bucket:?}");
                // A bucket is what the official fit gives an image of that aspect.
                let (w, h) = bucket
                    .label
                    .split_once(':')
                    .map(|(w, h)| (w.parse::<u32>().unwrap(), h.parse::<u32>().unwrap()))
                    .unwrap();
                let plan = plan(FitMode::Wan { max_area: area }, w * 120, h * 120).unwrap();
                assert_eq!((plan.width, plan.height), (bucket.width, bucket.height));
            }
        }
        let at_720p = |label: &str| {
            let bucket = aspect_buckets(AREA_720P)
                .into_iter()
                .find(|b| b.label == label)
                .unwrap();
            (bucket.width, bucket.height)
        };
        assert_eq!(at_720p("16:9"), (1280, 720));
        assert_eq!(at_720p("9:16"), (720, 1280));
        assert_eq!(at_720p("1:1"), (960, 960));
    }

    #[test]
    fn python_rounding_and_centre_crop() {
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(3.5), 4.0);
        assert_eq!(round_half_even(2.4), 2.0);
        // 100×50 (2:1) to a square: 25 columns off each side.
        let rect = center_crop(100, 50, 64, 64);
        assert_eq!(
            rect,
            Rect {
                x: 25,
                y: 0,
                width: 50,
                height: 50
            }
        );
        let plan = plan(
            FitMode::CenterCrop {
                width: 64,
                height: 64,
            },
            100,
            50,
        )
        .unwrap();
        assert_eq!((plan.width, plan.height), (64, 64));
    }

    #[test]
    fn identity_resize_keeps_pixels() {
        let image = RgbImage::from_fn(32, 16, |x, y| image::Rgb([x as u8 * 7, y as u8 * 9, 200]));
        let fitted = fit_image(
            &image,
            FitMode::CenterCrop {
                width: 32,
                height: 16,
            },
        )
        .unwrap();
        let expected = f32::from(image.get_pixel(5, 3).0[0]) / 255.0 * 2.0 - 1.0;
        assert!((fitted.pixels[3 * 32 + 5] - expected).abs() < 1e-6);
    }
}
