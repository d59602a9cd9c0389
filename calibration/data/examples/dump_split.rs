//! Writes what a trainer outside Rust needs to train exactly the run `oodmon-trainer train`
//! would: the rows of the full training set in the run's training and held-out splits
//! (after `--classes`, with their labels in the run's numbering), and, for checking its own
//! resize, the first images of the training split as the Rust trainer stores them (RGB8 at
//! the input size, the detail stage included).
//!
//! `cargo run --release -p oodmon-data --example dump_split -- RUN/config.json OUT_DIR
//! [CHECK_IMAGES]` writes OUT_DIR/{train_rows,train_labels,val_rows,val_labels}.npy (int64)
//! and, with CHECK_IMAGES > 0, OUT_DIR/check_images.npy (`uint8 [n, h, w, 3]`).
//! `bench/finetune_torch.py` reads them.

use std::path::Path;

use oodmon_calibration::npy::{write_labels, write_u8};
use oodmon_calibration::preprocess::PreprocessSpec;
use oodmon_data::datasets::load;
use oodmon_data::{DataSpec, Split};

/// The fields of the trainer's `config.json` that choose the images (the trainer's own
/// type lives in the libtorch crate).
#[derive(serde::Deserialize)]
struct RunSplit {
    data: String,
    val_fraction: f64,
    seed: u64,
    #[serde(default)]
    split_seed: Option<u64>,
    #[serde(default)]
    classes: Option<Vec<usize>>,
    preprocessing: PreprocessSpec,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (config, out, check) = match args.as_slice() {
        [c, o] => (c, o, 0),
        [c, o, n] => (c, o, n.parse::<usize>()?),
        _ => return Err("usage: dump_split RUN/config.json OUT_DIR [CHECK_IMAGES]".into()),
    };
    let run: RunSplit = serde_json::from_str(&std::fs::read_to_string(config)?)?;
    let data: DataSpec = run.data.parse()?;
    let full = load(&data, Split::Train, &run.preprocessing)?;
    let (rows, labels, ds) = match &run.classes {
        None => ((0..full.len()).collect(), full.labels.clone(), full),
        Some(classes) => {
            let (rows, labels) = full
                .class_rows(classes)
                .ok_or(format!("classes {classes:?} do not fit the data set"))?;
            let kept = full.keep_classes(classes).ok_or("classes")?;
            (rows, labels, kept)
        }
    };
    let (train, val) = ds.split_rows(run.val_fraction, run.split_seed.unwrap_or(run.seed));
    let out = Path::new(out);
    std::fs::create_dir_all(out)?;
    let pick = |part: &[usize]| -> (Vec<i64>, Vec<i64>) {
        part.iter().map(|&i| (rows[i] as i64, labels[i])).unzip()
    };
    for (name, part) in [("train", &train), ("val", &val)] {
        let (r, l) = pick(part);
        write_labels(out.join(format!("{name}_rows.npy")), &r)?;
        write_labels(out.join(format!("{name}_labels.npy")), &l)?;
    }
    if check > 0 {
        let n = check.min(train.len());
        let mut pixels = Vec::with_capacity(n * ds.width * ds.height * 3);
        for &i in &train[..n] {
            pixels.extend_from_slice(ds.image(i));
        }
        write_u8(
            out.join("check_images.npy"),
            &[n, ds.height, ds.width, 3],
            &pixels,
        )?;
    }
    println!(
        "{}: {} training and {} held-out images of {}",
        out.display(),
        train.len(),
        val.len(),
        run.data
    );
    Ok(())
}
