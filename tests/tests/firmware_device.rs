//! The device core (`shoal-firmware`) against the local stack, as a device runs it: provisioning
//! by claim through the template's hook, then the new identity connecting as its thing and
//! syncing its shadow with the cloud — a desired change made through the data plane applied as
//! far as the device can, and what runs reported.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_iotdataplane::primitives::Blob;
use serde_json::{Map, Value, json};
use shoal_firmware::provisioning::{Claim, KeySource, Provisioning, Step};
use shoal_firmware::sampling::Backoff;
use shoal_firmware::shadow::{Apply, ShadowSync};
use shoal_integration_tests::local;
use shoal_integration_tests::mqtt5::Client;
use shoal_integration_tests::provisioned::{claim_certificate, manifest_row_in};

/// A device's configuration: sampling intervals between 5 and 3,600 s.
#[derive(Default)]
struct Config(BTreeMap<String, Value>);

impl Apply for Config {
    fn apply(&mut self, key: &str, desired: &Value) -> Result<Value, String> {
        match (key, desired.as_u64()) {
            ("interval_s", Some(s)) => {
                let running = json!(s.clamp(5, 3_600));
                self.0.insert(key.into(), running.clone());
                Ok(running)
            }
            _ => Err(format!("{key} is not configurable")),
        }
    }

    fn running(&self) -> Map<String, Value> {
        self.0.clone().into_iter().collect()
    }
}

#[tokio::test]
async fn a_device_core_provisions_by_claim_then_syncs_its_shadow_with_the_cloud() {
    let serial = manifest_row_in("", "hardware=rev-b").await;
    let mut claim_client = Client::connect(
        &format!("claim.{}", uuid::Uuid::new_v4().simple()),
        &claim_certificate().await,
    )
    .await;
    let mut provisioning = Provisioning::new(
        Claim {
            template: "shoal-fleet".into(),
            serial: serial.clone(),
            factory_secret: None,
            key: KeySource::Aws,
        },
        Backoff {
            base_ms: 200,
            cap_ms: 2_000,
        },
    );
    for filter in provisioning.subscriptions() {
        claim_client.subscribe(&filter).await;
    }
    let mut steps = provisioning.start();
    let identity = loop {
        let step = steps.remove(0);
        match step {
            Step::Publish { topic, payload } => claim_client.publish(&topic, payload).await,
            Step::Wait(_) => {
                let (topic, answer) = claim_client.next_json().await;
                steps = provisioning.handle(&topic, answer.to_string().as_bytes(), 7);
            }
            Step::Keep(identity) => break identity,
            Step::Refused(why) => panic!("refused: {why}"),
        }
    };
    assert_eq!(identity.thing_name, serial);

    // The identity connects as its thing; its shadow syncs with the cloud's.
    let device_pair = (
        identity.certificate_pem.into_bytes(),
        identity.private_key.expect("AWS made the key").into_bytes(),
    );
    let mut device = Client::connect(&serial, &device_pair).await;
    let mut sync = ShadowSync::new(&serial, None);
    for filter in sync.subscriptions() {
        device.subscribe(&filter).await;
    }
    let mut config = Config::default();
    let get = sync.connected();
    device.publish(&get.topic, get.payload).await;
    // No shadow yet: the device creates it with what it runs (nothing configured yet: {}).
    let (topic, answer) = device.next_json().await;
    for out in sync
        .handle(&topic, answer.to_string().as_bytes(), &mut config)
        .1
    {
        device.publish(&out.topic, out.payload).await;
    }

    let data = local::iot_core_data_plane().await;
    data.update_thing_shadow()
        .thing_name(&serial)
        .payload(Blob::new(
            json!({"state": {"desired": {"interval_s": 1}}}).to_string(),
        ))
        .send()
        .await
        .expect("UpdateThingShadow");
    // The delta reaches the device, which applies what it can (5 s, not 1) and reports that.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the delta within 20 s"
        );
        let (topic, answer) = device.next_json().await;
        let (_, out) = sync.handle(&topic, answer.to_string().as_bytes(), &mut config);
        for publish in &out {
            device
                .publish(&publish.topic, publish.payload.clone())
                .await;
        }
        if !out.is_empty() && topic.ends_with("/update/delta") {
            break;
        }
    }
    assert_eq!(config.0["interval_s"], json!(5));
    // The report is what runs (5), never what was asked (1). (The deployed shadow-documents
    // function then resolves the disagreement by the template's policy, `*=lww`, which compares
    // the metadata's second-granular timestamps: not asserted here.)
    loop {
        let got = data
            .get_thing_shadow()
            .thing_name(&serial)
            .send()
            .await
            .expect("GetThingShadow");
        let document: Value = serde_json::from_slice(&got.payload.unwrap().into_inner()).unwrap();
        let reported = &document["state"]["reported"]["interval_s"];
        assert_ne!(
            reported,
            &json!(1),
            "never what was merely asked: {document}"
        );
        if reported == &json!(5) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reported within 20 s: {document}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The cloud's Jobs document (what the OTA advancer creates) is the device core's OTA request:
/// the two sides of the contract read the same fields.
#[test]
fn the_advancers_job_document_is_the_device_cores_ota_request() {
    let image = shoal_core::test_util::firmware_image("1.10.0");
    let document: Value = serde_json::from_str(&shoal_core::rollout::delivery::job_document(
        "r-7",
        &image,
        "fw",
        "eu-west-1",
    ))
    .unwrap();
    let request = shoal_firmware::ota::request_from_job(&document).expect("an OTA request");
    assert_eq!(request.rollout, "r-7");
    assert_eq!(request.version.to_string(), "1.10.0");
    assert_eq!(request.sha256, image.sha256);
    assert_eq!(request.signature, image.signature);
    assert_eq!(request.size, image.size);
}

/// A `vclock` path end to end through the two sides' code: the device core's report (its clock
/// joins the cloud's and moves its own counter) is read by the cloud's sync plan as a write that
/// saw the cloud's — the device's value stands, nothing is a conflict — while a report from a
/// device that had not seen the cloud's last write is a concurrent one, decided by the rule.
#[test]
fn the_device_cores_vector_clocks_are_what_the_clouds_sync_plan_reads() {
    use shoal_core::shadow::document::ShadowDocument;
    use shoal_core::shadow::policy::PolicyTable;
    use shoal_core::shadow::sync::plan;

    let policies: PolicyTable = "schedule.start=vclock:cloud-wins;*=lww".parse().unwrap();
    let desired = json!({"schedule": {"start": 5}, "_clock": {"schedule.start": {"cloud": 2}}});
    let before =
        json!({"schedule": {"start": 3}, "_clock": {"schedule.start": {"cloud": 1, "device": 1}}});
    let document = |reported: &Value, version: u64| -> ShadowDocument {
        serde_json::from_value(json!({
            "state": {"desired": desired, "reported": reported},
            "metadata": {"desired": {"schedule": {"start": {"timestamp": 100}}},
                         "reported": {"schedule": {"start": {"timestamp": 90 + version}}}},
            "version": version,
        }))
        .unwrap()
    };
    /// A device that runs 4 whatever is asked (a value clamped by its hardware).
    struct Clamped;
    impl Apply for Clamped {
        fn apply(&mut self, _key: &str, _desired: &Value) -> Result<Value, String> {
            Ok(json!({"start": 4}))
        }
        fn running(&self) -> Map<String, Value> {
            Map::new()
        }
    }
    let previous = document(&before, 4);

    // The device saw the cloud's write (clock cloud:2) and reports what it runs.
    let mut sync = ShadowSync::new("t-1", None).with_vclock_paths(["schedule.start".into()]);
    let got = json!({"version": 4, "state": {"desired": desired, "reported": before,
                     "delta": {"schedule": {"start": 5}, "_clock": desired["_clock"]}}});
    let (_, out) = sync.handle(
        "$aws/things/t-1/shadow/get/accepted",
        got.to_string().as_bytes(),
        &mut Clamped,
    );
    let report: Value = serde_json::from_slice(&out[0].payload).unwrap();
    let mut reported = before.clone();
    for (key, value) in report["state"]["reported"].as_object().unwrap() {
        reported[key] = value.clone();
    }
    let decided = plan(Some(&previous), &document(&reported, 5), &policies);
    assert!(decided.conflicts.is_empty(), "{decided:?}");
    assert_eq!(
        decided.superseded,
        vec!["schedule.start".to_string()],
        "{decided:?}"
    );

    // A device that never saw clock cloud:2 (its own clock only) wrote concurrently: the rule
    // (cloud-wins) decides and the losing value is kept as a conflict.
    let mut stale = before.clone();
    stale["schedule"]["start"] = json!(4);
    stale["_clock"] = json!({"schedule.start": {"cloud": 1, "device": 2}});
    let decided = plan(Some(&previous), &document(&stale, 5), &policies);
    assert_eq!(decided.conflicts.len(), 1, "{decided:?}");
}
