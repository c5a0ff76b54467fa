//! `locci-proxy`: run the proxy, check a config, or run the zero-set-up demo.
//!
//! `locci-proxy [--config FILE]` runs; `locci-proxy check --config FILE` validates; `locci-proxy demo`
//! starts the gateway in front of three built-in backends. Errors print one line and exit 1.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use locci_core::ValidConfig;
use locci_core::config::Mode;
use locci_proxy::config_file::{self, Overrides};
use locci_proxy::control::ControlService;
use locci_proxy::demo::{self, Backend};
use locci_proxy::server::signals::Signals;
use locci_proxy::{ConfigSource, Env, Proxy, build_proxy, logging};
use pingora_core::server::configuration::Opt;
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;

#[derive(Parser, Debug)]
#[command(name = "locci-proxy", version, about = "locci: load balancer and API gateway on Pingora")]
struct Cli {
    /// Config file.
    #[arg(long, short, global = true, default_value = "config.yaml")]
    config: PathBuf,
    /// Override the config's mode.
    #[arg(long, global = true, value_enum)]
    mode: Option<ModeArg>,
    /// Override server.bind_address.
    #[arg(long, global = true)]
    bind: Option<String>,
    /// Take over the listening sockets of a running instance (graceful binary upgrade).
    #[arg(long, global = true)]
    upgrade: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Load and validate the config, print a summary or every problem.
    Check,
    /// Run the gateway on 127.0.0.1:8484 in front of three built-in demo backends.
    Demo,
    /// Print how the config handles one request, without sending it (every server taken as up).
    Explain {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// A request header, written `Name: value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// The client address the proxy would see (rate limits by IP read it).
        #[arg(long, default_value = "127.0.0.1")]
        client_ip: std::net::IpAddr,
        /// The method.
        method: String,
        /// A path with an optional query, or an absolute URL (its host becomes the Host header).
        url: String,
    },
    /// Run one demo upstream server (for containers and tests): JSON echo, /health, /slow, /status/N.
    Upstream {
        /// Name it answers with.
        #[arg(long, default_value = "upstream")]
        name: String,
        /// Where it listens.
        #[arg(long = "listen", default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum ModeArg {
    Lb,
    Gateway,
}

// mimalloc: glibc malloc fragments under Pingora's per-request buffers and the proxy slows as it runs; with
// mimalloc it holds its rate (8 interleaved rounds, GUIDE §10).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // No backtrace ever reaches the user: a panic prints one line (and is a bug to report).
    std::panic::set_hook(Box::new(|info| {
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        tracing::error!(panic = %info, "internal error{at}");
        eprintln!("locci-proxy: internal error{at}");
    }));
    let cli = Cli::parse();
    // A .env file in the working directory is read first; a missing one is fine.
    let _ = dotenvy::dotenv();
    let overrides = Overrides {
        mode: cli.mode.map(|m| match m {
            ModeArg::Lb => Mode::LoadBalancer,
            ModeArg::Gateway => Mode::ApiGateway,
        }),
        bind: cli.bind.clone(),
    };
    match cli.command.as_ref().unwrap_or(&Command::Run) {
        Command::Check => check(&cli, &overrides),
        Command::Run => match config_file::load_file(&cli.config, &overrides) {
            Ok(valid) => {
                let source = ConfigSource { path: Some(cli.config.clone()), overrides: overrides.clone() };
                run(valid, source, cli.upgrade, Vec::new())
            }
            Err(errors) => {
                eprintln!("locci-proxy: invalid configuration {}:", cli.config.display());
                for line in errors.lines() {
                    eprintln!("  {line}");
                }
                ExitCode::FAILURE
            }
        },
        Command::Demo => run_demo(&overrides),
        Command::Explain { json, headers, client_ip, method, url } => {
            explain(&cli, &overrides, *json, headers, *client_ip, method, url)
        }
        Command::Upstream { name, listen } => run_upstream(name, *listen),
    }
}

fn check(cli: &Cli, overrides: &Overrides) -> ExitCode {
    match config_file::load_file(&cli.config, overrides) {
        Ok(valid) => {
            println!("{}: {}", cli.config.display(), valid.summary());
            ExitCode::SUCCESS
        }
        Err(errors) => problems(cli, &errors),
    }
}

/// Prints every problem of the config and fails.
fn problems(cli: &Cli, errors: &locci_core::ConfigErrors) -> ExitCode {
    eprintln!("{}: {} problem(s)", cli.config.display(), errors.0.len());
    for line in errors.lines() {
        eprintln!("  {line}");
    }
    ExitCode::FAILURE
}

fn explain(
    cli: &Cli,
    overrides: &Overrides,
    json: bool,
    headers: &[String],
    client_ip: std::net::IpAddr,
    method: &str,
    url: &str,
) -> ExitCode {
    let asked = match locci_proxy::explain::Asked::new(method, url, headers, Some(client_ip)) {
        Ok(asked) => asked,
        Err(e) => {
            eprintln!("locci-proxy explain: {e}");
            return ExitCode::from(2);
        }
    };
    let valid = match config_file::load_file(&cli.config, overrides) {
        Ok(valid) => valid,
        Err(errors) => return problems(cli, &errors),
    };
    use locci_core::clock::Clock as _;
    let clock = locci_core::clock::TokioClock::new();
    let now = locci_core::middleware::Now { mono: clock.now(), unix: clock.unix_now() };
    let runtime = locci_core::Runtime::build(valid, None, 1, clock.now());
    let explanation = asked.explain(&runtime, now);
    if json {
        match serde_json::to_string_pretty(&explanation) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("locci-proxy explain: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", locci_proxy::explain::text(&explanation));
    }
    ExitCode::SUCCESS
}

fn run_upstream(name: &str, listen: SocketAddr) -> ExitCode {
    let backend = match Backend::start(name, listen) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("locci-proxy: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("upstream {name} listening on {}", backend.addr);
    // Serve until SIGTERM or SIGINT (docker stop, Ctrl-C).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("locci-proxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else { return };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    });
    drop(backend);
    ExitCode::SUCCESS
}

fn run_demo(overrides: &Overrides) -> ExitCode {
    let bind = overrides.bind.clone().unwrap_or_else(|| "127.0.0.1:8484".into());
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let backends: Result<Vec<Backend>, _> =
        ["alpha", "beta", "gamma"].iter().map(|name| Backend::start(name, loopback)).collect();
    let backends = match backends {
        Ok(b) => b,
        Err(e) => {
            eprintln!("locci-proxy: cannot start demo backends: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let yaml = demo::config_yaml(&addrs, &bind, "127.0.0.1:8485");
    let valid = match config_file::load_text(&yaml, &Overrides { mode: None, bind: None }) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("locci-proxy: demo config invalid (a bug): {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "locci demo: gateway on http://{bind}, control API on http://127.0.0.1:8485, backends alpha/beta/gamma on {addrs:?}"
    );
    println!("try:");
    println!(
        "  curl -s http://{bind}/api/hello            # round robin over alpha, beta, gamma (prefix /api stripped)"
    );
    println!("  curl -s -i http://{bind}/api/hello | grep -i ratelimit   # rate-limit headers (20 burst, 600/min)");
    println!("  curl -s -i http://{bind}/slow?ms=200        # a slow upstream answer");
    println!(
        "  curl -s -i -X OPTIONS http://{bind}/api/x -H 'Origin: http://localhost:3000' -H 'Access-Control-Request-Method: GET'"
    );
    println!("  curl -s http://127.0.0.1:8485/api/v1/status  # the control API (no key in the demo)");
    println!("  curl -s http://127.0.0.1:8485/metrics");
    println!("press Ctrl-C to stop");
    run(valid, ConfigSource::default(), false, backends)
}

fn run(valid: ValidConfig, source: ConfigSource, upgrade: bool, keep_alive: Vec<Backend>) -> ExitCode {
    logging::init(&valid.config.logging);
    let bind = valid.config.server.bind_address.clone();
    let control = valid.config.control_api.clone();
    let control_addr: Option<SocketAddr> = control.enabled.then(|| control.bind_address.parse().ok()).flatten();
    // Pingora aborts on a bind failure deep inside its start-up; check first to say it in one line. A process
    // taking over with --upgrade receives the proxy socket, and waits for the control port to be freed.
    if !upgrade {
        for addr in std::iter::once(bind.clone()).chain(control_addr.map(|a| a.to_string())) {
            if let Err(e) = std::net::TcpListener::bind(&addr) {
                eprintln!("locci-proxy: cannot listen on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if control.enabled && control.api_key.is_none() {
        if control_addr.is_some_and(|a| !a.ip().is_loopback()) {
            tracing::error!(addr = %control.bind_address, "control API has no api_key and is not on loopback: anyone who reaches it can change the proxy");
        } else {
            tracing::warn!(addr = %control.bind_address, "control API has no api_key (local development only)");
        }
    }
    let grace = Duration::from_secs(valid.config.server.graceful_shutdown_timeout_secs);
    let tls = valid.config.server.tls.clone();
    let conf = locci_proxy::app::server_conf(&valid);
    let Proxy { shared, app, health } = match build_proxy(valid, Env::production(), source) {
        Ok(proxy) => proxy,
        Err(e) => {
            eprintln!("locci-proxy: cannot set up metrics: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut server = Server::new_with_opt_and_conf(Some(Opt { upgrade, ..Opt::default() }), conf);
    server.bootstrap();
    let mut proxy = Service::new("locci proxy".to_string(), app);
    match &tls {
        None => proxy.add_tcp(&bind),
        Some(tls) => {
            let settings = pingora_core::listeners::tls::TlsSettings::intermediate(&tls.cert_path, &tls.key_path);
            match settings {
                Ok(mut settings) => {
                    settings.enable_h2();
                    proxy.add_tls_with_settings(&bind, None, settings);
                }
                Err(e) => {
                    eprintln!("locci-proxy: cannot load TLS certificate: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    server.add_service(proxy);
    server.add_service(background_service("health checks", health));
    if let Some(addr) = control_addr {
        server.add_service(background_service("control api", ControlService::new(Arc::clone(&shared), addr, upgrade)));
    }
    tracing::info!(bind = %bind, mode = shared.runtime().mode().short(), "locci-proxy started");
    server.run(RunArgs { shutdown_signal: Box::new(Signals::new(Arc::clone(&shared), grace)) });
    drop(keep_alive);
    ExitCode::SUCCESS
}
