//! Token store: minted tokens, revocations, and per-token request bookkeeping
//! (introspection counts, last request) for the `/_mock` admin API.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Scope of minted tokens unless one is given.
pub const DEFAULT_SCOPE: &str = "openid uid given_name usual_name email groups";

/// How many distinct never-minted token strings are tracked for counts and last requests;
/// past this, unknown tokens are no longer recorded (keeps memory bounded under load tests
/// that send random tokens).
pub const UNKNOWN_TOKENS_TRACKED: usize = 100_000;

/// Access or refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// Introspects with `token_type: "Bearer"`.
    #[default]
    Access,
    /// Introspects without `token_type`, as ProConnect's refresh tokens do.
    Refresh,
}

/// A deliberate fault in a token's introspection answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tamper {
    /// Signed: one bit of the signature flipped.
    SigBit,
    /// Signed: payload replaced after signing (different `sub`), original signature kept.
    Payload,
    /// Signed: header `alg: none`, empty signature.
    AlgNone,
    /// Signed: HS256 keyed with the RSA public key's SPKI PEM.
    Hs256RsaPubkey,
    /// Signed: wrong top-level `iss`.
    WrongIss,
    /// Signed: wrong `aud`.
    WrongAud,
    /// Signed: no top-level `iat`.
    NoIat,
    /// Signed: `iat` one day in the past.
    IatPast,
    /// Signed: `iat` one hour in the future.
    IatFuture,
    /// Signed: `typ: JWT`.
    WrongTyp,
    /// Signed: plain JSON answer although a JWT was asked for.
    PlainJson,
    /// Signed: signed with a throwaway key whose kid is not published.
    UnknownKid,
    /// Signed: the signature without its last byte.
    SigShort,
    /// Signed: the signature with one zero byte appended.
    SigLong,
    /// Signed: a signature of the right length, all zero bytes (for ES256: r = s = 0, the
    /// "psychic signature" a broken ECDSA verifier accepts).
    SigZero,
    /// Signed: the signature's two halves as a DER `ECDSA-Sig-Value` (for ES256: a valid
    /// signature in the form BoringSSL reads, which a JWS must never carry).
    SigDer,
    /// Any: 400 `invalid_request`, as a server answers a request it cannot read.
    #[serde(rename = "status_400")]
    Status400,
    /// Any: 401 `invalid_client`, as a server answers when the SR's own credentials are wrong.
    #[serde(rename = "status_401")]
    Status401,
    /// Any: 500 with a JSON error body.
    #[serde(rename = "status_500")]
    Status500,
    /// Any: 503 `temporarily_unavailable`, with `Retry-After`.
    #[serde(rename = "status_503")]
    Status503,
    /// Any: 302 to another URL, no answer.
    Redirect,
    /// Any: the right answer (status, body) as `text/html`.
    TextHtml,
    /// Any: 200 with the `Content-Length` of the whole answer and only its first half, then
    /// the connection closes (a body cut mid-JSON).
    Truncated,
    /// Any: the connection is reset (RST) once the request is read; no answer at all.
    Reset,
    /// Any: 200 `application/json` body that is not JSON.
    Garbage,
    /// Any: 200 `application/json` body of 2 MiB of spaces then `{}`.
    Huge,
    /// Any: extra user claims inside an active answer.
    ExtraClaims,
}

impl Tamper {
    /// Whether the fault needs the throwaway keys.
    pub fn needs_throwaway_keys(self) -> bool {
        self == Self::UnknownKid
    }

    /// Whether the fault is in the connection rather than in the answer (it needs the
    /// server's own listener, see `wire.rs`).
    pub fn on_the_wire(self) -> bool {
        matches!(self, Self::Truncated | Self::Reset)
    }
}

/// A minted token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Subject.
    pub sub: String,
    /// Space-separated scopes.
    pub scope: String,
    /// Issued at (unix seconds).
    pub iat: i64,
    /// Expiry (unix seconds); expired when `exp <= now`.
    pub exp: i64,
    /// Access or refresh.
    pub kind: TokenKind,
    /// Fault to inject in its answers.
    pub tamper: Option<Tamper>,
    /// Delay before answering its introspections.
    pub delay_ms: Option<u64>,
    /// Revoked through the revocation endpoint or the admin API.
    pub revoked: bool,
}

impl TokenRecord {
    /// Active = not revoked and not expired.
    pub fn is_active(&self, now: i64) -> bool {
        !self.revoked && self.exp > now
    }
}

/// What the last introspection request naming a token looked like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastRequest {
    /// `Content-Type` header.
    pub content_type: Option<String>,
    /// `Accept` header(s), comma-joined.
    pub accept: Option<String>,
    /// Scheme word of the `Authorization` header, as sent.
    pub authorization_scheme: Option<String>,
    /// `client_secret_post` or `client_secret_basic` (what was presented).
    pub auth_method: Option<&'static str>,
    /// Client id presented.
    pub client_id: Option<String>,
    /// Whether client authentication succeeded.
    pub authenticated: bool,
    /// Decoded form, `client_secret` redacted.
    pub form: BTreeMap<String, String>,
    /// Form keys in order, duplicates included.
    pub form_keys: Vec<String>,
    /// The decoded `token` equals a minted token byte for byte.
    pub token_bytes_equal: bool,
}

#[derive(Debug, Default)]
struct Seen {
    count: u64,
    last: Option<LastRequest>,
}

/// What an introspection needs from a token, copied out of the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// The record, if the token was minted.
    pub record: Option<TokenRecord>,
}

/// All tokens and bookkeeping. Kept behind a mutex; never held across an await.
#[derive(Debug, Default)]
pub struct Store {
    tokens: HashMap<String, TokenRecord>,
    seen: HashMap<String, Seen>,
    /// `--no-bookkeeping`: no per-token counts or last requests (benchmarks of the floor).
    skip_bookkeeping: bool,
}

impl Store {
    /// A store that keeps no per-token request bookkeeping.
    pub fn without_bookkeeping() -> Self {
        Store {
            skip_bookkeeping: true,
            ..Store::default()
        }
    }

    /// Stores a token (replacing any previous record with the same string).
    pub fn insert(&mut self, token: String, record: TokenRecord) {
        self.tokens.insert(token, record);
    }

    /// The record of a minted token, without any bookkeeping.
    pub fn get(&self, token: &str) -> Option<&TokenRecord> {
        self.tokens.get(token)
    }

    /// Marks a token revoked; false if it was never minted.
    pub fn revoke(&mut self, token: &str) -> bool {
        match self.tokens.get_mut(token) {
            Some(record) => {
                record.revoked = true;
                true
            }
            None => false,
        }
    }

    fn seen_mut(&mut self, token: &str) -> Option<&mut Seen> {
        if !self.seen.contains_key(token)
            && !self.tokens.contains_key(token)
            && self.seen.len() >= UNKNOWN_TOKENS_TRACKED
        {
            return None;
        }
        Some(self.seen.entry(token.to_owned()).or_default())
    }

    /// Records an introspection request naming `token`: always its shape, and, when the
    /// client authenticated, one more count. Returns the token's record.
    pub fn record_introspection(
        &mut self,
        token: &str,
        mut last: LastRequest,
        authenticated: bool,
    ) -> Lookup {
        let record = self.tokens.get(token).cloned();
        if self.skip_bookkeeping {
            return Lookup { record };
        }
        last.token_bytes_equal = record.is_some();
        last.authenticated = authenticated;
        if let Some(seen) = self.seen_mut(token) {
            if authenticated {
                seen.count += 1;
            }
            seen.last = Some(last);
        }
        Lookup { record }
    }

    /// Authenticated introspection requests that named `token`.
    pub fn count(&self, token: &str) -> u64 {
        self.seen.get(token).map_or(0, |s| s.count)
    }

    /// The last introspection request that named `token`.
    pub fn last_request(&self, token: &str) -> Option<&LastRequest> {
        self.seen.get(token).and_then(|s| s.last.as_ref())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn record(exp: i64) -> TokenRecord {
        TokenRecord {
            sub: "s".into(),
            scope: "openid".into(),
            iat: 0,
            exp,
            kind: TokenKind::Access,
            tamper: None,
            delay_ms: None,
            revoked: false,
        }
    }

    fn last() -> LastRequest {
        LastRequest {
            content_type: None,
            accept: None,
            authorization_scheme: None,
            auth_method: None,
            client_id: None,
            authenticated: false,
            form: BTreeMap::new(),
            form_keys: vec![],
            token_bytes_equal: false,
        }
    }

    #[test]
    fn bookkeeping_can_be_off() {
        let mut store = Store::without_bookkeeping();
        store.insert("t".into(), record(10));
        assert!(store
            .record_introspection("t", last(), true)
            .record
            .is_some());
        assert_eq!(store.count("t"), 0);
        assert!(store.last_request("t").is_none());
    }

    #[test]
    fn activity() {
        assert!(record(101).is_active(100));
        assert!(!record(100).is_active(100));
        let mut r = record(200);
        r.revoked = true;
        assert!(!r.is_active(100));
    }

    #[test]
    fn counts_and_revocation() {
        let mut store = Store::default();
        store.insert("t".into(), record(i64::MAX));
        assert!(store
            .record_introspection("t", last(), true)
            .record
            .is_some());
        store.record_introspection("t", last(), false);
        assert_eq!(store.count("t"), 1);
        assert!(store.last_request("t").unwrap().token_bytes_equal);
        assert!(!store.last_request("t").unwrap().authenticated);
        assert!(store.revoke("t"));
        assert!(!store.revoke("u"));
        let lookup = store.record_introspection("u", last(), true);
        assert!(lookup.record.is_none());
        assert_eq!(store.count("u"), 1);
        assert!(!store.last_request("u").unwrap().token_bytes_equal);
    }

    #[test]
    fn tamper_names() {
        let t: Tamper = serde_json::from_str("\"hs256_rsa_pubkey\"").unwrap();
        assert_eq!(t, Tamper::Hs256RsaPubkey);
        for (name, tamper, wire) in [
            ("status_400", Tamper::Status400, false),
            ("status_401", Tamper::Status401, false),
            ("status_500", Tamper::Status500, false),
            ("status_503", Tamper::Status503, false),
            ("redirect", Tamper::Redirect, false),
            ("text_html", Tamper::TextHtml, false),
            ("truncated", Tamper::Truncated, true),
            ("reset", Tamper::Reset, true),
        ] {
            let t: Tamper = serde_json::from_str(&format!("\"{name}\"")).unwrap();
            assert_eq!(t, tamper);
            assert_eq!(t.on_the_wire(), wire, "{name}");
        }
        assert!(serde_json::from_str::<Tamper>("\"nope\"").is_err());
    }
}
