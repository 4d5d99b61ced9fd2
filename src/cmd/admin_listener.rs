//! The admin listener of `tally up`, `tally enforcer` and `tally serve`: plain TCP, or TLS
//! when `admin.tls` is set, with each handshake in its own task so a slow client never
//! holds up the others. Implements axum's `Listener`; must not route or serve requests.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tally_enforcer::tls::{TlsConfig, handshake};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A connection's byte stream, plain or TLS.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A bound admin listener.
pub(crate) struct AdminListener {
    addr: SocketAddr,
    kind: Kind,
}

enum Kind {
    Plain(TcpListener),
    /// Connections whose handshake completed, from the accepting task.
    Tls(mpsc::Receiver<(Box<dyn Io>, SocketAddr)>),
}

impl AdminListener {
    /// Bind `addr`, with TLS when `tls` is given.
    pub(crate) async fn bind(addr: SocketAddr, tls: Option<&TlsConfig>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("admin.bind: cannot listen on {addr}"))?;
        let addr = listener.local_addr()?;
        let kind = match tls {
            None => Kind::Plain(listener),
            Some(tls) => {
                let acceptor = tls.acceptor().map_err(|e| anyhow::anyhow!("admin.{e}"))?;
                let (tx, rx) = mpsc::channel(64);
                tokio::spawn(async move {
                    loop {
                        let (stream, peer) = tokio::select! {
                            accepted = TcpListener::accept(&listener) => match accepted {
                                Ok(c) => c,
                                Err(e) => {
                                    tracing::warn!(error = %e, "admin accept failed");
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                    continue;
                                }
                            },
                            () = tx.closed() => return,
                        };
                        let (acceptor, tx) = (acceptor.clone(), tx.clone());
                        tokio::spawn(async move {
                            if let Some(s) = handshake(&acceptor, stream).await {
                                let _ = tx.send((Box::new(s) as Box<dyn Io>, peer)).await;
                            }
                        });
                    }
                });
                Kind::Tls(rx)
            }
        };
        Ok(Self { addr, kind })
    }

    /// The bound address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https` with TLS, else `http`: for the address users are shown.
    pub(crate) fn scheme(&self) -> &'static str {
        match self.kind {
            Kind::Plain(_) => "http",
            Kind::Tls(_) => "https",
        }
    }
}

impl axum::serve::Listener for AdminListener {
    type Io = Box<dyn Io>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        match &mut self.kind {
            Kind::Plain(listener) => loop {
                match TcpListener::accept(listener).await {
                    Ok((s, peer)) => return (Box::new(s), peer),
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            },
            Kind::Tls(rx) => match rx.recv().await {
                Some(c) => c,
                // The accepting task ended (the runtime is shutting down).
                None => std::future::pending().await,
            },
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}
