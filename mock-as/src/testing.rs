//! What the route tests share: the router over a fresh state, and one call through it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Request};
use axum::Router;
use tower::ServiceExt as _;

use crate::clients::{parse_client_arg, Clients};
use crate::keys::{KeyPair, KeySet};
use crate::routes::AppState;

/// `Content-Type` of a form body.
pub const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

/// The server's state for `issuer`, with these `--client` arguments and a fresh key pair.
pub fn state(issuer: &str, fs_client_id: &str, clients: &[&str]) -> Arc<AppState> {
    let clients = Clients::new(clients.iter().map(|c| parse_client_arg(c).unwrap()));
    Arc::new(AppState::new(
        issuer,
        fs_client_id,
        clients,
        KeySet::new(KeyPair::generate().unwrap()),
    ))
}

/// One request through the router: status, headers, body.
pub async fn call(
    app: &Router,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, HeaderMap, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, headers, body.to_vec())
}
