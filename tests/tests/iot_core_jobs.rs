//! The IoT Jobs device API on the local IoT Core, for jobs created in the registry (moto's
//! CreateJob): a device lists its pending executions, starts the next one with its document,
//! reports it done and is told the next, for a job that targets it and one that targets a
//! thing group it belongs to.

use serde_json::json;
use shoal_integration_tests::local::{self, unique_name};
use shoal_integration_tests::mqtt5::{Client, certificate};

#[tokio::test]
async fn a_device_works_through_its_jobs_on_the_reserved_topics() {
    let iot = local::factory().await.iot();
    let thing = unique_name("jobs");
    let thing_arn = iot
        .create_thing()
        .thing_name(&thing)
        .send()
        .await
        .expect("CreateThing")
        .thing_arn
        .unwrap();
    let group = unique_name("rollout");
    let group_arn = iot
        .create_thing_group()
        .thing_group_name(&group)
        .send()
        .await
        .expect("CreateThingGroup")
        .thing_group_arn
        .unwrap();
    iot.add_thing_to_thing_group()
        .thing_name(&thing)
        .thing_group_name(&group)
        .send()
        .await
        .expect("AddThingToThingGroup");
    let direct = unique_name("job-direct");
    iot.create_job()
        .job_id(&direct)
        .targets(&thing_arn)
        .document(json!({"operation": "reboot"}).to_string())
        .send()
        .await
        .expect("CreateJob");
    // Created a second later, so the order of the queue is certain.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let by_group = unique_name("job-group");
    iot.create_job()
        .job_id(&by_group)
        .targets(&group_arn)
        .target_selection(aws_sdk_iot::types::TargetSelection::Continuous)
        .document(json!({"operation": "ota", "version": "1.4.0"}).to_string())
        .send()
        .await
        .expect("CreateJob");

    let mut device = Client::connect(&thing, &certificate().await).await;
    let jobs = format!("$aws/things/{thing}/jobs");
    device.subscribe(&format!("{jobs}/#")).await;

    device
        .publish(&format!("{jobs}/get"), r#"{"clientToken":"g-1"}"#)
        .await;
    let pending = device.next_on(&format!("{jobs}/get/accepted")).await;
    assert_eq!(pending["clientToken"], "g-1");
    let queued: Vec<&str> = pending["queuedJobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["jobId"].as_str())
        .collect();
    assert_eq!(queued, [direct.as_str(), by_group.as_str()], "{pending}");

    device
        .publish(
            &format!("{jobs}/start-next"),
            r#"{"statusDetails":{"step":"1"}}"#,
        )
        .await;
    let started = device.next_on(&format!("{jobs}/start-next/accepted")).await;
    assert_eq!(started["execution"]["jobId"], direct.as_str());
    assert_eq!(started["execution"]["status"], "IN_PROGRESS");
    assert_eq!(
        started["execution"]["jobDocument"],
        json!({"operation": "reboot"})
    );
    let version = started["execution"]["versionNumber"].as_u64().unwrap();

    device
        .publish(
            &format!("{jobs}/{direct}/update"),
            json!({"status": "SUCCEEDED", "expectedVersion": version, "clientToken": "u-1"})
                .to_string(),
        )
        .await;
    let updated = device
        .next_on(&format!("{jobs}/{direct}/update/accepted"))
        .await;
    assert_eq!(updated["clientToken"], "u-1");
    let next = device.next_on(&format!("{jobs}/notify-next")).await;
    assert_eq!(next["execution"]["jobId"], by_group.as_str());
    assert_eq!(next["execution"]["jobDocument"]["version"], "1.4.0");

    // A terminal execution stays as it is.
    device
        .publish(&format!("{jobs}/{direct}/update"), r#"{"status":"FAILED"}"#)
        .await;
    let refused = device
        .next_on(&format!("{jobs}/{direct}/update/rejected"))
        .await;
    assert_eq!(refused["code"], "InvalidStateTransition");
}
