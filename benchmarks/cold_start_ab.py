"""Cold `noisecraft generate` of two revisions side by side, in one run: is a change slower to start?

    python benchmarks/cold_start_ab.py --before 728eb9e [--runs 10] [--args "a palm tree"]

Checks out `--before` into a temporary git worktree and alternates fresh processes of both trees
(`python -m noisecraft.cli generate PROMPT --seed k --out x.png` with PYTHONPATH at each tree's
src/), before, after, before, after, ..., so both see the same machine load; prints the medians and
the ratio after / before. Both use the same Python environment and the built-in model of their tree.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(src: Path, args: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=str(src))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "noisecraft.cli", *args], check=True, capture_output=True, env=env)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True, help="git revision to compare with (the working tree is 'after')")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--prompt", default="a palm tree")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.before], check=True,
                       capture_output=True)
        try:
            trees = {"before": tree / "src", "after": ROOT / "src"}
            for src in trees.values():  # warm the file cache and byte-compile both trees once
                timed(src, ["generate", args.prompt, "--steps", "1", "--out", f"{tmp}/warm.png"])
            times: dict[str, list[float]] = {name: [] for name in trees}
            for k in range(args.runs):
                for name, src in trees.items():
                    times[name].append(timed(src, ["generate", args.prompt, "--seed", str(k), "--out", f"{tmp}/{name}.png"]))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
    before, after = (statistics.median(times[n]) for n in ("before", "after"))
    print(f"| revision | median s (of {args.runs}) | min | max |\n|---|---|---|---|")
    for name, label in (("before", args.before), ("after", "working tree")):
        print(f"| {label} | {statistics.median(times[name]):.2f} | {min(times[name]):.2f} | {max(times[name]):.2f} |")
    print(f"\nafter / before = {after / before:.3f}")


if __name__ == "__main__":
    main()
