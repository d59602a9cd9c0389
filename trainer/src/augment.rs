//! Training-time augmentation on RGB8 images at the model's input size, writing straight
//! into a normalised batch in the caller's layout (NHWC for training, which
//! `train::batch_tensor` views as a channels-last NCHW tensor): random crop with padding
//! and flips (CE, SupCon), and SimCLR's two views (random resized crop, colour jitter,
//! random grayscale, flip).

use oodmon_calibration::preprocess::{
    ChannelOrder, Layout, PixelFormat, PreprocessSpec, Preprocessor, ResizePolicy,
};
use rand::Rng;

/// Writes one image (RGB8, `w x h`) into `out` in `layout` (`3 x h x w` or `h x w x 3`),
/// normalised by `spec` (its channel order, mean and std; the trainer picks the layout).
pub fn normalise_into(
    img: &[f32],
    w: usize,
    h: usize,
    spec: &PreprocessSpec,
    layout: Layout,
    out: &mut [f32],
) {
    let plane = w * h;
    let order: [usize; 3] = match spec.channel_order {
        ChannelOrder::Rgb => [0, 1, 2],
        ChannelOrder::Bgr => [2, 1, 0],
    };
    for c in 0..3 {
        let src = order[c];
        let (scale, shift) = (
            1.0 / (255.0 * spec.std[src]),
            spec.mean[src] / spec.std[src],
        );
        for p in 0..plane {
            let v = img[p * 3 + src] * scale - shift;
            match layout {
                Layout::Nchw => out[c * plane + p] = v,
                Layout::Nhwc => out[p * 3 + c] = v,
            }
        }
    }
}

/// Random crop after zero padding by `pad` pixels, then a horizontal flip with p = 0.5.
pub fn crop_flip(img: &[u8], w: usize, h: usize, pad: usize, rng: &mut impl Rng, out: &mut [f32]) {
    let dx = rng.random_range(0..=2 * pad) as isize - pad as isize;
    let dy = rng.random_range(0..=2 * pad) as isize - pad as isize;
    let flip = rng.random_bool(0.5);
    for y in 0..h {
        for x in 0..w {
            let sx = if flip { w - 1 - x } else { x } as isize + dx;
            let sy = y as isize + dy;
            let o = &mut out[(y * w + x) * 3..(y * w + x) * 3 + 3];
            if sx < 0 || sy < 0 || sx >= w as isize || sy >= h as isize {
                o.fill(0.0);
            } else {
                let i = (sy as usize * w + sx as usize) * 3;
                o[0] = img[i] as f32;
                o[1] = img[i + 1] as f32;
                o[2] = img[i + 2] as f32;
            }
        }
    }
}

/// SimCLR's view: random resized crop (area 0.2-1, aspect 3/4-4/3), flip, colour jitter
/// (0.4, 0.4, 0.4, 0.1) with p = 0.8, grayscale with p = 0.2. Values stay in 0..255.
pub fn simclr_view(img: &[u8], w: usize, h: usize, rng: &mut impl Rng, out: &mut [f32]) {
    let area = (w * h) as f64;
    let (mut cw, mut ch) = (w, h);
    for _ in 0..10 {
        let a = area * rng.random_range(0.2..1.0);
        let ratio = (rng.random_range((0.75f64).ln()..(4.0f64 / 3.0).ln())).exp();
        let tw = (a * ratio).sqrt().round() as usize;
        let th = (a / ratio).sqrt().round() as usize;
        if tw > 0 && th > 0 && tw <= w && th <= h {
            cw = tw;
            ch = th;
            break;
        }
    }
    let x0 = rng.random_range(0..=w - cw);
    let y0 = rng.random_range(0..=h - ch);
    let mut crop = vec![0u8; cw * ch * 3];
    for y in 0..ch {
        let src = ((y0 + y) * w + x0) * 3;
        crop[y * cw * 3..(y + 1) * cw * 3].copy_from_slice(&img[src..src + cw * 3]);
    }
    let spec = PreprocessSpec::bytes(w as u32, h as u32, ResizePolicy::Stretch);
    #[allow(clippy::expect_used)] // crop sizes are checked above, the spec is the run's own
    Preprocessor::new(&spec, cw, ch, PixelFormat::Rgb8)
        .and_then(|mut p| p.run(&crop, None, out))
        .expect("crop sizes are valid by construction");
    if rng.random_bool(0.5) {
        for y in 0..h {
            for x in 0..w / 2 {
                for c in 0..3 {
                    out.swap((y * w + x) * 3 + c, (y * w + w - 1 - x) * 3 + c);
                }
            }
        }
    }
    if rng.random_bool(0.8) {
        jitter(out, rng);
    }
    if rng.random_bool(0.2) {
        for px in out.chunks_exact_mut(3) {
            let g = 0.299 * px[0] + 0.587 * px[1] + 0.114 * px[2];
            px.fill(g);
        }
    }
}

fn jitter(px: &mut [f32], rng: &mut impl Rng) {
    let b = rng.random_range(0.6f32..1.4);
    let c = rng.random_range(0.6f32..1.4);
    let s = rng.random_range(0.6f32..1.4);
    let hue = rng.random_range(-0.1f32..0.1);
    let mean = px.iter().sum::<f32>() / px.len().max(1) as f32;
    for p in px.chunks_exact_mut(3) {
        for v in p.iter_mut() {
            *v = ((*v * b - mean) * c + mean).clamp(0.0, 255.0);
        }
        let g = 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
        for v in p.iter_mut() {
            *v = (g + (*v - g) * s).clamp(0.0, 255.0);
        }
        // hue: rotate the chroma around the grey axis
        let angle = hue * std::f32::consts::TAU;
        let (sin, cos) = angle.sin_cos();
        let k = 1.0 / 3.0f32;
        let sq = k.sqrt();
        let (r, g2, bl) = (p[0], p[1], p[2]);
        let m = |a: f32, b2: f32, c2: f32| {
            (a * (cos + (1.0 - cos) * k)
                + b2 * (k * (1.0 - cos) - sq * sin)
                + c2 * (k * (1.0 - cos) + sq * sin))
                .clamp(0.0, 255.0)
        };
        p[0] = m(r, g2, bl);
        p[1] = m(g2, bl, r);
        p[2] = m(bl, r, g2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn crop_without_padding_or_flip_is_identity_in_distribution() {
        let img: Vec<u8> = (0..4 * 4 * 3).map(|v| v as u8).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut out = vec![0.0; 48];
        // pad 0: only flips are possible
        for _ in 0..10 {
            crop_flip(&img, 4, 4, 0, &mut rng, &mut out);
            let direct = out[0] == img[0] as f32;
            let flipped = out[0] == img[9] as f32;
            assert!(direct || flipped);
        }
        let mut view = vec![0.0; 48];
        simclr_view(&img, 4, 4, &mut rng, &mut view);
        assert!(view.iter().all(|v| (0.0..=255.0).contains(v)));
    }

    #[test]
    fn normalisation_matches_the_spec() {
        let spec = PreprocessSpec::cifar(1);
        let mut out = [0.0; 3];
        normalise_into(&[255.0, 0.0, 127.5], 1, 1, &spec, Layout::Nchw, &mut out);
        assert!((out[0] - (1.0 - 0.4914) / 0.2470).abs() < 1e-5);
        assert!((out[1] - (0.0 - 0.4822) / 0.2435).abs() < 1e-5);
    }

    #[test]
    fn normalisation_writes_the_layout_it_is_given() {
        // two pixels, so that planar and interleaved positions differ
        let spec = PreprocessSpec::cifar(2);
        let pixels = [255.0, 0.0, 127.5, 0.0, 255.0, 63.75];
        let (mut planar, mut interleaved) = ([0.0; 6], [0.0; 6]);
        normalise_into(&pixels, 2, 1, &spec, Layout::Nchw, &mut planar);
        normalise_into(&pixels, 2, 1, &spec, Layout::Nhwc, &mut interleaved);
        for pixel in 0..2 {
            for channel in 0..3 {
                assert_eq!(
                    planar[channel * 2 + pixel],
                    interleaved[pixel * 3 + channel]
                );
            }
        }
        // the second pixel's red in each layout: planar index 1, interleaved index 3
        let red = (0.0 - 0.4914) / 0.2470;
        assert!((planar[1] - red).abs() < 1e-5 && (interleaved[3] - red).abs() < 1e-5);
        assert_ne!(planar[1], planar[3]);
    }
}
