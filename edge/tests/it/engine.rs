//! The engine: one preprocessing path shared with calibration, decisions on in- and
//! out-of-distribution frames, and bad frames turned into typed errors and faults.

use std::sync::atomic::AtomicBool;

use oodmon_calibration::preprocess::PixelFormat;
use oodmon_data::datasets::{DataSpec, Split};
use oodmon_data::embed::for_each_input;
use oodmon_edge::app::demo::StatusLines;
use oodmon_edge::inference::frame_loop::{self, RunLimits};
use oodmon_edge::source::{FrameSource, ImageFiles};
use oodmon_edge::{EdgeError, Engine, Frame, FrameFormat, SourceError};
use oodmon_runtime::Bundle;

use crate::util::{id_image, jpeg, ood_image, save_image, write_tiny_bundle, SIZE};

fn engine() -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bundle(&dir.path().join("bundle"));
    let e = Engine::new(Bundle::load(dir.path().join("bundle")).unwrap()).unwrap();
    (dir, e)
}

fn raw<'a>(data: &'a [u8], w: usize, h: usize, format: PixelFormat) -> Frame<'a> {
    frame(data, w, h, FrameFormat::Raw(format))
}

fn frame(data: &[u8], w: usize, h: usize, format: FrameFormat) -> Frame<'_> {
    Frame {
        data,
        width: w,
        height: h,
        stride: None,
        format,
        timestamp_us: 1,
        media_us: None,
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
    let r = engine.process(&frame(&j, w, h, FrameFormat::Jpeg)).unwrap();
    assert!(r.score.is_finite());
    assert_eq!(engine.embedding().len(), 6);
    assert_eq!(engine.input_tensor().len(), 3 * SIZE * SIZE);
}

#[test]
fn scaled_jpeg_decoding_matches_full_decoding_closely() {
    use oodmon_edge::source::decode::jpeg_reduction;
    // 640x480 to a 32x32 centre crop keeps >= 64 pixels of the 480 crop: 1/4 (120 rows)
    assert_eq!(jpeg_reduction(640, 480, (32, 32)), 4);
    assert_eq!(jpeg_reduction(1280, 720, (32, 32)), 8);
    assert_eq!(jpeg_reduction(320, 240, (32, 32)), 2);
    assert_eq!(jpeg_reduction(100, 80, (32, 32)), 1);
    assert_eq!(jpeg_reduction(640, 64, (32, 32)), 1);
    assert_eq!(jpeg_reduction(1001, 753, (32, 32)), 1, "no exact reduction");
    assert_eq!(jpeg_reduction(1920, 1080, (32, 32)), 8);

    let (_dir, mut engine) = engine();
    // smooth structure with texture, colour and grey JPEGs at 1/4 and 1/8; sizes with no
    // exact reduction keeping twice the input are decoded in full
    for (w, h, grey) in [
        (640, 480, false),
        (1280, 720, false),
        (800, 600, true),
        (1001, 753, false),
        (336, 248, false),
    ] {
        let rgb: Vec<u8> = (0..w * h)
            .flat_map(|i| {
                let (x, y) = ((i % w) as f64, (i / w) as f64);
                let v = 128.0 + 90.0 * (x / 37.0).sin() * (y / 23.0).cos();
                let t = ((i * 7919) % 23) as f64;
                [v + t, 255.0 - v, v * 0.5 + t]
            })
            .map(|v| v.clamp(0.0, 255.0) as u8)
            .collect();
        let bytes = if grey {
            let g: Vec<u8> = rgb.chunks_exact(3).map(|p| p[1]).collect();
            let mut out = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
                .encode(&g, w as u32, h as u32, image::ExtendedColorType::L8)
                .unwrap();
            out
        } else {
            jpeg(&rgb, w, h)
        };
        let frame = frame(&bytes, w, h, FrameFormat::Jpeg);
        engine.set_scaled_jpeg(false);
        engine.prepare(&frame).unwrap();
        let full = engine.input_tensor().to_vec();
        engine.set_scaled_jpeg(true);
        engine.prepare(&frame).unwrap();
        let scaled = engine.input_tensor();
        // normalised units: 1/255 of the range is about 0.016 with CIFAR's std
        let diffs: Vec<f32> = full
            .iter()
            .zip(scaled)
            .map(|(a, b)| (a - b).abs())
            .collect();
        let max = diffs.iter().cloned().fold(0.0, f32::max);
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        assert!(max < 0.1 && mean < 0.02, "{w}x{h}: max {max}, mean {mean}");
        if jpeg_reduction(w as u32, h as u32, (SIZE as u32, SIZE as u32)) >= 4 {
            assert_ne!(full, scaled, "{w}x{h}: the scaled path was not taken");
        } else {
            assert_eq!(full, scaled, "{w}x{h}: decoded in full either way");
        }
    }
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
            media_us: None,
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
            media_us: None,
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
        let err = frame_loop::run(
            &mut engine,
            &mut src,
            &limits,
            &AtomicBool::new(false),
            |e| {
                if let frame_loop::Event::BadFrame(_) = e {
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
    // as printed into a pipe or a log: a line per frame, no carriage return
    let summary = oodmon_edge::app::demo::play(Some(0), StatusLines::PerFrame, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(summary.passed(), "{text}");
    assert_eq!(summary.run.frames, 144);
    assert!(!text.contains('\r'), "{text}");
    let frame_lines = text.lines().filter(|l| l.starts_with("frame ")).count();
    assert_eq!(frame_lines, 144, "{text}");
    assert_eq!(summary.segments.len(), 6, "{text}");
    // the cat: in distribution (a few frames close to the threshold may cross it, one
    // at a time, which the debouncing absorbs); the astronaut and the coins: flagged.
    // The default (two SupCon seeds averaged, 96 px) flags every astronaut frame with
    // both kernel sets (lowest score 48.7 for a threshold of 47.04, mean 50.5-50.6; the cat's
    // 40.4-42.9); the floor leaves two frames of room. This test runs on the host only
    // (the aarch64 step's demo run checks majorities).
    assert!(summary.segments[0].ood_frames <= 3, "{text}");
    assert!(summary.segments[1].ood_frames >= 22, "{text}");
    assert!(summary.segments[2].ood_frames >= 22, "{text}");
    assert!(summary.segments[3].ood_frames <= 3, "{text}");
    // the darkening cat fails the camera guards once the light has faded, and no clean
    // frame does
    assert!(summary.segments[4].camera_frames >= 18, "{text}");
    for i in [0, 1, 2, 3, 5] {
        assert_eq!(summary.segments[i].camera_frames, 0, "segment {i}: {text}");
    }
    assert!(summary.segments[5].ood_frames <= 3, "{text}");
    // a debug build on a busy machine (or under qemu) may take longer than the stall time
    // to load the bundle and judge the first frame: a no_frames FAULT then, which is right
    let path: Vec<String> = summary
        .alarms
        .transitions
        .iter()
        .filter(|t| t.reason != oodmon_protocol::Reason::NoFrames)
        .map(|t| format!("{} ({})", t.state.name(), t.reason.name()))
        .collect();
    assert_eq!(
        path,
        [
            "OK (cleared)",
            "OOD (ood_frames)",
            "OK (cleared)",
            "FAULT (camera_dark)",
            "OK (cleared)",
            "FAULT (stopping)"
        ],
        "{text}"
    );
    assert!(text.contains("scenario reproduced"), "{text}");
}

#[test]
fn records_name_the_nearest_class_through_the_cluster_to_class_map() {
    // the built-in bundle has 3 k-means clusters per class: cluster index != class index
    let bundle = oodmon_edge::app::demo::bundle().unwrap();
    let map = bundle.artifact.model.cluster_class.clone();
    assert!(map.len() > bundle.artifact.class_names.len());
    let mut engine = Engine::new(bundle).unwrap();
    let mut source = oodmon_edge::app::demo::scenario(false).unwrap();
    // the cat and the astronaut (in and out of distribution): the map is the same for
    // every frame, and this runs under qemu too
    for _ in 0..48 {
        let frame = source
            .next_frame()
            .unwrap()
            .expect("the scenario has at least 48 frames");
        let r = engine.process(&frame).unwrap();
        assert_eq!(r.nearest_class, map[r.nearest], "frame {}", r.sequence);
        let class = r
            .nearest_class
            .expect("every cluster of this bundle has a class");
        assert!(engine.class_name(class).is_some_and(|n| !n.is_empty()));
        assert_eq!(engine.cluster_class(r.nearest), Some(class));
    }
}

/// A camera's frame: shading and a disc, with sensor noise of standard deviation `sigma`.
fn camera_frame(w: usize, h: usize, sigma: f32, seed: u64) -> Vec<u8> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    // uniform noise of that standard deviation
    let half = sigma * 3f32.sqrt();
    let mut out = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
            // the scene moves and the light changes a little from frame to frame
            let cx = 0.3 + 0.03 * (seed % 10) as f32;
            let gain = 0.9 + 0.03 * (seed % 7) as f32;
            let shape = (((fx - cx).powi(2) + (fy - 0.5).powi(2)) < 0.04) as u8 as f32;
            for c in 0..3 {
                let v = gain * (0.25 + 0.3 * fx + 0.1 * c as f32 + 0.2 * shape)
                    + rng.random_range(-half..=half);
                out.push((v * 255.0).round().clamp(0.0, 255.0) as u8);
            }
        }
    }
    out
}

#[test]
fn a_noisy_sensor_fails_the_frame_noise_bound_that_the_reduction_would_hide() {
    use oodmon_calibration::quality::{CameraFault, QualityBounds};
    use oodmon_edge::inference::FramePreparer;
    let mut spec = oodmon_calibration::PreprocessSpec::imagenet(64);
    spec.detail_size = Some(32);
    let (w, h) = (320, 240);
    // bounds fitted on the camera's clean frames, measured as calibration measures them
    let mut unguarded = FramePreparer::new(&spec, None);
    let mut tensor = vec![0f32; unguarded.tensor_len()];
    let mut meter = oodmon_calibration::quality::QualityMeter::new(&spec);
    let clean: Vec<_> = (0..60)
        .map(|i| {
            let img = camera_frame(w, h, 0.004, i);
            let p = unguarded
                .prepare(&raw(&img, w, h, PixelFormat::Rgb8), &mut tensor)
                .unwrap();
            // no bound to check against: the frame's own noise is not measured
            assert_eq!(p.quality.frame_noise, None);
            let mut q = p.quality;
            meter
                .add_frame_noise(&mut q, &spec, &img, w, h, None, PixelFormat::Rgb8)
                .unwrap();
            q
        })
        .collect();
    let bounds = QualityBounds::fit(&clean, 0.01).unwrap();
    assert!(bounds.frame_noise_max.is_some(), "{bounds}");
    assert_eq!(bounds.frame_noise_size, Some([w as u32, h as u32]));
    let mut guarded = FramePreparer::new(&spec, Some(bounds.clone()));
    let quiet = camera_frame(w, h, 0.004, 100);
    let noisy = camera_frame(w, h, 0.01, 101);
    let p = guarded
        .prepare(&raw(&quiet, w, h, PixelFormat::Rgb8), &mut tensor)
        .unwrap();
    assert_eq!(p.camera, None, "{:?} {bounds}", p.quality);
    let p = guarded
        .prepare(&raw(&noisy, w, h, PixelFormat::Rgb8), &mut tensor)
        .unwrap();
    // the 32x32 detail averages the noise away: only the frame's own estimate sees it
    assert_eq!(
        p.camera,
        Some(CameraFault::Noisy),
        "{:?} {bounds}",
        p.quality
    );
    let seen = p.quality.frame_noise.unwrap();
    assert!(
        seen > 1.5 * bounds.frame_noise_max.unwrap(),
        "{seen} {bounds}"
    );
    let without_frame = oodmon_calibration::ImageQuality {
        frame_noise: None,
        ..p.quality
    };
    assert_eq!(bounds.check(&without_frame), None, "{without_frame:?}");
    // a frame the model sees unreduced carries no frame noise
    let small = camera_frame(32, 32, 0.04, 102);
    let p = guarded
        .prepare(&raw(&small, 32, 32, PixelFormat::Rgb8), &mut tensor)
        .unwrap();
    assert_eq!(p.quality.frame_noise, None);
    // nor does a reduced frame of another size than the bounds were fitted on: its noise
    // is not comparable, so it is neither checked nor measured
    let other = camera_frame(2 * w, 2 * h, 0.02, 103);
    let p = guarded
        .prepare(&raw(&other, 2 * w, 2 * h, PixelFormat::Rgb8), &mut tensor)
        .unwrap();
    assert_eq!(p.quality.frame_noise, None);
    assert_eq!(p.quality.frame_size, None);
}

/// The built-in scenario's records through an engine, in the given loop mode.
fn scenario_records(
    engine: &mut Engine,
    mode: oodmon_edge::inference::LoopMode,
) -> (
    Vec<oodmon_edge::inference::FrameRecord>,
    frame_loop::RunSummary,
) {
    let mut source = oodmon_edge::app::demo::scenario(false).unwrap();
    // the cat, then the astronaut: in and out of distribution (kept short for qemu)
    let limits = RunLimits {
        max_frames: Some(60),
        max_consecutive_bad_frames: 1,
    };
    let mut records = Vec::new();
    let summary = oodmon_edge::inference::run_in(
        mode,
        engine,
        &mut source,
        &limits,
        &AtomicBool::new(false),
        |event| {
            if let oodmon_edge::inference::Event::Record(r) = event {
                records.push(*r);
            }
            Ok(())
        },
    )
    .unwrap();
    (records, summary)
}

#[test]
fn an_encoder_cut_in_two_judges_every_frame_as_the_whole_one() {
    use oodmon_edge::inference::{LoopMode, OverlapSettings};
    let bundle = || oodmon_edge::app::demo::bundle().unwrap();
    let mut whole = Engine::new(bundle()).unwrap();
    let (want, summary) = scenario_records(&mut whole, LoopMode::Sequential);
    assert_eq!(summary.model_cut, None);
    assert_eq!(want.len(), 60);
    assert!(want.iter().any(|r| r.ood) && want.iter().any(|r| !r.ood));
    for mode in [
        LoopMode::Sequential,
        LoopMode::Overlapped(OverlapSettings::FILES),
    ] {
        let mut cut = Engine::new(bundle()).unwrap();
        let at = cut
            .split_model(0.2)
            .unwrap()
            .expect("tract on the CPU is cut")
            .clone();
        assert!((at.head_share - 0.2).abs() < 0.1, "{at:?}");
        // once only
        assert!(cut.split_model(0.5).unwrap().is_none());
        let (got, summary) = scenario_records(&mut cut, mode);
        assert!(
            summary.model_cut.as_deref().unwrap().contains(&at.name),
            "{summary:?}"
        );
        assert_eq!(got.len(), want.len(), "{mode:?}");
        // the overlapped loop's frame thread runs the head while the model thread is busy,
        // and hands a frame over whole while it waits; sequentially the model runs both
        match mode {
            LoopMode::Sequential => assert_eq!(summary.frames_cut, 0),
            _ => assert!(summary.frames_cut <= summary.frames, "{summary:?}"),
        }
        eprintln!(
            "{mode:?}: head on the frame thread for {} of {} frames",
            summary.frames_cut, summary.frames
        );
        for (g, w) in got.iter().zip(&want) {
            let what = format!("{mode:?}, frame {}", w.sequence);
            assert_eq!(g.sequence, w.sequence, "{what}");
            // the image tensor, not the cut's values
            assert_eq!(g.fingerprint, w.fingerprint, "{what}");
            assert_eq!(g.quality, w.quality, "{what}");
            assert_eq!(g.camera, w.camera, "{what}");
            assert_eq!(g.nearest, w.nearest, "{what}");
            assert_eq!(g.ood, w.ood, "{what}");
            if cfg!(target_arch = "x86_64") {
                assert_eq!(g.score, w.score, "{what}");
            } else {
                assert!((g.score - w.score).abs() <= 1e-3 * w.score.abs(), "{what}");
            }
            // the head's time is counted in the inference's
            assert!(g.latency.inference_us > 0, "{what}");
        }
        assert_eq!(cut.input_tensor().len(), whole.input_tensor().len());
    }
}
