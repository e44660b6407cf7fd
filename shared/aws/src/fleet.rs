//! The fleet a rollout addresses, from the IoT registry: things whose `model` and `hardware`
//! attributes (set at provisioning from the manifest) match. The registry, not the device's own
//! report, is the authority on what hardware a device is.

use crate::client::{AwsResultExt, EdgeError};
use shoal_core::rollout::image::{DeviceModel, HardwareRevision};

pub const MODEL_ATTRIBUTE: &str = "model";
pub const HARDWARE_ATTRIBUTE: &str = "hardware";

/// Names of the things of `model` and `hardware`, in registry order. ListThings filters on one
/// attribute (the model); the hardware revision is checked here.
///
/// # Errors
/// [`EdgeError`] when a ListThings page fails (unreachable, throttled, refused); things of
/// earlier pages are dropped.
pub async fn things_of(
    iot: &aws_sdk_iot::Client,
    model: &DeviceModel,
    hardware: &HardwareRevision,
) -> Result<Vec<String>, EdgeError> {
    let mut pages = iot
        .list_things()
        .attribute_name(MODEL_ATTRIBUTE)
        .attribute_value(model.as_str())
        .max_results(250)
        .into_paginator()
        .send();
    let mut things = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.aws("iot", "ListThings")?;
        for thing in page.things() {
            let same_hardware = thing
                .attributes()
                .and_then(|a| a.get(HARDWARE_ATTRIBUTE))
                .is_some_and(|h| h == hardware.as_str());
            if let (true, Some(name)) = (same_hardware, thing.thing_name()) {
                things.push(name.to_owned());
            }
        }
    }
    Ok(things)
}

/// The status AWS IoT gives certificate `certificate_id` (`ACTIVE`, `INACTIVE`, `REVOKED`,
/// `PENDING_TRANSFER`, `REGISTER_INACTIVE`, `PENDING_ACTIVATION`); `None` when the registry has
/// no such certificate. DescribeCertificate
/// (<https://docs.aws.amazon.com/iot/latest/apireference/API_DescribeCertificate.html>).
///
/// # Errors
/// [`EdgeError`] when the call failed for another reason; an answer without a status is
/// [`EdgeErrorKind::Unreadable`](crate::client::EdgeErrorKind::Unreadable).
pub async fn certificate_status(
    iot: &aws_sdk_iot::Client,
    certificate_id: &str,
) -> Result<Option<String>, EdgeError> {
    Ok(certificate(iot, certificate_id).await?.map(|c| c.status))
}

/// A registered certificate: its ARN (`arn:<partition>:iot:<region>:<account>:cert/<id>`) and
/// status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredCertificate {
    pub arn: String,
    pub status: String,
}

/// Certificate `certificate_id` as the registry holds it; `None` when it has no such
/// certificate. DescribeCertificate
/// (<https://docs.aws.amazon.com/iot/latest/apireference/API_DescribeCertificate.html>).
///
/// # Errors
/// [`EdgeError`] when the call failed for another reason; an answer without an ARN or a status
/// is [`EdgeErrorKind::Unreadable`](crate::client::EdgeErrorKind::Unreadable).
pub async fn certificate(
    iot: &aws_sdk_iot::Client,
    certificate_id: &str,
) -> Result<Option<RegisteredCertificate>, EdgeError> {
    let described = iot
        .describe_certificate()
        .certificate_id(certificate_id)
        .send()
        .await
        .aws("iot", "DescribeCertificate");
    match described {
        Ok(out) => {
            let description = out.certificate_description();
            let arn = description.and_then(|d| d.certificate_arn());
            let status = description.and_then(|d| d.status());
            match (arn, status) {
                (Some(arn), Some(status)) => Ok(Some(RegisteredCertificate {
                    arn: arn.to_owned(),
                    status: status.as_str().to_owned(),
                })),
                _ => Err(EdgeError::unreadable(
                    "iot",
                    "DescribeCertificate",
                    "no ARN or status in the answer",
                )),
            }
        }
        Err(e) if e.is_code("ResourceNotFoundException") => Ok(None),
        Err(e) => Err(e),
    }
}

/// The IoT policies attached to `target` (a certificate's ARN), as (name, JSON document):
/// ListAttachedPolicies, then GetPolicy for each
/// (<https://docs.aws.amazon.com/iot/latest/apireference/API_ListAttachedPolicies.html>).
///
/// # Errors
/// [`EdgeError`] when a call fails; a policy deleted between the two calls is left out.
pub async fn attached_policies(
    iot: &aws_sdk_iot::Client,
    target: &str,
) -> Result<Vec<(String, String)>, EdgeError> {
    let mut names = Vec::new();
    let mut pages = iot
        .list_attached_policies()
        .target(target)
        .recursive(false)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.aws("iot", "ListAttachedPolicies")?;
        names.extend(
            page.policies()
                .iter()
                .filter_map(|p| p.policy_name().map(str::to_owned)),
        );
    }
    // Every document at once (a certificate has a few policies; AWS allows ten at most).
    let documents = futures::future::join_all(
        names
            .iter()
            .map(|name| iot.get_policy().policy_name(name).send()),
    )
    .await;
    let mut policies = Vec::with_capacity(names.len());
    for (name, document) in names.into_iter().zip(documents) {
        match document.aws("iot", "GetPolicy") {
            Ok(out) => {
                let document = out.policy_document().unwrap_or_default().to_owned();
                policies.push((name, document));
            }
            Err(e) if e.is_code("ResourceNotFoundException") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(policies)
}

/// A thing as the registry describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThingRecord {
    pub name: String,
    pub type_name: Option<String>,
    pub attributes: std::collections::BTreeMap<String, String>,
}

/// Thing `thing_name` when it is attached to `principal` (a certificate's ARN):
/// ListPrincipalThings, then DescribeThing
/// (<https://docs.aws.amazon.com/iot/latest/apireference/API_ListPrincipalThings.html>).
///
/// # Errors
/// [`EdgeError`] when a call fails; a thing deleted between the two calls is `None`.
pub async fn attached_thing(
    iot: &aws_sdk_iot::Client,
    principal: &str,
    thing_name: &str,
) -> Result<Option<ThingRecord>, EdgeError> {
    let mut pages = iot
        .list_principal_things()
        .principal(principal)
        .into_paginator()
        .send();
    let mut attached = false;
    while let Some(page) = pages.next().await {
        let page = page.aws("iot", "ListPrincipalThings")?;
        if page.things().iter().any(|t| t == thing_name) {
            attached = true;
            break;
        }
    }
    if !attached {
        return Ok(None);
    }
    match iot
        .describe_thing()
        .thing_name(thing_name)
        .send()
        .await
        .aws("iot", "DescribeThing")
    {
        Ok(out) => Ok(Some(ThingRecord {
            name: thing_name.to_owned(),
            type_name: out.thing_type_name().map(str::to_owned),
            attributes: out
                .attributes()
                .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
        })),
        Err(e) if e.is_code("ResourceNotFoundException") => Ok(None),
        Err(e) => Err(e),
    }
}
