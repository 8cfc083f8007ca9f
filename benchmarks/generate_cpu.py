"""How long `noisecraft generate` takes on this machine, end to end and by phase.

    python benchmarks/generate_cpu.py [--runs 5] [--model PATH]

End to end: `noisecraft generate "a palm tree" --out x.png` as a fresh process, process start to
PNG on disk, median of --runs; also 16 images in one call. By phase, in one process: import,
model load, sampling (1 image and 16 images). Peak memory: the largest RSS of the child processes.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def timed_process(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "noisecraft.cli", *args], check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    model = ["--model", args.model] if args.model else []
    with tempfile.TemporaryDirectory() as tmp:
        one = [timed_process(["generate", "a palm tree", "--seed", str(k), "--out", f"{tmp}/x.png", *model]) for k in range(args.runs)]
        sixteen = [timed_process(["generate", "a palm tree", "--num-images", "16", "--out", tmp, *model]) for _ in range(max(1, args.runs // 2))]
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    t0 = time.perf_counter()
    from noisecraft.pipeline import Pipeline

    t1 = time.perf_counter()
    pipe = Pipeline.from_pretrained(args.model)
    t2 = time.perf_counter()
    pipe("a palm tree", seed=0)
    t3 = time.perf_counter()
    pipe("a palm tree", seed=0, num_images=16)
    t4 = time.perf_counter()

    print("| measure | seconds |\n|---|---|")
    print(f"| `generate` 1 image, process start to PNG (median of {len(one)}) | {statistics.median(one):.2f} |")
    print(f"| `generate --num-images 16` (median of {len(sixteen)}) | {statistics.median(sixteen):.2f} |")
    print(f"| import noisecraft.pipeline | {t1 - t0:.2f} |")
    print(f"| Pipeline.from_pretrained | {t2 - t1:.2f} |")
    print(f"| sampling + decode, 1 image ({pipe.config.defaults.get('steps')} steps) | {t3 - t2:.2f} |")
    print(f"| sampling + decode, 16 images | {t4 - t3:.2f} |")
    print(f"\npeak RSS of a generate process: {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
