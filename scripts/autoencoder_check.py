"""Compare autoencoders on real emoji: reconstruction PSNR, colour error on green pixels, a picture strip.

    python scripts/autoencoder_check.py runs/emoji-vae/model.safetensors runs/emoji-vae-stage2/model.safetensors

Each file may be a VAE run's model file or any latent model file (its ``vae.*`` part is used).
Measured on 512 images of DATA drawn with a fixed seed (so runs are comparable) by
encode -> posterior mean -> decode, in 8-bit pixels. "Green pixels" are those whose green channel
exceeds red and blue by 0.15: the colour the first built-in autoencoder lost. The strip (--strip)
shows the plant emoji: the real pictures on top, then one row per file.
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from noisecraft.checkpoints import load_model_file
from noisecraft.eval.metrics import psnr
from noisecraft.eval.run import reconstruct
from noisecraft.eval.train_judge import load_real_set
from noisecraft.models.vae import AutoencoderKL

PLANTS = ("evergreen tree", "deciduous tree", "palm tree", "cactus", "four leaf clover", "green apple")



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="model files holding an autoencoder")
    parser.add_argument("--data", default="data/emoji64", help="real emoji (`noisecraft data emoji`)")
    parser.add_argument("--strip", default=None, help="write the plant strip PNG here")
    args = parser.parse_args()
    real = load_real_set(args.data)
    x = real.images[torch.randperm(len(real.images), generator=torch.Generator().manual_seed(0))[:512]].float() / 255
    plants = real.images[[i for i, c in enumerate(real.labels.tolist()) if real.classes[c] in PLANTS]].float() / 255
    green = (x[:, 1] > x[:, 0] + 0.15) & (x[:, 1] > x[:, 2] + 0.15)
    rows = [plants]
    for file in args.files:
        config, parts, _ = load_model_file(Path(file))
        vae = AutoencoderKL(config.vae)
        vae.load_state_dict({k: v.float() for k, v in parts["vae"].items()})
        vae.eval()
        recon = reconstruct(vae, x)
        error = (recon.float() / 255 - x).abs().permute(1, 0, 2, 3)[:, green].mean(1)
        print(f"{file}: PSNR {psnr(recon, (x * 255).round()):.2f} dB; mean |error| on {int(green.sum())} green pixels "
              f"R {error[0]:.3f} G {error[1]:.3f} B {error[2]:.3f}")
        rows.append(reconstruct(vae, plants).float() / 255)
    if args.strip:
        strip = torch.cat([torch.cat(list(row), dim=2) for row in rows], dim=1)
        Image.fromarray((strip.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(args.strip, optimize=True)


if __name__ == "__main__":
    main()
