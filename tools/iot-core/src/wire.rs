//! The two MQTT versions on the wire, MQTT 3.1.1 and MQTT 5, each read into and written from the
//! same version-free events ([`Incoming`], [`Outgoing`]) so that a connection's logic is written
//! once. The packet codecs are rumqttc's (`rumqttc::mqttbytes::v4`, `rumqttc::v5::mqttbytes::v5`).
//!
//! MQTT 5 as AWS IoT Core serves it (<https://docs.aws.amazon.com/iot/latest/developerguide/mqtt.html#mqtt5>):
//! the session expiry interval decides whether a session outlives its connection; CONNACK says
//! QoS 1 at most, retained messages available, 100 messages in flight, no topic aliases;
//! publish properties (user properties, content type, response topic, correlation data,
//! payload format, message expiry) travel with the message to MQTT 5 subscribers; reason codes
//! say why a subscription, a publish or the connection was refused or ended.

use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use rumqttc::QoS;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::{QoS as QoS5, v5};

use crate::broker::{Message, SubscribeError};

/// The largest payload AWS IoT Core takes, in bytes (128 KB).
pub const MAX_PAYLOAD: usize = 128 * 1024;
/// The packet-size bound: the largest payload plus a topic, properties and the headers.
pub const MAX_PACKET: usize = MAX_PAYLOAD + 16 * 1024;
/// QoS 1 messages sent and not yet acknowledged, per connection, at most (AWS IoT Core's
/// in-flight limit; MQTT 5's receive maximum).
pub const MAX_INFLIGHT: usize = 100;

/// What a CONNECT asks for, in either version.
#[derive(Debug)]
pub struct ConnectRequest {
    /// The client id.
    pub client_id: String,
    /// Keep-alive requested, in seconds.
    pub keep_alive_s: u16,
    /// Start a new session, discarding a kept one.
    pub clean_start: bool,
    /// How long the session outlives the connection (`None`: it ends with it). MQTT 3.1.1: a
    /// persistent session (`cleanSession` 0) for the broker's expiry; MQTT 5: the session expiry
    /// interval, capped at the broker's.
    pub session_expiry: Option<Duration>,
    /// The last will, its topic not yet checked.
    pub will: Option<Message>,
}

/// Why a CONNECT is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The client id is empty or too long.
    BadClientId,
    /// The certificate may not connect.
    NotAuthorized,
    /// The registry could not be asked.
    ServerUnavailable,
    /// The will's topic or QoS is not acceptable.
    BadWill,
}

/// Why the broker closes a connection (MQTT 5 tells the client with a DISCONNECT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Another connection took the session over.
    TakenOver,
    /// The client was silent past 1.5 times its keep-alive.
    KeepAlive,
    /// A QoS 2 publish.
    QoS2,
    /// A publish to an invalid topic name.
    TopicInvalid,
    /// Anything else the protocol does not allow.
    ProtocolError,
    /// A payload over [`MAX_PAYLOAD`].
    PacketTooLarge,
    /// The certificate is no longer `ACTIVE` in the registry, or (MQTT 3.1.1) a policy denied a
    /// publish or a subscription.
    NotAuthorized,
}

/// A packet from the client, without its version.
#[derive(Debug)]
pub enum Incoming {
    /// An application message (its topic not yet checked).
    Publish { message: Message, pkid: u16 },
    /// The client acknowledged a QoS 1 message.
    PubAck(u16),
    /// Filters with their requested QoS; `send_retained` false when MQTT 5's retain handling
    /// asks for no retained messages.
    Subscribe {
        pkid: u16,
        filters: Vec<(String, QoS, bool)>,
    },
    /// Filters to remove.
    Unsubscribe { pkid: u16, filters: Vec<String> },
    /// Keep-alive.
    PingReq,
    /// A clean end; `publish_will` when MQTT 5's reason 0x04 asks for the will anyway.
    Disconnect { publish_will: bool },
    /// A packet the broker does not serve (QoS 2 flows, AUTH, a second CONNECT, a topic alias).
    Unsupported(Close, &'static str),
}

/// A packet to the client, without its version.
#[derive(Debug)]
pub enum Outgoing<'a> {
    /// The CONNECT's answer; `keep_alive_s` the keep-alive the broker applies.
    ConnAck {
        refused: Option<Refusal>,
        session_present: bool,
        keep_alive_s: u16,
    },
    /// An application message.
    Publish { message: &'a Message, pkid: u16 },
    /// A QoS 1 publish was received.
    PubAck(u16),
    /// A QoS 1 publish was refused by the connection's policies (MQTT 5's reason 0x87; MQTT
    /// 3.1.1 has no way to say it, and the broker closes the connection instead).
    PubAckNotAuthorized(u16),
    /// The subscriptions' outcomes, in order.
    SubAck {
        pkid: u16,
        results: &'a [Result<QoS, SubscribeError>],
    },
    /// The unsubscriptions' outcome.
    UnsubAck { pkid: u16, filters: usize },
    /// Keep-alive answer.
    PingResp,
    /// The broker closes the connection (MQTT 3.1.1 has no such packet: nothing is sent).
    Disconnect(Close),
}

/// One MQTT version's packets.
pub trait Wire {
    /// The version's packet type.
    type Packet: Send;
    /// Its codec.
    type Codec: tokio_util::codec::Decoder<Item = Self::Packet, Error = Self::Error>
        + tokio_util::codec::Encoder<Self::Packet, Error = Self::Error>
        + Send;
    /// The codec's error.
    type Error: std::fmt::Display + From<std::io::Error>;

    /// Whether acknowledgements carry reason codes (MQTT 5). Without them (MQTT 3.1.1) a denied
    /// publish or subscription closes the connection, as AWS IoT Core does.
    const REASON_CODES: bool;

    /// The codec, bounded to [`MAX_PACKET`].
    fn codec() -> Self::Codec;
    /// The CONNECT in `packet`.
    ///
    /// # Errors
    /// A description when `packet` is not a CONNECT.
    fn connect(packet: Self::Packet) -> Result<ConnectRequest, String>;
    /// The event a packet from the client is.
    fn incoming(packet: Self::Packet) -> Incoming;
    /// The packet for `out`; `None` when this version has none for it.
    fn outgoing(out: Outgoing<'_>) -> Option<Self::Packet>;
}

/// MQTT 3.1.1.
pub struct V4;

impl Wire for V4 {
    type Packet = v4::Packet;
    type Codec = v4::Codec;
    type Error = rumqttc::mqttbytes::Error;

    const REASON_CODES: bool = false;

    fn codec() -> v4::Codec {
        v4::Codec {
            max_incoming_size: MAX_PACKET,
            max_outgoing_size: MAX_PACKET,
        }
    }

    fn connect(packet: v4::Packet) -> Result<ConnectRequest, String> {
        let v4::Packet::Connect(connect) = packet else {
            return Err("the first packet is not CONNECT".into());
        };
        Ok(ConnectRequest {
            client_id: connect.client_id,
            keep_alive_s: connect.keep_alive,
            clean_start: connect.clean_session,
            // The broker's expiry applies to a persistent session.
            session_expiry: (!connect.clean_session).then_some(Duration::MAX),
            will: connect.last_will.map(|will| Message {
                topic: will.topic,
                payload: will.message,
                qos: will.qos,
                retain: will.retain,
                properties: None,
                dup: false,
                expires: None,
            }),
        })
    }

    fn incoming(packet: v4::Packet) -> Incoming {
        match packet {
            v4::Packet::Publish(p) => Incoming::Publish {
                pkid: p.pkid,
                message: Message {
                    topic: p.topic,
                    payload: p.payload,
                    qos: p.qos,
                    retain: p.retain,
                    properties: None,
                    dup: false,
                    expires: None,
                },
            },
            v4::Packet::PubAck(ack) => Incoming::PubAck(ack.pkid),
            v4::Packet::Subscribe(s) => Incoming::Subscribe {
                pkid: s.pkid,
                filters: s
                    .filters
                    .into_iter()
                    .map(|f| (f.path, f.qos, true))
                    .collect(),
            },
            v4::Packet::Unsubscribe(u) => Incoming::Unsubscribe {
                pkid: u.pkid,
                filters: u.topics,
            },
            v4::Packet::PingReq => Incoming::PingReq,
            v4::Packet::Disconnect => Incoming::Disconnect {
                publish_will: false,
            },
            v4::Packet::Connect(_) => {
                Incoming::Unsupported(Close::ProtocolError, "a second CONNECT")
            }
            _ => Incoming::Unsupported(Close::QoS2, "QoS 2 flows are not supported"),
        }
    }

    fn outgoing(out: Outgoing<'_>) -> Option<v4::Packet> {
        Some(match out {
            Outgoing::ConnAck {
                refused,
                session_present,
                ..
            } => {
                let code = match refused {
                    None => v4::ConnectReturnCode::Success,
                    Some(Refusal::BadClientId) => v4::ConnectReturnCode::BadClientId,
                    Some(Refusal::NotAuthorized | Refusal::BadWill) => {
                        v4::ConnectReturnCode::NotAuthorized
                    }
                    Some(Refusal::ServerUnavailable) => v4::ConnectReturnCode::ServiceUnavailable,
                };
                v4::Packet::ConnAck(v4::ConnAck::new(code, session_present))
            }
            Outgoing::Publish { message, pkid } => {
                let mut publish = v4::Publish::from_bytes(
                    message.topic.clone(),
                    message.qos,
                    message.payload.clone(),
                );
                publish.retain = message.retain;
                publish.dup = message.dup;
                publish.pkid = pkid;
                v4::Packet::Publish(publish)
            }
            Outgoing::PubAck(pkid) => v4::Packet::PubAck(v4::PubAck::new(pkid)),
            Outgoing::PubAckNotAuthorized(_) => return None,
            Outgoing::SubAck { pkid, results } => v4::Packet::SubAck(v4::SubAck::new(
                pkid,
                results
                    .iter()
                    .map(|r| match r {
                        Ok(qos) => v4::SubscribeReasonCode::Success(*qos),
                        Err(_) => v4::SubscribeReasonCode::Failure,
                    })
                    .collect(),
            )),
            Outgoing::UnsubAck { pkid, .. } => v4::Packet::UnsubAck(v4::UnsubAck::new(pkid)),
            Outgoing::PingResp => v4::Packet::PingResp,
            Outgoing::Disconnect(_) => return None,
        })
    }
}

/// MQTT 5.
pub struct V5;

fn qos_from5(qos: QoS5) -> QoS {
    match qos {
        QoS5::AtMostOnce => QoS::AtMostOnce,
        QoS5::AtLeastOnce => QoS::AtLeastOnce,
        QoS5::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn qos_to5(qos: QoS) -> QoS5 {
    match qos {
        QoS::AtMostOnce => QoS5::AtMostOnce,
        QoS::AtLeastOnce => QoS5::AtLeastOnce,
        QoS::ExactlyOnce => QoS5::ExactlyOnce,
    }
}

/// What of a publish's properties travels with the message: not its topic alias nor its
/// subscription identifiers, which belong to one connection.
fn forwarded(properties: Option<v5::PublishProperties>) -> Option<Box<v5::PublishProperties>> {
    properties
        .map(|p| v5::PublishProperties {
            topic_alias: None,
            subscription_identifiers: Vec::new(),
            ..p
        })
        .filter(|p| *p != v5::PublishProperties::default())
        .map(Box::new)
}

/// A message's properties as delivered at `now`: the message expiry interval is what is left of
/// it (MQTT 5 §3.3.2.3.3), at least one second.
fn delivered_properties(message: &Message, now: Instant) -> Option<v5::PublishProperties> {
    let mut properties = message.properties.as_deref().cloned()?;
    if let (Some(_), Some(at)) = (properties.message_expiry_interval, message.expires) {
        let left = at.saturating_duration_since(now).as_secs().max(1);
        properties.message_expiry_interval = Some(u32::try_from(left).unwrap_or(u32::MAX));
    }
    Some(properties)
}

/// rumqttc's MQTT 5 codec, plus the DISCONNECT it cannot read: MQTT 5 lets a client omit the
/// reason code and properties of a normal DISCONNECT (remaining length 0, the two bytes `E0 00`;
/// spec 3.14.2.1), which AWS's SDKs and paho send, and rumqttc 0.25's `Packet::read` refuses
/// every empty packet but PINGREQ/PINGRESP ("Payload is required"). Without this a clean
/// disconnection would count as a protocol error and publish the client's will.
pub struct V5Codec(v5::Codec);

impl tokio_util::codec::Decoder for V5Codec {
    type Item = v5::Packet;
    type Error = rumqttc::v5::mqttbytes::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<v5::Packet>, Self::Error> {
        if src.starts_with(&[0xE0, 0x00]) {
            src.advance(2);
            let normal = v5::DisconnectReasonCode::NormalDisconnection;
            return Ok(Some(v5::Packet::Disconnect(v5::Disconnect::new(normal))));
        }
        self.0.decode(src)
    }
}

impl tokio_util::codec::Encoder<v5::Packet> for V5Codec {
    type Error = rumqttc::v5::mqttbytes::Error;

    fn encode(&mut self, packet: v5::Packet, dst: &mut BytesMut) -> Result<(), Self::Error> {
        self.0.encode(packet, dst)
    }
}

impl Wire for V5 {
    type Packet = v5::Packet;
    type Codec = V5Codec;
    type Error = rumqttc::v5::mqttbytes::Error;

    const REASON_CODES: bool = true;

    fn codec() -> V5Codec {
        V5Codec(v5::Codec {
            max_incoming_size: u32::try_from(MAX_PACKET).ok(),
            max_outgoing_size: None,
        })
    }

    fn connect(packet: v5::Packet) -> Result<ConnectRequest, String> {
        let v5::Packet::Connect(connect, will, _login) = packet else {
            return Err("the first packet is not CONNECT".into());
        };
        let expiry_s = connect
            .properties
            .as_ref()
            .and_then(|p| p.session_expiry_interval)
            .unwrap_or(0);
        let will = match will {
            None => None,
            Some(will) => Some(Message {
                topic: String::from_utf8(will.topic.to_vec())
                    .map_err(|_| "the will's topic is not UTF-8".to_owned())?,
                payload: will.message,
                qos: qos_from5(will.qos),
                retain: will.retain,
                properties: will.properties.map(|p| {
                    Box::new(v5::PublishProperties {
                        payload_format_indicator: p.payload_format_indicator,
                        message_expiry_interval: p.message_expiry_interval,
                        content_type: p.content_type,
                        response_topic: p.response_topic,
                        correlation_data: p.correlation_data,
                        user_properties: p.user_properties,
                        ..v5::PublishProperties::default()
                    })
                }),
                dup: false,
                // A will's expiry counts from when it is published; it is kept as a property.
                expires: None,
            }),
        };
        Ok(ConnectRequest {
            client_id: connect.client_id,
            keep_alive_s: connect.keep_alive,
            clean_start: connect.clean_start,
            session_expiry: (expiry_s > 0).then(|| Duration::from_secs(u64::from(expiry_s))),
            will,
        })
    }

    fn incoming(packet: v5::Packet) -> Incoming {
        match packet {
            v5::Packet::Publish(p) => {
                if p.properties
                    .as_ref()
                    .is_some_and(|p| p.topic_alias.is_some())
                {
                    return Incoming::Unsupported(
                        Close::ProtocolError,
                        "topic aliases are not enabled",
                    );
                }
                let Ok(topic) = String::from_utf8(p.topic.to_vec()) else {
                    return Incoming::Unsupported(Close::TopicInvalid, "the topic is not UTF-8");
                };
                let expires = p
                    .properties
                    .as_ref()
                    .and_then(|p| p.message_expiry_interval)
                    .map(|s| Instant::now() + Duration::from_secs(u64::from(s)));
                Incoming::Publish {
                    pkid: p.pkid,
                    message: Message {
                        topic,
                        payload: p.payload,
                        qos: qos_from5(p.qos),
                        retain: p.retain,
                        properties: forwarded(p.properties),
                        dup: false,
                        expires,
                    },
                }
            }
            v5::Packet::PubAck(ack) => Incoming::PubAck(ack.pkid),
            v5::Packet::Subscribe(s) => Incoming::Subscribe {
                pkid: s.pkid,
                filters: s
                    .filters
                    .into_iter()
                    .map(|f| {
                        let retained =
                            !matches!(f.retain_forward_rule, v5::RetainForwardRule::Never);
                        (f.path, qos_from5(f.qos), retained)
                    })
                    .collect(),
            },
            v5::Packet::Unsubscribe(u) => Incoming::Unsubscribe {
                pkid: u.pkid,
                filters: u.filters,
            },
            v5::Packet::PingReq(_) => Incoming::PingReq,
            v5::Packet::Disconnect(d) => Incoming::Disconnect {
                publish_will: d.reason_code == v5::DisconnectReasonCode::DisconnectWithWillMessage,
            },
            v5::Packet::Connect(..) => {
                Incoming::Unsupported(Close::ProtocolError, "a second CONNECT")
            }
            v5::Packet::Auth(_) => {
                Incoming::Unsupported(Close::ProtocolError, "AUTH is not supported")
            }
            _ => Incoming::Unsupported(Close::QoS2, "QoS 2 flows are not supported"),
        }
    }

    fn outgoing(out: Outgoing<'_>) -> Option<v5::Packet> {
        Some(match out {
            Outgoing::ConnAck {
                refused,
                session_present,
                keep_alive_s,
            } => {
                let code = match refused {
                    None => v5::ConnectReturnCode::Success,
                    Some(Refusal::BadClientId) => v5::ConnectReturnCode::ClientIdentifierNotValid,
                    Some(Refusal::NotAuthorized) => v5::ConnectReturnCode::NotAuthorized,
                    Some(Refusal::ServerUnavailable) => v5::ConnectReturnCode::ServerUnavailable,
                    Some(Refusal::BadWill) => v5::ConnectReturnCode::TopicNameInvalid,
                };
                let properties = refused.is_none().then(|| v5::ConnAckProperties {
                    session_expiry_interval: None,
                    receive_max: u16::try_from(MAX_INFLIGHT).ok(),
                    max_qos: Some(1),
                    retain_available: Some(1),
                    max_packet_size: u32::try_from(MAX_PACKET).ok(),
                    assigned_client_identifier: None,
                    topic_alias_max: None,
                    reason_string: None,
                    user_properties: Vec::new(),
                    wildcard_subscription_available: Some(1),
                    subscription_identifiers_available: Some(0),
                    shared_subscription_available: Some(0),
                    // The keep-alive the broker applies (MQTT 5 §3.2.2.3.14).
                    server_keep_alive: Some(keep_alive_s),
                    response_information: None,
                    server_reference: None,
                    authentication_method: None,
                    authentication_data: None,
                });
                v5::Packet::ConnAck(v5::ConnAck {
                    session_present,
                    code,
                    properties,
                })
            }
            Outgoing::Publish { message, pkid } => v5::Packet::Publish(v5::Publish {
                dup: message.dup,
                qos: qos_to5(message.qos),
                retain: message.retain,
                topic: Bytes::from(message.topic.clone()),
                pkid,
                payload: message.payload.clone(),
                properties: delivered_properties(message, Instant::now()),
            }),
            Outgoing::PubAck(pkid) => v5::Packet::PubAck(v5::PubAck::new(pkid, None)),
            Outgoing::PubAckNotAuthorized(pkid) => v5::Packet::PubAck(v5::PubAck {
                pkid,
                reason: v5::PubAckReason::NotAuthorized,
                properties: None,
            }),
            Outgoing::SubAck { pkid, results } => v5::Packet::SubAck(v5::SubAck {
                pkid,
                return_codes: results
                    .iter()
                    .map(|r| match r {
                        Ok(qos) => v5::SubscribeReasonCode::Success(qos_to5(*qos)),
                        Err(SubscribeError::Filter(_)) => {
                            v5::SubscribeReasonCode::TopicFilterInvalid
                        }
                        Err(SubscribeError::TooMany) => v5::SubscribeReasonCode::QuotaExceeded,
                        Err(SubscribeError::NotAuthorized) => {
                            v5::SubscribeReasonCode::NotAuthorized
                        }
                        Err(SubscribeError::QoS2) => {
                            v5::SubscribeReasonCode::ImplementationSpecific
                        }
                    })
                    .collect(),
                properties: None,
            }),
            Outgoing::UnsubAck { pkid, filters } => v5::Packet::UnsubAck(v5::UnsubAck {
                pkid,
                reasons: vec![v5::UnsubAckReason::Success; filters],
                properties: None,
            }),
            Outgoing::PingResp => v5::Packet::PingResp(v5::PingResp),
            Outgoing::Disconnect(close) => {
                v5::Packet::Disconnect(v5::Disconnect::new(match close {
                    Close::TakenOver => v5::DisconnectReasonCode::SessionTakenOver,
                    Close::KeepAlive => v5::DisconnectReasonCode::KeepAliveTimeout,
                    Close::QoS2 => v5::DisconnectReasonCode::QoSNotSupported,
                    Close::TopicInvalid => v5::DisconnectReasonCode::TopicNameInvalid,
                    Close::ProtocolError => v5::DisconnectReasonCode::ProtocolError,
                    Close::PacketTooLarge => v5::DisconnectReasonCode::PacketTooLarge,
                    Close::NotAuthorized => v5::DisconnectReasonCode::NotAuthorized,
                }))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivered_message_carries_what_is_left_of_its_expiry_interval() {
        let now = Instant::now();
        let message = Message {
            topic: "t".into(),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Some(Box::new(v5::PublishProperties {
                message_expiry_interval: Some(60),
                ..v5::PublishProperties::default()
            })),
            dup: true,
            expires: Some(now + Duration::from_secs(15)),
        };
        let left = delivered_properties(&message, now + Duration::from_secs(5))
            .and_then(|p| p.message_expiry_interval);
        assert_eq!(left, Some(10));
        assert!(message.live(now));
        assert!(!message.live(now + Duration::from_secs(15)));
        let Some(v4::Packet::Publish(publish)) = V4::outgoing(Outgoing::Publish {
            message: &message,
            pkid: 7,
        }) else {
            panic!("a publish");
        };
        assert!(publish.dup, "a redelivery says so");
    }

    #[test]
    fn an_empty_mqtt5_disconnect_is_a_normal_disconnection() {
        use tokio_util::codec::Decoder;
        let mut codec = V5::codec();
        // `E0 00` then a PINGREQ, in one read.
        let mut bytes = BytesMut::from(&[0xE0, 0x00, 0xC0, 0x00][..]);
        let first = codec.decode(&mut bytes).unwrap().unwrap();
        assert!(matches!(
            V5::incoming(first),
            Incoming::Disconnect {
                publish_will: false
            }
        ));
        let second = codec.decode(&mut bytes).unwrap().unwrap();
        assert!(matches!(V5::incoming(second), Incoming::PingReq));
        assert!(bytes.is_empty());
        // Half a packet waits for the rest.
        let mut bytes = BytesMut::from(&[0xE0][..]);
        assert!(codec.decode(&mut bytes).unwrap().is_none());
    }
}
