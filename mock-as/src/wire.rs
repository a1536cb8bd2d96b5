//! Connections whose answer a handler may take over, to send what an HTTP library never sends
//! on purpose: a body shorter than its `Content-Length`, or a reset instead of an answer.
//!
//! The server accepts through [`WireListener`]; every connection carries a [`Takeover`] handle,
//! which handlers get as connect info. A handler that arms it with a [`Script`] still returns
//! an ordinary response, but that response never reaches the wire: at its first write the
//! connection writes the script's bytes instead, then ends as the script says (a FIN, or a RST
//! through a zero linger) and reports an error, so hyper drops the connection. Connections
//! whose handle is never armed behave exactly like plain TCP streams.

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// How a taken-over connection ends once the script's bytes are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// An orderly close (FIN): the peer reads the bytes, then the end of the stream.
    Close,
    /// An abortive close (RST, `SO_LINGER` zero): the peer sees the connection reset.
    Reset,
}

/// What a taken-over connection sends instead of the handler's response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// Raw bytes, written as they are (may be empty).
    pub bytes: Vec<u8>,
    /// Then this.
    pub ending: Ending,
}

#[derive(Debug, Default)]
struct Shared {
    armed: AtomicBool,
    script: Mutex<Option<Script>>,
}

/// The handle of one connection, given to handlers as connect info.
#[derive(Debug, Clone, Default)]
pub struct Takeover(Arc<Shared>);

impl Takeover {
    /// From the next write on, the connection sends `script` instead of what hyper writes.
    pub fn arm(&self, script: Script) {
        *self.0.script.lock().unwrap_or_else(|e| e.into_inner()) = Some(script);
        self.0.armed.store(true, Ordering::SeqCst);
    }

    fn take(&self) -> Option<Script> {
        if !self.0.armed.swap(false, Ordering::SeqCst) {
            return None;
        }
        self.0
            .script
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// Accepts TCP connections as [`Conn`]s.
#[derive(Debug)]
pub struct WireListener(pub TcpListener);

impl Listener for WireListener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        let (stream, addr) = Listener::accept(&mut self.0).await;
        let conn = Conn {
            stream,
            takeover: Takeover::default(),
            state: State::Plain,
        };
        (conn, addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl Connected<IncomingStream<'_, WireListener>> for Takeover {
    fn connect_info(stream: IncomingStream<'_, WireListener>) -> Self {
        stream.io().takeover.clone()
    }
}

#[derive(Debug)]
enum State {
    Plain,
    Scripted {
        bytes: Vec<u8>,
        written: usize,
        ending: Ending,
    },
    Ended,
}

/// A TCP stream that may be taken over (see the module documentation).
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    takeover: Takeover,
    state: State,
}

fn ended() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "answer taken over")
}

impl Conn {
    /// Whether the connection is (now) scripted; switches to the script once armed.
    fn scripted(&mut self) -> bool {
        if let State::Plain = self.state {
            if let Some(script) = self.takeover.take() {
                self.state = State::Scripted {
                    bytes: script.bytes,
                    written: 0,
                    ending: script.ending,
                };
            }
        }
        !matches!(self.state, State::Plain)
    }

    /// Writes the rest of the script, then ends the connection; always an error for the caller.
    fn poll_script(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let State::Scripted {
            bytes,
            written,
            ending,
        } = &mut self.state
        else {
            return Poll::Ready(Err(ended()));
        };
        while let Some(rest) = bytes.get(*written..).filter(|r| !r.is_empty()) {
            match ready!(Pin::new(&mut self.stream).poll_write(cx, rest)) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => *written += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        if *ending == Ending::Reset {
            // The close that follows (hyper drops the connection) then sends a RST.
            let _ = self.stream.set_zero_linger();
        } else {
            ready!(Pin::new(&mut self.stream).poll_shutdown(cx))?;
        }
        self.state = State::Ended;
        Poll::Ready(Err(ended()))
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.state {
            State::Plain => Pin::new(&mut this.stream).poll_read(cx, buf),
            // Nothing more is read from a connection that is being ended.
            _ => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.scripted() {
            return this.poll_script(cx);
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.scripted() {
            return this.poll_script(cx);
        }
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.scripted() {
            return this.poll_script(cx).map_ok(|_| ());
        }
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.scripted() {
            return this.poll_script(cx).map_ok(|_| ());
        }
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

/// An HTTP/1.1 `200` answer whose `Content-Length` is the whole body's but which carries only
/// its first half: the connection closes mid-body.
pub fn truncated_answer(content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncache-control: no-store\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.get(..body.len() / 2).unwrap_or_default());
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use axum::extract::ConnectInfo;
    use axum::routing::get;
    use axum::Router;
    use std::io::{Read as _, Write as _};

    /// A server whose `/reset`, `/cut` and `/plain` answers are a reset, a truncated body and
    /// an ordinary answer; returns its port.
    async fn server() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = Router::new()
            .route(
                "/reset",
                get(|ConnectInfo(t): ConnectInfo<Takeover>| async move {
                    t.arm(Script {
                        bytes: Vec::new(),
                        ending: Ending::Reset,
                    });
                    "never sent"
                }),
            )
            .route(
                "/cut",
                get(|ConnectInfo(t): ConnectInfo<Takeover>| async move {
                    t.arm(Script {
                        bytes: truncated_answer("application/json", br#"{"active":true}"#),
                        ending: Ending::Close,
                    });
                    "never sent"
                }),
            )
            .route("/plain", get(|| async { "plain" }));
        let service = app.into_make_service_with_connect_info::<Takeover>();
        tokio::spawn(async move { axum::serve(WireListener(listener), service).await });
        port
    }

    /// Sends a GET on a fresh connection; what was read, and the error that ended the read.
    fn fetch(port: u16, path: &str) -> (Vec<u8>, Option<io::ErrorKind>) {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return (got, None),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return (got, Some(e.kind())),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_taken_over_connection_sends_its_script_and_ends_as_told() {
        let port = server().await;
        let (reset, cut, plain) = tokio::task::spawn_blocking(move || {
            (
                fetch(port, "/reset"),
                fetch(port, "/cut"),
                fetch(port, "/plain"),
            )
        })
        .await
        .unwrap();

        assert_eq!(reset, (Vec::new(), Some(io::ErrorKind::ConnectionReset)));

        let (bytes, error) = cut;
        assert_eq!(error, None, "an orderly close");
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: no-store\r\n\
             content-length: 15\r\n\r\n{\"activ"
        );

        // An unarmed connection is untouched.
        let (bytes, error) = plain;
        assert_eq!(error, None);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nplain"), "{text}");
    }
}
