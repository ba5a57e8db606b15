//! The CPU reference of the backward warp: exact, plain Rust, and the CPU path.
//!
//! It follows PyTorch's float32 CPU arithmetic step by step, because RIFE's warp is
//! `grid_sample(input, linspace_grid + flow / ((size - 1) / 2), bilinear, border,
//! align_corners=True)` and every rounding of that chain shows up in the parity cases:
//! the grid comes from `torch.linspace`'s two-sided formula, the normalised coordinate is
//! unnormalised as `(g + 1) * ((size - 1) / 2)`, clamped to the border, and the four
//! neighbours are blended with PyTorch's weight products and summation order.

/// Sizes of one warp: `input` is `(batch, channels, height, width)`, the flow
/// `(batch, 2, height, width)`, both contiguous.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WarpShape {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

/// `torch.linspace(-1, 1, steps)` in float32, element `index`.
fn linspace_minus1_to_1(index: usize, steps: usize) -> f32 {
    let step = 2.0_f32 / (steps - 1) as f32;
    if index < steps / 2 {
        -1.0 + step * index as f32
    } else {
        1.0 - step * (steps - index - 1) as f32
    }
}

/// Pixel coordinate sampled for output position `index` moved by `flow` pixels, as PyTorch
/// computes it: normalise the flow, add the grid, unnormalise, clamp to the border.
fn source_coordinate(index: usize, flow: f32, size: usize) -> f32 {
    let half_extent = (size as f32 - 1.0) / 2.0;
    let normalised = linspace_minus1_to_1(index, size) + flow / half_extent;
    let unnormalised = (normalised + 1.0) * half_extent;
    // `max` then `min` keeps NaN out only where PyTorch does (it clamps the same way).
    unnormalised.max(0.0).min(size as f32 - 1.0)
}

/// Warps `input` backwards along `flow` (in pixels; channel 0 horizontal, 1 vertical).
///
/// Output pixel `(y, x)` is `input` sampled bilinearly at `(y + flow_y, x + flow_x)`, with
/// coordinates clamped to the image (border padding). Sizes must be at least 2 in each
/// direction; the safe wrapper checks that.
#[must_use]
pub fn backward_warp(input: &[f32], flow: &[f32], shape: WarpShape) -> Vec<f32> {
    let WarpShape {
        batch,
        channels,
        height,
        width,
    } = shape;
    let plane = height * width;
    let mut out = vec![0.0_f32; batch * channels * plane];
    for b in 0..batch {
        let flow_x = &flow[(b * 2) * plane..(b * 2 + 1) * plane];
        let flow_y = &flow[(b * 2 + 1) * plane..(b * 2 + 2) * plane];
        let image = &input[b * channels * plane..(b + 1) * channels * plane];
        let result = &mut out[b * channels * plane..(b + 1) * channels * plane];
        for y in 0..height {
            for x in 0..width {
                let p = y * width + x;
                let ix = source_coordinate(x, flow_x[p], width);
                let iy = source_coordinate(y, flow_y[p], height);
                let x_west = ix.floor();
                let y_north = iy.floor();
                let east_delta = ix - x_west;
                let south_delta = iy - y_north;
                let west_delta = 1.0 - east_delta;
                let north_delta = 1.0 - south_delta;
                let nw = north_delta * west_delta;
                let ne = north_delta * east_delta;
                let sw = south_delta * west_delta;
                let se = south_delta * east_delta;
                // After clamping, x_west is in [0, width - 1]; the east (south) neighbour may
                // fall one past the edge, where PyTorch reads zero (its weight is zero too).
                let xw = x_west as usize;
                let yn = y_north as usize;
                let has_east = xw + 1 < width;
                let has_south = yn + 1 < height;
                for c in 0..channels {
                    let src = &image[c * plane..(c + 1) * plane];
                    let at = |yy: usize, xx: usize| src[yy * width + xx];
                    let v_nw = at(yn, xw);
                    let v_ne = if has_east { at(yn, xw + 1) } else { 0.0 };
                    let v_sw = if has_south { at(yn + 1, xw) } else { 0.0 };
                    let v_se = if has_east && has_south {
                        at(yn + 1, xw + 1)
                    } else {
                        0.0
                    };
                    result[c * plane + p] = v_nw * nw + v_ne * ne + v_sw * sw + v_se * se;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(channels: usize, height: usize, width: usize) -> WarpShape {
        WarpShape {
            batch: 1,
            channels,
            height,
            width,
        }
    }

    #[test]
    fn zero_flow_is_the_identity() {
        let (h, w) = (5, 7);
        let input: Vec<f32> = (0..2 * h * w).map(|i| (i as f32 * 0.37).sin()).collect();
        let flow = vec![0.0; 2 * h * w];
        let out = backward_warp(&input, &flow, shape(2, h, w));
        for (a, b) in out.iter().zip(&input) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn integer_flow_shifts_and_clamps_at_the_border() {
        let (h, w) = (3, 6);
        let input: Vec<f32> = (0..h * w).map(|i| i as f32).collect();
        // Every pixel samples two to the right: the last two columns repeat the edge.
        let mut flow = vec![2.0; h * w];
        flow.extend(vec![0.0; h * w]);
        let out = backward_warp(&input, &flow, shape(1, h, w));
        for y in 0..h {
            for x in 0..w {
                let expected = (y * w + (x + 2).min(w - 1)) as f32;
                assert!((out[y * w + x] - expected).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn half_pixel_flow_averages_neighbours() {
        let (h, w) = (2, 4);
        let input = vec![0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0];
        let mut flow = vec![0.0; h * w];
        flow.extend(vec![0.5; h * w]);
        let out = backward_warp(&input, &flow, shape(1, h, w));
        // Row 0 averages rows 0 and 1; row 1 is clamped to the bottom row.
        let expected = [5.0, 6.0, 7.0, 8.0, 10.0, 11.0, 12.0, 13.0];
        for (a, b) in out.iter().zip(expected) {
            assert!((a - b).abs() < 1e-5, "{out:?}");
        }
    }

    #[test]
    fn linspace_matches_torch_endpoints_and_symmetry() {
        for steps in [2, 3, 64, 65, 1080] {
            assert_eq!(linspace_minus1_to_1(0, steps), -1.0);
            assert_eq!(linspace_minus1_to_1(steps - 1, steps), 1.0);
        }
    }
}
