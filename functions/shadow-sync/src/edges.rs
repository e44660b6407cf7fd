//! The AWS side of the shadow-sync traits: the DynamoDB device table and IoT data Publish.

use shoal_aws::client::EdgeError;
use shoal_aws::device_table::DeviceTable;
use shoal_aws::manifest_table::ManifestTable;
use shoal_core::clock::now_ms;
use shoal_core::ids::ThingName;
use shoal_core::presence::OfflineDevice;
use shoal_core::presence::{LifecycleEvent, Recorded};
use shoal_core::provisioning::{DeviceStatus, Serial};
use shoal_core::shadow::ShadowRef;
use shoal_core::shadow::ota::OtaReport;
use shoal_core::shadow::policy::Conflict;
use shoal_core::shadow::sync::ReportedFacts;

use crate::documents::DeviceRecords;
pub use shoal_aws::alerts::IotAlerts;

use crate::presence::PresenceRecords;

fn now() -> u64 {
    u64::try_from(now_ms()).unwrap_or_default()
}

/// The device table as the documents trigger uses it.
pub struct Registry(pub DeviceTable);

impl DeviceRecords for Registry {
    async fn record_facts(
        &self,
        shadow: &ShadowRef,
        version: u64,
        facts: &ReportedFacts,
    ) -> Result<bool, EdgeError> {
        self.0.record_facts(shadow, version, facts, now()).await
    }

    async fn record_ota(
        &self,
        thing: &ThingName,
        version: u64,
        report: &OtaReport,
    ) -> Result<bool, EdgeError> {
        self.0
            .record_ota(thing.as_str(), version, report, now())
            .await
    }

    async fn record_conflicts(
        &self,
        shadow: &ShadowRef,
        version: u64,
        conflicts: &[Conflict],
    ) -> Result<(), EdgeError> {
        self.0
            .record_conflicts(shadow, version, conflicts, now())
            .await
    }
}

/// The device table as the presence trigger uses it, with the manifest it falls back on (once)
/// for devices provisioned before certificates were recorded.
pub struct PresenceRegistry {
    pub devices: DeviceTable,
    pub manifest: ManifestTable,
}

impl PresenceRecords for PresenceRegistry {
    async fn record_presence(
        &self,
        thing: &ThingName,
        event: &LifecycleEvent,
    ) -> Result<Recorded, EdgeError> {
        self.devices
            .record_presence(thing.as_str(), event, now())
            .await
    }

    async fn adopt_manifest_certificate(
        &self,
        serial: &Serial,
        principal: &str,
    ) -> Result<bool, EdgeError> {
        let claimed = self.manifest.get(serial).await?.is_some_and(|entry| {
            entry.status == DeviceStatus::Provisioned
                && entry.certificate_id.as_deref() == Some(principal)
        });
        if !claimed {
            return Ok(false);
        }
        // Recorded meanwhile (by another event, or by provisioning): the retry decides.
        self.devices
            .adopt_certificate(serial.as_str(), principal, now())
            .await?;
        Ok(true)
    }

    async fn offline_before(&self, cutoff_ms: u64) -> Result<Vec<OfflineDevice>, EdgeError> {
        self.devices.offline_before(cutoff_ms).await
    }

    async fn mark_alerted(&self, thing: &str, offline_since_ms: u64) -> Result<bool, EdgeError> {
        self.devices
            .mark_alerted(thing, offline_since_ms, now())
            .await
    }
}
