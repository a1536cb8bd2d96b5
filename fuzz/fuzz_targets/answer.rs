//! An introspection answer through the real parsers and the policy (plain and HS256 signed):
//! never panics, and an allowed request always names a user with a header-safe value.
#![no_main]

use introspection_core::decision::{self, Decision};
use introspection_core::discovery::Endpoints;
use introspection_core::jwt::Crypto;
use introspection_core::response::{self, Answer};
use introspection_core::Config;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const NOW: i64 = 1_790_000_000;

fn configs() -> &'static (Config, Config, Endpoints) {
    static C: OnceLock<(Config, Config, Endpoints)> = OnceLock::new();
    C.get_or_init(|| {
        let plain = Config::from_json(
            br#"{"cluster":"as","authority":"as","client_id":"sr","client_secret":"s",
                "claim_headers":{"scope":"x-token-scope","groups":"x-user-groups"},
                "required_scopes":["openid"]}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let signed = Config::from_json(
            br#"{"cluster":"as","authority":"as","client_id":"sr","client_secret":"s",
                "signed_response_alg":"HS256","issuer":"https://as"}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let endpoints = Endpoints {
            introspection_path: "/i".into(),
            issuer: Some("https://as".into()),
            jwks_path: None,
        };
        (plain, signed, endpoints)
    })
}

fuzz_target!(|data: &[u8]| {
    let (plain, signed, endpoints) = configs();
    let (content_type, body): (&[u8], &[u8]) = match data.split_first() {
        Some((b, rest)) if b % 2 == 0 => (b"application/json", rest),
        Some((_, rest)) => (b"application/token-introspection+jwt", rest),
        None => (b"application/json", data),
    };
    let answer = Answer {
        status: Some(b"200"),
        content_type: Some(content_type),
        body,
    };
    for config in [plain, signed] {
        if let Ok(claims) = response::verified_claims(config, endpoints, None, Crypto::Wasm, &answer, NOW) {
            let d = decision::evaluate(
                &config.policy,
                &config.policy.requirements,
                &config.identity,
                &claims,
                NOW,
            );
            if let Decision::Allow(headers) = d {
                let (name, user) = &headers[0];
                assert_eq!(name, "x-user-sub");
                assert!(!user.is_empty());
                assert!(user.bytes().all(|b| b == b' ' || b.is_ascii_graphic()));
                assert!(!user.starts_with(' ') && !user.ends_with(' '));
                for (_, value) in &headers {
                    assert!(!value.chars().any(char::is_control));
                }
            }
        }
    }
});
