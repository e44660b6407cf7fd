//! Just-in-time registration: a device presents a certificate the registry does not hold, with
//! the certificate of a registered, `ACTIVE` CA after it in the TLS chain, and that CA signed it.
//! AWS IoT then registers the certificate `PENDING_ACTIVATION`, publishes
//! `$aws/events/certificates/registered/<caCertificateId>` (for the template's JITR rule) and
//! closes the connection; the device connects again once its certificate is activated.
//!
//! <https://docs.aws.amazon.com/iot/latest/developerguide/auto-register-device-cert.html>

use std::future::Future;

use base64::Engine;
use serde_json::json;
use shoal_core::edge::EdgeError;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::{ACTIVE, certificate_id};

/// The registry as JITR needs it.
pub trait CaRegistry: Send + Sync + 'static {
    /// The CA certificate `ca_certificate_id`: `(status, PEM as registered)`; `None` when it is
    /// not registered.
    ///
    /// # Errors
    /// [`EdgeError`] when the registry could not be asked.
    fn ca_certificate(
        &self,
        ca_certificate_id: &str,
    ) -> impl Future<Output = Result<Option<(String, String)>, EdgeError>> + Send;

    /// Registers `certificate_pem` as signed by the CA `ca_pem`, `PENDING_ACTIVATION`.
    ///
    /// # Errors
    /// [`EdgeError`] when the registry refused or could not be asked.
    fn register(
        &self,
        certificate_pem: &str,
        ca_pem: &str,
    ) -> impl Future<Output = Result<(), EdgeError>> + Send;
}

/// A certificate JITR registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The device certificate's id.
    pub certificate_id: String,
    /// The CA's id.
    pub ca_certificate_id: String,
}

impl Registered {
    /// The event AWS IoT publishes: `(topic, payload)`.
    pub fn event(&self, now_ms: i64) -> (String, Vec<u8>) {
        let payload = json!({
            "certificateId": self.certificate_id,
            "caCertificateId": self.ca_certificate_id,
            "timestamp": now_ms,
            "certificateStatus": "PENDING_ACTIVATION",
            "awsAccountId": shoal_template::ACCOUNT_ID,
            "certificateRegistrationTimestamp": now_ms,
        });
        (
            format!(
                "$aws/events/certificates/registered/{}",
                self.ca_certificate_id
            ),
            payload.to_string().into_bytes(),
        )
    }
}

/// The PEM text of a DER certificate.
pub fn pem(der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Whether `issuer_der`'s key signed `device_der`.
pub fn signed_by(device_der: &[u8], issuer_der: &[u8]) -> bool {
    let (Ok((_, device)), Ok((_, issuer))) = (
        X509Certificate::from_der(device_der),
        X509Certificate::from_der(issuer_der),
    ) else {
        return false;
    };
    device.issuer() == issuer.subject()
        && device.verify_signature(Some(issuer.public_key())).is_ok()
}

/// Registers `device_der` (not in the registry) when one of the certificates presented after it
/// (`issuers`, the rest of the TLS chain) is a registered `ACTIVE` CA that signed it. `None`
/// when none is.
///
/// # Errors
/// [`EdgeError`] when the registry could not be asked or refused the registration.
pub async fn register<R: CaRegistry>(
    registry: &R,
    device_der: &[u8],
    issuers: &[Vec<u8>],
) -> Result<Option<Registered>, EdgeError> {
    for issuer in issuers {
        let ca_certificate_id = certificate_id(issuer);
        let Some((status, ca_pem)) = registry.ca_certificate(&ca_certificate_id).await? else {
            continue;
        };
        if status != ACTIVE || !signed_by(device_der, issuer) {
            continue;
        }
        registry.register(&pem(device_der), &ca_pem).await?;
        return Ok(Some(Registered {
            certificate_id: certificate_id(device_der),
            ca_certificate_id,
        }));
    }
    Ok(None)
}

impl CaRegistry for crate::identity::IotRegistry {
    async fn ca_certificate(
        &self,
        ca_certificate_id: &str,
    ) -> Result<Option<(String, String)>, EdgeError> {
        use shoal_aws::client::AwsResultExt;
        match self
            .0
            .describe_ca_certificate()
            .certificate_id(ca_certificate_id)
            .send()
            .await
            .aws("iot", "DescribeCACertificate")
        {
            Ok(found) => Ok(found.certificate_description.map(|d| {
                (
                    d.status.map(|s| s.as_str().to_owned()).unwrap_or_default(),
                    d.certificate_pem.unwrap_or_default(),
                )
            })),
            Err(e) if e.is_code("ResourceNotFoundException") => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn register(&self, certificate_pem: &str, ca_pem: &str) -> Result<(), EdgeError> {
        use shoal_aws::client::AwsResultExt;
        self.0
            .register_certificate()
            .certificate_pem(certificate_pem)
            .ca_certificate_pem(ca_pem)
            .status(aws_sdk_iot::types::CertificateStatus::PendingActivation)
            .send()
            .await
            .aws("iot", "RegisterCertificate")
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    use std::sync::Mutex;

    fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    fn device(issuer: &CertifiedIssuer<'static, KeyPair>) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "SN-1");
        params
            .signed_by(&KeyPair::generate().unwrap(), issuer)
            .unwrap()
            .der()
            .to_vec()
    }

    /// A registry holding one CA with `status`; keeps what it registers.
    struct Fake {
        ca_id: String,
        status: &'static str,
        registered: Mutex<Vec<(String, String)>>,
    }

    impl CaRegistry for Fake {
        async fn ca_certificate(&self, id: &str) -> Result<Option<(String, String)>, EdgeError> {
            Ok((id == self.ca_id).then(|| (self.status.to_owned(), "CA PEM".to_owned())))
        }
        async fn register(&self, pem: &str, ca_pem: &str) -> Result<(), EdgeError> {
            self.registered
                .lock()
                .unwrap()
                .push((pem.to_owned(), ca_pem.to_owned()));
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_certificate_signed_by_an_active_registered_ca_is_registered_and_announced() {
        let issuer = ca("fleet-ca");
        let other = ca("fleet-ca");
        let device_der = device(&issuer);
        let ca_der = issuer.der().to_vec();
        let fake = Fake {
            ca_id: certificate_id(&ca_der),
            status: "ACTIVE",
            registered: Mutex::new(Vec::new()),
        };
        let registered = register(&fake, &device_der, std::slice::from_ref(&ca_der))
            .await
            .unwrap()
            .expect("registered");
        assert_eq!(registered.certificate_id, certificate_id(&device_der));
        assert_eq!(registered.ca_certificate_id, certificate_id(&ca_der));
        let (pem_sent, ca_pem) = fake.registered.lock().unwrap()[0].clone();
        assert_eq!(ca_pem, "CA PEM", "the CA as the registry holds it");
        let (_, parsed) = x509_parser::pem::parse_x509_pem(pem_sent.as_bytes()).unwrap();
        assert_eq!(parsed.contents, device_der);
        let (topic, payload) = registered.event(1_700_000_000_000);
        assert_eq!(
            topic,
            format!(
                "$aws/events/certificates/registered/{}",
                certificate_id(&ca_der)
            )
        );
        let payload: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(payload["certificateStatus"], "PENDING_ACTIVATION");
        assert_eq!(
            payload["certificateId"],
            certificate_id(&device_der).as_str()
        );

        // Same subject, other key: not its signature. An inactive CA, or none presented: nothing.
        let forged = device(&other);
        assert_eq!(
            register(&fake, &forged, std::slice::from_ref(&ca_der))
                .await
                .unwrap(),
            None
        );
        assert_eq!(register(&fake, &device_der, &[]).await.unwrap(), None);
        let inactive = Fake {
            status: "INACTIVE",
            ..fake
        };
        assert_eq!(
            register(&inactive, &device_der, &[ca_der]).await.unwrap(),
            None
        );
    }
}
