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
/// Metadata key under which an ONNX encoder carries its preprocessing spec as JSON (the
/// writer puts it there, the runtime reads it).
pub const ONNX_METADATA_KEY: &str = "oodmon.preprocessing";

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
    /// When set, every input is first brought to `detail_size` x `detail_size` RGB bytes
    /// (with this spec's resize policy, antialiased bilinear, rounded as a stored image
    /// is), and only then to the input size: a camera frame then carries no more detail
    /// than the training images had (CIFAR's 32x32 upscaled to the input, say), so that
    /// frames and training images take the same path to the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail_size: Option<u32>,
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
            detail_size: None,
        }
    }

    /// ImageNet-trained backbones: the image's shorter side brought to `size`, centre crop,
    /// ImageNet's channel mean and standard deviation.
    pub fn imagenet(size: u32) -> Self {
        Self {
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            ..Self::cifar(size)
        }
    }

    /// A pure resize to `width` x `height` RGB values in 0..255, pixel-interleaved (what a
    /// stored 8-bit image holds), with antialiased bilinear filtering.
    pub fn bytes(width: u32, height: u32, resize: ResizePolicy) -> Self {
        Self {
            width,
            height,
            resize,
            filter: ResizeFilter::Bilinear,
            channel_order: ChannelOrder::Rgb,
            mean: [0.0; 3],
            std: [1.0 / 255.0; 3],
            layout: Layout::Nhwc,
            detail_size: None,
        }
    }

    /// The spec for images this spec has already resized (a loaded data set's images, at
    /// the input size): the same resize, normalisation and layout, and no detail stage,
    /// which they have been through once.
    pub fn for_resized(&self) -> Self {
        Self {
            detail_size: None,
            ..self.clone()
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.width == 0 || self.height == 0 || self.width > 8192 || self.height > 8192 {
            return Err(Error::InvalidArtifact(format!(
                "preprocessing input size {}x{} is out of range",
                self.width, self.height
            )));
        }
        if self.detail_size.is_some_and(|d| d == 0 || d > 8192) {
            return Err(Error::InvalidArtifact(format!(
                "preprocessing detail size {:?} is out of range",
                self.detail_size
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

    /// Colour components the resampling keeps per pixel: R G B, Y U V, or grey.
    fn components(self) -> usize {
        match self {
            PixelFormat::Gray8 => 1,
            _ => 3,
        }
    }

    /// Where component `comp` of pixel `rel` (counted from an even column for YUYV) sits
    /// among a row's bytes.
    fn lane(self, rel: usize, comp: usize) -> usize {
        match self {
            PixelFormat::Rgb8 => 3 * rel + comp,
            PixelFormat::Bgr8 => 3 * rel + 2 - comp,
            PixelFormat::Gray8 => rel,
            // Y0 U Y1 V: both pixels of a pair share its U and V
            PixelFormat::Yuyv => match comp {
                0 => 2 * rel,
                1 => 4 * (rel / 2) + 1,
                _ => 4 * (rel / 2) + 3,
            },
        }
    }

    /// Resampled components to RGB in [0, 255]. Resampling is linear, so averaging Y, U and
    /// V first and converting once per output pixel equals converting every source pixel
    /// first, except that out-of-gamut colours are clamped after averaging, not before.
    #[inline(always)]
    fn to_rgb(self, c: [f32; 3]) -> [f32; 3] {
        match self {
            PixelFormat::Rgb8 | PixelFormat::Bgr8 => c,
            PixelFormat::Gray8 => [c[0]; 3],
            PixelFormat::Yuyv => {
                // BT.601 limited range
                let (y, u, v) = (1.164_383 * (c[0] - 16.0), c[1] - 128.0, c[2] - 128.0);
                [
                    (y + 1.596_027 * v).clamp(0.0, 255.0),
                    (y - 0.391_762 * u - 0.812_968 * v).clamp(0.0, 255.0),
                    (y + 2.017_232 * u).clamp(0.0, 255.0),
                ]
            }
        }
    }
}

/// Packed RGB bytes of an image in any [`PixelFormat`], for tools that work on RGB (the
/// camera corruptions); rows `stride` bytes apart when given. YUYV is converted per pixel
/// pair (BT.601 limited range), as the preprocessing does.
pub fn to_rgb8(
    data: &[u8],
    width: usize,
    height: usize,
    stride: Option<usize>,
    format: PixelFormat,
    out: &mut Vec<u8>,
) -> Result<()> {
    let row = format.row_bytes(width);
    let stride = stride.unwrap_or(row);
    if width == 0
        || height == 0
        || stride < row
        || data.len() < stride * (height - 1) + row
        || (format == PixelFormat::Yuyv && width % 2 == 1)
    {
        return Err(Error::InvalidParameter {
            what: "image",
            reason: format!(
                "{} bytes are not a {width}x{height} {format:?} image (stride {stride})",
                data.len()
            ),
        });
    }
    out.clear();
    out.reserve(width * height * 3);
    for y in 0..height {
        let r = &data[y * stride..y * stride + row];
        match format {
            PixelFormat::Rgb8 => out.extend_from_slice(r),
            PixelFormat::Bgr8 => r
                .chunks_exact(3)
                .for_each(|p| out.extend([p[2], p[1], p[0]])),
            PixelFormat::Gray8 => r.iter().for_each(|&v| out.extend([v, v, v])),
            PixelFormat::Yuyv => {
                for q in r.chunks_exact(4) {
                    for yv in [q[0], q[2]] {
                        let c = format.to_rgb([yv as f32, q[1] as f32, q[3] as f32]);
                        out.extend(c.map(|v| v.round() as u8));
                    }
                }
            }
        }
    }
    Ok(())
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

/// The horizontal filter over a row of vertically resampled bytes: for every output pixel
/// and colour component, weights over one fixed-length run of the row's lanes (zero where
/// another component's bytes sit). Every format then filters with the same dense,
/// vectorisable dot products, however its components interleave.
#[derive(Debug, Clone)]
struct Band {
    /// First lane of each output pixel's run.
    start: Vec<usize>,
    /// Lanes per run.
    len: usize,
    comps: usize,
    /// `len` weights per output pixel and component.
    weights: Vec<f32>,
}

impl Band {
    /// `col_lo` is the first source column of the row (even for YUYV), `lanes` its length
    /// in bytes.
    fn new(xs: &Axis, format: PixelFormat, col_lo: usize, lanes: usize) -> Self {
        let out = xs.start.len();
        let comps = format.components();
        // the lanes each output pixel reads, first to last
        let spans: Vec<(usize, usize)> = (0..out)
            .map(|x| {
                let (x0, wx) = xs.weights(x);
                let lanes = (0..wx.len())
                    .flat_map(|t| (0..comps).map(move |c| format.lane(x0 - col_lo + t, c)));
                let lo = lanes.clone().min().unwrap_or(0);
                (lo, lanes.max().map_or(lo, |hi| hi + 1))
            })
            .collect();
        // runs a multiple of 8 lanes long (whole vectors), within the row
        let longest = spans.iter().map(|(lo, hi)| hi - lo).max().unwrap_or(1);
        let len = longest.next_multiple_of(8).min(lanes);
        let mut band = Band {
            start: Vec::with_capacity(out),
            len,
            comps,
            weights: vec![0.0; out * comps * len],
        };
        for (x, &(lo, _)) in spans.iter().enumerate() {
            let start = lo.min(lanes - len);
            band.start.push(start);
            let (x0, wx) = xs.weights(x);
            for (t, &wt) in wx.iter().enumerate() {
                for c in 0..comps {
                    let lane = format.lane(x0 - col_lo + t, c);
                    band.weights[(x * comps + c) * len + lane - start] += wt;
                }
            }
        }
        band
    }

    fn weights(&self, x: usize, comp: usize) -> &[f32] {
        let at = (x * self.comps + comp) * self.len;
        &self.weights[at..at + self.len]
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
    ys: Axis,
    band: Band,
    plan: Plan,
    /// One output row filtered vertically, still in the source's byte layout.
    row: Vec<f32>,
    /// The first stage when the spec has a detail size: source to detail-size bytes.
    detail: Option<Box<DetailStage>>,
}

/// Source to `detail_size` x `detail_size` RGB bytes, with buffers for one frame.
#[derive(Debug, Clone)]
struct DetailStage {
    first: Preprocessor,
    values: Vec<f32>,
    bytes: Vec<u8>,
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
        if let Some(d) = spec.detail_size {
            // a stored image of the detail size
            let to_detail = PreprocessSpec::bytes(d, d, spec.resize);
            let first = Preprocessor::new(&to_detail, src_width, src_height, format)?;
            let second = PreprocessSpec {
                detail_size: None,
                ..spec.clone()
            };
            let d = d as usize;
            let mut p = Preprocessor::new(&second, d, d, PixelFormat::Rgb8)?;
            p.spec = spec.clone();
            (p.src_width, p.src_height, p.format) = (src_width, src_height, format);
            p.detail = Some(Box::new(DetailStage {
                first,
                values: vec![0.0; 3 * d * d],
                bytes: vec![0; 3 * d * d],
            }));
            return Ok(p);
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
        let lanes = format.row_bytes(col_hi - col_lo);
        let band = Band::new(&xs, format, col_lo, lanes);
        let order: [usize; 3] = match spec.channel_order {
            ChannelOrder::Rgb => [0, 1, 2],
            ChannelOrder::Bgr => [2, 1, 0],
        };
        let plan = Plan {
            format,
            first_byte: format.row_bytes(col_lo),
            out_w: w,
            out_h: h,
            order,
            scale: std::array::from_fn(|c| 1.0 / (255.0 * spec.std[order[c]])),
            shift: std::array::from_fn(|c| spec.mean[order[c]] / spec.std[order[c]]),
            layout: spec.layout,
        };
        Ok(Self {
            spec: spec.clone(),
            src_width,
            src_height,
            format,
            ys,
            band,
            plan,
            row: vec![0.0; lanes],
            detail: None,
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
        let (frame, stride) = match &mut self.detail {
            Some(stage) => {
                stage.first.run(frame, Some(stride), &mut stage.values)?;
                for (b, v) in stage.bytes.iter_mut().zip(&stage.values) {
                    *b = v.round().clamp(0.0, 255.0) as u8;
                }
                let d = stage.first.spec.width as usize;
                (&stage.bytes[..], 3 * d)
            }
            None => (frame, stride),
        };
        resample(
            &self.plan,
            stride,
            frame,
            &self.ys,
            &self.band,
            &mut self.row,
            out,
        );
        Ok(())
    }
}

/// What every frame's resampling needs besides the filter taps, the buffers and the row
/// stride, worked out once per source geometry.
#[derive(Debug, Clone)]
struct Plan {
    format: PixelFormat,
    /// Offset in a row of the first byte the horizontal filter reads.
    first_byte: usize,
    out_w: usize,
    out_h: usize,
    order: [usize; 3],
    scale: [f32; 3],
    shift: [f32; 3],
    layout: Layout,
}

/// Lanes of a row filtered vertically at once, held in registers across the taps (eight
/// 256-bit vectors).
const BLOCK: usize = 64;

/// Source rows summed per pass over a row's lanes.
const TAPS: usize = 16;

/// The per-frame work, one output row at a time: its vertical window of source rows is
/// summed, weighted, straight from the frame's bytes (only the columns the filter reads,
/// in the source's own byte layout, `BLOCK` lanes at a time in registers, whatever the pixel
/// format); the result is filtered horizontally by dot products over those lanes, and only
/// the output pixels are converted to RGB and normalised. Compiled twice on x86_64
/// (baseline and AVX2 + FMA, picked at run time) because the baseline's SSE2 leaves most of
/// the speed unused; aarch64's NEON is always there.
#[multiversion::multiversion(targets("x86_64+avx2+fma"))]
fn resample(
    plan: &Plan,
    stride: usize,
    frame: &[u8],
    ys: &Axis,
    band: &Band,
    row: &mut [f32],
    out: &mut [f32],
) {
    let (w, h) = (plan.out_w, plan.out_h);
    let plane = w * h;
    let line = row.len();
    let whole = line / BLOCK * BLOCK;
    let comps = band.comps;
    // fused multiply-add where the CPU has it (a library call, far slower, where not)
    let fused =
        multiversion::target::target_cfg_f!(any(target_feature = "fma", target_arch = "aarch64"));
    for y in 0..h {
        let (y0, wy) = ys.weights(y);
        let window = &frame[y0 * stride + plan.first_byte..];
        if line >= BLOCK {
            // TAPS source rows at a time, streamed left to right (prefetch-friendly for
            // frames that arrive uncached), with the partial sums kept in `row` between
            // groups and in registers within one
            for (g, group) in wy.chunks(TAPS).enumerate() {
                let rows = &window[g * TAPS * stride..];
                for c0 in (0..whole).step_by(BLOCK) {
                    let mut sums = [0f32; BLOCK];
                    if g > 0 {
                        sums.copy_from_slice(&row[c0..c0 + BLOCK]);
                    }
                    accumulate(rows, stride, c0, group, fused, &mut sums);
                    row[c0..c0 + BLOCK].copy_from_slice(&sums);
                }
                if whole < line {
                    // the last block ends at the row's end; add only the lanes past `whole`
                    let c0 = line - BLOCK;
                    let mut sums = [0f32; BLOCK];
                    accumulate(rows, stride, c0, group, fused, &mut sums);
                    for (o, s) in row[whole..].iter_mut().zip(&sums[whole - c0..]) {
                        *o = if g > 0 { *o + s } else { *s };
                    }
                }
            }
        } else {
            // rows shorter than a block
            for (c, o) in row.iter_mut().enumerate() {
                *o = wy
                    .iter()
                    .enumerate()
                    .map(|(t, &wt)| wt * window[t * stride + c] as f32)
                    .sum();
            }
        }
        for x in 0..w {
            let run = &row[band.start[x]..band.start[x] + band.len];
            let mut c = [0f32; 3];
            for (k, v) in c.iter_mut().enumerate().take(comps) {
                *v = dot(band.weights(x, k), run);
            }
            let rgb = plan.format.to_rgb(c);
            for c in 0..3 {
                let v = rgb[plan.order[c]] * plan.scale[c] - plan.shift[c];
                match plan.layout {
                    Layout::Nchw => out[c * plane + y * w + x] = v,
                    Layout::Nhwc => out[(y * w + x) * 3 + c] = v,
                }
            }
        }
    }
}

/// Adds `taps` weighted source rows (`stride` bytes apart from the start of `rows`) over
/// lanes `c0..c0 + BLOCK` into `sums`.
#[inline(always)]
fn accumulate(
    rows: &[u8],
    stride: usize,
    c0: usize,
    taps: &[f32],
    fused: bool,
    sums: &mut [f32; BLOCK],
) {
    for (t, &wt) in taps.iter().enumerate() {
        #[allow(clippy::expect_used)] // a slice of exactly BLOCK bytes
        let bytes: &[u8; BLOCK] = rows[t * stride + c0..][..BLOCK]
            .try_into()
            .expect("BLOCK bytes");
        for (s, &b) in sums.iter_mut().zip(bytes) {
            if fused {
                *s = wt.mul_add(b as f32, *s);
            } else {
                *s += wt * b as f32;
            }
        }
    }
}

/// A dot product in eight independent partial sums, so it vectorises (a single running sum
/// would fix the order of the additions).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            sums[i] += x[i] * y[i];
        }
    }
    sums.iter().sum::<f32>() + tail
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

    /// The detail stage is exactly: the frame to detail-size RGB bytes (same policy,
    /// rounded), then those bytes to the input; and a source already of the detail size
    /// (a CIFAR image) is unchanged by it.
    #[test]
    fn detail_size_reduces_first_then_resizes() {
        let (sw, sh) = (97usize, 61usize);
        let frame: Vec<u8> = (0..sw * sh * 3).map(|i| ((i * 37) % 251) as u8).collect();
        let mut spec = PreprocessSpec::imagenet(24);
        spec.detail_size = Some(8);
        let mut two = Preprocessor::new(&spec, sw, sh, PixelFormat::Rgb8).unwrap();
        assert_eq!(two.source(), (sw, sh, PixelFormat::Rgb8));
        let mut out = vec![0f32; two.tensor_len()];
        two.run(&frame, None, &mut out).unwrap();
        // by hand: 8x8 bytes first, then to the input
        let first_spec = PreprocessSpec {
            mean: [0.0; 3],
            std: [1.0 / 255.0; 3],
            layout: Layout::Nhwc,
            ..PreprocessSpec::imagenet(8)
        };
        let mut first = Preprocessor::new(&first_spec, sw, sh, PixelFormat::Rgb8).unwrap();
        let mut small = vec![0f32; first.tensor_len()];
        first.run(&frame, None, &mut small).unwrap();
        let bytes: Vec<u8> = small
            .iter()
            .map(|v| v.round().clamp(0.0, 255.0) as u8)
            .collect();
        let mut second =
            Preprocessor::new(&PreprocessSpec::imagenet(24), 8, 8, PixelFormat::Rgb8).unwrap();
        let mut want = vec![0f32; second.tensor_len()];
        second.run(&bytes, None, &mut want).unwrap();
        assert_eq!(out, want);
        // a wrong-sized frame is still refused against the real source size
        assert!(two.run(&frame[..10], None, &mut out).is_err());
        // a source of the detail size: the same tensor as without the stage
        let mut direct =
            Preprocessor::new(&PreprocessSpec::imagenet(24), 8, 8, PixelFormat::Rgb8).unwrap();
        let mut staged = Preprocessor::new(&spec, 8, 8, PixelFormat::Rgb8).unwrap();
        let (mut a, mut b) = (vec![0f32; 3 * 24 * 24], vec![0f32; 3 * 24 * 24]);
        direct.run(&bytes, None, &mut a).unwrap();
        staged.run(&bytes, None, &mut b).unwrap();
        assert_eq!(a, b);
        // old specs (no field) read as no detail stage; the field round-trips
        let json = serde_json::to_string(&PreprocessSpec::imagenet(24)).unwrap();
        assert!(!json.contains("detail_size"));
        let back: PreprocessSpec =
            serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
        assert_eq!(back.detail_size, Some(8));
        let mut bad = spec.clone();
        bad.detail_size = Some(0);
        assert!(bad.validate().is_err());
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
        // equal up to the order of the additions
        assert!(
            oa.iter().zip(&ob).all(|(a, b)| (a - b).abs() < 1e-4),
            "{oa:?} {ob:?}"
        );
        assert!(b.run(&rgb[..20], None, &mut ob).is_err());
        assert!(b.run(&rgb, None, &mut ob[..5]).is_err());
        // YUYV grey (U = V = 128) decodes to grey
        let yuyv = [16u8, 128, 235, 128];
        let mut p = Preprocessor::new(&spec(2, 1), 2, 1, PixelFormat::Yuyv).unwrap();
        let mut row = [0f32; 6];
        p.run(&yuyv, None, &mut row).unwrap();
        // NCHW: [R0 R1 G0 G1 B0 B1]
        assert!([0, 2, 4].iter().all(|&i| row[i].abs() < 0.5), "{row:?}");
        assert!(
            [1, 3, 5].iter().all(|&i| (row[i] - 255.0).abs() < 0.5),
            "{row:?}"
        );
    }

    /// YUYV resampled in its own components and converted per output pixel matches the
    /// frame converted per source pixel and then resampled as RGB, for in-gamut colours, at
    /// odd and even widths, both resize policies and both filters.
    #[test]
    fn yuyv_resampled_before_conversion_matches_rgb_resampled_after_it() {
        let rgb_of = |y: f32, u: f32, v: f32| {
            let (y, u, v) = (1.164_383 * (y - 16.0), u - 128.0, v - 128.0);
            [
                y + 1.596_027 * v,
                y - 0.391_762 * u - 0.812_968 * v,
                y + 2.017_232 * u,
            ]
        };
        for (w, h) in [(64usize, 48usize), (37, 29), (9, 40)] {
            let pairs = w.div_ceil(2);
            let mut yuyv = Vec::new();
            let mut rgb = Vec::new();
            for r in 0..h {
                for p in 0..pairs {
                    // Y in 60..180, U and V within 128 +- 18: every pixel in gamut
                    let y0 = (60 + (r * 7 + p * 13) % 120) as u8;
                    let y1 = (60 + (r * 11 + p * 5 + 40) % 120) as u8;
                    let u = (110 + (r * 3 + p * 7) % 36) as u8;
                    let v = (110 + (r * 5 + p * 2) % 36) as u8;
                    yuyv.extend([y0, u, y1, v]);
                    for (x, yy) in [(2 * p, y0), (2 * p + 1, y1)] {
                        if x < w {
                            let c = rgb_of(yy as f32, u as f32, v as f32);
                            assert!(c.iter().all(|c| (0.0..=255.0).contains(c)));
                            // keep the exact conversion: compare in float RGB, not bytes
                            rgb.push(c);
                        }
                    }
                }
            }
            for resize in [ResizePolicy::ShorterSideCenterCrop, ResizePolicy::Stretch] {
                for filter in [ResizeFilter::Bilinear, ResizeFilter::Nearest] {
                    let mut sp = spec(8, 6);
                    sp.resize = resize;
                    sp.filter = filter;
                    let mut py = Preprocessor::new(&sp, w, h, PixelFormat::Yuyv).unwrap();
                    let mut out_yuyv = vec![0.0; py.tensor_len()];
                    py.run(&yuyv, None, &mut out_yuyv).unwrap();
                    // the RGB route, resampled by hand with the same taps in float
                    let mut expect = vec![0f32; py.tensor_len()];
                    let (xs, ys, col_lo) = {
                        let p = Preprocessor::new(&sp, w, h, PixelFormat::Rgb8).unwrap();
                        (p.band.clone(), p.ys.clone(), p.plan.first_byte / 3)
                    };
                    for oy in 0..6 {
                        let (y0, wy) = ys.weights(oy);
                        for ox in 0..8 {
                            for c in 0..3 {
                                let run = xs.weights(ox, c);
                                let mut acc = 0f32;
                                for (ty, &wty) in wy.iter().enumerate() {
                                    for (l, &wl) in run.iter().enumerate() {
                                        let lane = xs.start[ox] + l;
                                        if wl != 0.0 {
                                            let px = &rgb[(y0 + ty) * w + col_lo + lane / 3];
                                            acc += wty * wl * px[lane % 3];
                                        }
                                    }
                                }
                                expect[c * 48 + oy * 8 + ox] = acc;
                            }
                        }
                    }
                    for (a, b) in out_yuyv.iter().zip(&expect) {
                        assert!(
                            (a - b).abs() < 1e-2,
                            "{w}x{h} {resize:?} {filter:?}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }
}
