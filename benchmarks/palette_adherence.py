"""How close brand pictures come to their kit's palette: the median CIEDE2000 from each picture's 5 dominant
colours (k-means in Lab) to the nearest palette colour, for 20 prompts x 3 example kits, made with the built-in
model: the plain prompt, the prompt with the kit's words (style and colour names), and then the colour step at
strength 0.5 (the kits' default) and 1.0.

    python benchmarks/palette_adherence.py            # about 2 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from noisecraft.brand import load_kit, palette_report
from noisecraft.pipeline import Pipeline
from noisecraft.settings import Request

KITS = Path(__file__).parents[1] / "examples" / "brands"
PROMPTS = ["pizza", "a hamburger", "a cup of coffee", "a slice of cake", "ice cream", "a house", "a snowflake", "the sun",
           "fire", "a tooth", "a smiling face", "a toolbox", "a wrench", "a thermometer", "a palm tree", "a car",
           "a wrapped gift", "a flower", "a star", "a bowl of spaghetti"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help="how many of the 20 prompts")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    pipe = Pipeline.from_pretrained("builtin", device="cpu")
    started = time.perf_counter()
    rows = []
    for folder in ("trattoria", "coolair", "brightsmile"):
        kit = load_kit(KITS / folder)
        columns = {"plain prompt": [], "kit words": [], "+ colour step 0.5": [], "+ colour step 1.0": []}
        for k, prompt in enumerate(PROMPTS[: args.prompts]):
            plain = pipe(pipe.resolve(Request(prompt, steps=args.steps, seed=args.seed + k)))[0]
            worded = pipe(pipe.resolve(Request(*kit.apply(prompt), steps=args.steps, seed=args.seed + k)))[0]
            for name, picture in [("plain prompt", plain), ("kit words", worded),
                                  ("+ colour step 0.5", kit.finish(worded, 0.5)), ("+ colour step 1.0", kit.finish(worded, 1.0))]:
                columns[name].append(palette_report(picture, kit.colours).median)
        rows.append((kit.name, {name: statistics.median(values) for name, values in columns.items()},
                     sum(b < a for a, b in zip(columns["kit words"], columns["+ colour step 0.5"]))))
    names = list(rows[0][1])
    print(f"median over {args.prompts} prompts of each picture's median CIEDE2000 to the palette (lower is closer)\n")
    print("| kit | " + " | ".join(names) + " | pictures closer after the 0.5 step |")
    print("|---" * (len(names) + 2) + "|")
    for kit, values, better in rows:
        print(f"| {kit} | " + " | ".join(f"{values[n]:.1f}" for n in names) + f" | {better}/{args.prompts} |")
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
