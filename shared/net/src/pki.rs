//! The cluster's certificates: one CA per cluster (`scission-cloud init`), one key and
//! certificate per node signed by it (`scission-cloud enroll`), and the rustls configurations
//! that require them on both sides (mutual TLS 1.3).
//!
//! A cluster directory holds `ca.cert.pem`, `ca.key.pem`, `ca.name`, per node
//! `NAME.cert.pem` + `NAME.key.pem`, and `revoked.txt` (names refused by every server).
//!
//! **Names and roles.** A node's certificate names it (`NAME.node.scission`, the server name
//! clients check when they connect to it) and its role (`ROLE.role.scission`), and its extended
//! key usage follows the role: a device may only be a client; an edge and a cloud are both
//! (an edge forwards to the cloud, a further cloud registers with the planner). So a device key cannot serve, and a server reads who a peer
//! is and what it may ask from the verified certificate, not from the peer's messages.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Doing, NetError, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use scission_core::wire::message::ALPN;

/// What a node is in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Runs the first slice and serves its board's applications; a client only.
    Device,
    /// Serves stages and forwards to the cloud; server and client.
    Edge,
    /// Serves stages, plans and the model file; a server only.
    Cloud,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 3] = [Role::Device, Role::Edge, Role::Cloud];

    /// Its lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Device => "device",
            Role::Edge => "edge",
            Role::Cloud => "cloud",
        }
    }

    /// The role called `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }

    fn usages(self) -> Vec<ExtendedKeyUsagePurpose> {
        match self {
            Role::Device => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Role::Edge => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
            // A client too: a further cloud registers with the planner.
            Role::Cloud => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        }
    }
}

/// The server name of node `name`, as its certificate carries it and clients check it.
pub fn node_dns(name: &str) -> String {
    format!("{name}.node.scission")
}

/// The name a certificate of `role` carries.
pub fn role_dns(role: Role) -> String {
    format!("{}.role.scission", role.as_str())
}

/// Whether `name` can be a node name: a lower-case DNS label (letters, digits and '-'). Lower
/// case only, because certificates match names case-insensitively: `Edge` and `edge` must not
/// be two nodes.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
}

fn ca_params(name: &str) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new()).certificate(|| "the CA's parameters".into())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(params)
}

/// A new CA: its name, key and self-signed certificate.
fn new_ca() -> Result<(String, KeyPair, rcgen::Certificate)> {
    let key = KeyPair::generate().certificate(|| "generating the CA key".into())?;
    let name = format!(
        "Scission cluster CA {:016x}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
    );
    let cert = ca_params(&name)?.self_signed(&key).certificate(|| "signing the CA certificate".into())?;
    Ok((name, key, cert))
}

/// Creates a new cluster CA in `dir` (refuses to overwrite one).
pub fn init_cluster(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).io(|| format!("cannot create {}", dir.display()))?;
    if dir.join("ca.key.pem").exists() {
        return Err(NetError::Invalid(format!("{} already holds a cluster CA; remove it first to start a new cluster", dir.display())));
    }
    let (name, key, cert) = new_ca()?;
    write_private(&dir.join("ca.key.pem"), &key.serialize_pem())?;
    std::fs::write(dir.join("ca.cert.pem"), cert.pem()).io(|| format!("cannot write {}", dir.join("ca.cert.pem").display()))?;
    std::fs::write(dir.join("ca.name"), &name).io(|| format!("cannot write {}", dir.join("ca.name").display()))?;
    Ok(())
}

/// How long a node certificate is valid unless `enroll` is told otherwise.
pub const DEFAULT_VALID_DAYS: u32 = 365;

/// Validity from a day ago (clock skew between nodes) to `days` days from now.
fn validity(days: u32) -> Result<(time::OffsetDateTime, time::OffsetDateTime)> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).certificate(|| "the clock is before 1970".into())?;
    let now = i64::try_from(now.as_secs()).certificate(|| "the clock is out of range".into())?;
    let day = 86_400i64;
    let at = |secs: i64| time::OffsetDateTime::from_unix_timestamp(secs).certificate(|| "a certificate date out of range".into());
    Ok((at(now.saturating_sub(day))?, at(now.saturating_add(i64::from(days).saturating_mul(day)))?))
}

/// Issues a key and certificate for node `name` with `role` from the CA in `dir`, valid for
/// `days` days. Refuses to replace an existing key unless `replace`.
pub fn enroll(dir: &Path, name: &str, role: Role, replace: bool, days: u32) -> Result<(PathBuf, PathBuf)> {
    if days == 0 || days > 36_500 {
        return Err(NetError::Invalid(format!("a certificate is valid for 1 to 36500 days, not {days}")));
    }
    if !valid_name(name) {
        return Err(NetError::Invalid(format!("node name '{name}' must be 1 to 63 lower-case letters, digits or '-' (not first)")));
    }
    let (cert_path, key_path) = (dir.join(format!("{name}.cert.pem")), dir.join(format!("{name}.key.pem")));
    if !replace && (key_path.exists() || cert_path.exists()) {
        return Err(NetError::Invalid(format!("'{name}' is enrolled already ({}); pass --replace to issue a new key", key_path.display())));
    }
    let read =
        |f: &str| std::fs::read_to_string(dir.join(f)).io(|| format!("{} has no {f}: run `scission-cloud init` first", dir.display()));
    let ca_key = KeyPair::from_pem(&read("ca.key.pem")?).certificate(|| "ca.key.pem is not a private key".into())?;
    let issuer = Issuer::new(ca_params(read("ca.name")?.trim())?, ca_key);
    let (key, cert) = issue(&issuer, name, role, days)?;
    std::fs::write(&cert_path, cert.pem()).io(|| format!("cannot write {}", cert_path.display()))?;
    write_private(&key_path, &key.serialize_pem())?;
    Ok((cert_path, key_path))
}

/// A new key for node `name` with `role`, and its certificate from `issuer`, valid `days` days.
fn issue(issuer: &Issuer<'_, KeyPair>, name: &str, role: Role, days: u32) -> Result<(KeyPair, rcgen::Certificate)> {
    let key = KeyPair::generate().certificate(|| format!("generating {name}'s key"))?;
    let mut params = CertificateParams::new(vec![node_dns(name), role_dns(role)]).certificate(|| format!("{name}'s names"))?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.distinguished_name.push(DnType::OrganizationalUnitName, role.as_str());
    params.extended_key_usages = role.usages();
    (params.not_before, params.not_after) = validity(days)?;
    let cert = params.signed_by(&key, issuer).certificate(|| format!("signing {name}'s certificate"))?;
    Ok((key, cert))
}

fn write_private(path: &Path, pem: &str) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).io(|| format!("cannot write {}", path.display()))?;
    // The mode above applies only to a new file: an existing one is tightened too.
    #[cfg(unix)]
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .io(|| format!("cannot restrict {}", path.display()))?;
    file.write_all(pem.as_bytes()).io(|| format!("cannot write {}", path.display()))?;
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
            .certificate(|| format!("cannot read {}", ca_path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .certificate(|| format!("{} is not a PEM certificate", ca_path.display()))?;
        let cert_path = dir.join(format!("{name}.cert.pem"));
        let chain = CertificateDer::pem_file_iter(&cert_path)
            .certificate(|| format!("cannot read {}: enroll the node with `scission-cloud enroll {name}`", cert_path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .certificate(|| format!("{} is not a PEM certificate", cert_path.display()))?;
        let key_path = dir.join(format!("{name}.key.pem"));
        let key = PrivateKeyDer::from_pem_file(&key_path).certificate(|| format!("cannot read the key {}", key_path.display()))?;
        Ok(Self { ca, chain, key: Arc::new(key) })
    }

    /// The identities of `nodes` in a new cluster that lives only in memory (nothing written):
    /// for a process talking to itself, as the loopback measurement does.
    pub fn throwaway(nodes: &[(&str, Role)]) -> Result<Vec<Self>> {
        let (name, ca_key, ca_cert) = new_ca()?;
        let ca = vec![ca_cert.der().clone()];
        let issuer = Issuer::new(ca_params(&name)?, ca_key);
        let identity = |&(node, role): &(&str, Role)| {
            let (key, cert) = issue(&issuer, node, role, 1)?;
            let key = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| NetError::Invalid(format!("{node}'s key: {e}")))?;
            Ok(Self { ca: ca.clone(), chain: vec![cert.der().clone()], key: Arc::new(key) })
        };
        nodes.iter().map(identity).collect()
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>> {
        let mut roots = rustls::RootCertStore::empty();
        for c in &self.ca {
            roots.add(c.clone()).certificate(|| "the cluster CA certificate is invalid".into())?;
        }
        Ok(Arc::new(roots))
    }

    /// ring's TLS 1.3 suites, fastest first for this CPU: AES-128-GCM where the CPU has AES
    /// instructions (a quarter fewer rounds than AES-256, the same GHASH), ChaCha20-Poly1305
    /// where it has none (a Raspberry Pi 4's Cortex-A72, where software AES is several times
    /// slower). A server follows its client's order, so each device picks for its own CPU.
    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        use rustls::crypto::ring::cipher_suite::{TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256};
        let suites = if has_aes_instructions() {
            vec![TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256]
        } else {
            vec![TLS13_CHACHA20_POLY1305_SHA256, TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384]
        };
        Arc::new(rustls::crypto::CryptoProvider { cipher_suites: suites, ..rustls::crypto::ring::default_provider() })
    }

    /// TLS 1.3 server configuration that requires a client certificate from the cluster CA
    /// and, with a deny list, refuses revoked nodes during the handshake.
    pub fn server_config(&self, deny: Option<Arc<DenyList>>) -> Result<rustls::ServerConfig> {
        let webpki = rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots()?, Self::provider())
            .build()
            .transport(|| "the client certificate check".into())?;
        let verifier: Arc<dyn rustls::server::danger::ClientCertVerifier> = match deny {
            Some(deny) => Arc::new(RefusingRevoked { inner: webpki, deny }),
            None => webpki,
        };
        let mut config = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .transport(|| "TLS 1.3".into())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .certificate(|| "this node's certificate and key".into())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// TLS 1.3 client configuration that presents this node's certificate and trusts only the
    /// cluster CA.
    pub fn client_config(&self) -> Result<rustls::ClientConfig> {
        let mut config = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .transport(|| "TLS 1.3".into())?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .certificate(|| "this node's certificate and key".into())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }
}

/// A peer's certificate, as the TLS handshake verified it against the cluster CA.
#[derive(Clone, Debug)]
pub struct PeerCert(CertificateDer<'static>);

impl PeerCert {
    /// The verified end-entity certificate of a peer's chain.
    pub fn new(chain: &[CertificateDer<'static>]) -> Option<Self> {
        chain.first().map(|c| Self(c.clone()))
    }

    fn valid_for(&self, dns: String) -> bool {
        let (Ok(cert), Ok(name)) = (webpki::EndEntityCert::try_from(&self.0), rustls::pki_types::ServerName::try_from(dns)) else {
            return false;
        };
        cert.verify_is_valid_for_subject_name(&name).is_ok()
    }

    /// The role the certificate was enrolled with (`None` for a certificate from an older
    /// enrolment, which carries none).
    pub fn role(&self) -> Option<Role> {
        Role::ALL.into_iter().find(|r| self.valid_for(role_dns(*r)))
    }

    /// The certificate's DER bytes (to tell peers apart).
    pub fn der(&self) -> &[u8] {
        self.0.as_ref()
    }

    /// Whether the certificate names node `name`.
    pub fn is_named(&self, name: &str) -> bool {
        valid_name(name) && self.valid_for(node_dns(name))
    }
}

/// The cluster's deny list (`revoked.txt`), read again at most once a second, so `revoke`
/// takes effect on running servers without a restart.
#[derive(Debug)]
pub struct DenyList {
    dir: PathBuf,
    cache: std::sync::Mutex<(Option<std::time::Instant>, Vec<String>)>,
}

impl DenyList {
    /// How long a read of the list is trusted.
    pub const FRESH: std::time::Duration = std::time::Duration::from_secs(1);

    /// The deny list of the cluster directory `dir`.
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf(), cache: std::sync::Mutex::new((None, Vec::new())) }
    }

    /// Whether the certificate names a revoked node (an unreadable list keeps the last one read).
    pub fn is_revoked(&self, peer: &PeerCert) -> bool {
        self.any(|name| peer.is_named(name))
    }

    /// Whether node `name` is revoked.
    pub fn is_name_revoked(&self, name: &str) -> bool {
        self.any(|revoked| revoked.eq_ignore_ascii_case(name))
    }

    fn any(&self, matches: impl Fn(&str) -> bool) -> bool {
        let Ok(mut cache) = self.cache.lock() else { return true };
        if cache.0.is_none_or(|read| read.elapsed() >= Self::FRESH) {
            match revoked_names(&self.dir) {
                Ok(names) => cache.1 = names,
                Err(e) => tracing::warn!("keeping the previous deny list: {e:#}"),
            }
            cache.0 = Some(std::time::Instant::now());
        }
        cache.1.iter().any(|name| matches(name))
    }
}

/// The cluster CA's client check, then the deny list: a revoked node fails the handshake.
#[derive(Debug)]
struct RefusingRevoked {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    deny: Arc<DenyList>,
}

impl rustls::server::danger::ClientCertVerifier for RefusingRevoked {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        if let Some(peer) = PeerCert::new(&[end_entity.clone().into_owned()])
            && self.deny.is_revoked(&peer)
        {
            tracing::warn!("refused a revoked node at the handshake");
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The names in `revoked.txt`: nodes every server refuses.
pub fn revoked_names(dir: &Path) -> Result<Vec<String>> {
    match std::fs::read_to_string(dir.join(REVOKED)) {
        Ok(text) => Ok(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(NetError::Io { what: format!("cannot read {}", dir.join(REVOKED).display()), source: e }),
    }
}

/// The deny-list file in a cluster directory.
pub const REVOKED: &str = "revoked.txt";

/// Adds `name` to the cluster's deny list; servers that read the list refuse it from then on.
pub fn revoke(dir: &Path, name: &str) -> Result<()> {
    if !valid_name(name) {
        return Err(NetError::Invalid(format!("'{name}' is not a node name")));
    }
    let mut names = revoked_names(dir)?;
    if !names.iter().any(|n| n == name) {
        names.push(name.to_string());
    }
    let text = names.iter().map(|n| format!("{n}\n")).collect::<String>();
    let tmp = dir.join(format!("{REVOKED}.tmp{}", std::process::id()));
    std::fs::write(&tmp, text).io(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(REVOKED)).io(|| format!("cannot update {}", dir.join(REVOKED).display()))
}

/// Whether this CPU has instructions for AES-GCM (AES rounds and carry-less multiplication).
fn has_aes_instructions() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    return std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq");
    #[cfg(target_arch = "aarch64")]
    return std::arch::is_aarch64_feature_detected!("aes") && std::arch::is_aarch64_feature_detected!("pmull");
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
    false
}
