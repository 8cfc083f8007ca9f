"""The `noisecraft` command: parse, validate, call `Pipeline` or the trainer. No diffusion logic here."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .errors import UserError, out_of_memory
from .version import __version__


def _size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"size must look like 512x512 or 512, not {text!r}")
    width = int(match.group(1))
    return width, int(match.group(2) or width)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="noisecraft", description="Text-to-image diffusion: generate, train, inspect.")
    parser.add_argument("--version", action="version", version=f"noisecraft {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser("generate", help="make pictures from a prompt", description="Make pictures from a prompt.")
    gen.add_argument("prompt", help="what the picture shows")
    gen.add_argument("--negative", default="", help="what the picture must not show")
    gen.add_argument("--steps", type=int, default=None, help="sampling steps (model default: 20)")
    gen.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (model default)")
    gen.add_argument("--rescale", type=float, default=0.0, help="guidance rescale, 0..1 (Lin et al. 2023)")
    gen.add_argument("--sampler", default=None, help="sampler name, e.g. dpmpp_2m_karras, euler_a, ddim (see `noisecraft samplers`)")
    gen.add_argument("--scheduler", default=None, choices=["automatic", "karras", "exponential"],
                     help="the sampler's step spacing, as A1111's scheduler (default: the sampler's own)")
    gen.add_argument("--subject", default="auto", help="auto: a model with a subject index (the built-in one) draws the nearest subject it knows; "
                     "off: the prompt's own words; or the words to draw (written into the PNG)")
    gen.add_argument("--seed", type=int, default=None, help="random seed; image k uses seed+k (default: random)")
    gen.add_argument("--num-images", type=int, default=1, help="how many pictures")
    gen.add_argument("--batch-size", type=int, default=16, help="pictures per network call")
    gen.add_argument("--size", type=_size, default=None, metavar="WxH", help="picture size in pixels (model default)")
    gen.add_argument("--model", default=None, help="noisecraft model, Stable Diffusion .safetensors/.ckpt file or diffusers folder (default: the built-in model)")
    gen.add_argument("--out", default=".", help="output .png file, or a folder (default: the current folder)")
    gen.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    gen.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"], help="network precision (default: bf16 on CUDA, fp32 elsewhere)")
    gen.add_argument("--init-image", default=None, metavar="PNG", help="start from this picture (img2img)")
    gen.add_argument("--strength", type=float, default=None, help="img2img: how much to change the start picture, 0..1 (default 0.75)")
    gen.add_argument("--mask", default=None, metavar="PNG", help="inpainting: repaint where this mask is white")
    gen.add_argument("--outpaint", default=None, metavar="L,T,R,B", help="extend the start picture by these many pixels per side, painting the new area")
    gen.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]", help="merge a LoRA file (repeatable)")
    gen.add_argument("--embedding", action="append", default=[], metavar="FILE[:WORD]", help="load a textual-inversion embedding, called by WORD (default: its file name) in the prompt (repeatable)")
    gen.add_argument("--vae", default=None, metavar="FILE", help="use this autoencoder instead of the checkpoint's")
    gen.add_argument("--prediction", default=None, choices=["eps", "v"], help="override the model's prediction type (SD 2.x 768 models: v)")
    gen.add_argument("--vae-tiling", action="store_true", help="decode in tiles (bounded memory for large pictures; automatic above 1024 px)")
    gen.add_argument("--offload", action="store_true", help="keep weights in CPU memory, moving each block to the GPU only while it runs")
    gen.add_argument("--gallery", default=None, metavar="DIR", help="also keep the pictures in the gallery in DIR (as `serve --gallery`)")

    up = commands.add_parser("upscale", help="make a picture larger, redrawing detail with the model",
                             description="Enlarge a picture (Lanczos or an ESRGAN-family file), then redraw it tile by tile at low strength.")
    up.add_argument("image", help="the picture (PNG, JPEG or WebP)")
    up.add_argument("--scale", type=float, default=2.0, help="how many times larger (default 2)")
    up.add_argument("--strength", type=float, default=None, help="how much the model redraws, 0..1 (default 0.25; 0: pixels only)")
    up.add_argument("--prompt", default=None, help="what the picture shows (default: the prompt stored in it)")
    up.add_argument("--upscaler", default="Lanczos", metavar="NAME|FILE", help="Lanczos, Nearest, or an ESRGAN-family .pth/.safetensors file")
    up.add_argument("--model", default=None, help="the model that redraws (default: the built-in model)")
    up.add_argument("--steps", type=int, default=None, help="sampling steps (model default)")
    up.add_argument("--seed", type=int, default=None, help="tile k is drawn with seed + k (default: random)")
    up.add_argument("--out", default=".", help="output .png file, or a folder")
    up.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])

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

    ev = commands.add_parser("eval", help="score an emoji model's prompt adherence and fidelity with a judge classifier",
                             description="Generate pictures for a prompt list, name them with the emoji judge, and report "
                                         "top-1/top-5 adherence and Frechet distances per sampler and step count.")
    ev.add_argument("--model", default=None, help="model folder or .safetensors file (default: the built-in model)")
    ev.add_argument("--data", default="data/emoji64", help="the real emoji (`noisecraft data emoji`)")
    ev.add_argument("--judge", default="evals/judge.safetensors", help="the judge classifier (written there with --train-judge)")
    ev.add_argument("--out", default="eval-out", help="folder for results.json, results.md, grid.png and the pictures")
    ev.add_argument("--prompts", default="configs/emoji-eval-prompts.json", help="prompt list: names and paraphrases")
    ev.add_argument("--images-per-prompt", type=int, default=4, help="pictures per prompt")
    ev.add_argument("--samplers", default="ddim,euler,dpmpp_2m_karras", help="comma-separated sampler names")
    ev.add_argument("--steps", default="10,20,50", help="comma-separated step counts")
    ev.add_argument("--guidance", type=float, default=None, help="guidance scale (model default)")
    ev.add_argument("--batch-size", type=int, default=16, help="pictures per network call")
    ev.add_argument("--grid", default=None, help="where to write the sample grid PNG (default: OUT/grid.png)")
    ev.add_argument("--quick", action="store_true", help="the model's default sampler and steps only, first 20 names and 10 paraphrases")
    ev.add_argument("--train-judge", action="store_true", help="train the judge on --data and write it to --judge, instead of evaluating")
    ev.add_argument("--judge-steps", type=int, default=1500, help="with --train-judge: training steps of 128 images")
    ev.add_argument("--holdout-style", default=None, help="with --train-judge: leave this style out and report accuracy on it")
    ev.add_argument("--subject", default="auto", choices=["auto", "off"], help="nearest-subject prompts (models with a subject index) or the prompts' own words")
    ev.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])

    srv = commands.add_parser("serve", help="web page + AUTOMATIC1111-compatible API",
                              description="Serve the web page at / and an AUTOMATIC1111-compatible API under /sdapi/v1.")
    srv.add_argument("--model", action="append", default=None, metavar="PATH",
                     help="model folder or file; repeat to offer several (the first is the default; 'builtin' is the built-in model)")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    srv.add_argument("--port", type=int, default=7860, help="port (default: 7860, as A1111)")
    srv.add_argument("--api-key", default=None, metavar="KEY", help="require this key on every API call (or set NOISECRAFT_API_KEY)")
    srv.add_argument("--insecure", action="store_true", help="allow a non-local --host without an API key")
    srv.add_argument("--cors-origin", action="append", default=[], metavar="URL", help="allow browser pages from this origin (repeatable)")
    srv.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                     help="also answer requests addressed to this host name (repeatable; localhost and --host always are)")
    srv.add_argument("--device", default="auto", help="auto, cpu, cuda, mps, or a comma list (one worker per device: cuda:0,cuda:1)")
    srv.add_argument("--queue-size", type=int, default=16, metavar="N", help="requests that may wait; more get HTTP 429 (default: 16)")
    srv.add_argument("--max-images", type=int, default=16, metavar="N", help="most images per request (default: 16)")
    srv.add_argument("--max-size", type=int, default=None, metavar="PIXELS", help="largest width/height (default: 8x the model's size)")
    srv.add_argument("--gallery", default=None, metavar="DIR", help="keep every picture in the gallery in DIR (default: your data folder)")
    srv.add_argument("--gallery-db", default=None, metavar="URL", help="the gallery's database (default: SQLite in DIR; "
                                                                       "postgresql+psycopg://... for a shared one)")
    srv.add_argument("--no-gallery", action="store_true", help="keep pictures for this session only (in a temporary folder, removed at exit)")
    srv.add_argument("--upscaler", action="append", default=[], metavar="FILE", help="offer this ESRGAN-family upscaler file (repeatable)")
    return parser


def _check_out(out: str) -> Path:
    """Where --out points (a .png file, or a folder), checked before any work: there, and writable."""
    import tempfile

    target = Path(out).expanduser()
    png = target.suffix.lower() == ".png"
    if not png and target.exists() and not target.is_dir():
        raise UserError(f"--out {out} is a file that is not a .png; give a .png name or a folder")
    folder = target.parent if png else target
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UserError(f"--out {out}: cannot write pictures there ({error.strerror or error}); choose another folder") from None
    return target


def _output_paths(target: Path, prompt: str, seeds: list[int]) -> list[Path]:
    """One new file per picture: `target` (numbered -k for several), or slug-seed.png in the `target` folder;
    a name already taken gets -1, -2, ... so nothing is overwritten."""
    if target.suffix.lower() == ".png":
        names = [target] if len(seeds) == 1 else [target.with_name(f"{target.stem}-{k}.png") for k in range(len(seeds))]
    else:
        slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40] or "image"
        names = [target / f"{slug}-{seed}.png" for seed in seeds]
    paths = []
    for name in names:
        path, n = name, 1
        while path.exists() or path in paths:
            path, n = name.with_name(f"{name.stem}-{n}.png"), n + 1
        paths.append(path)
    return paths


def _sides(text: str) -> tuple[int, int, int, int]:
    parts = text.split(",")
    if len(parts) == 1:
        parts = parts * 4
    try:
        sides = tuple(int(p) for p in parts)
    except ValueError:
        sides = ()
    if len(sides) != 4 or min(sides) < 0 or max(sides) == 0 or max(sides) > 4096:
        raise UserError(f"--outpaint takes LEFT,TOP,RIGHT,BOTTOM pixels from 0 to 4096 (or one number for all sides), not {text!r}")
    return sides


def cmd_generate(args) -> int:
    import time

    from .checkpoints.lora import parse_lora_argument
    from .devices import DTYPES
    from .images import open_image, outpaint_canvas
    from .pipeline import Pipeline
    from .pngmeta import save_png
    from .settings import Request

    started = time.perf_counter()
    target = _check_out(args.out)
    init = open_image(args.init_image, "--init-image") if args.init_image else None
    mask = open_image(args.mask, "--mask") if args.mask else None
    sides = _sides(args.outpaint) if args.outpaint else None
    if sides and init is None:
        raise UserError("--outpaint extends a picture; give it with --init-image")
    if sides and mask is not None:
        raise UserError("--outpaint makes its own mask; leave out --mask")
    pipe = Pipeline.from_pretrained(args.model, device=args.device, dtype=DTYPES.get(args.dtype), vae=args.vae,
                                    prediction=args.prediction)
    if args.vae_tiling:
        pipe.enable_vae_tiling()
    if args.offload:
        pipe.enable_sequential_offload()
    strength = args.strength
    if sides:
        init, mask = outpaint_canvas(init, sides, pipe.size_factor)
        strength = 1.0 if strength is None else strength
    for item in args.lora:
        pipe.load_lora(*parse_lora_argument(item))
    for item in args.embedding:
        head, sep, word = item.rpartition(":")
        path, word = (head, word) if sep and word and not re.search(r"[\\/.]", word) else (item, None)
        pipe.load_textual_inversion(path, word)
    width, height = args.size if args.size else (None, None)
    settings = pipe.resolve(Request(args.prompt, args.negative, args.steps, args.guidance, args.rescale, args.sampler,
                                    args.scheduler, width, height, args.seed, args.num_images, args.batch_size, strength,
                                    args.subject), init_image=init, mask_image=mask)
    paths = _output_paths(target, settings.prompt, settings.seeds)
    from .gallery.pictures import add_picture, open_gallery

    library = open_gallery(args.gallery) if args.gallery else None
    images = pipe(settings, init_image=init, mask_image=mask)
    for image, path in zip(images, paths):
        save_png(image, path)
        print(path)
    if library is not None:
        request = Request(settings.prompt, settings.negative_prompt, settings.steps, settings.guidance_scale,
                          settings.guidance_rescale, settings.sampler.name, None, settings.width, settings.height,
                          settings.seed, 1, 1, settings.strength, args.subject)
        for image in images:
            add_picture(library, image, request, model=pipe.name, source="cli",
                        operation="img2img" if init is not None else "generate", strength=settings.strength)
        library.close()
    print(f"{len(images)} image(s), {settings.width}x{settings.height}, {settings.steps} steps of {settings.sampler.name}, "
          f"seed {settings.seed}" + (f", subject {settings.subject!r}" if settings.subject else "") +
          f", in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


def cmd_upscale(args) -> int:
    from .checkpoints.upscaler import load_upscaler
    from .images import open_image
    from .pipeline import Pipeline
    from .pngmeta import parse_parameters, save_png
    from .settings import Request
    from .upscale import RESAMPLERS, SUBTLE, upscale

    target = _check_out(args.out)
    image = open_image(args.image, "the picture")
    upscaler = args.upscaler if args.upscaler in RESAMPLERS else load_upscaler(args.upscaler, device="cpu")
    pipe = Pipeline.from_pretrained(args.model, device=args.device)
    stored = parse_parameters(image.info["parameters"]) if image.info.get("parameters") else {}
    prompt = args.prompt if args.prompt is not None else stored.get("prompt", "")
    request = Request(prompt, stored.get("negative_prompt", "") if args.prompt is None else "", steps=args.steps, seed=args.seed)
    picture, how = upscale(pipe, image, args.scale, request, strength=SUBTLE if args.strength is None else args.strength,
                           upscaler=upscaler)
    stem = Path(args.image).stem
    path = target if target.suffix.lower() == ".png" else target / f"{stem}-{args.scale:g}x.png"
    path = _output_paths(path, stem, [0])[0]
    save_png(picture, path)
    print(path)
    print(f"{how}", file=sys.stderr)
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
    from .checkpoints import describe, identify

    for label, text in describe(identify(args.model)).items():
        print(f"{label + ':':<13}{text}")
    return 0


def cmd_samplers(args) -> int:
    from .samplers import SAMPLERS

    for name, spec in SAMPLERS.items():
        print(f"{name:24s} {spec.a1111_name}")
    return 0


def cmd_data(args) -> int:
    from .datasets.emoji import build_emoji_dataset

    styles = tuple(s.strip() for s in args.styles.split(",") if s.strip())
    stats = build_emoji_dataset(args.out, styles=styles, size=args.size, tarballs=args.from_tarball,
                                skin_tones=not args.no_skin_tones)
    print(stats)
    return 0


def cmd_eval(args) -> int:
    from .eval.run import run_eval
    from .eval.train_judge import train_judge_command

    if args.train_judge:
        if args.judge_steps < 1:
            raise UserError("--judge-steps must be at least 1")
        train_judge_command(args.data, args.judge, steps=args.judge_steps, holdout_style=args.holdout_style)
        return 0
    try:
        steps = [int(s) for s in args.steps.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--steps takes comma-separated whole numbers like 10,20,50, not {args.steps!r}") from None
    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    if not steps or not samplers:
        raise UserError("--samplers and --steps each need at least one value")
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    run_eval(model=args.model, data=args.data, judge=args.judge, out=args.out, prompts_file=args.prompts,
             images_per_prompt=args.images_per_prompt, samplers=samplers, steps=steps, guidance=args.guidance,
             batch_size=args.batch_size, device=args.device, grid_path=args.grid, quick=args.quick, subject=args.subject)
    return 0


def cmd_serve(args) -> int:
    import os

    from .server import ServeOptions, serve

    devices = [d.strip() for d in args.device.split(",") if d.strip()] or ["auto"]
    return serve(ServeOptions(models=args.model, host=args.host, port=args.port,
                              api_key=args.api_key or os.environ.get("NOISECRAFT_API_KEY") or None, insecure=args.insecure,
                              cors_origins=args.cors_origin, allowed_hosts=args.allowed_host, devices=devices,
                              queue_size=args.queue_size,
                              max_images=args.max_images, max_side=args.max_size, gallery=args.gallery,
                              gallery_db=args.gallery_db, no_gallery=args.no_gallery, upscalers=args.upscaler))


COMMANDS = {"generate": cmd_generate, "upscale": cmd_upscale, "train": cmd_train, "info": cmd_info, "samplers": cmd_samplers, "data": cmd_data,
            "eval": cmd_eval, "serve": cmd_serve}


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
        print(f"noisecraft: error: {out_of_memory()}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
