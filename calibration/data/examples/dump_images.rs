//! Writes a data set's images as one `uint8` `.npy` array `[n, h, w, 3]`, at the preprocessing
//! spec's detail size (32x32 for the shipped default), for prototyping image-quality measures
//! in NumPy: `cargo run --release -p oodmon-data --example dump_images -- SPEC train|test
//! LIMIT OUT.npy`.

use oodmon_calibration::npy::write_u8;
use oodmon_calibration::preprocess::PreprocessSpec;
use oodmon_data::datasets::load;
use oodmon_data::{DataSpec, Split};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [spec, split, limit, out] = args.as_slice() else {
        return Err("usage: dump_images SPEC train|test LIMIT OUT.npy".into());
    };
    let data: DataSpec = spec.parse()?;
    let split = if split == "train" {
        Split::Train
    } else {
        Split::Test
    };
    let limit: usize = limit.parse()?;
    let pre = PreprocessSpec::cifar(32);
    let ds = load(&data, split, &pre)?;
    let n = ds.len().min(limit);
    write_u8(
        out,
        &[n, ds.height, ds.width, 3],
        &ds.pixels[..n * ds.width * ds.height * 3],
    )?;
    Ok(())
}
