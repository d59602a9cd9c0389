//! Image-quality measures of a camera frame, apart from the semantic score: a dark,
//! overexposed, blurred, noisy or blocked camera shows in them whatever the scene is.
//! They are computed on the encoder's input tensor, which the preprocessing has already
//! written, so they cost no extra pass over the frame (a few thousand values).
//!
//! Issue 17's first part: the measures; their calibrated bounds and the FAULT reasons
//! built on them come next.

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
    /// Share of pixels in flat 4x4 cells (luma range under 0.02): a blocked lens or a
    /// uniform patch covering part of the view.
    pub flat_share: f32,
}

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
            flat += (hi - lo < 0.02) as usize;
        }
    }
    Ok(ImageQuality {
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
mod tests {
    use super::*;
    use crate::corrupt::Corruption;
    use crate::preprocess::{PixelFormat, Preprocessor};

    fn scene(w: usize, h: usize) -> Vec<u8> {
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
        let mut luma = Vec::new();
        luma_of_rgb8(rgb, &mut luma);
        measure_luma(&luma, w, h).unwrap()
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
        let noisy = q("gaussian_noise:5");
        assert!(noisy.sharpness > 3.0 * q0.sharpness, "{noisy:?}");
        let blocked = q("occlusion:5");
        assert!(
            blocked.flat_share > q0.flat_share + 0.4,
            "{blocked:?} {q0:?}"
        );
        let bright = q("brighten:5");
        assert!(bright.mean_luma > q0.mean_luma, "{bright:?}");
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
