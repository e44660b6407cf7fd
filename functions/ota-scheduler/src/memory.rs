//! In-memory edges for the advancer's unit tests and its benchmark: rollouts with revision
//! checks, device records, a fleet, images, `ota` shadows (with the same replace rule as the
//! AWS edge) and alerts, with failures to inject.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use shoal_core::alerts::Alerts;
use shoal_core::edge::EdgeError;
use shoal_core::rollout::advance::{DeviceRecord, FleetDevice};
use shoal_core::rollout::image::{DeviceModel, FirmwareImage, HardwareRevision};
use shoal_core::rollout::state::{Rollout, Transition};
use shoal_core::shadow::document::{StateMap, merge_patch};
use shoal_core::shadow::store::WriteError;

use crate::{Delivery, Fleet, OtaRequest, Rollouts, may_replace};

/// What a store that is down answers: no answer at all.
pub fn down(service: &'static str, operation: &'static str) -> EdgeError {
    EdgeError::unreachable(service, operation, "connection refused")
}

#[derive(Default)]
pub struct Memory {
    pub rollouts: Mutex<BTreeMap<String, Rollout>>,
    pub audit: Mutex<Vec<Transition>>,
    /// Per rollout, per thing.
    pub records: Mutex<HashMap<String, BTreeMap<String, DeviceRecord>>>,
    pub fleet: Vec<FleetDevice>,
    pub images: Vec<FirmwareImage>,
    /// Each thing's `ota` desired state.
    pub shadows: Mutex<HashMap<String, StateMap>>,
    pub alerts: Mutex<Vec<(String, Vec<u8>)>>,
    /// Shadow writes to these things fail.
    pub unreachable: HashSet<String>,
    pub alerts_down: bool,
    /// Every transition loses the race (another advancer wrote first).
    pub always_raced: bool,
    /// Shadow writes that reached a shadow.
    pub writes: Mutex<u64>,
}

impl Memory {
    pub fn records_of(&self, rollout: &str) -> Vec<DeviceRecord> {
        self.records
            .lock()
            .unwrap()
            .get(rollout)
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default()
    }
}

impl Rollouts for Memory {
    async fn ids(&self) -> Result<Vec<String>, EdgeError> {
        Ok(self.rollouts.lock().unwrap().keys().cloned().collect())
    }
    async fn get(&self, id: &str) -> Result<Option<Rollout>, EdgeError> {
        Ok(self.rollouts.lock().unwrap().get(id).cloned())
    }
    async fn transition(
        &self,
        previous: &Rollout,
        next: &Rollout,
        transition: &Transition,
    ) -> Result<bool, EdgeError> {
        let mut rollouts = self.rollouts.lock().unwrap();
        // The table's transaction is conditional on the stored revision: a rollout that is not
        // there fails the condition, as one that moved does.
        let Some(stored) = rollouts.get_mut(previous.id.as_str()) else {
            return Ok(false);
        };
        if self.always_raced || stored.revision != previous.revision {
            return Ok(false);
        }
        *stored = next.clone();
        self.audit.lock().unwrap().push(transition.clone());
        Ok(true)
    }
    async fn devices(&self, id: &str) -> Result<Vec<DeviceRecord>, EdgeError> {
        Ok(self.records_of(id))
    }
    async fn put_device(&self, id: &str, record: &DeviceRecord) -> Result<(), EdgeError> {
        self.records
            .lock()
            .unwrap()
            .entry(id.to_owned())
            .or_default()
            .insert(record.thing.clone(), record.clone());
        Ok(())
    }
}

impl Fleet for Memory {
    async fn devices(
        &self,
        _: &DeviceModel,
        _: &HardwareRevision,
    ) -> Result<Vec<FleetDevice>, EdgeError> {
        Ok(self.fleet.clone())
    }
    async fn images(
        &self,
        _: &DeviceModel,
        _: &HardwareRevision,
    ) -> Result<Vec<FirmwareImage>, EdgeError> {
        Ok(self.images.clone())
    }
}

impl Delivery for Memory {
    async fn presign(&self, s3_key: &str, ttl_s: u64) -> Result<String, EdgeError> {
        Ok(format!(
            "https://bucket.s3.amazonaws.com/{s3_key}?X-Amz-Expires={ttl_s}"
        ))
    }
    async fn write(&self, request: &OtaRequest<'_>) -> Result<bool, WriteError> {
        let thing = request.thing.as_str();
        if self.unreachable.contains(thing) {
            return Err(WriteError::Edge {
                shadow: format!("{thing}/ota"),
                source: down("iot-data", "UpdateThingShadow"),
            });
        }
        // The body the data plane would receive.
        serde_json::to_vec(&request.update).map_err(|e| WriteError::Edge {
            shadow: format!("{thing}/ota"),
            source: EdgeError::request("iot-data", "UpdateThingShadow", e),
        })?;
        let mut shadows = self.shadows.lock().unwrap();
        let desired = shadows.entry(thing.to_owned()).or_default();
        if !may_replace(Some(desired), request.rollout, request.version) {
            return Ok(false);
        }
        if let Some(patch) = &request.update.state.desired {
            merge_patch(desired, patch);
        }
        *self.writes.lock().unwrap() += 1;
        Ok(true)
    }
}

impl Alerts for Memory {
    async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), EdgeError> {
        if self.alerts_down {
            return Err(down("iot-data", "Publish"));
        }
        self.alerts
            .lock()
            .unwrap()
            .push((topic.to_owned(), payload));
        Ok(())
    }
}
