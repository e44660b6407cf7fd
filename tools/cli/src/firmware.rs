//! `shoal firmware publish`: anti-rollback check, SHA-256, KMS signature over the digest,
//! verification with the key's public key, upload, then the registry record. Nothing is
//! uploaded or recorded unless the signature verifies, and nothing is recorded unless the image
//! is in S3.

use anyhow::Context;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{MessageType, SigningAlgorithmSpec};
use base64::Engine as _;
use shoal_aws::client::{AwsResultExt, ClientFactory, EdgeError};
use shoal_aws::config::{BucketName, KmsKeyRef, TableName, vars};
use shoal_aws::firmware_table::FirmwareTable;
use shoal_core::clock::now_ms;
use shoal_core::rollout::FirmwareVersion;
use shoal_core::rollout::image::{
    DeviceModel, FirmwareImage, HardwareRevision, SignatureError, hex, object_key, sha256,
    verify_signature,
};
use shoal_core::rollout::version::{PublishRefusal, check_publish};
use thiserror::Error;

/// The image a command is about (`shoal firmware publish`, `shoal rollout start`).
#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    /// Device model (as in the manifest and the things' `model` attribute: th-v2).
    #[arg(long)]
    pub model: DeviceModel,
    /// Hardware revision (the things' `hardware` attribute: rev-b).
    #[arg(long)]
    pub hardware: HardwareRevision,
    /// Semantic version (1.10.0 > 1.9.0).
    #[arg(long)]
    pub version: FirmwareVersion,
}

/// `shoal firmware …`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Sign an image's SHA-256 with the KMS key, verify the signature with the key's public key,
    /// upload it and record it. Refuses a version below the model's current one unless
    /// --allow-downgrade --reason is given, and a version already published (another build of
    /// it included) whatever the flags.
    Publish {
        /// The image file.
        file: std::path::PathBuf,
        #[command(flatten)]
        image: ImageArgs,
        /// Devices below this version must take an intermediate image first.
        #[arg(long)]
        min_version: Option<FirmwareVersion>,
        /// Publish a version below the current one (never one already published, nor another
        /// build of it).
        #[arg(long, requires = "reason")]
        allow_downgrade: bool,
        /// Why the downgrade (recorded with the image).
        #[arg(long, requires = "allow_downgrade")]
        reason: Option<String>,
        #[arg(long, env = vars::FIRMWARE_TABLE)]
        table: TableName,
        #[arg(long, env = vars::FIRMWARE_BUCKET)]
        bucket: BucketName,
        #[arg(long, env = vars::FIRMWARE_SIGNING_KEY)]
        key: KmsKeyRef,
    },
}

/// Runs a `shoal firmware` command, printing the registry record as JSON.
///
/// # Errors
/// An unreadable file, or the [`PublishError`] that refused the image.
pub async fn run(factory: &ClientFactory, command: Command) -> anyhow::Result<()> {
    let Command::Publish {
        file,
        image: ImageArgs {
            model,
            hardware,
            version,
        },
        min_version,
        // clap makes --reason require it and it require --reason: the reason carries both.
        allow_downgrade: _,
        reason,
        table,
        bucket,
        key,
    } = command;
    let image = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let table = FirmwareTable::new(factory.dynamodb(), table);
    let publisher = Publisher {
        factory,
        table: &table,
        bucket: &bucket,
        key: &key,
    };
    let request = PublishRequest {
        model,
        hardware,
        version,
        min_version,
        downgrade_reason: reason,
    };
    let record = publisher.publish(&image, &request).await?;
    println!("{}", serde_json::to_string_pretty(&record)?);
    Ok(())
}

#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub model: DeviceModel,
    pub hardware: HardwareRevision,
    pub version: FirmwareVersion,
    pub min_version: Option<FirmwareVersion>,
    /// `Some(reason)` with `--allow-downgrade`.
    pub downgrade_reason: Option<String>,
}

#[derive(Debug, Error)]
pub enum PublishError {
    #[error(transparent)]
    Refused(#[from] PublishRefusal),
    #[error("the image is empty")]
    Empty,
    #[error("signature check failed, nothing uploaded or recorded: {0}")]
    Signature(#[from] SignatureError),
    #[error(
        "{model} {hardware} {version}: this version (or another build of it) is already published (images are immutable)"
    )]
    AlreadyPublished {
        model: DeviceModel,
        hardware: HardwareRevision,
        version: FirmwareVersion,
    },
    #[error(transparent)]
    Aws(#[from] EdgeError),
}

pub struct Publisher<'a> {
    pub factory: &'a ClientFactory,
    pub table: &'a FirmwareTable,
    pub bucket: &'a BucketName,
    pub key: &'a KmsKeyRef,
}

impl Publisher<'_> {
    pub async fn publish(
        &self,
        image: &[u8],
        request: &PublishRequest,
    ) -> Result<FirmwareImage, PublishError> {
        if image.is_empty() {
            return Err(PublishError::Empty);
        }
        let published: Vec<FirmwareVersion> = self
            .table
            .images(&request.model, &request.hardware)
            .await?
            .into_iter()
            .map(|i| i.version)
            .collect();
        check_publish(
            &published,
            &request.version,
            request.min_version.as_ref(),
            request.downgrade_reason.as_deref(),
        )?;

        let digest = sha256(image);
        let kms = self.factory.kms();
        let signed = kms
            .sign()
            .key_id(self.key.as_str())
            .message(Blob::new(digest))
            .message_type(MessageType::Raw)
            .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
            .send()
            .await
            .aws("kms", "Sign")?;
        let signature = signed
            .signature
            .map(Blob::into_inner)
            .ok_or_else(|| EdgeError::unreadable("kms", "Sign", "no signature in the answer"))?;
        let public = kms
            .get_public_key()
            .key_id(self.key.as_str())
            .send()
            .await
            .aws("kms", "GetPublicKey")?
            .public_key
            .map(Blob::into_inner)
            .ok_or_else(|| {
                EdgeError::unreadable("kms", "GetPublicKey", "no public key in the answer")
            })?;
        verify_signature(&public, &digest, &signature)?;

        let digest_hex = hex(&digest);
        let key = object_key(
            &request.model,
            &request.hardware,
            &request.version,
            &digest_hex,
        );
        self.factory
            .s3()
            .put_object()
            .bucket(self.bucket.as_str())
            .key(&key)
            .body(aws_sdk_s3::primitives::ByteStream::from(image.to_vec()))
            .content_type("application/octet-stream")
            .metadata("sha256", &digest_hex)
            .metadata("version", request.version.to_string())
            .send()
            .await
            .aws("s3", "PutObject")?;

        let record = FirmwareImage {
            model: request.model.clone(),
            hardware: request.hardware.clone(),
            version: request.version.clone(),
            min_version: request.min_version.clone(),
            size: image.len() as u64,
            sha256: digest_hex,
            signature: base64::engine::general_purpose::STANDARD.encode(&signature),
            s3_key: key,
            signing_key: self.key.to_string(),
            created_at_ms: u64::try_from(now_ms()).unwrap_or_default(),
            downgrade_reason: request.downgrade_reason.clone(),
        };
        if !self.table.insert(&record).await? {
            return Err(PublishError::AlreadyPublished {
                model: record.model,
                hardware: record.hardware,
                version: record.version,
            });
        }
        Ok(record)
    }
}
