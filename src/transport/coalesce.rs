//! Fewer writes for pipelined HTTP requests.
//!
//! hyper writes and flushes each response on its own. A backend that pipelines publishes on one
//! connection then costs the node one `writev` per request, and on loopback the kernel's delivery
//! to the reader with it: 28 % of the node's time at 100 subscribers (issue 5, perf). This wrapper
//! lets a flush wait while the client has already sent more input, which hyper is about to read:
//! the answers then leave together, before the next read.
//!
//! What keeps it safe:
//! - a flush is held only while input is waiting on the socket, so an answer never waits for the
//!   client (a client sending one request at a time is flushed after each, as without it), and
//!   only right after an answer was written: when the next request's handler has to wait, the
//!   flush hyper makes meanwhile releases what is held;
//! - everything held is written before each read, before a shutdown, and past
//!   [`MAX_HELD`] bytes (then with the socket's backpressure);
//! - if the connection is dropped with something held (hyper gives up after an error answer), a
//!   task writes it out;
//! - once a connection is upgraded to a WebSocket ([`CoalesceSwitch::stop`], which the WebSocket
//!   handler calls before answering 101), it is a plain socket.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Most bytes held back before writes go through.
const MAX_HELD: usize = 64 * 1024;
/// Capacity of the holding buffer kept after it is released.
const KEPT_CAPACITY: usize = 4 * 1024;

/// Turns coalescing off for a connection; handed to request handlers as an extension.
#[derive(Clone, Default)]
pub struct CoalesceSwitch(Arc<AtomicBool>);

impl CoalesceSwitch {
    /// From now on every flush writes (an upgraded connection's frames must not wait).
    pub fn stop(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn stopped(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

pub struct Coalescing {
    io: Option<TcpStream>,
    held: Vec<u8>,
    /// Something was written since the last flush. hyper flushes on every pass of its loop,
    /// also while a handler is still working; such a flush has nothing new and releases.
    fresh: bool,
    switch: CoalesceSwitch,
}

impl Coalescing {
    pub fn new(io: TcpStream, switch: CoalesceSwitch) -> Self {
        Self {
            io: Some(io),
            held: Vec::new(),
            fresh: false,
            switch,
        }
    }

    fn io(&self) -> &TcpStream {
        self.io.as_ref().expect("present until drop")
    }

    /// Writes what is held; `Ready(Ok)` once all of it is written.
    fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.held.is_empty() {
            let Self { io, held, .. } = self;
            let io = io.as_mut().expect("present until drop");
            let written = ready!(Pin::new(io).poll_write(cx, held))?;
            if written == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.held.drain(..written);
        }
        if self.held.capacity() > KEPT_CAPACITY {
            // An idle keep-alive connection does not keep a burst's buffer.
            self.held = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Whether the client has sent input that is not read yet.
    fn input_waiting(&self, cx: &mut Context<'_>) -> bool {
        let mut probe = [0u8; 1];
        let mut buf = ReadBuf::new(&mut probe);
        matches!(self.io().poll_peek(cx, &mut buf), Poll::Ready(Ok(n)) if n > 0)
    }
}

impl AsyncRead for Coalescing {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        // Answers leave before the connection waits for more input. A full socket does not stop
        // reading: what is held is bounded, and writes past the bound wait for the socket.
        if let Poll::Ready(Err(e)) = self.poll_release(cx) {
            return Poll::Ready(Err(e));
        }
        let io = self.io.as_mut().expect("present until drop");
        Pin::new(io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Coalescing {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if self.held.len() + buf.len() > MAX_HELD || self.switch.stopped() {
            ready!(self.poll_release(cx))?;
            if buf.len() > MAX_HELD || self.switch.stopped() {
                return Pin::new(self.io.as_mut().expect("present until drop")).poll_write(cx, buf);
            }
        }
        self.held.extend_from_slice(buf);
        self.fresh = true;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if self.held.len() + len > MAX_HELD || self.switch.stopped() {
            ready!(self.poll_release(cx))?;
            if len > MAX_HELD || self.switch.stopped() {
                return Pin::new(self.io.as_mut().expect("present until drop")).poll_write_vectored(cx, bufs);
            }
        }
        for buf in bufs {
            self.held.extend_from_slice(buf);
        }
        self.fresh = true;
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let fresh = std::mem::take(&mut self.fresh);
        if fresh && !self.switch.stopped() && self.input_waiting(cx) {
            // The next request is already here: its answer can go out with this one. If its
            // handler has to wait, hyper's next flush finds nothing new and releases.
            return Poll::Ready(Ok(()));
        }
        self.poll_release(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_release(cx))?;
        Pin::new(self.io.as_mut().expect("present until drop")).poll_shutdown(cx)
    }
}

impl Drop for Coalescing {
    fn drop(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let (Some(mut io), Ok(runtime)) = (self.io.take(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        let held = std::mem::take(&mut self.held);
        runtime.spawn(async move {
            let finish = async {
                io.write_all(&held).await?;
                io.shutdown().await
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), finish).await;
        });
    }
}
