//! Log set-up: tracing, text or JSON, level from the config unless RUST_LOG is set.

use locci_core::config::{LogFormat, LoggingConfig};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; a second call is ignored.
pub fn init(cfg: &LoggingConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // Pingora logs every proxy error itself at ERROR; ours are the ones to read, so its own are WARN+.
        EnvFilter::new(format!("{},pingora_proxy=warn,pingora_core=warn", cfg.level.to_ascii_lowercase()))
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stdout);
    let _already_set = match cfg.format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
            builder.with_target(false).with_ansi(ansi).try_init()
        }
    };
}
