//! `make soak`: many concurrent clients with tokens of many users against the full stack (two
//! Envoy workers, cache on), plain answers then ES256-signed answers, each for half of
//! `--seconds`. Every answer is checked: each 200 must carry exactly its token's owner, each
//! refusal the status RFC 6750 gives it. Ends with one line
//! `soak: N requests, M mismatches, U unexpected statuses, V vm failures` and exits non-zero
//! unless M, U and V are all 0. Loopback only, bounded in time and in count.

// A test tool, not the filter: serde_json `Value` indexing on objects this file builds itself
// (reads of absent members give `Null`).
#![allow(clippy::indexing_slicing)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};
use stack::http;
use stack::render::{self, Params};
use stack::services::{self, EnvoyOptions};

#[derive(Parser)]
#[command(about = "Soak the filter: concurrent clients, many users, every answer checked")]
struct Args {
    /// Total duration, split between the plain and the signed mode.
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 12)]
    clients: usize,
    /// Upper bound on requests per mode, whatever the time.
    #[arg(long, default_value_t = 2_000_000)]
    max_requests: u64,
    #[arg(long, default_value = "target/introspection_filter.wasm")]
    wasm: PathBuf,
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    #[arg(long, default_value = "envoy/envoy.yaml.in")]
    template: PathBuf,
    /// Envoy command (default: $ENVOY, else `envoy`).
    #[arg(long)]
    envoy: Option<String>,
    #[arg(long, default_value = "target/soak")]
    work_dir: PathBuf,
}

/// Cache lifetimes of the soak: short, so revocations and expiries show within the run.
const MAX_TTL: u64 = 2;

/// What a token is, and so what the filter must answer for it.
#[derive(Clone)]
enum Kind {
    /// Active for the whole run: 200 naming `sub`.
    Valid { sub: String },
    /// Revoked before the run: 401 (after the cache lifetime of any earlier answer).
    Inactive,
    /// Revoked at `at`: 200 naming `sub` before, 401 from `at + MAX_TTL` on, either between.
    Revoked { sub: String, at: Instant },
    /// Expires at `at`: 200 naming `sub` until a second before, 401 from `at` on.
    Expiring { sub: String, at: Instant },
    /// Bad `Authorization` syntax: 400 (the value is sent as is).
    Malformed { value: &'static str },
    /// No `Authorization`: 401.
    Missing,
}

#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    mismatches: AtomicU64,
    unexpected: AtomicU64,
}

fn main() {
    let args = Args::parse();
    let mut total = (0, 0, 0, 0);
    for (mode, alg) in [("plain", "none"), ("es256", "ES256")] {
        let (n, m, u, v) = match run_mode(&args, mode, alg) {
            Ok(counts) => counts,
            Err(e) => {
                eprintln!("soak: {mode}: {e}");
                std::process::exit(2);
            }
        };
        eprintln!(
            "soak ({mode}): {n} requests, {m} mismatches, {u} unexpected statuses, {v} vm failures"
        );
        total = (total.0 + n, total.1 + m, total.2 + u, total.3 + v);
    }
    let (n, m, u, v) = total;
    println!("soak: {n} requests, {m} mismatches, {u} unexpected statuses, {v} vm failures");
    if n == 0 || m + u + v > 0 {
        std::process::exit(1);
    }
}

/// One mode: starts the stack, mints the population, runs the clients, stops everything.
fn run_mode(args: &Args, mode: &str, alg: &str) -> Result<(u64, u64, u64, u64), String> {
    let dir = args.work_dir.join(mode);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let deadline = Duration::from_secs(30);
    let secret = format!("soak-secret-{}-{}", std::process::id(), mode);
    let client = format!("sr-soak:{secret}:{alg}");
    let mut auth = services::start_mock_as(
        &args.bin_dir,
        &dir,
        0,
        &["--client".into(), client, "--quiet".into()],
        true,
        deadline,
    )?;
    let mut sr = services::start_sample_sr(&args.bin_dir, &dir, 0, true, deadline)?;
    let mut plugin = json!({
        "cluster": "authorization_server",
        "authority": format!("127.0.0.1:{}", auth.port),
        "client_id": "sr-soak", "client_secret": secret,
        "cache": { "max_entries": 10000, "max_ttl_secs": MAX_TTL, "inactive_ttl_secs": 1 }
    });
    if alg != "none" {
        plugin["signed_response_alg"] = json!(alg);
        plugin["issuer"] = json!(format!("http://127.0.0.1:{}/api/v2", auth.port));
        plugin["jwks_path"] = json!("/api/v2/jwks");
    }
    let template = std::fs::read_to_string(&args.template).map_err(|e| e.to_string())?;
    let wasm = args.wasm.display().to_string();
    let plugin_text = plugin.to_string();
    let params = Params {
        admin_port: 0,
        listen_port: 0,
        sr_port: sr.port,
        as_port: auth.port,
        wasm_path: &wasm,
        plugin_config: &plugin_text,
    };
    let config = render::render(&template, &params, &[]).map_err(|e| e.0)?;
    let options = EnvoyOptions {
        command: services::envoy_command(args.envoy.as_deref()),
        concurrency: 2,
        log_level: "warn".into(),
        component_log_level: None,
        env: Vec::new(),
        env_remove: Vec::new(),
        die_with_parent: true,
    };
    let names = vec!["sr_ingress".to_string()];
    let mut envoy = services::start_envoy(&dir, "envoy", &config, &names, &options, deadline)?;
    let port = *envoy.listeners.get("sr_ingress").ok_or("no listener")?;

    let half = Duration::from_secs(args.seconds.max(2) / 2);
    let result = soak(
        &auth,
        port,
        envoy.admin_port,
        half,
        args.clients,
        args.max_requests,
    );
    envoy.proc.stop();
    sr.proc.stop();
    auth.proc.stop();
    result
}

fn admin(port: u16, path: &str, body: &Value) -> Result<Value, String> {
    let r = http::request(
        port,
        "POST",
        path,
        &[("content-type", b"application/json")],
        body.to_string().as_bytes(),
    )
    .map_err(|e| format!("{path}: {e}"))?;
    r.parse_json().map_err(|e| format!("{path}: {e}"))
}

fn mint(as_port: u16, spec: Value) -> Result<String, String> {
    admin(as_port, "/_mock/tokens", &spec)?["token"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| "no token minted".into())
}

/// Mints the population, runs the clients for `duration`, revokes some tokens midway.
fn soak(
    auth: &services::Server,
    port: u16,
    admin_port: u16,
    duration: Duration,
    clients: usize,
    max_requests: u64,
) -> Result<(u64, u64, u64, u64), String> {
    let start = Instant::now();
    let midway = start + duration / 2;
    let expire_secs = (duration / 2).as_secs().max(1);
    let mut tokens: Vec<(Option<String>, Kind)> = Vec::new();
    for u in 0..40 {
        let sub = format!("user-{u:03}");
        // Two tokens per user; every client below shares them.
        for _ in 0..2 {
            let token = mint(auth.port, json!({ "sub": sub }))?;
            tokens.push((Some(token), Kind::Valid { sub: sub.clone() }));
        }
    }
    for u in 0..10 {
        let sub = format!("revoked-{u:02}");
        let token = mint(auth.port, json!({ "sub": sub }))?;
        tokens.push((Some(token), Kind::Revoked { sub, at: midway }));
        let sub = format!("expiring-{u:02}");
        let token = mint(auth.port, json!({ "sub": sub, "ttl_secs": expire_secs }))?;
        let at = Instant::now() + Duration::from_secs(expire_secs);
        tokens.push((Some(token), Kind::Expiring { sub, at }));
    }
    for _ in 0..5 {
        let token = mint(auth.port, json!({ "sub": "gone" }))?;
        admin(auth.port, "/_mock/revoke", &json!({ "token": token }))?;
        tokens.push((Some(token), Kind::Inactive));
    }
    // Syntactically valid tokens the server never issued: inactive.
    tokens.push((Some("never-issued-token-0123456789".into()), Kind::Inactive));
    for value in ["Bearer a b", "Basic dXNlcjpwYXNz", "Bearer", "Bearer a\"b"] {
        tokens.push((None, Kind::Malformed { value }));
    }
    tokens.push((None, Kind::Missing));

    // The first valid token must pass before the clock starts (keys and caches ready).
    let Some((Some(first), _)) = tokens.first() else {
        return Err("no valid token".into());
    };
    let ready = stack::proc::wait_for(Duration::from_secs(20), || {
        let r = get(port, Some(&format!("Bearer {first}"))).ok()?;
        (r.status == 200).then_some(())
    });
    ready.ok_or("the stack never served a valid token")?;

    let tokens = Arc::new(tokens);
    let tally = Arc::new(Tally::default());
    let end = Instant::now() + duration;
    let mut revoked = false;
    std::thread::scope(|s| -> Result<(), String> {
        for c in 0..clients {
            let (tokens, tally) = (Arc::clone(&tokens), Arc::clone(&tally));
            s.spawn(move || client(c as u64, port, &tokens, &tally, end, max_requests));
        }
        // Midway, the revocations land at the server.
        while Instant::now() < end {
            if !revoked && Instant::now() >= midway {
                for (token, kind) in tokens.iter() {
                    if let (Some(token), Kind::Revoked { .. }) = (token, kind) {
                        admin(auth.port, "/_mock/revoke", &json!({ "token": token }))?;
                    }
                }
                revoked = true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    })?;
    let v = vm_failures(admin_port)?;
    Ok((
        tally.requests.load(Ordering::Relaxed),
        tally.mismatches.load(Ordering::Relaxed),
        tally.unexpected.load(Ordering::Relaxed),
        v,
    ))
}

fn get(port: u16, authorization: Option<&str>) -> std::io::Result<http::Response> {
    let headers: Vec<(&str, &[u8])> = match authorization {
        Some(a) => vec![("authorization", a.as_bytes())],
        None => Vec::new(),
    };
    http::request(port, "GET", "/api/users/me", &headers, b"")
}

/// One client: random tokens until `end` (or the request bound), every answer checked.
fn client(
    seed: u64,
    port: u16,
    tokens: &[(Option<String>, Kind)],
    tally: &Tally,
    end: Instant,
    max_requests: u64,
) {
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while Instant::now() < end && tally.requests.load(Ordering::Relaxed) < max_requests {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let index = usize::try_from(rng % tokens.len() as u64).unwrap_or(0);
        let Some((token, kind)) = tokens.get(index) else {
            continue;
        };
        let authorization = match (token, kind) {
            (Some(t), _) => Some(format!("Bearer {t}")),
            (None, Kind::Malformed { value }) => Some((*value).to_string()),
            _ => None,
        };
        let sent = Instant::now();
        let Ok(r) = get(port, authorization.as_deref()) else {
            tally.requests.fetch_add(1, Ordering::Relaxed);
            tally.unexpected.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        tally.requests.fetch_add(1, Ordering::Relaxed);
        let seen_sub = (r.status == 200)
            .then(|| r.parse_json().ok())
            .flatten()
            .and_then(|v| v["sub"].as_str().map(String::from));
        match check(kind, r.status, seen_sub.as_deref(), sent) {
            Verdict::Ok => {}
            Verdict::Mismatch => {
                tally.mismatches.fetch_add(1, Ordering::Relaxed);
                eprintln!("soak: MISMATCH: a 200 named {seen_sub:?} for another user's token");
            }
            Verdict::Unexpected => {
                tally.unexpected.fetch_add(1, Ordering::Relaxed);
                eprintln!("soak: unexpected status {} ({})", r.status, describe(kind));
            }
        }
    }
}

enum Verdict {
    Ok,
    Mismatch,
    Unexpected,
}

fn describe(kind: &Kind) -> &'static str {
    match kind {
        Kind::Valid { .. } => "valid",
        Kind::Inactive => "inactive",
        Kind::Revoked { .. } => "revoked mid-run",
        Kind::Expiring { .. } => "expiring mid-run",
        Kind::Malformed { .. } => "malformed",
        Kind::Missing => "missing",
    }
}

/// What the answer must be for a token of this kind, sent at `sent`.
fn check(kind: &Kind, status: u16, seen: Option<&str>, sent: Instant) -> Verdict {
    let grace = Duration::from_secs(MAX_TTL + 1);
    // Either a 200 naming exactly `sub`, or (when `refusal_ok`) a 401.
    let owner = |sub: &str, pass_ok: bool, refusal_ok: bool| match status {
        200 if seen != Some(sub) => Verdict::Mismatch,
        200 if pass_ok => Verdict::Ok,
        401 if refusal_ok => Verdict::Ok,
        _ => Verdict::Unexpected,
    };
    match kind {
        Kind::Valid { sub } => owner(sub, true, false),
        Kind::Revoked { sub, at } => owner(
            sub,
            sent < *at + grace,
            sent + Duration::from_millis(100) >= *at,
        ),
        Kind::Expiring { sub, at } => owner(sub, sent < *at, sent + Duration::from_secs(1) >= *at),
        Kind::Inactive | Kind::Missing => match status {
            401 => Verdict::Ok,
            200 => Verdict::Mismatch,
            _ => Verdict::Unexpected,
        },
        Kind::Malformed { .. } => match status {
            400 => Verdict::Ok,
            200 => Verdict::Mismatch,
            _ => Verdict::Unexpected,
        },
    }
}

/// VM failures Envoy counted: every wasm counter about a failure or a reload
/// (`wasm.envoy.wasm.runtime.v8.*`, `wasm.<plugin>.*vm_reload*`...).
fn vm_failures(admin_port: u16) -> Result<u64, String> {
    let r = http::get(admin_port, "/stats").map_err(|e| e.to_string())?;
    let mut total = 0;
    for line in r.text().lines() {
        let Some((name, value)) = line.split_once(": ") else {
            continue;
        };
        let about_vm = name.starts_with("wasm.") || name.contains("wasm_");
        let failure = ["fail", "crash", "reload", "panic"]
            .iter()
            .any(|w| name.contains(w));
        if about_vm && failure {
            let n: u64 = value.trim().parse().unwrap_or(0);
            if n > 0 {
                eprintln!("soak: {name}: {n}");
            }
            total += n;
        }
    }
    Ok(total)
}
