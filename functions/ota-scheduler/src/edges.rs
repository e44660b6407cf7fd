//! The AWS side of the advancer's traits: the rollout, device and firmware tables, the IoT
//! registry, S3 presigned GETs and the `ota` named shadow.

use std::time::Duration;

use aws_sdk_iot::types::{
    AbortAction, AbortConfig, AbortCriteria, JobExecutionFailureType, PresignedUrlConfig,
    TargetSelection,
};
use aws_sdk_s3::presigning::PresigningConfig;
use shoal_aws::client::{AwsResultExt, EdgeError, done_or_already};
use shoal_aws::device_table::DeviceTable;
use shoal_aws::firmware_table::FirmwareTable;
use shoal_aws::rollout_table::RolloutTable;
use shoal_aws::shadow_store::IotShadowStore;
use shoal_core::ids::ShadowName;
use shoal_core::rollout::advance::{DeviceRecord, FleetDevice};
use shoal_core::rollout::delivery::{job_document, job_name};
use shoal_core::rollout::image::{DeviceModel, FirmwareImage, HardwareRevision};
use shoal_core::rollout::state::{Rollout, Transition};
use shoal_core::shadow::ShadowRef;
use shoal_core::shadow::ota::OTA_SHADOW;
use shoal_core::shadow::store::{WriteError, WriteOutcome, write_optimistic};

use crate::{Delivery, Fleet, OtaRequest, Rollouts, may_replace};

impl Rollouts for RolloutTable {
    async fn ids(&self) -> Result<Vec<String>, EdgeError> {
        RolloutTable::ids(self).await
    }
    async fn get(&self, id: &str) -> Result<Option<Rollout>, EdgeError> {
        RolloutTable::get(self, id).await
    }
    async fn transition(
        &self,
        previous: &Rollout,
        next: &Rollout,
        transition: &Transition,
    ) -> Result<bool, EdgeError> {
        RolloutTable::transition(self, previous, next, transition).await
    }
    async fn devices(&self, id: &str) -> Result<Vec<DeviceRecord>, EdgeError> {
        RolloutTable::devices(self, id).await
    }
    async fn put_device(&self, id: &str, record: &DeviceRecord) -> Result<(), EdgeError> {
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
    ) -> Result<Vec<FleetDevice>, EdgeError> {
        let things = shoal_aws::fleet::things_of(&self.iot, model, hardware).await?;
        self.devices.fleet(&things).await
    }
    async fn images(
        &self,
        model: &DeviceModel,
        hardware: &HardwareRevision,
    ) -> Result<Vec<FirmwareImage>, EdgeError> {
        self.firmware.images(model, hardware).await
    }
}

/// S3 presigned GETs of the firmware bucket and `ota` shadow writes; with `jobs`, also an AWS
/// IoT job per rollout.
pub struct Devices {
    pub s3: aws_sdk_s3::Client,
    pub bucket: String,
    pub shadows: IotShadowStore,
    pub jobs: Option<JobsChannel>,
}

/// The optional IoT Jobs channel: a static thing group per rollout (`job_name`), a continuous
/// job over it whose document carries the presigned-URL placeholder, and an abort config at the
/// canary's failure threshold as a second brake.
pub struct JobsChannel {
    pub iot: aws_sdk_iot::Client,
    /// The role IoT Jobs assumes to presign the image URL (s3:GetObject on the images).
    pub presign_role_arn: String,
    pub region: String,
    pub url_ttl_s: u64,
}

impl JobsChannel {
    async fn open(
        &self,
        bucket: &str,
        rollout: &Rollout,
        image: &FirmwareImage,
    ) -> Result<(), EdgeError> {
        let name = job_name(rollout.id.as_str());
        let described = self
            .iot
            .describe_job()
            .job_id(&name)
            .send()
            .await
            .aws("iot", "DescribeJob");
        match described {
            Ok(_) => return Ok(()),
            Err(e) if e.is_code("ResourceNotFoundException") => {}
            Err(e) => return Err(e),
        }
        let created = self
            .iot
            .create_thing_group()
            .thing_group_name(&name)
            .send()
            .await
            .aws("iot", "CreateThingGroup");
        let (operation, group_arn) = match created {
            Ok(group) => ("CreateThingGroup", group.thing_group_arn),
            Err(e) if e.is_code("ResourceAlreadyExistsException") => {
                let described = self
                    .iot
                    .describe_thing_group()
                    .thing_group_name(&name)
                    .send()
                    .await
                    .aws("iot", "DescribeThingGroup")?;
                ("DescribeThingGroup", described.thing_group_arn)
            }
            Err(e) => return Err(e),
        };
        let group_arn = group_arn
            .ok_or_else(|| EdgeError::unreadable("iot", operation, "no thing group ARN"))?;
        let brake = rollout.plan.phases.first();
        let criteria = AbortCriteria::builder()
            .failure_type(JobExecutionFailureType::Failed)
            .action(AbortAction::Cancel)
            .threshold_percentage(brake.map_or(5.0, |p| p.max_failure_rate * 100.0))
            .min_number_of_executed_things(brake.map_or(1, |p| {
                i32::try_from(p.min_reports.max(1)).unwrap_or(i32::MAX)
            }))
            .build()
            .map_err(|e| EdgeError::request("iot", "CreateJob", e))?;
        let abort = AbortConfig::builder()
            .criteria_list(criteria)
            .build()
            .map_err(|e| EdgeError::request("iot", "CreateJob", e))?;
        let presign = PresignedUrlConfig::builder()
            .role_arn(&self.presign_role_arn)
            .expires_in_sec(i64::try_from(self.url_ttl_s).unwrap_or(3600))
            .build();
        let created = self
            .iot
            .create_job()
            .job_id(&name)
            .targets(group_arn)
            .target_selection(TargetSelection::Continuous)
            .document(job_document(
                rollout.id.as_str(),
                image,
                bucket,
                &self.region,
            ))
            .description(format!(
                "Shoal rollout {}: {} {} → {}",
                rollout.id, rollout.model, rollout.hardware, rollout.version
            ))
            .presigned_url_config(presign)
            .abort_config(abort)
            .send()
            .await
            .aws("iot", "CreateJob");
        // Already there: another run created it first.
        done_or_already(created, &["ResourceAlreadyExistsException"])
    }
}

/// Attempts of a shadow write that loses the version race to the device's own report.
const SHADOW_ATTEMPTS: u32 = 3;

impl Delivery for Devices {
    async fn presign(&self, s3_key: &str, ttl_s: u64) -> Result<String, EdgeError> {
        let config = PresigningConfig::expires_in(Duration::from_secs(ttl_s))
            .map_err(|e| EdgeError::request("s3", "GetObject", e))?;
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

    async fn write(&self, request: &OtaRequest<'_>) -> Result<bool, WriteError> {
        let shadow = ShadowRef {
            thing: request.thing.clone(),
            name: Some(ShadowName::parse(OTA_SHADOW).expect("`ota` is a valid shadow name")),
        };
        let written = write_optimistic(&self.shadows, &shadow, None, SHADOW_ATTEMPTS, |doc| {
            let asked = doc.and_then(|d| d.state.desired.as_ref());
            may_replace(asked, request.rollout, request.version).then(|| request.update.clone())
        })
        .await?;
        Ok(matches!(written, WriteOutcome::Written { .. }))
    }

    async fn open_job(&self, rollout: &Rollout, image: &FirmwareImage) -> Result<(), EdgeError> {
        match &self.jobs {
            Some(jobs) => jobs.open(&self.bucket, rollout, image).await,
            None => Ok(()),
        }
    }

    async fn join_job(&self, rollout: &str, thing: &str) -> Result<(), EdgeError> {
        let Some(jobs) = &self.jobs else {
            return Ok(());
        };
        jobs.iot
            .add_thing_to_thing_group()
            .thing_group_name(job_name(rollout))
            .thing_name(thing)
            .send()
            .await
            .aws("iot", "AddThingToThingGroup")?;
        Ok(())
    }

    async fn cancel_job(&self, rollout: &str, reason: &str) -> Result<(), EdgeError> {
        let Some(jobs) = &self.jobs else {
            return Ok(());
        };
        let comment: String = reason.chars().take(2028).collect();
        let cancelled = jobs
            .iot
            .cancel_job()
            .job_id(job_name(rollout))
            .comment(comment)
            .send()
            .await
            .aws("iot", "CancelJob");
        // Never opened (no device was targeted), or already cancelled or completed.
        done_or_already(
            cancelled,
            &[
                "ResourceNotFoundException",
                "InvalidStateTransitionException",
            ],
        )
    }
}
