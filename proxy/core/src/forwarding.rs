//! Who the client is, and what the upstream is told about it: client IP, X-Forwarded-*, request IDs,
//! hop-by-hop headers.

use std::borrow::Cow;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::clock::Entropy;

/// Headers that belong to one connection and are never forwarded (RFC 9110 section 7.6.1).
pub const HOP_BY_HOP: [&str; 7] =
    ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];

/// Longest accepted client-sent request ID.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The client IP: the TCP peer, unless the peer is a trusted proxy; then the right-most address in
/// X-Forwarded-For that is not itself trusted (addresses that do not parse end the walk).
pub fn client_ip(peer: IpAddr, xff: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for part in xff.unwrap_or("").rsplit(',') {
        match part.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

/// The X-Forwarded-For value for the upstream: the incoming value with the peer appended.
pub fn forwarded_for(existing: Option<&str>, peer: IpAddr) -> String {
    let mut out = String::with_capacity(existing.map_or(0, |v| v.len() + 2) + 39);
    if let Some(v) = existing.filter(|v| !v.trim().is_empty()) {
        out.push_str(v);
        out.push_str(", ");
    }
    push_ip(&mut out, peer);
    out
}

/// Appends an address's text: IPv4 digit by digit, since `Display` (through the formatting machinery) cost
/// a request about 1,300 instructions (`just bench-instructions`); IPv6, rare here, by `Display`.
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// The request ID: the client's when it is 1 to 128 characters of `[A-Za-z0-9._:-]`, else a new UUID.
pub fn request_id<'a>(sent: Option<&'a str>, entropy: &dyn Entropy) -> Cow<'a, str> {
    match sent {
        Some(id) if valid_request_id(id) => Cow::Borrowed(id),
        _ => {
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&entropy.next_u64().to_le_bytes());
            bytes[8..].copy_from_slice(&entropy.next_u64().to_le_bytes());
            // Encoded into a buffer, not through `Display`: the formatting machinery cost more than the UUID.
            let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
            let uuid = uuid::Builder::from_random_bytes(bytes).into_uuid();
            Cow::Owned(uuid.hyphenated().encode_lower(&mut text).to_owned())
        }
    }
}

fn valid_request_id(id: &str) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Header names listed in a `Connection` header, which are hop-by-hop for this message too.
pub fn connection_listed(connection: Option<&str>) -> impl Iterator<Item = &str> {
    connection.unwrap_or("").split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Hop-by-hop headers the proxy removes itself before forwarding; the HTTP layer owns `connection`, `upgrade`
/// and `transfer-encoding`, which frame the message (the rest of [`HOP_BY_HOP`]).
pub const STRIPPED: [&str; 4] = ["keep-alive", "proxy-connection", "te", "trailer"];

/// The names a `Connection` header lists that the proxy removes too (RFC 9110 §7.6.1): all but the
/// connection options themselves (`close`, `keep-alive`) and `upgrade`, which the HTTP layer needs to proxy an
/// upgrade.
pub fn listed_hop_by_hop(connection: Option<&str>) -> impl Iterator<Item = &str> {
    connection_listed(connection).filter(|h| {
        !h.eq_ignore_ascii_case("upgrade") && !h.eq_ignore_ascii_case("keep-alive") && !h.eq_ignore_ascii_case("close")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SeededEntropy;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(client_ip(peer, Some("1.2.3.4"), &nets(&["10.0.0.0/8"])), peer);
    }

    #[test]
    fn trusted_peer_yields_the_rightmost_untrusted_address() {
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(client_ip(peer, Some("6.6.6.6, 1.2.3.4, 10.0.0.7"), &trusted), "1.2.3.4".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(peer, None, &trusted), peer);
        assert_eq!(client_ip(peer, Some("garbage"), &trusted), peer);
    }

    #[test]
    fn headers_a_connection_header_lists_are_hop_by_hop_but_not_its_options_or_upgrade() {
        let listed: Vec<&str> = listed_hop_by_hop(Some("keep-alive, X-Secret, Upgrade, close, , x-trace")).collect();
        assert_eq!(listed, ["X-Secret", "x-trace"]);
        assert_eq!(listed_hop_by_hop(None).count(), 0);
        for name in STRIPPED {
            assert!(HOP_BY_HOP.contains(&name), "{name}");
        }
    }

    #[test]
    fn forwarded_for_appends_the_peer() {
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(forwarded_for(None, peer), "127.0.0.1");
        assert_eq!(forwarded_for(Some("1.2.3.4"), peer), "1.2.3.4, 127.0.0.1");
        assert_eq!(forwarded_for(Some("  "), peer), "127.0.0.1");
    }

    proptest::proptest! {
        #[test]
        fn forwarded_for_writes_every_address_as_display_does(octets: [u8; 4], segments: [u16; 8]) {
            for peer in [IpAddr::from(octets), IpAddr::from(segments)] {
                proptest::prop_assert_eq!(forwarded_for(None, peer), peer.to_string());
                proptest::prop_assert_eq!(forwarded_for(Some("9.9.9.9"), peer), format!("9.9.9.9, {peer}"));
            }
        }
    }

    #[test]
    fn a_new_request_id_is_a_lowercase_hyphenated_uuid_v4() {
        let id = request_id(None, &SeededEntropy::new(7));
        let parsed = uuid::Uuid::parse_str(&id).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        assert_eq!(id, parsed.hyphenated().to_string());
        assert_eq!(id, id.to_ascii_lowercase());
    }

    #[test]
    fn request_ids_are_kept_when_valid_and_replaced_otherwise() {
        let e = SeededEntropy::new(1);
        assert_eq!(request_id(Some("abc-123:x.y_z"), &e), "abc-123:x.y_z");
        for bad in ["", "has space", "semi;colon", &"x".repeat(129)] {
            let id = request_id(Some(bad), &e);
            assert_eq!(id.len(), 36, "{bad:?} -> {id}");
            assert_ne!(id, bad);
        }
        assert_ne!(request_id(None, &e), request_id(None, &e));
    }
}
