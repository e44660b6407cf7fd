//! AWS IoT identifiers, validated once at the edge so the rest of Shoal can trust them.
//!
//! Limits are AWS's: thing name 1–128 characters of `[a-zA-Z0-9:_-]`, shadow name 1–64 bytes of the
//! same alphabet, client token at most 64 bytes.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Longest thing name AWS IoT accepts.
pub const THING_NAME_MAX: usize = 128;
/// Longest named-shadow name AWS IoT accepts, in bytes.
pub const SHADOW_NAME_MAX_BYTES: usize = 64;
/// Longest shadow `clientToken` AWS IoT accepts, in bytes.
pub const CLIENT_TOKEN_MAX_BYTES: usize = 64;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdError {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} is {len} bytes long; AWS IoT allows at most {max}")]
    TooLong {
        kind: &'static str,
        len: usize,
        max: usize,
    },
    #[error(
        "{kind} {value:?} contains {found:?} at byte {at}; only letters, digits, ':', '_' and '-' are allowed"
    )]
    BadCharacter {
        kind: &'static str,
        value: String,
        found: char,
        at: usize,
    },
}

fn check_length(kind: &'static str, value: &str, max: usize) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.len() > max {
        return Err(IdError::TooLong {
            kind,
            len: value.len(),
            max,
        });
    }
    Ok(())
}

/// `[a-zA-Z0-9:_-]`, the alphabet of thing and shadow names.
fn check_name_alphabet(kind: &'static str, value: &str) -> Result<(), IdError> {
    match value
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-')))
    {
        Some((at, found)) => Err(IdError::BadCharacter {
            kind,
            value: value.to_owned(),
            found,
            at,
        }),
        None => Ok(()),
    }
}

macro_rules! validated_string {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::parse(&value)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(value: &str) -> Result<Self, IdError> {
                Self::parse(value)
            }
        }
    };
}

validated_string!(
    /// An AWS IoT thing name: 1–128 characters of `[a-zA-Z0-9:_-]`.
    ThingName
);
validated_string!(
    /// A named-shadow name: 1–64 bytes of `[a-zA-Z0-9:_-]`.
    ShadowName
);
validated_string!(
    /// A shadow request's `clientToken`: 1–64 bytes, any characters.
    ClientToken
);

impl ThingName {
    pub fn parse(value: &str) -> Result<Self, IdError> {
        const KIND: &str = "thing name";
        check_length(KIND, value, THING_NAME_MAX)?;
        check_name_alphabet(KIND, value)?;
        Ok(Self(value.to_owned()))
    }
}

impl ShadowName {
    pub fn parse(value: &str) -> Result<Self, IdError> {
        const KIND: &str = "shadow name";
        check_length(KIND, value, SHADOW_NAME_MAX_BYTES)?;
        check_name_alphabet(KIND, value)?;
        Ok(Self(value.to_owned()))
    }
}

impl ClientToken {
    pub fn parse(value: &str) -> Result<Self, IdError> {
        check_length("client token", value, CLIENT_TOKEN_MAX_BYTES)?;
        Ok(Self(value.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn thing_name_length_edges() {
        assert_eq!(
            ThingName::parse(""),
            Err(IdError::Empty { kind: "thing name" })
        );
        assert!(ThingName::parse("a").is_ok());
        assert!(ThingName::parse(&"a".repeat(128)).is_ok());
        assert_eq!(
            ThingName::parse(&"a".repeat(129)),
            Err(IdError::TooLong {
                kind: "thing name",
                len: 129,
                max: 128
            })
        );
    }

    #[test]
    fn thing_name_alphabet() {
        assert!(ThingName::parse("sensor-01:rev_B").is_ok());
        for bad in ["a b", "a/b", "a.b", "a+b", "a#", "$aws", "caf\u{e9}"] {
            let err = ThingName::parse(bad).unwrap_err();
            assert!(
                matches!(err, IdError::BadCharacter { .. }),
                "{bad:?} gave {err:?}"
            );
        }
        let err = ThingName::parse("ab/c").unwrap_err();
        assert_eq!(
            err.to_string(),
            "thing name \"ab/c\" contains '/' at byte 2; only letters, digits, ':', '_' and '-' are allowed"
        );
    }

    #[test]
    fn shadow_name_edges() {
        assert!(ShadowName::parse("ota").is_ok());
        assert!(ShadowName::parse(&"s".repeat(64)).is_ok());
        assert!(matches!(
            ShadowName::parse(&"s".repeat(65)),
            Err(IdError::TooLong {
                len: 65,
                max: 64,
                ..
            })
        ));
        assert!(matches!(ShadowName::parse(""), Err(IdError::Empty { .. })));
        assert!(matches!(
            ShadowName::parse("with space"),
            Err(IdError::BadCharacter { found: ' ', .. })
        ));
    }

    #[test]
    fn client_token_counts_bytes_not_characters() {
        assert!(ClientToken::parse(&"t".repeat(64)).is_ok());
        assert!(ClientToken::parse(&"t".repeat(65)).is_err());
        // 32 two-byte characters are 64 bytes: allowed; one more is 66 bytes: refused.
        assert!(ClientToken::parse(&"\u{e9}".repeat(32)).is_ok());
        assert!(matches!(
            ClientToken::parse(&"\u{e9}".repeat(33)),
            Err(IdError::TooLong { len: 66, .. })
        ));
        assert!(ClientToken::parse("").is_err());
    }

    #[test]
    fn serde_validates_on_the_way_in() {
        let ok: ThingName = serde_json::from_str("\"dev-1\"").unwrap();
        assert_eq!(ok.as_str(), "dev-1");
        assert!(serde_json::from_str::<ThingName>("\"dev 1\"").is_err());
        assert_eq!(serde_json::to_string(&ok).unwrap(), "\"dev-1\"");
    }

    proptest! {
        #[test]
        fn thing_name_accepts_exactly_the_documented_language(s in "\\PC{0,140}") {
            let expected = !s.is_empty()
                && s.len() <= 128
                && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-'));
            prop_assert_eq!(ThingName::parse(&s).is_ok(), expected);
        }

        #[test]
        fn valid_thing_names_round_trip(s in "[a-zA-Z0-9:_-]{1,128}") {
            let name = ThingName::parse(&s).unwrap();
            prop_assert_eq!(name.as_str(), s.as_str());
        }
    }
}
