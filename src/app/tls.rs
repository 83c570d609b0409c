//! `serve --tls-cert/--tls-key`: the certificate and key, read once at start into the TLS
//! settings of each listener (HTTP/2 for gRPC, HTTP/1.1 for HTTP, chosen by ALPN).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The PEM files of the server's certificate chain and private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// What accepts a listener's TLS connections.
#[derive(Clone)]
pub(super) struct Tls {
    pub acceptor: TlsAcceptor,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tls")
    }
}

impl TlsFiles {
    /// Reads the files into a listener's settings, offering `protocol` (`h2`, `http/1.1`).
    pub(super) fn load(&self, protocol: &[u8]) -> anyhow::Result<Tls> {
        let chain = read_chain(&self.cert)?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|err| {
            anyhow::anyhow!(
                "--tls-key {}: no PEM private key could be read ({})",
                self.key.display(),
                pem_problem(&err)
            )
        })?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .with_context(|| {
                format!(
                    "--tls-cert {} and --tls-key {} do not make a usable pair",
                    self.cert.display(),
                    self.key.display()
                )
            })?;
        config.alpn_protocols = vec![protocol.to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

fn read_chain(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| {
            anyhow::anyhow!(
                "--tls-cert {}: cannot read PEM certificates ({})",
                path.display(),
                pem_problem(&err)
            )
        })?;
    anyhow::ensure!(
        !chain.is_empty(),
        "--tls-cert {}: holds no PEM certificate",
        path.display()
    );
    Ok(chain)
}

/// The kind of a PEM problem, without echoing the file's content.
fn pem_problem(err: &rustls_pki_types::pem::Error) -> String {
    match err {
        rustls_pki_types::pem::Error::Io(io) => io.to_string(),
        rustls_pki_types::pem::Error::NoItemsFound => "no matching PEM section".to_owned(),
        _ => "malformed PEM".to_owned(),
    }
}
