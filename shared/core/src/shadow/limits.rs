//! The Device Shadow service's limits, checked before any call so that a violation is a clear
//! local error instead of a 400/413 from AWS (or, worse, a device that never converges).

use serde_json::Value;
use thiserror::Error;

use super::document::{ShadowState, ShadowUpdate, StateMap};

/// desired + reported, as stored after the update (metadata does not count).
pub const MAX_STATE_BYTES: usize = 8 * 1024;
/// Levels of nesting inside `desired` or `reported`, the section's own object being level 1.
pub const MAX_DEPTH: usize = 6;

/// Why an update would break a Device Shadow service limit.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ShadowLimitError {
    /// `desired` + `reported` would exceed [`MAX_STATE_BYTES`] after the update.
    #[error(
        "the shadow's desired + reported state would be {bytes} bytes after this update; AWS IoT allows {limit}"
    )]
    TooLarge {
        /// Size of `desired` + `reported` after the update (bytes of compact JSON).
        bytes: usize,
        /// The limit, [`MAX_STATE_BYTES`].
        limit: usize,
    },
    /// A section would nest deeper than [`MAX_DEPTH`] after the update.
    #[error("the update's {section} section nests {depth} levels deep; AWS IoT allows {limit}")]
    TooDeep {
        /// The section: `desired` or `reported`.
        section: &'static str,
        /// Its depth, the section's own object being level 1 (an array counts as a level).
        depth: usize,
        /// The limit, [`MAX_DEPTH`].
        limit: usize,
    },
}

/// Checks `update` against the stored `current` state (empty when the shadow does not exist).
/// The client token's 64-byte limit is enforced by its type, `ids::ClientToken`.
///
/// # Errors
/// [`ShadowLimitError::TooDeep`] when a section of the state after the update nests deeper than
/// [`MAX_DEPTH`] (checked first), [`ShadowLimitError::TooLarge`] when that state is larger than
/// [`MAX_STATE_BYTES`].
pub fn check_update(current: &ShadowState, update: &ShadowUpdate) -> Result<(), ShadowLimitError> {
    let after = update.applied_to(current);
    for (section, map) in [
        ("desired", after.desired.as_ref()),
        ("reported", after.reported.as_ref()),
    ] {
        let depth = map.map_or(0, section_depth);
        if depth > MAX_DEPTH {
            return Err(ShadowLimitError::TooDeep {
                section,
                depth,
                limit: MAX_DEPTH,
            });
        }
    }
    let bytes = state_bytes(&after);
    if bytes > MAX_STATE_BYTES {
        return Err(ShadowLimitError::TooLarge {
            bytes,
            limit: MAX_STATE_BYTES,
        });
    }
    Ok(())
}

/// The size AWS counts: the compact JSON of `desired` and `reported`.
pub fn state_bytes(state: &ShadowState) -> usize {
    let section = |m: &Option<StateMap>| {
        m.as_ref()
            .map_or(0, |m| json_len(&Value::Object(m.clone())))
    };
    section(&state.desired) + section(&state.reported)
}

fn json_len(value: &Value) -> usize {
    serde_json::to_vec(value).map_or(usize::MAX, |bytes| bytes.len())
}

/// How deep a `desired` or `reported` section nests: its own object is level 1, and each nested
/// object or array adds one (`{"a": {"b": 1}}` is 2 levels, `{"a": [1]}` is 2).
pub fn section_depth(map: &StateMap) -> usize {
    1 + map.values().map(value_depth).max().unwrap_or(0)
}

fn value_depth(value: &Value) -> usize {
    match value {
        Value::Object(map) => section_depth(map),
        Value::Array(items) => 1 + items.iter().map(value_depth).max().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn desired(v: Value) -> ShadowUpdate {
        ShadowUpdate::desired(v.as_object().unwrap().clone(), None)
    }

    fn nested(levels: usize) -> Value {
        (1..levels).fold(json!({"leaf": 1}), |inner, _| json!({ "n": inner }))
    }

    #[test]
    fn six_levels_pass_and_seven_are_refused() {
        let empty = ShadowState::default();
        assert_eq!(check_update(&empty, &desired(nested(6))), Ok(()));
        assert_eq!(
            check_update(&empty, &desired(nested(7))),
            Err(ShadowLimitError::TooDeep {
                section: "desired",
                depth: 7,
                limit: 6
            })
        );
    }

    #[test]
    fn size_counts_the_merged_state_not_only_the_update() {
        let current = ShadowState {
            reported: Some(
                json!({"blob": "x".repeat(6000)})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
            ..ShadowState::default()
        };
        let small = desired(json!({"blob": "y".repeat(3000)}));
        assert!(check_update(&ShadowState::default(), &small).is_ok());
        let err = check_update(&current, &small).unwrap_err();
        assert!(matches!(err, ShadowLimitError::TooLarge { bytes, limit: 8192 } if bytes > 8192));
        // Deleting the big reported key makes room again.
        let mut shrink = small.clone();
        shrink.state.reported = Some(json!({"blob": null}).as_object().unwrap().clone());
        assert!(check_update(&current, &shrink).is_ok());
    }

    #[test]
    fn exactly_the_limit_passes() {
        // {"k":"…"} is 8 bytes of framing.
        let at_limit = desired(json!({"k": "z".repeat(MAX_STATE_BYTES - 8)}));
        assert_eq!(
            state_bytes(&at_limit.applied_to(&ShadowState::default())),
            8192
        );
        assert!(check_update(&ShadowState::default(), &at_limit).is_ok());
        let over = desired(json!({"k": "z".repeat(MAX_STATE_BYTES - 7)}));
        assert!(check_update(&ShadowState::default(), &over).is_err());
    }
}
