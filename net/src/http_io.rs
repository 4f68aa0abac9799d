//! hyper's IO traits over glommio's `TcpStream`.
//!
//! hyper 1 is runtime-agnostic: it needs `hyper::rt::Read`/`Write`. glommio streams implement the
//! futures-io traits, so this adapter copies between the two. It also records when bytes last moved, so
//! [`IdleWatch`] can close connections that stall (slowloris) without hyper needing a `Send` timer.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

/// A glommio TCP stream usable by hyper.
pub struct HyperStream {
    inner: TcpStream,
    last_activity: Rc<Cell<Instant>>,
}

/// Tells whether a [`HyperStream`] has been idle too long.
#[derive(Clone)]
pub struct IdleWatch {
    last_activity: Rc<Cell<Instant>>,
}

impl HyperStream {
    pub fn new(inner: TcpStream) -> (Self, IdleWatch) {
        let last_activity = Rc::new(Cell::new(Instant::now()));
        (Self { inner, last_activity: last_activity.clone() }, IdleWatch { last_activity })
    }
}

impl IdleWatch {
    /// Resolves once no byte moved for `limit`. Race it against the connection future.
    pub async fn idle_for(&self, limit: Duration) {
        loop {
            let idle = self.last_activity.get().elapsed();
            if idle >= limit {
                return;
            }
            glommio::timer::sleep(limit - idle).await;
        }
    }
}

impl hyper::rt::Read for HyperStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let mut tmp = [0u8; 8192];
        let want = buf.remaining().min(tmp.len());
        match Pin::new(&mut self.inner).poll_read(cx, &mut tmp[..want]) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.last_activity.set(Instant::now());
                }
                buf.put_slice(&tmp[..n]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl hyper::rt::Write for HyperStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            if n > 0 {
                self.last_activity.set(Instant::now());
            }
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}
