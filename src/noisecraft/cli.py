"""The `noisecraft` command: parse, validate, call `Pipeline` or the trainer. No diffusion logic here."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .errors import UserError


def _size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"size must look like 512x512 or 512, not {text!r}")
    width = int(match.group(1))
    return width, int(match.group(2) or width)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="noisecraft", description="Text-to-image diffusion: generate, train, inspect.")
    parser.add_argument("--version", action="version", version=f"noisecraft {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser("generate", help="make pictures from a prompt", description="Make pictures from a prompt.")
    gen.add_argument("prompt", help="what the picture shows")
    gen.add_argument("--negative", default="", help="what the picture must not show")
    gen.add_argument("--steps", type=int, default=None, help="sampling steps (model default: 20)")
    gen.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (model default)")
    gen.add_argument("--rescale", type=float, default=0.0, help="guidance rescale, 0..1 (Lin et al. 2023)")
    gen.add_argument("--sampler", default=None, help="sampler name, e.g. dpmpp_2m_karras, euler_a, ddim (see `noisecraft samplers`)")
    gen.add_argument("--seed", type=int, default=None, help="random seed; image k uses seed+k (default: random)")
    gen.add_argument("--num-images", type=int, default=1, help="how many pictures")
    gen.add_argument("--batch-size", type=int, default=16, help="pictures per network call")
    gen.add_argument("--size", type=_size, default=None, metavar="WxH", help="picture size in pixels (model default)")
    gen.add_argument("--model", default=None, help="model folder or .safetensors file (default: the built-in model)")
    gen.add_argument("--out", default=".", help="output .png file, or a folder (default: the current folder)")
    gen.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])

    train = commands.add_parser("train", help="train a model from a TOML config", description="Train a VAE or a pixel/latent UNet.")
    train.add_argument("config", help="training config (.toml); see configs/")
    train.add_argument("--steps", type=int, default=None, help="override train.steps")
    train.add_argument("--out", default=None, help="override train.out, the run folder")
    train.add_argument("--data", default=None, help="override data.path, the image folder")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override any setting (TOML value)")
    train.add_argument("--no-resume", action="store_true", help="start over even if the run folder has a checkpoint")
    train.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    train.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])

    info = commands.add_parser("info", help="describe a model file", description="Describe a model file.")
    info.add_argument("model", nargs="?", default=None, help="model folder or .safetensors file (default: the built-in model)")

    commands.add_parser("samplers", help="list the samplers", description="List the samplers.")

    data = commands.add_parser("data", help="build ready-made datasets", description="Build ready-made training datasets.")
    which = data.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    emoji = which.add_parser("emoji", help="emoji artwork from npm packages (Noto, Twemoji)")
    emoji.add_argument("--out", required=True, help="folder to write the dataset to")
    emoji.add_argument("--from-tarball", action="append", default=None, metavar="PATH", help="use a package tarball made by `npm pack` (repeatable)")
    emoji.add_argument("--styles", default="google,twitter", help="comma-separated styles")
    emoji.add_argument("--size", type=int, default=64, help="image size in pixels")
    emoji.add_argument("--no-skin-tones", action="store_true", help="leave out the skin-tone variants of people and hands")
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def _output_paths(out: str, prompt: str, seeds: list[int]) -> list[Path]:
    target = Path(out).expanduser()
    if target.suffix.lower() == ".png":
        target.parent.mkdir(parents=True, exist_ok=True)
        if len(seeds) == 1:
            return [target]
        return [target.with_name(f"{target.stem}-{k}.png") for k in range(len(seeds))]
    if target.exists() and not target.is_dir():
        raise UserError(f"--out {out} is a file that is not a .png; give a .png name or a folder")
    target.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40] or "image"
    paths = []
    for seed in seeds:
        path, n = target / f"{slug}-{seed}.png", 1
        while path.exists():
            path, n = target / f"{slug}-{seed}-{n}.png", n + 1
        paths.append(path)
    return paths


def cmd_generate(args) -> int:
    import time

    from .pipeline import Pipeline
    from .pngmeta import save_png

    started = time.perf_counter()
    pipe = Pipeline.from_pretrained(args.model, device=args.device)
    width, height = args.size if args.size else (None, None)
    settings = pipe.settings(args.prompt, args.negative, args.steps, args.guidance, args.sampler, width, height,
                             args.seed, args.num_images, args.rescale)
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    images = pipe(settings.prompt, settings.negative_prompt, settings.steps, settings.guidance_scale, settings.sampler,
                  settings.width, settings.height, settings.seed, settings.num_images, settings.guidance_rescale,
                  batch_size=args.batch_size)
    paths = _output_paths(args.out, settings.prompt, [settings.seed + k for k in range(len(images))])
    for image, path in zip(images, paths):
        save_png(image, path)
        print(path)
    print(f"{len(images)} image(s), {settings.width}x{settings.height}, {settings.steps} steps of {settings.sampler}, "
          f"seed {settings.seed}, in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


def cmd_train(args) -> int:
    import tomllib

    import torch

    from .train.config import load_train_config
    from .train.trainer import Trainer

    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise UserError(f"--set takes SECTION.KEY=VALUE, not {item!r}")
        try:
            overrides[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            overrides[key.strip()] = value
    if args.steps is not None:
        overrides["train.steps"] = args.steps
    if args.out is not None:
        overrides["train.out"] = str(Path(args.out).resolve())
    if args.data is not None:
        overrides["data.path"] = str(Path(args.data).resolve())
    config = load_train_config(args.config, overrides)
    trainer = Trainer(config, device=args.device, resume=not args.no_resume, progress=not args.no_progress)
    try:
        result = trainer.train()
    except (torch.OutOfMemoryError, MemoryError):
        raise UserError(f"out of memory at step {trainer.step}; lower train.batch_size or the model size "
                        "(the last checkpoint is kept, and the same command resumes)") from None
    print(f"{result.status} at step {result.step}; model: {result.model_path}" + (f"; {result.bad_steps} step(s) skipped for non-finite loss" if result.bad_steps else ""))
    return 0 if result.status == "done" else 3


def cmd_info(args) -> int:
    from .checkpoints import load_model_file, model_hash
    from .pipeline import BUILTIN_MODEL

    path = args.model or BUILTIN_MODEL
    config, parts, file = load_model_file(path)
    counts = {part: sum(t.numel() for t in state.values()) for part, state in parts.items()}
    dtypes = {part: sorted({str(t.dtype).removeprefix("torch.") for t in state.values()}) for part, state in parts.items()}
    print(f"file:        {file} ({file.stat().st_size / 1e6:.1f} MB, hash {model_hash(file)})")
    print(f"name:        {config.name}")
    print(f"kind:        {config.kind} ({'UNet over VAE latents' if config.kind == 'latent' else 'UNet over pixels' if config.kind == 'pixel' else 'autoencoder alone'})")
    if config.unet:
        print(f"unet:        {counts.get('unet', 0) / 1e6:.2f}M parameters ({', '.join(dtypes.get('unet', []))}), channels {config.unet.model_channels} x {list(config.unet.channel_mult)}")
        print(f"prediction:  {config.prediction}, {config.beta_schedule} betas {config.beta_start}..{config.beta_end}, {config.num_train_timesteps} steps")
    if config.vae:
        print(f"vae:         {counts.get('vae', 0) / 1e6:.2f}M parameters, downsampling x{config.vae.downsample_factor}, {config.vae.embed_dim} latent channels, scaling {config.vae.scaling_factor}")
    print(f"text:        {config.text_encoder or 'none (unconditional)'}")
    print(f"image size:  {config.image_size}x{config.image_size}")
    print(f"defaults:    {', '.join(f'{k}={v}' for k, v in config.defaults.items())}")
    return 0


def cmd_samplers(args) -> int:
    from .samplers import SAMPLERS, resolve_sampler

    for name in SAMPLERS:
        spec = resolve_sampler(name)
        print(f"{name:24s} {spec.a1111_name}")
    return 0


def cmd_data(args) -> int:
    from .datasets.emoji import build_emoji_dataset

    styles = tuple(s.strip() for s in args.styles.split(",") if s.strip())
    stats = build_emoji_dataset(args.out, styles=styles, size=args.size, tarballs=args.from_tarball,
                                skin_tones=not args.no_skin_tones)
    print(stats)
    return 0


COMMANDS = {"generate": cmd_generate, "train": cmd_train, "info": cmd_info, "samplers": cmd_samplers, "data": cmd_data}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as error:
        print(f"noisecraft: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("noisecraft: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("noisecraft: error: out of memory; lower the size, the number of images or the batch size", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
