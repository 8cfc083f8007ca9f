"""A labelled grid of the built-in model's pictures, for the README and the model card.

    python scripts/sample_grid.py docs/builtin-samples.png [--model PATH] [--prompt TEXT ...]

Each row is one prompt, seeds 0..N-1; a prompt drawn as another subject (noisecraft/subjects.py)
is labelled "prompt -> subject".
"""

import argparse

from PIL import Image, ImageDraw

from noisecraft.pipeline import Pipeline
from noisecraft.pngmeta import save_png

PROMPTS = ["palm tree", "red apple", "rocket", "pizza", "cat face", "sun", "house", "snowman"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--model", default=None)
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--prompt", action="append", default=None, help="a row's prompt (repeatable; default: eight plain names)")
    args = parser.parse_args()
    prompts = args.prompt or PROMPTS
    pipe = Pipeline.from_pretrained(args.model, device="cpu")
    subjects = [pipe.resolve(p).subject for p in prompts]
    labels = [p + (f" -> {s}" if s else "") for p, s in zip(prompts, subjects)]
    size = 64
    label = 8 + int(max(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(t) for t in labels))
    sheet = Image.new("RGB", (label + args.seeds * size, len(prompts) * size), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (prompt, text) in enumerate(zip(prompts, labels)):
        for col, image in enumerate(pipe(prompt, seed=0, num_images=args.seeds)):
            sheet.paste(image, (label + col * size, row * size))
        draw.text((4, row * size + size // 2 - 6), text, fill="black")
    defaults = pipe.config.defaults
    save_png(sheet, args.out, parameters=f"noisecraft built-in model; prompts {prompts}; seeds 0..{args.seeds - 1}; {defaults}")
    print(args.out)


if __name__ == "__main__":
    main()
