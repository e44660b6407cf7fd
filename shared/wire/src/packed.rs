//! Packed binary telemetry records, the compact format of `dt/<app>/<thing>/telemetry/<model>`:
//! a big-endian `u64` timestamp in milliseconds since the Unix epoch, then one big-endian IEEE 754
//! `f32` per field of the device model, in the model's field order (the cloud's
//! `SHOAL_PACKED_SCHEMAS`, e.g. `th-v2=temp,hum`). A payload holds one or more records back to
//! back and nothing else. Current timestamps start with `00`, so a packed payload is never
//! mistaken for gzip, zlib, JSON or CBOR.

use alloc::vec::Vec;

use thiserror::Error;

/// Bytes of a record's timestamp.
pub const TIMESTAMP_BYTES: usize = 8;
/// Bytes of one field's value.
pub const FIELD_BYTES: usize = 4;

/// Bytes of one record of a model with `fields` fields.
#[must_use]
pub const fn record_len(fields: usize) -> usize {
    TIMESTAMP_BYTES + FIELD_BYTES * fields
}

/// Appends one record to `out`: `time_ms`, then `values` in the model's field order.
pub fn encode_record(time_ms: u64, values: &[f32], out: &mut Vec<u8>) {
    out.reserve(record_len(values.len()));
    out.extend_from_slice(&time_ms.to_be_bytes());
    for value in values {
        out.extend_from_slice(&value.to_be_bytes());
    }
}

/// Why a payload is not a run of whole records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error(
    "{len} bytes is not a whole number of {record_len}-byte records ({} whole, {} bytes left over)",
    len / record_len,
    len % record_len
)]
pub struct NotWholeRecords {
    /// The payload's length in bytes.
    pub len: usize,
    /// One record's length in bytes.
    pub record_len: usize,
}

/// One record of a payload, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedRecord<'a> {
    /// Milliseconds since the Unix epoch, as the device sent them.
    pub time_ms: u64,
    values: &'a [u8],
}

impl PackedRecord<'_> {
    /// The field values in the model's field order.
    pub fn values(&self) -> impl ExactSizeIterator<Item = f32> + '_ {
        self.values
            .chunks_exact(FIELD_BYTES)
            .map(|raw| f32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]))
    }
}

/// The records of `payload` for a model of `fields` fields.
///
/// # Errors
/// [`NotWholeRecords`] when the payload is empty or its length is not a multiple of
/// [`record_len`]`(fields)`: no byte is ever skipped.
pub fn records(
    payload: &[u8],
    fields: usize,
) -> Result<impl ExactSizeIterator<Item = PackedRecord<'_>>, NotWholeRecords> {
    let record_len = record_len(fields);
    if payload.is_empty() || !payload.len().is_multiple_of(record_len) {
        return Err(NotWholeRecords {
            len: payload.len(),
            record_len,
        });
    }
    Ok(payload.chunks_exact(record_len).map(|record| {
        let (time, values) = record.split_at(TIMESTAMP_BYTES);
        let mut stamp = [0; TIMESTAMP_BYTES];
        stamp.copy_from_slice(time);
        PackedRecord {
            time_ms: u64::from_be_bytes(stamp),
            values,
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;
    use proptest::prelude::*;

    #[test]
    fn the_layout_is_big_endian_time_then_f32_fields() {
        let mut out = Vec::new();
        encode_record(0x0102_0304_0506_0708, &[1.0, -2.5], &mut out);
        assert_eq!(
            out,
            vec![1, 2, 3, 4, 5, 6, 7, 8, 0x3f, 0x80, 0, 0, 0xc0, 0x20, 0, 0]
        );
        let read: Vec<_> = records(&out, 2).unwrap().collect();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].time_ms, 0x0102_0304_0506_0708);
        assert_eq!(read[0].values().collect::<Vec<_>>(), vec![1.0, -2.5]);
    }

    #[test]
    fn partial_records_and_empty_payloads_are_refused() {
        let err = records(&[0; 17], 2).err().unwrap();
        assert_eq!(
            err.to_string(),
            "17 bytes is not a whole number of 16-byte records (1 whole, 1 bytes left over)"
        );
        assert!(records(&[], 2).is_err());
    }

    proptest! {
        #[test]
        fn records_round_trip(
            rows in proptest::collection::vec((any::<u64>(), proptest::collection::vec(any::<f32>(), 3)), 1..20)
        ) {
            let mut out = Vec::new();
            for (time, values) in &rows {
                encode_record(*time, values, &mut out);
            }
            let read: Vec<(u64, Vec<u32>)> = records(&out, 3)
                .unwrap()
                .map(|r| (r.time_ms, r.values().map(f32::to_bits).collect()))
                .collect();
            let sent: Vec<(u64, Vec<u32>)> = rows
                .iter()
                .map(|(t, v)| (*t, v.iter().map(|x| x.to_bits()).collect()))
                .collect();
            prop_assert_eq!(read, sent);
        }
    }
}
