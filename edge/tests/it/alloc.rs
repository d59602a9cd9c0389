//! Bounded memory in the frame loop: preprocessing and scoring allocate nothing per frame
//! once the geometry is known, and a whole frame (tract's run included) leaves no memory
//! behind. Counted per thread by a counting global allocator.
#![allow(unsafe_code)] // a GlobalAlloc is an unsafe trait

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use oodmon_calibration::preprocess::PixelFormat;
use oodmon_calibration::PreprocessSpec;
use oodmon_edge::error::SourceError;
use oodmon_edge::inference::{
    run_overlapped, FramePreparer, FrameRecord, InferStage, OverlapSettings, RunLimits,
};
use oodmon_edge::source::FrameSource;
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

/// The same raw frame again and again, borrowed: a source that allocates nothing.
struct SameFrame {
    pixels: Vec<u8>,
    next: u64,
    count: u64,
}

impl FrameSource for SameFrame {
    fn next_frame(&mut self) -> Result<Option<Frame<'_>>, SourceError> {
        if self.next == self.count {
            return Ok(None);
        }
        self.next += 1;
        Ok(Some(Frame {
            data: &self.pixels,
            width: 40,
            height: 30,
            stride: None,
            format: FrameFormat::Raw(PixelFormat::Rgb8),
            timestamp_us: self.next,
            media_us: None,
            sequence: self.next,
        }))
    }
    fn describe(&self) -> String {
        "same frame".into()
    }
}

/// A model that allocates nothing, and notes its own thread's allocation count so far (the
/// loop's work on the inference thread: taking frames, sending records back).
struct Constant(Arc<AtomicU64>);

impl InferStage for Constant {
    fn infer(&mut self, input: &[f32]) -> oodmon_edge::error::Result<FrameRecord> {
        self.0.store(allocations(), Ordering::Relaxed);
        Ok(crate::util::fake_record(input[0] as f64, 1.0))
    }
}

#[test]
fn the_overlapped_loop_allocates_nothing_per_frame_on_either_thread() {
    // setup (thread, channel, tensors, statistics) costs the same for any run length: the
    // per-frame cost is the difference between a long and a short run
    // guards that bound the frame's own noise: it is measured on every frame too
    let measured: Vec<oodmon_calibration::ImageQuality> = (0..60)
        .map(|i| oodmon_calibration::ImageQuality {
            mean_luma: 0.3 + 0.005 * i as f32,
            contrast: 0.2,
            sharpness: 0.01,
            detail: 1.0,
            frame_noise: Some(0.01 + 0.0001 * i as f32),
            ..Default::default()
        })
        .collect();
    let guards = oodmon_calibration::QualityBounds::fit(&measured, 0.01).unwrap();
    assert!(guards.frame_noise_max.is_some());
    let count_run = |frames: u64, guards: Option<oodmon_calibration::QualityBounds>| {
        let mut preparer = FramePreparer::new(&PreprocessSpec::cifar(16), guards);
        let mut source = SameFrame {
            pixels: id_image(2, 40, 30, 3),
            next: 0,
            count: frames,
        };
        let stop = AtomicBool::new(false);
        let limits = RunLimits {
            max_frames: None,
            max_consecutive_bad_frames: 3,
        };
        // plan the preprocessing for this geometry first (a one-off per geometry)
        let mut scratch = vec![0f32; preparer.tensor_len()];
        let mut first = SameFrame {
            pixels: id_image(2, 40, 30, 3),
            next: 0,
            count: 1,
        };
        let frame = first.next_frame().unwrap().unwrap();
        preparer.prepare(&frame, &mut scratch).unwrap();
        let before = allocations();
        let worker = Arc::new(AtomicU64::new(0));
        let summary = run_overlapped(
            &mut preparer,
            &mut Constant(worker.clone()),
            &mut source,
            &limits,
            &OverlapSettings::FILES,
            &stop,
            |_| Ok(()),
        )
        .unwrap();
        assert_eq!(summary.frames, frames);
        (allocations() - before, worker.load(Ordering::Relaxed))
    };
    // std's channels allocate two things the first time a thread waits on one, whether it
    // waits depends on timing (under qemu a 20-frame run waited and the 220-frame run after
    // it did not): the thread's waiting context, once per thread (made here, before the
    // count), and the channel's list of waiters, once per channel and run (the one
    // allocation a run may or may not make: the tolerance below)
    let (_keep, waited) = std::sync::mpsc::sync_channel::<()>(1);
    let _ = waited.recv_timeout(std::time::Duration::from_millis(1));
    for guards in [None, Some(guards)] {
        let with = guards.is_some();
        let (short, long) = (count_run(20, guards.clone()), count_run(220, guards));
        // 200 more frames: one allocation per frame, or per 100, would show here
        assert!(
            long.0 <= short.0 + 1 && long.1 <= short.1 + 1,
            "allocations (reading thread, inference thread) for 20 frames {short:?} and 220 \
             frames {long:?}, frame noise measured: {with}"
        );
    }
}

#[test]
fn whole_frame_allocations_of_the_built_in_bundle_are_counted() {
    // the shipped model on the shipped MJPEG frames: what is left per frame is the JPEG
    // decoder's and tract's own (reported, and bounded so that a regression shows)
    let mut engine = Engine::new(oodmon_edge::app::demo::bundle().unwrap()).unwrap();
    let mut source = oodmon_edge::app::demo::scenario(true).unwrap();
    // few frames: the counts are the same every frame, and this runs under qemu too
    let frames = 4u64;
    let (mut decode, mut inference, mut scoring) = (0u64, 0u64, 0u64);
    for i in 0..frames + 1 {
        let frame = source.next_frame().unwrap().unwrap();
        let a = allocations();
        engine.prepare(&frame).unwrap();
        let b = allocations();
        engine.infer().unwrap();
        let c = allocations();
        engine.score().unwrap();
        let d = allocations();
        if i >= 1 {
            decode += b - a;
            inference += c - b;
            scoring += d - c;
        }
    }
    let per = |n: u64| n as f64 / frames as f64;
    eprintln!(
        "allocations per frame (built-in bundle, 320x240 MJPEG): decode + preprocess {:.1}, \
         inference {:.1}, scoring {:.1}",
        per(decode),
        per(inference),
        per(scoring)
    );
    assert_eq!(scoring, 0);
    assert!(
        per(decode) <= 40.0,
        "JPEG decoding: {:.1} a frame",
        per(decode)
    );
    // tract 0.23.9 with oodmon's kernels: 147 on x86-64 with the int8 pointwise layers, 460
    // with the exact kernels only (882 with tract's own operators), 1,081 on aarch64 before
    // them (its kernels pack differently)
    assert!(
        per(inference) <= 1500.0,
        "tract: {:.1} a frame",
        per(inference)
    );
}
