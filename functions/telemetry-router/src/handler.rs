//! The Lambda handler: configuration read once at init, one invocation's trigger (a direct message
//! or an SQS or Kinesis batch) routed, the counts logged as CloudWatch EMF metrics.

use serde_json::json;
use shoal_aws::config::{self, BucketName, ConfigError, Source, TimestreamTarget, vars};
use shoal_aws::metrics::emf_counts;
use shoal_core::clock::now_ms;
use shoal_core::telemetry::{Limits, MeasureTypes, PackedSchemas, TelemetryApps};

use crate::batch::{Delivery, Trigger, route_kinesis, route_sqs};
use crate::router::{
    ArchiveStore, Counts, Deadline, Edges, QuarantineStore, RetryLater, Rules, TelemetrySink,
    route_rule_event,
};

/// Default memory-store retention when the variable is unset: the template's default.
const DEFAULT_MEMORY_RETENTION_HOURS: u32 = 24;
/// Default magnetic-store retention when magnetic-store writes are on: the template's default.
const DEFAULT_MAGNETIC_RETENTION_DAYS: u32 = 365;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterConfig {
    pub timestream: TimestreamTarget,
    pub archive_bucket: BucketName,
    pub memory_retention_ms: i64,
    /// Set when the table takes magnetic-store writes: readings older than the memory store and
    /// younger than this are written (late data); `None`: they are quarantined.
    pub magnetic_retention_ms: Option<i64>,
    pub packed_schemas: PackedSchemas,
    pub measure_types: MeasureTypes,
    /// How the template delivers telemetry, when it says (`SHOAL_TELEMETRY_DELIVERY`).
    pub delivery: Option<Delivery>,
    /// The `<app>` levels accepted (`SHOAL_TELEMETRY_APPS`); unset: any.
    pub telemetry_apps: TelemetryApps,
}

/// `true` / `false` for an on/off variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Switch(bool);

impl std::str::FromStr for Switch {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(Switch(true)),
            "false" => Ok(Switch(false)),
            _ => Err("must be true or false".into()),
        }
    }
}

impl RouterConfig {
    /// Reads the telemetry router's settings from `source`: `SHOAL_TIMESTREAM_DATABASE`,
    /// `SHOAL_TIMESTREAM_TABLE` and `SHOAL_ARCHIVE_BUCKET` (required);
    /// `SHOAL_TIMESTREAM_MEMORY_RETENTION_HOURS` (default 24), `SHOAL_TIMESTREAM_MAGNETIC_WRITES`
    /// (`true`/`false`, default off) and `SHOAL_TIMESTREAM_MAGNETIC_RETENTION_DAYS` (default 365,
    /// used only with magnetic writes on); `SHOAL_PACKED_SCHEMAS`, `SHOAL_MEASURE_TYPES`,
    /// `SHOAL_TELEMETRY_DELIVERY` and `SHOAL_TELEMETRY_APPS` (optional).
    ///
    /// # Errors
    /// [`ConfigError`] naming the missing or malformed variable.
    pub fn from_source(source: &impl Source) -> Result<Self, ConfigError> {
        let hours: u32 = config::optional(source, vars::TIMESTREAM_MEMORY_RETENTION_HOURS)?
            .unwrap_or(DEFAULT_MEMORY_RETENTION_HOURS);
        let magnetic = config::optional::<Switch>(source, vars::TIMESTREAM_MAGNETIC_WRITES)?
            .is_some_and(|s| s.0);
        let days: u32 = config::optional(source, vars::TIMESTREAM_MAGNETIC_RETENTION_DAYS)?
            .unwrap_or(DEFAULT_MAGNETIC_RETENTION_DAYS);
        Ok(Self {
            timestream: TimestreamTarget::from_source(source)?,
            archive_bucket: config::required(source, vars::ARCHIVE_BUCKET)?,
            memory_retention_ms: i64::from(hours) * 3_600_000,
            magnetic_retention_ms: magnetic.then(|| i64::from(days) * 86_400_000),
            packed_schemas: config::optional(source, vars::PACKED_SCHEMAS)?.unwrap_or_default(),
            measure_types: config::optional(source, vars::MEASURE_TYPES)?.unwrap_or_default(),
            delivery: config::optional(source, vars::TELEMETRY_DELIVERY)?,
            telemetry_apps: config::optional(source, vars::TELEMETRY_APPS)?.unwrap_or_default(),
        })
    }
}

/// The EMF line for one invocation's counts.
pub fn metrics_line(timestamp_ms: i64, counts: &Counts) -> String {
    let mut values: Vec<(String, u64)> = vec![
        ("Received".into(), counts.received as u64),
        ("Accepted".into(), counts.accepted as u64),
        ("AcceptedLate".into(), counts.accepted_late as u64),
        ("Quarantined".into(), counts.quarantined_total() as u64),
        ("ReturnedForRetry".into(), counts.retried as u64),
    ];
    for (reason, n) in &counts.quarantined {
        values.push((format!("Quarantined.{reason}"), *n as u64));
    }
    let values: Vec<(&str, u64)> = values.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    emf_counts(timestamp_ms, &[("Function", "telemetry-router")], &values)
}

/// Handles one invocation: a direct IoT rule event, an SQS batch or a Kinesis batch, as
/// [`Trigger::from_slice`] read it from the bytes Lambda delivered. Returns the counts and the
/// answer for Lambda. A direct event answers `Err` when it must be retried (Lambda
/// retries the asynchronous invocation; safe, since writes and quarantine keys are idempotent);
/// batches answer `batchItemFailures` instead. No new work starts once `deadline` has expired.
pub async fn handle(
    trigger: Trigger,
    config: &RouterConfig,
    edges: &Edges<'_, impl TelemetrySink, impl QuarantineStore, impl ArchiveStore>,
    request_id: &str,
    deadline: &dyn Deadline,
) -> (Counts, Result<serde_json::Value, RetryLater>) {
    let now = now_ms();
    let rules = Rules {
        limits: Limits {
            now_ms: now,
            memory_retention_ms: config.memory_retention_ms,
            magnetic_retention_ms: config.magnetic_retention_ms,
        },
        schemas: &config.packed_schemas,
        types: &config.measure_types,
        apps: &config.telemetry_apps,
        deadline,
    };
    let (counts, answer) = match trigger {
        Trigger::Direct(event) => match route_rule_event(event, &rules, edges, request_id).await {
            Ok(counts) => {
                let summary = json!(counts);
                (counts, Ok(summary))
            }
            Err(retry) => (retry.counts.clone(), Err(retry)),
        },
        Trigger::Sqs(batch) => {
            let (counts, response) = route_sqs(batch, &rules, edges, request_id).await;
            (counts, Ok(json!(response)))
        }
        Trigger::Kinesis(batch) => {
            let (counts, response) = route_kinesis(batch, &rules, edges, request_id).await;
            (counts, Ok(json!(response)))
        }
    };
    // EMF must be a top-level JSON line on stdout, not wrapped in a tracing event.
    println!("{}", metrics_line(now, &counts));
    tracing::info!(
        received = counts.received,
        accepted = counts.accepted,
        accepted_late = counts.accepted_late,
        quarantined = counts.quarantined_total(),
        retried = counts.retried,
        "invocation routed"
    );
    (counts, answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn config_names_what_is_missing_or_malformed() {
        let full: BTreeMap<&str, &str> = [
            (vars::TIMESTREAM_DATABASE, "shoal_dev"),
            (vars::TIMESTREAM_TABLE, "telemetry"),
            (vars::ARCHIVE_BUCKET, "shoal-dev-archive"),
        ]
        .into();
        let config = RouterConfig::from_source(&full).unwrap();
        assert_eq!(config.memory_retention_ms, 24 * 3_600_000);
        assert_eq!(config.magnetic_retention_ms, None);
        assert_eq!(config.measure_types, MeasureTypes::empty());

        let mut late = full.clone();
        late.insert(vars::TIMESTREAM_MAGNETIC_WRITES, "true");
        let config = RouterConfig::from_source(&late).unwrap();
        assert_eq!(config.magnetic_retention_ms, Some(365 * 86_400_000));
        late.insert(vars::TIMESTREAM_MAGNETIC_RETENTION_DAYS, "30");
        let config = RouterConfig::from_source(&late).unwrap();
        assert_eq!(config.magnetic_retention_ms, Some(30 * 86_400_000));
        late.insert(vars::TIMESTREAM_MAGNETIC_WRITES, "yes");
        let err = RouterConfig::from_source(&late).unwrap_err();
        assert!(
            err.to_string().contains("SHOAL_TIMESTREAM_MAGNETIC_WRITES"),
            "{err}"
        );

        let mut typed = full.clone();
        typed.insert(vars::MEASURE_TYPES, "bigint=rssi;varchar=fw");
        let config = RouterConfig::from_source(&typed).unwrap();
        assert_eq!(
            config.measure_types.declared("rssi"),
            Some(shoal_core::telemetry::MeasureType::Bigint)
        );
        typed.insert(vars::MEASURE_TYPES, "int=rssi");
        let err = RouterConfig::from_source(&typed).unwrap_err();
        assert!(err.to_string().contains("SHOAL_MEASURE_TYPES"), "{err}");

        assert_eq!(config.packed_schemas, PackedSchemas::default());
        let mut with_schemas = full.clone();
        with_schemas.insert(vars::PACKED_SCHEMAS, "th-v2=temp,hum");
        let config = RouterConfig::from_source(&with_schemas).unwrap();
        assert_eq!(config.packed_schemas.fields("th-v2").unwrap().len(), 2);
        with_schemas.insert(vars::PACKED_SCHEMAS, "th-v2=temp,2hum");
        let err = RouterConfig::from_source(&with_schemas).unwrap_err();
        assert!(err.to_string().contains("SHOAL_PACKED_SCHEMAS"), "{err}");

        let mut bad = full.clone();
        bad.insert(vars::TIMESTREAM_MEMORY_RETENTION_HOURS, "a day");
        let err = RouterConfig::from_source(&bad).unwrap_err();
        assert!(
            err.to_string()
                .contains("SHOAL_TIMESTREAM_MEMORY_RETENTION_HOURS"),
            "{err}"
        );

        let mut missing = full;
        missing.remove(vars::ARCHIVE_BUCKET);
        assert_eq!(
            RouterConfig::from_source(&missing).unwrap_err().to_string(),
            "environment variable SHOAL_ARCHIVE_BUCKET is not set"
        );
    }

    #[test]
    fn metrics_line_counts_each_reason() {
        let counts = Counts {
            received: 5,
            accepted: 2,
            accepted_late: 1,
            quarantined: [("not_finite", 2), ("undecodable", 1)].into(),
            retried: 0,
        };
        let line: serde_json::Value = serde_json::from_str(&metrics_line(1, &counts)).unwrap();
        assert_eq!(line["AcceptedLate"], 1);
        assert_eq!(line["Received"], 5);
        assert_eq!(line["Quarantined"], 3);
        assert_eq!(line["Quarantined.not_finite"], 2);
        assert_eq!(line["ReturnedForRetry"], 0);
    }
}
