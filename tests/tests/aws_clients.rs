//! One test per AWS client of the factory: each makes a real call against the local endpoint and
//! reads the result back. Start the endpoint with `make stack-up` (make test does it for you).

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use aws_sdk_iot::types::AttributePayload;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeySpec, KeyUsageType, MessageType, SigningAlgorithmSpec};
use aws_sdk_timestreamwrite::types::{Dimension, MeasureValue, MeasureValueType, Record, TimeUnit};
use serde_json::{Value, json};
use shoal_aws::client::{AwsResultExt, ClientFactory, EdgeErrorKind, Retryable};
use shoal_integration_tests::local::{self, unique_name};

#[tokio::test]
async fn iot_registry_creates_and_describes_a_thing() {
    let factory = local::factory().await;
    let iot = factory.iot();
    let thing = unique_name("thing");
    let created = iot
        .create_thing()
        .thing_name(&thing)
        .attribute_payload(
            AttributePayload::builder()
                .attributes("model", "sensor-v2")
                .attributes("batch", "2026-11")
                .build(),
        )
        .send()
        .await
        .aws("iot", "CreateThing")
        .unwrap();
    assert_eq!(created.thing_name(), Some(thing.as_str()));

    let described = iot
        .describe_thing()
        .thing_name(&thing)
        .send()
        .await
        .aws("iot", "DescribeThing")
        .unwrap();
    assert_eq!(described.thing_arn(), created.thing_arn());
    let attributes = described.attributes().unwrap();
    assert_eq!(
        attributes.get("model").map(String::as_str),
        Some("sensor-v2")
    );
    assert_eq!(attributes.get("batch").map(String::as_str), Some("2026-11"));
}

async fn shadow(factory: &ClientFactory, thing: &str, name: Option<&str>) -> Value {
    let got = factory
        .iot_data()
        .get_thing_shadow()
        .thing_name(thing)
        .set_shadow_name(name.map(str::to_owned))
        .send()
        .await
        .aws("iot-data", "GetThingShadow")
        .unwrap();
    serde_json::from_slice(got.payload().unwrap().as_ref()).unwrap()
}

#[tokio::test]
async fn iot_data_plane_updates_shadows_and_reads_back_the_delta() {
    let factory = local::factory().await;
    let thing = unique_name("shadowed");
    factory
        .iot()
        .create_thing()
        .thing_name(&thing)
        .send()
        .await
        .aws("iot", "CreateThing")
        .unwrap();
    let data = factory.iot_data();
    let update = |doc: Value, name: Option<&'static str>| {
        data.update_thing_shadow()
            .thing_name(&thing)
            .set_shadow_name(name.map(str::to_owned))
            .payload(Blob::new(serde_json::to_vec(&doc).unwrap()))
            .send()
    };

    update(
        json!({"state": {"desired": {"led": "on", "fw": "1.2.0"}, "reported": {"led": "off", "fw": "1.2.0"}}}),
        None,
    )
    .await
    .aws("iot-data", "UpdateThingShadow")
    .unwrap();
    let classic = shadow(&factory, &thing, None).await;
    assert_eq!(classic["version"], 1);
    assert_eq!(classic["state"]["delta"], json!({"led": "on"}));

    // Reporting the desired value clears the delta and bumps the version.
    update(json!({"state": {"reported": {"led": "on"}}}), None)
        .await
        .aws("iot-data", "UpdateThingShadow")
        .unwrap();
    let classic = shadow(&factory, &thing, None).await;
    assert_eq!(classic["version"], 2);
    assert!(classic["state"].get("delta").is_none(), "{classic}");

    // Named shadows are separate documents.
    update(
        json!({"state": {"desired": {"target": "2.0.0"}}}),
        Some("ota"),
    )
    .await
    .aws("iot-data", "UpdateThingShadow")
    .unwrap();
    let ota = shadow(&factory, &thing, Some("ota")).await;
    assert_eq!(ota["state"]["desired"], json!({"target": "2.0.0"}));
    assert_eq!(ota["version"], 1);
}

#[tokio::test]
async fn dynamodb_puts_and_gets_an_item() {
    let factory = local::factory().await;
    let db = factory.dynamodb();
    let table = unique_name("devices");
    db.create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("thing_name")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("thing_name")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .aws("dynamodb", "CreateTable")
        .unwrap();
    db.put_item()
        .table_name(&table)
        .item("thing_name", AttributeValue::S("dev-1".into()))
        .item("firmware", AttributeValue::S("1.10.0".into()))
        .item("online", AttributeValue::Bool(true))
        .send()
        .await
        .aws("dynamodb", "PutItem")
        .unwrap();
    let item = db
        .get_item()
        .table_name(&table)
        .key("thing_name", AttributeValue::S("dev-1".into()))
        .consistent_read(true)
        .send()
        .await
        .aws("dynamodb", "GetItem")
        .unwrap()
        .item
        .expect("the item just written");
    assert_eq!(item["firmware"], AttributeValue::S("1.10.0".into()));
    assert_eq!(item["online"], AttributeValue::Bool(true));
}

#[tokio::test]
async fn s3_puts_and_gets_an_object_path_style() {
    let factory = local::factory().await;
    assert!(
        factory.configured_endpoint("S3").is_some(),
        "the tests run against a configured endpoint, so S3 must use path-style addressing"
    );
    let s3 = factory.s3();
    let bucket = unique_name("archive");
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .aws("s3", "CreateBucket")
        .unwrap();
    let key = "telemetry/year=2026/month=11/day=25/hour=10/batch-1.bin";
    let body = b"\x00\x01shoal\xff".to_vec();
    s3.put_object()
        .bucket(&bucket)
        .key(key)
        .body(body.clone().into())
        .send()
        .await
        .aws("s3", "PutObject")
        .unwrap();
    let got = s3
        .get_object()
        .bucket(&bucket)
        .key(key)
        .send()
        .await
        .aws("s3", "GetObject")
        .unwrap();
    let bytes = got.body.collect().await.unwrap().into_bytes();
    assert_eq!(bytes.as_ref(), body.as_slice());
}

#[tokio::test]
async fn kms_signs_a_digest_and_verifies_it() {
    let factory = local::factory().await;
    let kms = factory.kms();
    let key = kms
        .create_key()
        .key_spec(KeySpec::EccNistP256)
        .key_usage(KeyUsageType::SignVerify)
        .description("shoal integration test")
        .send()
        .await
        .aws("kms", "CreateKey")
        .unwrap();
    let key_id = key.key_metadata().unwrap().key_id().to_owned();
    let digest = [7u8; 32];
    let signed = kms
        .sign()
        .key_id(&key_id)
        .message(Blob::new(digest))
        .message_type(MessageType::Digest)
        .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
        .send()
        .await
        .aws("kms", "Sign")
        .unwrap();
    let signature = signed.signature().unwrap().clone();

    let verify = |message: [u8; 32]| {
        kms.verify()
            .key_id(&key_id)
            .message(Blob::new(message))
            .message_type(MessageType::Digest)
            .signature(signature.clone())
            .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
            .send()
    };
    let good = verify(digest).await.aws("kms", "Verify").unwrap();
    assert!(good.signature_valid());

    // A different digest must not verify: moto answers signature_valid=false, AWS KMS an error.
    match verify([8u8; 32]).await.aws("kms", "Verify") {
        Ok(bad) => assert!(!bad.signature_valid()),
        Err(e) => assert!(e.is_code("KMSInvalidSignatureException"), "{e}"),
    }
}

#[tokio::test]
async fn timestream_writes_a_record_that_the_endpoint_holds() {
    let factory = local::factory().await;
    let client = factory
        .timestream_write()
        .await
        .expect("no endpoint discovery against a configured endpoint");
    let database = unique_name("db");
    let table = "telemetry";
    client
        .create_database()
        .database_name(&database)
        .send()
        .await
        .aws("timestream-write", "CreateDatabase")
        .unwrap();
    client
        .create_table()
        .database_name(&database)
        .table_name(table)
        .send()
        .await
        .aws("timestream-write", "CreateTable")
        .unwrap();
    let measure = |name: &str, value: &str, kind| {
        MeasureValue::builder()
            .name(name)
            .value(value)
            .r#type(kind)
            .build()
            .unwrap()
    };
    let record = Record::builder()
        .dimensions(
            Dimension::builder()
                .name("thing_name")
                .value("dev-7")
                .build()
                .unwrap(),
        )
        .measure_name("reading")
        .measure_value_type(MeasureValueType::Multi)
        .measure_values(measure("temperature", "23.0", MeasureValueType::Double))
        .measure_values(measure("rssi", "-70", MeasureValueType::Bigint))
        .time("1764064800000")
        .time_unit(TimeUnit::Milliseconds)
        .version(3)
        .build();
    let written = client
        .write_records()
        .database_name(&database)
        .table_name(table)
        .records(record)
        .send()
        .await
        .aws("timestream-write", "WriteRecords")
        .unwrap();
    assert_eq!(written.records_ingested().unwrap().total(), 1);

    let records = local::moto_timestream_records(&database, table);
    assert_eq!(records.len(), 1, "{records:#?}");
    let r = &records[0];
    assert_eq!(
        r["Dimensions"],
        json!([{"Name": "thing_name", "Value": "dev-7"}])
    );
    assert_eq!(r["MeasureName"], "reading");
    assert_eq!(r["Time"], "1764064800000");
    assert_eq!(r["Version"], 3);
    assert_eq!(
        r["MeasureValues"],
        json!([
            {"Name": "temperature", "Value": "23.0", "Type": "DOUBLE"},
            {"Name": "rssi", "Value": "-70", "Type": "BIGINT"}
        ])
    );
}

#[tokio::test]
async fn a_closed_endpoint_is_reported_as_unreachable() {
    // Needs no local stack: a port nobody listens on.
    let err = local::unreachable_factory()
        .dynamodb()
        .list_tables()
        .send()
        .await
        .aws("dynamodb", "ListTables")
        .unwrap_err();
    assert_eq!(err.kind, EdgeErrorKind::Unreachable, "{err}");
    assert!(err.is_retryable());
    assert!(
        err.to_string()
            .starts_with("dynamodb ListTables failed (endpoint unreachable)"),
        "{err}"
    );
}
