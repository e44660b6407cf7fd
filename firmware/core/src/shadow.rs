//! Device Shadow sync as a device runs it (<https://docs.aws.amazon.com/iot/latest/developerguide/device-shadow-data-flow.html>).
//!
//! The device asks for the whole shadow when it connects (`get`), applies what `desired` holds
//! that it does not run yet (the document's `delta`), and reports the values it now runs: what its
//! configuration store ([`Apply`]) says it applied, which may differ from what was asked (a value
//! clamped to what the hardware can do), and never a value it refused. Then every `update/delta`
//! is applied the same way.
//!
//! AWS documents no order between `get/accepted`, `update/delta` and the answers to the device's
//! own reports, and a message may come twice. The rule that makes any order converge: a message
//! about `desired` carries the shadow's version when it was sent, and one older than (or as old as)
//! the newest already applied is stale — it says nothing the newer one did not. The device's own
//! reports also bump the version; they are not `desired` news, so their answers never move that
//! mark (comparing a delta with the version of the device's last report is how SDKs drop deltas).
//! A 409 (a report raced another writer) or a reconnect starts over with a `get`.
//!
//! Paths whose conflict policy is `vclock` (the stack's `ShadowPolicies`) carry vector clocks
//! under `_clock` in `desired` and `reported` (`{"_clock": {"schedule.start": {"cloud": 3,
//! "device": 2}}}`): the device keeps the join of every clock it has seen per path, and each
//! report of such a path carries that clock with its own counter ([`DEVICE_ACTOR`]) one higher —
//! so the cloud knows which of its writes the device had seen when it wrote
//! ([`ShadowSync::with_vclock_paths`]). `_clock` itself is never applied as configuration.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde_json::{Map, Value, json};
use shoal_wire::topics::{ShadowOperation, ShadowResponse, ShadowTopic};

/// The device's configuration store: applies a desired value.
pub trait Apply {
    /// Applies `desired` for `key` (a top-level field of the shadow's state; an object may be a
    /// part of one, as a delta carries only what changed): the value the device now runs for
    /// `key`, which is reported.
    ///
    /// # Errors
    /// Why the device refused it (nothing is reported for `key`; it stays in the delta).
    fn apply(&mut self, key: &str, desired: &Value) -> Result<Value, String>;

    /// The values the device runs now, reported when the shadow does not exist yet.
    fn running(&self) -> Map<String, Value>;
}

/// Something to publish: the topic and its payload (JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// The topic.
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
}

/// What a message did.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `desired` values applied (key, value now run) and refused (key, why).
    Applied {
        /// Applied.
        applied: Vec<(String, Value)>,
        /// Refused.
        refused: Vec<(String, String)>,
    },
    /// A message older than the desired state already applied, or a duplicate.
    Stale(u64),
    /// A report was refused (not a conflict): its code and message.
    ReportRefused(u64, String),
    /// Not a message for this shadow, or not one sync acts on.
    Ignored,
}

/// The key under which vector clocks of `vclock` paths travel in `desired` and `reported`.
pub const CLOCK_KEY: &str = "_clock";
/// The device's actor name in vector clocks (the cloud's writers are `cloud`).
pub const DEVICE_ACTOR: &str = "device";

/// A vector clock: a counter per actor.
type Clock = BTreeMap<String, u64>;

/// One shadow's sync (classic, or named).
#[derive(Debug, Clone)]
pub struct ShadowSync {
    thing: String,
    name: Option<String>,
    /// The version of the newest `desired` news applied.
    desired_version: Option<u64>,
    tokens: u64,
    /// Dot paths whose policy is `vclock`.
    vclock_paths: Vec<String>,
    /// Per `vclock` path, the join of every clock seen (and reported).
    clocks: BTreeMap<String, Clock>,
}

/// Joins the clocks of a `_clock` object (`{path: {actor: n}}`) into `clocks`, for `paths`.
fn learn(clocks: &mut BTreeMap<String, Clock>, paths: &[String], seen: Option<&Value>) {
    let Some(Value::Object(seen)) = seen else {
        return;
    };
    for path in paths {
        let Some(Value::Object(counters)) = seen.get(path) else {
            continue;
        };
        let clock = clocks.entry(path.clone()).or_default();
        for (actor, n) in counters {
            if let Some(n) = n.as_u64() {
                let mine = clock.entry(actor.clone()).or_insert(0);
                *mine = (*mine).max(n);
            }
        }
    }
}

impl ShadowSync {
    /// The sync of `thing`'s classic shadow (`name` `None`) or of its named shadow `name`.
    pub fn new(thing: &str, name: Option<&str>) -> Self {
        Self {
            thing: thing.to_string(),
            name: name.map(ToString::to_string),
            desired_version: None,
            tokens: 0,
            vclock_paths: Vec::new(),
            clocks: BTreeMap::new(),
        }
    }

    /// The sync with `paths` (dot paths, as the stack's `ShadowPolicies` names them) under the
    /// `vclock` policy: their reports carry vector clocks.
    #[must_use]
    pub fn with_vclock_paths(mut self, paths: impl IntoIterator<Item = String>) -> Self {
        self.vclock_paths = paths.into_iter().collect();
        self
    }

    fn topic(&self, operation: ShadowOperation, response: Option<ShadowResponse>) -> String {
        ShadowTopic {
            thing: &self.thing,
            name: self.name.as_deref(),
            operation,
            response,
        }
        .to_string()
    }

    /// The topic filters to subscribe to before [`ShadowSync::connected`]: `get` and `update`'s
    /// answers and `update/delta`.
    pub fn subscriptions(&self) -> Vec<String> {
        let mut filters = Vec::new();
        for (operation, response) in [
            (ShadowOperation::Get, ShadowResponse::Accepted),
            (ShadowOperation::Get, ShadowResponse::Rejected),
            (ShadowOperation::Update, ShadowResponse::Accepted),
            (ShadowOperation::Update, ShadowResponse::Rejected),
            (ShadowOperation::Update, ShadowResponse::Delta),
        ] {
            filters.push(self.topic(operation, Some(response)));
        }
        filters
    }

    /// (Re)connected: the whole shadow is asked for again (what changed while away is in it).
    pub fn connected(&mut self) -> Publish {
        self.get()
    }

    fn token(&mut self) -> String {
        self.tokens += 1;
        format!("{}-{}", self.thing, self.tokens)
    }

    fn get(&mut self) -> Publish {
        let token = self.token();
        Publish {
            topic: self.topic(ShadowOperation::Get, None),
            payload: json!({ "clientToken": token }).to_string().into_bytes(),
        }
    }

    fn report(&mut self, reported: Map<String, Value>) -> Publish {
        let token = self.token();
        Publish {
            topic: self.topic(ShadowOperation::Update, None),
            payload: json!({"state": {"reported": reported}, "clientToken": token})
                .to_string()
                .into_bytes(),
        }
    }

    /// Applies `delta` (desired fields not run yet) news of `version`, unless stale: the event,
    /// and the report of what was applied.
    fn apply(
        &mut self,
        version: u64,
        delta: &Map<String, Value>,
        store: &mut impl Apply,
    ) -> (Event, Option<Publish>) {
        if self.desired_version.is_some_and(|seen| version <= seen) {
            return (Event::Stale(version), None);
        }
        self.desired_version = Some(version);
        let mut applied = Vec::new();
        let mut refused = Vec::new();
        let mut reported = Map::new();
        learn(&mut self.clocks, &self.vclock_paths, delta.get(CLOCK_KEY));
        let mut clocks = Map::new();
        for (key, desired) in delta {
            if key == CLOCK_KEY {
                continue;
            }
            match store.apply(key, desired) {
                Ok(running) => {
                    reported.insert(key.clone(), running.clone());
                    applied.push((key.clone(), running));
                    for path in &self.vclock_paths {
                        let under = path == key
                            || path
                                .strip_prefix(key.as_str())
                                .is_some_and(|rest| rest.starts_with('.'));
                        if under {
                            let clock = self.clocks.entry(path.clone()).or_default();
                            *clock.entry(DEVICE_ACTOR.to_string()).or_insert(0) += 1;
                            clocks.insert(path.clone(), json!(clock));
                        }
                    }
                }
                Err(why) => refused.push((key.clone(), why)),
            }
        }
        if !clocks.is_empty() {
            reported.insert(CLOCK_KEY.to_string(), Value::Object(clocks));
        }
        let report = (!reported.is_empty()).then(|| self.report(reported));
        (Event::Applied { applied, refused }, report)
    }

    /// Handles a message on `topic`: what it did, and what to publish.
    pub fn handle(
        &mut self,
        topic: &str,
        payload: &[u8],
        store: &mut impl Apply,
    ) -> (Event, Vec<Publish>) {
        let Ok(parsed) = ShadowTopic::parse(topic) else {
            return (Event::Ignored, Vec::new());
        };
        if parsed.thing != self.thing || parsed.name != self.name.as_deref() {
            return (Event::Ignored, Vec::new());
        }
        let Ok(Value::Object(document)) = serde_json::from_slice::<Value>(payload) else {
            return (Event::Ignored, Vec::new());
        };
        let version = document.get("version").and_then(Value::as_u64);
        let state = |key: &str| {
            document
                .get("state")
                .and_then(|s| s.get(key))
                .and_then(Value::as_object)
        };
        match (parsed.operation, parsed.response) {
            (ShadowOperation::Update, Some(ShadowResponse::Delta)) => {
                let (Some(version), Some(delta)) = (version, document.get("state")) else {
                    return (Event::Ignored, Vec::new());
                };
                let Some(delta) = delta.as_object() else {
                    return (Event::Ignored, Vec::new());
                };
                let (event, report) = self.apply(version, delta, store);
                (event, report.into_iter().collect())
            }
            (ShadowOperation::Get, Some(ShadowResponse::Accepted)) => {
                let Some(version) = version else {
                    return (Event::Ignored, Vec::new());
                };
                for section in ["desired", "reported"] {
                    learn(
                        &mut self.clocks,
                        &self.vclock_paths,
                        state(section).and_then(|s| s.get(CLOCK_KEY)),
                    );
                }
                let delta = state("delta").cloned().unwrap_or_default();
                let (event, report) = self.apply(version, &delta, store);
                (event, report.into_iter().collect())
            }
            (ShadowOperation::Get, Some(ShadowResponse::Rejected)) => {
                // 404: no shadow yet. The device reports what it runs, which creates it.
                if document.get("code").and_then(Value::as_u64) == Some(404) {
                    let running = store.running();
                    (Event::Ignored, Vec::from([self.report(running)]))
                } else {
                    (Event::Ignored, Vec::new())
                }
            }
            (ShadowOperation::Update, Some(ShadowResponse::Rejected)) => {
                let code = document.get("code").and_then(Value::as_u64).unwrap_or(0);
                let message = document
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                if code == 409 {
                    // Another writer raced the report: start over from the whole shadow.
                    (Event::ReportRefused(code, message), Vec::from([self.get()]))
                } else {
                    (Event::ReportRefused(code, message), Vec::new())
                }
            }
            _ => (Event::Ignored, Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests;
