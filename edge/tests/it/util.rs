//! Shared helpers: a small real bundle built without libtorch, synthetic frames, and
//! running the CLI (through the cross-test runner when there is one).

use std::path::Path;
use std::process::{Command, Output};

use oodmon_calibration::preprocess::{PixelFormat, Preprocessor};
use oodmon_calibration::{
    calibrate, CalibrationArtifact, ClusterSpec, Embeddings, FitConfig, Metric, PreprocessSpec,
    Provenance, ThresholdMode,
};
use oodmon_onnx::{OnnxBuilder, META_PREPROCESSING};
use oodmon_runtime::Bundle;
use oodmon_runtime::Encoder;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub const SIZE: usize = 32;

/// conv 3x3 (3 -> 8) -> relu -> conv 3x3 stride 2 (8 -> 8) -> relu -> pool -> linear (8 -> 6).
pub fn tiny_encoder() -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut r = |n: usize| {
        (0..n)
            .map(|_| rng.random_range(-0.5f32..0.5))
            .collect::<Vec<_>>()
    };
    let mut b = OnnxBuilder::new(SIZE, SIZE, false);
    let x = b.input();
    let c = b.conv(&x, &r(8 * 3 * 9), &r(8), 3, 3, 1).unwrap();
    let c = b.relu(&c);
    let c = b.conv(&c, &r(8 * 8 * 9), &r(8), 8, 3, 2).unwrap();
    let c = b.relu(&c);
    let p = b.pool_flatten(&c);
    let e = b.linear(&p, &r(6 * 8), &r(6), 8).unwrap();
    b.metadata(
        META_PREPROCESSING,
        &serde_json::to_string(&PreprocessSpec::cifar(SIZE as u32)).unwrap(),
    );
    b.finish(&e, 6, "test")
}

/// An RGB image of one of three colour classes with noise (in distribution), `w x h`.
pub fn id_image(class: usize, w: usize, h: usize, seed: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(w * h * 3);
    for _ in 0..w * h {
        for c in 0..3 {
            let base: u8 = if c == class { 200 } else { 40 };
            out.push(base.saturating_add(rng.random_range(0..30)));
        }
    }
    out
}

/// A high-contrast checkerboard: far from every colour class.
pub fn ood_image(w: usize, h: usize) -> Vec<u8> {
    (0..w * h)
        .flat_map(|i| {
            let (x, y) = (i % w, i / w);
            let v = if (x / 2 + y / 2) % 2 == 0 { 255 } else { 0 };
            [v, 255 - v, v]
        })
        .collect()
}

/// Writes a bundle for [`tiny_encoder`] fitted on colour-class images into `dir`.
pub fn write_tiny_bundle(dir: &Path) {
    write_bundle(dir, None);
}

/// A bundle whose encoder overflows to NaN on every input (huge weights, then +inf and
/// -inf summed), calibrated like [`write_tiny_bundle`]: a broken model in the field.
pub fn write_nan_bundle(dir: &Path) {
    let mut b = OnnxBuilder::new(SIZE, SIZE, false);
    let x = b.input();
    let c = b
        .conv(&x, &vec![1e38f32; 8 * 3 * 9], &[1e38f32; 8], 3, 3, 1)
        .unwrap();
    let p = b.pool_flatten(&c);
    let w: Vec<f32> = (0..6 * 8)
        .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
        .collect();
    let e = b.linear(&p, &w, &[0.0; 6], 8).unwrap();
    b.metadata(
        META_PREPROCESSING,
        &serde_json::to_string(&PreprocessSpec::cifar(SIZE as u32)).unwrap(),
    );
    write_bundle(dir, Some(b.finish(&e, 6, "test")));
}

fn write_bundle(dir: &Path, deployed: Option<Vec<u8>>) {
    let bytes = tiny_encoder();
    let spec = PreprocessSpec::cifar(SIZE as u32);
    let enc = Encoder::from_bytes(&bytes, Path::new("tiny.onnx")).unwrap();
    let mut pre = Preprocessor::new(&spec, SIZE, SIZE, PixelFormat::Rgb8).unwrap();
    let embed = |n: usize, seed: u64, pre: &mut Preprocessor| {
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        let mut t = vec![0f32; pre.tensor_len()];
        let mut session = enc.session().unwrap();
        for i in 0..n {
            pre.run(&id_image(i % 3, SIZE, SIZE, seed + i as u64), None, &mut t)
                .unwrap();
            rows.extend_from_slice(session.embed(&t).unwrap());
            labels.push((i % 3) as i64);
        }
        (Embeddings::new(n, enc.dim(), rows).unwrap(), labels)
    };
    let (train, labels) = embed(90, 1000, &mut pre);
    let (calib, _) = embed(60, 5000, &mut pre);
    let config = FitConfig::new(ClusterSpec::Class, Metric::Euclidean);
    let mode = ThresholdMode::Global { target_tpr: 0.95 };
    let (model, thresholds) = calibrate(&train, Some(&labels), &calib, &config, mode).unwrap();
    let artifact = CalibrationArtifact::new(
        config,
        model,
        thresholds,
        vec!["red".into(), "green".into(), "blue".into()],
        Some(oodmon_calibration::io::sha256_bytes(
            deployed.as_ref().unwrap_or(&bytes),
        )),
        Some(spec),
        Provenance::now("edge tests", vec![], vec![]),
    )
    .unwrap();
    Bundle::write(dir, deployed.as_ref().unwrap_or(&bytes), &artifact).unwrap();
}

/// Writes an RGB image file (format from the extension).
pub fn save_image(path: &Path, rgb: &[u8], w: usize, h: usize) {
    image::RgbImage::from_raw(w as u32, h as u32, rgb.to_vec())
        .unwrap()
        .save(path)
        .unwrap();
}

/// JPEG bytes of an RGB image.
pub fn jpeg(rgb: &[u8], w: usize, h: usize) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode(rgb, w as u32, h as u32, image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

/// A minimal MJPEG AVI (RIFF, hdrl with avih/strl, movi with `00dc` chunks).
pub fn avi(frames: &[Vec<u8>], w: u32, h: u32) -> Vec<u8> {
    fn chunk(id: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut v = id.to_vec();
        v.extend((payload.len() as u32).to_le_bytes());
        v.extend_from_slice(payload);
        if payload.len() % 2 == 1 {
            v.push(0);
        }
        v
    }
    fn list(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut p = kind.to_vec();
        p.extend_from_slice(payload);
        chunk(b"LIST", &p)
    }
    let mut avih = vec![0u8; 56];
    avih[0..4].copy_from_slice(&100_000u32.to_le_bytes());
    avih[16..20].copy_from_slice(&(frames.len() as u32).to_le_bytes());
    avih[32..36].copy_from_slice(&w.to_le_bytes());
    avih[36..40].copy_from_slice(&h.to_le_bytes());
    let mut strh = vec![0u8; 56];
    strh[0..4].copy_from_slice(b"vids");
    strh[4..8].copy_from_slice(b"MJPG");
    let mut strf = vec![0u8; 40];
    strf[16..20].copy_from_slice(b"MJPG");
    let strl = [chunk(b"strh", &strh), chunk(b"strf", &strf)].concat();
    let hdrl = list(
        b"hdrl",
        &[chunk(b"avih", &avih), list(b"strl", &strl)].concat(),
    );
    let movi = list(
        b"movi",
        &frames
            .iter()
            .flat_map(|f| chunk(b"00dc", f))
            .collect::<Vec<_>>(),
    );
    let mut body = b"AVI ".to_vec();
    body.extend(hdrl);
    body.extend(movi);
    chunk(b"RIFF", &body)
}

/// The `oodmon-edge` command, through `OODMON_TEST_RUNNER` (e.g. qemu) when set.
pub fn edge_command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = oodmon_testkit::command(env!("CARGO_BIN_EXE_oodmon-edge"), dir, args);
    cmd.env("RUST_LOG", "warn");
    cmd
}

pub fn edge(dir: &Path, args: &[&str]) -> Output {
    edge_command(dir, args).output().expect("run oodmon-edge")
}

/// `oodmon-edge run` of bundle `b` on `images:frames` in `dir`, records to standard output,
/// with `extra` arguments: the records and the standard error of a successful run.
pub fn run_records(dir: &Path, extra: &[&str]) -> (Vec<serde_json::Value>, String) {
    let base = [
        "run",
        "--bundle",
        "b",
        "--source",
        "images:frames",
        "--records",
        "-",
    ];
    let out = edge(dir, &[&base[..], extra].concat());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (lines, stderr)
}

/// Asserts a clean start-up failure: exit code 1 (no panic, no signal) and one error line
/// containing every `needle`.
pub fn assert_fails_cleanly(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("oodmon-edge: error:"))
        .unwrap_or_else(|| panic!("no error line in {stderr}"));
    for n in needles {
        assert!(line.contains(n), "{n:?} not in {line:?}");
    }
}

/// The record a fake model returns: `score` against `threshold`, everything else empty.
pub fn fake_record(score: f64, threshold: f64) -> oodmon_edge::FrameRecord {
    oodmon_edge::FrameRecord {
        sequence: 0,
        timestamp_us: 0,
        media_us: None,
        score,
        nearest: 0,
        nearest_class: None,
        p_value: None,
        threshold,
        ood: false,
        latency: oodmon_edge::StageLatency::default(),
        quality: Default::default(),
        camera: None,
        fingerprint: 0,
    }
}
