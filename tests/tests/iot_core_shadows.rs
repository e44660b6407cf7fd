//! The local IoT Core's Device Shadow service, as a device on MQTT and the cloud on the HTTP data
//! plane (the AWS SDK's `iot-data` client pointed at the core) see it: one service, so a desired
//! change made through the API reaches the device as `update/delta`, a device's report is read
//! back through the API, and versions, client tokens, conflicts and deletions behave as AWS's.
//! The template's shadow-documents rule and function run beside it, as deployed.

use aws_sdk_iotdataplane::primitives::Blob;
use serde_json::{Value, json};
use shoal_integration_tests::local::{self, unique_name};
use shoal_integration_tests::mqtt5::{Client, certificate};

fn body(blob: Option<Blob>) -> Value {
    serde_json::from_slice(&blob.expect("a payload").into_inner()).expect("JSON")
}

#[tokio::test]
async fn a_cloud_desired_change_reaches_the_device_as_delta_and_its_report_reads_back() {
    let thing = unique_name("shadow");
    let data = local::iot_core_data_plane().await;
    let mut device = Client::connect(&thing, &certificate().await).await;
    let shadow = format!("$aws/things/{thing}/shadow");
    device.subscribe(&format!("{shadow}/#")).await;

    // The cloud sets desired through UpdateThingShadow: the device gets accepted, delta and
    // documents on MQTT.
    let answer = data
        .update_thing_shadow()
        .thing_name(&thing)
        .payload(Blob::new(
            json!({"state": {"desired": {"interval_s": 30, "led": "on"}}}).to_string(),
        ))
        .send()
        .await
        .expect("UpdateThingShadow");
    assert_eq!(body(answer.payload)["version"], 1);
    let delta = device.next_on(&format!("{shadow}/update/delta")).await;
    assert_eq!(delta["state"], json!({"interval_s": 30, "led": "on"}));
    assert_eq!(delta["version"], 1);
    assert!(delta["metadata"]["interval_s"]["timestamp"].is_u64());

    // The device reports half of it over MQTT, with a client token.
    device
        .publish(
            &format!("{shadow}/update"),
            json!({"state": {"reported": {"interval_s": 30, "led": "off"}}, "clientToken": "r-1"})
                .to_string(),
        )
        .await;
    let accepted = device.next_on(&format!("{shadow}/update/accepted")).await;
    assert_eq!(accepted["clientToken"], "r-1");
    assert_eq!(accepted["version"], 2);
    assert_eq!(accepted["state"]["reported"]["led"], "off");
    let documents = device.next_on(&format!("{shadow}/update/documents")).await;
    assert_eq!(documents["previous"]["version"], 1);
    assert_eq!(documents["current"]["state"]["reported"]["interval_s"], 30);

    // The template's ShadowDocumentsRule hands those documents to the deployed shadow-documents
    // function (in the local Lambda host), which clears the desired value the device reached
    // (`interval_s`) through the data plane: version 3, published like any update.
    let converged = loop {
        let documents = device.next_on(&format!("{shadow}/update/documents")).await;
        if documents["current"]["version"] == 3 {
            break documents;
        }
    };
    assert_eq!(
        converged["current"]["state"]["desired"],
        json!({"led": "on"}),
        "{converged}"
    );

    // The cloud reads it back: delta is what is still to do.
    let got = data
        .get_thing_shadow()
        .thing_name(&thing)
        .send()
        .await
        .expect("GetThingShadow");
    let got = body(got.payload);
    assert_eq!(got["version"], 3);
    assert_eq!(got["state"]["delta"], json!({"led": "on"}));
    assert_eq!(got["state"]["reported"]["interval_s"], 30);

    // A stale version is a conflict on both sides, and changes nothing.
    device
        .publish(
            &format!("{shadow}/update"),
            json!({"state": {"reported": {"led": "on"}}, "version": 1, "clientToken": "r-2"})
                .to_string(),
        )
        .await;
    let rejected = device.next_on(&format!("{shadow}/update/rejected")).await;
    assert_eq!(rejected["code"], 409);
    assert_eq!(rejected["clientToken"], "r-2");
    let conflict = data
        .update_thing_shadow()
        .thing_name(&thing)
        .payload(Blob::new(
            r#"{"state":{"desired":{"led":"off"}},"version":1}"#,
        ))
        .send()
        .await
        .expect_err("a stale version");
    assert!(
        conflict
            .as_service_error()
            .is_some_and(|e| e.is_conflict_exception()),
        "{conflict:?}"
    );

    // A cloud read is the caller's alone; a device's get is answered on MQTT.
    data.get_thing_shadow()
        .thing_name(&thing)
        .send()
        .await
        .expect("GetThingShadow");
    device
        .publish(&format!("{shadow}/get"), r#"{"clientToken":"g-1"}"#)
        .await;
    // (Subscribed to `shadow/#`, the device also gets its own request.)
    let (topic, document) = loop {
        let (topic, document) = device.next_json().await;
        if topic != format!("{shadow}/get") {
            break (topic, document);
        }
    };
    assert_eq!(topic, format!("{shadow}/get/accepted"));
    assert_eq!(
        document["clientToken"], "g-1",
        "the next answer is the device's own"
    );
    assert_eq!(document["version"], 3);

    // The service's answer topics are the service's: a client's publish there is refused.
    device
        .publish(&format!("{shadow}/update/accepted"), r#"{"state":{}}"#)
        .await;
    let reason = device.refused_puback().await;
    assert_eq!(
        reason,
        rumqttc::v5::mqttbytes::v5::PubAckReason::NotAuthorized
    );
}

#[tokio::test]
async fn named_shadows_are_listed_and_a_deletion_reaches_mqtt() {
    let thing = unique_name("named");
    let data = local::iot_core_data_plane().await;
    let mut device = Client::connect(&thing, &certificate().await).await;
    device
        .subscribe(&format!(
            "$aws/things/{thing}/shadow/name/+/delete/accepted"
        ))
        .await;
    for name in ["ota", "config"] {
        data.update_thing_shadow()
            .thing_name(&thing)
            .shadow_name(name)
            .payload(Blob::new(r#"{"state":{"reported":{"ok":true}}}"#))
            .send()
            .await
            .expect("UpdateThingShadow");
    }
    let listed = data
        .list_named_shadows_for_thing()
        .thing_name(&thing)
        .send()
        .await
        .expect("ListNamedShadowsForThing");
    assert_eq!(listed.results(), ["config", "ota"]);
    let classic = data
        .get_thing_shadow()
        .thing_name(&thing)
        .send()
        .await
        .expect_err("no classic shadow was written");
    assert!(
        classic
            .as_service_error()
            .is_some_and(|e| e.is_resource_not_found_exception()),
        "{classic:?}"
    );

    data.delete_thing_shadow()
        .thing_name(&thing)
        .shadow_name("ota")
        .send()
        .await
        .expect("DeleteThingShadow");
    let deleted = device
        .next_on(&format!(
            "$aws/things/{thing}/shadow/name/ota/delete/accepted"
        ))
        .await;
    assert_eq!(deleted["version"], 1);
    let listed = data
        .list_named_shadows_for_thing()
        .thing_name(&thing)
        .send()
        .await
        .expect("ListNamedShadowsForThing");
    assert_eq!(listed.results(), ["config"]);

    // An update after the deletion follows the deleted document's version.
    let again = data
        .update_thing_shadow()
        .thing_name(&thing)
        .shadow_name("ota")
        .payload(Blob::new(r#"{"state":{"reported":{"ok":false}}}"#))
        .send()
        .await
        .expect("UpdateThingShadow");
    assert_eq!(body(again.payload)["version"], 2);
}

#[tokio::test]
async fn a_data_plane_publish_reaches_mqtt_subscribers() {
    let thing = unique_name("pub");
    let data = local::iot_core_data_plane().await;
    let mut device = Client::connect(&thing, &certificate().await).await;
    let topic = format!("cmd/{thing}/reboot");
    device.subscribe(&topic).await;
    data.publish()
        .topic(&topic)
        .qos(1)
        .payload(Blob::new(r#"{"after_s":5}"#))
        .send()
        .await
        .expect("Publish");
    let (on, payload) = device.next_json().await;
    assert_eq!(on, topic);
    assert_eq!(payload, json!({"after_s": 5}));
}
