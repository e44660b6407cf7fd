//! A reading: one device, one instant, one or more typed measures.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::ThingName;

/// A measure's value, typed as Timestream stores it. JSON `23.0` stays DOUBLE and `23` is BIGINT:
/// the payload's own spelling decides, never a guess from the value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MeasureValue {
    Double(f64),
    Bigint(i64),
    Boolean(bool),
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

    /// The value as Timestream's string encoding. Doubles keep a decimal point or exponent so the
    /// text reads back as a double.
    pub fn to_timestream_string(&self) -> String {
        match self {
            MeasureValue::Double(v) => {
                let text = v.to_string();
                if text.contains(['.', 'e', 'E']) || !v.is_finite() {
                    text
                } else {
                    format!("{text}.0")
                }
            }
            MeasureValue::Bigint(v) => v.to_string(),
            MeasureValue::Boolean(v) => v.to_string(),
            MeasureValue::Varchar(v) => v.clone(),
        }
    }
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
    pub thing: ThingName,
    /// Milliseconds since the Unix epoch: the device's timestamp, else the time IoT Core received
    /// the message.
    pub time_ms: i64,
    pub measures: Vec<(MeasureName, MeasureValue)>,
}
