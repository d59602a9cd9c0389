//! Developer tasks: `cargo xtask test` does all the set-up and runs every check;
//! `cargo xtask bench` runs the benchmarks against their Python peers in one run.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

type Result<T = ()> = std::result::Result<T, String>;

const AARCH64: &str = "aarch64-unknown-linux-gnu";
/// Crates that must build and pass their tests on aarch64 (the edge joins when it has tests).
const AARCH64_CRATES: &[&str] = &["oodmon-calibration"];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("setup") => setup().map(|_| ()),
        Some("bench") => bench(&args[1..]),
        Some("bench-train") => bench_train(&args[1..]),
        _ => Err(
            "usage: cargo xtask <test [--no-aarch64] | setup | bench [--quick] | bench-train [--quick]>"
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

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
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

/// Cargo for the host workspace with libtorch taken from the Python environment's torch
/// (tch's `LIBTORCH_USE_PYTORCH`), that interpreter first on PATH.
fn cargo_with_torch(python: &Path) -> Command {
    let mut c = cargo();
    let bin = python.parent().expect("python lives in a bin folder");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![bin.to_path_buf()];
    paths.extend(std::env::split_paths(&path));
    c.env("LIBTORCH_USE_PYTORCH", "1")
        .env("PATH", std::env::join_paths(paths).expect("valid PATH"))
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

/// Debian's rustc with an aarch64 standard library, the cross linker and qemu.
fn aarch64_toolchain() -> Result {
    let ready = Path::new("/usr/bin/rustc").exists()
        && Path::new("/usr/lib/rustlib/aarch64-unknown-linux-gnu/lib").exists()
        && have("aarch64-linux-gnu-gcc")
        && have("qemu-aarch64-static");
    if ready {
        return Ok(());
    }
    step("installing the aarch64 toolchain (Debian packages)");
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
    let script = format!(
        "set -e; {sudo}dpkg --add-architecture arm64; {sudo}apt-get update -qq; \
         DEBIAN_FRONTEND=noninteractive {sudo}apt-get install -y -qq rustc-web cargo-web \
         libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static"
    );
    run(Command::new("sh").args(["-c", &script]))
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
    aarch64_toolchain()?;
    Ok(python)
}

fn test(args: &[String]) -> Result {
    let started = Instant::now();
    let aarch64 = !args.iter().any(|a| a == "--no-aarch64");
    let python = python_env()?;
    if aarch64 {
        aarch64_toolchain()?;
    }
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
    run(cargo_with_torch(&python).args(["test", "--workspace"]))?;
    if aarch64 {
        step("aarch64 build and tests under qemu");
        let target_dir = target_dir().join("aarch64-debian");
        let mut cmd = Command::new("/usr/bin/cargo");
        cmd.current_dir(root())
            .args(["test", "--target", AARCH64])
            .args(AARCH64_CRATES.iter().flat_map(|c| ["-p", c]))
            .env("RUSTC", "/usr/bin/rustc")
            .env("RUSTDOC", "/usr/bin/rustdoc")
            .env_remove("RUSTUP_TOOLCHAIN")
            .env("CARGO_TARGET_DIR", target_dir)
            .env(
                "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER",
                qemu_aarch64(),
            )
            .env("OODMON_TEST_RUNNER", qemu_aarch64())
            .env("QEMU_CPU", "neoverse-n1");
        run(&mut cmd)?;
    }
    eprintln!(
        "\nall checks passed in {:.0}s",
        started.elapsed().as_secs_f64()
    );
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
    for (arch, batch, steps) in [("edge", "128", "20"), ("resnet18", "64", "8")] {
        let steps = if quick { "3" } else { steps };
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
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
        }
        rows.push((arch, batch, median(ours), median(theirs)));
    }
    println!(
        "| model | batch | threads | oodmon-trainer (img/s) | PyTorch eager (img/s) | ratio |"
    );
    println!("|---|---|---|---|---|---|");
    for (arch, batch, ours, theirs) in rows {
        println!(
            "| {arch} | {batch} | {threads} | {ours:.0} | {theirs:.0} | {:.2}x |",
            ours / theirs
        );
    }
    Ok(())
}
