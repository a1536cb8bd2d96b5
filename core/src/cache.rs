//! The introspection cache's policy, keys and entry format. Pure: the adapter stores entries in
//! proxy-wasm shared data (one value per slot, shared by every worker) and passes the time in.
//!
//! - Keys never hold the token: a slot is chosen by an HMAC-SHA-256 (keyed by the client
//!   secret) of the token *scoped by the authorization server and the client* (endpoint, client
//!   id, answer format, cache and claim settings), and the full MAC is stored as a fingerprint
//!   that must match on read; each entry carries its own MAC.
//! - Entries hold the claims the policy needs, not a yes/no: scopes and header mapping are
//!   applied again on every hit.
//! - An entry never outlives the token's expiry, nor `max_ttl`; answers without expiry live
//!   `no_exp_ttl` (0: not cached); inactive answers live `inactive_ttl`; failures are never
//!   stored.
//! - Memory is bounded: `max_entries` slots, each holding one entry; a newer entry replaces an
//!   older one in its slot (a collision costs a callout, never a wrong answer).

use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::claims::{unix_seconds, Claims};
pub use crate::config::CachePolicy;
use crate::config::{Config, Identity, Policy};
use crate::decision::Remembered;

/// Until when an answer with these claims may be served from the cache (unix seconds),
/// or `None` if it must not be stored. `claims` are verified claims.
pub fn expires_at(
    policy: &CachePolicy,
    expiry_claim: &str,
    claims: &Claims,
    asked_at: i64,
    now: i64,
) -> Option<i64> {
    if !policy.enabled() {
        return None;
    }
    // Lifetimes count from when the server was asked, not from when its answer arrived: an
    // answer computed before a revocation and delivered late must not outlive `max_ttl`
    // counted from the question.
    let base = asked_at.min(now);
    let until = match claims.get("active") {
        Some(Value::Bool(true)) => match claims.get(expiry_claim) {
            Some(v) => {
                let exp = unix_seconds(v)?;
                exp.min(base.saturating_add(policy.max_ttl))
            }
            None if policy.no_exp_ttl > 0 => {
                base.saturating_add(policy.no_exp_ttl.min(policy.max_ttl))
            }
            None => return None,
        },
        Some(Value::Bool(false)) if policy.inactive_ttl > 0 => {
            base.saturating_add(policy.inactive_ttl)
        }
        _ => return None,
    };
    (until > now).then_some(until)
}

/// Whether an answer's claims say the token is active (`"active": true`, nothing else).
pub fn is_active(claims: &Claims) -> bool {
    matches!(claims.get("active"), Some(Value::Bool(true)))
}

/// Where an entry lives and how it is recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    /// Shared-data key of the slot.
    pub slot_key: String,
    /// HMAC of scope and token: stored in the entry, checked on read.
    pub fingerprint: [u8; 32],
}

type HmacSha256 = Hmac<Sha256>;

/// Everything needed to name, write and read entries for one configuration.
///
/// Fingerprints and entries are authenticated with an HMAC keyed by the client secret: another
/// plugin sharing the proxy's shared-data namespace (Istio gives plugins none of their own) can
/// neither find a token's slot nor forge an entry that this filter would accept.
#[derive(Clone)]
pub struct CacheKeys {
    prefix: String,
    /// HMAC state after the key, the domain label and the scope: cloned for each token, so a
    /// request hashes only its token (SHA-256 is slow in wasm).
    fingerprint_base: HmacSha256,
    /// HMAC state after the key and the entry label.
    entry_base: HmacSha256,
}

impl std::fmt::Debug for CacheKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheKeys")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl CacheKeys {
    pub fn new(config: &Config) -> CacheKeys {
        let scope = scope_of(config);
        let digest = Sha256::digest(&scope);
        let mut prefix = String::from("introspection-cache:v1:");
        for b in digest.iter().take(6) {
            prefix.push_str(&format!("{b:02x}"));
        }
        // HMAC accepts keys of any length; the error case cannot happen.
        let keyed = HmacSha256::new_from_slice(config.client.client_secret.expose().as_bytes())
            .unwrap_or_else(|_| HmacSha256::new(&Default::default()));
        let mut fingerprint_base = keyed.clone();
        fingerprint_base.update(b"fingerprint\0");
        fingerprint_base.update(&scope);
        let mut entry_base = keyed;
        entry_base.update(b"entry\0");
        CacheKeys {
            prefix,
            fingerprint_base,
            entry_base,
        }
    }

    /// The slot and fingerprint of `token`, among `slots` slots.
    pub fn key_for(&self, token: &str, slots: u32) -> CacheKey {
        let mut mac = self.fingerprint_base.clone();
        mac.update(token.as_bytes());
        let fingerprint: [u8; 32] = mac.finalize().into_bytes().into();
        let mut first = [0u8; 8];
        first.copy_from_slice(fingerprint.get(..8).unwrap_or(&[0; 8]));
        let slot = u64::from_le_bytes(first) % u64::from(slots.max(1));
        CacheKey {
            slot_key: format!("{}:{slot}", self.prefix),
            fingerprint,
        }
    }

    fn tag(&self, fingerprint: &[u8], window: &[u8], json: &[u8]) -> HmacSha256 {
        let mut mac = self.entry_base.clone();
        mac.update(fingerprint);
        mac.update(window);
        mac.update(json);
        mac
    }

    /// Encodes an entry: version, fingerprint, validity window (stored at, expires at), tag,
    /// then the kept claims as JSON.
    pub fn encode(
        &self,
        fingerprint: &[u8; 32],
        stored_at: i64,
        expires_at: i64,
        claims: &Claims,
    ) -> Vec<u8> {
        let json = Value::Object(claims.clone()).to_string();
        let mut window = [0u8; 16];
        let (from, until) = window.split_at_mut(8);
        from.copy_from_slice(&stored_at.to_le_bytes());
        until.copy_from_slice(&expires_at.to_le_bytes());
        let tag = self
            .tag(fingerprint, &window, json.as_bytes())
            .finalize()
            .into_bytes();
        let mut out = Vec::with_capacity(HEADER + json.len());
        out.push(VERSION);
        out.extend_from_slice(fingerprint);
        out.extend_from_slice(&window);
        out.extend_from_slice(&tag);
        out.extend_from_slice(json.as_bytes());
        out
    }

    /// The expiry and claims of a slot's entry, if it is this fingerprint's, authentic and
    /// valid at `now` (inside its window: a clock stepped back before its storing does not
    /// stretch its life past `max_ttl`).
    pub fn decode(&self, bytes: &[u8], fingerprint: &[u8; 32], now: i64) -> Option<(i64, Claims)> {
        let (expires_at, json) = self.open(bytes, fingerprint, now)?;
        match serde_json::from_slice(json).ok()? {
            Value::Object(map) => Some((expires_at, map)),
            _ => None,
        }
    }

    /// Checks an entry's version, fingerprint, expiry and MAC; returns its expiry and JSON.
    fn open<'b>(
        &self,
        bytes: &'b [u8],
        fingerprint: &[u8; 32],
        now: i64,
    ) -> Option<(i64, &'b [u8])> {
        let (version, rest) = bytes.split_first()?;
        if *version != VERSION {
            return None;
        }
        let (stored, rest) = rest.split_at_checked(32)?;
        if stored != fingerprint {
            return None;
        }
        let (window, rest) = rest.split_at_checked(16)?;
        let (from, until) = window.split_at_checked(8)?;
        let stored_at = i64::from_le_bytes(from.try_into().ok()?);
        let expires_at = i64::from_le_bytes(until.try_into().ok()?);
        if now < stored_at || expires_at <= now {
            return None;
        }
        let (tag, json) = rest.split_at_checked(32)?;
        self.tag(stored, window, json).verify_slice(tag).ok()?;
        Some((expires_at, json))
    }

    /// The slot's entry (expiry and claims) if it stays rather than give way to a new entry
    /// (this fingerprint, valid until `expires_at`, active or not); `None`: replace it. A live
    /// entry of another token gives way: the newest token wins the slot. This token's live
    /// entry: an inactive answer replaces an active one and is never replaced by one (a revoked
    /// token does not come back, and two workers' answers can arrive in any order); between
    /// answers alike, the one that lasts longer stays (another worker stored it first).
    pub fn kept_over(
        &self,
        existing: &[u8],
        fingerprint: &[u8; 32],
        expires_at: i64,
        active: bool,
        now: i64,
    ) -> Option<(i64, Claims)> {
        let (existing_expiry, claims) = self.decode(existing, fingerprint, now)?;
        let keep = match (is_active(&claims), active) {
            (true, false) => false,
            (false, true) => true,
            _ => existing_expiry >= expires_at,
        };
        keep.then_some((existing_expiry, claims))
    }
}

/// What makes two answers for the same token different, or two policies read them differently:
/// the server, the client asking, the answer format, and the cache and claim settings (so a
/// configuration never serves entries written under another's lifetimes or claim set).
pub fn scope_of(config: &Config) -> Vec<u8> {
    let mut scope = Vec::new();
    let numbers = format!(
        "{}/{}/{}",
        config.cache.max_ttl, config.cache.no_exp_ttl, config.cache.inactive_ttl
    );
    let mut parts = vec![
        config.target.cluster.as_str(),
        config.target.authority.as_str(),
        config.endpoints.introspection_path.as_str(),
        config.endpoints.discovery_path.as_deref().unwrap_or(""),
        config.client.client_id.as_str(),
        config.signed.as_ref().map_or("plain", |s| s.alg.name()),
        config.endpoints.issuer.as_deref().unwrap_or(""),
        config.policy.user_claim.as_str(),
        config.policy.expiry_claim.as_str(),
        numbers.as_str(),
    ];
    parts.extend(
        config
            .identity
            .claim_headers
            .iter()
            .map(|(claim, _)| claim.as_str()),
    );
    for part in parts {
        scope.extend_from_slice(part.as_bytes());
        scope.push(0);
    }
    scope
}

// 3: entries keep `client_id` (per-route rules read it). 4: entries carry when they were
// stored.
const VERSION: u8 = 4;
const HEADER: usize = 1 + 32 + 16 + 32;

/// A small per-VM front of the shared cache: verified claims kept in the worker's own memory,
/// keyed by the token itself, so a hit needs no HMAC, no shared-data copy, no MAC check and no
/// JSON parse. Entries keep the expiry of the shared entry, so nothing is served longer than
/// the shared cache would.
///
/// The tokens stay in this VM's linear memory, which no other plugin and no other VM can read
/// (the shared cache, which other plugins can read, only ever holds HMACs). They are bounded in
/// number and in bytes, and [`LocalCache::purge`] drops them once expired. Lookups hash the
/// token with the standard library's keyed SipHash (random keys per map), so a client cannot
/// aim probes at another user's entry.
#[derive(Debug)]
pub struct LocalCache {
    entries: std::collections::HashMap<Box<str>, LocalEntry>,
    capacity: usize,
    /// Token bytes held, and the most allowed.
    bytes: usize,
    max_bytes: usize,
}

/// One token's verified claims in a VM's own memory, and the last `Allow` made on them.
#[derive(Debug)]
pub struct LocalEntry {
    /// When it was kept: a clock stepped back before it makes it a miss.
    stored_at: i64,
    expires_at: i64,
    pub claims: std::rc::Rc<Claims>,
    /// The headers of the policy's last `Allow` on these claims, for one rule: a hit on the same
    /// rule within its window reuses them instead of evaluating the policy again.
    pub remembered: Option<Remembered>,
}

/// Token bytes a VM's local cache may hold (a bound on its memory whatever the tokens' size).
pub const LOCAL_CACHE_MAX_BYTES: usize = 1 << 20;

impl LocalCache {
    pub fn new(capacity: usize) -> LocalCache {
        LocalCache::with_budget(capacity, LOCAL_CACHE_MAX_BYTES)
    }

    /// At most `capacity` entries holding at most `max_bytes` bytes of tokens.
    pub fn with_budget(capacity: usize, max_bytes: usize) -> LocalCache {
        LocalCache {
            entries: std::collections::HashMap::new(),
            capacity,
            bytes: 0,
            max_bytes,
        }
    }

    /// The entry for this token, if valid at `now` (from its storing to its expiry).
    pub fn get(&mut self, token: &str, now: i64) -> Option<&mut LocalEntry> {
        self.entries
            .get_mut(token)
            .filter(|entry| entry.stored_at <= now && now < entry.expires_at)
    }

    /// Keeps claims for `token` until `expires_at`. When full (entries or bytes), expired
    /// entries go first, then everything (a bounded map, not an LRU: refilling from the shared
    /// cache is cheap).
    pub fn insert(&mut self, token: &str, expires_at: i64, claims: std::rc::Rc<Claims>, now: i64) {
        if self.capacity == 0 || expires_at <= now || token.len() > self.max_bytes {
            return;
        }
        let entry = LocalEntry {
            stored_at: now,
            expires_at,
            claims,
            remembered: None,
        };
        if let Some(slot) = self.entries.get_mut(token) {
            *slot = entry;
            return;
        }
        let full = |c: &LocalCache| {
            c.entries.len() >= c.capacity || c.bytes.saturating_add(token.len()) > c.max_bytes
        };
        if full(self) {
            self.purge(now);
            if full(self) {
                self.entries.clear();
                self.bytes = 0;
            }
        }
        self.bytes = self.bytes.saturating_add(token.len());
        self.entries.insert(token.into(), entry);
    }

    /// Drops every entry expired at `now`: their tokens leave the VM's memory.
    pub fn purge(&mut self, now: i64) {
        let mut freed = 0usize;
        self.entries.retain(|token, entry| {
            let keep = entry.expires_at > now;
            if !keep {
                freed = freed.saturating_add(token.len());
            }
            keep
        });
        self.bytes = self.bytes.saturating_sub(freed);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Token bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Only what the policy reads: smaller entries, and no claim the SR does not get.
pub fn kept_claims(policy: &Policy, identity: &Identity, claims: &Claims) -> Claims {
    let mut kept = Map::new();
    let mut keep = |name: &str| {
        if let Some(v) = claims.get(name) {
            kept.insert(name.to_string(), v.clone());
        }
    };
    // `client_id`: per-route rules accept tokens by the client that obtained them.
    for name in ["active", "token_type", "scope", "nbf", "iss", "client_id"] {
        keep(name);
    }
    keep(&policy.user_claim);
    keep(&policy.expiry_claim);
    for (claim, _) in &identity.claim_headers {
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

    /// `expires_at` under policy `p`.
    fn expiry(p: &CachePolicy, c: &Config, claims: &Claims) -> Option<i64> {
        expires_at(p, &c.policy.expiry_claim, claims, NOW, NOW)
    }

    fn claims(v: Value) -> Claims {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn active_entries_never_outlive_exp_nor_max_ttl() {
        let c = config();
        let p = policy();
        let soon = claims(json!({"active": true, "sub": "u", "exp": NOW + 30}));
        assert_eq!(expiry(&p, &c, &soon), Some(NOW + 30));
        let later = claims(json!({"active": true, "sub": "u", "exp": NOW + 3600}));
        assert_eq!(expiry(&p, &c, &later), Some(NOW + 300));
        let expired = claims(json!({"active": true, "sub": "u", "exp": NOW}));
        assert_eq!(expiry(&p, &c, &expired), None);
        let bad_exp = claims(json!({"active": true, "sub": "u", "exp": "x"}));
        assert_eq!(expiry(&p, &c, &bad_exp), None);
    }

    #[test]
    fn a_late_answer_lives_from_when_the_server_was_asked() {
        let c = config();
        let p = policy(); // max_ttl 300
        let later = claims(json!({"active": true, "sub": "u", "exp": NOW + 3600}));
        // Asked 250 s before the answer arrived: 50 s left, not 300.
        assert_eq!(
            expires_at(&p, &c.policy.expiry_claim, &later, NOW - 250, NOW),
            Some(NOW + 50)
        );
        assert_eq!(
            expires_at(&p, &c.policy.expiry_claim, &later, NOW - 300, NOW),
            None
        );
        let inactive = claims(json!({"active": false}));
        assert_eq!(
            expires_at(&p, &c.policy.expiry_claim, &inactive, NOW - 10, NOW),
            None
        );
    }

    #[test]
    fn client_id_is_kept_for_the_rules() {
        let c = config();
        let kept = kept_claims(
            &c.policy,
            &c.identity,
            &claims(json!({"active": true, "sub": "u", "client_id": "fs", "email": "e", "x": 1})),
        );
        assert_eq!(kept.get("client_id"), Some(&json!("fs")));
        assert_eq!(kept.get("x"), None);
    }

    #[test]
    fn no_exp_inactive_and_disabled() {
        let c = config();
        let mut p = policy();
        let no_exp = claims(json!({"active": true, "sub": "u"}));
        assert_eq!(expiry(&p, &c, &no_exp), None, "0 = not cached");
        p.no_exp_ttl = 20;
        assert_eq!(expiry(&p, &c, &no_exp), Some(NOW + 20));
        p.no_exp_ttl = 1000;
        assert_eq!(
            expiry(&p, &c, &no_exp),
            Some(NOW + 300),
            "bounded by max_ttl"
        );
        let inactive = claims(json!({"active": false}));
        assert_eq!(expiry(&p, &c, &inactive), Some(NOW + 10));
        p.inactive_ttl = 0;
        assert_eq!(expiry(&p, &c, &inactive), None);
        let garbage = claims(json!({"active": "yes"}));
        assert_eq!(expiry(&p, &c, &garbage), None);
        p.max_entries = 0;
        assert_eq!(expiry(&p, &c, &no_exp), None);
    }

    #[test]
    fn keys_are_scoped_to_the_configuration_and_slots_are_bounded() {
        let c = config();
        let keys = CacheKeys::new(&c);
        let k = keys.key_for("secret-token-value", 100);
        assert!(k.slot_key.starts_with("introspection-cache:v1:"));
        assert_eq!(k, keys.key_for("secret-token-value", 100));
        // Another client id, secret or cache lifetime gives another prefix and fingerprint.
        for other in [
            r#"{"cluster":"as","authority":"as","client_id":"sr2","client_secret":"s"}"#,
            r#"{"cluster":"as","authority":"as","client_id":"sr","client_secret":"s2","claim_headers":{"email":"x-user-email"}}"#,
            r#"{"cluster":"as","authority":"as","client_id":"sr","client_secret":"s","claim_headers":{"email":"x-user-email"},"cache":{"max_ttl_secs":5}}"#,
        ] {
            let other = CacheKeys::new(&Config::from_json(other.as_bytes()).unwrap());
            assert_ne!(
                k.fingerprint,
                other.key_for("secret-token-value", 100).fingerprint
            );
        }
        // Slots stay within bounds.
        for i in 0..200 {
            let k = keys.key_for(&format!("t{i}"), 7);
            let slot: u32 = k.slot_key.rsplit(':').next().unwrap().parse().unwrap();
            assert!(slot < 7);
        }
    }

    #[test]
    fn entries_round_trip_expire_and_are_authenticated() {
        let keys = CacheKeys::new(&config());
        let fp = [7u8; 32];
        let c = claims(json!({"active": true, "sub": "u"}));
        let e = keys.encode(&fp, NOW - 20, NOW + 5, &c);
        assert_eq!(keys.decode(&e, &fp, NOW), Some((NOW + 5, c.clone())));
        assert_eq!(
            keys.decode(&e, &fp, NOW + 5),
            None,
            "never served at or after expiry"
        );
        assert_eq!(
            keys.decode(&e, &[8u8; 32], NOW),
            None,
            "another token's entry"
        );
        for cut in 0..e.len() {
            assert_eq!(keys.decode(&e[..cut], &fp, NOW), None);
        }
        assert_eq!(keys.decode(b"", &fp, NOW), None);
        // A forged entry (other sub, or a later expiry) fails the MAC.
        let mut forged = e.clone();
        let n = forged.len();
        forged[n - 3] ^= 1;
        assert_eq!(keys.decode(&forged, &fp, NOW), None);
        let mut later = e.clone();
        later[41..49].copy_from_slice(&(NOW + 500).to_le_bytes());
        assert_eq!(keys.decode(&later, &fp, NOW + 10), None);
        let mut earlier = e.clone();
        earlier[33..41].copy_from_slice(&(NOW - 5000).to_le_bytes());
        assert_eq!(keys.decode(&earlier, &fp, NOW - 100), None);
        // An entry written under another secret is not accepted.
        let other = CacheKeys::new(
            &Config::from_json(
                br#"{"cluster":"as","authority":"as","client_id":"sr","client_secret":"other",
                    "claim_headers":{"email":"x-user-email"}}"#,
            )
            .unwrap(),
        );
        assert_eq!(
            keys.decode(&other.encode(&fp, NOW - 20, NOW + 5, &c), &fp, NOW),
            None
        );
    }

    /// Found by review: with the clock stepped back (an NTP step), an entry stored before the
    /// step lived for the step's length on top of `max_ttl`.
    #[test]
    fn an_entry_is_not_served_before_it_was_stored() {
        let keys = CacheKeys::new(&config());
        let fp = [7u8; 32];
        let c = claims(json!({"active": true, "sub": "u"}));
        let e = keys.encode(&fp, NOW, NOW + 60, &c);
        assert!(keys.decode(&e, &fp, NOW).is_some());
        assert_eq!(keys.decode(&e, &fp, NOW - 1), None);
        assert_eq!(keys.decode(&e, &fp, NOW - 3600), None);
        let mut l = LocalCache::new(2);
        l.insert("t", NOW + 60, std::rc::Rc::new(c), NOW);
        assert!(l.get("t", NOW + 59).is_some());
        assert!(l.get("t", NOW - 1).is_none());
        // And its replacement by a fresh answer is allowed.
        assert!(keys
            .kept_over(&e, &fp, NOW - 3000, true, NOW - 3600)
            .is_none());
    }

    #[test]
    fn slot_replacement() {
        let keys = CacheKeys::new(&config());
        let mine = [1u8; 32];
        let other = [2u8; 32];
        let c = claims(json!({"active": true, "sub": "u"}));
        let replaces = |existing: &[u8], expires_at| {
            keys.kept_over(existing, &mine, expires_at, true, NOW)
                .is_none()
        };
        // Empty or garbage slot, expired entry, another token's live entry: replaced.
        assert!(replaces(b"", NOW + 10));
        assert!(replaces(
            &keys.encode(&mine, NOW - 20, NOW - 1, &c),
            NOW + 10
        ));
        assert!(replaces(
            &keys.encode(&other, NOW - 20, NOW + 100, &c),
            NOW + 10
        ));
        // This token's entry, shorter: replaced; as long or longer: kept.
        assert!(replaces(
            &keys.encode(&mine, NOW - 20, NOW + 5, &c),
            NOW + 10
        ));
        assert!(!replaces(
            &keys.encode(&mine, NOW - 20, NOW + 10, &c),
            NOW + 10
        ));
        assert!(!replaces(
            &keys.encode(&mine, NOW - 20, NOW + 20, &c),
            NOW + 10
        ));
    }

    /// Found by review: a worker's inactive answer lost the slot to another's earlier active
    /// one that expired later, and workers reading the shared cache kept letting it through.
    #[test]
    fn an_inactive_answer_replaces_the_same_tokens_active_entry_and_is_not_replaced_by_one() {
        let keys = CacheKeys::new(&config());
        let mine = [1u8; 32];
        let active = keys.encode(
            &mine,
            NOW - 20,
            NOW + 60,
            &claims(json!({"active": true, "sub": "u"})),
        );
        let inactive = keys.encode(&mine, NOW - 20, NOW + 10, &claims(json!({"active": false})));
        assert!(keys
            .kept_over(&active, &mine, NOW + 10, false, NOW)
            .is_none());
        assert!(keys
            .kept_over(&inactive, &mine, NOW + 600, true, NOW)
            .is_some());
        // Between inactive answers, the longer stays.
        assert!(keys
            .kept_over(&inactive, &mine, NOW + 5, false, NOW)
            .is_some());
        assert!(keys
            .kept_over(&inactive, &mine, NOW + 20, false, NOW)
            .is_none());
        // Another token's inactive entry is no reason to keep the slot.
        assert!(keys
            .kept_over(&inactive, &[2u8; 32], NOW + 5, true, NOW)
            .is_none());
    }

    #[test]
    fn local_cache_is_bounded_and_expires() {
        let mut l = LocalCache::new(2);
        let c = std::rc::Rc::new(claims(json!({"active": true, "sub": "u"})));
        l.insert("t1", NOW + 5, c.clone(), NOW);
        assert!(l.get("t1", NOW).is_some());
        assert!(
            l.get("t1", NOW + 5).is_none(),
            "never served at or after expiry"
        );
        assert!(l.get("t2", NOW).is_none());
        assert!(l.get("t", NOW).is_none(), "exact tokens only");
        l.insert("t2", NOW + 1, c.clone(), NOW);
        // Full: the expired entry goes first.
        l.insert("t3", NOW + 9, c.clone(), NOW + 2);
        assert_eq!(l.len(), 2);
        assert!(l.get("t1", NOW + 2).is_some() && l.get("t3", NOW + 2).is_some());
        // Full of live entries: cleared, bounded.
        l.insert("t4", NOW + 9, c.clone(), NOW + 2);
        assert_eq!(l.len(), 1);
        assert_eq!(l.bytes(), 2);
        // Already expired or disabled: not kept.
        l.insert("t5", NOW, c.clone(), NOW);
        assert!(l.get("t5", NOW - 1).is_none());
        let mut off = LocalCache::new(0);
        off.insert("t1", NOW + 5, c, NOW);
        assert!(off.is_empty());
    }

    #[test]
    fn local_cache_tokens_are_bounded_in_bytes_and_purged_once_expired() {
        let c = std::rc::Rc::new(claims(json!({"active": true, "sub": "u"})));
        let mut l = LocalCache::with_budget(100, 10);
        l.insert("aaaa", NOW + 5, c.clone(), NOW);
        l.insert("bbbb", NOW + 50, c.clone(), NOW);
        assert_eq!(l.bytes(), 8);
        // Replacing an entry holds no more bytes.
        l.insert("bbbb", NOW + 60, c.clone(), NOW);
        assert_eq!((l.len(), l.bytes()), (2, 8));
        // Over the byte budget: the expired entry goes first.
        l.insert("cccc", NOW + 50, c.clone(), NOW + 10);
        assert_eq!((l.len(), l.bytes()), (2, 8));
        assert!(l.get("aaaa", NOW).is_none() && l.get("bbbb", NOW + 10).is_some());
        // A token longer than the whole budget is never kept.
        l.insert("0123456789a", NOW + 50, c.clone(), NOW);
        assert!(l.get("0123456789a", NOW).is_none());
        // Purge: expired tokens leave, their bytes with them.
        l.purge(NOW + 60);
        assert!(l.is_empty());
        assert_eq!(l.bytes(), 0);
    }

    #[test]
    fn only_needed_claims_are_kept() {
        let c = config();
        let all = claims(
            json!({"active": true, "sub": "u", "exp": 1, "scope": "openid",
            "token_type": "Bearer", "email": "a@b", "given_name": "Jeanne", "client_id": "fs"}),
        );
        let kept = kept_claims(&c.policy, &c.identity, &all);
        assert_eq!(
            Value::Object(kept),
            json!({"active": true, "sub": "u", "exp": 1, "scope": "openid",
                "token_type": "Bearer", "email": "a@b", "client_id": "fs"})
        );
    }
}
