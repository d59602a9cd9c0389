//! The MJPEG AVI reader on any file: opening and reading frames end in frames, typed
//! errors or the end of the file, never a panic or an endless loop.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oodmon_edge::source::{AviSource, FrameSource};

fuzz_target!(|data: &[u8]| {
    let reader = Box::new(std::io::Cursor::new(data.to_vec()));
    let Ok(mut avi) = AviSource::from_reader(reader, "fuzz.avi", false) else {
        return;
    };
    // every call consumes at least a chunk header, so this many calls reach the end
    for _ in 0..data.len() / 8 + 2 {
        match avi.next_frame() {
            Ok(None) => return,
            Ok(Some(frame)) => assert!(frame.data.len() <= data.len()),
            Err(e) => assert!(e.is_transient()),
        }
    }
    panic!(
        "the AVI reader did not reach the end of {} bytes",
        data.len()
    );
});
