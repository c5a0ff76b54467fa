#!/usr/bin/env python3
"""Per-request instructions by function: the difference of two callgrind runs of one proxy (N1 and N2
requests) divided by N2 - N1, so start-up and shutdown cancel out. Prints the functions with the most
instructions of their own per request and, with --inclusive PATTERN, the inclusive counts of the functions
whose names contain PATTERN (locci's ProxyHttp phases, say)."""
import argparse, re, subprocess, sys

LINE = re.compile(r"^\s*([0-9,]+)\s+(?:\([^)]*\)\s+)?(.*?)(?:\s+\[[^\]]*\])?$")


def functions(path, inclusive):
    """Instructions by function name from callgrind_annotate."""
    args = ["callgrind_annotate", "--threshold=100"] + (["--inclusive=yes"] if inclusive else []) + [path]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    counts, started = {}, False
    for line in out.splitlines():
        if "file:function" in line:
            started = True
            continue
        m = LINE.match(line) if started else None
        if m and "PROGRAM TOTALS" not in m.group(2):
            name = m.group(2).split(":", 1)[-1]
            counts[name] = counts.get(name, 0) + int(m.group(1).replace(",", ""))
    return counts


def per_request(small_path, large_path, requests, inclusive):
    """Instructions per request by function, from the runs of `requests` apart."""
    small, large = functions(small_path, inclusive), functions(large_path, inclusive)
    return {f: (large[f] - small.get(f, 0)) / requests for f in large}


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("small"); p.add_argument("large"); p.add_argument("requests", type=int)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--inclusive", default=None)
    p.add_argument("--against", nargs=3, metavar=("SMALL", "LARGE", "REQUESTS"),
                   help="another proxy's two runs: print where the first spends more per request, by function")
    a = p.parse_args()
    if a.against:
        base = per_request(a.against[0], a.against[1], int(a.against[2]), False)
        mine = per_request(a.small, a.large, a.requests, False)
        diff = {f: mine.get(f, 0) - base.get(f, 0) for f in set(mine) | set(base)}
        print(f"\nown instructions per request, more than the other proxy (total {sum(diff.values()):+.0f}):")
        for f, v in sorted(diff.items(), key=lambda kv: -kv[1])[: a.top]:
            print(f"{v:+10.0f}  {f[:150]}")
        return
    for inclusive in [False] + ([True] if a.inclusive else []):
        per = per_request(a.small, a.large, a.requests, inclusive)
        if inclusive:
            rows = sorted(((v, f) for f, v in per.items() if a.inclusive in f and v >= 50), reverse=True)
            print(f"\ninclusive instructions per request, functions matching {a.inclusive!r}:")
        else:
            if a.top == 0:
                continue
            rows = sorted(((v, f) for f, v in per.items()), reverse=True)[: a.top]
            print(f"\nown instructions per request, top {a.top} functions:")
        for v, f in rows:
            print(f"{v:10.0f}  {f[:150]}")


if __name__ == "__main__":
    sys.exit(main())
