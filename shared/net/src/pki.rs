//! The cluster's certificates: one CA per cluster (`scission-cloud init`), one key and
//! certificate per node signed by it (`scission-cloud enroll`), and the rustls configurations
//! that require them on both sides (mutual TLS 1.3).
//!
//! A cluster directory holds `ca.cert.pem`, `ca.key.pem`, `ca.name`, and per node
//! `NAME.cert.pem` + `NAME.key.pem`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use scission_core::wire::message::ALPN;

/// Server name every node certificate carries, and clients expect.
pub const SERVER_NAME: &str = "scission.cluster";

fn ca_params(name: &str) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(params)
}

/// Creates a new cluster CA in `dir` (refuses to overwrite one).
pub fn init_cluster(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if dir.join("ca.key.pem").exists() {
        bail!("{} already holds a cluster CA; remove it first to start a new cluster", dir.display());
    }
    let key = KeyPair::generate()?;
    let name = format!(
        "Scission cluster CA {:016x}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
    );
    let cert = ca_params(&name)?.self_signed(&key)?;
    write_private(&dir.join("ca.key.pem"), &key.serialize_pem())?;
    std::fs::write(dir.join("ca.cert.pem"), cert.pem())?;
    std::fs::write(dir.join("ca.name"), &name)?;
    Ok(())
}

/// Issues a key and certificate for node `name` from the CA in `dir`.
pub fn enroll(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        bail!("node name '{name}' must be letters, digits, '-', '_' or '.'");
    }
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f)).with_context(|| format!("{} has no {f}: run `scission-cloud init` first", dir.display()))
    };
    let ca_key = KeyPair::from_pem(&read("ca.key.pem")?).context("ca.key.pem is not a private key")?;
    let issuer = Issuer::new(ca_params(read("ca.name")?.trim())?, ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![SERVER_NAME.to_string(), "localhost".to_string()])?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer)?;
    let (cert_path, key_path) = (dir.join(format!("{name}.cert.pem")), dir.join(format!("{name}.key.pem")));
    std::fs::write(&cert_path, cert.pem())?;
    write_private(&key_path, &key.serialize_pem())?;
    Ok((cert_path, key_path))
}

fn write_private(path: &Path, pem: &str) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(pem.as_bytes())?;
    Ok(())
}

/// A node's identity: the cluster CA and its own key and certificate.
#[derive(Clone, Debug)]
pub struct Identity {
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

impl Identity {
    /// Loads node `name`'s identity from the cluster directory.
    pub fn load(dir: &Path, name: &str) -> Result<Self> {
        let ca_path = dir.join("ca.cert.pem");
        let ca = CertificateDer::pem_file_iter(&ca_path)
            .with_context(|| format!("cannot read {}", ca_path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{} is not a PEM certificate", ca_path.display()))?;
        let cert_path = dir.join(format!("{name}.cert.pem"));
        let chain = CertificateDer::pem_file_iter(&cert_path)
            .with_context(|| format!("cannot read {}: enroll the node with `scission-cloud enroll {name}`", cert_path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{} is not a PEM certificate", cert_path.display()))?;
        let key_path = dir.join(format!("{name}.key.pem"));
        let key = PrivateKeyDer::from_pem_file(&key_path).with_context(|| format!("cannot read the key {}", key_path.display()))?;
        Ok(Self { ca, chain, key: Arc::new(key) })
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>> {
        let mut roots = rustls::RootCertStore::empty();
        for c in &self.ca {
            roots.add(c.clone()).context("the cluster CA certificate is invalid")?;
        }
        Ok(Arc::new(roots))
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// TLS 1.3 server configuration that requires a client certificate from the cluster CA.
    pub fn server_config(&self) -> Result<rustls::ServerConfig> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots()?, Self::provider()).build()?;
        let mut config = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// TLS 1.3 client configuration that presents this node's certificate and trusts only the
    /// cluster CA.
    pub fn client_config(&self) -> Result<rustls::ClientConfig> {
        let mut config = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }
}
