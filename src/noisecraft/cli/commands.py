"""The other `noisecraft` commands: finetune, train, info, samplers, presets, data, eval, serve."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UserError


def cmd_finetune(args) -> int:
    from tqdm import tqdm

    from ..files import write_bytes
    from ..pipeline import Pipeline
    from ..train.finetune import FinetuneSettings, finetune
    from ..train.photos import load_photos

    out = Path(args.out).expanduser()
    if out.suffix.lower() != ".safetensors":
        raise UserError(f"--out {args.out}: a LoRA file is a .safetensors name")
    settings = FinetuneSettings(steps=args.steps, rank=args.rank, alpha=float(args.rank), lr=args.lr, seed=args.seed,
                                name=out.stem, text_encoder=args.text_encoder, conv=args.conv, flip=args.flip, prior_images=args.prior,
                                prior_weight=args.prior_weight, sample_prompts=tuple(args.sample), checkpoint_every=args.every,
                                samples=not args.no_samples, peft_copy=args.peft)
    settings.check()
    if args.prior and not args.class_word.strip():
        raise UserError("--prior needs --class-word (the kind of thing it is: storefront, mug, van)")
    pipe = Pipeline.from_pretrained(args.model, device=args.device)
    native = pipe.config.image_size
    photos = load_photos(args.photos, args.name, args.class_word, pixels=native * native, factor=pipe.size_factor)
    for skipped in photos.skipped:
        print(f"noisecraft: skipped {skipped}", file=sys.stderr)
    total = settings.total_steps(len(photos.photos))
    print(f"{len(photos.photos)} photo(s) ({photos.captioned} with their own caption), {total} steps", file=sys.stderr)
    with tqdm(total=total, desc="finetune", unit="step") as bar:
        def progress(step, total, loss):
            bar.n = step
            bar.set_postfix_str(f"loss {loss:.4f}")
            bar.refresh()

        result = finetune(pipe, photos, out.with_name(out.stem + "-run"), settings, progress)
    write_bytes(out, result.best_file.read_bytes())
    held = ", ".join(f"{step}: {loss:.4f}" for step, loss in result.held_out) or "none held out (fewer than 4 photos)"
    print(f"{out} (step {result.best_step} of {result.step}; held-out loss by step: {held})")
    for label, path in (("samples", result.samples), ("before/after", result.before_after)):
        if path is not None:
            print(f"{label}: {path}")
    if result.peft_file is not None:
        folder = out.with_name(out.stem + "-diffusers")
        folder.mkdir(exist_ok=True)
        write_bytes(folder / result.peft_file.name, result.peft_file.read_bytes())
        print(f"diffusers/PEFT copy: {folder} (pipe.load_lora_weights(\"{folder}\"))")
    return 0


def cmd_train(args) -> int:
    import tomllib

    import torch

    from ..train.config import load_train_config
    from ..train.trainer import Trainer

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
    from ..checkpoints import describe, identify

    for label, text in describe(identify(args.model)).items():
        print(f"{label + ':':<13}{text}")
    return 0


def cmd_samplers(args) -> int:
    from ..samplers import SAMPLERS

    for name, spec in SAMPLERS.items():
        print(f"{name:24s} {spec.a1111_name}")
    return 0


def cmd_presets(args) -> int:
    from ..presets import combined

    for preset in combined(args.presets):
        print(f"{preset.label:24s} {preset.prompt}" + (f"\n{'':24s} negative: {preset.negative}" if preset.negative else ""))
    return 0


def cmd_data(args) -> int:
    from ..datasets.emoji import build_emoji_dataset

    styles = tuple(s.strip() for s in args.styles.split(",") if s.strip())
    stats = build_emoji_dataset(args.out, styles=styles, size=args.size, tarballs=args.from_tarball,
                                skin_tones=not args.no_skin_tones)
    print(stats)
    return 0


def cmd_eval(args) -> int:
    from ..eval.run import run_eval
    from ..eval.train_judge import train_judge_command

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

    from ..server import ServeOptions, serve

    devices = [d.strip() for d in args.device.split(",") if d.strip()] or ["auto"]
    return serve(ServeOptions(models=args.model, host=args.host, port=args.port,
                              api_key=args.api_key or os.environ.get("NOISECRAFT_API_KEY") or None, insecure=args.insecure,
                              cors_origins=args.cors_origin, allowed_hosts=args.allowed_host, devices=devices,
                              queue_size=args.queue_size,
                              max_images=args.max_images, max_side=args.max_size, gallery=args.gallery,
                              gallery_db=args.gallery_db, no_gallery=args.no_gallery, upscalers=args.upscaler, controlnets=args.controlnet,
                              presets=args.presets, brands=args.brand, sign=args.sign, certificate=args.certificate,
                              key=args.key))
