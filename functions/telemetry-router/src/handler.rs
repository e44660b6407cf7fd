//! The Lambda handler: configuration read once at init, one routed message per invocation, the
//! counts logged as CloudWatch EMF metrics.

use serde_json::{Value, json};
use shoal_shared::clock::now_ms;
use shoal_shared::config::{self, BucketName, ConfigError, Source, TimestreamTarget, vars};
use shoal_shared::metrics::emf_counts;
use shoal_shared::telemetry::{Limits, PackedSchemas};

use crate::batch::{Trigger, route_kinesis, route_sqs};
use crate::router::{
    ArchiveStore, Counts, Edges, QuarantineStore, RetryLater, Rules, TelemetrySink,
    route_rule_event,
};

/// Default memory-store retention when the variable is unset: the template's default.
const DEFAULT_MEMORY_RETENTION_HOURS: u32 = 24;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterConfig {
    pub timestream: TimestreamTarget,
    pub archive_bucket: BucketName,
    pub memory_retention_ms: i64,
    pub packed_schemas: PackedSchemas,
}

impl RouterConfig {
    pub fn from_source(source: &impl Source) -> Result<Self, ConfigError> {
        let hours: u32 = config::optional(source, vars::TIMESTREAM_MEMORY_RETENTION_HOURS)?
            .unwrap_or(DEFAULT_MEMORY_RETENTION_HOURS);
        Ok(Self {
            timestream: TimestreamTarget::from_source(source)?,
            archive_bucket: config::required(source, vars::ARCHIVE_BUCKET)?,
            memory_retention_ms: i64::from(hours) * 3_600_000,
            packed_schemas: config::optional(source, vars::PACKED_SCHEMAS)?.unwrap_or_default(),
        })
    }
}

/// The EMF line for one invocation's counts.
pub fn metrics_line(timestamp_ms: i64, counts: &Counts) -> String {
    let mut values: Vec<(String, u64)> = vec![
        ("Received".into(), counts.received as u64),
        ("Accepted".into(), counts.accepted as u64),
        ("Quarantined".into(), counts.quarantined_total() as u64),
        ("ReturnedForRetry".into(), counts.retried as u64),
    ];
    for (reason, n) in &counts.quarantined {
        values.push((format!("Quarantined.{reason}"), *n as u64));
    }
    let values: Vec<(&str, u64)> = values.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    emf_counts(timestamp_ms, &[("Function", "telemetry-router")], &values)
}

/// Handles one invocation: a direct IoT rule event, an SQS batch or a Kinesis batch. Returns the
/// counts and the answer for Lambda. A direct event answers `Err` when it must be retried (Lambda
/// retries the asynchronous invocation; safe, since writes and quarantine keys are idempotent);
/// batches answer `batchItemFailures` instead.
pub async fn handle(
    event: Value,
    config: &RouterConfig,
    edges: &Edges<'_, impl TelemetrySink, impl QuarantineStore, impl ArchiveStore>,
    request_id: &str,
) -> (Counts, Result<Value, RetryLater>) {
    let now = now_ms();
    let rules = Rules {
        limits: Limits {
            now_ms: now,
            memory_retention_ms: config.memory_retention_ms,
        },
        schemas: &config.packed_schemas,
    };
    let trigger = Trigger::classify(event);
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
            quarantined: [("not_finite", 2), ("undecodable", 1)].into(),
            retried: 0,
        };
        let line: Value = serde_json::from_str(&metrics_line(1, &counts)).unwrap();
        assert_eq!(line["Received"], 5);
        assert_eq!(line["Quarantined"], 3);
        assert_eq!(line["Quarantined.not_finite"], 2);
        assert_eq!(line["ReturnedForRetry"], 0);
    }
}
