//! The `update/documents` trigger. The IoT rule adds the topic to the message:
//! `SELECT *, topic() AS topic FROM '$aws/things/+/shadow/update/documents'` (and the named-shadow
//! rule with `$aws/things/+/shadow/name/+/update/documents`).

use std::future::Future;

use serde::Serialize;
use serde_json::Value;
use shoal_aws::config::{self, ConfigError, Source, TableName, vars};
use shoal_core::edge::{EdgeError, Retryable};
use shoal_core::ids::ThingName;
use shoal_core::shadow::document::Path;
use shoal_core::shadow::ota::{OTA_SHADOW, OtaReport, changed_report};
use shoal_core::shadow::policy::Conflict;
use shoal_core::shadow::store::{ShadowStore, WriteError, WriteOutcome, write_optimistic};
use shoal_core::shadow::sync::{ReportedFacts, plan, reported_facts};
use shoal_core::shadow::{DocumentsMessage, PolicyTable, ShadowRef};
use thiserror::Error;

/// What the registry records from shadows.
pub trait DeviceRecords: Sync {
    /// `Ok(false)`: a later version of this shadow was recorded already.
    fn record_facts(
        &self,
        shadow: &ShadowRef,
        version: u64,
        facts: &ReportedFacts,
    ) -> impl Future<Output = Result<bool, EdgeError>> + Send;
    /// Hands the report to the OTA flow. `Ok(false)`: a later report was recorded already.
    fn record_ota(
        &self,
        thing: &ThingName,
        version: u64,
        report: &OtaReport,
    ) -> impl Future<Output = Result<bool, EdgeError>> + Send;
    fn record_conflicts(
        &self,
        shadow: &ShadowRef,
        version: u64,
        conflicts: &[Conflict],
    ) -> impl Future<Output = Result<(), EdgeError>> + Send;
}

/// Everything the shadow-documents function reads from its environment, read once at init.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncConfig {
    /// `SHOAL_DEVICE_TABLE`: the device registry the reported facts go to.
    pub device_table: TableName,
    pub policies: PolicyTable,
    pub firmware_path: Path,
    pub config_path: Path,
    /// UpdateThingShadow attempts per message (re-read and re-plan after each 409).
    pub max_attempts: u32,
}

/// A dot path from the environment: `firmware.version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DotPath(pub Path);

impl std::str::FromStr for DotPath {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let path: Path = text.trim().split('.').map(str::to_owned).collect();
        if path.iter().any(String::is_empty) {
            return Err(format!("{text:?} is not a dot-separated attribute path"));
        }
        Ok(Self(path))
    }
}

impl SyncConfig {
    /// Reads the shadow-documents function's settings from `source`: `SHOAL_DEVICE_TABLE`
    /// (required), `SHOAL_SHADOW_POLICIES` (default: last writer wins everywhere),
    /// `SHOAL_REPORTED_FIRMWARE_PATH` (default `firmware.version`) and
    /// `SHOAL_REPORTED_CONFIG_PATH` (default `config`). Five UpdateThingShadow attempts per
    /// message.
    ///
    /// # Errors
    /// [`ConfigError`] naming the variable: `SHOAL_DEVICE_TABLE` missing or not a valid table
    /// name, policies that do not parse, or a path that is not dot-separated names.
    pub fn from_source(source: &impl Source) -> Result<Self, ConfigError> {
        let path = |name, default: &str| -> Result<Path, ConfigError> {
            Ok(config::optional::<DotPath>(source, name)?
                .map_or_else(|| default.split('.').map(str::to_owned).collect(), |p| p.0))
        };
        Ok(Self {
            device_table: config::required(source, vars::DEVICE_TABLE)?,
            policies: config::optional(source, vars::SHADOW_POLICIES)?.unwrap_or_default(),
            firmware_path: path(vars::REPORTED_FIRMWARE_PATH, "firmware.version")?,
            config_path: path(vars::REPORTED_CONFIG_PATH, "config")?,
            max_attempts: 5,
        })
    }
}

/// The summary's CloudWatch EMF line (dimension `Function` = `shadow-documents`), stamped
/// `timestamp_ms`: paths converged and superseded, conflicts, shadow writes and refused events.
pub fn metrics_line(summary: &SyncSummary, timestamp_ms: i64) -> String {
    let counts = [
        ("Converged", summary.converged.len() as u64),
        ("Superseded", summary.superseded.len() as u64),
        ("Conflicts", summary.conflicts as u64),
        ("ShadowWrites", u64::from(summary.written_version.is_some())),
        ("Rejected", u64::from(summary.rejected.is_some())),
    ];
    shoal_aws::metrics::emf_counts(timestamp_ms, &[("Function", "shadow-documents")], &counts)
}

/// The rule's event: the documents message with the topic it came on (`topic() AS topic`),
/// read without `#[serde(flatten)]`, which would buffer the whole document first.
pub type DocumentsEvent = DocumentsMessage;

/// What one message led to (the function's answer and its log line).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SyncSummary {
    pub shadow: String,
    pub version: u64,
    pub converged: Vec<String>,
    pub superseded: Vec<String>,
    pub conflicts: usize,
    /// The shadow version our update produced, if one was written.
    pub written_version: Option<u64>,
    pub attempts: u32,
    pub facts: Option<&'static str>,
    pub ota: Option<String>,
    /// Why the message was refused (malformed, over a limit); nothing else happened then.
    pub rejected: Option<String>,
}

/// Why a documents event could not be synced. Lambda retries an asynchronous invocation on any
/// error (every step here is idempotent); the `errorType` says whether that can help.
#[derive(Debug, Error)]
pub enum SyncError {
    /// A device-registry call failed.
    #[error(transparent)]
    Edge(#[from] EdgeError),
    /// The shadow write failed: a limit, a lost race, or a shadow call.
    #[error(transparent)]
    Write(WriteError),
}

impl Retryable for SyncError {
    fn is_retryable(&self) -> bool {
        match self {
            Self::Edge(e) => e.is_retryable(),
            Self::Write(e) => e.is_retryable(),
        }
    }
}

pub async fn handle(
    event: Value,
    config: &SyncConfig,
    store: &impl ShadowStore,
    records: &impl DeviceRecords,
) -> Result<SyncSummary, SyncError> {
    let parsed = serde_json::from_value::<DocumentsEvent>(event)
        .map_err(|e| format!("not a shadow documents event: {e}"))
        .and_then(|e| {
            let topic = e
                .topic
                .as_deref()
                .ok_or("the event has no topic (the rule's `topic() AS topic`)")?;
            ShadowRef::from_documents_topic(topic)
                .map(|shadow| (shadow, e))
                .map_err(|e| e.to_string())
        });
    let (shadow, message) = match parsed {
        Ok(ok) => ok,
        Err(reason) => {
            tracing::error!(%reason, "rejected documents event");
            return Ok(SyncSummary {
                rejected: Some(reason),
                ..SyncSummary::default()
            });
        }
    };
    let previous = message.previous.as_ref();
    let current = &message.current;
    let mut summary = SyncSummary {
        shadow: shadow.to_string(),
        version: current.version,
        ..SyncSummary::default()
    };

    // The `ota` shadow's desired state belongs to the OTA flow: hand the report over, and leave
    // its desired keys alone (the rollout clears or replaces them).
    if shadow.label() == OTA_SHADOW {
        summary.ota = match changed_report(previous, current) {
            None => None,
            Some(Err(reason)) => {
                tracing::warn!(%shadow, %reason, "invalid OTA report");
                Some(format!("invalid: {reason}"))
            }
            Some(Ok(report)) => {
                let recorded = records
                    .record_ota(&shadow.thing, current.version, &report)
                    .await?;
                Some(if recorded { "recorded" } else { "stale" }.to_owned())
            }
        };
        return Ok(summary);
    }
    if let Some(facts) = reported_facts(
        previous,
        current,
        &config.firmware_path,
        &config.config_path,
    ) {
        let recorded = records
            .record_facts(&shadow, current.version, &facts)
            .await?;
        summary.facts = Some(if recorded { "recorded" } else { "stale" });
    }

    let first = plan(previous, current, &config.policies);
    if !first.conflicts.is_empty() {
        records
            .record_conflicts(&shadow, current.version, &first.conflicts)
            .await?;
    }
    summary.conflicts = first.conflicts.len();
    let first_update = first.update(current.version);
    summary.converged = first.converged;
    summary.superseded = first.superseded;

    // The first attempt writes the plan made above; after a 409 the fresh shadow is planned anew.
    let mut first_update = Some(first_update);
    let written = write_optimistic(
        store,
        &shadow,
        Some(current.clone()),
        config.max_attempts,
        |doc| {
            let doc = doc?;
            match first_update.take() {
                Some(update) => update,
                None => plan(previous, doc, &config.policies).update(doc.version),
            }
        },
    )
    .await;
    match written {
        Ok(WriteOutcome::Written { version, attempts }) => {
            summary.written_version = Some(version);
            summary.attempts = attempts;
        }
        Ok(WriteOutcome::Unchanged { attempts }) => summary.attempts = attempts,
        Err(WriteError::Limit { source, .. }) => {
            summary.rejected = Some(source.to_string());
        }
        Err(e) => return Err(SyncError::Write(e)),
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::Fakes;
    use serde_json::json;

    fn config() -> SyncConfig {
        SyncConfig::from_source(&std::collections::BTreeMap::from([
            (vars::SHADOW_POLICIES, "mode=merge"),
            (vars::DEVICE_TABLE, "devices"),
        ]))
        .unwrap()
    }

    #[test]
    fn the_metrics_line_counts_the_summary() {
        let summary = SyncSummary {
            conflicts: 2,
            written_version: Some(7),
            ..SyncSummary::default()
        };
        let line: Value = serde_json::from_str(&metrics_line(&summary, 5)).unwrap();
        assert_eq!(line["Function"], "shadow-documents");
        assert_eq!(line["Conflicts"], 2);
        assert_eq!(line["ShadowWrites"], 1);
        assert_eq!(line["Rejected"], 0);
        assert_eq!(line["_aws"]["Timestamp"], 5);
    }

    fn event(topic: &str, previous: Value, current: Value) -> Value {
        json!({"topic": topic, "previous": previous, "current": current, "timestamp": 1})
    }

    const CLASSIC: &str = "$aws/things/d-1/shadow/update/documents";

    /// Fakes whose shadow is `current`, and the summary of handling `current`'s message.
    async fn run(topic: &str, current: Value, racing: Option<Value>) -> (Fakes, SyncSummary) {
        let fakes = Fakes::default();
        *fakes.shadow.lock().unwrap() = Some(serde_json::from_value(current.clone()).unwrap());
        fakes.racing.lock().unwrap().extend(racing);
        let summary = handle(
            event(topic, json!(null), current),
            &config(),
            &fakes,
            &fakes,
        )
        .await
        .unwrap();
        (fakes, summary)
    }

    #[tokio::test]
    async fn reached_desired_is_cleared_with_the_documents_version() {
        let current = json!({"state": {"desired": {"interval": 30, "mode": "eco"},
                             "reported": {"interval": 30, "mode": "off", "firmware": {"version": "1.0.0"}}},
                             "version": 7});
        let (fakes, summary) = run(CLASSIC, current, None).await;
        assert_eq!(summary.converged, ["interval"]);
        assert_eq!(summary.written_version, Some(8));
        assert_eq!(summary.conflicts, 1, "mode: merge keeps the cloud's eco");
        let shadow = fakes.shadow.lock().unwrap().clone().unwrap();
        assert_eq!(
            Value::Object(shadow.state.desired.unwrap()),
            json!({"mode": "eco"})
        );
        assert_eq!(
            fakes.facts.lock().unwrap()[0].1.firmware.as_deref(),
            Some("1.0.0")
        );
        assert_eq!(fakes.conflicts.lock().unwrap()[0].lost.value, json!("off"));
    }

    #[tokio::test]
    async fn a_racing_cloud_write_is_not_wiped_by_a_stale_clear() {
        let current = json!({"state": {"desired": {"mode": "eco"}, "reported": {"mode": "eco"}}, "version": 3});
        // An operator sets mode=boost just before our clear lands.
        let (fakes, summary) = run(CLASSIC, current, Some(json!({"mode": "boost"}))).await;
        assert_eq!(summary.written_version, None, "{summary:?}");
        assert_eq!(summary.attempts, 2);
        let shadow = fakes.shadow.lock().unwrap().clone().unwrap();
        assert_eq!(
            Value::Object(shadow.state.desired.unwrap()),
            json!({"mode": "boost"})
        );
    }

    #[tokio::test]
    async fn ota_reports_go_to_the_ota_flow_and_bad_events_are_refused() {
        let current = json!({"state": {"reported": {"status": "failed", "version": "2.0.0",
                             "running_version": "1.9.0", "reason": "verify: bad signature"}}, "version": 4});
        let topic = "$aws/things/d-1/shadow/name/ota/update/documents";
        let (fakes, summary) = run(topic, current, None).await;
        assert_eq!(summary.ota.as_deref(), Some("recorded"));
        assert_eq!(
            fakes.ota.lock().unwrap()[0].1.running_version.as_deref(),
            Some("1.9.0")
        );

        let bad = handle(json!({"topic": "x/y"}), &config(), &fakes, &fakes)
            .await
            .unwrap();
        assert!(
            bad.rejected
                .unwrap()
                .contains("not a shadow documents event")
        );
        let bad_topic = handle(
            event("a/b", json!(null), json!({"state": {}, "version": 1})),
            &config(),
            &fakes,
            &fakes,
        )
        .await
        .unwrap();
        assert!(
            bad_topic
                .rejected
                .unwrap()
                .contains("not a shadow update/documents topic")
        );
    }
}
