//! Sample ProConnect "Serveur de Ressources" (SR) that sits behind Envoy and the
//! introspection filter.
//!
//! The SR performs no token validation of its own: it trusts only the identity
//! headers that the filter sets after a positive introspection (the filter also
//! removes these headers from incoming requests). It must therefore only be
//! reachable through Envoy.
//!
//! Routes:
//! - `GET /healthz` → `200 ok` (no identity needed).
//! - `GET /api/users/locations` → the user's locations from an in-code fixture.
//! - `GET /api/users/me` → the identity headers that reached the SR.
//!
//! Every other request needs a non-empty sub header (401 JSON otherwise); unknown
//! paths then get a 404 JSON.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{ALLOW, AUTHORIZATION};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Serialize;

/// Default name of the header carrying the user's `sub`.
pub const DEFAULT_SUB_HEADER: &str = "x-user-sub";
/// Default prefixes of the headers echoed by `/api/users/me`.
pub const DEFAULT_IDENTITY_PREFIXES: [&str; 2] = ["x-user-", "x-token-"];

/// Which identity headers the SR reads; must match the filter's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    sub_header: String,
    identity_prefixes: Vec<String>,
}

impl Config {
    /// Header names are case-insensitive: both the sub header and the prefixes
    /// are stored lowercased, as `http` stores header names.
    pub fn new(sub_header: &str, identity_prefixes: &[String]) -> Self {
        Self {
            sub_header: sub_header.trim().to_ascii_lowercase(),
            identity_prefixes: identity_prefixes
                .iter()
                .map(|p| p.trim().to_ascii_lowercase())
                .filter(|p| !p.is_empty())
                .collect(),
        }
    }

    pub fn sub_header(&self) -> &str {
        &self.sub_header
    }

    pub fn identity_prefixes(&self) -> &[String] {
        &self.identity_prefixes
    }

    /// Identity headers, and their underscore spellings (`x_user_sub`), which many stacks
    /// read as the same header: /me reports them so a forged one would show.
    fn is_identity_header(&self, name: &str) -> bool {
        let name = name.replace('_', "-");
        name == self.sub_header
            || self
                .identity_prefixes
                .iter()
                .any(|p| name.starts_with(p.as_str()))
    }
}

impl Default for Config {
    fn default() -> Self {
        let prefixes: Vec<String> = DEFAULT_IDENTITY_PREFIXES
            .iter()
            .map(|p| (*p).to_owned())
            .collect();
        Self::new(DEFAULT_SUB_HEADER, &prefixes)
    }
}

/// The authenticated user's `sub`, as set by the gate.
#[derive(Debug, Clone)]
struct Identity {
    sub: String,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Location {
    pub label: &'static str,
    pub lat: f64,
    pub lon: f64,
    pub recorded_at: &'static str,
}

/// The demo user of the ProConnect integration environment.
pub const DEMO_SUB: &str = "7396c91e-b9f2-4f9d-8547-5e9b3332725b";
/// A second known user, to show that data is scoped by `sub`.
pub const OTHER_SUB: &str = "2f7c1c2e-8a8b-4c1e-9c57-3f1f3b9a1d10";

const DEMO_LOCATIONS: &[Location] = &[
    Location {
        label: "Paris — Ségur",
        lat: 48.8505,
        lon: 2.3080,
        recorded_at: "2025-01-13T09:12:00Z",
    },
    Location {
        label: "Lyon — Part-Dieu",
        lat: 45.7605,
        lon: 4.8597,
        recorded_at: "2025-01-15T14:40:00Z",
    },
    Location {
        label: "Rennes — République",
        lat: 48.1100,
        lon: -1.6794,
        recorded_at: "2025-01-20T08:05:00Z",
    },
];

const OTHER_LOCATIONS: &[Location] = &[
    Location {
        label: "Marseille — Vieux-Port",
        lat: 43.2951,
        lon: 5.3744,
        recorded_at: "2025-02-03T10:30:00Z",
    },
    Location {
        label: "Lille — Grand'Place",
        lat: 50.6372,
        lon: 3.0633,
        recorded_at: "2025-02-07T16:45:00Z",
    },
];

/// In-code fixture: locations keyed by `sub`.
const FIXTURE: &[(&str, &[Location])] = &[(DEMO_SUB, DEMO_LOCATIONS), (OTHER_SUB, OTHER_LOCATIONS)];

/// Locations recorded for `sub`; empty for an unknown user.
pub fn locations_for(sub: &str) -> &'static [Location] {
    FIXTURE
        .iter()
        .find(|(s, _)| *s == sub)
        .map_or(&[], |(_, locs)| *locs)
}

#[derive(Serialize)]
struct LocationsBody {
    sub: String,
    locations: &'static [Location],
}

#[derive(Serialize)]
struct MeBody {
    sub: String,
    identity_headers: BTreeMap<String, String>,
    authorization_present: bool,
}

fn json_error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

fn lossy(value: &HeaderValue) -> String {
    String::from_utf8_lossy(value.as_bytes()).into_owned()
}

/// Builds the SR's router.
pub fn app(config: Config) -> Router {
    let config = Arc::new(config);

    let protected = Router::new()
        .route(
            "/api/users/locations",
            get(locations).fallback(method_not_allowed),
        )
        .route("/api/users/me", get(me).fallback(method_not_allowed))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&config),
            require_identity,
        ));

    Router::new()
        .route("/healthz", get(healthz).fallback(method_not_allowed))
        .merge(protected)
        .layer(middleware::from_fn(log_request))
        .with_state(config)
}

/// One line per request on stderr: method, path (never the query string nor
/// any header value, which may carry a token) and status.
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    eprintln!("{method} {path} {}", response.status().as_u16());
    response
}

/// Rejects requests without a non-empty sub header; otherwise makes the
/// identity available to the handlers.
async fn require_identity(
    State(config): State<Arc<Config>>,
    mut request: Request,
    next: Next,
) -> Response {
    let sub = request
        .headers()
        .get(config.sub_header())
        .map(lossy)
        .filter(|s| !s.trim().is_empty());
    match sub {
        Some(sub) => {
            request.extensions_mut().insert(Identity { sub });
            next.run(request).await
        }
        None => json_error(
            StatusCode::UNAUTHORIZED,
            &format!("missing identity header {}", config.sub_header()),
        ),
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn locations(Extension(identity): Extension<Identity>) -> Json<LocationsBody> {
    let locations = locations_for(&identity.sub);
    Json(LocationsBody {
        sub: identity.sub,
        locations,
    })
}

async fn me(
    State(config): State<Arc<Config>>,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
) -> Json<MeBody> {
    let mut identity_headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &headers {
        if config.is_identity_header(name.as_str()) {
            identity_headers
                .entry(name.as_str().to_owned())
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(&lossy(value));
                })
                .or_insert_with(|| lossy(value));
        }
    }
    Json(MeBody {
        sub: identity.sub,
        identity_headers,
        authorization_present: headers.contains_key(AUTHORIZATION),
    })
}

async fn not_found() -> Response {
    json_error(StatusCode::NOT_FOUND, "not found")
}

async fn method_not_allowed() -> Response {
    let mut response = json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    response
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use serde_json::{json, Value};
    use tower::ServiceExt;

    async fn send(app: Router, request: Request<Body>) -> (StatusCode, Vec<u8>) {
        let response = app.oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, body.to_vec())
    }

    async fn get_json(app: Router, uri: &str, headers: &[(&str, &[u8])]) -> (StatusCode, Value) {
        let mut builder = Request::builder().method("GET").uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, HeaderValue::from_bytes(value).unwrap());
        }
        let (status, body) = send(app, builder.body(Body::empty()).unwrap()).await;
        let value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)));
        (status, value)
    }

    #[tokio::test]
    async fn healthz_needs_no_identity() {
        let request = Request::get("/healthz").body(Body::empty()).unwrap();
        let (status, body) = send(app(Config::default()), request).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, b"ok");
    }

    #[tokio::test]
    async fn locations_of_demo_user() {
        let (status, body) = get_json(
            app(Config::default()),
            "/api/users/locations",
            &[("x-user-sub", DEMO_SUB.as_bytes())],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["sub"], DEMO_SUB);
        let locations = body["locations"].as_array().unwrap();
        assert_eq!(locations.len(), 3);
        assert_eq!(locations[0]["label"], "Paris — Ségur");
        for location in locations {
            let lat = location["lat"].as_f64().unwrap();
            let lon = location["lon"].as_f64().unwrap();
            // Metropolitan France.
            assert!((41.0..=51.5).contains(&lat), "{lat}");
            assert!((-5.5..=10.0).contains(&lon), "{lon}");
            assert!(location["recorded_at"].as_str().unwrap().ends_with('Z'));
        }
    }

    #[tokio::test]
    async fn locations_are_scoped_by_sub() {
        let (status, body) = get_json(
            app(Config::default()),
            "/api/users/locations",
            &[("x-user-sub", OTHER_SUB.as_bytes())],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["sub"], OTHER_SUB);
        let locations = body["locations"].as_array().unwrap();
        assert_eq!(locations.len(), 2);
        assert!(locations.iter().all(|l| l["label"] != "Paris — Ségur"));
    }

    #[tokio::test]
    async fn unknown_sub_gets_empty_list() {
        let (status, body) = get_json(
            app(Config::default()),
            "/api/users/locations",
            &[("x-user-sub", b"nobody")],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({ "sub": "nobody", "locations": [] }));
    }

    #[tokio::test]
    async fn missing_sub_header_is_401() {
        for uri in ["/api/users/locations", "/api/users/me", "/nowhere"] {
            // A bearer token alone is not an identity: only the gate's header is.
            let (status, body) = get_json(
                app(Config::default()),
                uri,
                &[
                    ("authorization", b"Bearer abc"),
                    ("x-user-email", b"a@b.fr"),
                ],
            )
            .await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
            assert_eq!(
                body,
                json!({ "error": "missing identity header x-user-sub" })
            );
        }
    }

    #[tokio::test]
    async fn empty_sub_header_is_401() {
        for value in [&b""[..], b"   "] {
            let (status, body) = get_json(
                app(Config::default()),
                "/api/users/me",
                &[("x-user-sub", value)],
            )
            .await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert_eq!(
                body,
                json!({ "error": "missing identity header x-user-sub" })
            );
        }
    }

    #[tokio::test]
    async fn unknown_path_with_identity_is_404_json() {
        let (status, body) = get_json(
            app(Config::default()),
            "/api/nowhere",
            &[("x-user-sub", DEMO_SUB.as_bytes())],
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body, json!({ "error": "not found" }));
    }

    #[tokio::test]
    async fn wrong_method_is_405_json() {
        let request = Request::post("/api/users/me")
            .header("x-user-sub", DEMO_SUB)
            .body(Body::empty())
            .unwrap();
        let (status, body) = send(app(Config::default()), request).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body, json!({ "error": "method not allowed" }));
    }

    #[tokio::test]
    async fn me_echoes_identity_headers_only() {
        let (status, body) = get_json(
            app(Config::default()),
            "/api/users/me",
            &[
                ("x-user-sub", DEMO_SUB.as_bytes()),
                ("x-user-email", b"test@fia1.fr"),
                ("x-token-client-id", b"my-client"),
                ("x-token-scope", b"openid email"),
                ("x-user-name", b"caf\xe9"),
                ("authorization", b"Bearer secret-token"),
                ("x-request-id", b"abc"),
                ("user-agent", b"test"),
                ("x-userx", b"not-a-prefix-match"),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({
                "sub": DEMO_SUB,
                "identity_headers": {
                    "x-user-sub": DEMO_SUB,
                    "x-user-email": "test@fia1.fr",
                    "x-user-name": "caf\u{FFFD}",
                    "x-token-client-id": "my-client",
                    "x-token-scope": "openid email",
                },
                "authorization_present": true,
            })
        );
        assert!(!body.to_string().contains("secret-token"));
    }

    #[tokio::test]
    async fn me_reports_absent_authorization() {
        let (status, body) = get_json(
            app(Config::default()),
            "/api/users/me",
            &[("x-user-sub", b"someone")],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["authorization_present"], false);
        assert_eq!(body["identity_headers"], json!({ "x-user-sub": "someone" }));
    }

    #[tokio::test]
    async fn custom_header_names() {
        let config = Config::new("X-Sub", &["x-pc-".to_owned()]);
        let (status, body) = get_json(
            app(config.clone()),
            "/api/users/me",
            &[
                ("x-sub", DEMO_SUB.as_bytes()),
                ("x-pc-email", b"test@fia1.fr"),
                ("x-user-email", b"ignored@fia1.fr"),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body["identity_headers"],
            json!({ "x-sub": DEMO_SUB, "x-pc-email": "test@fia1.fr" })
        );

        let (status, body) = get_json(
            app(config),
            "/api/users/locations",
            &[("x-user-sub", DEMO_SUB.as_bytes())],
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body, json!({ "error": "missing identity header x-sub" }));
    }
}
