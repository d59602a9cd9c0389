//! Datasets behind one abstraction: CIFAR-10/100 binary releases, IDX (MNIST,
//! Fashion-MNIST) and image folders, all brought to the model's input size by the shared
//! preprocessing. Every malformed input is an error that names the file.

use std::io::Read;
use std::path::{Path, PathBuf};

use oodmon_calibration::corrupt::Corruption;
use oodmon_calibration::preprocess::{to_rgb8, PixelFormat, PreprocessSpec, Preprocessor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// What went wrong while reading a dataset.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Malformed { path: PathBuf, problem: String },
    #[error("{path}: cannot decode image: {problem}")]
    Undecodable { path: PathBuf, problem: String },
    #[error("{path}: label {label} is out of range (the dataset has {classes} classes)")]
    LabelOutOfRange {
        path: PathBuf,
        label: usize,
        classes: usize,
    },
    #[error("invalid data spec {spec:?}: {problem}")]
    BadSpec { spec: String, problem: String },
    #[error(transparent)]
    Preprocess(#[from] oodmon_calibration::Error),
    #[error(transparent)]
    Inference(#[from] oodmon_runtime::InferenceError),
}

type Result<T> = std::result::Result<T, DataError>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |cause| DataError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

fn malformed(path: &Path, problem: impl Into<String>) -> DataError {
    DataError::Malformed {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// Where data comes from: `cifar10:DIR`, `cifar100:DIR`, `idx:DIR`, `folder:DIR`,
/// `noise:uniform|gaussian:N[:SEED]`, or any of them degraded: `corrupt:KIND:SEVERITY:SPEC`.
/// `cifar10:` and `cifar100:` also take a single `.bin` file in that record layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSpec {
    Cifar10(PathBuf),
    Cifar100(PathBuf),
    Idx(PathBuf),
    Folder(PathBuf),
    /// Generated noise images (an OOD set anyone can reproduce): `noise:uniform:N[:SEED]`
    /// (independent uniform pixels) or `noise:gaussian:N[:SEED]` (mean 128, sd 64,
    /// clipped), 32x32 RGB, label 0. Every split yields the same images.
    Noise {
        gaussian: bool,
        count: usize,
        seed: u64,
    },
    /// Another source's images through a camera corruption
    /// (`oodmon_calibration::corrupt`, CIFAR-10-C): `corrupt:fog:3:cifar10:DIR`. Image `i`
    /// is corrupted with seed `i`, so the set is the same every time.
    Corrupt {
        corruption: Corruption,
        inner: Box<DataSpec>,
    },
}

impl std::str::FromStr for DataSpec {
    type Err = DataError;

    fn from_str(spec: &str) -> Result<Self> {
        let (kind, dir) = spec.split_once(':').ok_or_else(|| DataError::BadSpec {
            spec: spec.into(),
            problem: "expected KIND:DIR with KIND one of cifar10, cifar100, idx, folder".into(),
        })?;
        if kind == "corrupt" {
            let bad = |problem: String| DataError::BadSpec {
                spec: spec.into(),
                problem,
            };
            let mut parts = dir.splitn(3, ':');
            let (k, severity, inner) = match (parts.next(), parts.next(), parts.next()) {
                (Some(k), Some(s), Some(inner)) => (k, s, inner),
                _ => return Err(bad("expected corrupt:KIND:SEVERITY:SOURCE".into())),
            };
            let corruption: Corruption = format!("{k}:{severity}")
                .parse()
                .map_err(|e: oodmon_calibration::Error| bad(e.to_string()))?;
            return Ok(DataSpec::Corrupt {
                corruption,
                inner: Box::new(inner.parse()?),
            });
        }
        if kind == "noise" {
            let bad = |problem: &str| DataError::BadSpec {
                spec: spec.into(),
                problem: problem.into(),
            };
            let mut parts = dir.split(':');
            let gaussian = match parts.next() {
                Some("uniform") => false,
                Some("gaussian") => true,
                _ => {
                    return Err(bad(
                        "expected noise:uniform:N[:SEED] or noise:gaussian:N[:SEED]",
                    ))
                }
            };
            let count: usize = parts
                .next()
                .and_then(|n| n.parse().ok())
                .filter(|&n| n > 0 && n <= 1_000_000)
                .ok_or_else(|| bad("N must be a count in 1..=1000000"))?;
            let seed: u64 = match parts.next() {
                Some(s) => s.parse().map_err(|_| bad("SEED must be an integer"))?,
                None => 0,
            };
            if parts.next().is_some() {
                return Err(bad("too many fields"));
            }
            return Ok(DataSpec::Noise {
                gaussian,
                count,
                seed,
            });
        }
        let dir = PathBuf::from(dir);
        Ok(match kind {
            "cifar10" => DataSpec::Cifar10(dir),
            "cifar100" => DataSpec::Cifar100(dir),
            "idx" => DataSpec::Idx(dir),
            "folder" => DataSpec::Folder(dir),
            other => {
                return Err(DataError::BadSpec {
                    spec: spec.into(),
                    problem: format!("unknown kind {other:?} (cifar10, cifar100, idx, folder)"),
                })
            }
        })
    }
}

/// Which part of a dataset to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Test,
}

/// Images as RGB8, `height x width x 3` each, all at the model's input size.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
    pub labels: Vec<i64>,
    pub class_names: Vec<String>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The preprocessing of this data set's stored images for `spec`, the spec they were
    /// loaded with: they are at its input size already, its detail stage included.
    pub fn preprocessor(
        &self,
        spec: &PreprocessSpec,
    ) -> std::result::Result<Preprocessor, oodmon_calibration::Error> {
        Preprocessor::new(
            &spec.for_resized(),
            self.width,
            self.height,
            PixelFormat::Rgb8,
        )
    }

    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.width * self.height * 3;
        &self.pixels[i * n..(i + 1) * n]
    }

    pub fn classes(&self) -> usize {
        self.class_names.len()
    }

    /// The given rows, in that order.
    pub fn select(&self, rows: &[usize]) -> Dataset {
        let mut pixels = Vec::with_capacity(rows.len() * self.width * self.height * 3);
        for &i in rows {
            pixels.extend_from_slice(self.image(i));
        }
        Dataset {
            width: self.width,
            height: self.height,
            pixels,
            labels: rows.iter().map(|&i| self.labels[i]).collect(),
            class_names: self.class_names.clone(),
        }
    }

    /// Only the images of `classes` (indices into `class_names`), relabelled by their
    /// position in that list: an open-set protocol's known classes. `None` when a class
    /// is out of range or listed twice.
    pub fn keep_classes(&self, classes: &[usize]) -> Option<Dataset> {
        let (rows, labels) = self.class_rows(classes)?;
        let mut kept = self.select(&rows);
        kept.labels = labels;
        kept.class_names = classes
            .iter()
            .map(|&c| self.class_names[c].clone())
            .collect();
        Some(kept)
    }

    /// The rows [`Dataset::keep_classes`] keeps and their new labels.
    pub fn class_rows(&self, classes: &[usize]) -> Option<(Vec<usize>, Vec<i64>)> {
        let n = self.classes();
        let mut position = vec![None; n];
        for (i, &c) in classes.iter().enumerate() {
            if c >= n || position[c].is_some() {
                return None;
            }
            position[c] = Some(i as i64);
        }
        Some(
            (0..self.len())
                .filter_map(|i| {
                    let label = usize::try_from(self.labels[i]).ok()?;
                    Some((i, (*position.get(label)?)?))
                })
                .unzip(),
        )
    }

    /// A seeded split into (train, validation) with `fraction` of each class held out.
    pub fn split(&self, fraction: f64, seed: u64) -> (Dataset, Dataset) {
        let (keep, hold) = self.split_rows(fraction, seed);
        (self.select(&keep), self.select(&hold))
    }

    /// The rows [`Dataset::split`] puts in each part, ascending: what a trainer outside
    /// Rust (`bench/finetune_torch.py`) needs to hold out the same images.
    pub fn split_rows(&self, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut keep = Vec::new();
        let mut hold = Vec::new();
        for class in 0..self.classes() as i64 {
            let mut rows: Vec<usize> = (0..self.len())
                .filter(|&i| self.labels[i] == class)
                .collect();
            rows.shuffle(&mut rng);
            let n_hold = (rows.len() as f64 * fraction).round() as usize;
            hold.extend_from_slice(&rows[..n_hold]);
            keep.extend_from_slice(&rows[n_hold..]);
        }
        keep.sort_unstable();
        hold.sort_unstable();
        (keep, hold)
    }
}

/// Receives a dataset's images one by one, in their stored size and pixel format.
/// Passes each image on through a corruption (made RGB first, whatever its format).
struct Corrupting<'a> {
    corruption: Corruption,
    next_seed: u64,
    rgb: Vec<u8>,
    sink: &'a mut dyn ImageSink,
}

impl ImageSink for Corrupting<'_> {
    fn push(
        &mut self,
        img: &[u8],
        w: usize,
        h: usize,
        format: PixelFormat,
        label: i64,
    ) -> Result<()> {
        to_rgb8(img, w, h, None, format, &mut self.rgb)?;
        let out = self.corruption.apply(&self.rgb, w, h, self.next_seed)?;
        self.next_seed += 1;
        self.sink.push(&out, w, h, PixelFormat::Rgb8, label)
    }
}

pub trait ImageSink {
    fn push(
        &mut self,
        img: &[u8],
        w: usize,
        h: usize,
        format: PixelFormat,
        label: i64,
    ) -> Result<()>;
}

impl<F> ImageSink for F
where
    F: FnMut(&[u8], usize, usize, PixelFormat, i64) -> Result<()>,
{
    fn push(
        &mut self,
        img: &[u8],
        w: usize,
        h: usize,
        format: PixelFormat,
        label: i64,
    ) -> Result<()> {
        self(img, w, h, format, label)
    }
}

/// Accumulates images, bringing each to the target size with the shared preprocessing.
struct Builder {
    width: usize,
    height: usize,
    spec: PreprocessSpec,
    pixels: Vec<u8>,
    labels: Vec<i64>,
    scratch: Vec<f32>,
}

impl Builder {
    fn new(spec: &PreprocessSpec) -> Self {
        // mean 0 and std 1/255 make the preprocessing a pure resize in 0..255 units
        let resize_only = PreprocessSpec {
            mean: [0.0; 3],
            std: [1.0 / 255.0; 3],
            channel_order: oodmon_calibration::preprocess::ChannelOrder::Rgb,
            layout: oodmon_calibration::preprocess::Layout::Nhwc,
            ..spec.clone()
        };
        let (width, height) = (spec.width as usize, spec.height as usize);
        Self {
            width,
            height,
            spec: resize_only,
            pixels: Vec::new(),
            labels: Vec::new(),
            scratch: vec![0.0; width * height * 3],
        }
    }

    fn finish(self, class_names: Vec<String>) -> Dataset {
        Dataset {
            width: self.width,
            height: self.height,
            pixels: self.pixels,
            labels: self.labels,
            class_names,
        }
    }
}

impl ImageSink for Builder {
    fn push(
        &mut self,
        img: &[u8],
        w: usize,
        h: usize,
        format: PixelFormat,
        label: i64,
    ) -> Result<()> {
        if w == self.width && h == self.height && format == PixelFormat::Rgb8 {
            self.pixels.extend_from_slice(img);
        } else {
            let mut p = Preprocessor::new(&self.spec, w, h, format)?;
            p.run(img, None, &mut self.scratch)?;
            self.pixels.extend(
                self.scratch
                    .iter()
                    .map(|&v| v.round().clamp(0.0, 255.0) as u8),
            );
        }
        self.labels.push(label);
        Ok(())
    }
}

/// Loads a split of a dataset at the spec's input size, as RGB8 (for training).
pub fn load(spec: &DataSpec, split: Split, preprocess: &PreprocessSpec) -> Result<Dataset> {
    let mut b = Builder::new(preprocess);
    let names = visit(spec, split, &mut b)?;
    Ok(b.finish(names))
}

/// Hands every image of a split, in its stored size and format, to `sink`; returns the
/// class names. Calibration embeds through this, preprocessing each image exactly as the
/// edge preprocesses a frame.
pub fn visit(spec: &DataSpec, split: Split, sink: &mut dyn ImageSink) -> Result<Vec<String>> {
    match spec {
        DataSpec::Cifar10(dir) => load_cifar(dir, split, sink, false),
        DataSpec::Cifar100(dir) => load_cifar(dir, split, sink, true),
        DataSpec::Idx(dir) => load_idx(dir, split, sink),
        DataSpec::Folder(dir) => load_folder(dir, split, sink),
        DataSpec::Corrupt { corruption, inner } => {
            let mut corrupting = Corrupting {
                corruption: *corruption,
                next_seed: 0,
                rgb: Vec::new(),
                sink,
            };
            visit(inner, split, &mut corrupting)
        }
        DataSpec::Noise {
            gaussian,
            count,
            seed,
        } => {
            use rand::{Rng, SeedableRng};
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(*seed);
            let mut img = vec![0u8; 32 * 32 * 3];
            for _ in 0..*count {
                for p in img.iter_mut() {
                    *p = if *gaussian {
                        // Box-Muller
                        let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
                        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                        (128.0 + 64.0 * z).round().clamp(0.0, 255.0) as u8
                    } else {
                        rng.random::<u8>()
                    };
                }
                sink.push(&img, 32, 32, PixelFormat::Rgb8, 0)?;
            }
            Ok(vec!["noise".into()])
        }
    }
}

fn read_names(path: &Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    (!names.is_empty()).then_some(names)
}

/// CIFAR binary records: `[coarse,] label, 1024 R, 1024 G, 1024 B`.
fn load_cifar(
    dir: &Path,
    split: Split,
    b: &mut dyn ImageSink,
    hundred: bool,
) -> Result<Vec<String>> {
    // A single file (e.g. an OOD set in CIFAR layout) serves every split.
    let files: Vec<PathBuf> = match (hundred, split) {
        _ if dir.is_file() => vec![dir.to_path_buf()],
        (false, Split::Train) => (1..=5)
            .map(|i| dir.join(format!("data_batch_{i}.bin")))
            .collect(),
        (false, Split::Test) => vec![dir.join("test_batch.bin")],
        (true, Split::Train) => vec![dir.join("train.bin")],
        (true, Split::Test) => vec![dir.join("test.bin")],
    };
    let classes = if hundred { 100 } else { 10 };
    let meta = if dir.is_file() {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    let names = if hundred {
        read_names(&meta.join("fine_label_names.txt"))
    } else {
        read_names(&meta.join("batches.meta.txt"))
    }
    .filter(|n| n.len() == classes)
    .unwrap_or_else(|| (0..classes).map(|i| format!("class{i}")).collect());
    let record = if hundred { 3074 } else { 3073 };
    let mut hwc = vec![0u8; 3072];
    for file in &files {
        let bytes = std::fs::read(file).map_err(io_err(file))?;
        if bytes.is_empty() || bytes.len() % record != 0 {
            return Err(malformed(
                file,
                format!(
                    "{} bytes is not a whole number of {record}-byte CIFAR records (truncated?)",
                    bytes.len()
                ),
            ));
        }
        for rec in bytes.chunks_exact(record) {
            let label = rec[record - 3073] as usize;
            if label >= classes {
                return Err(DataError::LabelOutOfRange {
                    path: file.clone(),
                    label,
                    classes,
                });
            }
            let planes = &rec[record - 3072..];
            for p in 0..1024 {
                hwc[p * 3] = planes[p];
                hwc[p * 3 + 1] = planes[1024 + p];
                hwc[p * 3 + 2] = planes[2048 + p];
            }
            b.push(&hwc, 32, 32, PixelFormat::Rgb8, label as i64)?;
        }
    }
    Ok(names)
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(io_err(path))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| malformed(path, format!("corrupt gzip: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Finds `<prefix>*-<kind>-idx?-ubyte[.gz]` in `dir` (e.g. `train-images-idx3-ubyte.gz`,
/// `t10k-labels-idx1-ubyte`, `train-first10k-images-idx3-ubyte.gz`).
fn find_idx(dir: &Path, split: Split, kind: &str) -> Result<PathBuf> {
    let prefixes: &[&str] = match split {
        Split::Train => &["train"],
        Split::Test => &["t10k", "test"],
    };
    let entries = std::fs::read_dir(dir).map_err(io_err(dir))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            prefixes.iter().any(|pre| name.starts_with(pre))
                && name.contains(&format!("-{kind}-idx"))
        })
        .collect();
    found.sort();
    found.into_iter().next().ok_or_else(|| {
        malformed(
            dir,
            format!(
                "no {split:?} {kind} IDX file (e.g. {}-{kind}-idx?-ubyte[.gz])",
                prefixes[0]
            ),
        )
    })
}

fn idx_header(path: &Path, bytes: &[u8], dims: usize) -> Result<Vec<usize>> {
    if bytes.len() < 4 + 4 * dims
        || bytes[0] != 0
        || bytes[1] != 0
        || bytes[2] != 0x08
        || bytes[3] as usize != dims
    {
        return Err(malformed(
            path,
            format!("not an unsigned-byte IDX file with {dims} dimensions"),
        ));
    }
    let shape: Vec<usize> = (0..dims)
        .map(|i| {
            let b = &bytes[4 + 4 * i..8 + 4 * i];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect();
    let need = 4 + 4 * dims + shape.iter().product::<usize>();
    if bytes.len() != need {
        return Err(malformed(
            path,
            format!(
                "holds {} bytes, its header promises {need} (truncated?)",
                bytes.len()
            ),
        ));
    }
    Ok(shape)
}

fn load_idx(dir: &Path, split: Split, b: &mut dyn ImageSink) -> Result<Vec<String>> {
    let img_path = find_idx(dir, split, "images")?;
    let lab_path = find_idx(dir, split, "labels")?;
    let images = read_maybe_gz(&img_path)?;
    let labels = read_maybe_gz(&lab_path)?;
    let shape = idx_header(&img_path, &images, 3)?;
    let lshape = idx_header(&lab_path, &labels, 1)?;
    if shape[0] != lshape[0] {
        return Err(malformed(
            &lab_path,
            format!(
                "{} labels for {} images in {}",
                lshape[0],
                shape[0],
                img_path.display()
            ),
        ));
    }
    let (n, h, w) = (shape[0], shape[1], shape[2]);
    let classes = labels[8..]
        .iter()
        .map(|&l| l as usize + 1)
        .max()
        .unwrap_or(0)
        .max(10);
    for i in 0..n {
        let img = &images[16 + i * h * w..16 + (i + 1) * h * w];
        b.push(img, w, h, PixelFormat::Gray8, labels[8 + i] as i64)?;
    }
    Ok((0..classes).map(|c| c.to_string()).collect())
}

/// One subfolder per class (sorted by name); if `train/` and `test/` exist they are the
/// splits, otherwise all images form the train split and `test` is refused.
fn load_folder(dir: &Path, split: Split, b: &mut dyn ImageSink) -> Result<Vec<String>> {
    let (train, test) = (dir.join("train"), dir.join("test"));
    let one_split_folder = train.is_dir() != test.is_dir();
    let root = if train.is_dir() && test.is_dir() {
        match split {
            Split::Train => train,
            Split::Test => test,
        }
    } else if split == Split::Train {
        dir.to_path_buf()
    } else {
        return Err(malformed(
            dir,
            "has no train/ and test/ subfolders, so there is no test split",
        ));
    };
    let mut classes: Vec<PathBuf> = std::fs::read_dir(&root)
        .map_err(io_err(&root))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    classes.sort();
    if classes.is_empty() {
        return Err(malformed(
            &root,
            "holds no class subfolders: a folder data set is DIR/CLASS/*.png (one class \
             folder is enough, e.g. DIR/camera/*.jpg), or DIR/train/CLASS/ beside DIR/test/CLASS/",
        ));
    }
    let mut count = 0usize;
    for (label, class_dir) in classes.iter().enumerate() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(class_dir)
            .map_err(io_err(class_dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension()
                        .and_then(|e| e.to_str())
                        .map(str::to_ascii_lowercase)
                        .as_deref(),
                    Some("jpg" | "jpeg" | "png")
                )
            })
            .collect();
        files.sort();
        for file in files {
            let img = image::open(&file)
                .map_err(|e| DataError::Undecodable {
                    path: file.clone(),
                    problem: e.to_string(),
                })?
                .into_rgb8();
            let (w, h) = img.dimensions();
            b.push(
                img.as_raw(),
                w as usize,
                h as usize,
                PixelFormat::Rgb8,
                label as i64,
            )?;
            count += 1;
        }
    }
    if count == 0 {
        let half = if one_split_folder {
            " (it has one of train/ and test/ but not the other: the splits need both)"
        } else {
            ""
        };
        return Err(malformed(
            &root,
            format!("holds no JPEG or PNG images in its class subfolders (DIR/CLASS/*.png){half}"),
        ));
    }
    Ok(classes
        .iter()
        .map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn spec() -> PreprocessSpec {
        PreprocessSpec::cifar(32)
    }

    fn cifar_record(label: u8, value: u8) -> Vec<u8> {
        let mut r = vec![label];
        r.extend(std::iter::repeat_n(value, 3072));
        r
    }

    #[test]
    fn keep_classes_relabels_in_the_given_order_and_refuses_bad_lists() {
        let ds = Dataset {
            width: 1,
            height: 1,
            pixels: (0..18).collect(),
            labels: vec![0, 1, 2, 0, 1, 2],
            class_names: vec!["a".into(), "b".into(), "c".into()],
        };
        let kept = ds.keep_classes(&[2, 0]).unwrap();
        assert_eq!(kept.labels, vec![1, 0, 1, 0]);
        assert_eq!(kept.class_names, vec!["c".to_string(), "a".to_string()]);
        assert_eq!(kept.image(1), ds.image(2));
        assert!(ds.keep_classes(&[0, 0]).is_none());
        assert!(ds.keep_classes(&[3]).is_none());
        let (rows, labels) = ds.class_rows(&[2, 0]).unwrap();
        assert_eq!((rows, labels), (vec![0, 2, 3, 5], kept.labels.clone()));
    }

    /// The rows a trainer outside Rust is given (`dump_split`) are the images `split`
    /// puts in each part: disjoint, complete, a fraction of each class held out.
    #[test]
    fn split_rows_are_the_split_s_images() {
        let labels: Vec<i64> = (0..40).map(|i| i % 4).collect();
        let ds = Dataset {
            width: 1,
            height: 1,
            pixels: (0..120).map(|v| v as u8).collect(),
            labels: labels.clone(),
            class_names: (0..4).map(|c| c.to_string()).collect(),
        };
        let (keep, hold) = ds.split_rows(0.2, 7);
        let (train, val) = ds.split(0.2, 7);
        assert_eq!(train.pixels, ds.select(&keep).pixels);
        assert_eq!(val.pixels, ds.select(&hold).pixels);
        assert_eq!(keep.len() + hold.len(), 40);
        assert!(keep.iter().all(|r| !hold.contains(r)));
        for class in 0..4 {
            assert_eq!(hold.iter().filter(|&&r| labels[r] == class).count(), 2);
        }
        assert_ne!(
            ds.split_rows(0.2, 8).1,
            hold,
            "another seed holds out others"
        );
    }

    /// A loaded data set's images went through the spec's resize and detail stage once;
    /// its preprocessor must not blur them a second time. Its tensors equal the ones
    /// streamed straight from the stored images, up to the bytes' rounding.
    #[test]
    fn loaded_images_take_the_detail_stage_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        for i in 0..4u8 {
            bytes.push(i);
            bytes
                .extend((0..3072usize).map(|p| ((p * (7 + i as usize) + p / 32 * 13) % 256) as u8));
        }
        let file = dir.path().join("b.bin");
        std::fs::write(&file, bytes).unwrap();
        let data = DataSpec::Cifar10(file);
        let mut spec = PreprocessSpec::imagenet(48);
        spec.detail_size = Some(16);
        let ds = load(&data, Split::Test, &spec).unwrap();
        assert_eq!((ds.width, ds.height), (48, 48));
        let mut p = ds.preprocessor(&spec).unwrap();
        let mut streamed = Vec::new();
        crate::embed::for_each_input(&spec, &data, Split::Test, None, |t, _| {
            streamed.push(t.to_vec());
            Ok(())
        })
        .unwrap();
        let mut loaded = vec![0f32; 3 * 48 * 48];
        for (i, want) in streamed.iter().enumerate() {
            p.run(ds.image(i), None, &mut loaded).unwrap();
            let worst = loaded
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            // half a grey level, in units of the smallest std
            assert!(worst <= 0.5 / 255.0 / 0.224 + 1e-5, "image {i}: {worst}");
        }
    }

    #[test]
    fn cifar10_reads_batches_and_names() {
        let dir = tempfile::tempdir().unwrap();
        for i in 1..=5 {
            let mut bytes = cifar_record(i as u8 % 10, i as u8);
            bytes.extend(cifar_record(9, 200));
            std::fs::write(dir.path().join(format!("data_batch_{i}.bin")), bytes).unwrap();
        }
        std::fs::write(dir.path().join("test_batch.bin"), cifar_record(3, 7)).unwrap();
        let names: String = (0..10).map(|i| format!("name{i}\n")).collect();
        std::fs::write(dir.path().join("batches.meta.txt"), names).unwrap();
        let spec_ = DataSpec::Cifar10(dir.path().into());
        let train = load(&spec_, Split::Train, &spec()).unwrap();
        assert_eq!(train.len(), 10);
        assert_eq!(train.labels[..2], [1, 9]);
        assert_eq!(train.image(1)[0], 200);
        assert_eq!(train.class_names[3], "name3");
        let test = load(&spec_, Split::Test, &spec()).unwrap();
        assert_eq!(test.labels, vec![3]);
        // a truncated batch and a label out of range are errors naming the file
        std::fs::write(
            dir.path().join("test_batch.bin"),
            &cifar_record(3, 7)[..100],
        )
        .unwrap();
        let err = load(&spec_, Split::Test, &spec()).unwrap_err().to_string();
        assert!(
            err.contains("test_batch.bin") && err.contains("truncated"),
            "{err}"
        );
        std::fs::write(dir.path().join("test_batch.bin"), cifar_record(12, 7)).unwrap();
        let err = load(&spec_, Split::Test, &spec()).unwrap_err().to_string();
        assert!(err.contains("label 12 is out of range"), "{err}");
        std::fs::remove_file(dir.path().join("data_batch_3.bin")).unwrap();
        let err = load(&spec_, Split::Train, &spec()).unwrap_err().to_string();
        assert!(err.contains("data_batch_3.bin"), "{err}");
    }

    #[test]
    fn cifar100_reads_fine_labels() {
        let dir = tempfile::tempdir().unwrap();
        let record = |coarse: u8, fine: u8| {
            let mut r = vec![coarse, fine];
            r.extend(std::iter::repeat_n(fine, 3072));
            r
        };
        let mut train = record(3, 42);
        train.extend(record(19, 99));
        std::fs::write(dir.path().join("train.bin"), train).unwrap();
        std::fs::write(dir.path().join("test.bin"), record(0, 7)).unwrap();
        let spec_ = DataSpec::Cifar100(dir.path().into());
        let ds = load(&spec_, Split::Train, &spec()).unwrap();
        assert_eq!(ds.labels, vec![42, 99]);
        assert_eq!(ds.classes(), 100);
        assert_eq!(ds.image(1)[0], 99);
        assert_eq!(load(&spec_, Split::Test, &spec()).unwrap().labels, vec![7]);
        // a CIFAR-10 sized record is not a whole number of CIFAR-100 records
        std::fs::write(dir.path().join("test.bin"), cifar_record(1, 1)).unwrap();
        let err = load(&spec_, Split::Test, &spec()).unwrap_err().to_string();
        assert!(
            err.contains("test.bin") && err.contains("3074-byte"),
            "{err}"
        );
    }

    #[test]
    fn idx_gz_is_upscaled_to_rgb() {
        let dir = tempfile::tempdir().unwrap();
        let mut images = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28];
        images.extend(std::iter::repeat_n(100u8, 28 * 28));
        images.extend(std::iter::repeat_n(50u8, 28 * 28));
        let labels = vec![0, 0, 8, 1, 0, 0, 0, 2, 4, 7];
        let gz = |path: &str, bytes: &[u8]| {
            let f = std::fs::File::create(dir.path().join(path)).unwrap();
            let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
            e.write_all(bytes).unwrap();
            e.finish().unwrap();
        };
        gz("t10k-images-idx3-ubyte.gz", &images);
        gz("t10k-labels-idx1-ubyte.gz", &labels);
        let ds = load(&DataSpec::Idx(dir.path().into()), Split::Test, &spec()).unwrap();
        assert_eq!(ds.len(), 2);
        assert_eq!((ds.width, ds.height), (32, 32));
        assert!(ds.image(0).iter().all(|&v| v == 100));
        assert_eq!(ds.labels, vec![4, 7]);
        let err = load(&DataSpec::Idx(dir.path().into()), Split::Train, &spec())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no Train images IDX file"), "{err}");
        gz("t10k-images-idx3-ubyte.gz", &images[..500]);
        let err = load(&DataSpec::Idx(dir.path().into()), Split::Test, &spec())
            .unwrap_err()
            .to_string();
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn folders_decode_resize_and_report_bad_images() {
        let dir = tempfile::tempdir().unwrap();
        for (class, shade) in [("cat", 10u8), ("dog", 240u8)] {
            let d = dir.path().join(class);
            std::fs::create_dir_all(&d).unwrap();
            let img = image::RgbImage::from_pixel(64, 48, image::Rgb([shade, shade, shade]));
            img.save(d.join("a.png")).unwrap();
        }
        let ds = load(&DataSpec::Folder(dir.path().into()), Split::Train, &spec()).unwrap();
        assert_eq!(ds.class_names, vec!["cat", "dog"]);
        assert_eq!(ds.labels, vec![0, 1]);
        assert!(ds.image(1).iter().all(|&v| v == 240));
        let (train, val) = ds.split(0.5, 1);
        assert_eq!(train.len() + val.len(), 2);
        std::fs::write(dir.path().join("dog/broken.jpg"), b"not a jpeg").unwrap();
        let err = load(&DataSpec::Folder(dir.path().into()), Split::Train, &spec())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("broken.jpg") && err.contains("cannot decode"),
            "{err}"
        );
        // the layouts a user gets wrong are named in the error
        let flat = tempfile::tempdir().unwrap();
        image::RgbImage::from_pixel(8, 8, image::Rgb([9, 9, 9]))
            .save(flat.path().join("frame.png"))
            .unwrap();
        let err = load(&DataSpec::Folder(flat.path().into()), Split::Train, &spec())
            .unwrap_err()
            .to_string();
        assert!(err.contains("DIR/CLASS/*.png"), "{err}");
        let half = tempfile::tempdir().unwrap();
        let street = half.path().join("train/street");
        std::fs::create_dir_all(&street).unwrap();
        image::RgbImage::from_pixel(8, 8, image::Rgb([9, 9, 9]))
            .save(street.join("frame.png"))
            .unwrap();
        let err = load(&DataSpec::Folder(half.path().into()), Split::Train, &spec())
            .unwrap_err()
            .to_string();
        assert!(err.contains("the splits need both"), "{err}");
        assert!("bogus:x".parse::<DataSpec>().is_err());
        assert_eq!(
            "cifar10:/d".parse::<DataSpec>().unwrap(),
            DataSpec::Cifar10("/d".into())
        );
    }

    #[test]
    fn noise_specs_generate_reproducible_images() {
        let noise: DataSpec = "noise:uniform:5:3".parse().unwrap();
        assert_eq!(
            noise,
            DataSpec::Noise {
                gaussian: false,
                count: 5,
                seed: 3
            }
        );
        let a = load(&noise, Split::Test, &spec()).unwrap();
        let b = load(&noise, Split::Train, &spec()).unwrap();
        assert_eq!(a.len(), 5);
        assert_eq!(a.pixels, b.pixels);
        let g = load(&"noise:gaussian:5:3".parse().unwrap(), Split::Test, &spec()).unwrap();
        assert_ne!(a.pixels, g.pixels);
        let mean = g.pixels.iter().map(|&v| v as f64).sum::<f64>() / g.pixels.len() as f64;
        assert!((mean - 128.0).abs() < 5.0, "{mean}");
        for bad in [
            "noise:pink:5",
            "noise:uniform:0",
            "noise:uniform:5:x",
            "noise:uniform",
        ] {
            assert!(bad.parse::<DataSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn corrupt_specs_degrade_any_source_the_same_way_every_time() {
        let plain: DataSpec = "noise:gaussian:4:1".parse().unwrap();
        let dark: DataSpec = "corrupt:darken:5:noise:gaussian:4:1".parse().unwrap();
        assert_eq!(
            dark,
            DataSpec::Corrupt {
                corruption: "darken:5".parse().unwrap(),
                inner: Box::new(plain.clone()),
            }
        );
        let mean =
            |d: &Dataset| d.pixels.iter().map(|&v| v as f64).sum::<f64>() / d.pixels.len() as f64;
        let a = load(&plain, Split::Test, &spec()).unwrap();
        let b = load(&dark, Split::Test, &spec()).unwrap();
        assert_eq!((a.len(), b.labels.clone()), (b.len(), a.labels.clone()));
        assert!(mean(&b) < 0.2 * mean(&a), "{} vs {}", mean(&b), mean(&a));
        let noisy: DataSpec = "corrupt:gaussian_noise:3:noise:gaussian:4:1"
            .parse()
            .unwrap();
        let n1 = load(&noisy, Split::Test, &spec()).unwrap();
        assert_eq!(
            n1.pixels,
            load(&noisy, Split::Train, &spec()).unwrap().pixels
        );
        assert_ne!(n1.pixels, a.pixels);
        for bad in [
            "corrupt:fog:3",
            "corrupt:fog:9:noise:uniform:2",
            "corrupt:smoke:1:noise:uniform:2",
            "corrupt:fog:1:nothing:2",
        ] {
            assert!(bad.parse::<DataSpec>().is_err(), "{bad}");
        }
    }
}
