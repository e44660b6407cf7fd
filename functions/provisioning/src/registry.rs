//! JITR's AWS edge: the IoT registry and the shadow data plane.

use std::collections::BTreeMap;

use aws_sdk_iot::types::{AttributePayload, CertificateStatus};
use serde_json::{Map, Value, json};
use shoal_aws::client::{AwsResultExt, ClientFactory, EdgeError};
use shoal_core::ids::ThingName;

use crate::hook::{DeviceCertificates, Manifest};
use crate::jitr::{Certificate, Registry};
use shoal_aws::device_table::DeviceTable;
use shoal_aws::manifest_table::{AuditRecord, ManifestTable};
use shoal_core::clock::now_ms;
use shoal_core::provisioning::{ManifestEntry, Serial};

pub struct IotRegistry {
    iot: aws_sdk_iot::Client,
    data: aws_sdk_iotdataplane::Client,
    thing_type: Option<String>,
}

impl IotRegistry {
    pub fn new(factory: &ClientFactory) -> Self {
        Self {
            iot: factory.iot(),
            data: factory.iot_data(),
            thing_type: None,
        }
    }

    /// The thing type new device things get (`SHOAL_DEVICE_THING_TYPE`).
    #[must_use]
    pub fn with_thing_type(mut self, thing_type: Option<String>) -> Self {
        self.thing_type = thing_type;
        self
    }
}

impl Registry for IotRegistry {
    async fn describe_certificate(&self, certificate_id: &str) -> Result<Certificate, EdgeError> {
        let described = self
            .iot
            .describe_certificate()
            .certificate_id(certificate_id)
            .send()
            .await
            .aws("iot", "DescribeCertificate")?;
        let d = described.certificate_description();
        // An answer without the certificate is no evidence against the device: an error (retried
        // by the rule), never a PEM of "" that fails the CN check and revokes a real certificate.
        let missing = |what| EdgeError::unreadable("iot", "DescribeCertificate", what);
        Ok(Certificate {
            arn: d
                .and_then(|d| d.certificate_arn())
                .ok_or_else(|| missing("no certificateArn in the answer"))?
                .to_owned(),
            pem: d
                .and_then(|d| d.certificate_pem())
                .ok_or_else(|| missing("no certificatePem in the answer"))?
                .to_owned(),
            status: d
                .and_then(|d| d.status())
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
        })
    }

    async fn set_certificate_status(
        &self,
        certificate_id: &str,
        status: &'static str,
    ) -> Result<(), EdgeError> {
        self.iot
            .update_certificate()
            .certificate_id(certificate_id)
            .new_status(CertificateStatus::from(status))
            .send()
            .await
            .aws("iot", "UpdateCertificate")?;
        Ok(())
    }

    async fn ensure_thing(
        &self,
        thing: &ThingName,
        attributes: &BTreeMap<String, String>,
        group: Option<&str>,
    ) -> Result<(), EdgeError> {
        ensure_device_thing(
            &self.iot,
            self.thing_type.as_deref(),
            thing,
            attributes,
            group,
        )
        .await
    }

    async fn attach(
        &self,
        policy: &str,
        certificate_arn: &str,
        thing: &ThingName,
    ) -> Result<(), EdgeError> {
        self.iot
            .attach_policy()
            .policy_name(policy)
            .target(certificate_arn)
            .send()
            .await
            .aws("iot", "AttachPolicy")?;
        self.iot
            .attach_thing_principal()
            .thing_name(thing.as_str())
            .principal(certificate_arn)
            .send()
            .await
            .aws("iot", "AttachThingPrincipal")?;
        Ok(())
    }

    async fn ensure_shadow(
        &self,
        thing: &ThingName,
        desired: &Map<String, Value>,
    ) -> Result<(), EdgeError> {
        if desired.is_empty() {
            return Ok(());
        }
        match self
            .data
            .get_thing_shadow()
            .thing_name(thing.as_str())
            .send()
            .await
            .aws("iot-data", "GetThingShadow")
        {
            Ok(_) => return Ok(()),
            Err(e) if e.is_code("ResourceNotFoundException") => {}
            Err(e) => return Err(e),
        }
        let document = json!({"state": {"desired": desired}});
        self.data
            .update_thing_shadow()
            .thing_name(thing.as_str())
            .payload(aws_smithy_types::Blob::new(document.to_string()))
            .send()
            .await
            .aws("iot-data", "UpdateThingShadow")?;
        Ok(())
    }
}

/// The hook's view of the certificate registry: a certificate's status.
pub struct IotCertificates {
    iot: aws_sdk_iot::Client,
    thing_type: Option<String>,
}

impl IotCertificates {
    pub fn new(iot: aws_sdk_iot::Client) -> Self {
        Self {
            iot,
            thing_type: None,
        }
    }

    /// The thing type new device things get (`SHOAL_DEVICE_THING_TYPE`): AWS IoT allows a thing
    /// without a type three attributes, with one fifty.
    #[must_use]
    pub fn with_thing_type(mut self, thing_type: Option<String>) -> Self {
        self.thing_type = thing_type;
        self
    }
}

impl crate::hook::Certificates for IotCertificates {
    async fn status(&self, certificate_id: &str) -> Result<Option<String>, EdgeError> {
        shoal_aws::fleet::certificate_status(&self.iot, certificate_id).await
    }

    async fn ensure_thing(
        &self,
        thing: &ThingName,
        attributes: &BTreeMap<String, String>,
        group: Option<&str>,
    ) -> Result<(), EdgeError> {
        ensure_device_thing(
            &self.iot,
            self.thing_type.as_deref(),
            thing,
            attributes,
            group,
        )
        .await
    }
}

/// Creates `thing` of `thing_type` with `attributes`, or merges `attributes` into the thing that
/// exists (giving it `thing_type` if it has another), and adds it to `group`. Described first:
/// AWS's CreateThing is idempotent only for identical attributes, and moto's replaces an
/// existing thing.
///
/// A group that does not exist yet is created (the manifest names it).
///
/// # Errors
/// The registry call that failed.
pub async fn ensure_device_thing(
    iot: &aws_sdk_iot::Client,
    thing_type: Option<&str>,
    thing: &ThingName,
    attributes: &BTreeMap<String, String>,
    group: Option<&str>,
) -> Result<(), EdgeError> {
    ensure_typed_thing(iot, thing_type, thing, attributes).await?;
    let Some(group) = group else {
        return Ok(());
    };
    let add = || async {
        iot.add_thing_to_thing_group()
            .thing_name(thing.as_str())
            .thing_group_name(group)
            .send()
            .await
            .aws("iot", "AddThingToThingGroup")
    };
    match add().await {
        Ok(_) => Ok(()),
        // The manifest names the group: it is made the first time a device of it provisions.
        Err(e) if e.is_code("ResourceNotFoundException") => {
            let created = iot
                .create_thing_group()
                .thing_group_name(group)
                .send()
                .await
                .aws("iot", "CreateThingGroup");
            shoal_aws::client::done_or_already(created, &["ResourceAlreadyExistsException"])?;
            add().await.map(drop)
        }
        Err(e) => Err(e),
    }
}

async fn ensure_typed_thing(
    iot: &aws_sdk_iot::Client,
    thing_type: Option<&str>,
    thing: &ThingName,
    attributes: &BTreeMap<String, String>,
) -> Result<(), EdgeError> {
    let payload = |merge: bool| {
        AttributePayload::builder()
            .set_attributes(Some(attributes.clone().into_iter().collect()))
            .merge(merge)
            .build()
    };
    match iot
        .describe_thing()
        .thing_name(thing.as_str())
        .send()
        .await
        .aws("iot", "DescribeThing")
    {
        Ok(existing) => {
            let retype = thing_type.is_some() && existing.thing_type_name() != thing_type;
            iot.update_thing()
                .thing_name(thing.as_str())
                .attribute_payload(payload(true))
                .set_thing_type_name(thing_type.filter(|_| retype).map(str::to_owned))
                .send()
                .await
                .aws("iot", "UpdateThing")?;
            Ok(())
        }
        Err(e) if e.is_code("ResourceNotFoundException") => {
            iot.create_thing()
                .thing_name(thing.as_str())
                .set_thing_type_name(thing_type.map(str::to_owned))
                .attribute_payload(payload(false))
                .send()
                .await
                .aws("iot", "CreateThing")?;
            Ok(())
        }
        Err(e) => Err(e),
    }
}

// The hook's ports on the tables (and JITR's manifest port, the same trait).

impl Manifest for ManifestTable {
    async fn get(&self, serial: &Serial) -> Result<Option<ManifestEntry>, EdgeError> {
        ManifestTable::get(self, serial).await
    }

    async fn claim(
        &self,
        serial: &Serial,
        certificate_id: &str,
        thing: &ThingName,
        now_ms: i64,
        pending_only: bool,
    ) -> Result<bool, EdgeError> {
        ManifestTable::claim(self, serial, certificate_id, thing, now_ms, pending_only).await
    }

    async fn take_over(
        &self,
        serial: &Serial,
        old_certificate: &str,
        new_certificate: &str,
        thing: &ThingName,
        unchanged_since_ms: i64,
        now_ms: i64,
    ) -> Result<bool, EdgeError> {
        ManifestTable::take_over(
            self,
            serial,
            old_certificate,
            new_certificate,
            thing,
            unchanged_since_ms,
            now_ms,
        )
        .await
    }

    async fn release_own_claim(
        &self,
        serial: &Serial,
        certificate_id: &str,
        claimed_at_ms: i64,
        now_ms: i64,
    ) -> Result<bool, EdgeError> {
        ManifestTable::release_own_claim(self, serial, certificate_id, claimed_at_ms, now_ms).await
    }

    async fn record_refusal(
        &self,
        serial: &Serial,
        certificate_id: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), EdgeError> {
        let record = AuditRecord {
            at_ms: now_ms,
            action: "jitr_refused",
            reason,
            certificate_id: Some(certificate_id),
        };
        self.record(serial, record, None).await
    }
}

impl DeviceCertificates for DeviceTable {
    async fn record_certificate(
        &self,
        thing: &ThingName,
        certificate_id: &str,
    ) -> Result<(), EdgeError> {
        let now = u64::try_from(now_ms()).unwrap_or_default();
        DeviceTable::record_certificate(self, thing.as_str(), certificate_id, now).await
    }
}
