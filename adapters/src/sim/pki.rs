//! A throwaway test PKI for the mTLS simulators and tests: generated fresh in memory on every
//! call, never stored in the repository, fictional names only.
//!
//! - A root CA `Tilts Test CA` that issues a server certificate (valid for `localhost` and
//!   `127.0.0.1`, extended key usage serverAuth) and a client certificate
//!   (CN and DNS SAN [`CLIENT_NAME`], clientAuth).
//! - A second, unrelated CA `Tilts Other Test CA` that issues another client certificate
//!   ([`OTHER_CLIENT_NAME`]): a server trusting only the first CA must reject it.
//!
//! Keys are ECDSA P-256 (aws-lc-rs). Certificates are valid from yesterday for 30 days.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// Subject CN and DNS SAN of the test client certificate.
pub const CLIENT_NAME: &str = "tilts-test-client";
/// Subject CN and DNS SAN of the client certificate issued by the other CA.
pub const OTHER_CLIENT_NAME: &str = "tilts-other-client";

/// A freshly generated test PKI, all PEM text.
#[derive(Clone)]
pub struct TestPki {
    /// The CA that issued the server and client certificates.
    pub ca_pem: String,
    /// Server certificate for `localhost` and `127.0.0.1`.
    pub server_cert_pem: String,
    /// The server certificate's private key (PKCS#8).
    pub server_key_pem: String,
    /// Client certificate, CN [`CLIENT_NAME`].
    pub client_cert_pem: String,
    /// The client certificate's private key (PKCS#8).
    pub client_key_pem: String,
    /// Client certificate signed by a different CA: must be rejected.
    pub other_client_cert_pem: String,
    /// Its private key (PKCS#8).
    pub other_client_key_pem: String,
}

impl fmt::Debug for TestPki {
    // Even throwaway keys are not printed: the habit matters more than these keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestPki")
            .field("client", &CLIENT_NAME)
            .field("other_client", &OTHER_CLIENT_NAME)
            .finish_non_exhaustive()
    }
}

/// Where [`TestPki::write_to`] put each file.
#[derive(Clone, Debug)]
pub struct PkiFiles {
    /// `ca.pem`.
    pub ca: PathBuf,
    /// `server.pem`.
    pub server_cert: PathBuf,
    /// `server.key`.
    pub server_key: PathBuf,
    /// `client.pem`.
    pub client_cert: PathBuf,
    /// `client.key`.
    pub client_key: PathBuf,
    /// `other-client.pem`.
    pub other_client_cert: PathBuf,
    /// `other-client.key`.
    pub other_client_key: PathBuf,
}

impl TestPki {
    /// Generates the whole PKI. Panics only if the crypto backend cannot generate keys, which
    /// would make every TLS test meaningless anyway.
    pub fn generate() -> TestPki {
        match Self::try_generate() {
            Ok(pki) => pki,
            Err(e) => panic!("cannot generate the test PKI: {e}"),
        }
    }

    /// Like [`TestPki::generate`], returning the crypto backend's error instead of panicking
    /// (for `tilts demo`).
    pub fn try_generate() -> Result<TestPki, rcgen::Error> {
        let (ca_pem, test_ca) = ca("Tilts Test CA")?;
        let (_, other_ca) = ca("Tilts Other Test CA")?;

        let server_key = KeyPair::generate()?;
        let mut server = leaf(
            "tilts-test-server",
            vec!["localhost".into(), "127.0.0.1".into()],
        )?;
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server.signed_by(&server_key, &test_ca)?;

        let (client_cert_pem, client_key_pem) = client(CLIENT_NAME, &test_ca)?;
        let (other_client_cert_pem, other_client_key_pem) = client(OTHER_CLIENT_NAME, &other_ca)?;
        Ok(TestPki {
            ca_pem,
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            client_cert_pem,
            client_key_pem,
            other_client_cert_pem,
            other_client_key_pem,
        })
    }

    /// Writes every certificate and key as a PEM file into `dir` (which must exist).
    pub fn write_to(&self, dir: &Path) -> io::Result<PkiFiles> {
        let write = |name: &str, pem: &str| -> io::Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, pem)?;
            Ok(path)
        };
        Ok(PkiFiles {
            ca: write("ca.pem", &self.ca_pem)?,
            server_cert: write("server.pem", &self.server_cert_pem)?,
            server_key: write("server.key", &self.server_key_pem)?,
            client_cert: write("client.pem", &self.client_cert_pem)?,
            client_key: write("client.key", &self.client_key_pem)?,
            other_client_cert: write("other-client.pem", &self.other_client_cert_pem)?,
            other_client_key: write("other-client.key", &self.other_client_key_pem)?,
        })
    }

    /// The server side of [`super::server::SimServer::start_tls`] that requires a client
    /// certificate issued by this PKI's CA.
    pub fn sim_tls_mtls(&self) -> super::server::SimTls {
        super::server::SimTls {
            cert_pem: self.server_cert_pem.as_bytes().to_vec(),
            key_pem: self.server_key_pem.as_bytes().to_vec(),
            client_ca_pem: Some(self.ca_pem.as_bytes().to_vec()),
        }
    }

    /// The server side without client authentication (plain HTTPS).
    pub fn sim_tls(&self) -> super::server::SimTls {
        super::server::SimTls {
            client_ca_pem: None,
            ..self.sim_tls_mtls()
        }
    }
}

/// Valid from yesterday (clock skew) for 30 days. rcgen takes `time` dates, which are not our
/// dependency: go through calendar dates computed with chrono.
fn validity(params: &mut CertificateParams) {
    let today = chrono::Utc::now().date_naive();
    let ymd = |d: chrono::NaiveDate| {
        use chrono::Datelike as _;
        // Month and day always fit a u8.
        rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8)
    };
    params.not_before = ymd(today - chrono::Days::new(1));
    params.not_after = ymd(today + chrono::Days::new(30));
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "Tilts Test PKI");
    dn.push(DnType::CountryName, "LV");
    dn
}

/// A self-signed CA: its PEM and an issuer that signs with its key.
fn ca(cn: &str) -> Result<(String, Issuer<'static, KeyPair>), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), Issuer::new(params, key)))
}

fn leaf(cn: &str, sans: Vec<String>) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(sans)?;
    params.distinguished_name = name(cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params);
    Ok(params)
}

/// A client certificate (CN and DNS SAN `cn`) and its key, issued by `ca`.
fn client(cn: &str, ca: &Issuer<'_, KeyPair>) -> Result<(String, String), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = leaf(cn, vec![cn.to_owned()])?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, ca)?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_distinct_pem_material_and_writes_it() {
        let pki = TestPki::generate();
        for pem in [
            &pki.ca_pem,
            &pki.server_cert_pem,
            &pki.client_cert_pem,
            &pki.other_client_cert_pem,
        ] {
            assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        }
        for pem in [
            &pki.server_key_pem,
            &pki.client_key_pem,
            &pki.other_client_key_pem,
        ] {
            assert!(pem.contains("PRIVATE KEY-----"));
        }
        assert_ne!(pki.client_cert_pem, pki.other_client_cert_pem);
        assert!(!format!("{pki:?}").contains("PRIVATE"));

        let dir = tempfile::tempdir().unwrap();
        let files = pki.write_to(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(&files.client_key).unwrap(),
            pki.client_key_pem
        );
        assert_eq!(std::fs::read_to_string(&files.ca).unwrap(), pki.ca_pem);
    }

    #[test]
    fn client_certificates_carry_their_names() {
        let pki = TestPki::generate();
        let tls = crate::tls::ClientTls::from_pem(
            Some((
                pki.client_cert_pem.clone().into_bytes(),
                pki.client_key_pem.clone().into_bytes(),
            )),
            Some(pki.ca_pem.clone().into_bytes()),
        )
        .unwrap();
        assert_eq!(tls.client_subject(), Some(CLIENT_NAME));
        let other = crate::tls::ClientTls::from_pem(
            Some((
                pki.other_client_cert_pem.clone().into_bytes(),
                pki.other_client_key_pem.clone().into_bytes(),
            )),
            None,
        )
        .unwrap();
        assert_eq!(other.client_subject(), Some(OTHER_CLIENT_NAME));
    }
}
