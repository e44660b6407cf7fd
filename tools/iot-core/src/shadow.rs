//! The Device Shadow service of the local IoT Core: classic and named shadows kept in memory, one
//! lock per thing, answering the same requests whether they come over MQTT (the reserved topics,
//! [`crate::reserved`]) or over the HTTP data plane ([`crate::dataplane`]), as AWS IoT's one
//! service does.
//!
//! It follows AWS's documents (<https://docs.aws.amazon.com/iot/latest/developerguide/device-shadow-document.html>,
//! `device-shadow-data-flow.html`, `device-shadow-error-messages.html`):
//! - an update merges into the stored state (`null` deletes a key, objects merge, anything else
//!   replaces; a section set to `null` is removed) and counts one version;
//! - `metadata` mirrors the state with `{"timestamp": <epoch s>}` per leaf (one per array
//!   element);
//! - `delta` is every `desired` leaf that differs from `reported` (arrays compare whole), with
//!   the `desired` leaves' metadata;
//! - `update/documents` carries `previous` (absent for a new shadow) and `current`;
//! - `version` in a request makes it conditional (409 when the shadow moved on); a deleted shadow
//!   keeps its version, so the next one follows it;
//! - `clientToken` (at most 64 bytes) is echoed in every answer;
//! - limits: 8 KB of `desired` + `reported` (413), 6 levels of nesting (400).
//!
//! The domain rules (merge, delta, limits) are `shoal-core`'s, shared with the functions that
//! reason about shadows; this module keeps the service's state and its wire documents.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Map, Value, json};
use shoal_core::ids::{ShadowName, ThingName};
use shoal_core::shadow::document::{ShadowState, StateMap, delta, merge_patch};
use shoal_core::shadow::limits::{MAX_DEPTH, MAX_STATE_BYTES, section_depth, state_bytes};

/// The longest `clientToken` the service takes (bytes).
pub const MAX_CLIENT_TOKEN_BYTES: usize = 64;
/// ListNamedShadowsForThing's page size when the request gives none, and its maximum.
pub const LIST_PAGE_SIZE: usize = 25;
/// The largest page ListNamedShadowsForThing returns.
pub const MAX_LIST_PAGE_SIZE: usize = 100;

/// A refused request: what `.../rejected` carries and what the HTTP API answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The HTTP status AWS gives: 400, 404, 409 or 413.
    pub code: u16,
    /// Why, in AWS's words where they are documented.
    pub message: String,
    /// The request's `clientToken`, echoed.
    pub client_token: Option<String>,
}

impl Rejected {
    fn new(code: u16, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            client_token: None,
        }
    }

    fn with_token(mut self, client_token: &Option<String>) -> Self {
        self.client_token.clone_from(client_token);
        self
    }

    /// The error document of `.../rejected`: `{code, message, timestamp, clientToken?}`
    /// (`timestamp` in epoch seconds).
    pub fn document(&self, now_s: u64) -> Value {
        let mut out = json!({"code": self.code, "message": self.message, "timestamp": now_s});
        if let Some(token) = &self.client_token {
            out["clientToken"] = json!(token);
        }
        out
    }

    /// The error's type as the HTTP API names it (`x-amzn-ErrorType`), which the SDKs map to
    /// their exceptions.
    pub fn error_type(&self) -> &'static str {
        match self.code {
            400 => "InvalidRequestException",
            404 => "ResourceNotFoundException",
            409 => "ConflictException",
            413 => "RequestEntityTooLargeException",
            429 => "ThrottlingException",
            _ => "InternalFailureException",
        }
    }
}

/// Which shadow: a thing's classic shadow (`name` is `None`) or one of its named shadows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShadowKey {
    /// The thing name (1-128 of `[a-zA-Z0-9:_-]`).
    pub thing: String,
    /// The shadow name (1-64 of `[a-zA-Z0-9:_-]`); `None` for the classic shadow.
    pub name: Option<String>,
}

impl ShadowKey {
    /// A checked key.
    ///
    /// # Errors
    /// A 400 [`Rejected`] when the thing or shadow name is not one AWS IoT takes.
    pub fn new(thing: &str, name: Option<&str>) -> Result<Self, Rejected> {
        ThingName::parse(thing).map_err(|e| Rejected::new(400, e.to_string()))?;
        if let Some(name) = name {
            ShadowName::parse(name).map_err(|e| Rejected::new(400, e.to_string()))?;
        }
        Ok(Self {
            thing: thing.to_owned(),
            name: name.map(str::to_owned),
        })
    }

    fn label(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.thing)
    }
}

/// What an accepted update publishes.
#[derive(Debug, Clone, PartialEq)]
pub struct Updated {
    /// `update/accepted` (and UpdateThingShadow's answer): the request's state, its metadata,
    /// the new version.
    pub accepted: Value,
    /// `update/delta`, when the update wrote `desired` and the shadow's delta is not empty.
    pub delta: Option<Value>,
    /// `update/documents`: the shadow before (absent when new) and after.
    pub documents: Value,
}

/// One section's patch in an update request.
#[derive(Debug, Clone, PartialEq)]
enum Patch {
    Absent,
    /// `"desired": null`: the section is removed.
    Clear,
    Merge(StateMap),
}

#[derive(Debug, Clone, PartialEq)]
struct UpdateRequest {
    desired: Patch,
    reported: Patch,
    client_token: Option<String>,
    version: Option<u64>,
}

/// A section and its metadata, kept side by side.
#[derive(Debug, Clone, Default, PartialEq)]
struct Section {
    state: Option<StateMap>,
    metadata: Option<StateMap>,
}

impl Section {
    fn apply(&mut self, patch: &Patch, now_s: u64) {
        match patch {
            Patch::Absent => {}
            Patch::Clear => *self = Self::default(),
            Patch::Merge(patch) => {
                let mut state = self.state.take().unwrap_or_default();
                let mut metadata = self.metadata.take().unwrap_or_default();
                merge_patch(&mut state, patch);
                merge_metadata(&mut metadata, patch, now_s);
                prune_empty(&mut state, &mut metadata);
                if !state.is_empty() {
                    self.state = Some(state);
                    self.metadata = Some(metadata);
                }
            }
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Stored {
    desired: Section,
    reported: Section,
    /// The last version written; kept when the shadow is deleted.
    version: u64,
    deleted: bool,
}

impl Stored {
    /// `{"desired": …, "reported": …}` of the sections present.
    fn state(&self) -> Map<String, Value> {
        self.both(|section| section.state.as_ref())
    }

    /// The same for the metadata.
    fn metadata(&self) -> Map<String, Value> {
        self.both(|section| section.metadata.as_ref())
    }

    fn both(&self, part: impl Fn(&Section) -> Option<&StateMap>) -> Map<String, Value> {
        [("desired", &self.desired), ("reported", &self.reported)]
            .into_iter()
            .filter_map(|(key, section)| {
                Some((key.to_owned(), Value::Object(part(section)?.clone())))
            })
            .collect()
    }

    /// The delta and its metadata; empty when `desired` is absent or met.
    fn delta(&self) -> (StateMap, StateMap) {
        let Some(desired) = &self.desired.state else {
            return Default::default();
        };
        let delta = delta(desired, self.reported.state.as_ref().unwrap_or(&Map::new()));
        let metadata = pruned(
            &delta,
            self.desired.metadata.as_ref().unwrap_or(&Map::new()),
        );
        (delta, metadata)
    }

    /// `previous` / `current` of `update/documents`.
    fn document(&self) -> Value {
        json!({"state": self.state(), "metadata": self.metadata(), "version": self.version})
    }
}

type ThingShadows = BTreeMap<Option<String>, Stored>;

/// Every shadow of every thing; each thing's shadows behind their own lock.
#[derive(Debug, Default)]
pub struct Shadows {
    things: Mutex<HashMap<String, Arc<Mutex<ThingShadows>>>>,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while a lock was held leaves whole documents (every write is one assignment).
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shadows {
    /// The thing's shadows, made when missing (an update).
    fn thing(&self, thing: &str) -> Arc<Mutex<ThingShadows>> {
        locked(&self.things)
            .entry(thing.to_owned())
            .or_default()
            .clone()
    }

    /// The thing's shadows if it ever had one (reads and deletes add nothing).
    fn existing(&self, thing: &str) -> Option<Arc<Mutex<ThingShadows>>> {
        locked(&self.things).get(thing).cloned()
    }

    /// UpdateThingShadow / a publish to `.../shadow/update`: `payload` is the request state
    /// document; `now_s` is the time in epoch seconds.
    ///
    /// # Errors
    /// [`Rejected`] 400 for a payload that is not a request state document (invalid JSON, no
    /// `state`, a section that is not an object, an unknown node in `state`, a bad `version` or
    /// `clientToken`) or that would nest deeper than 6 levels, 409 when `version` is not the
    /// shadow's, 413 when `desired` + `reported` would exceed 8 KB.
    pub fn update(&self, key: &ShadowKey, payload: &[u8], now_s: u64) -> Result<Updated, Rejected> {
        let request = parse_update(payload)?;
        let token = &request.client_token;
        let thing = self.thing(&key.thing);
        let mut shadows = locked(&thing);
        let stored = shadows.get(&key.name).cloned().unwrap_or_default();
        let exists = stored.version > 0 && !stored.deleted;
        if let Some(version) = request.version
            && (!exists || version != stored.version)
        {
            return Err(Rejected::new(409, "Version conflict").with_token(token));
        }
        let mut next = if exists {
            stored.clone()
        } else {
            Stored {
                version: stored.version,
                ..Stored::default()
            }
        };
        next.desired.apply(&request.desired, now_s);
        next.reported.apply(&request.reported, now_s);
        for section in [&next.desired.state, &next.reported.state]
            .into_iter()
            .flatten()
        {
            if section_depth(section) > MAX_DEPTH {
                let message =
                    format!("JSON contains too many levels of nesting; maximum is {MAX_DEPTH}");
                return Err(Rejected::new(400, message).with_token(token));
            }
        }
        let size = state_bytes(&ShadowState {
            desired: next.desired.state.clone(),
            reported: next.reported.state.clone(),
            delta: None,
        });
        if size > MAX_STATE_BYTES {
            let message = "The payload exceeds the maximum size allowed";
            return Err(Rejected::new(413, message).with_token(token));
        }
        next.version = stored.version + 1;
        next.deleted = false;

        let mut accepted = json!({
            "state": request_state(&request),
            "metadata": request_metadata(&request, now_s),
            "version": next.version,
            "timestamp": now_s,
        });
        let (delta_state, delta_metadata) = next.delta();
        let mut delta = (matches!(request.desired, Patch::Merge(_)) && !delta_state.is_empty())
            .then(|| {
                json!({
                    "version": next.version,
                    "timestamp": now_s,
                    "state": delta_state,
                    "metadata": delta_metadata,
                })
            });
        let mut documents = json!({"current": next.document(), "timestamp": now_s});
        if exists {
            documents["previous"] = stored.document();
        }
        if let Some(token) = token {
            for document in [Some(&mut accepted), delta.as_mut(), Some(&mut documents)]
                .into_iter()
                .flatten()
            {
                document["clientToken"] = json!(token);
            }
        }
        shadows.insert(key.name.clone(), next);
        Ok(Updated {
            accepted,
            delta,
            documents,
        })
    }

    /// GetThingShadow / a publish to `.../shadow/get`: the whole document with its `delta`.
    ///
    /// # Errors
    /// A 404 [`Rejected`] when the shadow does not exist (never written, or deleted).
    pub fn get(
        &self,
        key: &ShadowKey,
        client_token: Option<String>,
        now_s: u64,
    ) -> Result<Value, Rejected> {
        let document = self.with_live(key, &client_token, |stored| {
            let mut state = stored.state();
            let mut metadata = stored.metadata();
            let (delta, delta_metadata) = stored.delta();
            if !delta.is_empty() {
                state.insert("delta".into(), Value::Object(delta));
                metadata.insert("delta".into(), Value::Object(delta_metadata));
            }
            json!({
                "state": state,
                "metadata": metadata,
                "version": stored.version,
                "timestamp": now_s,
            })
        })?;
        Ok(tokened(document, client_token))
    }

    /// DeleteThingShadow / a publish to `.../shadow/delete`: `{version, timestamp,
    /// clientToken?}`, the version being the deleted document's.
    ///
    /// # Errors
    /// A 404 [`Rejected`] when the shadow does not exist.
    pub fn delete(
        &self,
        key: &ShadowKey,
        client_token: Option<String>,
        now_s: u64,
    ) -> Result<Value, Rejected> {
        let answer = self.with_live(key, &client_token, |stored| {
            *stored = Stored {
                version: stored.version,
                deleted: true,
                ..Stored::default()
            };
            json!({"version": stored.version, "timestamp": now_s})
        })?;
        Ok(tokened(answer, client_token))
    }

    /// Runs `f` on the shadow `key` names under its thing's lock; a 404 when it does not exist.
    fn with_live<T>(
        &self,
        key: &ShadowKey,
        client_token: &Option<String>,
        f: impl FnOnce(&mut Stored) -> T,
    ) -> Result<T, Rejected> {
        let thing = self
            .existing(&key.thing)
            .ok_or_else(|| not_found(key).with_token(client_token))?;
        let mut shadows = locked(&thing);
        let stored = shadows
            .get_mut(&key.name)
            .filter(|s| !s.deleted)
            .ok_or_else(|| not_found(key).with_token(client_token))?;
        Ok(f(stored))
    }

    /// ListNamedShadowsForThing: `{results, nextToken?, timestamp}`, names in order, `page_size`
    /// of them at most (1-100); `next_token` is the last name of the previous page.
    ///
    /// # Errors
    /// A 400 [`Rejected`] for a bad thing name or page size.
    pub fn list_named(
        &self,
        thing: &str,
        page_size: Option<usize>,
        next_token: Option<&str>,
        now_s: u64,
    ) -> Result<Value, Rejected> {
        ShadowKey::new(thing, None)?;
        let page_size = page_size.unwrap_or(LIST_PAGE_SIZE);
        if !(1..=MAX_LIST_PAGE_SIZE).contains(&page_size) {
            let message = format!("pageSize must be 1-{MAX_LIST_PAGE_SIZE}");
            return Err(Rejected::new(400, message));
        }
        let Some(thing) = self.existing(thing) else {
            return Ok(json!({"results": [], "timestamp": now_s}));
        };
        let shadows = locked(&thing);
        let mut names = shadows
            .iter()
            .filter(|(_, stored)| !stored.deleted && stored.version > 0)
            .filter_map(|(name, _)| name.as_deref())
            .filter(|name| next_token.is_none_or(|after| *name > after));
        let page: Vec<&str> = names.by_ref().take(page_size).collect();
        let mut answer = json!({"results": page, "timestamp": now_s});
        if names.next().is_some()
            && let Some(last) = page.last()
        {
            answer["nextToken"] = json!(last);
        }
        Ok(answer)
    }
}

/// The time as the Device Shadow service writes it: epoch seconds.
pub fn now_s() -> u64 {
    u64::try_from(crate::lifecycle::now_ms() / 1000).unwrap_or_default()
}

/// `document` with `clientToken` added when the request had one.
fn tokened(mut document: Value, client_token: Option<String>) -> Value {
    if let Some(token) = client_token {
        document["clientToken"] = json!(token);
    }
    document
}

fn not_found(key: &ShadowKey) -> Rejected {
    Rejected::new(
        404,
        format!("No shadow exists with name: '{}'", key.label()),
    )
}

/// The `clientToken` of a get or delete request. AWS ignores such a request's content apart
/// from its token: an empty payload, or one that is not a JSON object, has none.
///
/// # Errors
/// A 400 [`Rejected`] for a JSON object whose `clientToken` is not a string of 1-64 bytes.
pub fn request_token(payload: &[u8]) -> Result<Option<String>, Rejected> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(top)) => client_token(&top),
        _ => Ok(None),
    }
}

fn client_token(top: &Map<String, Value>) -> Result<Option<String>, Rejected> {
    match top.get("clientToken") {
        None => Ok(None),
        Some(Value::String(token)) if (1..=MAX_CLIENT_TOKEN_BYTES).contains(&token.len()) => {
            Ok(Some(token.clone()))
        }
        Some(_) => Err(Rejected::new(
            400,
            format!("Invalid clientToken: a string of 1-{MAX_CLIENT_TOKEN_BYTES} bytes"),
        )),
    }
}

fn parse_update(payload: &[u8]) -> Result<UpdateRequest, Rejected> {
    let Ok(Value::Object(top)) = serde_json::from_slice::<Value>(payload) else {
        return Err(Rejected::new(400, "Invalid JSON"));
    };
    let client_token = client_token(&top)?;
    let reject = |message: &str| Rejected::new(400, message).with_token(&client_token);
    let version = match top.get("version") {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| reject("Invalid version"))?),
    };
    let state = match top.get("state") {
        None => return Err(reject("Missing required node: state")),
        // "Setting the device's shadow state to null" empties it; the shadow stays.
        Some(Value::Null) => {
            return Ok(UpdateRequest {
                desired: Patch::Clear,
                reported: Patch::Clear,
                client_token,
                version,
            });
        }
        Some(Value::Object(state)) => state,
        Some(_) => return Err(reject("State node must be an object")),
    };
    if let Some(other) = state.keys().find(|k| *k != "desired" && *k != "reported") {
        return Err(reject(&format!(
            "State contains an invalid node: '{other}'"
        )));
    }
    let patch = |key: &str, what: &str| match state.get(key) {
        None => Ok(Patch::Absent),
        Some(Value::Null) => Ok(Patch::Clear),
        Some(Value::Object(map)) if has_null_in_array(map.values()) => Err(reject(&format!(
            "{what} contains an array with a null value: arrays can't have null values"
        ))),
        Some(Value::Object(map)) => Ok(Patch::Merge(map.clone())),
        Some(_) => Err(reject(&format!("{what} node must be an object"))),
    };
    Ok(UpdateRequest {
        desired: patch("desired", "Desired")?,
        reported: patch("reported", "Reported")?,
        client_token,
        version,
    })
}

/// Whether any array among `values` (at any depth) holds a `null`: AWS refuses those.
fn has_null_in_array<'a>(values: impl IntoIterator<Item = &'a Value>) -> bool {
    values.into_iter().any(|value| match value {
        Value::Array(items) => items.iter().any(|v| v.is_null() || has_null_in_array([v])),
        Value::Object(map) => has_null_in_array(map.values()),
        _ => false,
    })
}

/// Removes the objects an update left empty (`{"o": {"p": null}}` deleting `o`'s last key, or
/// `{"new": {"x": null}}` naming a key that never was), and their metadata: no empty object
/// is stored, read back or sent as a delta.
fn prune_empty(state: &mut StateMap, metadata: &mut StateMap) {
    state.retain(|key, value| {
        let Value::Object(inner) = value else {
            return true;
        };
        let mut no_metadata = Map::new();
        let inner_metadata = match metadata.get_mut(key) {
            Some(Value::Object(m)) => m,
            _ => &mut no_metadata,
        };
        prune_empty(inner, inner_metadata);
        !inner.is_empty()
    });
    metadata.retain(|key, _| state.contains_key(key));
}

/// The request's own `state`, as `update/accepted` echoes it (a cleared section as `null`).
fn request_state(request: &UpdateRequest) -> Value {
    request_sections(request, |map| {
        map.map_or(Value::Null, |m| Value::Object(m.clone()))
    })
}

/// The metadata of what the request wrote: a timestamp per leaf it set or deleted.
fn request_metadata(request: &UpdateRequest, now_s: u64) -> Value {
    request_sections(request, |map| match map {
        None => json!({"timestamp": now_s}),
        Some(m) => leaf_metadata(&Value::Object(m.clone()), now_s),
    })
}

/// `{"desired": …, "reported": …}` for the sections the request names: `part` of the section's
/// patch (`None` for a cleared section).
fn request_sections(request: &UpdateRequest, part: impl Fn(Option<&StateMap>) -> Value) -> Value {
    [
        ("desired", &request.desired),
        ("reported", &request.reported),
    ]
    .into_iter()
    .filter_map(|(key, patch)| {
        let value = match patch {
            Patch::Absent => return None,
            Patch::Clear => part(None),
            Patch::Merge(map) => part(Some(map)),
        };
        Some((key.to_owned(), value))
    })
    .collect::<Map<String, Value>>()
    .into()
}

/// `{"timestamp": now}` for a leaf; objects and arrays mirrored.
fn leaf_metadata(value: &Value, now_s: u64) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), leaf_metadata(v, now_s)))
                .collect(),
        ),
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| leaf_metadata(v, now_s)).collect())
        }
        _ => json!({"timestamp": now_s}),
    }
}

/// The metadata twin of `merge_patch`: the same keys removed, merged or replaced.
fn merge_metadata(metadata: &mut StateMap, patch: &StateMap, now_s: u64) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                metadata.remove(key);
            }
            Value::Object(nested) => {
                let slot = metadata
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                // A leaf's timestamp object is replaced by the object's own metadata.
                if !slot.is_object() || is_leaf_metadata(slot) {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(inner) = slot {
                    merge_metadata(inner, nested, now_s);
                }
            }
            other => {
                metadata.insert(key.clone(), leaf_metadata(other, now_s));
            }
        }
    }
}

/// Whether a metadata node is a leaf's `{"timestamp": n}` (an object's metadata holds only
/// objects and arrays, even for a key named `timestamp`).
fn is_leaf_metadata(node: &Value) -> bool {
    node.get("timestamp").is_some_and(Value::is_u64)
}

/// `metadata` cut to the keys of `delta`.
fn pruned(delta: &StateMap, metadata: &StateMap) -> StateMap {
    delta
        .iter()
        .filter_map(|(key, value)| {
            let meta = metadata.get(key)?;
            let kept = match (value, meta) {
                (Value::Object(d), Value::Object(m)) if !is_leaf_metadata(meta) => {
                    Value::Object(pruned(d, m))
                }
                _ => meta.clone(),
            };
            Some((key.clone(), kept))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_700_000_000;

    fn key(name: Option<&str>) -> ShadowKey {
        ShadowKey::new("dev-1", name).unwrap()
    }

    fn update(shadows: &Shadows, body: Value) -> Result<Updated, Rejected> {
        shadows.update(&key(None), body.to_string().as_bytes(), T)
    }

    #[test]
    fn a_desired_change_is_accepted_with_metadata_and_publishes_the_delta() {
        let shadows = Shadows::default();
        let first = update(
            &shadows,
            json!({"state": {"reported": {"color": "red", "fw": {"v": 1}}}}),
        )
        .unwrap();
        assert_eq!(first.accepted["version"], 1);
        assert_eq!(
            first.accepted["metadata"]["reported"]["fw"]["v"]["timestamp"],
            T
        );
        assert_eq!(first.delta, None, "no desired, no delta");
        assert!(
            first.documents.get("previous").is_none(),
            "a new shadow has no previous"
        );

        let second = shadows
            .update(
                &key(None),
                json!({"state": {"desired": {"color": "green", "fw": {"v": 1}}}, "clientToken": "t-1"})
                    .to_string()
                    .as_bytes(),
                T + 5,
            )
            .unwrap();
        assert_eq!(second.accepted["version"], 2);
        assert_eq!(second.accepted["clientToken"], "t-1");
        let delta = second.delta.expect("desired differs from reported");
        assert_eq!(delta["state"], json!({"color": "green"}));
        assert_eq!(delta["metadata"], json!({"color": {"timestamp": T + 5}}));
        assert_eq!(delta["version"], 2);
        assert_eq!(delta["clientToken"], "t-1");
        assert_eq!(second.documents["previous"]["version"], 1);
        assert_eq!(
            second.documents["current"]["state"]["desired"]["color"],
            "green"
        );
        assert_eq!(
            second.documents["current"]["metadata"]["reported"]["color"]["timestamp"],
            T
        );

        let got = shadows.get(&key(None), None, T + 9).unwrap();
        assert_eq!(got["state"]["delta"], json!({"color": "green"}));
        assert_eq!(got["metadata"]["delta"]["color"]["timestamp"], T + 5);
        assert_eq!(got["version"], 2);
        assert_eq!(got["timestamp"], T + 9);
    }

    #[test]
    fn nulls_delete_keys_and_sections_and_arrays_compare_whole() {
        let shadows = Shadows::default();
        update(
            &shadows,
            json!({"state": {"desired": {"a": 1, "b": [1, 2]}, "reported": {"a": 1.0, "b": [1]}}}),
        )
        .unwrap();
        let got = shadows.get(&key(None), None, T).unwrap();
        assert_eq!(
            got["state"]["delta"],
            json!({"b": [1, 2]}),
            "1 equals 1.0; arrays whole"
        );
        assert_eq!(
            got["metadata"]["desired"]["b"],
            json!([{"timestamp": T}, {"timestamp": T}])
        );
        update(&shadows, json!({"state": {"desired": {"b": null}}})).unwrap();
        let got = shadows.get(&key(None), None, T).unwrap();
        assert!(got["state"].get("delta").is_none());
        assert!(got["metadata"]["desired"].get("b").is_none());
        let cleared = update(&shadows, json!({"state": {"desired": null}})).unwrap();
        assert_eq!(cleared.accepted["state"], json!({"desired": null}));
        let got = shadows.get(&key(None), None, T).unwrap();
        assert!(got["state"].get("desired").is_none());
        assert!(got["metadata"].get("desired").is_none());
    }

    #[test]
    fn a_stale_version_is_a_conflict_and_changes_nothing() {
        let shadows = Shadows::default();
        update(&shadows, json!({"state": {"desired": {"a": 1}}})).unwrap();
        let conflict = update(
            &shadows,
            json!({"state": {"desired": {"a": 2}}, "version": 7, "clientToken": "c"}),
        )
        .unwrap_err();
        assert_eq!(
            (conflict.code, conflict.message.as_str()),
            (409, "Version conflict")
        );
        assert_eq!(conflict.client_token.as_deref(), Some("c"));
        assert_eq!(conflict.document(T)["clientToken"], "c");
        let ok = update(
            &shadows,
            json!({"state": {"desired": {"a": 2}}, "version": 1}),
        )
        .unwrap();
        assert_eq!(ok.accepted["version"], 2);
        let missing = shadows.update(&key(Some("cfg")), br#"{"state":{},"version":1}"#, T);
        assert_eq!(missing.unwrap_err().code, 409);
    }

    #[test]
    fn malformed_requests_are_rejected_with_aws_s_reasons() {
        let shadows = Shadows::default();
        let cases: &[(&[u8], u16, &str)] = &[
            (b"not json", 400, "Invalid JSON"),
            (b"[1]", 400, "Invalid JSON"),
            (br#"{"version": 1}"#, 400, "Missing required node: state"),
            (br#"{"state": 3}"#, 400, "State node must be an object"),
            (
                br#"{"state": {"desired": 3}}"#,
                400,
                "Desired node must be an object",
            ),
            (
                br#"{"state": {"reported": []}}"#,
                400,
                "Reported node must be an object",
            ),
            (
                br#"{"state": {"delta": {}}}"#,
                400,
                "State contains an invalid node: 'delta'",
            ),
            (br#"{"state": {}, "version": -1}"#, 400, "Invalid version"),
        ];
        for (body, code, message) in cases {
            let rejected = shadows.update(&key(None), body, T).unwrap_err();
            assert_eq!(
                (rejected.code, rejected.message.as_str()),
                (*code, *message)
            );
        }
        let long = "t".repeat(65);
        let rejected = update(&shadows, json!({"state": {}, "clientToken": long})).unwrap_err();
        assert_eq!(rejected.code, 400);
        assert!(
            shadows.get(&key(None), None, T).is_err(),
            "nothing was stored"
        );
    }

    #[test]
    fn limits_are_aws_s() {
        let shadows = Shadows::default();
        let deep = (1..7).fold(json!(1), |inner, _| json!({ "n": inner }));
        assert!(
            update(&shadows, json!({"state": {"reported": deep}})).is_ok(),
            "6 levels"
        );
        let deeper =
            json!({"state": {"reported": {"n": {"n": {"n": {"n": {"n": {"n": {"n": 1}}}}}}}}});
        assert_eq!(update(&shadows, deeper).unwrap_err().code, 400);
        let big = "x".repeat(MAX_STATE_BYTES);
        let rejected = update(&shadows, json!({"state": {"desired": {"blob": big}}})).unwrap_err();
        assert_eq!(rejected.code, 413);
    }

    #[test]
    fn a_deleted_shadow_is_gone_and_the_next_one_follows_its_version() {
        let shadows = Shadows::default();
        update(&shadows, json!({"state": {"reported": {"a": 1}}})).unwrap();
        update(&shadows, json!({"state": {"reported": {"a": 2}}})).unwrap();
        let deleted = shadows.delete(&key(None), Some("d".into()), T).unwrap();
        assert_eq!(
            deleted,
            json!({"version": 2, "timestamp": T, "clientToken": "d"})
        );
        let gone = shadows.get(&key(None), None, T).unwrap_err();
        assert_eq!(
            (gone.code, gone.message.as_str()),
            (404, "No shadow exists with name: 'dev-1'")
        );
        assert_eq!(shadows.delete(&key(None), None, T).unwrap_err().code, 404);
        let again = update(&shadows, json!({"state": {"reported": {"b": 1}}})).unwrap();
        assert_eq!(again.accepted["version"], 3);
        assert!(again.documents.get("previous").is_none());
        assert_eq!(
            again.documents["current"]["state"],
            json!({"reported": {"b": 1}})
        );
    }

    #[test]
    fn named_shadows_are_apart_from_the_classic_one_and_listed_in_pages() {
        let shadows = Shadows::default();
        for name in ["c", "a", "b"] {
            shadows
                .update(&key(Some(name)), br#"{"state":{"reported":{"x":1}}}"#, T)
                .unwrap();
        }
        update(&shadows, json!({"state": {"reported": {"y": 1}}})).unwrap();
        shadows.delete(&key(Some("b")), None, T).unwrap();
        let got = shadows.get(&key(Some("a")), None, T).unwrap();
        assert_eq!(got["state"]["reported"], json!({"x": 1}));
        let page = shadows.list_named("dev-1", Some(1), None, T).unwrap();
        assert_eq!(page["results"], json!(["a"]));
        assert_eq!(page["nextToken"], "a");
        let page = shadows.list_named("dev-1", Some(1), Some("a"), T).unwrap();
        assert_eq!(page["results"], json!(["c"]));
        assert!(page.get("nextToken").is_none());
        assert_eq!(
            shadows
                .list_named("dev-1", Some(0), None, T)
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(ShadowKey::new("bad/thing", None).unwrap_err().code, 400);
        assert_eq!(
            ShadowKey::new("t", Some(&"n".repeat(65))).unwrap_err().code,
            400
        );
    }

    #[test]
    fn get_and_delete_tokens_come_from_a_json_payload_and_other_content_is_ignored() {
        assert_eq!(request_token(b""), Ok(None));
        assert_eq!(
            request_token(br#"{"clientToken":"x"}"#),
            Ok(Some("x".into()))
        );
        assert_eq!(request_token(b"please delete"), Ok(None));
        assert_eq!(
            request_token(br#"{"clientToken":5}"#).unwrap_err().code,
            400
        );
    }

    #[test]
    fn emptied_objects_are_removed_and_never_sent_as_delta() {
        let shadows = Shadows::default();
        update(
            &shadows,
            json!({"state": {"desired": {"o": {"p": 1}, "k": 0}}}),
        )
        .unwrap();
        let out = update(
            &shadows,
            json!({"state": {"desired": {"o": {"p": null}, "k": 1, "new": {"x": null}}}}),
        )
        .unwrap();
        assert_eq!(out.delta.unwrap()["state"], json!({"k": 1}));
        let got = shadows.get(&key(None), None, T).unwrap();
        assert_eq!(got["state"]["desired"], json!({"k": 1}));
        assert_eq!(got["metadata"]["desired"], json!({"k": {"timestamp": T}}));
        assert_eq!(
            out.documents["current"]["state"]["desired"],
            json!({"k": 1})
        );
    }

    #[test]
    fn a_null_state_empties_the_shadow_and_arrays_may_not_hold_null() {
        let shadows = Shadows::default();
        update(
            &shadows,
            json!({"state": {"desired": {"a": 1}, "reported": {"a": 2}}}),
        )
        .unwrap();
        let emptied = update(&shadows, json!({"state": null})).unwrap();
        assert_eq!(emptied.accepted["version"], 2);
        let got = shadows.get(&key(None), None, T).unwrap();
        assert_eq!(
            (got["state"].clone(), got["version"].clone()),
            (json!({}), json!(2))
        );
        let nulls = update(
            &shadows,
            json!({"state": {"desired": {"colors": [null, "RED"]}}}),
        )
        .unwrap_err();
        assert_eq!(nulls.code, 400);
        let nested = update(
            &shadows,
            json!({"state": {"reported": {"a": {"b": [[1, null]]}}}}),
        )
        .unwrap_err();
        assert_eq!(nested.code, 400);
    }

    #[test]
    fn reads_of_unknown_things_store_nothing() {
        let shadows = Shadows::default();
        for n in 0..100 {
            let key = ShadowKey::new(&format!("ghost-{n}"), None).unwrap();
            assert!(shadows.get(&key, None, T).is_err());
            assert!(shadows.delete(&key, None, T).is_err());
        }
        assert!(locked(&shadows.things).is_empty());
    }
}
