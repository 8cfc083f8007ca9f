"""A labelled grid of the built-in model's pictures, for the README and the model card.

    python scripts/sample_grid.py docs/builtin-samples.png [--model PATH]
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
    args = parser.parse_args()
    pipe = Pipeline.from_pretrained(args.model, device="cpu")
    size, label = 64, 96
    sheet = Image.new("RGB", (label + args.seeds * size, len(PROMPTS) * size), "white")
    draw = ImageDraw.Draw(sheet)
    for row, prompt in enumerate(PROMPTS):
        for col, image in enumerate(pipe(prompt, seed=0, num_images=args.seeds)):
            sheet.paste(image, (label + col * size, row * size))
        draw.text((4, row * size + size // 2 - 6), prompt, fill="black")
    defaults = pipe.config.defaults
    save_png(sheet, args.out, parameters=f"noisecraft built-in model; prompts {PROMPTS}; seeds 0..{args.seeds - 1}; {defaults}")
    print(args.out)


if __name__ == "__main__":
    main()
