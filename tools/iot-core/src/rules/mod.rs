//! The rules engine: AWS IoT rules read from the SAM template, their SQL ([`sql`]) applied to
//! every message the broker routes, and their actions run.

pub mod engine;
pub mod sql;
pub mod template;
