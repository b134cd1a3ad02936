//! Cancel requests for an owned pool's connections, closed the way libpq closes them.
//!
//! tokio-postgres's `CancelToken::cancel_query` hangs up right after sending the request.
//! PostgreSQL does not mind, but pgBouncer does: it forwards a cancel request over a server
//! connection it opens for the purpose, and drops the request if its sender hung up before
//! that (pgBouncer 1.18 logs "client unexpected eof"). So the request goes over a connection
//! of ours, which waits for the other side to close it, as libpq's `PQcancel` does.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
// tokio's `net` feature comes with tokio-postgres's default `runtime` feature, which the pool's
// own connections need.
use tokio::net::TcpStream;
use tokio_postgres::config::Host;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{CancelToken, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::tls::PoolTls;

/// How long the client waits beyond the statement timeout for the server to cancel a statement
/// before it gives up on the connection itself.
pub(super) const CLIENT_TIMEOUT_GRACE: Duration = Duration::from_secs(1);

/// Where and how the connections of an owned pool send cancel requests.
#[derive(Clone)]
pub(super) struct Canceller {
    /// The one TCP address the pool connects to, and the host name for TLS; `None` for
    /// several hosts (which one a connection went to is not known here) or a Unix socket,
    /// where tokio-postgres's own cancel request is sent.
    target: Option<Target>,
    /// The pool's TLS connector; `None` for `sslmode=disable`.
    tls: Option<MakeRustlsConnect>,
}

#[derive(Clone)]
struct Target {
    /// `hostaddr` when set, else the host name.
    address: String,
    port: u16,
    host: String,
}

impl Canceller {
    pub(super) fn new(pg: &tokio_postgres::Config, tls: Option<MakeRustlsConnect>) -> Self {
        let target = match pg.get_hosts() {
            [Host::Tcp(host)] => {
                let address = pg
                    .get_hostaddrs()
                    .first()
                    .map_or_else(|| host.clone(), |addr| addr.to_string());
                let port = pg.get_ports().first().copied().unwrap_or(5432);
                Some(Target {
                    address,
                    port,
                    host: host.clone(),
                })
            }
            _ => None,
        };
        Canceller { target, tls }
    }

    /// Asks the server (or the pooler in front of it) to cancel what `token`'s connection
    /// runs, and returns once the other side closed the request's connection. `fallback` is
    /// the pool's TLS connector, for tokio-postgres's own cancel request.
    pub(super) async fn cancel<T: PoolTls>(
        &self,
        token: &CancelToken,
        fallback: T,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let Some(target) = &self.target else {
            return Ok(token.cancel_query(fallback).await?);
        };
        let stream = UntilClosed(TcpStream::connect((target.address.as_str(), target.port)).await?);
        match &self.tls {
            None => token.cancel_query_raw(stream, NoTls).await?,
            Some(tls) => {
                let connect = MakeTlsConnect::<UntilClosed>::make_tls_connect(
                    &mut tls.clone(),
                    &target.host,
                )?;
                token.cancel_query_raw(stream, connect).await?
            }
        }
        Ok(())
    }
}

/// A TCP stream whose shutdown waits for the other side to close, instead of closing ours. (Over
/// TLS, the close_notify sent first still ends the request early for pgBouncer: this helps
/// plain connections, including `sslmode=prefer` ones the pooler answered without TLS.)
struct UntilClosed(TcpStream);

impl AsyncRead for UntilClosed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for UntilClosed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let stream = &mut self.get_mut().0;
        let mut scratch = [0u8; 64];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                // Closed, with a reset or without: either way the other side is done.
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {}
            }
        }
    }
}
