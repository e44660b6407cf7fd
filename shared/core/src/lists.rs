//! Small text formats of Shoal's settings, parsed without knowing where they came from.

use std::collections::BTreeMap;

/// Why a `key=item,item;key=item` text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    /// An entry without `=`.
    #[error("{0:?} is not key=item,item")]
    NotKeyItems(String),
    /// A key that is empty or not `[a-zA-Z0-9_-]`.
    #[error("{0:?} must be letters, digits, '_' or '-'")]
    BadKey(String),
    /// An empty item under `key`.
    #[error("{0}: empty item")]
    EmptyItem(String),
    /// An item `check_item` refused, and why.
    #[error("{key}: {item:?} {why}")]
    BadItem {
        /// The list's key.
        key: String,
        /// The item.
        item: String,
        /// What `check_item` said.
        why: String,
    },
    /// A key given twice.
    #[error("{0} is defined twice")]
    Twice(String),
}

/// Parses `key=item,item;key=item`: keys of `[a-zA-Z0-9_-]`, each at most once, items trimmed
/// and non-empty. `check_item` vets each item. Used for per-model and per-template lists.
///
/// # Errors
/// [`ListError`] naming the entry, key or item at fault.
pub fn keyed_lists(
    text: &str,
    check_item: impl Fn(&str) -> Result<(), String>,
) -> Result<BTreeMap<String, Vec<String>>, ListError> {
    let mut lists = BTreeMap::new();
    for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (key, items) = entry
            .split_once('=')
            .ok_or_else(|| ListError::NotKeyItems(entry.to_owned()))?;
        let key = key.trim();
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
        {
            return Err(ListError::BadKey(key.to_owned()));
        }
        let items: Vec<String> = items.split(',').map(|i| i.trim().to_owned()).collect();
        for item in &items {
            if item.is_empty() {
                return Err(ListError::EmptyItem(key.to_owned()));
            }
            check_item(item).map_err(|why| ListError::BadItem {
                key: key.to_owned(),
                item: item.clone(),
                why,
            })?;
        }
        if lists.insert(key.to_owned(), items).is_some() {
            return Err(ListError::Twice(key.to_owned()));
        }
    }
    Ok(lists)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_lists_parse_and_refuse_what_is_off() {
        let ok = |_: &str| Ok(());
        let lists = keyed_lists(" a=x, y ;b-2=z;", ok).unwrap();
        assert_eq!(lists["a"], vec!["x", "y"]);
        assert_eq!(lists["b-2"], vec!["z"]);
        assert!(keyed_lists("", ok).unwrap().is_empty());
        for bad in ["a", "a b=x", "a=x;a=y", "a=x,,y", "=x"] {
            assert!(keyed_lists(bad, ok).is_err(), "{bad}");
        }
        let err = keyed_lists("a=x,BAD", |i: &str| {
            if i.chars().all(|c| c.is_ascii_lowercase()) {
                Ok(())
            } else {
                Err("is not lowercase".into())
            }
        })
        .unwrap_err();
        assert_eq!(
            err,
            ListError::BadItem {
                key: "a".into(),
                item: "BAD".into(),
                why: "is not lowercase".into()
            }
        );
        assert_eq!(err.to_string(), "a: \"BAD\" is not lowercase");
    }
}
