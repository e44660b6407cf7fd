//! The shadow store port — GetThingShadow / UpdateThingShadow as a trait — and the optimistic
//! write every Shoal writer uses: compute the update from the shadow as read, check AWS's limits,
//! write it with that `version`, and on 409 re-read and compute again, a bounded number of times.
//! Shared by the shadow-sync function, the OTA advancer and the operator CLI; `shoal-aws`
//! implements the port on AWS IoT's data plane
//! (<https://docs.aws.amazon.com/iot/latest/developerguide/device-shadow-rest-api.html>).

use std::future::Future;

use thiserror::Error;

use super::{ShadowDocument, ShadowLimitError, ShadowRef, ShadowUpdate, check_update};
use crate::edge::{EdgeError, Retryable};

/// The shadow calls, as a trait so the logic above them is testable without AWS.
pub trait ShadowStore: Sync {
    /// `None` when the thing has no such shadow.
    fn get(
        &self,
        shadow: &ShadowRef,
    ) -> impl Future<Output = Result<Option<ShadowDocument>, EdgeError>> + Send;
    /// `Ok(None)` when the service refused the update's `version` (409): someone wrote first.
    fn update(
        &self,
        shadow: &ShadowRef,
        update: &ShadowUpdate,
    ) -> impl Future<Output = Result<Option<u64>, EdgeError>> + Send;
}

/// What an optimistic write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The update was accepted.
    Written {
        /// The shadow's version after the update.
        version: u64,
        /// Attempts it took (1: no conflict).
        attempts: u32,
    },
    /// Nothing to write for the shadow as it is now.
    Unchanged {
        /// Attempts made before that was clear.
        attempts: u32,
    },
}

/// Why an optimistic write gave up.
#[derive(Debug, Clone, Error)]
pub enum WriteError {
    /// The update would break one of AWS's shadow limits; nothing was sent.
    #[error("{shadow}: the update breaks a shadow limit, nothing was sent: {source}")]
    Limit {
        /// The shadow, as [`ShadowRef`] displays it.
        shadow: String,
        /// The limit broken.
        source: ShadowLimitError,
    },
    /// Every attempt lost the version race to another writer (409).
    #[error("{shadow}: {attempts} attempts all lost the version race (409); giving up")]
    Contended {
        /// The shadow, as [`ShadowRef`] displays it.
        shadow: String,
        /// Attempts made.
        attempts: u32,
    },
    /// A shadow call failed.
    #[error("{shadow}: {source}")]
    Edge {
        /// The shadow, as [`ShadowRef`] displays it.
        shadow: String,
        /// The call's error.
        source: EdgeError,
    },
}

impl Retryable for WriteError {
    /// A shadow call throttled or unreachable, or every attempt lost to a faster writer: a later
    /// write may land. An update over a shadow limit never will.
    fn is_retryable(&self) -> bool {
        match self {
            Self::Limit { .. } => false,
            Self::Contended { .. } => true,
            Self::Edge { source, .. } => source.is_retryable(),
        }
    }
}

/// Writes the update `compute` derives from the shadow as it is (`None`: no shadow yet), with
/// optimistic locking. `first` is the shadow already in hand (from an event), if any; otherwise
/// it is read. On a version conflict the shadow is read again and `compute` runs again, up to
/// `max_attempts` times.
///
/// # Errors
/// [`WriteError::Limit`] when the update breaks a shadow limit (nothing is sent),
/// [`WriteError::Contended`] when every attempt lost the race, [`WriteError::Edge`] when a call
/// failed.
pub async fn write_optimistic<S: ShadowStore>(
    store: &S,
    shadow: &ShadowRef,
    first: Option<ShadowDocument>,
    max_attempts: u32,
    mut compute: impl FnMut(Option<&ShadowDocument>) -> Option<ShadowUpdate>,
) -> Result<WriteOutcome, WriteError> {
    let aws = |source| WriteError::Edge {
        shadow: shadow.to_string(),
        source,
    };
    let mut current = match first {
        Some(doc) => Some(doc),
        None => store.get(shadow).await.map_err(aws)?,
    };
    for attempt in 1..=max_attempts {
        let Some(mut update) = compute(current.as_ref()).filter(|u| !u.is_empty()) else {
            return Ok(WriteOutcome::Unchanged { attempts: attempt });
        };
        update.version = current.as_ref().map(|doc| doc.version);
        let no_shadow = super::document::ShadowState::default();
        let state = current.as_ref().map_or(&no_shadow, |d| &d.state);
        check_update(state, &update).map_err(|source| WriteError::Limit {
            shadow: shadow.to_string(),
            source,
        })?;
        if let Some(version) = store.update(shadow, &update).await.map_err(aws)? {
            return Ok(WriteOutcome::Written {
                version,
                attempts: attempt,
            });
        }
        current = store.get(shadow).await.map_err(aws)?;
    }
    Err(WriteError::Contended {
        shadow: shadow.to_string(),
        attempts: max_attempts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shadow::document::merge_patch;
    use serde_json::{Value, json};
    use std::sync::Mutex;

    /// A shadow that another writer bumps `interference` times before each of ours lands.
    struct RacyStore {
        doc: Mutex<ShadowDocument>,
        interference: Mutex<u32>,
        updates: Mutex<u32>,
    }

    impl ShadowStore for RacyStore {
        async fn get(&self, _: &ShadowRef) -> Result<Option<ShadowDocument>, EdgeError> {
            Ok(Some(self.doc.lock().unwrap().clone()))
        }
        async fn update(&self, _: &ShadowRef, u: &ShadowUpdate) -> Result<Option<u64>, EdgeError> {
            *self.updates.lock().unwrap() += 1;
            let mut doc = self.doc.lock().unwrap();
            let mut interference = self.interference.lock().unwrap();
            if *interference > 0 {
                *interference -= 1;
                doc.version += 1;
                return Ok(None);
            }
            assert_eq!(u.version, Some(doc.version));
            merge_patch(
                doc.state.desired.get_or_insert_default(),
                u.state.desired.as_ref().unwrap(),
            );
            doc.version += 1;
            Ok(Some(doc.version))
        }
    }

    fn store(interference: u32) -> RacyStore {
        RacyStore {
            doc: Mutex::new(ShadowDocument {
                version: 5,
                ..ShadowDocument::default()
            }),
            interference: Mutex::new(interference),
            updates: Mutex::new(0),
        }
    }

    fn shadow() -> ShadowRef {
        ShadowRef {
            thing: "d-1".parse().unwrap(),
            name: None,
        }
    }

    fn set(value: Value) -> impl FnMut(Option<&ShadowDocument>) -> Option<ShadowUpdate> {
        move |_| {
            Some(ShadowUpdate::desired(
                value.as_object().unwrap().clone(),
                None,
            ))
        }
    }

    #[tokio::test]
    async fn conflicts_are_retried_against_the_fresh_version() {
        let s = store(2);
        let out = write_optimistic(&s, &shadow(), None, 3, set(json!({"a": 1})))
            .await
            .unwrap();
        assert_eq!(
            out,
            WriteOutcome::Written {
                version: 8,
                attempts: 3
            }
        );
    }

    #[tokio::test]
    async fn retries_are_bounded() {
        let s = store(10);
        let err = write_optimistic(&s, &shadow(), None, 3, set(json!({"a": 1})))
            .await
            .unwrap_err();
        assert!(
            matches!(err, WriteError::Contended { attempts: 3, .. }),
            "{err}"
        );
        assert_eq!(*s.updates.lock().unwrap(), 3);
    }

    #[tokio::test]
    async fn limits_are_checked_before_any_call() {
        let s = store(0);
        let big = json!({"blob": "x".repeat(9000)});
        let err = write_optimistic(&s, &shadow(), None, 3, set(big))
            .await
            .unwrap_err();
        assert!(matches!(err, WriteError::Limit { .. }), "{err}");
        assert_eq!(*s.updates.lock().unwrap(), 0);
    }
}
