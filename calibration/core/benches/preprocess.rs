//! Preprocessing benchmarks: a camera frame to the encoder's 32x32 input tensor (colour
//! conversion, antialiased resize with centre crop, normalisation), the per-frame work the
//! edge does besides inference.
// tests and benches fail loudly on any broken assumption
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use oodmon_calibration::preprocess::{PixelFormat, PreprocessSpec, Preprocessor};

/// A frame with texture in every channel, so no branch sees constant data.
fn frame(width: usize, height: usize, format: PixelFormat) -> Vec<u8> {
    let row = format.row_bytes(width);
    (0..row * height)
        .map(|i| {
            let (x, y) = (i % row, i / row);
            ((x * 7 + y * 13 + (x * y) % 31) % 220 + 16) as u8
        })
        .collect()
}

fn preprocess(c: &mut Criterion) {
    let spec = PreprocessSpec::cifar(32);
    let mut group = c.benchmark_group("preprocess");
    group.sample_size(50);
    for (w, h, format, name) in [
        (320, 240, PixelFormat::Rgb8, "rgb"),
        (640, 480, PixelFormat::Rgb8, "rgb"),
        (640, 480, PixelFormat::Yuyv, "yuyv"),
        (1280, 720, PixelFormat::Yuyv, "yuyv"),
    ] {
        let data = frame(w, h, format);
        let mut pre = Preprocessor::new(&spec, w, h, format).unwrap();
        let mut out = vec![0f32; pre.tensor_len()];
        group.bench_function(format!("{name}/{w}x{h}"), |b| {
            b.iter(|| pre.run(black_box(&data), None, &mut out).unwrap())
        });
    }
    // Camera frames arrive by DMA, not from cache: cycle through more frames than the
    // last-level cache holds.
    for (w, h, format, name) in [
        (640, 480, PixelFormat::Yuyv, "yuyv"),
        (1280, 720, PixelFormat::Yuyv, "yuyv"),
    ] {
        let bytes = format.row_bytes(w) * h;
        let count = (64 << 20) / bytes + 1;
        let frames: Vec<Vec<u8>> = (0..count)
            .map(|i| {
                let mut f = frame(w, h, format);
                f.rotate_left(i * 7);
                f
            })
            .collect();
        let mut pre = Preprocessor::new(&spec, w, h, format).unwrap();
        let mut out = vec![0f32; pre.tensor_len()];
        let mut next = 0;
        group.bench_function(format!("{name}/{w}x{h}/uncached"), |b| {
            b.iter(|| {
                next = (next + 1) % frames.len();
                pre.run(black_box(&frames[next]), None, &mut out).unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, preprocess);
criterion_main!(benches);
