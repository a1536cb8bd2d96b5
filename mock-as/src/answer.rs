//! Introspection answers: plain JSON (RFC 7662) or signed (RFC 9701), shaped like
//! ProConnect's, with the optional faults of [`Tamper`] applied.

use crate::clients::{Client, SigAlg};
use crate::jws::{change_signature, der_of_halves, flip_signature_bit, replace_payload};
use crate::jws::{sign_compact, unsigned_compact};
use crate::jws::{JwsHeader, SignatureCache, Signer};
use crate::keys::{KeyPair, KeySet};
use crate::store::{Tamper, TokenKind, TokenRecord, DEFAULT_SCOPE};
use crate::util::{random_bytes, random_kid, random_uuid_v4};
use serde::Serialize;

/// `Content-Type` of JSON answers.
pub const JSON: &str = "application/json; charset=utf-8";
/// `Content-Type` of the `text_html` tamper's answers.
pub const HTML: &str = "text/html; charset=utf-8";
/// `Content-Type` of the redirect's body.
pub const TEXT: &str = "text/plain; charset=utf-8";
/// `Content-Type` of signed answers.
pub const JWT: &str = "application/token-introspection+jwt; charset=utf-8";
/// The media type a client puts in `Accept` to ask for a signed answer.
pub const JWT_MEDIA_TYPE: &str = "application/token-introspection+jwt";
/// The `typ` of signed answers.
pub const JWT_TYP: &str = "token-introspection+jwt";
/// Size of the `huge` body's padding.
pub const HUGE_PADDING: usize = 2 * 1024 * 1024;

/// The introspection object. Members are emitted in ProConnect's order and only when set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Answer {
    /// Whether the token is active.
    pub active: bool,
    /// Subject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The FS that obtained the token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Expiry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// Issued at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Issuer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Scopes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// `Bearer` for access tokens, absent for refresh tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<&'static str>,
    /// `extra_claims` tamper only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<&'static str>,
    /// `extra_claims` tamper only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub given_name: Option<&'static str>,
    /// `extra_claims` tamper only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<&'static str>,
}

impl Answer {
    /// `{"active":false}`.
    pub fn inactive() -> Self {
        Self {
            active: false,
            sub: None,
            client_id: None,
            exp: None,
            iat: None,
            iss: None,
            scope: None,
            token_type: None,
            uid: None,
            given_name: None,
            email: None,
        }
    }

    /// The answer for an active token.
    pub fn active(record: &TokenRecord, fs_client_id: &str, issuer: &str) -> Self {
        Self {
            active: true,
            sub: Some(record.sub.clone()),
            client_id: Some(fs_client_id.to_owned()),
            exp: Some(record.exp),
            iat: Some(record.iat),
            iss: Some(issuer.to_owned()),
            scope: Some(record.scope.clone()),
            token_type: (record.kind == TokenKind::Access).then_some("Bearer"),
            ..Self::inactive()
        }
    }
}

/// The RFC 9701 payload: exactly `token_introspection`, `aud`, `iat`, `iss`.
#[derive(Debug, Serialize)]
struct SignedPayload<'a> {
    token_introspection: &'a Answer,
    aud: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
    iss: &'a str,
}

/// Everything an answer depends on besides the token.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Issuer (`iss`).
    pub issuer: &'a str,
    /// `client_id` reported in active answers.
    pub fs_client_id: &'a str,
    /// The authenticated caller (its id is the `aud`, its alg and secret sign).
    pub client: &'a Client,
    /// The request's `Accept` asked for `application/token-introspection+jwt`.
    pub wants_jwt: bool,
    /// Current keys.
    pub keys: &'a KeySet,
    /// Unpublished keys for the `unknown_kid` tamper.
    pub throwaway: Option<&'a KeyPair>,
    /// Now (unix seconds).
    pub now: i64,
    /// Memoized RS256/ES256 signatures.
    pub signatures: Option<&'a SignatureCache>,
}

/// A rendered HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: Vec<u8>,
    /// More headers (`Location`, `Retry-After`).
    pub headers: Vec<(&'static str, String)>,
}

impl Rendered {
    /// A JSON answer.
    pub fn json(status: u16, body: Vec<u8>) -> Self {
        Self {
            status,
            content_type: JSON,
            body,
            headers: Vec::new(),
        }
    }

    fn error(status: u16, error: &str, description: &str) -> Self {
        let body = serde_json::json!({ "error": error, "error_description": description });
        Self::json(status, body.to_string().into_bytes())
    }
}

/// Whether an `Accept` header value asks for a signed answer.
pub fn accepts_jwt(accept: &str) -> bool {
    accept.to_ascii_lowercase().contains(JWT_MEDIA_TYPE)
}

/// The answer of a fault that replaces any answer (`status_500`, `garbage`, `huge`), if
/// `tamper` is one.
pub fn fault_answer(tamper: Option<Tamper>, issuer: &str) -> Option<Rendered> {
    match tamper? {
        Tamper::Status400 => Some(Rendered::error(
            400,
            "invalid_request",
            "request body could not be read",
        )),
        Tamper::Status401 => Some(Rendered::error(
            401,
            "invalid_client",
            "client authentication failed",
        )),
        Tamper::Status500 => Some(Rendered::error(
            500,
            "server_error",
            "oops! something went wrong",
        )),
        Tamper::Status503 => {
            let mut r = Rendered::error(
                503,
                "temporarily_unavailable",
                "the server is overloaded, try again later",
            );
            r.headers.push(("retry-after", "5".to_owned()));
            Some(r)
        }
        Tamper::Redirect => {
            let to = format!("{issuer}/token/introspection/elsewhere");
            Some(Rendered {
                status: 302,
                content_type: TEXT,
                body: format!("Found. Redirecting to {to}").into_bytes(),
                headers: vec![("location", to)],
            })
        }
        Tamper::Garbage => Some(Rendered::json(200, b"not json at all".to_vec())),
        Tamper::Huge => {
            let mut body = vec![b' '; HUGE_PADDING];
            body.extend_from_slice(b"{}");
            Some(Rendered::json(200, body))
        }
        _ => None,
    }
}

/// Renders the answer for a token: `active` is its record when it is active (minted,
/// not expired, not revoked).
pub fn render(
    active: Option<&TokenRecord>,
    tamper: Option<Tamper>,
    ctx: &Context<'_>,
) -> Result<Rendered, String> {
    if let Some(fault) = fault_answer(tamper, ctx.issuer) {
        return Ok(fault);
    }
    let mut answer = match active {
        Some(record) => Answer::active(record, ctx.fs_client_id, ctx.issuer),
        None => Answer::inactive(),
    };
    if tamper == Some(Tamper::ExtraClaims) && answer.active {
        answer.uid = Some("12345");
        answer.given_name = Some("Jeanne");
        answer.email = Some("jeanne@example.gouv.fr");
    }
    let alg = ctx.client.introspection_signed_response_alg;
    let rendered = if !ctx.wants_jwt || alg == SigAlg::None || tamper == Some(Tamper::PlainJson) {
        let body = serde_json::to_vec(&answer).map_err(|e| e.to_string())?;
        Rendered::json(200, body)
    } else {
        let body = signed(&answer, alg, tamper, ctx)?;
        Rendered {
            status: 200,
            content_type: JWT,
            body: body.into_bytes(),
            headers: Vec::new(),
        }
    };
    if tamper == Some(Tamper::TextHtml) {
        return Ok(Rendered {
            content_type: HTML,
            ..rendered
        });
    }
    Ok(rendered)
}

/// Builds the compact JWS for `answer`, then applies the signed-answer faults.
fn signed(
    answer: &Answer,
    alg: SigAlg,
    tamper: Option<Tamper>,
    ctx: &Context<'_>,
) -> Result<String, String> {
    let iat = match tamper {
        Some(Tamper::NoIat) => None,
        Some(Tamper::IatPast) => Some(ctx.now - 86_400),
        Some(Tamper::IatFuture) => Some(ctx.now + 3_600),
        _ => Some(ctx.now),
    };
    let aud = if tamper == Some(Tamper::WrongAud) {
        "someone-else"
    } else {
        ctx.client.client_id.as_str()
    };
    let iss = if tamper == Some(Tamper::WrongIss) {
        "https://evil.example/api/v2"
    } else {
        ctx.issuer
    };
    let typ = if tamper == Some(Tamper::WrongTyp) {
        "JWT"
    } else {
        JWT_TYP
    };
    let payload_of = |answer: &Answer| {
        serde_json::to_vec(&SignedPayload {
            token_introspection: answer,
            aud,
            iat,
            iss,
        })
        .map_err(|e| e.to_string())
    };
    let payload = payload_of(answer)?;
    let keys = &ctx.keys.current;
    let throwaway_secret;
    let throwaway_kid;
    let (signer, kid) = match (tamper, alg) {
        (Some(Tamper::AlgNone), _) | (_, SigAlg::None) => {
            let header = JwsHeader {
                alg: "none",
                typ,
                kid: None,
            };
            return unsigned_compact(&header, &payload);
        }
        (Some(Tamper::Hs256RsaPubkey), _) => (
            Signer::Hs256(keys.rsa.public_pem.as_bytes()),
            Some(keys.rsa.kid.as_str()),
        ),
        (Some(Tamper::UnknownKid), alg) => {
            let spare = ctx
                .throwaway
                .ok_or_else(|| "throwaway keys not generated".to_owned())?;
            match alg {
                SigAlg::RS256 => (
                    Signer::Rs256(&spare.rsa.private),
                    Some(spare.rsa.kid.as_str()),
                ),
                SigAlg::ES256 => (
                    Signer::Es256(&spare.ec.private),
                    Some(spare.ec.kid.as_str()),
                ),
                _ => {
                    throwaway_secret = random_bytes::<32>();
                    throwaway_kid = random_kid();
                    (
                        Signer::Hs256(&throwaway_secret),
                        Some(throwaway_kid.as_str()),
                    )
                }
            }
        }
        (_, SigAlg::RS256) => (
            Signer::Rs256(&keys.rsa.private),
            Some(keys.rsa.kid.as_str()),
        ),
        (_, SigAlg::ES256) => (Signer::Es256(&keys.ec.private), Some(keys.ec.kid.as_str())),
        (_, SigAlg::HS256) => (Signer::Hs256(ctx.client.client_secret.as_bytes()), None),
    };
    let header = JwsHeader {
        alg: signer.alg(),
        typ,
        kid,
    };
    let jws = sign_compact(&header, &payload, signer, ctx.signatures)?;
    match tamper {
        Some(Tamper::SigBit) => {
            flip_signature_bit(&jws).ok_or_else(|| "cannot flip signature bit".to_owned())
        }
        Some(Tamper::Payload) => {
            let mut forged = answer.clone();
            if !forged.active {
                forged = Answer {
                    active: true,
                    client_id: Some(ctx.fs_client_id.to_owned()),
                    exp: Some(ctx.now + 3_600),
                    iat: Some(ctx.now),
                    iss: Some(ctx.issuer.to_owned()),
                    scope: Some(DEFAULT_SCOPE.to_owned()),
                    token_type: Some("Bearer"),
                    ..Answer::inactive()
                };
            }
            let mut sub = random_uuid_v4();
            while forged.sub.as_deref() == Some(sub.as_str()) {
                sub = random_uuid_v4();
            }
            forged.sub = Some(sub);
            replace_payload(&jws, &payload_of(&forged)?)
                .ok_or_else(|| "cannot replace payload".to_owned())
        }
        Some(Tamper::SigShort) => change(&jws, |mut sig| {
            sig.pop();
            sig
        }),
        Some(Tamper::SigLong) => change(&jws, |mut sig| {
            sig.push(0);
            sig
        }),
        Some(Tamper::SigZero) => change(&jws, |sig| vec![0; sig.len()]),
        Some(Tamper::SigDer) => change(&jws, |sig| der_of_halves(&sig)),
        _ => Ok(jws),
    }
}

fn change(jws: &str, how: impl FnOnce(Vec<u8>) -> Vec<u8>) -> Result<String, String> {
    change_signature(jws, how).ok_or_else(|| "cannot change the signature".to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::clients::parse_client_arg;
    use crate::util::b64url_decode;
    use serde_json::{json, Value};
    use std::sync::OnceLock;

    const ISS: &str = "http://127.0.0.1:1/api/v2";

    /// Key generation is slow; share one set (and one throwaway pair) across tests.
    fn keys() -> &'static (KeySet, KeyPair) {
        static KEYS: OnceLock<(KeySet, KeyPair)> = OnceLock::new();
        KEYS.get_or_init(|| {
            (
                KeySet::new(KeyPair::generate().unwrap()),
                KeyPair::generate().unwrap(),
            )
        })
    }

    fn cache() -> &'static SignatureCache {
        static CACHE: OnceLock<SignatureCache> = OnceLock::new();
        CACHE.get_or_init(SignatureCache::default)
    }

    fn record(kind: TokenKind) -> TokenRecord {
        TokenRecord {
            sub: "7396c91e-b9f2-4f9d-8547-5e9b3332725b".into(),
            scope: "openid uid".into(),
            iat: 1_790_000_000,
            exp: 1_790_003_600,
            kind,
            tamper: None,
            delay_ms: None,
            revoked: false,
        }
    }

    fn run(
        client: &str,
        wants_jwt: bool,
        active: Option<&TokenRecord>,
        tamper: Option<Tamper>,
    ) -> Rendered {
        let client = parse_client_arg(client).unwrap();
        let (set, spare) = keys();
        let ctx = Context {
            issuer: ISS,
            fs_client_id: "fs-demo",
            client: &client,
            wants_jwt,
            keys: set,
            throwaway: Some(spare),
            now: 1_790_000_100,
            signatures: Some(cache()),
        };
        render(active, tamper, &ctx).unwrap()
    }

    fn jws_parts(r: &Rendered) -> (Value, Value, Vec<u8>) {
        let text = String::from_utf8(r.body.clone()).unwrap();
        let mut it = text.split('.');
        let h = b64url_decode(it.next().unwrap()).unwrap();
        let p = b64url_decode(it.next().unwrap()).unwrap();
        let s = b64url_decode(it.next().unwrap()).unwrap();
        assert!(it.next().is_none());
        (
            serde_json::from_slice(&h).unwrap(),
            serde_json::from_slice(&p).unwrap(),
            s,
        )
    }

    #[test]
    fn plain_answers_are_exact() {
        let r = run("sr:x", false, Some(&record(TokenKind::Access)), None);
        assert_eq!((r.status, r.content_type), (200, JSON));
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            r#"{"active":true,"sub":"7396c91e-b9f2-4f9d-8547-5e9b3332725b","client_id":"fs-demo","exp":1790003600,"iat":1790000000,"iss":"http://127.0.0.1:1/api/v2","scope":"openid uid","token_type":"Bearer"}"#
        );
        let r = run("sr:x", false, Some(&record(TokenKind::Refresh)), None);
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert!(v.get("token_type").is_none());
        assert_eq!(v["active"], true);
        let r = run("sr:x", true, None, None);
        assert_eq!(r.body, br#"{"active":false}"#);
        assert_eq!(r.content_type, JSON);
        // A client without a signing alg gets JSON even when asking for a JWT.
        let r = run("sr:x:none", true, Some(&record(TokenKind::Access)), None);
        assert_eq!(r.content_type, JSON);
    }

    #[test]
    fn signed_rs256_verifies_with_published_key() {
        let active = record(TokenKind::Access);
        let r = run("sr:x:RS256", true, Some(&active), None);
        assert_eq!((r.status, r.content_type), (200, JWT));
        let (h, p, s) = jws_parts(&r);
        let set = &keys().0;
        assert_eq!(
            h,
            json!({"alg":"RS256","typ":"token-introspection+jwt","kid":set.current.rsa.kid})
        );
        assert_eq!(s.len(), 256);
        assert_eq!(
            p,
            json!({"token_introspection": serde_json::to_value(Answer::active(&active, "fs-demo", ISS)).unwrap(),
                   "aud":"sr","iat":1_790_000_100,"iss":ISS})
        );
        use jwt_compact::{alg::Rsa, AlgorithmExt as _, UntrustedToken};
        let text = String::from_utf8(r.body).unwrap();
        let token = UntrustedToken::new(&text).unwrap();
        let public = set.current.rsa.private.to_public_key();
        assert!(Rsa::rs256()
            .validator::<Value>(&public)
            .validate(&token)
            .is_ok());
    }

    #[test]
    fn signed_es256_and_hs256() {
        let r = run("sr:x:ES256", true, None, None);
        let (h, p, s) = jws_parts(&r);
        assert_eq!(h["alg"], "ES256");
        assert_eq!(h["kid"], keys().0.current.ec.kid.as_str());
        assert_eq!(s.len(), 64);
        assert_eq!(p["token_introspection"], json!({"active":false}));
        let r = run("sr:hs-secret:HS256", true, None, None);
        let (h, _, s) = jws_parts(&r);
        assert_eq!(h, json!({"alg":"HS256","typ":"token-introspection+jwt"}));
        let text = String::from_utf8(r.body).unwrap();
        let (input, _) = text.rsplit_once('.').unwrap();
        assert_eq!(s, Signer::Hs256(b"hs-secret").sign(input.as_bytes()));
    }

    #[test]
    fn claim_tampers() {
        let active = record(TokenKind::Access);
        let p = |t| jws_parts(&run("sr:x:ES256", true, Some(&active), Some(t))).1;
        assert_eq!(p(Tamper::WrongIss)["iss"], "https://evil.example/api/v2");
        assert_eq!(p(Tamper::WrongAud)["aud"], "someone-else");
        assert!(p(Tamper::NoIat).get("iat").is_none());
        assert_eq!(p(Tamper::IatPast)["iat"], 1_790_000_100 - 86_400);
        assert_eq!(p(Tamper::IatFuture)["iat"], 1_790_000_100 + 3_600);
        let extra = p(Tamper::ExtraClaims);
        assert_eq!(extra["token_introspection"]["uid"], "12345");
        assert_eq!(extra["token_introspection"]["given_name"], "Jeanne");
        assert_eq!(
            extra["token_introspection"]["email"],
            "jeanne@example.gouv.fr"
        );
        let h = jws_parts(&run(
            "sr:x:ES256",
            true,
            Some(&active),
            Some(Tamper::WrongTyp),
        ))
        .0;
        assert_eq!(h["typ"], "JWT");
    }

    #[test]
    fn signature_tampers() {
        let active = record(TokenKind::Access);
        let good = jws_parts(&run("sr:x:RS256", true, Some(&active), None));
        let flipped = jws_parts(&run(
            "sr:x:RS256",
            true,
            Some(&active),
            Some(Tamper::SigBit),
        ));
        assert_eq!(good.2.len(), flipped.2.len());
        // RS256 signatures are deterministic: exactly one bit differs.
        let diff: u32 = good
            .2
            .iter()
            .zip(&flipped.2)
            .map(|(a, b)| (a ^ b).count_ones())
            .sum();
        assert_eq!(diff, 1);

        let forged = jws_parts(&run(
            "sr:x:RS256",
            true,
            Some(&active),
            Some(Tamper::Payload),
        ));
        assert_ne!(forged.1["token_introspection"]["sub"], active.sub.as_str());
        assert_eq!(forged.2, good.2);
        let forged = jws_parts(&run("sr:x:RS256", true, None, Some(Tamper::Payload)));
        assert_eq!(forged.1["token_introspection"]["active"], true);

        let none = run("sr:x:RS256", true, Some(&active), Some(Tamper::AlgNone));
        let text = String::from_utf8(none.body.clone()).unwrap();
        assert!(text.ends_with('.'));
        let (h, ..) = jws_parts(&none);
        assert_eq!(h, json!({"alg":"none","typ":"token-introspection+jwt"}));

        let confused = run(
            "sr:x:RS256",
            true,
            Some(&active),
            Some(Tamper::Hs256RsaPubkey),
        );
        let (h, _, s) = jws_parts(&confused);
        assert_eq!(h["alg"], "HS256");
        let text = String::from_utf8(confused.body).unwrap();
        let (input, _) = text.rsplit_once('.').unwrap();
        let pem = keys().0.current.rsa.public_pem.as_bytes();
        assert_eq!(s, Signer::Hs256(pem).sign(input.as_bytes()));

        let (set, spare) = keys();
        for (client, kid) in [
            ("sr:x:RS256", spare.rsa.kid.clone()),
            ("sr:x:ES256", spare.ec.kid.clone()),
        ] {
            let (h, ..) = jws_parts(&run(client, true, Some(&active), Some(Tamper::UnknownKid)));
            assert_eq!(h["kid"], kid.as_str());
            assert!(!set.kids().contains(&kid));
        }
        let (h, ..) = jws_parts(&run(
            "sr:x:HS256",
            true,
            Some(&active),
            Some(Tamper::UnknownKid),
        ));
        assert_eq!(h["alg"], "HS256");
        assert!(h["kid"].is_string());
    }

    #[test]
    fn transport_tampers() {
        let active = record(TokenKind::Access);
        let r = run("sr:x:RS256", true, Some(&active), Some(Tamper::PlainJson));
        assert_eq!(r.content_type, JSON);
        assert_eq!(
            serde_json::from_slice::<Value>(&r.body).unwrap()["active"],
            true
        );
        let r = run("sr:x", false, Some(&active), Some(Tamper::Status500));
        assert_eq!(r.status, 500);
        assert_eq!(
            serde_json::from_slice::<Value>(&r.body).unwrap()["error"],
            "server_error"
        );
        let r = run("sr:x:RS256", true, Some(&active), Some(Tamper::Garbage));
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, &b"not json at all"[..])
        );
        let r = run("sr:x", false, None, Some(Tamper::Huge));
        assert_eq!(r.body.len(), HUGE_PADDING + 2);
        assert!(r.body.ends_with(b" {}"));
        let r = run("sr:x", false, None, Some(Tamper::ExtraClaims));
        assert_eq!(r.body, br#"{"active":false}"#);
    }

    #[test]
    fn error_statuses_and_redirect() {
        let active = record(TokenKind::Access);
        for (tamper, status, error) in [
            (Tamper::Status400, 400, "invalid_request"),
            (Tamper::Status401, 401, "invalid_client"),
            (Tamper::Status500, 500, "server_error"),
            (Tamper::Status503, 503, "temporarily_unavailable"),
        ] {
            // The same whether a JWT was asked for or not, as ProConnect's errors.
            for client in ["sr:x", "sr:x:RS256"] {
                let r = run(client, true, Some(&active), Some(tamper));
                assert_eq!((r.status, r.content_type), (status, JSON), "{tamper:?}");
                let body: Value = serde_json::from_slice(&r.body).unwrap();
                assert_eq!(body["error"], error);
                assert!(body["error_description"].is_string());
            }
        }
        let r = run("sr:x", false, Some(&active), Some(Tamper::Status503));
        assert_eq!(r.headers, vec![("retry-after", "5".to_owned())]);

        let r = run("sr:x", false, Some(&active), Some(Tamper::Redirect));
        let to = format!("{ISS}/token/introspection/elsewhere");
        assert_eq!((r.status, r.content_type), (302, TEXT));
        assert_eq!(r.headers, vec![("location", to.clone())]);
        assert_eq!(r.body, format!("Found. Redirecting to {to}").into_bytes());
    }

    #[test]
    fn text_html_is_the_right_answer_with_the_wrong_media_type() {
        let active = record(TokenKind::Access);
        let right = run("sr:x", false, Some(&active), None);
        let html = run("sr:x", false, Some(&active), Some(Tamper::TextHtml));
        assert_eq!(html.content_type, HTML);
        assert_eq!((html.status, &html.body), (right.status, &right.body));
        let signed = run("sr:x:HS256", true, Some(&active), Some(Tamper::TextHtml));
        assert_eq!(signed.content_type, HTML);
        assert_eq!(signed.body.iter().filter(|&&b| b == b'.').count(), 2);
    }

    #[test]
    fn wire_tampers_render_the_right_answer() {
        // What they do to it happens on the connection (routes.rs, wire.rs).
        let active = record(TokenKind::Access);
        let right = run("sr:x", false, Some(&active), None);
        for tamper in [Tamper::Truncated, Tamper::Reset] {
            assert_eq!(run("sr:x", false, Some(&active), Some(tamper)), right);
        }
    }

    #[test]
    fn accept_matching() {
        assert!(accepts_jwt("application/token-introspection+jwt"));
        assert!(accepts_jwt(
            "application/json;q=0.5, Application/Token-Introspection+JWT"
        ));
        assert!(!accepts_jwt("application/json"));
    }
}
