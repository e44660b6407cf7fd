use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use base64::Engine;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::EncodePublicKey;
use proptest::prelude::*;
use shoal_wire::image::{hex, sha256};

use super::*;

fn version(text: &str) -> FirmwareVersion {
    text.parse().unwrap()
}

/// An A/B board: the committed slot, the inactive one, and a bootloader that boots a slot on
/// trial once and falls back unless it was committed.
#[derive(Debug, Clone)]
struct Board {
    committed: (FirmwareVersion, Vec<u8>),
    inactive: Vec<u8>,
    inactive_sha: Option<String>,
    trial: Option<FirmwareVersion>,
    trial_booted: bool,
    rejected: Option<String>,
    boot: Boot,
}

impl Board {
    fn new(running: &str, image: &[u8]) -> Self {
        Self {
            committed: (version(running), image.to_vec()),
            inactive: Vec::new(),
            inactive_sha: None,
            trial: None,
            trial_booted: false,
            rejected: None,
            boot: Boot::Committed,
        }
    }

    /// A reboot or a power loss: what the bootloader does.
    fn power_cycle(&mut self) {
        self.boot = match (&self.trial, self.trial_booted, &self.rejected) {
            (Some(v), false, None) => {
                self.trial_booted = true;
                Boot::Trial(v.clone())
            }
            (Some(v), _, rejected) => {
                let reason = rejected
                    .clone()
                    .unwrap_or_else(|| "no confirmation after a trial boot".into());
                let version = v.clone();
                self.trial = None;
                self.trial_booted = false;
                self.rejected = None;
                Boot::FellBack { version, reason }
            }
            // A fallback is remembered until another image is staged.
            (None, _, _) => match &self.boot {
                Boot::FellBack { .. } => self.boot.clone(),
                _ => Boot::Committed,
            },
        };
    }
}

impl Slots for Board {
    fn running(&self) -> FirmwareVersion {
        match &self.boot {
            Boot::Trial(v) => v.clone(),
            _ => self.committed.0.clone(),
        }
    }
    fn boot(&self) -> Boot {
        self.boot.clone()
    }
    fn staged(&self) -> Option<(String, u64)> {
        self.inactive_sha
            .clone()
            .map(|sha| (sha, self.inactive.len() as u64))
    }
    fn stage(&mut self, sha256: &str) -> Result<(), String> {
        if let Boot::FellBack { .. } = self.boot {
            self.boot = Boot::Committed;
        }
        self.inactive.clear();
        self.inactive_sha = Some(sha256.into()).filter(|s: &String| !s.is_empty());
        self.trial = None;
        Ok(())
    }
    fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<(), String> {
        assert_eq!(offset, self.inactive.len() as u64, "writes are sequential");
        self.inactive.extend_from_slice(bytes);
        Ok(())
    }
    fn digest(&self, len: u64) -> Result<[u8; 32], String> {
        let len = usize::try_from(len).unwrap().min(self.inactive.len());
        Ok(sha256(&self.inactive[..len]))
    }
    fn mark_trial(&mut self, version: &FirmwareVersion) -> Result<(), String> {
        self.trial = Some(version.clone());
        self.trial_booted = false;
        Ok(())
    }
    fn commit(&mut self) -> Result<(), String> {
        let Boot::Trial(v) = &self.boot else {
            return Err("not on trial".into());
        };
        self.committed = (v.clone(), core::mem::take(&mut self.inactive));
        self.inactive_sha = None;
        self.trial = None;
        self.boot = Boot::Committed;
        Ok(())
    }
    fn reject(&mut self, reason: &str) -> Result<(), String> {
        self.rejected = Some(reason.into());
        Ok(())
    }
}

const OLD_IMAGE: &[u8] = b"firmware 1.0.0";

struct Fleet {
    key: SigningKey,
    public: Vec<u8>,
}

impl Fleet {
    fn new() -> Self {
        let key = SigningKey::from_bytes(&[7u8; 32].into()).unwrap();
        let public = key
            .verifying_key()
            .to_public_key_der()
            .unwrap()
            .as_bytes()
            .to_vec();
        Self { key, public }
    }

    /// A request for `image` as `version`, signed by `signer`.
    fn request(&self, version_text: &str, image: &[u8], signer: &SigningKey) -> OtaDesired {
        let digest = sha256(image);
        let signature: Signature = signer.sign(&digest);
        OtaDesired {
            rollout: "r-1".into(),
            version: version(version_text),
            url: "https://firmware.example/image".into(),
            url_expires_ms: u64::MAX,
            sha256: hex(&digest),
            signature: base64::engine::general_purpose::STANDARD
                .encode(signature.to_der().as_bytes()),
            size: image.len() as u64,
        }
    }
}

/// How a run goes wrong.
#[derive(Debug, Clone, Default)]
struct Faults {
    /// The downloaded bytes have this byte flipped.
    flip: Option<usize>,
    /// The self-test fails.
    self_test_fails: bool,
    /// Power is lost before this many steps have been carried out (then the device boots
    /// again, without any state of the OTA machine, and gets the request again).
    power_loss_at: Option<usize>,
}

/// Runs the device until nothing is left to do: (the reports, in order).
fn run(
    fleet: &Fleet,
    board: &mut Board,
    desired: &OtaDesired,
    image: &[u8],
    faults: &Faults,
) -> Vec<OtaReport> {
    let mut reports = Vec::new();
    let mut ota = Ota::new(fleet.public.clone(), Some(version("0.9.0")));
    let mut steps = ota.request(Some(desired.clone()), board);
    let mut done = 0usize;
    let mut power_lost = false;
    let served: Vec<u8> = match faults.flip {
        Some(i) if !image.is_empty() => {
            let mut bytes = image.to_vec();
            bytes[i % image.len()] ^= 0x40;
            bytes
        }
        _ => image.to_vec(),
    };
    let mut guard = 0;
    while let Some(step) = (!steps.is_empty()).then(|| steps.remove(0)) {
        guard += 1;
        assert!(guard < 10_000, "the device loops");
        if !power_lost && faults.power_loss_at == Some(done) {
            power_lost = true;
            board.power_cycle();
            ota = Ota::new(fleet.public.clone(), Some(version("0.9.0")));
            steps = ota.booted(board);
            steps.extend(ota.request(Some(desired.clone()), board));
            continue;
        }
        done += 1;
        match step {
            Step::Report(report) => {
                if report.status == OtaStatus::Success {
                    assert_eq!(
                        board.committed.0.to_string(),
                        report.running_version.clone().unwrap(),
                        "success is reported only once committed"
                    );
                }
                reports.push(report);
            }
            Step::Download { offset, .. } => {
                let start = usize::try_from(offset).unwrap();
                for (i, chunk) in served[start..].chunks(5).enumerate() {
                    let at = (start + i * 5) as u64;
                    steps.extend(ota.chunk(at, chunk, board));
                }
            }
            Step::Reboot => {
                board.power_cycle();
                ota = Ota::new(fleet.public.clone(), Some(version("0.9.0")));
                steps.extend(ota.booted(board));
                // The shadow's request comes again on reconnect.
                steps.extend(ota.request(Some(desired.clone()), board));
            }
            Step::SelfTest => {
                let result = if faults.self_test_fails {
                    Err("sensor bus does not answer".to_string())
                } else {
                    Ok(())
                };
                steps.extend(ota.self_test(result, board));
            }
        }
        // Whatever happens, the committed slot holds a verified image: the old or the new one.
        let committed = sha256(&board.committed.1);
        assert!(
            committed == sha256(OLD_IMAGE) || committed == sha256(image),
            "an unverified image was committed"
        );
    }
    reports
}

fn statuses(reports: &[OtaReport]) -> Vec<OtaStatus> {
    reports.iter().map(|r| r.status).collect()
}

#[test]
fn a_good_image_is_verified_trial_booted_committed_and_only_then_reported_success() {
    let fleet = Fleet::new();
    let image = b"firmware 1.1.0 with a new sensor driver".repeat(3);
    let desired = fleet.request("1.1.0", &image, &fleet.key);
    let mut board = Board::new("1.0.0", OLD_IMAGE);
    let reports = run(&fleet, &mut board, &desired, &image, &Faults::default());
    assert_eq!(
        statuses(&reports),
        [
            OtaStatus::Downloading,
            OtaStatus::Verifying,
            OtaStatus::Applying,
            OtaStatus::Success
        ]
    );
    assert_eq!(board.committed.0, version("1.1.0"));
    assert_eq!(reports[3].running_version.as_deref(), Some("1.1.0"));
    assert_eq!(
        reports[2].running_version.as_deref(),
        Some("1.0.0"),
        "applying: the old one runs"
    );
}

#[test]
fn a_tampered_image_is_refused_with_the_reason_and_never_applied() {
    let fleet = Fleet::new();
    let image = b"firmware 1.1.0".repeat(4);
    let stranger = SigningKey::from_bytes(&[9u8; 32].into()).unwrap();
    let cases: [(OtaDesired, Faults, &str); 3] = [
        (
            fleet.request("1.1.0", &image, &fleet.key),
            Faults {
                flip: Some(17),
                ..Faults::default()
            },
            "sha256 mismatch",
        ),
        (
            fleet.request("1.1.0", &image, &stranger),
            Faults::default(),
            "signature refused",
        ),
        (
            fleet.request("0.8.0", &image, &fleet.key),
            Faults::default(),
            "anti-rollback",
        ),
    ];
    for (desired, faults, why) in cases {
        let mut board = Board::new("1.0.0", OLD_IMAGE);
        let reports = run(&fleet, &mut board, &desired, &image, &faults);
        let last = reports.last().unwrap();
        assert_eq!(last.status, OtaStatus::Failed, "{why}");
        assert!(
            last.reason.as_deref().unwrap().contains(why),
            "{:?}",
            last.reason
        );
        assert_eq!(last.running_version.as_deref(), Some("1.0.0"));
        assert!(board.trial.is_none(), "{why}: never marked bootable");
        assert_eq!(board.committed.0, version("1.0.0"));
        assert!(!statuses(&reports).contains(&OtaStatus::Applying), "{why}");
    }
}

#[test]
fn a_failed_self_test_falls_back_and_reports_the_old_version_running() {
    let fleet = Fleet::new();
    let image = b"firmware 1.1.0 that breaks rev-a".repeat(2);
    let desired = fleet.request("1.1.0", &image, &fleet.key);
    let mut board = Board::new("1.0.0", OLD_IMAGE);
    let faults = Faults {
        self_test_fails: true,
        ..Faults::default()
    };
    let reports = run(&fleet, &mut board, &desired, &image, &faults);
    let last = reports.last().unwrap();
    assert_eq!(last.status, OtaStatus::Failed);
    assert_eq!(last.running_version.as_deref(), Some("1.0.0"));
    assert_eq!(last.target_version.as_deref(), Some("1.1.0"));
    assert!(
        last.reason.as_deref().unwrap().contains("sensor bus"),
        "{:?}",
        last.reason
    );
    assert!(!statuses(&reports).contains(&OtaStatus::Success));
    assert_eq!(board.committed.0, version("1.0.0"));
}

#[test]
fn a_version_already_running_is_reported_success_at_once_and_a_withdrawal_stops() {
    let fleet = Fleet::new();
    let desired = fleet.request("1.0.0", OLD_IMAGE, &fleet.key);
    let mut board = Board::new("1.0.0", OLD_IMAGE);
    let mut ota = Ota::new(fleet.public.clone(), None);
    let steps = ota.request(Some(desired), &mut board);
    assert!(matches!(&steps[..], [Step::Report(r)] if r.status == OtaStatus::Success));
    assert!(ota.request(None, &mut board).is_empty());
    assert!(
        ota.chunk(0, b"late bytes", &mut board).is_empty(),
        "no request, no write"
    );
}

proptest! {
    /// A power loss at any step: the device ends running the new image, committed, with success
    /// reported only after the commit — or, when the power went during the trial boot or the
    /// self-test failed, back on the old image with the failure reported; the committed slot
    /// never holds anything but a verified image (checked after every step).
    #[test]
    fn a_power_loss_at_any_step_leaves_a_verified_bootable_slot(
        at in 0usize..24,
        size in 1usize..64,
        self_test_fails: bool,
    ) {
        let fleet = Fleet::new();
        let image: Vec<u8> = (0..size).map(|i| u8::try_from(i % 251).unwrap()).collect();
        let desired = fleet.request("1.2.0", &image, &fleet.key);
        let mut board = Board::new("1.0.0", OLD_IMAGE);
        let faults = Faults { power_loss_at: Some(at), self_test_fails, ..Faults::default() };
        let reports = run(&fleet, &mut board, &desired, &image, &faults);
        let last = reports.last().expect("a report");
        match last.status {
            OtaStatus::Success => {
                prop_assert!(!self_test_fails);
                prop_assert_eq!(board.committed.0.clone(), version("1.2.0"));
                prop_assert_eq!(board.committed.1.clone(), image);
            }
            OtaStatus::Failed => {
                // The self-test failed, or the power went during the trial boot (a trial that
                // never confirms is a crash loop to the bootloader): the old image runs.
                let reason = last.reason.clone().unwrap_or_default();
                prop_assert!(
                    self_test_fails || reason.contains("no confirmation after a trial boot"),
                    "{}", reason
                );
                prop_assert_eq!(board.committed.0.clone(), version("1.0.0"));
                prop_assert_eq!(last.running_version.as_deref(), Some("1.0.0"));
            }
            other => prop_assert!(false, "ended {:?}", other),
        }
    }
}

/// A request for a 50-byte 1.1.0 whose first 20 bytes are written.
fn partly_downloaded() -> (Fleet, Vec<u8>, OtaDesired, Board, Ota) {
    let fleet = Fleet::new();
    let image = b"0123456789".repeat(5);
    let desired = fleet.request("1.1.0", &image, &fleet.key);
    let mut board = Board::new("1.0.0", OLD_IMAGE);
    let mut ota = Ota::new(fleet.public.clone(), None);
    ota.request(Some(desired.clone()), &mut board);
    assert!(ota.chunk(0, &image[..20], &mut board).is_empty());
    (fleet, image, desired, board, ota)
}

#[test]
fn an_interrupted_download_resumes_where_the_slot_stopped() {
    let (fleet, image, desired, mut board, _) = partly_downloaded();
    // Reconnected: the request again; the download resumes at byte 20.
    let mut again = Ota::new(fleet.public.clone(), None);
    let steps = again.request(Some(desired), &mut board);
    assert!(
        steps.contains(&Step::Download {
            url: "https://firmware.example/image".into(),
            offset: 20
        }),
        "{steps:?}"
    );
    // A stale chunk (offset 0 again) is not written: resume from the slot.
    let stale = again.chunk(0, &image[..5], &mut board);
    assert_eq!(
        stale,
        vec![Step::Download {
            url: "https://firmware.example/image".into(),
            offset: 20
        }]
    );
}

#[test]
fn a_jobs_document_is_the_same_request_and_reports_map_to_job_statuses() {
    let document = serde_json::json!({
        "operation": "shoal-ota",
        "rollout": "r-1",
        "version": "1.1.0",
        "url": "https://bucket.s3.amazonaws.com/firmware/x.bin?X-Amz-Signature=abc",
        "sha256": "ab".repeat(32),
        "signature": "c2ln",
        "size": 10,
    });
    let request = request_from_job(&document).unwrap();
    assert_eq!(request.version, version("1.1.0"));
    assert_eq!(request.url_expires_ms, u64::MAX, "presigned for this fetch");
    assert!(request_from_job(&serde_json::json!({"operation": "reboot"})).is_err());
    assert!(request_from_job(&serde_json::json!({"operation": "shoal-ota"})).is_err());

    let failed = OtaReport {
        status: OtaStatus::Failed,
        target_version: Some("1.1.0".into()),
        running_version: Some("1.0.0".into()),
        reason: Some("self-test failed".into()),
    };
    let (status, details) = job_update(&failed);
    assert_eq!(status, "FAILED");
    assert_eq!(details["reason"], "self-test failed");
    assert_eq!(details["running_version"], "1.0.0");
    let verifying = OtaReport {
        status: OtaStatus::Verifying,
        reason: None,
        ..failed
    };
    let (status, details) = job_update(&verifying);
    assert_eq!(
        (status, details["step"].as_str()),
        ("IN_PROGRESS", Some("verifying"))
    );
}

#[test]
fn a_repeated_request_keeps_its_place_takes_a_new_url_and_can_be_abandoned() {
    let (_, _, desired, mut board, mut ota) = partly_downloaded();
    // The same request again (a resync, a refreshed URL): nothing restarts…
    let mut refreshed = desired.clone();
    refreshed.url = "https://firmware.example/image?fresh".into();
    assert_eq!(ota.request(Some(refreshed), &mut board), vec![]);
    // …and a download that ended short resumes from the slot with the newest URL.
    assert_eq!(
        ota.resume(&board),
        Some(Step::Download {
            url: "https://firmware.example/image?fresh".into(),
            offset: 20
        })
    );
    // Given up (the download keeps failing): failed with the reason, the old version running.
    let steps = ota.abandon(&board, "download failed 6 times".into());
    let [Step::Report(report)] = steps.as_slice() else {
        panic!("{steps:?}")
    };
    assert_eq!(report.status, OtaStatus::Failed);
    assert_eq!(report.running_version.as_deref(), Some("1.0.0"));
    assert_eq!(report.reason.as_deref(), Some("download failed 6 times"));
    assert_eq!(ota.resume(&board), None, "nothing in hand any more");
}
