//! The `/_mock` admin API used by tests (JSON in, JSON out, no authentication: the
//! server is meant for loopback only).

use crate::answer::JSON;
use crate::keys::{KeyPair, KeySet};
use crate::routes::{respond, AppState};
use crate::store::{Tamper, TokenKind, TokenRecord, DEFAULT_SCOPE};
use crate::util::{now_secs, random_token, random_uuid_v4};
use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Default lifetime of minted tokens (ProConnect's access tokens live one hour).
pub const DEFAULT_TTL_SECS: i64 = 3_600;

/// Admin routes.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/_mock/tokens", post(mint))
        .route("/_mock/tokens/bulk", post(mint_bulk))
        .route("/_mock/revoke", post(revoke))
        .route("/_mock/count", post(count))
        .route("/_mock/stats", get(stats))
        .route("/_mock/last-request", post(last_request))
        .route("/_mock/keys", get(keys))
        .route("/_mock/keys/rotate", post(rotate))
        .route("/_mock/keys/retire", post(retire))
        .route("/_mock/jwks", post(jwks_availability))
        .route("/_mock/hold", post(hold))
}

fn json_response(status: u16, value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => respond(status, JSON, "no-store", body),
        Err(e) => error(500, &e.to_string()),
    }
}

fn error(status: u16, message: &str) -> Response {
    json_response(status, &serde_json::json!({ "error": message }))
}

/// Parses a JSON body; an empty body counts as `{}`.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))
}

/// `POST /_mock/tokens` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintRequest {
    /// Subject; default a random UUID v4.
    pub sub: Option<String>,
    /// Scopes; default [`DEFAULT_SCOPE`].
    pub scope: Option<String>,
    /// Lifetime; may be zero or negative to mint an expired token.
    pub ttl_secs: Option<i64>,
    /// `access` (default) or `refresh`.
    pub kind: Option<TokenKind>,
    /// Explicit token string (any bytes the test wants); default 43 random base64url chars.
    pub token: Option<String>,
    /// Fault to inject in this token's introspection answers.
    pub tamper: Option<Tamper>,
    /// Delay before answering this token's introspections.
    pub delay_ms: Option<u64>,
}

/// `POST /_mock/tokens` answer.
#[derive(Debug, Serialize)]
pub struct MintResponse {
    /// The token.
    pub token: String,
    /// Its subject.
    pub sub: String,
    /// Its expiry.
    pub exp: i64,
}

/// Builds the token and its record from a mint request.
pub fn mint_record(req: MintRequest, now: i64) -> Result<(String, TokenRecord), String> {
    let token = match req.token {
        Some(t) if t.is_empty() => return Err("token must not be empty".to_owned()),
        Some(t) => t,
        None => random_token(),
    };
    let record = TokenRecord {
        sub: req.sub.unwrap_or_else(random_uuid_v4),
        scope: req.scope.unwrap_or_else(|| DEFAULT_SCOPE.to_owned()),
        iat: now,
        exp: now.saturating_add(req.ttl_secs.unwrap_or(DEFAULT_TTL_SECS)),
        kind: req.kind.unwrap_or_default(),
        tamper: req.tamper,
        delay_ms: req.delay_ms,
        revoked: false,
    };
    Ok((token, record))
}

async fn mint(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    let req: MintRequest = match parse(&body) {
        Ok(req) => req,
        Err(message) => return error(400, &message),
    };
    let (token, record) = match mint_record(req, now_secs()) {
        Ok(minted) => minted,
        Err(message) => return error(400, &message),
    };
    if record.tamper.is_some_and(Tamper::needs_throwaway_keys) {
        // Generate them now so the first introspection is not slowed down.
        if let Err(e) = st.throwaway().await {
            return error(500, &e);
        }
    }
    let response = MintResponse {
        token: token.clone(),
        sub: record.sub.clone(),
        exp: record.exp,
    };
    st.store().insert(token, record);
    json_response(200, &response)
}

/// Most tokens one `POST /_mock/tokens/bulk` may mint.
pub const BULK_MAX: usize = 200_000;

/// `POST /_mock/tokens/bulk` body: `count` plain access tokens for one subject (benchmarks
/// need many distinct tokens, minted fast).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkMintRequest {
    /// How many tokens, 1 to [`BULK_MAX`].
    pub count: usize,
    /// Subject of every token.
    pub sub: String,
    /// Scopes; default [`DEFAULT_SCOPE`].
    pub scope: Option<String>,
    /// Lifetime; may be zero or negative to mint expired tokens.
    pub ttl_secs: Option<i64>,
}

/// `POST /_mock/tokens/bulk` answer.
#[derive(Debug, Serialize)]
pub struct BulkMintResponse {
    /// The tokens, all distinct.
    pub tokens: Vec<String>,
}

/// Builds the tokens and their records for a bulk mint request.
pub fn bulk_records(req: BulkMintRequest, now: i64) -> Result<Vec<(String, TokenRecord)>, String> {
    if req.count == 0 || req.count > BULK_MAX {
        return Err(format!("count must be between 1 and {BULK_MAX}"));
    }
    let record = TokenRecord {
        sub: req.sub,
        scope: req.scope.unwrap_or_else(|| DEFAULT_SCOPE.to_owned()),
        iat: now,
        exp: now.saturating_add(req.ttl_secs.unwrap_or(DEFAULT_TTL_SECS)),
        kind: TokenKind::Access,
        tamper: None,
        delay_ms: None,
        revoked: false,
    };
    let mut seen = std::collections::HashSet::with_capacity(req.count);
    let mut out = Vec::with_capacity(req.count);
    while out.len() < req.count {
        let token = random_token();
        // 256 random bits never collide in practice; checked anyway so `count` is exact.
        if seen.insert(token.clone()) {
            out.push((token, record.clone()));
        }
    }
    Ok(out)
}

async fn mint_bulk(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    let req: BulkMintRequest = match parse(&body) {
        Ok(req) => req,
        Err(message) => return error(400, &message),
    };
    let now = now_secs();
    let minted = match tokio::task::spawn_blocking(move || bulk_records(req, now)).await {
        Ok(Ok(minted)) => minted,
        Ok(Err(message)) => return error(400, &message),
        Err(e) => return error(500, &e.to_string()),
    };
    let tokens = minted.iter().map(|(token, _)| token.clone()).collect();
    {
        let mut store = st.store();
        for (token, record) in minted {
            store.insert(token, record);
        }
    }
    json_response(200, &BulkMintResponse { tokens })
}

/// A body naming one token.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    token: String,
}

async fn revoke(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    match parse::<TokenBody>(&body) {
        Ok(req) => {
            let found = st.store().revoke(&req.token);
            json_response(200, &serde_json::json!({ "revoked": found }))
        }
        Err(message) => error(400, &message),
    }
}

async fn count(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    match parse::<TokenBody>(&body) {
        Ok(req) => {
            let n = st.store().count(&req.token);
            json_response(200, &serde_json::json!({ "introspections": n }))
        }
        Err(message) => error(400, &message),
    }
}

async fn stats(State(st): State<Arc<AppState>>) -> Response {
    json_response(
        200,
        &serde_json::json!({
            "introspections": st.introspections.load(Ordering::Relaxed),
            "jwks_requests": st.jwks_requests.load(Ordering::Relaxed),
            "jwks_held": st.jwks_held.load(Ordering::Relaxed),
            "hold": st.holding(),
            "held": st.held(),
        }),
    )
}

async fn last_request(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    let req = match parse::<TokenBody>(&body) {
        Ok(req) => req,
        Err(message) => return error(400, &message),
    };
    let last = st.store().last_request(&req.token).cloned();
    match last {
        Some(last) => json_response(200, &last),
        None => error(404, "no introspection request named this token"),
    }
}

fn kids_response(set: &KeySet) -> Response {
    json_response(
        200,
        &serde_json::json!({
            "kids": set.kids(),
            "signing": { "RS256": set.current.rsa.kid, "ES256": set.current.ec.kid },
        }),
    )
}

async fn keys(State(st): State<Arc<AppState>>) -> Response {
    kids_response(&st.keys())
}

async fn rotate(State(st): State<Arc<AppState>>) -> Response {
    let pair = match tokio::task::spawn_blocking(KeyPair::generate).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return error(500, &e),
        Err(e) => return error(500, &e.to_string()),
    };
    kids_response(&st.update_keys(|set| set.rotate(pair)))
}

async fn retire(State(st): State<Arc<AppState>>) -> Response {
    kids_response(&st.update_keys(KeySet::retire))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Availability {
    available: Option<bool>,
    /// Hold JWKS requests until this is set back to false.
    hold: Option<bool>,
}

async fn jwks_availability(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    match parse::<Availability>(&body) {
        Ok(req) => {
            if let Some(available) = req.available {
                st.jwks_available.store(available, Ordering::Relaxed);
            }
            if let Some(hold) = req.hold {
                st.jwks_hold.send_replace(hold);
            }
            json_response(
                200,
                &serde_json::json!({
                    "available": st.jwks_available.load(Ordering::Relaxed),
                    "hold": *st.jwks_hold.borrow(),
                }),
            )
        }
        Err(message) => error(400, &message),
    }
}

/// `POST /_mock/hold` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Hold {
    /// true: introspection answers wait from now on; false: every waiting answer goes.
    hold: bool,
}

/// The hold switch: a test holds the answers, sees its requests arrive (`held` here and in
/// `/_mock/stats`, `/_mock/count`), then releases them, instead of relying on a delay.
async fn hold(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    match parse::<Hold>(&body) {
        Ok(req) => {
            let held = st.held();
            st.set_hold(req.hold);
            json_response(200, &serde_json::json!({ "hold": req.hold, "held": held }))
        }
        Err(message) => error(400, &message),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn mint_defaults() {
        let (token, record) = mint_record(MintRequest::default(), 1_000).unwrap();
        assert_eq!(token.len(), 43);
        assert_eq!(record.sub.len(), 36);
        assert_eq!(record.scope, DEFAULT_SCOPE);
        assert_eq!((record.iat, record.exp), (1_000, 4_600));
        assert_eq!(record.kind, TokenKind::Access);
        assert!(record.is_active(1_000));
    }

    #[test]
    fn mint_explicit() {
        let req: MintRequest = serde_json::from_str(
            r#"{"sub":"u","scope":"openid","ttl_secs":-5,"kind":"refresh",
                "token":"a+b/c==","tamper":"sig_bit","delay_ms":20}"#,
        )
        .unwrap();
        let (token, record) = mint_record(req, 1_000).unwrap();
        assert_eq!(token, "a+b/c==");
        assert_eq!(record.exp, 995);
        assert!(!record.is_active(1_000));
        assert_eq!(record.kind, TokenKind::Refresh);
        assert_eq!(record.tamper, Some(Tamper::SigBit));
        assert_eq!(record.delay_ms, Some(20));
        let zero: MintRequest = serde_json::from_str(r#"{"ttl_secs":0}"#).unwrap();
        assert!(!mint_record(zero, 1_000).unwrap().1.is_active(1_000));
        let empty: MintRequest = serde_json::from_str(r#"{"token":""}"#).unwrap();
        assert!(mint_record(empty, 1_000).is_err());
        assert!(serde_json::from_str::<MintRequest>(r#"{"tamper":"nope"}"#).is_err());
        assert!(serde_json::from_str::<MintRequest>(r#"{"subject":"x"}"#).is_err());
    }

    #[test]
    fn bulk_mint() {
        let req: BulkMintRequest =
            serde_json::from_str(r#"{"count":1000,"sub":"u","scope":"openid","ttl_secs":60}"#)
                .unwrap();
        let minted = bulk_records(req, 1_000).unwrap();
        assert_eq!(minted.len(), 1000);
        let distinct: std::collections::HashSet<_> = minted.iter().map(|(t, _)| t).collect();
        assert_eq!(distinct.len(), 1000);
        for (token, record) in &minted {
            assert_eq!(token.len(), 43);
            assert_eq!(
                (record.sub.as_str(), record.scope.as_str()),
                ("u", "openid")
            );
            assert_eq!((record.iat, record.exp), (1_000, 1_060));
            assert_eq!(record.kind, TokenKind::Access);
            assert!(record.is_active(1_000));
        }
        let defaults: BulkMintRequest = serde_json::from_str(r#"{"count":1,"sub":"u"}"#).unwrap();
        let (_, record) = bulk_records(defaults, 1_000).unwrap().remove(0);
        assert_eq!((record.scope.as_str(), record.exp), (DEFAULT_SCOPE, 4_600));
        for bad in [r#"{"count":0,"sub":"u"}"#, r#"{"count":200001,"sub":"u"}"#] {
            let req: BulkMintRequest = serde_json::from_str(bad).unwrap();
            assert!(bulk_records(req, 1_000).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<BulkMintRequest>(r#"{"count":1}"#).is_err());
        assert!(serde_json::from_str::<BulkMintRequest>(r#"{"count":1,"sub":"u","x":1}"#).is_err());
    }

    #[tokio::test]
    async fn bulk_mint_endpoint() {
        use crate::clients::{parse_client_arg, Clients};
        use axum::http::Request;
        use tower::ServiceExt as _;

        let state = Arc::new(AppState::new(
            "http://127.0.0.1:9/api/v2",
            "fs-demo",
            Clients::new([parse_client_arg("sr:sec").unwrap()]),
            KeySet::new(KeyPair::generate().unwrap()),
        ));
        let app = crate::routes::router(state.clone(), false);
        let post = |path: &str, body: &str| {
            Request::builder()
                .method("POST")
                .uri(path)
                .body(axum::body::Body::from(body.to_owned()))
                .unwrap()
        };
        let resp = app
            .clone()
            .oneshot(post(
                "/_mock/tokens/bulk",
                r#"{"count":3,"sub":"bulk-user"}"#,
            ))
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let tokens = answer["tokens"].as_array().unwrap();
        assert_eq!(tokens.len(), 3);
        for token in tokens {
            let token = token.as_str().unwrap();
            // Minted tokens introspect as active for their subject.
            let form = format!("token={token}&client_id=sr&client_secret=sec");
            let req = Request::builder()
                .method("POST")
                .uri(crate::routes::INTROSPECTION_PATH)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(axum::body::Body::from(form))
                .unwrap();
            let resp = app.clone().oneshot(req).await.unwrap();
            let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                (answer["active"].as_bool(), answer["sub"].as_str()),
                (Some(true), Some("bulk-user"))
            );
        }
        let resp = app
            .oneshot(post("/_mock/tokens/bulk", r#"{"count":0,"sub":"u"}"#))
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400);
    }

    #[test]
    fn empty_body_is_empty_object() {
        assert!(parse::<MintRequest>(b"").is_ok());
        assert!(parse::<MintRequest>(b" \n").is_ok());
        assert!(parse::<TokenBody>(b"").is_err());
    }
}
