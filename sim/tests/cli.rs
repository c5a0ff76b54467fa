//! The simulator's command line: determinism across processes, failures reported with a replay command
//! that reproduces them, bad scenarios refused, explain.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
// `just sim` runs these against the simulator as users build it (with --cfg tokio_unstable); a plain
// `cargo test` builds it without, and checks instead that such a build refuses to run.

use std::path::Path;
use std::process::Command;

#[cfg(not(tokio_unstable))]
#[test]
fn a_build_without_tokio_unstable_refuses_to_run_and_says_how_to_build_it() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(env!("CARGO_BIN_EXE_locci-sim"))
        .args(["run", "scenarios/one-of-three-dies.yaml"])
        .current_dir(repo)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("built without --cfg tokio_unstable") && err.contains("just sim-one"), "{err}");
    assert!(out.stdout.is_empty(), "no result line may be printed: {}", String::from_utf8_lossy(&out.stdout));
}

#[cfg(tokio_unstable)]
mod seeded {
    use std::process::Output;

    use super::*;

    fn sim(args: &[&str]) -> Output {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        Command::new(env!("CARGO_BIN_EXE_locci-sim")).args(args).current_dir(repo).output().unwrap()
    }

    fn stdout(o: &Output) -> String {
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn result_line(o: &Output) -> String {
        stdout(o).lines().find(|l| l.starts_with("RESULT")).unwrap_or_default().to_string()
    }

    #[test]
    fn the_same_seed_in_two_processes_gives_the_same_trace_hash() {
        let out = sim(&["check", "scenarios/one-of-three-dies.yaml", "--seed", "3"]);
        assert!(out.status.success(), "{}", stdout(&out));
        assert!(stdout(&out).contains("deterministic: the same trace hash"));
        let hash = |line: String| line.split(' ').find_map(|w| w.strip_prefix("hash=")).unwrap_or_default().to_string();
        let three = hash(result_line(&sim(&["run", "scenarios/one-of-three-dies.yaml", "--seed", "3", "--quiet"])));
        let four = hash(result_line(&sim(&["run", "scenarios/one-of-three-dies.yaml", "--seed", "4", "--quiet"])));
        assert!(stdout(&out).contains(&three), "a third run agrees");
        assert_ne!(three, four, "another seed gives another trace");
    }

    #[test]
    fn a_scenario_built_to_fail_is_reported_with_its_seed_and_replays_to_the_same_failure() {
        let first = sim(&["run", "sim/tests/fixtures/must-fail.yaml", "--seed", "5"]);
        assert_eq!(first.status.code(), Some(1));
        let text = stdout(&first);
        assert!(text.contains("[FAIL] detection"), "{text}");
        assert!(text.contains("replay: just sim-one sim/tests/fixtures/must-fail.yaml 5"), "{text}");
        let line = result_line(&first);
        assert!(line.contains("invariants=detection") && line.contains("first_violation=5.500s"), "{line}");
        let again = sim(&["run", "sim/tests/fixtures/must-fail.yaml", "--seed", "5", "--quiet"]);
        assert_eq!(result_line(&again), line, "the replay reproduces the failure exactly");
        let sweep = sim(&["sweep", "sim/tests/fixtures/must-fail.yaml", "--seeds", "2", "--jobs", "2"]);
        assert_eq!(sweep.status.code(), Some(1));
        let text = stdout(&sweep) + &String::from_utf8_lossy(&sweep.stderr);
        assert!(text.contains("FAILED scenario=sim/tests/fixtures/must-fail.yaml seed=1"), "{text}");
        assert!(text.contains("replay: just sim-one sim/tests/fixtures/must-fail.yaml 2"), "{text}");
        // Each failing run's trace and plot are kept for a look without a replay.
        for file in ["must-fail-1.jsonl", "must-fail-1.svg", "must-fail-2.jsonl", "must-fail-2.svg"] {
            let kept = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/sim-failures").join(file);
            assert!(kept.metadata().is_ok_and(|m| m.len() > 0), "{} was not kept", kept.display());
            assert!(text.contains(&format!("target/sim-failures/{file}")), "{text}");
        }
    }

    #[test]
    fn a_bad_scenario_is_refused_with_the_field_named() {
        let out = sim(&["run", "sim/tests/fixtures/bad.yaml"]);
        assert_eq!(out.status.code(), Some(3));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("timeline[0]: unknown host \"nosuchhost\""), "{err}");
        let missing = sim(&["run", "nope.yaml"]);
        assert_eq!(missing.status.code(), Some(3));
    }

    #[test]
    fn explain_prints_the_expanded_timeline_and_swarm_draws() {
        let out = sim(&["explain", "scenarios/swarm-mixed.yaml", "--seed", "9", "--swarm"]);
        assert!(out.status.success());
        let text = stdout(&out);
        assert!(text.contains("swarm: timeline[0] kill:"), "{text}");
        assert!(text.contains("HealAll"), "{text}");
        assert!(text.contains("requests planned"), "{text}");
    }

    #[test]
    fn a_simulated_hour_of_health_checks_and_refills_holds_its_invariants() {
        // How fast it runs is reported in GUIDE.md (a benchmark figure), not asserted here.
        let out = sim(&["run", "scenarios/soak-hour.yaml", "--seed", "1"]);
        assert!(out.status.success(), "{}", stdout(&out));
        assert!(stdout(&out).contains("RESULT ok"), "{}", stdout(&out));
    }
}
