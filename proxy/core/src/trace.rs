//! W3C trace context (SPEC §14): what `traceparent` the upstream is sent, whether the request's span is
//! sampled, and whether the client's `tracestate` goes on with it.
//!
//! The proxy is one hop of the client's trace: a valid incoming `traceparent` keeps its trace ID and its
//! sampled flag (parent-based sampling), and the proxy's own span, whose ID is new, becomes the parent the
//! upstream sees. An absent or invalid one restarts the trace with a new trace ID, sampled by
//! `sample_ratio`; the client's `tracestate` then belongs to no trace and is dropped, as W3C Trace Context
//! §3.3.1 has a vendor that cannot parse `traceparent` ignore it.

use std::fmt;

use crate::clock::Entropy;

/// The sampled bit of `trace-flags`.
const SAMPLED: u8 = 0x01;

/// A `traceparent` value the proxy accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    /// The trace's ID (never zero).
    pub trace_id: u128,
    /// The caller's span (never zero).
    pub span_id: u64,
    /// The caller's `trace-flags`.
    pub flags: u8,
}

/// The request's place in its trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace's ID: the caller's, or new.
    pub trace_id: u128,
    /// The proxy's span for this request: the parent the upstream is told.
    pub span_id: u64,
    /// The caller's span, when the trace came from the client.
    pub parent: Option<u64>,
    /// Whether the span is recorded (and the upstream told so).
    pub sampled: bool,
}

impl TraceContext {
    /// An empty context, for the moment before a request's head is read.
    pub const NONE: TraceContext = TraceContext { trace_id: 0, span_id: 0, parent: None, sampled: false };

    /// The context for a request, given every `traceparent` value it carries: exactly one valid one is
    /// continued; none, an invalid one, or several (W3C Trace Context §3.2: several are invalid) start a trace.
    pub fn start<'a>(
        traceparents: impl IntoIterator<Item = &'a str>,
        sample_ratio: f64,
        entropy: &dyn Entropy,
    ) -> TraceContext {
        let span_id = nonzero(entropy);
        let mut values = traceparents.into_iter();
        let only = match (values.next(), values.next()) {
            (Some(one), None) => parse(one),
            _ => None,
        };
        match only {
            Some(parent) => TraceContext {
                trace_id: parent.trace_id,
                span_id,
                parent: Some(parent.span_id),
                sampled: parent.flags & SAMPLED != 0,
            },
            None => {
                let trace_id = (u128::from(nonzero(entropy)) << 64) | u128::from(entropy.next_u64());
                TraceContext { trace_id, span_id, parent: None, sampled: sample(sample_ratio, entropy) }
            }
        }
    }

    /// Whether the client's `tracestate` is forwarded: only with the trace it belongs to.
    pub fn keeps_tracestate(&self) -> bool {
        self.parent.is_some()
    }

    /// The `traceparent` header for the upstream (version 00, 55 characters).
    pub fn traceparent(&self) -> String {
        // Written digit by digit into one buffer: `format!` with `{:032x}` cost a request about twice as much.
        let mut out = [b'-'; 55];
        out[..2].copy_from_slice(b"00");
        write_hex(&mut out[3..35], self.trace_id);
        write_hex(&mut out[36..52], u128::from(self.span_id));
        out[53..].copy_from_slice(if self.sampled { b"01" } else { b"00" });
        String::from_utf8(out.to_vec()).unwrap_or_default()
    }

    /// The trace ID as 32 lowercase hex digits, for the log line.
    pub fn trace_id(&self) -> TraceId {
        TraceId(self.trace_id)
    }
}

/// A trace ID as the log shows it: 32 lowercase hex digits, `-` before the request has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId(pub u128);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 { f.write_str("-") } else { write!(f, "{:032x}", self.0) }
    }
}

/// Reads a `traceparent` (W3C Trace Context §3.2): `version-traceid-parentid-flags` in lowercase hex.
/// Version `ff` is invalid; version 00 is exactly 55 characters; a later version is read by its first four
/// fields and may carry more after a `-`. All-zero IDs are invalid.
pub fn parse(value: &str) -> Option<Parent> {
    let value = value.trim_matches([' ', '\t']);
    let bytes = value.as_bytes();
    if bytes.len() < 55 || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return None;
    }
    let version = hex(&value[0..2])? as u8;
    match version {
        0xff => return None,
        0x00 if bytes.len() != 55 => return None,
        _ if bytes.len() > 55 && bytes[55] != b'-' => return None,
        _ => {}
    }
    let trace_id = hex(&value[3..35])?;
    let span_id = hex(&value[36..52])? as u64;
    let flags = hex(&value[53..55])? as u8;
    (trace_id != 0 && span_id != 0).then_some(Parent { trace_id, span_id, flags })
}

/// `value`'s low `out.len()` hex digits, lowercase, most significant first.
fn write_hex(out: &mut [u8], mut value: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// Lowercase hex digits only (the spec forbids uppercase), up to 32 of them.
fn hex(digits: &str) -> Option<u128> {
    if !digits.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    u128::from_str_radix(digits, 16).ok()
}

/// A random ID that is never the invalid zero.
fn nonzero(entropy: &dyn Entropy) -> u64 {
    entropy.next_u64().max(1)
}

/// A draw with probability `ratio`: 1 always, 0 never.
fn sample(ratio: f64, entropy: &dyn Entropy) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    // 53 random bits as a fraction in [0, 1).
    ((entropy.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < ratio
}

#[cfg(test)]
mod tests;
