//! # oodmon-cli
//!
//! The few lines every oodmon binary would otherwise repeat: [`main`] runs a command and
//! turns its error chain into one line on standard error and exit code 1 (a closed pipe,
//! as with `| head`, is success); [`say!`] prints a line and returns a closed pipe as an
//! error instead of panicking; [`stop_flag`] is set by Ctrl-C.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Starts logging (`RUST_LOG` overrides `default_log`), runs `run` and maps its outcome to
/// the exit code, printing the error chain as `name: error: outer: inner: ...`.
pub fn main(name: &str, default_log: &str, run: impl FnOnce() -> anyhow::Result<()>) -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_log)).init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{name}: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether the error is a write to a closed pipe (the reader went away: not a failure).
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `println!` that returns a closed pipe (`| head`) as an error instead of panicking;
/// [`main`] treats that error as success. For functions returning `anyhow::Result`.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

/// A flag Ctrl-C (SIGINT) sets, for loops that stop cleanly between frames or epochs.
pub fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))
        .map_err(|e| anyhow::anyhow!("installing the Ctrl-C handler: {e}"))?;
    Ok(stop)
}
