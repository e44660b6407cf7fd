//! A reading: one device, one instant, one or more typed measures.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::ThingName;

/// A measure's value, typed as Timestream stores it. The type comes from the measure's name
/// (`schema::MeasureTypes`: numbers are DOUBLE unless declared), never from how a number was
/// spelled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MeasureValue {
    /// A 64-bit float, Timestream type DOUBLE (the default for numbers).
    Double(f64),
    /// A signed 64-bit integer, Timestream type BIGINT (only for names declared so).
    Bigint(i64),
    /// `true` or `false`, Timestream type BOOLEAN.
    Boolean(bool),
    /// UTF-8 text, Timestream type VARCHAR.
    Varchar(String),
}

impl MeasureValue {
    /// Timestream's `MeasureValueType` name.
    pub fn type_name(&self) -> &'static str {
        match self {
            MeasureValue::Double(_) => "DOUBLE",
            MeasureValue::Bigint(_) => "BIGINT",
            MeasureValue::Boolean(_) => "BOOLEAN",
            MeasureValue::Varchar(_) => "VARCHAR",
        }
    }

    /// Length of [`Self::to_timestream_string`], without building the string: record sizes are
    /// checked for every reading.
    pub fn timestream_string_len(&self) -> usize {
        match self {
            // ryu's text where it writes Display's; otherwise the contract's count of Display's
            // text (the one a device uses to size its records).
            MeasureValue::Double(v) => ryu::Buffer::new()
                .format_plain(*v)
                .map_or_else(|| shoal_wire::telemetry::double_text_len(*v), str::len),
            // Exact for every type but DOUBLE.
            _ => self.timestream_string_len_bound(),
        }
    }

    /// An upper bound of [`Self::timestream_string_len`] found without formatting: exact for
    /// everything but doubles, whose text (no exponent, shortest round-trip digits: at most 17
    /// significant ones) is at most 26 bytes while 1e-5 ≤ |v| < 1e17; outside that range the
    /// exact length is computed.
    pub fn timestream_string_len_bound(&self) -> usize {
        match self {
            MeasureValue::Double(v) if *v == 0.0 || (1e-5..1e17).contains(&v.abs()) => 26,
            MeasureValue::Bigint(v) => {
                usize::from(*v < 0) + v.unsigned_abs().checked_ilog10().unwrap_or(0) as usize + 1
            }
            MeasureValue::Boolean(v) => 4 + usize::from(!v),
            MeasureValue::Varchar(v) => v.len(),
            MeasureValue::Double(_) => self.timestream_string_len(),
        }
    }

    /// The value as Timestream's string encoding. Doubles keep a decimal point or exponent so the
    /// text reads back as a double.
    pub fn to_timestream_string(&self) -> String {
        match self {
            MeasureValue::Double(v) => match ryu::Buffer::new().format_plain(*v) {
                Some(text) => text.to_owned(),
                None => display_double(*v),
            },
            MeasureValue::Bigint(v) => v.to_string(),
            MeasureValue::Boolean(v) => v.to_string(),
            MeasureValue::Varchar(v) => v.clone(),
        }
    }
}

/// Display's digits (shortest round trip, never an exponent) with ".0" after an integral value.
fn display_double(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 {
        format!("{v}.0")
    } else {
        v.to_string()
    }
}

/// `ryu` formatting of a finite double when it has no exponent and is no tie: then it is exactly
/// [`display_double`]'s text (the same shortest round-trip digits, the same ".0"), at a fraction
/// of the cost. ryu writes an exponent below 1e-5 and from 1e16 on, and when the double's exact
/// value lies halfway between two shortest candidates it breaks the tie another way than core's
/// `Display` (990713124696523.25: ryu `.2`, `Display` `.3`): those take the slow path.
trait PlainFloat {
    fn format_plain(&mut self, v: f64) -> Option<&str>;
}

impl PlainFloat for ryu::Buffer {
    fn format_plain(&mut self, v: f64) -> Option<&str> {
        if !v.is_finite() {
            return None;
        }
        let text = self.format_finite(v);
        if text.contains('e') {
            return None;
        }
        let significant = text
            .bytes()
            .filter(u8::is_ascii_digit)
            .skip_while(|&d| d == b'0')
            .count();
        (!may_be_a_tie(v, significant)).then_some(text)
    }
}

/// Whether the exact value of `v` (not an integer) has `shortest + 1` significant digits: the
/// only way it can lie halfway between two `shortest`-digit decimals. Exact: a double is
/// `m / 2^k` = `m·5^k / 10^k` with `m` odd, so its exact decimal digits are those of `m·5^k`; past
/// k = 25 they are more than 18, beyond any tie of a double's at most 17 shortest digits.
fn may_be_a_tie(v: f64, shortest: usize) -> bool {
    let bits = v.abs().to_bits();
    let biased = i32::try_from(bits >> 52).unwrap_or(0);
    let fraction = bits & ((1 << 52) - 1);
    let (mantissa, exponent) = if biased == 0 {
        (fraction, -1074)
    } else {
        (fraction | (1 << 52), biased - 1075)
    };
    if mantissa == 0 {
        return false;
    }
    let zeros = i32::try_from(mantissa.trailing_zeros()).unwrap_or(0);
    let fraction_bits = -(exponent + zeros);
    // An integer's shortest text below 1e16 is the integer itself: no tie.
    if !(1..=25).contains(&fraction_bits) {
        return false;
    }
    let exact = u128::from(mantissa >> zeros) * 5u128.pow(fraction_bits.unsigned_abs());
    exact.checked_ilog10().map_or(1, |d| d as usize + 1) == shortest + 1
}

/// A measure name as written by the device; `validate` checks it against the allowed pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MeasureName(pub String);

impl fmt::Display for MeasureName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One reading of one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// The device the reading came from (the thing name in its topic).
    pub thing: ThingName,
    /// Milliseconds since the Unix epoch: the device's timestamp, else the time IoT Core received
    /// the message.
    pub time_ms: i64,
    /// The measures, each a flattened name (`env_co2`) and its typed value; `validate` refuses
    /// bad or repeated names.
    pub measures: Vec<(MeasureName, MeasureValue)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn doubles_keep_a_decimal_point() {
        assert_eq!(MeasureValue::Double(23.0).to_timestream_string(), "23.0");
        assert_eq!(MeasureValue::Double(-0.0).to_timestream_string(), "-0.0");
        assert_eq!(MeasureValue::Double(0.25).to_timestream_string(), "0.25");
        assert_eq!(
            MeasureValue::Double(1e20).to_timestream_string(),
            "100000000000000000000.0"
        );
        assert_eq!(MeasureValue::Bigint(23).to_timestream_string(), "23");
        // Around ryu's switch to an exponent: still Display's plain digits.
        assert_eq!(
            MeasureValue::Double(1e16).to_timestream_string(),
            "10000000000000000.0"
        );
        assert_eq!(
            MeasureValue::Double(9_999_999_999_999_998.0).to_timestream_string(),
            "9999999999999998.0"
        );
        assert_eq!(MeasureValue::Double(1e-5).to_timestream_string(), "0.00001");
        assert_eq!(
            MeasureValue::Double(1e-7).to_timestream_string(),
            "0.0000001"
        );
        assert_eq!(MeasureValue::Double(21.5).to_timestream_string(), "21.5");
        // Exactly halfway between two shortest candidates: ryu and Display break the tie
        // differently; Display's text wins.
        for tie in [
            3_962_852_498_786_093.0 / 4.0,  // 990713124696523.25
            -1_165_062_913_697_989.0 / 8.0, // -145632864212248.625
            158_024_689_921.0 / 128.0,      // 1234567890.0078125
        ] {
            assert_eq!(
                MeasureValue::Double(tie).to_timestream_string(),
                display_double(tie),
                "{tie:?}"
            );
        }
    }

    fn any_measure() -> impl Strategy<Value = MeasureValue> {
        prop_oneof![
            any::<f64>().prop_map(MeasureValue::Double),
            any::<i64>().prop_map(MeasureValue::Bigint),
            any::<bool>().prop_map(MeasureValue::Boolean),
            "\\PC{0,40}".prop_map(MeasureValue::Varchar),
        ]
    }

    proptest! {
        #[test]
        fn string_len_matches_the_string(v in any_measure()) {
            prop_assert_eq!(v.timestream_string_len(), v.to_timestream_string().len());
        }

        #[test]
        fn the_bound_is_never_below_the_length(v in any_measure(), scale in -30i32..30) {
            let v = match v {
                MeasureValue::Double(x) => MeasureValue::Double(x * 10f64.powi(scale)),
                other => other,
            };
            prop_assert!(v.timestream_string_len_bound() >= v.timestream_string_len());
        }

        #[test]
        fn the_fast_text_is_display_s_text(v in any::<f64>(), scale in -30i32..30) {
            let v = v * 10f64.powi(scale);
            prop_assert_eq!(MeasureValue::Double(v).to_timestream_string(), display_double(v));
        }

        /// Doubles with few fractional bits, where exact values halfway between two shortest
        /// candidates (ties) live.
        #[test]
        fn ties_are_display_s_text_too(m in 0u64..(1 << 53), bits in 1i32..12, negative: bool) {
            let v = m as f64 / 2f64.powi(bits) * if negative { -1.0 } else { 1.0 };
            prop_assert_eq!(MeasureValue::Double(v).to_timestream_string(), display_double(v));
        }

        #[test]
        fn doubles_read_back_as_the_same_double(v in any::<f64>().prop_filter("finite", |v| v.is_finite())) {
            let text = MeasureValue::Double(v).to_timestream_string();
            prop_assert!(text.contains('.'));
            prop_assert_eq!(text.parse::<f64>().unwrap(), v);
        }
    }
}
