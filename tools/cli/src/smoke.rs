//! `shoal smoke`: one pass through the AWS services Shoal builds on, against whatever endpoint is
//! configured. It creates (or reuses) a thing, updates its classic shadow and reads back the delta
//! AWS IoT computed, and writes one telemetry record to Timestream, printing each step.

use std::io::Write;

use anyhow::{Context, Result, bail};
use aws_sdk_iot::types::AttributePayload;
use aws_sdk_timestreamwrite::types::{Dimension, MeasureValue, MeasureValueType, Record, TimeUnit};
use aws_smithy_types::Blob;
use serde_json::{Value, json};
use shoal_aws::client::{AwsResultExt, ClientFactory, EdgeError};
use shoal_aws::config::{TimestreamName, TimestreamTarget, vars};
use shoal_core::clock::now_ms;
use shoal_core::ids::ThingName;

/// `shoal smoke`'s arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Thing to create or reuse.
    #[arg(long, default_value = "shoal-smoke-1")]
    pub thing: ThingName,
    /// Timestream database (created if missing).
    #[arg(long, env = vars::TIMESTREAM_DATABASE, default_value = "shoal_local")]
    pub database: TimestreamName,
    /// Timestream table (created if missing).
    #[arg(long, env = vars::TIMESTREAM_TABLE, default_value = "telemetry")]
    pub table: TimestreamName,
}

/// `shoal smoke`: the scenario, printed to stdout.
///
/// # Errors
/// As [`scenario`].
pub async fn run(factory: &ClientFactory, args: Args) -> Result<()> {
    let target = TimestreamTarget {
        database: args.database,
        table: args.table,
    };
    scenario(factory, &args.thing, &target, &mut std::io::stdout()).await?;
    Ok(())
}

/// What the smoke run did, for callers that check it (the integration test does).
#[derive(Debug, Clone, PartialEq)]
pub struct SmokeReport {
    pub thing_arn: String,
    pub shadow_version: i64,
    pub delta: Value,
    pub records_ingested: i32,
}

/// Desired and reported state that differ in exactly one key, so the delta is known.
fn shadow_update() -> Value {
    json!({
        "state": {
            "desired": {"led": "on", "sample_interval_s": 60},
            "reported": {"led": "off", "sample_interval_s": 60}
        }
    })
}

fn measure(name: &str, value: String, kind: MeasureValueType) -> Result<MeasureValue> {
    Ok(MeasureValue::builder()
        .name(name)
        .value(value)
        .r#type(kind)
        .build()?)
}

/// The smoke scenario against `factory`'s endpoint, each step printed to `out`.
///
/// # Errors
/// The first AWS call that fails, named, or a read-back that differs from what was written.
pub async fn scenario(
    factory: &ClientFactory,
    thing: &ThingName,
    target: &TimestreamTarget,
    out: &mut impl Write,
) -> Result<SmokeReport> {
    let endpoint = factory
        .sdk_config()
        .endpoint_url()
        .unwrap_or("AWS (default endpoints)");
    writeln!(out, "endpoint    {endpoint}")?;

    // 1. The thing: reused when it exists (moto's CreateThing replaces an existing thing and its
    //    shadows, AWS's leaves it alone; describing first behaves the same on both).
    let iot = factory.iot();
    let described = match describe_thing(&iot, thing).await {
        Err(e) if e.is_code("ResourceNotFoundException") => {
            iot.create_thing()
                .thing_name(thing.as_str())
                .attribute_payload(
                    AttributePayload::builder()
                        .attributes("shoal_smoke", "true")
                        .build(),
                )
                .send()
                .await
                .aws("iot", "CreateThing")?;
            describe_thing(&iot, thing).await?
        }
        other => other?,
    };
    let thing_arn = described.thing_arn().unwrap_or_default().to_owned();
    writeln!(
        out,
        "thing       {thing} ready: {thing_arn} (registry version {})",
        described.version()
    )?;

    // 2. Its classic shadow: update desired + reported, read back what AWS IoT computed.
    let data = factory.iot_data();
    let update = shadow_update();
    data.update_thing_shadow()
        .thing_name(thing.as_str())
        .payload(Blob::new(serde_json::to_vec(&update)?))
        .send()
        .await
        .aws("iot-data", "UpdateThingShadow")?;
    let got = data
        .get_thing_shadow()
        .thing_name(thing.as_str())
        .send()
        .await
        .aws("iot-data", "GetThingShadow")?;
    let document: Value = serde_json::from_slice(
        got.payload()
            .context("GetThingShadow returned no document")?
            .as_ref(),
    )
    .context("GetThingShadow returned a document that is not JSON")?;
    let shadow_version = document["version"]
        .as_i64()
        .context("shadow document has no version")?;
    let delta = document["state"]["delta"].clone();
    writeln!(
        out,
        "shadow      version {shadow_version}: desired {} reported {} -> delta {delta}",
        document["state"]["desired"], document["state"]["reported"]
    )?;

    // 3. One multi-measure telemetry record.
    let timestream = factory.timestream_write().await?;
    crate::resources::ensure_timestream_table(&timestream, target).await?;
    let temperature = 21.5_f64;
    let rssi = -67_i64;
    let record = Record::builder()
        .dimensions(
            Dimension::builder()
                .name("thing_name")
                .value(thing.as_str())
                .build()?,
        )
        .measure_name("reading")
        .measure_value_type(MeasureValueType::Multi)
        .measure_values(measure(
            "temperature",
            temperature.to_string(),
            MeasureValueType::Double,
        )?)
        .measure_values(measure("rssi", rssi.to_string(), MeasureValueType::Bigint)?)
        .time(now_ms().to_string())
        .time_unit(TimeUnit::Milliseconds)
        .build();
    let written = timestream
        .write_records()
        .database_name(target.database.as_str())
        .table_name(target.table.as_str())
        .records(record)
        .send()
        .await
        .aws("timestream-write", "WriteRecords")?;
    let records_ingested = written.records_ingested().map_or(0, |r| r.total());
    if records_ingested != 1 {
        bail!("Timestream ingested {records_ingested} records; expected 1");
    }
    writeln!(
        out,
        "timestream  {}.{}: {records_ingested} record written (temperature={temperature} DOUBLE, rssi={rssi} BIGINT)",
        target.database, target.table
    )?;

    Ok(SmokeReport {
        thing_arn,
        shadow_version,
        delta,
        records_ingested,
    })
}

async fn describe_thing(
    iot: &aws_sdk_iot::Client,
    thing: &ThingName,
) -> Result<aws_sdk_iot::operation::describe_thing::DescribeThingOutput, EdgeError> {
    iot.describe_thing()
        .thing_name(thing.as_str())
        .send()
        .await
        .aws("iot", "DescribeThing")
}
