//! `make soak`: for `--seconds` (`SOAK_SECONDS`, default 120), concurrent clients send requests
//! with the tokens of many users through the full stack (mock-as, sample-sr, Envoy with two
//! workers and the shared cache on), with plain answers for the first half and signed answers
//! (ES256 by default) for the second. The population:
//!
//! - valid tokens of many users (some users have two), a few of them hot (sent by every client
//!   at once), and tokens minted during the run, which many clients send at once on both
//!   workers (single flight, the cache filling);
//! - tokens revoked at the server at random moments, tokens expiring at random moments;
//! - inactive tokens: never issued (a known set, cached as inactive, and a new one now and
//!   then), revoked or expired before the run, refresh tokens;
//! - malformed `Authorization` values (two tokens, another scheme, bad bytes, oversized, two
//!   headers naming two users) and none at all;
//! - now and then a forged identity header naming another user.
//!
//! Connections are kept alive, so one connection carries many users' tokens in turn. Every
//! answer is judged (`judge.rs`): a 200 must name exactly its token's owner and carry no forged
//! identity (else a *mismatch*); a refusal must be the filter's own (its realm, the RFC 6750
//! status and error for the kind), a revoked token may pass only until its cache window after
//! the server acknowledged the revocation, an expiring one never at or after its `exp`, and a
//! 5xx or no answer is never expected (else an *unexpected status*). VM failures come from
//! Envoy's wasm counters and log (`vm.rs`).
//!
//! The last line, on standard output, is
//! `soak: N requests, M mismatches, U unexpected statuses, V vm failures`; the exit status is
//! non-zero unless M, U and V are all 0 (or if the stack could not run, was interrupted, or a
//! token reached Envoy's log). Loopback only; bounded in time (each mode's clients stop at its
//! deadline, every socket has a timeout, every wait a bound) and in count (`--max-requests`).
//! Tokens and secrets are never printed.

mod client;
mod judge;
mod vm;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use serde_json::{json, Value};
use stack::http;
use stack::proc::{self, wait_for};
use stack::render::{self, Params};
use stack::services::{self, EnvoyOptions, Server};

use client::Client;
use judge::{Answer, Expect, Kind, Verdict};

#[derive(Debug, Parser)]
#[command(
    name = "soak",
    about = "Soak the filter: concurrent clients, many users, every answer checked"
)]
struct Args {
    /// Total duration in seconds, half with plain answers, half with signed ones.
    #[arg(long, env = "SOAK_SECONDS", default_value_t = 120)]
    seconds: u64,
    /// Concurrent clients (threads, each with its own keep-alive connection).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Users with valid tokens.
    #[arg(long, default_value_t = 200)]
    users: usize,
    /// Upper bound on requests per mode, whatever the time.
    #[arg(long, default_value_t = 2_000_000)]
    max_requests: u64,
    /// Algorithm of the signed mode.
    #[arg(long, default_value = "ES256", value_parser = ["RS256", "ES256", "HS256"])]
    signed_alg: String,
    /// Seed of the random choices [default: from the clock]; printed, to replay a run's plan.
    #[arg(long)]
    seed: Option<u64>,
    /// The filter's `.wasm`.
    #[arg(long, default_value = "target/introspection_filter.wasm")]
    wasm: PathBuf,
    /// Where mock-as and sample-sr are.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Envoy template [default: envoy/envoy.yaml.in, built in].
    #[arg(long)]
    template: Option<PathBuf>,
    /// Envoy command [default: $ENVOY, else envoy].
    #[arg(long)]
    envoy: Option<String>,
    /// Logs and rendered configurations go here (emptied first).
    #[arg(long, default_value = "target/soak")]
    work_dir: PathBuf,
}

/// Cache lifetime of an active answer: short, so revocations show within the run.
const MAX_TTL_SECS: u64 = 2;
/// The filter's callout timeout.
const TIMEOUT_MS: u64 = 3000;
/// How long after a revocation was acknowledged the token may still pass. The filter counts an
/// entry's life from when it asked the server, and an answer given before the revocation was
/// asked for before the acknowledgement: `MAX_TTL_SECS`, plus a second for the three processes'
/// readings of the clock. (Passes later than `MAX_TTL_SECS` are counted apart, for information.)
const REVOKED_WINDOW: Duration = Duration::from_secs(MAX_TTL_SECS + 1);
/// Socket timeout of every request: far above any answer, far below the run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on each readiness wait.
const READY: Duration = Duration::from_secs(30);
/// Answers a warm-up needs in a row, each a fresh token (so a callout and, in signed mode, a
/// signature check on whichever worker takes it), before the clock starts.
const WARM_UP_PASSES: u32 = 20;
/// Mismatches, and unexpected statuses, printed per mode (each with its kind and statuses,
/// never a token).
const REPORTED: u64 = 10;
const PATH: &str = "/api/users/me";

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// splitmix64: small, seedable, good enough to spread choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        let n = u64::try_from(n).unwrap_or(u64::MAX).max(1);
        usize::try_from(self.next() % n).unwrap_or(0)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.below(items.len()))
    }

    /// A base64url string of `len` characters: the shape of the mock's tokens.
    fn token(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        (0..len)
            .map(|_| char::from(*self.pick(ALPHABET).unwrap_or(&b'A')))
            .collect()
    }

    fn hex(&mut self) -> String {
        format!("{:016x}{:016x}", self.next(), self.next())
    }
}

/// What the mode runs against.
struct Mode {
    name: &'static str,
    client_id: &'static str,
    secret: String,
    /// `none` or the signed algorithm.
    alg: String,
}

/// A token of the population.
struct Token {
    value: String,
    owner: Option<String>,
    class: Class,
}

#[derive(Clone, Copy)]
enum Class {
    Valid,
    /// Index into the revocation times.
    Revoked(usize),
    Expiring(i64),
    Inactive,
}

/// When a token's revocation left and was acknowledged (ns since the epoch; 0: not yet).
#[derive(Default)]
struct Revocation {
    sent: AtomicU64,
    acked: AtomicU64,
}

impl Revocation {
    fn read(&self) -> Kind {
        let at = |a: &AtomicU64| Some(a.load(Ordering::SeqCst)).filter(|t| *t != 0);
        // `acked` before `sent`: an acknowledgement seen implies its sending is seen too.
        let acked = at(&self.acked);
        let sent = at(&self.sent);
        Kind::Revoked { sent, acked }
    }
}

struct Population {
    /// Users' subs (the mock's random UUIDs).
    users: Vec<String>,
    tokens: Vec<Token>,
    valid: Vec<usize>,
    hot: Vec<usize>,
    revoked: Vec<usize>,
    expiring: Vec<usize>,
    inactive: Vec<usize>,
    revocations: Vec<Revocation>,
    /// Valid tokens minted during the run, newest last: (token, owner).
    fresh: RwLock<Vec<(String, String)>>,
}

/// One request to send.
struct Request {
    headers: Vec<(&'static str, Vec<u8>)>,
    owner: Option<String>,
    forged: Option<String>,
    /// What the token is; `Revoked` is read again once the answer is in.
    kind: Kind,
    revocation: Option<usize>,
}

/// Malformed `Authorization` values: 400 `invalid_request`, no callout.
const MALFORMED: &[&[u8]] = &[
    b"Basic dXNlcjpwYXNz",
    b"Bearer",
    b"Bearer a b",
    b"Bearer abc\"def",
    b"Bearer =abc",
    b"Token abc",
    b"Bearer \xff\xfe\xfd",
    b"Bearer \xc3\x28",
];

impl Population {
    fn request(&self, rng: &mut Rng, max_token_length: usize) -> Request {
        let roll = rng.below(100);
        let token_request = |t: &Token, rng: &mut Rng| {
            let kind = match t.class {
                Class::Valid => Kind::Valid,
                Class::Revoked(_) => Kind::Revoked {
                    sent: None,
                    acked: None,
                },
                Class::Expiring(exp) => Kind::Expiring { exp },
                Class::Inactive => Kind::Inactive,
            };
            let revocation = match t.class {
                Class::Revoked(i) => Some(i),
                _ => None,
            };
            self.with_token(rng, &t.value, t.owner.clone(), kind, revocation)
        };
        let indexed =
            |list: &[usize], rng: &mut Rng| rng.pick(list).and_then(|i| self.tokens.get(*i));
        let chosen = match roll {
            0..40 => indexed(&self.valid, rng),
            40..55 => indexed(&self.hot, rng),
            55..63 => {
                let fresh = self.fresh.read().map(|f| {
                    // Mostly the newest: many clients send it at once, on both workers.
                    let newest = f.len().checked_sub(1);
                    let i = if rng.below(10) < 7 {
                        newest
                    } else {
                        Some(rng.below(f.len()))
                    };
                    i.and_then(|i| f.get(i).cloned())
                });
                if let Ok(Some((token, owner))) = fresh {
                    return self.with_token(rng, &token, Some(owner), Kind::Valid, None);
                }
                indexed(&self.valid, rng)
            }
            63..73 => indexed(&self.revoked, rng),
            73..81 => indexed(&self.expiring, rng),
            81..90 => {
                if rng.below(5) == 0 {
                    // Never issued and never seen: a cache miss and a callout.
                    let token = rng.token(43);
                    return self.with_token(rng, &token, None, Kind::Inactive, None);
                }
                indexed(&self.inactive, rng)
            }
            90..97 => return self.malformed(rng, max_token_length),
            _ => {
                return Request {
                    headers: Vec::new(),
                    owner: None,
                    forged: None,
                    kind: Kind::Missing,
                    revocation: None,
                }
            }
        };
        match chosen {
            Some(t) => token_request(t, rng),
            None => self.malformed(rng, max_token_length),
        }
    }

    /// `Bearer <token>` (the scheme in any case), and now and then a forged identity header.
    fn with_token(
        &self,
        rng: &mut Rng,
        token: &str,
        owner: Option<String>,
        kind: Kind,
        revocation: Option<usize>,
    ) -> Request {
        let scheme = match rng.below(10) {
            0 => "bearer",
            1 => "BEARER",
            _ => "Bearer",
        };
        let mut headers = vec![("authorization", format!("{scheme} {token}").into_bytes())];
        let mut forged = None;
        if rng.below(10) == 0 {
            if let Some(other) = rng
                .pick(&self.users)
                .filter(|u| Some(u.as_str()) != owner.as_deref())
            {
                let name = *rng
                    .pick(&["x-user-sub", "X-User-Sub", "x_user_sub"])
                    .unwrap_or(&"x-user-sub");
                headers.push((name, other.clone().into_bytes()));
                forged = Some(other.clone());
            }
        }
        Request {
            headers,
            owner,
            forged,
            kind,
            revocation,
        }
    }

    fn malformed(&self, rng: &mut Rng, max_token_length: usize) -> Request {
        let headers = match rng.below(MALFORMED.len() + 2) {
            n if n < MALFORMED.len() => {
                vec![(
                    "authorization",
                    MALFORMED.get(n).copied().unwrap_or(b"Bearer").to_vec(),
                )]
            }
            n if n == MALFORMED.len() => {
                let long = format!("Bearer {}", "a".repeat(max_token_length + 1));
                vec![("authorization", long.into_bytes())]
            }
            _ => {
                // Two headers naming two users' valid tokens.
                let mut pick = || {
                    rng.pick(&self.valid)
                        .and_then(|i| self.tokens.get(*i))
                        .map(|t| format!("Bearer {}", t.value).into_bytes())
                        .unwrap_or_else(|| b"Bearer abc".to_vec())
                };
                vec![("authorization", pick()), ("authorization", pick())]
            }
        };
        Request {
            headers,
            owner: None,
            forged: None,
            kind: Kind::Malformed,
            revocation: None,
        }
    }

    fn token_values(&self) -> Vec<String> {
        let mut all: Vec<String> = self.tokens.iter().map(|t| t.value.clone()).collect();
        if let Ok(fresh) = self.fresh.read() {
            all.extend(fresh.iter().map(|(t, _)| t.clone()));
        }
        all
    }
}

/// Counts of one mode.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    mismatches: AtomicU64,
    unexpected: AtomicU64,
    /// Mismatches and unexpected statuses printed so far.
    reported_mismatches: AtomicU64,
    reported_unexpected: AtomicU64,
    /// Requests handed out (the count bound).
    issued: AtomicU64,
    /// Revoked tokens that passed more than `MAX_TTL_SECS` after the acknowledgement (within
    /// `REVOKED_WINDOW`, so not failures).
    late_passes: AtomicU64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    requests: u64,
    mismatches: u64,
    unexpected: u64,
    vm_failures: u64,
    /// For information: see [`Tally::late_passes`].
    late_passes: u64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.requests += other.requests;
        self.mismatches += other.mismatches;
        self.unexpected += other.unexpected;
        self.vm_failures += other.vm_failures;
        self.late_passes += other.late_passes;
    }

    fn clean(&self) -> bool {
        self.mismatches == 0 && self.unexpected == 0 && self.vm_failures == 0
    }
}

/// Everything that ran, and what went wrong besides the counts.
#[derive(Default)]
struct Outcome {
    counts: Counts,
    problems: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut outcome = Outcome::default();
    if let Err(e) = proc::install_signal_handlers() {
        outcome.problems.push(e);
    } else {
        run(&args, &mut outcome);
    }
    for problem in &outcome.problems {
        eprintln!("soak: {problem}");
    }
    let c = outcome.counts;
    println!(
        "soak: {} requests, {} mismatches, {} unexpected statuses, {} vm failures",
        c.requests, c.mismatches, c.unexpected, c.vm_failures
    );
    if proc::interrupted() {
        ExitCode::from(130)
    } else if c.clean() && outcome.problems.is_empty() && c.requests > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run(args: &Args, outcome: &mut Outcome) {
    let seed = args.seed.unwrap_or_else(now_ns);
    eprintln!(
        "soak: {} s, {} clients, {} users, seed {seed}",
        args.seconds, args.clients, args.users
    );
    let mut rng = Rng(seed);
    let _ = std::fs::remove_dir_all(&args.work_dir);
    if let Err(e) = std::fs::create_dir_all(&args.work_dir) {
        outcome
            .problems
            .push(format!("cannot create {}: {e}", args.work_dir.display()));
        return;
    }
    let modes = [
        Mode {
            name: "plain",
            client_id: "soak-plain",
            secret: rng.hex(),
            alg: "none".to_owned(),
        },
        Mode {
            name: "signed",
            client_id: "soak-signed",
            secret: rng.hex(),
            alg: args.signed_alg.clone(),
        },
    ];
    let mut mock_args: Vec<String> = modes
        .iter()
        .flat_map(|m| {
            [
                "--client".to_owned(),
                format!("{}:{}:{}", m.client_id, m.secret, m.alg),
            ]
        })
        .collect();
    // No per-request log, no per-token bookkeeping: flat memory under any number of tokens.
    mock_args.extend(["--quiet".to_owned(), "--no-bookkeeping".to_owned()]);
    let started =
        services::start_mock_as(&args.bin_dir, &args.work_dir, 0, &mock_args, true, READY)
            .and_then(|mock| {
                services::start_sample_sr(&args.bin_dir, &args.work_dir, 0, true, READY)
                    .map(|sr| (mock, sr))
            });
    let (mut mock, mut sr) = match started {
        Ok(servers) => servers,
        Err(e) => {
            outcome.problems.push(e);
            return;
        }
    };
    let halves = [args.seconds / 2, args.seconds - args.seconds / 2];
    for (mode, secs) in modes.iter().zip(halves) {
        if proc::interrupted() {
            outcome.problems.push("interrupted".to_owned());
            break;
        }
        let duration = Duration::from_secs(secs.max(1));
        match run_mode(args, mode, &mock, sr.port, duration, rng.next()) {
            Ok((counts, problems)) => {
                outcome.counts.add(counts);
                outcome.problems.extend(problems);
            }
            Err(e) => {
                outcome.problems.push(format!("{}: {e}", mode.name));
                break;
            }
        }
    }
    sr.proc.stop();
    mock.proc.stop();
}

fn plugin_config(mode: &Mode, as_port: u16) -> Value {
    let mut plugin = serde_json::Map::new();
    let mut set = |k: &str, v: Value| {
        plugin.insert(k.to_owned(), v);
    };
    set("cluster", json!("authorization_server"));
    set("authority", json!(format!("127.0.0.1:{as_port}")));
    set("client_id", json!(mode.client_id));
    set("client_secret", json!(mode.secret));
    set("realm", json!(judge::REALM));
    set("timeout_ms", json!(TIMEOUT_MS));
    set(
        "cache",
        json!({ "max_entries": 10000, "max_ttl_secs": MAX_TTL_SECS, "inactive_ttl_secs": 2 }),
    );
    if mode.alg != "none" {
        set("signed_response_alg", json!(mode.alg));
        set(
            "issuer",
            json!(format!("http://127.0.0.1:{as_port}/api/v2")),
        );
        if mode.alg != "HS256" {
            set("jwks_path", json!("/api/v2/jwks"));
        }
    }
    Value::Object(plugin)
}

/// The filter's default `max_token_length`, which the soak does not change.
const MAX_TOKEN_LENGTH: usize = 4096;

/// One mode: Envoy started for it, the population minted, the clients run, Envoy stopped.
fn run_mode(
    args: &Args,
    mode: &Mode,
    mock: &Server,
    sr_port: u16,
    duration: Duration,
    seed: u64,
) -> Result<(Counts, Vec<String>), String> {
    let dir = args.work_dir.join(mode.name);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let template = match &args.template {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        None => render::TEMPLATE.to_owned(),
    };
    let wasm = std::path::absolute(&args.wasm).map_err(|e| format!("--wasm: {e}"))?;
    let wasm = wasm.to_str().ok_or("--wasm: the path is not UTF-8")?;
    let plugin = plugin_config(mode, mock.port).to_string();
    let params = Params {
        admin_port: 0,
        listen_port: 0,
        sr_port,
        as_port: mock.port,
        wasm_path: wasm,
        plugin_config: &plugin,
    };
    let config = render::render(&template, &params, &[]).map_err(|e| e.to_string())?;
    let names = vec!["sr_ingress".to_owned()];
    let options = EnvoyOptions {
        command: services::envoy_command(args.envoy.as_deref()),
        concurrency: 2,
        log_level: "warning".to_owned(),
        component_log_level: None,
        env: Vec::new(),
        env_remove: vec!["INTROSPECTION_CLIENT_SECRET".to_owned()],
        die_with_parent: true,
    };
    let mut envoy = services::start_envoy(&dir, "envoy", &config, &names, &options, READY)?;
    let port = envoy
        .listeners
        .get("sr_ingress")
        .copied()
        .ok_or("Envoy has no sr_ingress listener")?;
    let admin_port = envoy.admin_port;

    let result = exercise(args, mode, mock.port, port, admin_port, duration, seed);
    let alive = envoy.proc.exited().is_none();
    envoy.proc.stop();
    let Exercised {
        population,
        mut counts,
        per_kind,
        before,
        after,
        stats: after_stats,
    } = result?;

    let log = envoy.proc.log_text();
    let log_failures = vm::failure_lines(&log);
    counts.vm_failures = vm::failures(before, after, log_failures);
    let mut problems = Vec::new();
    if !alive {
        problems.push(format!("{}: Envoy exited during the run", mode.name));
    }
    let leaked = population
        .token_values()
        .iter()
        .chain(std::iter::once(&mode.secret))
        .filter(|t| log.contains(t.as_str()))
        .count();
    if leaked > 0 {
        problems.push(format!(
            "{}: {leaked} tokens or secrets appear in Envoy's log ({})",
            mode.name,
            dir.join("envoy.log").display()
        ));
    }
    report(
        mode,
        duration,
        &counts,
        &per_kind,
        &after_stats,
        before,
        after,
        log_failures,
    );
    Ok((counts, problems))
}

/// What one mode's run gave.
struct Exercised {
    population: Population,
    counts: Counts,
    per_kind: PerKind,
    before: vm::Snapshot,
    after: vm::Snapshot,
    stats: BTreeMap<String, u64>,
}

/// Mints the population, warms up, runs the load; reads the wasm counters before and after.
fn exercise(
    args: &Args,
    mode: &Mode,
    as_port: u16,
    port: u16,
    admin_port: u16,
    duration: Duration,
    seed: u64,
) -> Result<Exercised, String> {
    let mut rng = Rng(seed);
    let population = mint_population(as_port, args.users, duration, &mut rng)?;
    warm_up(as_port, port, admin_port, mode)?;
    let before = vm::snapshot(&stats(admin_port, "^wasm")?);
    let (counts, per_kind) = load(args, &population, as_port, port, duration, rng.next())?;
    let stats = stats(admin_port, "^wasm")?;
    let after = vm::snapshot(&stats);
    Ok(Exercised {
        population,
        counts,
        per_kind,
        before,
        after,
        stats,
    })
}

fn admin_post(as_port: u16, path: &str, body: &Value) -> Result<Value, String> {
    let r = http::request(
        as_port,
        "POST",
        path,
        &[("content-type", b"application/json")],
        body.to_string().as_bytes(),
    )
    .map_err(|e| format!("mock-as {path}: {e}"))?;
    if r.status != 200 {
        return Err(format!("mock-as {path}: status {}", r.status));
    }
    r.parse_json().map_err(|e| format!("mock-as {path}: {e}"))
}

/// Mints a token; returns it with its sub and exp.
fn mint(as_port: u16, spec: &Value) -> Result<(String, String, i64), String> {
    let answer = admin_post(as_port, "/_mock/tokens", spec)?;
    let field = |name: &str| {
        answer
            .get(name)
            .cloned()
            .ok_or_else(|| format!("mock-as minted no {name}"))
    };
    let token = field("token")?.as_str().map(str::to_owned);
    let sub = field("sub")?.as_str().map(str::to_owned);
    let exp = field("exp")?.as_i64();
    match (token, sub, exp) {
        (Some(t), Some(s), Some(e)) => Ok((t, s, e)),
        _ => Err("mock-as minted an unexpected answer".to_owned()),
    }
}

fn mint_population(
    as_port: u16,
    users: usize,
    duration: Duration,
    rng: &mut Rng,
) -> Result<Population, String> {
    let users = users.max(10);
    let mut p = Population {
        users: Vec::with_capacity(users),
        tokens: Vec::new(),
        valid: Vec::new(),
        hot: Vec::new(),
        revoked: Vec::new(),
        expiring: Vec::new(),
        inactive: Vec::new(),
        revocations: Vec::new(),
        fresh: RwLock::new(Vec::new()),
    };
    let push = |p: &mut Population, value: String, owner: Option<String>, class: Class| {
        p.tokens.push(Token {
            value,
            owner,
            class,
        });
        p.tokens.len() - 1
    };
    // One token per user (the mock picks the sub), a second for every fourth user.
    for i in 0..users {
        let (token, sub, _) = mint(as_port, &json!({}))?;
        p.users.push(sub.clone());
        let idx = push(&mut p, token, Some(sub.clone()), Class::Valid);
        p.valid.push(idx);
        if i % 4 == 0 {
            let (token, _, _) = mint(as_port, &json!({ "sub": sub }))?;
            let idx = push(&mut p, token, Some(sub), Class::Valid);
            p.valid.push(idx);
        }
    }
    // A few hot tokens that every client sends.
    p.hot = p.valid.iter().take(6).copied().collect();
    let secs = duration.as_secs_f64();
    // Revoked mid-run: tokens of users who keep their other tokens.
    for _ in 0..(users / 6).max(5) {
        let sub = rng.pick(&p.users).cloned().unwrap_or_default();
        let (token, _, _) = mint(as_port, &json!({ "sub": sub }))?;
        let r = p.revocations.len();
        p.revocations.push(Revocation::default());
        let idx = push(&mut p, token, Some(sub), Class::Revoked(r));
        p.revoked.push(idx);
    }
    // Expiring mid-run: from 2 s after the start to 1 s before the end of the mode.
    let last = (secs - 1.0).max(3.0) as usize;
    for _ in 0..(users / 6).max(5) {
        let sub = rng.pick(&p.users).cloned().unwrap_or_default();
        let ttl = 2 + rng.below(last.saturating_sub(1));
        let (token, _, exp) = mint(as_port, &json!({ "sub": sub, "ttl_secs": ttl }))?;
        let idx = push(&mut p, token, Some(sub), Class::Expiring(exp));
        p.expiring.push(idx);
    }
    // Inactive from the start: refresh tokens, expired, revoked, never issued.
    for i in 0..40 {
        let sub = rng.pick(&p.users).cloned().unwrap_or_default();
        let token = match i % 4 {
            0 => mint(as_port, &json!({ "sub": sub, "kind": "refresh" }))?.0,
            1 => mint(as_port, &json!({ "sub": sub, "ttl_secs": -30 }))?.0,
            2 => {
                let (token, _, _) = mint(as_port, &json!({ "sub": sub }))?;
                admin_post(as_port, "/_mock/revoke", &json!({ "token": token }))?;
                token
            }
            _ => rng.token(43),
        };
        // Nobody's token as far as a 200 goes: none may pass.
        let idx = push(&mut p, token, None, Class::Inactive);
        p.inactive.push(idx);
    }
    Ok(p)
}

/// `name: value` counters of Envoy's `/stats` matching `filter` (a regex).
fn stats(admin_port: u16, filter: &str) -> Result<BTreeMap<String, u64>, String> {
    let r = http::get(admin_port, &format!("/stats?filter={filter}"))
        .map_err(|e| format!("Envoy /stats: {e}"))?;
    Ok(vm::parse_stats(&r.text()))
}

/// Before the clock starts: in signed mode, every JWKS fetch the mock served has reached a VM;
/// then fresh tokens pass, one after the other, on new connections (so on both workers).
fn warm_up(as_port: u16, port: u16, admin_port: u16, mode: &Mode) -> Result<(), String> {
    if mode.alg == "ES256" || mode.alg == "RS256" {
        let settled = wait_for(READY, || {
            let served = http::get(as_port, "/_mock/stats")
                .ok()?
                .parse_json()
                .ok()?
                .get("jwks_requests")?
                .as_u64()?;
            let s = stats(admin_port, "jwks").ok()?;
            let got = |n: &str| {
                s.get(&format!("wasmcustom.introspection.jwks.{n}"))
                    .copied()
            };
            let ok = got("fetch_ok").unwrap_or(0);
            let failed = got("fetch_failed").unwrap_or(0);
            (ok > 0 && served == ok + failed).then_some(())
        });
        settled.ok_or("the JWKS never reached the filter")?;
    }
    let mut in_a_row = 0;
    let mut last = String::new();
    let warmed = wait_for(READY, || {
        let passed = (|| {
            let (token, sub, _) = mint(as_port, &json!({}))?;
            let value = format!("Bearer {token}");
            let r = http::request(
                port,
                "GET",
                PATH,
                &[("authorization", value.as_bytes())],
                b"",
            )
            .map_err(|e| e.to_string())?;
            let seen = r
                .parse_json()
                .ok()
                .and_then(|v| v.get("sub").and_then(Value::as_str).map(str::to_owned));
            match (r.status, seen) {
                (200, Some(seen)) if seen == sub => Ok(()),
                (200, seen) => Err(format!("a 200 naming {seen:?} instead of its owner")),
                (status, _) => Err(format!("status {status}")),
            }
        })();
        match passed {
            Ok(()) => in_a_row += 1,
            Err(e) => {
                in_a_row = 0;
                last = e;
            }
        }
        (in_a_row >= WARM_UP_PASSES).then_some(())
    });
    warmed.ok_or_else(|| format!("fresh tokens never passed in a row (last: {last})"))
}

/// Sleeps until `deadline` in short steps, to pace scheduled actions (revocations, mints);
/// returns false if told to stop first. Not a synchronisation: nothing waits on it.
fn pace_until(deadline: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::SeqCst) || proc::interrupted() {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        thread::sleep((deadline - now).min(Duration::from_millis(50)));
    }
}

type PerKind = BTreeMap<(&'static str, u16), u64>;

/// Runs the clients, the revoker and the minter for `duration`.
fn load(
    args: &Args,
    population: &Population,
    as_port: u16,
    port: u16,
    duration: Duration,
    seed: u64,
) -> Result<(Counts, PerKind), String> {
    let tally = Tally::default();
    let stop = AtomicBool::new(false);
    let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let start = Instant::now();
    let end = start + duration;
    let window = u64::try_from(REVOKED_WINDOW.as_nanos()).unwrap_or(u64::MAX);
    let mut rng = Rng(seed);
    // Revocations at random moments, early enough that the end of each window is seen.
    let latest = duration.saturating_sub(REVOKED_WINDOW + Duration::from_secs(1));
    let earliest = duration / 10;
    let span = latest.saturating_sub(earliest).as_millis();
    let mut schedule: Vec<(Duration, usize)> = population
        .revoked
        .iter()
        .filter_map(|i| match population.tokens.get(*i)?.class {
            Class::Revoked(_) => {
                let offset = rng.below(usize::try_from(span).unwrap_or(0).max(1));
                let offset = Duration::from_millis(u64::try_from(offset).unwrap_or(0));
                Some((earliest + offset, *i))
            }
            _ => None,
        })
        .collect();
    schedule.sort();
    let seeds: Vec<u64> = (0..args.clients.max(1)).map(|_| rng.next()).collect();
    let minter_seed = rng.next();

    let per_kind = thread::scope(|s| {
        let clients: Vec<_> = seeds
            .iter()
            .map(|seed| {
                let (tally, stop) = (&tally, &stop);
                s.spawn(move || {
                    client_loop(
                        population,
                        port,
                        *seed,
                        end,
                        args.max_requests,
                        tally,
                        stop,
                        window,
                    )
                })
            })
            .collect();
        // Tokens minted during the run, one every 100 ms.
        let minter = {
            let (stop, errors) = (&stop, &errors);
            s.spawn(move || {
                let mut rng = Rng(minter_seed);
                let mut next = Instant::now();
                while next < end {
                    next += Duration::from_millis(100);
                    if !pace_until(next.min(end), stop) {
                        return;
                    }
                    let sub = rng.pick(&population.users).cloned().unwrap_or_default();
                    match mint(as_port, &json!({ "sub": sub })) {
                        Ok((token, sub, _)) => {
                            if let Ok(mut fresh) = population.fresh.write() {
                                fresh.push((token, sub));
                            }
                        }
                        Err(e) => {
                            if let Ok(mut errors) = errors.lock() {
                                errors.push(e);
                            }
                            stop.store(true, Ordering::SeqCst);
                            return;
                        }
                    }
                }
            })
        };
        // This thread revokes.
        for (offset, i) in &schedule {
            if !pace_until(start + *offset, &stop) {
                break;
            }
            let Some(token) = population.tokens.get(*i) else {
                continue;
            };
            let Class::Revoked(r) = token.class else {
                continue;
            };
            let Some(times) = population.revocations.get(r) else {
                continue;
            };
            times.sent.store(now_ns(), Ordering::SeqCst);
            let answer = admin_post(as_port, "/_mock/revoke", &json!({ "token": token.value }));
            match answer {
                Ok(v) if v.get("revoked") == Some(&Value::Bool(true)) => {
                    times.acked.store(now_ns(), Ordering::SeqCst);
                }
                other => {
                    let e = other
                        .err()
                        .unwrap_or_else(|| "the mock did not know a token to revoke".to_owned());
                    if let Ok(mut errors) = errors.lock() {
                        errors.push(e);
                    }
                    stop.store(true, Ordering::SeqCst);
                    break;
                }
            }
        }
        let _ = minter.join();
        let mut per_kind = PerKind::new();
        for c in clients {
            if let Ok(counts) = c.join() {
                for (k, n) in counts {
                    *per_kind.entry(k).or_default() += n;
                }
            }
        }
        per_kind
    });
    let errors = errors.into_inner().unwrap_or_default();
    if let Some(e) = errors.first() {
        return Err(format!("during the run: {e}"));
    }
    if proc::interrupted() {
        return Err("interrupted".to_owned());
    }
    Ok((
        Counts {
            requests: tally.requests.load(Ordering::SeqCst),
            mismatches: tally.mismatches.load(Ordering::SeqCst),
            unexpected: tally.unexpected.load(Ordering::SeqCst),
            vm_failures: 0,
            late_passes: tally.late_passes.load(Ordering::SeqCst),
        },
        per_kind,
    ))
}

/// The SR's view of a 200: the sub and every identity header value it saw.
fn answer_of(reply: &client::Reply) -> Answer {
    let mut answer = Answer {
        status: Some(reply.status),
        challenge: reply.header("www-authenticate").map(str::to_owned),
        ..Answer::default()
    };
    if reply.status == 200 {
        if let Ok(body) = serde_json::from_slice::<Value>(&reply.body) {
            answer.sub = body.get("sub").and_then(Value::as_str).map(str::to_owned);
            if let Some(headers) = body.get("identity_headers").and_then(Value::as_object) {
                answer.identities = headers
                    .values()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect();
            }
        }
    }
    answer
}

#[allow(clippy::too_many_arguments)]
fn client_loop(
    population: &Population,
    port: u16,
    seed: u64,
    end: Instant,
    max_requests: u64,
    tally: &Tally,
    stop: &AtomicBool,
    window: u64,
) -> BTreeMap<(&'static str, u16), u64> {
    let mut rng = Rng(seed);
    let mut client = Client::new(port, REQUEST_TIMEOUT);
    let mut per_kind = BTreeMap::new();
    while Instant::now() < end && !stop.load(Ordering::SeqCst) && !proc::interrupted() {
        if tally.issued.fetch_add(1, Ordering::SeqCst) >= max_requests {
            break;
        }
        let request = population.request(&mut rng, MAX_TOKEN_LENGTH);
        let headers: Vec<(&str, &[u8])> = request
            .headers
            .iter()
            .map(|(n, v)| (*n, v.as_slice()))
            .collect();
        let started = now_ns();
        let reply = client.get(PATH, &headers);
        let ended = now_ns();
        let kind = match request.revocation {
            // What was known of the revocation once the answer was in.
            Some(r) => population
                .revocations
                .get(r)
                .map_or(request.kind, Revocation::read),
            None => request.kind,
        };
        let expect = judge::expect(kind, started, ended, window);
        let (answer, error) = match &reply {
            Ok(r) => (answer_of(r), None),
            Err(e) => (Answer::default(), Some(e.to_string())),
        };
        let verdict = judge::judge(
            expect,
            request.owner.as_deref(),
            request.forged.as_deref(),
            &answer,
        );
        tally.requests.fetch_add(1, Ordering::SeqCst);
        if let (
            Kind::Revoked {
                acked: Some(acked), ..
            },
            Verdict::Ok,
            Some(200),
        ) = (kind, verdict, answer.status)
        {
            if started > acked.saturating_add(MAX_TTL_SECS * 1_000_000_000) {
                tally.late_passes.fetch_add(1, Ordering::SeqCst);
            }
        }
        *per_kind
            .entry((kind.label(), answer.status.unwrap_or(0)))
            .or_insert(0) += 1;
        let (counter, reported) = match verdict {
            Verdict::Ok => continue,
            Verdict::Mismatch => (&tally.mismatches, &tally.reported_mismatches),
            Verdict::Unexpected => (&tally.unexpected, &tally.reported_unexpected),
        };
        counter.fetch_add(1, Ordering::SeqCst);
        if reported.fetch_add(1, Ordering::SeqCst) < REPORTED {
            eprintln!(
                "soak: {}: {} token{} answered {} (challenge {:?}, sub seen {:?}, owner {:?}, forged header {}), expected {}{}",
                if verdict == Verdict::Mismatch { "MISMATCH" } else { "unexpected" },
                kind.label(),
                if request.forged.is_some() { " with a forged identity" } else { "" },
                answer.status.map_or("nothing".to_owned(), |s| s.to_string()),
                answer.challenge,
                answer.sub,
                request.owner,
                request.forged.is_some(),
                describe(expect),
                error.map(|e| format!(" ({e})")).unwrap_or_default(),
            );
        }
    }
    per_kind
}

fn describe(expect: Expect) -> String {
    match expect {
        Expect::Pass => "200 naming the owner".to_owned(),
        Expect::Refuse(r) => r.name().to_owned(),
        Expect::Either(r) => format!("200 naming the owner or {}", r.name()),
    }
}

#[allow(clippy::too_many_arguments)]
fn report(
    mode: &Mode,
    duration: Duration,
    counts: &Counts,
    per_kind: &PerKind,
    stats: &BTreeMap<String, u64>,
    before: vm::Snapshot,
    after: vm::Snapshot,
    log_failures: u64,
) {
    let rate = counts.requests as f64 / duration.as_secs_f64();
    eprintln!(
        "soak ({}, {}): {} requests in {} s ({rate:.0}/s), {} mismatches, {} unexpected statuses, {} vm failures",
        mode.name,
        mode.alg,
        counts.requests,
        duration.as_secs(),
        counts.mismatches,
        counts.unexpected,
        counts.vm_failures
    );
    let mut line = String::new();
    let mut current = "";
    for ((kind, status), n) in per_kind {
        if *kind != current {
            line.push_str(if current.is_empty() { "  " } else { "; " });
            line.push_str(kind);
            current = kind;
        }
        let status = if *status == 0 {
            "none".to_owned()
        } else {
            status.to_string()
        };
        line.push_str(&format!(" {status}×{n}"));
    }
    eprintln!("{line}");
    eprintln!(
        "  revoked tokens that passed more than {} s after the server acknowledged (allowed up to {} ms): {}",
        MAX_TTL_SECS,
        REVOKED_WINDOW.as_millis(),
        counts.late_passes
    );
    let metric = |name: &str| {
        stats
            .get(&format!("wasmcustom.introspection.{name}"))
            .copied()
            .unwrap_or(0)
    };
    eprintln!(
        "  filter: allowed {}, denied missing {} malformed {} inactive {} unavailable {}; cache hit {} miss {}; callouts {} (coalesced {}, failed {})",
        metric("allowed"),
        metric("denied.missing"),
        metric("denied.malformed"),
        metric("denied.inactive"),
        metric("denied.unavailable"),
        metric("cache.hit"),
        metric("cache.miss"),
        metric("callout.sent"),
        metric("callout.coalesced"),
        metric("callout.failed"),
    );
    eprintln!(
        "  wasm: VM reload events {} -> {}, VMs created {} -> {}, failure lines in the log {}",
        before.reload_events, after.reload_events, before.created, after.created, log_failures
    );
}
