#!/usr/bin/env python3
"""The release gate: compares the latest criterion medians with benches/baseline.json.

Each core bench fails the gate when its median is more than THRESHOLD above the baseline (default 0.30:
these are nanosecond benches on a shared 2-core machine). The whole-request bench is gated on the ratio
through_locci / direct measured in the same run, so machine speed cancels out. A bench over its limit is
measured once more on its own before the gate fails: one slow sample among many benches run back to back on a
shared machine is noise, a regression shows again. `--update` rewrites the baseline from the latest run instead.
"""
import json, os, re, subprocess, sys, pathlib

target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", "target"))
crit = target / "criterion"
baseline_file = pathlib.Path(__file__).resolve().parent.parent / "baseline.json"
threshold = float(os.environ.get("THRESHOLD", "0.30"))
ratio_threshold = float(os.environ.get("RATIO_THRESHOLD", "0.30"))

def median(path):
    est = json.loads((path / "new" / "estimates.json").read_text())
    return est["median"]["point_estimate"]

current = {}
for est in sorted(crit.glob("**/new/estimates.json")):
    bench_dir = est.parent.parent
    name = str(bench_dir.relative_to(crit))
    if name.endswith("report") or "/base" in name:
        continue
    current[name] = median(bench_dir)
if "request/direct" in current and "request/through_locci" in current:
    current["request/ratio"] = current["request/through_locci"] / current["request/direct"]

if not current:
    sys.exit("no criterion results found: run the benches first")
if "--update" in sys.argv:
    baseline_file.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    print(f"baseline updated: {len(current)} benches in {baseline_file}")
    sys.exit(0)

baseline = json.loads(baseline_file.read_text())
# Absolute network latencies: reported, and gated through their ratio.
INFO = ("request/direct", "request/through_locci")


def limit_of(name, base):
    return base * (1 + (ratio_threshold if name == "request/ratio" else threshold))


def remeasure(name):
    """Runs one bench again on its own and returns its new median (the ratio for request/ratio)."""
    bench, pattern = ("request", "^request/") if name.startswith("request/") else ("core", "^" + re.escape(name) + "$")
    subprocess.run(["cargo", "bench", "-q", "-p", "locci-benches", "--bench", bench, "--", "--warm-up-time", "1",
                    "--measurement-time", "3", pattern], check=True, stdout=subprocess.DEVNULL)
    if name == "request/ratio":
        return median(crit / "request" / "through_locci") / median(crit / "request" / "direct")
    return median(crit / name)


for name, base in sorted(baseline.items()):
    if name in current and name not in INFO and current[name] > limit_of(name, base):
        print(f"{name}: {current[name]:.4g} over its limit {limit_of(name, base):.4g}; measuring it again on its own")
        current[name] = remeasure(name)

failed = []
for name, base in sorted(baseline.items()):
    if name not in current:
        failed.append(f"{name}: missing from this run")
        continue
    now = current[name]
    if name in INFO:
        verdict = "info"
    else:
        limit = limit_of(name, base)
        verdict = "ok" if now <= limit else "REGRESSION"
        if verdict != "ok":
            failed.append(f"{name}: {now:.4g} > {limit:.4g}")
    unit = "" if name == "request/ratio" else " ns"
    print(f"{verdict:10} {name:40} baseline {base:>12.4g}{unit}   now {now:>12.4g}{unit}   ({(now / base - 1) * 100:+.1f}%)")
if failed:
    print("\nrelease gate FAILED:\n  " + "\n  ".join(failed))
    sys.exit(1)
print("\nrelease gate passed")
