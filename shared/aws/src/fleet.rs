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
    let described = iot
        .describe_certificate()
        .certificate_id(certificate_id)
        .send()
        .await
        .aws("iot", "DescribeCertificate");
    match described {
        Ok(out) => out
            .certificate_description()
            .and_then(|d| d.status())
            .map(|s| Some(s.as_str().to_owned()))
            .ok_or_else(|| {
                EdgeError::unreadable("iot", "DescribeCertificate", "no status in the answer")
            }),
        Err(e) if e.is_code("ResourceNotFoundException") => Ok(None),
        Err(e) => Err(e),
    }
}
