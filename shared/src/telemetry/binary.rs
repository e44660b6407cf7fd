//! Binary payloads, told apart by their first bytes:
//!
//! | First bytes | Format |
//! | --- | --- |
//! | `1f 8b` | gzip: decompressed, then detected again |
//! | `78 01`, `78 5e`, `78 9c`, `78 da` (zlib header) | zlib: decompressed, then detected again |
//! | `{` (after whitespace) | JSON, as on the JSON topic |
//! | `a0`–`bf` (CBOR map) | CBOR map, read like the JSON shapes (ints stay BIGINT, floats DOUBLE) |
//! | anything else | packed records of the topic's device model |
//!
//! Packed records: a big-endian u64 timestamp in milliseconds, then one big-endian f32 per field
//! of the model (`SHOAL_PACKED_SCHEMAS`, e.g. `th-v2=temp,hum;gps-v1=lat,lon,alt`). A payload may
//! hold several records back to back. Current timestamps start with `00`, so a packed payload is
//! never mistaken for the self-describing formats.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::str::FromStr;

use serde_json::{Map, Number, Value};

use super::decode::{DecodeError, Decoded, decode_json};
use super::reading::{MeasureName, MeasureValue, Reading};
use crate::ids::ThingName;

/// Largest decompressed payload accepted: a 128 KB message must not inflate into a memory bomb.
pub const MAX_DECOMPRESSED_BYTES: usize = 1024 * 1024;

/// Field lists of packed records, by device model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackedSchemas(BTreeMap<String, Vec<MeasureName>>);

impl PackedSchemas {
    pub const fn empty() -> Self {
        Self(BTreeMap::new())
    }

    pub fn fields(&self, model: &str) -> Option<&[MeasureName]> {
        self.0.get(model).map(Vec::as_slice)
    }
}

impl FromStr for PackedSchemas {
    type Err = String;

    /// `model=field,field;model=field`: models of `[a-zA-Z0-9_-]`, fields that are valid measure
    /// names, no model twice.
    fn from_str(text: &str) -> Result<Self, String> {
        let lists = crate::config::keyed_lists(text, |field| {
            super::validate::check_measure_name(field).map_err(str::to_owned)
        })?;
        Ok(Self(
            lists
                .into_iter()
                .map(|(model, fields)| (model, fields.into_iter().map(MeasureName).collect()))
                .collect(),
        ))
    }
}

impl fmt::Display for PackedSchemas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries: Vec<String> = self
            .0
            .iter()
            .map(|(model, fields)| {
                let names: Vec<&str> = fields.iter().map(|n| n.0.as_str()).collect();
                format!("{model}={}", names.join(","))
            })
            .collect();
        f.write_str(&entries.join(";"))
    }
}

fn is_zlib(bytes: &[u8]) -> bool {
    matches!(bytes, [0x78, second, ..] if (0x7800_u16 | u16::from(*second)).is_multiple_of(31))
}

fn inflate(reader: impl Read) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    reader
        .take(MAX_DECOMPRESSED_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| DecodeError::Malformed(format!("decompression failed: {e}")))?;
    if out.len() > MAX_DECOMPRESSED_BYTES {
        return Err(DecodeError::Malformed(format!(
            "payload decompresses to more than {MAX_DECOMPRESSED_BYTES} bytes"
        )));
    }
    Ok(out)
}

/// Decodes a binary payload of `thing`. `model` (the topic's last level) selects the packed
/// schema; the self-describing formats ignore it.
pub fn decode_binary(
    thing: &ThingName,
    received_at_ms: i64,
    model: Option<&str>,
    bytes: &[u8],
    schemas: &PackedSchemas,
) -> Result<Decoded, DecodeError> {
    decode_layer(thing, received_at_ms, model, bytes, schemas, 0)
}

fn decode_layer(
    thing: &ThingName,
    received_at_ms: i64,
    model: Option<&str>,
    bytes: &[u8],
    schemas: &PackedSchemas,
    compressed_layers: u8,
) -> Result<Decoded, DecodeError> {
    let decompressed = match bytes {
        [0x1f, 0x8b, ..] => Some(inflate(flate2::read::GzDecoder::new(bytes))?),
        _ if is_zlib(bytes) => Some(inflate(flate2::read::ZlibDecoder::new(bytes))?),
        _ => None,
    };
    if let Some(inner) = decompressed {
        if compressed_layers > 0 {
            return Err(DecodeError::Malformed("payload is compressed twice".into()));
        }
        return decode_layer(thing, received_at_ms, model, &inner, schemas, 1);
    }
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => match serde_json::from_slice(bytes) {
            Ok(Value::Object(fields)) => decode_json(thing, received_at_ms, fields),
            Ok(_) => Err(DecodeError::NotAnObject),
            Err(e) => Err(DecodeError::Malformed(format!("invalid JSON: {e}"))),
        },
        Some(0xa0..=0xbf) => decode_cbor(thing, received_at_ms, bytes),
        _ => decode_packed(thing, model, bytes, schemas),
    }
}

fn decode_cbor(
    thing: &ThingName,
    received_at_ms: i64,
    bytes: &[u8],
) -> Result<Decoded, DecodeError> {
    let value: ciborium::Value = ciborium::from_reader(bytes)
        .map_err(|e| DecodeError::Malformed(format!("invalid CBOR: {e}")))?;
    match cbor_to_json(value, "")? {
        Value::Object(fields) => decode_json(thing, received_at_ms, fields),
        _ => Err(DecodeError::NotAnObject),
    }
}

/// CBOR → the JSON shapes. Integers stay integers and floats stay floats; a non-finite float is
/// refused with its path, since JSON (and Timestream) cannot hold it.
fn cbor_to_json(value: ciborium::Value, path: &str) -> Result<Value, DecodeError> {
    use ciborium::Value as C;
    Ok(match value {
        C::Null => Value::Null,
        C::Bool(b) => Value::Bool(b),
        C::Integer(i) => {
            let wide = i128::from(i);
            let narrow = i64::try_from(wide).map_err(|_| {
                DecodeError::BadNumber(path.to_owned(), format!("{wide} exceeds BIGINT's range"))
            })?;
            Value::from(narrow)
        }
        C::Float(f) => Value::Number(
            Number::from_f64(f).ok_or_else(|| DecodeError::NotFinite(path.to_owned()))?,
        ),
        C::Text(s) => Value::String(s),
        C::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|v| cbor_to_json(v, path))
                .collect::<Result<_, _>>()?,
        ),
        C::Map(entries) => {
            let mut map = Map::with_capacity(entries.len());
            for (k, v) in entries {
                let C::Text(key) = k else {
                    return Err(DecodeError::Malformed(format!(
                        "CBOR map key under {path:?} is not text"
                    )));
                };
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}_{key}")
                };
                map.insert(key, cbor_to_json(v, &child)?);
            }
            Value::Object(map)
        }
        C::Tag(_, inner) => cbor_to_json(*inner, path)?,
        C::Bytes(_) => {
            return Err(DecodeError::Malformed(format!(
                "CBOR byte string at {path:?}; measures are numbers, booleans or text"
            )));
        }
        _ => {
            return Err(DecodeError::Malformed(format!(
                "unsupported CBOR value at {path:?}"
            )));
        }
    })
}

fn decode_packed(
    thing: &ThingName,
    model: Option<&str>,
    bytes: &[u8],
    schemas: &PackedSchemas,
) -> Result<Decoded, DecodeError> {
    let model = model.ok_or(DecodeError::UnknownSchema(
        "binary payload on a topic without a device model (dt/<app>/<thing>/telemetry/<model>)"
            .into(),
    ))?;
    let fields = schemas.fields(model).ok_or_else(|| {
        DecodeError::UnknownSchema(format!("no packed schema for model {model:?}"))
    })?;
    let record_len = 8 + 4 * fields.len();
    if bytes.is_empty() || !bytes.len().is_multiple_of(record_len) {
        return Err(DecodeError::Malformed(format!(
            "{} bytes is not a whole number of {record_len}-byte {model} records",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(record_len)
        .map(|record| {
            let (time, values) = record.split_at(8);
            let time = u64::from_be_bytes(time.try_into().expect("8 bytes"));
            let time_ms = i64::try_from(time).map_err(|_| DecodeError::BadTimestamp)?;
            let measures = fields
                .iter()
                .zip(values.chunks_exact(4))
                .map(|(name, raw)| {
                    let value = f32::from_be_bytes(raw.try_into().expect("4 bytes"));
                    (name.clone(), MeasureValue::Double(f64::from(value)))
                })
                .collect();
            Ok(Reading {
                thing: thing.clone(),
                time_ms,
                measures,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use std::io::Write;

    const NOW: i64 = 1_795_600_000_000;

    fn thing() -> ThingName {
        ThingName::parse("dev-1").unwrap()
    }

    fn schemas() -> PackedSchemas {
        "th-v2=temp,hum; gps-v1=lat,lon,alt".parse().unwrap()
    }

    fn packed(time: u64, values: &[f32]) -> Vec<u8> {
        let mut out = time.to_be_bytes().to_vec();
        for v in values {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out
    }

    fn decode(model: Option<&str>, bytes: &[u8]) -> Result<Decoded, DecodeError> {
        decode_binary(&thing(), NOW, model, bytes, &schemas())
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn zlib(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), Compression::best());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn cbor(value: &ciborium::Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(value, &mut out).unwrap();
        out
    }

    #[test]
    fn schemas_parse_and_print() {
        let s = schemas();
        assert_eq!(s.fields("th-v2").unwrap().len(), 2);
        assert_eq!(s.to_string(), "gps-v1=lat,lon,alt;th-v2=temp,hum");
        assert_eq!("".parse::<PackedSchemas>(), Ok(PackedSchemas::default()));
        for bad in ["th", "th v2=temp", "a=temp;a=hum", "a=2temp", "a=temp,,hum"] {
            assert!(bad.parse::<PackedSchemas>().is_err(), "{bad}");
        }
    }

    #[test]
    fn packed_records_decode_big_endian() {
        let mut bytes = packed(NOW as u64, &[21.5, 40.0]);
        bytes.extend(packed(NOW as u64 + 1000, &[22.0, f32::NAN]));
        let out = decode(Some("th-v2"), &bytes).unwrap();
        assert_eq!(out.len(), 2);
        let first = out[0].as_ref().unwrap();
        assert_eq!(first.time_ms, NOW);
        assert_eq!(
            first.measures[0],
            (MeasureName("temp".into()), MeasureValue::Double(21.5))
        );
        // NaN decodes; validation refuses it with its own reason.
        let second = out[1].as_ref().unwrap();
        assert!(matches!(second.measures[1].1, MeasureValue::Double(v) if v.is_nan()));
    }

    #[test]
    fn packed_payloads_need_a_known_model_and_whole_records() {
        let bytes = packed(NOW as u64, &[1.0, 2.0]);
        assert!(matches!(
            decode(None, &bytes),
            Err(DecodeError::UnknownSchema(_))
        ));
        assert!(matches!(
            decode(Some("nope"), &bytes),
            Err(DecodeError::UnknownSchema(_))
        ));
        assert!(matches!(
            decode(Some("th-v2"), &bytes[..15]),
            Err(DecodeError::Malformed(_))
        ));
        assert_eq!(
            decode(Some("th-v2"), &packed(u64::MAX, &[1.0, 2.0])).unwrap()[0],
            Err(DecodeError::BadTimestamp)
        );
    }

    #[test]
    fn compressed_payloads_of_every_format() {
        let json = br#"{"readings":[{"ts":1795600000000,"temp":20.5},{"temp":21}]}"#;
        for bytes in [gzip(json), zlib(json)] {
            let out = decode(None, &bytes).unwrap();
            assert_eq!(out.len(), 2);
            assert_eq!(
                out[1].as_ref().unwrap().measures[0].1,
                MeasureValue::Bigint(21)
            );
        }
        let packed = packed(NOW as u64, &[1.0, 2.0]);
        assert_eq!(decode(Some("th-v2"), &gzip(&packed)).unwrap().len(), 1);
        assert_eq!(decode(Some("th-v2"), &zlib(&packed)).unwrap().len(), 1);
    }

    #[test]
    fn compression_bombs_and_double_compression_are_refused() {
        let bomb = gzip(&vec![b' '; MAX_DECOMPRESSED_BYTES + 10]);
        assert!(bomb.len() < 128 * 1024, "the bomb fits in one message");
        assert!(
            matches!(decode(None, &bomb), Err(DecodeError::Malformed(m)) if m.contains("decompresses"))
        );
        let twice = gzip(&gzip(b"{\"temp\":1.0}"));
        assert!(
            matches!(decode(None, &twice), Err(DecodeError::Malformed(m)) if m.contains("twice"))
        );
    }

    #[test]
    fn cbor_keeps_integers_and_floats_apart() {
        use ciborium::Value as C;
        let doc = C::Map(vec![
            (C::Text("ts".into()), C::Integer(NOW.into())),
            (C::Text("temp".into()), C::Float(23.0)),
            (C::Text("count".into()), C::Integer(23.into())),
            (C::Text("ok".into()), C::Bool(true)),
            (
                C::Text("env".into()),
                C::Map(vec![(C::Text("co2".into()), C::Integer(600.into()))]),
            ),
        ]);
        let out = decode(None, &cbor(&doc)).unwrap();
        let r = out[0].as_ref().unwrap();
        assert_eq!(r.time_ms, NOW);
        let find = |n: &str| {
            r.measures
                .iter()
                .find(|(m, _)| m.0 == n)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(find("temp"), Some(MeasureValue::Double(23.0)));
        assert_eq!(find("count"), Some(MeasureValue::Bigint(23)));
        assert_eq!(find("ok"), Some(MeasureValue::Boolean(true)));
        assert_eq!(find("env_co2"), Some(MeasureValue::Bigint(600)));
    }

    #[test]
    fn cbor_non_finite_and_odd_values_are_refused_with_their_path() {
        use ciborium::Value as C;
        let nan = C::Map(vec![(
            C::Text("env".into()),
            C::Map(vec![(C::Text("temp".into()), C::Float(f64::NAN))]),
        )]);
        assert_eq!(
            decode(None, &cbor(&nan)),
            Err(DecodeError::NotFinite("env_temp".into()))
        );
        let bytes_value = C::Map(vec![(C::Text("blob".into()), C::Bytes(vec![1]))]);
        assert!(matches!(
            decode(None, &cbor(&bytes_value)),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode(None, &[0xa1, 0x61]),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn json_bytes_are_json() {
        let out = decode(Some("th-v2"), b"  {\"temp\": 1.5}").unwrap();
        assert_eq!(
            out[0].as_ref().unwrap().measures[0].1,
            MeasureValue::Double(1.5)
        );
        assert!(matches!(
            decode(None, b"{oops"),
            Err(DecodeError::Malformed(_))
        ));
    }
}
