//! Upstream discovery (SPEC §13) against the real binary and a real DNS server the test starts: Debian's
//! dnsmasq on a loopback port, answering from a hosts file the test rewrites (SIGHUP re-reads it) and from
//! SRV records on its command line. Backends listen on 127.0.0.2-5, one address each, as a scaled service's
//! replicas would.
// The end-to-end tier runs the real binary in wall-clock time, so it may read the real clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods, missing_docs)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use locci_e2e::*;

/// A dnsmasq on 127.0.0.1:`port` that answers only from `hosts` (and the SRV records given); stopped on drop.
struct Dns {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    srv: Vec<String>,
}

impl Dns {
    fn start(hosts: &str, srv: &[String]) -> Dns {
        let dir = tempfile::tempdir().unwrap();
        let mut dns = Dns { child: None, port: free_udp_port(), dir, srv: srv.to_vec() };
        dns.write_hosts(hosts);
        dns.spawn();
        dns
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("dnsmasq");
        cmd.args(["--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--bind-interfaces"])
            .args(["--listen-address=127.0.0.1", "--local-ttl=0", "--user=root", "--log-facility=-"])
            .arg(format!("--port={}", self.port))
            .arg(format!("--addn-hosts={}", self.dir.path().join("hosts").display()))
            .arg(format!("--pid-file={}", self.dir.path().join("pid").display()));
        for record in &self.srv {
            cmd.arg(format!("--srv-host={record}"));
        }
        let child =
            cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("dnsmasq (scripts/setup installs it)");
        self.child = Some(child);
        let port = self.port;
        assert!(wait_until(WAIT, || dig(port, "ready.probe").is_some()), "dnsmasq did not answer on 127.0.0.1:{port}");
    }

    /// Replaces the hosts file and has dnsmasq read it again.
    fn write_hosts(&self, hosts: &str) {
        std::fs::write(self.dir.path().join("hosts"), format!("{hosts}127.0.0.9 ready.probe\n")).unwrap();
        if let Some(child) = &self.child {
            signal(child.id(), "HUP");
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_udp_port() -> u16 {
    loop {
        let port = free_addr().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One A query to 127.0.0.1:`port` by hand (no client library needed): the first address, if any.
fn dig(port: u16, name: &str) -> Option<std::net::Ipv4Addr> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
    socket.set_read_timeout(Some(Duration::from_millis(300))).ok()?;
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend(label.as_bytes());
    }
    q.extend([0, 0, 1, 0, 1]);
    socket.send_to(&q, ("127.0.0.1", port)).ok()?;
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).ok()?;
    let answers = u16::from_be_bytes([buf[6], buf[7]]);
    (answers > 0 && n >= 4).then(|| std::net::Ipv4Addr::new(buf[n - 4], buf[n - 3], buf[n - 2], buf[n - 1]))
}

/// Backends named s2.. on 127.0.0.2.., all on one port.
fn replicas(n: u8) -> (Vec<Backend>, u16) {
    loop {
        let port = free_addr().port();
        let started: Result<Vec<Backend>, _> =
            (2..2 + n).map(|i| Backend::start(&format!("s{i}"), SocketAddr::from(([127, 0, 0, i], port)))).collect();
        if let Ok(b) = started {
            return (b, port);
        }
    }
}

fn hosts_file(ips: &[u8]) -> String {
    ips.iter().map(|i| format!("127.0.0.{i} app.internal\n")).collect()
}

fn config(resolver: &str, servers: &str) -> String {
    format!(
        "mode: load_balancer\nserver: {{ bind_address: \"{{BIND}}\", resolver: \"{resolver}\" }}\n\
         upstreams:\n  app:\n    servers: {servers}\n    retries: 2\n\
         \x20   health_check: {{ interval_secs: 1, timeout_secs: 1, path: /health }}\n\
         load_balancer: {{ upstream: app }}\ncontrol_api: {{ bind_address: \"{{CONTROL}}\" }}\n"
    )
}

/// Requests in a loop on a thread of their own: who served each, and how many failed.
struct Load {
    seen: Arc<Mutex<Vec<String>>>,
    failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(url: String) -> Load {
        let (seen, failed, stop): (Arc<Mutex<Vec<String>>>, _, _) =
            (Arc::default(), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (s, f, st) = (Arc::clone(&seen), Arc::clone(&failed), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let http = client();
            while !st.load(Ordering::Relaxed) {
                match http.get(&url).send() {
                    Ok(r) if r.status() == 200 => s.lock().unwrap().push(served_by(r)),
                    _ => {
                        f.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Load { seen, failed, stop, thread: Some(thread) }
    }

    /// Servers that answered from the `from`-th request on.
    fn servers_since(&self, from: usize) -> BTreeSet<String> {
        self.seen.lock().unwrap().iter().skip(from).cloned().collect()
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.failed.load(Ordering::Relaxed)
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn discovery_errors(proxy: &Proxy) -> f64 {
    let text = client().get(proxy.control_url("/metrics")).send().unwrap().text().unwrap();
    metric(&parse_metrics(&text), "locci_discovery_errors_total", &[("upstream", "app")])
}

#[test]
fn dns_servers_follow_the_records_under_load_and_a_dead_resolver_keeps_the_last_answer() {
    let (_backends, port) = replicas(4);
    let mut dns = Dns::start(&hosts_file(&[2, 3]), &[]);
    let servers = format!("[{{ dns: \"app.internal:{port}\", refresh_secs: 1 }}]");
    let proxy = Proxy::start(&config(&dns.addr(), &servers));
    let load = Load::start(proxy.url("/x"));
    assert!(wait_until(WAIT, || load.servers_since(0) == set(&["s2", "s3"])), "{}", proxy.logs());
    // Scale out to four.
    dns.write_hosts(&hosts_file(&[2, 3, 4, 5]));
    let mark = load.count();
    assert!(
        wait_until(WAIT, || load.servers_since(mark).len() == 4),
        "the new addresses get traffic: {:?}",
        load.servers_since(mark)
    );
    // The resolver dies: the four stay.
    dns.stop();
    assert!(wait_until(WAIT, || discovery_errors(&proxy) >= 2.0), "failed refreshes are counted:\n{}", proxy.logs());
    let mark = load.count();
    assert!(wait_until(WAIT, || load.servers_since(mark).len() == 4), "the last good answer is kept");
    // It comes back with two: the other two drain out of rotation.
    dns.write_hosts(&hosts_file(&[2, 3]));
    dns.spawn();
    let mut mark = load.count();
    assert!(
        wait_until(WAIT, || {
            let recent = load.servers_since(mark);
            let done = recent == set(&["s2", "s3"]) && load.count() > mark + 50;
            if !done && recent.len() > 2 {
                mark = load.count();
            }
            done
        }),
        "the vanished addresses get no more traffic: {:?}",
        load.servers_since(mark)
    );
    assert_eq!(load.finish(), 0, "not one request failed through all of it:\n{}", proxy.logs());
    assert!(proxy.logs().contains("DNS refresh failed; the last good answer is kept"));
}

#[test]
fn srv_records_give_each_target_on_its_own_port() {
    let (a, b) = (
        Backend::start("t1", "127.0.0.1:0".parse().unwrap()).unwrap(),
        Backend::start("t2", "127.0.0.1:0".parse().unwrap()).unwrap(),
    );
    let srv = [
        format!("_http._tcp.app.internal,t1.internal,{}", a.addr.port()),
        format!("_http._tcp.app.internal,t2.internal,{}", b.addr.port()),
    ];
    let dns = Dns::start("127.0.0.1 t1.internal\n127.0.0.1 t2.internal\n", &srv);
    let proxy = Proxy::start(&config(&dns.addr(), "[{ srv: \"_http._tcp.app.internal\", refresh_secs: 1 }]"));
    let http = client();
    let mut seen = BTreeSet::new();
    assert!(
        wait_until(WAIT, || {
            if let Ok(r) = http.get(proxy.url("/x")).send()
                && r.status() == 200
            {
                seen.insert(served_by(r));
            }
            seen == set(&["t1", "t2"])
        }),
        "both SRV targets serve: {seen:?}\n{}",
        proxy.logs()
    );
}

#[test]
fn a_name_that_does_not_resolve_at_start_up_is_not_fatal() {
    let (_backends, port) = replicas(1);
    let dns = Dns::start("", &[]);
    let servers = format!("[{{ dns: \"app.internal:{port}\", refresh_secs: 1 }}]");
    let proxy = Proxy::start(&config(&dns.addr(), &servers));
    assert!(wait_until(WAIT, || discovery_errors(&proxy) >= 1.0), "{}", proxy.logs());
    assert_eq!(client().get(proxy.url("/x")).send().unwrap().status(), 503, "a group with no servers answers 503");
    dns.write_hosts(&hosts_file(&[2]));
    assert!(
        wait_until(WAIT, || client().get(proxy.url("/x")).send().is_ok_and(|r| r.status() == 200)),
        "the name resolves, the group serves:\n{}",
        proxy.logs()
    );
    assert!(proxy.logs().contains("name does not resolve; it gives no servers until it does"));
}

#[test]
fn a_plain_hostname_is_resolved_in_the_background_not_per_request() {
    let (_backends, port) = replicas(1);
    let mut dns = Dns::start(&hosts_file(&[2]), &[]);
    let proxy = Proxy::start(&config(&dns.addr(), &format!("[\"app.internal:{port}\"]")));
    assert!(wait_until(WAIT, || client().get(proxy.url("/x")).send().is_ok_and(|r| r.status() == 200)));
    // With the resolver gone, a request that looked the name up itself would fail (the system's resolver
    // has never heard of app.internal): these succeed on the background answer.
    dns.stop();
    for _ in 0..20 {
        assert_eq!(client().get(proxy.url("/x")).send().unwrap().status(), 200);
    }
}
