//! Bounded memory in the frame loop: preprocessing and scoring allocate nothing per frame
//! once the geometry is known, and a whole frame (tract's run included) leaves no memory
//! behind. Counted per thread by a counting global allocator.
#![allow(unsafe_code)] // a GlobalAlloc is an unsafe trait

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use oodmon_calibration::preprocess::PixelFormat;
use oodmon_edge::{Engine, Frame, FrameFormat};
use oodmon_runtime::Bundle;

use crate::util::{id_image, write_tiny_bundle};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    static LIVE_BYTES: Cell<i64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        let _ = LIVE_BYTES.try_with(|c| c.set(c.get() + layout.size() as i64));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = LIVE_BYTES.try_with(|c| c.set(c.get() - layout.size() as i64));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        let _ = LIVE_BYTES.try_with(|c| c.set(c.get() + new_size as i64 - layout.size() as i64));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(|c| c.get())
}

fn live_bytes() -> i64 {
    LIVE_BYTES.with(|c| c.get())
}

#[test]
fn preprocessing_and_scoring_do_not_allocate_per_frame() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bundle(&dir.path().join("b"));
    let mut engine = Engine::new(Bundle::load(dir.path().join("b")).unwrap()).unwrap();
    let (w, h) = (64, 48);
    let rgb = id_image(1, w, h, 1);
    let yuyv: Vec<u8> = (0..w * h * 2).map(|i| (i * 13 % 256) as u8).collect();
    for (data, format) in [(&rgb, PixelFormat::Rgb8), (&yuyv, PixelFormat::Yuyv)] {
        let frame = Frame {
            data,
            width: w,
            height: h,
            stride: None,
            format: FrameFormat::Raw(format),
            timestamp_us: 0,
            media_us: None,
            sequence: 0,
        };
        // the first frame of a geometry plans the preprocessing
        engine.process(&frame).unwrap();
        engine.process(&frame).unwrap();
        let before = allocations();
        for _ in 0..50 {
            engine.prepare(&frame).unwrap();
        }
        let preprocessing = allocations() - before;
        let before = allocations();
        for _ in 0..50 {
            engine.score().unwrap();
        }
        let scoring = allocations() - before;
        assert_eq!(
            (preprocessing, scoring),
            (0, 0),
            "{format:?}: allocations in 50 frames (preprocessing, scoring)"
        );

        // whole frames, inference included: memory comes back after each
        let live = live_bytes();
        for _ in 0..50 {
            engine.process(&frame).unwrap();
        }
        let grown = live_bytes() - live;
        assert!(grown <= 0, "{format:?}: {grown} bytes kept after 50 frames");
    }
}
