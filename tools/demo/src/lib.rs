//! `make demo`: the whole system on this machine. A simulated fleet (`shoal-agent`'s simulator)
//! provisions by claim through the local IoT Core and the template's functions, sends telemetry
//! through an outage, takes a configuration change and two firmware rollouts — one that fails
//! its canary, is paused and rolled back, one that reaches every device — and the run is then read
//! back from the stores into a summary and a self-contained HTML report.
//!
//! `layout`: the fleet's names, manifest and images (pure). `stack`: the local stack's endpoints.
//! `scenario`: the steps. `stores`: the read-back. `report`: the summary text, the HTML and the
//! PNG of its main figure.

pub mod layout;
pub mod report;
pub mod scenario;
pub mod stack;
pub mod stores;
