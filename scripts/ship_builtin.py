"""Copy a trained run into the package as the built-in model: fp16 weights, licences, model card.

    python scripts/ship_builtin.py runs/emoji-unet-stage6 [--vae DECODER_RUN] [--subjects DATA | --no-subjects]

`--vae` swaps in another autoencoder that shares the run's latent space: one whose encoder is the
very same (a decoder-only fine-tune, configs/emoji-vae-decoder.toml); anything else is refused.
`--subjects` builds the subject index (noisecraft/text/subjects.py) from the training data's names and
main captions, so prompts draw the nearest emoji the model knows.
The model card (src/noisecraft/builtin/MODEL_CARD.md) is written by hand from the run's numbers.
"""

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import torch

from noisecraft.checkpoints import load_model_file, save_model_file
from noisecraft.datasets.emoji import subject_phrases
from noisecraft.text.minilm import load_text_encoder
from noisecraft.text.subjects import SubjectIndex

ROOT = Path(__file__).resolve().parents[1]
BUILTIN = ROOT / "src" / "noisecraft" / "builtin"
LICENSES = ROOT / "src" / "noisecraft" / "datasets" / "licenses"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="the UNet run folder or model file")
    parser.add_argument("--vae", default=None, help="a decoder-only fine-tune of the run's autoencoder")
    parser.add_argument("--subjects", default=str(ROOT / "data" / "emoji64-nst"), help="training data whose names and captions make the subject index")
    parser.add_argument("--no-subjects", action="store_true", help="ship without a subject index")
    args = parser.parse_args()
    config, parts, file = load_model_file(Path(args.run))
    if args.vae:
        vae_config, vae_parts, _ = load_model_file(Path(args.vae))
        encoder = [k for k in parts["vae"] if k.startswith(("encoder.", "quant_conv."))]
        if vae_config.vae.scaling_factor != config.vae.scaling_factor or not all(
                torch.equal(parts["vae"][k].float(), vae_parts["vae"][k].float()) for k in encoder):
            raise SystemExit(f"{args.vae} has another encoder than {file}'s; the UNet would not understand its latents")
        config = dataclasses.replace(config, vae=vae_config.vae)
        parts["vae"] = vae_parts["vae"]
    parts.pop("subjects", None)
    if not args.no_subjects:
        rows = [json.loads(line) for line in (Path(args.subjects) / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
        index = SubjectIndex.build(load_text_encoder(config.text_encoder), subject_phrases(rows))
        parts["subjects"] = index.to_part()
        print(f"subject index: {len(index.names)} subjects, {len(index.vectors)} phrases from {args.subjects}")
    BUILTIN.mkdir(parents=True, exist_ok=True)
    out = save_model_file(BUILTIN / "model.safetensors", config, parts, dtype=torch.float16)
    (BUILTIN / "LICENSES").mkdir(exist_ok=True)
    for licence in LICENSES.iterdir():
        shutil.copyfile(licence, BUILTIN / "LICENSES" / licence.name)
    print(f"{out}: {out.stat().st_size / 1e6:.1f} MB from {file}" + (f" with the autoencoder of {args.vae}" if args.vae else ""))


if __name__ == "__main__":
    main()
