//! `shoal manifest import <csv>`: new devices into the factory manifest, all or nothing.
//!
//! Every row is checked first (format, duplicates in the file, serials already in the table);
//! if any row is bad nothing is written and every bad line is reported. Otherwise the entries go
//! in BatchWriteItem calls of 25, unprocessed items retried with backoff.

use shoal_shared::aws::AwsError;
use shoal_shared::clock::now_ms;
use shoal_shared::manifest_table::ManifestTable;
use shoal_shared::provisioning::{ManifestEntry, RowError, parse_manifest_csv};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ImportError {
    #[error("{} bad row(s); nothing was written", .0.len())]
    Rows(Vec<RowError>),
    #[error(transparent)]
    Aws(#[from] AwsError),
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
    factory: &shoal_shared::aws::ClientFactory,
    table: &ManifestTable,
    serial: &shoal_shared::provisioning::Serial,
    reason: &str,
) -> anyhow::Result<String> {
    use anyhow::{Context, bail};
    use shoal_shared::aws::AwsResultExt;
    use shoal_shared::provisioning::DeviceStatus;

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
