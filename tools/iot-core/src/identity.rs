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

use crate::policy::{Grants, Principal, Thing};

/// The certificate id AWS IoT gives the certificate `der`: SHA-256 of the DER, 64 lowercase hex
/// digits.
pub fn certificate_id(der: &[u8]) -> String {
    hex(&sha256(der))
}

/// The status AWS IoT gives a registered certificate (`ACTIVE`, `INACTIVE`, `REVOKED`,
/// `PENDING_TRANSFER`, `REGISTER_INACTIVE`, `PENDING_ACTIVATION`): only `ACTIVE` may connect.
pub const ACTIVE: &str = "ACTIVE";

/// A registered certificate: its ARN and status.
pub use shoal_aws::fleet::RegisteredCertificate as Certificate;

/// The registry a connection is checked against: certificates, the policies attached to them
/// and the things attached to them.
pub trait Registry: Send + Sync + 'static {
    /// Certificate `certificate_id`; `None` when it is not registered.
    ///
    /// # Errors
    /// [`EdgeError`] when the registry could not be asked.
    fn certificate(
        &self,
        certificate_id: &str,
    ) -> impl Future<Output = Result<Option<Certificate>, EdgeError>> + Send;

    /// The policies attached to the certificate `certificate_arn`, as (name, JSON document).
    ///
    /// # Errors
    /// [`EdgeError`] when the registry could not be asked.
    fn policies(
        &self,
        certificate_arn: &str,
    ) -> impl Future<Output = Result<Vec<(String, String)>, EdgeError>> + Send;

    /// Thing `thing_name` when it is attached to the certificate `certificate_arn`.
    ///
    /// # Errors
    /// [`EdgeError`] when the registry could not be asked.
    fn attached_thing(
        &self,
        certificate_arn: &str,
        thing_name: &str,
    ) -> impl Future<Output = Result<Option<Thing>, EdgeError>> + Send;
}

/// Where a connection stands with the registry now.
#[derive(Debug, Clone)]
pub enum Standing {
    /// No such certificate is registered.
    NotRegistered,
    /// The certificate is registered with this status, not `ACTIVE`.
    NotActive(String),
    /// The certificate is `ACTIVE`; its policies, compiled for the connection.
    Active(Grants),
}

/// Where certificate `certificate_id`, connecting as `client_id`, stands: its status, and when
/// `ACTIVE` its policies compiled with the thing named `client_id` if that thing is attached to
/// it (AWS IoT's thing policy variables).
///
/// A policy that is not a policy document grants nothing and is logged; the others still apply.
///
/// # Errors
/// [`EdgeError`] when the registry could not be asked.
pub async fn standing<R: Registry>(
    registry: &R,
    certificate_id: &str,
    client_id: &str,
) -> Result<Standing, EdgeError> {
    let Some(certificate) = registry.certificate(certificate_id).await? else {
        return Ok(Standing::NotRegistered);
    };
    if certificate.status != ACTIVE {
        return Ok(Standing::NotActive(certificate.status));
    }
    // Independent reads, side by side: a connection waits for the slower of the two.
    let (policies, thing) = futures::try_join!(
        registry.policies(&certificate.arn),
        registry.attached_thing(&certificate.arn, client_id),
    )?;
    let principal = Principal {
        client_id: client_id.to_owned(),
        thing,
    };
    let mut grants = Grants::new(&certificate.arn)
        .map_err(|e| EdgeError::unreadable("iot", "DescribeCertificate", e.to_string()))?;
    for (name, document) in &policies {
        if let Err(e) = grants.add(name, document, &principal) {
            tracing::warn!(certificate_id, error = %e, "policy grants nothing");
        }
    }
    Ok(Standing::Active(grants))
}

/// AWS IoT's registry (moto's locally): DescribeCertificate, ListAttachedPolicies + GetPolicy,
/// ListPrincipalThings + DescribeThing.
#[derive(Debug, Clone)]
pub struct IotRegistry(pub aws_sdk_iot::Client);

impl Registry for IotRegistry {
    async fn certificate(&self, certificate_id: &str) -> Result<Option<Certificate>, EdgeError> {
        shoal_aws::fleet::certificate(&self.0, certificate_id).await
    }

    async fn policies(&self, certificate_arn: &str) -> Result<Vec<(String, String)>, EdgeError> {
        shoal_aws::fleet::attached_policies(&self.0, certificate_arn).await
    }

    async fn attached_thing(
        &self,
        certificate_arn: &str,
        thing_name: &str,
    ) -> Result<Option<Thing>, EdgeError> {
        let thing = shoal_aws::fleet::attached_thing(&self.0, certificate_arn, thing_name).await?;
        Ok(thing.map(|t| Thing {
            name: t.name,
            type_name: t.type_name,
            attributes: t.attributes,
        }))
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
