//! Without the `regenerate` feature this does nothing: the committed bindings are used.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "regenerate")]
    regenerate();
}

/// The upstream crate's build script (bindgen 0.65, default options, `wrapper.h`), writing to
/// OUT_DIR and, when `V4L2_SYS_BINDINGS_OUT` names a file, there too.
#[cfg(feature = "regenerate")]
fn regenerate() {
    use std::path::PathBuf;
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-env-changed=V4L2_SYS_BINDINGS_OUT");
    let bindings = bindgen::Builder::default()
        .header("wrapper.h")
        .generate()
        .expect("bindgen failed (is libclang installed? `apt-get install libclang-dev`)");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings
        .write_to_file(out.join("v4l2_bindings.rs"))
        .expect("cannot write the bindings to OUT_DIR");
    if let Some(copy) = std::env::var_os("V4L2_SYS_BINDINGS_OUT") {
        bindings
            .write_to_file(&copy)
            .expect("cannot write the bindings to V4L2_SYS_BINDINGS_OUT");
    }
}
