//! The introspection request (RFC 7662 §2.1) as a plain value; the adapter turns it into
//! `dispatch_http_call`.

use base64::Engine as _;

use crate::config::{Client, ClientAuth};

/// `Accept` for a plain JSON answer.
pub const ACCEPT_JSON: &str = "application/json";
/// `Accept` for a signed answer (RFC 9701).
pub const ACCEPT_JWT: &str = "application/token-introspection+jwt";

/// One HTTP request to the authorization server.
pub struct Callout {
    /// Pseudo-headers first, then regular headers.
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Callout {
    // The body and the Authorization header carry the token and the secret: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callout")
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// Builds the introspection request for `token`, to `path` (the configured or discovered
/// introspection endpoint). `accept` asks for a plain or a signed answer.
pub fn introspection_request(
    client: &Client,
    authority: &str,
    path: &str,
    token: &str,
    accept: &'static str,
) -> Callout {
    let mut form = form_urlencoded::Serializer::new(String::with_capacity(token.len() + 128));
    form.append_pair("token", token);
    if let Some(hint) = &client.token_type_hint {
        form.append_pair("token_type_hint", hint);
    }
    let mut headers = vec![
        (":method", "POST".to_string()),
        (":path", path.to_string()),
        (":authority", authority.to_string()),
        (
            "content-type",
            "application/x-www-form-urlencoded".to_string(),
        ),
        ("accept", accept.to_string()),
    ];
    match client.client_auth {
        ClientAuth::ClientSecretPost => {
            form.append_pair("client_id", &client.client_id);
            form.append_pair("client_secret", client.client_secret.expose());
        }
        ClientAuth::ClientSecretBasic => {
            headers.push((
                "authorization",
                basic_authorization(&client.client_id, client.client_secret.expose()),
            ));
        }
    }
    Callout {
        headers,
        body: form.finish().into_bytes(),
    }
}

/// A plain GET (discovery document, JWKS).
pub fn get_request(authority: &str, path: &str, accept: &str) -> Callout {
    Callout {
        headers: vec![
            (":method", "GET".to_string()),
            (":path", path.to_string()),
            (":authority", authority.to_string()),
            ("accept", accept.to_string()),
        ],
        body: Vec::new(),
    }
}

/// RFC 6749 §2.3.1: id and secret are each form-urlencoded, joined by `:`, then base64.
///
/// A space is written `%20`, not `+`: both mean a space to a form decoder, but servers that
/// decode these credentials with `decodeURIComponent` (node's oidc-provider, behind ProConnect)
/// read only `%20` as one. A `+` in the input is `%2B` either way.
pub fn basic_authorization(client_id: &str, client_secret: &str) -> String {
    let encode = |s: &str| -> String {
        form_urlencoded::byte_serialize(s.as_bytes())
            .map(|part| if part == "+" { "%20" } else { part })
            .collect()
    };
    let pair = format!("{}:{}", encode(client_id), encode(client_secret));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(extra: serde_json::Value) -> Config {
        let mut v = serde_json::json!({
            "cluster": "as", "authority": "as.example", "client_id": "sr id",
            "client_secret": "p@ss:w=rd+/"
        });
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        Config::from_json(v.to_string().as_bytes()).unwrap()
    }

    fn introspection_request_with(
        c: &Config,
        path: &str,
        token: &str,
        accept: &'static str,
    ) -> Callout {
        introspection_request(&c.client, &c.target.authority, path, token, accept)
    }

    fn header<'a>(c: &'a Callout, name: &str) -> Option<&'a str> {
        c.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn client_secret_post() {
        let c = introspection_request_with(
            &config(serde_json::json!({})),
            "/api/v2/token/introspection",
            "a+b/c=",
            ACCEPT_JSON,
        );
        assert_eq!(
            String::from_utf8(c.body.clone()).unwrap(),
            "token=a%2Bb%2Fc%3D&client_id=sr+id&client_secret=p%40ss%3Aw%3Drd%2B%2F"
        );
        assert_eq!(header(&c, ":method"), Some("POST"));
        assert_eq!(header(&c, ":path"), Some("/api/v2/token/introspection"));
        assert_eq!(header(&c, ":authority"), Some("as.example"));
        assert_eq!(
            header(&c, "content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(header(&c, "accept"), Some("application/json"));
        assert_eq!(header(&c, "authorization"), None);
    }

    #[test]
    fn client_secret_basic_encodes_before_base64() {
        let c = introspection_request_with(
            &config(
                serde_json::json!({"client_auth": "client_secret_basic", "token_type_hint": "access_token"}),
            ),
            "/introspect",
            "tok",
            ACCEPT_JWT,
        );
        assert_eq!(
            String::from_utf8(c.body.clone()).unwrap(),
            "token=tok&token_type_hint=access_token"
        );
        let auth = header(&c, "authorization").unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(decoded, b"sr%20id:p%40ss%3Aw%3Drd%2B%2F");
        assert_eq!(header(&c, "accept"), Some(ACCEPT_JWT));
    }

    #[test]
    fn debug_hides_secrets() {
        let c = introspection_request_with(
            &config(serde_json::json!({})),
            "/i",
            "tok-123",
            ACCEPT_JSON,
        );
        let shown = format!("{c:?}");
        assert!(!shown.contains("tok-123") && !shown.contains("p@ss") && !shown.contains("p%40ss"));
    }
}
