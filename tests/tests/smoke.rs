//! `shoal smoke` (the first check of a new endpoint: README, the local stack); this runs the same scenario
//! against the local endpoint and checks what it left behind.

use serde_json::json;
use shoal_aws::client::AwsResultExt;
use shoal_aws::config::TimestreamTarget;
use shoal_core::ids::ThingName;
use shoal_integration_tests::local::{self, unique_name};

#[tokio::test]
async fn smoke_scenario_creates_a_thing_updates_its_shadow_and_writes_telemetry() {
    let factory = local::factory().await;
    let thing = ThingName::parse(&unique_name("smoke")).unwrap();
    let target = TimestreamTarget {
        database: unique_name("smoke-db").parse().unwrap(),
        table: "telemetry".parse().unwrap(),
    };
    let mut printed = Vec::new();
    let report = shoal_cli::smoke::scenario(&factory, &thing, &target, &mut printed)
        .await
        .unwrap();
    let printed = String::from_utf8(printed).unwrap();

    assert_eq!(report.shadow_version, 1);
    assert_eq!(report.delta, json!({"led": "on"}));
    assert_eq!(report.records_ingested, 1);
    assert!(report.thing_arn.ends_with(&format!(":thing/{thing}")));
    for step in ["endpoint", "thing", "shadow", "timestream"] {
        assert!(
            printed.lines().any(|l| l.starts_with(step)),
            "no {step} line in:\n{printed}"
        );
    }

    // What it did is really there.
    let described = factory
        .iot()
        .describe_thing()
        .thing_name(thing.as_str())
        .send()
        .await
        .aws("iot", "DescribeThing")
        .unwrap();
    assert_eq!(described.thing_arn(), Some(report.thing_arn.as_str()));

    // A second run reuses the thing and table, and the shadow moves on to version 2.
    let again = shoal_cli::smoke::scenario(&factory, &thing, &target, &mut Vec::new())
        .await
        .unwrap();
    assert_eq!(again.shadow_version, 2);
    assert_eq!(again.thing_arn, report.thing_arn);
}
