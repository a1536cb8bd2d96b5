//! `sample-sr`: the sample resource server behind Envoy and the introspection filter.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use axum::http::HeaderName;
use clap::Parser;
use sample_sr::{app, Config, DEFAULT_SUB_HEADER};
use tokio::net::TcpListener;

/// Sample ProConnect resource server. Trusts only the identity headers set by the
/// Envoy introspection filter: it must only be reachable through Envoy.
#[derive(Debug, Parser)]
#[command(name = "sample-sr", version, about)]
struct Cli {
    /// Address to listen on (port 0: the OS chooses one).
    #[arg(long, env = "SR_LISTEN", default_value = "127.0.0.1:0")]
    listen: String,

    /// After binding, write the port number to this file (atomically).
    #[arg(long, value_name = "PATH")]
    port_file: Option<PathBuf>,

    /// Header carrying the user's `sub`, set by the filter.
    #[arg(long, env = "SR_SUB_HEADER", default_value = DEFAULT_SUB_HEADER, value_parser = header_name)]
    sub_header: String,

    /// Prefix of the identity headers echoed by /api/users/me (repeatable).
    #[arg(long = "identity-prefix", value_name = "PREFIX", default_values_t = ["x-user-".to_owned(), "x-token-".to_owned()], value_parser = header_name)]
    identity_prefixes: Vec<String>,
}

/// Accepts a (lowercased) valid HTTP header name, or prefix of one.
fn header_name(value: &str) -> Result<String, String> {
    let lower = value.trim().to_ascii_lowercase();
    HeaderName::from_bytes(lower.as_bytes())
        .map(|_| lower)
        .map_err(|_| format!("not a valid header name: {value:?}"))
}

/// Writes `port` to `path` through a temporary file in the same directory and a
/// rename, so that a reader never sees a partial file.
fn write_port_file(path: &Path, port: u16) -> std::io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = std::fs::write(&tmp, port.to_string()).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            eprintln!("sample-sr: cannot listen for SIGINT: {e}");
            std::future::pending::<()>().await;
        }
    };

    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                eprintln!("sample-sr: cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    eprintln!("sample-sr: shutting down");
}

async fn run(cli: Cli) -> Result<(), String> {
    let config = Config::new(&cli.sub_header, &cli.identity_prefixes);

    let listener = TcpListener::bind(&cli.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cli.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;

    if let Some(path) = &cli.port_file {
        write_port_file(path, addr.port())
            .map_err(|e| format!("cannot write port file {}: {e}", path.display()))?;
    }

    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "sample-sr listening on http://{addr}")
            .and_then(|()| stdout.flush())
            .map_err(|e| format!("cannot write to stdout: {e}"))?;
    }

    axum::serve(listener, app(config))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| format!("server error: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sample-sr: {e}");
            ExitCode::FAILURE
        }
    }
}
