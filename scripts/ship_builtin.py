"""Copy a trained run into the package as the built-in model: fp16 weights, licences, model card.

    python scripts/ship_builtin.py runs/emoji-unet

The model card (src/noisecraft/builtin/MODEL_CARD.md) is written by hand from the run's numbers.
"""

import shutil
import sys
from pathlib import Path

import torch

from noisecraft.checkpoints import load_model_file, save_model_file

ROOT = Path(__file__).resolve().parents[1]
BUILTIN = ROOT / "src" / "noisecraft" / "builtin"
LICENSES = ROOT / "src" / "noisecraft" / "datasets" / "licenses"


def main(run: str) -> None:
    config, parts, file = load_model_file(Path(run))
    BUILTIN.mkdir(parents=True, exist_ok=True)
    out = save_model_file(BUILTIN / "model.safetensors", config, parts, dtype=torch.float16)
    (BUILTIN / "LICENSES").mkdir(exist_ok=True)
    for licence in LICENSES.iterdir():
        shutil.copyfile(licence, BUILTIN / "LICENSES" / licence.name)
    print(f"{out}: {out.stat().st_size / 1e6:.1f} MB from {file}")


if __name__ == "__main__":
    main(sys.argv[1])
