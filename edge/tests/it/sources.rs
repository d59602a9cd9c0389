//! Frame sources: specification parsing, AVI, image files and raw streams, including
//! truncated and corrupt input.

use std::io::Cursor;

use oodmon_calibration::preprocess::PixelFormat;
use oodmon_edge::source::{
    open, AviSource, FrameSource, ImageFiles, RawStream, SourceOptions, SourceSpec,
};
use oodmon_edge::{FrameFormat, SourceError};

use crate::util::{avi, id_image, jpeg, save_image};

#[test]
fn source_specs_parse_and_bad_ones_say_why() {
    assert_eq!(
        "v4l:/dev/video0:640x480@30:yuyv"
            .parse::<SourceSpec>()
            .unwrap(),
        SourceSpec::V4l {
            device: "/dev/video0".into(),
            size: Some((640, 480)),
            fps: Some(30),
            format: Some(FrameFormat::Raw(PixelFormat::Yuyv)),
        }
    );
    assert_eq!(
        "v4l:/dev/video2".parse::<SourceSpec>().unwrap(),
        SourceSpec::V4l {
            device: "/dev/video2".into(),
            size: None,
            fps: None,
            format: None,
        }
    );
    assert!(matches!(
        "v4l:/dev/video0:1280x720:mjpeg"
            .parse::<SourceSpec>()
            .unwrap(),
        SourceSpec::V4l {
            format: Some(FrameFormat::Jpeg),
            fps: None,
            ..
        }
    ));
    assert_eq!(
        "stdin:640x480:bgr".parse::<SourceSpec>().unwrap(),
        SourceSpec::Stdin {
            width: 640,
            height: 480,
            format: FrameFormat::Raw(PixelFormat::Bgr8)
        }
    );
    assert!(matches!(
        "images:frames/*.png".parse::<SourceSpec>().unwrap(),
        SourceSpec::Images { .. }
    ));
    assert!(matches!(
        "avi:a.avi".parse::<SourceSpec>().unwrap(),
        SourceSpec::Avi { .. }
    ));
    for (bad, needle) in [
        ("/dev/video0", "expected KIND"),
        ("v4l:", "no device"),
        ("v4l:/dev/video0:640x@30", "bad size"),
        ("v4l:/dev/video0:640x480@0", "bad frame rate"),
        ("v4l:/dev/video0:640x480@30:rgb", "yuyv or mjpeg"),
        ("stdin:640x480", "stdin:WxH:FORMAT"),
        ("stdin:640x480:mjpeg", "raw formats"),
        ("stdin:0x480:rgb", "bad size"),
        ("rtsp:cam", "unknown kind"),
        ("images:", "unknown kind"),
    ] {
        let err = bad.parse::<SourceSpec>().unwrap_err();
        assert!(err.0.contains(needle), "{bad}: {err}");
    }
}

fn frames(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| jpeg(&id_image(i % 3, 48, 40, i as u64), 48, 40))
        .collect()
}

#[test]
fn avi_frames_come_out_in_order_and_loop() {
    let dir = tempfile::tempdir().unwrap();
    let jpegs = frames(5);
    let path = dir.path().join("a.avi");
    std::fs::write(&path, avi(&jpegs, 48, 40)).unwrap();
    let mut src = AviSource::open(path.to_str().unwrap(), false).unwrap();
    assert_eq!(src.size(), (48, 40));
    assert_eq!(src.frame_count(), 5);
    for (i, want) in jpegs.iter().enumerate() {
        let f = src.next_frame().unwrap().unwrap();
        assert_eq!(f.sequence, i as u64);
        assert_eq!(f.format, FrameFormat::Jpeg);
        assert_eq!((f.width, f.height), (48, 40));
        assert_eq!(f.data, &want[..]);
    }
    assert!(src.next_frame().unwrap().is_none());
    let mut looped = AviSource::open(path.to_str().unwrap(), true).unwrap();
    for i in 0..12 {
        let f = looped.next_frame().unwrap().unwrap();
        assert_eq!(f.data, &jpegs[i % 5][..]);
    }
}

#[test]
fn truncated_avi_reports_the_cut_frame_then_ends() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = avi(&frames(4), 48, 40);
    let path = dir.path().join("cut.avi");
    std::fs::write(&path, &bytes[..bytes.len() - 300]).unwrap();
    let mut src = AviSource::open(path.to_str().unwrap(), true).unwrap();
    for _ in 0..3 {
        src.next_frame().unwrap().unwrap();
    }
    assert!(matches!(
        src.next_frame(),
        Err(SourceError::BadFrame { .. })
    ));
    // looping restarts at the first frame after the damaged end
    assert!(src.next_frame().unwrap().is_some());
}

#[test]
fn non_avi_and_non_mjpeg_files_are_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("x.avi");
    std::fs::write(&png, b"\x89PNG\r\n\x1a\n not an avi").unwrap();
    let err = AviSource::open(png.to_str().unwrap(), false).unwrap_err();
    assert!(err.to_string().contains("not an AVI"), "{err}");
    let mut bytes = avi(&frames(2), 48, 40);
    // rewrite the codec FourCC in strh and strf (DIV3: MS-MPEG4, as vtest.avi)
    for i in 0..bytes.len() - 4 {
        if &bytes[i..i + 4] == b"MJPG" {
            bytes[i..i + 4].copy_from_slice(b"DIV3");
        }
    }
    let div3 = dir.path().join("div3.avi");
    std::fs::write(&div3, bytes).unwrap();
    let err = AviSource::open(div3.to_str().unwrap(), false).unwrap_err();
    assert!(err.to_string().contains("DIV3"), "{err}");
    let missing = AviSource::open("/nonexistent/x.avi", false).unwrap_err();
    assert!(matches!(missing, SourceError::Open { .. }));
}

#[test]
fn the_built_in_scenario_is_a_readable_mjpeg_stream() {
    let meta = oodmon_edge::app::demo::scenario_meta().unwrap();
    let mut src = oodmon_edge::app::demo::scenario(false).unwrap();
    assert_eq!(src.size(), (meta.width, meta.height));
    let mut n = 0;
    while let Some(f) = src.next_frame().unwrap() {
        assert_eq!(&f.data[..2], &[0xFF, 0xD8], "frame {n} is not a JPEG");
        n += 1;
    }
    assert_eq!(n, meta.frames);
}

#[test]
fn image_files_in_name_order_and_no_match_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..3 {
        save_image(
            &dir.path().join(format!("f{i}.png")),
            &id_image(i, 20, 10, i as u64),
            20,
            10,
        );
    }
    let pattern = format!("{}/*.png", dir.path().display());
    let mut src = ImageFiles::open(&pattern, false).unwrap();
    assert_eq!(src.len(), 3);
    let mut n = 0;
    while let Some(f) = src.next_frame().unwrap() {
        assert_eq!(f.format, FrameFormat::Encoded);
        n += 1;
    }
    assert_eq!(n, 3);
    let by_dir = ImageFiles::open(dir.path().to_str().unwrap(), false).unwrap();
    assert_eq!(by_dir.len(), 3);
    let none = format!("{}/*.jpg", dir.path().display());
    let err = open(
        &SourceSpec::Images { pattern: none },
        &SourceOptions::default(),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("no image files"), "{err}");
}

#[test]
fn raw_stream_splits_frames_and_reports_a_partial_last_one() {
    let frame = 4 * 2 * 3;
    let bytes: Vec<u8> = (0..(2 * frame + 5) as u32).map(|i| i as u8).collect();
    let mut src = RawStream::new(
        Cursor::new(bytes.clone()),
        "test",
        4,
        2,
        FrameFormat::Raw(PixelFormat::Rgb8),
    )
    .unwrap();
    for i in 0..2 {
        let f = src.next_frame().unwrap().unwrap();
        assert_eq!(f.data, &bytes[i * frame..(i + 1) * frame]);
        assert_eq!(f.sequence, i as u64);
    }
    assert!(matches!(
        src.next_frame(),
        Err(SourceError::BadFrame { .. })
    ));
    assert!(src.next_frame().unwrap().is_none());
    assert!(RawStream::new(Cursor::new(vec![]), "t", 4, 2, FrameFormat::Jpeg).is_err());
    assert!(RawStream::new(
        Cursor::new(vec![]),
        "t",
        0,
        2,
        FrameFormat::Raw(PixelFormat::Rgb8)
    )
    .is_err());
}

#[cfg(all(feature = "v4l2", target_os = "linux"))]
#[test]
fn a_missing_camera_is_an_open_error() {
    let spec: SourceSpec = "v4l:/dev/video-oodmon-missing".parse().unwrap();
    let err = open(&spec, &SourceOptions::default()).err().unwrap();
    assert!(matches!(err, SourceError::Open { .. }), "{err}");
    assert!(err.to_string().contains("video-oodmon-missing"), "{err}");
}
