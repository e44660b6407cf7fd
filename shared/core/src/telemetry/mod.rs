//! Telemetry: from what a device published to the records Timestream stores.
//!
//! `envelope` reads what the IoT rule hands the router (the payload plus topic, receive time and
//! client id); `decode` turns a JSON payload into readings, `binary` the compressed, CBOR and
//! packed ones, `schema` types each measure by its name, `json` notices duplicate keys, `flat` reads the common JSON shapes straight into readings; `validate` checks each reading against
//! AWS's and Shoal's limits; `records` builds Timestream multi-measure records and batches. Every
//! step is pure: nothing here calls AWS, so each rule is unit- and property-tested.

pub mod archive;
pub mod binary;
pub mod decode;
pub mod envelope;
mod flat;
pub mod json;
pub mod reading;
pub mod records;
pub mod schema;
pub mod validate;

pub use binary::{PackedSchemas, decode_binary};
pub use decode::{
    Context, DecodeError, FlatReading, MAX_READINGS_PER_MESSAGE, decode_flat, decode_json,
};
pub use envelope::{Envelope, EnvelopeError, Payload, TelemetryApps};
pub use json::CheckedJson;
pub use reading::{MeasureName, MeasureValue, Reading};
pub use records::{MAX_RECORD_BYTES, MAX_RECORDS_PER_WRITE, TimestreamRecord};
pub use schema::{MeasureType, MeasureTypes};
pub use validate::{Limits, Rejection, validate, validate_with_dimensions};
