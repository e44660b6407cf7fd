//! Who a connection is: the certificate it presented in the TLS handshake, known by its id and
//! `ACTIVE` in the registry.
//!
//! AWS IoT names a certificate by the SHA-256 of its DER encoding, in lowercase hex
//! (`certificateId`, 64 digits); a connection is accepted only when the certificate is registered
//! and `ACTIVE` (<https://docs.aws.amazon.com/iot/latest/developerguide/x509-client-certs.html>).
//! Locally the registry is moto's IoT, started with `use_valid_cert` so that its ids are the same
//! SHA-256 of the DER.

use std::future::Future;

use shoal_core::edge::EdgeError;
use shoal_core::rollout::image::{hex, sha256};

/// The certificate id AWS IoT gives the certificate `der`: SHA-256 of the DER, 64 lowercase hex
/// digits.
pub fn certificate_id(der: &[u8]) -> String {
    hex(&sha256(der))
}

/// The status AWS IoT gives a registered certificate (`ACTIVE`, `INACTIVE`, `REVOKED`,
/// `PENDING_TRANSFER`, `REGISTER_INACTIVE`, `PENDING_ACTIVATION`): only `ACTIVE` may connect.
pub const ACTIVE: &str = "ACTIVE";

/// The certificate registry a connection is checked against.
pub trait Registry: Send + Sync + 'static {
    /// The status of certificate `certificate_id`; `None` when it is not registered.
    ///
    /// # Errors
    /// [`EdgeError`] when the registry could not be asked.
    fn certificate_status(
        &self,
        certificate_id: &str,
    ) -> impl Future<Output = Result<Option<String>, EdgeError>> + Send;
}

/// AWS IoT's registry (moto's locally): DescribeCertificate.
#[derive(Debug, Clone)]
pub struct IotRegistry(pub aws_sdk_iot::Client);

impl Registry for IotRegistry {
    async fn certificate_status(&self, certificate_id: &str) -> Result<Option<String>, EdgeError> {
        shoal_aws::fleet::certificate_status(&self.0, certificate_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_the_sha256_of_the_der_in_lowercase_hex() {
        assert_eq!(
            certificate_id(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
