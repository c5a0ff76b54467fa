//! The tests' one way to run locci-loadgen: with `--json`, bounded in time (a run still going after 30 s has
//! not stopped on time: it is killed and the test fails), stdout and stderr captured.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

/// What a run left behind.
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// The `--json` report (`null` when none was written).
    pub report: serde_json::Value,
}

/// Runs locci-loadgen with `args` and `--json`.
pub fn run(args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_locci-loadgen"))
        .args(args)
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut exited = false;
    for _ in 0..300 {
        exited = child.try_wait().unwrap().is_some();
        if exited {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(exited, "locci-loadgen {args:?} was still running after 30 s");
    let report = std::fs::read_to_string(&json).map(|t| serde_json::from_str(&t).unwrap()).unwrap_or_default();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Run { status: out.status, stdout: text(&out.stdout), stderr: text(&out.stderr), report }
}
