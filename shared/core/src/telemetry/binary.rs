//! Binary payloads, told apart by their first bytes:
//!
//! | First bytes | Format |
//! | --- | --- |
//! | `1f 8b` | gzip, one member or several back to back: decompressed, then detected again |
//! | `78 01`, `78 5e`, `78 9c`, `78 da` (zlib header) | zlib, one stream or several back to back: decompressed, then detected again |
//! | `{` (after whitespace) | JSON, as on the JSON topic |
//! | `a0`–`bf` (CBOR map) | a CBOR map or a CBOR sequence of maps (RFC 8742), read like the JSON shapes |
//! | anything else | packed records of the topic's device model |
//!
//! Packed records: the layout of [`shoal_wire::packed`] (a big-endian u64 timestamp in
//! milliseconds, then one big-endian f32 per field), the fields of each model from
//! `SHOAL_PACKED_SCHEMAS`, e.g. `th-v2=temp,hum;gps-v1=lat,lon,alt`.
//!
//! Every byte of a payload is either decoded or the reason the payload is refused: trailing
//! bytes after the last stream, item or record are never skipped.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::str::FromStr;

use serde_json::{Map, Number, Value};

use shoal_wire::packed;

use super::decode::{Context, DecodeError, Decoded, check_reading_count, decode_json};
use super::json::{CheckedJson, MAX_CONTAINERS};
use super::reading::{MeasureName, Reading};

/// Largest decompressed payload accepted: a 128 KB message must not inflate into a memory bomb.
pub const MAX_DECOMPRESSED_BYTES: usize = 1024 * 1024;

/// Field lists of packed records, by device model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackedSchemas(BTreeMap<String, Vec<MeasureName>>);

impl PackedSchemas {
    /// No schemas (`SHOAL_PACKED_SCHEMAS` unset): every packed payload is refused as
    /// `unknown_binary_schema`.
    pub const fn empty() -> Self {
        Self(BTreeMap::new())
    }

    /// The measure names of `model`'s packed record fields, in record order (one big-endian f32
    /// each after the u64 timestamp); `None` when no schema names that model.
    pub fn fields(&self, model: &str) -> Option<&[MeasureName]> {
        self.0.get(model).map(Vec::as_slice)
    }
}

impl FromStr for PackedSchemas {
    type Err = String;

    /// `model=field,field;model=field`: models of `[a-zA-Z0-9_-]`, fields that are valid measure
    /// names, no model twice.
    fn from_str(text: &str) -> Result<Self, String> {
        let lists = crate::lists::keyed_lists(text, |field| {
            super::validate::check_measure_name(field).map_err(str::to_owned)
        })
        .map_err(|e| e.to_string())?;
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

fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

/// Inflates every stream of a compressed payload: gzip members back to back (RFC 1952 §2.2: a
/// gzip file is a series of members, as appending writers produce) or zlib streams back to back,
/// at most [`MAX_DECOMPRESSED_BYTES`] in all. Anything after the last stream that is not another
/// stream of the same kind refuses the payload: no byte is ignored.
fn inflate(bytes: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let gzip = is_gzip(bytes);
    let kind = if gzip { "gzip member" } else { "zlib stream" };
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        if !(if gzip { is_gzip(rest) } else { is_zlib(rest) }) {
            return Err(DecodeError::Malformed(format!(
                "{} bytes after the last {kind} are not another {kind}",
                rest.len()
            )));
        }
        let budget = (MAX_DECOMPRESSED_BYTES + 1 - out.len()) as u64;
        // The bufread decoders consume exactly the stream from `rest`, leaving what follows.
        let read = if gzip {
            let mut decoder = flate2::bufread::GzDecoder::new(rest);
            let read = (&mut decoder).take(budget).read_to_end(&mut out);
            rest = decoder.into_inner();
            read
        } else {
            let mut decoder = flate2::bufread::ZlibDecoder::new(rest);
            let read = (&mut decoder).take(budget).read_to_end(&mut out);
            rest = decoder.into_inner();
            read
        };
        read.map_err(|e| DecodeError::Malformed(format!("decompression failed: {e}")))?;
        if out.len() > MAX_DECOMPRESSED_BYTES {
            return Err(DecodeError::Malformed(format!(
                "payload decompresses to more than {MAX_DECOMPRESSED_BYTES} bytes"
            )));
        }
    }
    Ok(out)
}

/// Decodes a binary payload. `model` (the topic's last level) selects the packed schema; the
/// self-describing formats ignore it.
///
/// # Errors
/// A [`DecodeError`] when the payload as a whole cannot be read (its code is the quarantine
/// reason); refusals of single readings are inside the `Ok` list.
pub fn decode_binary(
    ctx: &Context<'_>,
    model: Option<&str>,
    bytes: &[u8],
    schemas: &PackedSchemas,
) -> Result<Decoded, DecodeError> {
    if is_gzip(bytes) || is_zlib(bytes) {
        let inner = inflate(bytes)?;
        if is_gzip(&inner) || is_zlib(&inner) {
            return Err(DecodeError::Malformed("payload is compressed twice".into()));
        }
        return decode_uncompressed(ctx, model, &inner, schemas);
    }
    decode_uncompressed(ctx, model, bytes, schemas)
}

fn decode_uncompressed(
    ctx: &Context<'_>,
    model: Option<&str>,
    bytes: &[u8],
    schemas: &PackedSchemas,
) -> Result<Decoded, DecodeError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => match CheckedJson::from_slice(bytes) {
            Ok(CheckedJson {
                duplicate_key: Some(key),
                ..
            }) => Err(DecodeError::DuplicateKey(key)),
            Ok(CheckedJson {
                value: Value::Object(fields),
                ..
            }) => decode_json(ctx, fields),
            Ok(_) => Err(DecodeError::NotAnObject),
            Err(e) => Err(DecodeError::Malformed(format!("invalid JSON: {e}"))),
        },
        Some(0xa0..=0xbf) => decode_cbor(ctx, bytes),
        // The self-described CBOR tag 55799 (RFC 8949 §3.4.6) announces CBOR.
        Some(0xd9) if bytes.starts_with(&[0xd9, 0xd9, 0xf7]) => decode_cbor(ctx, bytes),
        _ => decode_packed(ctx, model, bytes, schemas),
    }
}

/// A CBOR map, or a CBOR sequence of maps (RFC 8742: items back to back), each read like a JSON
/// payload; their readings follow each other. A byte that does not belong to a whole item refuses
/// the payload.
fn decode_cbor(ctx: &Context<'_>, bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let mut rest = bytes;
    let mut readings = Vec::new();
    let mut item = 0;
    let mut budget = MAX_CONTAINERS;
    while !rest.is_empty() {
        // `&mut &[u8]` advances past exactly the item read.
        let value: ciborium::Value = ciborium::from_reader(&mut rest).map_err(|e| {
            DecodeError::Malformed(if item == 0 {
                format!("invalid CBOR: {e}")
            } else {
                format!("invalid CBOR after item {item} (a CBOR sequence holds whole items): {e}")
            })
        })?;
        match cbor_to_json(value, "", &mut budget)? {
            Value::Object(fields) => readings.extend(decode_json(ctx, fields)?),
            _ => return Err(DecodeError::NotAnObject),
        }
        check_reading_count(readings.len())?;
        item += 1;
    }
    Ok(readings)
}

/// CBOR → the JSON shapes. A non-finite float is refused with its path, since JSON (and
/// Timestream) cannot hold it; so is a map key given twice. Maps and arrays count against
/// `budget` (as JSON's do: [`MAX_CONTAINERS`]).
fn cbor_to_json(
    value: ciborium::Value,
    path: &str,
    budget: &mut usize,
) -> Result<Value, DecodeError> {
    use ciborium::Value as C;
    if matches!(value, C::Array(_) | C::Map(_)) {
        *budget = budget.checked_sub(1).ok_or_else(|| {
            DecodeError::Malformed(format!(
                "more than {MAX_CONTAINERS} maps and arrays in one payload"
            ))
        })?;
    }
    Ok(match value {
        C::Null => Value::Null,
        C::Bool(b) => Value::Bool(b),
        C::Integer(i) => {
            let wide = i128::from(i);
            match i64::try_from(wide) {
                Ok(narrow) => Value::from(narrow),
                Err(_) => match u64::try_from(wide) {
                    Ok(unsigned) => Value::from(unsigned),
                    Err(_) => {
                        return Err(DecodeError::BadNumber(
                            path.to_owned(),
                            format!("{wide} is outside the 64-bit range"),
                        ));
                    }
                },
            }
        }
        C::Float(f) => Value::Number(
            Number::from_f64(f).ok_or_else(|| DecodeError::NotFinite(path.to_owned()))?,
        ),
        C::Text(s) => Value::String(s),
        C::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|v| cbor_to_json(v, path, budget))
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
                let value = cbor_to_json(v, &child, budget)?;
                if map.insert(key, value).is_some() {
                    return Err(DecodeError::DuplicateKey(child));
                }
            }
            Value::Object(map)
        }
        C::Tag(_, inner) => cbor_to_json(*inner, path, budget)?,
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
    ctx: &Context<'_>,
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
    let records = packed::records(bytes, fields.len())
        .map_err(|e| {
            DecodeError::Malformed(format!(
                "{} bytes is not a whole number of {}-byte {model} records ({} whole, {} bytes left over)",
                e.len,
                e.record_len,
                e.len / e.record_len,
                e.len % e.record_len
            ))
        })?;
    check_reading_count(records.len())?;
    Ok(records
        .map(|record| {
            let time_ms = i64::try_from(record.time_ms).map_err(|_| DecodeError::BadTimestamp)?;
            let measures = fields
                .iter()
                .zip(record.values())
                .map(|(name, value)| {
                    Ok((name.clone(), ctx.types.float(&name.0, f64::from(value))?))
                })
                .collect::<Result<_, DecodeError>>()?;
            Ok(Reading {
                thing: ctx.thing.clone(),
                time_ms,
                measures,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ThingName;
    use crate::telemetry::reading::MeasureValue;
    use crate::telemetry::schema::MeasureTypes;
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

    fn decode_typed(
        model: Option<&str>,
        bytes: &[u8],
        types: &MeasureTypes,
    ) -> Result<Decoded, DecodeError> {
        let thing = thing();
        let ctx = Context {
            thing: &thing,
            received_at_ms: NOW,
            types,
        };
        decode_binary(&ctx, model, bytes, &schemas())
    }

    fn decode(model: Option<&str>, bytes: &[u8]) -> Result<Decoded, DecodeError> {
        decode_typed(model, bytes, &MeasureTypes::empty())
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
                MeasureValue::Double(21.0)
            );
        }
        let packed = packed(NOW as u64, &[1.0, 2.0]);
        assert_eq!(decode(Some("th-v2"), &gzip(&packed)).unwrap().len(), 1);
        assert_eq!(decode(Some("th-v2"), &zlib(&packed)).unwrap().len(), 1);
    }

    fn two_th_v2_records(first: u64) -> Vec<u8> {
        let mut bytes = packed(first, &[21.5, 40.0]);
        bytes.extend(packed(first + 1000, &[21.75, 41.0]));
        bytes
    }

    #[test]
    fn every_gzip_member_and_zlib_stream_is_decoded() {
        // Two gzip members back to back, two packed records each: four readings, in order.
        let mut members = gzip(&two_th_v2_records(NOW as u64));
        members.extend(gzip(&two_th_v2_records(NOW as u64 + 2000)));
        let out = decode(Some("th-v2"), &members).unwrap();
        let times: Vec<i64> = out.iter().map(|r| r.as_ref().unwrap().time_ms).collect();
        assert_eq!(times, vec![NOW, NOW + 1000, NOW + 2000, NOW + 3000]);
        // A member may split a record: what counts is the decompressed whole.
        let whole = two_th_v2_records(NOW as u64);
        let mut split = gzip(&whole[..10]);
        split.extend(gzip(&whole[10..]));
        assert_eq!(decode(Some("th-v2"), &split).unwrap().len(), 2);
        let mut streams = zlib(br#"{"readings":[{"temp":1.5}]"#);
        streams.extend(zlib(b"}"));
        assert_eq!(decode(None, &streams).unwrap().len(), 1);
    }

    #[test]
    fn bytes_after_the_last_decoded_unit_refuse_the_payload() {
        let record = two_th_v2_records(NOW as u64);
        let mut cases: Vec<(&str, Option<&str>, Vec<u8>)> = Vec::new();
        let mut gz = gzip(&record);
        gz.extend_from_slice(b"junk");
        cases.push(("gzip + junk", Some("th-v2"), gz));
        let mut gz_zlib = gzip(&record);
        gz_zlib.extend(zlib(&record));
        cases.push(("gzip + zlib", Some("th-v2"), gz_zlib));
        let mut z = zlib(&record);
        z.push(0);
        cases.push(("zlib + 1 byte", Some("th-v2"), z));
        let mut partial = record.clone();
        partial.extend_from_slice(&record[..9]);
        cases.push(("a partial record", Some("th-v2"), partial));
        cases.push((
            "two JSON documents",
            None,
            br#"{"t":1.0}{"t":2.0}"#.to_vec(),
        ));
        let mut cbor_junk = cbor(&ciborium::Value::Map(vec![(
            ciborium::Value::Text("t".into()),
            ciborium::Value::Float(1.0),
        )]));
        cbor_junk.push(0xff);
        cases.push(("CBOR + a stray byte", None, cbor_junk));
        let mut truncated = gzip(&record);
        truncated.truncate(truncated.len() - 3);
        cases.push(("a truncated gzip member", Some("th-v2"), truncated));
        for (what, model, bytes) in cases {
            let err = decode(model, &bytes).unwrap_err();
            assert_eq!(err.code(), "undecodable", "{what}: {err}");
        }
    }

    #[test]
    fn a_cbor_sequence_is_every_item_s_readings() {
        use ciborium::Value as C;
        let item = |t: f64| C::Map(vec![(C::Text("temp".into()), C::Float(t))]);
        let mut bytes = cbor(&item(1.5));
        bytes.extend(cbor(&item(2.5)));
        bytes.extend(cbor(&C::Map(vec![(
            C::Text("readings".into()),
            C::Array(vec![item(3.5), item(4.5)]),
        )])));
        let out = decode(None, &bytes).unwrap();
        let temps: Vec<MeasureValue> = out
            .iter()
            .map(|r| r.as_ref().unwrap().measures[0].1.clone())
            .collect();
        assert_eq!(
            temps,
            [1.5, 2.5, 3.5, 4.5].map(MeasureValue::Double).to_vec()
        );
        // A non-map item refuses the whole sequence.
        let mut bad = cbor(&item(1.5));
        bad.extend(cbor(&C::Integer(7.into())));
        assert_eq!(decode(None, &bad), Err(DecodeError::NotAnObject));
    }

    #[test]
    fn cbor_maps_are_budgeted_and_self_described_cbor_is_cbor() {
        use ciborium::Value as C;
        let tiny = C::Map(vec![(
            C::Text(String::new()),
            C::Map(vec![(C::Text(String::new()), C::Integer(1.into()))]),
        )]);
        let doc = C::Map(vec![(
            C::Text("readings".into()),
            C::Array(vec![tiny; MAX_CONTAINERS]),
        )]);
        let err = decode(None, &gzip(&cbor(&doc))).unwrap_err();
        assert!(err.to_string().contains("maps and arrays"), "{err}");
        let mut described = vec![0xd9, 0xd9, 0xf7];
        described.extend(cbor(&C::Map(vec![(C::Text("temp".into()), C::Float(1.5))])));
        assert_eq!(decode(None, &described).unwrap().len(), 1);
    }

    #[test]
    fn duplicate_keys_are_refused_in_json_and_cbor() {
        use ciborium::Value as C;
        assert_eq!(
            decode(None, br#"{"temp": 21.5, "temp": 99}"#),
            Err(DecodeError::DuplicateKey("temp".into()))
        );
        let doc = C::Map(vec![(
            C::Text("env".into()),
            C::Map(vec![
                (C::Text("co2".into()), C::Integer(1.into())),
                (C::Text("co2".into()), C::Integer(2.into())),
            ]),
        )]);
        assert_eq!(
            decode(None, &cbor(&doc)),
            Err(DecodeError::DuplicateKey("env_co2".into()))
        );
    }

    #[test]
    fn packed_payloads_over_the_reading_cap_are_refused_whole() {
        let bytes: Vec<u8> = (0..=crate::telemetry::decode::MAX_READINGS_PER_MESSAGE as u64)
            .flat_map(|i| packed(NOW as u64 + i, &[1.0, 2.0]))
            .collect();
        assert_eq!(
            decode(Some("th-v2"), &gzip(&bytes)),
            Err(DecodeError::TooManyReadings(10_001))
        );
    }

    #[test]
    fn packed_fields_follow_the_declared_types() {
        let types: MeasureTypes = "bigint=hum".parse().unwrap();
        let out = decode_typed(Some("th-v2"), &packed(NOW as u64, &[21.5, 40.0]), &types).unwrap();
        assert_eq!(
            out[0].as_ref().unwrap().measures[1].1,
            MeasureValue::Bigint(40)
        );
        let out = decode_typed(Some("th-v2"), &packed(NOW as u64, &[21.5, 40.5]), &types).unwrap();
        assert_eq!(out[0].as_ref().unwrap_err().code(), "type_mismatch");
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
    fn cbor_numbers_are_typed_by_name() {
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
        assert_eq!(find("count"), Some(MeasureValue::Double(23.0)));
        assert_eq!(find("ok"), Some(MeasureValue::Boolean(true)));
        assert_eq!(find("env_co2"), Some(MeasureValue::Double(600.0)));
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
