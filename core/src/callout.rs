//! The introspection request (RFC 7662 §2.1) as a plain value; the adapter turns it into
//! `dispatch_http_call`.

use base64::Engine as _;

use crate::config::{ClientAuth, Config};

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
    config: &Config,
    path: &str,
    token: &str,
    accept: &'static str,
) -> Callout {
    let mut body = String::with_capacity(token.len() + 128);
    body.push_str("token=");
    form_encode_into(&mut body, token);
    if let Some(hint) = &config.token_type_hint {
        body.push_str("&token_type_hint=");
        form_encode_into(&mut body, hint);
    }
    let mut headers = vec![
        (":method", "POST".to_string()),
        (":path", path.to_string()),
        (":authority", config.authority.clone()),
        (
            "content-type",
            "application/x-www-form-urlencoded".to_string(),
        ),
        ("accept", accept.to_string()),
    ];
    match config.client_auth {
        ClientAuth::ClientSecretPost => {
            body.push_str("&client_id=");
            form_encode_into(&mut body, &config.client_id);
            body.push_str("&client_secret=");
            form_encode_into(&mut body, config.client_secret.expose());
        }
        ClientAuth::ClientSecretBasic => {
            headers.push((
                "authorization",
                basic_authorization(&config.client_id, config.client_secret.expose()),
            ));
        }
    }
    Callout {
        headers,
        body: body.into_bytes(),
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
pub fn basic_authorization(client_id: &str, client_secret: &str) -> String {
    let mut pair = String::with_capacity(client_id.len() + client_secret.len() + 8);
    form_encode_into(&mut pair, client_id);
    pair.push(':');
    form_encode_into(&mut pair, client_secret);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
    )
}

/// application/x-www-form-urlencoded: unreserved characters stay, everything else is `%XX`.
pub fn form_encode_into(out: &mut String, value: &str) {
    for &b in value.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'*') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(hex_digit(b >> 4));
            out.push(hex_digit(b & 0x0f));
        }
    }
}

fn hex_digit(nibble: u8) -> char {
    char::from_digit(u32::from(nibble), 16)
        .unwrap_or('0')
        .to_ascii_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn header<'a>(c: &'a Callout, name: &str) -> Option<&'a str> {
        c.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn client_secret_post() {
        let c = introspection_request(
            &config(serde_json::json!({})),
            "/api/v2/token/introspection",
            "a+b/c=",
            ACCEPT_JSON,
        );
        assert_eq!(
            String::from_utf8(c.body.clone()).unwrap(),
            "token=a%2Bb%2Fc%3D&client_id=sr%20id&client_secret=p%40ss%3Aw%3Drd%2B%2F"
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
        let c = introspection_request(
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
        let c = introspection_request(&config(serde_json::json!({})), "/i", "tok-123", ACCEPT_JSON);
        let shown = format!("{c:?}");
        assert!(!shown.contains("tok-123") && !shown.contains("p@ss") && !shown.contains("p%40ss"));
    }
}
