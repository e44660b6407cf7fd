//! A cloud writer's intent for `desired` (an operator's `shoal config set`), turned into an
//! update against the shadow as it is now, per the paths' policies. `base` is the shadow as the
//! writer first read it: a leaf that changed between `base` and `fresh` was written by someone
//! else meanwhile (the 409 case), and the policy decides:
//!
//! - `lww`: the later write wins: the other write stays if it is newer than our intent.
//! - `merge`: the stored (already committed) cloud value wins; our other keys still apply.
//! - `vclock`: the two writes are concurrent (neither saw the other): the rule decides, and the
//!   loser is returned. Every leaf we set carries a clock that dominates what we read.

use serde::Serialize;
use serde_json::Value;

use super::document::{
    Path, Section, ShadowDocument, ShadowUpdate, StateMap, json_eq, leaves, path_text, set_path,
};
use super::policy::vclock::{Versioned, resolve, siblings};
use super::policy::{Conflict, ConflictPolicy, Origin, PolicyTable, Stamped};
use super::sync::{CLOCK_KEY, CLOUD_ACTOR, clock_of};

/// What a cloud writer wants in `desired`, and when it decided so.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredIntent {
    /// The values to set, as a `desired` section (planned leaf by leaf).
    pub desired: StateMap,
    /// When the writer decided (epoch seconds): its write's time for `lww`.
    pub decided_at_s: u64,
}

/// What [`plan_intent`] decided: the patch to write, and the leaves it leaves alone.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct IntentPlan {
    /// The `desired` leaves to write (a `vclock` leaf with its `_clock` entry); empty when
    /// nothing is to be written.
    pub patch: StateMap,
    /// Leaves left as they are, and why.
    pub kept: Vec<(String, String)>,
    /// Values that lost a concurrent-write decision (ours or theirs).
    pub lost: Vec<Conflict>,
}

impl IntentPlan {
    /// The update that writes [`patch`](Self::patch), without a version condition; `None` when
    /// the patch is empty.
    pub fn update(&self) -> Option<ShadowUpdate> {
        (!self.patch.is_empty()).then(|| ShadowUpdate::desired(self.patch.clone(), None))
    }
}

fn changed(base: Option<&ShadowDocument>, fresh: &ShadowDocument, path: &[String]) -> bool {
    let before = base.and_then(|b| b.value(Section::Desired, path));
    let now = fresh.value(Section::Desired, path);
    let value_changed = match (before, now) {
        (Some(b), Some(n)) => !json_eq(b, n),
        (b, n) => b.is_some() != n.is_some(),
    };
    value_changed
        || base.and_then(|b| b.timestamp_of(Section::Desired, path))
            != fresh.timestamp_of(Section::Desired, path)
}

/// Plans `intent` against `fresh`, the shadow as it is now (`None`: no shadow yet), given
/// `base`, the shadow as the writer first read it (`None`: read as empty, so every stored leaf
/// counts as written meanwhile), and the paths' `policies`. Leaves already stored with the
/// same value are skipped.
pub fn plan_intent(
    base: Option<&ShadowDocument>,
    fresh: Option<&ShadowDocument>,
    intent: &DesiredIntent,
    policies: &PolicyTable,
) -> IntentPlan {
    let empty = ShadowDocument::default();
    let fresh = fresh.unwrap_or(&empty);
    let base = base.or(Some(&empty));
    let mut plan = IntentPlan::default();
    for (path, value) in leaves(&intent.desired) {
        let stored = fresh.value(Section::Desired, &path);
        if stored.is_some_and(|s| json_eq(s, value)) {
            continue;
        }
        let theirs = stored.filter(|_| changed(base, fresh, &path));
        let policy = policies.policy_for(&path);
        let mine = Stamped {
            value: value.clone(),
            timestamp: intent.decided_at_s,
            origin: Origin::Cloud,
        };
        match (policy, theirs) {
            (_, None) => plan.set(fresh, &path, value, policy),
            (ConflictPolicy::LastWriterWins, Some(other)) => {
                let ts = fresh.timestamp_of(Section::Desired, &path).unwrap_or(0);
                if ts > intent.decided_at_s {
                    plan.kept.push((
                        path_text(&path),
                        format!("a newer write ({other}) is kept (lww)"),
                    ));
                } else {
                    plan.set(fresh, &path, value, policy);
                }
            }
            (ConflictPolicy::Merge, Some(other)) => {
                plan.kept.push((
                    path_text(&path),
                    format!("written meanwhile ({other}); the stored value wins (merge)"),
                ));
            }
            (ConflictPolicy::VectorClock(rule), Some(other)) => {
                let base_clock = clock_of(base.and_then(|b| b.section(Section::Desired)), &path);
                let theirs = Versioned {
                    write: Stamped {
                        value: other.clone(),
                        timestamp: fresh.timestamp_of(Section::Desired, &path).unwrap_or(0),
                        origin: Origin::Cloud,
                    },
                    clock: clock_of(fresh.section(Section::Desired), &path),
                };
                let ours = Versioned {
                    write: mine,
                    clock: base_clock.incremented(CLOUD_ACTOR),
                };
                let sibs = siblings(&[ours], &[theirs]);
                let Some(resolved) = resolve(&sibs, rule, CLOUD_ACTOR) else {
                    continue;
                };
                for lost in &resolved.losers {
                    plan.lost.push(Conflict::new(
                        &path,
                        policy,
                        resolved.winner.write.clone(),
                        lost.write.clone(),
                    ));
                }
                if json_eq(&resolved.winner.write.value, value) {
                    plan.set(fresh, &path, value, policy);
                } else {
                    plan.kept.push((
                        path_text(&path),
                        format!("a concurrent write ({other}) won ({policy})"),
                    ));
                }
            }
        }
    }
    plan
}

impl IntentPlan {
    fn set(&mut self, fresh: &ShadowDocument, path: &Path, value: &Value, policy: ConflictPolicy) {
        set_path(&mut self.patch, path, value.clone());
        if let ConflictPolicy::VectorClock(_) = policy {
            let seen = clock_of(fresh.section(Section::Desired), path)
                .join(&clock_of(fresh.section(Section::Reported), path));
            let clock =
                serde_json::to_value(seen.incremented(CLOUD_ACTOR)).expect("a clock is JSON");
            set_path(
                &mut self.patch,
                &[CLOCK_KEY.to_owned(), path_text(path)],
                clock,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(desired: Value, meta: Value, version: u64) -> ShadowDocument {
        serde_json::from_value(json!({"state": {"desired": desired}, "metadata": {"desired": meta}, "version": version})).unwrap()
    }

    fn intent(desired: Value, at: u64) -> DesiredIntent {
        DesiredIntent {
            desired: desired.as_object().unwrap().clone(),
            decided_at_s: at,
        }
    }

    fn table(text: &str) -> PolicyTable {
        text.parse().unwrap()
    }

    #[test]
    fn without_a_race_the_intent_applies_and_equal_leaves_are_skipped() {
        let base = doc(json!({"a": 1, "b": 2}), json!({}), 3);
        let p = plan_intent(
            Some(&base),
            Some(&base),
            &intent(json!({"a": 1, "b": 5, "c": {"d": 1}}), 10),
            &table("*=lww"),
        );
        assert_eq!(Value::Object(p.patch), json!({"b": 5, "c": {"d": 1}}));
    }

    #[test]
    fn a_race_is_resolved_per_policy() {
        let base = doc(json!({"a": 1}), json!({"a": {"timestamp": 5}}), 3);
        // Someone set a=2 at t=20 after we read.
        let fresh = doc(
            json!({"a": 2, "_clock": {"a": {"cloud": 1}}}),
            json!({"a": {"timestamp": 20}}),
            4,
        );
        let mine = |at| intent(json!({"a": 9}), at);
        // lww: our intent (t=10) is older than theirs: kept; a later intent (t=30) wins.
        assert!(
            plan_intent(Some(&base), Some(&fresh), &mine(10), &table("*=lww"))
                .patch
                .is_empty()
        );
        assert_eq!(
            plan_intent(Some(&base), Some(&fresh), &mine(30), &table("*=lww")).patch["a"],
            9
        );
        // merge: the stored cloud value wins.
        let m = plan_intent(Some(&base), Some(&fresh), &mine(30), &table("*=merge"));
        assert!(m.patch.is_empty() && m.kept.len() == 1);
        // vclock: concurrent; max keeps our 9 and records their 2, with a dominating clock.
        let v = plan_intent(Some(&base), Some(&fresh), &mine(30), &table("*=vclock:max"));
        assert_eq!(
            Value::Object(v.patch),
            json!({"a": 9, "_clock": {"a": {"cloud": 2}}})
        );
        assert_eq!(v.lost[0].lost.value, json!(2));
        let v = plan_intent(Some(&base), Some(&fresh), &mine(30), &table("*=vclock:min"));
        assert!(v.patch.is_empty());
        assert_eq!(v.lost[0].lost.value, json!(9));
    }
}
