//! `locci-loadgen URL [--rate R | --concurrency C] --duration 30s [--warmup 5s] [-H 'Name: value']...
//! [--method M] [--body FILE] [--json FILE]`: see the crate docs and GUIDE.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use locci_loadgen::threshold::Threshold;
use locci_loadgen::{Options, Pace};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

// mimalloc: hyper allocates a few small blocks per request (request and response header maps, the body
// channel), and the generator must not be the bottleneck (GUIDE §10).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "locci-loadgen", version, about = "HTTP/1.1 load generator (closed or open loop, HDR latency)")]
struct Cli {
    /// Target URL (http[s]://host:port/path); with --scenario, where its requests go (or give --target).
    url: Option<String>,
    /// With --scenario: the target's scheme and authority (its requests carry their own paths).
    #[arg(long)]
    target: Option<String>,
    /// Play the load: section of a simulator scenario (its request classes, rate or stages, arrival) against
    /// the target; stages set the run's length.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Seed for the scenario's mix and arrivals.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Open loop: requests per second, latency from the intended send time.
    #[arg(long, conflicts_with = "concurrency")]
    rate: Option<f64>,
    /// Closed loop: connections each sending when the previous answer is in (default 16).
    #[arg(long, short)]
    concurrency: Option<usize>,
    /// Open loop: connections to send over (default 64).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Measured time.
    #[arg(long, short, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured warm-up before it.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Extra header, `Name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Method.
    #[arg(long, short, default_value = "GET")]
    method: String,
    /// File whose content is the request body.
    #[arg(long)]
    body: Option<PathBuf>,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Worker threads (default: cores).
    #[arg(long)]
    threads: Option<usize>,
    /// https://: trust the certificates in this PEM file instead of the system's roots.
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// https://: do not verify the server's certificate at all (says so on stderr).
    #[arg(long)]
    insecure: bool,
    /// HTTP/2: h2 by ALPN for https://, h2c with prior knowledge for http://.
    #[arg(long)]
    http2: bool,
    /// Draw requests/s, errors and p50/p99 per second over the run: FILE.svg, or FILE.html (the picture and
    /// the numbers).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Pass/fail judgement after the run, e.g. 'p99<200ms', 'errors<0.1%', 'rps>500', 'status:503<1%'
    /// (repeatable); any that fails makes the exit code 1.
    #[arg(long = "threshold")]
    thresholds: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let thresholds: Result<Vec<Threshold>, _> = cli.thresholds.iter().map(|t| t.parse()).collect();
    match (options(&cli), thresholds) {
        (Ok(opts), Ok(thresholds)) => execute(&cli, opts, &thresholds),
        (Err(e), _) => {
            eprintln!("locci-loadgen: {e}");
            ExitCode::from(2)
        }
        (_, Err(e)) => {
            eprintln!("locci-loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

fn options(cli: &Cli) -> anyhow::Result<Options> {
    let text = match (&cli.scenario, &cli.target, &cli.url) {
        (Some(_), Some(t), _) | (Some(_), None, Some(t)) | (None, None, Some(t)) => t,
        (Some(_), None, None) => anyhow::bail!("--scenario needs --target URL"),
        (None, Some(_), _) => anyhow::bail!("--target goes with --scenario (give the URL itself otherwise)"),
        (None, None, None) => anyhow::bail!("give the target URL"),
    };
    let url: http::Uri = text.parse().map_err(|e| anyhow::anyhow!("bad URL {text:?}: {e}"))?;
    // With a scenario, its stages set the run's length (else --duration does), from its start.
    let (scenario, duration) = match &cli.scenario {
        Some(path) => {
            if cli.concurrency.is_some() {
                anyhow::bail!("--scenario runs an open loop at its own rate: --concurrency does not apply");
            }
            let load = locci_scenario::load_section(path, locci_loadgen::MAX_RATE)
                .map_err(|p| anyhow::anyhow!("bad scenario {}: {}", path.display(), p.join("; ")))?;
            let duration = load.start + load.staged_length().unwrap_or(cli.duration);
            let slots = locci_scenario::plan::arrivals(&load, duration, cli.seed);
            (Some(Arc::new(locci_loadgen::Scenario { load, slots })), duration)
        }
        None => (None, cli.duration),
    };
    let pace = match (&scenario, cli.rate, cli.concurrency) {
        (Some(s), _, _) => Pace::Open { rate: s.load.rate.max(1.0), connections: cli.connections },
        (None, Some(rate), _) => Pace::Open { rate, connections: cli.connections },
        (None, None, c) => Pace::Closed { concurrency: c.unwrap_or(16) },
    };
    if cli.threads == Some(0) {
        anyhow::bail!("--threads must be at least 1");
    }
    let mut headers = Vec::new();
    for h in &cli.headers {
        let (name, value) = h.split_once(':').ok_or_else(|| anyhow::anyhow!("header {h:?} is not 'Name: value'"))?;
        headers.push((name.trim().parse()?, value.trim().parse()?));
    }
    let body = match &cli.body {
        Some(path) => std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?.into(),
        None => bytes::Bytes::new(),
    };
    let tls = tls_config(cli, &url)?;
    if let Some(path) = &cli.report
        && !matches!(path.extension().and_then(|e| e.to_str()), Some("svg" | "html"))
    {
        anyhow::bail!("--report must name a .svg or .html file");
    }
    let opts = Options {
        tls,
        http2: cli.http2,
        timeline: cli.report.is_some(),
        scenario,
        url,
        pace,
        duration,
        warmup: cli.warmup,
        method: cli.method.parse()?,
        headers,
        body,
        timeout: cli.timeout,
        progress: true,
    };
    opts.check()?;
    Ok(opts)
}

/// The rustls client settings for an https:// URL: the system's roots, or `--cacert`'s, or none verified.
fn tls_config(cli: &Cli, url: &http::Uri) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
    if url.scheme_str() != Some("https") {
        if cli.cacert.is_some() || cli.insecure {
            anyhow::bail!("--cacert and --insecure are for https:// URLs");
        }
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::ClientConfig::builder_with_provider(Arc::clone(&provider)).with_safe_default_protocol_versions()?;
    let mut config = if cli.insecure {
        eprintln!("locci-loadgen: --insecure: the server's certificate is NOT verified");
        builder.dangerous().with_custom_certificate_verifier(Arc::new(Unverified(provider))).with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match &cli.cacert {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
                for cert in certs {
                    roots.add(cert.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?)?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        if roots.is_empty() {
            anyhow::bail!("no trusted root certificates (give --cacert FILE)");
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![if cli.http2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
    Ok(Some(Arc::new(config)))
}

/// `--insecure`: accepts any certificate, still checking the handshake's signatures.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn execute(cli: &Cli, opts: Options, thresholds: &[Threshold]) -> ExitCode {
    // One thread: a current-thread runtime, where waking another task costs no cross-thread handoff.
    let mut rt = match cli.threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(t) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(t.max(1));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match rt.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("locci-loadgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(locci_loadgen::run(opts)) {
        Ok(mut report) => {
            report.thresholds = thresholds.iter().map(|t| t.judge(&report)).collect();
            print!("{}", report.text());
            if let Some(path) = &cli.report {
                let title = format!("locci-loadgen {}", report.url);
                let page = if path.extension().is_some_and(|e| e == "html") {
                    locci_loadgen::timeline::html(&title, &report.timeline)
                } else {
                    locci_loadgen::timeline::svg(&title, &report.timeline)
                };
                if let Err(e) = std::fs::write(path, page) {
                    eprintln!("locci-loadgen: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            if let Some(path) = &cli.json {
                let text = serde_json::to_string_pretty(&report).unwrap_or_default();
                if let Err(e) = std::fs::write(path, text) {
                    eprintln!("locci-loadgen: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            // A TLS failure ends the run with exit 1: the connections gave up instead of retrying.
            let tls_failed = report.errors.contains_key("tls");
            if report.thresholds.iter().all(|t| t.pass) && !tls_failed { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Err(e) => {
            eprintln!("locci-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
