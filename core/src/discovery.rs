//! The OpenID Provider metadata (`/.well-known/openid-configuration`): where introspection and
//! the JWKS live, and the issuer.

use serde_json::Value;

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

/// Parses a discovery document. URLs become paths: the callouts go through the configured
/// Envoy cluster, so only the path of each endpoint is used.
pub fn parse(body: &[u8]) -> Result<Discovered, &'static str> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| "discovery document is not JSON")?;
    let issuer = doc
        .get("issuer")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && !s.chars().any(char::is_control))
        .ok_or("discovery document has no issuer")?
        .to_string();
    let introspection_path = doc
        .get("introspection_endpoint")
        .and_then(Value::as_str)
        .and_then(url_path)
        .ok_or("discovery document has no usable introspection_endpoint")?;
    let jwks_path = match doc.get("jwks_uri") {
        None => None,
        Some(v) => Some(
            v.as_str()
                .and_then(url_path)
                .ok_or("discovery document has an unusable jwks_uri")?,
        ),
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
        assert!(parse(b"<html>").is_err());
        assert!(parse(br#"{"introspection_endpoint":"https://a/x"}"#).is_err());
        assert!(parse(br#"{"issuer":"i","introspection_endpoint":"ftp://a/x"}"#).is_err());
        assert!(parse(br#"{"issuer":"i","introspection_endpoint":"https://a"}"#).is_err());
        assert!(
            parse(br#"{"issuer":"i","introspection_endpoint":"https://a/x","jwks_uri":5}"#)
                .is_err()
        );
        let ok =
            parse(br#"{"issuer":"i","introspection_endpoint":"http://a:1/introspect"}"#).unwrap();
        assert_eq!(
            (ok.introspection_path.as_str(), ok.jwks_path),
            ("/introspect", None)
        );
    }
}
