//! Signed firmware images: the models and hardware revisions an image is built for, its digest
//! and the signature a device checks before it marks the image bootable.
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
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::ids::NameError;

use alloc::format;
use alloc::string::{String, ToString};

fn check_name(value: &str) -> Result<(), String> {
    let ok = !value.is_empty() && value.len() <= 64 && value.chars().all(crate::ids::name_char);
    if ok {
        Ok(())
    } else {
        Err(format!("{value:?} must be 1-64 of [A-Za-z0-9._-]"))
    }
}

validated_string!(
    /// A device model, as the manifest and thing attributes name it: `th-v2`.
    DeviceModel,
    NameError,
    |value| check_name(value).map_err(NameError::of("device model"))
);

validated_string!(
    /// A hardware revision of a model: `rev-b`.
    HardwareRevision,
    NameError,
    |value| check_name(value).map_err(NameError::of("hardware revision"))
);

/// The SHA-256 digest of `bytes`.
#[must_use]
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Lower-case hex of `bytes` (two characters per byte).
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why an image's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignatureError {
    /// The public key is not a DER SubjectPublicKeyInfo of a P-256 key.
    #[error("the signing key's public key is not a P-256 SubjectPublicKeyInfo: {0}")]
    PublicKey(String),
    /// The signature is not a DER ECDSA signature.
    #[error("the signature is not a DER ECDSA signature: {0}")]
    Malformed(String),
    /// The signature is well formed but not over this digest with this key.
    #[error(
        "the signature does not verify against the image digest with the signing key's public key"
    )]
    Mismatch,
}

/// Checks `signature_der` over `digest` with the SubjectPublicKeyInfo `public_key_der`.
///
/// # Errors
/// [`SignatureError`]: a key or signature that cannot be read, or a signature that does not
/// verify.
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
}
