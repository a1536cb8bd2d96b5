//! A keep-alive HTTP/1.1 client for the soak. One connection carries requests with the tokens
//! of many users one after the other, as a shared client or a gateway would: the filter's
//! per-request state must not leak from one to the next. Requests are written by hand, so
//! malformed `Authorization` values and repeated headers go out as given.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Longest head or body accepted: a bound on memory, far above what the stack sends.
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;

/// An answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One client's connection to 127.0.0.1:`port`, opened when needed and reopened after the
/// server closes it.
pub struct Client {
    port: u16,
    timeout: Duration,
    conn: Option<BufReader<TcpStream>>,
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

impl Client {
    pub fn new(port: u16, timeout: Duration) -> Client {
        Client {
            port,
            timeout,
            conn: None,
        }
    }

    /// `GET path` with `headers`. A request on a reused connection that the server had closed
    /// meanwhile (nothing came back) is sent once more on a new one, as HTTP clients do for
    /// idempotent requests; any other failure is the caller's.
    pub fn get(&mut self, path: &str, headers: &[(&str, &[u8])]) -> io::Result<Reply> {
        let mut raw =
            format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\n", self.port).into_bytes();
        for (name, value) in headers {
            raw.extend_from_slice(name.as_bytes());
            raw.extend_from_slice(b": ");
            raw.extend_from_slice(value);
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"\r\n");
        let reused = self.conn.is_some();
        match self.exchange(&raw) {
            Err(Exchange::Stale) if reused => {
                self.conn = None;
                self.exchange(&raw).map_err(Exchange::into_io)
            }
            other => other.map_err(Exchange::into_io),
        }
    }

    fn connect(&mut self) -> io::Result<&mut BufReader<TcpStream>> {
        if self.conn.is_none() {
            let stream = TcpStream::connect(("127.0.0.1", self.port))?;
            stream.set_read_timeout(Some(self.timeout))?;
            stream.set_write_timeout(Some(self.timeout))?;
            stream.set_nodelay(true)?;
            self.conn = Some(BufReader::new(stream));
        }
        self.conn
            .as_mut()
            .ok_or_else(|| io::Error::other("no connection"))
    }

    fn exchange(&mut self, raw: &[u8]) -> Result<Reply, Exchange> {
        let result = self.exchange_once(raw);
        match &result {
            Ok(reply) if !closes(reply) => {}
            _ => self.conn = None,
        }
        result
    }

    fn exchange_once(&mut self, raw: &[u8]) -> Result<Reply, Exchange> {
        let conn = self.connect().map_err(Exchange::Failed)?;
        if let Err(e) = conn.get_mut().write_all(raw) {
            return Err(if is_stale(&e) {
                Exchange::Stale
            } else {
                Exchange::Failed(e)
            });
        }
        let mut status_line = Vec::new();
        match conn.read_until(b'\n', &mut status_line) {
            Ok(0) => return Err(Exchange::Stale),
            Ok(_) => {}
            Err(e) if is_stale(&e) => return Err(Exchange::Stale),
            Err(e) => return Err(Exchange::Failed(e)),
        }
        read_rest(conn, &status_line).map_err(Exchange::Failed)
    }
}

/// Why an exchange failed.
enum Exchange {
    /// The connection was gone before any byte of the answer.
    Stale,
    Failed(io::Error),
}

impl Exchange {
    fn into_io(self) -> io::Error {
        match self {
            Exchange::Stale => io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the connection closed before an answer",
            ),
            Exchange::Failed(e) => e,
        }
    }
}

fn is_stale(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

/// Whether the server closes the connection after this answer.
fn closes(reply: &Reply) -> bool {
    reply
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
}

fn line(reader: &mut impl BufRead, budget: &mut usize) -> io::Result<String> {
    let mut bytes = Vec::new();
    let n = reader
        .by_ref()
        .take(u64::try_from(*budget).unwrap_or(0))
        .read_until(b'\n', &mut bytes)?;
    *budget = budget.saturating_sub(n);
    if !bytes.ends_with(b"\n") {
        return Err(invalid("truncated or oversized head"));
    }
    let text = String::from_utf8_lossy(&bytes);
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

/// Reads the headers and body that follow `status_line`.
fn read_rest(reader: &mut impl BufRead, status_line: &[u8]) -> io::Result<Reply> {
    let status_text = String::from_utf8_lossy(status_line);
    let status: u16 = status_text
        .split(' ')
        .nth(1)
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| invalid("no status"))?;
    let mut budget = MAX_HEAD;
    let mut headers = Vec::new();
    loop {
        let l = line(reader, &mut budget)?;
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let mut reply = Reply {
        status,
        headers,
        body: Vec::new(),
    };
    let chunked = reply
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let length = reply.header("content-length").map(str::parse::<usize>);
    reply.body = if chunked {
        read_chunks(reader)?
    } else if let Some(length) = length {
        let length = length.map_err(|_| invalid("bad content-length"))?;
        if length > MAX_BODY {
            return Err(invalid("body too large"));
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        body
    } else if status == 204 || status == 304 {
        Vec::new()
    } else {
        // Delimited by the end of the connection.
        let mut body = Vec::new();
        reader
            .take(u64::try_from(MAX_BODY).unwrap_or(0))
            .read_to_end(&mut body)?;
        reply
            .headers
            .push(("connection".to_owned(), "close".to_owned()));
        body
    };
    Ok(reply)
}

fn read_chunks(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut budget = MAX_HEAD;
    loop {
        let size_line = line(reader, &mut budget)?;
        let size_text = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| invalid("bad chunk size"))?;
        if size == 0 {
            // Trailers, then the empty line.
            while !line(reader, &mut budget)?.is_empty() {}
            return Ok(body);
        }
        if body.len().saturating_add(size) > MAX_BODY {
            return Err(invalid("body too large"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(body.get_mut(start..).unwrap_or_default())?;
        if !line(reader, &mut budget)?.is_empty() {
            return Err(invalid("chunk not followed by CRLF"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> io::Result<Reply> {
        let mut reader = BufReader::new(bytes);
        let mut status = Vec::new();
        reader.read_until(b'\n', &mut status)?;
        read_rest(&mut reader, &status)
    }

    #[test]
    fn lengths_chunks_and_closes_are_read() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcEXTRA").expect("length");
        assert_eq!(
            (r.status, r.body.as_slice(), closes(&r)),
            (200, &b"abc"[..], false)
        );
        let r = parse(
            b"HTTP/1.1 401 Unauthorized\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
              3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .expect("chunked");
        assert_eq!(
            (r.status, r.body.as_slice(), closes(&r)),
            (401, &b"abcde"[..], true)
        );
        let r = parse(b"HTTP/1.1 200 OK\r\n\r\nto the end").expect("until close");
        assert_eq!((r.body.as_slice(), closes(&r)), (&b"to the end"[..], true));
    }

    #[test]
    fn broken_answers_are_errors() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc"[..],
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno end of head",
            b"HTTP/1.1\r\n\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
