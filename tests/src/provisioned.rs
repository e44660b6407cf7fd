//! A device provisioned the way production provisions it: its manifest imported by the CLI, then
//! the real pre-provisioning hook allowing its request, which claims the serial and records the
//! device's certificate in the device table (what presence checks events against).

use provisioning::hook::{DEFAULT_CLAIM_LEASE, DEFAULT_DEADLINE, Gate};
use provisioning::registry::IotCertificates;
use shadow_sync::edges::PresenceRegistry;
use shoal_aws::client::ClientFactory;
use shoal_aws::device_table::DeviceTable;
use shoal_aws::manifest_table::ManifestTable;
use shoal_core::provisioning::HookRequest;

use crate::local::unique_name;

/// Imports `manifest_csv` into a fresh manifest table, runs the hook on `request` with a fresh
/// device table (template `shoal-fleet` provisions model `th-v2`) and asserts it allowed the
/// device. Returns the presence registry over both tables, and the device table.
///
/// # Panics
/// When a table cannot be created, the CSV is refused or the hook denies the request.
pub async fn through_the_hook(
    factory: &ClientFactory,
    manifest_csv: &str,
    request: &HookRequest,
) -> (PresenceRegistry, DeviceTable) {
    let manifest = ManifestTable::new(factory.dynamodb(), unique_name("manifest").parse().unwrap());
    manifest.ensure_exists().await.unwrap();
    shoal_cli::manifest::import(&manifest, manifest_csv, |_| {})
        .await
        .unwrap();
    let devices = DeviceTable::new(factory.dynamodb(), unique_name("devices").parse().unwrap());
    devices.ensure_exists().await.unwrap();
    let certificates = IotCertificates::new(factory.iot());
    let gate = Gate {
        manifest: &manifest,
        certificates: &certificates,
        devices: &devices,
        models: &"shoal-fleet=th-v2".parse().unwrap(),
        claim_lease: DEFAULT_CLAIM_LEASE,
    };
    let answer = provisioning::hook::handle(request, &gate, DEFAULT_DEADLINE).await;
    assert!(answer.allow_provisioning, "{answer:?}");
    let registry = PresenceRegistry {
        devices: devices.clone(),
        manifest,
    };
    (registry, devices)
}
