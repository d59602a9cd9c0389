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

mod measure;

pub use measure::{
    luma_of_rgb8, luma_of_tensor, measure_luma, measure_rgb8, reduces_frame, FrameMeasures,
    QualityMeter,
};

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
    /// Share of the cells of an 8x8 grid over the frame that are flat (luma range under
    /// 0.02) and dark (mean luma under 0.25) but not crushed black (any pixel at or under
    /// 0.02: exposure's business). Something on or near the lens (mud, a finger, a cover)
    /// is unlit and out of focus: dark and smooth, where a photo's flat regions are mostly
    /// sky, walls and backdrops, which are lit.
    #[serde(default)]
    pub dark_flat_share: f32,
    /// The darkest pixel's HSV value (its brightest channel), 0-1 (0 where measured from
    /// luma alone): brightening, glare and a lifted black level raise every pixel's value,
    /// a dark blue or red included, which luma underrates.
    #[serde(default)]
    pub value_min: f32,
    /// Share of pixels with HSV saturation at least 0.95 and value at least 0.2 (0 where
    /// measured from luma alone): boosted saturation drives strong colours to the gamut's
    /// edge, which natural colours rarely reach.
    #[serde(default)]
    pub saturated_share: f32,
    /// Detail along the rays from the picture's centre over detail across them: the
    /// gradient energy projected on each pixel's offset from the centre over that projected
    /// on the offset's normal (so weighted by the squared distance from the centre, where
    /// the directions are sharpest). Zoom blur, and the blur of a camera moving forward,
    /// smear along the rays and leave the detail across them, so it falls (the street
    /// video: about 1 clean, 0.5 at zoom blur severity 5); defocus and noise change both
    /// alike, and a motion blur's one direction lies along the rays in some places and
    /// across them in others.
    #[serde(default = "neutral_ratio")]
    pub radial_detail: f32,
    /// Estimated standard deviation of pixel noise in luma, as [`ImageQuality::noise`] but
    /// on the frame as it arrived, before the preprocessing reduces it (`None` when the
    /// frame reached the model unreduced, or was decoded at a reduced scale): a noisy sensor
    /// whose noise the reduction averages away, so that neither the model nor the other
    /// measures see it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_noise: Option<f32>,
    /// Blocking on the frame's own 8-pixel grid, as it arrived: the mean luma step across
    /// the grid's column edges over the mean step elsewhere, on the rows `frame_noise`
    /// reads (about 1; JPEG at quality 40 about 1.4). Compression blocks of a frame the
    /// preprocessing reduces are averaged away before [`ImageQuality::blockiness`] sees them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_blockiness: Option<f32>,
    /// Duplicated neighbours in the frame as it arrived: the mean of the shares of
    /// neighbouring column pairs and of row pairs equal (in luma) along more than half their
    /// length (clipped pixels not counted), on the rows `frame_noise` reads. Pixelation, or a
    /// frame enlarged by a driver, repeats whole columns and rows; noise and blur do not
    /// (0-0.001 on the street video's frames).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_duplicates: Option<f32>,
    /// The size (width, height) of the frame `frame_noise` was measured on: the estimate
    /// depends on it (a halved frame's noise is half as strong).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_size: Option<[u32; 2]>,
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
    /// Too little fine detail: defocus, motion blur, water on the lens; with a camera's
    /// frame-noise bounds also heavy compression or pixelation, which smooth its grain.
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
    /// The corruption severity (1-5, `oodmon_calibration::corrupt`) whose every kind,
    /// applied to the calibration images, each bound was widened to let pass at its own
    /// quantile, as it does the clean images (schema 8): what the robot must not stop for.
    /// Bound by bound, so a tolerated set may fail some bound more often than the clean
    /// images fail any. `None`: clean images only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerated_severity: Option<u8>,
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
    /// Upper bound on [`ImageQuality::dark_flat_share`] (schema 7; absent in migrated
    /// artifacts until `oodmon-calibrate guards` refits them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dark_flat_share_max: Option<f32>,
    /// Upper bound on [`ImageQuality::value_min`] (schema 7, as `dark_flat_share_max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_min_max: Option<f32>,
    /// Upper bound on [`ImageQuality::saturated_share`] (schema 7, as `dark_flat_share_max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saturated_share_max: Option<f32>,
    /// Lower bound on [`ImageQuality::radial_detail`] (schema 9; absent in older artifacts
    /// until `oodmon-calibrate guards` refits them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub radial_detail_min: Option<f32>,
    /// Upper bound on [`ImageQuality::frame_noise`] (schema 7): only when at least
    /// [`MIN_QUALITY_IMAGES`] calibration frames were reduced on their way to the model
    /// (a camera's frames, not 32x32 photos), and only checked on frames that carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_noise_max: Option<f32>,
    /// Lower bound on [`ImageQuality::frame_noise`] (schema 7, with `frame_noise_max`): a
    /// frame that lost the fine grain its camera always has (heavy compression,
    /// pixelation, defocus) falls under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_noise_min: Option<f32>,
    /// Upper bound on [`ImageQuality::frame_blockiness`] (schema 8, fitted with the
    /// frame-noise bounds and checked on the same frames): compression blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_blockiness_max: Option<f32>,
    /// Upper bound on [`ImageQuality::frame_duplicates`] (schema 8, as
    /// `frame_blockiness_max`): pixelation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_duplicates_max: Option<f32>,
    /// The frame size (width, height) the frame-noise bounds were fitted on (the commonest
    /// among the calibration frames); frames of another size are not checked against them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_noise_size: Option<[u32; 2]>,
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
        if let Some(d) = self.dark_flat_share_max {
            write!(f, ", dark flat cells <= {d:.3}")?;
        }
        if let Some(v) = self.value_min_max {
            write!(f, ", darkest value <= {v:.3}")?;
        }
        if let Some(s) = self.saturated_share_max {
            write!(f, ", saturated pixels <= {s:.3}")?;
        }
        if let Some(r) = self.radial_detail_min {
            write!(f, ", radial detail >= {r:.3}")?;
        }
        if let Some(n) = self.frame_noise_min {
            write!(f, ", frame noise >= {n:.2e}")?;
        }
        if let Some(n) = self.frame_noise_max {
            write!(f, ", frame noise <= {n:.2e}")?;
        }
        if let Some(b) = self.frame_blockiness_max {
            write!(f, ", frame blocks <= {b:.3}")?;
        }
        if let Some(d) = self.frame_duplicates_max {
            write!(f, ", frame duplicates <= {d:.3}")?;
        }
        if let Some([w, h]) = self.frame_noise_size {
            write!(f, " (on {w}x{h} frames)")?;
        }
        write!(
            f,
            " (from {} images at quantile {}",
            self.images, self.quantile
        )?;
        if let Some(severity) = self.tolerated_severity {
            write!(f, ", tolerating every corruption at severity {severity}")?;
        }
        if self.margin > 0.0 {
            write!(f, ", widened by {} interquartile ranges", self.margin)?;
        }
        f.write_str(")")?;
        let absent = self.absent();
        if !absent.is_empty() {
            write!(f, "; not bounded, so not checked: {}", absent.join(", "))?;
        }
        Ok(())
    }
}

/// What [`ImageQuality::radial_detail`] reads in a record written before it was measured.
fn neutral_ratio() -> f32 {
    1.0
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// The quantile guards are calibrated at unless told otherwise: each bound alone rejects
/// about 0.5% of clean frames, and k of n frames must fail before FAULT is raised.
pub const DEFAULT_GUARD_QUANTILE: f64 = 0.005;

/// The lowest bound on [`ImageQuality::frame_duplicates`]: a frame may repeat a few
/// columns (flat walls, a gradient in whole luma steps) without being pixelated.
pub const FRAME_DUPLICATES_FLOOR: f32 = 0.02;

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
        Self::fit_tolerating(images, &[], quantile, margin)
    }

    /// As [`QualityBounds::fit_with_margin`], each bound first moved outwards as far as
    /// each `tolerated` set needs to fail it no more often than `quantile`: the calibration
    /// images through a degradation a robot must not stop for (a mild blur, a little
    /// noise), so that only a stronger one of the same kind fails. The margin is the clean
    /// images' spread. The caller records what was tolerated (`tolerated_severity`).
    pub fn fit_tolerating(
        images: &[ImageQuality],
        tolerated: &[&[ImageQuality]],
        quantile: f64,
        margin: f64,
    ) -> Result<Self> {
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
        if let Some(few) = std::iter::once(images)
            .chain(tolerated.iter().copied())
            .find(|set| set.len() < MIN_QUALITY_IMAGES)
        {
            return Err(Error::InvalidParameter {
                what: "images",
                reason: format!(
                    "{} images are too few to bound image quality (at least {MIN_QUALITY_IMAGES})",
                    few.len()
                ),
            });
        }
        // one measure's values, sorted, and a quantile of them
        let sorted = |mut v: Vec<f32>| -> Result<Vec<f32>> {
            if v.iter().any(|x| !x.is_finite()) {
                return Err(Error::InvalidParameter {
                    what: "images",
                    reason: "an image-quality measure is NaN or infinite".into(),
                });
            }
            v.sort_by(f32::total_cmp);
            Ok(v)
        };
        let at =
            |v: &[f32], p: f64| v[((p * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)];
        // the clean images' quantile, moved out to each tolerated set's, then by `margin`
        // interquartile ranges of the clean images
        let widen = |v: &[f32]| (margin * (at(v, 0.75) - at(v, 0.25)) as f64) as f32;
        let low_of = |clean: Vec<f32>, others: Vec<Vec<f32>>| -> Result<f32> {
            let clean = sorted(clean)?;
            let mut low = at(&clean, quantile);
            for v in others {
                low = low.min(at(&sorted(v)?, quantile));
            }
            Ok(low - widen(&clean))
        };
        let high_of = |clean: Vec<f32>, others: Vec<Vec<f32>>| -> Result<f32> {
            let clean = sorted(clean)?;
            let mut high = at(&clean, 1.0 - quantile);
            for v in others {
                high = high.max(at(&sorted(v)?, 1.0 - quantile));
            }
            Ok(high + widen(&clean))
        };
        let of = |f: fn(&ImageQuality) -> f32| {
            (
                images.iter().map(f).collect::<Vec<f32>>(),
                tolerated
                    .iter()
                    .map(|set| set.iter().map(f).collect())
                    .collect::<Vec<Vec<f32>>>(),
            )
        };
        let low = |f: fn(&ImageQuality) -> f32| {
            let (clean, others) = of(f);
            low_of(clean, others)
        };
        let high = |f: fn(&ImageQuality) -> f32| {
            let (clean, others) = of(f);
            high_of(clean, others)
        };
        // measured on some frames only (those the preprocessing reduces): bounded when
        // enough were
        // the frame noise depends on the frame's size: bounded on the commonest one
        let mut sizes: Vec<[u32; 2]> = images
            .iter()
            .filter(|m| m.frame_noise.is_some())
            .filter_map(|m| m.frame_size)
            .collect();
        sizes.sort_unstable();
        let frame_noise_size = sizes
            .chunk_by(|a, b| a == b)
            .max_by_key(|run| run.len())
            .map(|run| run[0]);
        // a frame measure of the sets' frames of that size, where there are enough of them
        let frame_measure = |f: fn(&ImageQuality) -> Option<f32>| {
            let of = |set: &[ImageQuality]| -> Vec<f32> {
                set.iter()
                    .filter(|m| m.frame_size == frame_noise_size)
                    .filter_map(f)
                    .collect()
            };
            let others: Vec<Vec<f32>> = tolerated
                .iter()
                .map(|set| of(set))
                .filter(|v| v.len() >= MIN_QUALITY_IMAGES)
                .collect();
            (of(images), others)
        };
        let (clean_noise, other_noise) = frame_measure(|m| m.frame_noise);
        let framed = clean_noise.len() >= MIN_QUALITY_IMAGES;
        let (frame_noise_min, frame_noise_max, frame_noise_size) = if framed {
            (
                Some(low_of(clean_noise.clone(), other_noise.clone())?),
                Some(high_of(clean_noise, other_noise)?),
                frame_noise_size,
            )
        } else {
            (None, None, None)
        };
        // measured with the frame noise since schema 8: bounded where enough frames carry it
        let frame_high = |f: fn(&ImageQuality) -> Option<f32>| -> Result<Option<f32>> {
            let (clean, others) = frame_measure(f);
            if framed && clean.len() >= MIN_QUALITY_IMAGES {
                high_of(clean, others).map(Some)
            } else {
                Ok(None)
            }
        };
        let frame_blockiness_max = frame_high(|m| m.frame_blockiness)?;
        // most clean frames repeat no column, so the quantile is often 0 and a single
        // repeated column pair would fail it: never under a share no mild pixelation reaches
        // (a 0.95 resize repeats 5% of columns and rows)
        let frame_duplicates_max =
            frame_high(|m| m.frame_duplicates)?.map(|b| b.max(FRAME_DUPLICATES_FLOOR));
        Ok(Self {
            quantile,
            images: images.len(),
            margin,
            tolerated_severity: None,
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
            dark_flat_share_max: Some(high(|m| m.dark_flat_share)?),
            value_min_max: Some(high(|m| m.value_min)?),
            saturated_share_max: Some(high(|m| m.saturated_share)?),
            radial_detail_min: Some(low(|m| m.radial_detail)?),
            frame_noise_max,
            frame_noise_min,
            frame_blockiness_max,
            frame_duplicates_max,
            frame_noise_size,
        })
    }

    /// Checks every bound is finite and ordered.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| {
            Err(Error::InvalidArtifact(format!(
                "image-quality bounds: {what}"
            )))
        };
        // (name, value, whether the measure is never negative, so that an upper bound
        // under 0 would reject every frame)
        let bounds = [
            ("mean_luma.low", Some(self.mean_luma.low), false),
            ("mean_luma.high", Some(self.mean_luma.high), true),
            ("contrast_min", Some(self.contrast_min), false),
            ("sharpness.low", Some(self.sharpness.low), false),
            ("sharpness.high", Some(self.sharpness.high), true),
            ("clipped_dark_max", Some(self.clipped_dark_max), true),
            ("clipped_bright_max", Some(self.clipped_bright_max), true),
            ("flat_share_max", Some(self.flat_share_max), true),
            ("blockiness_max", Some(self.blockiness_max), true),
            ("noise_max", self.noise_max, true),
            ("detail_min", self.detail_min, false),
            ("saturation_max", self.saturation_max, true),
            ("black_level_max", self.black_level_max, true),
            ("dark_flat_share_max", self.dark_flat_share_max, true),
            ("value_min_max", self.value_min_max, true),
            ("saturated_share_max", self.saturated_share_max, true),
            ("radial_detail_min", self.radial_detail_min, false),
            ("frame_noise_max", self.frame_noise_max, true),
            ("frame_noise_min", self.frame_noise_min, false),
            ("frame_blockiness_max", self.frame_blockiness_max, true),
            ("frame_duplicates_max", self.frame_duplicates_max, true),
        ];
        for (name, value, upper_of_non_negative) in bounds {
            match value {
                Some(v) if !v.is_finite() => return bad(format!("{name} is {v}, not a number")),
                Some(v) if upper_of_non_negative && v < 0.0 => {
                    return bad(format!(
                        "{name} is {v}: the measure is never negative, so every frame would fail"
                    ))
                }
                _ => {}
            }
        }
        let ordered = |name: &str, low: Option<f32>, high: Option<f32>| {
            match (low, high) {
            (Some(l), Some(h)) if l > h => bad(format!(
                "{name}: the lower bound {l} is above the upper bound {h}, so every frame would fail"
            )),
            _ => Ok(()),
        }
        };
        ordered(
            "mean_luma",
            Some(self.mean_luma.low),
            Some(self.mean_luma.high),
        )?;
        ordered(
            "sharpness",
            Some(self.sharpness.low),
            Some(self.sharpness.high),
        )?;
        ordered("frame_noise", self.frame_noise_min, self.frame_noise_max)?;
        if !(self.quantile > 0.0 && self.quantile < 0.5) {
            return bad(format!("quantile {} is not in (0, 0.5)", self.quantile));
        }
        if let Some(severity) = self.tolerated_severity {
            if !(1..=5).contains(&severity) {
                return bad(format!(
                    "tolerated_severity {severity} is not a corruption severity (1-5)"
                ));
            }
        }
        if !(self.margin.is_finite() && self.margin >= 0.0) {
            return bad(format!(
                "margin {} is not a non-negative number",
                self.margin
            ));
        }
        Ok(())
    }

    /// A frame's own noise where these bounds apply to it: measured on a frame of the size
    /// they were fitted on.
    pub fn frame_noise_of(&self, m: &ImageQuality) -> Option<f32> {
        self.on_fitted_frame(m, m.frame_noise)
    }

    /// A frame measure where these bounds apply to it (as [`QualityBounds::frame_noise_of`]).
    fn on_fitted_frame(&self, m: &ImageQuality, v: Option<f32>) -> Option<f32> {
        match self.frame_noise_size {
            Some(size) if m.frame_size != Some(size) => None,
            _ => v,
        }
    }

    /// The bounds this calibration does not have, by name: fitted by an older build (until
    /// `oodmon-calibrate guards` refits them), or not measurable on its images (the frame's
    /// own noise on images that were not reduced). Their measures are not checked.
    pub fn absent(&self) -> Vec<&'static str> {
        [
            ("noise", self.noise_max.is_none()),
            ("detail", self.detail_min.is_none()),
            ("saturation", self.saturation_max.is_none()),
            ("black level", self.black_level_max.is_none()),
            ("dark flat cells", self.dark_flat_share_max.is_none()),
            ("darkest value", self.value_min_max.is_none()),
            ("saturated pixels", self.saturated_share_max.is_none()),
            ("radial detail", self.radial_detail_min.is_none()),
            (
                "frame noise",
                self.frame_noise_max.is_none() && self.frame_noise_min.is_none(),
            ),
            ("frame blocks", self.frame_blockiness_max.is_none()),
            ("frame duplicates", self.frame_duplicates_max.is_none()),
        ]
        .into_iter()
        .filter_map(|(name, missing)| missing.then_some(name))
        .collect()
    }

    /// The fault a frame with these measures shows, if any. NaN measures (an input that is
    /// no picture) fail every bound, as dark.
    pub fn check(&self, m: &ImageQuality) -> Option<CameraFault> {
        // NaN noise and detail fail too; the frame's own noise where both it and its bound
        // exist
        let noisy = self
            .noise_max
            .is_some_and(|b| m.noise.is_nan() || m.noise > b)
            || self
                .frame_noise_max
                .zip(self.frame_noise_of(m))
                .is_some_and(|(b, n)| n.is_nan() || n > b);
        // Boosted saturation darkens a picture (its weaker channels fall) and lifts the noise
        // estimate a little, so it is named before exposure; per-channel sensor noise colours
        // grey pixels too: when both the mean saturation's and the noise's bounds fail, the
        // measure furthest outside its bound names the cause. Noise also scatters a few
        // pixels to the gamut's edge, so the saturated share counts on a frame that is not
        // noisy.
        let excess = |v: f32, bound: Option<f32>| v / bound.unwrap_or(f32::MAX).max(1e-9);
        // the noise furthest outside its bound: the tensor's, or the frame's own
        let noise_excess = excess(m.noise, self.noise_max).max(
            self.frame_noise_of(m)
                .map_or(0.0, |n| excess(n, self.frame_noise_max)),
        );
        let saturated = self.saturation_max.is_some_and(|b| {
            m.saturation > b && (!noisy || excess(m.saturation, Some(b)) > noise_excess)
        }) || (!noisy
            && self
                .saturated_share_max
                .is_some_and(|b| m.saturated_share > b));
        if (self.saturation_max.is_some() && m.saturation.is_nan())
            || (self.saturated_share_max.is_some() && m.saturated_share.is_nan())
            || saturated
        {
            return Some(CameraFault::Oversaturated);
        }
        // a uniform region beside a picture that keeps its contrast: something on the lens
        // (a uniformly dark, bright or hazy frame is flat too, and is named below)
        let dark_flat = self
            .dark_flat_share_max
            .is_some_and(|b| m.dark_flat_share.is_nan() || m.dark_flat_share > b);
        if (m.flat_share > self.flat_share_max || dark_flat) && m.contrast >= self.contrast_min {
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
            || self
                .value_min_max
                .is_some_and(|b| m.value_min.is_nan() || m.value_min > b)
        {
            return Some(CameraFault::Overexposed);
        }
        if m.flat_share > self.flat_share_max {
            return Some(CameraFault::Occluded);
        }
        // compression blocks or repeated pixels of the frame as it arrived (NaN fails too)
        let above = |v: Option<f32>, bound: Option<f32>| {
            bound
                .zip(self.on_fitted_frame(m, v))
                .is_some_and(|(b, v)| v.is_nan() || v > b)
        };
        let blocky = above(m.frame_blockiness, self.frame_blockiness_max)
            || above(m.frame_duplicates, self.frame_duplicates_max);
        if noisy
            || blocky
            || m.sharpness > self.sharpness.high
            || m.blockiness > self.blockiness_max
        {
            return Some(CameraFault::Noisy);
        }
        // the frame's own grain lost too (compression and pixelation smooth it, as blur does);
        // detail lost along the rays from the centre only: zoom blur
        let blurred = self
            .detail_min
            .is_some_and(|b| m.detail.is_nan() || m.detail < b)
            || self
                .radial_detail_min
                .is_some_and(|b| m.radial_detail.is_nan() || m.radial_detail < b)
            || self
                .frame_noise_min
                .zip(self.frame_noise_of(m))
                .is_some_and(|(b, n)| n < b);
        if blurred || !self.sharpness.contains(m.sharpness) {
            return Some(CameraFault::Blurred);
        }
        None
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::corrupt::Corruption;

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
        // zoom blur smears along the rays from the centre; defocus and noise change the
        // detail along and across them alike, so they do not lower it (defocus leaves this
        // scene's rings, centred near the middle, whose detail lies along the rays)
        let zoomed = q("zoom_blur:5");
        assert!(
            zoomed.radial_detail < 0.6 * q0.radial_detail,
            "{zoomed:?} {q0:?}"
        );
        for alike in [&blurred, &q("gaussian_noise:3")] {
            let ratio = alike.radial_detail / q0.radial_detail;
            assert!(ratio > 0.8, "{alike:?} {q0:?}");
        }
        let noisy = q("gaussian_noise:5");
        assert!(noisy.sharpness > 3.0 * q0.sharpness, "{noisy:?}");
        assert!(noisy.noise > 3.0 * q0.noise, "{noisy:?} {q0:?}");
        let blocked = q("occlusion:5");
        assert!(
            blocked.flat_share > q0.flat_share + 0.4,
            "{blocked:?} {q0:?}"
        );
        // the patch is dark and covers 60% of the frame: at least a third of the 64 cells
        // lie inside it whatever its place
        assert_eq!(q0.dark_flat_share, 0.0, "{q0:?}");
        assert!(blocked.dark_flat_share > 0.3, "{blocked:?}");
        let bright = q("brighten:5");
        assert!(bright.mean_luma > q0.mean_luma, "{bright:?}");
        assert!(
            bright.black_level > q0.black_level + 0.1,
            "{bright:?} {q0:?}"
        );
        // every value lifted by 0.3
        assert!(
            bright.value_min >= (q0.value_min + 0.29).min(1.0),
            "{bright:?} {q0:?}"
        );
        let vivid = q("saturate:5");
        assert!(vivid.saturation > q0.saturation + 0.2, "{vivid:?} {q0:?}");
        assert!(
            vivid.saturated_share > q0.saturated_share + 0.3,
            "{vivid:?} {q0:?}"
        );
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
    fn frame_blocks_and_duplicates_show_compression_and_pixelation() {
        let (w, h) = (256, 192);
        let degrade = |rgb: &[u8], c: &str| {
            let c: Corruption = c.parse().unwrap();
            c.apply(rgb, w, h, 5).unwrap()
        };
        // a camera's frame has grain; 7-pixel checks, whose edges fall on the 8-pixel grid
        // as often as off it
        let checks: Vec<u8> = (0..w * h)
            .flat_map(|i| {
                let (x, y) = (i % w, i / w);
                let v = 60 + (x * 100 / w) as u8 + 40 * ((x / 7 + y / 7) % 2) as u8;
                [v, v / 2 + 40, 200 - v / 2]
            })
            .collect();
        let frame = degrade(&checks, "gaussian_noise:1");
        let mut meter = QualityMeter::default();
        let mut measure = |rgb: &[u8]| {
            meter
                .frame_measures(rgb, w, h, None, crate::preprocess::PixelFormat::Rgb8)
                .unwrap()
        };
        let clean = measure(&frame);
        assert!((0.85..1.15).contains(&clean.blockiness), "{clean:?}");
        assert_eq!(clean.duplicates, 0.0, "{clean:?}");
        // the frame noise is the one `frame_noise` gives
        assert_eq!(
            QualityMeter::default()
                .frame_noise(&frame, w, h, None, crate::preprocess::PixelFormat::Rgb8)
                .unwrap(),
            clean.noise
        );
        let jpeg = measure(&degrade(&frame, "jpeg:5"));
        assert!(jpeg.blockiness > 1.25, "{jpeg:?} {clean:?}");
        let pixelated = measure(&degrade(&frame, "pixelate:5"));
        // a 0.65 resize repeats about a third of the columns and rows
        assert!(
            (0.25..0.45).contains(&pixelated.duplicates),
            "{pixelated:?}"
        );
        // blur smooths, but repeats no whole column
        let blurred = measure(&degrade(&frame, "defocus_blur:1"));
        assert!(blurred.duplicates < 0.05, "{blurred:?}");
        // blown highlights are equal in any picture: exposure's business, not counted
        let mut blown = frame.clone();
        for row in blown.chunks_exact_mut(3 * w) {
            row[..3 * 64].fill(255);
        }
        assert_eq!(measure(&blown).duplicates, 0.0);
        // bounded when frames carry them, named noisy above the bound
        let framed: Vec<ImageQuality> = (0..60)
            .map(|i| ImageQuality {
                frame_noise: Some(clean.noise),
                frame_blockiness: Some(clean.blockiness + 0.001 * i as f32),
                frame_duplicates: Some(0.0),
                frame_size: Some([w as u32, h as u32]),
                ..quality(&frame, w, h)
            })
            .collect();
        let bounds = QualityBounds::fit(&framed, 0.01).unwrap();
        bounds.validate().unwrap();
        // no clean frame repeats a column: the floor
        assert!(
            bounds.frame_blockiness_max.is_some()
                && bounds.frame_duplicates_max == Some(FRAME_DUPLICATES_FLOOR)
        );
        assert!(bounds.to_string().contains("frame blocks <= "));
        let ok = framed[10];
        assert_eq!(bounds.check(&ok), None, "{bounds}");
        for bad in [
            ImageQuality {
                frame_blockiness: Some(jpeg.blockiness),
                ..ok
            },
            ImageQuality {
                frame_duplicates: Some(pixelated.duplicates),
                ..ok
            },
            ImageQuality {
                frame_duplicates: Some(f32::NAN),
                ..ok
            },
        ] {
            assert_eq!(bounds.check(&bad), Some(CameraFault::Noisy), "{bad:?}");
        }
        // on a frame of another size they are not checked
        let other = ImageQuality {
            frame_blockiness: Some(jpeg.blockiness),
            frame_size: Some([w as u32 / 2, h as u32 / 2]),
            ..ok
        };
        assert_eq!(bounds.check(&other), None);
    }

    #[test]
    fn strong_zoom_blur_fails_the_radial_bound_that_tolerates_mild_blur() {
        let (w, h) = (96, 64);
        // bounds fitted on 60 frames, judged on 60 others
        let frames: Vec<Vec<u8>> = (0..120).map(|i| varied(w, h, i)).collect();
        let (fit, held_out) = frames.split_at(60);
        let measured = |frames: &[Vec<u8>], c: Option<&str>| -> Vec<ImageQuality> {
            let c: Option<Corruption> = c.map(|c| c.parse().unwrap());
            frames
                .iter()
                .enumerate()
                .map(|(i, f)| match &c {
                    None => quality(f, w, h),
                    Some(c) => quality(&c.apply(f, w, h, i as u64).unwrap(), w, h),
                })
                .collect()
        };
        let mild_kinds = [None, Some("zoom_blur:1"), Some("defocus_blur:1")];
        let tolerated: Vec<Vec<ImageQuality>> =
            mild_kinds[1..].iter().map(|&c| measured(fit, c)).collect();
        let tolerated: Vec<&[ImageQuality]> = tolerated.iter().map(Vec::as_slice).collect();
        let bounds =
            QualityBounds::fit_tolerating(&measured(fit, None), &tolerated, 0.01, 0.0).unwrap();
        let radial = bounds.radial_detail_min.unwrap();
        // unseen frames: clean and mildly blurred ones pass it (a bound from 60 frames is a
        // rough quantile: mild zoom blur fails it for 4 here), strongly zoomed ones fail
        for c in mild_kinds {
            let set = measured(held_out, c);
            let under = set.iter().filter(|q| q.radial_detail < radial).count();
            assert!(under <= 6, "{c:?}: {under} of 60 under {radial}");
        }
        let strong = measured(held_out, Some("zoom_blur:5"));
        let under = strong.iter().filter(|q| q.radial_detail < radial).count();
        assert!(under >= 57, "{under} of 60 under {radial}");
        // every one fails (on this synthetic scene, zoom blur also lowers the contrast, which
        // is named first where it fails)
        let named: Vec<Option<CameraFault>> = strong.iter().map(|q| bounds.check(q)).collect();
        assert!(named.iter().all(Option::is_some), "{bounds} {named:?}");
        // the radial bound alone names a frame blurred: a clean frame that passes every
        // bound, with its radial detail under the bound, or NaN
        let clean = measured(held_out, None);
        let passing = clean.iter().find(|q| bounds.check(q).is_none()).unwrap();
        for radial_detail in [0.5 * radial, f32::NAN] {
            let zoomed = ImageQuality {
                radial_detail,
                ..*passing
            };
            assert_eq!(bounds.check(&zoomed), Some(CameraFault::Blurred));
        }
        let blind = QualityBounds {
            radial_detail_min: None,
            ..bounds.clone()
        };
        let zoomed = ImageQuality {
            radial_detail: 0.5 * radial,
            ..*passing
        };
        assert_eq!(blind.check(&zoomed), None);
    }

    #[test]
    fn tolerated_degradations_pass_and_stronger_ones_of_the_same_kind_fail() {
        let (w, h) = (96, 64);
        let frames: Vec<Vec<u8>> = (0..120).map(|i| varied(w, h, i)).collect();
        let measured = |c: Option<&str>| -> Vec<ImageQuality> {
            frames
                .iter()
                .enumerate()
                .map(|(i, f)| match c {
                    None => quality(f, w, h),
                    Some(c) => {
                        let c: Corruption = c.parse().unwrap();
                        quality(&c.apply(f, w, h, i as u64).unwrap(), w, h)
                    }
                })
                .collect()
        };
        let clean = measured(None);
        let plain = QualityBounds::fit(&clean, 0.01).unwrap();
        // nothing tolerated: the plain fit
        assert_eq!(
            QualityBounds::fit_tolerating(&clean, &[], 0.01, 0.0).unwrap(),
            plain
        );
        let mild_noise = measured(Some("gaussian_noise:1"));
        let mild_dark = measured(Some("darken:1"));
        let failing = |b: &QualityBounds, set: &[ImageQuality]| {
            set.iter().filter(|q| b.check(q).is_some()).count()
        };
        // the plain bounds stop for the mild ones (this scene varies little)
        assert!(failing(&plain, &mild_noise) > 60, "{plain}");
        assert!(failing(&plain, &mild_dark) > 60, "{plain}");
        let tolerant =
            QualityBounds::fit_tolerating(&clean, &[&mild_noise, &mild_dark], 0.01, 0.0).unwrap();
        tolerant.validate().unwrap();
        // each bound is the outermost of the sets' quantiles: never tighter than the plain one
        assert!(tolerant.noise_max.unwrap() > plain.noise_max.unwrap());
        assert!(tolerant.mean_luma.low < plain.mean_luma.low);
        assert_eq!(tolerant.mean_luma.high, plain.mean_luma.high);
        let mut noise: Vec<f32> = mild_noise.iter().map(|q| q.noise).collect();
        noise.sort_by(f32::total_cmp);
        assert_eq!(
            tolerant.noise_max.unwrap(),
            noise[(0.99f64 * 119.0).round() as usize].max(plain.noise_max.unwrap())
        );
        // the tolerated sets pass about as often as clean frames do; the strong ones fail
        for set in [&clean, &mild_noise, &mild_dark] {
            assert!(failing(&tolerant, set) <= 12, "{tolerant}");
        }
        for (c, want) in [
            ("gaussian_noise:5", CameraFault::Noisy),
            ("darken:5", CameraFault::Dark),
        ] {
            let strong = measured(Some(c));
            let named: Vec<Option<CameraFault>> =
                strong.iter().map(|q| tolerant.check(q)).collect();
            // every frame fails; a noisy frame lit near the top may clip as overexposed
            assert!(
                named.iter().all(Option::is_some),
                "{c}: {named:?} {tolerant}"
            );
            let right = named.iter().filter(|f| **f == Some(want)).count();
            assert!(right >= 114, "{c}: {named:?} {tolerant}");
        }
        // recorded, shown and checked
        let recorded = QualityBounds {
            tolerated_severity: Some(1),
            ..tolerant.clone()
        };
        assert!(recorded
            .to_string()
            .contains("tolerating every corruption at severity 1"));
        recorded.validate().unwrap();
        let bad = QualityBounds {
            tolerated_severity: Some(6),
            ..tolerant
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("tolerated_severity 6"));
        // a tolerated set too small to take a quantile of is refused
        assert!(QualityBounds::fit_tolerating(&clean, &[&mild_noise[..10]], 0.01, 0.0).is_err());
    }

    #[test]
    fn bounds_fitted_on_clean_frames_name_each_degradation() {
        let (w, h) = (96, 64);
        let clean: Vec<ImageQuality> = (0..120).map(|i| quality(&varied(w, h, i), w, h)).collect();
        let bounds = QualityBounds::fit(&clean, 0.01).unwrap();
        bounds.validate().unwrap();
        // 17 one-sided bounds, each failing at most the one frame beyond its quantile
        let passed = clean.iter().filter(|q| bounds.check(q).is_none()).count();
        assert!(
            passed >= 103,
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
        // the frame's own noise: bounded only when enough frames carry it, checked only on
        // frames that do
        assert_eq!(bounds.frame_noise_max, None);
        let framed: Vec<ImageQuality> = clean
            .iter()
            .enumerate()
            .map(|(i, q)| ImageQuality {
                frame_noise: Some(0.01 + 0.0001 * i as f32),
                frame_blockiness: Some(1.0),
                frame_duplicates: Some(0.0),
                ..*q
            })
            .collect();
        let with_frames = QualityBounds::fit(&framed, 0.01).unwrap();
        let bound = with_frames.frame_noise_max.unwrap();
        assert!((0.0215..0.0222).contains(&bound), "{bound}");
        assert!(with_frames.to_string().contains("frame noise <="));
        // a frame that passes every bound (a few clean ones fail one)
        let ok = (0..framed.len())
            .find(|&i| with_frames.check(&framed[i]).is_none())
            .unwrap();
        let noisy = ImageQuality {
            frame_noise: Some(0.05),
            ..framed[ok]
        };
        assert_eq!(with_frames.check(&noisy), Some(CameraFault::Noisy));
        // a frame smoother than the camera ever is: its grain compressed or blurred away
        let low = with_frames.frame_noise_min.unwrap();
        assert!((0.0100..0.0103).contains(&low), "{low}");
        let smooth = ImageQuality {
            frame_noise: Some(0.002),
            ..framed[ok]
        };
        assert_eq!(with_frames.check(&smooth), Some(CameraFault::Blurred));
        assert!(with_frames.to_string().contains("frame noise >="));
        assert!(!with_frames.to_string().contains("not bounded"));
        // bounds without the frame's own noise say so
        assert!(bounds.to_string().ends_with(
            "; not bounded, so not checked: frame noise, frame blocks, frame duplicates"
        ));
        // bounds no fit could give are refused, naming the bound
        for (broken, names) in [
            (
                QualityBounds {
                    frame_noise_min: Some(0.02),
                    frame_noise_max: Some(0.01),
                    ..with_frames.clone()
                },
                "frame_noise: the lower bound",
            ),
            (
                QualityBounds {
                    noise_max: Some(-1.0),
                    ..with_frames.clone()
                },
                "noise_max is -1",
            ),
            (
                QualityBounds {
                    detail_min: Some(f32::NAN),
                    ..with_frames.clone()
                },
                "detail_min is NaN",
            ),
        ] {
            let e = broken.validate().unwrap_err().to_string();
            assert!(e.contains(names), "{e}");
        }
        assert_eq!(bounds.check(&noisy), None);
        let unmeasured = ImageQuality {
            frame_noise: None,
            ..framed[ok]
        };
        assert_eq!(with_frames.check(&unmeasured), None);
        let mut few = framed.clone();
        for q in &mut few[MIN_QUALITY_IMAGES - 1..] {
            q.frame_noise = None;
        }
        // the frame noise depends on the frame's size: bounded on the commonest size, checked
        // on frames of that size only
        let sized: Vec<ImageQuality> = framed
            .iter()
            .enumerate()
            .map(|(i, q)| ImageQuality {
                frame_size: Some(if i < 100 { [320, 240] } else { [640, 480] }),
                ..*q
            })
            .collect();
        let by_size = QualityBounds::fit(&sized, 0.01).unwrap();
        assert_eq!(by_size.frame_noise_size, Some([320, 240]));
        assert!(by_size.to_string().contains("(on 320x240 frames)"));
        let noisy_here = ImageQuality {
            frame_size: Some([320, 240]),
            ..noisy
        };
        let noisy_elsewhere = ImageQuality {
            frame_size: Some([640, 480]),
            ..noisy
        };
        assert_eq!(by_size.check(&noisy_here), Some(CameraFault::Noisy));
        assert_eq!(by_size.check(&noisy_elsewhere), None);
        let without = QualityBounds::fit(&few, 0.01).unwrap();
        assert_eq!(
            (without.frame_noise_min, without.frame_noise_max),
            (None, None)
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
}
