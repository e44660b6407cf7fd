//! Device shadows: the documents ([`document`]), AWS's limits checked before any call
//! ([`limits`]), conflict policies per attribute path ([`policy`]), what one `update/documents`
//! message leads to ([`sync`]) and the OTA status reports devices write to the `ota` shadow
//! ([`ota`]).

pub mod document;
pub mod intent;
pub mod limits;
pub mod ota;
pub mod policy;
pub mod sync;

pub use document::{DocumentsMessage, Section, ShadowDocument, ShadowUpdate, StateMap};
pub use limits::{ShadowLimitError, check_update};
pub use policy::{ConflictPolicy, PolicyTable};

use crate::ids::{ShadowName, ThingName};
use shoal_wire::topics::{ShadowOperation, ShadowResponse, ShadowTopic, TopicError};

/// The shadow a topic or an API call is about: a thing's classic shadow or one of its named ones.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShadowRef {
    pub thing: ThingName,
    pub name: Option<ShadowName>,
}

impl ShadowRef {
    /// `$aws/things/<thing>/shadow/update/documents` or
    /// `$aws/things/<thing>/shadow/name/<name>/update/documents`.
    pub fn from_documents_topic(topic: &str) -> Result<Self, String> {
        let not_documents = || format!("{topic:?} is not a shadow update/documents topic");
        let parsed = ShadowTopic::parse(topic).map_err(|e| match e {
            TopicError::Pattern(_) => not_documents(),
            e => format!("{topic:?}: {e}"),
        })?;
        if parsed.operation != ShadowOperation::Update
            || parsed.response != Some(ShadowResponse::Documents)
        {
            return Err(not_documents());
        }
        Ok(Self {
            thing: parsed
                .thing
                .parse()
                .map_err(|e| format!("{topic:?}: {e}"))?,
            name: parsed
                .name
                .map(str::parse)
                .transpose()
                .map_err(|e| format!("{topic:?}: {e}"))?,
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
