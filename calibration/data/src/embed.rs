//! Embedding image data sets through the deployed encoder (tract) with the shared
//! preprocessing: every image goes from its stored size and format straight into the
//! encoder's input tensor, exactly as a camera frame does on the edge.

use oodmon_calibration::preprocess::{PixelFormat, PreprocessSpec, Preprocessor};
use oodmon_calibration::quality::{ImageQuality, QualityMeter};
use oodmon_calibration::Embeddings;
use oodmon_runtime::Encoder;

use crate::datasets::{visit, DataError, DataSpec, Dataset, Split};

/// Embeddings, labels and class names of one split of a data set.
pub struct Embedded {
    pub embeddings: Embeddings,
    pub labels: Vec<i64>,
    pub class_names: Vec<String>,
}

/// Hands each image of a split to `f` as the encoder's input tensor (`3 x H x W`, laid out
/// as the spec says), computed by the shared [`Preprocessor`] straight from the stored
/// image, exactly as a camera frame is on the edge; stops after `limit` images.
pub fn for_each_input(
    spec: &PreprocessSpec,
    data: &DataSpec,
    split: Split,
    limit: Option<usize>,
    mut f: impl FnMut(&[f32], i64) -> std::result::Result<(), DataError>,
) -> std::result::Result<Vec<String>, DataError> {
    for_each_stored(spec, data, split, limit, |tensor, label, _| {
        f(tensor, label)
    })
}

/// An image as it was stored, before the preprocessing.
#[derive(Debug, Clone, Copy)]
pub struct StoredImage<'a> {
    pub pixels: &'a [u8],
    pub width: usize,
    pub height: usize,
    pub format: PixelFormat,
}

/// As [`for_each_input`], with each image as it was stored beside its tensor.
pub fn for_each_stored(
    spec: &PreprocessSpec,
    data: &DataSpec,
    split: Split,
    limit: Option<usize>,
    mut f: impl FnMut(&[f32], i64, &StoredImage<'_>) -> std::result::Result<(), DataError>,
) -> std::result::Result<Vec<String>, DataError> {
    let mut planned: Option<((usize, usize, PixelFormat), Preprocessor)> = None;
    let mut tensor = vec![0f32; 3 * spec.width as usize * spec.height as usize];
    let mut seen = 0usize;
    let mut sink = |img: &[u8], w: usize, h: usize, format: PixelFormat, label: i64| {
        if limit.is_some_and(|l| seen >= l) {
            return Ok(());
        }
        let key = (w, h, format);
        let p = match &mut planned {
            Some((k, p)) if *k == key => p,
            _ => {
                &mut planned
                    .insert((key, Preprocessor::new(spec, w, h, format)?))
                    .1
            }
        };
        p.run(img, None, &mut tensor)?;
        seen += 1;
        let stored = StoredImage {
            pixels: img,
            width: w,
            height: h,
            format,
        };
        f(&tensor, label, &stored)
    };
    visit(data, split, &mut sink)
}

/// Embeds up to `limit` images of a split (all when `None`) through the encoder, on every
/// core (one tract session each; the order of the rows is kept).
pub fn embed_dataset(
    encoder: &Encoder,
    spec: &PreprocessSpec,
    data: &DataSpec,
    split: Split,
    limit: Option<usize>,
) -> std::result::Result<Embedded, DataError> {
    embed_measured(encoder, spec, data, split, limit, None)
}

/// [`embed_dataset`], also measuring each image's quality on its input tensor as the edge
/// does (the camera guards' view), in row order.
pub fn embed_dataset_with_quality(
    encoder: &Encoder,
    spec: &PreprocessSpec,
    data: &DataSpec,
    split: Split,
    limit: Option<usize>,
) -> std::result::Result<(Embedded, Vec<ImageQuality>), DataError> {
    let mut quality = Vec::new();
    let e = embed_measured(encoder, spec, data, split, limit, Some(&mut quality))?;
    Ok((e, quality))
}

fn embed_measured(
    encoder: &Encoder,
    spec: &PreprocessSpec,
    data: &DataSpec,
    split: Split,
    limit: Option<usize>,
    mut quality: Option<&mut Vec<ImageQuality>>,
) -> std::result::Result<Embedded, DataError> {
    let dim = encoder.dim();
    let n = 3 * spec.width as usize * spec.height as usize;
    let mut pool = SessionPool::new(encoder)?;
    let chunk = 64 * pool.sessions.len();
    let mut pending = Vec::with_capacity(chunk * n);
    let mut values = Vec::new();
    let mut labels = Vec::new();
    let mut meter = QualityMeter::new(spec);
    let class_names = for_each_stored(spec, data, split, limit, |tensor, label, stored| {
        if let Some(q) = quality.as_deref_mut() {
            q.push(measure_stored(&mut meter, spec, tensor, stored)?);
        }
        pending.extend_from_slice(tensor);
        labels.push(label);
        if pending.len() == chunk * n {
            pool.embed(&pending, n, dim, &mut values)?;
            pending.clear();
        }
        Ok(())
    })?;
    pool.embed(&pending, n, dim, &mut values)?;
    let rows = labels.len();
    Ok(Embedded {
        embeddings: Embeddings::new(rows, dim, values).map_err(DataError::from)?,
        labels,
        class_names,
    })
}

/// One tract session per core, for embedding many inputs at once.
struct SessionPool {
    sessions: Vec<oodmon_runtime::Session>,
}

impl SessionPool {
    fn new(encoder: &Encoder) -> std::result::Result<Self, DataError> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(16));
        let sessions = (0..threads)
            .map(|_| encoder.session())
            .collect::<std::result::Result<_, _>>()?;
        Ok(Self { sessions })
    }

    /// Embeds the rows of `inputs` (each `n` values), appending to `out` in order.
    fn embed(
        &mut self,
        inputs: &[f32],
        n: usize,
        dim: usize,
        out: &mut Vec<f32>,
    ) -> std::result::Result<(), DataError> {
        let rows = inputs.len() / n;
        if rows == 0 {
            return Ok(());
        }
        let start = out.len();
        out.resize(start + rows * dim, 0.0);
        let per = rows.div_ceil(self.sessions.len());
        std::thread::scope(|scope| {
            let jobs: Vec<_> = self
                .sessions
                .iter_mut()
                .zip(
                    inputs
                        .chunks(per * n)
                        .zip(out[start..].chunks_mut(per * dim)),
                )
                .map(|(session, (x, y))| {
                    scope.spawn(move || -> std::result::Result<(), DataError> {
                        for (xi, yi) in x.chunks_exact(n).zip(y.chunks_exact_mut(dim)) {
                            yi.copy_from_slice(session.embed(xi)?);
                        }
                        Ok(())
                    })
                })
                .collect();
            // a panic in a worker is re-raised here, as if it had happened on this thread
            jobs.into_iter()
                .try_for_each(|j| j.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
        })
    }
}

/// Encoder input tensors of the given rows of a loaded data set, through the shared
/// preprocessing (e.g. the calibration images of int8 quantization).
pub fn dataset_inputs(
    ds: &Dataset,
    rows: &[usize],
    spec: &PreprocessSpec,
) -> std::result::Result<Vec<Vec<f32>>, DataError> {
    let mut p = ds.preprocessor(spec)?;
    let n = p.tensor_len();
    rows.iter()
        .map(|&i| {
            let mut t = vec![0f32; n];
            p.run(ds.image(i), None, &mut t)?;
            Ok(t)
        })
        .collect()
}

/// Embeds every image of a loaded data set through the encoder: one session, one
/// preprocessing plan, rows in order.
pub fn embed_loaded(
    encoder: &Encoder,
    spec: &PreprocessSpec,
    ds: &Dataset,
) -> std::result::Result<Embeddings, DataError> {
    let n = 3 * spec.width as usize * spec.height as usize;
    let dim = encoder.dim();
    let mut pool = SessionPool::new(encoder)?;
    let mut p = ds.preprocessor(spec)?;
    let chunk = 64 * pool.sessions.len();
    let mut inputs = vec![0f32; chunk * n];
    let mut values = Vec::with_capacity(ds.len() * dim);
    for start in (0..ds.len()).step_by(chunk) {
        let rows = chunk.min(ds.len() - start);
        for (r, slot) in inputs.chunks_exact_mut(n).take(rows).enumerate() {
            p.run(ds.image(start + r), None, slot)?;
        }
        pool.embed(&inputs[..rows * n], n, dim, &mut values)?;
    }
    Embeddings::new(ds.len(), encoder.dim(), values).map_err(DataError::from)
}

/// Image-quality measures of up to `limit` images of a split, taken on the encoder's input
/// tensor exactly as the edge takes them on every frame (the guards' calibration data).
pub fn image_quality(
    spec: &PreprocessSpec,
    data: &DataSpec,
    split: Split,
    limit: Option<usize>,
) -> std::result::Result<Vec<ImageQuality>, DataError> {
    let mut meter = QualityMeter::new(spec);
    let mut out = Vec::new();
    for_each_stored(spec, data, split, limit, |tensor, _, stored| {
        out.push(measure_stored(&mut meter, spec, tensor, stored)?);
        Ok(())
    })?;
    Ok(out)
}

/// The measures of an image's tensor, and its own noise where the preprocessing reduces it
/// (a camera's frames; not 32x32 photos): what the edge measures on a frame.
fn measure_stored(
    meter: &mut QualityMeter,
    spec: &PreprocessSpec,
    tensor: &[f32],
    stored: &StoredImage<'_>,
) -> std::result::Result<ImageQuality, DataError> {
    let mut q = meter.measure(tensor, spec)?;
    meter.add_frame_noise(
        &mut q,
        spec,
        stored.pixels,
        stored.width,
        stored.height,
        None,
        stored.format,
    )?;
    Ok(q)
}

/// Image-quality measures of every image of a loaded data set (see [`image_quality`]);
/// its images were stored reduced, so they carry no frame noise.
pub fn image_quality_loaded(
    ds: &Dataset,
    spec: &PreprocessSpec,
) -> std::result::Result<Vec<ImageQuality>, DataError> {
    let mut meter = QualityMeter::new(spec);
    let mut p = ds.preprocessor(spec)?;
    let mut tensor = vec![0f32; p.tensor_len()];
    (0..ds.len())
        .map(|i| {
            p.run(ds.image(i), None, &mut tensor)?;
            Ok(meter.measure(&tensor, spec)?)
        })
        .collect()
}
