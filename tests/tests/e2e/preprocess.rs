//! The shared preprocessing against Pillow's antialiased bilinear resize.

use oodmon_calibration::preprocess::{
    PixelFormat, PreprocessSpec, Preprocessor, ResizeFilter, ResizePolicy,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::util::run_python;

fn write_u8_image(path: &std::path::Path, data: &[u8], h: usize, w: usize) {
    // uint8 [h, w, 3] .npy
    let dict = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': ({h}, {w}, 3), }}");
    let mut header = dict.into_bytes();
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(b' ');
    }
    header.push(b'\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn resize_and_crop_match_pillow() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    // downscale with crop (camera to model), mild downscale, upscale (MNIST 28 -> 32), stretch
    for (sw, sh, w, h, policy) in [
        (
            160usize,
            90usize,
            32u32,
            32u32,
            ResizePolicy::ShorterSideCenterCrop,
        ),
        (45, 40, 32, 32, ResizePolicy::ShorterSideCenterCrop),
        (28, 28, 32, 32, ResizePolicy::ShorterSideCenterCrop),
        (50, 30, 24, 16, ResizePolicy::Stretch),
    ] {
        // smooth structure plus noise, so that both filtering and cropping matter
        let img: Vec<u8> = (0..sh * sw * 3)
            .map(|i| {
                let (y, x) = ((i / 3) / sw, (i / 3) % sw);
                let base = 128.0 + 100.0 * ((x as f64 / 7.0).sin() * (y as f64 / 5.0).cos());
                (base + rng.random_range(-20.0..20.0)).clamp(0.0, 255.0) as u8
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        write_u8_image(&dir.path().join("src.npy"), &img, sh, sw);
        let spec = PreprocessSpec {
            width: w,
            height: h,
            resize: policy,
            filter: ResizeFilter::Bilinear,
            mean: [0.0; 3],
            std: [1.0 / 255.0; 3],
            ..PreprocessSpec::cifar(32)
        };
        std::fs::write(
            dir.path().join("spec.json"),
            serde_json::to_string(&serde_json::json!({
                "width": w, "height": h,
                "resize": if policy == ResizePolicy::Stretch { "stretch" } else { "crop" },
            }))
            .unwrap(),
        )
        .unwrap();
        run_python("preprocess_reference.py", &[dir.path()]);
        // ref.npy is float32 [3, h, w]: its data is the file's last 4 * 3 * h * w bytes
        let bytes = std::fs::read(dir.path().join("ref.npy")).unwrap();
        let n = 3 * (w * h) as usize;
        let want: Vec<f32> = bytes[bytes.len() - 4 * n..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let mut p = Preprocessor::new(&spec, sw, sh, PixelFormat::Rgb8).unwrap();
        let mut ours = vec![0.0; p.tensor_len()];
        p.run(&img, None, &mut ours).unwrap();
        let worst = ours
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!("{sw}x{sh} -> {w}x{h} {policy:?}: worst difference {worst:.2e} (0..255 scale)");
        assert!(worst < 1e-3, "{sw}x{sh} -> {w}x{h}: worst {worst}");
    }
}
