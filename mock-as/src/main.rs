//! `mock-as`: a ProConnect-like authorization server (node-oidc-provider on the wire) for
//! tests, the demo and benchmarks. See the README for the CLI, endpoints and admin API.

mod admin;
mod answer;
mod clients;
mod jws;
mod keys;
mod oauthsd;
mod routes;
mod store;
#[cfg(test)]
mod testing;
mod util;
mod wire;

use clap::Parser;
use clients::{parse_client_arg, parse_clients_json, Client, Clients};
use keys::{KeyPair, KeySet};
use routes::AppState;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long in-flight requests (e.g. delayed introspections) may run after a stop signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A ProConnect-like authorization server for tests.
#[derive(Debug, Parser)]
#[command(name = "mock-as", version, about)]
struct Cli {
    /// Address to listen on (port 0: the OS picks one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Write the bound port (digits only) to this file, atomically, once ready.
    #[arg(long)]
    port_file: Option<PathBuf>,
    /// Which server to imitate: `proconnect` (endpoints under /api/v2, ProConnect's answers)
    /// or `oauthsd` (endpoints at the root: /introspect, /keys, /revoke; OAuthSD's answers).
    #[arg(long, value_enum, default_value_t = Profile::Proconnect)]
    profile: Profile,
    /// Issuer URL [default: http://127.0.0.1:PORT/api/v2, or http://127.0.0.1:PORT for oauthsd].
    #[arg(long)]
    issuer: Option<String>,
    /// A resource-server client, ID:SECRET[:ALG] with ALG none|RS256|ES256|HS256
    /// (its introspection_signed_response_alg; default none). Repeatable.
    #[arg(long = "client", value_name = "ID:SECRET[:ALG]", value_parser = parse_client_arg)]
    clients: Vec<Client>,
    /// JSON file: [{"client_id":..,"client_secret":..,"introspection_signed_response_alg":..}].
    #[arg(long)]
    clients_file: Option<PathBuf>,
    /// client_id reported in introspection answers (the FS that obtained the tokens).
    #[arg(long, default_value = "fs-demo")]
    fs_client_id: String,
    /// Do not log each request to stderr (for benchmarks).
    #[arg(long)]
    quiet: bool,
    /// Keep no per-token request bookkeeping (`/_mock/count` and `/_mock/last-request` then
    /// report nothing): memory stays flat under millions of distinct tokens (benchmarks).
    #[arg(long)]
    no_bookkeeping: bool,
}

/// The authorization server imitated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Profile {
    /// ProConnect (node-oidc-provider): everything under `/api/v2`.
    Proconnect,
    /// OAuthSD: endpoints at the root, storage-row introspection answers.
    Oauthsd,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mock-as: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "mock-as: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The clients from the command line and the clients file, or the default `sr-demo`.
fn gather_clients(cli: &Cli) -> Result<Clients, String> {
    let mut list = Vec::new();
    if let Some(path) = &cli.clients_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        list.extend(parse_clients_json(&text)?);
    }
    list.extend(cli.clients.iter().cloned());
    if list.is_empty() {
        list.push(Client {
            client_id: "sr-demo".to_owned(),
            client_secret: "sr-demo-secret".to_owned(),
            introspection_signed_response_alg: clients::SigAlg::None,
        });
    }
    Ok(Clients::new(list))
}

/// The address to advertise: loopback when bound to the unspecified address.
fn public_addr(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

/// Writes `contents` to `path` through a temporary file and a rename.
fn write_atomically(path: &Path, contents: &str) -> Result<(), String> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, contents).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot rename to {}: {e}", path.display()))
}

async fn run(cli: Cli) -> Result<(), String> {
    let started = Instant::now();
    let clients = gather_clients(&cli)?;
    let keygen = tokio::task::spawn_blocking(KeyPair::generate);
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cli.listen))?;
    let addr = public_addr(
        listener
            .local_addr()
            .map_err(|e| format!("local address: {e}"))?,
    );
    let keys = keygen
        .await
        .map_err(|e| format!("key generation task: {e}"))??;
    let issuer = cli.issuer.clone().unwrap_or_else(|| match cli.profile {
        Profile::Proconnect => format!("http://{addr}/api/v2"),
        Profile::Oauthsd => format!("http://{addr}"),
    });
    let mut state = AppState::new(&issuer, &cli.fs_client_id, clients, KeySet::new(keys));
    if cli.no_bookkeeping {
        state = state.without_bookkeeping();
    }
    let state = Arc::new(state);
    let app = match cli.profile {
        Profile::Proconnect => routes::router(state.clone(), !cli.quiet),
        Profile::Oauthsd => oauthsd::router(state.clone(), !cli.quiet),
    };

    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "mock-as listening on http://{addr}")
            .and_then(|()| stdout.flush())
            .map_err(|e| format!("stdout: {e}"))?;
    }
    if let Some(path) = &cli.port_file {
        write_atomically(path, &addr.port().to_string())?;
    }
    let _ = writeln!(
        std::io::stderr().lock(),
        "mock-as: profile {:?}, issuer {}, clients {}, fs client_id {}, ready in {} ms",
        cli.profile,
        state.issuer,
        state.clients.summary(),
        state.fs_client_id,
        started.elapsed().as_millis()
    );

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let stopping = state.clone();
    // Connections that the `truncated` and `reset` tampers can take over (wire.rs).
    let service = app.into_make_service_with_connect_info::<wire::Takeover>();
    let server =
        axum::serve(wire::WireListener(listener), service).with_graceful_shutdown(async move {
            stop_signal().await;
            // Held answers go, so the shutdown does not wait for a release that will not come.
            stopping.set_hold(false);
            let _ = stop_tx.send(true);
        });
    let grace = async move {
        if stop_rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        result = server => result.map_err(|e| format!("server: {e}")),
        () = grace => Ok(()),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn stop_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn cli_parsing_and_default_client() {
        let cli = Cli::try_parse_from(["mock-as"]).unwrap();
        assert_eq!(cli.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(cli.fs_client_id, "fs-demo");
        assert_eq!(cli.profile, Profile::Proconnect);
        let cli = Cli::try_parse_from(["mock-as", "--profile", "oauthsd"]).unwrap();
        assert_eq!(cli.profile, Profile::Oauthsd);
        assert!(Cli::try_parse_from(["mock-as", "--profile", "keycloak"]).is_err());
        let cli = Cli::try_parse_from(["mock-as"]).unwrap();
        let clients = gather_clients(&cli).unwrap();
        assert_eq!(clients.summary(), "sr-demo(none)");
        assert_eq!(
            clients.get("sr-demo").unwrap().client_secret,
            "sr-demo-secret"
        );

        let cli = Cli::try_parse_from([
            "mock-as",
            "--client",
            "a:x:RS256",
            "--client",
            "b:y",
            "--listen",
            "0.0.0.0:8080",
        ])
        .unwrap();
        let clients = gather_clients(&cli).unwrap();
        assert_eq!(clients.summary(), "a(RS256) b(none)");
        assert_eq!(
            clients.get("a").unwrap().introspection_signed_response_alg,
            clients::SigAlg::RS256
        );
        assert_eq!(
            public_addr(cli.listen).to_string(),
            "127.0.0.1:8080".to_owned()
        );
        assert!(Cli::try_parse_from(["mock-as", "--client", "nocolon"]).is_err());
    }

    #[test]
    fn port_file_is_written() {
        let dir = std::env::temp_dir().join(format!("mock-as-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("port");
        write_atomically(&path, "1234").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1234");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
