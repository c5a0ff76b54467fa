//! Path normalisation: the one spelling of a request path that every decision reads.
//!
//! Routing, `strip_prefix`, `excluded_paths`, hashing by path and the path sent upstream all read the result,
//! so no request can reach a route or skip auth by spelling its path differently from how the upstream will
//! read it (`/public/../admin`, `/public/%2e%2e/admin`, `/public/..%2fadmin`). It runs once per request, before
//! routing (SPEC §10), and is a no-op on the common path (one scan, no allocation).
//!
//! Steps, in order (`normalize` turns on 2, 3 and 5; `merge_slashes` turns on 4; 1 always applies):
//! 1. every `%XY` must be two hex digits; `%2F` / `%5C` (an escaped `/` or `\`) are rejected, kept, or
//!    decoded to `/`, as `escaped_slashes` says;
//! 2. escapes of unreserved characters (RFC 3986 §2.3: letters, digits, `-._~`) are decoded, the others
//!    written with upper-case hex; a decoded NUL or a byte sequence that is not UTF-8 (overlong forms such as
//!    `%C0%AE` included) is rejected, since upstreams disagree on what it means;
//! 3. a raw `\` becomes `/` (many servers and frameworks treat it as a separator);
//! 4. runs of `/` become one;
//! 5. dot-segments are removed (RFC 3986 §5.2.4); `..` never climbs above the root.
//!
//! The result contains no dot-segment, and normalising it again changes nothing (both are property-tested).

use std::borrow::Cow;

use crate::config::{EscapedSlashes, PathConfig};

/// Why a path is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `%2F` or `%5C` under `escaped_slashes: reject`.
    EscapedSlash,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// A decoded NUL, or escaped bytes that are not UTF-8.
    BadEncoding,
}

impl PathError {
    /// The short error text of the 400 answer.
    pub fn as_str(self) -> &'static str {
        match self {
            PathError::EscapedSlash => "escaped slash in path",
            PathError::BadEscape => "malformed percent-encoding in path",
            PathError::BadEncoding => "path is not valid UTF-8",
        }
    }
}

/// The normalised form of `path` under `settings`; borrowed when nothing changes.
pub fn normalize<'p>(path: &'p str, settings: &PathConfig) -> Result<Cow<'p, str>, PathError> {
    if !path.starts_with('/') {
        // `*` (OPTIONS *) and authority forms have no segments; no route pattern reads them as a path.
        return Ok(Cow::Borrowed(path));
    }
    if !needs_work(path.as_bytes(), settings) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(path.as_bytes(), settings)?;
    let merged = if settings.merge_slashes { merge(&decoded) } else { decoded };
    Ok(Cow::Owned(if settings.normalize { remove_dot_segments(&merged) } else { merged }))
}

/// Whether any step could change the path: a `%`, a `\`, a `/.`, or (when merging) a `//`.
fn needs_work(bytes: &[u8], settings: &PathConfig) -> bool {
    let mut previous = 0u8;
    for &b in bytes {
        match b {
            b'%' => return true,
            b'\\' if settings.normalize => return true,
            b'.' if previous == b'/' && settings.normalize => return true,
            b'/' if previous == b'/' && settings.merge_slashes => return true,
            _ => {}
        }
        previous = b;
    }
    false
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Steps 1–3: escapes checked, slashes handled, unreserved characters decoded, backslashes turned.
fn decode(bytes: &[u8], settings: &PathConfig) -> Result<String, PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len());
    // Bytes of the current run of escapes that stay escaped: each run must be UTF-8 on its own.
    let mut run: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            check_run(&mut run, settings)?;
            out.push(if b == b'\\' && settings.normalize { '/' } else { char::from(b) });
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex))
        else {
            return Err(PathError::BadEscape);
        };
        let value = hi << 4 | lo;
        i += 3;
        if value == b'/' || value == b'\\' {
            check_run(&mut run, settings)?;
            match settings.escaped_slashes {
                EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                EscapedSlashes::Unescape => out.push('/'),
                EscapedSlashes::Keep => out.push_str(if value == b'/' { "%2F" } else { "%5C" }),
            }
        } else if settings.normalize && unreserved(value) {
            check_run(&mut run, settings)?;
            out.push(char::from(value));
        } else if settings.normalize {
            if value == 0 {
                return Err(PathError::BadEncoding);
            }
            run.push(value);
            out.extend(['%', char::from(HEX[usize::from(hi)]), char::from(HEX[usize::from(lo)])]);
        } else {
            // Kept exactly as written (only the escapes' validity was checked).
            out.push_str(&String::from_utf8_lossy(&bytes[i - 3..i]));
        }
    }
    check_run(&mut run, settings)?;
    Ok(out)
}

fn check_run(run: &mut Vec<u8>, settings: &PathConfig) -> Result<(), PathError> {
    if settings.normalize && !run.is_empty() && std::str::from_utf8(run).is_err() {
        return Err(PathError::BadEncoding);
    }
    run.clear();
    Ok(())
}

/// Step 4.
fn merge(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

/// Step 5, for a path that starts with `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut parts = path.split('/').skip(1).peekable();
    while let Some(segment) = parts.next() {
        let last = parts.peek().is_none();
        match segment {
            "." => {}
            ".." => {
                segments.pop();
            }
            other => {
                segments.push(other);
                continue;
            }
        }
        // `/a/.` and `/a/b/..` name a directory: the trailing slash stays.
        if last {
            segments.push("");
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests;
