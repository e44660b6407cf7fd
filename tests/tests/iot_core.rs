//! The local IoT Core against the local stack, with a real MQTT client (rumqttc over rustls) and
//! certificates registered in the local IoT registry: a certificate must be registered and ACTIVE
//! to connect; QoS 1 messages, retained messages and last wills flow as on AWS IoT Core; a second
//! connection with the same client id takes the first one's place.

use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, LastWill, MqttOptions,
    Packet, Publish, QoS, TlsConfiguration, Transport,
};
use shoal_integration_tests::local::{self, unique_name};
use tokio::sync::mpsc;

/// A certificate and its key from the registry (CreateKeysAndCertificate), active or not.
async fn certificate(active: bool) -> (Vec<u8>, Vec<u8>) {
    let (_, cert, key) = registered(active).await;
    (cert, key)
}

/// [`certificate`] with its certificate id.
async fn registered(active: bool) -> (String, Vec<u8>, Vec<u8>) {
    local::device_certificate(active).await
}

/// Polls until the connection fails; `Err` when it is still open after `within`.
async fn closed_within(events: &mut EventLoop, within: Duration) -> Result<ConnectionError, ()> {
    tokio::time::timeout(within, async {
        loop {
            if let Err(e) = events.poll().await {
                return e;
            }
        }
    })
    .await
    .map_err(|_| ())
}

fn options(client_id: &str, device: &(Vec<u8>, Vec<u8>)) -> MqttOptions {
    let (_, port, _) = local::iot_core();
    options_at(client_id, device, port, None)
}

fn options_at(
    client_id: &str,
    (cert, key): &(Vec<u8>, Vec<u8>),
    port: u16,
    alpn: Option<Vec<Vec<u8>>>,
) -> MqttOptions {
    let (_, _, ca) = local::iot_core();
    // The server certificate names `localhost` and 127.0.0.1.
    let mut options = MqttOptions::new(client_id, "localhost", port);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
        ca,
        alpn,
        client_auth: Some((cert.clone(), key.clone())),
    }));
    options.set_keep_alive(Duration::from_secs(30));
    options
}

/// Connects, and forwards every incoming publish to the returned channel; panics when the
/// connection is refused.
async fn connect(options: MqttOptions) -> (AsyncClient, mpsc::UnboundedReceiver<Publish>) {
    let (client, mut events) = AsyncClient::new(options, 64);
    wait_connack(&mut events).await.expect("connected");
    let (sender, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = events.poll().await {
            if let Event::Incoming(Packet::Publish(publish)) = event {
                let _ = sender.send(publish);
            }
        }
    });
    (client, received)
}

/// Polls until CONNACK: `Ok` when accepted, the refusal's code otherwise.
async fn wait_connack(events: &mut EventLoop) -> Result<(), ConnectReturnCode> {
    let wait = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    return match ack.code {
                        ConnectReturnCode::Success => Ok(()),
                        code => Err(code),
                    };
                }
                Ok(_) => {}
                Err(ConnectionError::ConnectionRefused(code)) => return Err(code),
                Err(e) => panic!("connection failed before CONNACK: {e:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .expect("CONNACK within 20 s")
}

async fn next(received: &mut mpsc::UnboundedReceiver<Publish>) -> Publish {
    tokio::time::timeout(Duration::from_secs(10), received.recv())
        .await
        .expect("a message within 10 s")
        .expect("the connection is open")
}

#[tokio::test]
async fn an_active_certificate_connects_and_qos1_messages_reach_matching_subscribers() {
    let prefix = unique_name("mqtt");
    let (subscriber, mut inbox) =
        connect(options(&unique_name("sub"), &certificate(true).await)).await;
    subscriber
        .subscribe(format!("{prefix}/+/telemetry"), QoS::AtLeastOnce)
        .await
        .unwrap();
    // The SUBACK is processed before the publish below is routed: give it a round trip.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (publisher, _) = connect(options(&unique_name("pub"), &certificate(true).await)).await;
    publisher
        .publish(
            format!("{prefix}/d-1/telemetry"),
            QoS::AtLeastOnce,
            false,
            b"{\"temp\":21.5}".to_vec(),
        )
        .await
        .unwrap();
    publisher
        .publish(
            format!("{prefix}/d-1/other"),
            QoS::AtLeastOnce,
            false,
            b"not matched".to_vec(),
        )
        .await
        .unwrap();
    publisher
        .publish(
            format!("{prefix}/d-2/telemetry"),
            QoS::AtMostOnce,
            false,
            b"qos0".to_vec(),
        )
        .await
        .unwrap();
    let first = next(&mut inbox).await;
    assert_eq!(first.topic, format!("{prefix}/d-1/telemetry"));
    assert_eq!(&first.payload[..], b"{\"temp\":21.5}");
    assert_eq!(first.qos, QoS::AtLeastOnce);
    assert!(!first.retain);
    let second = next(&mut inbox).await;
    assert_eq!(second.topic, format!("{prefix}/d-2/telemetry"));
    assert_eq!(second.qos, QoS::AtMostOnce, "never above the publish's QoS");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), inbox.recv())
            .await
            .is_err(),
        "the unmatched topic is not delivered"
    );
}

#[tokio::test]
async fn inactive_and_unregistered_certificates_are_refused() {
    let inactive = certificate(false).await;
    let (_client, mut events) = AsyncClient::new(options(&unique_name("inactive"), &inactive), 8);
    assert_eq!(
        wait_connack(&mut events).await,
        Err(ConnectReturnCode::NotAuthorized)
    );

    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["stranger".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let stranger = (cert.pem().into_bytes(), key.serialize_pem().into_bytes());
    let (_client, mut events) = AsyncClient::new(options(&unique_name("stranger"), &stranger), 8);
    assert_eq!(
        wait_connack(&mut events).await,
        Err(ConnectReturnCode::NotAuthorized)
    );
}

#[tokio::test]
async fn retained_messages_reach_later_subscribers_and_a_lost_client_leaves_its_will() {
    let prefix = unique_name("retain");
    let (publisher, _) = connect(options(&unique_name("pub"), &certificate(true).await)).await;
    publisher
        .publish(
            format!("{prefix}/config"),
            QoS::AtLeastOnce,
            true,
            b"v1".to_vec(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (subscriber, mut inbox) =
        connect(options(&unique_name("sub"), &certificate(true).await)).await;
    subscriber
        .subscribe(format!("{prefix}/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    let retained = next(&mut inbox).await;
    assert_eq!(
        (retained.topic.as_str(), &retained.payload[..]),
        (format!("{prefix}/config").as_str(), &b"v1"[..])
    );
    assert!(retained.retain, "sent because of the new subscription");

    // A client that vanishes without DISCONNECT: its will is published.
    let mut with_will = options(&unique_name("will"), &certificate(true).await);
    with_will.set_last_will(LastWill::new(
        format!("{prefix}/will"),
        b"gone".to_vec(),
        QoS::AtLeastOnce,
        false,
    ));
    let (_client, mut events) = AsyncClient::new(with_will, 8);
    wait_connack(&mut events).await.unwrap();
    drop(events);
    let will = next(&mut inbox).await;
    assert_eq!(will.topic, format!("{prefix}/will"));
    assert_eq!(&will.payload[..], b"gone");
}

#[tokio::test]
async fn a_second_connection_with_the_same_client_id_takes_over() {
    let client_id = unique_name("twin");
    let device = certificate(true).await;
    let (_first, mut first_events) = AsyncClient::new(options(&client_id, &device), 8);
    wait_connack(&mut first_events).await.unwrap();
    let (_second, mut second_events) = AsyncClient::new(options(&client_id, &device), 8);
    wait_connack(&mut second_events).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if first_events.poll().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the first connection is closed by the takeover"
    );
}

#[tokio::test]
async fn port_443_serves_mqtt_to_clients_that_ask_for_alpn_x_amzn_mqtt_ca() {
    let (_, port) = local::iot_core_alpn();
    let device = certificate(true).await;
    let alpn = |client_id: &str, alpn| options_at(client_id, &device, port, alpn);
    let topic = unique_name("alpn");
    let with = alpn(&unique_name("alpn"), Some(vec![b"x-amzn-mqtt-ca".to_vec()]));
    let (client, mut inbox) = connect(with).await;
    client.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    client
        .publish(&topic, QoS::AtLeastOnce, false, b"over 443".to_vec())
        .await
        .unwrap();
    assert_eq!(&next(&mut inbox).await.payload[..], b"over 443");

    // Without the ALPN, AWS answers HTTPS on 443: no MQTT session.
    let (_client, mut events) = AsyncClient::new(alpn(&unique_name("plain"), None), 8);
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => return Ok(ack),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("an answer within 10 s");
    assert!(refused.is_err(), "no CONNACK without the ALPN: {refused:?}");
}

#[tokio::test]
async fn revoking_a_certificate_ends_its_live_connections() {
    let (id, cert, key) = registered(true).await;
    let (_client, mut events) = AsyncClient::new(options(&unique_name("revoked"), &(cert, key)), 8);
    wait_connack(&mut events).await.unwrap();
    local::factory()
        .await
        .iot()
        .update_certificate()
        .certificate_id(&id)
        .new_status(aws_sdk_iot::types::CertificateStatus::Revoked)
        .send()
        .await
        .unwrap();
    // The stack checks certificates every 5 s (`--certificate-recheck-s`).
    assert!(
        closed_within(&mut events, Duration::from_secs(20))
            .await
            .is_ok(),
        "the revoked certificate's connection is closed"
    );
}

#[tokio::test]
async fn a_payload_over_128_kb_closes_the_connection() {
    let (client, mut events) = AsyncClient::new(
        {
            let mut o = options(&unique_name("big"), &certificate(true).await);
            o.set_max_packet_size(512 * 1024, 512 * 1024);
            o
        },
        8,
    );
    wait_connack(&mut events).await.unwrap();
    client
        .publish(
            unique_name("big"),
            QoS::AtMostOnce,
            false,
            vec![b'x'; 128 * 1024 + 1],
        )
        .await
        .unwrap();
    assert!(
        closed_within(&mut events, Duration::from_secs(10))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_takeover_hands_unacknowledged_messages_to_the_new_connection() {
    let topic = unique_name("handover");
    let client_id = unique_name("handover");
    let device = certificate(true).await;
    let mut first_options = options(&client_id, &device);
    first_options.set_clean_session(false);
    first_options.set_manual_acks(true);
    let (first, mut first_events) = AsyncClient::new(first_options, 16);
    wait_connack(&mut first_events).await.unwrap();
    first.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
    let (sender, mut first_inbox) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = first_events.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = event {
                let _ = sender.send(p);
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (publisher, _) = connect(options(&unique_name("pub"), &certificate(true).await)).await;
    for i in 0..3 {
        publisher
            .publish(
                &topic,
                QoS::AtLeastOnce,
                false,
                format!("m{i}").into_bytes(),
            )
            .await
            .unwrap();
    }
    for _ in 0..3 {
        next(&mut first_inbox).await; // received, never acknowledged
    }
    let mut second_options = options(&client_id, &device);
    second_options.set_clean_session(false);
    let (_second, mut second_inbox) = connect(second_options).await;
    let mut payloads = Vec::new();
    for _ in 0..3 {
        payloads.push(String::from_utf8(next(&mut second_inbox).await.payload.to_vec()).unwrap());
    }
    payloads.sort();
    assert_eq!(payloads, vec!["m0", "m1", "m2"]);
}
