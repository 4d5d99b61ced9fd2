//! The proxy listener: accepts connections (over TLS when `proxy.tls` is set), serves
//! HTTP/1.1 and HTTP/2 (auto-detected, or by ALPN) with the request handler, and shuts down gracefully (stop accepting, let in-flight
//! requests and streams finish within a deadline). Must not handle requests itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::proxy::{ProxyState, handle};

/// Serve until `shutdown` resolves, then drain connections for up to `drain`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ProxyState>,
    shutdown: impl std::future::Future<Output = ()>,
    drain: Duration,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let max_head = state.config.max_header_bytes.max(8192);
    builder.http1().max_buf_size(max_head);
    builder
        .http2()
        .max_concurrent_streams(1024)
        .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX));
    let acceptor = match &state.config.tls {
        Some(tls) => Some(
            tls.acceptor()
                .map_err(|e| std::io::Error::other(e.to_string()))?,
        ),
        None => None,
    };
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        // Boxed: an HTTP/2 stream's task is sized for its service future and lives as
        // long as the response body streams; boxed, the handler's state (authentication,
        // policy, the wait for the upstream's head) is freed once the head is out.
        let service = service_fn(move |req| Box::pin(handle(state.clone(), req)));
        let Some(acceptor) = &acceptor else {
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            let conn = graceful.watch(conn.into_owned());
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
            continue;
        };
        // TLS: the handshake runs in the connection's task, never in the accept loop.
        let (acceptor, builder, watcher) = (acceptor.clone(), builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            let Some(tls) = crate::tls::handshake(&acceptor, stream).await else {
                return;
            };
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(drain) => tracing::warn!(?drain, "drain deadline passed; closing remaining connections"),
    }
    Ok(())
}

/// Bind the configured address with a clear error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("proxy.bind: cannot listen on {addr}: {e}. Is another process using the port? Set proxy.listen or --listen"),
        )
    })
}
