//! The message broker: sessions by client id, their subscriptions, retained messages, and the
//! routing of every publish to the sessions whose filters match it.
//!
//! It follows AWS IoT Core's broker (<https://docs.aws.amazon.com/iot/latest/developerguide/mqtt.html>):
//! QoS 0 and 1 (a message reaches a subscriber at the lower of its publish QoS and the
//! subscription's); retained messages, one per topic, an empty payload clearing it; a clean
//! session ends with its connection, a persistent one keeps its subscriptions and queues QoS 1
//! messages while its client is away until it expires (one hour by default, AWS's default); a
//! second connection with a client id takes the session over and closes the first.
//!
//! Every bound is explicit: a connection's outgoing queue, a persistent session's queue while it
//! is away, and the number of subscriptions a session may hold — so no client can make the broker
//! hold unbounded memory on its behalf.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::QoS;
use tokio::sync::{mpsc, oneshot};

use crate::subscriptions::SubscriptionTree;
use crate::topic;

/// Messages waiting in one connection's outgoing queue, at most; past it a message to that
/// connection is dropped and counted (a client that does not read is not allowed to grow it).
pub const OUTGOING_QUEUE: usize = 1_000;
/// QoS 1 messages a persistent session keeps while its client is away, at most (the oldest go
/// first).
pub const QUEUED_WHILE_AWAY: usize = 1_000;
/// Subscriptions per session, at most (AWS IoT's quota: 50 per connection).
pub const MAX_SUBSCRIPTIONS: usize = 50;

/// One application message on its way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic name it was published to.
    pub topic: String,
    /// The payload, as published.
    pub payload: Bytes,
    /// Its QoS (0 or 1).
    pub qos: QoS,
    /// As delivered: set only when it is sent because a subscription was just made.
    pub retain: bool,
    /// MQTT 5 publish properties that travel with it (user properties, content type, response
    /// topic, correlation data, payload format, message expiry); MQTT 3.1.1 clients get none.
    pub properties: Option<Box<rumqttc::v5::mqttbytes::v5::PublishProperties>>,
    /// Sent to this session before and not acknowledged: MQTT's DUP flag on redelivery.
    pub dup: bool,
    /// When MQTT 5's message expiry interval runs out: not delivered after (`None`: never).
    pub expires: Option<Instant>,
}

impl Message {
    /// What AWS IoT itself publishes (lifecycle events, a service's answers): QoS 1, so that
    /// QoS 1 subscribers get it reliably; not retained, no properties.
    pub fn from_service(topic: String, payload: Vec<u8>) -> Self {
        Self {
            topic,
            payload: payload.into(),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: None,
            dup: false,
            expires: None,
        }
    }

    /// Whether it may still be delivered at `now`.
    pub fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|at| at > now)
    }
}

/// The connection's end of its link to the session: fired when another connection takes the
/// session over (the connection then closes and publishes its will). Separate from the message
/// queue, so that a full queue cannot delay it.
pub type TakenOver = oneshot::Receiver<()>;

#[derive(Debug)]
struct Link {
    connection: u64,
    sender: mpsc::Sender<Message>,
    taken_over: oneshot::Sender<()>,
}

/// How a connection attached to its session.
#[derive(Debug)]
pub struct Attached {
    /// This connection's number, to detach it (and only it) later.
    pub connection: u64,
    /// The messages the broker routes to it.
    pub outgoing: mpsc::Receiver<Message>,
    /// Fires when another connection takes the session over.
    pub taken_over: TakenOver,
    /// Whether a persistent session was resumed (CONNACK's session present).
    pub session_present: bool,
    /// QoS 1 messages queued while the client was away, and those it had not acknowledged: to
    /// send first, in order.
    pub pending: Vec<Message>,
}

#[derive(Debug)]
struct Session {
    /// How long it outlives its connection; `None`: it ends with it.
    expiry: Option<Duration>,
    subscriptions: BTreeMap<String, QoS>,
    connection: Option<Link>,
    queued: VecDeque<Message>,
    /// When an away persistent session is forgotten.
    expires: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    sessions: HashMap<String, Session>,
    /// Every session's filters (those in its `subscriptions`, no others), for routing.
    index: SubscriptionTree,
    retained: BTreeMap<String, Message>,
    next_connection: u64,
    dropped: u64,
}

/// Counters the broker keeps (for logs and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Sessions held, connected or away.
    pub sessions: usize,
    /// Retained messages held.
    pub retained: usize,
    /// Messages dropped because a queue was full.
    pub dropped: u64,
}

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The filter breaks MQTT's or AWS IoT's topic rules.
    #[error(transparent)]
    Filter(#[from] topic::TopicError),
    /// QoS 2, which AWS IoT Core does not support.
    #[error("QoS 2 is not supported")]
    QoS2,
    /// The session already holds [`MAX_SUBSCRIPTIONS`].
    #[error("more than {MAX_SUBSCRIPTIONS} subscriptions")]
    TooMany,
    /// The connection's policies do not allow `iot:Subscribe` on the filter.
    #[error("not authorized by the connection's policies")]
    NotAuthorized,
}

/// The broker. One per process; connections share it.
#[derive(Debug)]
pub struct Broker {
    state: Mutex<State>,
    session_expiry: Duration,
    services: Vec<Arc<dyn Service>>,
}

/// A service behind AWS IoT's reserved topics: it reads every message published and answers
/// some with messages of its own, which the broker then routes (the Device Shadow service reads
/// `.../shadow/update` and answers on `.../update/accepted`, and so on).
pub trait Service: Send + Sync + std::fmt::Debug {
    /// The messages that answer `message`, published by `publisher` (`None`: AWS IoT itself or
    /// the data plane); empty when it is not the service's.
    fn answer(&self, message: &Message, publisher: Option<&Publisher>) -> Vec<Message>;
}

/// Who published a message over MQTT, as the rules engine's `clientid()` and `principal()` read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publisher {
    /// The client id of the connection.
    pub client_id: String,
    /// The certificate id the connection presented.
    pub principal: String,
}

impl Broker {
    /// A broker whose persistent sessions are forgotten `session_expiry` after their client left.
    pub fn new(session_expiry: Duration) -> Self {
        Self {
            state: Mutex::new(State::default()),
            session_expiry,
            services: Vec::new(),
        }
    }

    /// The broker with `service` reading what is published.
    #[must_use]
    pub fn with_service(mut self, service: Arc<dyn Service>) -> Self {
        self.services.push(service);
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Attaches a new connection to `client_id`'s session: `clean_start` starts it empty (any
    /// earlier one is discarded), otherwise a kept session resumes. The session outlives the
    /// connection by `expiry` (`None`: not at all), at most the broker's session expiry. A
    /// connection already attached is told it was taken over.
    pub fn connect(
        &self,
        client_id: &str,
        clean_start: bool,
        expiry: Option<Duration>,
    ) -> Attached {
        let expiry = expiry.map(|e| e.min(self.session_expiry));
        let mut state = self.state();
        let now = Instant::now();
        state.next_connection += 1;
        let connection = state.next_connection;
        let (sender, outgoing) = mpsc::channel(OUTGOING_QUEUE);
        let (taken_over_sender, taken_over) = oneshot::channel();
        let mut existing = state.sessions.remove(client_id);
        if let Some(old) = existing.as_mut().and_then(|s| s.connection.take()) {
            // The old connection may be gone already; either way it is not ours any more.
            let _ = old.taken_over.send(());
        }
        // An away session past its expiry is gone; a clean start discards the one there is.
        let (kept, discarded) = match existing {
            Some(old) if !clean_start && old.expires.is_none_or(|at| at > now) => (Some(old), None),
            other => (None, other),
        };
        if let Some(old) = discarded {
            forget(&mut state.index, client_id, &old);
        }
        let (session, session_present) = match kept {
            Some(old) => (old, true),
            None => (
                Session {
                    expiry,
                    subscriptions: BTreeMap::new(),
                    connection: None,
                    queued: VecDeque::new(),
                    expires: None,
                },
                false,
            ),
        };
        let mut session = session;
        session.expiry = expiry;
        session.connection = Some(Link {
            connection,
            sender,
            taken_over: taken_over_sender,
        });
        session.expires = None;
        let pending = session.queued.drain(..).collect();
        state.sessions.insert(client_id.to_owned(), session);
        Attached {
            connection,
            outgoing,
            taken_over,
            session_present,
            pending,
        }
    }

    /// Detaches connection `connection` from `client_id`'s session. `unacknowledged` are the
    /// messages it held (sent without PUBACK, or not sent yet): their QoS 1 ones belong to the
    /// session. When another connection took the session over and continued it, they go to that
    /// connection (marked as redeliveries); a session without expiry ends with its connection; one
    /// with an expiry keeps them to send first, and expires that long after.
    pub fn disconnect(&self, client_id: &str, connection: u64, unacknowledged: Vec<Message>) {
        let mut state = self.state();
        let unacknowledged: Vec<Message> = unacknowledged
            .into_iter()
            .filter(|m| m.qos == QoS::AtLeastOnce)
            .collect();
        let Some(session) = state.sessions.get_mut(client_id) else {
            return;
        };
        match &session.connection {
            Some(link) if link.connection == connection => {}
            Some(link) => {
                // Taken over: a continued session goes on with the new connection (a clean one
                // started empty and wants none of them).
                if session.expiry.is_none() {
                    return;
                }
                let mut lost = 0;
                for message in unacknowledged {
                    lost += u64::from(link.sender.try_send(message).is_err());
                }
                state.dropped += lost;
                return;
            }
            None => return,
        }
        let Some(expiry) = session.expiry else {
            if let Some(ended) = state.sessions.remove(client_id) {
                forget(&mut state.index, client_id, &ended);
            }
            return;
        };
        session.connection = None;
        session.expires = Some(Instant::now() + expiry);
        for message in unacknowledged.into_iter().rev() {
            session.queued.push_front(message);
        }
        let excess = session.queued.len().saturating_sub(QUEUED_WHILE_AWAY);
        session.queued.drain(..excess);
        state.dropped += excess as u64;
    }

    /// Adds `filters` to `client_id`'s session, each with its requested QoS and whether it wants
    /// the retained messages it matches; returns, per filter, the QoS granted or why it was
    /// refused, and the retained messages the granted ones match (to send now, with `retain`
    /// set).
    pub fn subscribe(
        &self,
        client_id: &str,
        filters: &[(String, QoS, bool)],
    ) -> (Vec<Result<QoS, SubscribeError>>, Vec<Message>) {
        let mut state = self.state();
        let State {
            sessions,
            retained,
            index,
            ..
        } = &mut *state;
        let Some(session) = sessions.get_mut(client_id) else {
            return (Vec::new(), Vec::new());
        };
        let mut granted = Vec::with_capacity(filters.len());
        let mut matching = Vec::new();
        for (filter, qos, send_retained) in filters {
            let is_new = !session.subscriptions.contains_key(filter);
            let result = match (topic::check_filter(filter), qos) {
                (Err(e), _) => Err(SubscribeError::Filter(e)),
                (Ok(()), QoS::ExactlyOnce) => Err(SubscribeError::QoS2),
                _ if is_new && session.subscriptions.len() >= MAX_SUBSCRIPTIONS => {
                    Err(SubscribeError::TooMany)
                }
                (Ok(()), qos) => Ok(*qos),
            };
            if let Ok(qos) = result {
                session.subscriptions.insert(filter.clone(), qos);
                index.insert(filter, client_id, qos);
                if !send_retained {
                    granted.push(result);
                    continue;
                }
                let now = Instant::now();
                matching.extend(
                    retained
                        .values()
                        .filter(|m| topic::matches(filter, &m.topic) && m.live(now))
                        .map(|m| Message {
                            qos: lower(m.qos, qos),
                            retain: true,
                            ..m.clone()
                        }),
                );
            }
            granted.push(result);
        }
        (granted, matching)
    }

    /// Removes `filters` from `client_id`'s session (filters it does not hold are ignored).
    pub fn unsubscribe(&self, client_id: &str, filters: &[String]) {
        let mut state = self.state();
        let State {
            sessions, index, ..
        } = &mut *state;
        if let Some(session) = sessions.get_mut(client_id) {
            for filter in filters {
                if session.subscriptions.remove(filter).is_some() {
                    index.remove(filter, client_id);
                }
            }
        }
    }

    /// Routes `message` (its topic already checked): stored or cleared as the topic's retained
    /// message when `retain` is set, then delivered to every session with a matching
    /// subscription, once each, at the lower of its QoS and the highest matching subscription's.
    /// Returns how many sessions it reached (connected or queued). The services' answers to it
    /// are routed after it.
    pub fn publish(&self, message: Message) -> usize {
        self.publish_from(message, None)
    }

    /// [`Broker::publish`] for a message a client published (its will included): the services
    /// see who published it.
    pub fn publish_from(&self, message: Message, publisher: Option<&Publisher>) -> usize {
        let answers: Vec<Message> = self
            .services
            .iter()
            .flat_map(|service| service.answer(&message, publisher))
            .collect();
        let reached = self.route(message);
        // Answers are published like any message: the rules see `update/documents` too. No
        // service answers an answer (they are on response topics), so this ends.
        for answer in answers {
            self.publish_from(answer, None);
        }
        reached
    }

    fn route(&self, message: Message) -> usize {
        let mut state = self.state();
        if message.retain {
            if message.payload.is_empty() {
                state.retained.remove(&message.topic);
            } else {
                state
                    .retained
                    .insert(message.topic.clone(), message.clone());
            }
        }
        let State {
            sessions,
            index,
            dropped,
            ..
        } = &mut *state;
        let mut reached = 0;
        for (client_id, granted) in index.matching(&message.topic) {
            if let Some(session) = sessions.get_mut(client_id) {
                reached += 1;
                *dropped += u64::from(deliver_at(session, &message, granted));
            }
        }
        reached
    }

    /// Delivers `message` to `client_id`'s session alone, as a subscriber (it must have a
    /// matching subscription): how AWS IoT answers on the connection that asked (fleet
    /// provisioning's replies carry keys meant for one device). Returns whether it reached it.
    pub fn publish_to(&self, client_id: &str, message: Message) -> bool {
        let mut state = self.state();
        let Some(session) = state.sessions.get_mut(client_id) else {
            return false;
        };
        match deliver(session, &message) {
            Some(lost) => {
                state.dropped += u64::from(lost);
                true
            }
            None => false,
        }
    }

    /// Forgets the away persistent sessions whose expiry passed; returns how many.
    pub fn expire_sessions(&self) -> usize {
        let now = Instant::now();
        let mut state = self.state();
        let expired: Vec<String> = state
            .sessions
            .iter()
            .filter(|(_, s)| s.expires.is_some_and(|at| at <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for client_id in &expired {
            if let Some(gone) = state.sessions.remove(client_id) {
                forget(&mut state.index, client_id, &gone);
            }
        }
        expired.len()
    }

    /// The broker's counters now.
    pub fn stats(&self) -> Stats {
        let state = self.state();
        Stats {
            sessions: state.sessions.len(),
            retained: state.retained.len(),
            dropped: state.dropped,
        }
    }
}

/// Hands `message` to `session` when one of its subscriptions matches, at the lower of the two
/// QoS: `None` when none matches, else whether it was dropped (a full queue).
fn deliver(session: &mut Session, message: &Message) -> Option<bool> {
    let granted = session
        .subscriptions
        .iter()
        .filter(|(filter, _)| topic::matches(filter, &message.topic))
        .map(|(_, qos)| *qos)
        .reduce(higher)?;
    Some(deliver_at(session, message, granted))
}

/// Removes `session`'s filters from the routing index (the session is gone).
fn forget(index: &mut SubscriptionTree, client_id: &str, session: &Session) {
    for filter in session.subscriptions.keys() {
        index.remove(filter, client_id);
    }
}

/// Hands `message` to `session`, whose highest matching subscription is `granted`: whether it was
/// dropped (a full queue).
fn deliver_at(session: &mut Session, message: &Message, granted: QoS) -> bool {
    let delivered = Message {
        qos: lower(message.qos, granted),
        retain: false,
        ..message.clone()
    };
    match &session.connection {
        Some(link) => link.sender.try_send(delivered).is_err(),
        None if delivered.qos == QoS::AtLeastOnce => {
            let full = session.queued.len() >= QUEUED_WHILE_AWAY;
            if full {
                session.queued.pop_front();
            }
            session.queued.push_back(delivered);
            full
        }
        // QoS 0 is not kept for an away client.
        None => false,
    }
}

fn rank(qos: QoS) -> u8 {
    qos as u8
}

fn lower(a: QoS, b: QoS) -> QoS {
    if rank(a) <= rank(b) { a } else { b }
}

fn higher(a: QoS, b: QoS) -> QoS {
    if rank(a) >= rank(b) { a } else { b }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(topic: &str, qos: QoS, retain: bool, payload: &str) -> Message {
        Message {
            topic: topic.into(),
            payload: Bytes::from(payload.to_owned()),
            qos,
            retain,
            properties: None,
            dup: false,
            expires: None,
        }
    }

    fn received(attached: &mut Attached) -> Vec<Message> {
        let mut out = Vec::new();
        while let Ok(m) = attached.outgoing.try_recv() {
            out.push(m);
        }
        out
    }

    #[test]
    fn a_publish_reaches_each_matching_session_once_at_the_lower_qos() {
        let broker = Broker::new(Duration::from_secs(3600));
        let mut a = broker.connect("a", true, None);
        let mut b = broker.connect("b", true, None);
        let (granted, _) = broker.subscribe(
            "a",
            &[
                ("dt/+/d-1/telemetry".into(), QoS::AtMostOnce, true),
                ("dt/#".into(), QoS::AtLeastOnce, true),
            ],
        );
        assert_eq!(granted, vec![Ok(QoS::AtMostOnce), Ok(QoS::AtLeastOnce)]);
        broker.subscribe(
            "b",
            &[("dt/app/d-2/telemetry".into(), QoS::AtLeastOnce, true)],
        );
        let reached = broker.publish(message(
            "dt/app/d-1/telemetry",
            QoS::AtLeastOnce,
            false,
            "x",
        ));
        assert_eq!(reached, 1);
        let got = received(&mut a);
        assert_eq!(got.len(), 1, "once, however many filters match");
        assert_eq!(
            got[0].qos,
            QoS::AtLeastOnce,
            "the highest matching subscription"
        );
        assert!(received(&mut b).is_empty());
        broker.publish(message("dt/app/d-2/telemetry", QoS::AtMostOnce, false, "y"));
        assert_eq!(
            received(&mut b)[0].qos,
            QoS::AtMostOnce,
            "never above the publish"
        );
    }

    #[test]
    fn retained_messages_are_kept_per_topic_sent_on_subscribe_and_cleared_by_an_empty_one() {
        let broker = Broker::new(Duration::from_secs(3600));
        broker.publish(message("cfg/d-1", QoS::AtLeastOnce, true, "v1"));
        broker.publish(message("cfg/d-1", QoS::AtLeastOnce, true, "v2"));
        broker.publish(message("cfg/d-2", QoS::AtMostOnce, true, "w"));
        let _c = broker.connect("c", true, None);
        let (_, retained) = broker.subscribe("c", &[("cfg/+".into(), QoS::AtLeastOnce, true)]);
        let payloads: Vec<_> = retained.iter().map(|m| m.payload.clone()).collect();
        assert_eq!(payloads, vec![Bytes::from("v2"), Bytes::from("w")]);
        assert!(retained.iter().all(|m| m.retain));
        assert_eq!(retained[1].qos, QoS::AtMostOnce);
        broker.publish(message("cfg/d-1", QoS::AtMostOnce, true, ""));
        assert_eq!(broker.stats().retained, 1);
    }

    #[test]
    fn a_persistent_session_keeps_subscriptions_and_qos1_messages_while_away() {
        let broker = Broker::new(Duration::from_secs(3600));
        let first = broker.connect("p", false, Some(Duration::from_secs(60)));
        assert!(!first.session_present);
        broker.subscribe("p", &[("alerts/#".into(), QoS::AtLeastOnce, true)]);
        let unacked = message("alerts/1", QoS::AtLeastOnce, false, "sent, not acked");
        broker.disconnect("p", first.connection, vec![unacked.clone()]);
        broker.publish(message("alerts/2", QoS::AtLeastOnce, false, "while away"));
        broker.publish(message(
            "alerts/3",
            QoS::AtMostOnce,
            false,
            "qos 0: not kept",
        ));
        let mut second = broker.connect("p", false, Some(Duration::from_secs(60)));
        assert!(second.session_present);
        let topics: Vec<_> = second.pending.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(topics, vec!["alerts/1", "alerts/2"]);
        broker.publish(message("alerts/4", QoS::AtLeastOnce, false, "live"));
        assert_eq!(received(&mut second)[0].topic, "alerts/4");
        // A clean connect discards it.
        let clean = broker.connect("p", true, None);
        assert!(!clean.session_present);
        assert_eq!(
            broker.publish(message("alerts/5", QoS::AtLeastOnce, false, "")),
            0
        );
    }

    #[test]
    fn a_second_connection_takes_the_session_over_and_the_first_cannot_detach_it() {
        let broker = Broker::new(Duration::from_secs(3600));
        let mut first = broker.connect("d-1", true, None);
        let second = broker.connect("d-1", true, None);
        assert!(first.taken_over.try_recv().is_ok());
        broker.disconnect("d-1", first.connection, Vec::new());
        assert_eq!(
            broker.stats().sessions,
            1,
            "the second connection's session stays"
        );
        broker.disconnect("d-1", second.connection, Vec::new());
        assert_eq!(broker.stats().sessions, 0);
    }

    #[test]
    fn a_taken_over_persistent_session_gets_the_old_connections_unacknowledged_messages() {
        let broker = Broker::new(Duration::from_secs(3600));
        let keep = Some(Duration::from_secs(60));
        let first = broker.connect("p", false, keep);
        let mut second = broker.connect("p", false, keep);
        assert!(second.session_present);
        let held = vec![
            message("t/1", QoS::AtLeastOnce, false, "unacked"),
            message("t/2", QoS::AtMostOnce, false, "qos 0: not kept"),
        ];
        broker.disconnect("p", first.connection, held);
        let got = received(&mut second);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].topic, "t/1");
        assert_eq!(broker.stats().sessions, 1);
    }

    #[test]
    fn away_sessions_expire_and_queues_are_bounded() {
        let broker = Broker::new(Duration::ZERO);
        let p = broker.connect("p", false, Some(Duration::from_secs(60)));
        broker.subscribe("p", &[("t".into(), QoS::AtLeastOnce, true)]);
        broker.disconnect("p", p.connection, Vec::new());
        for i in 0..QUEUED_WHILE_AWAY + 5 {
            broker.publish(message("t", QoS::AtLeastOnce, false, &i.to_string()));
        }
        assert_eq!(broker.stats().dropped, 5);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(broker.expire_sessions(), 1);
    }

    #[test]
    fn every_way_a_session_or_filter_ends_takes_it_out_of_routing() {
        let broker = Broker::new(Duration::ZERO);
        let reach = |topic: &str| broker.publish(message(topic, QoS::AtMostOnce, false, ""));
        let filters = |f: &[&str]| -> Vec<(String, QoS, bool)> {
            f.iter()
                .map(|f| ((*f).to_owned(), QoS::AtLeastOnce, false))
                .collect()
        };
        // Unsubscribed: gone; subscribed twice: held once.
        let u = broker.connect("u", true, None);
        broker.subscribe("u", &filters(&["a/+", "a/b", "a/b"]));
        broker.unsubscribe("u", &["a/+".into(), "never/held".into()]);
        assert_eq!(reach("a/c"), 0);
        assert_eq!(reach("a/b"), 1);
        // A clean session ends with its connection; the same client id starts empty.
        broker.disconnect("u", u.connection, Vec::new());
        let _u = broker.connect("u", false, None);
        assert_eq!(reach("a/b"), 0);
        // A clean start discards a persistent session held by a live connection.
        let _p = broker.connect("p", false, Some(Duration::from_secs(60)));
        broker.subscribe("p", &filters(&["p/#"]));
        assert_eq!(reach("p/1"), 1);
        let p = broker.connect("p", true, Some(Duration::from_secs(60)));
        assert_eq!(reach("p/1"), 0);
        // An expired away session: at the sweep, or when its client id connects again.
        broker.subscribe("p", &filters(&["p/#"]));
        broker.disconnect("p", p.connection, Vec::new());
        std::thread::sleep(Duration::from_millis(2));
        let _again = broker.connect("p", false, Some(Duration::from_secs(60)));
        assert_eq!(reach("p/1"), 0, "the expired session's filter is gone");
        let e = broker.connect("e", false, Some(Duration::from_secs(60)));
        broker.subscribe("e", &filters(&["e"]));
        broker.disconnect("e", e.connection, Vec::new());
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(broker.expire_sessions(), 1);
        assert_eq!(reach("e"), 0);
        assert!(
            broker.state().index.is_empty(),
            "no filter outlives its session"
        );
    }

    #[test]
    fn subscriptions_refuse_qos2_bad_filters_and_more_than_the_quota() {
        let broker = Broker::new(Duration::from_secs(3600));
        let _s = broker.connect("s", true, None);
        let (granted, _) = broker.subscribe(
            "s",
            &[
                ("a/#/b".into(), QoS::AtMostOnce, true),
                ("a".into(), QoS::ExactlyOnce, true),
            ],
        );
        assert_eq!(
            granted,
            vec![
                Err(SubscribeError::Filter(topic::TopicError::Wildcard)),
                Err(SubscribeError::QoS2)
            ]
        );
        let many: Vec<_> = (0..=MAX_SUBSCRIPTIONS)
            .map(|i| (format!("t/{i}"), QoS::AtMostOnce, true))
            .collect();
        let (granted, _) = broker.subscribe("s", &many);
        assert_eq!(granted.last(), Some(&Err(SubscribeError::TooMany)));
        assert_eq!(
            granted.iter().filter(|g| g.is_ok()).count(),
            MAX_SUBSCRIPTIONS
        );
    }
}
