//! CORS: answers preflights, and adds the allow headers to ordinary responses from allowed origins.

use crate::config::CorsConfig;
use crate::method::MethodSet;
use crate::request::RequestInfo;

/// A compiled CORS policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    any_origin: bool,
    origins: Vec<String>,
    methods: MethodSet,
    methods_header: String,
    headers_header: String,
    expose_header: String,
    credentials: bool,
    max_age: u64,
}

/// What CORS does with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsDecision {
    /// No `Origin`, or an ordinary request from an origin that is not allowed: nothing to add.
    NotCors,
    /// A preflight from an allowed origin: answer 204 with these headers, do not forward.
    Preflight(Vec<(&'static str, String)>),
    /// A preflight from a disallowed origin or for a disallowed method: 403 without allow headers.
    PreflightRejected,
    /// An ordinary request from an allowed origin: add these headers to the response.
    Actual(Vec<(&'static str, String)>),
}

impl Cors {
    /// Checks and compiles the section.
    pub fn compile(c: &CorsConfig, path: &str, problem: &mut dyn FnMut(String, String)) -> Option<Cors> {
        let any_origin = c.allowed_origins.iter().any(|o| o == "*");
        let mut ok = true;
        if c.allow_credentials && any_origin {
            problem(format!("{path}.allow_credentials"), "cannot be true with allowed origin \"*\"".into());
            ok = false;
        }
        if c.allowed_origins.is_empty() {
            problem(format!("{path}.allowed_origins"), "no origins".into());
            ok = false;
        }
        let methods = match MethodSet::parse(c.allowed_methods.iter().map(String::as_str)) {
            Ok(m) => m,
            Err(bad) => {
                problem(format!("{path}.allowed_methods"), format!("unknown method(s): {}", bad.join(", ")));
                ok = false;
                MethodSet::ANY
            }
        };
        let methods_header = if c.allowed_methods.is_empty() {
            "GET, HEAD, POST".to_string()
        } else {
            c.allowed_methods.iter().map(|m| m.to_ascii_uppercase()).collect::<Vec<_>>().join(", ")
        };
        let methods = if c.allowed_methods.is_empty() {
            MethodSet::parse(["GET", "HEAD", "POST"]).unwrap_or(MethodSet::ANY)
        } else {
            methods
        };
        ok.then(|| Cors {
            any_origin,
            origins: c.allowed_origins.clone(),
            methods,
            methods_header,
            headers_header: c.allowed_headers.join(", "),
            expose_header: c.expose_headers.join(", "),
            credentials: c.allow_credentials,
            max_age: c.max_age_secs,
        })
    }

    /// Decides what to do with a request.
    pub fn decide(&self, req: &RequestInfo<'_>) -> CorsDecision {
        let Some(origin) = req.headers.get("origin") else {
            return CorsDecision::NotCors;
        };
        let allowed = self.any_origin || self.origins.iter().any(|o| o == origin);
        let preflight_method =
            (req.method == "OPTIONS").then(|| req.headers.get("access-control-request-method")).flatten();
        match (preflight_method, allowed) {
            (Some(method), true) if self.methods.accepts(method) => {
                let mut h = self.common(origin);
                h.push(("access-control-allow-methods", self.methods_header.clone()));
                if !self.headers_header.is_empty() {
                    h.push(("access-control-allow-headers", self.headers_header.clone()));
                }
                h.push(("access-control-max-age", self.max_age.to_string()));
                CorsDecision::Preflight(h)
            }
            (Some(_), _) => CorsDecision::PreflightRejected,
            (None, true) => {
                let mut h = self.common(origin);
                if !self.expose_header.is_empty() {
                    h.push(("access-control-expose-headers", self.expose_header.clone()));
                }
                CorsDecision::Actual(h)
            }
            (None, false) => CorsDecision::NotCors,
        }
    }

    fn common(&self, origin: &str) -> Vec<(&'static str, String)> {
        let value = if self.any_origin { "*".to_string() } else { origin.to_string() };
        let mut h = vec![("access-control-allow-origin", value), ("vary", "Origin".to_string())];
        if self.credentials {
            h.push(("access-control-allow-credentials", "true".to_string()));
        }
        h
    }
}
