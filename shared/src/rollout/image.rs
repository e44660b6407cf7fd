//! Signed firmware images.
//!
//! The signature is ECDSA P-256 with SHA-256 over the image's 32-byte SHA-256 digest taken as
//! the message: `shoal firmware publish` has KMS sign the digest (`MessageType=RAW`,
//! `ECDSA_SHA_256`) and a device verifies with the standard ECDSA-SHA256 check over
//! `sha256(image)`. (With `MessageType=DIGEST` KMS would sign the digest itself; the local
//! emulator ignores DIGEST and hashes again, so RAW is the one scheme that behaves the same on
//! both, and it needs no pre-hash API on the device.)

use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::version::FirmwareVersion;

fn check_name(value: &str) -> Result<(), String> {
    let ok = !value.is_empty() && value.len() <= 64 && value.chars().all(crate::config::name_char);
    if ok {
        Ok(())
    } else {
        Err(format!("{value:?} must be 1-64 of [A-Za-z0-9._-]"))
    }
}

validated_string!(
    /// A device model, as the manifest and thing attributes name it: `th-v2`.
    DeviceModel,
    String,
    check_name
);

validated_string!(
    /// A hardware revision of a model: `rev-b`.
    HardwareRevision,
    String,
    check_name
);

/// A published image, as the firmware registry records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareImage {
    pub model: DeviceModel,
    pub hardware: HardwareRevision,
    pub version: FirmwareVersion,
    /// Devices below this version cannot take this image directly.
    pub min_version: Option<FirmwareVersion>,
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
    /// Base64 of the DER signature.
    pub signature: String,
    pub s3_key: String,
    pub signing_key: String,
    pub created_at_ms: u64,
    /// Set when the version was published below the current one.
    pub downgrade_reason: Option<String>,
}

/// The image of `version` among `images`: the one published under exactly that text (build
/// metadata included), else the one of the same SemVer precedence. A registry only holds one
/// image per precedence since publishing refuses another build; one written before that may hold
/// several, and then the build named is the one meant.
pub fn find_image<'a>(
    images: &'a [FirmwareImage],
    version: &FirmwareVersion,
) -> Option<&'a FirmwareImage> {
    images
        .iter()
        .find(|i| i.version.semver() == version.semver())
        .or_else(|| images.iter().find(|i| i.version == *version))
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `firmware/<model>/<hardware>/<version>/<sha256>.bin`: one immutable object per image.
pub fn object_key(
    model: &DeviceModel,
    hardware: &HardwareRevision,
    version: &FirmwareVersion,
    sha256_hex: &str,
) -> String {
    format!("firmware/{model}/{hardware}/{version}/{sha256_hex}.bin")
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignatureError {
    #[error("the signing key's public key is not a P-256 SubjectPublicKeyInfo: {0}")]
    PublicKey(String),
    #[error("the signature is not a DER ECDSA signature: {0}")]
    Malformed(String),
    #[error(
        "the signature does not verify against the image digest with the signing key's public key"
    )]
    Mismatch,
}

/// Checks `signature_der` over `digest` with the SubjectPublicKeyInfo `public_key_der`.
pub fn verify_signature(
    public_key_der: &[u8],
    digest: &[u8; 32],
    signature_der: &[u8],
) -> Result<(), SignatureError> {
    let key = VerifyingKey::from_public_key_der(public_key_der)
        .map_err(|e| SignatureError::PublicKey(e.to_string()))?;
    let signature =
        Signature::from_der(signature_der).map_err(|e| SignatureError::Malformed(e.to_string()))?;
    key.verify(digest, &signature)
        .map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::Signer;
    use p256::pkcs8::EncodePublicKey;

    #[test]
    fn a_signature_over_the_digest_verifies_and_any_change_does_not() {
        let key = SigningKey::from_bytes(&[7u8; 32].into()).unwrap();
        let public = key.verifying_key().to_public_key_der().unwrap();
        let image = b"firmware image bytes".repeat(100);
        let digest = sha256(&image);
        let signature: Signature = key.sign(&digest);
        let der = signature.to_der();
        assert_eq!(
            verify_signature(public.as_bytes(), &digest, der.as_bytes()),
            Ok(())
        );

        let other = sha256(b"another image");
        assert_eq!(
            verify_signature(public.as_bytes(), &other, der.as_bytes()),
            Err(SignatureError::Mismatch)
        );
        let stranger = SigningKey::from_bytes(&[9u8; 32].into()).unwrap();
        let stranger_public = stranger.verifying_key().to_public_key_der().unwrap();
        assert_eq!(
            verify_signature(stranger_public.as_bytes(), &digest, der.as_bytes()),
            Err(SignatureError::Mismatch)
        );
        assert!(matches!(
            verify_signature(public.as_bytes(), &digest, b"junk"),
            Err(SignatureError::Malformed(_))
        ));
        assert!(matches!(
            verify_signature(b"junk", &digest, der.as_bytes()),
            Err(SignatureError::PublicKey(_))
        ));
    }

    #[test]
    fn keys_and_hex() {
        let key = object_key(
            &"th-v2".parse().unwrap(),
            &"rev-b".parse().unwrap(),
            &"1.10.0".parse().unwrap(),
            &hex(&sha256(b"x")),
        );
        assert_eq!(
            key,
            "firmware/th-v2/rev-b/1.10.0/2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881.bin"
        );
        assert!("bad model".parse::<DeviceModel>().is_err());
    }
}
