//! Client-side TLS for one system: a client certificate for mutual TLS (mTLS) and extra trusted
//! certificate authorities.
//!
//! Contract:
//! - Everything is validated when it is loaded ([`ClientTls::from_files`], [`ClientTls::from_pem`]),
//!   never at the first request: the files must be readable, a client certificate file must hold
//!   at least one certificate (the client's own first, then its intermediates), a key file exactly
//!   one unencrypted private key that matches the certificate, and certificate and key are given
//!   together or not at all. A CA bundle must hold at least one certificate.
//! - Errors name the file (or "PEM" for in-memory input), the problem and what to do; they never
//!   contain key material. [`ClientTls`]'s `Debug` shows the client certificate's subject name and
//!   how many CA certificates were added, never key bytes.
//! - A custom CA bundle is *added* to the built-in roots (the operating system's trust store, as
//!   reqwest's rustls platform verifier loads it): public peers keep working, and a private test
//!   environment whose server certificate was issued by the custom CA is trusted too.
//! - rustls runs on aws-lc-rs only ([`install_crypto_provider`]).

use std::fmt;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use base64::Engine as _;
use rustls_pki_types::pem::SectionKind;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS setting that cannot be used, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} '{path}': {source}; check the path and the file permissions")]
    Read {
        /// Which setting: `client_cert`, `client_key` or `ca`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The content of a file (or of in-memory PEM) is not usable.
    #[error("{what} {origin}: {problem}")]
    Invalid {
        /// Which setting: `client_cert`, `client_key` or `ca`.
        what: &'static str,
        /// `'<path>'` for a file, `(PEM)` for in-memory input.
        origin: String,
        /// What is wrong and what to do; never key material.
        problem: String,
    },
    /// Only one half of the client identity was given.
    #[error("{0}")]
    Incomplete(&'static str),
}

/// Installs rustls' aws-lc-rs crypto provider as the process default, once; a provider that is
/// already installed (by us or by someone else) is left alone.
///
/// Why: rustls panics when it must pick a provider on its own and more than one is compiled in.
/// tilts builds every TLS config with aws-lc-rs explicitly, but a library further down may not.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means a provider is already installed: fine.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

/// The aws-lc-rs provider, for configs built explicitly rather than from the process default.
pub(crate) fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Client-side TLS settings of one system: an optional client identity (certificate chain and
/// private key) and optional extra trusted CA certificates. Cheap to clone.
#[derive(Clone)]
pub struct ClientTls {
    identity: Option<Identity>,
    roots: Vec<reqwest::Certificate>,
}

#[derive(Clone)]
struct Identity {
    reqwest: reqwest::Identity,
    /// The client certificate's subject CN (or first DNS name), for logs and `Debug`.
    subject: Option<String>,
}

impl fmt::Debug for ClientTls {
    // Never prints key bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let identity = self
            .identity
            .as_ref()
            .map(|i| i.subject.as_deref().unwrap_or("(no subject name)"));
        f.debug_struct("ClientTls")
            .field("client_certificate", &identity)
            .field("extra_ca_certificates", &self.roots.len())
            .finish()
    }
}

impl ClientTls {
    /// Loads and validates the files of a system's `tls` settings. `client_cert` and
    /// `client_key` go together; `ca` is a PEM bundle of CA certificates to trust in addition
    /// to the built-in roots.
    pub fn from_files(
        client_cert: Option<&Path>,
        client_key: Option<&Path>,
        ca: Option<&Path>,
    ) -> Result<ClientTls, TlsError> {
        check_pair(client_cert.is_some(), client_key.is_some())?;
        let read = |what: &'static str, path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                what,
                path: path.to_path_buf(),
                source,
            })
        };
        let origin = |path: &Path| format!("'{}'", path.display());
        let identity = match (client_cert, client_key) {
            (Some(cert), Some(key)) => Some(load_identity(
                &read("client_cert", cert)?,
                &origin(cert),
                &read("client_key", key)?,
                &origin(key),
            )?),
            _ => None,
        };
        let roots = match ca {
            Some(path) => load_roots(&read("ca", path)?, &origin(path))?,
            None => Vec::new(),
        };
        Ok(ClientTls { identity, roots })
    }

    /// Builds the settings from PEM held in memory: `identity` is (certificate chain PEM,
    /// private key PEM), `ca` a PEM bundle of CA certificates. Validated like
    /// [`ClientTls::from_files`].
    pub fn from_pem(
        identity: Option<(Vec<u8>, Vec<u8>)>,
        ca: Option<Vec<u8>>,
    ) -> Result<ClientTls, TlsError> {
        let origin = "(PEM)";
        let identity = match identity {
            Some((cert, key)) => Some(load_identity(&cert, origin, &key, origin)?),
            None => None,
        };
        let roots = match ca {
            Some(ca) => load_roots(&ca, origin)?,
            None => Vec::new(),
        };
        Ok(ClientTls { identity, roots })
    }

    /// Whether a client certificate is configured.
    pub fn has_identity(&self) -> bool {
        self.identity.is_some()
    }

    /// The client certificate's subject common name (or first DNS name), when there is one.
    pub fn client_subject(&self) -> Option<&str> {
        self.identity.as_ref()?.subject.as_deref()
    }

    /// Adds the client identity and the extra roots (merged with the built-in roots) to a
    /// client builder.
    pub fn apply(&self, b: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        install_crypto_provider();
        let b = match &self.identity {
            Some(identity) => b.identity(identity.reqwest.clone()),
            None => b,
        };
        if self.roots.is_empty() {
            b
        } else {
            b.tls_certs_merge(self.roots.iter().cloned())
        }
    }
}

fn check_pair(cert: bool, key: bool) -> Result<(), TlsError> {
    match (cert, key) {
        (true, false) => Err(TlsError::Incomplete(
            "client_cert given without client_key: set both (the certificate chain and its private key) or neither",
        )),
        (false, true) => Err(TlsError::Incomplete(
            "client_key given without client_cert: set both (the certificate chain and its private key) or neither",
        )),
        _ => Ok(()),
    }
}

/// The recognised PEM sections of `pem`, in order. Unknown sections are skipped.
fn sections(pem: &[u8]) -> Result<Vec<(SectionKind, Vec<u8>)>, String> {
    let mut reader = BufReader::new(pem);
    let mut out = Vec::new();
    loop {
        match rustls_pki_types::pem::from_buf(&mut reader) {
            Ok(Some(section)) => out.push(section),
            Ok(None) => return Ok(out),
            // The pem error names the malformed section; it carries no key bytes.
            Err(e) => {
                return Err(format!(
                    "not valid PEM ({e}); expect '-----BEGIN ...' blocks"
                ));
            }
        }
    }
}

fn invalid(what: &'static str, origin: &str, problem: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        what,
        origin: origin.to_string(),
        problem: problem.into(),
    }
}

fn load_certs(
    what: &'static str,
    pem: &[u8],
    origin: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = sections(pem)
        .map_err(|p| invalid(what, origin, p))?
        .into_iter()
        .filter(|(kind, _)| *kind == SectionKind::Certificate)
        .map(|(_, der)| CertificateDer::from(der))
        .collect();
    if certs.is_empty() {
        return Err(invalid(
            what,
            origin,
            "contains no certificate; expect PEM '-----BEGIN CERTIFICATE-----' blocks",
        ));
    }
    Ok(certs)
}

fn load_identity(
    cert_pem: &[u8],
    cert_origin: &str,
    key_pem: &[u8],
    key_origin: &str,
) -> Result<Identity, TlsError> {
    let certs = load_certs("client_cert", cert_pem, cert_origin)?;
    let what = "client_key";
    let keys: Vec<PrivateKeyDer<'static>> = sections(key_pem)
        .map_err(|p| invalid(what, key_origin, p))?
        .into_iter()
        .filter_map(|(kind, der)| match kind {
            SectionKind::PrivateKey => Some(PrivateKeyDer::Pkcs8(der.into())),
            SectionKind::RsaPrivateKey => Some(PrivateKeyDer::Pkcs1(der.into())),
            SectionKind::EcPrivateKey => Some(PrivateKeyDer::Sec1(der.into())),
            _ => None,
        })
        .collect();
    let key = match keys.len() {
        1 => keys.into_iter().next(),
        0 if contains(key_pem, b"ENCRYPTED PRIVATE KEY") => {
            return Err(invalid(
                what,
                key_origin,
                "is an encrypted private key; tilts needs it unencrypted \
                 (e.g. `openssl pkcs8 -in key.pem -out plain.pem`) and readable only by tilts",
            ));
        }
        0 => {
            return Err(invalid(
                what,
                key_origin,
                "contains no private key; expect a PEM 'PRIVATE KEY', 'RSA PRIVATE KEY' or \
                 'EC PRIVATE KEY' block",
            ));
        }
        n => {
            return Err(invalid(
                what,
                key_origin,
                format!("contains {n} private keys; keep exactly one, the client certificate's"),
            ));
        }
    };
    let Some(key) = key else {
        return Err(invalid(what, key_origin, "contains no private key"));
    };
    // Loads the key with aws-lc-rs and compares it with the certificate's public key, so a
    // mismatch is reported now rather than as a handshake failure at the peer.
    let provider = crypto_provider();
    rustls::sign::CertifiedKey::from_der(certs.clone(), key.clone_key(), &provider).map_err(
        |e| {
            let problem = match e {
                rustls::Error::InconsistentKeys(_) => {
                    format!("does not belong to the certificate in {cert_origin}; use the key the certificate was issued for")
                }
                _ => "is not a usable private key (supported: RSA, ECDSA P-256/P-384, Ed25519)"
                    .to_string(),
            };
            invalid(what, key_origin, problem)
        },
    )?;
    let subject = certs.first().and_then(|c| cert_subject_name(c));
    // reqwest wants the chain and key in one PEM buffer; re-encode only those sections.
    let mut combined = String::new();
    for cert in &certs {
        push_pem(&mut combined, "CERTIFICATE", cert.as_ref());
    }
    let label = match &key {
        PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
        PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
        _ => "PRIVATE KEY",
    };
    push_pem(&mut combined, label, key.secret_der());
    let reqwest = reqwest::Identity::from_pem(combined.as_bytes()).map_err(|_| {
        invalid(
            what,
            key_origin,
            "could not be combined with the certificate into a TLS identity",
        )
    })?;
    Ok(Identity { reqwest, subject })
}

fn load_roots(pem: &[u8], origin: &str) -> Result<Vec<reqwest::Certificate>, TlsError> {
    let certs = load_certs("ca", pem, origin)?;
    certs
        .iter()
        .map(|c| {
            reqwest::Certificate::from_der(c.as_ref()).map_err(|_| {
                invalid(
                    "ca",
                    origin,
                    "holds a certificate that cannot be used as a root",
                )
            })
        })
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn push_pem(out: &mut String, label: &str, der: &[u8]) {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // Base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
}

/// The subject common name of a DER certificate, or its first DNS subject alternative name when
/// the subject has no CN. `None` when neither exists or the certificate cannot be read.
///
/// A deliberately small DER walk (no X.509 parser in the dependency set); it never panics on
/// malformed input.
pub fn cert_subject_name(der: &[u8]) -> Option<String> {
    let (_, cert, _) = der::read(der)?; // Certificate SEQUENCE
    let (_, tbs, _) = der::read(cert)?; // tbsCertificate SEQUENCE
    let mut rest = tbs;
    let mut fields = Vec::new();
    while !rest.is_empty() {
        let (tag, content, next) = der::read(rest)?;
        fields.push((tag, content));
        rest = next;
    }
    // [0] version is optional; then serial, signature, issuer, validity, subject.
    let skip = usize::from(fields.first()?.0 == 0xA0);
    let subject = fields.get(skip + 4)?;
    if let Some(cn) = der::common_name(subject.1) {
        return Some(cn);
    }
    let extensions = fields.iter().find(|(tag, _)| *tag == 0xA3)?;
    der::first_dns_san(extensions.1)
}

/// Minimal DER reading for [`cert_subject_name`].
mod der {
    /// OID 2.5.4.3 (commonName).
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    /// OID 2.5.29.17 (subjectAltName).
    const SAN: &[u8] = &[0x55, 0x1D, 0x11];

    /// One TLV: (tag, content, rest). Single-byte tags only (all X.509 needs here).
    pub(super) fn read(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7F);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let mut len = 0usize;
            for &b in &rest[..n] {
                len = (len << 8) | usize::from(b);
            }
            rest = &rest[n..];
            len
        };
        if rest.len() < len {
            return None;
        }
        Some((tag, &rest[..len], &rest[len..]))
    }

    fn children(mut input: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
        std::iter::from_fn(move || {
            let (tag, content, rest) = read(input)?;
            input = rest;
            Some((tag, content))
        })
    }

    /// The first CN of a Name (SEQUENCE OF SET OF AttributeTypeAndValue).
    pub(super) fn common_name(name: &[u8]) -> Option<String> {
        for (_, rdn) in children(name) {
            for (_, atv) in children(rdn) {
                let mut parts = children(atv);
                let (oid_tag, oid) = parts.next()?;
                let (_, value) = parts.next()?;
                if oid_tag == 0x06 && oid == CN {
                    return String::from_utf8(value.to_vec()).ok();
                }
            }
        }
        None
    }

    /// The first dNSName of the subjectAltName extension, from the `[3]` extensions field.
    pub(super) fn first_dns_san(explicit: &[u8]) -> Option<String> {
        let (_, extensions, _) = read(explicit)?;
        for (_, ext) in children(extensions) {
            let mut parts = children(ext);
            let (_, oid) = parts.next()?;
            if oid != SAN {
                continue;
            }
            // Optional `critical` BOOLEAN, then the OCTET STRING.
            let value = parts.find(|(tag, _)| *tag == 0x04)?.1;
            let (_, names, _) = read(value)?;
            return children(names)
                .find(|(tag, _)| *tag == 0x82)
                .and_then(|(_, dns)| String::from_utf8(dns.to_vec()).ok());
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_and_key_must_come_together() {
        let e = ClientTls::from_files(None, Some(Path::new("/x/key.pem")), None).unwrap_err();
        assert!(
            e.to_string()
                .contains("client_key given without client_cert: set both"),
            "{e}"
        );
        let e = ClientTls::from_files(Some(Path::new("/x/cert.pem")), None, None).unwrap_err();
        assert!(
            e.to_string()
                .contains("client_cert given without client_key"),
            "{e}"
        );
    }

    #[test]
    fn missing_file_names_the_path() {
        let e =
            ClientTls::from_files(None, None, Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("ca '/nonexistent/ca.pem'"), "{text}");
        assert!(text.contains("check the path"), "{text}");
    }

    #[test]
    fn empty_and_garbage_pem_are_rejected() {
        let e = ClientTls::from_pem(None, Some(b"hello".to_vec())).unwrap_err();
        assert!(e.to_string().contains("contains no certificate"), "{e}");
        let e = ClientTls::from_pem(None, Some(Vec::new())).unwrap_err();
        assert!(e.to_string().contains("contains no certificate"), "{e}");
    }

    #[test]
    fn der_walker_survives_garbage() {
        assert_eq!(cert_subject_name(b""), None);
        assert_eq!(
            cert_subject_name(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]),
            None
        );
        assert_eq!(cert_subject_name(&[0x30, 0x03, 0x30, 0x01]), None);
    }

    fn pki() -> crate::sim::pki::TestPki {
        crate::sim::pki::TestPki::generate()
    }

    #[test]
    fn a_valid_identity_loads_and_debug_shows_no_key() {
        let pki = pki();
        let tls = ClientTls::from_pem(
            Some((
                pki.client_cert_pem.clone().into_bytes(),
                pki.client_key_pem.clone().into_bytes(),
            )),
            Some(pki.ca_pem.clone().into_bytes()),
        )
        .unwrap();
        assert!(tls.has_identity());
        let debug = format!("{tls:?}");
        assert!(debug.contains("tilts-test-client"), "{debug}");
        assert!(debug.contains("extra_ca_certificates: 1"), "{debug}");
        let key_b64 = pki.client_key_pem.lines().nth(1).unwrap();
        assert!(
            !debug.contains(key_b64) && !debug.contains("PRIVATE"),
            "{debug}"
        );
        // Applying to a builder gives a working client.
        tls.apply(reqwest::Client::builder()).build().unwrap();
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let pki = pki();
        let dir = tempfile::tempdir().unwrap();
        let files = pki.write_to(dir.path()).unwrap();
        let e = ClientTls::from_files(
            Some(&files.client_cert),
            Some(&files.other_client_key),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(&format!(
                "client_key '{}'",
                files.other_client_key.display()
            )),
            "{e}"
        );
        assert!(e.contains("does not belong to the certificate"), "{e}");
        assert!(!e.contains("PRIVATE KEY-----"), "{e}");
    }

    #[test]
    fn key_files_need_exactly_one_plain_key() {
        let pki = pki();
        let cert = pki.client_cert_pem.clone().into_bytes();
        let load = |key: String| {
            ClientTls::from_pem(Some((cert.clone(), key.into_bytes())), None)
                .unwrap_err()
                .to_string()
        };
        let e = load(format!(
            "{}{}",
            pki.client_key_pem, pki.other_client_key_pem
        ));
        assert!(e.contains("contains 2 private keys"), "{e}");
        let e = load(pki.ca_pem.clone());
        assert!(e.contains("contains no private key"), "{e}");
        let e = load(
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n"
                .into(),
        );
        assert!(e.contains("encrypted private key"), "{e}");
        // A certificate file holding only a key.
        let e = ClientTls::from_pem(
            Some((
                pki.client_key_pem.clone().into_bytes(),
                pki.client_key_pem.clone().into_bytes(),
            )),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("client_cert (PEM): contains no certificate"),
            "{e}"
        );
    }

    #[test]
    fn subject_names_come_from_the_cn_or_the_first_dns_name() {
        use rustls_pki_types::pem::PemObject as _;
        let pki = pki();
        let der = CertificateDer::from_pem_slice(pki.server_cert_pem.as_bytes()).unwrap();
        assert_eq!(
            cert_subject_name(&der).as_deref(),
            Some("tilts-test-server")
        );
        // Without a CN, the first DNS SAN.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["first.tilts.invalid".into(), "127.0.0.1".into()])
                .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            cert_subject_name(cert.der()).as_deref(),
            Some("first.tilts.invalid")
        );
        // Truncated DER never panics.
        for n in 0..der.len() {
            let _ = cert_subject_name(&der[..n]);
        }
    }
}
