//! Writes the image-quality measures of a data set's images as JSON lines, measured after a
//! calibration's own preprocessing exactly as `guards` measures them, for prototyping how the
//! camera guards judge and name a fault: `cargo run --release -p oodmon-data --example
//! dump_quality -- CALIB.json SPEC train|test LIMIT > OUT.jsonl` (SPEC may be
//! `corrupt:KIND:SEVERITY:SOURCE`).

use oodmon_calibration::CalibrationArtifact;
use oodmon_data::{image_quality, DataSpec, Split};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [calib, spec, split, limit] = args.as_slice() else {
        return Err("usage: dump_quality CALIB.json SPEC train|test LIMIT".into());
    };
    let artifact = CalibrationArtifact::from_json(&std::fs::read_to_string(calib)?)?;
    let pre = artifact
        .preprocessing
        .ok_or("the calibration has no preprocessing spec")?;
    let data: DataSpec = spec.parse()?;
    let split = if split == "train" {
        Split::Train
    } else {
        Split::Test
    };
    for q in image_quality(&pre, &data, split, Some(limit.parse()?))? {
        println!("{}", serde_json::to_string(&q)?);
    }
    Ok(())
}
