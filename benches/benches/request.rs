//! Whole-request latency: the same GET sent straight to a fast upstream and through a running
//! `locci-proxy` (release build, one worker, load_balancer mode, request logs off) on loopback, over one
//! keep-alive connection each, so the proxy's added latency is a ratio within one run.
//! Run: `just bench` (builds the release binary first).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use locci_proxy::demo::Backend;

struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        Conn { reader: BufReader::new(s.try_clone().unwrap()), writer: s }
    }

    /// One GET on the keep-alive connection; returns the status.
    fn get(&mut self) -> u16 {
        self.writer.write_all(b"GET /bench HTTP/1.1\r\nHost: bench\r\n\r\n").unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h).unwrap();
            if h == "\r\n" {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body).unwrap();
        status
    }
}

struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn binary() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from("../target"));
    let bin = target.join("release/locci-proxy");
    assert!(bin.exists(), "{} is missing: cargo build --release -p locci-proxy (just bench does)", bin.display());
    bin
}

fn request(c: &mut Criterion) {
    let upstream = Backend::start("bench", "127.0.0.1:0".parse().unwrap()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("locci-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        "mode: load_balancer\nserver: {{ bind_address: \"127.0.0.1:{port}\", workers: 1 }}\nlogging: {{ level: warn }}\n\
         control_api: {{ enabled: false }}\nupstreams: {{ u: {{ servers: [\"{}\"] }} }}\nload_balancer: {{ upstream: u }}\n",
        upstream.addr
    );
    std::fs::write(dir.join("bench.yaml"), config).unwrap();
    let _proxy = Proxy(
        Command::new(binary())
            .arg("--config")
            .arg(dir.join("bench.yaml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let proxy_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..100 {
        if TcpStream::connect(proxy_addr).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut g = c.benchmark_group("request");
    let mut direct = Conn::open(upstream.addr);
    g.bench_function("direct", |b| b.iter(|| assert_eq!(direct.get(), 200)));
    let mut through = Conn::open(proxy_addr);
    g.bench_function("through_locci", |b| b.iter(|| assert_eq!(through.get(), 200)));
    g.finish();
}

criterion_group!(benches, request);
criterion_main!(benches);
