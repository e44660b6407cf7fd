//! One client's MQTT 3.1.1 conversation (<https://docs.oasis-open.org/mqtt/mqtt/v3.1.1/os/mqtt-v3.1.1-os.html>),
//! with AWS IoT Core's rules (<https://docs.aws.amazon.com/iot/latest/developerguide/mqtt.html>,
//! <https://docs.aws.amazon.com/general/latest/gr/iot-core.html>):
//!
//! - the first packet is CONNECT, within [`CONNECT_TIMEOUT`]; the client id is 1–128 bytes
//!   (`BadClientId` otherwise); the certificate must be registered and `ACTIVE`
//!   (`NotAuthorized` otherwise). MQTT 5 is answered with CONNACK 0x84 (not yet supported here).
//! - keep-alive is clamped to 30–1200 s (0 means 1200), and a client silent for 1.5 times it is
//!   disconnected;
//! - QoS 2 is refused: a QoS 2 publish closes the connection, a QoS 2 subscription fails
//!   (SUBACK 0x80);
//! - at most [`MAX_INFLIGHT`] QoS 1 messages await the client's PUBACK; the rest wait their turn;
//! - payloads up to 128 KB;
//! - a connection that ends without DISCONNECT (network, keep-alive, protocol error, taken over)
//!   publishes its last will.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use rumqttc::QoS;
use rumqttc::mqttbytes::v4::{
    Codec, ConnAck, ConnectReturnCode, Packet, PubAck, Publish, SubAck, SubscribeReasonCode,
    UnsubAck,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Framed, FramedParts};

use crate::broker::{Broker, Message, ToClient};
use crate::identity::{ACTIVE, Registry};
use crate::topic;

/// How long a client has to send CONNECT after the TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest payload AWS IoT Core takes, in bytes (128 KB).
pub const MAX_PAYLOAD: usize = 128 * 1024;
/// QoS 1 messages sent and not yet acknowledged, per connection, at most (AWS IoT Core's
/// in-flight limit).
pub const MAX_INFLIGHT: usize = 100;
/// The longest client id AWS IoT Core takes, in bytes.
pub const MAX_CLIENT_ID: usize = 128;

/// The packet-size bound: the largest payload plus a topic and the headers.
const MAX_PACKET: usize = MAX_PAYLOAD + 1024;

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Refused at CONNECT (the CONNACK code sent, or why none could be).
    Refused(String),
    /// The client sent DISCONNECT.
    Disconnected,
    /// The connection ended otherwise: the will (if any) was published.
    Lost(String),
}

/// What the connection knows of its client from the TLS handshake.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The id of the certificate the client presented ([`crate::identity::certificate_id`]).
    pub certificate_id: String,
}

/// The keep-alive AWS IoT Core applies to a requested one, in seconds.
pub fn effective_keep_alive(requested_s: u16) -> u16 {
    match requested_s {
        0 => 1200,
        s => s.clamp(30, 1200),
    }
}

/// The MQTT protocol level a complete CONNECT frame asks for (`4`: 3.1.1, `5`: MQTT 5, `3`: 3.1),
/// `None` when the frame is not a CONNECT.
fn protocol_level(frame: &[u8]) -> Option<u8> {
    if frame.first()? >> 4 != 1 {
        return None;
    }
    // Remaining length: 1–4 bytes of 7 bits, the top bit saying "more".
    let mut at = 1;
    while frame.get(at)? & 0x80 != 0 {
        at += 1;
        if at > 4 {
            return None;
        }
    }
    let header = &frame[at + 1..];
    let name_len = usize::from(u16::from_be_bytes([*header.first()?, *header.get(1)?]));
    header.get(2 + name_len).copied()
}

/// Reads bytes until `buf` holds one whole packet; returns its length.
async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<usize, String> {
    loop {
        match rumqttc::mqttbytes::check(buf.iter(), MAX_PACKET) {
            Ok(header) => return Ok(header.frame_length()),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(e.to_string()),
        }
        if stream.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("closed before CONNECT".into());
        }
    }
}

/// Serves one client on `stream` (after the TLS handshake) until its connection ends.
pub async fn serve<S, R>(mut stream: S, peer: Peer, broker: Arc<Broker>, registry: Arc<R>) -> Ended
where
    S: AsyncRead + AsyncWrite + Unpin,
    R: Registry,
{
    let mut buf = BytesMut::with_capacity(1024);
    let frame_len =
        match tokio::time::timeout(CONNECT_TIMEOUT, read_frame(&mut stream, &mut buf)).await {
            Ok(Ok(len)) => len,
            Ok(Err(e)) => return Ended::Refused(e),
            Err(_) => return Ended::Refused("no CONNECT within the timeout".into()),
        };
    match protocol_level(&buf[..frame_len]) {
        Some(4) => {}
        Some(5) => {
            // MQTT 5 CONNACK: no session, reason 0x84 "Unsupported Protocol Version", no properties.
            let _ = stream.write_all(&[0x20, 0x03, 0x00, 0x84, 0x00]).await;
            return Ended::Refused("MQTT 5 is not supported yet".into());
        }
        Some(level) => {
            let _ = stream.write_all(&[0x20, 0x02, 0x00, 0x01]).await;
            return Ended::Refused(format!("protocol level {level} is not MQTT 3.1.1"));
        }
        None => return Ended::Refused("the first packet is not CONNECT".into()),
    }
    let mut parts = FramedParts::new::<Packet>(
        stream,
        Codec {
            max_incoming_size: MAX_PACKET,
            max_outgoing_size: MAX_PACKET,
        },
    );
    parts.read_buf = buf;
    let mut framed = Framed::from_parts(parts);
    let connect = match framed.next().await {
        Some(Ok(Packet::Connect(connect))) => connect,
        Some(Ok(_)) => return Ended::Refused("the first packet is not CONNECT".into()),
        Some(Err(e)) => return Ended::Refused(e.to_string()),
        None => return Ended::Refused("closed before CONNECT".into()),
    };
    let refuse = async |framed: &mut Framed<S, Codec>, code: ConnectReturnCode, why: String| {
        let _ = framed
            .send(Packet::ConnAck(ConnAck::new(code, false)))
            .await;
        Ended::Refused(why)
    };
    let client_id = connect.client_id.clone();
    if client_id.is_empty() || client_id.len() > MAX_CLIENT_ID {
        let why = format!("client id of {} bytes (1-{MAX_CLIENT_ID})", client_id.len());
        return refuse(&mut framed, ConnectReturnCode::BadClientId, why).await;
    }
    match registry.certificate_status(&peer.certificate_id).await {
        Ok(Some(status)) if status == ACTIVE => {}
        Ok(status) => {
            let why = format!(
                "certificate {} is {}",
                peer.certificate_id,
                status.as_deref().unwrap_or("not registered")
            );
            return refuse(&mut framed, ConnectReturnCode::NotAuthorized, why).await;
        }
        Err(e) => {
            return refuse(
                &mut framed,
                ConnectReturnCode::ServiceUnavailable,
                e.to_string(),
            )
            .await;
        }
    }
    let will = match connect.last_will {
        Some(will) => {
            if topic::check_name(&will.topic).is_err() || will.qos == QoS::ExactlyOnce {
                return Ended::Refused(format!("will topic {:?} or its QoS refused", will.topic));
            }
            Some(Message {
                topic: will.topic,
                payload: will.message,
                qos: will.qos,
                retain: will.retain,
            })
        }
        None => None,
    };
    let mut attached = broker.connect(&client_id, connect.clean_session);
    let ack = ConnAck::new(ConnectReturnCode::Success, attached.session_present);
    if framed.send(Packet::ConnAck(ack)).await.is_err() {
        broker.disconnect(
            &client_id,
            attached.connection,
            std::mem::take(&mut attached.pending),
        );
        return Ended::Lost("CONNACK could not be sent".into());
    }
    let keep_alive =
        Duration::from_millis(u64::from(effective_keep_alive(connect.keep_alive)) * 1500);

    let mut session = Conversation {
        inflight: BTreeMap::new(),
        backlog: attached.pending.drain(..).collect(),
        next_pkid: 0,
    };
    let ended = loop {
        if let Err(e) = session.flush(&mut framed).await {
            break Ended::Lost(e);
        }
        let room = session.inflight.len() < MAX_INFLIGHT;
        tokio::select! {
            incoming = tokio::time::timeout(keep_alive, framed.next()) => {
                let packet = match incoming {
                    Err(_) => break Ended::Lost("keep-alive expired".into()),
                    Ok(None) => break Ended::Lost("the client closed the connection".into()),
                    Ok(Some(Err(e))) => break Ended::Lost(e.to_string()),
                    Ok(Some(Ok(packet))) => packet,
                };
                match handle(packet, &client_id, &broker, &mut session, &mut framed).await {
                    Ok(None) => {}
                    Ok(Some(ended)) => break ended,
                    Err(e) => break Ended::Lost(e),
                }
            }
            out = attached.outgoing.recv(), if room && session.backlog.is_empty() => {
                match out {
                    Some(ToClient::Publish(message)) => session.backlog.push_back(message),
                    Some(ToClient::TakenOver) => break Ended::Lost("taken over by a new connection with the same client id".into()),
                    None => break Ended::Lost("the broker closed the session".into()),
                }
            }
        }
    };
    if let (Ended::Lost(_), Some(will)) = (&ended, will) {
        broker.publish(will);
    }
    let unacknowledged = session
        .inflight
        .into_values()
        .chain(session.backlog)
        .collect();
    broker.disconnect(&client_id, attached.connection, unacknowledged);
    let _ = framed.get_mut().shutdown().await;
    ended
}

/// What one connection keeps of its outgoing QoS 1 flow.
struct Conversation {
    /// Sent, awaiting PUBACK, by packet id.
    inflight: BTreeMap<u16, Message>,
    /// To send, in order, as room in `inflight` allows.
    backlog: VecDeque<Message>,
    next_pkid: u16,
}

impl Conversation {
    fn pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }

    /// Sends what the backlog holds while QoS 1 room lasts.
    async fn flush<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        framed: &mut Framed<S, Codec>,
    ) -> Result<(), String> {
        while self.inflight.len() < MAX_INFLIGHT {
            let Some(message) = self.backlog.pop_front() else {
                break;
            };
            let mut publish =
                Publish::from_bytes(message.topic.clone(), message.qos, message.payload.clone());
            publish.retain = message.retain;
            if message.qos == QoS::AtLeastOnce {
                publish.pkid = self.pkid();
                self.inflight.insert(publish.pkid, message);
            }
            framed
                .send(Packet::Publish(publish))
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Handles one packet from the client; `Ok(Some(_))` when the connection ends with it.
async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
    packet: Packet,
    client_id: &str,
    broker: &Broker,
    session: &mut Conversation,
    framed: &mut Framed<S, Codec>,
) -> Result<Option<Ended>, String> {
    let reply = match packet {
        Packet::Publish(publish) => {
            if publish.qos == QoS::ExactlyOnce {
                return Ok(Some(Ended::Lost("QoS 2 publish: not supported".into())));
            }
            if let Err(e) = topic::check_name(&publish.topic) {
                return Ok(Some(Ended::Lost(format!(
                    "publish to {:?}: {e}",
                    publish.topic
                ))));
            }
            let ack = (publish.qos == QoS::AtLeastOnce).then(|| PubAck::new(publish.pkid));
            broker.publish(Message {
                topic: publish.topic,
                payload: publish.payload,
                qos: publish.qos,
                retain: publish.retain,
            });
            ack.map(Packet::PubAck)
        }
        Packet::PubAck(ack) => {
            session.inflight.remove(&ack.pkid);
            None
        }
        Packet::Subscribe(subscribe) => {
            let filters: Vec<(String, QoS)> = subscribe
                .filters
                .into_iter()
                .map(|f| (f.path, f.qos))
                .collect();
            let (granted, retained) = broker.subscribe(client_id, &filters);
            let codes = granted
                .into_iter()
                .map(|g| match g {
                    Ok(qos) => SubscribeReasonCode::Success(qos),
                    Err(e) => {
                        tracing::info!(client_id, error = %e, "subscription refused");
                        SubscribeReasonCode::Failure
                    }
                })
                .collect();
            framed
                .send(Packet::SubAck(SubAck::new(subscribe.pkid, codes)))
                .await
                .map_err(|e| e.to_string())?;
            session.backlog.extend(retained);
            None
        }
        Packet::Unsubscribe(unsubscribe) => {
            broker.unsubscribe(client_id, &unsubscribe.topics);
            Some(Packet::UnsubAck(UnsubAck::new(unsubscribe.pkid)))
        }
        Packet::PingReq => Some(Packet::PingResp),
        Packet::Disconnect => return Ok(Some(Ended::Disconnected)),
        Packet::Connect(_) => return Ok(Some(Ended::Lost("a second CONNECT".into()))),
        other => {
            return Ok(Some(Ended::Lost(format!(
                "{other:?}: QoS 2 flows are not supported"
            ))));
        }
    };
    if let Some(packet) = reply {
        framed.send(packet).await.map_err(|e| e.to_string())?;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_is_clamped_as_aws_iot_core_does() {
        assert_eq!(effective_keep_alive(0), 1200);
        assert_eq!(effective_keep_alive(5), 30);
        assert_eq!(effective_keep_alive(60), 60);
        assert_eq!(effective_keep_alive(3600), 1200);
    }

    #[test]
    fn the_protocol_level_is_read_from_a_connect_frame() {
        let mut buf = BytesMut::new();
        Packet::Connect(rumqttc::mqttbytes::v4::Connect::new("d-1"))
            .write(&mut buf, 1024)
            .unwrap();
        assert_eq!(protocol_level(&buf), Some(4));
        let mut v5 = buf.to_vec();
        let at = v5.iter().position(|b| *b == b'T').unwrap() + 2;
        v5[at] = 5;
        assert_eq!(protocol_level(&v5), Some(5));
        assert_eq!(protocol_level(&[0xC0, 0x00]), None, "PINGREQ");
        assert_eq!(protocol_level(&[0x10]), None, "cut short");
    }
}
