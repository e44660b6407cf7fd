//! `shoal manifest import <csv>`: new devices into the factory manifest, all or nothing.
//!
//! Every row is checked first (format, duplicates in the file, serials already in the table);
//! if any row is bad nothing is written and every bad line is reported. Otherwise the entries go
//! in BatchWriteItem calls of 25, unprocessed items retried with backoff.

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use shoal_aws::client::{ClientFactory, EdgeError};
use shoal_aws::config::{TableName, vars};
use shoal_aws::manifest_table::ManifestTable;
use shoal_core::clock::now_ms;
use shoal_core::provisioning::{ManifestEntry, RowError, parse_manifest_csv};
use thiserror::Error;

/// `shoal manifest …`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Import new devices from a CSV (serial,model,batch,thing_group,attributes[,proof]): every
    /// row is checked first and nothing is written if any row is bad. `proof` is
    /// key-sha256:<hex> or secret-sha256:<hex> (README: Proof of possession).
    Import {
        /// The CSV file.
        file: std::path::PathBuf,
        #[arg(long, env = vars::MANIFEST_TABLE)]
        table: TableName,
    },
    /// Give a provisioned serial back to pending when its certificate never became active.
    Reset {
        serial: shoal_core::provisioning::Serial,
        /// Why (kept in the manifest's audit record).
        #[arg(long)]
        reason: String,
        #[arg(long, env = vars::MANIFEST_TABLE)]
        table: TableName,
    },
}

/// Runs a `shoal manifest` command: an import with a progress bar and every bad row on stderr,
/// or a reset.
///
/// # Errors
/// An unreadable file, bad rows (nothing written), or the failing AWS call.
pub async fn run(factory: &ClientFactory, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Import { file, table } => {
            let csv = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let table = ManifestTable::new(factory.dynamodb(), table);
            let bar = ProgressBar::new(csv.lines().count().saturating_sub(1) as u64).with_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} devices written")
                    .expect("a valid template"),
            );
            match import(&table, &csv, |n| bar.inc(n as u64)).await {
                Ok(n) => {
                    bar.finish_and_clear();
                    println!("imported {n} devices into {}", table.name());
                    Ok(())
                }
                Err(ImportError::Rows(errors)) => {
                    bar.abandon();
                    for e in &errors {
                        eprintln!("{}: {e}", file.display());
                    }
                    anyhow::bail!("{} bad row(s); nothing was written", errors.len());
                }
                Err(e) => {
                    bar.abandon();
                    Err(e.into())
                }
            }
        }
        Command::Reset {
            serial,
            reason,
            table,
        } => {
            let table = ManifestTable::new(factory.dynamodb(), table);
            println!("{}", reset(factory, &table, &serial, &reason).await?);
            Ok(())
        }
    }
}

#[derive(Debug, Error)]
pub enum ImportError {
    #[error("{} bad row(s); nothing was written", .0.len())]
    Rows(Vec<RowError>),
    #[error(transparent)]
    Aws(#[from] EdgeError),
}

/// Imports `csv` into `table`; `progress` hears each batch written. Returns how many devices
/// were imported.
pub async fn import(
    table: &ManifestTable,
    csv: &str,
    progress: impl FnMut(usize),
) -> Result<usize, ImportError> {
    let rows = parse_manifest_csv(csv, now_ms()).map_err(ImportError::Rows)?;
    let serials: Vec<_> = rows.iter().map(|(_, e)| e.serial.clone()).collect();
    let existing = table.existing(&serials).await?;
    if !existing.is_empty() {
        let errors = rows
            .iter()
            .filter_map(|(line, entry)| {
                existing
                    .iter()
                    .find(|(serial, _)| *serial == entry.serial)
                    .map(|(serial, status)| RowError {
                        line: *line,
                        reason: format!("serial {serial} is already in the manifest ({status})"),
                    })
            })
            .collect();
        return Err(ImportError::Rows(errors));
    }
    let entries: Vec<ManifestEntry> = rows.into_iter().map(|(_, e)| e).collect();
    table.write_all(&entries, progress).await?;
    Ok(entries.len())
}

/// `shoal manifest reset <serial>`: gives a serial back to pending when the certificate that
/// claimed it never became active (fleet provisioning: the hook allowed it, then RegisterThing
/// failed, and the device retries with a new certificate the hook would otherwise refuse). An
/// active certificate is refused: decommission that device instead.
pub async fn reset(
    factory: &shoal_aws::client::ClientFactory,
    table: &ManifestTable,
    serial: &shoal_core::provisioning::Serial,
    reason: &str,
) -> anyhow::Result<String> {
    use anyhow::{Context, bail};
    use shoal_aws::client::AwsResultExt;
    use shoal_core::provisioning::DeviceStatus;

    let entry = table
        .get(serial)
        .await?
        .with_context(|| format!("serial {serial} is not in the factory manifest"))?;
    let (DeviceStatus::Provisioned, Some(certificate_id)) = (entry.status, &entry.certificate_id)
    else {
        bail!(
            "serial {serial} is {}; only a provisioned serial can be reset",
            entry.status
        );
    };
    let described = factory
        .iot()
        .describe_certificate()
        .certificate_id(certificate_id)
        .send()
        .await
        .aws("iot", "DescribeCertificate");
    let status = match described {
        Ok(d) => d
            .certificate_description()
            .and_then(|c| c.status())
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        // The certificate never made it into the registry.
        Err(e) if e.is_code("ResourceNotFoundException") => "absent".to_owned(),
        Err(e) => return Err(e.into()),
    };
    if status == "ACTIVE" {
        bail!(
            "certificate {certificate_id} of serial {serial} is ACTIVE; use `shoal device decommission`"
        );
    }
    if !table
        .release(serial, certificate_id, reason, now_ms())
        .await?
    {
        bail!("serial {serial} changed while it was being reset; look again");
    }
    Ok(format!(
        "serial {serial} is pending again (certificate {certificate_id} was {status})"
    ))
}
