//! IoT policies enforced by the local IoT Core, with the device policy of infra/template.yaml as
//! CloudFormation would create it: a device connects only as its own attached thing and reaches
//! only its own topics; MQTT 5 clients are told with reason code 0x87 (CONNACK, PUBACK, SUBACK),
//! MQTT 3.1.1 clients are disconnected; a message a client may not receive is not delivered.

use std::time::Duration;

use aws_sdk_iotdataplane::primitives::Blob;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, PubAckReason, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use serde_norway::Value;
use shoal_integration_tests::iot_policy::to_json;
use shoal_integration_tests::local::{self, Certificate, unique_name};
use shoal_integration_tests::{mqtt5, repo_root};

/// The template's device policy, resolved; created in the registry once per run under a name of
/// its own.
fn device_policy() -> String {
    let text = std::fs::read_to_string(repo_root().join("infra/template.yaml")).unwrap();
    let template: Value = serde_norway::from_str(&text).unwrap();
    let document = &template["Resources"]["DevicePolicy"]["Properties"]["PolicyDocument"];
    to_json(document, &[("ProvisioningTemplateName", "shoal-fleet")])
        .unwrap()
        .to_string()
}

/// A device as provisioning leaves it: an active certificate, its thing attached, the device
/// policy attached.
async fn device(thing: &str) -> Certificate {
    let certificate = local::bare_certificate(true).await;
    local::attach_thing(thing, &[("model", "th")], &certificate.arn).await;
    local::attach_policy(
        "shoal-test-device-policy",
        &device_policy(),
        &certificate.arn,
    )
    .await;
    certificate
}

fn options(client_id: &str, certificate: &Certificate) -> MqttOptions {
    mqtt5::options(
        client_id,
        &(certificate.pem.clone(), certificate.key.clone()),
    )
}

/// The next packet from the broker, or how the connection ended; within 10 s.
async fn next_packet(events: &mut EventLoop) -> Result<Packet, ConnectionError> {
    let wait = async {
        loop {
            match events.poll().await? {
                Event::Incoming(packet) => return Ok(packet),
                Event::Outgoing(_) => continue,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("a packet or the end of the connection within 10 s")
}

async fn connected(client_id: &str, certificate: &Certificate) -> (AsyncClient, EventLoop) {
    let (client, mut events) = AsyncClient::new(options(client_id, certificate), 16);
    match next_packet(&mut events).await {
        Ok(Packet::ConnAck(ack)) => assert_eq!(ack.code, ConnectReturnCode::Success),
        other => panic!("{client_id}: expected CONNACK, got {other:?}"),
    }
    (client, events)
}

/// The CONNACK refusal a connection gets.
async fn refused(client_id: &str, certificate: &Certificate) -> ConnectReturnCode {
    let (_client, mut events) = AsyncClient::new(options(client_id, certificate), 16);
    match next_packet(&mut events).await {
        Err(ConnectionError::ConnectionRefused(code)) => code,
        other => panic!("{client_id}: expected a refused CONNACK, got {other:?}"),
    }
}

#[tokio::test]
async fn a_device_connects_only_as_its_own_attached_thing() {
    let thing = unique_name("pol-dev");
    let certificate = device(&thing).await;
    connected(&thing, &certificate).await;
    // Another client id: the thing variables do not resolve, so nothing allows iot:Connect.
    assert_eq!(
        refused(&unique_name("pol-other"), &certificate).await,
        ConnectReturnCode::NotAuthorized
    );
    // A certificate with no policy connects nowhere, even as an attached thing.
    let bare = local::bare_certificate(true).await;
    let bare_thing = unique_name("pol-bare");
    local::attach_thing(&bare_thing, &[], &bare.arn).await;
    assert_eq!(
        refused(&bare_thing, &bare).await,
        ConnectReturnCode::NotAuthorized
    );
}

#[tokio::test]
async fn mqtt5_publishes_and_subscriptions_outside_the_policy_get_reason_0x87() {
    let thing = unique_name("pol-dev");
    let other = unique_name("pol-dev");
    let certificate = device(&thing).await;
    let (client, mut events) = connected(&thing, &certificate).await;

    let cases = [
        (
            format!("dt/farm/{thing}/telemetry"),
            false,
            PubAckReason::Success,
        ),
        (
            format!("dt/farm/{other}/telemetry"),
            false,
            PubAckReason::NotAuthorized,
        ),
        // Two levels where the policy allows one: the template's explicit Deny.
        (
            format!("dt/a/b/{thing}/telemetry"),
            false,
            PubAckReason::NotAuthorized,
        ),
        // Retaining needs iot:RetainPublish, which the device policy does not grant.
        (
            format!("$aws/things/{thing}/shadow/update"),
            true,
            PubAckReason::NotAuthorized,
        ),
        (
            format!("$aws/things/{thing}/shadow/update"),
            false,
            PubAckReason::Success,
        ),
    ];
    for (topic, retain, expected) in cases {
        client
            .publish(&topic, QoS::AtLeastOnce, retain, b"{}".to_vec())
            .await
            .unwrap();
        loop {
            match next_packet(&mut events)
                .await
                .expect("the connection stays open")
            {
                Packet::PubAck(ack) => {
                    assert_eq!(ack.reason, expected, "{topic} (retain {retain})");
                    break;
                }
                _ => continue,
            }
        }
    }

    client
        .subscribe(format!("cmd/farm/{thing}/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    client
        .subscribe(format!("cmd/farm/{other}/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut codes = Vec::new();
    while codes.len() < 2 {
        if let Packet::SubAck(ack) = next_packet(&mut events).await.expect("still open") {
            codes.extend(ack.return_codes);
        }
    }
    assert_eq!(
        codes,
        [
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::NotAuthorized
        ]
    );
}

#[tokio::test]
async fn mqtt311_clients_are_disconnected_for_what_the_policy_denies() {
    use rumqttc::{AsyncClient as Client311, Event as Event311, MqttOptions as Options311};

    let (_, port, ca) = local::iot_core();
    let thing = unique_name("pol-dev");
    let certificate = device(&thing).await;
    let open = |ca: Vec<u8>| {
        let mut options = Options311::new(&thing, "localhost", port);
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth: Some((certificate.pem.clone(), certificate.key.clone())),
        }));
        Client311::new(options, 16)
    };
    // Each denied action, on a fresh connection: it is allowed up to that packet, then closed.
    for denied in ["publish", "subscribe"] {
        let (client, mut events) = open(ca.clone());
        let ended = async {
            loop {
                match events.poll().await {
                    Ok(Event311::Incoming(rumqttc::Packet::ConnAck(_))) => match denied {
                        "publish" => client
                            .publish(
                                "dt/farm/someone-else/telemetry",
                                rumqttc::QoS::AtLeastOnce,
                                false,
                                b"{}".to_vec(),
                            )
                            .await
                            .unwrap(),
                        _ => client
                            .subscribe("cmd/farm/someone-else/#", rumqttc::QoS::AtLeastOnce)
                            .await
                            .unwrap(),
                    },
                    Ok(Event311::Incoming(rumqttc::Packet::PubAck(_))) => {
                        panic!("a denied publish was acknowledged")
                    }
                    Ok(Event311::Incoming(rumqttc::Packet::SubAck(ack))) => {
                        panic!("a denied subscription was answered: {ack:?}")
                    }
                    Ok(_) => continue,
                    Err(e) => return e,
                }
            }
        };
        let e = tokio::time::timeout(Duration::from_secs(10), ended)
            .await
            .unwrap_or_else(|_| panic!("{denied}: still connected after 10 s"));
        assert!(
            !matches!(e, rumqttc::ConnectionError::ConnectionRefused(_)),
            "{denied}: connected first, then closed: {e:?}"
        );
    }
}

#[tokio::test]
async fn a_message_the_subscriber_may_not_receive_is_not_delivered() {
    let prefix = unique_name("pol-recv");
    let certificate = local::bare_certificate(true).await;
    let client_id = unique_name("pol-sub");
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/${iot:ClientId}"},
            {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": format!("arn:aws:iot:*:*:topicfilter/{prefix}/#")},
            {"Effect": "Allow", "Action": "iot:Receive", "Resource": format!("arn:aws:iot:*:*:topic/{prefix}/*")},
            {"Effect": "Deny", "Action": "iot:Receive", "Resource": format!("arn:aws:iot:*:*:topic/{prefix}/secret")},
        ],
    });
    local::attach_policy(&prefix, &policy.to_string(), &certificate.arn).await;
    let (subscriber, mut inbox) = connected(&client_id, &certificate).await;
    subscriber
        .subscribe(format!("{prefix}/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        if let Packet::SubAck(ack) = next_packet(&mut inbox).await.unwrap() {
            assert_eq!(
                ack.return_codes,
                [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
            );
            break;
        }
    }

    let (_, cert, key) = local::device_certificate(true).await;
    let publisher_certificate = Certificate {
        id: String::new(),
        arn: String::new(),
        pem: cert,
        key,
    };
    let (publisher, mut events) = connected(&unique_name("pol-pub"), &publisher_certificate).await;
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    for topic in ["secret", "open"] {
        publisher
            .publish(
                format!("{prefix}/{topic}"),
                QoS::AtLeastOnce,
                false,
                topic.as_bytes().to_vec(),
            )
            .await
            .unwrap();
    }
    loop {
        if let Packet::Publish(message) = next_packet(&mut inbox).await.unwrap() {
            assert_eq!(
                &message.topic[..],
                format!("{prefix}/open").as_bytes(),
                "the denied message is not delivered; the allowed one, published after it, is"
            );
            break;
        }
    }
}

#[tokio::test]
async fn a_device_updates_its_own_shadow_and_cannot_write_another_things() {
    let thing = unique_name("pol-dev");
    let other = unique_name("pol-dev");
    let certificate = device(&thing).await;
    let pair = (certificate.pem.clone(), certificate.key.clone());
    let mut client = mqtt5::Client::connect(&thing, &pair).await;
    let own = format!("$aws/things/{thing}/shadow/update");
    client.subscribe(&format!("{own}/accepted")).await;
    client
        .publish(&own, r#"{"state":{"reported":{"fw":"1.0.0"}}}"#)
        .await;
    let accepted = client.next_on(&format!("{own}/accepted")).await;
    assert_eq!(accepted["version"], 1);
    assert_eq!(accepted["state"]["reported"]["fw"], "1.0.0");

    // Another thing's shadow: the publish is refused and the shadow is not written.
    client
        .publish(
            &format!("$aws/things/{other}/shadow/update"),
            r#"{"state":{"desired":{"fw":"6.6.6"}}}"#,
        )
        .await;
    let reason = client.refused_puback().await;
    assert_eq!(reason, PubAckReason::NotAuthorized);
    let data = local::iot_core_data_plane().await;
    let read = data
        .get_thing_shadow()
        .thing_name(&other)
        .send()
        .await
        .expect_err("the other thing has no shadow");
    assert!(
        read.as_service_error()
            .is_some_and(|e| e.is_resource_not_found_exception()),
        "{read:?}"
    );
    let own = data
        .get_thing_shadow()
        .thing_name(&thing)
        .send()
        .await
        .expect("GetThingShadow");
    let own: serde_json::Value =
        serde_json::from_slice(&own.payload.map(Blob::into_inner).unwrap()).unwrap();
    assert_eq!(own["state"]["reported"]["fw"], "1.0.0");
}
