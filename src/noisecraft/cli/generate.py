"""`noisecraft generate` and `noisecraft upscale`: pictures out as numbered PNG files, never overwriting one."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from ..errors import UserError


def check_out(out: str) -> Path:
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


def output_paths(target: Path, prompt: str, seeds: list[int]) -> list[Path]:
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


def _controls(args, pipe) -> list:
    """The --controlnet files paired with the --control pictures (one file may serve every control)."""
    from ..control import Control, parse_control_argument
    from ..images import open_image

    if not args.control and not args.controlnet:
        return []
    if not args.control or not args.controlnet or len(args.controlnet) not in (1, len(args.control)):
        raise UserError("give one --controlnet FILE per --control KIND:PICTURE (or one --controlnet for all of them)")
    nets = [pipe.load_controlnet(path) for path in args.controlnet]
    controls = []
    for k, text in enumerate(args.control):
        kind, picture, strength, start, end = parse_control_argument(text)
        control = Control(nets[k if len(nets) > 1 else 0], open_image(picture, "--control"), kind, strength, start, end)
        control.check()
        controls.append(control)
    return controls


def cmd_generate(args) -> int:
    import time

    from ..brand import brand_prompt
    from ..presets import combined
    from ..campaign import Piece
    from .compose import maker_from
    from ..checkpoints.lora import parse_lora_argument
    from ..devices import DTYPES
    from ..images import open_image, outpaint_canvas
    from ..pipeline import Pipeline
    from ..settings import Request

    started = time.perf_counter()
    target = check_out(args.out)
    init = open_image(args.init_image, "--init-image") if args.init_image else None
    mask = open_image(args.mask, "--mask") if args.mask else None
    sides = _sides(args.outpaint) if args.outpaint else None
    if sides and init is None:
        raise UserError("--outpaint extends a picture; give it with --init-image")
    if sides and mask is not None:
        raise UserError("--outpaint makes its own mask; leave out --mask")
    source = _said_fit(args)
    pipe = Pipeline.from_pretrained(source, device=args.device, dtype=DTYPES.get(args.dtype), vae=args.vae,
                                    prediction=args.prediction, text_encoders=args.text_encoders, offload=args.offload,
                                    text_device=args.text_device)
    if args.vae_tiling:
        pipe.enable_vae_tiling()
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
    controls = _controls(args, pipe)
    maker = maker_from(args, pipe)
    kit = maker.kit
    width, height = args.size if args.size else kit.sizes[0] if kit and kit.sizes else (None, None)
    presets = combined(args.presets) if args.preset or (kit and kit.preset) else []
    prompt, negative = brand_prompt(kit, args.prompt, args.negative, args.preset, presets)
    settings = pipe.resolve(Request(prompt, negative, args.steps, args.guidance, args.rescale, args.sampler,
                                    args.scheduler, width, height, args.seed, args.num_images, args.batch_size, strength,
                                    args.subject), init_image=init, mask_image=mask)
    paths = output_paths(target, settings.prompt, settings.seeds)
    from ..gallery.pictures import add_picture, open_gallery

    library = open_gallery(args.gallery) if args.gallery else None
    if args.free_text_encoders:
        pipe.free_text_encoders(settings)
    images = pipe(settings, init_image=init, mask_image=mask, controls=controls)
    if kit is not None:
        images = [kit.finish(image, args.colour_strength) for image in images]
    for image, path in zip(images, paths):
        maker.write(Piece(image, source=Path(args.init_image).read_bytes() if init is not None else None), path)
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
    from ..checkpoints.upscaler import load_upscaler
    from ..images import open_image
    from ..pipeline import Pipeline
    from ..campaign import Piece
    from ..pngmeta import parse_parameters
    from ..settings import Request
    from ..upscale import RESAMPLERS, SUBTLE, upscale
    from .compose import maker_from

    target = check_out(args.out)
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
    path = output_paths(path, stem, [0])[0]
    maker_from(args).write(Piece(picture, source=Path(args.image).read_bytes(), action="c2pa.resized"), path)
    print(path)
    print(f"{how}", file=sys.stderr)
    return 0


def _said_fit(args):
    """The model's `Source` (identified once, for the load too), and before a Stable Diffusion / SD3 / FLUX / Z-Image
    model of 1 GB or more loads (or one that will not fit): its size in memory and whether it fits (stderr)."""
    from ..checkpoints import identify
    from ..checkpoints.memory import fit_report, model_files
    from ..devices import DTYPES, default_dtype, pick_device

    source = identify(args.model)
    if source.kind != "noisecraft":
        device = pick_device(args.device)
        extra = [*(args.text_encoders or []), *([args.vae] if args.vae else [])]
        files = model_files(source.path if source.kind == "diffusers" else source.file, extra)
        said = fit_report(source.name, files, device, DTYPES.get(args.dtype) or default_dtype(device), args.offload, quiet_below=1e9)
        if said:
            print(said, file=sys.stderr)
    return source
