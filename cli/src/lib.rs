//! # oodmon-cli
//!
//! The few lines every oodmon binary would otherwise repeat: [`main`] runs a command and
//! turns its error chain into one line on standard error and exit code 1 (a closed pipe,
//! as with `| head`, is success); [`say!`] prints a line and returns a closed pipe as an
//! error instead of panicking; [`stop_flag`] is set by Ctrl-C.

use std::error::Error;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Starts logging (`RUST_LOG` overrides `default_log`), runs `run` and maps its outcome to
/// the exit code, printing the error chain as `name: error: outer: inner: ...`.
/// Any error that shows its chain works: `anyhow::Error` and boxed errors alike.
pub fn main<E>(name: &str, default_log: &str, run: impl FnOnce() -> Result<(), E>) -> ExitCode
where
    E: AsRef<dyn Error + Send + Sync + 'static>,
{
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_log)).init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let err: &(dyn Error + 'static) = err.as_ref();
            if is_broken_pipe(err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("{name}: error: {}", chain(err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, `outer: inner: ...`, each message once (a message that
/// already ends with its cause's text does not repeat it).
pub fn chain(err: &(dyn Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

/// Whether the error, or one of its causes, is a write to a closed pipe (the reader went
/// away: not a failure).
fn is_broken_pipe(err: &(dyn Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// `println!` that returns a closed pipe (`| head`) as an error instead of panicking;
/// [`main`] treats that error as success.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

/// A flag Ctrl-C (SIGINT), SIGTERM or SIGHUP sets, for loops that stop cleanly between
/// frames or epochs.
pub fn stop_flag() -> std::io::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed)).map_err(|e| {
        std::io::Error::other(format!("installing the SIGINT/SIGTERM handler: {e}"))
    })?;
    Ok(stop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading calib.json")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_chain_names_each_cause_once_and_finds_broken_pipes() {
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(chain(&e), "reading calib.json: disk on fire");
        let pipe = Outer(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(is_broken_pipe(&pipe));
        assert!(!is_broken_pipe(&e));
        let any = anyhow::Error::new(e).context("fitting");
        let boxed: Box<dyn Error + Send + Sync> = any.into();
        assert_eq!(
            chain(boxed.as_ref()),
            "fitting: reading calib.json: disk on fire"
        );
    }
}
