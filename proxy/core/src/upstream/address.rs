//! Server addresses: `host:port`, checked once at load.

use std::net::SocketAddr;

/// A parsed `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddr {
    /// The address as written (a metric label and log field).
    pub text: String,
    /// The host part.
    pub host: String,
    /// The port.
    pub port: u16,
    /// The socket address when the host is an IP literal; a hostname's comes from the background lookups.
    pub ip: Option<SocketAddr>,
}

/// A host name of letters, digits, `-`, `_` and dots, at most 253 characters.
pub fn valid_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
}

impl ServerAddr {
    /// Parses `host:port` (IPv6 as `[::1]:80`); the error says what is wrong.
    pub fn parse(text: &str) -> Result<ServerAddr, String> {
        if let Some((scheme, _)) = text.split_once("://") {
            return Err(format!("{text:?} has a scheme ({scheme}://); write host:port, and set tls: true for https"));
        }
        if let Ok(ip) = text.parse::<SocketAddr>() {
            return Ok(ServerAddr { text: text.into(), host: ip.ip().to_string(), port: ip.port(), ip: Some(ip) });
        }
        let (host, port) = text.rsplit_once(':').ok_or_else(|| format!("{text:?} is not host:port"))?;
        let port: u16 = port.parse().map_err(|_| format!("{text:?} has an invalid port"))?;
        if !valid_host_name(host) || port == 0 {
            return Err(format!("{text:?} is not host:port"));
        }
        Ok(ServerAddr { text: text.into(), host: host.into(), port, ip: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ip_and_hostname_forms() {
        assert_eq!(ServerAddr::parse("127.0.0.1:3001").unwrap().ip, Some("127.0.0.1:3001".parse().unwrap()));
        assert_eq!(ServerAddr::parse("[::1]:80").unwrap().port, 80);
        let named = ServerAddr::parse("users.internal:8080").unwrap();
        assert_eq!((named.host.as_str(), named.port, named.ip), ("users.internal", 8080, None));
    }

    #[test]
    fn rejects_schemes_missing_ports_and_junk() {
        assert!(ServerAddr::parse("http://a:1").unwrap_err().contains("scheme"));
        assert!(ServerAddr::parse("localhost").is_err());
        assert!(ServerAddr::parse("host:99999").is_err());
        assert!(ServerAddr::parse(":80").is_err());
        assert!(ServerAddr::parse("a b:80").is_err());
        assert!(ServerAddr::parse("host:0").is_err());
    }
}
