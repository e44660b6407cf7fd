//! The AWS side of the shadow-sync traits: the DynamoDB device table and IoT data Publish.

use shoal_shared::aws::AwsError;
use shoal_shared::clock::now_ms;
use shoal_shared::device_table::{DeviceTable, OfflineDevice};
use shoal_shared::ids::ThingName;
use shoal_shared::presence::LifecycleEvent;
use shoal_shared::shadow::ShadowRef;
use shoal_shared::shadow::ota::OtaReport;
use shoal_shared::shadow::policy::Conflict;
use shoal_shared::shadow::sync::ReportedFacts;

use crate::documents::DeviceRecords;
pub use shoal_shared::alerts::IotAlerts;

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
    ) -> Result<bool, AwsError> {
        self.0.record_facts(shadow, version, facts, now()).await
    }

    async fn record_ota(
        &self,
        thing: &ThingName,
        version: u64,
        report: &OtaReport,
    ) -> Result<bool, AwsError> {
        self.0
            .record_ota(thing.as_str(), version, report, now())
            .await
    }

    async fn record_conflicts(
        &self,
        shadow: &ShadowRef,
        version: u64,
        conflicts: &[Conflict],
    ) -> Result<(), AwsError> {
        self.0
            .record_conflicts(shadow, version, conflicts, now())
            .await
    }
}

impl PresenceRecords for Registry {
    async fn record_presence(
        &self,
        thing: &ThingName,
        event: &LifecycleEvent,
    ) -> Result<bool, AwsError> {
        self.0.record_presence(thing.as_str(), event, now()).await
    }

    async fn offline_before(&self, cutoff_ms: u64) -> Result<Vec<OfflineDevice>, AwsError> {
        self.0.offline_before(cutoff_ms).await
    }

    async fn mark_alerted(&self, thing: &str, offline_since_ms: u64) -> Result<bool, AwsError> {
        self.0.mark_alerted(thing, offline_since_ms, now()).await
    }
}
