//! Raw frames as a pipe delivers them (`stdin:WxH:FORMAT`), of any geometry and content,
//! through the shared preprocessing into an encoder input: no panic, finite values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oodmon_calibration::preprocess::{PixelFormat, Preprocessor};
use oodmon_calibration::PreprocessSpec;
use oodmon_edge::source::{FrameSource, RawStream};
use oodmon_edge::FrameFormat;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let width = 1 + data[0] as usize % 64;
    let height = 1 + data[1] as usize % 48;
    let format = [
        PixelFormat::Rgb8,
        PixelFormat::Bgr8,
        PixelFormat::Gray8,
        PixelFormat::Yuyv,
    ][data[2] as usize % 4];
    let Ok(mut stream) =
        RawStream::new(&data[3..], "stdin", width, height, FrameFormat::Raw(format))
    else {
        return;
    };
    let spec = PreprocessSpec::cifar(32);
    let Ok(mut pre) = Preprocessor::new(&spec, width, height, format) else {
        return;
    };
    let mut out = vec![0f32; pre.tensor_len()];
    while let Ok(Some(frame)) = stream.next_frame() {
        if pre.run(frame.data, frame.stride, &mut out).is_ok() {
            assert!(out.iter().all(|v| v.is_finite()));
        }
    }
});
