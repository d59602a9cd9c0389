//! Embeds the libtorch library directory as an rpath, so the trainer's binaries and tests
//! run without LD_LIBRARY_PATH; and keeps libtorch_cuda linked so that CUDA is found at
//! run time when the libtorch build has it.
fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" {
        if let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") {
            println!("cargo:rustc-link-arg=-Wl,-rpath={}", lib.to_string_lossy());
        }
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
    }
}
