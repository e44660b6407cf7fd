//! CloudWatch embedded metric format (EMF): one JSON log line per invocation turns into metrics
//! without a PutMetricData call. Spec: AWS CloudWatch "Embedded metric format specification".

use serde_json::{Map, Value, json};

/// Metrics Shoal publishes, under one namespace.
pub const NAMESPACE: &str = "Shoal";

/// An EMF line with `dimensions` (name → value, all used as one dimension set) and `counts`.
pub fn emf_counts(
    timestamp_ms: i64,
    dimensions: &[(&str, &str)],
    counts: &[(&str, u64)],
) -> String {
    let mut line = Map::new();
    line.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [dimensions.iter().map(|(k, _)| *k).collect::<Vec<_>>()],
                "Metrics": counts
                    .iter()
                    .map(|(name, _)| json!({"Name": name, "Unit": "Count"}))
                    .collect::<Vec<_>>(),
            }]
        }),
    );
    for (k, v) in dimensions {
        line.insert((*k).into(), Value::from(*v));
    }
    for (k, v) in counts {
        line.insert((*k).into(), Value::from(*v));
    }
    Value::Object(line).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emf_line_declares_every_metric_and_carries_its_value() {
        let line = emf_counts(
            1_764_064_800_000,
            &[("Function", "telemetry-router")],
            &[("Received", 10), ("Accepted", 8), ("Quarantined", 2)],
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        let cw = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(v["_aws"]["Timestamp"], 1_764_064_800_000_i64);
        assert_eq!(cw["Namespace"], "Shoal");
        assert_eq!(cw["Dimensions"], json!([["Function"]]));
        assert_eq!(cw["Metrics"].as_array().unwrap().len(), 3);
        assert_eq!(
            cw["Metrics"][1],
            json!({"Name": "Accepted", "Unit": "Count"})
        );
        assert_eq!(v["Function"], "telemetry-router");
        assert_eq!(v["Received"], 10);
        assert_eq!(v["Quarantined"], 2);
    }
}
