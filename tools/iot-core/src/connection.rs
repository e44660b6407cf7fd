//! One client's MQTT conversation, MQTT 3.1.1
//! (<https://docs.oasis-open.org/mqtt/mqtt/v3.1.1/os/mqtt-v3.1.1-os.html>) or MQTT 5
//! (<https://docs.oasis-open.org/mqtt/mqtt/v5.0/mqtt-v5.0.html>), with AWS IoT Core's rules
//! (<https://docs.aws.amazon.com/iot/latest/developerguide/mqtt.html>,
//! <https://docs.aws.amazon.com/general/latest/gr/iot-core.html>):
//!
//! - the first packet is CONNECT, within [`CONNECT_TIMEOUT`]; the client id is 1–128 bytes; the
//!   certificate must be registered and `ACTIVE`, and its policies must allow `iot:Connect`;
//! - every PUBLISH, SUBSCRIBE and delivered message is checked against the connection's policies
//!   (`iot:Publish` and `iot:RetainPublish`, `iot:Subscribe`, `iot:Receive`): MQTT 5 is told with
//!   reason code 0x87 (PUBACK, SUBACK), MQTT 3.1.1 is disconnected, and a message the client may
//!   not receive is not delivered;
//! - keep-alive is clamped to 30–1200 s (0 means 1200), and a client silent for 1.5 times it is
//!   disconnected;
//! - QoS 2 is refused: a QoS 2 publish closes the connection, a QoS 2 subscription fails;
//! - at most [`MAX_INFLIGHT`] QoS 1 messages await the client's PUBACK; the rest wait their turn;
//! - payloads up to 128 KB;
//! - a connection that ends without DISCONNECT (network, keep-alive, protocol error, taken over)
//!   publishes its last will, as does MQTT 5's DISCONNECT with reason 0x04.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use rumqttc::QoS;
use shoal_core::edge::EdgeError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Framed, FramedParts};

use crate::broker::{Broker, Message, OUTGOING_QUEUE, Publisher, SubscribeError};
use crate::identity::{self, Registry, Standing};
use crate::lifecycle::{self, DisconnectReason};
use crate::policy::{Action, Grants};
use crate::topic;
use crate::wire::{
    Close, ConnectRequest, Incoming, MAX_INFLIGHT, MAX_PACKET, MAX_PAYLOAD, Outgoing, Refusal, V4,
    V5, Wire,
};

/// How long a client has to send CONNECT after the TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest client id AWS IoT Core takes, in bytes.
pub const MAX_CLIENT_ID: usize = 128;
/// How long one write to the client may take: a client that does not read for this long is
/// disconnected (its messages go back to its session), so it holds no task or buffer for ever.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a connection is served.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How often a connected client's certificate and policies are read again: a certificate
    /// made inactive or revoked in the registry ends its connections within this time, and a
    /// policy attached, detached or changed applies from then on (AWS: "within a few minutes").
    pub certificate_recheck: Duration,
    /// The most rechecks all connections together make in one second (each reads the registry
    /// four or five times): a recheck over the budget waits for the connection's next tick, so
    /// with many connections each is re-read every `connections / budget` seconds instead of
    /// the registry (moto locally) being asked for every connection every interval.
    pub rechecks_per_s: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            certificate_recheck: Duration::from_secs(60),
            rechecks_per_s: DEFAULT_RECHECKS_PER_S,
        }
    }
}

/// [`Settings::rechecks_per_s`] by default.
pub const DEFAULT_RECHECKS_PER_S: u32 = 10;

/// The rechecks made in the current second, shared by every connection: (second, count)
/// packed as `second << 32 | count`.
static RECHECKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Takes one recheck from this second's budget; `false` when it is spent.
fn recheck_allowed(budget: u32) -> bool {
    use std::sync::atomic::Ordering;
    let second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() & 0xffff_ffff);
    let mut current = RECHECKS.load(Ordering::Relaxed);
    loop {
        let (at, used) = (current >> 32, current & 0xffff_ffff);
        let next = if at == second {
            if used >= u64::from(budget) {
                return false;
            }
            current + 1
        } else {
            second << 32 | 1
        };
        match RECHECKS.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(seen) => current = seen,
        }
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Refused at CONNECT (or before): why.
    Refused(String),
    /// The client sent DISCONNECT.
    Disconnected,
    /// The connection ended otherwise, for this reason: the will (if any) was published.
    Lost(DisconnectReason, String),
}

/// What the connection knows of its client from the TLS handshake.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The id of the certificate the client presented ([`crate::identity::certificate_id`]).
    pub certificate_id: String,
    /// The client's IP address (the lifecycle events' `ipAddress`).
    pub ip_address: std::net::IpAddr,
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
    let header = frame.get(at + 1..)?;
    let name_len = usize::from(u16::from_be_bytes([*header.first()?, *header.get(1)?]));
    header.get(2 + name_len).copied()
}

/// Reads bytes until `buf` holds one whole packet.
async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<(), String> {
    loop {
        match rumqttc::mqttbytes::check(buf.iter(), MAX_PACKET) {
            Ok(_) => return Ok(()),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(e.to_string()),
        }
        if stream.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("closed before CONNECT".into());
        }
    }
}

/// Serves one client on `stream` (after the TLS handshake) until its connection ends.
pub async fn serve<S, R>(
    mut stream: S,
    peer: Peer,
    broker: Arc<Broker>,
    registry: Arc<R>,
    settings: Settings,
) -> Ended
where
    S: AsyncRead + AsyncWrite + Unpin,
    R: Registry,
{
    let mut buf = BytesMut::with_capacity(1024);
    match tokio::time::timeout(CONNECT_TIMEOUT, read_frame(&mut stream, &mut buf)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Ended::Refused(e),
        Err(_) => return Ended::Refused("no CONNECT within the timeout".into()),
    }
    match protocol_level(&buf) {
        Some(4) => converse::<V4, _, _>(stream, buf, peer, broker, registry, settings).await,
        Some(5) => converse::<V5, _, _>(stream, buf, peer, broker, registry, settings).await,
        Some(level) => {
            // MQTT 3.1 (and anything else): CONNACK 0x01, unacceptable protocol version.
            let _ = stream.write_all(&[0x20, 0x02, 0x00, 0x01]).await;
            Ended::Refused(format!(
                "protocol level {level} is neither MQTT 3.1.1 nor 5"
            ))
        }
        None => Ended::Refused("the first packet is not CONNECT".into()),
    }
}

async fn send<W: Wire, S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, W::Codec>,
    out: Outgoing<'_>,
) -> Result<(), String> {
    let Some(packet) = W::outgoing(out) else {
        return Ok(());
    };
    match tokio::time::timeout(WRITE_TIMEOUT, framed.send(packet)).await {
        Ok(sent) => sent.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "the client read nothing for {} s",
            WRITE_TIMEOUT.as_secs()
        )),
    }
}

/// How a connection ends when the broker lets go of it: taken over by a new connection with the
/// same client id (the client is told so), or the broker closed the session. The will is due
/// either way.
async fn let_go<W: Wire, S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, W::Codec>,
    taken_over: bool,
) -> (Ended, bool) {
    if !taken_over {
        let why = "the broker closed the session".into();
        return (
            Ended::Lost(DisconnectReason::ServerInitiatedDisconnect, why),
            true,
        );
    }
    let _ = send::<W, S>(framed, Outgoing::Disconnect(Close::TakenOver)).await;
    let why = "taken over by a new connection with the same client id".into();
    (Ended::Lost(DisconnectReason::DuplicateClientId, why), true)
}

/// Checks a CONNECT: the connection's policies, or `Err` with the refusal and why.
async fn admit<R: Registry>(
    request: &ConnectRequest,
    peer: &Peer,
    registry: &R,
) -> Result<Grants, (Refusal, String)> {
    let id = &request.client_id;
    if id.is_empty() || id.len() > MAX_CLIENT_ID {
        let why = format!("client id of {} bytes (1-{MAX_CLIENT_ID})", id.len());
        return Err((Refusal::BadClientId, why));
    }
    if let Some(will) = &request.will
        && (topic::check_name(&will.topic).is_err() || will.qos == QoS::ExactlyOnce)
    {
        let why = format!("will topic {:?} or its QoS refused", will.topic);
        return Err((Refusal::BadWill, why));
    }
    match identity::standing(registry, &peer.certificate_id, id).await {
        Ok(Standing::Active(grants)) if grants.allows(Action::Connect, id) => Ok(grants),
        Ok(Standing::Active(_)) => {
            let why = format!(
                "no policy of certificate {} allows iot:Connect on client/{id}",
                peer.certificate_id
            );
            Err((Refusal::NotAuthorized, why))
        }
        Ok(standing) => Err((
            Refusal::NotAuthorized,
            not_standing(&peer.certificate_id, &standing),
        )),
        Err(e) => Err((Refusal::ServerUnavailable, e.to_string())),
    }
}

/// Why a certificate that is not `ACTIVE` may not stay.
fn not_standing(certificate_id: &str, standing: &Standing) -> String {
    match standing {
        Standing::NotRegistered => format!("certificate {certificate_id} is not registered"),
        Standing::NotActive(status) => format!("certificate {certificate_id} is {status}"),
        Standing::Active(_) => format!("certificate {certificate_id} is ACTIVE"),
    }
}

/// Whether a client may publish `message`: not on a reserved topic only AWS IoT publishes on
/// ([`topic::reserved_publish_refusal`]), and `grants` allow it (`iot:Publish`, and
/// `iot:RetainPublish` for a retained one); `Err` names what is denied.
fn may_publish(grants: &Grants, message: &Message) -> Result<(), String> {
    if let Some(why) = topic::reserved_publish_refusal(&message.topic, message.retain) {
        return Err(why);
    }
    let denied = if !grants.allows(Action::Publish, &message.topic) {
        Action::Publish
    } else if message.retain && !grants.allows(Action::RetainPublish, &message.topic) {
        Action::RetainPublish
    } else {
        return Ok(());
    };
    Err(format!(
        "no policy allows {denied} on topic/{}",
        message.topic
    ))
}

async fn converse<W, S, R>(
    stream: S,
    buf: BytesMut,
    peer: Peer,
    broker: Arc<Broker>,
    registry: Arc<R>,
    settings: Settings,
) -> Ended
where
    W: Wire,
    S: AsyncRead + AsyncWrite + Unpin,
    R: Registry,
{
    let mut parts = FramedParts::new::<W::Packet>(stream, W::codec());
    parts.read_buf = buf;
    let mut framed = Framed::from_parts(parts);
    let request = match framed.next().await {
        Some(Ok(packet)) => match W::connect(packet) {
            Ok(request) => request,
            Err(e) => return Ended::Refused(e),
        },
        Some(Err(e)) => return Ended::Refused(e.to_string()),
        None => return Ended::Refused("closed before CONNECT".into()),
    };
    let mut grants = match admit(&request, &peer, registry.as_ref()).await {
        Ok(grants) => grants,
        Err((refusal, why)) => {
            let refused = Outgoing::ConnAck {
                refused: Some(refusal),
                session_present: false,
                keep_alive_s: 0,
            };
            let _ = send::<W, S>(&mut framed, refused).await;
            return Ended::Refused(why);
        }
    };
    let client_id = request.client_id;
    let will = request.will;
    let publisher = Publisher {
        client_id: client_id.clone(),
        principal: peer.certificate_id.clone(),
    };
    let mut attached = broker.connect(&client_id, request.clean_start, request.session_expiry);
    let keep_alive_s = effective_keep_alive(request.keep_alive_s);
    let accepted = Outgoing::ConnAck {
        refused: None,
        session_present: attached.session_present,
        keep_alive_s,
    };
    if let Err(e) = send::<W, S>(&mut framed, accepted).await {
        broker.disconnect(
            &client_id,
            attached.connection,
            std::mem::take(&mut attached.pending),
        );
        return Ended::Lost(
            DisconnectReason::ConnectionLost,
            format!("CONNACK could not be sent: {e}"),
        );
    }
    // AWS IoT Core's lifecycle events: connected now, disconnected when the connection ends.
    let session = lifecycle::Session::new(&client_id, &peer.certificate_id, peer.ip_address);
    if let Some((topic, payload)) = session.connected(lifecycle::now_ms()) {
        broker.publish(Message::from_service(topic, payload));
    }
    let keep_alive = Duration::from_millis(u64::from(keep_alive_s) * 1500);
    let mut last_heard = tokio::time::Instant::now();
    let mut recheck = tokio::time::interval(settings.certificate_recheck);
    // Ticks missed while a check ran are not made up in a burst: one check per interval.
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    recheck.tick().await;
    let mut checking: Option<tokio::task::JoinHandle<Result<Standing, EdgeError>>> = None;

    let mut flow = Flow {
        inflight: BTreeMap::new(),
        backlog: attached.pending.drain(..).collect(),
        next_pkid: 0,
    };
    let (ended, publish_will) = loop {
        if let Err(e) = flow.flush::<W, S>(&mut framed, &grants, &client_id).await {
            break (Ended::Lost(DisconnectReason::ConnectionLost, e), true);
        }
        let room = flow.backlog.len() < OUTGOING_QUEUE;
        tokio::select! {
            incoming = framed.next() => {
                let packet = match incoming {
                    None => break (Ended::Lost(DisconnectReason::ConnectionLost, "the client closed the connection".into()), true),
                    Some(Err(e)) => break (Ended::Lost(DisconnectReason::ClientError, e.to_string()), true),
                    Some(Ok(packet)) => packet,
                };
                // Only what the client sends keeps its connection alive.
                last_heard = tokio::time::Instant::now();
                let context = Context { client_id: &client_id, publisher: &publisher, broker: &broker, grants: &grants };
                match handle::<W, S>(W::incoming(packet), &context, &mut flow, &mut framed).await {
                    Ok(None) => {}
                    Ok(Some(end)) => break end,
                    Err(e) => break (Ended::Lost(DisconnectReason::ConnectionLost, e), true),
                }
            }
            () = tokio::time::sleep_until(last_heard + keep_alive) => {
                let _ = send::<W, S>(&mut framed, Outgoing::Disconnect(Close::KeepAlive)).await;
                break (Ended::Lost(DisconnectReason::MqttKeepAliveTimeout, "keep-alive expired".into()), true);
            }
            out = attached.outgoing.recv(), if room => {
                match out {
                    Some(message) => flow.backlog.push_back(message),
                    // The broker let go of this connection: the queue's closing and the
                    // take-over signal come together, in either order.
                    None => {
                        let taken_over = attached.taken_over.try_recv().is_ok();
                        break let_go::<W, S>(&mut framed, taken_over).await;
                    }
                }
            }
            signal = &mut attached.taken_over => {
                break let_go::<W, S>(&mut framed, signal.is_ok()).await;
            }
            _ = recheck.tick(), if checking.is_none() => {
                if !recheck_allowed(settings.rechecks_per_s) {
                    continue;
                }
                // Read in a task of its own: a slow registry never holds up this connection's
                // packets (a PINGREQ unanswered for the registry's sake ends it).
                let (registry, certificate_id, id) =
                    (registry.clone(), peer.certificate_id.clone(), client_id.clone());
                checking = Some(tokio::spawn(async move {
                    identity::standing(registry.as_ref(), &certificate_id, &id).await
                }));
            }
            checked = async { checking.as_mut().expect("guarded").await }, if checking.is_some() => {
                checking = None;
                let Ok(checked) = checked else {
                    continue;
                };
                match checked {
                    Ok(Standing::Active(now)) => grants = now,
                    Ok(standing) => {
                        let _ = send::<W, S>(&mut framed, Outgoing::Disconnect(Close::NotAuthorized)).await;
                        break (Ended::Lost(DisconnectReason::AuthError, not_standing(&peer.certificate_id, &standing)), true);
                    }
                    // The registry could not be asked: the connection stands until it can.
                    Err(e) => tracing::warn!(client_id, error = %e, "certificate recheck failed"),
                }
            }
        }
    };
    if let Some(task) = checking {
        task.abort();
    }
    if let (true, Some(will)) = (publish_will, will) {
        match may_publish(&grants, &will) {
            Ok(()) => {
                broker.publish_from(will, Some(&publisher));
            }
            Err(why) => tracing::info!(client_id, why, "last will not published"),
        }
    }
    // Everything this connection held goes back to the session: sent and not acknowledged, not
    // sent yet, and still in its queue.
    attached.outgoing.close();
    let sent = flow
        .inflight
        .into_values()
        .map(|m| Message { dup: true, ..m });
    let mut unacknowledged: Vec<Message> = sent.chain(flow.backlog).collect();
    while let Ok(message) = attached.outgoing.try_recv() {
        unacknowledged.push(message);
    }
    broker.disconnect(&client_id, attached.connection, unacknowledged);
    let reason = match &ended {
        Ended::Lost(reason, _) => *reason,
        Ended::Disconnected | Ended::Refused(_) => DisconnectReason::ClientInitiatedDisconnect,
    };
    if let Some((topic, payload)) = session.disconnected(lifecycle::now_ms(), reason) {
        broker.publish(Message::from_service(topic, payload));
    }
    let _ = tokio::time::timeout(WRITE_TIMEOUT, framed.get_mut().shutdown()).await;
    tracing::info!(client_id, certificate_id = %peer.certificate_id, ?ended, "session ended");
    ended
}

/// One connection's outgoing QoS 1 flow.
struct Flow {
    /// Sent, awaiting PUBACK, by packet id.
    inflight: BTreeMap<u16, Message>,
    /// To send, in order, as room in `inflight` allows.
    backlog: VecDeque<Message>,
    next_pkid: u16,
}

impl Flow {
    fn pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }

    /// Sends what the backlog holds while QoS 1 room lasts.
    async fn flush<W: Wire, S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        framed: &mut Framed<S, W::Codec>,
        grants: &Grants,
        client_id: &str,
    ) -> Result<(), String> {
        while self.inflight.len() < MAX_INFLIGHT {
            let Some(message) = self.backlog.pop_front() else {
                break;
            };
            // MQTT 5: a message whose expiry interval ran out while it waited is not delivered.
            if !message.live(std::time::Instant::now()) {
                continue;
            }
            // AWS IoT checks `iot:Receive` for every message it delivers.
            if !grants.allows(Action::Receive, &message.topic) {
                tracing::debug!(
                    client_id,
                    topic = message.topic,
                    "not delivered: iot:Receive denied"
                );
                continue;
            }
            let pkid = match message.qos {
                QoS::AtLeastOnce => self.pkid(),
                _ => 0,
            };
            send::<W, S>(
                framed,
                Outgoing::Publish {
                    message: &message,
                    pkid,
                },
            )
            .await?;
            if pkid != 0 {
                self.inflight.insert(pkid, message);
            }
        }
        Ok(())
    }
}

/// What [`handle`] reads of its connection.
struct Context<'a> {
    client_id: &'a str,
    publisher: &'a Publisher,
    broker: &'a Broker,
    grants: &'a Grants,
}

/// Handles one event from the client; `Ok(Some((ended, publish_will)))` when the connection ends
/// with it.
async fn handle<W: Wire, S: AsyncRead + AsyncWrite + Unpin>(
    incoming: Incoming,
    context: &Context<'_>,
    flow: &mut Flow,
    framed: &mut Framed<S, W::Codec>,
) -> Result<Option<(Ended, bool)>, String> {
    let Context {
        client_id,
        publisher,
        broker,
        grants,
    } = *context;
    let close = async |framed: &mut Framed<S, W::Codec>, close: Close, why: String| {
        let _ = send::<W, S>(framed, Outgoing::Disconnect(close)).await;
        Ok(Some((
            Ended::Lost(DisconnectReason::of_close(close), why),
            true,
        )))
    };
    match incoming {
        Incoming::Publish { message, pkid } => {
            if message.qos == QoS::ExactlyOnce {
                return close(framed, Close::QoS2, "QoS 2 publish: not supported".into()).await;
            }
            if let Err(e) = topic::check_name(&message.topic) {
                let why = format!("publish to {:?}: {e}", message.topic);
                return close(framed, Close::TopicInvalid, why).await;
            }
            if message.payload.len() > MAX_PAYLOAD {
                let why = format!(
                    "a payload of {} bytes (at most {MAX_PAYLOAD})",
                    message.payload.len()
                );
                return close(framed, Close::PacketTooLarge, why).await;
            }
            let qos = message.qos;
            if let Err(why) = may_publish(grants, &message) {
                if !W::REASON_CODES {
                    return close(framed, Close::NotAuthorized, why).await;
                }
                tracing::info!(client_id, why, "publish refused");
                if qos == QoS::AtLeastOnce {
                    send::<W, S>(framed, Outgoing::PubAckNotAuthorized(pkid)).await?;
                }
                return Ok(None);
            }
            broker.publish_from(message, Some(publisher));
            if qos == QoS::AtLeastOnce {
                send::<W, S>(framed, Outgoing::PubAck(pkid)).await?;
            }
        }
        Incoming::PubAck(pkid) => {
            flow.inflight.remove(&pkid);
        }
        Incoming::Subscribe { pkid, filters } => {
            let (allowed, denied): (Vec<_>, Vec<_>) = filters
                .iter()
                .cloned()
                .partition(|(filter, ..)| grants.allows(Action::Subscribe, filter));
            if let (false, Some((filter, ..))) = (W::REASON_CODES, denied.first()) {
                let why = format!("no policy allows iot:Subscribe on topicfilter/{filter}");
                return close(framed, Close::NotAuthorized, why).await;
            }
            let (granted, retained) = broker.subscribe(client_id, &allowed);
            let mut granted = granted.into_iter();
            let results: Vec<_> = filters
                .iter()
                .map(|(filter, ..)| {
                    if grants.allows(Action::Subscribe, filter) {
                        granted.next().unwrap_or(Err(SubscribeError::NotAuthorized))
                    } else {
                        Err(SubscribeError::NotAuthorized)
                    }
                })
                .collect();
            for (result, (filter, ..)) in results.iter().zip(&filters) {
                if let Err(e) = result {
                    tracing::info!(client_id, filter, error = %e, "subscription refused");
                }
            }
            send::<W, S>(
                framed,
                Outgoing::SubAck {
                    pkid,
                    results: &results,
                },
            )
            .await?;
            flow.backlog.extend(retained);
        }
        Incoming::Unsubscribe { pkid, filters } => {
            broker.unsubscribe(client_id, &filters);
            send::<W, S>(
                framed,
                Outgoing::UnsubAck {
                    pkid,
                    filters: filters.len(),
                },
            )
            .await?;
        }
        Incoming::PingReq => send::<W, S>(framed, Outgoing::PingResp).await?,
        Incoming::Disconnect { publish_will } => {
            return Ok(Some((Ended::Disconnected, publish_will)));
        }
        Incoming::Unsupported(reason, why) => return close(framed, reason, why.into()).await,
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
        rumqttc::mqttbytes::v4::Packet::Connect(rumqttc::mqttbytes::v4::Connect::new("d-1"))
            .write(&mut buf, 1024)
            .unwrap();
        assert_eq!(protocol_level(&buf), Some(4));
        let mut v5 = BytesMut::new();
        rumqttc::v5::mqttbytes::v5::Packet::Connect(
            rumqttc::v5::mqttbytes::v5::Connect {
                keep_alive: 30,
                client_id: "d-1".into(),
                clean_start: true,
                properties: None,
            },
            None,
            None,
        )
        .write(&mut v5, None)
        .unwrap();
        assert_eq!(protocol_level(&v5), Some(5));
        assert_eq!(protocol_level(&[0xC0, 0x00]), None, "PINGREQ");
        assert_eq!(protocol_level(&[0x10]), None, "cut short");
    }
}
