//! The demo fleet as a factory would have built it: serials, models, hardware revisions and
//! buildings, the manifest that lists them, and the firmware images they are offered. Pure.
//!
//! Every name carries the run's tag, so runs on one stack never share a hardware revision, a
//! thing group or a serial: a rollout of one run never waits for another run's devices.

use std::collections::BTreeMap;

/// The model that sends JSON readings (`dt/<app>/<thing>/telemetry`).
pub const JSON_MODEL: &str = "th-v2";
/// The model that sends packed binary records (`dt/<app>/<thing>/telemetry/th-mini`).
pub const PACKED_MODEL: &str = "th-mini";
/// The packed model's record fields, in order: the local stack's `PackedSchemas` says the same
/// (`tools/localstack/stack`).
pub const PACKED_FIELDS: [&str; 2] = ["temperature", "humidity"];
/// Buildings (thing groups) the fleet is spread over.
pub const BUILDINGS: usize = 4;
/// The version every device runs out of the factory.
pub const FACTORY_VERSION: &str = "1.0.0";
/// The image that fails its self-test on hardware revision B.
pub const BAD_VERSION: &str = "1.1.0";
/// The fixed image.
pub const GOOD_VERSION: &str = "1.1.1";

/// One device of the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoDevice {
    /// Its serial, also its thing name.
    pub serial: String,
    /// `th-v2` or `th-mini`.
    pub model: String,
    /// Its hardware revision.
    pub hardware: String,
    /// Its building: the thing group the manifest puts it in.
    pub group: String,
}

/// The run's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The run's tag (lowercase letters and digits), in every name below.
    pub tag: String,
    /// The manifest's devices.
    pub devices: Vec<DemoDevice>,
    /// Serials that are not in the manifest: provisioning must refuse them.
    pub rogue: Vec<String>,
}

impl Layout {
    /// `devices` devices and `rogue` serials outside the manifest. Of every four devices, one is
    /// a `th-v2` of revision A, two are `th-v2` of revision B and one is a `th-mini` (revision A);
    /// the buildings are consecutive blocks of the serials.
    pub fn new(tag: &str, devices: usize, rogue: usize) -> Self {
        let upper = tag.to_uppercase();
        let devices = (0..devices)
            .map(|i| {
                let (model, revision) = match i % 4 {
                    0 => (JSON_MODEL, "a"),
                    1 | 2 => (JSON_MODEL, "b"),
                    _ => (PACKED_MODEL, "a"),
                };
                DemoDevice {
                    serial: format!("{upper}-{i:05}"),
                    model: model.to_owned(),
                    hardware: format!("rev-{revision}-{tag}"),
                    group: format!("{tag}-building-{}", 1 + i * BUILDINGS / devices),
                }
            })
            .collect();
        Self {
            tag: tag.to_owned(),
            devices,
            rogue: (1..=rogue).map(|k| format!("{upper}-ROGUE-{k}")).collect(),
        }
    }

    /// Hardware revision `rev` (`"a"`, `"b"`) of this run.
    pub fn hardware(&self, revision: &str) -> String {
        format!("rev-{revision}-{}", self.tag)
    }

    /// The thing group of building `n` (1-based).
    pub fn building(&self, n: usize) -> String {
        format!("{}-building-{n}", self.tag)
    }

    /// The factory manifest (`shoal manifest import`'s CSV): `hardware` and `building` as
    /// registry attributes, the building as the thing group.
    pub fn manifest_csv(&self) -> String {
        let mut csv = String::from("serial,model,batch,thing_group,attributes\n");
        for d in &self.devices {
            let building = d.group.rsplit('-').next().unwrap_or_default();
            csv.push_str(&format!(
                "{},{},2026-12,{},hardware={};building={building}\n",
                d.serial, d.model, d.group, d.hardware
            ));
        }
        csv
    }

    /// The (model, hardware revision) pairs of the fleet, each with its devices' thing names.
    pub fn combos(&self) -> BTreeMap<(String, String), Vec<String>> {
        let mut combos: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for d in &self.devices {
            combos
                .entry((d.model.clone(), d.hardware.clone()))
                .or_default()
                .push(d.serial.clone());
        }
        combos
    }

    /// The model of thing `thing`, if it is one of the run's.
    pub fn model_of(&self, thing: &str) -> Option<&str> {
        self.index(thing).map(|d| d.model.as_str())
    }

    fn index(&self, thing: &str) -> Option<&DemoDevice> {
        let number: usize = thing.rsplit('-').next()?.parse().ok()?;
        self.devices.get(number).filter(|d| d.serial == thing)
    }
}

/// A firmware image's bytes: deterministic, `len` bytes, different per model, revision and
/// version.
pub fn image(model: &str, hardware: &str, version: &str, len: usize) -> Vec<u8> {
    let line = format!("shoal demo image {model} {hardware} {version}\n");
    line.bytes().cycle().take(len).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fleet_mixes_models_revisions_and_buildings() {
        let layout = Layout::new("d1", 200, 3);
        assert_eq!(layout.devices.len(), 200);
        let combos = layout.combos();
        let count = |m: &str, r: &str| combos[&(m.to_owned(), layout.hardware(r))].len();
        assert_eq!(
            (
                count(JSON_MODEL, "a"),
                count(JSON_MODEL, "b"),
                count(PACKED_MODEL, "a")
            ),
            (50, 100, 50)
        );
        for n in 1..=BUILDINGS {
            let members = layout
                .devices
                .iter()
                .filter(|d| d.group == layout.building(n))
                .count();
            assert_eq!(members, 50, "building {n}");
        }
        assert_eq!(layout.rogue, ["D1-ROGUE-1", "D1-ROGUE-2", "D1-ROGUE-3"]);
        assert_eq!(layout.model_of("D1-00003"), Some(PACKED_MODEL));
        assert_eq!(layout.model_of("D1-ROGUE-1"), None);
        assert_eq!(layout.model_of("X-00003"), None);
    }

    #[test]
    fn the_manifest_names_every_device_with_its_attributes() {
        let layout = Layout::new("d1", 5, 0);
        let csv = layout.manifest_csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 6);
        assert_eq!(
            lines[2],
            "D1-00001,th-v2,2026-12,d1-building-1,hardware=rev-b-d1;building=1"
        );
        let parsed = shoal_agent::simulate::manifest_devices(&csv).unwrap();
        assert_eq!(parsed[3].model, PACKED_MODEL);
        assert_eq!(parsed[3].hardware, "rev-a-d1");
    }

    #[test]
    fn images_differ_by_version() {
        let a = image("th-v2", "rev-a", "1.0.0", 1000);
        assert_eq!(a.len(), 1000);
        assert_ne!(a, image("th-v2", "rev-a", "1.1.0", 1000));
    }
}
