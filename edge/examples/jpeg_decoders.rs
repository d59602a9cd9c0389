//! The JPEG decoders available in Rust on the same MJPEG frames: time and allocations per
//! frame, interleaved frame by frame so that a busy machine slows all of them alike.
//!
//! `cargo run --release -p oodmon-edge --example jpeg_decoders -- FILE.avi [PASSES]`
//! (BENCHMARKS.md has the figures.)
#![allow(unsafe_code)] // a counting GlobalAlloc is an unsafe trait
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use image::ImageDecoder;
use oodmon_calibration::PreprocessSpec;
use oodmon_edge::source::decode::{jpeg_reduction, FrameDecoder};
use oodmon_edge::source::{self, SourceOptions};
use oodmon_edge::{Frame, FrameFormat};

struct Counting;
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// One decoder under test: decodes `jpeg` (reusing `buffer` where its API allows) and
/// returns the number of output bytes.
type Decode = Box<dyn FnMut(&[u8], &mut Vec<u8>) -> usize>;

fn main() {
    let mut args = std::env::args().skip(1);
    let file = args.next().expect("usage: jpeg_decoders FILE.avi [PASSES]");
    let passes: usize = args.next().map_or(5, |p| p.parse().unwrap());
    let spec: oodmon_edge::source::SourceSpec = format!("avi:{file}").parse().unwrap();
    let mut src = source::open(&spec, &SourceOptions::default()).unwrap();
    let mut frames = Vec::new();
    while let Some(f) = src.next_frame().unwrap() {
        frames.push(f.data.to_vec());
    }
    let mut header = jpeg_decoder::Decoder::new(&frames[0][..]);
    header.read_info().unwrap();
    let info = header.info().unwrap();
    let (w, h) = (info.width as u32, info.height as u32);
    // the built-in bundle's decode target: 32x32 detail stage
    let d = jpeg_reduction(w, h, (32, 32));
    println!(
        "{} frames of {w}x{h} from {file}; DCT reduction for a 32x32 target: 1/{d}",
        frames.len()
    );
    let spec = PreprocessSpec::cifar(32);
    let mut oodmon = FrameDecoder::new(&spec, true);
    let decoders: Vec<(&str, Decode)> = vec![
        (
            "zune-jpeg 0.5, decode_into a reused buffer",
            Box::new(|jpeg, buf| {
                let mut dec = zune_jpeg::JpegDecoder::new(
                    zune_jpeg::zune_core::bytestream::ZCursor::new(jpeg),
                );
                dec.decode_headers().unwrap();
                buf.resize(dec.output_buffer_size().unwrap(), 0);
                dec.decode_into(buf).unwrap();
                buf.len()
            }),
        ),
        (
            "image 0.25 JpegDecoder (zune-jpeg inside), read_image into a reused buffer",
            Box::new(|jpeg, buf| {
                let dec =
                    image::codecs::jpeg::JpegDecoder::new(std::io::Cursor::new(jpeg)).unwrap();
                buf.resize(dec.total_bytes() as usize, 0);
                dec.read_image(buf).unwrap();
                buf.len()
            }),
        ),
        (
            "jpeg-decoder 0.3, full resolution (returns a new Vec)",
            Box::new(|jpeg, _| jpeg_decoder::Decoder::new(jpeg).decode().unwrap().len()),
        ),
        (
            "jpeg-decoder 0.3, DCT-scaled (returns a new Vec)",
            Box::new(move |jpeg, _| {
                let mut dec = jpeg_decoder::Decoder::new(jpeg);
                dec.read_info().unwrap();
                dec.scale((w.div_ceil(d)) as u16, (h.div_ceil(d)) as u16)
                    .unwrap();
                dec.decode().unwrap().len()
            }),
        ),
        (
            "oodmon FrameDecoder (what the edge runs for this target)",
            Box::new(move |jpeg, _| {
                let frame = Frame {
                    data: jpeg,
                    width: w as usize,
                    height: h as usize,
                    stride: None,
                    format: FrameFormat::Jpeg,
                    timestamp_us: 0,
                    media_us: None,
                    sequence: 0,
                };
                oodmon.decode(&frame).unwrap().data.len()
            }),
        ),
    ];
    let mut decoders = decoders;
    let n = decoders.len();
    let mut times = vec![Vec::new(); n];
    let mut allocations = vec![0u64; n];
    let mut buffers = vec![Vec::new(); n];
    for pass in 0..passes + 1 {
        for jpeg in &frames {
            for (i, (_, decode)) in decoders.iter_mut().enumerate() {
                let a = ALLOCATIONS.load(Ordering::Relaxed);
                let t = Instant::now();
                std::hint::black_box(decode(jpeg, &mut buffers[i]));
                let us = t.elapsed().as_secs_f64() * 1e6;
                if pass > 0 {
                    times[i].push(us);
                    allocations[i] += ALLOCATIONS.load(Ordering::Relaxed) - a;
                }
            }
        }
    }
    let decoded = (passes * frames.len()) as f64;
    let base = {
        let mut t = times[0].clone();
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    println!("| decoder | p50 us/frame | vs zune-jpeg | allocations/frame |");
    println!("|---|---|---|---|");
    for (i, (name, _)) in decoders.iter().enumerate() {
        let mut t = times[i].clone();
        t.sort_by(f64::total_cmp);
        let p50 = t[t.len() / 2];
        println!(
            "| {name} | {p50:.0} | {:.2}x | {:.1} |",
            p50 / base,
            allocations[i] as f64 / decoded
        );
    }
}
