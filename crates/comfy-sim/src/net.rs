//! A listener whose connections can be cut abruptly, one by one (dropping a WebSocket) or all at
//! once (a crash): every accepted stream fails its next read/write once its token is cancelled.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Per-connection information handed to handlers (through `ConnectInfo`).
#[derive(Clone, Debug)]
pub(crate) struct ConnMeta {
    #[allow(dead_code)]
    pub peer: SocketAddr,
    /// Cancelling it cuts this connection.
    pub kill: CancellationToken,
}

impl Connected<IncomingStream<'_, KillableListener>> for ConnMeta {
    fn connect_info(stream: IncomingStream<'_, KillableListener>) -> Self {
        stream.remote_addr().clone()
    }
}

pub(crate) struct KillableListener {
    pub inner: TcpListener,
    /// Parent of every connection's token.
    pub kill: CancellationToken,
}

impl Listener for KillableListener {
    type Io = KillableStream;
    type Addr = ConnMeta;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let kill = self.kill.child_token();
                    let io = KillableStream {
                        inner: stream,
                        dead: Box::pin(kill.clone().cancelled_owned()),
                    };
                    return (io, ConnMeta { peer, kill });
                }
                Err(e) => {
                    // As axum does: back off on accept errors (e.g. too many open files).
                    tracing::debug!("accept error: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(ConnMeta {
            peer: self.inner.local_addr()?,
            kill: self.kill.clone(),
        })
    }
}

pub(crate) struct KillableStream {
    inner: TcpStream,
    dead: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl KillableStream {
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.dead.as_mut().poll(cx).is_ready() {
            Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "connection cut by comfy-sim",
            ))
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for KillableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
