//! Connecting to the fleet's broker (feature `client`): the URL, TLS with a pinned CA, and
//! per-vehicle credentials (a username and password, or a client certificate), shared by
//! the edge and the monitor. `mqtt://` is plain TCP (a trusted network only); `mqtts://`
//! is TLS that trusts the configured CA and nothing else (not the system's roots).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// Why a broker connection cannot be set up (before any network traffic).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("broker URL {url:?}: {why}")]
    Url { url: String, why: String },
    #[error("{what} {path}: {why}")]
    File {
        what: &'static str,
        path: PathBuf,
        why: String,
    },
    #[error("{0}")]
    Config(String),
}

/// Where the broker is and who we are to it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// `mqtt://HOST[:PORT]` (1883) or `mqtts://HOST[:PORT]` (8883, TLS).
    pub url: Option<String>,
    /// The CA certificate (PEM) the broker's certificate must chain to: required with
    /// `mqtts://`, and the only trust root.
    pub ca: Option<PathBuf>,
    /// Username (a vehicle's id, for a per-vehicle ACL).
    pub username: Option<String>,
    /// A file holding the password (its first line), kept out of the configuration.
    pub password_file: Option<PathBuf>,
    /// A client certificate and its private key (PEM), for brokers that authenticate
    /// clients by certificate.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// Whether a URL asks for TLS, its host and its port.
pub fn parse_url(url: &str) -> Result<(bool, String, u16), ClientError> {
    let bad = |why: &str| ClientError::Url {
        url: url.into(),
        why: why.into(),
    };
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
    {
        (false, r)
    } else {
        return Err(bad("expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h, p.parse::<u16>().map_err(|_| bad("bad port"))?)
        }
        _ => (rest, if tls { 8883 } else { 1883 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('/') {
        return Err(bad("no host"));
    }
    Ok((tls, host.to_string(), port))
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|e| ClientError::File {
        what,
        path: path.into(),
        why: e.to_string(),
    })
}

impl BrokerConfig {
    /// Checks what can be checked without the network: the URL, and that TLS has its CA
    /// and files exist and parse.
    pub fn validate(&self) -> Result<(), ClientError> {
        self.options("validate", Duration::from_secs(5)).map(|_| ())
    }

    /// The client options for `client_id`: transport (TLS with the pinned CA for
    /// `mqtts://`), credentials and keep-alive.
    pub fn options(
        &self,
        client_id: &str,
        keep_alive: Duration,
    ) -> Result<MqttOptions, ClientError> {
        let url = self
            .url
            .as_deref()
            .ok_or_else(|| ClientError::Config("no broker URL".into()))?;
        let (tls, host, port) = parse_url(url)?;
        let mut options = MqttOptions::new(client_id, host, port);
        options.set_keep_alive(keep_alive);
        if tls {
            options.set_transport(Transport::tls_with_config(self.tls()?));
        } else if self.ca.is_some() || self.client_cert.is_some() {
            return Err(ClientError::Config(format!(
                "a CA or client certificate is set but {url} is not TLS: use mqtts://"
            )));
        }
        match (&self.username, &self.password_file) {
            (Some(user), Some(file)) => {
                let text = String::from_utf8(read("password file", file)?).map_err(|_| {
                    ClientError::File {
                        what: "password file",
                        path: file.clone(),
                        why: "not UTF-8".into(),
                    }
                })?;
                let password = text.lines().next().unwrap_or("").to_string();
                options.set_credentials(user.clone(), password);
            }
            (Some(user), None) => {
                options.set_credentials(user.clone(), "");
            }
            (None, Some(_)) => {
                return Err(ClientError::Config(
                    "a password file without a username".into(),
                ))
            }
            (None, None) => {}
        }
        Ok(options)
    }

    /// rustls with the configured CA as the only root (ring as the crypto provider).
    fn tls(&self) -> Result<TlsConfiguration, ClientError> {
        let ca_path = self.ca.as_ref().ok_or_else(|| {
            ClientError::Config("mqtts:// needs the broker's CA certificate (ca)".into())
        })?;
        let pem = read("CA certificate", ca_path)?;
        let bad = |what: &'static str, path: &Path, why: String| ClientError::File {
            what,
            path: path.into(),
            why,
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| bad("CA certificate", ca_path, e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| bad("CA certificate", ca_path, e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(bad(
                "CA certificate",
                ca_path,
                "no certificate in it".into(),
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Config(e.to_string()))?
            .with_root_certificates(roots);
        let config = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_slice_iter(&read("client certificate", cert)?)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad("client certificate", cert, e.to_string()))?;
                let key_der = PrivateKeyDer::from_pem_slice(&read("client key", key)?)
                    .map_err(|e| bad("client key", key, e.to_string()))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| bad("client certificate", cert, e.to_string()))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(ClientError::Config(
                    "a client certificate needs its key, and a key its certificate".into(),
                ))
            }
        };
        Ok(TlsConfiguration::Rustls(Arc::new(config)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_tls_host_and_port() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1:18830").unwrap(),
            (false, "127.0.0.1".into(), 18830)
        );
        assert_eq!(
            parse_url("mqtts://broker.lan").unwrap(),
            (true, "broker.lan".into(), 8883)
        );
        assert_eq!(
            parse_url("mqtt://broker").unwrap(),
            (false, "broker".into(), 1883)
        );
        for bad in ["http://x", "mqtt://", "mqtt://h:99999", "broker:1883"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tls_needs_its_ca_and_plain_tcp_refuses_one() {
        let dir = std::env::temp_dir().join(format!("oodmon-fleet-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = BrokerConfig {
            url: Some("mqtts://broker".into()),
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().to_string().contains("CA"));
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let cfg = BrokerConfig {
            ca: Some(junk.clone()),
            ..cfg
        };
        assert!(cfg.validate().unwrap_err().to_string().contains("junk.pem"));
        let cfg = BrokerConfig {
            url: Some("mqtt://broker".into()),
            ca: Some(junk),
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().to_string().contains("mqtts://"));
        let cfg = BrokerConfig {
            url: Some("mqtt://broker".into()),
            username: Some("v1".into()),
            password_file: Some(dir.join("missing")),
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().to_string().contains("missing"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
