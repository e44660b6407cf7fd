//! The listeners: TCP, the TLS handshake (bounded in time), the client certificate's id, then
//! one task per connection ([`crate::connection::serve`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::broker::Broker;
use crate::broker::Message;
use crate::connection::{Ended, Peer, Settings, serve};
use crate::identity::{Registry, certificate_id};
use crate::jitr::{self, CaRegistry};

/// How long a client has to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once, at most; more wait for one to end.
pub const MAX_CONNECTIONS: usize = 10_000;

/// Accepts connections on `listener` for ever, each through `acceptor`'s TLS, then MQTT. With
/// `alpn` set, a client must have negotiated that ALPN protocol (AWS's port 443 serves MQTT only
/// to clients that ask for `x-amzn-mqtt-ca`).
pub async fn accept_loop<R: Registry + CaRegistry>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    alpn: Option<&'static [u8]>,
    broker: Arc<Broker>,
    registry: Arc<R>,
    slots: Arc<Semaphore>,
    settings: Settings,
) {
    accept_each(listener, slots, move |tcp, addr| {
        let (acceptor, broker, registry) = (acceptor.clone(), broker.clone(), registry.clone());
        async move {
            let _ = tcp.set_nodelay(true);
            let ended = connect(tcp, addr, acceptor, alpn, broker, registry, settings).await;
            tracing::info!(%addr, ?ended, "connection ended");
        }
    })
    .await;
}

/// Accepts connections on `listener` for ever, one task each running `serve`, as many at once
/// as `slots` has permits (the others wait to be accepted).
pub async fn accept_each<F, Fut>(listener: TcpListener, slots: Arc<Semaphore>, serve: F)
where
    F: Fn(tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let served = serve(tcp, addr);
        tokio::spawn(async move {
            let _slot = slot;
            served.await;
        });
    }
}

async fn connect<R: Registry + CaRegistry>(
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    acceptor: TlsAcceptor,
    alpn: Option<&'static [u8]>,
    broker: Arc<Broker>,
    registry: Arc<R>,
    settings: Settings,
) -> Ended {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Ended::Refused(format!("TLS handshake: {e}")),
        Err(_) => return Ended::Refused("TLS handshake timed out".into()),
    };
    if let Some(required) = alpn
        && tls.get_ref().1.alpn_protocol() != Some(required)
    {
        return Ended::Refused("no ALPN x-amzn-mqtt-ca: not an MQTT client on this port".into());
    }
    let Some((certificate, issuers)) = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.split_first())
    else {
        return Ended::Refused("no client certificate".into());
    };
    let peer = Peer {
        certificate_id: certificate_id(certificate),
        ip_address: addr.ip(),
    };
    // Just-in-time registration: only a client that presents a chain can be asking for it.
    if !issuers.is_empty() && matches!(registry.certificate(&peer.certificate_id).await, Ok(None)) {
        let issuers: Vec<Vec<u8>> = issuers.iter().map(|c| c.to_vec()).collect();
        match jitr::register(registry.as_ref(), certificate, &issuers).await {
            Ok(Some(registered)) => {
                let (topic, payload) = registered.event(crate::lifecycle::now_ms());
                broker.publish(Message::from_service(topic, payload));
                return Ended::Refused(format!(
                    "certificate {} registered PENDING_ACTIVATION by just-in-time registration (CA {}); the connection is closed as AWS IoT closes it",
                    registered.certificate_id, registered.ca_certificate_id
                ));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(certificate_id = %peer.certificate_id, error = %e, "just-in-time registration failed")
            }
        }
    }
    tracing::debug!(%addr, certificate_id = %peer.certificate_id, "TLS established");
    serve(tls, peer, broker, registry, settings).await
}
