//! Device shadows: the documents ([`document`]), AWS's limits checked before any call
//! ([`limits`]), conflict policies per attribute path ([`policy`]), what one `update/documents`
//! message leads to ([`sync`]), the OTA status reports devices write to the `ota` shadow
//! ([`ota`]), and the shadow store port with the optimistic write ([`store`]).

pub mod document;
pub mod intent;
pub mod limits;
pub mod ota;
pub mod policy;
pub mod store;
pub mod sync;

pub use document::{DocumentsMessage, Section, ShadowDocument, ShadowUpdate, StateMap};
pub use limits::{ShadowLimitError, check_update};
pub use policy::{ConflictPolicy, PolicyTable};

use crate::ids::{ShadowName, ThingName};
use shoal_wire::topics::{ShadowOperation, ShadowResponse, ShadowTopic, TopicError};

/// Why a topic is not a shadow's `update/documents` topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentsTopicError {
    /// Another topic (another shadow operation, or no shadow topic at all).
    #[error("{topic:?} is not a shadow update/documents topic")]
    NotDocuments {
        /// The topic that was given.
        topic: String,
    },
    /// The thing or shadow level is not a valid name.
    #[error("{topic:?}: {source}")]
    Name {
        /// The topic that was given.
        topic: String,
        /// Why its thing or shadow-name level is not a valid name.
        source: crate::ids::IdError,
    },
}

/// The shadow a topic or an API call is about: a thing's classic shadow or one of its named ones.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShadowRef {
    /// The thing the shadow belongs to.
    pub thing: ThingName,
    /// The named shadow's name; `None`: the thing's classic (unnamed) shadow.
    pub name: Option<ShadowName>,
}

impl ShadowRef {
    /// `$aws/things/<thing>/shadow/update/documents` or
    /// `$aws/things/<thing>/shadow/name/<name>/update/documents`.
    ///
    /// # Errors
    /// [`DocumentsTopicError::NotDocuments`] for any other topic;
    /// [`DocumentsTopicError::Name`] when the thing or shadow level is not a valid name.
    pub fn from_documents_topic(topic: &str) -> Result<Self, DocumentsTopicError> {
        let not_documents = || DocumentsTopicError::NotDocuments {
            topic: topic.to_owned(),
        };
        let name_error = |source| DocumentsTopicError::Name {
            topic: topic.to_owned(),
            source,
        };
        let parsed = ShadowTopic::parse(topic).map_err(|e| match e {
            TopicError::Name(source) => name_error(source),
            _ => not_documents(),
        })?;
        if parsed.operation != ShadowOperation::Update
            || parsed.response != Some(ShadowResponse::Documents)
        {
            return Err(not_documents());
        }
        Ok(Self {
            thing: parsed.thing.parse().map_err(name_error)?,
            name: parsed
                .name
                .map(str::parse)
                .transpose()
                .map_err(name_error)?,
        })
    }

    /// How the registry and logs name it: the shadow name, or `classic`.
    pub fn label(&self) -> &str {
        self.name.as_ref().map_or("classic", ShadowName::as_str)
    }
}

impl std::fmt::Display for ShadowRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.thing, self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_topics_name_the_shadow() {
        let classic =
            ShadowRef::from_documents_topic("$aws/things/d-1/shadow/update/documents").unwrap();
        assert_eq!(
            (classic.thing.as_str(), classic.label()),
            ("d-1", "classic")
        );
        let named =
            ShadowRef::from_documents_topic("$aws/things/d-1/shadow/name/ota/update/documents")
                .unwrap();
        assert_eq!(named.label(), "ota");
        for bad in [
            "$aws/things/d-1/shadow/update/delta",
            "dt/x/d-1",
            "$aws/things/bad name/shadow/update/documents",
        ] {
            assert!(ShadowRef::from_documents_topic(bad).is_err(), "{bad}");
        }
    }
}
