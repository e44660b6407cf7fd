//! What Shoal does with one `update/documents` message: clear the desired keys the device has
//! reached (so a stale desired value can never re-apply), decide conflicts between a pending
//! desired value and a different value the device just reported (per the path's policy), and
//! pick out what the device registry records. Pure: the function's edges apply the plan.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::document::{
    Path, Section, ShadowDocument, ShadowUpdate, StateMap, get_path, json_eq, leaves, path_text,
    set_path,
};
use super::policy::vclock::{VectorClock, Versioned, resolve, siblings};
use super::policy::{Conflict, ConflictPolicy, Origin, PolicyTable, Stamped, lww};

/// The key in `desired` and `reported` under which writers keep the vector clocks of the leaves
/// whose policy is `vclock`: `{"_clock": {"schedule.start": {"cloud": 3, "device": 2}}}`.
pub const CLOCK_KEY: &str = "_clock";
/// The actor name the cloud's writers use in vector clocks.
pub const CLOUD_ACTOR: &str = "cloud";

/// What [`plan`] decided for one `update/documents` message.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SyncPlan {
    /// The desired-state update to write (nulls clear keys), empty when there is nothing to do.
    pub desired_patch: StateMap,
    /// Desired leaves the device reached (cleared).
    pub converged: Vec<String>,
    /// Desired leaves the device's own newer write superseded (cleared).
    pub superseded: Vec<String>,
    /// Every conflict decided, with the value that lost.
    pub conflicts: Vec<Conflict>,
}

impl SyncPlan {
    /// The versioned update that applies the plan, if it changes anything.
    pub fn update(&self, based_on: u64) -> Option<ShadowUpdate> {
        (!self.desired_patch.is_empty())
            .then(|| ShadowUpdate::desired(self.desired_patch.clone(), Some(based_on)))
    }

    fn clear(&mut self, desired: &StateMap, path: &[String]) {
        set_path(&mut self.desired_patch, path, Value::Null);
        let key = path_text(path);
        let has_clock = desired
            .get(CLOCK_KEY)
            .and_then(Value::as_object)
            .is_some_and(|clocks| clocks.contains_key(&key));
        if has_clock {
            set_path(
                &mut self.desired_patch,
                &[CLOCK_KEY.to_owned(), key],
                Value::Null,
            );
        }
    }
}

/// The vector clock a section keeps for `path` (empty when none was written).
pub fn clock_of(section: Option<&StateMap>, path: &[String]) -> VectorClock {
    section
        .and_then(|s| s.get(CLOCK_KEY))
        .and_then(|clocks| clocks.get(path_text(path)))
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default()
}

fn stamped(doc: &ShadowDocument, section: Section, path: &[String], value: &Value) -> Stamped {
    Stamped {
        value: value.clone(),
        timestamp: doc.timestamp_of(section, path).unwrap_or(0),
        origin: match section {
            Section::Desired => Origin::Cloud,
            Section::Reported => Origin::Device,
        },
    }
}

/// Whether the device wrote `path` in the update that led from `previous` to `current`.
fn device_wrote(
    previous: Option<&ShadowDocument>,
    current: &ShadowDocument,
    path: &[String],
) -> bool {
    let Some(previous) = previous else {
        return true;
    };
    let before = previous.value(Section::Reported, path);
    let after = current.value(Section::Reported, path);
    let changed = match (before, after) {
        (Some(b), Some(a)) => !json_eq(b, a),
        (b, a) => b.is_some() != a.is_some(),
    };
    changed
        || previous.timestamp_of(Section::Reported, path)
            != current.timestamp_of(Section::Reported, path)
}

/// The plan for `current` (the shadow after an update) given `previous` (before it; `None` when
/// unknown, which treats every reported leaf as just written).
pub fn plan(
    previous: Option<&ShadowDocument>,
    current: &ShadowDocument,
    policies: &PolicyTable,
) -> SyncPlan {
    let mut plan = SyncPlan::default();
    let Some(desired) = current.state.desired.as_ref() else {
        return plan;
    };
    let empty = StateMap::new();
    let reported = current.state.reported.as_ref().unwrap_or(&empty);
    for (path, want) in leaves(desired) {
        if path[0] == CLOCK_KEY {
            continue;
        }
        let Some(have) = get_path(reported, &path) else {
            continue; // pending: the device has not reported this key
        };
        if json_eq(want, have) {
            plan.clear(desired, &path);
            plan.converged.push(path_text(&path));
            continue;
        }
        if !device_wrote(previous, current, &path) {
            continue; // pending: the device has not acted on it yet
        }
        let cloud = stamped(current, Section::Desired, &path, want);
        let device = stamped(current, Section::Reported, &path, have);
        decide(
            &mut plan,
            desired,
            reported,
            &path,
            policies.policy_for(&path),
            cloud,
            device,
        );
    }
    plan
}

fn decide(
    plan: &mut SyncPlan,
    desired: &StateMap,
    reported: &StateMap,
    path: &Path,
    policy: ConflictPolicy,
    cloud: Stamped,
    device: Stamped,
) {
    match policy {
        ConflictPolicy::LastWriterWins => {
            if lww::merge(&cloud, &device).origin == Origin::Device {
                plan.clear(desired, path);
                plan.superseded.push(path_text(path));
                plan.conflicts
                    .push(Conflict::new(path, policy, device, cloud));
            } else {
                plan.conflicts
                    .push(Conflict::new(path, policy, cloud, device));
            }
        }
        // The cloud wins: desired stays, and the device will apply it.
        ConflictPolicy::Merge => plan
            .conflicts
            .push(Conflict::new(path, policy, cloud, device)),
        ConflictPolicy::VectorClock(rule) => {
            let ours = Versioned {
                write: cloud,
                clock: clock_of(Some(desired), path),
            };
            let theirs = Versioned {
                write: device,
                clock: clock_of(Some(reported), path),
            };
            let sibs = siblings(&[ours], &[theirs]);
            let Some(resolved) = resolve(&sibs, rule, CLOUD_ACTOR) else {
                return;
            };
            if resolved.winner.write.origin == Origin::Device {
                plan.clear(desired, path);
                plan.superseded.push(path_text(path));
            } else if sibs.len() > 1 {
                // The cloud won a concurrent write: its clock now dominates the device's, so the
                // device (and a replay of this message) sees desired as the newer write.
                let clock = serde_json::to_value(&resolved.winner.clock).expect("a clock is JSON");
                set_path(
                    &mut plan.desired_patch,
                    &[CLOCK_KEY.to_owned(), path_text(path)],
                    clock,
                );
            }
            for lost in resolved.losers {
                plan.conflicts.push(Conflict::new(
                    path,
                    policy,
                    resolved.winner.write.clone(),
                    lost.write,
                ));
            }
        }
    }
}

/// What the device registry keeps from a device's reported state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportedFacts {
    /// The reported firmware version (a JSON string's text, any other value's JSON); `None` when
    /// not reported.
    pub firmware: Option<String>,
    /// The reported configuration, as JSON; `None` when not reported.
    pub config: Option<Value>,
}

/// The reported firmware version and configuration, when the device changed either in this
/// update (or `previous` is unknown) and reports at least one of them.
pub fn reported_facts(
    previous: Option<&ShadowDocument>,
    current: &ShadowDocument,
    firmware_path: &[String],
    config_path: &[String],
) -> Option<ReportedFacts> {
    let firmware = current.value(Section::Reported, firmware_path);
    let config = current.value(Section::Reported, config_path);
    if firmware.is_none() && config.is_none() {
        return None;
    }
    let changed = device_wrote(previous, current, firmware_path)
        || device_wrote(previous, current, config_path);
    changed.then(|| ReportedFacts {
        firmware: firmware.map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }),
        config: config.cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::document::merge_patch;
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn doc(state: Value, metadata: Value, version: u64) -> ShadowDocument {
        serde_json::from_value(json!({"state": state, "metadata": metadata, "version": version}))
            .unwrap()
    }

    fn policies(text: &str) -> PolicyTable {
        text.parse().unwrap()
    }

    #[test]
    fn reached_keys_are_cleared_pending_ones_kept() {
        let previous = doc(
            json!({"desired": {"a": 1, "b": 2}, "reported": {"a": 0}}),
            json!({}),
            3,
        );
        let current = doc(
            json!({"desired": {"a": 1, "b": 2, "n": {"x": [1, 2]}}, "reported": {"a": 1.0, "n": {"x": [1, 2]}}}),
            json!({}),
            4,
        );
        let plan = plan(Some(&previous), &current, &PolicyTable::default());
        assert_eq!(plan.converged, ["a", "n.x"]);
        assert_eq!(
            Value::Object(plan.desired_patch.clone()),
            json!({"a": null, "n": {"x": null}})
        );
        let update = plan.update(4).unwrap();
        assert_eq!(update.version, Some(4));
        assert!(plan.conflicts.is_empty());
    }

    #[test]
    fn lww_lets_the_later_write_win_per_leaf() {
        let previous = doc(
            json!({"desired": {"t": 20, "u": 1}, "reported": {"t": 18, "u": 0}}),
            json!({}),
            1,
        );
        let current = doc(
            json!({"desired": {"t": 20, "u": 1}, "reported": {"t": 22, "u": 5}}),
            json!({
                "desired": {"t": {"timestamp": 100}, "u": {"timestamp": 300}},
                "reported": {"t": {"timestamp": 200}, "u": {"timestamp": 200}}
            }),
            2,
        );
        let plan = plan(Some(&previous), &current, &PolicyTable::default());
        // t: the device's 22 (at 200) is newer than desired 20 (at 100): desired is cleared.
        // u: desired (at 300) is newer: it stays and the device will apply it.
        assert_eq!(
            Value::Object(plan.desired_patch.clone()),
            json!({"t": null})
        );
        assert_eq!(plan.superseded, ["t"]);
        assert_eq!(plan.conflicts.len(), 2);
        assert_eq!(plan.conflicts[0].lost.value, json!(20));
        assert_eq!(plan.conflicts[1].kept.value, json!(1));
    }

    #[test]
    fn merge_keeps_the_cloud_value() {
        let current = doc(
            json!({"desired": {"mode": "eco"}, "reported": {"mode": "boost"}}),
            json!({"desired": {"mode": {"timestamp": 1}}, "reported": {"mode": {"timestamp": 9}}}),
            2,
        );
        let plan = plan(None, &current, &policies("mode=merge"));
        assert!(plan.desired_patch.is_empty());
        assert_eq!(plan.conflicts[0].kept.origin, Origin::Cloud);
        assert_eq!(plan.conflicts[0].lost.value, json!("boost"));
    }

    #[test]
    fn vclock_follows_causality_and_resolves_concurrency_by_rule() {
        // The device saw the cloud's write (its clock dominates): the device wins, no conflict.
        let seen = doc(
            json!({
                "desired": {"s": 5, "_clock": {"s": {"cloud": 1}}},
                "reported": {"s": 7, "_clock": {"s": {"cloud": 1, "device": 1}}}
            }),
            json!({}),
            3,
        );
        let p = plan(None, &seen, &policies("s=vclock:cloud-wins"));
        assert_eq!(
            Value::Object(p.desired_patch.clone()),
            json!({"s": null, "_clock": {"s": null}})
        );
        assert!(p.conflicts.is_empty());

        // Concurrent writes: max picks 7 (the device) and records the cloud's 5 as lost.
        let concurrent = doc(
            json!({
                "desired": {"s": 5, "_clock": {"s": {"cloud": 2}}},
                "reported": {"s": 7, "_clock": {"s": {"cloud": 1, "device": 1}}}
            }),
            json!({}),
            3,
        );
        let p = plan(None, &concurrent, &policies("s=vclock:max"));
        assert_eq!(p.superseded, ["s"]);
        assert_eq!(p.conflicts[0].lost.value, json!(5));
        // cloud-wins keeps 5, records 7, and writes a clock that dominates the device's.
        let p = plan(None, &concurrent, &policies("s=vclock:cloud-wins"));
        assert_eq!(
            Value::Object(p.desired_patch.clone()),
            json!({"_clock": {"s": {"cloud": 3, "device": 1}}})
        );
        assert_eq!(p.conflicts[0].lost.value, json!(7));
    }

    #[test]
    fn facts_are_picked_when_the_device_changed_them() {
        let p = |s: &str| s.split('.').map(str::to_owned).collect::<Vec<_>>();
        let before = doc(
            json!({"reported": {"firmware": {"version": "1.0.0"}, "rssi": -70}}),
            json!({}),
            1,
        );
        let fw_changed = doc(
            json!({"reported": {"firmware": {"version": "1.1.0"}, "rssi": -70}}),
            json!({}),
            2,
        );
        let rssi_changed = doc(
            json!({"reported": {"firmware": {"version": "1.0.0"}, "rssi": -60}}),
            json!({}),
            2,
        );
        let facts = reported_facts(
            Some(&before),
            &fw_changed,
            &p("firmware.version"),
            &p("config"),
        )
        .unwrap();
        assert_eq!(
            facts,
            ReportedFacts {
                firmware: Some("1.1.0".into()),
                config: None
            }
        );
        assert_eq!(
            reported_facts(
                Some(&before),
                &rssi_changed,
                &p("firmware.version"),
                &p("config")
            ),
            None
        );
        assert!(reported_facts(None, &before, &p("firmware.version"), &p("config")).is_some());
    }

    #[test]
    fn a_reported_value_the_device_did_not_just_write_is_not_a_conflict() {
        let previous = doc(
            json!({"desired": {"t": 21}, "reported": {"t": 18}}),
            json!({}),
            1,
        );
        let current = doc(
            json!({"desired": {"t": 25}, "reported": {"t": 18}}),
            json!({}),
            2,
        );
        let plan = plan(Some(&previous), &current, &PolicyTable::default());
        assert_eq!(plan, SyncPlan::default());
    }

    /// The service's side of an applied plan: desired merged with the patch, version + 1.
    fn applied(current: &ShadowDocument, plan: &SyncPlan) -> ShadowDocument {
        let mut next = current.clone();
        if let Some(desired) = next.state.desired.as_mut() {
            merge_patch(desired, &plan.desired_patch);
        }
        next.version += 1;
        next
    }

    fn section() -> impl Strategy<Value = StateMap> {
        let leaf = prop_oneof![(0i64..3).prop_map(Value::from), Just(json!([1, 2]))];
        prop::collection::btree_map("[abc]", leaf, 0..4).prop_map(|m| m.into_iter().collect())
    }

    fn policy_table() -> impl Strategy<Value = PolicyTable> {
        prop_oneof![
            Just("*=lww"),
            Just("*=merge"),
            Just("*=vclock:cloud-wins"),
            Just("*=vclock:device-wins"),
            Just("*=vclock:max"),
            Just("a=merge;b=vclock:newest;*=lww"),
        ]
        .prop_map(|t| t.parse().unwrap())
    }

    proptest! {
        /// Replaying a message (or the next message, after the plan was applied) never changes
        /// the shadow again, for every policy.
        #[test]
        fn every_policy_is_idempotent_under_replay(
            desired in section(),
            reported in section(),
            before in section(),
            ts in prop::collection::vec(0u64..3, 6),
            table in policy_table(),
        ) {
            let meta = |m: &StateMap, off: usize| {
                Value::Object(m.keys().enumerate().map(|(i, k)| (k.clone(), json!({"timestamp": ts[(i + off) % 6]}))).collect())
            };
            let previous = doc(json!({"desired": desired, "reported": before}), json!({}), 1);
            let current = doc(
                json!({"desired": desired, "reported": reported}),
                json!({"desired": meta(&desired, 0), "reported": meta(&reported, 3)}),
                2,
            );
            let first = plan(Some(&previous), &current, &table);
            prop_assert_eq!(&first, &plan(Some(&previous), &current, &table));
            let next = applied(&current, &first);
            let replay = plan(Some(&current), &next, &table);
            prop_assert!(replay.desired_patch.is_empty(), "{:?} then {:?}", first, replay);
            prop_assert!(replay.conflicts.is_empty());
        }
    }

    #[test]
    fn vclock_concurrent_cloud_win_is_stable_after_the_clock_is_written() {
        let current = doc(
            json!({
                "desired": {"s": 5, "_clock": {"s": {"cloud": 2}}},
                "reported": {"s": 7, "_clock": {"s": {"device": 1}}}
            }),
            json!({}),
            3,
        );
        let table = policies("*=vclock:cloud-wins");
        let first = plan(None, &current, &table);
        let next = applied(&current, &first);
        // Even treating every reported leaf as new, the cloud's clock now dominates: no conflict.
        let again = plan(None, &next, &table);
        assert!(
            again.desired_patch.is_empty() && again.conflicts.is_empty(),
            "{again:?}"
        );
    }
}
