//! `locci-proxy explain` and `GET /api/v1/explain` (SPEC §11): a question read from a command line or a query
//! string, put to the core's [`Runtime::explain`], and the answer written for people or as JSON.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use locci_core::Runtime;
use locci_core::explain::{Explanation, Question, parse_target};
use locci_core::middleware::Now;
use locci_core::request::HeaderPairs;

/// A request to explain, as given.
#[derive(Debug, Clone)]
pub struct Asked {
    method: String,
    path: String,
    query: Option<String>,
    headers: Vec<(String, String)>,
    client_ip: IpAddr,
}

impl Asked {
    /// Reads a method, a URL (a path with an optional query, or an absolute URL whose host becomes the Host
    /// header) and headers written `Name: value`; the error says what is wrong.
    pub fn new(method: &str, url: &str, headers: &[String], client_ip: Option<IpAddr>) -> Result<Asked, String> {
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(format!("{method:?} is not an HTTP method"));
        }
        let (path, query, host) = parse_target(url)?;
        let mut pairs = Vec::with_capacity(headers.len() + 1);
        for header in headers {
            let (name, value) =
                header.split_once(':').ok_or_else(|| format!("header {header:?} is not written Name: value"))?;
            let name = name.trim();
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) {
                return Err(format!("header name {name:?} is not a header name"));
            }
            pairs.push((name.to_ascii_lowercase(), value.trim().to_string()));
        }
        if let Some(host) = host
            && !pairs.iter().any(|(n, _)| n == "host")
        {
            pairs.push(("host".into(), host));
        }
        Ok(Asked {
            method: method.to_ascii_uppercase(),
            path,
            query,
            headers: pairs,
            client_ip: client_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        })
    }

    /// The core's explanation of this request under `runtime` at `now`.
    pub fn explain(&self, runtime: &Runtime, now: Now) -> Explanation {
        let pairs: Vec<(&str, &str)> = self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let question = Question {
            method: &self.method,
            path: &self.path,
            query: self.query.as_deref(),
            client_ip: self.client_ip,
            headers: &HeaderPairs(&pairs),
        };
        runtime.explain(&question, now)
    }
}

/// The explanation for people.
pub fn text(e: &Explanation) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} {}", e.method, e.path);
    if e.routes.is_empty() {
        let _ = writeln!(out, "routes: none matches the path");
    } else {
        let _ = writeln!(out, "routes:");
        for r in &e.routes {
            let mark = if r.chosen { "*" } else { " " };
            let _ = writeln!(out, "  {mark} {} {:?}: {}", r.name, r.pattern, r.reason);
        }
    }
    if !e.middlewares.is_empty() {
        let _ = writeln!(out, "middlewares:");
        for (i, m) in e.middlewares.iter().enumerate() {
            let _ = writeln!(out, "  {}. {}: {}", i + 1, m.name, m.verdict);
        }
    }
    if let Some(u) = &e.upstream {
        let strategy = serde_json::to_value(u.strategy).ok();
        let strategy = strategy.as_ref().and_then(|s| s.as_str()).unwrap_or("?");
        let panic = if u.panic { ", in panic: health ignored" } else { "" };
        let breaker = u.max_requests.map(|m| format!(", {} of {m} in flight", u.in_flight)).unwrap_or_default();
        let _ = writeln!(out, "upstream: {} ({strategy}{panic}{breaker})", u.group);
        for s in &e.servers {
            let pick = s.pick.map_or_else(|| "  -".to_string(), |p| format!("{p:>3}"));
            let _ = writeln!(out, "  {pick} {} (weight {}, {})", s.address, s.weight, s.state);
        }
        if let Some(note) = u.note {
            let _ = writeln!(out, "  ({note})");
        }
    }
    if let Some(path) = &e.upstream_path {
        let _ = writeln!(out, "upstream path: {path}");
    }
    if let Some(t) = &e.timeouts {
        let per_try = t.per_try_secs.map(|p| format!(", per try {p} s")).unwrap_or_default();
        let _ = writeln!(out, "timeouts: connect {} s, read {} s{per_try}", t.connect_secs, t.read_secs);
    }
    if let Some(r) = &e.retry {
        let policy = match &r.policy {
            Some(p) => format!("retry {p}"),
            None => "no retry policy".into(),
        };
        let resend = if r.resendable { "may be resent" } else { "not resent once it reached a server" };
        let _ = writeln!(out, "retries: {} on connect failure; {policy}; this request {resend}", r.retries);
    }
    match (e.answer, &e.answer_reason) {
        (Some(status), Some(reason)) => {
            let _ = writeln!(out, "answer: {status} from the proxy ({reason})");
        }
        (Some(status), None) => {
            let _ = writeln!(out, "answer: {status} from the proxy");
        }
        (None, _) => {
            let _ = writeln!(out, "answer: forwarded");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_question_is_read_with_its_headers_and_the_url_host_becomes_host() {
        let asked = Asked::new("get", "http://shop:8080/a?b=1", &["X-Key: k1".into()], None).unwrap();
        assert_eq!((asked.method.as_str(), asked.path.as_str(), asked.query.as_deref()), ("GET", "/a", Some("b=1")));
        assert_eq!(asked.headers, [("x-key".to_string(), "k1".to_string()), ("host".into(), "shop:8080".into())]);
        let given = Asked::new("GET", "http://shop/a", &["Host: other".into()], None).unwrap();
        assert_eq!(given.headers, [("host".to_string(), "other".to_string())], "a given Host wins");
    }

    #[test]
    fn a_bad_question_says_what_is_wrong() {
        assert!(Asked::new("G T", "/", &[], None).unwrap_err().contains("not an HTTP method"));
        assert!(Asked::new("GET", "nope", &[], None).unwrap_err().contains("not a path or an absolute URL"));
        assert!(Asked::new("GET", "/", &["novalue".into()], None).unwrap_err().contains("Name: value"));
        assert!(Asked::new("GET", "/", &["a b: c".into()], None).unwrap_err().contains("not a header name"));
    }
}
