//! Shadow documents as AWS IoT stores and sends them, and the Device Shadow service's own rules:
//! how an update merges into the state (null deletes a key, objects merge, anything else
//! replaces) and how `delta` is computed (leaf-wise over `desired`; arrays compare whole).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ids::ClientToken;

/// A `desired` or `reported` section: a JSON object.
pub type StateMap = Map<String, Value>;

/// A leaf's place in a section: `["config", "interval_s"]`, written `config.interval_s`.
pub type Path = Vec<String>;

/// A path as text: its keys joined with `.` (`["config", "interval_s"]` → `config.interval_s`).
pub fn path_text(path: &[String]) -> String {
    path.join(".")
}

/// One of the two sections of a shadow's state that writers set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Section {
    /// `desired`: the state the cloud wants the device in.
    Desired,
    /// `reported`: the state the device says it is in.
    Reported,
}

/// A shadow document's `state`: `desired`, `reported` and, where AWS IoT includes it, `delta`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowState {
    /// The `desired` section; `None` when the document has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<StateMap>,
    /// The `reported` section; `None` when the document has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<StateMap>,
    /// The `delta` AWS IoT computed (the `desired` leaves that differ from `reported`), as
    /// GetThingShadow returns it; `None` when absent, as in `update/documents`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<StateMap>,
}

impl ShadowState {
    /// The given section, if the state has it.
    pub fn section(&self, section: Section) -> Option<&StateMap> {
        match section {
            Section::Desired => self.desired.as_ref(),
            Section::Reported => self.reported.as_ref(),
        }
    }
}

/// Per-leaf `{"timestamp": seconds}` objects mirroring the state (arrays: one per element).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowMetadata {
    /// Timestamps of the `desired` leaves; `None` when the document has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<Value>,
    /// Timestamps of the `reported` leaves; `None` when the document has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<Value>,
}

/// A shadow document as GetThingShadow and `update/documents` carry it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShadowDocument {
    /// The shadow's state (empty when the document has none).
    #[serde(default)]
    pub state: ShadowState,
    /// When each leaf of the state was last written (epoch seconds).
    #[serde(default)]
    pub metadata: ShadowMetadata,
    /// The shadow document's version, as AWS IoT counts it (one more per accepted update; 0 when
    /// absent).
    #[serde(default)]
    pub version: u64,
    /// When AWS IoT produced the document (epoch seconds); `None` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    /// The `clientToken` of the request this document answers, if it carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
}

impl ShadowDocument {
    /// The given section of the state, if the document has it.
    pub fn section(&self, section: Section) -> Option<&StateMap> {
        self.state.section(section)
    }

    /// The value at `path` in `section` (a leaf, an array or an object); `None` when absent.
    pub fn value(&self, section: Section, path: &[String]) -> Option<&Value> {
        self.section(section).and_then(|map| get_path(map, path))
    }

    /// When the leaf (or, for an object or array, its newest leaf) at `path` was last written.
    pub fn timestamp_of(&self, section: Section, path: &[String]) -> Option<u64> {
        let metadata = match section {
            Section::Desired => self.metadata.desired.as_ref(),
            Section::Reported => self.metadata.reported.as_ref(),
        }?;
        let mut node = metadata;
        for key in path {
            node = node.get(key)?;
        }
        newest_timestamp(node)
    }

    /// The delta AWS IoT computes for this document's state.
    pub fn delta(&self) -> StateMap {
        match (&self.state.desired, &self.state.reported) {
            (Some(desired), Some(reported)) => delta(desired, reported),
            (Some(desired), None) => desired.clone(),
            _ => StateMap::new(),
        }
    }
}

fn newest_timestamp(node: &Value) -> Option<u64> {
    match node {
        Value::Object(fields) => match fields.get("timestamp").and_then(Value::as_u64) {
            Some(ts) if fields.len() == 1 => Some(ts),
            _ => fields.values().filter_map(newest_timestamp).max(),
        },
        Value::Array(items) => items.iter().filter_map(newest_timestamp).max(),
        _ => None,
    }
}

/// `update/documents`: the shadow before and after one accepted update.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentsMessage {
    /// Not AWS's: the topic, which Shoal's rules add with `topic() AS topic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// The shadow before the update; `None` when the message carries none (Shoal then treats
    /// the update as the shadow's first).
    #[serde(default)]
    pub previous: Option<ShadowDocument>,
    /// The shadow after the update.
    pub current: ShadowDocument,
    /// When AWS IoT published the message (epoch seconds); `None` when absent.
    #[serde(default)]
    pub timestamp: Option<u64>,
    /// The `clientToken` of the update, if it carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
}

/// The body of UpdateThingShadow (or a publish to `.../shadow/update`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShadowUpdate {
    /// The sections to write.
    pub state: UpdateState,
    /// A token AWS IoT echoes in its response and in `update/documents`; left out when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_token: Option<ClientToken>,
    /// The version the update was computed from: the service answers 409 if it moved on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// The `state` of an update: what to write into each section (a `null` leaf deletes the key).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UpdateState {
    /// Leaves to write into `desired`; `None` leaves the section as it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desired: Option<StateMap>,
    /// Leaves to write into `reported`; `None` leaves the section as it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reported: Option<StateMap>,
}

impl ShadowUpdate {
    /// An update of `desired` alone, without a client token, conditional on `version` if given.
    pub fn desired(desired: StateMap, version: Option<u64>) -> Self {
        Self {
            state: UpdateState {
                desired: Some(desired),
                reported: None,
            },
            client_token: None,
            version,
        }
    }

    /// Whether the update writes nothing (each section absent or empty).
    pub fn is_empty(&self) -> bool {
        self.state.desired.as_ref().is_none_or(Map::is_empty)
            && self.state.reported.as_ref().is_none_or(Map::is_empty)
    }

    /// The state the service would store after this update: sections merged, nulls deleted.
    pub fn applied_to(&self, current: &ShadowState) -> ShadowState {
        let merged = |now: &Option<StateMap>, patch: &Option<StateMap>| {
            let mut section = now.clone().unwrap_or_default();
            if let Some(patch) = patch {
                merge_patch(&mut section, patch);
            }
            (!section.is_empty()).then_some(section)
        };
        ShadowState {
            desired: merged(&current.desired, &self.state.desired),
            reported: merged(&current.reported, &self.state.reported),
            delta: None,
        }
    }
}

/// Two JSON values are equal for the shadow when they are the same JSON: numbers by value
/// (a device reporting `21.0` for a desired `21` is in sync), arrays element by element, objects
/// key by key.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// The Device Shadow service's delta: every leaf of `desired` whose value differs from (or is
/// missing in) `reported`; nested objects recurse, arrays and scalars compare as whole values.
pub fn delta(desired: &StateMap, reported: &StateMap) -> StateMap {
    let mut out = StateMap::new();
    for (key, want) in desired {
        match (want, reported.get(key)) {
            (Value::Object(want), Some(Value::Object(have))) => {
                let nested = delta(want, have);
                if !nested.is_empty() {
                    out.insert(key.clone(), Value::Object(nested));
                }
            }
            (want, Some(have)) if json_eq(want, have) => {}
            (want, _) => {
                out.insert(key.clone(), want.clone());
            }
        }
    }
    out
}

/// Applies an update's section to a stored section: `null` deletes the key, an object merges
/// into an object, any other value (arrays included) replaces what was there.
pub fn merge_patch(target: &mut StateMap, patch: &StateMap) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(nested) => {
                let slot = target
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(StateMap::new()));
                if !slot.is_object() {
                    *slot = Value::Object(StateMap::new());
                }
                if let Value::Object(existing) = slot {
                    merge_patch(existing, nested);
                }
            }
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
}

/// The value at `path` in `map`, through nested objects; `None` when `path` is empty, a key is
/// missing or a value on the way is not an object.
pub fn get_path<'a>(map: &'a StateMap, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut node = map.get(first)?;
    for key in rest {
        node = node.as_object()?.get(key)?;
    }
    Some(node)
}

/// Sets `value` at `path`, creating the objects on the way.
pub fn set_path(map: &mut StateMap, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = map;
    for key in parents {
        let slot = node
            .entry(key.clone())
            .or_insert_with(|| Value::Object(StateMap::new()));
        if !slot.is_object() {
            *slot = Value::Object(StateMap::new());
        }
        node = slot.as_object_mut().expect("made an object above");
    }
    node.insert(last.clone(), value);
}

/// Every leaf of a section (scalars and arrays; objects are walked), in key order.
pub fn leaves(map: &StateMap) -> Vec<(Path, &Value)> {
    fn walk<'a>(map: &'a StateMap, prefix: &mut Path, out: &mut Vec<(Path, &'a Value)>) {
        for (key, value) in map {
            prefix.push(key.clone());
            match value {
                Value::Object(nested) if !nested.is_empty() => walk(nested, prefix, out),
                _ => out.push((prefix.clone(), value)),
            }
            prefix.pop();
        }
    }
    let mut out = Vec::new();
    walk(map, &mut Vec::new(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> StateMap {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn delta_is_leaf_wise_and_compares_arrays_whole() {
        let desired = map(json!({
            "color": "red", "same": 1, "nested": {"a": 1, "b": 2},
            "list": [1, 2, 3], "list_same": [1, 2], "missing": true, "num": 21
        }));
        let reported = map(json!({
            "color": "blue", "same": 1, "nested": {"a": 1, "b": 3, "extra": 0},
            "list": [1, 2], "list_same": [1, 2], "num": 21.0, "only_reported": 5
        }));
        assert_eq!(
            Value::Object(delta(&desired, &reported)),
            json!({"color": "red", "nested": {"b": 2}, "list": [1, 2, 3], "missing": true})
        );
    }

    #[test]
    fn delta_of_object_against_scalar_is_the_whole_object() {
        let desired = map(json!({"cfg": {"a": 1}}));
        let reported = map(json!({"cfg": 3}));
        assert_eq!(
            Value::Object(delta(&desired, &reported)),
            json!({"cfg": {"a": 1}})
        );
    }

    #[test]
    fn update_merges_objects_deletes_nulls_and_replaces_arrays() {
        let mut stored = map(json!({"a": {"x": 1, "y": 2}, "list": [1, 2, 3], "gone": 1}));
        merge_patch(
            &mut stored,
            &map(json!({"a": {"y": null, "z": 3}, "list": [9], "gone": null, "new": "v"})),
        );
        assert_eq!(
            Value::Object(stored),
            json!({"a": {"x": 1, "z": 3}, "list": [9], "new": "v"})
        );
    }

    #[test]
    fn timestamps_are_per_leaf_and_newest_for_objects_and_arrays() {
        let doc: ShadowDocument = serde_json::from_value(json!({
            "state": {"desired": {"a": {"x": 1, "y": 2}, "list": [1, 2]}},
            "metadata": {"desired": {
                "a": {"x": {"timestamp": 10}, "y": {"timestamp": 30}},
                "list": [{"timestamp": 5}, {"timestamp": 7}]
            }},
            "version": 4
        }))
        .unwrap();
        let p = |s: &str| s.split('.').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(doc.timestamp_of(Section::Desired, &p("a.x")), Some(10));
        assert_eq!(doc.timestamp_of(Section::Desired, &p("a")), Some(30));
        assert_eq!(doc.timestamp_of(Section::Desired, &p("list")), Some(7));
        assert_eq!(doc.timestamp_of(Section::Desired, &p("nope")), None);
        assert_eq!(doc.timestamp_of(Section::Reported, &p("a.x")), None);
    }

    #[test]
    fn leaves_walk_objects_and_stop_at_arrays() {
        let m = map(json!({"a": {"b": 1, "c": [1, {"d": 2}]}, "e": {}}));
        let got: Vec<String> = leaves(&m).into_iter().map(|(p, _)| path_text(&p)).collect();
        assert_eq!(got, ["a.b", "a.c", "e"]);
    }

    #[test]
    fn update_serialises_as_aws_expects() {
        let mut update = ShadowUpdate::desired(map(json!({"a": null})), Some(7));
        update.client_token = Some("tok-1".parse().unwrap());
        assert_eq!(
            serde_json::to_value(&update).unwrap(),
            json!({"state": {"desired": {"a": null}}, "clientToken": "tok-1", "version": 7})
        );
    }
}
