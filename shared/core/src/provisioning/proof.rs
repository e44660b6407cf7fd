//! Proof of possession at provisioning: what a device must show beyond its serial.
//!
//! A serial is printed on the box and often sequential: alone it proves nothing. A manifest row
//! may carry a [`Proof`] (the CSV's `proof` column); the device must then match it or the hook
//! (and JITR) refuses:
//! - `key-sha256:<64 hex>` — the SHA-256 of the DER `SubjectPublicKeyInfo` of a key pair the
//!   device generated at the factory (its private key never leaves it). The certificate being
//!   provisioned must carry that public key: fleet provisioning with `CreateCertificateFromCsr`
//!   (a CSR signed with the factory key), or a JITR certificate. Nothing secret crosses the wire.
//! - `secret-sha256:<64 hex>` — the SHA-256 of a per-device factory secret (its UTF-8 bytes). The
//!   device sends the secret itself as the `FactorySecret` parameter of `RegisterThing`; the
//!   manifest holds only its digest.
//!
//! Comparisons are constant-time (`subtle`), so a wrong guess takes as long as any other.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The device parameter of `RegisterThing` that carries the factory secret.
pub const FACTORY_SECRET_PARAMETER: &str = "FactorySecret";

/// The longest factory secret accepted (bytes); a longer one is refused before hashing.
pub const MAX_FACTORY_SECRET_LEN: usize = 512;

/// What a manifest row requires of the device that provisions it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Proof {
    /// SHA-256 of the device key's DER `SubjectPublicKeyInfo` (`key-sha256:<hex>`).
    KeySha256([u8; 32]),
    /// SHA-256 of the device's factory secret (`secret-sha256:<hex>`).
    SecretSha256([u8; 32]),
}

/// Why a device's proof was not accepted. The messages never contain the expected value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The request does not carry what the row requires.
    #[error("proof of possession required: {0}")]
    Missing(&'static str),
    /// It carries something else.
    #[error("proof of possession does not match: {0}")]
    Mismatch(&'static str),
}

impl Proof {
    /// The column's scheme name (`key-sha256` or `secret-sha256`).
    pub fn scheme(&self) -> &'static str {
        match self {
            Proof::KeySha256(_) => "key-sha256",
            Proof::SecretSha256(_) => "secret-sha256",
        }
    }

    fn digest(&self) -> &[u8; 32] {
        match self {
            Proof::KeySha256(d) | Proof::SecretSha256(d) => d,
        }
    }

    /// Checks a fleet-provisioning request: the certificate being provisioned (`certificate_pem`,
    /// as the pre-provisioning hook receives it) for `key-sha256`, the `FactorySecret` parameter
    /// for `secret-sha256`.
    ///
    /// # Errors
    /// [`ProofError::Missing`] when the request lacks what the row requires (no parameter, a
    /// certificate that does not parse), [`ProofError::Mismatch`] when it differs.
    pub fn check_request(
        &self,
        certificate_pem: &str,
        factory_secret: Option<&str>,
    ) -> Result<(), ProofError> {
        match self {
            Proof::KeySha256(_) => self.check_certificate(certificate_pem),
            Proof::SecretSha256(expected) => {
                let secret = factory_secret
                    .filter(|s| !s.is_empty())
                    .ok_or(ProofError::Missing("no FactorySecret parameter"))?;
                if secret.len() > MAX_FACTORY_SECRET_LEN {
                    return Err(ProofError::Mismatch("FactorySecret is too long"));
                }
                let actual: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
                if bool::from(actual.ct_eq(expected)) {
                    Ok(())
                } else {
                    Err(ProofError::Mismatch("FactorySecret"))
                }
            }
        }
    }

    /// Checks that a certificate carries the row's device key (`key-sha256`). A `secret-sha256`
    /// row is satisfied by any certificate: JITR certificates are signed by the fleet's CA, which
    /// only the factory holds, and carry no secret (see README, Security).
    ///
    /// # Errors
    /// [`ProofError::Missing`] when the certificate does not parse, [`ProofError::Mismatch`] when
    /// its public key is another.
    pub fn check_certificate(&self, certificate_pem: &str) -> Result<(), ProofError> {
        let Proof::KeySha256(expected) = self else {
            return Ok(());
        };
        let actual = public_key_fingerprint(certificate_pem)
            .map_err(|_| ProofError::Missing("the certificate does not parse"))?;
        if bool::from(actual.ct_eq(expected)) {
            Ok(())
        } else {
            Err(ProofError::Mismatch("the certificate's public key"))
        }
    }
}

/// Why a device certificate could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    /// Not PEM (x509-parser's message).
    #[error("certificate PEM does not parse: {0}")]
    Pem(String),
    /// PEM, but not an X.509 certificate (x509-parser's message).
    #[error("certificate does not parse: {0}")]
    X509(String),
    /// The subject has no common name, or one that is not text.
    #[error("certificate subject has no common name that is text")]
    NoCommonName,
    /// The common name is not a serial.
    #[error("certificate common name {common_name:?} is not a serial: it {reason}")]
    NotASerial {
        /// The certificate subject's common name.
        common_name: String,
        /// What the serial rule found in it.
        reason: shoal_wire::ids::NameError,
    },
}

/// Parses a PEM certificate and hands it to `read`.
pub(crate) fn with_certificate<T>(
    certificate_pem: &str,
    read: impl FnOnce(&x509_parser::certificate::X509Certificate<'_>) -> Result<T, CertificateError>,
) -> Result<T, CertificateError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(certificate_pem.as_bytes())
        .map_err(|e| CertificateError::Pem(e.to_string()))?;
    let certificate = pem
        .parse_x509()
        .map_err(|e| CertificateError::X509(e.to_string()))?;
    read(&certificate)
}

/// SHA-256 of a PEM certificate's DER `SubjectPublicKeyInfo` — what
/// `openssl x509 -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum` prints.
///
/// # Errors
/// [`CertificateError::Pem`] or [`CertificateError::X509`] when the PEM or the certificate does
/// not parse.
pub fn public_key_fingerprint(certificate_pem: &str) -> Result<[u8; 32], CertificateError> {
    with_certificate(certificate_pem, |certificate| {
        Ok(Sha256::digest(certificate.tbs_certificate.subject_pki.raw).into())
    })
}

// Hex by hand: two functions of a few lines, not worth a dependency.
fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]])
        .map(char::from)
        .collect()
}

fn from_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let nibble = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

impl fmt::Display for Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.scheme(), to_hex(self.digest()))
    }
}

impl fmt::Debug for Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proof({self})")
    }
}

/// Why a text is not a [`Proof`]. The messages never repeat the text: an operator who pasted a
/// secret instead of its digest must not find it in a terminal or CI log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofTextError {
    /// No `:` between a scheme and a digest; the text's length in characters.
    #[error("proof ({0} characters) is not <scheme>:<hex digest>")]
    NotSchemeAndDigest(usize),
    /// A scheme other than `key-sha256` and `secret-sha256`.
    #[error("proof scheme is unknown; use key-sha256 or secret-sha256")]
    UnknownScheme,
    /// 64 characters, not all hex digits.
    #[error("proof digest of {0} has a character that is not a hex digit")]
    NotHex(&'static str),
    /// Not 64 characters; the digest's length in characters.
    #[error(
        "proof digest of {scheme} must be 64 hex digits (a SHA-256), not {len} characters \
         (keep only the digest of sha256sum's output)"
    )]
    WrongLength {
        /// The scheme the digest was given for.
        scheme: &'static str,
        /// The digest's length (characters).
        len: usize,
    },
}

impl FromStr for Proof {
    type Err = ProofTextError;
    /// `key-sha256:<64 hex>` or `secret-sha256:<64 hex>` (hex in either case).
    ///
    /// # Errors
    /// [`ProofTextError`], which never repeats the text.
    fn from_str(text: &str) -> Result<Self, ProofTextError> {
        let (scheme, hex) = text
            .split_once(':')
            .ok_or_else(|| ProofTextError::NotSchemeAndDigest(text.chars().count()))?;
        let (scheme, make): (&'static str, fn([u8; 32]) -> Proof) = match scheme {
            "key-sha256" => ("key-sha256", Proof::KeySha256),
            "secret-sha256" => ("secret-sha256", Proof::SecretSha256),
            _ => return Err(ProofTextError::UnknownScheme),
        };
        let digest = from_hex(hex).ok_or_else(|| match hex.chars().count() {
            64 => ProofTextError::NotHex(scheme),
            len => ProofTextError::WrongLength { scheme, len },
        })?;
        Ok(make(digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_sha256(bytes: &[u8]) -> String {
        to_hex(&Sha256::digest(bytes))
    }

    #[test]
    fn the_text_form_round_trips_and_refuses_what_it_cannot_hold() {
        let text = format!("key-sha256:{}", "Ab".repeat(32));
        let proof: Proof = text.parse().unwrap();
        assert_eq!(proof.to_string(), text.to_lowercase());
        assert_eq!(proof.to_string().parse::<Proof>(), Ok(proof));
        let not_hex = format!("key-sha256:{}g", "a".repeat(63))
            .parse::<Proof>()
            .unwrap_err();
        assert_eq!(not_hex, ProofTextError::NotHex("key-sha256"));
        assert!(not_hex.to_string().contains("not a hex digit"));
        let pasted_secret = "secret-sha256:hunter2-not-a-digest";
        let err = pasted_secret.parse::<Proof>().unwrap_err();
        assert_eq!(
            err,
            ProofTextError::WrongLength {
                scheme: "secret-sha256",
                len: 20
            }
        );
        assert!(!err.to_string().contains("hunter2"), "{err}");
        for bad in [
            "",
            "key-sha256",
            &format!("md5:{}", "ab".repeat(32)),
            &format!("key-sha256:{}", "ab".repeat(31)),
            &format!("key-sha256:{}", "ab".repeat(33)),
            &format!("secret-sha256:{}zz", "ab".repeat(31)),
            &format!("secret-sha256:{}  -", "ab".repeat(32)),
            &format!("secret-sha256:{}é", "a".repeat(62)),
        ] {
            assert!(bad.parse::<Proof>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_factory_secret_matches_only_its_digest() {
        // `printf %s 'f4c7-secret' | sha256sum`
        let proof: Proof = format!("secret-sha256:{}", hex_sha256(b"f4c7-secret"))
            .parse()
            .unwrap();
        assert_eq!(proof.check_request("", Some("f4c7-secret")), Ok(()));
        assert_eq!(
            proof.check_request("", Some("f4c7-secreT")),
            Err(ProofError::Mismatch("FactorySecret"))
        );
        for missing in [None, Some("")] {
            assert!(matches!(
                proof.check_request("", missing),
                Err(ProofError::Missing(_))
            ));
        }
        let long = "x".repeat(MAX_FACTORY_SECRET_LEN + 1);
        assert!(matches!(
            proof.check_request("", Some(&long)),
            Err(ProofError::Mismatch(_))
        ));
        // A certificate alone never satisfies a secret row at the hook; JITR accepts it (CA-signed).
        assert_eq!(proof.check_certificate("not even a PEM"), Ok(()));
    }

    #[test]
    fn a_key_fingerprint_matches_only_certificates_of_that_key() {
        use p256::pkcs8::EncodePublicKey;
        let device = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = |key: &rcgen::KeyPair| {
            rcgen::CertificateParams::new(vec!["SN-1".into()])
                .unwrap()
                .self_signed(key)
                .unwrap()
                .pem()
        };
        // The fingerprint computed independently of the certificate: the key's SPKI DER.
        let public = p256::PublicKey::from_sec1_bytes(device.public_key_raw()).unwrap();
        let spki = public.to_public_key_der().unwrap();
        let proof: Proof = format!("key-sha256:{}", hex_sha256(spki.as_bytes()))
            .parse()
            .unwrap();
        assert_eq!(
            public_key_fingerprint(&cert(&device)).unwrap().as_slice(),
            {
                let d: [u8; 32] = Sha256::digest(spki.as_bytes()).into();
                d
            }
        );
        assert_eq!(proof.check_request(&cert(&device), None), Ok(()));
        assert_eq!(proof.check_certificate(&cert(&device)), Ok(()));
        assert_eq!(
            proof.check_request(&cert(&other), Some("anything")),
            Err(ProofError::Mismatch("the certificate's public key"))
        );
        assert!(matches!(
            proof.check_certificate(
                "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
            ),
            Err(ProofError::Missing(_))
        ));
    }
}
