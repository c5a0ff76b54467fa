#!/usr/bin/env python3
"""The release gate: the candidate (this tree) against a baseline revision, built and benched in the same run on
the same machine, interleaved, judged bench by bench on the ratio.

Absolute times recorded on one machine do not transfer to another (a new machine of the same kind ran the old
gate 38 % "slower" on an unchanged tree while other benches ran 20-62 % faster), so nothing here is compared
with a number from elsewhere. The baseline revision (BASE: a tag or commit; default the last tag, else the last
commit that recorded benches/baseline.json) is checked out in a git worktree and built in its own target
directory (`gate-base` in the usual one): cargo names a workspace's artifacts by their path inside the
workspace and judges them fresh by time, so two checkouts in one target directory would link each other's
crates. The candidate is this tree as it is, built in place in the usual target directory (with SLOWDOWN, a
copy with the patch applied, whose workspace artifacts are cleaned out afterwards for the same reason). Each
tree's release proxy is kept aside for its request bench. Then ROUNDS rounds each run both trees' criterion benches back to back, the order alternating, each
saved under its own criterion baseline name (CRITERION_HOME is shared). Per bench and round the ratio
candidate / baseline is taken from the two runs next to each other in time, so drift cancels; the gate judges
the median of the rounds' ratios against a threshold set from their spread:

    limit = 1 + max(MIN_THRESHOLD, K * max |ratio_i - median ratio|)

(MIN_THRESHOLD 0.10: code layout alone moves nanosecond benches by that much; K 3). Exit 1 when a bench is over
its limit. `--update` writes the candidate's medians to benches/baseline.json, which is a record, not a
reference. Environment: BASE, ROUNDS (3), MEASURE (seconds per bench, 1), BENCHES ("core request"),
MIN_THRESHOLD, K, SLOWDOWN (a patch applied to the candidate's copy: the gate's own proof).
"""
import json, os, pathlib, shutil, statistics, subprocess, sys

repo = pathlib.Path(__file__).resolve().parents[2]
target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", repo / "target")).resolve()
rounds = int(os.environ.get("ROUNDS", "3"))
measure = os.environ.get("MEASURE", "1")
benches = os.environ.get("BENCHES", "core request").split()
min_threshold = float(os.environ.get("MIN_THRESHOLD", "0.10"))
k = float(os.environ.get("K", "3"))
baseline_file = repo / "benches" / "baseline.json"


def git(*args, cwd=repo):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def base_revision():
    if os.environ.get("BASE"):
        return git("rev-parse", "--verify", os.environ["BASE"] + "^{commit}")
    tag = subprocess.run(["git", "describe", "--tags", "--abbrev=0"], cwd=repo, capture_output=True, text=True)
    if tag.returncode == 0 and tag.stdout.strip():
        return git("rev-parse", tag.stdout.strip() + "^{commit}")
    return git("log", "-1", "--format=%H", "--", "benches/baseline.json")


def build(tree, target_dir, keep):
    """Builds the release proxy (the request bench starts it; kept as keep/release/locci-proxy) and the bench
    binaries; returns their paths."""
    env = {**os.environ, "CARGO_TARGET_DIR": str(target_dir)}
    subprocess.run(["cargo", "build", "-q", "--release", "-j", "2", "-p", "locci-proxy"], cwd=tree, env=env, check=True)
    out = subprocess.run(["cargo", "bench", "-q", "-j", "2", "-p", "locci-benches", "--no-run", "--message-format=json"],
                         cwd=tree, env=env, check=True, capture_output=True, text=True).stdout
    bins = {}
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") and "bench" in msg["target"]["kind"]:
            bins[msg["target"]["name"]] = msg["executable"]
    (keep / "release").mkdir(parents=True, exist_ok=True)
    shutil.copy2(target_dir / "release" / "locci-proxy", keep / "release" / "locci-proxy")
    missing = [b for b in benches if b not in bins]
    if missing:
        sys.exit(f"gate: {tree} has no bench {missing}")
    return bins


def run(tree, keep, bins, save, home):
    # The request bench finds the proxy as $CARGO_TARGET_DIR/release/locci-proxy: point it at this tree's.
    env = {**os.environ, "CARGO_TARGET_DIR": str(keep), "CRITERION_HOME": str(home)}
    for bench in benches:
        subprocess.run([bins[bench], "--bench", "--warm-up-time", "0.5", "--measurement-time", measure, "--noplot",
                        "--save-baseline", save], cwd=tree / "benches", env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)


def medians(home, save):
    out = {}
    for est in home.glob(f"**/{save}/estimates.json"):
        name = str(est.parent.parent.relative_to(home))
        out[name] = json.loads(est.read_text())["median"]["point_estimate"]
    return out


def main():
    base = base_revision()
    head = git("rev-parse", "HEAD")
    # Fixed paths, so a second run rebuilds only what changed: the baseline's worktree is kept for the next run
    # of the same revision, and the candidate's copy keeps the files' times.
    work = target / "gate"
    slowdown = os.environ.get("SLOWDOWN")
    base_tree, cand_tree = work / "base", work / "candidate"
    home = work / "criterion"
    kept = base_tree.exists() and subprocess.run(["git", "rev-parse", "HEAD"], cwd=base_tree, capture_output=True,
                                                   text=True).stdout.strip() == base
    if not kept:
        subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=repo, capture_output=True)
        subprocess.run(["git", "worktree", "prune"], cwd=repo, capture_output=True)
        shutil.rmtree(base_tree, ignore_errors=True)
    for d in (cand_tree, home):
        shutil.rmtree(d, ignore_errors=True)
    try:
        if not kept:
            git("worktree", "add", "-q", "--detach", str(base_tree), base)
        # The candidate is this tree as it is (uncommitted changes included); a SLOWDOWN patch goes to a copy (new
        # file times, so cargo rebuilds from it), never to the working tree.
        if slowdown:
            shutil.copytree(repo, cand_tree, ignore=shutil.ignore_patterns("target", ".git", "certs"), symlinks=True,
                            copy_function=shutil.copyfile)
            subprocess.run(["patch", "-s", "-p1", "-i", os.path.abspath(slowdown)], cwd=cand_tree, check=True)
        else:
            cand_tree = repo
        builds = {"base": (base_tree, target / "gate-base"), "candidate": (cand_tree, target)}
        trees = {"base": (base_tree, work / "base-bin"), "candidate": (cand_tree, work / "candidate-bin")}
        print(f"gate: baseline {base[:12]} against candidate {head[:12]}{' + working tree' if git('status', '--porcelain') else ''}"
              f"{' + ' + slowdown if slowdown else ''}; {rounds} rounds of {' '.join(benches)}")
        bins = {name: build(tree, t, trees[name][1]) for name, (tree, t) in builds.items()}
        for r in range(rounds):
            order = ["base", "candidate"] if r % 2 == 0 else ["candidate", "base"]
            for name in order:
                tree, t = trees[name]
                run(tree, t, bins[name], f"{name}-{r}", home)
            print(f"gate: round {r + 1} of {rounds} done", flush=True)
        per_round = [(medians(home, f"base-{r}"), medians(home, f"candidate-{r}")) for r in range(rounds)]
    finally:
        if slowdown:
            # The patched crates' artifacts would pass for this tree's (same names, newer times): remove them.
            members = ["locci-core", "locci-proxy", "locci-benches", "locci-scenario", "locci-sim", "locci-loadgen", "locci-e2e"]
            subprocess.run(["cargo", "clean", "-q", "--release", *[a for m in members for a in ("-p", m)]], cwd=repo,
                           env={**os.environ, "CARGO_TARGET_DIR": str(target)}, check=False)
            shutil.rmtree(work / "candidate", ignore_errors=True)

    names = sorted(set(per_round[0][0]) & set(per_round[0][1]))
    failed, record = [], {}
    print(f"\n{'bench':40} {'base ns':>12} {'cand ns':>12} {'ratio':>7} {'spread':>7} {'limit':>7}  verdict")
    for name in names:
        ratios = [c[name] / b[name] for b, c in per_round if name in b and name in c]
        mid = statistics.median(ratios)
        spread = max(abs(x - mid) for x in ratios)
        limit = 1 + max(min_threshold, k * spread)
        base_ns = statistics.median(b[name] for b, _ in per_round)
        cand_ns = statistics.median(c[name] for _, c in per_round)
        record[name] = cand_ns
        verdict = "ok" if mid <= limit else "REGRESSION"
        if verdict != "ok":
            failed.append(f"{name}: {mid:.2f}x the baseline, over its limit {limit:.2f}x")
        print(f"{name:40} {base_ns:>12.4g} {cand_ns:>12.4g} {mid:>7.3f} {spread:>7.3f} {limit:>7.3f}  {verdict}")
    if "--update" in sys.argv:
        baseline_file.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        print(f"\nrecorded {len(record)} medians of the candidate in {baseline_file}")
    if failed:
        print("\nrelease gate FAILED:\n  " + "\n  ".join(failed))
        sys.exit(1)
    print(f"\nrelease gate passed: {len(names)} benches within their limits")


if __name__ == "__main__":
    main()
