//! The `oodmon-edge` command line: start-up checks fail with one clear line, frames flow
//! from files and standard input, and the demo runs.

use std::io::Write;
use std::process::Stdio;

use crate::util::{
    assert_fails_cleanly, avi, edge, edge_command, id_image, jpeg, run_records, save_image,
    write_tiny_bundle,
};

#[test]
fn check_accepts_a_good_bundle_and_names_what_is_wrong_with_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bundle(&dir.path().join("good"));
    let out = edge(dir.path(), &["check", "--bundle", "good"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("OK") && stdout.contains("one inference"),
        "{stdout}"
    );

    let copy = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["encoder.onnx", "calib.json"] {
            std::fs::copy(dir.path().join("good").join(f), d.join(f)).unwrap();
        }
        d
    };
    // truncated encoder: its hash no longer matches
    let d = copy("truncated");
    let bytes = std::fs::read(d.join("encoder.onnx")).unwrap();
    std::fs::write(d.join("encoder.onnx"), &bytes[..bytes.len() / 2]).unwrap();
    assert_fails_cleanly(
        &edge(dir.path(), &["check", "--bundle", "truncated"]),
        &["hash"],
    );
    // corrupt encoder whose hash the calibration names: tract refuses it
    let d = copy("corrupt");
    let junk = b"definitely not protobuf".repeat(10);
    let calib = std::fs::read_to_string(d.join("calib.json")).unwrap();
    let old = oodmon_calibration::io::sha256_bytes(&bytes);
    let new = oodmon_calibration::io::sha256_bytes(&junk);
    std::fs::write(d.join("calib.json"), calib.replace(&old, &new)).unwrap();
    std::fs::write(d.join("encoder.onnx"), &junk).unwrap();
    let out = edge(dir.path(), &["check", "--bundle", "corrupt"]);
    assert_fails_cleanly(&out, &["encoder.onnx", "not a usable ONNX encoder"]);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains(".npy"),
        "an ONNX file named as another kind"
    );
    // unknown schema version
    let d = copy("schema");
    let calib = std::fs::read_to_string(d.join("calib.json")).unwrap();
    let current_schema = format!("\"schema_version\": {}", oodmon_calibration::SCHEMA_VERSION);
    assert!(calib.contains(&current_schema));
    std::fs::write(
        d.join("calib.json"),
        calib.replace(&current_schema, "\"schema_version\": 99"),
    )
    .unwrap();
    assert_fails_cleanly(&edge(dir.path(), &["check", "--bundle", "schema"]), &["99"]);
    // a schema version written as a string gets its own message
    std::fs::write(
        d.join("calib.json"),
        calib.replace(&current_schema, "\"schema_version\": \"3\""),
    )
    .unwrap();
    assert_fails_cleanly(
        &edge(dir.path(), &["check", "--bundle", "schema"]),
        &["schema_version \"3\" is not a whole number"],
    );
    // calibration made for another input size
    let d = copy("size");
    let calib = std::fs::read_to_string(d.join("calib.json")).unwrap();
    std::fs::write(
        d.join("calib.json"),
        calib
            .replace("\"width\": 32", "\"width\": 48")
            .replace("\"height\": 32", "\"height\": 48"),
    )
    .unwrap();
    assert_fails_cleanly(
        &edge(dir.path(), &["check", "--bundle", "size"]),
        &["48x48"],
    );
    // no bundle at all: the cause is said once
    let out = edge(dir.path(), &["check", "--bundle", "nowhere"]);
    assert_fails_cleanly(&out, &["nowhere"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
}

#[test]
fn run_fails_at_start_up_on_bad_settings_before_opening_anything() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bundle(&dir.path().join("b"));
    // a missing camera
    assert_fails_cleanly(
        &edge(
            dir.path(),
            &[
                "run",
                "--bundle",
                "b",
                "--source",
                "v4l:/dev/video-oodmon-missing",
            ],
        ),
        &["video-oodmon-missing"],
    );
    // YUYV frames of an odd width do not exist
    assert_fails_cleanly(
        &edge(
            dir.path(),
            &["run", "--bundle", "b", "--source", "stdin:63x64:yuyv"],
        ),
        &["even width", "63"],
    );
    // a malformed source
    assert_fails_cleanly(
        &edge(
            dir.path(),
            &["run", "--bundle", "b", "--source", "v4l:/dev/video0:big"],
        ),
        &["bad size"],
    );
    // a misspelt configuration key
    std::fs::write(
        dir.path().join("edge.toml"),
        "bundle = \"b\"\nsource = \"images:x/*.png\"\n[camera]\ntimeout_msec = 5\n",
    )
    .unwrap();
    assert_fails_cleanly(
        &edge(dir.path(), &["run", "--config", "edge.toml"]),
        &["edge.toml", "timeout_msec"],
    );
    // an invalid value
    std::fs::write(
        dir.path().join("zero.toml"),
        "[faults]\nmax_consecutive_bad_frames = 0\n",
    )
    .unwrap();
    assert_fails_cleanly(
        &edge(
            dir.path(),
            &[
                "run",
                "--config",
                "zero.toml",
                "--bundle",
                "b",
                "--source",
                "images:*.png",
            ],
        ),
        &["max_consecutive_bad_frames"],
    );
}

#[test]
fn run_scores_image_files_into_json_lines_and_faults_on_corrupt_ones() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bundle(&dir.path().join("b"));
    std::fs::create_dir_all(dir.path().join("frames")).unwrap();
    for i in 0..4 {
        save_image(
            &dir.path().join(format!("frames/{i}.png")),
            &id_image(i % 3, 50, 40, i as u64),
            50,
            40,
        );
    }
    std::fs::write(
        dir.path().join("edge.toml"),
        "bundle = \"b\"\nsource = \"images:frames/*.png\"\n[output]\nrecords = \"records.jsonl\"\n",
    )
    .unwrap();
    let out = edge(dir.path(), &["run", "--config", "edge.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = std::fs::read_to_string(dir.path().join("records.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = records
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    for (i, r) in lines.iter().enumerate() {
        assert_eq!(r["sequence"], i as u64);
        assert!(r["score"].as_f64().unwrap().is_finite());
        assert!(r["latency"]["inference_us"].as_u64().unwrap() > 0);
        assert!(r["timestamp_us"].as_u64().unwrap() > 0);
    }
    // a second run (a restarted service) appends; a line torn by a killed process is cut
    // off before it, with a warning, and every line left is a whole record
    let path = dir.path().join("records.jsonl");
    let mut torn = std::fs::read(&path).unwrap();
    torn.extend_from_slice(br#"{"sequence":4,"timestamp_us":17,"sco"#);
    std::fs::write(&path, &torn).unwrap();
    let out = edge(dir.path(), &["run", "--config", "edge.toml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("torn last line"), "{stderr}");
    let records = std::fs::read_to_string(&path).unwrap();
    let sequences: Vec<u64> = records
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["sequence"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(sequences, [0, 1, 2, 3, 0, 1, 2, 3]);
    // command-line values override the configuration
    let out = edge(
        dir.path(),
        &[
            "run",
            "--config",
            "edge.toml",
            "--records",
            "-",
            "--max-frames",
            "2",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);

    std::fs::create_dir_all(dir.path().join("bad")).unwrap();
    for i in 0..5 {
        std::fs::write(
            dir.path().join(format!("bad/{i}.jpg")),
            b"\xFF\xD8 not a jpeg",
        )
        .unwrap();
    }
    let out = edge(
        dir.path(),
        &[
            "run",
            "--bundle",
            "b",
            "--source",
            "images:bad",
            "--max-bad-frames",
            "3",
        ],
    );
    assert_fails_cleanly(&out, &["3 consecutive bad frames"]);
}

#[test]
fn overlapped_and_sequential_runs_give_the_same_records_in_the_same_order() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bundle(&dir.path().join("b"));
    std::fs::create_dir_all(dir.path().join("frames")).unwrap();
    for i in 0..12 {
        let path = dir.path().join(format!("frames/{i:02}.png"));
        if i == 5 || i == 6 {
            // bad frames in the middle: reported in capture order, not a fault
            std::fs::write(&path, b"not a png").unwrap();
        } else {
            save_image(&path, &id_image(i % 3, 50, 40, i as u64), 50, 40);
        }
    }
    let records = |overlap: &str| {
        let (lines, stderr) = run_records(dir.path(), &["--overlap", overlap]);
        assert!(stderr.contains("dropped 0"), "{stderr}");
        (lines, stderr)
    };
    let (sequential, log) = records("off");
    assert!(log.contains("frames/s, sequential"), "{log}");
    let (overlapped, log) = records("on");
    assert!(log.contains("frames/s, overlapped"), "{log}");
    assert_eq!(sequential.len(), 10);
    assert_eq!(overlapped.len(), 10);
    for (s, o) in sequential.iter().zip(&overlapped) {
        for key in ["sequence", "score", "ood", "nearest", "threshold"] {
            assert_eq!(s[key], o[key], "{key}: {s} vs {o}");
        }
    }
    let sequences: Vec<u64> = overlapped
        .iter()
        .map(|r| r["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(sequences, [0, 1, 2, 3, 4, 7, 8, 9, 10, 11]);
    // the drop limit must leave room for a drop rate that is not a fault
    std::fs::write(
        dir.path().join("drops.toml"),
        "[faults]\nmax_dropped_frames = 30\ndropped_frames_window = 30\n",
    )
    .unwrap();
    assert_fails_cleanly(
        &edge(
            dir.path(),
            &["run", "--config", "drops.toml", "--bundle", "b"],
        ),
        &["max_dropped_frames", "dropped_frames_window"],
    );
    let out = edge(dir.path(), &["run", "--overlap", "sometimes"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is not one of auto, on, off"), "{stderr}");
}

#[test]
fn run_reads_raw_frames_from_standard_input() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bundle(&dir.path().join("b"));
    let (w, h) = (40, 30);
    let mut child = edge_command(
        dir.path(),
        &[
            "run",
            "--bundle",
            "b",
            "--source",
            "stdin:40x30:rgb",
            "--records",
            "-",
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        for i in 0..3 {
            stdin.write_all(&id_image(i % 3, w, h, i as u64)).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    // every frame was scored; then the pipe closed, which a live source must not do:
    // a non-zero exit, so that a supervisor restarts the pipeline
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    assert_fails_cleanly(&out, &["ended after 3 frames", "live source"]);
}

#[test]
fn files_may_end_unless_looped_and_a_corrupt_avi_chunk_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bundle(&dir.path().join("b"));
    let frames: Vec<Vec<u8>> = (0..4)
        .map(|i| jpeg(&id_image(i % 3, 48, 40, i as u64), 48, 40))
        .collect();
    let mut bytes = avi(&frames, 48, 40);
    // an index chunk after the frames, whose size runs far past the end of the file
    bytes.extend_from_slice(b"idx1");
    bytes.extend_from_slice(&0x7fff_0000u32.to_le_bytes());
    bytes.extend_from_slice(&[0u8; 16]);
    std::fs::write(dir.path().join("bad.avi"), &bytes).unwrap();
    let args = ["run", "--bundle", "b", "--source", "avi:bad.avi"];
    let out = edge(dir.path(), &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("runs past the end of the file"), "{stderr}");
    assert!(
        stderr.contains("the file source ended after 4 frames (no --loop)"),
        "{stderr}"
    );
    // looped, it starts again after the damaged end
    let out = edge(
        dir.path(),
        &[
            &args[..],
            &["--loop", "--max-frames", "10", "--records", "-"],
        ]
        .concat(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 10);
}

#[test]
fn demo_runs_from_any_directory_and_reproduces_its_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let out = edge(dir.path(), &["demo", "--quiet"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("scenario reproduced"), "{stdout}");
    assert!(stdout.contains("144 frames"), "{stdout}");
}

#[test]
fn demo_checks_a_bundle_on_disk_and_fails_one_that_misses_its_scenario() {
    // the study checks each candidate default with `demo --bundle DIR` before proposing it:
    // the built-in bundle copied to disk reproduces the scenario; the same bundle with a
    // threshold no frame reaches flags neither the astronaut nor the coins, and the demo
    // says so and exits with an error
    let dir = tempfile::tempdir().unwrap();
    let built_in = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("demo/bundle");
    for name in ["good", "blind"] {
        let to = dir.path().join(name);
        std::fs::create_dir(&to).unwrap();
        for file in ["encoder.onnx", "calib.json"] {
            std::fs::copy(built_in.join(file), to.join(file)).unwrap();
        }
    }
    let calib = dir.path().join("blind/calib.json");
    let mut artifact: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&calib).unwrap()).unwrap();
    artifact["thresholds"]["global"] = serde_json::json!(1.0e9);
    std::fs::write(&calib, artifact.to_string()).unwrap();

    let out = edge(dir.path(), &["demo", "--quiet", "--bundle", "good"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("oodmon demo: bundle good on 144"),
        "{stdout}"
    );
    assert!(stdout.contains("scenario reproduced"), "{stdout}");

    let out = edge(dir.path(), &["demo", "--quiet", "--bundle", "blind"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("scenario NOT reproduced"), "{stdout}");
    assert!(stdout.contains("  0 flagged OOD"), "{stdout}");
    assert!(
        stderr.contains("did not reproduce its scenario"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn pty() -> (serialport::TTYPort, serialport::TTYPort, String) {
    oodmon_serial::pty_pair().expect("pseudo-terminal pair")
}

#[test]
fn demo_sends_its_alarms_over_a_serial_line() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let (mut master, _slave, name) = pty();
    let child = edge_command(
        dir.path(),
        &[
            "demo",
            "--quiet",
            "--frame-delay-ms",
            "50",
            "--serial",
            &name,
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut monitor = oodmon_monitor::monitor::Monitor::new(10_000);
    let mut events = Vec::new();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_secs(600) {
            match master.read(&mut buf) {
                Ok(n) => monitor.feed(&buf[..n], 0, &mut events),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => break,
            }
            if monitor.state
                == Some((
                    oodmon_protocol::AlarmState::Fault,
                    oodmon_protocol::Reason::Stopping,
                ))
            {
                break;
            }
        }
        (monitor, events)
    });
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (monitor, events) = reader.join().unwrap();
    let states: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            oodmon_monitor::monitor::MonitorEvent::State { state, .. } => Some(*state),
            _ => None,
        })
        .collect();
    use oodmon_protocol::AlarmState;
    assert_eq!(states.first(), Some(&AlarmState::Fault), "{events:?}");
    assert_eq!(states.last(), Some(&AlarmState::Fault), "{events:?}");
    assert!(states.contains(&AlarmState::Ood), "{events:?}");
    assert!(monitor.scores.len() >= 70, "SCORE per frame");
    assert_eq!(monitor.crc_errors, 0);
    assert_eq!(monitor.lost_messages, 0);
}

#[test]
fn records_to_a_closed_pipe_end_the_run_without_an_error() {
    // `oodmon-edge run --records - | head`: the reader goes away, the run ends, exit 0
    let dir = tempfile::tempdir().unwrap();
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("demo");
    let source = format!("avi:{}", demo.join("scenario.avi").display());
    let bundle = demo.join("bundle");
    let mut child = edge_command(
        dir.path(),
        &[
            "run",
            "--bundle",
            bundle.to_str().unwrap(),
            "--source",
            &source,
            "--records",
            "-",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

#[test]
fn an_oversaturated_camera_raises_its_own_fault_in_records_and_journal() {
    // the built-in bundle on the demo's first frames (a cat, in distribution) through
    // CIFAR-10-C's strongest saturation: every frame fails the saturation guard (the
    // corruption report: 100% of the demo's cat frames), and the alarm goes to FAULT with
    // the reason camera_oversaturated
    let dir = tempfile::tempdir().unwrap();
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("demo");
    let source = format!("avi:{}", demo.join("scenario.avi").display());
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--bundle",
            demo.join("bundle").to_str().unwrap(),
            "--source",
            &source,
            "--max-frames",
            "10",
            "--records",
            "-",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = edge(dir.path(), &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let clean = run(&[]);
    assert_eq!(clean.len(), 10);
    assert!(clean.iter().all(|r| r["camera"].is_null()), "{clean:?}");
    let vivid = run(&["--corrupt", "saturate:5", "--journal", "journal.jsonl"]);
    assert_eq!(vivid.len(), 10);
    for (c, r) in clean.iter().zip(&vivid) {
        assert_eq!(r["camera"], "oversaturated", "{r}");
        let saturation = |r: &serde_json::Value| r["quality"]["saturation"].as_f64().unwrap();
        assert!(saturation(r) > saturation(c) + 0.1, "{c} {r}");
    }
    let events =
        oodmon_edge::output::journal::Journal::read(&dir.path().join("journal.jsonl")).unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.state == "FAULT" && e.reason == "camera_oversaturated"),
        "{events:?}"
    );
}

#[test]
fn backends_are_named_and_a_missing_one_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bundle(&dir.path().join("b"));
    let out = edge(dir.path(), &["check", "--bundle", "b"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("backend tract (this build has tract"),
        "{stdout}"
    );
    for backend in oodmon_runtime::Backend::ALL
        .into_iter()
        .filter(|b| !b.compiled_in())
    {
        assert_fails_cleanly(
            &edge(
                dir.path(),
                &["check", "--bundle", "b", "--backend", backend.name()],
            ),
            &[
                backend.name(),
                "not in this build",
                backend.feature().unwrap(),
            ],
        );
    }
}

/// A bundle calibrated on onnxruntime (`fit-model --backend onnxruntime` records it in
/// `embedded_on`): it runs on onnxruntime as calibrated, any other backend is compared with
/// onnxruntime first, and a build without onnxruntime says it cannot compare.
#[test]
fn a_bundle_calibrated_on_another_backend_is_checked_against_that_backend() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("b");
    write_tiny_bundle(&b);
    let calib = b.join("calib.json");
    let artifact = oodmon_calibration::CalibrationArtifact::load(&calib)
        .unwrap()
        .with_embedded_on("onnxruntime")
        .unwrap();
    artifact.save(&calib).unwrap();
    // a name that is no backend is refused when the bundle loads
    let t = dir.path().join("t");
    write_tiny_bundle(&t);
    let text = artifact.to_json().replace(
        "\"embedded_on\": \"onnxruntime\"",
        "\"embedded_on\": \"tensorrt\"",
    );
    std::fs::write(t.join("calib.json"), text).unwrap();
    assert_fails_cleanly(
        &edge(dir.path(), &["check", "--bundle", "t"]),
        &["embedded_on", "tensorrt"],
    );
    let tract = edge(dir.path(), &["check", "--bundle", "b"]);
    let stdout = String::from_utf8_lossy(&tract.stdout);
    if !oodmon_runtime::Backend::Onnxruntime.compiled_in() {
        assert_fails_cleanly(
            &tract,
            &[
                "calibrated on onnxruntime",
                "this build lacks",
                "`onnxruntime` feature",
            ],
        );
        return;
    }
    assert!(
        tract.status.success(),
        "{}",
        String::from_utf8_lossy(&tract.stderr)
    );
    assert!(
        stdout.contains("calibration embedded on onnxruntime"),
        "{stdout}"
    );
    assert!(
        stdout.contains("against onnxruntime: embeddings differ by 0.0"),
        "{stdout}"
    );
    let ort = edge(
        dir.path(),
        &["check", "--bundle", "b", "--backend", "onnxruntime"],
    );
    let stdout = String::from_utf8_lossy(&ort.stdout);
    assert!(
        ort.status.success(),
        "{}",
        String::from_utf8_lossy(&ort.stderr)
    );
    assert!(!stdout.contains("against"), "{stdout}");
}

#[cfg(feature = "onnxruntime")]
#[test]
fn onnxruntime_runs_a_bundle_unchanged_after_checking_it_against_tract() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bundle(&dir.path().join("b"));
    let out = edge(
        dir.path(),
        &["check", "--bundle", "b", "--backend", "onnxruntime"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("backend onnxruntime"), "{stdout}");
    assert!(
        stdout.contains("against tract: embeddings differ by 0.0"),
        "{stdout}"
    );
    assert!(stdout.contains("decisions differ on 0"), "{stdout}");
    // the same records as tract's, frame by frame
    std::fs::create_dir_all(dir.path().join("frames")).unwrap();
    for i in 0..6 {
        save_image(
            &dir.path().join(format!("frames/{i}.png")),
            &id_image(i % 3, 50, 40, i as u64),
            50,
            40,
        );
    }
    let records = |backend: &str| {
        let (lines, stderr) = run_records(dir.path(), &["--backend", backend]);
        assert!(
            stderr.contains(&format!("encoder on {backend}")),
            "{stderr}"
        );
        lines
    };
    let (tract, ort) = (records("tract"), records("onnxruntime"));
    assert_eq!(tract.len(), 6);
    for (a, b) in tract.iter().zip(&ort) {
        assert_eq!(a["ood"], b["ood"]);
        assert_eq!(a["nearest"], b["nearest"]);
        let (x, y) = (a["score"].as_f64().unwrap(), b["score"].as_f64().unwrap());
        assert!((x - y).abs() <= 1e-3 * x.abs().max(1.0), "{a} vs {b}");
    }
    // no library where it is looked for: a clear start-up error
    let out = edge_command(
        dir.path(),
        &["check", "--bundle", "b", "--backend", "onnxruntime"],
    )
    .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
    .output()
    .unwrap();
    assert_fails_cleanly(&out, &["backend onnxruntime", "ORT_DYLIB_PATH"]);
    // an execution provider the library lacks (the wheel's has the CPU one only): a clear
    // start-up error, not a run on the CPU; an unknown name likewise
    for (providers, needle) in [
        ("cuda", "CUDAExecutionProvider"),
        ("tensorrt", "TensorrtExecutionProvider"),
        ("npu", "unknown provider"),
    ] {
        let out = edge_command(
            dir.path(),
            &["check", "--bundle", "b", "--backend", "onnxruntime"],
        )
        .env("OODMON_ORT_PROVIDERS", providers)
        .output()
        .unwrap();
        assert_fails_cleanly(&out, &["OODMON_ORT_PROVIDERS", needle]);
    }
    // the CPU provider, named, is the default's run
    let out = edge_command(
        dir.path(),
        &["check", "--bundle", "b", "--backend", "onnxruntime"],
    )
    .env("OODMON_ORT_PROVIDERS", "cpu")
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_corrupted_camera_can_be_simulated_on_any_source() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bundle(&dir.path().join("b"));
    std::fs::create_dir_all(dir.path().join("frames")).unwrap();
    for i in 0..3 {
        save_image(
            &dir.path().join(format!("frames/{i}.png")),
            &id_image(i % 3, 50, 40, i as u64),
            50,
            40,
        );
    }
    let records = |extra: &[&str]| run_records(dir.path(), extra).0;
    let clean = records(&[]);
    let dark = records(&["--corrupt", "darken:5"]);
    let again = records(&["--corrupt", "darken:5"]);
    assert_eq!(clean.len(), 3);
    assert_eq!(dark.len(), 3);
    for ((c, d), a) in clean.iter().zip(&dark).zip(&again) {
        assert_ne!(c["score"], d["score"], "the frame was not changed");
        assert_eq!(d["score"], a["score"], "not the same corruption twice");
    }
    assert_fails_cleanly(
        &edge(
            dir.path(),
            &[
                "run",
                "--bundle",
                "b",
                "--source",
                "images:frames",
                "--corrupt",
                "smoke:2",
            ],
        ),
        &["camera.corrupt", "smoke"],
    );
}

#[test]
fn bench_names_the_backend_and_kernels_and_refuses_bad_settings() {
    let dir = tempfile::tempdir().unwrap();
    let out = edge(dir.path(), &["bench", "--frames", "3", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["frames"], 3);
    assert_eq!(s["backend"], "tract");
    // which operators tract's plan ran: with int8 pointwise layers on x86-64 (VNNI or
    // AVX2), oodmon's exact kernels elsewhere; the loops named where they ran
    let kernels = &s["kernels"];
    assert!(kernels["depthwise"].as_u64().unwrap() >= 1, "{kernels}");
    let int8 = kernels["pointwise_int8"].as_u64().unwrap();
    let loops = kernels["pointwise_loops"].as_str().unwrap();
    assert_eq!(int8 > 0, !loops.is_empty(), "{kernels}");
    // the text summary says the same in a few words
    let out = edge(dir.path(), &["bench", "--frames", "3"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("encoder on tract (oodmon"), "{text}");
    // a negative share is a number to refuse, not an unknown option
    let out = edge(
        dir.path(),
        &[
            "bench",
            "--frames",
            "3",
            "--overlap",
            "--model-head-share",
            "-0.1",
        ],
    );
    assert_fails_cleanly(&out, &["--model-head-share", "-0.1 is not a share"]);
    let out = edge(dir.path(), &["bench", "--frames", "0"]);
    assert_fails_cleanly(&out, &["--frames", "nothing to time"]);
    // a typo in either kernel setting stops start-up
    for (var, value) in [
        ("OODMON_INT8_PATH", "foo"),
        ("OODMON_TRACT_KERNELS", "fast"),
    ] {
        let out = edge_command(dir.path(), &["bench", "--frames", "3"])
            .env(var, value)
            .output()
            .unwrap();
        assert_fails_cleanly(&out, &[var, value]);
    }
}
