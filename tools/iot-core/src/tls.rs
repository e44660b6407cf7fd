//! TLS as AWS IoT Core's data endpoint speaks it: the server proves itself with a certificate
//! (here signed by a local CA the stack creates, written as `ca.pem` for clients to trust), and
//! every client must present a certificate and prove it holds the key. Which certificates may
//! connect is not decided here but after the handshake, by the registry ([`crate::identity`]),
//! as AWS does: any client certificate is accepted in the handshake (a device's certificate may
//! come from AWS's CA or from a CA registered for just-in-time registration).
//!
//! The port-443 listener offers only ALPN `x-amzn-mqtt-ca`, what AWS's device SDKs send for MQTT
//! on 443 (<https://docs.aws.amazon.com/iot/latest/developerguide/protocols.html>).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// The ALPN protocol AWS IoT's device SDKs use for MQTT on port 443.
pub const ALPN_MQTT_443: &[u8] = b"x-amzn-mqtt-ca";

/// The CA's common name; its key and certificate live in the state directory.
const CA_NAME: &str = "Shoal local IoT Core CA";

/// Why the local CA or the TLS configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The state directory or a key or certificate file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// rcgen could not make or read a key or certificate.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// A PEM file did not hold what it should.
    #[error("{0}")]
    Pem(String),
}

/// The local CA: created once per state directory (`ca.pem`, `ca.key`), reused after.
pub struct LocalCa {
    key: KeyPair,
    /// `ca.pem`: what a client passes as its CA file.
    pub ca_file: PathBuf,
}

impl LocalCa {
    fn params() -> Result<CertificateParams, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, CA_NAME);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ok(params)
    }

    /// Loads the CA from `dir`, or creates it there (ECDSA P-256, valid for rcgen's default
    /// span) when `dir` holds none.
    ///
    /// # Errors
    /// [`TlsError`] when the directory or the files cannot be read or written.
    pub fn load_or_create(dir: &Path) -> Result<Self, TlsError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| TlsError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let ca_file = dir.join("ca.pem");
        let key_file = dir.join("ca.key");
        if ca_file.exists() && key_file.exists() {
            let pem = std::fs::read_to_string(&key_file).map_err(io(&key_file))?;
            let key = KeyPair::from_pem(&pem)?;
            return Ok(Self { key, ca_file });
        }
        let key = KeyPair::generate()?;
        let cert = Self::params()?.self_signed(&key)?;
        std::fs::write(&key_file, key.serialize_pem()).map_err(io(&key_file))?;
        std::fs::write(&ca_file, cert.pem()).map_err(io(&ca_file))?;
        Ok(Self { key, ca_file })
    }

    /// A fresh server certificate for `names` (DNS names or IP addresses), signed by this CA,
    /// with its key.
    ///
    /// # Errors
    /// [`TlsError::Certificate`] when rcgen refuses a name.
    pub fn server_certificate(
        &self,
        names: &[String],
    ) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsError> {
        let issuer = Issuer::new(Self::params()?, &self.key);
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "Shoal local IoT Core");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &issuer)?;
        let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())
            .map_err(|e| TlsError::Pem(e.to_string()))?;
        Ok((cert.der().clone(), key))
    }
}

impl LocalCa {
    /// A client certificate for the CSR `csr_pem`, signed by this CA (PEM), as AWS IoT's
    /// CreateCertificateFromCsr issues one: the CSR's subject and public key, for client
    /// authentication, valid until the end of 2049. The CSR's signature is checked first: it
    /// proves the requester holds the private key.
    ///
    /// # Errors
    /// [`TlsError::Certificate`] for a CSR that is not PEM, is badly signed or signed with an
    /// algorithm this signer does not check (ECDSA P-256/P-384, RSA PKCS#1 v1.5 and Ed25519 are),
    /// or asks for an extension other than subject alternative names, key usages and basic
    /// constraints.
    pub fn sign_client_csr(&self, csr_pem: &str) -> Result<String, TlsError> {
        check_csr_algorithms(csr_pem)?;
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
        csr.params.is_ca = IsCa::ExplicitNoCa;
        csr.params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        csr.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        csr.params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        csr.params.not_after = rcgen::date_time_ymd(2049, 12, 31);
        // A serial of its own for every certificate (rcgen's default comes from the key).
        csr.params.serial_number = Some(rcgen::SerialNumber::from_slice(
            uuid::Uuid::new_v4().as_bytes(),
        ));
        let issuer = Issuer::new(Self::params()?, &self.key);
        Ok(csr.signed_by(&issuer)?.pem())
    }
}

/// Refuses a CSR whose ECDSA signature's hash does not go with its key's curve (P-256 with
/// SHA-256, P-384 with SHA-384): its signature may check out, but rcgen takes the curve from the
/// signature's algorithm alone and would issue a certificate with a broken key.
fn check_csr_algorithms(csr_pem: &str) -> Result<(), TlsError> {
    use tokio_rustls::rustls::pki_types::CertificateSigningRequestDer;
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::prelude::FromDer;
    let unreadable = || TlsError::Certificate(rcgen::Error::CouldNotParseCertificationRequest);
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|_| unreadable())?;
    let (_, csr) = X509CertificationRequest::from_der(der.as_ref()).map_err(|_| unreadable())?;
    let key = &csr.certification_request_info.subject_pki.algorithm;
    let curve = key
        .parameters
        .as_ref()
        .and_then(|p| x509_parser::der_parser::oid::Oid::try_from(p).ok())
        .map(|oid| oid.to_id_string());
    let wanted = match csr.signature_algorithm.algorithm.to_id_string().as_str() {
        "1.2.840.10045.4.3.2" => Some("1.2.840.10045.3.1.7"), // ecdsa-with-SHA256: P-256
        "1.2.840.10045.4.3.3" => Some("1.3.132.0.34"),        // ecdsa-with-SHA384: P-384
        _ => None,
    };
    match wanted {
        Some(wanted) if curve.as_deref() != Some(wanted) => Err(TlsError::Pem(format!(
            "the CSR's key curve ({}) does not go with its signature's hash: P-256 with SHA-256 or P-384 with SHA-384",
            curve.unwrap_or_else(|| "none".into())
        ))),
        _ => Ok(()),
    }
}

/// The rustls server configuration of one listener: the server certificate, a client
/// certificate required from everyone, and `alpn` offered (empty: ALPN ignored).
///
/// # Errors
/// [`TlsError::Rustls`] when rustls refuses the certificate or key.
pub fn server_config(
    certificate: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(AnyClientCertificate::new(&provider));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![certificate], key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Requires a client certificate and proof of its key (the handshake signature), whoever issued
/// it: the registry decides after the handshake.
#[derive(Debug)]
struct AnyClientCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AnyClientCertificate {
    fn new(provider: &CryptoProvider) -> Self {
        Self {
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for AnyClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> (LocalCa, PathBuf) {
        let dir = std::env::temp_dir().join(format!("shoal-ca-{}", uuid::Uuid::new_v4().simple()));
        (LocalCa::load_or_create(&dir).unwrap(), dir)
    }

    #[test]
    fn a_csr_is_signed_with_its_own_key_and_a_serial_of_its_own() {
        let (ca, dir) = ca();
        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let first = ca.sign_client_csr(&csr).unwrap();
        let second = ca.sign_client_csr(&csr).unwrap();
        let parsed = |pem: &str| {
            let der = CertificateDer::from_pem_slice(pem.as_bytes())
                .unwrap()
                .to_vec();
            let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
            (
                cert.raw_serial().to_vec(),
                cert.public_key().subject_public_key.data.to_vec(),
            )
        };
        let (serial_1, key_1) = parsed(&first);
        let (serial_2, _) = parsed(&second);
        assert_ne!(serial_1, serial_2);
        assert_eq!(key_1, key.public_key_raw(), "the device's own key");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_csr_whose_hash_does_not_go_with_its_curve_is_refused() {
        // A P-384 key with an ecdsa-with-SHA256 signature (made with OpenSSL): valid, but rcgen
        // would read its key as P-256.
        let (ca, dir) = ca();
        let refused = ca.sign_client_csr(include_str!("p384-key-sha256-signature.csr"));
        assert!(
            matches!(refused, Err(TlsError::Pem(ref why)) if why.contains("curve")),
            "{refused:?}"
        );
        assert!(ca.sign_client_csr("not a CSR").is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
