//! Raw V4L2 bindings: the upstream `v4l2-sys-mit` 0.3.0 with bindgen's output committed per
//! target architecture (generated from `<linux/videodev2.h>` by `cargo xtask v4l2-bindings`),
//! so that a build needs no libclang. The layout tests bindgen writes run in the test command
//! on x86_64 and, under qemu, aarch64.
#![allow(clippy::all)]
#![allow(deref_nullptr)]
#![allow(non_camel_case_types)]
#![allow(non_snake_case)]
#![allow(non_upper_case_globals)]

#[cfg(feature = "regenerate")]
include!(concat!(env!("OUT_DIR"), "/v4l2_bindings.rs"));

#[cfg(all(not(feature = "regenerate"), target_arch = "x86_64"))]
include!("bindings/x86_64.rs");

#[cfg(all(not(feature = "regenerate"), target_arch = "aarch64"))]
include!("bindings/aarch64.rs");

#[cfg(all(not(feature = "regenerate"), target_arch = "arm"))]
include!("bindings/arm.rs");

#[cfg(all(
    not(feature = "regenerate"),
    not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm"))
))]
compile_error!(
    "no committed V4L2 bindings for this architecture: build with the `regenerate` feature \
     (needs libclang), or oodmon-edge without its `v4l2` feature"
);
