//! Fleet provisioning's certificate APIs on their reserved topics
//! (<https://docs.aws.amazon.com/iot/latest/developerguide/fleet-provision-api.html>):
//! - `$aws/certificates/create/<format>`: CreateKeysAndCertificate — a key pair and a
//!   certificate made by the registry (moto's CreateKeysAndCertificate locally);
//! - `$aws/certificates/create-from-csr/<format>`: CreateCertificateFromCsr — the request's CSR
//!   (its signature checked: proof that the device holds the key) signed by the local CA and
//!   registered, since moto's CreateCertificateFromCsr ignores the CSR's key.
//!
//! The new certificate is `PENDING_ACTIVATION` (RegisterThing activates it) and comes with a
//! `certificateOwnershipToken` (valid one hour). Answers go only to the connection that asked
//! (they carry private keys), on `…/accepted` or `…/rejected` (`{statusCode, errorCode,
//! errorMessage}`), in the request's format: JSON or CBOR.
//!
//! RegisterThing (`$aws/provisioning-templates/<name>/provision/<format>`) needs the template's
//! pre-provisioning hook, which needs the local Lambda host: it is answered on `…/rejected` with
//! status 500 saying so, never left unanswered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shoal_wire::topics::{PayloadFormat, ProvisioningApi, ProvisioningTopic};
use tokio::sync::mpsc;

use crate::broker::{Broker, Message, Publisher, Service};
use crate::tls::LocalCa;

/// Requests waiting for the worker at most; more are dropped unanswered (and logged).
pub const REQUEST_QUEUE: usize = 1_000;
/// How long an ownership token stays good.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// The status fleet provisioning gives a certificate it creates.
pub const PENDING_ACTIVATION: &str = "PENDING_ACTIVATION";

/// A request the worker answers.
#[derive(Debug, Clone)]
pub struct Request {
    /// The requesting connection's client id: the only one answered.
    client_id: String,
    /// The request topic.
    topic: String,
    payload: bytes::Bytes,
}

/// A failed request, as `…/rejected` carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP-like status: 400 for a bad request, 500/503 for the service.
    pub status: u16,
    /// AWS's error code (`InvalidPayload`, `InternalFailure`, `ServiceUnavailable`).
    pub code: &'static str,
    /// Why.
    pub message: String,
}

impl Refusal {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn document(&self) -> Value {
        json!({"statusCode": self.status, "errorCode": self.code, "errorMessage": self.message})
    }
}

/// The certificate authority behind the APIs: the registry and the CSR signer.
pub trait Authority: Send + Sync + 'static {
    /// CreateKeysAndCertificate: `(certificateId, certificatePem, privateKey)`, registered
    /// `PENDING_ACTIVATION`.
    fn create_keys(&self)
    -> impl Future<Output = Result<(String, String, String), Refusal>> + Send;
    /// Signs `csr` (PEM) and registers the certificate `PENDING_ACTIVATION`:
    /// `(certificateId, certificatePem)`.
    fn create_from_csr(
        &self,
        csr: &str,
    ) -> impl Future<Output = Result<(String, String), Refusal>> + Send;
}

/// The service on the broker: it queues requests for [`run`].
#[derive(Debug)]
pub struct ProvisioningService {
    requests: mpsc::Sender<Request>,
}

impl ProvisioningService {
    /// The service, and the queue its worker reads.
    pub fn new() -> (Self, mpsc::Receiver<Request>) {
        let (requests, queue) = mpsc::channel(REQUEST_QUEUE);
        (Self { requests }, queue)
    }
}

impl Service for ProvisioningService {
    fn answer(&self, message: &Message, publisher: Option<&Publisher>) -> Vec<Message> {
        let Ok(topic) = ProvisioningTopic::parse(&message.topic) else {
            return Vec::new();
        };
        // Answers go to a connection: a request from the data plane has none to go to.
        let (None, Some(publisher)) = (topic.accepted, publisher) else {
            return Vec::new();
        };
        let request = Request {
            client_id: publisher.client_id.clone(),
            topic: message.topic.clone(),
            payload: message.payload.clone(),
        };
        if self.requests.try_send(request).is_err() {
            tracing::warn!(
                topic = message.topic,
                "provisioning request dropped: the queue is full"
            );
        }
        Vec::new()
    }
}

/// Ownership tokens handed out and not yet used or expired: token → certificate id.
#[derive(Debug, Default)]
pub struct Tokens(Mutex<HashMap<String, (String, Instant)>>);

impl Tokens {
    fn issue(&self, certificate_id: &str) -> String {
        let token = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let now = Instant::now();
        let mut tokens = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tokens.retain(|_, (_, at)| now.duration_since(*at) < TOKEN_LIFETIME);
        tokens.insert(token.clone(), (certificate_id.to_owned(), now));
        token
    }

    /// The certificate `token` was issued for, while it is good.
    pub fn certificate(&self, token: &str) -> Option<String> {
        let tokens = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tokens
            .get(token)
            .filter(|(_, at)| at.elapsed() < TOKEN_LIFETIME)
            .map(|(id, _)| id.clone())
    }
}

/// Answers requests until the queue closes.
pub async fn run<A: Authority>(
    mut queue: mpsc::Receiver<Request>,
    authority: Arc<A>,
    tokens: Arc<Tokens>,
    broker: Arc<Broker>,
) {
    while let Some(request) = queue.recv().await {
        let (authority, tokens, broker) = (authority.clone(), tokens.clone(), broker.clone());
        tokio::spawn(async move {
            let Ok(topic) = ProvisioningTopic::parse(&request.topic) else {
                return;
            };
            let answer = serve(&topic, &request.payload, authority.as_ref(), &tokens).await;
            let (accepted, document) = match answer {
                Ok(document) => (true, document),
                Err(refusal) => (false, refusal.document()),
            };
            let reply = ProvisioningTopic {
                accepted: Some(accepted),
                ..topic
            };
            let payload = encode(topic.format, &document);
            if !broker.publish_to(
                &request.client_id,
                Message::from_service(reply.to_string(), payload),
            ) {
                tracing::info!(
                    client_id = request.client_id,
                    topic = request.topic,
                    "provisioning answer not delivered: not subscribed"
                );
            }
        });
    }
}

/// One request's answer document.
///
/// # Errors
/// [`Refusal`] for a payload that is not the request's shape, or a failure of the authority.
pub async fn serve<A: Authority>(
    topic: &ProvisioningTopic<'_>,
    payload: &[u8],
    authority: &A,
    tokens: &Tokens,
) -> Result<Value, Refusal> {
    let request = decode(topic.format, payload)?;
    match topic.api {
        ProvisioningApi::CreateKeysAndCertificate => {
            let (id, pem, key) = authority.create_keys().await?;
            Ok(json!({
                "certificateId": id,
                "certificatePem": pem,
                "privateKey": key,
                "certificateOwnershipToken": tokens.issue(&id),
            }))
        }
        ProvisioningApi::CreateCertificateFromCsr => {
            let csr = request
                .get("certificateSigningRequest")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    Refusal::new(
                        400,
                        "InvalidPayload",
                        "certificateSigningRequest (a PEM CSR) is required",
                    )
                })?;
            let (id, pem) = authority.create_from_csr(csr).await?;
            Ok(json!({
                "certificateId": id,
                "certificatePem": pem,
                "certificateOwnershipToken": tokens.issue(&id),
            }))
        }
        ProvisioningApi::RegisterThing { .. } => Err(Refusal::new(
            500,
            "InternalFailure",
            "RegisterThing is not emulated yet: it needs the template's pre-provisioning hook, run by a local Lambda host the stack does not have",
        )),
    }
}

fn decode(format: PayloadFormat, payload: &[u8]) -> Result<Value, Refusal> {
    let bad = |why: String| Refusal::new(400, "InvalidPayload", why);
    // CreateKeysAndCertificate's request is documented as an empty payload.
    if payload.is_empty() {
        return Ok(json!({}));
    }
    let value: Value = match format {
        PayloadFormat::Json => {
            serde_json::from_slice(payload).map_err(|e| bad(format!("not JSON: {e}")))?
        }
        PayloadFormat::Cbor => {
            ciborium::from_reader(payload).map_err(|e| bad(format!("not CBOR: {e}")))?
        }
    };
    if value.is_object() {
        Ok(value)
    } else {
        Err(bad("the request is an object".into()))
    }
}

fn encode(format: PayloadFormat, document: &Value) -> Vec<u8> {
    match format {
        PayloadFormat::Json => document.to_string().into_bytes(),
        PayloadFormat::Cbor => {
            let mut out = Vec::new();
            // Writing a JSON value into a Vec cannot fail.
            let _ = ciborium::into_writer(document, &mut out);
            out
        }
    }
}

/// The authority on AWS IoT's registry (moto's locally) and the local CA.
pub struct RegistryAuthority {
    /// The registry.
    pub iot: aws_sdk_iot::Client,
    /// The CA that signs certificates from CSRs.
    pub ca: LocalCa,
}

fn failure(operation: &str, e: impl std::fmt::Display) -> Refusal {
    tracing::warn!(operation, error = %e, "provisioning call failed");
    Refusal::new(500, "InternalFailure", format!("{operation} failed"))
}

impl Authority for RegistryAuthority {
    async fn create_keys(&self) -> Result<(String, String, String), Refusal> {
        let made = self
            .iot
            .create_keys_and_certificate()
            .set_as_active(false)
            .send()
            .await
            .map_err(|e| {
                failure(
                    "CreateKeysAndCertificate",
                    aws_sdk_iot::error::DisplayErrorContext(e),
                )
            })?;
        let id = made.certificate_id.unwrap_or_default();
        self.pending(&id).await?;
        let key = made
            .key_pair
            .and_then(|k| k.private_key)
            .unwrap_or_default();
        Ok((id, made.certificate_pem.unwrap_or_default(), key))
    }

    async fn create_from_csr(&self, csr: &str) -> Result<(String, String), Refusal> {
        let pem = self
            .ca
            .sign_client_csr(csr)
            .map_err(|e| Refusal::new(400, "InvalidCertificateSigningRequest", e.to_string()))?;
        let registered = self
            .iot
            .register_certificate_without_ca()
            .certificate_pem(&pem)
            .status(aws_sdk_iot::types::CertificateStatus::PendingActivation)
            .send()
            .await
            .map_err(|e| {
                failure(
                    "RegisterCertificateWithoutCA",
                    aws_sdk_iot::error::DisplayErrorContext(e),
                )
            })?;
        let id = registered.certificate_id.unwrap_or_default();
        self.pending(&id).await?;
        Ok((id, pem))
    }
}

impl RegistryAuthority {
    async fn pending(&self, certificate_id: &str) -> Result<(), Refusal> {
        self.iot
            .update_certificate()
            .certificate_id(certificate_id)
            .new_status(aws_sdk_iot::types::CertificateStatus::PendingActivation)
            .send()
            .await
            .map(drop)
            .map_err(|e| {
                failure(
                    "UpdateCertificate",
                    aws_sdk_iot::error::DisplayErrorContext(e),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake;

    impl Authority for Fake {
        async fn create_keys(&self) -> Result<(String, String, String), Refusal> {
            Ok(("c1".into(), "PEM".into(), "KEY".into()))
        }
        async fn create_from_csr(&self, csr: &str) -> Result<(String, String), Refusal> {
            Ok(("c2".into(), format!("signed {csr}")))
        }
    }

    fn topic(text: &str) -> ProvisioningTopic<'_> {
        ProvisioningTopic::parse(text).unwrap()
    }

    #[tokio::test]
    async fn create_answers_keys_and_a_token_for_the_certificate() {
        let tokens = Tokens::default();
        let out = serve(
            &topic("$aws/certificates/create/json"),
            b"{}",
            &Fake,
            &tokens,
        )
        .await
        .unwrap();
        assert_eq!(
            (out["certificateId"].as_str(), out["privateKey"].as_str()),
            (Some("c1"), Some("KEY"))
        );
        let token = out["certificateOwnershipToken"].as_str().unwrap();
        assert_eq!(tokens.certificate(token).as_deref(), Some("c1"));
        assert_eq!(tokens.certificate("forged"), None);
    }

    #[tokio::test]
    async fn csr_requests_need_the_csr_and_cbor_is_read_like_json() {
        let tokens = Tokens::default();
        let missing = serve(
            &topic("$aws/certificates/create-from-csr/json"),
            b"{}",
            &Fake,
            &tokens,
        )
        .await;
        assert_eq!(missing.unwrap_err().code, "InvalidPayload");
        let bad = serve(
            &topic("$aws/certificates/create-from-csr/json"),
            b"not json",
            &Fake,
            &tokens,
        )
        .await;
        assert_eq!(bad.unwrap_err().status, 400);
        let request = encode(
            PayloadFormat::Cbor,
            &json!({"certificateSigningRequest": "CSR"}),
        );
        let out = serve(
            &topic("$aws/certificates/create-from-csr/cbor"),
            &request,
            &Fake,
            &tokens,
        )
        .await
        .unwrap();
        assert_eq!(out["certificatePem"], "signed CSR");
        assert!(out.get("privateKey").is_none(), "the device keeps its key");
        let back: Value = ciborium::from_reader(&encode(PayloadFormat::Cbor, &out)[..]).unwrap();
        assert_eq!(back, out);
    }

    #[tokio::test]
    async fn register_thing_is_refused_with_the_reason() {
        let out = serve(
            &topic("$aws/provisioning-templates/fleet/provision/json"),
            b"{}",
            &Fake,
            &Tokens::default(),
        )
        .await;
        let refusal = out.unwrap_err();
        assert_eq!((refusal.status, refusal.code), (500, "InternalFailure"));
        assert!(refusal.message.contains("Lambda host"));
    }
}
