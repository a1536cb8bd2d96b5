//! The OpenID Provider metadata (`/.well-known/openid-configuration`): where introspection and
//! the JWKS live, and the issuer.

use serde::Deserialize;

/// The endpoints the filter uses, resolved from the configuration and, optionally, discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub introspection_path: String,
    pub issuer: Option<String>,
    pub jwks_path: Option<String>,
}

/// What a discovery document says, as paths on the authorization server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    pub issuer: String,
    pub introspection_path: String,
    pub jwks_path: Option<String>,
}

/// The members of the OpenID Provider metadata the filter reads (OpenID Connect Discovery
/// 1.0 §3); the rest of the document is ignored.
#[derive(Deserialize)]
struct Metadata {
    issuer: Option<String>,
    introspection_endpoint: Option<String>,
    jwks_uri: Option<String>,
}

/// Parses a discovery document. URLs become paths: the callouts go through the configured
/// Envoy cluster, so only the path of each endpoint is used.
pub fn parse(body: &[u8]) -> Result<Discovered, &'static str> {
    let doc: Metadata = serde_json::from_slice(body)
        .map_err(|_| "discovery document is not a JSON object with string members")?;
    let issuer = doc
        .issuer
        .filter(|s| !s.is_empty() && !s.chars().any(char::is_control))
        .ok_or("discovery document has no issuer")?;
    let introspection_path = doc
        .introspection_endpoint
        .as_deref()
        .and_then(url_path)
        .ok_or("discovery document has no usable introspection_endpoint")?;
    let jwks_path = match doc.jwks_uri.as_deref() {
        None => None,
        Some(uri) => Some(url_path(uri).ok_or("discovery document has an unusable jwks_uri")?),
    };
    Ok(Discovered {
        issuer,
        introspection_path,
        jwks_path,
    })
}

/// The path (and query) of an absolute http(s) URL.
fn url_path(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let slash = rest.find('/')?;
    let path = rest.get(slash..)?;
    let ok = path.bytes().all(|b| b.is_ascii_graphic() && b != b'#');
    ok.then(|| path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proconnect_document() {
        let doc = serde_json::json!({
            "issuer": "https://auth.agentconnect.gouv.fr/api/v2",
            "introspection_endpoint": "https://auth.agentconnect.gouv.fr/api/v2/token/introspection",
            "jwks_uri": "https://auth.agentconnect.gouv.fr/api/v2/jwks",
        });
        let d = parse(doc.to_string().as_bytes()).unwrap();
        assert_eq!(d.issuer, "https://auth.agentconnect.gouv.fr/api/v2");
        assert_eq!(d.introspection_path, "/api/v2/token/introspection");
        assert_eq!(d.jwks_path.as_deref(), Some("/api/v2/jwks"));
    }

    #[test]
    fn bad_documents() {
        let not_json = Err("discovery document is not a JSON object with string members");
        assert_eq!(parse(b"<html>"), not_json);
        assert_eq!(
            parse(br#"{"issuer":"i","introspection_endpoint":"https://a/x","jwks_uri":5}"#),
            not_json
        );
        assert_eq!(
            parse(br#"{"introspection_endpoint":"https://a/x"}"#),
            Err("discovery document has no issuer")
        );
        let no_endpoint = Err("discovery document has no usable introspection_endpoint");
        assert_eq!(
            parse(br#"{"issuer":"i","introspection_endpoint":"ftp://a/x"}"#),
            no_endpoint
        );
        assert_eq!(
            parse(br#"{"issuer":"i","introspection_endpoint":"https://a"}"#),
            no_endpoint
        );
        assert_eq!(
            parse(br#"{"issuer":"i","introspection_endpoint":"https://a/x","jwks_uri":"x"}"#),
            Err("discovery document has an unusable jwks_uri")
        );
        let ok =
            parse(br#"{"issuer":"i","introspection_endpoint":"http://a:1/introspect"}"#).unwrap();
        assert_eq!(
            (ok.introspection_path.as_str(), ok.jwks_path),
            ("/introspect", None)
        );
    }
}
