//! Conflict policies between two writes of one shadow leaf, chosen per attribute path.
//!
//! - [`lww`]: last writer wins by the per-leaf metadata timestamp (ties: the cloud, then the
//!   larger JSON text), a max over a total order, so commutative, associative and idempotent.
//! - [`merge`]: union of the keys of both sides; where both hold a different leaf the cloud's
//!   wins. An overlay: idempotent, associative where each key keeps one shape (leaf or object),
//!   and by design not commutative.
//! - [`vclock`]: vector clocks tell a write that saw the other (it wins) from concurrent ones;
//!   the surviving concurrent writes (siblings) merge commutatively, associatively and
//!   idempotently, and a configured [`ConcurrentRule`] picks the winner. The losers are
//!   returned so the caller records them: nothing is silently lost.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::document::{Path, path_text};

/// Who wrote a leaf: the cloud writes `desired`, the device writes `reported`. Ordered so that
/// the cloud is the greater (it wins ties).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The device, which writes `reported`.
    Device,
    /// The cloud, which writes `desired`.
    Cloud,
}

/// What decides between two concurrent writes under [`ConflictPolicy::VectorClock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConcurrentRule {
    /// The cloud's write wins (`cloud-wins`).
    CloudWins,
    /// The device's write wins (`device-wins`).
    DeviceWins,
    /// The later metadata timestamp (then the cloud).
    Newest,
    /// The larger number (non-numbers lose to numbers; then the larger JSON text).
    Max,
    /// The smaller number.
    Min,
}

/// How two writes of one leaf are decided; written `lww`, `merge`, `vclock` or
/// `vclock:<rule>` (`cloud-wins`, `device-wins`, `newest`, `max`, `min`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConflictPolicy {
    /// The later write by metadata timestamp wins (`lww`; see [`lww`]).
    LastWriterWins,
    /// Both sides' keys are kept; the cloud's leaf wins where they differ (`merge`; see
    /// [`merge`]).
    Merge,
    /// A write that saw the other wins; the rule decides between concurrent ones (`vclock`; see
    /// [`vclock`]). Plain `vclock` means `vclock:cloud-wins`.
    VectorClock(ConcurrentRule),
}

impl std::fmt::Display for ConflictPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::LastWriterWins => f.write_str("lww"),
            Self::Merge => f.write_str("merge"),
            Self::VectorClock(rule) => {
                let rule = serde_json::to_value(rule).ok();
                write!(
                    f,
                    "vclock:{}",
                    rule.as_ref().and_then(Value::as_str).unwrap_or("?")
                )
            }
        }
    }
}

impl std::str::FromStr for ConflictPolicy {
    type Err = String;
    /// `lww`, `merge`, `vclock` (cloud wins) or `vclock:<rule>`.
    ///
    /// # Errors
    /// A message naming the text when the policy or the rule is unknown.
    fn from_str(text: &str) -> Result<Self, String> {
        let rule = |name: &str| {
            serde_json::from_value::<ConcurrentRule>(Value::from(name)).map_err(|_| {
                format!(
                    "unknown concurrent rule {name:?} (cloud-wins, device-wins, newest, max, min)"
                )
            })
        };
        match text.split_once(':') {
            None if text == "lww" => Ok(Self::LastWriterWins),
            None if text == "merge" => Ok(Self::Merge),
            None if text == "vclock" => Ok(Self::VectorClock(ConcurrentRule::CloudWins)),
            Some(("vclock", name)) => rule(name).map(Self::VectorClock),
            _ => Err(format!(
                "unknown conflict policy {text:?} (lww, merge, vclock[:cloud-wins|device-wins|newest|max|min])"
            )),
        }
    }
}

/// The policy for each attribute path: `*=lww;config=merge;schedule=vclock:max`. The longest
/// configured prefix of a leaf's path decides; `*` (default `lww`) covers the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyTable {
    default: ConflictPolicy,
    by_path: Vec<(Path, ConflictPolicy)>,
}

impl Default for PolicyTable {
    fn default() -> Self {
        Self {
            default: ConflictPolicy::LastWriterWins,
            by_path: Vec::new(),
        }
    }
}

impl PolicyTable {
    /// The policy of `path`'s longest configured prefix, else the default (`*`).
    pub fn policy_for(&self, path: &[String]) -> ConflictPolicy {
        self.by_path
            .iter()
            .filter(|(prefix, _)| path.starts_with(prefix))
            .max_by_key(|(prefix, _)| prefix.len())
            .map_or(self.default, |(_, policy)| *policy)
    }
}

impl std::str::FromStr for PolicyTable {
    type Err = String;
    /// `path=policy` entries separated by `;` (blank ones ignored); the path `*` sets the default.
    ///
    /// # Errors
    /// A message naming the entry when it is not `path=policy`, its policy is unknown, its path
    /// has an empty segment, or its path is configured twice.
    fn from_str(text: &str) -> Result<Self, String> {
        let mut table = Self::default();
        for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (path, policy) = entry
                .split_once('=')
                .ok_or_else(|| format!("{entry:?} is not path=policy"))?;
            let policy: ConflictPolicy = policy.trim().parse()?;
            let path = path.trim();
            if path == "*" {
                table.default = policy;
                continue;
            }
            let segments: Path = path.split('.').map(str::to_owned).collect();
            if segments.iter().any(String::is_empty) {
                return Err(format!("{path:?} is not a dot-separated attribute path"));
            }
            if table.by_path.iter().any(|(p, _)| *p == segments) {
                return Err(format!("{path:?} is configured twice"));
            }
            table.by_path.push((segments, policy));
        }
        Ok(table)
    }
}

/// One side's write of a leaf, with what the policies order writes by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stamped {
    /// The value written (`null`: a deletion).
    pub value: Value,
    /// The leaf's metadata timestamp (epoch seconds).
    pub timestamp: u64,
    /// Who wrote it.
    pub origin: Origin,
}

/// A total order on JSON values for deterministic tie-breaks: by their compact text.
fn value_order(a: &Value, b: &Value) -> Ordering {
    a.to_string().cmp(&b.to_string())
}

/// [`ConflictPolicy::LastWriterWins`]: the later write, by metadata timestamp, then the cloud,
/// then the larger JSON text.
pub mod lww {
    use super::*;

    fn order(a: &Stamped, b: &Stamped) -> Ordering {
        (a.timestamp, a.origin)
            .cmp(&(b.timestamp, b.origin))
            .then_with(|| value_order(&a.value, &b.value))
    }

    /// The later write of one leaf.
    pub fn merge(a: &Stamped, b: &Stamped) -> Stamped {
        if order(a, b) == Ordering::Less { b } else { a }.clone()
    }

    /// Two leaf maps merged leaf by leaf (a `null` value is a deletion that still carries its
    /// timestamp).
    pub fn merge_maps(
        a: &BTreeMap<Path, Stamped>,
        b: &BTreeMap<Path, Stamped>,
    ) -> BTreeMap<Path, Stamped> {
        let mut out = a.clone();
        for (path, theirs) in b {
            let merged = match out.get(path) {
                Some(ours) => merge(ours, theirs),
                None => theirs.clone(),
            };
            out.insert(path.clone(), merged);
        }
        out
    }
}

/// [`ConflictPolicy::Merge`]: the cloud's state laid over the device's.
pub mod merge {
    use super::super::document::StateMap;
    use super::*;

    /// `cloud` laid over `device`: every key of both, the cloud's leaf where both differ. The
    /// paths where the device's leaf lost are returned with the state.
    pub fn merge(cloud: &StateMap, device: &StateMap) -> (StateMap, Vec<Path>) {
        let mut conflicts = Vec::new();
        let merged = overlay(cloud, device, &mut Vec::new(), &mut conflicts);
        (merged, conflicts)
    }

    fn overlay(
        top: &StateMap,
        bottom: &StateMap,
        at: &mut Path,
        conflicts: &mut Vec<Path>,
    ) -> StateMap {
        let mut out = bottom.clone();
        for (key, value) in top {
            at.push(key.clone());
            let merged = match (value, bottom.get(key)) {
                (Value::Object(t), Some(Value::Object(b))) => {
                    Value::Object(overlay(t, b, at, conflicts))
                }
                (t, Some(b)) => {
                    if !super::super::document::json_eq(t, b) {
                        conflicts.push(at.clone());
                    }
                    t.clone()
                }
                (t, None) => t.clone(),
            };
            out.insert(key.clone(), merged);
            at.pop();
        }
        out
    }
}

/// [`ConflictPolicy::VectorClock`]: vector clocks, the siblings (concurrent writes) they leave,
/// and their resolution by a [`ConcurrentRule`].
pub mod vclock {
    use super::*;

    /// Counters per writer (`cloud`, `device`, or any actor name).
    /// Zero counters are dropped, so equal clocks are equal values.
    #[derive(
        Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
    )]
    #[serde(from = "BTreeMap<String, u64>")]
    pub struct VectorClock(BTreeMap<String, u64>);

    impl From<BTreeMap<String, u64>> for VectorClock {
        fn from(mut counters: BTreeMap<String, u64>) -> Self {
            counters.retain(|_, n| *n > 0);
            Self(counters)
        }
    }

    /// How one vector clock relates to another.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Causality {
        /// The clocks are equal: the same write, as far as they tell.
        Equal,
        /// `self` happened before the other (the other saw it).
        Before,
        /// `self` happened after the other (it saw the other).
        After,
        /// Neither saw the other.
        Concurrent,
    }

    impl VectorClock {
        /// `actor`'s counter (0 when the clock has none).
        pub fn get(&self, actor: &str) -> u64 {
            self.0.get(actor).copied().unwrap_or(0)
        }

        /// This clock with `actor`'s counter advanced by one (saturating at `u64::MAX`): a write
        /// by `actor` that saw this one.
        pub fn incremented(&self, actor: &str) -> Self {
            let mut next = self.clone();
            // A device writes its own counters: one at u64::MAX stays there instead of
            // overflowing (its later writes then no longer dominate; a real device never gets
            // near 2^64 writes).
            let counter = next.0.entry(actor.to_owned()).or_default();
            *counter = counter.saturating_add(1);
            next
        }

        /// The smallest clock that has seen both: each actor's larger counter.
        pub fn join(&self, other: &Self) -> Self {
            let mut out = self.clone();
            for (actor, n) in &other.0 {
                let slot = out.0.entry(actor.clone()).or_default();
                *slot = (*slot).max(*n);
            }
            out
        }

        /// How `self` relates to `other`.
        pub fn compare(&self, other: &Self) -> Causality {
            let actors = self.0.keys().chain(other.0.keys());
            let (mut less, mut greater) = (false, false);
            for actor in actors {
                match self.get(actor).cmp(&other.get(actor)) {
                    Ordering::Less => less = true,
                    Ordering::Greater => greater = true,
                    Ordering::Equal => {}
                }
            }
            match (less, greater) {
                (false, false) => Causality::Equal,
                (true, false) => Causality::Before,
                (false, true) => Causality::After,
                (true, true) => Causality::Concurrent,
            }
        }
    }

    /// A write of one leaf and the vector clock it was made at.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Versioned {
        /// The value, its timestamp and its writer.
        pub write: Stamped,
        /// The leaf's clock at this write.
        pub clock: VectorClock,
    }

    fn canonical(a: &Versioned, b: &Versioned) -> Ordering {
        a.clock
            .cmp(&b.clock)
            .then_with(|| value_order(&a.write.value, &b.write.value))
            .then_with(|| {
                (a.write.timestamp, a.write.origin).cmp(&(b.write.timestamp, b.write.origin))
            })
    }

    /// The writes no other write has seen: what two replicas know, together, in a canonical
    /// order. The same clock with the same value is one write (a replay); the same clock with
    /// different values are two writers that started from the same state: concurrent, both kept.
    pub fn siblings(a: &[Versioned], b: &[Versioned]) -> Vec<Versioned> {
        let all: Vec<&Versioned> = a.iter().chain(b).collect();
        let mut out: Vec<Versioned> = all
            .iter()
            .filter(|v| {
                !all.iter()
                    .any(|w| v.clock.compare(&w.clock) == Causality::Before)
            })
            .map(|v| (*v).clone())
            .collect();
        out.sort_by(canonical);
        out.dedup_by(|x, y| x.clock == y.clock && x.write.value == y.write.value);
        out
    }

    /// The winner among `siblings` and the writes it beat. The winner carries the join of every
    /// sibling's clock, advanced for `actor` (the resolution is a write that has seen them all).
    #[derive(Debug, Clone, PartialEq)]
    pub struct Resolved {
        /// The winning write, with the join of the siblings' clocks (advanced for `actor` when
        /// there was more than one sibling).
        pub winner: Versioned,
        /// The other siblings, in the order they were given.
        pub losers: Vec<Versioned>,
    }

    fn rule_order(rule: ConcurrentRule, a: &Stamped, b: &Stamped) -> Ordering {
        let number = |s: &Stamped| s.value.as_f64();
        let by_number = |a: &Stamped, b: &Stamped| match (number(a), number(b)) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            (Some(_), None) => Ordering::Greater,
            (None, Some(_)) => Ordering::Less,
            (None, None) => Ordering::Equal,
        };
        let primary = match rule {
            ConcurrentRule::CloudWins => a.origin.cmp(&b.origin),
            ConcurrentRule::DeviceWins => b.origin.cmp(&a.origin),
            ConcurrentRule::Newest => a.timestamp.cmp(&b.timestamp),
            ConcurrentRule::Max => by_number(a, b),
            ConcurrentRule::Min => match (number(a), number(b)) {
                (Some(x), Some(y)) => y.total_cmp(&x),
                _ => by_number(a, b),
            },
        };
        primary
            .then_with(|| (a.timestamp, a.origin).cmp(&(b.timestamp, b.origin)))
            .then_with(|| value_order(&a.value, &b.value))
    }

    /// `None` when there is nothing to resolve.
    pub fn resolve(siblings: &[Versioned], rule: ConcurrentRule, actor: &str) -> Option<Resolved> {
        let winner_at = (0..siblings.len())
            .max_by(|&i, &j| rule_order(rule, &siblings[i].write, &siblings[j].write))?;
        let clock = siblings
            .iter()
            .fold(VectorClock::default(), |c, s| c.join(&s.clock));
        let mut losers = siblings.to_vec();
        let mut winner = losers.remove(winner_at);
        winner.clock = if siblings.len() > 1 {
            clock.incremented(actor)
        } else {
            clock
        };
        Some(Resolved { winner, losers })
    }
}

/// A conflict between the cloud's and the device's write of one leaf, as decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    /// The leaf's path as text (`config.interval_s`).
    pub path: String,
    /// The policy that decided, as text (`lww`, `merge`, `vclock:<rule>`).
    pub policy: String,
    /// The write that won.
    pub kept: Stamped,
    /// The write that lost.
    pub lost: Stamped,
}

impl Conflict {
    /// The conflict at `path` that `policy` decided, `kept` over `lost`.
    pub fn new(path: &[String], policy: ConflictPolicy, kept: Stamped, lost: Stamped) -> Self {
        Self {
            path: path_text(path),
            policy: policy.to_string(),
            kept,
            lost,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::vclock::{Causality, VectorClock, Versioned, resolve, siblings};
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn p(s: &str) -> Path {
        s.split('.').map(str::to_owned).collect()
    }

    #[test]
    fn a_device_written_counter_at_the_maximum_saturates() {
        // A device may write any counter, the cloud's own included.
        let clock: VectorClock =
            serde_json::from_value(json!({"cloud": u64::MAX, "dev-1": 3})).unwrap();
        let next = clock.incremented("cloud");
        assert_eq!(next.get("cloud"), u64::MAX);
        assert_eq!(next.get("dev-1"), 3);
        assert_eq!(next.compare(&clock), Causality::Equal);
        assert_eq!(clock.incremented("dev-1").compare(&clock), Causality::After);
    }

    #[test]
    fn table_picks_the_longest_prefix_and_the_default() {
        let table: PolicyTable = "*=merge; config=lww ;config.schedule=vclock:max"
            .parse()
            .unwrap();
        assert_eq!(table.policy_for(&p("other")), ConflictPolicy::Merge);
        assert_eq!(
            table.policy_for(&p("config.interval")),
            ConflictPolicy::LastWriterWins
        );
        assert_eq!(
            table.policy_for(&p("config.schedule.start")),
            ConflictPolicy::VectorClock(ConcurrentRule::Max)
        );
        assert_eq!(
            PolicyTable::default().policy_for(&p("x")),
            ConflictPolicy::LastWriterWins
        );
    }

    #[test]
    fn table_errors_name_the_entry() {
        for bad in [
            "config",
            "config=nope",
            "a..b=lww",
            "x=vclock:loudest",
            "a=lww;a=merge",
        ] {
            let err = bad.parse::<PolicyTable>().unwrap_err();
            assert!(!err.is_empty(), "{bad}");
        }
        assert!(
            "x=vclock:loudest"
                .parse::<PolicyTable>()
                .unwrap_err()
                .contains("loudest")
        );
    }

    #[test]
    fn policy_text_round_trips() {
        for text in [
            "lww",
            "merge",
            "vclock:cloud-wins",
            "vclock:newest",
            "vclock:min",
        ] {
            assert_eq!(text.parse::<ConflictPolicy>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn clocks_tell_causality() {
        let a = VectorClock::default().incremented("cloud");
        let b = a.incremented("device");
        let c = a.incremented("cloud");
        assert_eq!(a.compare(&b), Causality::Before);
        assert_eq!(b.compare(&a), Causality::After);
        assert_eq!(b.compare(&c), Causality::Concurrent);
        assert_eq!(b.compare(&b.clone()), Causality::Equal);
        assert_eq!(b.join(&c).compare(&b), Causality::After);
    }

    #[test]
    fn merge_unions_and_the_cloud_wins_conflicts() {
        let cloud = json!({"a": 1, "n": {"x": 1}}).as_object().unwrap().clone();
        let device = json!({"a": 2, "b": 3, "n": {"x": 1, "y": 2}})
            .as_object()
            .unwrap()
            .clone();
        let (merged, conflicts) = merge::merge(&cloud, &device);
        assert_eq!(
            Value::Object(merged),
            json!({"a": 1, "b": 3, "n": {"x": 1, "y": 2}})
        );
        assert_eq!(conflicts, vec![p("a")]);
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            (0i64..5).prop_map(Value::from),
            "[ab]{0,2}".prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
            Just(Value::Null),
        ]
    }

    fn origin() -> impl Strategy<Value = Origin> {
        prop_oneof![Just(Origin::Cloud), Just(Origin::Device)]
    }

    fn stamped() -> impl Strategy<Value = Stamped> {
        (value(), 0u64..4, origin()).prop_map(|(value, timestamp, origin)| Stamped {
            value,
            timestamp,
            origin,
        })
    }

    fn lww_map() -> impl Strategy<Value = BTreeMap<Path, Stamped>> {
        prop::collection::btree_map(
            prop_oneof![Just(p("a")), Just(p("b")), Just(p("c.d"))],
            stamped(),
            0..4,
        )
    }

    /// States where each key has one shape (`a`, `b` leaves, `n` an object): an overlay of a
    /// leaf on an object replaces it, which no order of merging can make associative.
    fn state() -> impl Strategy<Value = serde_json::Map<String, Value>> {
        let leaf = || {
            prop_oneof![
                (0i64..3).prop_map(Value::from),
                "[xy]".prop_map(Value::from)
            ]
        };
        let leaves = prop::collection::btree_map("[ab]", leaf(), 0..3);
        let nested = prop::option::of(prop::collection::btree_map("[pq]", leaf(), 0..3));
        (leaves, nested).prop_map(|(leaves, nested)| {
            let mut map: serde_json::Map<String, Value> = leaves.into_iter().collect();
            if let Some(n) = nested {
                map.insert("n".into(), Value::Object(n.into_iter().collect()));
            }
            map
        })
    }

    fn versioned() -> impl Strategy<Value = Versioned> {
        (
            stamped(),
            prop::collection::btree_map(prop_oneof![Just("cloud"), Just("device")], 0u64..3, 0..3),
        )
            .prop_map(|(write, clock)| Versioned {
                write,
                clock: VectorClock::from(
                    clock
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect::<BTreeMap<_, _>>(),
                ),
            })
    }

    fn rule() -> impl Strategy<Value = ConcurrentRule> {
        prop_oneof![
            Just(ConcurrentRule::CloudWins),
            Just(ConcurrentRule::DeviceWins),
            Just(ConcurrentRule::Newest),
            Just(ConcurrentRule::Max),
            Just(ConcurrentRule::Min),
        ]
    }

    proptest! {
        #[test]
        fn lww_is_commutative_associative_idempotent(a in lww_map(), b in lww_map(), c in lww_map()) {
            use lww::merge_maps as m;
            prop_assert_eq!(m(&a, &b), m(&b, &a));
            prop_assert_eq!(m(&m(&a, &b), &c), m(&a, &m(&b, &c)));
            prop_assert_eq!(m(&a, &a), a.clone());
            // Replaying b changes nothing more.
            prop_assert_eq!(m(&m(&a, &b), &b), m(&a, &b));
        }

        #[test]
        fn merge_is_associative_and_idempotent_under_replay(
            a in state(), b in state(), c in state()
        ) {
            let m = |x: &serde_json::Map<String, Value>, y: &serde_json::Map<String, Value>| merge::merge(x, y).0;
            prop_assert_eq!(m(&m(&a, &b), &c), m(&a, &m(&b, &c)));
            prop_assert_eq!(m(&a, &a), a.clone());
            prop_assert_eq!(m(&m(&a, &b), &b), m(&a, &b));
            prop_assert_eq!(m(&a, &m(&a, &b)), m(&a, &b));
        }

        #[test]
        fn vclock_siblings_form_a_semilattice(
            a in prop::collection::vec(versioned(), 0..3),
            b in prop::collection::vec(versioned(), 0..3),
            c in prop::collection::vec(versioned(), 0..3),
        ) {
            let ab = siblings(&a, &b);
            prop_assert_eq!(&ab, &siblings(&b, &a));
            prop_assert_eq!(siblings(&ab, &c), siblings(&a, &siblings(&b, &c)));
            prop_assert_eq!(siblings(&ab, &ab), ab.clone());
            prop_assert_eq!(siblings(&ab, &b), ab.clone());
        }

        #[test]
        fn vclock_resolution_keeps_every_write_and_never_lets_a_seen_write_win(
            a in prop::collection::vec(versioned(), 1..4),
            b in prop::collection::vec(versioned(), 0..3),
            rule in rule(),
        ) {
            let sibs = siblings(&a, &b);
            let resolved = resolve(&sibs, rule, "cloud").unwrap();
            prop_assert_eq!(resolved.losers.len() + 1, sibs.len());
            // Every write dominated by another is gone before the rule runs.
            for s in &sibs {
                prop_assert!(sibs.iter().all(|t| s.clock.compare(&t.clock) != Causality::Before));
            }
            // The winner saw everything: replaying any input changes nothing.
            let again = siblings(std::slice::from_ref(&resolved.winner), &sibs);
            prop_assert_eq!(again, vec![resolved.winner.clone()]);
            // Order of the inputs does not matter.
            let mut reversed = sibs.clone();
            reversed.reverse();
            prop_assert_eq!(resolve(&reversed, rule, "cloud").unwrap().winner.write, resolved.winner.write);
        }
    }
}
