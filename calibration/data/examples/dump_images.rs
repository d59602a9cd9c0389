//! Writes a data set's images as one `uint8` `.npy` array `[n, h, w, 3]`, at the preprocessing
//! spec's detail size (32x32 for the shipped default), for prototyping image-quality measures
//! in NumPy: `cargo run --release -p oodmon-data --example dump_images -- SPEC train|test
//! LIMIT OUT.npy`.

use std::io::Write;

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
    let header = format!(
        "{{'descr': '|u1', 'fortran_order': False, 'shape': ({n}, {}, {}, 3), }}",
        ds.height, ds.width
    );
    let mut h = header.into_bytes();
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(b' ');
    }
    h.push(b'\n');
    let mut f = std::fs::File::create(out)?;
    f.write_all(b"\x93NUMPY\x01\x00")?;
    f.write_all(&(h.len() as u16).to_le_bytes())?;
    f.write_all(&h)?;
    f.write_all(&ds.pixels[..n * ds.width * ds.height * 3])?;
    Ok(())
}
