//! Shared state and the ProConnect-shaped endpoints under `/api/v2`.

use crate::answer::{accepts_jwt, render, Context, JSON};
use crate::clients::{
    attempted, authenticate, AuthMethod, Client, Clients, FormParams, OAuthError,
};
use crate::jws::SignatureCache;
use crate::keys::{KeyPair, KeySet};
use crate::store::{LastRequest, Store, Tamper, TokenRecord};
use crate::util::now_secs;
use crate::wire::{self, Ending, Script, Takeover};
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{ACCEPT, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

/// Path of the introspection endpoint.
pub const INTROSPECTION_PATH: &str = "/api/v2/token/introspection";
/// Path of the revocation endpoint.
pub const REVOCATION_PATH: &str = "/api/v2/token/revocation";
/// Path of the JWKS.
pub const JWKS_PATH: &str = "/api/v2/jwks";
/// Path of the discovery document.
pub const DISCOVERY_PATH: &str = "/api/v2/.well-known/openid-configuration";

/// `Cache-Control` of OAuth answers.
pub const NO_STORE: &str = "no-store";
const PUBLIC_600: &str = "public, max-age=600";

/// Everything the handlers share.
#[derive(Debug)]
pub struct AppState {
    /// Issuer, without a trailing slash.
    pub issuer: String,
    /// `client_id` reported in active answers.
    pub fs_client_id: String,
    /// Registered resource servers.
    pub clients: Clients,
    /// Tokens and bookkeeping.
    store: Mutex<Store>,
    /// Current key set (replaced whole on rotation).
    keys: RwLock<Arc<KeySet>>,
    /// Unpublished keys for the `unknown_kid` tamper, generated on first need.
    throwaway: tokio::sync::OnceCell<KeyPair>,
    /// When false, the JWKS answers 503.
    pub jwks_available: AtomicBool,
    /// While true, JWKS requests wait (up to [`HOLD_LIMIT`]) until it turns false.
    pub jwks_hold: tokio::sync::watch::Sender<bool>,
    /// JWKS requests waiting on the hold now.
    pub jwks_held: AtomicU64,
    /// Requests received by the introspection endpoint.
    pub introspections: AtomicU64,
    /// Requests received by the JWKS endpoint.
    pub jwks_requests: AtomicU64,
    /// While true, introspection answers wait (the admin API's hold switch).
    hold: tokio::sync::watch::Sender<bool>,
    /// Introspection requests waiting for the hold to be released.
    held: AtomicU64,
    /// Serialized discovery document.
    discovery: Vec<u8>,
    /// Memoized RS256/ES256 signatures.
    signatures: SignatureCache,
}

impl AppState {
    /// Turns off per-token request bookkeeping (`/_mock/count`, `/_mock/last-request`).
    pub fn without_bookkeeping(self) -> Self {
        Self {
            store: Mutex::new(Store::without_bookkeeping()),
            ..self
        }
    }

    /// Builds the state and the discovery document.
    pub fn new(issuer: &str, fs_client_id: &str, clients: Clients, keys: KeySet) -> Self {
        let issuer = issuer.trim_end_matches('/').to_owned();
        let discovery = discovery_document(&issuer);
        Self {
            issuer,
            fs_client_id: fs_client_id.to_owned(),
            clients,
            store: Mutex::new(Store::default()),
            keys: RwLock::new(Arc::new(keys)),
            throwaway: tokio::sync::OnceCell::new(),
            jwks_available: AtomicBool::new(true),
            jwks_hold: tokio::sync::watch::channel(false).0,
            jwks_held: AtomicU64::new(0),
            introspections: AtomicU64::new(0),
            jwks_requests: AtomicU64::new(0),
            hold: tokio::sync::watch::Sender::new(false),
            held: AtomicU64::new(0),
            discovery,
            signatures: SignatureCache::default(),
        }
    }

    /// Locks the store (a poisoned lock is still used: the data stays consistent).
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current key set.
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys
            .read()
            .map_or_else(|e| e.into_inner().clone(), |k| k.clone())
    }

    /// Replaces the key set with `f(current)`.
    pub fn update_keys(&self, f: impl FnOnce(&KeySet) -> KeySet) -> Arc<KeySet> {
        let mut guard = self.keys.write().unwrap_or_else(|e| e.into_inner());
        let next = Arc::new(f(&guard));
        *guard = next.clone();
        next
    }

    /// The throwaway keys, generated (off the async threads) on first call.
    pub async fn throwaway(&self) -> Result<&KeyPair, String> {
        self.throwaway
            .get_or_try_init(|| async {
                tokio::task::spawn_blocking(KeyPair::generate)
                    .await
                    .map_err(|e| format!("key generation task: {e}"))?
            })
            .await
    }

    /// Discovery document bytes.
    pub fn discovery(&self) -> &[u8] {
        &self.discovery
    }

    /// Turns the hold on (answers wait from now on) or off (every waiting answer goes).
    pub fn set_hold(&self, on: bool) {
        self.hold.send_replace(on);
    }

    /// Whether answers are held.
    pub fn holding(&self) -> bool {
        *self.hold.borrow()
    }

    /// Introspection requests now waiting for the release.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::SeqCst)
    }

    /// Waits while the hold is on, counted in [`AppState::held`] (also when the request is
    /// dropped while waiting).
    async fn wait_while_held(&self) {
        let mut release = self.hold.subscribe();
        if !*release.borrow_and_update() {
            return;
        }
        struct Waiting<'a>(&'a AtomicU64);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.held.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.held);
        // An error means the sender is gone, i.e. the server is going away: answer.
        let _ = release.wait_for(|on| !*on).await;
    }
}

/// The discovery document, URLs built from the issuer.
fn discovery_document(issuer: &str) -> Vec<u8> {
    let url = |path: &str| format!("{issuer}{path}");
    let auth_methods = [
        "client_secret_post",
        "private_key_jwt",
        "client_secret_basic",
    ];
    let doc = serde_json::json!({
        "issuer": issuer,
        "authorization_endpoint": url("/authorize"),
        "token_endpoint": url("/token"),
        "userinfo_endpoint": url("/userinfo"),
        "jwks_uri": url("/jwks"),
        "introspection_endpoint": url("/token/introspection"),
        "revocation_endpoint": url("/token/revocation"),
        "end_session_endpoint": url("/session/end"),
        "introspection_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "token_endpoint_auth_methods_supported": auth_methods,
        "introspection_signing_alg_values_supported": ["HS256", "ES256", "RS256"],
        "id_token_signing_alg_values_supported": ["ES256", "RS256", "HS256"],
        "userinfo_signing_alg_values_supported": ["ES256", "RS256", "HS256"],
        "response_types_supported": ["code"],
        "response_modes_supported": ["form_post", "fragment", "query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "subject_types_supported": ["public"],
        "scopes_supported": ["openid", "uid", "given_name", "usual_name", "email", "phone",
                             "siret", "siren", "organizational_unit", "belonging_population",
                             "groups", "custom", "idp_id", "idp_acr"],
        "claims_supported": ["sub", "uid", "given_name", "usual_name", "email", "phone",
                             "siret", "siren", "organizational_unit", "belonging_population",
                             "groups", "custom", "idp_id", "idp_acr", "acr", "amr", "iss", "auth_time"],
        "claims_parameter_supported": true,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
        "require_request_uri_registration": false,
    });
    serde_json::to_vec(&doc).unwrap_or_default()
}

/// The whole application: wire endpoints, admin API and (unless quiet) request logging.
pub fn router(state: Arc<AppState>, log_requests: bool) -> Router {
    let app = Router::new()
        .route(DISCOVERY_PATH, get(discovery))
        .route(JWKS_PATH, get(jwks))
        .route(INTROSPECTION_PATH, post(introspect))
        .route(REVOCATION_PATH, post(revoke))
        .merge(crate::admin::router())
        .with_state(state);
    with_request_log(app, log_requests)
}

/// Adds the request log (method, path, status) when asked.
pub(crate) fn with_request_log(app: Router, log_requests: bool) -> Router {
    if log_requests {
        app.layer(axum::middleware::from_fn(log))
    } else {
        app
    }
}

/// Logs `METHOD path status` to stderr (paths only: no query, header or body).
async fn log(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = next.run(req).await;
    let _ = writeln!(
        std::io::stderr().lock(),
        "{method} {path} {}",
        response.status().as_u16()
    );
    response
}

/// A response with a body, a content type and a cache policy.
pub fn respond(
    status: u16,
    content_type: &'static str,
    cache: &'static str,
    body: impl Into<Body>,
) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

pub(crate) fn oauth_error(error: &OAuthError) -> Response {
    respond(error.status, JSON, NO_STORE, error.body())
}

pub(crate) fn server_error(message: &str) -> Response {
    let _ = writeln!(std::io::stderr().lock(), "internal error: {message}");
    oauth_error(&OAuthError {
        status: 500,
        error: "server_error",
        description: "oops! something went wrong".to_owned(),
    })
}

/// All values of a header, comma-joined (lossy for non-UTF-8 bytes).
pub(crate) fn header_text(headers: &HeaderMap, name: HeaderName) -> Option<String> {
    let values: Vec<String> = headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// Reads the form body. Like node-oidc-provider: a body of another declared type is
/// refused, no `Content-Type` means no parameters, and no parameter may repeat.
pub(crate) fn read_form(
    headers: &HeaderMap,
    body: &[u8],
    path: &str,
) -> Result<FormParams, OAuthError> {
    let params = match headers.get(CONTENT_TYPE) {
        None => FormParams::default(),
        Some(value) => {
            let text = String::from_utf8_lossy(value.as_bytes());
            let essence = text.split(';').next().unwrap_or_default().trim();
            if !essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
                return Err(OAuthError::invalid_request(format!(
                    "only application/x-www-form-urlencoded content-type bodies are supported on POST {path}"
                )));
            }
            FormParams::parse(body)
        }
    };
    if let Some(key) = params.duplicate() {
        return Err(OAuthError::invalid_request(format!(
            "'{key}' parameter must not be provided twice"
        )));
    }
    Ok(params)
}

pub(crate) fn missing_token() -> OAuthError {
    OAuthError::invalid_request("missing required parameter 'token'")
}

/// The request's shape, for `/_mock/last-request`.
pub(crate) fn describe(
    headers: &HeaderMap,
    params: &FormParams,
    authorization: Option<&str>,
    auth: Option<(&Client, AuthMethod)>,
) -> LastRequest {
    let (method, client_id) = match auth {
        Some((client, method)) => (Some(method), Some(client.client_id.clone())),
        None => attempted(authorization, params),
    };
    LastRequest {
        content_type: header_text(headers, CONTENT_TYPE),
        accept: header_text(headers, ACCEPT),
        authorization_scheme: authorization
            .and_then(|a| a.split_whitespace().next())
            .map(str::to_owned),
        auth_method: method.map(AuthMethod::name),
        client_id,
        authenticated: auth.is_some(),
        form: params.redacted(),
        form_keys: params.keys(),
        token_bytes_equal: false,
    }
}

async fn discovery(State(st): State<Arc<AppState>>) -> Response {
    respond(200, JSON, PUBLIC_600, st.discovery().to_vec())
}

/// The longest a held request waits for its release.
pub const HOLD_LIMIT: Duration = Duration::from_secs(30);

async fn jwks(State(st): State<Arc<AppState>>) -> Response {
    st.jwks_requests.fetch_add(1, Ordering::Relaxed);
    let mut hold = st.jwks_hold.subscribe();
    if *hold.borrow_and_update() {
        st.jwks_held.fetch_add(1, Ordering::Relaxed);
        let released = hold.wait_for(|held| !*held);
        let _ = tokio::time::timeout(HOLD_LIMIT, released).await;
        st.jwks_held.fetch_sub(1, Ordering::Relaxed);
    }
    if !st.jwks_available.load(Ordering::Relaxed) {
        let error = OAuthError {
            status: 503,
            error: "temporarily_unavailable",
            description: "jwks unavailable".to_owned(),
        };
        return oauth_error(&error);
    }
    respond(
        200,
        "application/jwk-set+json",
        PUBLIC_600,
        st.keys().jwks_body.clone(),
    )
}

/// An introspection request as both profiles receive it: counted, its form read, its client
/// authenticated, its token's record fetched and the request noted for `/_mock/last-request`.
pub(crate) struct Introspection<'a> {
    pub auth: Result<(&'a Client, AuthMethod), OAuthError>,
    pub has_token: bool,
    pub record: Option<TokenRecord>,
}

/// Receives an introspection request at `path`; `Err`: its form is unreadable.
pub(crate) fn receive_introspection<'a>(
    st: &'a AppState,
    headers: &HeaderMap,
    body: &[u8],
    path: &str,
) -> Result<Introspection<'a>, OAuthError> {
    st.introspections.fetch_add(1, Ordering::Relaxed);
    let params = read_form(headers, body, path)?;
    let authorization = header_text(headers, AUTHORIZATION);
    let auth = authenticate(&st.clients, authorization.as_deref(), &params);
    let token = params.get("token");
    let record = token.and_then(|token| {
        let presented = auth.as_ref().ok().map(|(c, m)| (*c, *m));
        let last = describe(headers, &params, authorization.as_deref(), presented);
        st.store()
            .record_introspection(token, last, auth.is_ok())
            .record
    });
    Ok(Introspection {
        auth,
        has_token: token.is_some(),
        record,
    })
}

async fn introspect(
    State(st): State<Arc<AppState>>,
    connection: Option<Extension<ConnectInfo<Takeover>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Introspection {
        auth,
        has_token,
        record,
    } = match receive_introspection(&st, &headers, &body, INTROSPECTION_PATH) {
        Ok(received) => received,
        Err(error) => return oauth_error(&error),
    };
    // Counted (above) before it waits, so a test can see it arrive.
    st.wait_while_held().await;
    let client = match auth {
        Ok((client, _)) => client,
        Err(error) => return oauth_error(&error),
    };
    if !has_token {
        return oauth_error(&missing_token());
    }
    let tamper = record.as_ref().and_then(|r| r.tamper);
    if let Some(ms) = record.as_ref().and_then(|r| r.delay_ms) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let throwaway = match tamper {
        Some(t) if t.needs_throwaway_keys() => match st.throwaway().await {
            Ok(pair) => Some(pair),
            Err(e) => return server_error(&e),
        },
        _ => None,
    };
    let now = now_secs();
    let keys = st.keys();
    let ctx = Context {
        issuer: &st.issuer,
        fs_client_id: &st.fs_client_id,
        client,
        wants_jwt: header_text(&headers, ACCEPT).is_some_and(|a| accepts_jwt(&a)),
        keys: &keys,
        throwaway,
        now,
        signatures: Some(&st.signatures),
    };
    let active = record.as_ref().filter(|r| r.is_active(now));
    let rendered = match render(active, tamper, &ctx) {
        Ok(r) => r,
        Err(e) => return server_error(&e),
    };
    if let Some(tamper) = tamper.filter(|t| t.on_the_wire()) {
        let Some(Extension(ConnectInfo(connection))) = connection else {
            return server_error("wire tampers need the mock's own listener");
        };
        connection.arm(match tamper {
            Tamper::Truncated => Script {
                bytes: wire::truncated_answer(rendered.content_type, &rendered.body),
                ending: Ending::Close,
            },
            _ => Script {
                bytes: Vec::new(),
                ending: Ending::Reset,
            },
        });
        // What follows never reaches the wire: the connection sends the script instead.
    }
    let mut response = respond(
        rendered.status,
        rendered.content_type,
        NO_STORE,
        rendered.body,
    );
    for (name, value) in rendered.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .insert(HeaderName::from_static(name), value);
        }
    }
    response
}

pub(crate) async fn revoke(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = match read_form(&headers, &body, REVOCATION_PATH) {
        Ok(params) => params,
        Err(error) => return oauth_error(&error),
    };
    let authorization = header_text(&headers, AUTHORIZATION);
    if let Err(error) = authenticate(&st.clients, authorization.as_deref(), &params) {
        return oauth_error(&error);
    }
    let Some(token) = params.get("token") else {
        return oauth_error(&missing_token());
    };
    st.store().revoke(token);
    let mut response = Response::new(Body::empty());
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static(NO_STORE));
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::clients::parse_client_arg;
    use crate::testing::{self, call, FORM};
    use crate::util::b64url_decode;
    use serde_json::{json, Value};

    const ISS: &str = "http://127.0.0.1:9/api/v2";

    fn app() -> Router {
        router(
            testing::state(ISS, "fs-demo", &["sr:sec", "sig:sigsec:RS256"]),
            false,
        )
    }

    async fn admin(app: &Router, path: &str, body: Value) -> Value {
        let (status, _, body) = call(app, "POST", path, &[], &body.to_string()).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    fn enc(s: &str) -> String {
        form_urlencoded::byte_serialize(s.as_bytes()).collect()
    }

    #[tokio::test]
    async fn introspection_flow() {
        let app = app();
        let minted = admin(
            &app,
            "/_mock/tokens",
            json!({"sub": "u1", "token": "a+b/c=="}),
        )
        .await;
        let token = minted["token"].as_str().unwrap().to_owned();
        let body = format!("token={}&client_id=sr&client_secret=sec", enc(&token));

        let (status, headers, answer) =
            call(&app, "POST", INTROSPECTION_PATH, &[FORM], &body).await;
        assert_eq!(status, 200);
        assert_eq!(headers["content-type"], "application/json; charset=utf-8");
        assert_eq!(headers["cache-control"], "no-store");
        let answer: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(
            answer,
            json!({"active": true, "sub": "u1", "client_id": "fs-demo", "exp": minted["exp"],
                   "iat": answer["iat"], "iss": ISS,
                   "scope": "openid uid given_name usual_name email groups", "token_type": "Bearer"})
        );

        // HTTP Basic (id and secret form-urlencoded, then base64).
        use base64::Engine as _;
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("sr:sec")
        );
        let token_only = format!("token={}", enc(&token));
        let (status, ..) = call(
            &app,
            "POST",
            INTROSPECTION_PATH,
            &[FORM, ("authorization", &basic)],
            &token_only,
        )
        .await;
        assert_eq!(status, 200);

        // Both mechanisms, wrong secret, no token: errors, not counted.
        let (status, headers, err) = call(
            &app,
            "POST",
            INTROSPECTION_PATH,
            &[FORM, ("authorization", &basic)],
            &body,
        )
        .await;
        assert_eq!(status, 400);
        assert_eq!(headers["content-type"], "application/json; charset=utf-8");
        assert_eq!(
            serde_json::from_slice::<Value>(&err).unwrap(),
            json!({"error": "invalid_request",
                   "error_description": "client authentication must only be provided using one mechanism"})
        );
        let wrong = format!("token={}&client_id=sr&client_secret=nope", enc(&token));
        let (status, _, err) = call(&app, "POST", INTROSPECTION_PATH, &[FORM], &wrong).await;
        assert_eq!(status, 401);
        assert_eq!(
            serde_json::from_slice::<Value>(&err).unwrap()["error"],
            "invalid_client"
        );
        let (status, _, err) = call(
            &app,
            "POST",
            INTROSPECTION_PATH,
            &[FORM],
            "client_id=sr&client_secret=sec",
        )
        .await;
        assert_eq!(status, 400);
        assert_eq!(
            serde_json::from_slice::<Value>(&err).unwrap()["error_description"],
            "missing required parameter 'token'"
        );

        let count = admin(&app, "/_mock/count", json!({"token": token})).await;
        assert_eq!(count, json!({"introspections": 2}));
        let last = admin(&app, "/_mock/last-request", json!({"token": token})).await;
        assert_eq!(last["authenticated"], false);
        assert_eq!(last["auth_method"], "client_secret_post");
        assert_eq!(last["form"]["client_secret"], "[redacted]");
        assert_eq!(last["form"]["token"], "a+b/c==");
        assert_eq!(last["token_bytes_equal"], true);
        assert_eq!(
            last["form_keys"],
            json!(["token", "client_id", "client_secret"])
        );

        // Revocation: 200, empty body, then inactive.
        let (status, _, empty) = call(&app, "POST", REVOCATION_PATH, &[FORM], &body).await;
        assert_eq!((status, empty.len()), (200, 0));
        let (_, _, answer) = call(&app, "POST", INTROSPECTION_PATH, &[FORM], &body).await;
        assert_eq!(answer, br#"{"active":false}"#);
        let stats = call(&app, "GET", "/_mock/stats", &[], "").await.2;
        assert_eq!(
            serde_json::from_slice::<Value>(&stats).unwrap(),
            json!({"introspections": 6, "jwks_requests": 0, "hold": false, "held": 0,
                "jwks_held": 0})
        );
    }

    #[tokio::test]
    async fn signed_answer_and_jwks() {
        let app = app();
        let minted = admin(
            &app,
            "/_mock/tokens",
            json!({"kind": "refresh", "ttl_secs": 60}),
        )
        .await;
        let body = format!(
            "token={}&client_id=sig&client_secret=sigsec",
            enc(minted["token"].as_str().unwrap())
        );
        let accept = ("accept", "application/token-introspection+jwt");
        let (status, headers, jws) =
            call(&app, "POST", INTROSPECTION_PATH, &[FORM, accept], &body).await;
        assert_eq!(status, 200);
        assert_eq!(
            headers["content-type"],
            "application/token-introspection+jwt; charset=utf-8"
        );
        let text = String::from_utf8(jws).unwrap();
        let parts: Vec<&str> = text.split('.').collect();
        let header: Value = serde_json::from_slice(&b64url_decode(parts[0]).unwrap()).unwrap();
        let payload: Value = serde_json::from_slice(&b64url_decode(parts[1]).unwrap()).unwrap();
        let (_, jwks_headers, jwks) = call(&app, "GET", JWKS_PATH, &[], "").await;
        assert_eq!(jwks_headers["content-type"], "application/jwk-set+json");
        assert_eq!(jwks_headers["cache-control"], "public, max-age=600");
        let jwks: Value = serde_json::from_slice(&jwks).unwrap();
        assert_eq!(header["kid"], jwks["keys"][0]["kid"]);
        assert_eq!(header["typ"], "token-introspection+jwt");
        assert_eq!(payload["aud"], "sig");
        assert_eq!(payload["iss"], ISS);
        assert!(payload["iat"].is_i64());
        assert_eq!(payload["token_introspection"]["active"], true);
        assert!(payload["token_introspection"].get("token_type").is_none());
        assert_eq!(payload.as_object().unwrap().len(), 4);

        admin(&app, "/_mock/jwks", json!({"available": false})).await;
        assert_eq!(call(&app, "GET", JWKS_PATH, &[], "").await.0, 503);
        admin(&app, "/_mock/jwks", json!({"available": true})).await;
        let rotated = admin(&app, "/_mock/keys/rotate", json!({})).await;
        assert_eq!(rotated["kids"].as_array().unwrap().len(), 4);
        assert_eq!(rotated["kids"][2], header["kid"]);
        let retired = admin(&app, "/_mock/keys/retire", json!({})).await;
        assert_eq!(retired["kids"].as_array().unwrap().len(), 2);
        let stats = call(&app, "GET", "/_mock/stats", &[], "").await.2;
        assert_eq!(
            serde_json::from_slice::<Value>(&stats).unwrap()["jwks_requests"],
            2
        );
    }

    #[tokio::test]
    async fn discovery_document() {
        let app = app();
        let (status, headers, body) = call(&app, "GET", DISCOVERY_PATH, &[], "").await;
        assert_eq!(status, 200);
        assert_eq!(headers["cache-control"], "public, max-age=600");
        let doc: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["issuer"], ISS);
        assert_eq!(
            doc["introspection_endpoint"],
            format!("{ISS}/token/introspection")
        );
        assert_eq!(
            doc["revocation_endpoint"],
            format!("{ISS}/token/revocation")
        );
        assert_eq!(doc["jwks_uri"], format!("{ISS}/jwks"));
        assert_eq!(
            doc["introspection_signing_alg_values_supported"],
            json!(["HS256", "ES256", "RS256"])
        );
    }

    #[tokio::test]
    async fn held_answers_wait_until_released() {
        let clients = Clients::new([parse_client_arg("sr:sec").unwrap()]);
        let state = Arc::new(AppState::new(
            ISS,
            "fs-demo",
            clients,
            KeySet::new(KeyPair::generate().unwrap()),
        ));
        let app = router(state.clone(), false);
        let minted = admin(&app, "/_mock/tokens", json!({})).await;
        let body = format!(
            "token={}&client_id=sr&client_secret=sec",
            enc(minted["token"].as_str().unwrap())
        );
        assert_eq!(
            admin(&app, "/_mock/hold", json!({"hold": true})).await,
            json!({"hold": true, "held": 0})
        );
        let pending: Vec<_> = (0..3)
            .map(|_| {
                let (app, body) = (app.clone(), body.clone());
                tokio::spawn(async move {
                    call(&app, "POST", INTROSPECTION_PATH, &[FORM], &body)
                        .await
                        .0
                })
            })
            .collect();
        // Bounded wait until all three are held.
        tokio::time::timeout(Duration::from_secs(10), async {
            while state.held() < 3 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("three answers held");
        let stats = call(&app, "GET", "/_mock/stats", &[], "").await.2;
        assert_eq!(serde_json::from_slice::<Value>(&stats).unwrap()["held"], 3);
        assert!(pending.iter().all(|p| !p.is_finished()));
        // Counted on arrival, answered on release.
        let count = admin(&app, "/_mock/count", json!({"token": minted["token"]})).await;
        assert_eq!(count["introspections"], 3);
        assert_eq!(
            admin(&app, "/_mock/hold", json!({"hold": false})).await,
            json!({"hold": false, "held": 3})
        );
        for p in pending {
            let status = tokio::time::timeout(Duration::from_secs(10), p)
                .await
                .expect("released")
                .unwrap();
            assert_eq!(status, 200);
        }
        assert_eq!(state.held(), 0);
        // With the hold off, nothing waits.
        assert_eq!(
            call(&app, "POST", INTROSPECTION_PATH, &[FORM], &body)
                .await
                .0,
            200
        );
    }

    #[tokio::test]
    async fn a_held_request_that_goes_away_is_no_longer_counted() {
        let state = Arc::new(AppState::new(
            ISS,
            "fs-demo",
            Clients::new([parse_client_arg("sr:sec").unwrap()]),
            KeySet::new(KeyPair::generate().unwrap()),
        ));
        let app = router(state.clone(), false);
        state.set_hold(true);
        let body = "token=t&client_id=sr&client_secret=sec".to_owned();
        let task =
            tokio::spawn(
                async move { call(&app, "POST", INTROSPECTION_PATH, &[FORM], &body).await },
            );
        tokio::time::timeout(Duration::from_secs(10), async {
            while state.held() < 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("held");
        task.abort();
        let _ = task.await;
        assert_eq!(state.held(), 0);
        assert!(state.holding());
    }

    /// POSTs `body` to the introspection endpoint on a fresh connection; what was read and
    /// the error that ended the read.
    fn raw_introspection(port: u16, body: &str) -> (String, Option<std::io::ErrorKind>) {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "POST {INTROSPECTION_PATH} HTTP/1.1\r\nhost: x\r\n\
             content-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return (String::from_utf8(got).unwrap(), None),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return (String::from_utf8(got).unwrap(), Some(e.kind())),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wire_tampers_cut_or_reset_the_real_connection() {
        let app = app();
        let mut forms = Vec::new();
        for tamper in ["truncated", "reset"] {
            let minted = admin(
                &app,
                "/_mock/tokens",
                json!({"sub": "u1", "tamper": tamper}),
            )
            .await;
            let token = minted["token"].as_str().unwrap().to_owned();
            forms.push((
                token.clone(),
                format!("token={}&client_id=sr&client_secret=sec", enc(&token)),
            ));
        }
        // Without the mock's own listener there is no connection to take over: a 500.
        let (status, _, body) = call(&app, "POST", INTROSPECTION_PATH, &[FORM], &forms[1].1).await;
        assert_eq!(status, 500, "{}", String::from_utf8_lossy(&body));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let service = app
            .clone()
            .into_make_service_with_connect_info::<Takeover>();
        tokio::spawn(async move { axum::serve(wire::WireListener(listener), service).await });
        let bodies: Vec<String> = forms.iter().map(|(_, form)| form.clone()).collect();
        let (cut, reset) = tokio::task::spawn_blocking(move || {
            (
                raw_introspection(port, &bodies[0]),
                raw_introspection(port, &bodies[1]),
            )
        })
        .await
        .unwrap();

        // Truncated: the headers of a whole answer, half of its body, then the end.
        let (text, error) = cut;
        assert_eq!(error, None);
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("content-type: application/json; charset=utf-8"));
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), length / 2);
        assert!(body.starts_with(r#"{"active":true,"sub":"u1""#), "{body}");
        assert!(serde_json::from_str::<Value>(body).is_err());

        // Reset: nothing at all, then a RST.
        assert_eq!(
            reset,
            (String::new(), Some(std::io::ErrorKind::ConnectionReset))
        );

        // Both requests arrived and were counted.
        for (token, _) in &forms {
            let count = admin(&app, "/_mock/count", json!({"token": token})).await;
            assert_eq!(
                count["introspections"],
                if token == &forms[1].0 { 2 } else { 1 }
            );
        }
    }

    #[tokio::test]
    async fn delayed_answer() {
        let app = app();
        let minted = admin(&app, "/_mock/tokens", json!({"delay_ms": 150})).await;
        let body = format!(
            "token={}&client_id=sr&client_secret=sec",
            enc(minted["token"].as_str().unwrap())
        );
        let started = std::time::Instant::now();
        let (status, ..) = call(&app, "POST", INTROSPECTION_PATH, &[FORM], &body).await;
        assert_eq!(status, 200);
        assert!(started.elapsed() >= Duration::from_millis(150));
    }
}
