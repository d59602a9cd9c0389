//! Developer tasks: `cargo xtask test` does all the set-up and runs every check;
//! `cargo xtask bench` runs the benchmarks against their Python peers in one run.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

mod study;

type Result<T = ()> = std::result::Result<T, String>;

const AARCH64: &str = "aarch64-unknown-linux-gnu";
/// Crates that must build and pass their tests on aarch64.
const AARCH64_CRATES: &[&str] = &[
    "oodmon-calibration",
    "oodmon-runtime",
    "oodmon-data",
    "oodmon-calibrate",
    "oodmon-protocol",
    "oodmon-serial",
    "oodmon-edge",
    "oodmon-monitor",
    "v4l2-sys-mit",
];
/// Newest glibc the shipped edge binary may need: JetPack 6 has 2.35 (JetPack 5's 2.31
/// needs the zig build that Cross.toml configures).
const JETPACK6_GLIBC: (u32, u32) = (2, 35);

fn main() -> ExitCode {
    absolutize_target_dir();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("setup") => setup().map(|_| ()),
        Some("bench") => bench(&args[1..]),
        Some("bench-train") => bench_train(&args[1..]),
        Some("bench-edge") => bench_edge(&args[1..]),
        Some("study") => study::study(&args[1..]),
        Some("corruption") => study::corruption(&args[1..]),
        Some("v4l2-bindings") => v4l2_bindings(),
        Some("fuzz") => fuzz(&args[1..]),
        Some("soak") => soak(&args[1..]),
        Some("pretrained-check") => pretrained_check(&args[1..]),
        _ => Err(
            "usage: cargo xtask <test [--no-aarch64] | setup | bench [--quick] | bench-train [--quick] | bench-edge [--quick] [--model FILE.onnx ...] [--video FILE.avi] | study --data DIR [--out DIR] [--epochs N] [--losses ce,supcon,simclr|none] [--sizes 64,96] [--tune-losses ce,supcon,simclr|none] [--tune-size 64] [--tune-seeds 0,1] [--tune-split-seed 0] [--tune-average] [--tune-epochs 3] [--tune-steps 100] [--max-rows 10000] [--detail-size 32|none] [--features head,blocks] [--open-set edge-ce,lite0-ce] [--open-set-splits 0,1,2,3,4] [--backbone-weights FILE.pth] | corruption --data DIR [--bundle DIR] [--limit N] [--out DIR] | v4l2-bindings | fuzz [--seconds N] [--target NAME] | soak [--frames N] | pretrained-check --weights FILE.pth IMAGE...>"
                .into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Cargo reads a relative `CARGO_TARGET_DIR` against the directory it was started in, but
/// the cargo commands this tool starts run in the workspace root: pin the path first, so
/// that they and [`target_dir`] use the directory that `cargo xtask` itself was built in.
fn absolutize_target_dir() {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        if let Ok(dir) = std::path::absolute(dir) {
            std::env::set_var("CARGO_TARGET_DIR", dir);
        }
    }
}

/// The workspace root, found at run time: a clone built into a shared target directory may
/// reuse an `xtask` binary compiled in another checkout, so the compile-time manifest path
/// cannot be trusted. `cargo run` sets `CARGO_MANIFEST_DIR` for the process; otherwise the
/// nearest ancestor of the working directory holding `xtask/Cargo.toml` is used.
fn root() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_MANIFEST_DIR") {
        if let Some(parent) = Path::new(&dir).parent() {
            if parent.join("xtask/Cargo.toml").is_file() {
                return parent.to_path_buf();
            }
        }
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    cwd.ancestors()
        .find(|dir| dir.join("xtask/Cargo.toml").is_file())
        .map(Path::to_path_buf)
        .unwrap_or(cwd)
}

fn step(name: &str) {
    eprintln!("\n==> {name}");
}

fn run(cmd: &mut Command) -> Result {
    let shown = format!("{cmd:?}");
    let started = Instant::now();
    let status = cmd
        .status()
        .map_err(|e| format!("cannot start {shown}: {e}"))?;
    eprintln!("    ({:.0}s)", started.elapsed().as_secs_f64());
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed with {status}"))
    }
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// The encoder backends behind cargo features: clippy on their code, then the runtime's
/// and the edge's backend tests, onnxruntime loaded from the Python environment's wheel
/// (`ORT_DYLIB_PATH`), tract-cuda showing its clear error where there is no NVIDIA driver
/// and its agreement with tract where there is one.
fn backend_tests(python: &Path) -> Result {
    const FEATURES: &str = "oodmon-runtime/onnxruntime,oodmon-runtime/tract-cuda,\
                            oodmon-edge/onnxruntime,oodmon-edge/tract-cuda";
    step("backends (onnxruntime, tract-cuda): clippy and tests");
    let library = onnxruntime_library(python)?;
    eprintln!("    ORT_DYLIB_PATH={}", library.display());
    run(cargo().args([
        "clippy",
        "-p",
        "oodmon-runtime",
        "-p",
        "oodmon-edge",
        "--all-targets",
        "--features",
        FEATURES,
        "--",
        "-D",
        "warnings",
    ]))?;
    // the CUDA 13 build of tract-cuda (the one bench/gpu_check.sh runs on a lent GPU): it
    // excludes the CUDA 12 one, so it is checked on its own
    run(cargo().args([
        "clippy",
        "-p",
        "oodmon-runtime",
        "--all-targets",
        "--features",
        "tract-cuda-13",
        "--",
        "-D",
        "warnings",
    ]))?;
    // cargo takes `crate/feature` only for the packages being built; one package here
    run(cargo()
        .args([
            "test",
            "-p",
            "oodmon-runtime",
            "--features",
            "onnxruntime,tract-cuda",
        ])
        .args(["--test", "backends"])
        .env("ORT_DYLIB_PATH", &library))?;
    // the edge's backend tests, and calibrating on onnxruntime (`fit-model --backend
    // onnxruntime`), in one build: oodmon-calibrate alone would unify its dependencies'
    // features differently and build tract once more (a disk filled up that way)
    run(cargo()
        .args([
            "test",
            "-p",
            "oodmon-edge",
            "-p",
            "oodmon-calibrate",
            "--features",
        ])
        .arg("oodmon-edge/onnxruntime,oodmon-edge/tract-cuda,oodmon-calibrate/onnxruntime")
        .args(["--test", "it", "--", "backend", "onnxruntime"])
        .env("ORT_DYLIB_PATH", &library))
}

/// `libonnxruntime.so` from the onnxruntime wheel in the Python environment.
fn onnxruntime_library(python: &Path) -> Result<PathBuf> {
    let out = Command::new(python)
        .args([
            "-c",
            "import glob, os, onnxruntime; \
             print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), \
             'capi', 'libonnxruntime.so*')))[-1])",
        ])
        .output()
        .map_err(|e| e.to_string())?;
    let text = output_text(out, "finding libonnxruntime.so in the onnxruntime wheel")?;
    Ok(PathBuf::from(text.trim()))
}

/// Cargo for the host workspace with libtorch taken from the Python environment's torch
/// (tch's `LIBTORCH_USE_PYTORCH`), that interpreter first on PATH.
fn cargo_with_torch(python: &Path) -> Command {
    let mut c = cargo();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths: Vec<PathBuf> = python.parent().map(Path::to_path_buf).into_iter().collect();
    paths.extend(std::env::split_paths(&path));
    // a PATH entry with a `:` cannot be joined; the venv's folder is then left out and the
    // interpreter is still named by OODMON_PYTHON
    let joined = std::env::join_paths(&paths).unwrap_or(path);
    c.env("LIBTORCH_USE_PYTORCH", "1")
        .env("PATH", joined)
        .env("OODMON_PYTHON", python);
    c
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null 2>&1")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The Python environment for reference comparisons: `OODMON_VENV` or `<root>/.venv`.
fn python_env() -> Result<PathBuf> {
    let venv = std::env::var_os("OODMON_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv"));
    let python = venv.join("bin/python");
    if !python.exists() {
        step(&format!("creating Python environment {}", venv.display()));
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    let requirements = root().join("tests/py/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements)
        .map_err(|e| format!("{}: {e}", requirements.display()))?;
    let stamp = venv.join(".oodmon-requirements");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        step("installing Python reference packages");
        run(Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&requirements))?;
        std::fs::write(&stamp, &wanted).map_err(|e| format!("{}: {e}", stamp.display()))?;
    }
    Ok(python)
}

/// OpenCV in the Python environment (the benchmarks' Python peer and the study's video
/// decoding need it; the tests do not), installed when `import cv2` fails.
fn ensure_opencv(python: &Path) -> Result {
    let have_cv2 = Command::new(python)
        .args(["-c", "import cv2"])
        .status()
        .is_ok_and(|s| s.success());
    if !have_cv2 {
        step("installing OpenCV (opencv-python-headless) for the Python peer");
        run(Command::new(python).args([
            "-m",
            "pip",
            "install",
            "-q",
            "opencv-python-headless==5.1.0.95",
        ]))?;
    }
    Ok(())
}

/// Whether a program starts and exits 0 with these arguments: the real thing, not a file
/// name that looks like it.
fn works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether Debian's rustc can compile for aarch64: its standard library for that target is
/// where rustc itself says it looks.
fn debian_rustc_has_aarch64_std() -> bool {
    Command::new("/usr/bin/rustc")
        .args(["--print", "target-libdir", "--target", AARCH64])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| std::fs::read_dir(String::from_utf8_lossy(&o.stdout).trim()).ok())
        .is_some_and(|mut entries| {
            entries.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("libstd-")))
        })
}

/// Whether libclang itself loads (what bindgen dlopens), for `v4l2-bindings` only: the
/// build and the tests need none since the V4L2 bindings are committed.
fn libclang_loads() -> bool {
    let probe = r#"
import ctypes, sys
for name in ("libclang.so", "libclang-14.so", "libclang.so.1", "libclang-14.so.1"):
    try:
        ctypes.CDLL(name).clang_createIndex
        sys.exit(0)
    except (OSError, AttributeError):
        pass
sys.exit(1)
"#;
    works("python3", &["-c", probe])
}

/// Installs Debian packages (root, or through sudo).
fn apt_install(packages: &[&str], add_arm64: bool) -> Result {
    step(&format!(
        "installing Debian packages: {}",
        packages.join(" ")
    ));
    let sudo = if have("id")
        && String::from_utf8_lossy(
            &Command::new("id")
                .arg("-u")
                .output()
                .map_err(|e| e.to_string())?
                .stdout,
        )
        .trim()
            == "0"
    {
        ""
    } else {
        "sudo "
    };
    let arch = if add_arm64 {
        format!("{sudo}dpkg --add-architecture arm64; ")
    } else {
        String::new()
    };
    let script = format!(
        "set -e; {arch}{sudo}apt-get update -qq; \
         DEBIAN_FRONTEND=noninteractive {sudo}apt-get install -y -qq {}",
        packages.join(" ")
    );
    run(Command::new("sh").args(["-c", &script]))
}

/// What the fleet tests need from Debian: Mosquitto, the MQTT broker they start on a
/// loopback port (`mosquitto -h` prints its version and exits 3), and Chromium, the
/// headless browser the dashboard test renders the page in. Installed unless working ones
/// are there.
fn fleet_test_packages() -> Result {
    let prints_version = |program: &str| {
        Command::new(program)
            .arg("-h")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("mosquitto version"))
    };
    let mut missing = Vec::new();
    if !(prints_version("/usr/sbin/mosquitto") || prints_version("mosquitto")) {
        missing.push("mosquitto");
    }
    if !works("chromium", &["--headless", "--no-sandbox", "--version"]) {
        missing.push("chromium");
    }
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing, false)
}

/// Debian packages the aarch64 checks need: Debian's rustc with an aarch64 standard library,
/// the cross linker and qemu. Nothing else comes from Debian: the V4L2 bindings are
/// committed, so no step needs libclang.
fn system_packages(aarch64: bool) -> Result {
    let aarch64_ready = debian_rustc_has_aarch64_std()
        && works("/usr/bin/cargo", &["--version"])
        && works("aarch64-linux-gnu-gcc", &["--version"])
        && works("qemu-aarch64-static", &["--version"]);
    if !aarch64 || aarch64_ready {
        return Ok(());
    }
    apt_install(
        &[
            "rustc-web",
            "cargo-web",
            "libstd-rust-web-dev:arm64",
            "gcc-aarch64-linux-gnu",
            "libc6-dev-arm64-cross",
            "qemu-user-static",
        ],
        true,
    )
}

/// qemu with the loader prefix that matches the installed aarch64 libc: Debian multiarch
/// (`libc6:arm64`, loader in /lib) or only the cross libc under /usr/aarch64-linux-gnu.
/// Mixing the two (multiarch libc with the cross loader) hangs at start-up.
fn qemu_aarch64() -> String {
    if Path::new("/lib/ld-linux-aarch64.so.1").exists() {
        "qemu-aarch64-static -L /".into()
    } else {
        "qemu-aarch64-static -L /usr/aarch64-linux-gnu".into()
    }
}

fn setup() -> Result<PathBuf> {
    let python = python_env()?;
    system_packages(true)?;
    Ok(python)
}

fn test(args: &[String]) -> Result {
    let started = Instant::now();
    let aarch64 = !args.iter().any(|a| a == "--no-aarch64");
    let python = python_env()?;
    system_packages(aarch64)?;
    fleet_test_packages()?;
    step("dependency boundaries: no bindgen or UI in the edge, no tract in the monitor");
    dependency_boundaries(&[None, Some(AARCH64)])?;
    step("cargo fmt --check");
    run(cargo().args(["fmt", "--all", "--check"]))?;
    step("cargo clippy --all-targets -- -D warnings");
    run(cargo_with_torch(&python).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    step("host tests");
    prune_stale_test_binaries(
        cargo_with_torch(&python).args(["test", "--workspace"]),
        &target_dir().join("debug"),
    )?;
    run(cargo_with_torch(&python).args(["test", "--workspace"]))?;
    backend_tests(&python)?;
    if aarch64 {
        step("aarch64 build and tests under qemu");
        let target_dir = target_dir().join("aarch64-debian");
        let tests = || {
            let mut cmd = Command::new("/usr/bin/cargo");
            // dependencies optimised (our crates keep debug assertions): debug-mode tract
            // runs the shipped EfficientNet-Lite0 under qemu at seconds a frame, and the
            // demo tests took 26 of this step's 36 minutes
            cmd.current_dir(root())
                .args(["test", "--target", AARCH64])
                .args(AARCH64_CRATES.iter().flat_map(|c| ["-p", c]))
                .args(["--config", r#"profile.dev.package."*".opt-level=2"#])
                .args(["--config", r#"profile.dev.package."*".debug=false"#])
                // our crates at opt-level 1 with line tables only (debug assertions and
                // overflow checks stay on): unoptimised, the tests' own loops under qemu
                // took twice as long (509 s against 260 s, TESTING.md)
                .args(["--config", "profile.dev.opt-level=1"])
                .args(["--config", r#"profile.dev.debug="line-tables-only""#])
                .env("RUSTC", "/usr/bin/rustc")
                .env("RUSTDOC", "/usr/bin/rustdoc")
                .env_remove("RUSTUP_TOOLCHAIN")
                .env("CARGO_TARGET_DIR", &target_dir)
                .env(
                    "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER",
                    qemu_aarch64(),
                )
                .env("OODMON_TEST_RUNNER", qemu_aarch64())
                .env("QEMU_CPU", "neoverse-n1");
            cmd
        };
        prune_stale_test_binaries(&mut tests(), &target_dir.join(AARCH64).join("debug"))?;
        // Under qemu the shipped Lite0 takes about a second a frame. The numerics, the
        // engine and the overlapped loop are tested here; left to the host are the tests
        // that replay the whole demo (144 frames a replay) only to check the command
        // line's plumbing (Rust code with nothing specific to the target): a bundle read
        // from disk and a blind one (one test), the alarms over a pseudo-terminal (the
        // serial crate's own test carries bytes over one under qemu), and "from any
        // directory" and the
        // engine's replay of the scenario, which the demo step below runs as the user
        // would (it checks the scenario's segments and alarms; the engine test's tighter
        // per-segment floors stay on the host)
        run(tests().args([
            "--",
            "--skip",
            "cli::demo_checks_a_bundle_on_disk_and_fails_one_that_misses_its_scenario",
            "--skip",
            "cli::demo_sends_its_alarms_over_a_serial_line",
            "--skip",
            "cli::demo_runs_from_any_directory_and_reproduces_its_scenario",
            "--skip",
            "engine::the_built_in_demo_reproduces_its_scenario",
        ]))?;
        // absolute: the demo runs from another directory
        let edge = std::path::absolute(target_dir.join(AARCH64).join("debug").join("oodmon-edge"))
            .map_err(|e| e.to_string())?;
        step("aarch64 oodmon-edge demo under qemu");
        let mut qemu = qemu_aarch64()
            .split_whitespace()
            .map(String::from)
            .collect::<Vec<_>>();
        let program = qemu.remove(0);
        // from a directory with nothing of the project in it: the bundle is built in
        let elsewhere = std::env::temp_dir();
        run(Command::new(program)
            .current_dir(&elsewhere)
            .args(&qemu)
            .arg(&edge)
            .args(["demo", "--quiet"])
            .env("QEMU_CPU", "neoverse-n1"))?;
        step("aarch64 oodmon-edge: required glibc");
        let needed = required_glibc(&edge)?;
        eprintln!(
            "oodmon-edge (aarch64, Debian toolchain) needs glibc {}.{}: runs on JetPack 6 (glibc 2.35), not JetPack 5 (2.31; use the zig build in Cross.toml)",
            needed.0, needed.1
        );
        if needed > JETPACK6_GLIBC {
            return Err(format!(
                "oodmon-edge needs glibc {}.{}, newer than JetPack 6's {}.{}",
                needed.0, needed.1, JETPACK6_GLIBC.0, JETPACK6_GLIBC.1
            ));
        }
    }
    eprintln!(
        "\nall checks passed in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What each shipped crate must not pull in (normal and build dependencies): the edge
/// builds no bindgen (a machine as booted has no libclang), no terminal UI and no ONNX
/// writer or quantizer; the control-room monitor no model runtime.
const FORBIDDEN_DEPENDENCIES: &[(&str, &[&str], &str)] = &[
    (
        "oodmon-edge",
        &["bindgen", "clang-sys"],
        "it would need libclang",
    ),
    (
        "oodmon-edge",
        &[
            "ratatui",
            "crossterm",
            "oodmon-onnx",
            "oodmon-data",
            "oodmon-calibrate",
        ],
        "the robot's binary carries translate-time or control-room code",
    ),
    (
        "oodmon-monitor",
        &["tract-onnx", "tract-core", "oodmon-runtime"],
        "a control-room laptop would need the model runtime",
    ),
];

/// Fails when a crate's dependency tree (normal and build, for each target) holds one of
/// its [`FORBIDDEN_DEPENDENCIES`].
fn dependency_boundaries(targets: &[Option<&str>]) -> Result {
    for (krate, forbidden, why) in FORBIDDEN_DEPENDENCIES {
        for target in targets {
            let tree = dependency_tree(krate, *target)?;
            let offenders: Vec<&str> = tree
                .lines()
                .filter(|l| forbidden.iter().any(|f| l.split(' ').next() == Some(*f)))
                .collect();
            if !offenders.is_empty() {
                return Err(format!(
                    "{krate}'s build ({}) pulls in {}: {why}",
                    target.unwrap_or("host"),
                    offenders.join(", ")
                ));
            }
            eprintln!(
                "    {krate} ({}): {} crates, none of {}",
                target.unwrap_or("host"),
                tree.lines().count(),
                forbidden.join(", ")
            );
        }
    }
    Ok(())
}

/// `cargo tree` of a crate's normal and build dependencies, one crate a line.
fn dependency_tree(krate: &str, target: Option<&str>) -> Result<String> {
    let mut cmd = cargo();
    cmd.args([
        "tree",
        "-p",
        krate,
        "-e",
        "build,normal",
        "--prefix",
        "none",
    ]);
    if let Some(t) = target {
        cmd.args(["--target", t]);
    }
    let out = cmd.output().map_err(|e| format!("cargo tree: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo tree failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Regenerates the committed V4L2 bindings (vendor/v4l2-sys-mit/src/bindings/) with the
/// upstream crate's bindgen call, for x86_64 from the host's kernel headers and for aarch64
/// and arm from Debian's cross headers. Installs libclang and the headers when missing.
fn v4l2_bindings() -> Result {
    let targets = [
        ("x86_64", "x86_64-linux-gnu"),
        ("aarch64", "aarch64-linux-gnu"),
        ("arm", "arm-linux-gnueabihf"),
    ];
    let mut missing = Vec::new();
    if !libclang_loads() {
        missing.push("libclang-dev");
    }
    for (_, triple) in &targets[1..] {
        if !Path::new(&format!("/usr/{triple}/include/sys/time.h")).is_file() {
            missing.push(if triple.starts_with("aarch64") {
                "libc6-dev-arm64-cross"
            } else {
                "libc6-dev-armhf-cross"
            });
        }
    }
    if !missing.is_empty() {
        apt_install(&missing, false)?;
    }
    let dir = root().join("vendor/v4l2-sys-mit/src/bindings");
    for (arch, triple) in targets {
        step(&format!("bindgen for {arch}"));
        let mut extra = format!("--target={triple}");
        if arch != "x86_64" {
            extra.push_str(&format!(" -I/usr/{triple}/include"));
        }
        // the build script runs on the host; the target only selects the headers and ABI
        run(cargo()
            .args([
                "build",
                "-q",
                "-p",
                "v4l2-sys-mit",
                "--features",
                "regenerate",
            ])
            .env("BINDGEN_EXTRA_CLANG_ARGS", extra)
            .env("V4L2_SYS_BINDINGS_OUT", dir.join(format!("{arch}.rs"))))?;
    }
    Ok(())
}

/// The soak test (bench/soak.py): `oodmon-edge run` on the looped built-in scenario for
/// `--frames` frames (default 1,000,000) with serial, monitor and journal, memory and file
/// descriptors sampled; fails when memory grows, a descriptor leaks, or the journal or the
/// link are not whole at the end.
fn soak(args: &[String]) -> Result {
    let frames = match args {
        [] => "1000000".to_string(),
        [flag, n] if flag == "--frames" && n.parse::<u64>().is_ok() => n.clone(),
        _ => return Err("soak [--frames N]".into()),
    };
    step("building oodmon-edge and oodmon-monitor (release)");
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "oodmon-edge",
        "-p",
        "oodmon-monitor",
    ]))?;
    let edge = target_dir().join("release/oodmon-edge");
    step(&format!("soak: {frames} frames"));
    run(Command::new("python3")
        .arg(root().join("bench/soak.py"))
        .arg(&edge)
        .arg(target_dir().join("release/oodmon-monitor"))
        .arg(root().join("edge/demo/bundle"))
        .arg(root().join("edge/demo/scenario.avi"))
        .arg(&frames))
}

/// An imported ImageNet backbone against its reference port on the published weights
/// (bench/pretrained_check.py): top-5 classes of natural images from both, and the largest
/// logit difference on the same input tensors.
fn pretrained_check(args: &[String]) -> Result {
    let (weights, images) = match args {
        [flag, weights, images @ ..] if flag == "--weights" && !images.is_empty() => {
            (weights, images)
        }
        _ => return Err("pretrained-check --weights FILE.pth IMAGE...".into()),
    };
    let python = python_env()?;
    step("building oodmon-trainer (release)");
    run(cargo_with_torch(&python).args(["build", "--release", "-p", "oodmon-trainer"]))?;
    let work = target_dir().join("pretrained-check");
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    step("import, classify, compare with the reference");
    run(Command::new(&python)
        .arg(root().join("bench/pretrained_check.py"))
        .arg(target_dir().join("release/oodmon-trainer"))
        .arg(weights)
        .arg(&work)
        .args(images))
}

/// The fuzz targets (fuzz/fuzz_targets) with the longest input each is given.
const FUZZ_TARGETS: &[(&str, usize)] = &[
    ("protocol_decoder", 4096),
    ("npy", 4096),
    ("avi", 65_536),
    ("calib_json", 16_384),
    ("edge_toml", 4096),
    ("raw_frames", 16_384),
];

/// Runs every parser that takes outside bytes under libFuzzer (cargo-fuzz, nightly) for a
/// fixed budget each, growing the committed corpus in fuzz/corpus/; prints executions and
/// crashes per target. A crash fails the command (its input is in fuzz/artifacts/).
fn fuzz(args: &[String]) -> Result {
    let mut seconds = 60u64;
    let mut only: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--seconds N")?
            }
            "--target" => only = Some(it.next().ok_or("--target NAME")?.clone()),
            other => return Err(format!("fuzz: unknown argument {other:?}")),
        }
    }
    if !works("rustup", &["run", "nightly", "rustc", "--version"]) {
        return Err("fuzzing needs a nightly toolchain: `rustup toolchain install nightly`".into());
    }
    if !works("cargo", &["fuzz", "--version"]) {
        step("installing cargo-fuzz");
        run(cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let dir = root().join("fuzz");
    let mut rows = Vec::new();
    let mut crashed = Vec::new();
    for (target, max_len) in FUZZ_TARGETS {
        if only.as_deref().is_some_and(|o| o != *target) {
            continue;
        }
        let (row, ok) = fuzz_target(&dir, target, *max_len, seconds)?;
        if !ok {
            crashed.push(*target);
        }
        rows.push(row);
    }
    step("results (paste into TESTING.md)");
    println!("| target | seconds | executions | corpus files | crashes |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    if crashed.is_empty() {
        Ok(())
    } else {
        Err(format!("crashes in {}", crashed.join(", ")))
    }
}

/// Fuzzes one target for `seconds` on its corpus, then minimises the corpus; returns the
/// results table's row and whether it ran without a crash.
fn fuzz_target(dir: &Path, target: &str, max_len: usize, seconds: u64) -> Result<(String, bool)> {
    step(&format!("fuzzing {target} for {seconds} s"));
    let corpus = dir.join("corpus").join(target);
    std::fs::create_dir_all(&corpus).map_err(|e| e.to_string())?;
    let before = std::fs::read_dir(&corpus).map_or(0, |d| d.count());
    let out = Command::new("cargo")
        .current_dir(dir)
        .args(["+nightly", "fuzz", "run", "-s", "none", "--dev", target])
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-max_len={max_len}"))
        .arg("-print_final_stats=1")
        .arg("-timeout=10")
        .output()
        .map_err(|e| format!("cargo fuzz: {e}"))?;
    let log = String::from_utf8_lossy(&out.stderr);
    let stat = |key: &str| {
        log.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let executions = stat("stat::number_of_executed_units:").unwrap_or(0);
    let ok = out.status.success();
    // keep the committed corpus small: the inputs that cover what the whole set covers
    if ok {
        run(Command::new("cargo")
            .current_dir(dir)
            .args(["+nightly", "fuzz", "cmin", "-s", "none", "--dev", target])
            .arg(&corpus)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()))?;
    }
    let after = std::fs::read_dir(&corpus).map_or(0, |d| d.count());
    if !ok {
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    eprintln!(
        "    {target}: {executions} executions, corpus {before} -> {after} (minimised), {}",
        if ok { "no crash" } else { "CRASH" }
    );
    let row = format!(
        "| `{target}` | {seconds} | {executions} | {before} -> {after} | {} |",
        if ok { "0" } else { "1 (see fuzz/artifacts)" }
    );
    Ok((row, ok))
}

/// The newest `GLIBC_x.y` symbol version a binary imports (`objdump -T`).
fn required_glibc(binary: &Path) -> Result<(u32, u32)> {
    let objdump = if have("aarch64-linux-gnu-objdump") {
        "aarch64-linux-gnu-objdump"
    } else {
        "objdump"
    };
    let out = Command::new(objdump)
        .arg("-T")
        .arg(binary)
        .output()
        .map_err(|e| format!("{objdump}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{objdump} -T {}: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let mut parts = v.split('.');
            Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
        })
        .max()
        .ok_or_else(|| format!("{}: no GLIBC symbol versions found", binary.display()))
}

/// Deletes the test executables of earlier builds from `profile_dir/deps` (`tests` is the
/// `cargo test` command about to run). The target directory outlives the clone (warm CI
/// runs), and every change relinks each test binary under a new hash: 111 stale ones
/// (25 GB) once filled this machine's disk mid-run. Cargo names the current ones
/// (`--no-run --message-format=json`, which also builds them); every other executable in
/// `deps` is an older build.
fn prune_stale_test_binaries(tests: &mut Command, profile_dir: &Path) -> Result {
    use std::os::unix::fs::PermissionsExt;
    let out = tests
        .args(["--no-run", "--message-format=json"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err("cargo test --no-run failed (its errors are above)".into());
    }
    let current: std::collections::HashSet<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let at = line.find(r#""executable":""#)? + r#""executable":""#.len();
            let end = line[at..].find('"')?;
            Some(PathBuf::from(&line[at..at + end]))
        })
        .collect();
    // the programs themselves (debug/oodmon-edge, ...) are hard links to their deps/ build
    let uplifted: std::collections::HashSet<u64> = std::fs::read_dir(profile_dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .collect();
    let deps = profile_dir.join("deps");
    let (mut freed, mut files) = (0u64, 0usize);
    for entry in std::fs::read_dir(&deps)
        .map_err(|e| e.to_string())?
        .flatten()
    {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        let executable = meta.is_file()
            && meta.permissions().mode() & 0o111 != 0
            && !entry.file_name().to_string_lossy().contains('.');
        let stale = !current.contains(&path)
            && !uplifted.contains(&std::os::unix::fs::MetadataExt::ino(&meta));
        if executable && stale && std::fs::remove_file(&path).is_ok() {
            freed += meta.len();
            files += 1;
        }
    }
    if files > 0 {
        println!(
            "(deleted {files} superseded test binaries, {:.1} GB)",
            freed as f64 / 1e9
        );
    }
    Ok(())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

fn bench(args: &[String]) -> Result {
    let quick = args.iter().any(|a| a == "--quick");
    let python = python_env()?;
    let data = target_dir().join("bench-data");
    std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
    step("oodmon-calibration (criterion)");
    let mut cmd = cargo_with_torch(&python);
    cmd.args(["bench", "-p", "oodmon-calibration", "--bench", "scoring"])
        .env("OODMON_BENCH_DATA", &data);
    if quick {
        cmd.env("OODMON_BENCH_QUICK", "1");
    }
    run(&mut cmd)?;
    step("NumPy and scikit-learn on the same inputs");
    let mut py = Command::new(&python);
    py.arg(root().join("bench/calibration_reference.py"))
        .arg(&data)
        .arg(data.join("python.json"));
    if quick {
        py.arg("--quick");
    }
    run(&mut py)?;
    step("ratios (paste into BENCHMARKS.md)");
    run(Command::new(&python)
        .arg(root().join("bench/compare.py"))
        .arg(target_dir().join("criterion"))
        .arg(data.join("python.json"))
        .arg(data.join("rust_kmeans.json")))
}

/// Images per second from a benchmark's JSON line.
fn images_per_second(out: &std::process::Output, what: &str) -> Result<f64> {
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    text.split("\"images_per_second\":")
        .nth(1)
        .and_then(|rest| rest.trim_start().split([',', '}']).next())
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("{what}: no images_per_second in {text:?}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Training throughput: oodmon-trainer against the same model and optimiser in PyTorch,
/// interleaved runs on the same threads, medians of the repetitions.
fn bench_train(args: &[String]) -> Result {
    let quick = args.iter().any(|a| a == "--quick");
    let python = python_env()?;
    step("building oodmon-trainer (release)");
    run(cargo_with_torch(&python).args(["build", "--release", "-p", "oodmon-trainer"]))?;
    let trainer = target_dir().join("release/oodmon-trainer");
    let reps = if quick { 1 } else { 3 };
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .to_string();
    let mut rows = Vec::new();
    // The shipped default's backbone at its 64 px and at the 96 px candidate
    for (arch, batch, steps, input) in [
        ("edge", "128", "20", "32"),
        ("resnet18", "64", "8", "32"),
        ("efficientnet-lite0", "64", "8", "64"),
        ("efficientnet-lite0", "64", "6", "96"),
    ] {
        let steps = if quick { "3" } else { steps };
        let (mut ours, mut theirs, mut theirs_nhwc) = (Vec::new(), Vec::new(), Vec::new());
        for rep in 0..reps {
            step(&format!("{arch}: repetition {}/{reps}", rep + 1));
            let common = [
                "--arch",
                arch,
                "--batch",
                batch,
                "--steps",
                steps,
                "--threads",
                &threads,
                "--input-size",
                input,
            ];
            let out = Command::new(&trainer)
                .arg("bench")
                .args(common)
                .output()
                .map_err(|e| e.to_string())?;
            ours.push(images_per_second(&out, "oodmon-trainer bench")?);
            let out = Command::new(&python)
                .arg(root().join("bench/train_reference.py"))
                .args(common)
                .output()
                .map_err(|e| e.to_string())?;
            theirs.push(images_per_second(&out, "train_reference.py")?);
            let out = Command::new(&python)
                .arg(root().join("bench/train_reference.py"))
                .args(common)
                .arg("--channels-last")
                .output()
                .map_err(|e| e.to_string())?;
            theirs_nhwc.push(images_per_second(
                &out,
                "train_reference.py --channels-last",
            )?);
        }
        rows.push((
            arch,
            input,
            batch,
            median(ours),
            median(theirs),
            median(theirs_nhwc),
        ));
    }
    println!(
        "| model | input | batch | threads | oodmon-trainer (img/s) | PyTorch eager, NCHW (img/s) | ratio | PyTorch eager, channels-last (img/s) | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (arch, input, batch, ours, theirs, nhwc) in rows {
        println!(
            "| {arch} | {input} | {batch} | {threads} | {ours:.0} | {theirs:.0} | {:.2}x | {nhwc:.0} | {:.2}x |",
            ours / theirs,
            ours / nhwc
        );
    }
    Ok(())
}

/// The number after `"key":` in compact JSON output.
fn json_number(text: &str, key: &str) -> Option<f64> {
    text.split(&format!("\"{key}\":"))
        .nth(1)?
        .trim_start()
        .split([',', '}'])
        .next()?
        .trim()
        .parse()
        .ok()
}

fn output_text(out: std::process::Output, what: &str) -> Result<String> {
    if !out.status.success() {
        return Err(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Edge inference: tract (oodmon-edge) against onnxruntime on one thread on the same ONNX
/// files, then the whole pipeline's frame rate, overhead beyond inference and peak memory.
fn bench_edge(args: &[String]) -> Result {
    let quick = args.iter().any(|a| a == "--quick");
    let runs = if quick { "200" } else { "2000" };
    let python = python_env()?;
    ensure_opencv(&python)?;
    system_packages(false)?;
    let mut models = vec![root().join("edge/demo/bundle/encoder.onnx")];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--model" {
            models.push(PathBuf::from(it.next().ok_or("--model needs a file")?));
        }
    }
    step("building oodmon-edge (release, with the onnxruntime backend)");
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "oodmon-edge",
        "--features",
        "onnxruntime",
    ]))?;
    let edge = target_dir().join("release/oodmon-edge");
    // oodmon's onnxruntime backend loads the same library the Python peer uses
    std::env::set_var("ORT_DYLIB_PATH", onnxruntime_library(&python)?);
    bench_edge_inference(&edge, &python, &models, runs)?;
    println!();
    let frames = if quick { "200" } else { "2000" };
    bench_edge_pipeline(&edge, &python, &edge_bench_sources(args)?, frames)
}

/// tract (`oodmon-edge bench --model`) against onnxruntime on one thread, per model.
fn bench_edge_inference(edge: &Path, python: &Path, models: &[PathBuf], runs: &str) -> Result {
    println!("| model | tract p50 (us) | tract p99 (us) | onnxruntime p50 (us) | onnxruntime p99 (us) | tract speed vs onnxruntime |");
    println!("|---|---|---|---|---|---|");
    for model in models {
        step(&format!("{}: tract, then onnxruntime", model.display()));
        let ours = output_text(
            on_cores(1, edge)
                .args(["bench", "--json", "--frames", runs, "--model"])
                .arg(model)
                .env("RUST_LOG", "warn")
                .output()
                .map_err(|e| e.to_string())?,
            "oodmon-edge bench --model",
        )?;
        let theirs = output_text(
            on_cores(1, python)
                .arg(root().join("bench/edge_reference.py"))
                .arg(runs)
                .arg(model)
                .output()
                .map_err(|e| e.to_string())?,
            "edge_reference.py",
        )?;
        let get = |t: &str, k: &str| json_number(t, k).ok_or(format!("no {k} in {t}"));
        let (o50, o99) = (get(&ours, "p50_us")?, get(&ours, "p99_us")?);
        let (t50, t99) = (get(&theirs, "p50_us")?, get(&theirs, "p99_us")?);
        println!(
            "| {} | {o50:.0} | {o99:.0} | {t50:.0} | {t99:.0} | {:.2}x |",
            model.display(),
            t50 / o50
        );
    }
    Ok(())
}

/// A frame source of the pipeline benchmark: `oodmon-edge bench`'s arguments for it, and
/// `bench/python_pipeline.py`'s SOURCE for the same frames where that peer reads them.
struct BenchSource {
    name: String,
    edge_args: Vec<String>,
    python_source: Option<String>,
}

/// The frame sources of the pipeline benchmark: the built-in scenario, synthetic YUYV
/// camera frames, and a real recording when `--video FILE.avi` is given.
fn edge_bench_sources(args: &[String]) -> Result<Vec<BenchSource>> {
    let source = |name: &str, edge_args: &[&str], python: Option<String>| BenchSource {
        name: name.to_string(),
        edge_args: edge_args.iter().map(|a| a.to_string()).collect(),
        python_source: python,
    };
    let scenario = format!("avi:{}", root().join("edge/demo/scenario.avi").display());
    let mut sources = vec![
        source("built-in MJPEG scenario, 320x240", &[], Some(scenario)),
        source(
            "built-in MJPEG scenario, 320x240, full-resolution JPEG decoding",
            &["--full-jpeg-decode"],
            None,
        ),
        source(
            "synthetic YUYV camera, 640x480",
            &["--yuyv", "640x480"],
            Some("yuyv:640x480".into()),
        ),
        source(
            "synthetic YUYV camera, 1280x720",
            &["--yuyv", "1280x720"],
            Some("yuyv:1280x720".into()),
        ),
    ];
    // a real camera recording, when given (`--video FILE.avi`, e.g. the MJPEG sample in
    // ../shared/data/video), with and without DCT-scaled decoding; the Python peer always
    // decodes every pixel
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--video" {
            let file = it.next().ok_or("--video needs a file")?;
            let name = Path::new(file)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let avi = format!("avi:{file}");
            sources.push(source(
                &format!("MJPEG video {name}, looped"),
                &["--source", &avi],
                Some(avi.clone()),
            ));
            sources.push(source(
                &format!("MJPEG video {name}, looped, full-resolution JPEG decoding"),
                &["--source", &avi, "--full-jpeg-decode"],
                None,
            ));
        }
    }
    Ok(sources)
}

/// `program` held to the first `cores` CPUs (through `taskset`, when the machine has it),
/// so that both sides of a comparison get the same cores.
fn on_cores(cores: usize, program: &Path) -> Command {
    if Command::new("taskset").arg("--version").output().is_ok() {
        let mut c = Command::new("taskset");
        c.arg("-c").arg(format!("0-{}", cores - 1)).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// The whole pipeline per source: frames per second, per-stage latency, peak memory; and
/// the same frames through `bench/python_pipeline.py` (OpenCV, onnxruntime and NumPy), run
/// right after it, with oodmon's speed as a ratio of the peer's. First both sides on one
/// core (oodmon's sequential loop, onnxruntime with one thread), then on two (oodmon's
/// overlapped loop, onnxruntime with two threads).
fn bench_edge_pipeline(
    edge: &Path,
    python: &Path,
    sources: &[BenchSource],
    frames: &str,
) -> Result {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if Command::new("taskset").arg("--version").output().is_err() {
        println!("(no taskset here: the core counts below are thread counts, not pinned)");
    }
    println!("| pipeline (built-in bundle) | cores | oodmon backend, loop | frames/s | total p50 / p99 (us) | inference p50 (us) | decode + preprocess + scoring p50 (us) | peak memory (MB) | Python pipeline frames/s | its total p50 / p99 (us) | its inference p50 (us) | oodmon speed vs Python |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let bundle = root().join("edge/demo/bundle");
    for src in sources {
        for cores in [1, 2].into_iter().filter(|&c| c <= cpus) {
            step(&format!("pipeline on {cores} core(s): {}", src.name));
            let theirs = match &src.python_source {
                Some(source) => Some(output_text(
                    on_cores(cores, python)
                        .arg(root().join("bench/python_pipeline.py"))
                        .arg(&bundle)
                        .arg(source)
                        .arg(frames)
                        .args(["--threads", &cores.to_string()])
                        .output()
                        .map_err(|e| e.to_string())?,
                    "python_pipeline.py",
                )?),
                None => None,
            };
            // on two cores tract also runs with its encoder whole on the model thread, to
            // show what cutting it in two (the default) gives
            let mut runs = vec![("tract", None), ("onnxruntime", None)];
            if cores > 1 {
                runs.insert(1, ("tract", Some("0")));
            }
            for (backend, head_share) in runs {
                let ours = output_text(
                    on_cores(cores, edge)
                        .args(["bench", "--json", "--frames", frames])
                        .args(["--backend", backend])
                        .args(if cores > 1 { &["--overlap"][..] } else { &[] })
                        .args(
                            head_share
                                .map(|s| ["--model-head-share", s])
                                .iter()
                                .flatten(),
                        )
                        .args(&src.edge_args)
                        .env("RUST_LOG", "warn")
                        .output()
                        .map_err(|e| e.to_string())?,
                    "oodmon-edge bench",
                )?;
                pipeline_row(src, cores, backend, &ours, theirs.as_deref());
            }
        }
    }
    Ok(())
}

/// One row of the pipeline table: oodmon's run and, where there is one, the Python peer's.
fn pipeline_row(src: &BenchSource, cores: usize, backend: &str, ours: &str, theirs: Option<&str>) {
    let stage = |out: &str, s: &str, q: &str| {
        out.split(&format!("\"{s}\":"))
            .nth(1)
            .and_then(|r| json_number(r, q))
            .unwrap_or(f64::NAN)
    };
    let overhead = ["decode", "preprocess", "scoring"]
        .iter()
        .map(|s| stage(ours, s, "p50_us"))
        .sum::<f64>();
    let fps = json_number(ours, "frames_per_second").unwrap_or(f64::NAN);
    let peer = match theirs {
        Some(t) => {
            let their_fps = json_number(t, "frames_per_second").unwrap_or(f64::NAN);
            format!(
                "{their_fps:.0} | {:.0} / {:.0} | {:.0} | {:.2}x",
                stage(t, "total", "p50_us"),
                stage(t, "total", "p99_us"),
                stage(t, "inference", "p50_us"),
                fps / their_fps
            )
        }
        None => "- | - | - | -".into(),
    };
    println!(
        "| {} | {cores} | {backend}, {} | {fps:.0} | {:.0} / {:.0} | {:.0} | {overhead:.0} | {:.1} | {peer} |",
        src.name,
        match (cores > 1, ours.contains("\"model_cut\"")) {
            (true, true) => "overlapped, encoder cut in two",
            (true, false) => "overlapped",
            _ => "sequential",
        },
        stage(ours, "total", "p50_us"),
        stage(ours, "total", "p99_us"),
        stage(ours, "inference", "p50_us"),
        json_number(ours, "peak_memory_bytes").unwrap_or(f64::NAN) / 1e6
    );
}
