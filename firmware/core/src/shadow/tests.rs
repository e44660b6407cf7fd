use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::*;

/// A configuration store that runs integers up to 100 (clamping larger ones) and refuses
/// anything else.
#[derive(Debug, Default)]
struct Store(BTreeMap<String, Value>);

impl Apply for Store {
    fn apply(&mut self, key: &str, desired: &Value) -> Result<Value, String> {
        let n = desired
            .as_u64()
            .ok_or_else(|| format!("{key}: not a whole number"))?;
        let running = json!(n.min(100));
        self.0.insert(key.to_string(), running.clone());
        Ok(running)
    }

    fn running(&self) -> Map<String, Value> {
        self.0.clone().into_iter().collect()
    }
}

fn delta(version: u64, state: Value) -> (String, Vec<u8>) {
    (
        "$aws/things/d-1/shadow/update/delta".into(),
        json!({"version": version, "state": state, "timestamp": 1})
            .to_string()
            .into_bytes(),
    )
}

fn get_accepted(version: u64, desired: Value, reported: Value, delta: Value) -> (String, Vec<u8>) {
    (
        "$aws/things/d-1/shadow/get/accepted".into(),
        json!({"version": version, "state": {"desired": desired, "reported": reported, "delta": delta}})
            .to_string()
            .into_bytes(),
    )
}

fn reported(publish: &Publish) -> Value {
    let document: Value = serde_json::from_slice(&publish.payload).unwrap();
    document["state"]["reported"].clone()
}

#[test]
fn what_is_reported_is_what_was_applied_never_what_was_asked() {
    let mut sync = ShadowSync::new("d-1", None);
    let mut store = Store::default();
    let connected = sync.connected();
    assert_eq!(connected.topic, "$aws/things/d-1/shadow/get");
    let (topic, payload) = delta(3, json!({"interval_s": 500, "led": "on", "gain": 7}));
    let (event, out) = sync.handle(&topic, &payload, &mut store);
    assert_eq!(
        event,
        Event::Applied {
            applied: vec![("gain".into(), json!(7)), ("interval_s".into(), json!(100))],
            refused: vec![("led".into(), "led: not a whole number".into())],
        }
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].topic, "$aws/things/d-1/shadow/update");
    assert_eq!(
        reported(&out[0]),
        json!({"gain": 7, "interval_s": 100}),
        "clamped, and nothing refused"
    );
}

#[test]
fn a_delta_older_than_the_newest_applied_is_stale_and_a_duplicate_too() {
    let mut sync = ShadowSync::new("d-1", None);
    let mut store = Store::default();
    let (t, p) = get_accepted(7, json!({"a": 2}), json!({"a": 1}), json!({"a": 2}));
    sync.handle(&t, &p, &mut store);
    for (version, value) in [(5, 9), (7, 9)] {
        let (t, p) = delta(version, json!({"a": value}));
        let (event, out) = sync.handle(&t, &p, &mut store);
        assert_eq!(event, Event::Stale(version));
        assert!(out.is_empty());
    }
    assert_eq!(store.0["a"], json!(2));
}

#[test]
fn the_devices_own_reports_never_hide_a_delta() {
    let mut sync = ShadowSync::new("d-1", None);
    let mut store = Store::default();
    let (t, p) = delta(4, json!({"a": 1}));
    sync.handle(&t, &p, &mut store);
    // The report's answer (version 6) comes before a delta of version 5: the delta still counts.
    let accepted = json!({"version": 6, "state": {"reported": {"a": 1}}}).to_string();
    sync.handle(
        "$aws/things/d-1/shadow/update/accepted",
        accepted.as_bytes(),
        &mut store,
    );
    let (t, p) = delta(5, json!({"a": 3}));
    let (event, _) = sync.handle(&t, &p, &mut store);
    assert!(matches!(event, Event::Applied { .. }), "{event:?}");
    assert_eq!(store.0["a"], json!(3));
}

#[test]
fn a_conflict_starts_over_and_a_missing_shadow_is_created_with_what_runs() {
    let mut sync = ShadowSync::new("d-1", Some("config"));
    let mut store = Store::default();
    store.0.insert("interval_s".into(), json!(60));
    let conflict = json!({"code": 409, "message": "Version conflict"}).to_string();
    let (event, out) = sync.handle(
        "$aws/things/d-1/shadow/name/config/update/rejected",
        conflict.as_bytes(),
        &mut store,
    );
    assert_eq!(event, Event::ReportRefused(409, "Version conflict".into()));
    assert_eq!(out[0].topic, "$aws/things/d-1/shadow/name/config/get");
    let missing =
        json!({"code": 404, "message": "No shadow exists with name: 'config'"}).to_string();
    let (_, out) = sync.handle(
        "$aws/things/d-1/shadow/name/config/get/rejected",
        missing.as_bytes(),
        &mut store,
    );
    assert_eq!(out[0].topic, "$aws/things/d-1/shadow/name/config/update");
    assert_eq!(reported(&out[0]), json!({"interval_s": 60}));
    // Another shadow's messages, and the classic shadow's, are not this sync's.
    let (t, p) = delta(9, json!({"a": 1}));
    assert_eq!(sync.handle(&t, &p, &mut store).0, Event::Ignored);
    assert_eq!(sync.subscriptions().len(), 5);
    assert!(
        sync.subscriptions()
            .iter()
            .all(|f| f.contains("/shadow/name/config/"))
    );
}

proptest! {
    /// Desired states 1..=n (each a full desired state at its version), delivered as deltas and
    /// get answers in any order, each any number of times: the device ends running the last one.
    #[test]
    fn any_order_and_duplication_converges_to_the_last_desired_state(
        states in prop::collection::vec(prop::collection::btree_map("[a-d]", 0u64..100, 1..4), 1..6),
        order in prop::collection::vec((any::<prop::sample::Index>(), any::<bool>()), 1..20),
    ) {
        let n = states.len();
        let messages: Vec<(String, Vec<u8>)> = states
            .iter()
            .enumerate()
            .flat_map(|(i, state)| {
                let value = Value::Object(state.iter().map(|(k, v)| (k.clone(), json!(v))).collect());
                let version = u64::try_from(i + 1).unwrap();
                [delta(version, value.clone()), get_accepted(version, value.clone(), json!({}), value)]
            })
            .collect();
        // Every message at least once (the last state's included), then repeats in any order.
        let mut delivery: Vec<usize> = (0..messages.len()).collect();
        for (index, _) in &order {
            delivery.push(index.index(messages.len()));
        }
        let mut shuffled = delivery;
        let len = shuffled.len();
        for (i, (index, swap)) in order.iter().enumerate() {
            if *swap {
                shuffled.swap(i % len, index.index(len));
            }
        }
        let mut sync = ShadowSync::new("d-1", None);
        let mut store = Store::default();
        for i in shuffled {
            let (topic, payload) = &messages[i];
            sync.handle(topic, payload, &mut store);
        }
        for (key, value) in &states[n - 1] {
            prop_assert_eq!(&store.0[key], &json!(value));
        }
    }
}

#[test]
fn vclock_paths_report_the_clock_they_have_seen_with_their_own_counter_one_higher() {
    /// Runs whatever is asked.
    #[derive(Default)]
    struct Anything(BTreeMap<String, Value>);
    impl Apply for Anything {
        fn apply(&mut self, key: &str, desired: &Value) -> Result<Value, String> {
            self.0.insert(key.to_string(), desired.clone());
            Ok(desired.clone())
        }
        fn running(&self) -> Map<String, Value> {
            self.0.clone().into_iter().collect()
        }
    }
    let mut sync = ShadowSync::new("t-1", None).with_vclock_paths(["schedule.start".to_string()]);
    let mut store = Anything::default();
    // The whole shadow: the cloud wrote schedule.start twice; the device had reported once.
    let got = json!({"version": 4, "state": {
        "desired": {"schedule": {"start": 5}, "_clock": {"schedule.start": {"cloud": 2}}},
        "reported": {"schedule": {"start": 3}, "_clock": {"schedule.start": {"cloud": 1, "device": 1}}},
        "delta": {"schedule": {"start": 5}, "_clock": {"schedule.start": {"cloud": 2}}}}});
    let (_, out) = sync.handle(
        "$aws/things/t-1/shadow/get/accepted",
        got.to_string().as_bytes(),
        &mut store,
    );
    let report: Value = serde_json::from_slice(&out[0].payload).unwrap();
    assert_eq!(
        report["state"]["reported"],
        json!({"schedule": {"start": 5}, "_clock": {"schedule.start": {"cloud": 2, "device": 2}}})
    );
    assert!(
        !store.0.contains_key("_clock"),
        "the clock is never configuration"
    );
    // A later cloud write: the device's counter moves on from its own last report.
    let delta = json!({"version": 6, "state": {"schedule": {"start": 9},
                       "_clock": {"schedule.start": {"cloud": 3, "device": 2}}}});
    let (_, out) = sync.handle(
        "$aws/things/t-1/shadow/update/delta",
        delta.to_string().as_bytes(),
        &mut store,
    );
    let report: Value = serde_json::from_slice(&out[0].payload).unwrap();
    assert_eq!(
        report["state"]["reported"]["_clock"],
        json!({"schedule.start": {"cloud": 3, "device": 3}})
    );
    // A path outside the vclock paths carries no clock.
    let plain = json!({"version": 7, "state": {"interval_s": 30}});
    let (_, out) = sync.handle(
        "$aws/things/t-1/shadow/update/delta",
        plain.to_string().as_bytes(),
        &mut store,
    );
    let report: Value = serde_json::from_slice(&out[0].payload).unwrap();
    assert_eq!(report["state"]["reported"], json!({"interval_s": 30}));
}
