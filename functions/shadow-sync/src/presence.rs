//! The presence trigger: lifecycle events (`SELECT * FROM '$aws/events/presence/+/+'`) and the
//! scheduled offline sweep (an EventBridge schedule), told apart by shape.

use std::future::Future;

use serde::Serialize;
use serde_json::Value;
use shoal_aws::config::{self, ConfigError, Source, TableName, vars};
pub use shoal_core::alerts::Alerts;
use shoal_core::edge::EdgeError;
use shoal_core::ids::ThingName;
use shoal_core::presence::OfflineDevice;
use shoal_core::presence::{LifecycleEvent, OfflineAlert, Recorded};
use shoal_core::provisioning::{CLAIM_CLIENT_ID_PREFIX, Serial};

pub trait PresenceRecords: Sync {
    /// Records the event unless its principal is not the certificate recorded for `thing` at
    /// provisioning ([`Recorded::ForeignPrincipal`]) or the registry holds a later or the same
    /// event ([`Recorded::Stale`]); compared in the registry's write, never by a call per event.
    fn record_presence(
        &self,
        thing: &ThingName,
        event: &LifecycleEvent,
    ) -> impl Future<Output = Result<Recorded, EdgeError>> + Send;
    /// For a thing with no certificate recorded ([`Recorded::Unrecorded`]: provisioned before
    /// Shoal recorded certificates): records `principal` as its certificate if the manifest's
    /// claim for `serial` names it (a provisioned row). `Ok(false)`: the manifest names another
    /// certificate or none. One read, once per such device.
    fn adopt_manifest_certificate(
        &self,
        serial: &Serial,
        principal: &str,
    ) -> impl Future<Output = Result<bool, EdgeError>> + Send;
    fn offline_before(
        &self,
        cutoff_ms: u64,
    ) -> impl Future<Output = Result<Vec<OfflineDevice>, EdgeError>> + Send;
    /// `Ok(false)`: the device came back (or went offline again) since the sweep read it.
    fn mark_alerted(
        &self,
        thing: &str,
        offline_since_ms: u64,
    ) -> impl Future<Output = Result<bool, EdgeError>> + Send;
}

/// Everything the presence function reads from its environment, read once at init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceConfig {
    /// `SHOAL_DEVICE_TABLE`: presence, per device.
    pub device_table: TableName,
    /// `SHOAL_MANIFEST_TABLE`: the factory manifest (a serial's provisioned thing).
    pub manifest_table: TableName,
    pub offline_threshold_s: u64,
    pub alerts_topic: String,
}

impl PresenceConfig {
    /// Reads the presence function's settings from `source`: `SHOAL_DEVICE_TABLE` and
    /// `SHOAL_MANIFEST_TABLE` (required), `SHOAL_OFFLINE_THRESHOLD_S` (default 3600) and
    /// `SHOAL_ALERTS_TOPIC` (default `shoal/alerts`).
    ///
    /// # Errors
    /// [`ConfigError`] naming the variable: a table missing or not a valid table name, or a
    /// threshold that is not a whole number of seconds.
    pub fn from_source(source: &impl Source) -> Result<Self, ConfigError> {
        Ok(Self {
            device_table: config::required(source, vars::DEVICE_TABLE)?,
            manifest_table: config::required(source, vars::MANIFEST_TABLE)?,
            offline_threshold_s: config::optional(source, vars::OFFLINE_THRESHOLD_S)?
                .unwrap_or(3600),
            alerts_topic: config::optional(source, vars::ALERTS_TOPIC)?
                .unwrap_or_else(|| "shoal/alerts".to_owned()),
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PresenceSummary {
    pub thing: Option<String>,
    pub event_type: Option<String>,
    /// `applied`, `stale` (a later or duplicate event was already applied), `ignored` (see
    /// `ignored_because`) or `rejected` (not a lifecycle event).
    pub outcome: &'static str,
    /// Why an event was ignored: `claim_connection` (provisioning by claim, no device) or
    /// `foreign_principal` (not the certificate the thing was provisioned with, or no certificate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignored_because: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Why presence ignores an event of a client it cannot trust as the thing (a security signal:
/// counted as EMF `ForeignPrincipal`).
pub const FOREIGN_PRINCIPAL: &str = "foreign_principal";
/// A claim connection's event: provisioning, not a device.
pub const CLAIM_CONNECTION: &str = "claim_connection";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SweepSummary {
    pub offline_past_threshold: usize,
    pub alerted: usize,
    /// Alerted, but the device came back before the alert was recorded (it may be alerted on
    /// again if it goes offline again; never silently dropped).
    pub returned_meanwhile: usize,
    /// Publishing failed: left in the index for the next sweep.
    pub failed: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum PresenceAnswer {
    Event(PresenceSummary),
    Sweep(SweepSummary),
}

/// The answer's CloudWatch EMF line (dimension `Function` = `presence`), stamped `timestamp_ms`:
/// per event applied / stale / rejected / ignored and foreign principals; per sweep the devices
/// offline past the threshold, alerted, returned meanwhile and alerts that failed.
pub fn metrics_line(answer: &PresenceAnswer, timestamp_ms: i64) -> String {
    let counts = match answer {
        PresenceAnswer::Event(e) => vec![
            ("Applied", u64::from(e.outcome == "applied")),
            ("Stale", u64::from(e.outcome == "stale")),
            ("Rejected", u64::from(e.outcome == "rejected")),
            ("Ignored", u64::from(e.outcome == "ignored")),
            (
                "ForeignPrincipal",
                u64::from(e.ignored_because == Some(FOREIGN_PRINCIPAL)),
            ),
        ],
        PresenceAnswer::Sweep(s) => vec![
            ("OfflinePastThreshold", s.offline_past_threshold as u64),
            ("Alerted", s.alerted as u64),
            ("ReturnedMeanwhile", s.returned_meanwhile as u64),
            ("AlertsFailed", s.failed as u64),
        ],
    };
    shoal_aws::metrics::emf_counts(timestamp_ms, &[("Function", "presence")], &counts)
}

fn is_schedule(event: &Value) -> bool {
    event.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event")
}

pub async fn handle(
    event: Value,
    config: &PresenceConfig,
    records: &impl PresenceRecords,
    alerts: &impl Alerts,
    now_ms: u64,
) -> Result<PresenceAnswer, EdgeError> {
    if is_schedule(&event) {
        return sweep(config, records, alerts, now_ms)
            .await
            .map(PresenceAnswer::Sweep);
    }
    // A claim connection (provisioning by claim) is no device: counted, never recorded.
    if let Some(client) = event.get("clientId").and_then(Value::as_str)
        && client.starts_with(CLAIM_CLIENT_ID_PREFIX)
    {
        return Ok(PresenceAnswer::Event(PresenceSummary {
            outcome: "ignored",
            ignored_because: Some(CLAIM_CONNECTION),
            reason: Some(format!(
                "client {client:?} is a claim connection (prefix {CLAIM_CLIENT_ID_PREFIX:?}), not a device"
            )),
            event_type: event
                .get("eventType")
                .and_then(Value::as_str)
                .map(str::to_owned),
            ..PresenceSummary::default()
        }));
    }
    let parsed = serde_json::from_value::<LifecycleEvent>(event)
        .map_err(|e| format!("not a lifecycle event: {e}"))
        .and_then(|e| e.thing().map(|thing| (thing, e)).map_err(|e| e.to_string()));
    let (thing, event) = match parsed {
        Ok(ok) => ok,
        Err(reason) => {
            tracing::error!(%reason, "rejected presence event");
            return Ok(PresenceAnswer::Event(PresenceSummary {
                outcome: "rejected",
                reason: Some(reason),
                ..PresenceSummary::default()
            }));
        }
    };
    let summary = PresenceSummary {
        thing: Some(thing.to_string()),
        event_type: serde_json::to_value(event.event_type)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned)),
        ..PresenceSummary::default()
    };
    let foreign = |reason: String| {
        tracing::warn!(%thing, %reason, "presence event of a foreign principal ignored");
        PresenceAnswer::Event(PresenceSummary {
            outcome: "ignored",
            ignored_because: Some(FOREIGN_PRINCIPAL),
            reason: Some(reason),
            ..summary.clone()
        })
    };
    // Devices are provisioned from the manifest (serial = thing name) with a certificate: a
    // principal that is no certificate, or a thing that is no serial, is no device's (no call).
    let principal = match event.certificate_principal() {
        Ok(p) => p,
        Err(reason) => return Ok(foreign(reason.to_string())),
    };
    let serial = match Serial::parse(thing.as_str()) {
        Ok(serial) => serial,
        Err(e) => {
            return Ok(foreign(format!(
                "thing {thing} is no manifest serial ({e})"
            )));
        }
    };
    let mut recorded = records.record_presence(&thing, &event).await?;
    if recorded == Recorded::Unrecorded
        && records
            .adopt_manifest_certificate(&serial, principal)
            .await?
    {
        recorded = records.record_presence(&thing, &event).await?;
    }
    let outcome = match recorded {
        Recorded::Applied => "applied",
        Recorded::Stale => "stale",
        Recorded::ForeignPrincipal => {
            return Ok(foreign(format!(
                "principal {principal} is not the certificate thing {thing} was provisioned with"
            )));
        }
        Recorded::Unrecorded => {
            return Ok(foreign(format!(
                "no certificate is recorded for thing {thing}, and the manifest does not name {principal} for it"
            )));
        }
    };
    Ok(PresenceAnswer::Event(PresenceSummary {
        outcome,
        ..summary
    }))
}

/// Publishes one alert per device offline longer than the threshold, then takes it out of the
/// offline index. Publish first: a crash in between repeats an alert, it never loses one.
pub async fn sweep(
    config: &PresenceConfig,
    records: &impl PresenceRecords,
    alerts: &impl Alerts,
    now_ms: u64,
) -> Result<SweepSummary, EdgeError> {
    let cutoff = now_ms.saturating_sub(config.offline_threshold_s * 1000);
    let offline = records.offline_before(cutoff).await?;
    let mut summary = SweepSummary {
        offline_past_threshold: offline.len(),
        ..SweepSummary::default()
    };
    for device in offline {
        let alert = OfflineAlert::new(
            &device.thing,
            device.offline_since_ms,
            now_ms,
            config.offline_threshold_s,
            device.disconnect_reason.clone(),
        );
        let payload = serde_json::to_vec(&alert).expect("an alert is JSON");
        if let Err(e) = alerts
            .publish(&alert.topic(&config.alerts_topic), payload)
            .await
        {
            tracing::warn!(thing = %device.thing, error = %e, "offline alert not published; next sweep retries");
            summary.failed += 1;
            continue;
        }
        if records
            .mark_alerted(&device.thing, device.offline_since_ms)
            .await?
        {
            summary.alerted += 1;
        } else {
            summary.returned_meanwhile += 1;
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{CERT, Registry};
    use serde_json::json;

    #[test]
    fn the_metrics_line_counts_events_and_sweeps() {
        let event = PresenceAnswer::Event(PresenceSummary {
            outcome: "ignored",
            ignored_because: Some(FOREIGN_PRINCIPAL),
            ..PresenceSummary::default()
        });
        let line: Value = serde_json::from_str(&metrics_line(&event, 9)).unwrap();
        assert_eq!(line["Function"], "presence");
        assert_eq!(line["Ignored"], 1);
        assert_eq!(line["ForeignPrincipal"], 1);
        assert_eq!(line["Applied"], 0);
        let sweep = PresenceAnswer::Sweep(SweepSummary {
            offline_past_threshold: 4,
            alerted: 3,
            returned_meanwhile: 0,
            failed: 1,
        });
        let line: Value = serde_json::from_str(&metrics_line(&sweep, 9)).unwrap();
        assert_eq!(line["OfflinePastThreshold"], 4);
        assert_eq!(line["AlertsFailed"], 1);
    }

    fn lifecycle(kind: &str, ts: u64, version: u64) -> Value {
        json!({"clientId": "d-1", "timestamp": ts, "eventType": kind, "sessionIdentifier": "s",
               "principalIdentifier": CERT, "versionNumber": version,
               "disconnectReason": "MQTT_KEEP_ALIVE_TIMEOUT", "clientInitiatedDisconnect": false})
    }

    fn config() -> PresenceConfig {
        PresenceConfig {
            device_table: "devices".parse().unwrap(),
            manifest_table: "manifest".parse().unwrap(),
            offline_threshold_s: 60,
            alerts_topic: "shoal/alerts".into(),
        }
    }

    #[tokio::test]
    async fn out_of_order_and_duplicate_events_never_regress() {
        let r = Registry::default();
        let outcome = |a: PresenceAnswer| match a {
            PresenceAnswer::Event(s) => s.outcome,
            PresenceAnswer::Sweep(_) => unreachable!(),
        };
        let c = config();
        assert_eq!(
            outcome(
                handle(lifecycle("disconnected", 2_000, 1), &c, &r, &r, 0)
                    .await
                    .unwrap()
            ),
            "applied"
        );
        // The connect of that same session arrives late, then the disconnect again.
        assert_eq!(
            outcome(
                handle(lifecycle("connected", 1_000, 1), &c, &r, &r, 0)
                    .await
                    .unwrap()
            ),
            "stale"
        );
        assert_eq!(
            outcome(
                handle(lifecycle("disconnected", 2_000, 1), &c, &r, &r, 0)
                    .await
                    .unwrap()
            ),
            "stale"
        );
        assert!(!r.things.lock().unwrap()["d-1"].1, "still offline");
        let bad = handle(json!({"clientId": "d-1"}), &c, &r, &r, 0)
            .await
            .unwrap();
        assert_eq!(outcome(bad), "rejected");
    }

    #[tokio::test]
    async fn the_sweep_alerts_once_per_offline_episode() {
        let r = Registry::default();
        let c = config();
        handle(lifecycle("disconnected", 1_000, 1), &c, &r, &r, 0)
            .await
            .unwrap();
        let schedule = json!({"detail-type": "Scheduled Event", "source": "aws.events"});
        // 30 s later: under the threshold.
        let early = handle(schedule.clone(), &c, &r, &r, 31_000).await.unwrap();
        assert_eq!(early, PresenceAnswer::Sweep(SweepSummary::default()));
        let late = handle(schedule.clone(), &c, &r, &r, 62_000).await.unwrap();
        assert_eq!(
            late,
            PresenceAnswer::Sweep(SweepSummary {
                offline_past_threshold: 1,
                alerted: 1,
                ..SweepSummary::default()
            })
        );
        let published = r.published.lock().unwrap().clone();
        assert_eq!(published[0].0, "shoal/alerts/offline/d-1");
        assert_eq!(published[0].1["offline_for_s"], 61);
        let again = handle(schedule, &c, &r, &r, 120_000).await.unwrap();
        assert_eq!(again, PresenceAnswer::Sweep(SweepSummary::default()));
    }

    #[tokio::test]
    async fn a_failed_publish_is_counted_and_left_for_the_next_sweep() {
        let r = Registry {
            fail_publish: true,
            ..Registry::default()
        };
        handle(lifecycle("disconnected", 1_000, 1), &config(), &r, &r, 0)
            .await
            .unwrap();
        let s = sweep(&config(), &r, &r, 100_000).await.unwrap();
        assert_eq!((s.offline_past_threshold, s.failed, s.alerted), (1, 1, 0));
        assert!(
            !r.things.lock().unwrap()["d-1"].3,
            "not marked: the next sweep retries"
        );
    }

    fn event_of(kind: &str, ts: u64, version: u64, reason: &str) -> Value {
        json!({"clientId": "d-1", "timestamp": ts, "eventType": kind,
               "sessionIdentifier": format!("session-{version}"), "principalIdentifier": CERT,
               "versionNumber": version, "disconnectReason": reason,
               "clientInitiatedDisconnect": false})
    }

    #[tokio::test]
    async fn claim_connections_are_ignored_and_never_recorded() {
        let r = Registry::default();
        let mut event = event_of("connected", 1_000, 1, "");
        event["clientId"] = json!("claim.SN-0001.1");
        let PresenceAnswer::Event(summary) = handle(event, &config(), &r, &r, 0).await.unwrap()
        else {
            panic!("an event")
        };
        assert_eq!(summary.outcome, "ignored");
        assert_eq!(summary.event_type.as_deref(), Some("connected"));
        assert!(summary.reason.unwrap().contains("claim connection"));
        assert!(r.things.lock().unwrap().is_empty());
    }

    /// Case 2 of issue 12: an impostor using a device's client id (another certificate, an IAM
    /// principal, none) changes nothing; each is ignored as `foreign_principal` and counted.
    #[tokio::test]
    async fn events_of_another_principal_are_ignored_and_never_recorded() {
        let r = Registry::default();
        let c = config();
        let other = "f".repeat(64);
        let mut impostors = Vec::new();
        for principal in [
            json!(other),
            json!("123456789012/AROAEXAMPLE:session"),
            json!(null),
            json!(CERT.to_uppercase()),
        ] {
            let mut event = event_of("connected", 5_000, 9, "");
            event["principalIdentifier"] = principal;
            impostors.push(event);
        }
        let mut not_a_serial = event_of("connected", 5_000, 9, "");
        not_a_serial["clientId"] = json!("d:1");
        not_a_serial["principalIdentifier"] = json!(CERT);
        impostors.push(not_a_serial);
        handle(
            event_of("disconnected", 1_000, 3, "CONNECTION_LOST"),
            &c,
            &r,
            &r,
            0,
        )
        .await
        .unwrap();
        for event in impostors {
            let PresenceAnswer::Event(summary) =
                handle(event.clone(), &c, &r, &r, 0).await.unwrap()
            else {
                panic!("an event")
            };
            assert_eq!(summary.outcome, "ignored", "{event}");
            assert_eq!(summary.ignored_because, Some(FOREIGN_PRINCIPAL), "{event}");
            assert!(summary.reason.is_some());
        }
        let things = r.things.lock().unwrap();
        assert_eq!(things.len(), 1);
        assert!(
            !things["d-1"].1,
            "still offline: no impostor's connect was recorded"
        );
    }

    /// A device provisioned before certificates were recorded: its first event adopts the
    /// manifest's certificate (once), an impostor's adopts nothing.
    #[tokio::test]
    async fn a_device_without_a_recorded_certificate_adopts_the_manifests_once() {
        let r = Registry::default();
        r.certificates.lock().unwrap().clear();
        let c = config();
        let mut impostor = event_of("connected", 1_000, 1, "");
        impostor["principalIdentifier"] = json!("e".repeat(64));
        let PresenceAnswer::Event(s) = handle(impostor, &c, &r, &r, 0).await.unwrap() else {
            panic!("an event")
        };
        assert_eq!(
            (s.outcome, s.ignored_because),
            ("ignored", Some(FOREIGN_PRINCIPAL))
        );
        assert!(r.certificates.lock().unwrap().is_empty());
        let PresenceAnswer::Event(s) = handle(event_of("connected", 2_000, 1, ""), &c, &r, &r, 0)
            .await
            .unwrap()
        else {
            panic!("an event")
        };
        assert_eq!(s.outcome, "applied", "{s:?}");
        assert_eq!(r.certificates.lock().unwrap()["d-1"], CERT);
    }

    #[tokio::test]
    async fn a_taken_over_session_never_marks_the_new_one_offline() {
        let r = Registry::default();
        let c = config();
        let t0 = 1_800_000_000_000u64;
        let delivered = [
            (event_of("connected", t0, 41, ""), "applied"),
            (event_of("connected", t0 + 600_000, 42, ""), "applied"),
            // Session A's end, stamped after B's start: it belongs to the older connection.
            (
                event_of("disconnected", t0 + 600_250, 41, "DUPLICATE_CLIENTID"),
                "stale",
            ),
        ];
        for (event, expected) in delivered {
            let PresenceAnswer::Event(summary) = handle(event, &c, &r, &r, t0).await.unwrap()
            else {
                panic!("an event")
            };
            assert_eq!(summary.outcome, expected, "{summary:?}");
        }
        assert!(r.things.lock().unwrap()["d-1"].1, "online on session B");
        let schedule = json!({"detail-type": "Scheduled Event", "source": "aws.events"});
        let swept = handle(schedule, &c, &r, &r, t0 + 3_600_000).await.unwrap();
        assert_eq!(swept, PresenceAnswer::Sweep(SweepSummary::default()));
        assert!(r.published.lock().unwrap().is_empty(), "no offline alert");
    }

    /// How the client's next connection began.
    #[derive(Debug, Clone)]
    enum Next {
        /// It connected again while still connected (wait in ms): AWS disconnects the old session
        /// with `DUPLICATE_CLIENTID`, stamped just after the new connect.
        Takeover(u64),
        /// Back after a short time offline: a greater `versionNumber`.
        Short(u64),
        /// Back after 20 minutes to hours offline: AWS resets `versionNumber` to 0 after about an
        /// hour, or the number simply grows.
        Long(u64, bool),
    }

    /// A client's lifecycle events as AWS emits them (kind, time, versionNumber) and whether its
    /// newest connection is still up.
    fn history() -> impl Strategy<Value = (Vec<(&'static str, u64, u64)>, bool)> {
        let next = prop_oneof![
            (0u64..600_000).prop_map(Next::Takeover),
            (0u64..600_000).prop_map(Next::Short),
            (1_200_000u64..20_000_000, any::<bool>()).prop_map(|(w, reset)| Next::Long(w, reset)),
        ];
        (
            prop::collection::vec((1u64..5, next, 1u64..400_000_000), 0..5),
            prop::option::of(1u64..400_000_000),
        )
            .prop_map(|(steps, last_lasted)| {
                let (mut version, mut connected) = (7u64, 1_800_000_000_000u64);
                let mut events = vec![("connected", connected, version)];
                for (gap, next, lasted) in steps {
                    let (at, number) = match next {
                        Next::Takeover(wait) => {
                            let at = connected + wait + 1;
                            events.push(("disconnected", at + 250, version));
                            (at, version + gap)
                        }
                        Next::Short(wait) => {
                            events.push(("disconnected", connected + lasted, version));
                            (connected + lasted + wait, version + gap)
                        }
                        Next::Long(wait, reset) => {
                            events.push(("disconnected", connected + lasted, version));
                            (
                                connected + lasted + wait,
                                if reset { 0 } else { version + gap },
                            )
                        }
                    };
                    (connected, version) = (at, number);
                    events.push(("connected", connected, version));
                }
                let online = match last_lasted {
                    Some(lasted) => {
                        events.push(("disconnected", connected + lasted, version));
                        false
                    }
                    None => true,
                };
                (events, online)
            })
    }

    use proptest::prelude::*;

    proptest! {
        /// Whatever the delivery order, duplication and clock error (±2 minutes) of a client's
        /// lifecycle events — takeovers, short and long absences, versionNumber resets — and
        /// whatever another principal sends in its name, the registry ends in the state of its
        /// newest connection.
        #[test]
        fn presence_follows_the_newest_connection(
            (history, online) in history(),
            order in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
            jitter in prop::collection::vec(-120_000i64..120_000, 12),
            impostors in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let events: Vec<Value> = history
                .iter()
                .enumerate()
                .map(|(k, (kind, at, version))| {
                    let at = at.saturating_add_signed(jitter[k % jitter.len()]);
                    event_of(kind, at, *version, "CONNECTION_LOST")
                })
                .collect();
            // Every event at least once, then duplicates, in a shuffled order.
            let mut delivery: Vec<Value> = events.clone();
            delivery.extend(order.iter().map(|ix| ix.get(&events).clone()));
            // Another certificate's copies of real events, later and newer: never applied.
            delivery.extend(impostors.iter().map(|ix| {
                let mut e = ix.get(&events).clone();
                e["principalIdentifier"] = json!("f".repeat(64));
                e["versionNumber"] = json!(e["versionNumber"].as_u64().unwrap() + 1_000);
                e
            }));
            let n = delivery.len();
            for (k, ix) in order.iter().enumerate() {
                delivery.swap(k % n, ix.index(n));
            }
            let r = Registry::default();
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            for event in delivery {
                rt.block_on(handle(event, &config(), &r, &r, 0)).unwrap();
            }
            let things = r.things.lock().unwrap();
            prop_assert_eq!(things["d-1"].1, online, "history: {:?}", history);
        }
    }
}
