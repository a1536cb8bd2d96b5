//! A small HTTP/2 client (cleartext, prior knowledge: Envoy's listener detects the HTTP/2
//! preface, `codec_type` AUTO) for the cases that must hold over both protocols. hyper
//! refuses to send what HTTP/2 forbids in a field value (control characters); everything else,
//! several fields of one name and non-ASCII bytes included, goes as given.

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::Response;

/// `GET path` on 127.0.0.1:`port` over a fresh HTTP/2 connection, with these fields.
pub fn get(port: u16, path: &str, headers: &[(&str, &[u8])]) -> Result<Response, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    runtime.block_on(async {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        tokio::spawn(connection);
        let mut request = hyper::Request::get(format!("http://127.0.0.1:{port}{path}"));
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| format!("field name {name:?}: {e}"))?;
            let value = HeaderValue::from_bytes(value)
                .map_err(|e| format!("field value {value:?}: {e}"))?;
            request = request.header(name, value);
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP/2 request: {e:?}"))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("HTTP/2 body: {e}"))?
            .to_bytes()
            .to_vec();
        Ok(Response {
            status,
            headers,
            body,
        })
    })
}
