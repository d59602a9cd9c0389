//! systemd's service notification protocol (`sd_notify`): `READY=1` once the bundle and
//! source are up, and `WATCHDOG=1` from the frame loop, so that a loop that stops making
//! progress gets the service restarted (`WatchdogSec=` in the unit). A datagram to the
//! socket systemd names in `NOTIFY_SOCKET`; without it every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

pub struct SystemdNotifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    /// Pet at half the watchdog period (`WATCHDOG_USEC`); `None`: no watchdog.
    every: Option<Duration>,
    last: Option<Instant>,
}

impl SystemdNotifier {
    /// From `NOTIFY_SOCKET` and `WATCHDOG_USEC`, as systemd sets them for `Type=notify`.
    pub fn from_env() -> Self {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_micros);
        match socket {
            Some(s) => Self::new(Path::new(&s), watchdog),
            None => Self {
                socket: None,
                every: None,
                last: None,
            },
        }
    }

    /// A notifier for the socket at `path` (a leading `@` names an abstract socket).
    pub fn new(path: &Path, watchdog: Option<Duration>) -> Self {
        let addr = {
            let text = path.to_string_lossy();
            match text.strip_prefix('@') {
                Some(name) => {
                    use std::os::linux::net::SocketAddrExt;
                    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                }
                None => std::os::unix::net::SocketAddr::from_pathname(path),
            }
        };
        let socket = match (UnixDatagram::unbound(), addr) {
            (Ok(s), Ok(a)) => Some((s, a)),
            (Err(e), _) | (_, Err(e)) => {
                log::warn!("systemd notification socket {}: {e}", path.display());
                None
            }
        };
        Self {
            socket,
            every: watchdog.map(|w| w / 2),
            last: None,
        }
    }

    fn send(&self, message: &str) {
        if let Some((socket, addr)) = &self.socket {
            if let Err(e) = socket.send_to_addr(message.as_bytes(), addr) {
                log::warn!("systemd notification {message:?}: {e}");
            }
        }
    }

    /// The service is up.
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// The frame loop is alive; sends at most every half watchdog period.
    pub fn alive(&mut self) {
        let Some(every) = self.every else {
            return;
        };
        let now = Instant::now();
        if self.last.is_none_or(|t| now.duration_since(t) >= every) {
            self.send("WATCHDOG=1");
            self.last = Some(now);
        }
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_and_rate_limited_watchdog_messages_reach_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        server.set_nonblocking(true).unwrap();
        let mut n = SystemdNotifier::new(&path, Some(Duration::from_secs(3600)));
        n.ready();
        n.alive();
        n.alive(); // within half the period: not sent again
        n.stopping();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok(len) = server.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..len]).to_string());
        }
        assert_eq!(got, ["READY=1", "WATCHDOG=1", "STOPPING=1"]);
        // without a socket nothing happens and nothing fails
        let mut quiet = SystemdNotifier::new(&dir.path().join("absent"), None);
        quiet.ready();
        quiet.alive();
    }
}
