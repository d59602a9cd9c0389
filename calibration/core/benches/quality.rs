//! The camera guards' measures (`QualityMeter::measure`) on the shipped default's 64x64
//! input tensor, and the frame's own noise on camera-sized frames: work the edge does on
//! every frame besides inference.
// tests and benches fail loudly on any broken assumption
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use oodmon_calibration::preprocess::{PixelFormat, PreprocessSpec, Preprocessor};
use oodmon_calibration::quality::QualityMeter;

fn quality(c: &mut Criterion) {
    let mut group = c.benchmark_group("quality");
    for size in [64u32, 224] {
        let mut spec = PreprocessSpec::imagenet(size);
        spec.detail_size = Some(32);
        let (w, h) = (640, 480);
        let frame: Vec<u8> = (0..w * h * 3)
            .map(|i| {
                let (x, y) = ((i / 3) % w, i / 3 / w);
                ((x * 7 + y * 13 + (x * y) % 31 + i % 3 * 40) % 220 + 16) as u8
            })
            .collect();
        let mut pre = Preprocessor::new(&spec, w, h, PixelFormat::Rgb8).unwrap();
        let mut tensor = vec![0f32; pre.tensor_len()];
        pre.run(&frame, None, &mut tensor).unwrap();
        let mut meter = QualityMeter::new(&spec);
        group.bench_function(format!("measure/{size}x{size}"), |b| {
            b.iter(|| meter.measure(black_box(&tensor), &spec).unwrap())
        });
    }
    // the frame's own noise, blocks and duplicates, before any reduction, on camera-sized
    // frames
    let mut meter = QualityMeter::default();
    for (w, h, format, name) in [
        (640, 480, PixelFormat::Rgb8, "rgb"),
        (640, 480, PixelFormat::Yuyv, "yuyv"),
        (1280, 720, PixelFormat::Yuyv, "yuyv"),
    ] {
        let frame: Vec<u8> = (0..format.row_bytes(w) * h)
            .map(|i| ((i * 7 + (i / 640) * 13 + i % 31) % 220 + 16) as u8)
            .collect();
        group.bench_function(format!("frame_measures/{name}/{w}x{h}"), |b| {
            b.iter(|| {
                meter
                    .frame_measures(black_box(&frame), w, h, None, format)
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, quality);
criterion_main!(benches);
