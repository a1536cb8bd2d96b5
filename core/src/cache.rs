//! The introspection cache's policy, keys and entry format. Pure: the adapter stores entries in
//! proxy-wasm shared data (one value per slot, shared by every worker) and passes the time in.
//!
//! - Keys never hold the token: a slot is chosen by a SHA-256 of the token *scoped by the
//!   authorization server and the client* (endpoint, client id, answer format), and the full
//!   hash is stored as a fingerprint that must match on read.
//! - Entries hold the claims the policy needs, not a yes/no: scopes and header mapping are
//!   applied again on every hit.
//! - An entry never outlives the token's expiry, nor `max_ttl`; answers without expiry live
//!   `no_exp_ttl` (0: not cached); inactive answers live `inactive_ttl`; failures are never
//!   stored.
//! - Memory is bounded: `max_entries` slots, each holding one entry; a newer entry replaces an
//!   older one in its slot (a collision costs a callout, never a wrong answer).

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::decision::{unix_seconds, Claims};

/// Cache settings (`cache` in the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachePolicy {
    /// Number of slots; 0 disables the cache.
    pub max_entries: u32,
    /// Longest life of an active entry, seconds.
    pub max_ttl: i64,
    /// Life of an active answer that carries no expiry; 0: not cached.
    pub no_exp_ttl: i64,
    /// Life of an inactive answer; 0: not cached.
    pub inactive_ttl: i64,
}

impl Default for CachePolicy {
    fn default() -> Self {
        CachePolicy {
            max_entries: 10_000,
            max_ttl: 60,
            no_exp_ttl: 0,
            inactive_ttl: 10,
        }
    }
}

impl CachePolicy {
    pub fn enabled(&self) -> bool {
        self.max_entries > 0
    }

    /// Until when an answer with these claims may be served from the cache (unix seconds),
    /// or `None` if it must not be stored. `claims` are verified claims.
    pub fn expires_at(&self, config: &Config, claims: &Claims, now: i64) -> Option<i64> {
        if !self.enabled() {
            return None;
        }
        let until = match claims.get("active") {
            Some(Value::Bool(true)) => match claims.get(&config.expiry_claim) {
                Some(v) => {
                    let exp = unix_seconds(v)?;
                    exp.min(now.saturating_add(self.max_ttl))
                }
                None if self.no_exp_ttl > 0 => {
                    now.saturating_add(self.no_exp_ttl.min(self.max_ttl))
                }
                None => return None,
            },
            Some(Value::Bool(false)) if self.inactive_ttl > 0 => {
                now.saturating_add(self.inactive_ttl)
            }
            _ => return None,
        };
        (until > now).then_some(until)
    }
}

/// Where an entry lives and how it is recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    /// Shared-data key of the slot.
    pub slot_key: String,
    /// SHA-256 of scope and token: stored in the entry, checked on read.
    pub fingerprint: [u8; 32],
}

/// What makes two answers for the same token different: the server, the client asking, and
/// the answer format. Computed once per configuration.
pub fn scope_of(config: &Config) -> Vec<u8> {
    let mut scope = Vec::new();
    for part in [
        config.cluster.as_str(),
        config.authority.as_str(),
        config.introspection_path.as_str(),
        config.discovery_path.as_deref().unwrap_or(""),
        config.client_id.as_str(),
        config.signed.as_ref().map_or("plain", |s| s.alg.name()),
        config.issuer.as_deref().unwrap_or(""),
    ] {
        scope.extend_from_slice(part.as_bytes());
        scope.push(0);
    }
    scope
}

/// The shared-data key prefix of a configuration: different configurations (or plugins on
/// the same proxy, which share one namespace under Istio) never read each other's slots.
pub fn key_prefix(scope: &[u8]) -> String {
    let digest = Sha256::digest(scope);
    let mut prefix = String::from("introspection-cache:v1:");
    for b in digest.iter().take(6) {
        prefix.push_str(&format!("{b:02x}"));
    }
    prefix
}

/// The slot and fingerprint of `token`.
pub fn key_for(prefix: &str, scope: &[u8], token: &str, slots: u32) -> CacheKey {
    let mut h = Sha256::new();
    h.update(scope);
    h.update([0xff]);
    h.update(token.as_bytes());
    let fingerprint: [u8; 32] = h.finalize().into();
    let mut first = [0u8; 8];
    first.copy_from_slice(fingerprint.get(..8).unwrap_or(&[0; 8]));
    let slot = u64::from_le_bytes(first) % u64::from(slots.max(1));
    CacheKey {
        slot_key: format!("{prefix}:{slot}"),
        fingerprint,
    }
}

const VERSION: u8 = 1;
const HEADER: usize = 1 + 32 + 8;

/// Encodes an entry: version, fingerprint, expiry, then the kept claims as JSON.
pub fn encode_entry(fingerprint: &[u8; 32], expires_at: i64, claims: &Claims) -> Vec<u8> {
    let json = Value::Object(claims.clone()).to_string();
    let mut out = Vec::with_capacity(HEADER + json.len());
    out.push(VERSION);
    out.extend_from_slice(fingerprint);
    out.extend_from_slice(&expires_at.to_le_bytes());
    out.extend_from_slice(json.as_bytes());
    out
}

/// What a slot holds, if it is an entry for this fingerprint still valid at `now`.
pub fn decode_entry(bytes: &[u8], fingerprint: &[u8; 32], now: i64) -> Option<Claims> {
    let (version, rest) = bytes.split_first()?;
    if *version != VERSION {
        return None;
    }
    let (stored, rest) = rest.split_at_checked(32)?;
    if stored != fingerprint {
        return None;
    }
    let (expiry, json) = rest.split_at_checked(8)?;
    let expires_at = i64::from_le_bytes(expiry.try_into().ok()?);
    if expires_at <= now {
        return None;
    }
    match serde_json::from_slice(json).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// The expiry written in a slot's entry, whatever its fingerprint (for eviction choices).
pub fn entry_expiry(bytes: &[u8]) -> Option<i64> {
    let expiry = bytes.get(HEADER - 8..HEADER)?;
    Some(i64::from_le_bytes(expiry.try_into().ok()?))
}

/// Whether a new entry (this fingerprint, valid until `expires_at`) should replace what the
/// slot holds: always, unless the slot already holds this token's entry for at least as long
/// (another worker stored it first). A live entry of another token is replaced: the newest
/// token wins the slot.
pub fn should_replace(existing: &[u8], fingerprint: &[u8; 32], expires_at: i64, now: i64) -> bool {
    let same_and_longer = decode_entry(existing, fingerprint, now).is_some()
        && entry_expiry(existing).is_some_and(|e| e >= expires_at);
    !same_and_longer
}

/// Only what the policy reads: smaller entries, and no claim the SR does not get.
pub fn kept_claims(config: &Config, claims: &Claims) -> Claims {
    let mut kept = Map::new();
    let mut keep = |name: &str| {
        if let Some(v) = claims.get(name) {
            kept.insert(name.to_string(), v.clone());
        }
    };
    for name in ["active", "token_type", "scope", "nbf", "iss"] {
        keep(name);
    }
    keep(&config.user_claim);
    keep(&config.expiry_claim);
    for (claim, _) in &config.claim_headers {
        keep(claim);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_790_000_000;

    fn config() -> Config {
        Config::from_json(
            br#"{"cluster":"as","authority":"as","client_id":"sr","client_secret":"s",
                "claim_headers":{"email":"x-user-email"}}"#,
        )
        .unwrap()
    }

    fn policy() -> CachePolicy {
        CachePolicy {
            max_entries: 100,
            max_ttl: 300,
            no_exp_ttl: 0,
            inactive_ttl: 10,
        }
    }

    fn claims(v: Value) -> Claims {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn active_entries_never_outlive_exp_nor_max_ttl() {
        let c = config();
        let p = policy();
        let soon = claims(json!({"active": true, "sub": "u", "exp": NOW + 30}));
        assert_eq!(p.expires_at(&c, &soon, NOW), Some(NOW + 30));
        let later = claims(json!({"active": true, "sub": "u", "exp": NOW + 3600}));
        assert_eq!(p.expires_at(&c, &later, NOW), Some(NOW + 300));
        let expired = claims(json!({"active": true, "sub": "u", "exp": NOW}));
        assert_eq!(p.expires_at(&c, &expired, NOW), None);
        let bad_exp = claims(json!({"active": true, "sub": "u", "exp": "x"}));
        assert_eq!(p.expires_at(&c, &bad_exp, NOW), None);
    }

    #[test]
    fn no_exp_inactive_and_disabled() {
        let c = config();
        let mut p = policy();
        let no_exp = claims(json!({"active": true, "sub": "u"}));
        assert_eq!(p.expires_at(&c, &no_exp, NOW), None, "0 = not cached");
        p.no_exp_ttl = 20;
        assert_eq!(p.expires_at(&c, &no_exp, NOW), Some(NOW + 20));
        p.no_exp_ttl = 1000;
        assert_eq!(
            p.expires_at(&c, &no_exp, NOW),
            Some(NOW + 300),
            "bounded by max_ttl"
        );
        let inactive = claims(json!({"active": false}));
        assert_eq!(p.expires_at(&c, &inactive, NOW), Some(NOW + 10));
        p.inactive_ttl = 0;
        assert_eq!(p.expires_at(&c, &inactive, NOW), None);
        let garbage = claims(json!({"active": "yes"}));
        assert_eq!(p.expires_at(&c, &garbage, NOW), None);
        p.max_entries = 0;
        assert_eq!(p.expires_at(&c, &no_exp, NOW), None);
    }

    #[test]
    fn keys_are_scoped_and_hide_the_token() {
        let c = config();
        let scope = scope_of(&c);
        let prefix = key_prefix(&scope);
        let k = key_for(&prefix, &scope, "secret-token-value", 100);
        assert!(!k.slot_key.contains("secret-token-value"));
        assert!(k.slot_key.starts_with("introspection-cache:v1:"));
        assert_eq!(k, key_for(&prefix, &scope, "secret-token-value", 100));
        // Another client id (or server) gives another fingerprint and prefix.
        let other = Config::from_json(
            br#"{"cluster":"as","authority":"as","client_id":"sr2","client_secret":"s"}"#,
        )
        .unwrap();
        let scope2 = scope_of(&other);
        assert_ne!(prefix, key_prefix(&scope2));
        assert_ne!(
            k.fingerprint,
            key_for(&prefix, &scope2, "secret-token-value", 100).fingerprint
        );
        // Slots stay within bounds.
        for i in 0..200 {
            let k = key_for(&prefix, &scope, &format!("t{i}"), 7);
            let slot: u32 = k.slot_key.rsplit(':').next().unwrap().parse().unwrap();
            assert!(slot < 7);
        }
    }

    #[test]
    fn entries_round_trip_and_expire() {
        let fp = [7u8; 32];
        let c = claims(json!({"active": true, "sub": "u"}));
        let e = encode_entry(&fp, NOW + 5, &c);
        assert_eq!(decode_entry(&e, &fp, NOW), Some(c.clone()));
        assert_eq!(
            decode_entry(&e, &fp, NOW + 5),
            None,
            "never served at or after expiry"
        );
        assert_eq!(
            decode_entry(&e, &[8u8; 32], NOW),
            None,
            "another token's entry"
        );
        assert_eq!(entry_expiry(&e), Some(NOW + 5));
        for cut in 0..e.len() {
            let _ = decode_entry(&e[..cut], &fp, NOW);
        }
        assert_eq!(decode_entry(b"", &fp, NOW), None);
    }

    #[test]
    fn slot_replacement() {
        let mine = [1u8; 32];
        let other = [2u8; 32];
        let c = claims(json!({"active": true, "sub": "u"}));
        // Empty or garbage slot, expired entry, another token's live entry: replaced.
        assert!(should_replace(b"", &mine, NOW + 10, NOW));
        assert!(should_replace(
            &encode_entry(&mine, NOW - 1, &c),
            &mine,
            NOW + 10,
            NOW
        ));
        assert!(should_replace(
            &encode_entry(&other, NOW + 100, &c),
            &mine,
            NOW + 10,
            NOW
        ));
        // This token's entry, shorter: replaced; as long or longer: kept.
        assert!(should_replace(
            &encode_entry(&mine, NOW + 5, &c),
            &mine,
            NOW + 10,
            NOW
        ));
        assert!(!should_replace(
            &encode_entry(&mine, NOW + 10, &c),
            &mine,
            NOW + 10,
            NOW
        ));
        assert!(!should_replace(
            &encode_entry(&mine, NOW + 20, &c),
            &mine,
            NOW + 10,
            NOW
        ));
    }

    #[test]
    fn only_needed_claims_are_kept() {
        let c = config();
        let all = claims(
            json!({"active": true, "sub": "u", "exp": 1, "scope": "openid",
            "token_type": "Bearer", "email": "a@b", "given_name": "Jeanne", "client_id": "fs"}),
        );
        let kept = kept_claims(&c, &all);
        assert_eq!(
            Value::Object(kept),
            json!({"active": true, "sub": "u", "exp": 1, "scope": "openid",
                "token_type": "Bearer", "email": "a@b"})
        );
    }
}
