//! A local AWS IoT Core for the local stack: devices connect with MQTT over TLS and an X.509
//! client certificate exactly as they would to AWS IoT Core's data endpoint, and the certificate
//! decides who they are.
//!
//! - [`tls`]: the local CA the stack creates, the server certificate it signs, and the TLS
//!   configuration that asks every client for a certificate (ALPN `x-amzn-mqtt-ca` on the
//!   port-443 listener, as AWS's device SDKs send).
//! - [`identity`]: a certificate's id (SHA-256 of its DER, as AWS IoT computes it) and the
//!   registry that must hold it `ACTIVE` (moto's IoT registry locally), with the policies and
//!   the thing attached to it.
//! - [`policy`]: AWS IoT policies (actions, resource ARNs, policy variables, conditions),
//!   compiled once per connection and checked for every CONNECT, PUBLISH, SUBSCRIBE and delivery.
//! - [`topic`]: topic names and filters with AWS IoT's limits, and wildcard matching.
//! - [`broker`]: sessions (clean and persistent, taken over by a second connection with the same
//!   client id), subscriptions, retained messages and routing with QoS 0 and 1 (through
//!   [`subscriptions`]: every session's filters in one tree of topic levels).
//! - [`lifecycle`]: the connected and disconnected events on `$aws/events/presence/…`.
//! - [`shadow`]: the Device Shadow service (classic and named shadows, versions, delta,
//!   documents), served on its reserved topics by [`reserved`] and over HTTP by [`dataplane`]
//!   (with Publish): one store, so a change made through either reaches both.
//! - [`provisioning`]: fleet provisioning's certificate APIs on their reserved topics, answered
//!   to the asking connection alone.
//! - [`fleet`]: RegisterThing's provisioning templates (with [`provisioning`]), and the template's
//!   IoT policies and thing types as the registry should hold them.
//! - [`jitr`]: just-in-time registration of certificates signed by a registered CA.
//! - [`lambda`]: a client of Lambda's Invoke API (rule actions, the pre-provisioning hook).
//! - [`rules`]: the template's IoT rules: IoT SQL, actions, error actions.
//! - [`connection`]: one client's conversation, MQTT 3.1.1 or 5 ([`wire`]: the two versions'
//!   packets as one set of events); [`server`]: the listeners.
//!
//! What AWS IoT Core does that this does not do yet (the jobs topics among others) is listed in
//! README's emulator table.

pub mod broker;
pub mod connection;
pub mod dataplane;
pub mod fleet;
pub mod identity;
pub mod jitr;
pub mod jobs;
pub mod lambda;
pub mod lifecycle;
pub mod policy;
pub mod provisioning;
pub mod reserved;
pub mod rules;
pub mod server;
pub mod shadow;
pub mod subscriptions;
pub mod tls;
pub mod topic;
pub mod wire;
