//! In-memory stand-ins for the shadow-sync function's edges, for unit tests: the shadow store and
//! the device records of `documents` ([`Fakes`]), presence records and alerts of `presence`
//! ([`Registry`]).

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::Value;
use shoal_core::alerts::Alerts;
use shoal_core::edge::EdgeError;
use shoal_core::ids::ThingName;
use shoal_core::presence::OfflineDevice;
use shoal_core::presence::{LifecycleEvent, PresenceEvent, Recorded};
use shoal_core::provisioning::Serial;
use shoal_core::shadow::document::merge_patch;
use shoal_core::shadow::ota::OtaReport;
use shoal_core::shadow::policy::Conflict;
use shoal_core::shadow::store::ShadowStore;
use shoal_core::shadow::sync::ReportedFacts;
use shoal_core::shadow::{ShadowDocument, ShadowRef, ShadowUpdate};

use crate::documents::DeviceRecords;
use crate::presence::PresenceRecords;

/// The certificate `d-1` was provisioned with.
pub const CERT: &str = "2d9b1f4c0e5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e";

#[derive(Default)]
pub struct Fakes {
    pub shadow: Mutex<Option<ShadowDocument>>,
    /// Concurrent writers that bump the version before our next update lands.
    pub racing: Mutex<Vec<Value>>,
    pub facts: Mutex<Vec<(u64, ReportedFacts)>>,
    pub ota: Mutex<Vec<(u64, OtaReport)>>,
    pub conflicts: Mutex<Vec<Conflict>>,
}

impl ShadowStore for Fakes {
    async fn get(&self, _: &ShadowRef) -> Result<Option<ShadowDocument>, EdgeError> {
        Ok(self.shadow.lock().unwrap().clone())
    }
    async fn update(&self, _: &ShadowRef, u: &ShadowUpdate) -> Result<Option<u64>, EdgeError> {
        let mut guard = self.shadow.lock().unwrap();
        let doc = guard.as_mut().unwrap();
        if let Some(other) = self.racing.lock().unwrap().pop() {
            merge_patch(
                doc.state.desired.get_or_insert_default(),
                other.as_object().unwrap(),
            );
            doc.version += 1;
        }
        if u.version != Some(doc.version) {
            return Ok(None);
        }
        merge_patch(
            doc.state.desired.get_or_insert_default(),
            u.state.desired.as_ref().unwrap(),
        );
        doc.version += 1;
        Ok(Some(doc.version))
    }
}

impl DeviceRecords for Fakes {
    async fn record_facts(
        &self,
        _: &ShadowRef,
        v: u64,
        f: &ReportedFacts,
    ) -> Result<bool, EdgeError> {
        self.facts.lock().unwrap().push((v, f.clone()));
        Ok(true)
    }
    async fn record_ota(&self, _: &ThingName, v: u64, r: &OtaReport) -> Result<bool, EdgeError> {
        self.ota.lock().unwrap().push((v, r.clone()));
        Ok(true)
    }
    async fn record_conflicts(
        &self,
        _: &ShadowRef,
        _: u64,
        c: &[Conflict],
    ) -> Result<(), EdgeError> {
        self.conflicts.lock().unwrap().extend_from_slice(c);
        Ok(())
    }
}

/// The registry's conditional write, in memory: the recorded certificate per thing, then
/// `presence::supersedes` (the rule the device table's condition states): order, online,
/// last event time, alerted per thing.
pub struct Registry {
    pub certificates: Mutex<BTreeMap<String, String>>,
    /// The manifest's claims (serial → certificate).
    pub manifest: BTreeMap<String, String>,
    pub things: Mutex<BTreeMap<String, (u128, bool, u64, bool)>>,
    pub published: Mutex<Vec<(String, Value)>>,
    pub fail_publish: bool,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            certificates: Mutex::new([("d-1".to_owned(), CERT.to_owned())].into()),
            manifest: [("d-1".to_owned(), CERT.to_owned())].into(),
            things: Mutex::default(),
            published: Mutex::default(),
            fail_publish: false,
        }
    }
}

impl PresenceRecords for Registry {
    async fn record_presence(
        &self,
        thing: &ThingName,
        e: &LifecycleEvent,
    ) -> Result<Recorded, EdgeError> {
        match self.certificates.lock().unwrap().get(thing.as_str()) {
            None => return Ok(Recorded::Unrecorded),
            Some(c) if Some(c) != e.principal_identifier.as_ref() => {
                return Ok(Recorded::ForeignPrincipal);
            }
            Some(_) => {}
        }
        let mut things = self.things.lock().unwrap();
        let online = e.event_type == PresenceEvent::Connected;
        let recorded = things
            .get(thing.as_str())
            .map(|(order, _, ts, _)| (*ts, *order));
        if !shoal_core::presence::supersedes(e, recorded) {
            return Ok(Recorded::Stale);
        }
        things.insert(thing.to_string(), (e.order(), online, e.timestamp, false));
        Ok(Recorded::Applied)
    }
    async fn adopt_manifest_certificate(
        &self,
        serial: &Serial,
        principal: &str,
    ) -> Result<bool, EdgeError> {
        if self.manifest.get(serial.as_str()).map(String::as_str) != Some(principal) {
            return Ok(false);
        }
        self.certificates
            .lock()
            .unwrap()
            .entry(serial.to_string())
            .or_insert_with(|| principal.to_owned());
        Ok(true)
    }
    async fn offline_before(&self, cutoff: u64) -> Result<Vec<OfflineDevice>, EdgeError> {
        Ok(self
            .things
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, (_, online, since, alerted))| !online && !alerted && *since < cutoff)
            .map(|(t, (_, _, since, _))| OfflineDevice {
                thing: t.clone(),
                offline_since_ms: *since,
                disconnect_reason: None,
            })
            .collect())
    }
    async fn mark_alerted(&self, thing: &str, since: u64) -> Result<bool, EdgeError> {
        let mut things = self.things.lock().unwrap();
        let entry = things.get_mut(thing).unwrap();
        let held = entry.2 == since && !entry.1;
        entry.3 |= held;
        Ok(held)
    }
}

impl Alerts for Registry {
    async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), EdgeError> {
        if self.fail_publish {
            return Err(EdgeError::unreachable("iot-data", "Publish", "down"));
        }
        let body = serde_json::from_slice(&payload).unwrap();
        self.published
            .lock()
            .unwrap()
            .push((topic.to_owned(), body));
        Ok(())
    }
}
