//! The production template (envoy/proconnect.yaml.in) running for real: rendered with
//! scripts/fill-template.sh as the README says, with one change only — the `proconnect` cluster
//! speaks plain HTTP to a local stand-in for ProConnect instead of TLS to the real one. The
//! stand-in is the mock authorization server behind a TCP relay that can cut requests before
//! any answer, as a server closing a pooled connection does.
//!
//! What it shows: the callout is retried once when cut before any answer, never twice, never
//! after an answer; the edge settings keep forged identities and path tricks away from the SR;
//! the access log carries the request id and Envoy's response code details; the metrics
//! listener serves the metrics and nothing else.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use e2e::deploy::{fill_template, production_vars};
use e2e::{assert_denied, fresh_secret, Envoy, MockAs, ResponseExt, SampleSr, CLIENT_ID};
use serde_json::{json, Value as Json};
use serde_yaml::Value as Yaml;
use stack::http;

const HOST: &str = "fca.integ01.dev-agentconnect.fr";
const SUB: &str = "7396c91e-b9f2-4f9d-8547-5e9b3332725b";

/// A TCP relay to `upstream` that cuts the next `cut_next` requests: it reads their first
/// bytes, then closes both sides without forwarding anything.
struct Relay {
    port: u16,
    to_cut: Arc<AtomicU32>,
    cut: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Relay {
    fn start(upstream: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let port = listener.local_addr().expect("relay address").port();
        let to_cut = Arc::new(AtomicU32::new(0));
        let cut = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (to_cut2, cut2, stop2) = (to_cut.clone(), cut.clone(), stop.clone());
        let accept = thread::spawn(move || {
            for client in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (to_cut, cut) = (to_cut2.clone(), cut2.clone());
                thread::spawn(move || relay(client, server, &to_cut, &cut));
            }
        });
        Relay {
            port,
            to_cut,
            cut,
            stop,
            accept: Some(accept),
        }
    }

    fn cut_next(&self, n: u32) {
        self.to_cut.store(n, Ordering::SeqCst);
    }

    fn cut_so_far(&self) -> u32 {
        self.cut.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(handle) = self.accept.take() {
            let _ = handle.join();
        }
    }
}

fn relay(mut client: TcpStream, mut server: TcpStream, to_cut: &AtomicU32, cut: &AtomicU32) {
    let (Ok(mut client_w), Ok(mut server_r)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let back = thread::spawn(move || {
        let _ = std::io::copy(&mut server_r, &mut client_w);
        let _ = client_w.shutdown(Shutdown::Write);
    });
    let mut buf = [0u8; 16384];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let cut_this = to_cut
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok();
        if cut_this {
            cut.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
            break;
        }
        if server.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = server.shutdown(Shutdown::Write);
    let _ = back.join();
}

struct Production {
    auth: MockAs,
    sr: SampleSr,
    relay: Relay,
    envoy: Envoy,
    secrets: Vec<String>,
}

impl Production {
    fn start(label: &str) -> Production {
        let dir = e2e::work_dir(label);
        let secret = fresh_secret("production-secret");
        let auth = MockAs::start(
            &dir,
            &[
                "--client".to_string(),
                format!("{CLIENT_ID}:{secret}"),
                "--issuer".to_string(),
                format!("https://{HOST}/api/v2"),
            ],
        );
        let sr = SampleSr::start(&dir);
        let relay = Relay::start(auth.port);
        let wasm = e2e::wasm_path().display().to_string();
        let sr_port = sr.port.to_string();
        // The metrics listener forwards to the admin port, so that port must be known before
        // Envoy starts: ask the OS for a free one.
        let admin_port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
            .to_string();
        let mut vars = production_vars(HOST, &wasm, &sr_port);
        vars.retain(|(k, _)| *k != "ADMIN_PORT");
        vars.push(("ADMIN_PORT", &admin_port));
        let rendered = fill_template("envoy/proconnect.yaml.in", &vars)
            .unwrap_or_else(|e| panic!("render: {e}"));
        let mut doc: Yaml = serde_yaml::from_str(&rendered).expect("YAML");
        // The only change: plain HTTP to the relay instead of TLS to ProConnect.
        let clusters = doc["static_resources"]["clusters"]
            .as_sequence_mut()
            .expect("clusters");
        let proconnect = clusters
            .iter_mut()
            .find(|c| c["name"].as_str() == Some("proconnect"))
            .expect("cluster proconnect")
            .as_mapping_mut()
            .expect("mapping");
        for key in ["transport_socket", "dns_lookup_family", "respect_dns_ttl"] {
            proconnect.remove(key);
        }
        proconnect.insert("type".into(), "STATIC".into());
        let endpoint: Yaml = serde_yaml::from_str(&format!(
            "{{ cluster_name: proconnect, endpoints: [ {{ lb_endpoints: [ {{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }} }} ] }} ] }}",
            relay.port
        ))
        .expect("endpoint YAML");
        proconnect.insert("load_assignment".into(), endpoint);
        let yaml = serde_yaml::to_string(&doc).expect("YAML out");
        let envoy = Envoy::start_with_env(
            &dir,
            &yaml,
            &[("INTROSPECTION_CLIENT_SECRET", secret.as_str())],
        )
        .unwrap_or_else(|log| panic!("the production template did not start:\n{log}"));
        Production {
            auth,
            sr,
            relay,
            envoy,
            secrets: vec![secret],
        }
    }

    fn token(&mut self, spec: Json) -> String {
        let token = self.auth.admin("/_mock/tokens", spec)["token"]
            .as_str()
            .expect("token")
            .to_string();
        self.secrets.push(token.clone());
        token
    }

    fn get(&self, path: &str, headers: &[(&str, &[u8])]) -> http::Response {
        http::request(self.envoy.port, "GET", path, headers, b"")
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    fn get_with_token(&self, path: &str, token: &str) -> http::Response {
        let auth = format!("Bearer {token}");
        self.get(path, &[("authorization", auth.as_bytes())])
    }

    fn retries(&self) -> u64 {
        self.envoy.stat("cluster.proconnect.upstream_rq_retry")
    }

    fn sr_requests(&self) -> u64 {
        self.envoy.stat("cluster.sr.upstream_rq_total")
    }

    /// Waits (bounded) for Envoy's stdout access log to contain a line with all of `needles`.
    fn log_line_with(&self, needles: &[&str]) -> Json {
        let found = stack::proc::wait_for(Duration::from_secs(20), || {
            let log = self.envoy.proc.log_text();
            let line = log
                .lines()
                .find(|l| l.starts_with('{') && needles.iter().all(|n| l.contains(n)))?
                .to_string();
            Some(line)
        });
        let Some(line) = found else {
            panic!(
                "no access log line with {needles:?}:\n{}",
                self.envoy.proc.log_text()
            );
        };
        serde_json::from_str(&line).expect("access log line is JSON")
    }
}

impl Drop for Production {
    fn drop(&mut self) {
        if !thread::panicking() {
            let log = self.envoy.proc.log_text();
            for s in &self.secrets {
                assert!(
                    !log.contains(s.as_str()),
                    "a token or secret is in Envoy's log"
                );
            }
        }
    }
}

#[test]
fn a_callout_cut_before_any_answer_is_retried_once_and_an_answer_never() {
    let mut p = Production::start("prod-retry");

    let token = p.token(json!({ "sub": SUB }));
    let r = p.get_with_token("/api/users/me", &token);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["sub"], SUB);
    assert_eq!(p.retries(), 0);

    // Cut once (the connection closes before any answer): the retry gets the answer.
    p.relay.cut_next(1);
    let token = p.token(json!({ "sub": SUB }));
    let r = p.get_with_token("/api/users/me", &token);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(p.relay.cut_so_far(), 1);
    assert_eq!(p.retries(), 1);
    assert_eq!(
        p.auth.introspections(&token),
        1,
        "only the retry reached the server"
    );

    // Cut twice: one retry only, then the filter fails closed.
    p.relay.cut_next(2);
    let token = p.token(json!({ "sub": SUB }));
    let r = p.get_with_token("/api/users/me", &token);
    assert_denied(&r, 503, None);
    assert_eq!(p.relay.cut_so_far(), 3);
    assert_eq!(p.retries(), 2);
    assert_eq!(
        p.envoy
            .stat("cluster.proconnect.upstream_rq_retry_limit_exceeded"),
        1
    );
    assert_eq!(p.auth.introspections(&token), 0);

    // An answer, even a 500, is never retried.
    let token = p.token(json!({ "sub": SUB, "tamper": "status_500" }));
    let r = p.get_with_token("/api/users/me", &token);
    assert_denied(&r, 503, None);
    assert_eq!(p.auth.introspections(&token), 1);
    assert_eq!(p.retries(), 2);

    // The egress access log shows the callouts and their tries, without the body.
    let line = p.log_line_with(&["\"callout\"", "\"attempts\":2", "\"status\":200"]);
    assert_eq!(line["callout"], "POST /api/v2/token/introspection");
}

#[test]
fn forged_identities_and_path_tricks_never_reach_the_sr() {
    let mut p = Production::start("prod-edge");
    let token = p.token(json!({ "sub": SUB }));
    let bearer = format!("Bearer {token}");

    // /healthz needs no token.
    let r = p.get("/healthz", &[]);
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    // `//healthz` is `/healthz` once slashes are merged.
    assert_eq!(p.get("//healthz", &[]).status, 200);

    // Any header spelled with `_` is refused before any filter runs, on every path.
    let before = p.sr_requests();
    for path in ["/healthz", "/api/users/me"] {
        let r = p.get(
            path,
            &[
                ("authorization", bearer.as_bytes()),
                ("x_user_sub", b"attacker"),
            ],
        );
        assert_eq!(r.status, 400, "{path}: {}", r.text());
    }
    assert_eq!(p.sr_requests(), before);
    assert_eq!(p.auth.introspections(&token), 0);

    // A path that leaves /healthz is judged as the path it resolves to: the filter's 401.
    for path in [
        "/healthz/../api/users/me",
        "/healthz/./../api/users/locations",
    ] {
        let r = p.get(path, &[]);
        assert_denied(&r, 401, Some("Bearer realm=\"api\""));
    }
    // Escaped slashes are refused outright.
    for path in ["/healthz%2F..%2Fapi/users/me", "/api%2fusers/me"] {
        assert_eq!(p.get(path, &[]).status, 400, "{path}");
    }
    assert_eq!(p.sr_requests(), before);

    // A normal request: the SR sees the user; the answer carries the request id, which the
    // access log shows with Envoy's response code details.
    let r = p.get("/api/users/me", &[("authorization", bearer.as_bytes())]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["identity_headers"]["x-user-sub"], SUB);
    let passed_id = r.header("x-request-id").expect("x-request-id").to_string();
    // A local answer from the filter.
    let r = p.get("/api/users/me?access_token=in-the-query", &[]);
    assert_eq!(r.status, 401);
    let denied_id = r.header("x-request-id").expect("x-request-id").to_string();

    // The metrics listener serves /stats/prometheus and nothing else of the admin interface.
    let listeners = http::request(
        p.envoy.admin_port,
        "GET",
        "/listeners?format=json",
        &[],
        b"",
    )
    .expect("listeners")
    .json();
    let metrics_port = listeners["listener_statuses"]
        .as_array()
        .expect("listener_statuses")
        .iter()
        .find(|l| l["name"] == "metrics")
        .and_then(|l| l["local_address"]["socket_address"]["port_value"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .expect("metrics listener port");
    let r = http::request(metrics_port, "GET", "/stats/prometheus", &[], b"").expect("scrape");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("introspection_allowed"));
    for path in ["/", "/config_dump", "/stats", "/quitquitquit"] {
        let r = http::request(metrics_port, "GET", path, &[], b"").expect("metrics listener");
        assert_eq!(r.status, 404, "{path}");
    }

    // The access log (flushed by Envoy every 10 s by default): the request id, Envoy's
    // response code details, the path without its query.
    let line = p.log_line_with(&[&passed_id]);
    assert_eq!(line["status"], 200);
    assert_eq!(line["response_code_details"], "via_upstream");
    assert_eq!(line["path"], "/api/users/me");
    let line = p.log_line_with(&[&denied_id]);
    assert_eq!(line["status"], 401);
    assert_eq!(line["path"], "/api/users/me");
    // Whatever details the filter gives its local answers (none yet: an empty string).
    let details = line["response_code_details"].as_str().expect("details");
    assert_ne!(details, "via_upstream", "{line}");
    assert!(!p.envoy.proc.log_text().contains("in-the-query"));
    let _ = &p.sr;
}
