//! Image-quality measures of a camera frame, apart from the semantic score: a dark,
//! overexposed, blurred, noisy or blocked camera shows in them whatever the scene is.
//! They are computed on the encoder's input tensor, which the preprocessing has already
//! written, so they cost no extra pass over the frame (a few thousand values).
//!
//! [`QualityBounds`] are calibrated on in-distribution images as quantiles of each
//! measure and stored in the calibration artifact; a frame outside them is a
//! [`CameraFault`], which the edge's alarm turns into FAULT after k of n frames.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::preprocess::{ChannelOrder, Layout, PreprocessSpec};

/// What one frame looks like, as numbers a bound can be put on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageQuality {
    /// Mean luma (BT.601), 0-1: dark frames are low.
    pub mean_luma: f32,
    /// Standard deviation of luma, 0-0.5: fog, glare and low contrast are low.
    pub contrast: f32,
    /// Variance of the 4-neighbour Laplacian of luma: blur is low, noise is high.
    pub sharpness: f32,
    /// Share of pixels with luma at most 0.02 (crushed blacks).
    pub clipped_dark: f32,
    /// Share of pixels with luma at least 0.98 (blown highlights).
    pub clipped_bright: f32,
    /// Share of flat 4x4 cells (luma range under 0.02, not clipped): a blocked lens or a
    /// uniform patch covering part of the view.
    pub flat_share: f32,
    /// Blocking artefacts (heavy compression, pixelation): the mean luma step across the
    /// edges of a 4, 8 or 16 pixel grid over the mean step elsewhere, the largest of the
    /// three; about 1 for natural images. It sees blocks at the scale the model sees them.
    #[serde(default)]
    pub blockiness: f32,
    /// Estimated standard deviation of pixel noise in luma (Immerkaer 1996: the mean absolute
    /// response to a mask that cancels smooth shading and straight edges): sensor noise,
    /// grain and salt-and-pepper raise it, and scene texture much less than they do.
    #[serde(default)]
    pub noise: f32,
    /// Fine detail over coarse detail: the Laplacian variance of the plane reduced 2x over
    /// that of the plane reduced 4x. Blur of any kind (defocus, motion, zoom, water)
    /// removes the finer scale first, whatever the scene's contrast; 0 when the plane is
    /// too small for both scales.
    #[serde(default)]
    pub detail: f32,
    /// Mean HSV saturation, 0-1 (0 where a measure was made from luma alone): a colour
    /// pipeline gone wrong (saturation or gain boosted per channel) raises it.
    #[serde(default)]
    pub saturation: f32,
    /// The black level: the 2nd percentile of luma, 0-1, to 1/256. Glare, flare and an
    /// overexposed or brightened picture lift the darkest parts of the frame, which natural
    /// scenes keep dark (shadows) even when bright overall.
    #[serde(default)]
    pub black_level: f32,
}

/// The share of pixels the black level is read at.
const BLACK_LEVEL_QUANTILE: f32 = 0.02;

/// Measures a luma plane (`width x height`, values in 0-1).
pub fn measure_luma(luma: &[f32], width: usize, height: usize) -> Result<ImageQuality> {
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
            let l = luma[i - 1] + luma[i + 1] + luma[i - width] + luma[i + width] - 4.0 * luma[i];
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

/// The `p` quantile of values in 0-1, to 1/256, from a histogram on the stack (no
/// allocation, one pass); NaN values count as 0 and values out of range are clamped.
fn low_quantile(values: &[f32], p: f32) -> f32 {
    let mut histogram = [0u32; 256];
    for &v in values {
        // `as` saturates, and maps NaN to 0
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

/// Mean HSV saturation of packed RGB values in 0-1 (`(max - min) / max`, 0 for black), as
/// the corruption benchmark's saturation changes it.
fn saturation_of(pixel: [f32; 3]) -> f32 {
    let max = pixel[0].max(pixel[1]).max(pixel[2]);
    let min = pixel[0].min(pixel[1]).min(pixel[2]);
    if max > 1e-6 {
        ((max - min) / max).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// Measures packed RGB bytes (`width x height`): the luma measures and the colour ones.
pub fn measure_rgb8(rgb: &[u8], width: usize, height: usize) -> Result<ImageQuality> {
    let mut luma = Vec::new();
    luma_of_rgb8(rgb, &mut luma);
    let mut q = measure_luma(&luma, width, height)?;
    let n = (rgb.len() / 3).max(1) as f32;
    q.saturation = rgb
        .chunks_exact(3)
        .map(|p| saturation_of([p[0] as f32, p[1] as f32, p[2] as f32]))
        .sum::<f32>()
        / n;
    Ok(q)
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
            let r = a[x - 1] - 2.0 * a[x] + a[x + 1] - 2.0 * (b[x - 1] - 2.0 * b[x] + b[x + 1])
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
fn binned_laplacian_variance(luma: &[f32], width: usize, height: usize, f: usize) -> Option<f32> {
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
            let l = block(bx - 1, by) + block(bx + 1, by) + block(bx, by - 1) + block(bx, by + 1)
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

/// Why a frame's picture cannot be trusted, from its [`ImageQuality`] against calibrated
/// [`QualityBounds`]. One cause per frame, the most specific first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CameraFault {
    /// Too dark (night, tunnel, lens cap) or too many crushed blacks.
    Dark,
    /// Too bright or too many blown highlights (glare, sun).
    Overexposed,
    /// Too little contrast: fog, haze, glare, a dirty lens.
    LowContrast,
    /// A large uniform region: a blocked or partly covered lens.
    Occluded,
    /// Too much fine detail: sensor noise, or compression or pixelation blocks.
    Noisy,
    /// Too little fine detail: defocus, motion blur, water on the lens.
    Blurred,
    /// Colours more saturated than any calibration image: a colour pipeline, white balance
    /// or gain gone wrong.
    Oversaturated,
}

impl CameraFault {
    pub const ALL: [CameraFault; 7] = [
        CameraFault::Dark,
        CameraFault::Overexposed,
        CameraFault::LowContrast,
        CameraFault::Occluded,
        CameraFault::Noisy,
        CameraFault::Blurred,
        CameraFault::Oversaturated,
    ];

    /// The alarm reason's name (`camera_dark`, ...).
    pub fn name(self) -> &'static str {
        match self {
            CameraFault::Occluded => "camera_occluded",
            CameraFault::Dark => "camera_dark",
            CameraFault::Overexposed => "camera_overexposed",
            CameraFault::LowContrast => "camera_low_contrast",
            CameraFault::Noisy => "camera_noisy",
            CameraFault::Blurred => "camera_blurred",
            CameraFault::Oversaturated => "camera_oversaturated",
        }
    }
}

/// A lower and an upper bound on one measure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Range {
    pub low: f32,
    pub high: f32,
}

impl Range {
    fn contains(&self, v: f32) -> bool {
        v >= self.low && v <= self.high
    }
}

/// The image-quality bounds of in-distribution frames: each measure's `quantile` and
/// `1 - quantile` quantiles over the calibration images (one-sided where only one side
/// means trouble), so each bound alone rejects about `quantile` of clean frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QualityBounds {
    /// Share of calibration images outside each bound.
    pub quantile: f64,
    /// How many images the bounds were computed from.
    pub images: usize,
    /// How far each bound lies past its quantile, in interquartile ranges of its measure
    /// (0: the quantile itself). A camera's own frames vary little, so their extreme
    /// quantiles sit at the sample's edge and a mild change fails them; a margin widens the
    /// bounds by each measure's own spread (schema 5).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub margin: f64,
    /// Where they came from (a data spec), when known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    pub mean_luma: Range,
    pub contrast_min: f32,
    pub sharpness: Range,
    pub clipped_dark_max: f32,
    pub clipped_bright_max: f32,
    pub flat_share_max: f32,
    pub blockiness_max: f32,
    /// Upper bound on [`ImageQuality::noise`] (schema 3; absent in migrated artifacts
    /// until `oodmon-calibrate guards` refits them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_max: Option<f32>,
    /// Lower bound on [`ImageQuality::detail`] (schema 3, as `noise_max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail_min: Option<f32>,
    /// Upper bound on [`ImageQuality::saturation`] (schema 5; absent in migrated artifacts
    /// until `oodmon-calibrate guards` refits them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saturation_max: Option<f32>,
    /// Upper bound on [`ImageQuality::black_level`] (schema 5, as `saturation_max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub black_level_max: Option<f32>,
}

impl std::fmt::Display for QualityBounds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "mean luma {:.3}-{:.3}, contrast >= {:.3}, sharpness {:.2e}-{:.2e}, crushed blacks \
             <= {:.3}, blown highlights <= {:.3}, flat cells <= {:.3}, blockiness <= {:.2}",
            self.mean_luma.low,
            self.mean_luma.high,
            self.contrast_min,
            self.sharpness.low,
            self.sharpness.high,
            self.clipped_dark_max,
            self.clipped_bright_max,
            self.flat_share_max,
            self.blockiness_max
        )?;
        if let Some(n) = self.noise_max {
            write!(f, ", noise <= {n:.2e}")?;
        }
        if let Some(d) = self.detail_min {
            write!(f, ", detail >= {d:.3}")?;
        }
        if let Some(s) = self.saturation_max {
            write!(f, ", saturation <= {s:.3}")?;
        }
        if let Some(b) = self.black_level_max {
            write!(f, ", black level <= {b:.3}")?;
        }
        write!(
            f,
            " (from {} images at quantile {}",
            self.images, self.quantile
        )?;
        if self.margin > 0.0 {
            write!(f, ", widened by {} interquartile ranges", self.margin)?;
        }
        f.write_str(")")
    }
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// The quantile guards are calibrated at unless told otherwise: each bound alone rejects
/// about 0.5% of clean frames, and k of n frames must fail before FAULT is raised.
pub const DEFAULT_GUARD_QUANTILE: f64 = 0.005;

/// Fewest calibration images bounds are computed from.
pub const MIN_QUALITY_IMAGES: usize = 50;

impl QualityBounds {
    /// Bounds at the `quantile` and `1 - quantile` quantiles of the images' measures.
    pub fn fit(images: &[ImageQuality], quantile: f64) -> Result<Self> {
        Self::fit_with_margin(images, quantile, 0.0)
    }

    /// As [`QualityBounds::fit`], each bound then moved outwards by `margin` times its
    /// measure's interquartile range.
    pub fn fit_with_margin(images: &[ImageQuality], quantile: f64, margin: f64) -> Result<Self> {
        if !(margin.is_finite() && (0.0..=100.0).contains(&margin)) {
            return Err(Error::InvalidParameter {
                what: "margin",
                reason: format!("{margin} is not in [0, 100]"),
            });
        }
        if !(quantile > 0.0 && quantile < 0.5) {
            return Err(Error::InvalidParameter {
                what: "quantile",
                reason: format!("{quantile} is not in (0, 0.5)"),
            });
        }
        if images.len() < MIN_QUALITY_IMAGES {
            return Err(Error::InvalidParameter {
                what: "images",
                reason: format!(
                    "{} images are too few to bound image quality (at least {MIN_QUALITY_IMAGES})",
                    images.len()
                ),
            });
        }
        let q = |f: fn(&ImageQuality) -> f32, p: f64| -> Result<f32> {
            let mut v: Vec<f32> = images.iter().map(f).collect();
            if v.iter().any(|x| !x.is_finite()) {
                return Err(Error::InvalidParameter {
                    what: "images",
                    reason: "an image-quality measure is NaN or infinite".into(),
                });
            }
            v.sort_by(f32::total_cmp);
            Ok(v[((p * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)])
        };
        // the quantile, moved outwards by `margin` interquartile ranges
        let low = |f: fn(&ImageQuality) -> f32| -> Result<f32> {
            let spread = q(f, 0.75)? - q(f, 0.25)?;
            Ok(q(f, quantile)? - (margin * spread as f64) as f32)
        };
        let high = |f: fn(&ImageQuality) -> f32| -> Result<f32> {
            let spread = q(f, 0.75)? - q(f, 0.25)?;
            Ok(q(f, 1.0 - quantile)? + (margin * spread as f64) as f32)
        };
        Ok(Self {
            quantile,
            images: images.len(),
            margin,
            source: String::new(),
            mean_luma: Range {
                low: low(|m| m.mean_luma)?,
                high: high(|m| m.mean_luma)?,
            },
            contrast_min: low(|m| m.contrast)?,
            sharpness: Range {
                low: low(|m| m.sharpness)?,
                high: high(|m| m.sharpness)?,
            },
            clipped_dark_max: high(|m| m.clipped_dark)?,
            clipped_bright_max: high(|m| m.clipped_bright)?,
            flat_share_max: high(|m| m.flat_share)?,
            blockiness_max: high(|m| m.blockiness)?,
            noise_max: Some(high(|m| m.noise)?),
            detail_min: Some(low(|m| m.detail)?),
            saturation_max: Some(high(|m| m.saturation)?),
            black_level_max: Some(high(|m| m.black_level)?),
        })
    }

    /// Checks every bound is finite and ordered.
    pub fn validate(&self) -> Result<()> {
        let all = [
            self.mean_luma.low,
            self.mean_luma.high,
            self.contrast_min,
            self.sharpness.low,
            self.sharpness.high,
            self.clipped_dark_max,
            self.clipped_bright_max,
            self.flat_share_max,
            self.blockiness_max,
            self.noise_max.unwrap_or(0.0),
            self.detail_min.unwrap_or(0.0),
            self.saturation_max.unwrap_or(0.0),
            self.black_level_max.unwrap_or(0.0),
        ];
        if all.iter().any(|v| !v.is_finite())
            || self.mean_luma.low > self.mean_luma.high
            || self.sharpness.low > self.sharpness.high
            || !(self.quantile > 0.0 && self.quantile < 0.5)
            || !(self.margin.is_finite() && self.margin >= 0.0)
        {
            return Err(Error::InvalidArtifact(
                "image-quality bounds are not finite, ordered bounds".into(),
            ));
        }
        Ok(())
    }

    /// The fault a frame with these measures shows, if any. NaN measures (an input that is
    /// no picture) fail every bound, as dark.
    pub fn check(&self, m: &ImageQuality) -> Option<CameraFault> {
        // NaN noise and detail fail too
        let noisy = self
            .noise_max
            .is_some_and(|b| m.noise.is_nan() || m.noise > b);
        // Boosted saturation darkens a picture (its weaker channels fall) and lifts the noise
        // estimate a little, so it is named before exposure; per-channel sensor noise colours
        // grey pixels too: when both bounds fail, the measure furthest outside its bound names
        // the cause.
        if let Some(b) = self.saturation_max {
            let excess = |v: f32, bound: Option<f32>| v / bound.unwrap_or(f32::MAX).max(1e-9);
            if m.saturation.is_nan()
                || (m.saturation > b
                    && (!noisy || excess(m.saturation, Some(b)) > excess(m.noise, self.noise_max)))
            {
                return Some(CameraFault::Oversaturated);
            }
        }
        // a uniform region beside a picture that keeps its contrast: something on the lens
        // (a uniformly dark, bright or hazy frame is flat too, and is named below)
        if m.flat_share > self.flat_share_max && m.contrast >= self.contrast_min {
            return Some(CameraFault::Occluded);
        }
        if !m.mean_luma.is_finite()
            || m.mean_luma < self.mean_luma.low
            || m.clipped_dark > self.clipped_dark_max
        {
            return Some(CameraFault::Dark);
        }
        if m.mean_luma > self.mean_luma.high || m.clipped_bright > self.clipped_bright_max {
            return Some(CameraFault::Overexposed);
        }
        // NaN contrast fails too
        if m.contrast.is_nan() || m.contrast < self.contrast_min {
            return Some(CameraFault::LowContrast);
        }
        // lifted blacks with the contrast kept: a washed-out picture (NaN fails too)
        if self
            .black_level_max
            .is_some_and(|b| m.black_level.is_nan() || m.black_level > b)
        {
            return Some(CameraFault::Overexposed);
        }
        if m.flat_share > self.flat_share_max {
            return Some(CameraFault::Occluded);
        }
        if noisy || m.sharpness > self.sharpness.high || m.blockiness > self.blockiness_max {
            return Some(CameraFault::Noisy);
        }
        let blurred = self
            .detail_min
            .is_some_and(|b| m.detail.is_nan() || m.detail < b);
        if blurred || !self.sharpness.contains(m.sharpness) {
            return Some(CameraFault::Blurred);
        }
        None
    }
}

/// Measures image quality from an encoder input tensor, reusing one luma buffer: what the
/// edge runs on every frame (no allocation once the buffer has grown to the plane).
#[derive(Debug, Clone, Default)]
pub struct QualityMeter {
    luma: Vec<f32>,
}

impl QualityMeter {
    pub fn new(spec: &PreprocessSpec) -> Self {
        Self {
            luma: Vec::with_capacity(spec.width as usize * spec.height as usize),
        }
    }

    /// The measures of the picture in `tensor`, written with `spec`.
    pub fn measure(&mut self, tensor: &[f32], spec: &PreprocessSpec) -> Result<ImageQuality> {
        luma_of_tensor(tensor, spec, &mut self.luma)?;
        let mut q = measure_luma(&self.luma, spec.width as usize, spec.height as usize)?;
        q.saturation = saturation_of_tensor(tensor, spec);
        Ok(q)
    }
}

/// Mean HSV saturation of an encoder input tensor written with `spec` (its normalisation
/// undone); the tensor's length was checked by [`luma_of_tensor`].
fn saturation_of_tensor(tensor: &[f32], spec: &PreprocessSpec) -> f32 {
    let plane = spec.width as usize * spec.height as usize;
    let (s, m) = (spec.std, spec.mean);
    // saturation does not depend on the channels' order
    let pixel =
        |a: f32, b: f32, c: f32| saturation_of([a * s[0] + m[0], b * s[1] + m[1], c * s[2] + m[2]]);
    let sum: f32 = match spec.layout {
        Layout::Nchw => {
            let (c0, rest) = tensor.split_at(plane);
            let (c1, c2) = rest.split_at(plane);
            c0.iter()
                .zip(c1)
                .zip(&c2[..plane])
                .map(|((&a, &b), &c)| pixel(a, b, c))
                .sum()
        }
        Layout::Nhwc => tensor[..3 * plane]
            .chunks_exact(3)
            .map(|p| pixel(p[0], p[1], p[2]))
            .sum(),
    };
    sum / plane.max(1) as f32
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
    out.clear();
    out.resize(w * h, 0.0);
    for c in 0..3 {
        let (m, s, k) = (spec.mean[c], spec.std[c], weight(order[c]));
        for (p, l) in out.iter_mut().enumerate() {
            let v = match spec.layout {
                Layout::Nchw => tensor[c * w * h + p],
                Layout::Nhwc => tensor[p * 3 + c],
            };
            *l += k * (v * s + m);
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::corrupt::Corruption;
    use crate::preprocess::{PixelFormat, Preprocessor};

    /// A camera-like picture: smooth shading, rings and 6-pixel checks.
    pub(crate) fn scene(w: usize, h: usize) -> Vec<u8> {
        let mut img = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
                let ring = (((fx - 0.5).powi(2) + (fy - 0.4).powi(2)).sqrt() * 20.0).sin();
                let check = ((x / 6 + y / 6) % 2) as f32;
                img.push((60.0 + 100.0 * fx + 30.0 * ring + 20.0 * check) as u8);
                img.push((70.0 + 90.0 * fy + 30.0 * check) as u8);
                img.push((150.0 - 80.0 * fx * fy + 25.0 * ring) as u8);
            }
        }
        img
    }

    fn quality(rgb: &[u8], w: usize, h: usize) -> ImageQuality {
        measure_rgb8(rgb, w, h).unwrap()
    }

    #[test]
    fn each_degradation_moves_the_measure_meant_for_it() {
        let (w, h) = (96, 64);
        let clean = scene(w, h);
        let q0 = quality(&clean, w, h);
        let q = |c: &str| {
            let c: Corruption = c.parse().unwrap();
            quality(&c.apply(&clean, w, h, 3).unwrap(), w, h)
        };
        let dark = q("darken:5");
        assert!(dark.mean_luma < 0.2 * q0.mean_luma, "{dark:?} {q0:?}");
        let foggy = q("contrast:5");
        assert!(foggy.contrast < 0.3 * q0.contrast, "{foggy:?}");
        let blurred = q("defocus_blur:5");
        assert!(blurred.sharpness < 0.5 * q0.sharpness, "{blurred:?} {q0:?}");
        assert!(blurred.detail < 0.5 * q0.detail, "{blurred:?} {q0:?}");
        let moved = q("motion_blur:5");
        assert!(moved.detail < 0.5 * q0.detail, "{moved:?} {q0:?}");
        let noisy = q("gaussian_noise:5");
        assert!(noisy.sharpness > 3.0 * q0.sharpness, "{noisy:?}");
        assert!(noisy.noise > 3.0 * q0.noise, "{noisy:?} {q0:?}");
        let blocked = q("occlusion:5");
        assert!(
            blocked.flat_share > q0.flat_share + 0.4,
            "{blocked:?} {q0:?}"
        );
        let bright = q("brighten:5");
        assert!(bright.mean_luma > q0.mean_luma, "{bright:?}");
        assert!(
            bright.black_level > q0.black_level + 0.1,
            "{bright:?} {q0:?}"
        );
        let vivid = q("saturate:5");
        assert!(vivid.saturation > q0.saturation + 0.2, "{vivid:?} {q0:?}");
    }

    /// The scene moved and relit a little, as consecutive frames of a camera differ.
    fn varied(w: usize, h: usize, i: usize) -> Vec<u8> {
        let big = scene(w + 16, h + 16);
        let (dx, dy, gain) = (i % 16, (i / 4) % 16, 0.85 + 0.3 * (i % 7) as f32 / 6.0);
        let mut out = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            let row = &big[((y + dy) * (w + 16) + dx) * 3..][..w * 3];
            out.extend(row.iter().map(|&v| (v as f32 * gain).min(255.0) as u8));
        }
        out
    }

    #[test]
    fn bounds_fitted_on_clean_frames_name_each_degradation() {
        let (w, h) = (96, 64);
        let clean: Vec<ImageQuality> = (0..120).map(|i| quality(&varied(w, h, i), w, h)).collect();
        let bounds = QualityBounds::fit(&clean, 0.01).unwrap();
        bounds.validate().unwrap();
        let passed = clean.iter().filter(|q| bounds.check(q).is_none()).count();
        assert!(
            passed >= 110,
            "{passed} of 120 clean frames pass {bounds:?}"
        );
        let probe = varied(w, h, 200);
        for (c, want) in [
            ("darken:5", CameraFault::Dark),
            ("brighten:5", CameraFault::Overexposed),
            ("contrast:5", CameraFault::LowContrast),
            ("gaussian_noise:5", CameraFault::Noisy),
            ("defocus_blur:5", CameraFault::Blurred),
            ("occlusion:5", CameraFault::Occluded),
            ("saturate:5", CameraFault::Oversaturated),
        ] {
            let corruption: Corruption = c.parse().unwrap();
            let q = quality(&corruption.apply(&probe, w, h, 1).unwrap(), w, h);
            assert_eq!(bounds.check(&q), Some(want), "{c}: {q:?} {bounds:?}");
        }
        // a margin widens every two-sided bound by its measure's own spread, and no more
        let wide = QualityBounds::fit_with_margin(&clean, 0.01, 1.0).unwrap();
        wide.validate().unwrap();
        assert!(wide.mean_luma.low < bounds.mean_luma.low);
        assert!(wide.mean_luma.high > bounds.mean_luma.high);
        assert!(wide.saturation_max > bounds.saturation_max);
        let mut luma: Vec<f32> = clean.iter().map(|q| q.mean_luma).collect();
        luma.sort_by(f32::total_cmp);
        let iqr =
            luma[(0.75f64 * 119.0).round() as usize] - luma[(0.25f64 * 119.0).round() as usize];
        assert!((wide.mean_luma.high - bounds.mean_luma.high - iqr).abs() < 1e-6);
        assert!(wide
            .to_string()
            .contains("widened by 1 interquartile ranges"));
        assert!(QualityBounds::fit_with_margin(&clean, 0.01, -1.0).is_err());
        assert!(QualityBounds::fit_with_margin(&clean, 0.01, f64::NAN).is_err());
        assert_eq!(
            QualityBounds::fit_with_margin(&clean, 0.01, 0.0).unwrap(),
            bounds
        );
        let nan = ImageQuality {
            mean_luma: f32::NAN,
            ..clean[0]
        };
        assert_eq!(bounds.check(&nan), Some(CameraFault::Dark));
        // a plane of one mid-grey value: no contrast at all
        let flat = measure_luma(&[0.5; 64], 8, 8).unwrap();
        assert_eq!(bounds.check(&flat), Some(CameraFault::LowContrast));
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
