//! `shoal init-local`: the data resources infra/template.yaml creates on AWS (Timestream database
//! and table, archive bucket), created on a local endpoint so functions and tools can run there.
//! Every step is idempotent: what exists is left alone.

use std::io::Write;

use anyhow::Result;
use shoal_shared::aws::{AwsResultExt, ClientFactory};
use shoal_shared::config::{BucketName, TimestreamTarget};

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
    match created {
        Ok(_) => {}
        Err(e) if e.is_code("ConflictException") => {}
        Err(e) => return Err(e.into()),
    }
    let created = client
        .create_table()
        .database_name(target.database.as_str())
        .table_name(target.table.as_str())
        .send()
        .await
        .aws("timestream-write", "CreateTable");
    match created {
        Ok(_) => Ok(()),
        Err(e) if e.is_code("ConflictException") => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Creates the bucket unless this account already owns it.
pub async fn ensure_bucket(client: &aws_sdk_s3::Client, bucket: &BucketName) -> Result<()> {
    match client
        .create_bucket()
        .bucket(bucket.as_str())
        .send()
        .await
        .aws("s3", "CreateBucket")
    {
        Ok(_) => Ok(()),
        Err(e) if e.is_code("BucketAlreadyOwnedByYou") => Ok(()),
        Err(e) => Err(e.into()),
    }
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
