//! Helpers for Shoal's integration tests (in `tests/tests/`): reaching the local AWS endpoint, and
//! checking the SAM template against the workspace.

pub mod deployment;
pub mod firmware;
pub mod iot_policy;
pub mod local;
pub mod mqtt5;
pub mod provisioned;
pub mod router;
pub mod template;

use std::path::PathBuf;

/// The repository root (this crate lives in `<root>/tests`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}
