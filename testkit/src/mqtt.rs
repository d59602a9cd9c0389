//! A real MQTT broker for tests: Mosquitto on a free loopback port, with persistence (a
//! subscriber's session and its queued messages survive a restart, as on a real broker).
// test support fails loudly on any broken assumption
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Mosquitto as Debian ships it (the test command installs it).
pub fn mosquitto() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!(
        "mosquitto is not installed: `cargo xtask test` installs it (apt-get install mosquitto)"
    );
}

/// `mosquitto_passwd`, from the same package.
pub fn mosquitto_passwd() -> PathBuf {
    for p in ["/usr/bin/mosquitto_passwd", "/usr/sbin/mosquitto_passwd"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("mosquitto_passwd is not installed: `cargo xtask test` installs mosquitto");
}

/// A broker on a free loopback port, in `dir` (its configuration, persistence and log).
pub struct Broker {
    pub port: u16,
    conf: PathBuf,
    child: Option<Child>,
}

impl Broker {
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, "allow_anonymous true\n")
    }

    /// A broker with TLS (certificates from a fresh CA), passwords and an ACL: each vehicle
    /// (username = vehicle id) may publish only under `oodmon/+/<its id>/`, the user
    /// `monitor` may only read `oodmon/#`. Users: `monitor`, `v1`, `v2`, each with the
    /// password in `<user>.pass`; the CA in `ca.pem`; anonymous clients are refused.
    pub fn start_secure(dir: &Path) -> Self {
        write_ca_and_server(dir);
        let passwd = dir.join("passwd");
        for (i, user) in ["monitor", "v1", "v2"].iter().enumerate() {
            let password = format!("{user}-secret-{i}");
            std::fs::write(dir.join(format!("{user}.pass")), format!("{password}\n")).unwrap();
            let mut cmd = Command::new(mosquitto_passwd());
            if i == 0 {
                cmd.arg("-c");
            }
            let ok = cmd
                .arg("-b")
                .arg(&passwd)
                .arg(user)
                .arg(&password)
                .status()
                .unwrap()
                .success();
            assert!(ok, "mosquitto_passwd");
        }
        write_acl(dir);
        let d = dir.display();
        Self::start_with(
            dir,
            &format!(
                "allow_anonymous false\npassword_file {d}/passwd\nacl_file {d}/acl\n\
                 cafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n"
            ),
        )
    }

    /// A broker that authenticates clients by certificate (TLS, `require_certificate`,
    /// the certificate's common name as the username) with the ACL of
    /// [`Broker::start_secure`]. Client certificates signed by its CA for `monitor`, `v1`
    /// and `v2`: `<name>.pem` and `<name>.key`; the CA in `ca.pem`; no passwords.
    pub fn start_cert_auth(dir: &Path) -> Self {
        let issuer = write_ca_and_server(dir);
        for name in ["monitor", "v1", "v2"] {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            let cert = params.signed_by(&key, &issuer).unwrap();
            std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        write_acl(dir);
        let d = dir.display();
        Self::start_with(
            dir,
            &format!(
                "allow_anonymous false\nrequire_certificate true\nuse_identity_as_username true\n\
                 acl_file {d}/acl\ncafile {d}/ca.pem\ncertfile {d}/server.pem\n\
                 keyfile {d}/server.key\n"
            ),
        )
    }

    /// `mqtts://` for a broker from [`Broker::start_secure`], `mqtt://` otherwise.
    pub fn secure_url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.port)
    }

    fn start_with(dir: &Path, settings: &str) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let data = dir.join("broker");
        std::fs::create_dir_all(&data).unwrap();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\n{settings}persistence true\n\
                 persistence_location {}/\nlog_dest file {}/broker.log\n",
                data.display(),
                data.display()
            ),
        )
        .unwrap();
        let mut b = Self {
            port,
            conf,
            child: None,
        };
        b.resume();
        b
    }

    /// The broker's log, for failure messages.
    pub fn log(&self) -> String {
        let dir = self.conf.parent().unwrap_or(Path::new("."));
        std::fs::read_to_string(dir.join("broker").join("broker.log")).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn resume(&mut self) {
        let child = Command::new(mosquitto())
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < until, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM: the broker saves its sessions and stops.
    pub fn pause(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            c.wait().unwrap();
        }
    }
}

/// A fresh CA (`ca.pem`) and a server certificate for localhost and 127.0.0.1 signed by
/// it (`server.pem`, `server.key`); the CA's issuer, to sign client certificates.
fn write_ca_and_server(dir: &Path) -> rcgen::Issuer<'static, rcgen::KeyPair> {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "oodmon test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let mut server_params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    server_params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress(std::net::IpAddr::from([
            127, 0, 0, 1,
        ])));
    let server = server_params.signed_by(&server_key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
    issuer
}

/// The ACL of the secure brokers: a vehicle (username = vehicle id) writes only under its
/// own id, the user `monitor` only reads.
fn write_acl(dir: &Path) {
    std::fs::write(
        dir.join("acl"),
        "# vehicles: their own topics only (username = vehicle id)\n\
         pattern write oodmon/+/%u/#\n\
         # the control room reads\n\
         user monitor\n\
         topic read oodmon/#\n",
    )
    .unwrap();
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
