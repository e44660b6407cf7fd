//! What a factory puts in every firmware image for fleet provisioning by claim
//! (<https://docs.aws.amazon.com/iot/latest/developerguide/provision-wo-cert.html#claim-based>):
//! the claim certificate (active, with the stack's `ClaimPolicy` attached, which allows nothing
//! but provisioning) and the fleet's firmware signing public key (what devices check every image
//! against).

use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine as _;
use shoal_aws::client::{AwsResultExt, ClientFactory};
use shoal_aws::config::{KmsKeyRef, vars};

/// `shoal provisioning …`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create an active claim certificate with the claim policy attached; writes
    /// `claim.pem.crt` and `claim.pem.key` (mode 0600) to --out-dir and prints the certificate id.
    ClaimCertificate {
        /// The stack's claim policy (output `ClaimPolicyName`; locally `shoal-local-claim`).
        #[arg(long)]
        policy: String,
        /// Where to write the certificate and its key.
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// Write the firmware signing key's public key (PEM SubjectPublicKeyInfo), the fleet key
    /// devices verify images with.
    FleetKey {
        #[arg(long, env = vars::FIRMWARE_SIGNING_KEY)]
        key: KmsKeyRef,
        /// The file to write (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// A claim certificate made by AWS IoT (CreateKeysAndCertificate, active) with `policy`
/// attached: (certificate id, certificate PEM, private key PEM).
///
/// # Errors
/// An IoT call failed (the policy does not exist, say).
pub async fn claim_certificate(
    factory: &ClientFactory,
    policy: &str,
) -> anyhow::Result<(String, String, String)> {
    let iot = factory.iot();
    let created = iot
        .create_keys_and_certificate()
        .set_as_active(true)
        .send()
        .await
        .aws("iot", "CreateKeysAndCertificate")?;
    let (Some(id), Some(arn), Some(pem), Some(key)) = (
        created.certificate_id(),
        created.certificate_arn(),
        created.certificate_pem(),
        created.key_pair().and_then(|k| k.private_key()),
    ) else {
        anyhow::bail!("CreateKeysAndCertificate answered without a certificate or key");
    };
    iot.attach_policy()
        .policy_name(policy)
        .target(arn)
        .send()
        .await
        .aws("iot", "AttachPolicy")
        .with_context(|| format!("attaching policy {policy}"))?;
    Ok((id.to_owned(), pem.to_owned(), key.to_owned()))
}

/// The KMS key's public key as PEM (`-----BEGIN PUBLIC KEY-----`, the DER SubjectPublicKeyInfo
/// KMS GetPublicKey returns).
///
/// # Errors
/// GetPublicKey failed.
pub async fn fleet_key_pem(factory: &ClientFactory, key: &KmsKeyRef) -> anyhow::Result<String> {
    let answer = factory
        .kms()
        .get_public_key()
        .key_id(key.as_str())
        .send()
        .await
        .aws("kms", "GetPublicKey")?;
    let der = answer
        .public_key()
        .context("GetPublicKey answered without a key")?;
    let text = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for line in text.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    Ok(pem)
}

fn write(path: &Path, text: &str, private: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let _ = private;
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Runs a `shoal provisioning` command.
///
/// # Errors
/// An AWS call failed or a file cannot be written.
pub async fn run(factory: &ClientFactory, command: Command) -> anyhow::Result<()> {
    match command {
        Command::ClaimCertificate { policy, out_dir } => {
            std::fs::create_dir_all(&out_dir)
                .with_context(|| format!("cannot create {}", out_dir.display()))?;
            let (id, pem, key) = claim_certificate(factory, &policy).await?;
            write(&out_dir.join("claim.pem.crt"), &pem, false)?;
            write(&out_dir.join("claim.pem.key"), &key, true)?;
            println!("{id}");
        }
        Command::FleetKey { key, out } => {
            let pem = fleet_key_pem(factory, &key).await?;
            match out {
                Some(path) => write(&path, &pem, false)?,
                None => print!("{pem}"),
            }
        }
    }
    Ok(())
}
