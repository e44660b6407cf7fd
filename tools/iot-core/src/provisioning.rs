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
//! - `$aws/provisioning-templates/<name>/provision/<format>`: RegisterThing — the ownership
//!   token's certificate, the template's pre-provisioning hook invoked synchronously through
//!   Lambda's Invoke API (its `parameterOverrides` applied; `allowProvisioning: false` refuses
//!   with 403), then the template body's thing, certificate status, principal and policies
//!   made in the registry ([`crate::fleet`]); answered `{deviceConfiguration, thingName}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shoal_wire::topics::{PayloadFormat, ProvisioningApi, ProvisioningTopic};
use tokio::sync::mpsc;

use crate::broker::{Broker, Message, Publisher, Service};
use crate::fleet::{CERTIFICATE_ID_PARAMETER, FleetTemplate, Override, Plan};
use crate::lambda::{InvocationType, LambdaClient};
use crate::tls::LocalCa;

/// How long the pre-provisioning hook may take (AWS IoT gives it 5 s).
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// The requesting connection's certificate id (the claim certificate).
    principal: String,
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
    /// The certificate's PEM (the hook is given it).
    fn certificate_pem(
        &self,
        certificate_id: &str,
    ) -> impl Future<Output = Result<String, Refusal>> + Send;
    /// Makes `plan` in the registry for `certificate_id`: the thing (created, or changed as its
    /// override settings say), the certificate's status, the thing and the policies attached.
    fn register(
        &self,
        plan: &Plan,
        certificate_id: &str,
    ) -> impl Future<Output = Result<(), Refusal>> + Send;
}

/// RegisterThing's part: the provisioning templates and where their hooks run.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    /// The template's provisioning templates.
    pub templates: Vec<FleetTemplate>,
    /// Lambda's Invoke API, for the hooks.
    pub lambda: Option<LambdaClient>,
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
            principal: publisher.principal.clone(),
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

    /// Takes `token` while it is good: its certificate. A RegisterThing holds its token this
    /// way, so two requests with one token cannot both provision.
    pub fn take(&self, token: &str) -> Option<(String, Instant)> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(token)
            .filter(|(_, at)| at.elapsed() < TOKEN_LIFETIME)
    }

    /// Gives `token` back as it was issued (at `issued`): its RegisterThing failed and the
    /// device may try again while it is good.
    pub fn give_back(&self, token: &str, certificate_id: &str, issued: Instant) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(token.to_owned(), (certificate_id.to_owned(), issued));
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
    fleet: Arc<Fleet>,
    broker: Arc<Broker>,
) {
    while let Some(request) = queue.recv().await {
        let (authority, tokens, broker) = (authority.clone(), tokens.clone(), broker.clone());
        let fleet = fleet.clone();
        tokio::spawn(async move {
            let Ok(topic) = ProvisioningTopic::parse(&request.topic) else {
                return;
            };
            let asker = Asker {
                client_id: &request.client_id,
                principal: &request.principal,
            };
            let answer = serve(
                &topic,
                &request.payload,
                authority.as_ref(),
                &tokens,
                &fleet,
                &asker,
            )
            .await;
            if let Err(refusal) = &answer {
                tracing::info!(
                    client_id = request.client_id,
                    topic = request.topic,
                    status = refusal.status,
                    code = refusal.code,
                    message = refusal.message,
                    "provisioning request refused"
                );
            }
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

/// The connection a request came from.
#[derive(Debug, Clone, Copy)]
pub struct Asker<'a> {
    /// Its client id.
    pub client_id: &'a str,
    /// Its certificate id (the claim certificate).
    pub principal: &'a str,
}

/// One request's answer document.
///
/// # Errors
/// [`Refusal`] for a payload that is not the request's shape, a token that is not good, a hook
/// that refuses or fails, or a failure of the authority.
pub async fn serve<A: Authority>(
    topic: &ProvisioningTopic<'_>,
    payload: &[u8],
    authority: &A,
    tokens: &Tokens,
    fleet: &Fleet,
    asker: &Asker<'_>,
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
        ProvisioningApi::RegisterThing { template } => {
            register_thing(template, &request, authority, tokens, fleet, asker).await
        }
    }
}

async fn register_thing<A: Authority>(
    name: &str,
    request: &Value,
    authority: &A,
    tokens: &Tokens,
    fleet: &Fleet,
    asker: &Asker<'_>,
) -> Result<Value, Refusal> {
    let bad = |why: String| Refusal::new(400, "InvalidParameters", why);
    let template = fleet
        .templates
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| {
            Refusal::new(
                404,
                "ResourceNotFound",
                format!("no provisioning template {name}"),
            )
        })?;
    if !template.enabled {
        return Err(Refusal::new(
            403,
            "Forbidden",
            format!("provisioning template {name} is disabled"),
        ));
    }
    let token = request
        .get("certificateOwnershipToken")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("certificateOwnershipToken is required".into()))?;
    // Taken for the request's time: a second request with the same token meanwhile is refused;
    // given back if this one fails.
    let (certificate_id, issued) = tokens.take(token).ok_or_else(|| {
        Refusal::new(
            403,
            "Forbidden",
            "the certificate ownership token is not valid (unknown, used or older than an hour)",
        )
    })?;
    let registered = provision(
        template,
        name,
        request,
        &certificate_id,
        authority,
        fleet,
        asker,
    )
    .await;
    if registered.is_err() {
        tokens.give_back(token, &certificate_id, issued);
    }
    registered
}

async fn provision<A: Authority>(
    template: &FleetTemplate,
    name: &str,
    request: &Value,
    certificate_id: &str,
    authority: &A,
    fleet: &Fleet,
    asker: &Asker<'_>,
) -> Result<Value, Refusal> {
    let bad = |why: String| Refusal::new(400, "InvalidParameters", why);
    let mut parameters = std::collections::BTreeMap::new();
    for (key, value) in request
        .get("parameters")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let value = value
            .as_str()
            .ok_or_else(|| bad(format!("parameter {key} is a string")))?;
        parameters.insert(key.clone(), value.to_owned());
    }
    if let Some(hook) = &template.hook {
        let lambda = fleet.lambda.as_ref().ok_or_else(|| {
            Refusal::new(500, "InternalFailure", "the template has a pre-provisioning hook and no Lambda endpoint is given (--lambda-endpoint)")
        })?;
        let event = json!({
            "claimCertificateId": asker.principal,
            "certificateId": certificate_id,
            "certificatePem": authority.certificate_pem(certificate_id).await?,
            "templateArn": format!("arn:aws:iot:{}:{}:provisioningtemplate/{name}", shoal_template::REGION, shoal_template::ACCOUNT_ID),
            "clientId": asker.client_id,
            "parameters": parameters,
        });
        let hook_failed = |why: String| {
            tracing::warn!(template = name, hook, why, "pre-provisioning hook failed");
            Refusal::new(500, "InternalFailure", "the pre-provisioning hook failed")
        };
        let invoked = tokio::time::timeout(
            HOOK_TIMEOUT,
            lambda.invoke(
                hook,
                InvocationType::RequestResponse,
                event.to_string().into_bytes(),
            ),
        )
        .await
        .map_err(|_| hook_failed(format!("no answer within {} s", HOOK_TIMEOUT.as_secs())))?
        .map_err(|e| hook_failed(e.to_string()))?;
        if invoked.function_error.is_some() {
            return Err(hook_failed(
                String::from_utf8_lossy(&invoked.payload).into_owned(),
            ));
        }
        let answer: Value = serde_json::from_slice(&invoked.payload)
            .map_err(|e| hook_failed(format!("its answer is not JSON: {e}")))?;
        if answer.get("allowProvisioning").and_then(Value::as_bool) != Some(true) {
            return Err(Refusal::new(
                403,
                "Forbidden",
                "the pre-provisioning hook did not allow provisioning",
            ));
        }
        for (key, value) in answer
            .get("parameterOverrides")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            if let Some(value) = value.as_str() {
                parameters.insert(key.clone(), value.to_owned());
            }
        }
    }
    parameters.insert(
        CERTIFICATE_ID_PARAMETER.to_owned(),
        certificate_id.to_owned(),
    );
    let plan = crate::fleet::plan(&template.body, &parameters).map_err(bad)?;
    authority.register(&plan, certificate_id).await?;
    let mut answer = json!({"deviceConfiguration": plan.device_configuration});
    if let Some(thing) = &plan.thing {
        answer["thingName"] = thing.name.clone().into();
    }
    Ok(answer)
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

    async fn certificate_pem(&self, certificate_id: &str) -> Result<String, Refusal> {
        self.described(certificate_id)
            .await?
            .certificate_pem
            .ok_or_else(|| Refusal::new(500, "InternalFailure", "the certificate has no PEM"))
    }

    async fn register(&self, plan: &Plan, certificate_id: &str) -> Result<(), Refusal> {
        let arn = self.certificate(certificate_id).await?;
        if let Some(thing) = &plan.thing {
            self.thing(thing).await?;
        }
        for policy in &plan.policies {
            self.iot
                .attach_policy()
                .policy_name(policy)
                .target(&arn)
                .send()
                .await
                .map_err(|e| {
                    missing_or_failure("AttachPolicy", e, || format!("policy {policy}"))
                })?;
        }
        if let Some(thing) = &plan.thing {
            self.iot
                .attach_thing_principal()
                .thing_name(&thing.name)
                .principal(&arn)
                .send()
                .await
                .map_err(|e| iot_failure("AttachThingPrincipal", e))?;
        }
        if let Some(status) = &plan.certificate_status {
            self.iot
                .update_certificate()
                .certificate_id(certificate_id)
                .new_status(aws_sdk_iot::types::CertificateStatus::from(status.as_str()))
                .send()
                .await
                .map_err(|e| iot_failure("UpdateCertificate", e))?;
        }
        Ok(())
    }
}

fn iot_failure(operation: &str, e: impl std::error::Error + Send + Sync + 'static) -> Refusal {
    failure(operation, aws_sdk_iot::error::DisplayErrorContext(e))
}

/// A registry call that names what the template refers to: a `ResourceNotFoundException` is the
/// template's fault (400, `InvalidParameters`, "<what> does not exist"), anything else the
/// service's.
fn missing_or_failure<E, R>(
    operation: &str,
    e: aws_sdk_iot::error::SdkError<E, R>,
    what: impl FnOnce() -> String,
) -> Refusal
where
    E: aws_sdk_iot::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    use aws_sdk_iot::error::ProvideErrorMetadata;
    if e.code() == Some("ResourceNotFoundException") {
        Refusal::new(
            400,
            "InvalidParameters",
            format!("{} does not exist", what()),
        )
    } else {
        iot_failure(operation, e)
    }
}

impl RegistryAuthority {
    async fn described(
        &self,
        certificate_id: &str,
    ) -> Result<aws_sdk_iot::types::CertificateDescription, Refusal> {
        self.iot
            .describe_certificate()
            .certificate_id(certificate_id)
            .send()
            .await
            .map_err(|e| iot_failure("DescribeCertificate", e))?
            .certificate_description
            .ok_or_else(|| Refusal::new(500, "InternalFailure", "no certificate described"))
    }

    async fn certificate(&self, certificate_id: &str) -> Result<String, Refusal> {
        self.described(certificate_id)
            .await?
            .certificate_arn
            .ok_or_else(|| Refusal::new(500, "InternalFailure", "the certificate has no ARN"))
    }

    async fn thing(&self, plan: &crate::fleet::ThingPlan) -> Result<(), Refusal> {
        use aws_sdk_iot::types::AttributePayload;
        let existing = match self
            .iot
            .describe_thing()
            .thing_name(&plan.name)
            .send()
            .await
        {
            Ok(found) => Some(found),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) =>
            {
                None
            }
            Err(e) => return Err(iot_failure("DescribeThing", e)),
        };
        let payload = |merge: bool| {
            AttributePayload::builder()
                .set_attributes(Some(plan.attributes.clone().into_iter().collect()))
                .merge(merge)
                .build()
        };
        let Some(existing) = existing else {
            self.iot
                .create_thing()
                .thing_name(&plan.name)
                .set_thing_type_name(plan.thing_type.clone())
                .attribute_payload(payload(false))
                .send()
                .await
                .map_err(|e| iot_failure("CreateThing", e))?;
            for group in &plan.groups {
                self.add_to_group(&plan.name, group).await?;
            }
            return Ok(());
        };
        let conflict = |what: &str| {
            Refusal::new(
                400,
                "InvalidParameters",
                format!(
                    "thing {} exists and its {what} override setting is FAIL",
                    plan.name
                ),
            )
        };
        let mut update = None;
        match plan.on_attributes {
            Override::DoNothing => {}
            Override::Fail => return Err(conflict("AttributePayload")),
            Override::Merge => update = Some(payload(true)),
            Override::Replace => {
                // Attributes the template does not name are removed (an empty value removes one).
                let mut attributes: std::collections::HashMap<String, String> = existing
                    .attributes
                    .clone()
                    .unwrap_or_default()
                    .into_keys()
                    .map(|k| (k, String::new()))
                    .collect();
                attributes.extend(plan.attributes.clone());
                update = Some(
                    AttributePayload::builder()
                        .set_attributes(Some(attributes))
                        .merge(true)
                        .build(),
                );
            }
        }
        let mut request = self.iot.update_thing().thing_name(&plan.name);
        let mut changed = update.is_some();
        if let Some(payload) = update {
            request = request.attribute_payload(payload);
        }
        if plan.thing_type.is_some() && plan.thing_type != existing.thing_type_name {
            match plan.on_type {
                Override::DoNothing | Override::Merge => {}
                Override::Fail => return Err(conflict("ThingTypeName")),
                Override::Replace => {
                    request = request.set_thing_type_name(plan.thing_type.clone());
                    changed = true;
                }
            }
        }
        if changed {
            request
                .send()
                .await
                .map_err(|e| iot_failure("UpdateThing", e))?;
        }
        match plan.on_groups {
            Override::DoNothing => {}
            Override::Fail if !plan.groups.is_empty() => return Err(conflict("ThingGroups")),
            Override::Fail => {}
            Override::Merge | Override::Replace => {
                for group in &plan.groups {
                    self.add_to_group(&plan.name, group).await?;
                }
            }
        }
        Ok(())
    }

    async fn add_to_group(&self, thing: &str, group: &str) -> Result<(), Refusal> {
        self.iot
            .add_thing_to_thing_group()
            .thing_name(thing)
            .thing_group_name(group)
            .send()
            .await
            .map(drop)
            .map_err(|e| {
                missing_or_failure("AddThingToThingGroup", e, || format!("thing group {group}"))
            })
    }

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

    #[derive(Default)]
    struct Fake(Mutex<Vec<(Plan, String)>>);

    impl Authority for Fake {
        async fn create_keys(&self) -> Result<(String, String, String), Refusal> {
            Ok(("c1".into(), "PEM".into(), "KEY".into()))
        }
        async fn create_from_csr(&self, csr: &str) -> Result<(String, String), Refusal> {
            Ok(("c2".into(), format!("signed {csr}")))
        }
        async fn certificate_pem(&self, _: &str) -> Result<String, Refusal> {
            Ok("PEM".into())
        }
        async fn register(&self, plan: &Plan, certificate_id: &str) -> Result<(), Refusal> {
            self.0
                .lock()
                .unwrap()
                .push((plan.clone(), certificate_id.to_owned()));
            Ok(())
        }
    }

    const ASKER: Asker<'static> = Asker {
        client_id: "claim.1",
        principal: "claim-cert",
    };

    fn topic(text: &str) -> ProvisioningTopic<'_> {
        ProvisioningTopic::parse(text).unwrap()
    }

    #[tokio::test]
    async fn create_answers_keys_and_a_token_for_the_certificate() {
        let tokens = Tokens::default();
        let out = serve(
            &topic("$aws/certificates/create/json"),
            b"{}",
            &Fake::default(),
            &tokens,
            &Fleet::default(),
            &ASKER,
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
            &Fake::default(),
            &tokens,
            &Fleet::default(),
            &ASKER,
        )
        .await;
        assert_eq!(missing.unwrap_err().code, "InvalidPayload");
        let bad = serve(
            &topic("$aws/certificates/create-from-csr/json"),
            b"not json",
            &Fake::default(),
            &tokens,
            &Fleet::default(),
            &ASKER,
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
            &Fake::default(),
            &tokens,
            &Fleet::default(),
            &ASKER,
        )
        .await
        .unwrap();
        assert_eq!(out["certificatePem"], "signed CSR");
        assert!(out.get("privateKey").is_none(), "the device keeps its key");
        let back: Value = ciborium::from_reader(&encode(PayloadFormat::Cbor, &out)[..]).unwrap();
        assert_eq!(back, out);
    }

    #[tokio::test]
    async fn register_thing_spends_a_good_token_on_the_templates_plan() {
        let tokens = Tokens::default();
        let fake = Fake::default();
        let fleet = Fleet {
            templates: vec![FleetTemplate {
                name: "fleet".into(),
                enabled: true,
                hook: None,
                body: r#"{"Parameters": {"ThingName": {"Type": "String"},
                    "AWS::IoT::Certificate::Id": {"Type": "String"}},
                  "Resources": {
                    "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "ThingName"}}},
                    "certificate": {"Type": "AWS::IoT::Certificate",
                      "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"}}},
                  "DeviceConfiguration": {"interval": "60"}}"#
                    .into(),
            }],
            lambda: None,
        };
        let register = |body: Value| {
            let (fake, tokens, fleet) = (&fake, &tokens, &fleet);
            async move {
                serve(
                    &topic("$aws/provisioning-templates/fleet/provision/json"),
                    body.to_string().as_bytes(),
                    fake,
                    tokens,
                    fleet,
                    &ASKER,
                )
                .await
            }
        };
        let forged = register(json!({"certificateOwnershipToken": "forged"})).await;
        assert_eq!(forged.unwrap_err().status, 403);
        let token = tokens.issue("new-cert");
        let missing = register(json!({"certificateOwnershipToken": token})).await;
        let missing = missing.unwrap_err();
        assert_eq!(missing.status, 400);
        assert!(missing.message.contains("ThingName"), "{missing:?}");
        let answer = register(
            json!({"certificateOwnershipToken": token, "parameters": {"ThingName": "SN-1"}}),
        )
        .await
        .unwrap();
        assert_eq!(
            answer,
            json!({"deviceConfiguration": {"interval": "60"}, "thingName": "SN-1"})
        );
        let made = fake.0.lock().unwrap().clone();
        assert_eq!(made.len(), 1);
        assert_eq!(made[0].1, "new-cert");
        assert_eq!(made[0].0.thing.as_ref().unwrap().name, "SN-1");
        assert_eq!(made[0].0.certificate_status.as_deref(), Some("ACTIVE"));
        let failed_token = tokens.issue("other-cert");
        let failed = register(json!({"certificateOwnershipToken": failed_token})).await;
        assert_eq!(failed.unwrap_err().status, 400);
        assert_eq!(
            tokens.certificate(&failed_token).as_deref(),
            Some("other-cert"),
            "a failed request gives its token back"
        );
        assert!(tokens.take(&failed_token).is_some());
        assert!(
            tokens.take(&failed_token).is_none(),
            "taken: a second request meanwhile is refused"
        );
        let again = register(
            json!({"certificateOwnershipToken": token, "parameters": {"ThingName": "SN-1"}}),
        )
        .await;
        assert_eq!(again.unwrap_err().status, 403, "a token provisions once");
        let unknown = serve(
            &topic("$aws/provisioning-templates/other/provision/json"),
            b"{}",
            &fake,
            &tokens,
            &fleet,
            &ASKER,
        )
        .await;
        assert_eq!(unknown.unwrap_err().status, 404);
    }
}
