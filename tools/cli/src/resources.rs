//! `shoal init-local`: the data resources infra/template.yaml creates on AWS (Timestream database
//! and table, archive and firmware buckets, DynamoDB tables, the firmware signing key), created on
//! a local endpoint so functions and tools can run there.
//! Every step is idempotent: what exists is left alone.

use std::io::Write;

use anyhow::Result;
use shoal_aws::client::{AwsResultExt, ClientFactory, done_or_already};
use shoal_aws::config::{BucketName, TableName, TimestreamName, TimestreamTarget, vars};
use shoal_aws::device_table::DeviceTable;
use shoal_aws::firmware_table::FirmwareTable;
use shoal_aws::manifest_table::ManifestTable;
use shoal_aws::rollout_table::RolloutTable;

/// `shoal init-local`'s arguments: the resources' names, defaulting to the local stack's.
#[derive(Debug, clap::Args)]
pub struct InitLocalArgs {
    #[arg(long, env = vars::TIMESTREAM_DATABASE, default_value = "shoal_local")]
    pub database: TimestreamName,
    #[arg(long, env = vars::TIMESTREAM_TABLE, default_value = "telemetry")]
    pub table: TimestreamName,
    #[arg(long, env = vars::ARCHIVE_BUCKET, default_value = "shoal-local-archive")]
    pub bucket: BucketName,
    #[arg(long, env = vars::MANIFEST_TABLE, default_value = "shoal-local-manifest")]
    pub manifest_table: TableName,
    #[arg(long, env = vars::DEVICE_TABLE, default_value = "shoal-local-devices")]
    pub device_table: TableName,
    #[arg(long, env = vars::FIRMWARE_TABLE, default_value = "shoal-local-firmware")]
    pub firmware_table: TableName,
    #[arg(long, env = vars::FIRMWARE_BUCKET, default_value = "shoal-local-firmware")]
    pub firmware_bucket: BucketName,
    #[arg(long, env = vars::ROLLOUT_TABLE, default_value = "shoal-local-rollouts")]
    pub rollout_table: TableName,
    /// Alias of the firmware signing key (created with the key when missing).
    #[arg(long, default_value = "alias/shoal-local-firmware-signing")]
    pub signing_key_alias: String,
}

/// `shoal init-local`: every resource, each line printed when it is ready.
///
/// # Errors
/// The first AWS call that fails, named.
pub async fn run(factory: &ClientFactory, args: InitLocalArgs) -> Result<()> {
    init_all(factory, args, &mut std::io::stdout()).await
}

/// Every resource of `args`, each line written to `out` when it is ready.
///
/// # Errors
/// The first AWS call that fails, named.
pub async fn init_all(
    factory: &ClientFactory,
    args: InitLocalArgs,
    out: &mut impl Write,
) -> Result<()> {
    let target = TimestreamTarget {
        database: args.database,
        table: args.table,
    };
    init_local(factory, &target, &args.bucket, out).await?;
    let dynamodb = factory.dynamodb();
    ManifestTable::new(dynamodb.clone(), args.manifest_table.clone())
        .ensure_exists()
        .await?;
    writeln!(out, "dynamodb    {} ready", args.manifest_table)?;
    DeviceTable::new(dynamodb.clone(), args.device_table.clone())
        .ensure_exists()
        .await?;
    writeln!(out, "dynamodb    {} ready", args.device_table)?;
    FirmwareTable::new(dynamodb.clone(), args.firmware_table.clone())
        .ensure_exists()
        .await?;
    writeln!(out, "dynamodb    {} ready", args.firmware_table)?;
    RolloutTable::new(dynamodb, args.rollout_table.clone())
        .ensure_exists()
        .await?;
    writeln!(out, "dynamodb    {} ready", args.rollout_table)?;
    ensure_bucket(&factory.s3(), &args.firmware_bucket).await?;
    writeln!(out, "s3          {} ready", args.firmware_bucket)?;
    let alias = ensure_signing_key(&factory.kms(), &args.signing_key_alias).await?;
    writeln!(
        out,
        "kms         {alias} ready (SHOAL_FIRMWARE_SIGNING_KEY)"
    )?;
    Ok(())
}

/// Creates the database and table unless they exist.
pub async fn ensure_timestream_table(
    client: &aws_sdk_timestreamwrite::Client,
    target: &TimestreamTarget,
) -> Result<()> {
    let created = client
        .create_database()
        .database_name(target.database.as_str())
        .send()
        .await
        .aws("timestream-write", "CreateDatabase");
    done_or_already(created, &["ConflictException"])?;
    let created = client
        .create_table()
        .database_name(target.database.as_str())
        .table_name(target.table.as_str())
        .send()
        .await
        .aws("timestream-write", "CreateTable");
    Ok(done_or_already(created, &["ConflictException"])?)
}

/// Creates the bucket unless this account already owns it.
pub async fn ensure_bucket(client: &aws_sdk_s3::Client, bucket: &BucketName) -> Result<()> {
    let created = client
        .create_bucket()
        .bucket(bucket.as_str())
        .send()
        .await
        .aws("s3", "CreateBucket");
    Ok(done_or_already(created, &["BucketAlreadyOwnedByYou"])?)
}

pub async fn init_local(
    factory: &ClientFactory,
    target: &TimestreamTarget,
    bucket: &BucketName,
    out: &mut impl Write,
) -> Result<()> {
    ensure_timestream_table(&factory.timestream_write().await?, target).await?;
    writeln!(
        out,
        "timestream  {}.{} ready",
        target.database, target.table
    )?;
    ensure_bucket(&factory.s3(), bucket).await?;
    writeln!(out, "s3          {bucket} ready")?;
    Ok(())
}

/// The KMS signing key behind `alias` (ECC_NIST_P256, SIGN_VERIFY), created with the alias
/// unless the alias exists. Returns the alias.
pub async fn ensure_signing_key(client: &aws_sdk_kms::Client, alias: &str) -> Result<String> {
    use aws_sdk_kms::types::{KeySpec, KeyUsageType};
    match client
        .describe_key()
        .key_id(alias)
        .send()
        .await
        .aws("kms", "DescribeKey")
    {
        Ok(_) => return Ok(alias.to_owned()),
        Err(e) if e.is_code("NotFoundException") => {}
        Err(e) => return Err(e.into()),
    }
    let key = client
        .create_key()
        .key_spec(KeySpec::EccNistP256)
        .key_usage(KeyUsageType::SignVerify)
        .description("Shoal firmware signing key (local)")
        .send()
        .await
        .aws("kms", "CreateKey")?;
    let key_id = key
        .key_metadata()
        .map(|m| m.key_id().to_owned())
        .ok_or_else(|| anyhow::anyhow!("CreateKey answered without key metadata"))?;
    client
        .create_alias()
        .alias_name(alias)
        .target_key_id(key_id)
        .send()
        .await
        .aws("kms", "CreateAlias")?;
    Ok(alias.to_owned())
}
