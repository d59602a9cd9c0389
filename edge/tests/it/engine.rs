//! The engine: one preprocessing path shared with calibration, decisions on in- and
//! out-of-distribution frames, and bad frames turned into typed errors and faults.

use std::sync::atomic::AtomicBool;

use oodmon_calibration::bundle::Bundle;
use oodmon_calibration::datasets::{DataSpec, Split};
use oodmon_calibration::embed::for_each_input;
use oodmon_calibration::preprocess::PixelFormat;
use oodmon_edge::runner::{self, RunLimits};
use oodmon_edge::source::{FrameSource, ImageFiles};
use oodmon_edge::{EdgeError, Engine, Frame, FrameFormat, SourceError};

use crate::util::{id_image, jpeg, ood_image, save_image, write_tiny_bundle, SIZE};

fn engine() -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bundle(&dir.path().join("bundle"));
    let e = Engine::new(Bundle::load(dir.path().join("bundle")).unwrap()).unwrap();
    (dir, e)
}

fn raw<'a>(data: &'a [u8], w: usize, h: usize, format: PixelFormat) -> Frame<'a> {
    Frame {
        data,
        width: w,
        height: h,
        stride: None,
        format: FrameFormat::Raw(format),
        timestamp_us: 1,
        sequence: 7,
    }
}

#[test]
fn edge_and_calibration_entry_points_give_identical_tensors() {
    let (dir, mut engine) = engine();
    let class_dir = dir.path().join("data/a");
    std::fs::create_dir_all(&class_dir).unwrap();
    // odd sizes, PNG and JPEG: resize, crop and decode all matter
    let sizes = [(45, 37), (32, 32), (61, 20), (17, 50)];
    for (i, (w, h)) in sizes.iter().enumerate() {
        let img = id_image(i % 3, *w, *h, i as u64);
        if i % 2 == 0 {
            save_image(&class_dir.join(format!("{i}.png")), &img, *w, *h);
        } else {
            std::fs::write(class_dir.join(format!("{i}.jpg")), jpeg(&img, *w, *h)).unwrap();
        }
    }
    let spec = engine.preprocessing().clone();
    let mut expected = Vec::new();
    for_each_input(
        &spec,
        &DataSpec::Folder(dir.path().join("data")),
        Split::Train,
        None,
        |t, _| {
            expected.push(t.to_vec());
            Ok(())
        },
    )
    .unwrap();
    let mut files = ImageFiles::open(class_dir.to_str().unwrap(), false).unwrap();
    let mut n = 0;
    while let Some(frame) = files.next_frame().unwrap() {
        engine.prepare(&frame).unwrap();
        assert_eq!(engine.input_tensor(), &expected[n][..], "image {n}");
        n += 1;
    }
    assert_eq!(n, sizes.len());
}

#[test]
fn in_distribution_frames_pass_and_out_of_distribution_frames_are_flagged() {
    let (_dir, mut engine) = engine();
    let (w, h) = (64, 48);
    let mut id_scores = Vec::new();
    for i in 0..9 {
        let img = id_image(i % 3, w, h, 900 + i as u64);
        let r = engine.process(&raw(&img, w, h, PixelFormat::Rgb8)).unwrap();
        assert_eq!(r.sequence, 7);
        assert!(r.latency.inference_us > 0);
        id_scores.push(r.score);
    }
    let ood = ood_image(w, h);
    let r = engine.process(&raw(&ood, w, h, PixelFormat::Rgb8)).unwrap();
    assert!(r.ood, "checkerboard score {} <= {}", r.score, r.threshold);
    let max_id = id_scores.iter().cloned().fold(f64::MIN, f64::max);
    assert!(r.score > max_id, "{} vs ID max {max_id}", r.score);
    assert!(id_scores.iter().filter(|&&s| s > r.threshold).count() <= 1);
}

#[test]
fn yuyv_bgr_gray_and_jpeg_frames_are_all_accepted() {
    let (_dir, mut engine) = engine();
    let (w, h) = (40, 30);
    let yuyv: Vec<u8> = (0..w * h * 2).map(|i| (i * 7 % 251) as u8).collect();
    engine
        .process(&raw(&yuyv, w, h, PixelFormat::Yuyv))
        .unwrap();
    let bgr = id_image(2, w, h, 3);
    engine.process(&raw(&bgr, w, h, PixelFormat::Bgr8)).unwrap();
    let gray = vec![90u8; w * h];
    engine
        .process(&raw(&gray, w, h, PixelFormat::Gray8))
        .unwrap();
    let j = jpeg(&id_image(0, w, h, 4), w, h);
    let frame = Frame {
        data: &j,
        width: w,
        height: h,
        stride: None,
        format: FrameFormat::Jpeg,
        timestamp_us: 0,
        sequence: 0,
    };
    let r = engine.process(&frame).unwrap();
    assert!(r.score.is_finite());
    assert_eq!(engine.embedding().len(), 6);
    assert_eq!(engine.input_tensor().len(), 3 * SIZE * SIZE);
}

#[test]
fn malformed_frames_are_typed_errors() {
    let (_dir, mut engine) = engine();
    let short = vec![0u8; 10];
    let err = engine
        .process(&raw(&short, 40, 30, PixelFormat::Rgb8))
        .unwrap_err();
    assert!(matches!(err, EdgeError::Frame(_)), "{err}");
    let mut j = jpeg(&id_image(0, 40, 30, 4), 40, 30);
    j.truncate(j.len() / 3);
    for data in [&j[..], b"\xFF\xD8 garbage", b""] {
        let frame = Frame {
            data,
            width: 40,
            height: 30,
            stride: None,
            format: FrameFormat::Jpeg,
            timestamp_us: 0,
            sequence: 0,
        };
        let err = engine.process(&frame).unwrap_err();
        assert!(matches!(err, EdgeError::Decode(_)), "{err}");
    }
    // the engine still works after bad frames
    let good = id_image(1, 40, 30, 5);
    engine
        .process(&raw(&good, 40, 30, PixelFormat::Rgb8))
        .unwrap();
}

/// A source whose frames are all undecodable, or that times out, for the fault counter.
struct Broken {
    frames: u64,
    timeout: bool,
    data: Vec<u8>,
}

impl FrameSource for Broken {
    fn next_frame(&mut self) -> Result<Option<Frame<'_>>, SourceError> {
        self.frames += 1;
        if self.timeout {
            return Err(SourceError::Timeout {
                source_name: "broken".into(),
                timeout_ms: 1,
            });
        }
        Ok(Some(Frame {
            data: &self.data,
            width: 8,
            height: 8,
            stride: None,
            format: FrameFormat::Jpeg,
            timestamp_us: 0,
            sequence: self.frames,
        }))
    }
    fn describe(&self) -> String {
        "broken".into()
    }
}

#[test]
fn too_many_bad_frames_in_a_row_is_a_fault() {
    let (_dir, mut engine) = engine();
    for timeout in [false, true] {
        let mut src = Broken {
            frames: 0,
            timeout,
            data: b"not a jpeg".to_vec(),
        };
        let limits = RunLimits {
            max_frames: Some(100),
            max_consecutive_bad_frames: 5,
        };
        let mut bad = 0;
        let err = runner::run(
            &mut engine,
            &mut src,
            &limits,
            &AtomicBool::new(false),
            |e| {
                if let runner::Event::BadFrame(_) = e {
                    bad += 1;
                }
                Ok(())
            },
        )
        .unwrap_err();
        assert!(matches!(err, EdgeError::Fault(5, 5)), "{err}");
        assert_eq!(bad, 5);
        assert_eq!(src.frames, 5);
    }
}

#[test]
fn the_built_in_demo_reproduces_its_scenario() {
    let mut out = Vec::new();
    let summary = oodmon_edge::demo::play(Some(0), true, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(summary.passed(), "{text}");
    assert_eq!(summary.run.frames, 72);
    assert_eq!(summary.segments[0].ood_frames, 0, "{text}");
    assert!(summary.segments[1].ood_frames >= 18, "{text}");
    assert_eq!(summary.segments[2].ood_frames, 0, "{text}");
    assert!(text.contains("scenario reproduced"), "{text}");
}
