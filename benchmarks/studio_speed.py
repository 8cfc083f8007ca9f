"""The studio's costs on the built-in model, side by side in one process: one picture, a 2x2 grid
(four pictures in one batch, as /studio/imagine draws them) and U (2x: Lanczos + tiled img2img at
the subtle strength), each the best of --runs after a warm-up.

    python benchmarks/studio_speed.py --runs 5 [--threads 2]

Goals (issue 17): grid <= 1.5x one picture, U <= 3x one picture.
"""

from __future__ import annotations

import argparse
import time

import torch

from noisecraft.pipeline import Pipeline
from noisecraft.settings import Request
from noisecraft.upscale import SUBTLE, upscale


def best(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--prompt", default="a palm tree")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = Pipeline.from_pretrained(None, device="cpu")
    one_request = Request(args.prompt, seed=1)
    picture = pipe(one_request)[0]
    one = best(lambda: pipe(one_request), args.runs)
    grid = best(lambda: pipe(Request(args.prompt, seed=1, num_images=4, batch_size=4)), args.runs)
    up = best(lambda: upscale(pipe, picture, 2, Request(args.prompt, seed=1), strength=SUBTLE), args.runs)
    _, how = upscale(pipe, picture, 2, Request(args.prompt, seed=1), strength=SUBTLE)
    print(f"built-in model, {pipe.config.image_size}px, {pipe.defaults['steps']} steps, torch threads {torch.get_num_threads()}, "
          f"best of {args.runs}")
    print(f"| measure | seconds | x one picture | goal |\n|---|---|---|---|")
    print(f"| one picture | {one:.3f} | 1.00 | |")
    print(f"| 2x2 grid (one batch of 4) | {grid:.3f} | {grid / one:.2f} | <= 1.5 |")
    print(f"| U 2x ({how}) | {up:.3f} | {up / one:.2f} | <= 3 |")


if __name__ == "__main__":
    main()
