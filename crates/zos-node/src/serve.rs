//! Serving the API on one listener with limits no client can wear down: a cap on open
//! connections, in all and per peer address, a time limit on each request's head (which also bounds how long a kept-alive
//! connection may idle), on TLS handshakes, and on request bodies. Without them, idle
//! connections that never finish their headers were held forever, and at the process's file
//! limit the node stopped answering anyone.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

/// The limits one listener serves under (from the node config).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time a client has to send a request's head: from its connection (and TLS handshake)
    /// or from the end of the previous answer on a kept-alive connection.
    pub header_timeout: Duration,
    /// Time a client has to send a whole request body.
    pub body_timeout: Duration,
    /// Connections open at once on this listener; more are closed as soon as accepted.
    pub max_connections: usize,
    /// Connections one peer address may hold open at once on a TCP listener, so a single
    /// client cannot take every slot of [`Self::max_connections`].
    pub max_connections_per_peer: usize,
}

/// A listening socket.
pub enum Listener {
    /// A unix socket: plain HTTP (the file's permissions and the signatures guard it).
    Unix(tokio::net::UnixListener),
    /// TCP, with TLS unless the config asked for plain HTTP.
    Tcp(tokio::net::TcpListener, Option<TlsAcceptor>),
}

/// What a connection's bytes travel through, whatever the listener.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An accepted connection, before any TLS handshake.
enum Accepted {
    Plain(Box<dyn Io>),
    Tls(tokio::net::TcpStream, TlsAcceptor),
}

/// Open connections per peer address: taken when one is accepted, given back when it ends.
#[derive(Default)]
struct PerPeer(std::sync::Mutex<HashMap<IpAddr, usize>>);

/// One peer's connection counted in [`PerPeer`] until dropped.
struct PeerSlot(Arc<PerPeer>, IpAddr);

impl PerPeer {
    /// A slot for `peer`, or `None` when it already holds `max` connections.
    fn take(self: &Arc<Self>, peer: IpAddr, max: usize) -> Option<PeerSlot> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(peer).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerSlot(self.clone(), peer))
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = (self.0).0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

impl Listener {
    /// The next connection, and its peer's address on TCP.
    async fn accept(&self) -> std::io::Result<(Accepted, Option<IpAddr>)> {
        match self {
            Listener::Unix(l) => Ok((Accepted::Plain(Box::new(l.accept().await?.0)), None)),
            Listener::Tcp(l, tls) => {
                let (stream, peer) = l.accept().await?;
                // Small answers go out at once rather than waiting for more to send.
                let _ = stream.set_nodelay(true);
                let accepted = match tls {
                    Some(acceptor) => Accepted::Tls(stream, acceptor.clone()),
                    None => Accepted::Plain(Box::new(stream)),
                };
                Ok((accepted, Some(peer.ip())))
            }
        }
    }
}

/// Serves `app` on `listener` under `limits` until `stopping` turns true, then lets open
/// connections finish (the caller bounds how long it waits for that).
pub async fn serve(
    listener: Listener,
    app: Router,
    limits: Limits,
    mut stopping: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        limits.body_timeout,
    ));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_peer = Arc::new(PerPeer::default());
    // Each connection's task holds a sender: once all are dropped, every connection ended.
    // (hyper-util's GracefulShutdown cannot watch an HTTP/1 connection that upgrades.)
    let (open, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let builder = Arc::new(builder);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopping.wait_for(|stop| *stop) => break,
        };
        let (accepted, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors or a connection reset before it was taken: keep serving
                // the others, after a pause so a full table is not spun on.
                tracing::warn!(error = %e, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(
                max_connections = limits.max_connections,
                "connection refused: max_connections are open"
            );
            drop(accepted);
            continue;
        };
        let peer_slot = match peer {
            Some(ip) => match per_peer.take(ip, limits.max_connections_per_peer) {
                Some(slot) => Some(slot),
                None => {
                    tracing::warn!(
                        peer = %ip,
                        max_connections_per_peer = limits.max_connections_per_peer,
                        "connection refused: this peer has max_connections_per_peer open"
                    );
                    continue;
                }
            },
            None => None,
        };
        let builder = builder.clone();
        let service = TowerToHyperService::new(app.clone());
        let open = open.clone();
        let mut stop = stopping.clone();
        tokio::spawn(async move {
            let _slots = (slot, peer_slot, open);
            let io: Box<dyn Io> = match accepted {
                Accepted::Plain(io) => io,
                Accepted::Tls(stream, acceptor) => {
                    match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await
                    {
                        Ok(Ok(tls)) => Box::new(tls),
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    }
                }
            };
            let mut conn = std::pin::pin!(builder
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades());
            // A stopping node lets the request in flight finish, then closes.
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                () = async { drop(stop.wait_for(|stop| *stop).await) } => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drop(open);
    let _ = all_closed.recv().await;
    Ok(())
}

/// Lets the process open as many files as the host allows it (the soft limit up to the hard
/// one), so that `max_connections` is reached before the file table is full; returns the
/// limit now in force.
pub fn raise_file_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                lim = wanted;
            }
        }
    }
    lim.rlim_cur
}
