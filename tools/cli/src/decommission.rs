//! `shoal device decommission <serial>`: take a device out of the fleet for good.
//!
//! Revokes its certificate, detaches every policy from the certificate and the certificate from
//! the thing, retires the thing (attribute `retired=true`) or deletes it, marks the manifest
//! entry retired with an audit record, and takes the device out of presence (device table:
//! offline, no offline alert, no certificate recorded). Running it again on a retired device
//! only repeats that last, idempotent step.

use std::io::Write;

use anyhow::{Context, Result, bail};
use aws_sdk_iot::types::{AttributePayload, CertificateStatus};
use shoal_aws::client::{AwsResultExt, ClientFactory};
use shoal_aws::config::{TableName, vars};
use shoal_aws::device_table::DeviceTable;
use shoal_aws::manifest_table::{AuditRecord, ManifestTable};
use shoal_core::provisioning::{DeviceStatus, Serial};

/// `shoal device …`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Revoke the device's certificate, detach its policies and thing, retire (or delete) the
    /// thing and record it in the manifest.
    Decommission {
        serial: Serial,
        /// Why (kept in the manifest's audit record).
        #[arg(long)]
        reason: String,
        /// Delete the thing instead of marking it retired.
        #[arg(long)]
        delete_thing: bool,
        #[arg(long, env = vars::MANIFEST_TABLE)]
        table: TableName,
        /// The device table (the device leaves presence: no offline alert).
        #[arg(long, env = vars::DEVICE_TABLE)]
        device_table: TableName,
    },
}

/// Runs a `shoal device` command, printing each step to stdout.
///
/// # Errors
/// As [`decommission`].
pub async fn run(factory: &ClientFactory, command: Command) -> Result<()> {
    let Command::Decommission {
        serial,
        reason,
        delete_thing,
        table,
        device_table,
    } = command;
    let manifest = ManifestTable::new(factory.dynamodb(), table);
    let devices = DeviceTable::new(factory.dynamodb(), device_table);
    let fate = if delete_thing {
        ThingFate::Delete
    } else {
        ThingFate::Retire
    };
    decommission(
        factory,
        &manifest,
        &devices,
        &serial,
        fate,
        &reason,
        &mut std::io::stdout(),
    )
    .await
}

/// What to do with the thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThingFate {
    /// Keep it, marked `retired=true` (its history stays queryable).
    Retire,
    Delete,
}

pub async fn decommission(
    factory: &ClientFactory,
    manifest: &ManifestTable,
    devices: &DeviceTable,
    serial: &Serial,
    fate: ThingFate,
    reason: &str,
    out: &mut impl Write,
) -> Result<()> {
    let entry = manifest
        .get(serial)
        .await?
        .with_context(|| format!("serial {serial} is not in the factory manifest"))?;
    let thing = entry
        .thing_name
        .clone()
        .unwrap_or_else(|| serial.thing_name());
    let now = shoal_core::clock::now_ms();
    if entry.status == DeviceStatus::Retired {
        // A run interrupted after the manifest step left the device table behind: finish it.
        devices
            .retire(thing.as_str(), u64::try_from(now).unwrap_or_default())
            .await?;
        writeln!(out, "serial {serial} is already retired; nothing to do")?;
        return Ok(());
    }
    if entry.status == DeviceStatus::Pending {
        bail!("serial {serial} was never provisioned; remove it from the manifest instead");
    }
    let iot = factory.iot();
    if let Some(certificate_id) = &entry.certificate_id {
        let described = iot
            .describe_certificate()
            .certificate_id(certificate_id)
            .send()
            .await
            .aws("iot", "DescribeCertificate")?;
        let arn = described
            .certificate_description()
            .and_then(|d| d.certificate_arn())
            .context("DescribeCertificate returned no ARN")?
            .to_owned();
        iot.update_certificate()
            .certificate_id(certificate_id)
            .new_status(CertificateStatus::Revoked)
            .send()
            .await
            .aws("iot", "UpdateCertificate")?;
        writeln!(out, "certificate {certificate_id} revoked")?;
        let policies = iot
            .list_attached_policies()
            .target(&arn)
            .send()
            .await
            .aws("iot", "ListAttachedPolicies")?;
        for policy in policies.policies().iter().filter_map(|p| p.policy_name()) {
            iot.detach_policy()
                .policy_name(policy)
                .target(&arn)
                .send()
                .await
                .aws("iot", "DetachPolicy")?;
            writeln!(out, "policy {policy} detached")?;
        }
        let attached = iot
            .list_principal_things()
            .principal(&arn)
            .send()
            .await
            .aws("iot", "ListPrincipalThings")?;
        for name in attached.things() {
            iot.detach_thing_principal()
                .thing_name(name)
                .principal(&arn)
                .send()
                .await
                .aws("iot", "DetachThingPrincipal")?;
            writeln!(out, "certificate detached from thing {name}")?;
        }
    }
    match fate {
        ThingFate::Delete => {
            match iot
                .delete_thing()
                .thing_name(thing.as_str())
                .send()
                .await
                .aws("iot", "DeleteThing")
            {
                Ok(_) => writeln!(out, "thing {thing} deleted")?,
                Err(e) if e.is_code("ResourceNotFoundException") => {}
                Err(e) => return Err(e.into()),
            }
        }
        ThingFate::Retire => {
            iot.update_thing()
                .thing_name(thing.as_str())
                .attribute_payload(
                    AttributePayload::builder()
                        .attributes("retired", "true")
                        .merge(true)
                        .build(),
                )
                .send()
                .await
                .aws("iot", "UpdateThing")?;
            writeln!(out, "thing {thing} marked retired")?;
        }
    }
    let record = AuditRecord {
        at_ms: now,
        action: "decommissioned",
        reason,
        certificate_id: entry.certificate_id.as_deref(),
    };
    manifest
        .record(serial, record, Some(DeviceStatus::Retired))
        .await?;
    writeln!(out, "manifest: {serial} retired ({reason})")?;
    // Last: the revocation's disconnect may already have been recorded; it raises no alert.
    devices
        .retire(thing.as_str(), u64::try_from(now).unwrap_or_default())
        .await?;
    writeln!(
        out,
        "device table: {thing} out of presence (no offline alert)"
    )?;
    Ok(())
}
