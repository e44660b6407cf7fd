//! Just-in-time registration: a device presents a certificate signed by Shoal's registered CA;
//! AWS IoT registers it as PENDING_ACTIVATION, refuses that first connection and publishes to
//! `$aws/events/certificates/registered/<caCertificateId>`. A rule hands the event here.
//!
//! A certificate whose subject CN is a manifest serial that may be provisioned to it is
//! claimed in the manifest (conditional write), gets its thing (attributes from the manifest),
//! the device policy, the thing principal, an initial shadow and its certificate recorded in the
//! device registry (`SHOAL_DEVICE_TABLE`), and is activated last, so the
//! device's retry finds everything in place. Anything else is revoked, and the reason logged and,
//! for a serial of the manifest, kept in its audit trail.
//! Every step is idempotent: a replayed event reaches the same end state without error.

use std::collections::BTreeMap;
use std::future::Future;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use shoal_aws::config::{self, ConfigError, Source, TableName, vars};
use shoal_core::clock::now_ms;
use shoal_core::edge::EdgeError;
use shoal_core::ids::ThingName;
use shoal_core::provisioning::{DeviceStatus, ManifestEntry, Serial, serial_from_certificate_pem};
use shoal_core::shadow::check_update;
use shoal_core::shadow::document::{ShadowState, ShadowUpdate, UpdateState};

use crate::hook::{DeviceCertificates, Manifest};

/// `$aws/events/certificates/registered/<caCertificateId>`, as AWS IoT publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationEvent {
    pub certificate_id: String,
    pub ca_certificate_id: String,
    #[serde(default)]
    pub timestamp: i64,
    #[serde(default)]
    pub certificate_status: String,
    #[serde(default)]
    pub aws_account_id: String,
    #[serde(default)]
    pub certificate_registration_timestamp: Option<Value>,
}

/// A certificate as the registry describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    pub arn: String,
    pub pem: String,
    pub status: String,
}

/// The AWS IoT calls JITR makes (control and data plane).
pub trait Registry: Sync {
    fn describe_certificate(
        &self,
        certificate_id: &str,
    ) -> impl Future<Output = Result<Certificate, EdgeError>> + Send;
    /// ACTIVE or REVOKED.
    fn set_certificate_status(
        &self,
        certificate_id: &str,
        status: &'static str,
    ) -> impl Future<Output = Result<(), EdgeError>> + Send;
    /// Creates the thing with `attributes` (merged into the one that exists) and adds it to
    /// `group` (the manifest's thing group; made if it does not exist).
    fn ensure_thing(
        &self,
        thing: &ThingName,
        attributes: &BTreeMap<String, String>,
        group: Option<&str>,
    ) -> impl Future<Output = Result<(), EdgeError>> + Send;
    /// Attaches the policy to the certificate and the certificate to the thing.
    fn attach(
        &self,
        policy: &str,
        certificate_arn: &str,
        thing: &ThingName,
    ) -> impl Future<Output = Result<(), EdgeError>> + Send;
    /// Writes `desired` as the classic shadow's desired state unless the thing has a shadow.
    fn ensure_shadow(
        &self,
        thing: &ThingName,
        desired: &Map<String, Value>,
    ) -> impl Future<Output = Result<(), EdgeError>> + Send;
}

#[derive(Debug, Clone, PartialEq)]
pub struct JitrConfig {
    pub manifest_table: TableName,
    /// `SHOAL_DEVICE_TABLE`: where the activated certificate is recorded as the thing's.
    pub device_table: TableName,
    /// The IoT policy every device certificate gets.
    pub device_policy: String,
    /// Initial shadow `desired` per device model (`SHOAL_MODEL_DEFAULTS`, a JSON object).
    pub model_defaults: BTreeMap<String, Map<String, Value>>,
}

/// Per-model shadow defaults: `{"th-v2": {"sample_interval_s": 60}}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelDefaults(pub BTreeMap<String, Map<String, Value>>);

impl std::str::FromStr for ModelDefaults {
    type Err = String;
    /// Parses and checks every model's defaults against the Device Shadow limits (nesting depth,
    /// 8 KB of state) as a first shadow update, so a bad value fails when the configuration loads,
    /// not at every device's registration.
    fn from_str(text: &str) -> Result<Self, String> {
        let defaults: BTreeMap<String, Map<String, Value>> = serde_json::from_str(text)
            .map_err(|e| format!("not a JSON object of model -> object: {e}"))?;
        for (model, desired) in &defaults {
            let first = ShadowUpdate {
                state: UpdateState {
                    desired: Some(desired.clone()),
                    reported: None,
                },
                client_token: None,
                version: None,
            };
            check_update(&ShadowState::default(), &first)
                .map_err(|e| format!("the defaults of model {model:?} cannot be a shadow: {e}"))?;
        }
        Ok(Self(defaults))
    }
}

impl JitrConfig {
    /// Reads the JITR function's settings from `source`: `SHOAL_DEVICE_POLICY`,
    /// `SHOAL_MANIFEST_TABLE` and `SHOAL_DEVICE_TABLE` (required) and `SHOAL_MODEL_DEFAULTS`
    /// (optional, see [`ModelDefaults`]; unset: no model gets initial shadow defaults).
    ///
    /// # Errors
    /// [`ConfigError`] naming the variable: missing (`SHOAL_DEVICE_POLICY` or a table), or
    /// malformed (a table name that is not valid, or model defaults that are not a JSON object
    /// of objects or could not be a first shadow update).
    pub fn from_source(source: &impl Source) -> Result<Self, ConfigError> {
        let device_policy: String = config::required(source, vars::DEVICE_POLICY)?;
        let defaults: Option<ModelDefaults> = config::optional(source, vars::MODEL_DEFAULTS)?;
        Ok(Self {
            manifest_table: config::required(source, vars::MANIFEST_TABLE)?,
            device_table: config::required(source, vars::DEVICE_TABLE)?,
            device_policy,
            model_defaults: defaults.unwrap_or_default().0,
        })
    }
}

/// What a registration event led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Activated { serial: Serial, thing: ThingName },
    Revoked { reason: String },
}

/// The outcome's CloudWatch EMF line (dimension `Function` = `jitr`), stamped `timestamp_ms`:
/// `Activated` or `Revoked`.
pub fn metrics_line(outcome: &Outcome, timestamp_ms: i64) -> String {
    let activated = u64::from(matches!(outcome, Outcome::Activated { .. }));
    shoal_aws::metrics::emf_counts(
        timestamp_ms,
        &[("Function", "jitr")],
        &[("Activated", activated), ("Revoked", 1 - activated)],
    )
}

/// Why `entry` may not be provisioned to the certificate (`certificate_id`, `certificate_pem`),
/// if it may not: a serial that is not pending or provisioned to it, or a device key other than
/// the manifest's proof names.
fn refusal(
    serial: &Serial,
    entry: Option<&ManifestEntry>,
    certificate_id: &str,
    certificate_pem: &str,
) -> Option<String> {
    let Some(entry) = entry else {
        return Some(format!("serial {serial} is not in the factory manifest"));
    };
    if let Some(proof) = &entry.proof
        && let Err(e) = proof.check_certificate(certificate_pem)
    {
        return Some(format!("serial {serial}: {e}"));
    }
    match (entry.status, entry.certificate_id.as_deref()) {
        (DeviceStatus::Pending, _) => None,
        (DeviceStatus::Provisioned, Some(c)) if c == certificate_id => None,
        (DeviceStatus::Provisioned, Some(c)) => Some(format!(
            "serial {serial} is already provisioned to certificate {c}"
        )),
        (status, _) => Some(format!("serial {serial} is {status}")),
    }
}

/// Handles one registration event. `Err` only for AWS calls that failed (Lambda retries the
/// event; every step is idempotent); a refused certificate is `Ok(Outcome::Revoked)`.
pub async fn handle_registration(
    event: &RegistrationEvent,
    registry: &impl Registry,
    manifest: &impl Manifest,
    devices: &impl DeviceCertificates,
    config: &JitrConfig,
) -> Result<Outcome, EdgeError> {
    let certificate = registry.describe_certificate(&event.certificate_id).await?;
    let serial = match serial_from_certificate_pem(&certificate.pem) {
        Ok(serial) => serial,
        Err(reason) => return revoke(registry, event, reason.to_string()).await,
    };
    let entry = manifest.get(&serial).await?;
    if let Some(reason) = refusal(
        &serial,
        entry.as_ref(),
        &event.certificate_id,
        &certificate.pem,
    ) {
        if entry.is_some() {
            manifest
                .record_refusal(&serial, &event.certificate_id, &reason, now_ms())
                .await?;
        }
        return revoke(registry, event, reason).await;
    }
    let entry = entry.expect("refusal() refuses a missing entry");
    let thing = serial.thing_name();
    if !manifest
        .claim(&serial, &event.certificate_id, &thing, now_ms(), false)
        .await?
    {
        let now = manifest.get(&serial).await?;
        let reason = refusal(
            &serial,
            now.as_ref(),
            &event.certificate_id,
            &certificate.pem,
        )
        .unwrap_or_else(|| format!("serial {serial} changed while it was being claimed"));
        manifest
            .record_refusal(&serial, &event.certificate_id, &reason, now_ms())
            .await?;
        return revoke(registry, event, reason).await;
    }

    let mut attributes = entry.attributes.clone();
    attributes.insert("serial".into(), serial.to_string());
    attributes.insert("model".into(), entry.model.clone());
    attributes.insert("batch".into(), entry.batch.clone());
    registry
        .ensure_thing(&thing, &attributes, entry.thing_group.as_deref())
        .await?;
    registry
        .attach(&config.device_policy, &certificate.arn, &thing)
        .await?;
    let desired = config
        .model_defaults
        .get(&entry.model)
        .cloned()
        .unwrap_or_default();
    registry.ensure_shadow(&thing, &desired).await?;
    devices
        .record_certificate(&thing, &event.certificate_id)
        .await?;
    // Last: the device's retried connection must find its thing, policy, shadow and recorded
    // certificate (presence applies only that certificate's lifecycle events).
    registry
        .set_certificate_status(&event.certificate_id, "ACTIVE")
        .await?;
    tracing::info!(%serial, %thing, certificate_id = %event.certificate_id, "certificate activated");
    Ok(Outcome::Activated { serial, thing })
}

async fn revoke(
    registry: &impl Registry,
    event: &RegistrationEvent,
    reason: String,
) -> Result<Outcome, EdgeError> {
    registry
        .set_certificate_status(&event.certificate_id, "REVOKED")
        .await?;
    tracing::warn!(
        certificate_id = %event.certificate_id,
        ca_certificate_id = %event.ca_certificate_id,
        %reason,
        "certificate revoked"
    );
    Ok(Outcome::Revoked { reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_line_counts_the_outcome() {
        let revoked = Outcome::Revoked {
            reason: "unknown serial".into(),
        };
        let line: serde_json::Value = serde_json::from_str(&metrics_line(&revoked, 3)).unwrap();
        assert_eq!(line["Function"], "jitr");
        assert_eq!(
            (line["Activated"].as_u64(), line["Revoked"].as_u64()),
            (Some(0), Some(1))
        );
    }

    fn entry(status: DeviceStatus, cert: Option<&str>) -> ManifestEntry {
        shoal_core::test_util::manifest_entry("SN-1", status, cert)
    }

    #[test]
    fn who_may_be_registered() {
        let serial = Serial::parse("SN-1").unwrap();
        assert_eq!(
            refusal(&serial, Some(&entry(DeviceStatus::Pending, None)), "c1", ""),
            None
        );
        assert_eq!(
            refusal(
                &serial,
                Some(&entry(DeviceStatus::Provisioned, Some("c1"))),
                "c1",
                ""
            ),
            None
        );
        for (e, why) in [
            (None, "not in the factory manifest"),
            (
                Some(entry(DeviceStatus::Provisioned, Some("c0"))),
                "already provisioned to certificate c0",
            ),
            (Some(entry(DeviceStatus::Revoked, Some("c1"))), "is revoked"),
            (Some(entry(DeviceStatus::Retired, None)), "is retired"),
        ] {
            let reason = refusal(&serial, e.as_ref(), "c1", "").unwrap();
            assert!(reason.contains(why), "{reason}");
        }
        // A row naming the device key refuses a certificate it cannot read (tests/ checks keys).
        let keyed = ManifestEntry {
            proof: Some(format!("key-sha256:{}", "0".repeat(64)).parse().unwrap()),
            ..entry(DeviceStatus::Pending, None)
        };
        let reason = refusal(&serial, Some(&keyed), "c1", "no PEM").unwrap();
        assert!(reason.contains("proof of possession required"), "{reason}");
    }

    #[test]
    fn events_use_aws_field_names() {
        let e: RegistrationEvent = serde_json::from_value(serde_json::json!({
            "certificateId": "abc",
            "caCertificateId": "ca",
            "timestamp": 1795600000000_i64,
            "certificateStatus": "PENDING_ACTIVATION",
            "awsAccountId": "123456789012",
            "certificateRegistrationTimestamp": "1795600000000"
        }))
        .unwrap();
        assert_eq!(e.certificate_status, "PENDING_ACTIVATION");
    }

    #[test]
    fn model_defaults_parse() {
        let d: ModelDefaults = r#"{"th-v2": {"sample_interval_s": 60}}"#.parse().unwrap();
        assert_eq!(d.0["th-v2"]["sample_interval_s"], 60);
        assert!("[1]".parse::<ModelDefaults>().is_err());
    }

    #[test]
    fn model_defaults_past_the_shadow_limits_fail_at_load() {
        // Seven levels inside `desired`: AWS IoT allows six.
        let deep = r#"{"th-v2": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}}"#;
        let err = deep.parse::<ModelDefaults>().unwrap_err();
        assert!(
            err.contains("th-v2") && err.contains("nests 7 levels"),
            "{err}"
        );
        let large = format!(r#"{{"th-v2": {{"note": "{}"}}}}"#, "x".repeat(9_000));
        let err = large.parse::<ModelDefaults>().unwrap_err();
        assert!(err.contains("8192"), "{err}");
        let source = BTreeMap::from([
            (vars::DEVICE_POLICY, "shoal-device"),
            (vars::MANIFEST_TABLE, "shoal-manifest"),
            (vars::DEVICE_TABLE, "shoal-devices"),
            (vars::MODEL_DEFAULTS, deep),
        ]);
        let err = JitrConfig::from_source(&source).unwrap_err();
        assert!(err.to_string().contains(vars::MODEL_DEFAULTS), "{err}");
        // Six levels are fine.
        let six = r#"{"th-v2": {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}}"#;
        assert!(six.parse::<ModelDefaults>().is_ok());
    }
}
