//! AWS IoT identifiers, validated once at the edge so the rest of Shoal can trust them.
//!
//! Limits are AWS's: thing name 1–128 characters of `[a-zA-Z0-9:_-]`, shadow name 1–64 bytes of the
//! same alphabet, client token at most 64 bytes.

use alloc::string::String;
use thiserror::Error;

/// Longest thing name AWS IoT accepts.
pub const THING_NAME_MAX: usize = 128;
/// Longest named-shadow name AWS IoT accepts, in bytes.
pub const SHADOW_NAME_MAX_BYTES: usize = 64;
/// Longest shadow `clientToken` AWS IoT accepts, in bytes.
pub const CLIENT_TOKEN_MAX_BYTES: usize = 64;

/// A name refused by its rule — a device model, a serial, a table name; AWS IoT's own
/// identifiers have [`IdError`] — with which kind of name it was and what the rule found.
/// Displays as the finding alone: the caller's message already says what was being read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{reason}")]
pub struct NameError {
    /// What was being read: `device model`, `serial`, `DynamoDB table name`.
    pub kind: &'static str,
    /// What its rule found, e.g. `is 70 characters long; it must be 1 to 64`.
    pub reason: String,
}

impl NameError {
    /// `check(value).map_err(NameError::of("serial"))`.
    pub fn of(kind: &'static str) -> impl Fn(String) -> Self {
        move |reason| Self { kind, reason }
    }
}

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdError {
    /// The identifier is empty.
    #[error("{kind} is empty")]
    Empty {
        /// What was being read (`thing name`, `shadow name`, `client token`).
        kind: &'static str,
    },
    #[error("{kind} is {len} bytes long; AWS IoT allows at most {max}")]
    /// The identifier is longer than AWS IoT allows.
    TooLong {
        /// What was being read.
        kind: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    #[error(
        "{kind} {value:?} contains {found:?} at byte {at}; only letters, digits, ':', '_' and '-' are allowed"
    )]
    /// The identifier holds a character outside its alphabet.
    BadCharacter {
        /// What was being read.
        kind: &'static str,
        /// The identifier as given.
        value: String,
        /// The first refused character.
        found: char,
        /// Its byte offset.
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
            value: String::from(value),
            found,
            at,
        }),
        None => Ok(()),
    }
}

validated_string!(
    /// An AWS IoT thing name: 1–128 characters of `[a-zA-Z0-9:_-]`.
    ThingName,
    IdError,
    |value| {
        const KIND: &str = "thing name";
        check_length(KIND, value, THING_NAME_MAX)?;
        check_name_alphabet(KIND, value)
    }
);
validated_string!(
    /// A named-shadow name: 1–64 bytes of `[a-zA-Z0-9:_-]`.
    ShadowName,
    IdError,
    |value| {
        const KIND: &str = "shadow name";
        check_length(KIND, value, SHADOW_NAME_MAX_BYTES)?;
        check_name_alphabet(KIND, value)
    }
);
validated_string!(
    /// A shadow request's `clientToken`: 1–64 bytes, any characters.
    ClientToken,
    IdError,
    |value| check_length("client token", value, CLIENT_TOKEN_MAX_BYTES)
);

/// A character of the names DynamoDB tables, S3 keys' levels and MQTT topic levels all take
/// as they are: an ASCII letter or digit, `_`, `.` or `-` (no wildcard, no separator).
pub fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
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
