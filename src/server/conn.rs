//! One connection's life (issue 10.1). Whoever connects gets `read_timeout_secs` in all
//! to show a valid key — handshake, headers and replies included — so clients without the
//! key cannot hold the connection cap for longer than that. A connection that has shown
//! the key lives at most `connection_max_secs`. A reply the client does not read within
//! `read_timeout_secs` drops the connection (the write deadline), whoever it is.

use super::Handler;
use super::routes::Role;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

/// What the request handlers tell the connection, and what the byte stream tells them.
#[derive(Default)]
pub(crate) struct ConnState {
    authorized: AtomicBool,
    /// Requests handled so far on this connection.
    handled: AtomicU32,
    /// Index (from 1) of the first request head carrying both Content-Length and
    /// Transfer-Encoding; 0 = none. hyper drops one of the two headers before the handler
    /// sees the request, so this is read off the bytes (see [`HeadScanner`]).
    smuggled_at: AtomicU32,
}

impl ConnState {
    pub(crate) fn authorize(&self) {
        self.authorized.store(true, Ordering::Relaxed);
    }

    fn authorized(&self) -> bool {
        self.authorized.load(Ordering::Relaxed)
    }

    /// Called once per request, in order; true if this request's head had both framings.
    pub(crate) fn next_request_is_ambiguous(&self) -> bool {
        let n = self.handled.fetch_add(1, Ordering::Relaxed) + 1;
        self.smuggled_at.load(Ordering::Relaxed) == n
    }
}

pub(crate) struct Limits {
    pub(crate) read: Duration,
    pub(crate) overall: Duration,
}

/// Serve one accepted (and, with TLS, handshaken) connection until it ends, a deadline
/// passes, or `stop` asks every connection to finish.
pub(crate) async fn serve<S, H: Handler>(
    io: S,
    app: Arc<H>,
    peer: SocketAddr,
    role: Role,
    accepted: Instant,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = Arc::new(ConnState::default());
    let st = state.clone();
    let service = service_fn(move |req| app.clone().handle(peer, role, st.clone(), req));
    let io = GuardedIo::new(io, limits.read, state.clone());
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.read)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let keyless_until = accepted + limits.read;
    let mut until = accepted + limits.overall;
    let mut draining = false;
    loop {
        let deadline = if state.authorized() || draining {
            until
        } else {
            keyless_until.min(until)
        };
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep_until(deadline) => {
                if draining || !state.authorized() {
                    tracing::debug!(%peer, "connection dropped at its deadline");
                    return;
                }
                if Instant::now() < until {
                    // The first deadline, passed after the key was shown: the full life applies.
                    continue;
                }
                // Let the request in flight finish, then close.
                conn.as_mut().graceful_shutdown();
                draining = true;
                until = Instant::now() + limits.read;
            }
            _ = stop.wait_for(|s| *s), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
                until = until.min(Instant::now() + limits.read);
            }
        }
    }
}

/// The connection's bytes: a write deadline on the way out, and a scan of request heads on
/// the way in.
struct GuardedIo<S> {
    inner: S,
    write_limit: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
    scanner: HeadScanner,
    state: Arc<ConnState>,
}

impl<S> GuardedIo<S> {
    fn new(inner: S, write_limit: Duration, state: Arc<ConnState>) -> Self {
        GuardedIo {
            inner,
            write_limit,
            stalled: None,
            scanner: HeadScanner::default(),
            state,
        }
    }

    /// The writer could not make progress: start (or check) the stall timer.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let limit = self.write_limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not read the reply within the read timeout",
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

use std::future::Future;

impl<S: AsyncRead + Unpin> AsyncRead for GuardedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let this = &mut *self;
            if let Some(n) = this.scanner.feed(&buf.filled()[before..]) {
                let _ = this.state.smuggled_at.compare_exchange(
                    0,
                    n,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GuardedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.stalled(cx).map(Err),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.stalled(cx).map(Err),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Follows HTTP/1.1 request framing well enough to see each request head: header lines
/// until the blank line, then a Content-Length body is skipped. After a chunked body it
/// stops looking (such a request is not Leap's, and hyper still frames it safely: with
/// both headers it uses Transfer-Encoding and closes the connection afterwards).
#[derive(Default)]
struct HeadScanner {
    heads: u32,
    /// A line of the current head was seen (so a blank line ends a head, not a stray CRLF).
    in_head: bool,
    line: Vec<u8>,
    cl: Option<u64>,
    te: bool,
    skip: u64,
    lost: bool,
}

/// A header line longer than this is not examined further (hyper refuses it anyway).
const MAX_LINE: usize = 8 * 1024;

impl HeadScanner {
    /// Returns the index of a head that carried both framings, if this chunk ended one.
    fn feed(&mut self, mut bytes: &[u8]) -> Option<u32> {
        let mut found = None;
        while !bytes.is_empty() && !self.lost {
            if self.skip > 0 {
                let n = (self.skip as usize).min(bytes.len());
                self.skip -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let Some(pos) = bytes.iter().position(|b| *b == b'\n') else {
                self.push_line(bytes);
                break;
            };
            self.push_line(&bytes[..pos]);
            bytes = &bytes[pos + 1..];
            if let Some(n) = self.end_line() {
                found = found.or(Some(n));
            }
        }
        found
    }

    fn push_line(&mut self, part: &[u8]) {
        let room = MAX_LINE.saturating_sub(self.line.len());
        self.line.extend_from_slice(&part[..part.len().min(room)]);
    }

    fn end_line(&mut self) -> Option<u32> {
        let line = std::mem::take(&mut self.line);
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        if !line.is_empty() {
            self.in_head = true;
            let text = String::from_utf8_lossy(line).to_ascii_lowercase();
            if let Some(v) = text.strip_prefix("content-length:") {
                self.cl = v.trim().parse().ok().or(Some(0));
            } else if text.starts_with("transfer-encoding:") {
                self.te = true;
            }
            return None;
        }
        // Blank line: the end of a head (or a stray CRLF between requests). Every head
        // counts, bodiless ones too: the handler numbers every request it sees.
        if !std::mem::take(&mut self.in_head) {
            return None;
        }
        self.heads += 1;
        let (cl, te) = (self.cl.take(), std::mem::take(&mut self.te));
        if te {
            self.lost = true;
            return cl.map(|_| self.heads);
        }
        self.skip = cl.unwrap_or(0);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn scanner_finds_both_framings_after_a_plain_body() {
        let mut s = HeadScanner::default();
        let first = b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(s.feed(first), None);
        let second = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 3\r\n\r\n";
        // Split across reads, as TCP may deliver it.
        assert_eq!(s.feed(&second[..20]), None);
        assert_eq!(s.feed(&second[20..]), Some(2));
    }

    /// A bodiless request first (a GET answered 405) must not shift the count, and a stray
    /// CRLF between requests is not a request.
    #[test]
    fn scanner_counts_bodiless_heads_but_not_stray_blank_lines() {
        let mut s = HeadScanner::default();
        assert_eq!(s.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\r\n"), None);
        let second = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(s.feed(second), Some(2));
    }

    #[test]
    fn scanner_counts_a_body_that_looks_like_headers_as_body() {
        let mut s = HeadScanner::default();
        let body = b"content-length: 1\r\ntransfer-encoding: x\r\n\r\n";
        let head = format!("POST / HTTP/1.1\r\ncontent-length: {}\r\n\r\n", body.len());
        assert_eq!(s.feed(head.as_bytes()), None);
        assert_eq!(s.feed(body), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_nobody_reads_fails_after_the_write_limit() {
        let (ours, _theirs) = tokio::io::duplex(64);
        let mut io = GuardedIo::new(ours, Duration::from_secs(2), Arc::default());
        let started = Instant::now();
        let r = io.write_all(&[0u8; 4096]).await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_secs(2));
    }
}
