//! Server selection strategies. Each skips servers that are down or already tried for this request.

use std::net::{Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};

use pingora_ketama::{Bucket, Continuum};

use super::ServerAddr;
use super::pool::ServerState;
use crate::clock::Entropy;
use crate::config::Strategy;

/// Picks a server index for a request.
#[derive(Debug)]
pub struct Selector(Strat);

enum Strat {
    /// In turn.
    RoundRobin(AtomicUsize),
    /// In turn over a smooth weighted schedule computed at load (nginx's smooth weighted round robin).
    Weighted { schedule: Vec<u16>, next: AtomicUsize },
    /// Weighted random.
    Random,
    /// The less loaded of two random candidates.
    LeastRequest,
    /// Ketama ring; `nodes[i]` is the ring address standing for server `i`.
    Consistent { ring: Continuum, nodes: Vec<SocketAddr>, points: usize },
}

impl std::fmt::Debug for Strat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Strat::RoundRobin(_) => "round_robin",
            Strat::Weighted { .. } => "weighted",
            Strat::Random => "random",
            Strat::LeastRequest => "least_request",
            Strat::Consistent { .. } => "consistent",
        };
        f.write_str(name)
    }
}

impl Selector {
    /// Builds the selector for a server list (at most MAX_SERVERS, weights 1..=MAX_WEIGHT: checked at load).
    pub fn new(strategy: Strategy, servers: &[(ServerAddr, u32)]) -> Selector {
        Selector(match strategy {
            Strategy::RoundRobin => Strat::RoundRobin(AtomicUsize::new(0)),
            Strategy::Weighted => Strat::Weighted { schedule: smooth_schedule(servers), next: AtomicUsize::new(0) },
            Strategy::Random => Strat::Random,
            Strategy::LeastRequest => Strat::LeastRequest,
            Strategy::Consistent => {
                let nodes: Vec<SocketAddr> = servers.iter().map(|(a, _)| ring_node(a)).collect();
                let buckets: Vec<Bucket> =
                    nodes.iter().zip(servers).map(|(n, (_, w))| Bucket::new(*n, (*w).max(1))).collect();
                let points = servers.iter().map(|(_, w)| *w as usize * 160).sum::<usize>().max(1);
                Strat::Consistent { ring: Continuum::new(&buckets), nodes, points }
            }
        })
    }

    /// A server that is up (any server, in `panic`) and not in `tried`, or `None`. `advance: false` reads the
    /// turn without taking it (explain: the choice the next request would get, the turn left as it was).
    pub fn select(
        &self,
        servers: &[ServerState],
        key: &[u8],
        tried: &[usize],
        panic: bool,
        entropy: &dyn Entropy,
        advance: bool,
    ) -> Option<usize> {
        let take = |next: &AtomicUsize| {
            if advance { next.fetch_add(1, Ordering::Relaxed) } else { next.load(Ordering::Relaxed) }
        };
        let usable = |i: usize| servers.get(i).is_some_and(|s| panic || s.is_up()) && !tried.contains(&i);
        let n = servers.len();
        if n == 0 {
            return None;
        }
        match &self.0 {
            Strat::RoundRobin(next) => {
                let turn = take(next);
                if usable(turn % n) {
                    return Some(turn % n);
                }
                // Turns that land on a server that is out go round the usable ones, so its share is spread
                // evenly instead of all falling on its neighbour.
                let list: Vec<usize> = (0..n).filter(|&i| usable(i)).collect();
                (!list.is_empty()).then(|| list[turn % list.len()])
            }
            Strat::Weighted { schedule, next } => {
                let turn = take(next);
                let first = schedule[turn % schedule.len()] as usize;
                if usable(first) {
                    return Some(first);
                }
                // The schedule filtered to usable servers keeps their weight ratios.
                let list: Vec<usize> = schedule.iter().map(|&i| i as usize).filter(|&i| usable(i)).collect();
                (!list.is_empty()).then(|| list[turn % list.len()])
            }
            Strat::Random => {
                let total: u64 = (0..n).filter(|&i| usable(i)).map(|i| u64::from(servers[i].weight)).sum();
                if total == 0 {
                    return None;
                }
                let mut r = entropy.next_u64() % total;
                (0..n).filter(|&i| usable(i)).find(|&i| {
                    let w = u64::from(servers[i].weight);
                    if r < w {
                        true
                    } else {
                        r -= w;
                        false
                    }
                })
            }
            Strat::LeastRequest => {
                let candidates: Vec<usize> = (0..n).filter(|&i| usable(i)).collect();
                match candidates.len() {
                    0 => None,
                    1 => Some(candidates[0]),
                    len => {
                        let a = (entropy.next_u64() % len as u64) as usize;
                        let mut b = (entropy.next_u64() % (len as u64 - 1)) as usize;
                        if b >= a {
                            b += 1;
                        }
                        let (a, b) = (candidates[a], candidates[b]);
                        Some(if servers[b].inflight() < servers[a].inflight() { b } else { a })
                    }
                }
            }
            Strat::Consistent { ring, nodes, points } => ring
                .node_iter(key)
                .take(*points)
                .filter_map(|addr| nodes.iter().position(|n| n == addr))
                .find(|&i| usable(i)),
        }
    }
}

/// nginx's smooth weighted round robin, unrolled once into a schedule of one full cycle.
fn smooth_schedule(servers: &[(ServerAddr, u32)]) -> Vec<u16> {
    let weights: Vec<i64> = servers.iter().map(|(_, w)| i64::from((*w).max(1))).collect();
    let gcd = weights.iter().copied().fold(0, gcd);
    let weights: Vec<i64> = weights.iter().map(|w| w / gcd.max(1)).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let best = (0..current.len()).max_by_key(|&i| (current[i], std::cmp::Reverse(i))).unwrap_or(0);
        current[best] -= total;
        schedule.push(best as u16);
    }
    schedule
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The ring identity of a server: its IP address when it has one, else a stable pseudo-address derived
/// from the name, so that a server keeps its ring points whatever else is added or removed.
fn ring_node(addr: &ServerAddr) -> SocketAddr {
    if let Some(ip) = addr.ip {
        return ip;
    }
    // FNV-1a over the name: stable across runs and platforms, unlike the std hasher.
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for b in addr.text.bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    SocketAddr::new(Ipv6Addr::from(h).into(), addr.port)
}
