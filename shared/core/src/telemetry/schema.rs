//! Measure types: what Timestream type a measure is stored as, decided by its name, never by
//! how a device spelled the number.
//!
//! Timestream types a measure per table: once `temp` is DOUBLE, a BIGINT `temp` is rejected (and
//! with it the whole record). Devices and the rules engine do not keep spellings stable — AWS IoT
//! SQL version 2016-03-23 turns `22.0` into `22` — so the type comes from a declaration:
//!
//! - numbers are DOUBLE, booleans BOOLEAN, strings VARCHAR, unless declared otherwise;
//! - `SHOAL_MEASURE_TYPES` declares measures by type: `bigint=rssi,uptime_s;varchar=fw`
//!   (types `double`, `bigint`, `boolean`, `varchar`; names as they are stored, i.e. flattened:
//!   `env_co2`, `temp_count`). A value that cannot be the declared type is refused as
//!   `type_mismatch` (a BIGINT takes integers and integral numbers such as `22.0`).
//!
//! The declaration is per table, not per device model: every model writes into the one table,
//! where a measure name has one type.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde_json::Number;

use super::decode::DecodeError;
use super::reading::MeasureValue;

/// Timestream's scalar measure types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MeasureType {
    /// DOUBLE: a 64-bit float; the default for numbers.
    Double,
    /// BIGINT: a signed 64-bit integer; integral numbers such as `22.0` are accepted.
    Bigint,
    /// BOOLEAN: `true` or `false`.
    Boolean,
    /// VARCHAR: UTF-8 text; the default for strings.
    Varchar,
}

impl MeasureType {
    /// Timestream's `MeasureValueType` name.
    pub fn name(self) -> &'static str {
        match self {
            MeasureType::Double => "DOUBLE",
            MeasureType::Bigint => "BIGINT",
            MeasureType::Boolean => "BOOLEAN",
            MeasureType::Varchar => "VARCHAR",
        }
    }
}

impl FromStr for MeasureType {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "double" => Ok(MeasureType::Double),
            "bigint" => Ok(MeasureType::Bigint),
            "boolean" => Ok(MeasureType::Boolean),
            "varchar" => Ok(MeasureType::Varchar),
            _ => Err(format!(
                "{text:?} is not a measure type (double, bigint, boolean, varchar)"
            )),
        }
    }
}

/// The declared measure types (`SHOAL_MEASURE_TYPES`); undeclared measures follow the defaults
/// in the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeasureTypes(BTreeMap<String, MeasureType>);

/// Largest magnitude an f64 can have and still convert to i64 exactly: 2^63.
const I64_BOUND: f64 = 9_223_372_036_854_775_808.0;

impl MeasureTypes {
    /// No declarations: every measure takes its default type (`SHOAL_MEASURE_TYPES` unset).
    pub const fn empty() -> Self {
        Self(BTreeMap::new())
    }

    /// The declared type of `name`, if any.
    pub fn declared(&self, name: &str) -> Option<MeasureType> {
        if self.0.is_empty() {
            return None;
        }
        self.0.get(name).copied()
    }

    fn mismatch(name: &str, declared: MeasureType, got: impl fmt::Display) -> DecodeError {
        DecodeError::TypeMismatch(
            name.to_owned(),
            format!("declared {}, got {got}", declared.name()),
        )
    }

    /// A number from JSON or CBOR: DOUBLE unless declared.
    ///
    /// # Errors
    /// [`DecodeError::TypeMismatch`] when the declared type cannot hold it.
    pub fn number(&self, name: &str, n: &Number) -> Result<MeasureValue, DecodeError> {
        match self.declared(name) {
            None | Some(MeasureType::Double) => n
                .as_f64()
                .map(MeasureValue::Double)
                .ok_or_else(|| DecodeError::BadNumber(name.to_owned(), n.to_string())),
            Some(MeasureType::Bigint) => match n.as_i64() {
                Some(i) => Ok(MeasureValue::Bigint(i)),
                None => integral(n.as_f64().unwrap_or(f64::NAN))
                    .map(MeasureValue::Bigint)
                    .ok_or_else(|| Self::mismatch(name, MeasureType::Bigint, n)),
            },
            Some(other) => Err(Self::mismatch(name, other, format_args!("the number {n}"))),
        }
    }

    /// A float from a packed record: DOUBLE unless declared BIGINT (integral values only).
    ///
    /// # Errors
    /// [`DecodeError::TypeMismatch`] when the declared type cannot hold it.
    pub fn float(&self, name: &str, v: f64) -> Result<MeasureValue, DecodeError> {
        match self.declared(name) {
            None | Some(MeasureType::Double) => Ok(MeasureValue::Double(v)),
            Some(MeasureType::Bigint) => integral(v)
                .map(MeasureValue::Bigint)
                .ok_or_else(|| Self::mismatch(name, MeasureType::Bigint, v)),
            Some(other) => Err(Self::mismatch(name, other, format_args!("the number {v}"))),
        }
    }

    /// A boolean: BOOLEAN, unless another type was declared.
    ///
    /// # Errors
    /// [`DecodeError::TypeMismatch`] when another type was declared.
    pub fn boolean(&self, name: &str, b: bool) -> Result<MeasureValue, DecodeError> {
        match self.declared(name) {
            None | Some(MeasureType::Boolean) => Ok(MeasureValue::Boolean(b)),
            Some(other) => Err(Self::mismatch(name, other, format_args!("the boolean {b}"))),
        }
    }

    /// A string: VARCHAR, unless another type was declared.
    ///
    /// # Errors
    /// [`DecodeError::TypeMismatch`] when another type was declared.
    pub fn text(&self, name: &str, s: String) -> Result<MeasureValue, DecodeError> {
        match self.declared(name) {
            None | Some(MeasureType::Varchar) => Ok(MeasureValue::Varchar(s)),
            Some(other) => Err(Self::mismatch(name, other, "a string")),
        }
    }
}

/// `v` as an i64 when it is integral and in range.
fn integral(v: f64) -> Option<i64> {
    (v.is_finite() && v.fract() == 0.0 && (-I64_BOUND..I64_BOUND).contains(&v)).then_some(v as i64)
}

impl FromStr for MeasureTypes {
    type Err = String;

    /// `type=measure,measure;type=measure`: types double, bigint, boolean, varchar; measures
    /// valid measure names, each declared once.
    fn from_str(text: &str) -> Result<Self, String> {
        let lists = crate::lists::keyed_lists(text, |name| {
            super::validate::check_measure_name(name).map_err(str::to_owned)
        })
        .map_err(|e| e.to_string())?;
        let mut types = BTreeMap::new();
        for (kind, names) in lists {
            let kind: MeasureType = kind.parse()?;
            for name in names {
                if let Some(earlier) = types.insert(name.clone(), kind) {
                    return Err(format!(
                        "{name:?} is declared both {} and {}",
                        earlier.name(),
                        kind.name()
                    ));
                }
            }
        }
        Ok(Self(types))
    }
}

impl fmt::Display for MeasureTypes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut by_type: BTreeMap<MeasureType, Vec<&str>> = BTreeMap::new();
        for (name, kind) in &self.0 {
            by_type.entry(*kind).or_default().push(name);
        }
        let entries: Vec<String> = by_type
            .iter()
            .map(|(kind, names)| {
                format!("{}={}", kind.name().to_ascii_lowercase(), names.join(","))
            })
            .collect();
        f.write_str(&entries.join(";"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn types() -> MeasureTypes {
        "bigint=rssi,count;varchar=fw;boolean=door".parse().unwrap()
    }

    fn json_number(text: &str) -> Number {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn parse_and_print() {
        assert_eq!(
            types().to_string(),
            "bigint=count,rssi;boolean=door;varchar=fw"
        );
        assert_eq!("".parse::<MeasureTypes>(), Ok(MeasureTypes::empty()));
        for bad in [
            "int=rssi",
            "bigint=2x",
            "bigint=a;double=a",
            "bigint=a;bigint=b",
            "bigint",
        ] {
            assert!(bad.parse::<MeasureTypes>().is_err(), "{bad}");
        }
    }

    #[test]
    fn undeclared_numbers_are_double_however_spelled() {
        let t = MeasureTypes::empty();
        for (text, want) in [("22", 22.0), ("22.0", 22.0), ("21.5", 21.5), ("-3", -3.0)] {
            assert_eq!(
                t.number("temp", &json_number(text)).unwrap(),
                MeasureValue::Double(want),
                "{text}"
            );
        }
        assert_eq!(
            t.number("big", &json_number("18446744073709551615"))
                .unwrap(),
            MeasureValue::Double(18_446_744_073_709_551_615.0)
        );
    }

    #[test]
    fn declared_bigint_takes_integral_numbers_only() {
        let t = types();
        assert_eq!(
            t.number("rssi", &json_number("-70")).unwrap(),
            MeasureValue::Bigint(-70)
        );
        assert_eq!(
            t.number("rssi", &json_number("-70.0")).unwrap(),
            MeasureValue::Bigint(-70)
        );
        for bad in ["-70.5", "1e300", "18446744073709551615"] {
            let err = t.number("rssi", &json_number(bad)).unwrap_err();
            assert_eq!(err.code(), "type_mismatch", "{bad}");
        }
        assert_eq!(t.float("count", 3.0).unwrap(), MeasureValue::Bigint(3));
        assert!(t.float("count", f64::NAN).is_err());
    }

    #[test]
    fn other_declared_types_refuse_other_json_types() {
        let t = types();
        assert_eq!(
            t.text("fw", "1.2.0".into()).unwrap(),
            MeasureValue::Varchar("1.2.0".into())
        );
        assert_eq!(
            t.number("fw", &json_number("1.2")).unwrap_err().code(),
            "type_mismatch"
        );
        assert_eq!(t.boolean("rssi", true).unwrap_err().code(), "type_mismatch");
        assert_eq!(
            t.text("door", "open".into()).unwrap_err().code(),
            "type_mismatch"
        );
        assert_eq!(t.float("fw", 1.0).unwrap_err().code(), "type_mismatch");
    }

    proptest! {
        /// The stored type is a function of the name: any two numbers of one measure, however
        /// spelled, get the same type (or one is refused).
        #[test]
        fn the_type_depends_on_the_name_only(a in any::<i32>(), b in -1e9..1e9f64, declared in any::<bool>()) {
            let t = if declared { types() } else { MeasureTypes::empty() };
            let name = "rssi";
            let x = t.number(name, &Number::from(a)).map(|v| v.type_name());
            let y = t.number(name, &Number::from_f64(b).unwrap()).map(|v| v.type_name());
            if let (Ok(x), Ok(y)) = (x, y) {
                prop_assert_eq!(x, y);
            }
        }
    }
}
