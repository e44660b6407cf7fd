//! The local IoT Core's lifecycle events, read by an MQTT subscriber as the presence rule reads
//! them on AWS: `$aws/events/presence/connected|disconnected/<clientId>` with AWS's documented
//! fields, one version number per connection, and the reason each connection ended.

use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use serde_json::Value;
use shoal_integration_tests::local::{self, unique_name};
use shoal_integration_tests::mqtt5::options;

/// Polls `events` until `wanted` returns something; within 10 s.
async fn until<T>(events: &mut EventLoop, mut wanted: impl FnMut(&Packet) -> Option<T>) -> T {
    let wait = async {
        loop {
            if let Event::Incoming(packet) = events.poll().await.expect("connected")
                && let Some(found) = wanted(&packet)
            {
                return found;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("within 10 s")
}

/// The next lifecycle event the subscriber gets: (topic, document).
async fn next_event(events: &mut EventLoop) -> (String, Value) {
    until(events, |packet| match packet {
        Packet::Publish(p) => Some((
            String::from_utf8(p.topic.to_vec()).unwrap(),
            serde_json::from_slice(&p.payload).expect("a JSON document"),
        )),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn connects_and_disconnects_publish_aws_s_lifecycle_events() {
    let device_id = unique_name("life");
    let (watcher, mut watching) = AsyncClient::new(
        options(&unique_name("watch"), &{
            let (_, c, k) = local::device_certificate(true).await;
            (c, k)
        }),
        16,
    );
    watcher
        .subscribe(
            format!("$aws/events/presence/+/{device_id}"),
            QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    until(&mut watching, |p| {
        matches!(p, Packet::SubAck(_)).then_some(())
    })
    .await;

    let (certificate_id, cert, key) = local::device_certificate(true).await;
    let device = (cert, key);

    // A clean connection and a DISCONNECT.
    let (client, mut events) = AsyncClient::new(options(&device_id, &device), 16);
    until(&mut events, |p| {
        matches!(p, Packet::ConnAck(_)).then_some(())
    })
    .await;
    let (topic, connected) = next_event(&mut watching).await;
    assert_eq!(topic, format!("$aws/events/presence/connected/{device_id}"));
    assert_eq!(connected["eventType"], "connected");
    assert_eq!(connected["clientId"], device_id.as_str());
    assert_eq!(connected["principalIdentifier"], certificate_id.as_str());
    assert_eq!(connected["ipAddress"], "127.0.0.1");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let at = connected["timestamp"].as_i64().expect("ms since the epoch");
    assert!(
        (now_ms - at).abs() < 60_000,
        "timestamp {at} vs now {now_ms}"
    );
    client.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while events.poll().await.is_ok() {}
    })
    .await;
    let (topic, disconnected) = next_event(&mut watching).await;
    assert_eq!(
        topic,
        format!("$aws/events/presence/disconnected/{device_id}")
    );
    assert_eq!(disconnected["eventType"], "disconnected");
    assert_eq!(
        disconnected["disconnectReason"],
        "CLIENT_INITIATED_DISCONNECT"
    );
    assert_eq!(disconnected["clientInitiatedDisconnect"], true);
    assert_eq!(disconnected["versionNumber"], connected["versionNumber"]);
    assert_eq!(
        disconnected["sessionIdentifier"],
        connected["sessionIdentifier"]
    );
    let first_version = connected["versionNumber"].as_u64().unwrap();

    // A second connection takes a third one's place: the one taken over ends with
    // DUPLICATE_CLIENTID, and the version numbers order the connections.
    let (_first, mut first_events) = AsyncClient::new(options(&device_id, &device), 16);
    until(&mut first_events, |p| {
        matches!(p, Packet::ConnAck(_)).then_some(())
    })
    .await;
    let (_, first_connected) = next_event(&mut watching).await;
    let (_second, mut second_events) = AsyncClient::new(options(&device_id, &device), 16);
    until(&mut second_events, |p| {
        matches!(p, Packet::ConnAck(_)).then_some(())
    })
    .await;
    tokio::spawn(async move { while first_events.poll().await.is_ok() {} });
    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.push(next_event(&mut watching).await.1);
    }
    let taken_over = seen
        .iter()
        .find(|e| e["eventType"] == "disconnected")
        .expect("the first connection's disconnected event");
    let second_connected = seen
        .iter()
        .find(|e| e["eventType"] == "connected")
        .expect("the second connection's connected event");
    assert_eq!(taken_over["disconnectReason"], "DUPLICATE_CLIENTID");
    assert_eq!(taken_over["clientInitiatedDisconnect"], false);
    assert_eq!(
        taken_over["versionNumber"],
        first_connected["versionNumber"]
    );
    let v1 = first_connected["versionNumber"].as_u64().unwrap();
    let v2 = second_connected["versionNumber"].as_u64().unwrap();
    assert!(
        first_version < v1 && v1 < v2,
        "versions increase: {first_version} < {v1} < {v2}"
    );
}
