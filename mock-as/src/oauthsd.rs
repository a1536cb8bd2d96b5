//! The OAuthSD profile (`--profile oauthsd`): an RFC 7662 server shaped like OAuthSD rather
//! than ProConnect (brief: wire.md, "OAuthSD"; seed 002).
//!
//! - Endpoints at the root of the issuer: `/introspect`, `/keys`, `/revoke`,
//!   `/.well-known/openid-configuration`.
//! - Client authentication: HTTP Basic or `client_id`/`client_secret` in the body (the same
//!   rules as the ProConnect profile).
//! - An active opaque access token introspects as its storage row: `active`, `client_id`,
//!   `user_id` (the user: there is no `sub`), `expires` (unix seconds), `scope`. No
//!   `token_type`, no `iss`, and answers are never signed (no RFC 9701).
//! - `/keys` is a protected resource: client credentials (Basic) or an active access token
//!   (Bearer). It serves the RS256 keys.
//!
//! The admin API (`/_mock/...`) is the same as in the ProConnect profile.

use crate::answer::{fault_answer, JSON};
use crate::clients::{authenticate, FormParams, OAuthError};
use crate::routes::{
    header_text, missing_token, oauth_error, receive_introspection, respond, revoke, AppState,
    Introspection, NO_STORE,
};
use crate::util::now_secs;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Introspection endpoint.
pub const INTROSPECT_PATH: &str = "/introspect";
/// JWKS endpoint.
pub const KEYS_PATH: &str = "/keys";
/// Revocation endpoint.
pub const REVOKE_PATH: &str = "/revoke";
/// Discovery document.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// An OAuthSD introspection answer: the access token's storage row and `active`.
#[derive(Debug, Serialize, PartialEq, Eq)]
struct Answer {
    active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

/// The OAuthSD-shaped application: wire endpoints, admin API, request log.
pub fn router(state: Arc<AppState>, log_requests: bool) -> Router {
    let app = Router::new()
        .route(DISCOVERY_PATH, get(discovery))
        .route(KEYS_PATH, get(keys))
        .route(INTROSPECT_PATH, post(introspect))
        .route(REVOKE_PATH, post(revoke))
        .merge(crate::admin::router())
        .with_state(state);
    crate::routes::with_request_log(app, log_requests)
}

/// The discovery document, endpoints at the root of the issuer.
fn discovery_document(issuer: &str) -> serde_json::Value {
    let url = |path: &str| format!("{issuer}{path}");
    serde_json::json!({
        "issuer": issuer,
        "authorization_endpoint": url("/authorize"),
        "token_endpoint": url("/token"),
        "introspection_endpoint": url(INTROSPECT_PATH),
        "userinfo_endpoint": url("/userinfo"),
        "revocation_endpoint": url(REVOKE_PATH),
        "end_session_endpoint": url("/logout"),
        "jwks_uri": url(KEYS_PATH),
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token"],
        "subject_types_supported": ["public"],
        "scopes_supported": ["openid", "profile", "email"],
    })
}

async fn discovery(State(st): State<Arc<AppState>>) -> Response {
    respond(
        200,
        JSON,
        "public, max-age=600",
        discovery_document(&st.issuer).to_string(),
    )
}

/// Whether `authorization` is valid client credentials (Basic) or an active access token.
fn keys_caller_allowed(st: &AppState, authorization: Option<&str>) -> bool {
    let Some(value) = authorization else {
        return false;
    };
    if let Some(token) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
    {
        let now = now_secs();
        return st
            .store()
            .get(token.trim())
            .is_some_and(|r| r.is_active(now));
    }
    authenticate(&st.clients, Some(value), &FormParams::default()).is_ok()
}

async fn keys(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    st.jwks_requests.fetch_add(1, Ordering::Relaxed);
    if !keys_caller_allowed(&st, header_text(&headers, AUTHORIZATION).as_deref()) {
        return oauth_error(&OAuthError::invalid_client());
    }
    let jwks: serde_json::Value = serde_json::from_slice(&st.keys().jwks_body).unwrap_or_default();
    let rsa: Vec<&serde_json::Value> = jwks
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .map(|keys| {
            keys.iter()
                .filter(|k| k.get("kty").and_then(serde_json::Value::as_str) == Some("RSA"))
                .collect()
        })
        .unwrap_or_default();
    respond(
        200,
        JSON,
        NO_STORE,
        serde_json::json!({ "keys": rsa }).to_string(),
    )
}

async fn introspect(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let Introspection {
        auth,
        has_token,
        record,
    } = match receive_introspection(&st, &headers, &body, INTROSPECT_PATH) {
        Ok(received) => received,
        Err(error) => return oauth_error(&error),
    };
    if let Err(error) = auth {
        return oauth_error(&error);
    }
    if !has_token {
        return oauth_error(&missing_token());
    }
    if let Some(ms) = record.as_ref().and_then(|r| r.delay_ms) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(fault) = fault_answer(record.as_ref().and_then(|r| r.tamper), &st.issuer) {
        return respond(fault.status, fault.content_type, NO_STORE, fault.body);
    }
    let now = now_secs();
    let answer = match record.filter(|r| r.is_active(now)) {
        Some(r) => Answer {
            active: true,
            client_id: Some(st.fs_client_id.clone()),
            user_id: Some(r.sub),
            expires: Some(r.exp),
            scope: Some(r.scope),
        },
        None => Answer {
            active: false,
            client_id: None,
            user_id: None,
            expires: None,
            scope: None,
        },
    };
    match serde_json::to_vec(&answer) {
        Ok(body) => respond(200, JSON, NO_STORE, body),
        Err(e) => crate::routes::server_error(&e.to_string()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::testing::{self, FORM};
    use base64::Engine as _;
    use serde_json::{json, Value};

    const ISS: &str = "http://127.0.0.1:9";

    fn app() -> Router {
        router(testing::state(ISS, "fs-app", &["sr:sec"]), false)
    }

    /// A call whose answer is read as JSON (`null` if it is not).
    async fn call(
        app: &Router,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, Value) {
        let (status, _, bytes) = testing::call(app, method, path, headers, body).await;
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    fn basic(id: &str, secret: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
        )
    }

    #[tokio::test]
    async fn introspection_answers_are_storage_rows() {
        let app = app();
        let (_, minted) = call(
            &app,
            "POST",
            "/_mock/tokens",
            &[],
            r#"{"sub":"42","scope":"openid profile"}"#,
        )
        .await;
        let token = minted["token"].as_str().unwrap().to_owned();
        let body = format!("token={token}");
        let auth = basic("sr", "sec");

        // Basic authentication.
        let (status, answer) = call(
            &app,
            "POST",
            INTROSPECT_PATH,
            &[FORM, ("authorization", &auth)],
            &body,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            answer,
            json!({"active": true, "client_id": "fs-app", "user_id": "42",
                   "expires": minted["exp"], "scope": "openid profile"})
        );
        assert!(answer.get("sub").is_none() && answer.get("token_type").is_none());

        // Body authentication, same answer.
        let with_secret = format!("token={token}&client_id=sr&client_secret=sec");
        let (status, again) = call(&app, "POST", INTROSPECT_PATH, &[FORM], &with_secret).await;
        assert_eq!((status, &again), (200, &answer));

        // Wrong credentials, no token.
        let (status, err) = call(
            &app,
            "POST",
            INTROSPECT_PATH,
            &[FORM, ("authorization", &basic("sr", "x"))],
            &body,
        )
        .await;
        assert_eq!(
            (status, err["error"].as_str()),
            (401, Some("invalid_client"))
        );
        let (status, _) = call(
            &app,
            "POST",
            INTROSPECT_PATH,
            &[FORM, ("authorization", &auth)],
            "",
        )
        .await;
        assert_eq!(status, 400);

        // Revocation at /revoke, then inactive.
        let (status, _) = call(
            &app,
            "POST",
            REVOKE_PATH,
            &[FORM, ("authorization", &auth)],
            &body,
        )
        .await;
        assert_eq!(status, 200);
        let (_, answer) = call(
            &app,
            "POST",
            INTROSPECT_PATH,
            &[FORM, ("authorization", &auth)],
            &body,
        )
        .await;
        assert_eq!(answer, json!({"active": false}));

        // The ProConnect paths do not exist here.
        let (status, _) = call(
            &app,
            "POST",
            "/api/v2/token/introspection",
            &[FORM],
            &with_secret,
        )
        .await;
        assert_eq!(status, 404);
    }

    #[tokio::test]
    async fn keys_need_credentials_and_discovery_points_at_the_root() {
        let app = app();
        let (status, _) = call(&app, "GET", KEYS_PATH, &[], "").await;
        assert_eq!(status, 401);
        let (status, jwks) = call(
            &app,
            "GET",
            KEYS_PATH,
            &[("authorization", &basic("sr", "sec"))],
            "",
        )
        .await;
        assert_eq!(status, 200);
        let keys = jwks["keys"].as_array().unwrap();
        assert!(!keys.is_empty() && keys.iter().all(|k| k["kty"] == "RSA"));
        let (_, minted) = call(&app, "POST", "/_mock/tokens", &[], "{}").await;
        let bearer = format!("Bearer {}", minted["token"].as_str().unwrap());
        assert_eq!(
            call(&app, "GET", KEYS_PATH, &[("authorization", &bearer)], "")
                .await
                .0,
            200
        );
        assert_eq!(
            call(
                &app,
                "GET",
                KEYS_PATH,
                &[("authorization", "Bearer nope")],
                ""
            )
            .await
            .0,
            401
        );

        let (status, doc) = call(&app, "GET", DISCOVERY_PATH, &[], "").await;
        assert_eq!(status, 200);
        assert_eq!(doc["issuer"], ISS);
        assert_eq!(doc["introspection_endpoint"], format!("{ISS}/introspect"));
        assert_eq!(doc["jwks_uri"], format!("{ISS}/keys"));
        assert_eq!(doc["revocation_endpoint"], format!("{ISS}/revoke"));
        assert!(doc
            .get("introspection_signing_alg_values_supported")
            .is_none());
    }
}
