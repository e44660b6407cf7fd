//! The AWS side of the advancer's traits: the rollout, device and firmware tables, the IoT
//! registry, S3 presigned GETs and the `ota` named shadow.

use std::time::Duration;

use aws_sdk_s3::presigning::PresigningConfig;
use shoal_shared::aws::{AwsError, AwsResultExt};
use shoal_shared::device_table::DeviceTable;
use shoal_shared::firmware_table::FirmwareTable;
use shoal_shared::ids::{ShadowName, ThingName};
use shoal_shared::rollout::advance::{DeviceRecord, FleetDevice};
use shoal_shared::rollout::image::{DeviceModel, FirmwareImage, HardwareRevision};
use shoal_shared::rollout::state::{Rollout, Transition};
use shoal_shared::rollout_table::RolloutTable;
use shoal_shared::shadow::ShadowRef;
use shoal_shared::shadow::ota::OTA_SHADOW;
use shoal_shared::shadow_store::{IotShadowStore, WriteError, WriteOutcome, write_optimistic};

use crate::{Delivery, Fleet, OtaRequest, Rollouts, may_replace};

impl Rollouts for RolloutTable {
    async fn ids(&self) -> Result<Vec<String>, AwsError> {
        RolloutTable::ids(self).await
    }
    async fn get(&self, id: &str) -> Result<Option<Rollout>, AwsError> {
        RolloutTable::get(self, id).await
    }
    async fn transition(
        &self,
        previous: &Rollout,
        next: &Rollout,
        transition: &Transition,
    ) -> Result<bool, AwsError> {
        RolloutTable::transition(self, previous, next, transition).await
    }
    async fn devices(&self, id: &str) -> Result<Vec<DeviceRecord>, AwsError> {
        RolloutTable::devices(self, id).await
    }
    async fn put_device(&self, id: &str, record: &DeviceRecord) -> Result<(), AwsError> {
        RolloutTable::put_device(self, id, record).await
    }
}

/// The registry: things by attributes (IoT), their state (device table), images (firmware table).
pub struct Registry {
    pub iot: aws_sdk_iot::Client,
    pub devices: DeviceTable,
    pub firmware: FirmwareTable,
}

impl Fleet for Registry {
    async fn devices(
        &self,
        model: &DeviceModel,
        hardware: &HardwareRevision,
    ) -> Result<Vec<FleetDevice>, AwsError> {
        let things = shoal_shared::fleet::things_of(&self.iot, model, hardware).await?;
        self.devices.fleet(&things).await
    }
    async fn images(
        &self,
        model: &DeviceModel,
        hardware: &HardwareRevision,
    ) -> Result<Vec<FirmwareImage>, AwsError> {
        self.firmware.images(model, hardware).await
    }
}

/// S3 presigned GETs of the firmware bucket and `ota` shadow writes.
pub struct Devices {
    pub s3: aws_sdk_s3::Client,
    pub bucket: String,
    pub shadows: IotShadowStore,
}

/// Attempts of a shadow write that loses the version race to the device's own report.
const SHADOW_ATTEMPTS: u32 = 3;

impl Delivery for Devices {
    async fn presign(&self, s3_key: &str, ttl_s: u64) -> Result<String, AwsError> {
        let config = PresigningConfig::expires_in(Duration::from_secs(ttl_s))
            .map_err(|e| AwsError::local("s3", "GetObject", e))?;
        let request = self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(s3_key)
            .presigned(config)
            .await
            .aws("s3", "GetObject")?;
        Ok(request.uri().to_owned())
    }

    async fn write(&self, request: &OtaRequest<'_>) -> Result<bool, AwsError> {
        let local = |e: String| AwsError::local("iot-data", "UpdateThingShadow", e);
        let invalid = |e: shoal_shared::ids::IdError| local(e.to_string());
        let shadow = ShadowRef {
            thing: ThingName::parse(request.thing).map_err(invalid)?,
            name: Some(ShadowName::parse(OTA_SHADOW).map_err(invalid)?),
        };
        let written = write_optimistic(&self.shadows, &shadow, None, SHADOW_ATTEMPTS, |doc| {
            let asked = doc.and_then(|d| d.state.desired.as_ref());
            may_replace(asked, request.rollout, request.version).then(|| request.update.clone())
        })
        .await
        .map_err(|e| match e {
            WriteError::Aws { source, .. } => source,
            other => local(other.to_string()),
        })?;
        Ok(matches!(written, WriteOutcome::Written { .. }))
    }
}
