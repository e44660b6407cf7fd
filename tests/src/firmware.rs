//! A fresh firmware registry on the local endpoint: table, image bucket and a KMS key.

use aws_sdk_kms::types::{KeySpec, KeyUsageType};
use shoal_aws::client::{AwsResultExt, ClientFactory};
use shoal_aws::config::{BucketName, KmsKeyRef};
use shoal_aws::firmware_table::FirmwareTable;

use crate::local::{self, unique_name};

/// A KMS key of `spec` and `usage`.
pub async fn key(factory: &ClientFactory, spec: KeySpec, usage: KeyUsageType) -> KmsKeyRef {
    let created = factory
        .kms()
        .create_key()
        .key_spec(spec)
        .key_usage(usage)
        .description("shoal firmware test")
        .send()
        .await
        .aws("kms", "CreateKey")
        .unwrap();
    created.key_metadata().unwrap().key_id().parse().unwrap()
}

/// A fresh firmware table, bucket and KMS key of `spec`.
pub async fn registry(
    spec: KeySpec,
    usage: KeyUsageType,
) -> (ClientFactory, FirmwareTable, BucketName, KmsKeyRef) {
    let factory = local::factory().await;
    let table = FirmwareTable::new(factory.dynamodb(), unique_name("firmware").parse().unwrap());
    table.ensure_exists().await.unwrap();
    let bucket: BucketName = unique_name("firmware-images").parse().unwrap();
    factory
        .s3()
        .create_bucket()
        .bucket(bucket.as_str())
        .send()
        .await
        .aws("s3", "CreateBucket")
        .unwrap();
    let signing = key(&factory, spec, usage).await;
    (factory, table, bucket, signing)
}
