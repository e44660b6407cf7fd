//! A/B slots and a bootloader for the agent and the simulator: `shoal-firmware`'s [`Slots`] over
//! two images and a boot record, kept in memory or in a directory (`slot-0.bin`, `slot-1.bin`,
//! `boot.json`, each write flushed, the record replaced atomically), so a Linux gateway survives
//! a power loss at any step the way a microcontroller's bootloader does.
//!
//! The bootloader's rule ([`AbSlots::reboot`]): a slot marked for trial is booted once; if the
//! next reboot comes before [`Slots::commit`] (a self-test failure, a crash loop, a power loss),
//! the committed slot boots again and the board says why ([`Boot::FellBack`]) until another image
//! is staged.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shoal_firmware::ota::{Boot, Slots};
use shoal_wire::version::FirmwareVersion;

/// The trial of a staged image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Trial {
    slot: usize,
    version: String,
    booted: bool,
    rejected: Option<String>,
}

/// What the bootloader keeps (`boot.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct BootRecord {
    committed: usize,
    versions: [Option<String>; 2],
    staged: Option<(String, u64)>,
    trial: Option<Trial>,
    fell_back: Option<(String, String)>,
}

/// Where the images and the boot record live.
#[derive(Debug)]
enum Store {
    Memory([Vec<u8>; 2]),
    Dir(PathBuf),
}

/// Two slots and a bootloader (see the module's documentation).
#[derive(Debug)]
pub struct AbSlots {
    record: BootRecord,
    store: Store,
}

/// Why the slots could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SlotsError {
    /// Reading or writing the directory failed.
    #[error("slots in {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// `boot.json` is not a boot record.
    #[error("{path} is not a boot record: {source}")]
    Record {
        /// The file.
        path: PathBuf,
        /// What serde said.
        source: serde_json::Error,
    },
}

impl AbSlots {
    /// Slots in memory, the committed one running `factory` (the simulator, tests).
    pub fn in_memory(factory: &FirmwareVersion) -> Self {
        Self {
            record: BootRecord::new(factory),
            store: Store::Memory([Vec::new(), Vec::new()]),
        }
    }

    /// Slots in `dir` (created when missing); a new directory starts committed on `factory`.
    ///
    /// # Errors
    /// The directory or its boot record cannot be read or created.
    pub fn open(dir: &Path, factory: &FirmwareVersion) -> Result<Self, SlotsError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SlotsError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join("boot.json");
        let record = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| SlotsError::Record {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BootRecord::new(factory),
            Err(e) => return Err(io(&path)(e)),
        };
        let slots = Self {
            record,
            store: Store::Dir(dir.to_path_buf()),
        };
        slots.save().map_err(|e| SlotsError::Io {
            path,
            source: std::io::Error::other(e),
        })?;
        Ok(slots)
    }

    fn inactive(&self) -> usize {
        1 - self.record.committed
    }

    fn image_path(dir: &Path, slot: usize) -> PathBuf {
        dir.join(format!("slot-{slot}.bin"))
    }

    fn save(&self) -> Result<(), String> {
        let Store::Dir(dir) = &self.store else {
            return Ok(());
        };
        let body = serde_json::to_vec_pretty(&self.record).map_err(|e| e.to_string())?;
        let tmp = dir.join("boot.json.tmp");
        let mut file = fs::File::create(&tmp).map_err(|e| e.to_string())?;
        file.write_all(&body).map_err(|e| e.to_string())?;
        file.sync_all().map_err(|e| e.to_string())?;
        fs::rename(&tmp, dir.join("boot.json")).map_err(|e| e.to_string())
    }

    /// The bootloader at a reboot (or power-up): boots a slot marked for trial once, falls back
    /// from a trial that did not commit.
    pub fn reboot(&mut self) {
        match &mut self.record.trial {
            Some(trial) if !trial.booted && trial.rejected.is_none() => trial.booted = true,
            Some(trial) => {
                let reason = trial.rejected.clone().unwrap_or_else(|| {
                    "the trial boot did not confirm (a crash or a power loss before its self-test passed)"
                        .to_owned()
                });
                self.record.fell_back = Some((trial.version.clone(), reason));
                self.record.trial = None;
                self.record.staged = None;
            }
            None => {}
        }
        let _ = self.save();
    }

    /// Cuts the staged image to its first `len` bytes (a power loss in the middle of a write).
    pub fn truncate_staged(&mut self, len: u64) {
        if let Some((_, written)) = &mut self.record.staged {
            *written = (*written).min(len);
        }
        let _ = self.save();
    }
}

impl BootRecord {
    fn new(factory: &FirmwareVersion) -> Self {
        Self {
            committed: 0,
            versions: [Some(factory.to_string()), None],
            staged: None,
            trial: None,
            fell_back: None,
        }
    }
}

impl Slots for AbSlots {
    fn running(&self) -> FirmwareVersion {
        self.record.versions[self.record.committed]
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| "0.0.0".parse().expect("a version"))
    }

    fn boot(&self) -> Boot {
        if let Some(trial) = &self.record.trial
            && trial.booted
            && let Ok(version) = trial.version.parse()
        {
            return Boot::Trial(version);
        }
        if let Some((version, reason)) = &self.record.fell_back
            && let Ok(version) = version.parse()
        {
            return Boot::FellBack {
                version,
                reason: reason.clone(),
            };
        }
        Boot::Committed
    }

    fn staged(&self) -> Option<(String, u64)> {
        self.record.staged.clone()
    }

    fn stage(&mut self, sha256: &str) -> Result<(), String> {
        let slot = self.inactive();
        match &mut self.store {
            Store::Memory(images) => images[slot].clear(),
            Store::Dir(dir) => {
                fs::File::create(Self::image_path(dir, slot)).map_err(|e| e.to_string())?;
            }
        }
        self.record.staged = (!sha256.is_empty()).then(|| (sha256.to_owned(), 0));
        self.record.trial = None;
        self.record.fell_back = None;
        self.save()
    }

    fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<(), String> {
        let slot = self.inactive();
        let Some((_, written)) = &mut self.record.staged else {
            return Err("no image is staged".into());
        };
        let at = usize::try_from(offset).map_err(|e| e.to_string())?;
        match &mut self.store {
            Store::Memory(images) => {
                images[slot].truncate(at);
                if images[slot].len() < at {
                    return Err(format!("a write at {offset} leaves a hole"));
                }
                images[slot].extend_from_slice(bytes);
            }
            Store::Dir(dir) => {
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .open(Self::image_path(dir, slot))
                    .map_err(|e| e.to_string())?;
                file.set_len(offset).map_err(|e| e.to_string())?;
                file.seek(SeekFrom::Start(offset))
                    .map_err(|e| e.to_string())?;
                file.write_all(bytes).map_err(|e| e.to_string())?;
                file.sync_data().map_err(|e| e.to_string())?;
            }
        }
        *written = offset + bytes.len() as u64;
        self.save()
    }

    fn digest(&self, len: u64) -> Result<[u8; 32], String> {
        let slot = self.inactive();
        let len = usize::try_from(len).map_err(|e| e.to_string())?;
        let image = match &self.store {
            Store::Memory(images) => images[slot].clone(),
            Store::Dir(dir) => fs::read(Self::image_path(dir, slot)).map_err(|e| e.to_string())?,
        };
        let bytes = image
            .get(..len)
            .ok_or_else(|| format!("the slot holds {} bytes, not {len}", image.len()))?;
        Ok(Sha256::digest(bytes).into())
    }

    fn mark_trial(&mut self, version: &FirmwareVersion) -> Result<(), String> {
        self.record.trial = Some(Trial {
            slot: self.inactive(),
            version: version.to_string(),
            booted: false,
            rejected: None,
        });
        self.save()
    }

    fn commit(&mut self) -> Result<(), String> {
        let Some(trial) = self.record.trial.take() else {
            return Err("no slot is on trial".into());
        };
        self.record.versions[trial.slot] = Some(trial.version);
        self.record.committed = trial.slot;
        self.record.staged = None;
        self.record.fell_back = None;
        self.save()
    }

    fn reject(&mut self, reason: &str) -> Result<(), String> {
        if let Some(trial) = &mut self.record.trial {
            trial.rejected = Some(reason.to_owned());
        }
        self.save()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> FirmwareVersion {
        s.parse().unwrap()
    }

    fn stage_and_trial(slots: &mut AbSlots, image: &[u8], version: &str) {
        let digest = shoal_wire::image::hex(Sha256::digest(image).as_slice());
        slots.stage(&digest).unwrap();
        slots.write(0, &image[..3]).unwrap();
        slots.write(3, &image[3..]).unwrap();
        assert_eq!(
            slots.digest(image.len() as u64).unwrap(),
            <[u8; 32]>::from(Sha256::digest(image))
        );
        slots.mark_trial(&v(version)).unwrap();
        slots.reboot();
    }

    #[test]
    fn a_committed_trial_runs_and_a_trial_that_does_not_confirm_falls_back() {
        let dir = std::env::temp_dir().join(format!("shoal-slots-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut slots = AbSlots::open(&dir, &v("1.0.0")).unwrap();
        stage_and_trial(&mut slots, b"image 1.1.0", "1.1.0");
        assert_eq!(slots.boot(), Boot::Trial(v("1.1.0")));
        assert_eq!(slots.running(), v("1.0.0"), "not before the commit");
        slots.commit().unwrap();
        // What was written survives a restart of the process (a power cycle).
        let mut slots = AbSlots::open(&dir, &v("9.9.9")).unwrap();
        assert_eq!(
            (slots.running(), slots.boot()),
            (v("1.1.0"), Boot::Committed)
        );

        // A trial that never commits (power lost during it) falls back, and says so.
        stage_and_trial(&mut slots, b"image 1.2.0", "1.2.0");
        slots.reboot();
        let Boot::FellBack { version, reason } = slots.boot() else {
            panic!("{:?}", slots.boot())
        };
        assert_eq!((version, slots.running()), (v("1.2.0"), v("1.1.0")));
        assert!(reason.contains("did not confirm"), "{reason}");
        // A self-test refusal carries its reason.
        let mut memory = AbSlots::in_memory(&v("1.0.0"));
        stage_and_trial(&mut memory, b"image 2", "2.0.0");
        memory.reject("self-test failed: sensor bus").unwrap();
        memory.reboot();
        assert_eq!(
            memory.boot(),
            Boot::FellBack {
                version: v("2.0.0"),
                reason: "self-test failed: sensor bus".into()
            }
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
