//! In-memory stand-ins for the provisioning functions' edges, for unit tests: the manifest with
//! DynamoDB's conditional-claim semantics, the certificate registry and the device registry
//! ([`Memory`]).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use shoal_core::edge::EdgeError;
use shoal_core::ids::ThingName;
use shoal_core::provisioning::{DeviceStatus, ManifestEntry, Serial};

use crate::hook::{Certificates, DeviceCertificates, Manifest};

/// An in-memory manifest with DynamoDB's conditional-claim semantics.
#[derive(Default)]
pub struct Memory {
    pub entries: Mutex<BTreeMap<String, ManifestEntry>>,
    /// Certificate statuses in the registry (absent: no such certificate).
    pub statuses: Mutex<BTreeMap<String, String>>,
    /// The device registry's certificate per thing.
    pub recorded: Mutex<BTreeMap<String, String>>,
    /// Things in the IoT registry and their attributes.
    pub things: Mutex<BTreeMap<String, BTreeMap<String, String>>>,
    /// The thing group each thing was added to.
    pub groups: Mutex<BTreeMap<String, String>>,
    pub audit: Mutex<Vec<String>>,
    pub down: bool,
    pub slow: bool,
    /// Recording the certificate (after the claim) takes a minute: the hook's deadline passes
    /// with the serial claimed.
    pub slow_after_claim: bool,
    /// Another invocation's claim (certificate, `updated_at`) lands between this one's read and
    /// its claim (taken by the first claim).
    pub claimed_meanwhile: Mutex<Option<(String, i64)>>,
}

/// What the manifest table answers while it is down: no answer at all.
pub fn down() -> EdgeError {
    EdgeError::unreachable("dynamodb", "GetItem", "connection refused")
}

impl Manifest for Memory {
    async fn get(&self, serial: &Serial) -> Result<Option<ManifestEntry>, EdgeError> {
        if self.slow {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        if self.down {
            return Err(down());
        }
        Ok(self.entries.lock().unwrap().get(serial.as_str()).cloned())
    }

    async fn claim(
        &self,
        serial: &Serial,
        certificate_id: &str,
        thing: &ThingName,
        now_ms: i64,
        pending_only: bool,
    ) -> Result<bool, EdgeError> {
        let mut entries = self.entries.lock().unwrap();
        let Some(e) = entries.get_mut(serial.as_str()) else {
            return Ok(false);
        };
        if let Some((other, at)) = self.claimed_meanwhile.lock().unwrap().take() {
            e.status = DeviceStatus::Provisioned;
            e.certificate_id = Some(other);
            e.thing_name = Some(thing.clone());
            e.updated_at_ms = at;
        }
        let ok = e.status == DeviceStatus::Pending
            || (!pending_only
                && e.status == DeviceStatus::Provisioned
                && e.certificate_id.as_deref() == Some(certificate_id));
        if ok {
            e.status = DeviceStatus::Provisioned;
            e.certificate_id = Some(certificate_id.into());
            e.thing_name = Some(thing.clone());
            e.updated_at_ms = now_ms;
        }
        Ok(ok)
    }

    async fn take_over(
        &self,
        serial: &Serial,
        old: &str,
        new: &str,
        thing: &ThingName,
        unchanged_since_ms: i64,
        now_ms: i64,
    ) -> Result<bool, EdgeError> {
        let mut entries = self.entries.lock().unwrap();
        let Some(e) = entries.get_mut(serial.as_str()) else {
            return Ok(false);
        };
        let ok = e.status == DeviceStatus::Provisioned
            && e.certificate_id.as_deref() == Some(old)
            && e.updated_at_ms <= unchanged_since_ms;
        if ok {
            e.certificate_id = Some(new.into());
            e.thing_name = Some(thing.clone());
            e.updated_at_ms = now_ms;
            self.audit
                .lock()
                .unwrap()
                .push(format!("claim_taken_over {old} -> {new}"));
        }
        Ok(ok)
    }

    async fn release_own_claim(
        &self,
        serial: &Serial,
        certificate_id: &str,
        claimed_at_ms: i64,
        now_ms: i64,
    ) -> Result<bool, EdgeError> {
        let mut entries = self.entries.lock().unwrap();
        let Some(e) = entries.get_mut(serial.as_str()) else {
            return Ok(false);
        };
        let ok = e.status == DeviceStatus::Provisioned
            && e.certificate_id.as_deref() == Some(certificate_id)
            && e.updated_at_ms == claimed_at_ms;
        if ok {
            e.status = DeviceStatus::Pending;
            e.certificate_id = None;
            e.thing_name = None;
            e.updated_at_ms = now_ms;
            self.audit
                .lock()
                .unwrap()
                .push(format!("claim_released {certificate_id}"));
        }
        Ok(ok)
    }

    async fn record_refusal(
        &self,
        _serial: &Serial,
        _certificate_id: &str,
        _reason: &str,
        _now_ms: i64,
    ) -> Result<(), EdgeError> {
        Ok(())
    }
}

impl Certificates for Memory {
    async fn status(&self, certificate_id: &str) -> Result<Option<String>, EdgeError> {
        Ok(self.statuses.lock().unwrap().get(certificate_id).cloned())
    }

    async fn ensure_thing(
        &self,
        thing: &ThingName,
        attributes: &BTreeMap<String, String>,
        group: Option<&str>,
    ) -> Result<(), EdgeError> {
        if let Some(group) = group {
            // The registry fails for groups named `broken…`.
            if group.starts_with("broken") {
                return Err(EdgeError::request(
                    "iot",
                    "AddThingToThingGroup",
                    format!("ResourceNotFoundException: thing group {group}"),
                ));
            }
            self.groups
                .lock()
                .unwrap()
                .insert(thing.to_string(), group.to_owned());
        }
        self.things
            .lock()
            .unwrap()
            .entry(thing.to_string())
            .or_default()
            .extend(attributes.clone());
        Ok(())
    }
}

impl DeviceCertificates for Memory {
    async fn record_certificate(
        &self,
        thing: &ThingName,
        certificate_id: &str,
    ) -> Result<(), EdgeError> {
        if self.slow_after_claim {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        self.recorded
            .lock()
            .unwrap()
            .insert(thing.to_string(), certificate_id.to_owned());
        Ok(())
    }
}
