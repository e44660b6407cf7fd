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

/// A manifest row for a new serial in the stack's manifest table (`shoal-local-manifest`, which
/// the stack's pre-provisioning hook reads), in thing group `group` (empty: none), with
/// `attributes` (`key=value;…`).
pub async fn manifest_row_in(group: &str, attributes: &str) -> String {
    let serial = crate::local::unique_name("SN");
    let manifest = shoal_aws::manifest_table::ManifestTable::new(
        crate::local::factory().await.dynamodb(),
        "shoal-local-manifest".parse().unwrap(),
    );
    let csv = format!(
        "serial,model,batch,thing_group,attributes\n{serial},th-v2,2026-12,{group},{attributes}\n"
    );
    shoal_cli::manifest::import(&manifest, &csv, |_| {})
        .await
        .expect("the stack's manifest table");
    serial
}

/// A claim certificate as the operator makes it: ACTIVE, the template's claim policy attached
/// (`shoal-local-claim`, which the local IoT Core creates from `ClaimPolicy`).
pub async fn claim_certificate() -> (Vec<u8>, Vec<u8>) {
    let claim = crate::local::bare_certificate(true).await;
    crate::local::factory()
        .await
        .iot()
        .attach_policy()
        .policy_name("shoal-local-claim")
        .target(&claim.arn)
        .send()
        .await
        .expect("the template's claim policy (created by the local IoT Core)");
    (claim.pem, claim.key)
}

/// Creates thing group `name` in the local registry.
pub async fn create_thing_group(name: &str) {
    crate::local::factory()
        .await
        .iot()
        .create_thing_group()
        .thing_group_name(name)
        .send()
        .await
        .expect("CreateThingGroup");
}

/// The names of the thing groups `thing` belongs to.
pub async fn groups_of(thing: &str) -> Vec<String> {
    crate::local::factory()
        .await
        .iot()
        .list_thing_groups_for_thing()
        .thing_name(thing)
        .send()
        .await
        .expect("ListThingGroupsForThing")
        .thing_groups()
        .iter()
        .filter_map(|g| g.group_name().map(str::to_owned))
        .collect()
}
