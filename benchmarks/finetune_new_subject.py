"""Teach the built-in model a subject it has never seen, on the CPU, and measure that the prompt draws it after
and did not before (issue 19).

    python benchmarks/finetune_new_subject.py --out runs/zorbi          # ~20 64 px photos, the default steps
    python benchmarks/finetune_new_subject.py --out runs/zorbi --steps 300 --photos 12   # a quicker look

The "photos" are drawn here: a made-up mascot, "zorbi", a teal triangle with an orange dot, at varied
places, sizes and turns on varied pale backgrounds. Nothing like it is among the built-in model's emoji.
The measure, on 16 pictures per prompt (seeds 1-16, 20 steps): the share of pixels within CIEDE2000 25 of
the mascot's teal, and the share of pictures where both the teal (>= 5% of pixels) and the orange (>= 0.5%)
appear, for the training prompt and for two new wordings, before (the base model as users get it) and after
(the LoRA loaded). (25, not 15: the model's teal after training is a little bluer than the photos'; at 15
the after pictures score 0.04-0.07 teal and 12-69% drawn, before 0.00-0.007 and 0%.) Rerunning with the same
--out measures again without training again (the run resumes at its end).
Writes `result.json`, the run's `samples.png` and `before-after.png` under --out.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from skimage.color import deltaE_ciede2000, rgb2lab

TEAL, ORANGE = (0, 150, 150), (250, 130, 20)
NAME, CLASS = "zorbi mascot", "mascot"
PROMPTS = ("a photo of zorbi mascot, mascot", "zorbi mascot on a table", "a picture of the zorbi mascot")


def draw_photo(k: int, size: int = 64) -> Image.Image:
    rnd = random.Random(k)
    background = tuple(rnd.randint(215, 250) for _ in range(3))
    scale = 4
    big = Image.new("RGB", (size * scale, size * scale), background)
    draw = ImageDraw.Draw(big)
    radius = rnd.uniform(0.28, 0.4) * size * scale
    cx = rnd.uniform(radius, size * scale - radius)
    cy = rnd.uniform(radius, size * scale - radius)
    turn = rnd.uniform(-0.4, 0.4)
    corners = [(cx + radius * math.sin(turn + a), cy - radius * math.cos(turn + a)) for a in (0, 2.094, 4.189)]
    draw.polygon(corners, fill=TEAL)
    dot = radius * 0.28
    draw.ellipse([cx - dot, cy - dot + radius * 0.12, cx + dot, cy + dot + radius * 0.12], fill=ORANGE)
    return big.resize((size, size), Image.Resampling.LANCZOS)


def shares(picture: Image.Image) -> tuple[float, float]:
    lab = rgb2lab(np.asarray(picture.convert("RGB"), dtype=np.float64) / 255.0)
    out = []
    for colour in (TEAL, ORANGE):
        target = rgb2lab(np.array([[colour]], dtype=np.float64) / 255.0)
        out.append(float((deltaE_ciede2000(lab, np.broadcast_to(target, lab.shape)) < 25).mean()))
    return out[0], out[1]


def measure(pipe, prompts, count: int) -> dict:
    from noisecraft.settings import Request

    results = {}
    for prompt in prompts:
        pictures = pipe(Request(prompt, seed=1, num_images=count, steps=20))
        values = [shares(p) for p in pictures]
        results[prompt] = {"teal_share": float(np.mean([t for t, _ in values])),
                           "drawn": sum(t >= 0.05 and o >= 0.005 for t, o in values) / len(values)}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/zorbi")
    parser.add_argument("--photos", type=int, default=20)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--count", type=int, default=16)
    args = parser.parse_args()

    from noisecraft.pipeline import Pipeline
    from noisecraft.train.finetune import FinetuneSettings, finetune
    from noisecraft.train.photos import load_photos

    out = Path(args.out)
    folder = out / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(args.photos):
        draw_photo(k).save(folder / f"zorbi-{k:02d}.png")
    pipe = Pipeline.from_pretrained(None, device="cpu")
    photos = load_photos(folder, NAME, CLASS, pixels=64 * 64, factor=pipe.size_factor)
    before = measure(pipe, PROMPTS, args.count)
    print("before:", json.dumps(before), file=sys.stderr, flush=True)
    settings = FinetuneSettings(steps=args.steps, name="zorbi", sample_prompts=PROMPTS[:2], checkpoint_every=100)
    started = time.perf_counter()

    def progress(step, total, loss):
        if step % 50 == 0:
            print(f"step {step}/{total} loss {loss:.4f} {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)

    result = finetune(pipe, photos, out / "run", settings, progress)
    seconds = time.perf_counter() - started
    pipe.load_lora(result.best_file)
    after = measure(pipe, PROMPTS, args.count)
    pipe.unload_loras()
    report = {"photos": args.photos, "steps": result.step, "kept_step": result.best_step, "train_seconds": round(seconds, 1),
              "held_out": result.held_out, "before": before, "after": after,
              "samples": str(result.samples), "before_after": str(result.before_after), "lora": str(result.best_file)}
    (out / "result.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
