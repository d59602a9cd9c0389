//! The image-quality measures themselves: a few passes over the luma plane and one over
//! the colour tensor, every sum kept in eight independent lanes (a float sum in one chain
//! waits on each add's latency; eight pipeline and vectorise, and the values change by
//! rounding only).

use super::ImageQuality;
use crate::error::{Error, Result};
use crate::preprocess::{ChannelOrder, Layout, PixelFormat, PreprocessSpec};

/// The share of pixels the black level is read at.
pub(super) const BLACK_LEVEL_QUANTILE: f32 = 0.02;
/// A dark flat cell ([`ImageQuality::dark_flat_share`]): luma range under this...
const DARK_FLAT_RANGE: f32 = 0.02;
/// ...and mean luma under this.
const DARK_FLAT_MEAN: f32 = 0.25;
/// Luma at or under this is crushed black (see [`ImageQuality::clipped_dark`]).
const CRUSHED: f32 = 0.02;
/// The grid the dark flat cells are counted on: this many cells across and down.
const DARK_FLAT_GRID: usize = 8;
/// A saturated pixel ([`ImageQuality::saturated_share`]): saturation at least this...
const SATURATED: f32 = 0.95;
/// ...and value at least this (the saturation of near-black pixels is noise).
const SATURATED_MIN_VALUE: f32 = 0.2;

/// Row triples the frame-noise estimate reads, evenly spaced down the frame: about 5,000
/// responses on a 640x480 frame (a 1.5% estimate), at a twentieth of the frame's reads.
const FRAME_NOISE_TRIPLES: usize = 8;

/// Independent running sums.
const LANES: usize = 8;
type Lanes = [f32; LANES];

fn total(lanes: Lanes) -> f32 {
    lanes.iter().sum()
}

/// The larger of two values by one comparison (one vector instruction, where `f32::max`
/// takes several to order NaN): the measures' NaN cases are handled where they matter.
#[inline(always)]
fn larger(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// The smaller of two values by one comparison (see [`larger`]).
#[inline(always)]
fn smaller(a: f32, b: f32) -> f32 {
    if a < b {
        a
    } else {
        b
    }
}

/// Lowest value, highest value and sum of `values`, in lanes.
#[inline(always)]
fn range_and_sum(values: &[f32], lo: &mut Lanes, hi: &mut Lanes, sum: &mut Lanes) {
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for k in 0..LANES {
            lo[k] = smaller(lo[k], c[k]);
            hi[k] = larger(hi[k], c[k]);
            sum[k] += c[k];
        }
    }
    for &v in tail {
        lo[0] = smaller(lo[0], v);
        hi[0] = larger(hi[0], v);
        sum[0] += v;
    }
}

/// Measures a luma plane (`width x height`, values in 0-1).
pub fn measure_luma(luma: &[f32], width: usize, height: usize) -> Result<ImageQuality> {
    measure_luma_with(luma, width, height, &mut Vec::new())
}

/// As [`measure_luma`], with a buffer for the reduced planes of the detail ratio.
fn measure_luma_with(
    luma: &[f32],
    width: usize,
    height: usize,
    scratch: &mut Vec<f32>,
) -> Result<ImageQuality> {
    if width < 3 || height < 3 || luma.len() != width * height {
        return Err(Error::InvalidParameter {
            what: "image",
            reason: format!("{} values are not a {width}x{height} plane", luma.len()),
        });
    }
    let n = luma.len() as f32;
    let (mut sum, mut sq, mut dark, mut bright) =
        ([0f32; LANES], [0f32; LANES], [0f32; LANES], [0f32; LANES]);
    let chunks = luma.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for k in 0..LANES {
            let v = c[k];
            sum[k] += v;
            sq[k] += v * v;
            dark[k] += (v <= 0.02) as u8 as f32;
            bright[k] += (v >= 0.98) as u8 as f32;
        }
    }
    for &v in tail {
        sum[0] += v;
        sq[0] += v * v;
        dark[0] += (v <= 0.02) as u8 as f32;
        bright[0] += (v >= 0.98) as u8 as f32;
    }
    let mean = total(sum) / n;
    let var = total(sq) / n - mean * mean;
    let (lap_var, noise, radial) = interior_pass::<true>(luma, width, height);
    Ok(ImageQuality {
        mean_luma: mean,
        contrast: var.max(0.0).sqrt(),
        sharpness: lap_var,
        clipped_dark: total(dark) / n,
        clipped_bright: total(bright) / n,
        flat_share: flat_share(luma, width, height),
        blockiness: blockiness(luma, width, height),
        noise,
        detail: detail_ratio(luma, width, height, scratch),
        saturation: 0.0,
        black_level: low_quantile(luma, BLACK_LEVEL_QUANTILE),
        dark_flat_share: dark_flat_share(luma, width, height),
        value_min: 0.0,
        saturated_share: 0.0,
        radial_detail: radial,
        frame_noise: None,
        frame_blockiness: None,
        frame_duplicates: None,
        frame_size: None,
    })
}

/// The variance of the 4-neighbour Laplacian over the interior, and Immerkaer's fast noise
/// estimate: `sqrt(pi / 2) / (6 (W - 2) (H - 2))` times the sum of absolute responses to
/// `[1 -2 1; -2 4 -2; 1 -2 1]` over the interior. One pass over three rows at a time.
fn laplacian_and_noise(luma: &[f32], width: usize, height: usize) -> (f32, f32) {
    let (lap_var, noise, _) = interior_pass::<false>(luma, width, height);
    (lap_var, noise)
}

/// [`laplacian_and_noise`] and, when `RADIAL`, [`ImageQuality::radial_detail`] in the same
/// pass: each interior pixel's central-difference gradient projected on its offset from
/// the centre and on the offset's normal, squared and summed, the first sum over the
/// second. Unnormalised, the projections weigh each pixel by its squared distance from the
/// centre, where zoom blur smears most and the directions are sharpest. 1 where the plane
/// has no gradient, NaN where a value the gradients read is NaN (all but the four corners,
/// which the mean luma's NaN catches).
fn interior_pass<const RADIAL: bool>(luma: &[f32], width: usize, height: usize) -> (f32, f32, f32) {
    let (mut lap, mut lap_sq, mut abs) = ([0f32; LANES], [0f32; LANES], [0f32; LANES]);
    let (mut along, mut across) = ([0f32; LANES], [0f32; LANES]);
    let (cx, cy) = ((width - 1) as f32 / 2.0, (height - 1) as f32 / 2.0);
    let inner = width - 2;
    let whole = inner / LANES * LANES;
    for y in 1..height - 1 {
        let dy = y as f32 - cy;
        let a = &luma[(y - 1) * width..y * width];
        let b = &luma[y * width..(y + 1) * width];
        let c = &luma[(y + 1) * width..(y + 2) * width];
        for x0 in (0..whole).step_by(LANES) {
            // slices of known length: no bounds checks in the lanes
            let (a, b, c) = (
                &a[x0..x0 + LANES + 2],
                &b[x0..x0 + LANES + 2],
                &c[x0..x0 + LANES + 2],
            );
            let dx0 = x0 as f32 + 1.0 - cx;
            for k in 0..LANES {
                let (l, r, g) = interior_at::<RADIAL>(a, b, c, k, dx0 + k as f32, dy);
                lap[k] += l;
                lap_sq[k] += l * l;
                abs[k] += r.abs();
                along[k] += g.0;
                across[k] += g.1;
            }
        }
        for x in whole..inner {
            let (l, r, g) = interior_at::<RADIAL>(a, b, c, x, (x + 1) as f32 - cx, dy);
            lap[0] += l;
            lap_sq[0] += l * l;
            abs[0] += r.abs();
            along[0] += g.0;
            across[0] += g.1;
        }
    }
    let count = (inner * (height - 2)) as f32;
    let mean = total(lap) / count;
    let lap_var = (total(lap_sq) / count - mean * mean).max(0.0);
    let noise = total(abs) * (std::f32::consts::FRAC_PI_2).sqrt() / (6.0 * count);
    let (along, across) = (total(along), total(across));
    let radial = if !(along.is_finite() && across.is_finite()) {
        // a NaN pixel: no picture, which fails the bound
        f32::NAN
    } else if across > 0.0 {
        along / across
    } else if along > 0.0 {
        f32::MAX
    } else {
        1.0
    };
    (lap_var, noise, radial)
}

/// One interior output at x + 1 from columns x, x + 1, x + 2 of rows a (above), b, c
/// (below): the Laplacian, the noise mask's response, and (when `RADIAL`) the squares of
/// the gradient's projections on the offset (dx, dy) from the centre and on its normal.
#[inline(always)]
fn interior_at<const RADIAL: bool>(
    a: &[f32],
    b: &[f32],
    c: &[f32],
    x: usize,
    dx: f32,
    dy: f32,
) -> (f32, f32, (f32, f32)) {
    let l = b[x] + b[x + 2] + a[x + 1] + c[x + 1] - 4.0 * b[x + 1];
    let r = a[x] - 2.0 * a[x + 1] + a[x + 2] - 2.0 * (b[x] - 2.0 * b[x + 1] + b[x + 2]) + c[x]
        - 2.0 * c[x + 1]
        + c[x + 2];
    if RADIAL {
        let (gx, gy) = (b[x + 2] - b[x], c[x + 1] - a[x + 1]);
        let radial = gx * dx + gy * dy;
        let tangential = gy * dx - gx * dy;
        (l, r, (radial * radial, tangential * tangential))
    } else {
        (l, r, (0.0, 0.0))
    }
}

/// Share of flat 4x4 cells (see [`ImageQuality::flat_share`]).
fn flat_share(luma: &[f32], width: usize, height: usize) -> f32 {
    let (mut flat, mut cells) = (0usize, 0usize);
    for cy in (0..height.saturating_sub(3)).step_by(4) {
        let rows = [0, 1, 2, 3].map(|r| &luma[(cy + r) * width..(cy + r + 1) * width]);
        for cx in (0..width.saturating_sub(3)).step_by(4) {
            let (mut lo, mut hi) = ([f32::MAX; 4], [f32::MIN; 4]);
            for row in rows {
                let cell_row = &row[cx..cx + 4];
                for k in 0..4 {
                    lo[k] = smaller(lo[k], cell_row[k]);
                    hi[k] = larger(hi[k], cell_row[k]);
                }
            }
            let lo = smaller(smaller(lo[0], lo[1]), smaller(lo[2], lo[3]));
            let hi = larger(larger(hi[0], hi[1]), larger(hi[2], hi[3]));
            cells += 1;
            // clipped cells are exposure's business, not the lens's
            flat += (hi - lo < 0.02 && lo > 0.02 && hi < 0.98) as usize;
        }
    }
    if cells > 0 {
        flat as f32 / cells as f32
    } else {
        0.0
    }
}

/// Share of the cells of a [`DARK_FLAT_GRID`]-square grid that are flat and dark (see
/// [`ImageQuality::dark_flat_share`]); pixels past the last whole cell are left out.
fn dark_flat_share(luma: &[f32], width: usize, height: usize) -> f32 {
    let (cw, ch) = (width / DARK_FLAT_GRID, height / DARK_FLAT_GRID);
    if cw == 0 || ch == 0 {
        return 0.0;
    }
    let mut dark_flat = 0usize;
    for gy in 0..DARK_FLAT_GRID {
        for gx in 0..DARK_FLAT_GRID {
            let (mut lo, mut hi, mut sum) = ([f32::MAX; LANES], [f32::MIN; LANES], [0f32; LANES]);
            for y in gy * ch..(gy + 1) * ch {
                range_and_sum(
                    &luma[y * width + gx * cw..][..cw],
                    &mut lo,
                    &mut hi,
                    &mut sum,
                );
            }
            let lo = lo.iter().fold(f32::MAX, |a, &b| smaller(a, b));
            let hi = hi.iter().fold(f32::MIN, |a, &b| larger(a, b));
            let mean = total(sum) / (cw * ch) as f32;
            // crushed cells (night, a black backdrop) are exposure's business, as in
            // `flat_share`
            dark_flat +=
                (hi - lo < DARK_FLAT_RANGE && mean < DARK_FLAT_MEAN && lo > CRUSHED) as usize;
        }
    }
    dark_flat as f32 / (DARK_FLAT_GRID * DARK_FLAT_GRID) as f32
}

/// The `p` quantile of values in 0-1, to 1/256, from a histogram on the stack (no
/// allocation, one pass); NaN values count as 0 and values out of range are clamped.
pub(super) fn low_quantile(values: &[f32], p: f32) -> f32 {
    // four histograms, so that neighbours in the same bin (most of a smooth picture) do not
    // wait on each other's increment
    let mut histograms = [[0u32; 256]; 4];
    let chunks = values.chunks_exact(4);
    let tail = chunks.remainder();
    // `as` saturates, and maps NaN to 0; to `i32`, one instruction and a fix-up (to `usize`,
    // which SSE has no conversion for, several), the same bins
    let bin = |v: f32| ((v * 256.0) as i32).clamp(0, 255) as usize;
    for c in chunks {
        for k in 0..4 {
            histograms[k][bin(c[k])] += 1;
        }
    }
    for &v in tail {
        histograms[0][bin(v)] += 1;
    }
    let want = (p * values.len() as f32).ceil().max(1.0) as u32;
    let mut seen = 0;
    for bin in 0..256 {
        let count: u32 = histograms.iter().map(|h| h[bin]).sum();
        seen += count;
        if seen >= want {
            return bin as f32 / 256.0;
        }
    }
    1.0
}

/// `plane` (`width x height`) averaged over 2x2 blocks into `out`, which holds
/// `(width / 2) x (height / 2)` values.
fn halve(plane: &[f32], width: usize, height: usize, out: &mut [f32]) {
    let (bw, bh) = (width / 2, height / 2);
    for (by, sums) in out.chunks_exact_mut(bw).take(bh).enumerate() {
        let upper = &plane[2 * by * width..][..2 * bw];
        let lower = &plane[(2 * by + 1) * width..][..2 * bw];
        for ((s, u), l) in sums
            .iter_mut()
            .zip(upper.chunks_exact(2))
            .zip(lower.chunks_exact(2))
        {
            *s = (u[0] + u[1] + l[0] + l[1]) * 0.25;
        }
    }
}

/// Laplacian variance at half resolution over that at quarter resolution (see
/// [`ImageQuality::detail`]); a flat plane gives 1, a plane too small for both scales 0.
/// The reduced planes go to `scratch`, sized once.
fn detail_ratio(luma: &[f32], width: usize, height: usize, scratch: &mut Vec<f32>) -> f32 {
    const FLOOR: f32 = 1e-9;
    let (hw, hh) = (width / 2, height / 2);
    let (qw, qh) = (hw / 2, hh / 2);
    if qw < 3 || qh < 3 {
        return 0.0;
    }
    scratch.resize(hw * hh + qw * qh, 0.0);
    let (half, quarter) = scratch.split_at_mut(hw * hh);
    halve(luma, width, height, half);
    // the mean of 2x2 half-plane blocks is that of the 4x4 block
    halve(half, hw, hh, quarter);
    let (fine, _) = laplacian_and_noise(half, hw, hh);
    let (coarse, _) = laplacian_and_noise(quarter, qw, qh);
    (fine + FLOOR) / (coarse + FLOOR)
}

/// The largest ratio, over grid sizes 4, 8 and 16, of the mean absolute luma step across
/// grid edges to the mean step inside the cells (horizontal and vertical steps together).
fn blockiness(luma: &[f32], width: usize, height: usize) -> f32 {
    // steps summed by position in a 16-periodic grid: edge sums of the smaller grids are
    // subsets of these, so one pass over the plane serves all three
    const PERIOD: usize = 16;
    let mut by_phase = [0f32; PERIOD];
    for y in 0..height {
        let row = &luma[y * width..(y + 1) * width];
        // the step into column x (x >= 1) has phase x % 16; whole periods run as lanes
        for x0 in (0..width).step_by(PERIOD) {
            if x0 >= 1 && x0 + PERIOD <= width {
                let s = &row[x0 - 1..x0 + PERIOD];
                for k in 0..PERIOD {
                    by_phase[k] += (s[k + 1] - s[k]).abs();
                }
            } else {
                for x in x0.max(1)..(x0 + PERIOD).min(width) {
                    by_phase[x % PERIOD] += (row[x] - row[x - 1]).abs();
                }
            }
        }
        if y > 0 {
            let above = &luma[(y - 1) * width..y * width];
            let mut steps = [0f32; LANES];
            let (rows, aboves) = (row.chunks_exact(LANES), above.chunks_exact(LANES));
            for (r, a) in rows.clone().zip(aboves.clone()) {
                for k in 0..LANES {
                    steps[k] += (r[k] - a[k]).abs();
                }
            }
            for (r, a) in rows.remainder().iter().zip(aboves.remainder()) {
                steps[0] += (r - a).abs();
            }
            by_phase[y % PERIOD] += total(steps);
        }
    }
    let mut count = [0u64; PERIOD];
    for x in 1..width {
        count[x % PERIOD] += height as u64;
    }
    for y in 1..height {
        count[y % PERIOD] += width as u64;
    }
    let mut worst = 0f32;
    for grid in [4usize, 8, 16] {
        let (mut edge, mut edge_n, mut inner, mut inner_n) = (0f32, 0u64, 0f32, 0u64);
        for phase in 0..PERIOD {
            if phase % grid == 0 {
                edge += by_phase[phase];
                edge_n += count[phase];
            } else {
                inner += by_phase[phase];
                inner_n += count[phase];
            }
        }
        if edge_n == 0 || inner_n == 0 {
            continue;
        }
        let inner_mean = inner / inner_n as f32;
        let ratio = (edge / edge_n as f32) / inner_mean.max(1e-4);
        worst = worst.max(ratio);
    }
    worst
}

/// HSV saturation and value of an RGB pixel in 0-1 (`(max - min) / max`, 0 for black), as
/// the corruption benchmark's saturation changes them.
/// NaN channels are [`ColourSums`]' business: plain comparisons (one vector instruction
/// each, where `f32::max` takes several) need not order them.
#[inline(always)]
fn saturation_value_of(pixel: [f32; 3]) -> (f32, f32) {
    let larger = |a: f32, b: f32| if a > b { a } else { b };
    let smaller = |a: f32, b: f32| if a < b { a } else { b };
    let max = larger(larger(pixel[0], pixel[1]), pixel[2]);
    let min = smaller(smaller(pixel[0], pixel[1]), pixel[2]);
    let s = if max > 1e-6 {
        smaller(larger((max - min) / max, 0.0), 1.0)
    } else {
        0.0
    };
    (s, max)
}

/// The colour measures, summed over pixels in lanes.
#[derive(Debug, Clone, Copy)]
struct ColourSums {
    saturation: Lanes,
    value_min: Lanes,
    saturated: Lanes,
    /// The channels' sum: NaN when any channel was.
    nan_probe: Lanes,
}

impl ColourSums {
    fn new() -> Self {
        Self {
            saturation: [0.0; LANES],
            value_min: [f32::INFINITY; LANES],
            saturated: [0.0; LANES],
            nan_probe: [0.0; LANES],
        }
    }

    #[inline(always)]
    fn add(&mut self, lane: usize, pixel: [f32; 3]) {
        let (s, v) = saturation_value_of(pixel);
        self.saturation[lane] += s;
        self.value_min[lane] = if v < self.value_min[lane] {
            v
        } else {
            self.value_min[lane]
        };
        self.nan_probe[lane] += pixel[0] + pixel[1] + pixel[2];
        self.saturated[lane] += (s >= SATURATED && v >= SATURATED_MIN_VALUE) as u8 as f32;
    }

    /// Writes the measures of `pixels` pixels into `q`; a NaN value makes the darkest value
    /// NaN, so that the frame fails its bound.
    fn finish(self, pixels: usize, q: &mut ImageQuality) {
        let n = pixels.max(1) as f32;
        q.saturation = total(self.saturation) / n;
        q.value_min = if pixels == 0 {
            0.0
        } else if total(self.nan_probe).is_nan() {
            f32::NAN
        } else {
            self.value_min.iter().fold(f32::INFINITY, |a, &b| a.min(b))
        };
        q.saturated_share = total(self.saturated) / n;
    }
}

/// Measures packed RGB bytes (`width x height`): the luma measures and the colour ones.
pub fn measure_rgb8(rgb: &[u8], width: usize, height: usize) -> Result<ImageQuality> {
    let mut luma = Vec::new();
    luma_of_rgb8(rgb, &mut luma);
    let mut q = measure_luma(&luma, width, height)?;
    let mut sums = ColourSums::new();
    for (i, p) in rgb.chunks_exact(3).enumerate() {
        sums.add(i % LANES, [p[0], p[1], p[2]].map(|v| v as f32 / 255.0));
    }
    sums.finish(rgb.len() / 3, &mut q);
    Ok(q)
}

/// Measures image quality from an encoder input tensor, reusing its buffers: what the
/// edge runs on every frame (no allocation once the buffers have grown to the plane).
#[derive(Debug, Clone, Default)]
pub struct QualityMeter {
    luma: Vec<f32>,
    /// The reduced planes of the detail ratio.
    scratch: Vec<f32>,
    /// Three rows of a frame's luma, for the frame-noise estimate.
    rows: Vec<f32>,
    /// Per column pair of a frame, how many of the read rows have them equal.
    equal_columns: Vec<u16>,
}

/// What [`QualityMeter::frame_measures`] reads off a frame at its own resolution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameMeasures {
    /// [`ImageQuality::frame_noise`].
    pub noise: f32,
    /// [`ImageQuality::frame_blockiness`].
    pub blockiness: f32,
    /// [`ImageQuality::frame_duplicates`].
    pub duplicates: f32,
}

impl QualityMeter {
    pub fn new(spec: &PreprocessSpec) -> Self {
        let plane = spec.width as usize * spec.height as usize;
        Self {
            luma: Vec::with_capacity(plane),
            scratch: Vec::with_capacity(plane / 4 + plane / 16),
            rows: Vec::new(),
            equal_columns: Vec::new(),
        }
    }

    /// The measures of the picture in `tensor`, written with `spec`.
    pub fn measure(&mut self, tensor: &[f32], spec: &PreprocessSpec) -> Result<ImageQuality> {
        luma_of_tensor(tensor, spec, &mut self.luma)?;
        let (w, h) = (spec.width as usize, spec.height as usize);
        let mut q = measure_luma_with(&self.luma, w, h, &mut self.scratch)?;
        colour_of_tensor(tensor, spec).finish(w * h, &mut q);
        Ok(q)
    }

    /// Immerkaer's noise estimate of a frame's luma at the frame's own resolution, before
    /// any reduction (see [`ImageQuality::frame_noise`]), on [`FRAME_NOISE_TRIPLES`] row
    /// triples spread down the frame. `stride`: bytes from one row to the next (`None`:
    /// packed). Allocation-free once the buffer has grown to the frame's width.
    pub fn frame_noise(
        &mut self,
        frame: &[u8],
        width: usize,
        height: usize,
        stride: Option<usize>,
        format: PixelFormat,
    ) -> Result<f32> {
        Ok(self
            .frame_measures(frame, width, height, stride, format)?
            .noise)
    }

    /// The frame's own noise, blocking on the 8-pixel grid and duplicated neighbours, read
    /// off the same row triples as [`QualityMeter::frame_noise`] in one pass: what a
    /// reduction to the model's detail averages away.
    pub fn frame_measures(
        &mut self,
        frame: &[u8],
        width: usize,
        height: usize,
        stride: Option<usize>,
        format: PixelFormat,
    ) -> Result<FrameMeasures> {
        let row_bytes = format.row_bytes(width);
        let stride = stride.unwrap_or(row_bytes);
        if width < 3
            || height < 3
            || stride < row_bytes
            || frame.len() < stride * (height - 1) + row_bytes
        {
            return Err(Error::InvalidParameter {
                what: "frame",
                reason: format!(
                    "{} bytes are not a {width}x{height} {format:?} frame with stride {stride}",
                    frame.len()
                ),
            });
        }
        self.rows.clear();
        self.rows.resize(3 * width, 0.0);
        self.equal_columns.clear();
        self.equal_columns.resize(width - 1, 0);
        let triples = FRAME_NOISE_TRIPLES.min(height - 2);
        let mut noise = 0f32;
        // luma steps across the 8-pixel grid's column edges (x = 7 | 8, ...) and elsewhere
        let (mut on_grid, mut off_grid) = (0f32, 0f32);
        let mut equal_row_pairs = 0usize;
        for t in 0..triples {
            // the middle rows, 1..=height - 2, evenly spaced
            let middle = 1 + t * (height - 2) / triples;
            for (r, out) in self.rows.chunks_exact_mut(width).enumerate() {
                let y = middle + r - 1;
                frame_luma(&frame[y * stride..][..row_bytes], format, out);
            }
            noise += laplacian_and_noise(&self.rows, width, 3).1;
            for row in self.rows.chunks_exact(width) {
                // every step in independent lanes, then the grid's own taken out
                let (left, right) = (&row[..width - 1], &row[1..]);
                let mut lanes: Lanes = [0.0; LANES];
                let pairs = left.chunks_exact(LANES).zip(right.chunks_exact(LANES));
                for (a, b) in pairs {
                    for k in 0..LANES {
                        lanes[k] += (b[k] - a[k]).abs();
                    }
                }
                let done = (width - 1) / LANES * LANES;
                let tail: f32 = (done..width - 1).map(|x| (row[x + 1] - row[x]).abs()).sum();
                let on: f32 = (7..width - 1)
                    .step_by(8)
                    .map(|x| (row[x + 1] - row[x]).abs())
                    .sum();
                on_grid += on;
                off_grid += total(lanes) + tail - on;
                for ((n, a), b) in self.equal_columns.iter_mut().zip(left).zip(right) {
                    *n += u16::from(repeated(*a, *b));
                }
            }
            let (top, rest) = self.rows.split_at(width);
            let (mid, bottom) = rest.split_at(width);
            for (a, b) in [(top, mid), (mid, bottom)] {
                let equal = a.iter().zip(b).filter(|(p, q)| repeated(**p, **q)).count();
                equal_row_pairs += usize::from(2 * equal > width);
            }
        }
        let rows = 3 * triples;
        let equal_columns = self
            .equal_columns
            .iter()
            .filter(|&&n| 2 * n as usize > rows)
            .count();
        let edges = (width - 1) / 8;
        let blockiness = if edges == 0 {
            1.0
        } else {
            let on = on_grid / (edges * rows) as f32;
            let off = off_grid / ((width - 1 - edges) * rows) as f32;
            if off > 0.0 {
                on / off
            } else if on > 0.0 {
                f32::MAX
            } else {
                1.0
            }
        };
        Ok(FrameMeasures {
            noise: noise / triples as f32,
            blockiness,
            duplicates: 0.5
                * (equal_columns as f32 / (width - 1) as f32
                    + equal_row_pairs as f32 / (2 * triples) as f32),
        })
    }

    /// Adds the frame's own noise, blocks, duplicates and size to `quality` when `spec`
    /// reduces such a frame (see [`reduces_frame`]); a frame that reaches the model at its
    /// own size is left as it is. The one place the edge and the guards' calibration data
    /// take this step.
    #[allow(clippy::too_many_arguments)]
    pub fn add_frame_noise(
        &mut self,
        quality: &mut ImageQuality,
        spec: &PreprocessSpec,
        frame: &[u8],
        width: usize,
        height: usize,
        stride: Option<usize>,
        format: PixelFormat,
    ) -> Result<()> {
        if reduces_frame(spec, width, height) {
            let m = self.frame_measures(frame, width, height, stride, format)?;
            quality.frame_noise = Some(m.noise);
            quality.frame_blockiness = Some(m.blockiness);
            quality.frame_duplicates = Some(m.duplicates);
            quality.frame_size = Some([width as u32, height as u32]);
        }
        Ok(())
    }
}

/// Two neighbours with the same luma, neither clipped: crushed blacks and blown highlights
/// are equal in any picture, and are exposure's business.
fn repeated(a: f32, b: f32) -> bool {
    a == b && a > 0.02 && a < 0.98
}

/// One channel's share of BT.601 luma in 0-1 for each byte value: a frame's RGB luma is
/// three loads and two adds a pixel, where converting each channel to a float, weighting
/// and scaling it cost several times that on every row the frame measures read.
const fn luma_table(weight: f32) -> [f32; 256] {
    let mut table = [0f32; 256];
    let mut v = 0;
    while v < 256 {
        table[v] = weight * v as f32 / 255.0;
        v += 1;
    }
    table
}

static LUMA_R: [f32; 256] = luma_table(0.299);
static LUMA_G: [f32; 256] = luma_table(0.587);
static LUMA_B: [f32; 256] = luma_table(0.114);

/// Limited-range (BT.601) luma in 0-1 for each Y byte of a YUYV frame, clamped as the
/// preprocessing clamps the RGB it makes: noise past black and white counts no more than
/// in an RGB frame.
static LUMA_Y: [f32; 256] = {
    let mut table = [0f32; 256];
    let mut v = 0;
    while v < 256 {
        let l = 1.164_383 * (v as f32 - 16.0) / 255.0;
        table[v] = if l < 0.0 {
            0.0
        } else if l > 1.0 {
            1.0
        } else {
            l
        };
        v += 1;
    }
    table
};

/// Luma in 0-1 of one row of a frame, into `out` (its width).
fn frame_luma(row: &[u8], format: PixelFormat, out: &mut [f32]) {
    let rgb = |r: u8, g: u8, b: u8| LUMA_R[r as usize] + LUMA_G[g as usize] + LUMA_B[b as usize];
    match format {
        PixelFormat::Rgb8 => {
            for (l, p) in out.iter_mut().zip(row.chunks_exact(3)) {
                *l = rgb(p[0], p[1], p[2]);
            }
        }
        PixelFormat::Bgr8 => {
            for (l, p) in out.iter_mut().zip(row.chunks_exact(3)) {
                *l = rgb(p[2], p[1], p[0]);
            }
        }
        PixelFormat::Gray8 => {
            for (l, &v) in out.iter_mut().zip(row) {
                *l = v as f32 / 255.0;
            }
        }
        PixelFormat::Yuyv => {
            // Y0 U Y1 V: BT.601 limited-range luma, as the preprocessing reads it
            for (l, yuyv) in out.chunks_exact_mut(2).zip(row.chunks_exact(4)) {
                l[0] = LUMA_Y[yuyv[0] as usize];
                l[1] = LUMA_Y[yuyv[2] as usize];
            }
            if out.len() % 2 == 1 {
                // an odd width ends with a Y0 U pair
                let x = out.len() - 1;
                out[x] = LUMA_Y[row[x / 2 * 4] as usize];
            }
        }
    }
}

/// Whether frames of `width x height` reach the model reduced (to the spec's detail size,
/// or its input size), so that per-pixel damage is averaged away before the tensor's
/// measures see it and [`QualityMeter::frame_noise`] has something to add.
pub fn reduces_frame(spec: &PreprocessSpec, width: usize, height: usize) -> bool {
    let (w, h) = match spec.detail_size {
        Some(d) => (d.min(spec.width), d.min(spec.height)),
        None => (spec.width, spec.height),
    };
    width > w as usize || height > h as usize
}

/// The colour measures of an encoder input tensor written with `spec` (its normalisation
/// undone); the tensor's length was checked by [`luma_of_tensor`].
fn colour_of_tensor(tensor: &[f32], spec: &PreprocessSpec) -> ColourSums {
    let plane = spec.width as usize * spec.height as usize;
    let (s, m) = (spec.std, spec.mean);
    // saturation and value do not depend on the channels' order
    let pixel = |a: f32, b: f32, c: f32| [a * s[0] + m[0], b * s[1] + m[1], c * s[2] + m[2]];
    let mut sums = ColourSums::new();
    match spec.layout {
        Layout::Nchw => {
            let (c0, rest) = tensor.split_at(plane);
            let (c1, c2) = rest.split_at(plane);
            let c2 = &c2[..plane];
            let lanes = c0
                .chunks_exact(LANES)
                .zip(c1.chunks_exact(LANES))
                .zip(c2.chunks_exact(LANES));
            for ((a, b), c) in lanes {
                for k in 0..LANES {
                    sums.add(k, pixel(a[k], b[k], c[k]));
                }
            }
            for i in plane / LANES * LANES..plane {
                sums.add(0, pixel(c0[i], c1[i], c2[i]));
            }
        }
        Layout::Nhwc => {
            let pixels = tensor[..3 * plane].chunks_exact(3 * LANES);
            let tail = pixels.remainder();
            for p in pixels {
                for k in 0..LANES {
                    sums.add(k, pixel(p[3 * k], p[3 * k + 1], p[3 * k + 2]));
                }
            }
            for p in tail.chunks_exact(3) {
                sums.add(0, pixel(p[0], p[1], p[2]));
            }
        }
    }
    sums
}

/// Luma of packed RGB bytes, into `out`.
pub fn luma_of_rgb8(rgb: &[u8], out: &mut Vec<f32>) {
    out.clear();
    out.extend(
        rgb.chunks_exact(3)
            .map(|p| (0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32) / 255.0),
    );
}

/// Luma of an encoder input tensor written with `spec` (its normalisation undone), into
/// `out`; the plane is `spec.width x spec.height`.
pub fn luma_of_tensor(tensor: &[f32], spec: &PreprocessSpec, out: &mut Vec<f32>) -> Result<()> {
    let (w, h) = (spec.width as usize, spec.height as usize);
    if tensor.len() != 3 * w * h {
        return Err(Error::InvalidParameter {
            what: "tensor",
            reason: format!("{} values are not 3x{w}x{h}", tensor.len()),
        });
    }
    // tensor channel c holds colour order[c]
    let order = match spec.channel_order {
        ChannelOrder::Rgb => [0, 1, 2],
        ChannelOrder::Bgr => [2, 1, 0],
    };
    let weight = |colour: usize| [0.299f32, 0.587, 0.114][colour];
    let plane = w * h;
    out.clear();
    out.resize(plane, 0.0);
    // the channels added in order 0, 1, 2 in both layouts (the same rounding)
    match spec.layout {
        Layout::Nchw => {
            for c in 0..3 {
                let (m, s, k) = (spec.mean[c], spec.std[c], weight(order[c]));
                for (l, &v) in out.iter_mut().zip(&tensor[c * plane..(c + 1) * plane]) {
                    *l += k * (v * s + m);
                }
            }
        }
        Layout::Nhwc => {
            let (m, s) = (spec.mean, spec.std);
            let k = [0, 1, 2].map(|c| weight(order[c]));
            for (l, p) in out.iter_mut().zip(tensor.chunks_exact(3)) {
                *l = 0.0 + k[0] * (p[0] * s[0] + m[0]);
                *l += k[1] * (p[1] * s[1] + m[1]);
                *l += k[2] * (p[2] * s[2] + m[2]);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::{PixelFormat, Preprocessor};
    use crate::quality::tests::scene;

    /// The measures as first written, a plain loop and one running sum per measure: the
    /// lane-wise version must agree with them up to rounding.
    mod reference {
        use super::super::{
            BLACK_LEVEL_QUANTILE, DARK_FLAT_GRID, DARK_FLAT_MEAN, DARK_FLAT_RANGE, SATURATED,
            SATURATED_MIN_VALUE,
        };

        /// The first version's black-level histogram: one, filled in order.
        fn low_quantile(values: &[f32], p: f32) -> f32 {
            let mut histogram = [0u32; 256];
            for &v in values {
                histogram[((v * 256.0) as usize).min(255)] += 1;
            }
            let want = (p * values.len() as f32).ceil().max(1.0) as u32;
            let mut seen = 0;
            for (bin, &count) in histogram.iter().enumerate() {
                seen += count;
                if seen >= want {
                    return bin as f32 / 256.0;
                }
            }
            1.0
        }
        use crate::error::{Error, Result};
        use crate::preprocess::{Layout, PreprocessSpec};
        use crate::quality::ImageQuality;

        /// The first version's measures of a luma plane, one sum chain each (`width x height`, values in 0-1).
        pub(super) fn measure_luma(
            luma: &[f32],
            width: usize,
            height: usize,
        ) -> Result<ImageQuality> {
            if width < 3 || height < 3 || luma.len() != width * height {
                return Err(Error::InvalidParameter {
                    what: "image",
                    reason: format!("{} values are not a {width}x{height} plane", luma.len()),
                });
            }
            let n = luma.len() as f32;
            let mean = luma.iter().sum::<f32>() / n;
            let var = luma.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
            let (mut lap_sum, mut lap_sq, mut lap_n) = (0f32, 0f32, 0f32);
            for y in 1..height - 1 {
                for x in 1..width - 1 {
                    let i = y * width + x;
                    let l = luma[i - 1] + luma[i + 1] + luma[i - width] + luma[i + width]
                        - 4.0 * luma[i];
                    lap_sum += l;
                    lap_sq += l * l;
                    lap_n += 1.0;
                }
            }
            let lap_mean = lap_sum / lap_n;
            let dark = luma.iter().filter(|&&v| v <= 0.02).count() as f32 / n;
            let black_level = low_quantile(luma, BLACK_LEVEL_QUANTILE);
            let bright = luma.iter().filter(|&&v| v >= 0.98).count() as f32 / n;
            let (mut flat, mut cells) = (0usize, 0usize);
            for cy in (0..height.saturating_sub(3)).step_by(4) {
                for cx in (0..width.saturating_sub(3)).step_by(4) {
                    let (mut lo, mut hi) = (f32::MAX, f32::MIN);
                    for y in cy..cy + 4 {
                        for &v in &luma[y * width + cx..y * width + cx + 4] {
                            lo = lo.min(v);
                            hi = hi.max(v);
                        }
                    }
                    cells += 1;
                    // clipped cells are exposure's business, not the lens's
                    flat += (hi - lo < 0.02 && lo > 0.02 && hi < 0.98) as usize;
                }
            }
            Ok(ImageQuality {
                blockiness: blockiness(luma, width, height),
                noise: noise_sigma(luma, width, height),
                detail: detail_ratio(luma, width, height),
                saturation: 0.0,
                value_min: 0.0,
                saturated_share: 0.0,
                radial_detail: radial_detail(luma, width, height),
                frame_noise: None,
                frame_blockiness: None,
                frame_duplicates: None,
                frame_size: None,
                dark_flat_share: dark_flat_share(luma, width, height),
                black_level,
                mean_luma: mean,
                contrast: var.max(0.0).sqrt(),
                sharpness: (lap_sq / lap_n - lap_mean * lap_mean).max(0.0),
                clipped_dark: dark,
                clipped_bright: bright,
                flat_share: if cells > 0 {
                    flat as f32 / cells as f32
                } else {
                    0.0
                },
            })
        }

        /// Share of the cells of a [`DARK_FLAT_GRID`]-square grid that are flat and dark (see
        /// [`ImageQuality::dark_flat_share`]); pixels past the last whole cell are left out.
        fn dark_flat_share(luma: &[f32], width: usize, height: usize) -> f32 {
            let (cw, ch) = (width / DARK_FLAT_GRID, height / DARK_FLAT_GRID);
            if cw == 0 || ch == 0 {
                return 0.0;
            }
            let mut dark_flat = 0usize;
            for gy in 0..DARK_FLAT_GRID {
                for gx in 0..DARK_FLAT_GRID {
                    let (mut lo, mut hi, mut sum) = (f32::MAX, f32::MIN, 0f32);
                    for y in gy * ch..(gy + 1) * ch {
                        for &v in &luma[y * width + gx * cw..][..cw] {
                            lo = lo.min(v);
                            hi = hi.max(v);
                            sum += v;
                        }
                    }
                    let mean = sum / (cw * ch) as f32;
                    dark_flat +=
                        (hi - lo < DARK_FLAT_RANGE && mean < DARK_FLAT_MEAN && lo > 0.02) as usize;
                }
            }
            dark_flat as f32 / (DARK_FLAT_GRID * DARK_FLAT_GRID) as f32
        }

        /// HSV saturation and value of an RGB pixel in 0-1 (`(max - min) / max`, 0 for black), as
        /// the corruption benchmark's saturation changes them.
        fn saturation_value_of(pixel: [f32; 3]) -> (f32, f32) {
            let max = pixel[0].max(pixel[1]).max(pixel[2]);
            let min = pixel[0].min(pixel[1]).min(pixel[2]);
            let s = if max > 1e-6 {
                ((max - min) / max).clamp(0.0, 1.0)
            } else {
                0.0
            };
            (s, max)
        }

        /// The colour measures, summed over pixels in one pass.
        #[derive(Debug, Clone, Copy)]
        pub(super) struct ColourSums {
            saturation: f32,
            value_min: f32,
            saturated: usize,
            pixels: usize,
        }

        impl ColourSums {
            fn new() -> Self {
                Self {
                    saturation: 0.0,
                    value_min: f32::INFINITY,
                    saturated: 0,
                    pixels: 0,
                }
            }

            fn add(mut self, pixel: [f32; 3]) -> Self {
                let (s, v) = saturation_value_of(pixel);
                self.saturation += s;
                // a NaN, once seen, stays, so that a frame with NaN fails the bound
                if v.is_nan() || v < self.value_min {
                    self.value_min = v;
                }
                self.saturated += (s >= SATURATED && v >= SATURATED_MIN_VALUE) as usize;
                self.pixels += 1;
                self
            }

            /// Writes the means into `q`.
            pub(super) fn finish(self, q: &mut ImageQuality) {
                let n = self.pixels.max(1) as f32;
                q.saturation = self.saturation / n;
                q.value_min = if self.pixels == 0 {
                    0.0
                } else {
                    self.value_min
                };
                q.saturated_share = self.saturated as f32 / n;
            }
        }

        /// Radial over tangential gradient energy, by the definition: each interior pixel's
        /// central-difference gradient projected on its offset from the centre and on the
        /// offset's normal, squared, one sum each.
        fn radial_detail(luma: &[f32], width: usize, height: usize) -> f32 {
            let (cx, cy) = ((width - 1) as f64 / 2.0, (height - 1) as f64 / 2.0);
            let (mut along, mut across) = (0f64, 0f64);
            for y in 1..height - 1 {
                for x in 1..width - 1 {
                    let (dx, dy) = (x as f64 - cx, y as f64 - cy);
                    let at = |x: usize, y: usize| luma[y * width + x] as f64;
                    let (gx, gy) = (at(x + 1, y) - at(x - 1, y), at(x, y + 1) - at(x, y - 1));
                    along += (gx * dx + gy * dy).powi(2);
                    across += (gy * dx - gx * dy).powi(2);
                }
            }
            if across > 0.0 {
                (along / across) as f32
            } else if along > 0.0 {
                f32::MAX
            } else {
                1.0
            }
        }

        /// Immerkaer's fast noise estimate: `sqrt(pi / 2) / (6 (W - 2) (H - 2))` times the sum of
        /// absolute responses to `[1 -2 1; -2 4 -2; 1 -2 1]` over the interior.
        fn noise_sigma(luma: &[f32], width: usize, height: usize) -> f32 {
            let mut sum = 0f32;
            for y in 1..height - 1 {
                let (a, b, c) = (
                    &luma[(y - 1) * width..y * width],
                    &luma[y * width..(y + 1) * width],
                    &luma[(y + 1) * width..(y + 2) * width],
                );
                for x in 1..width - 1 {
                    let r = a[x - 1] - 2.0 * a[x] + a[x + 1]
                        - 2.0 * (b[x - 1] - 2.0 * b[x] + b[x + 1])
                        + c[x - 1]
                        - 2.0 * c[x]
                        + c[x + 1];
                    sum += r.abs();
                }
            }
            let n = ((width - 2) * (height - 2)) as f32;
            sum * (std::f32::consts::FRAC_PI_2).sqrt() / (6.0 * n)
        }

        /// Variance of the 4-neighbour Laplacian of the plane averaged over `f x f` blocks (the
        /// blocks computed on the fly: no buffer), or `None` when the reduced plane has no interior.
        fn binned_laplacian_variance(
            luma: &[f32],
            width: usize,
            height: usize,
            f: usize,
        ) -> Option<f32> {
            let (bw, bh) = (width / f, height / f);
            if bw < 3 || bh < 3 {
                return None;
            }
            let inv = 1.0 / (f * f) as f32;
            let block = |bx: usize, by: usize| -> f32 {
                let mut s = 0f32;
                for y in by * f..(by + 1) * f {
                    s += luma[y * width + bx * f..y * width + (bx + 1) * f]
                        .iter()
                        .sum::<f32>();
                }
                s * inv
            };
            let (mut sum, mut sq, mut n) = (0f32, 0f32, 0f32);
            for by in 1..bh - 1 {
                for bx in 1..bw - 1 {
                    let l = block(bx - 1, by)
                        + block(bx + 1, by)
                        + block(bx, by - 1)
                        + block(bx, by + 1)
                        - 4.0 * block(bx, by);
                    sum += l;
                    sq += l * l;
                    n += 1.0;
                }
            }
            let mean = sum / n;
            Some((sq / n - mean * mean).max(0.0))
        }

        /// Laplacian variance at half resolution over that at quarter resolution (see
        /// [`ImageQuality::detail`]); a flat plane gives 1.
        fn detail_ratio(luma: &[f32], width: usize, height: usize) -> f32 {
            const FLOOR: f32 = 1e-9;
            match (
                binned_laplacian_variance(luma, width, height, 2),
                binned_laplacian_variance(luma, width, height, 4),
            ) {
                (Some(fine), Some(coarse)) => (fine + FLOOR) / (coarse + FLOOR),
                _ => 0.0,
            }
        }

        /// The largest ratio, over grid sizes 4, 8 and 16, of the mean absolute luma step across
        /// grid edges to the mean step inside the cells (horizontal and vertical steps together).
        fn blockiness(luma: &[f32], width: usize, height: usize) -> f32 {
            // steps summed by position in a 16-periodic grid: edge sums of the smaller grids are
            // subsets of these, so one pass over the plane serves all three
            let (mut by_phase, mut count) = ([0f32; 16], [0u32; 16]);
            for y in 0..height {
                let row = &luma[y * width..(y + 1) * width];
                for x in 1..width {
                    by_phase[x % 16] += (row[x] - row[x - 1]).abs();
                    count[x % 16] += 1;
                }
                if y > 0 {
                    let above = &luma[(y - 1) * width..y * width];
                    let (sum, n) = (&mut by_phase[y % 16], &mut count[y % 16]);
                    for x in 0..width {
                        *sum += (row[x] - above[x]).abs();
                        *n += 1;
                    }
                }
            }
            let mut worst = 0f32;
            for grid in [4usize, 8, 16] {
                let (mut edge, mut edge_n, mut inner, mut inner_n) = (0f32, 0u32, 0f32, 0u32);
                for phase in 0..16 {
                    if phase % grid == 0 {
                        edge += by_phase[phase];
                        edge_n += count[phase];
                    } else {
                        inner += by_phase[phase];
                        inner_n += count[phase];
                    }
                }
                if edge_n == 0 || inner_n == 0 {
                    continue;
                }
                let inner_mean = inner / inner_n as f32;
                let ratio = (edge / edge_n as f32) / inner_mean.max(1e-4);
                worst = worst.max(ratio);
            }
            worst
        }

        /// The colour measures of an encoder input tensor written with `spec` (its normalisation
        /// undone); the tensor's length was checked by [`luma_of_tensor`].
        pub(super) fn colour_of_tensor(tensor: &[f32], spec: &PreprocessSpec) -> ColourSums {
            let plane = spec.width as usize * spec.height as usize;
            let (s, m) = (spec.std, spec.mean);
            // saturation and value do not depend on the channels' order
            let pixel =
                |a: f32, b: f32, c: f32| [a * s[0] + m[0], b * s[1] + m[1], c * s[2] + m[2]];
            match spec.layout {
                Layout::Nchw => {
                    let (c0, rest) = tensor.split_at(plane);
                    let (c1, c2) = rest.split_at(plane);
                    c0.iter()
                        .zip(c1)
                        .zip(&c2[..plane])
                        .fold(ColourSums::new(), |sums, ((&a, &b), &c)| {
                            sums.add(pixel(a, b, c))
                        })
                }
                Layout::Nhwc => tensor[..3 * plane]
                    .chunks_exact(3)
                    .fold(ColourSums::new(), |sums, p| {
                        sums.add(pixel(p[0], p[1], p[2]))
                    }),
            }
        }
    }

    fn close(a: f32, b: f32, what: &str) {
        let tolerance = 2e-4 * a.abs().max(b.abs()) + 1e-6;
        assert!((a - b).abs() <= tolerance, "{what}: {a} against {b}");
    }

    #[test]
    fn the_frame_noise_is_read_at_the_frames_resolution() {
        use rand::SeedableRng;
        use rand_distr::{Distribution, Normal};
        let (w, h) = (320, 240);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let mut meter = QualityMeter::default();
        for sigma in [0.02f32, 0.05] {
            let normal = Normal::new(0.0, sigma).unwrap();
            // a ramp and a straight edge, which the mask cancels, plus noise
            let luma: Vec<f32> = (0..w * h)
                .map(|i| {
                    let (x, y) = (i % w, i / w);
                    0.2 + 0.4 * x as f32 / w as f32
                        + 0.2 * (y > 100) as u8 as f32
                        + normal.sample(&mut rng)
                })
                .collect();
            let byte = |l: f32| (l * 255.0).round().clamp(0.0, 255.0) as u8;
            let grey: Vec<u8> = luma.iter().map(|&l| byte(l)).collect();
            let rgb: Vec<u8> = grey.iter().flat_map(|&v| [v, v, v]).collect();
            // YUYV: limited-range luma, neutral chroma
            let yuyv: Vec<u8> = luma
                .chunks_exact(2)
                .flat_map(|p| {
                    let y = |l: f32| (16.0 + l * 219.0).round().clamp(0.0, 255.0) as u8;
                    [y(p[0]), 128, y(p[1]), 128]
                })
                .collect();
            // rows padded to a stride, as a camera's buffer may be
            let stride = 3 * w + 64;
            let padded: Vec<u8> = rgb
                .chunks_exact(3 * w)
                .flat_map(|row| row.iter().copied().chain([7u8; 64]))
                .collect();
            for (frame, format, stride) in [
                (&grey, PixelFormat::Gray8, None),
                (&rgb, PixelFormat::Rgb8, None),
                (&rgb, PixelFormat::Bgr8, None),
                (&yuyv, PixelFormat::Yuyv, None),
                (&padded, PixelFormat::Rgb8, Some(stride)),
            ] {
                let n = meter.frame_noise(frame, w, h, stride, format).unwrap();
                assert!(
                    (n - sigma).abs() < 0.1 * sigma,
                    "{format:?}: {n} for {sigma}"
                );
            }
        }
        // the buffer is reused, and a frame that is no frame is an error, not a panic
        let ptr = meter.rows.as_ptr();
        let frame = vec![100u8; 3 * w * h];
        assert!(
            meter
                .frame_noise(&frame, w, h, None, PixelFormat::Rgb8)
                .unwrap()
                < 1e-6
        );
        assert_eq!(meter.rows.as_ptr(), ptr);
        assert!(meter
            .frame_noise(&frame[1..], w, h, None, PixelFormat::Rgb8)
            .is_err());
        assert!(meter
            .frame_noise(&frame, 2, 2, None, PixelFormat::Rgb8)
            .is_err());
        assert!(meter
            .frame_noise(&frame, w, h, Some(3), PixelFormat::Rgb8)
            .is_err());
        // a frame is reduced on its way to the shipped default's 32x32 detail, a CIFAR
        // image is not
        let mut spec = PreprocessSpec::imagenet(64);
        spec.detail_size = Some(32);
        assert!(reduces_frame(&spec, 320, 240));
        assert!(!reduces_frame(&spec, 32, 32));
        assert!(!reduces_frame(&PreprocessSpec::cifar(32), 32, 32));
        assert!(reduces_frame(&PreprocessSpec::cifar(32), 33, 32));
    }

    #[test]
    fn frame_luma_tables_agree_with_the_formulas() {
        // the first version's per-pixel arithmetic
        let rgb =
            |r: u8, g: u8, b: u8| (0.299 * r as f32 + 0.587 * g as f32 + 0.114 * b as f32) / 255.0;
        let y = |v: u8| (1.164_383 * (v as f32 - 16.0) / 255.0).clamp(0.0, 1.0);
        for width in [1usize, 2, 7, 8, 255] {
            let bytes: Vec<u8> = (0..4 * width).map(|i| (i * 37 % 256) as u8).collect();
            let mut out = vec![0f32; width];
            frame_luma(&bytes, PixelFormat::Rgb8, &mut out);
            for (x, l) in out.iter().enumerate() {
                let p = &bytes[3 * x..];
                assert!((l - rgb(p[0], p[1], p[2])).abs() < 1e-6, "{width} {x}");
            }
            frame_luma(&bytes, PixelFormat::Bgr8, &mut out);
            for (x, l) in out.iter().enumerate() {
                let p = &bytes[3 * x..];
                assert!((l - rgb(p[2], p[1], p[0])).abs() < 1e-6, "{width} {x}");
            }
            // the same values exactly: the tables hold the same expression
            frame_luma(&bytes, PixelFormat::Yuyv, &mut out);
            for (x, l) in out.iter().enumerate() {
                assert_eq!(*l, y(bytes[x / 2 * 4 + x % 2 * 2]), "{width} {x}");
            }
            frame_luma(&bytes, PixelFormat::Gray8, &mut out);
            for (x, l) in out.iter().enumerate() {
                assert_eq!(*l, bytes[x] as f32 / 255.0, "{width} {x}");
            }
        }
    }

    #[test]
    fn lanes_agree_with_the_plain_loops() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
        for (w, h) in [
            (3, 3),
            (7, 5),
            (8, 8),
            (17, 9),
            (64, 64),
            (65, 33),
            (100, 37),
            (224, 224),
        ] {
            // smooth shading, texture, and a dark flat stripe
            let luma: Vec<f32> = (0..w * h)
                .map(|i| {
                    let (x, y) = ((i % w) as f32, (i / w) as f32);
                    let v = 0.5
                        + 0.3 * (x * 0.3).sin() * (y * 0.2).cos()
                        + rng.random_range(-0.05..0.05);
                    if x < w as f32 / 5.0 {
                        0.1
                    } else {
                        v.clamp(0.0, 1.0)
                    }
                })
                .collect();
            let (new, old) = (
                measure_luma(&luma, w, h).unwrap(),
                reference::measure_luma(&luma, w, h).unwrap(),
            );
            let at = format!("{w}x{h}");
            close(new.mean_luma, old.mean_luma, &format!("{at} mean"));
            close(new.contrast, old.contrast, &format!("{at} contrast"));
            close(new.sharpness, old.sharpness, &format!("{at} sharpness"));
            close(new.noise, old.noise, &format!("{at} noise"));
            close(new.detail, old.detail, &format!("{at} detail"));
            close(new.blockiness, old.blockiness, &format!("{at} blockiness"));
            close(
                new.radial_detail,
                old.radial_detail,
                &format!("{at} radial detail"),
            );
            assert_eq!(
                (
                    new.clipped_dark,
                    new.clipped_bright,
                    new.flat_share,
                    new.dark_flat_share,
                    new.black_level
                ),
                (
                    old.clipped_dark,
                    old.clipped_bright,
                    old.flat_share,
                    old.dark_flat_share,
                    old.black_level
                ),
                "{at}"
            );
            // the colour pass, in both layouts
            let rgb: Vec<u8> = (0..w * h * 3)
                .map(|_| rng.random_range(0..=255u8))
                .collect();
            for layout in [Layout::Nchw, Layout::Nhwc] {
                let mut spec = PreprocessSpec::imagenet(w as u32);
                spec.height = h as u32;
                spec.layout = layout;
                let tensor: Vec<f32> = match layout {
                    Layout::Nchw => (0..3)
                        .flat_map(|c| rgb.chunks_exact(3).map(move |p| p[c]))
                        .enumerate()
                        .map(|(i, v)| {
                            (v as f32 / 255.0 - spec.mean[i / (w * h)]) / spec.std[i / (w * h)]
                        })
                        .collect(),
                    Layout::Nhwc => rgb
                        .iter()
                        .enumerate()
                        .map(|(i, &v)| (v as f32 / 255.0 - spec.mean[i % 3]) / spec.std[i % 3])
                        .collect(),
                };
                let (mut a, mut b) = (ImageQuality::default(), ImageQuality::default());
                colour_of_tensor(&tensor, &spec).finish(w * h, &mut a);
                reference::colour_of_tensor(&tensor, &spec).finish(&mut b);
                close(a.saturation, b.saturation, &format!("{at} saturation"));
                close(a.value_min, b.value_min, &format!("{at} darkest value"));
                close(
                    a.saturated_share,
                    b.saturated_share,
                    &format!("{at} saturated"),
                );
                let mut meter = QualityMeter::new(&spec);
                let whole = meter.measure(&tensor, &spec).unwrap();
                assert_eq!(
                    (whole.saturation, whole.value_min),
                    (a.saturation, a.value_min)
                );
            }
        }
        // NaN in the tensor: the darkest value is NaN, not the smallest number
        let spec = PreprocessSpec::imagenet(8);
        let mut tensor = vec![0.0f32; 3 * 64];
        tensor[70] = f32::NAN;
        let q = QualityMeter::new(&spec).measure(&tensor, &spec).unwrap();
        assert!(q.value_min.is_nan(), "{q:?}");
    }

    #[test]
    fn the_noise_estimate_reads_the_noise_of_a_shaded_plane() {
        use rand::SeedableRng;
        use rand_distr::{Distribution, Normal};
        let (w, h) = (64, 48);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for sigma in [0.01f32, 0.05] {
            let normal = Normal::new(0.0, sigma).unwrap();
            // a ramp and a straight edge, which the mask cancels
            let luma: Vec<f32> = (0..w * h)
                .map(|i| {
                    let (x, y) = (i % w, i / w);
                    0.2 + 0.005 * x as f32 + 0.3 * (y > 20) as u8 as f32 + normal.sample(&mut rng)
                })
                .collect();
            let m = measure_luma(&luma, w, h).unwrap();
            assert!(
                (m.noise - sigma).abs() < 0.1 * sigma,
                "{} for {sigma}",
                m.noise
            );
        }
        // too small for the coarse scale: no detail figure, and no panic
        assert_eq!(measure_luma(&[0.5; 100], 10, 10).unwrap().detail, 0.0);
    }

    #[test]
    fn the_black_level_is_the_darkest_two_percent() {
        // a ramp 0..1: its 2nd percentile is 0.02, to the histogram's 1/256
        let ramp: Vec<f32> = (0..1000).map(|i| i as f32 / 999.0).collect();
        let b = low_quantile(&ramp, BLACK_LEVEL_QUANTILE);
        assert!((b - 0.02).abs() <= 2.0 / 256.0, "{b}");
        // NaN counts as black, out-of-range values are clamped, and nothing panics
        assert_eq!(low_quantile(&[f32::NAN; 10], 0.02), 0.0);
        assert_eq!(low_quantile(&[7.0; 10], 0.02), 255.0 / 256.0);
        assert_eq!(low_quantile(&[-1.0; 10], 0.02), 0.0);
        // a lifted floor lifts it
        let lifted: Vec<f32> = ramp.iter().map(|v| 0.3 + 0.7 * v).collect();
        assert!(low_quantile(&lifted, BLACK_LEVEL_QUANTILE) > 0.3);
    }

    #[test]
    fn blockiness_sees_a_block_grid_and_not_a_smooth_scene() {
        let (w, h) = (64, 64);
        let mut luma = Vec::new();
        luma_of_rgb8(&scene(w, h), &mut luma);
        let smooth = measure_luma(&luma, w, h).unwrap().blockiness;
        // the same scene averaged over 8x8 cells: steps only on the grid
        let mut blocks = luma.clone();
        for cy in (0..h).step_by(8) {
            for cx in (0..w).step_by(8) {
                let mean = (0..64)
                    .map(|i| luma[(cy + i / 8) * w + cx + i % 8])
                    .sum::<f32>()
                    / 64.0;
                for i in 0..64 {
                    blocks[(cy + i / 8) * w + cx + i % 8] = mean;
                }
            }
        }
        let blocky = measure_luma(&blocks, w, h).unwrap().blockiness;
        // the test scene has a hard 6-pixel checker, which meets a 4-pixel grid now and then
        assert!(smooth < 3.0 && blocky > 20.0 * smooth, "{smooth} {blocky}");
    }

    #[test]
    fn the_meter_reuses_its_buffer() {
        let spec = PreprocessSpec::cifar(32);
        let img = scene(32, 32);
        let mut pre = Preprocessor::new(&spec, 32, 32, PixelFormat::Rgb8).unwrap();
        let mut tensor = vec![0f32; pre.tensor_len()];
        pre.run(&img, None, &mut tensor).unwrap();
        let mut meter = QualityMeter::new(&spec);
        let first = meter.measure(&tensor, &spec).unwrap();
        let ptr = meter.luma.as_ptr();
        assert_eq!(meter.measure(&tensor, &spec).unwrap(), first);
        // the tensor's colours are the image's (its normalisation undone)
        let direct = measure_rgb8(&img, 32, 32).unwrap();
        assert!(
            (first.saturation - direct.saturation).abs() < 1e-3,
            "{first:?} {direct:?}"
        );
        assert!((first.black_level - direct.black_level).abs() <= 1.0 / 256.0);
        assert_eq!(meter.luma.as_ptr(), ptr);
    }

    #[test]
    fn the_tensor_gives_the_luma_of_the_image_it_was_made_from() {
        let (w, h) = (32, 32);
        let img = scene(w, h);
        let spec = PreprocessSpec::cifar(32);
        let mut pre = Preprocessor::new(&spec, w, h, PixelFormat::Rgb8).unwrap();
        let mut tensor = vec![0f32; pre.tensor_len()];
        pre.run(&img, None, &mut tensor).unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        luma_of_tensor(&tensor, &spec, &mut a).unwrap();
        luma_of_rgb8(&img, &mut b);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 2e-3, "{x} {y}");
        }
        assert!(measure_luma(&a[..10], 3, 3).is_err());
        assert!(luma_of_tensor(&tensor[1..], &spec, &mut a).is_err());
    }
}
