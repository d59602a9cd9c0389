//! The preprocessing spec: how a camera frame or image becomes the encoder's input tensor.
//! It is stored in the calibration artifact so that the edge reproduces exactly what the
//! trainer and the calibration saw.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizePolicy {
    /// Scale so the shorter side matches, then crop the centre (keeps aspect ratio).
    ShorterSideCenterCrop,
    /// Scale both sides independently to the input size.
    Stretch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeFilter {
    Nearest,
    Bilinear,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelOrder {
    Rgb,
    Bgr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    Nchw,
    Nhwc,
}

/// Input size, resizing, channel order, normalisation and tensor layout of an encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSpec {
    pub width: u32,
    pub height: u32,
    pub resize: ResizePolicy,
    pub filter: ResizeFilter,
    pub channel_order: ChannelOrder,
    /// Per-channel mean and std applied to values scaled to [0, 1]: `(v / 255 - mean) / std`.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub layout: Layout,
}

impl PreprocessSpec {
    /// The CIFAR convention: 32x32 RGB, NCHW, CIFAR-10 channel statistics.
    pub fn cifar(size: u32) -> Self {
        Self {
            width: size,
            height: size,
            resize: ResizePolicy::ShorterSideCenterCrop,
            filter: ResizeFilter::Bilinear,
            channel_order: ChannelOrder::Rgb,
            mean: [0.4914, 0.4822, 0.4465],
            std: [0.2470, 0.2435, 0.2616],
            layout: Layout::Nchw,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.width == 0 || self.height == 0 || self.width > 8192 || self.height > 8192 {
            return Err(Error::InvalidArtifact(format!(
                "preprocessing input size {}x{} is out of range",
                self.width, self.height
            )));
        }
        if self.mean.iter().any(|v| !v.is_finite())
            || self.std.iter().any(|v| !v.is_finite() || *v <= 0.0)
        {
            return Err(Error::InvalidArtifact(
                "preprocessing mean/std must be finite with std > 0".into(),
            ));
        }
        Ok(())
    }
}

/// Pixel layouts the preprocessing reads directly, so camera frames need no conversion pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PixelFormat {
    /// 3 bytes per pixel, R G B.
    Rgb8,
    /// 3 bytes per pixel, B G R (OpenCV, GStreamer `BGR`).
    Bgr8,
    /// 1 byte per pixel.
    Gray8,
    /// 4 bytes per 2 pixels, Y0 U Y1 V (V4L2 `YUYV`), BT.601 limited range.
    Yuyv,
}

impl PixelFormat {
    /// Bytes of one row of `width` pixels without padding.
    pub fn row_bytes(self, width: usize) -> usize {
        match self {
            PixelFormat::Rgb8 | PixelFormat::Bgr8 => width * 3,
            PixelFormat::Gray8 => width,
            PixelFormat::Yuyv => width.div_ceil(2) * 4,
        }
    }

    /// Decodes one row into RGB floats in [0, 255].
    #[inline(always)]
    fn decode_row(self, row: &[u8], width: usize, out: &mut [f32]) {
        match self {
            PixelFormat::Rgb8 => {
                for (o, &v) in out[..width * 3].iter_mut().zip(row) {
                    *o = v as f32;
                }
            }
            PixelFormat::Bgr8 => {
                for (o, p) in out[..width * 3]
                    .chunks_exact_mut(3)
                    .zip(row.chunks_exact(3))
                {
                    o[0] = p[2] as f32;
                    o[1] = p[1] as f32;
                    o[2] = p[0] as f32;
                }
            }
            PixelFormat::Gray8 => {
                for (o, &v) in out[..width * 3].chunks_exact_mut(3).zip(row) {
                    o.fill(v as f32);
                }
            }
            PixelFormat::Yuyv => {
                // two pixels per 4-byte group, sharing U and V (the last group may hold
                // one pixel of an odd width)
                let convert = |y: f32, u: f32, v: f32, o: &mut [f32]| {
                    let c = 1.164_383 * (y - 16.0);
                    o[0] = (c + 1.596_027 * v).clamp(0.0, 255.0);
                    o[1] = (c - 0.391_762 * u - 0.812_968 * v).clamp(0.0, 255.0);
                    o[2] = (c + 2.017_232 * u).clamp(0.0, 255.0);
                };
                let pairs = width / 2;
                for (o, g) in out[..pairs * 6]
                    .chunks_exact_mut(6)
                    .zip(row.chunks_exact(4))
                {
                    let (u, v) = (g[1] as f32 - 128.0, g[3] as f32 - 128.0);
                    let (a, b) = o.split_at_mut(3);
                    convert(g[0] as f32, u, v, a);
                    convert(g[2] as f32, u, v, b);
                }
                if width % 2 == 1 {
                    let g = &row[pairs * 4..pairs * 4 + 4];
                    let (u, v) = (g[1] as f32 - 128.0, g[3] as f32 - 128.0);
                    convert(g[0] as f32, u, v, &mut out[pairs * 6..pairs * 6 + 3]);
                }
            }
        }
    }
}

/// Filter taps of one output coordinate along one axis.
#[derive(Debug, Clone)]
struct Axis {
    start: Vec<usize>,
    len: Vec<usize>,
    /// `taps` weights per output coordinate (zero-padded).
    weights: Vec<f32>,
    taps: usize,
}

impl Axis {
    /// Output coordinate `o` samples the source around `(o + offset + 0.5) / scale`.
    /// Bilinear uses a triangle filter widened by the downscale factor (antialiased, as
    /// PIL's `resize(..., BILINEAR)`); nearest takes the pixel under the centre.
    fn new(out: usize, src: usize, scale: f64, offset: f64, filter: ResizeFilter) -> Self {
        let support = match filter {
            ResizeFilter::Bilinear => (1.0 / scale).max(1.0),
            ResizeFilter::Nearest => 0.5,
        };
        let taps = match filter {
            ResizeFilter::Bilinear => (2.0 * support).ceil() as usize + 2,
            ResizeFilter::Nearest => 1,
        };
        let mut axis = Axis {
            start: Vec::with_capacity(out),
            len: Vec::with_capacity(out),
            weights: vec![0.0; out * taps],
            taps,
        };
        for o in 0..out {
            let centre = (o as f64 + offset + 0.5) / scale;
            match filter {
                ResizeFilter::Nearest => {
                    let i = (centre.floor().max(0.0) as usize).min(src - 1);
                    axis.start.push(i);
                    axis.len.push(1);
                    axis.weights[o * taps] = 1.0;
                }
                ResizeFilter::Bilinear => {
                    let lo = ((centre - support).floor().max(0.0) as usize).min(src - 1);
                    let hi = ((centre + support).ceil() as usize).clamp(lo + 1, src);
                    let mut w: Vec<f64> = (lo..hi)
                        .map(|i| (1.0 - ((i as f64 + 0.5 - centre) / support).abs()).max(0.0))
                        .collect();
                    let mut total: f64 = w.iter().sum();
                    if total <= 0.0 {
                        // centre outside the image: take the nearest edge pixel
                        w.iter_mut().for_each(|v| *v = 0.0);
                        let edge = if centre < lo as f64 { 0 } else { w.len() - 1 };
                        w[edge] = 1.0;
                        total = 1.0;
                    }
                    // trim zero weights at both ends
                    let first = w.iter().position(|&v| v > 0.0).unwrap_or(0);
                    let last = w.iter().rposition(|&v| v > 0.0).unwrap_or(0);
                    let n = (last + 1 - first).min(taps);
                    axis.start.push(lo + first);
                    axis.len.push(n);
                    for t in 0..n {
                        axis.weights[o * taps + t] = (w[first + t] / total) as f32;
                    }
                }
            }
        }
        axis
    }

    fn weights(&self, o: usize) -> (usize, &[f32]) {
        (
            self.start[o],
            &self.weights[o * self.taps..o * self.taps + self.len[o]],
        )
    }
}

/// Preprocessing for one source geometry, planned once and then applied to every frame
/// without allocating: resize and crop, channel order, normalisation and layout in one pass.
/// Trainer, calibration and edge all go through this, so they feed the encoder identical
/// tensors.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    spec: PreprocessSpec,
    src_width: usize,
    src_height: usize,
    format: PixelFormat,
    xs: Axis,
    ys: Axis,
    /// Source columns the horizontal filter reads (`col_lo` even for YUYV pairs).
    col_lo: usize,
    col_hi: usize,
    /// One decoded source row (RGB floats), and the output rows being accumulated
    /// vertically (at source width, filtered horizontally once complete).
    row: Vec<f32>,
    acc: Vec<f32>,
}

impl Preprocessor {
    pub fn new(
        spec: &PreprocessSpec,
        src_width: usize,
        src_height: usize,
        format: PixelFormat,
    ) -> Result<Self> {
        spec.validate()?;
        if src_width == 0 || src_height == 0 || src_width > 1 << 15 || src_height > 1 << 15 {
            return Err(Error::param(
                "source size",
                format!("{src_width}x{src_height} is out of range"),
            ));
        }
        let (w, h) = (spec.width as usize, spec.height as usize);
        let (sx, sy, ox, oy) = match spec.resize {
            ResizePolicy::Stretch => (
                w as f64 / src_width as f64,
                h as f64 / src_height as f64,
                0.0,
                0.0,
            ),
            ResizePolicy::ShorterSideCenterCrop => {
                let s = (w as f64 / src_width as f64).max(h as f64 / src_height as f64);
                (
                    s,
                    s,
                    (src_width as f64 * s - w as f64) / 2.0,
                    (src_height as f64 * s - h as f64) / 2.0,
                )
            }
        };
        let xs = Axis::new(w, src_width, sx, ox, spec.filter);
        let ys = Axis::new(h, src_height, sy, oy, spec.filter);
        let mut col_lo = (0..w).map(|x| xs.start[x]).min().unwrap_or(0);
        let mut col_hi = (0..w)
            .map(|x| xs.start[x] + xs.len[x])
            .max()
            .unwrap_or(src_width);
        if format == PixelFormat::Yuyv {
            col_lo &= !1;
            col_hi = (col_hi + 1).min(src_width);
        }
        Ok(Self {
            spec: spec.clone(),
            src_width,
            src_height,
            format,
            xs,
            ys,
            col_lo,
            col_hi,
            row: vec![0.0; (col_hi - col_lo) * 3],
            acc: vec![0.0; h * (col_hi - col_lo) * 3],
        })
    }

    pub fn spec(&self) -> &PreprocessSpec {
        &self.spec
    }

    /// The source geometry and format this plan is for.
    pub fn source(&self) -> (usize, usize, PixelFormat) {
        (self.src_width, self.src_height, self.format)
    }

    /// Number of `f32` values in the output tensor (`3 x H x W`).
    pub fn tensor_len(&self) -> usize {
        3 * self.spec.width as usize * self.spec.height as usize
    }

    /// Bytes a frame must have with rows of `stride` bytes (`None`: tightly packed).
    pub fn frame_bytes(&self, stride: Option<usize>) -> usize {
        let row = self.format.row_bytes(self.src_width);
        stride.unwrap_or(row) * (self.src_height - 1) + row
    }

    /// Preprocesses one frame into `out` (`tensor_len()` values). A frame of the wrong size
    /// is a typed error, never a panic.
    pub fn run(&mut self, frame: &[u8], stride: Option<usize>, out: &mut [f32]) -> Result<()> {
        let row_bytes = self.format.row_bytes(self.src_width);
        let stride = stride.unwrap_or(row_bytes);
        if stride < row_bytes {
            return Err(Error::param(
                "frame stride",
                format!("{stride} < row size {row_bytes}"),
            ));
        }
        let need = self.frame_bytes(Some(stride));
        if frame.len() < need {
            return Err(Error::param(
                "frame",
                format!(
                    "{} bytes, a {}x{} {:?} frame needs {need}",
                    frame.len(),
                    self.src_width,
                    self.src_height,
                    self.format
                ),
            ));
        }
        if out.len() != self.tensor_len() {
            return Err(Error::param(
                "output tensor",
                format!("{} values, expected {}", out.len(), self.tensor_len()),
            ));
        }
        let (w, h) = (self.spec.width as usize, self.spec.height as usize);
        let order: [usize; 3] = match self.spec.channel_order {
            ChannelOrder::Rgb => [0, 1, 2],
            ChannelOrder::Bgr => [2, 1, 0],
        };
        let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * self.spec.std[order[c]]));
        let shift: [f32; 3] =
            std::array::from_fn(|c| self.spec.mean[order[c]] / self.spec.std[order[c]]);
        let plan = Plan {
            format: self.format,
            col_lo: self.col_lo,
            cols: self.col_hi - self.col_lo,
            stride,
            out_w: w,
            out_h: h,
            order,
            scale,
            shift,
            layout: self.spec.layout,
        };
        resample(
            &plan,
            frame,
            &self.xs,
            &self.ys,
            &mut self.row,
            &mut self.acc,
            out,
        );
        Ok(())
    }
}

/// What one frame's resampling needs besides the filter taps and buffers.
struct Plan {
    format: PixelFormat,
    col_lo: usize,
    cols: usize,
    stride: usize,
    out_w: usize,
    out_h: usize,
    order: [usize; 3],
    scale: [f32; 3],
    shift: [f32; 3],
    layout: Layout,
}

/// The per-frame work: each source row is decoded once (only the columns the filter reads)
/// and added, weighted, into every output row whose vertical window holds it (contiguous,
/// vectorised); each finished output row is then filtered horizontally. Compiled twice on
/// x86_64 (baseline and AVX2 + FMA, picked at run time) because the baseline's SSE2 leaves
/// most of the speed unused; aarch64's NEON is always there.
#[multiversion::multiversion(targets("x86_64+avx2+fma"))]
fn resample(
    plan: &Plan,
    frame: &[u8],
    xs: &Axis,
    ys: &Axis,
    row: &mut [f32],
    acc: &mut [f32],
    out: &mut [f32],
) {
    let (w, h) = (plan.out_w, plan.out_h);
    let plane = w * h;
    let (col_lo, cols) = (plan.col_lo, plan.cols);
    let first_byte = plan.format.row_bytes(col_lo);
    let span = plan.format.row_bytes(cols);
    let rows_lo = ys.start[0];
    let rows_hi = (0..h).map(|y| ys.start[y] + ys.len[y]).max().unwrap_or(0);
    let line = cols * 3;
    acc.fill(0.0);
    let mut y_first = 0;
    for r in rows_lo..rows_hi {
        while y_first < h && ys.start[y_first] + ys.len[y_first] <= r {
            y_first += 1;
        }
        if y_first == h || ys.start[y_first] > r {
            continue;
        }
        let at = r * plan.stride + first_byte;
        plan.format.decode_row(&frame[at..at + span], cols, row);
        let mut y = y_first;
        while y < h && ys.start[y] <= r {
            let (y0, wy) = ys.weights(y);
            if let Some(&wt) = wy.get(r - y0) {
                for (a, &v) in acc[y * line..(y + 1) * line].iter_mut().zip(&row[..line]) {
                    *a += wt * v;
                }
            }
            y += 1;
        }
    }
    for y in 0..h {
        let acc = &acc[y * line..(y + 1) * line];
        for x in 0..w {
            let (x0, wx) = xs.weights(x);
            let mut px = [0f32; 3];
            for (t, &wt) in wx.iter().enumerate() {
                let p = &acc[(x0 - col_lo + t) * 3..(x0 - col_lo + t) * 3 + 3];
                px[0] += wt * p[0];
                px[1] += wt * p[1];
                px[2] += wt * p[2];
            }
            for c in 0..3 {
                let v = px[plan.order[c]] * plan.scale[c] - plan.shift[c];
                match plan.layout {
                    Layout::Nchw => out[c * plane + y * w + x] = v,
                    Layout::Nhwc => out[(y * w + x) * 3 + c] = v,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(w: u32, h: u32) -> PreprocessSpec {
        PreprocessSpec {
            mean: [0.0; 3],
            std: [1.0 / 255.0; 3],
            ..PreprocessSpec::cifar(w.max(h))
        }
        .with_size(w, h)
    }

    impl PreprocessSpec {
        fn with_size(mut self, w: u32, h: u32) -> Self {
            self.width = w;
            self.height = h;
            self
        }
    }

    #[test]
    fn same_size_is_the_identity_in_every_layout_and_order() {
        let img: Vec<u8> = (0..4 * 3 * 3).map(|v| (v * 7 % 256) as u8).collect();
        let mut p = Preprocessor::new(&spec(4, 3), 4, 3, PixelFormat::Rgb8).unwrap();
        let mut out = vec![0.0; p.tensor_len()];
        p.run(&img, None, &mut out).unwrap();
        for y in 0..3 {
            for x in 0..4 {
                for c in 0..3 {
                    assert_eq!(out[c * 12 + y * 4 + x], img[(y * 4 + x) * 3 + c] as f32);
                }
            }
        }
        let mut bgr = spec(4, 3);
        bgr.channel_order = ChannelOrder::Bgr;
        bgr.layout = Layout::Nhwc;
        let mut p = Preprocessor::new(&bgr, 4, 3, PixelFormat::Rgb8).unwrap();
        p.run(&img, None, &mut out).unwrap();
        assert_eq!(out[0], img[2] as f32);
        assert_eq!(out[2], img[0] as f32);
    }

    #[test]
    fn downscale_averages_and_crops_the_centre() {
        // 8x4 image: left half 0, right half 200 -> centre crop 4x4 then down to 2x2
        let mut img = vec![0u8; 8 * 4 * 3];
        for y in 0..4 {
            for x in 4..8 {
                img[(y * 8 + x) * 3..(y * 8 + x) * 3 + 3].fill(200);
            }
        }
        let mut p = Preprocessor::new(&spec(2, 2), 8, 4, PixelFormat::Rgb8).unwrap();
        let mut out = vec![0.0; 12];
        p.run(&img, None, &mut out).unwrap();
        // the crop is columns 2..6: its left output pixel averages mostly dark columns
        assert!(out[0] < 100.0 && out[1] > 100.0, "{out:?}");
        assert!((out[0] + out[1] - 200.0).abs() < 1e-3, "symmetric: {out:?}");
        // constant images stay constant at any scale
        let flat = vec![77u8; 37 * 23 * 3];
        let mut p = Preprocessor::new(&spec(5, 5), 37, 23, PixelFormat::Rgb8).unwrap();
        let mut out = vec![0.0; 75];
        p.run(&flat, None, &mut out).unwrap();
        assert!(out.iter().all(|v| (v - 77.0).abs() < 1e-3), "{out:?}");
    }

    #[test]
    fn formats_agree_and_bad_frames_are_errors() {
        let gray: Vec<u8> = (0..16).map(|v| v * 10).collect();
        let rgb: Vec<u8> = gray.iter().flat_map(|&v| [v, v, v]).collect();
        let mut a = Preprocessor::new(&spec(2, 2), 4, 4, PixelFormat::Gray8).unwrap();
        let mut b = Preprocessor::new(&spec(2, 2), 4, 4, PixelFormat::Rgb8).unwrap();
        let (mut oa, mut ob) = (vec![0.0; 12], vec![0.0; 12]);
        a.run(&gray, None, &mut oa).unwrap();
        b.run(&rgb, None, &mut ob).unwrap();
        assert_eq!(oa, ob);
        assert!(b.run(&rgb[..20], None, &mut ob).is_err());
        assert!(b.run(&rgb, None, &mut ob[..5]).is_err());
        // YUYV grey (U = V = 128) decodes to grey
        let yuyv = [16u8, 128, 235, 128];
        let mut row = [0f32; 6];
        PixelFormat::Yuyv.decode_row(&yuyv, 2, &mut row);
        assert!(row[..3].iter().all(|v| v.abs() < 0.5));
        assert!(row[3..].iter().all(|v| (v - 255.0).abs() < 0.5));
    }
}
