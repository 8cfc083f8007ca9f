"""`noisecraft layout`, `layouts`, `campaign` and `verify`: composed, on-brand, signed pictures."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from ..errors import UserError


def maker_from(args, pipe=None):
    """The `Maker` the flags describe: the kit, its presets, the colour strength and the signing identity."""
    from ..brand import load_kit
    from ..campaign import Maker
    from ..presets import combined

    kit = load_kit(args.brand) if getattr(args, "brand", None) else None  # upscale has no --brand
    sign = args.sign if args.sign is not None else bool(kit and kit.signing.sign)
    identity = None
    if args.certificate or args.key:
        if not (args.certificate and args.key):
            raise UserError("--certificate and --key go together: give both, or neither for the kit's or a local identity")
        certificate, key = args.certificate, args.key
    elif kit is not None and kit.signing.certificate:
        certificate, key = kit.signing.certificate, kit.signing.key
        if key is None:
            raise UserError(f"the {kit.name} kit names a signing certificate but no key; add key = \"...\" under [signing]")
    else:
        certificate = key = None
    if sign and certificate:
        from ..provenance import load_identity

        identity = load_identity(certificate, key)
    return Maker(pipe, kit=kit, presets=combined(getattr(args, "presets", [])), colour_strength=getattr(args, "colour_strength", None),
                 sign=sign, identity=identity, steps=getattr(args, "steps", None))


def _pipe(args):
    from ..pipeline import Pipeline

    return Pipeline.from_pretrained(args.model, device=args.device)


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][\w-]*", name.strip()):
            raise UserError(f"{flag} takes FIELD=TEXT, not {item!r}")
        pairs[name.strip()] = value
    return pairs


def cmd_layout(args) -> int:
    from ..images import open_image
    from ..layouts import load_template

    template = load_template(args.template, args.size)
    texts = _pairs(args.set, "--set")
    images = {}
    for item in args.image:
        slot, sep, path = item.rpartition("=")
        if not sep:
            if not template.image_fields():
                raise UserError(f"the {template.name} layout has no image slot")
            slot, path = template.image_fields()[0], item
        images[slot] = open_image(path, "--image")
    maker = maker_from(args, _pipe(args) if args.prompt else None)
    piece = maker.layout(template, texts, images, prompt=args.prompt, negative=args.negative, preset=args.preset,
                         seed=args.seed)
    out = Path(args.out).expanduser()
    kinds = (".png", ".jpg", ".jpeg", ".webp", ".pdf")
    if out.suffix and out.suffix.lower() not in kinds and not out.is_dir():
        raise UserError(f"--out {args.out}: give a .png, .jpg, .webp or .pdf file name, or a folder")
    path = out if out.suffix.lower() in kinds else out / f"{template.name}.png"
    if path is not out:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"--out {args.out}: cannot make that folder ({error.strerror or error})") from None
    print(maker.write(piece, path))
    if maker.sign and path.suffix.lower() == ".pdf":
        print("noisecraft: a PDF is not signed (Content Credentials cover PNG, JPEG and WebP); write a .png to sign it",
              file=sys.stderr)
    return 0


def cmd_layouts(args) -> int:
    from ..layouts import load_template, templates

    for name in templates():
        template = load_template(name)
        print(f"{name:13} {', '.join(template.sizes or [template.size_name])}")
        print(f"{'':13} texts: {', '.join(template.text_fields())}; pictures: {', '.join(template.image_fields()) or 'none'}")
    return 0


def cmd_campaign(args) -> int:
    from ..campaign import run_campaign

    maker = maker_from(args, _pipe(args))
    context = f"{maker.kit.folder if maker.kit else ''}|{getattr(maker.pipe, 'name', '')}|{maker.colour_strength}"
    outcome = run_campaign(args.plan, args.out, maker, context=context, seed=args.seed, progress=not args.no_progress)
    total = len(outcome.made) + len(outcome.skipped) + len(outcome.failed)
    print(f"{len(outcome.made)} made, {len(outcome.skipped)} already done, {len(outcome.failed)} failed of {total} row(s); "
          f"{len(outcome.files)} picture(s) in {Path(args.out) / 'campaign.zip'} with contact-sheet.png/.pdf and "
          f"manifest.json, in {outcome.seconds:.1f} s")
    for name, why in outcome.failed.items():
        print(f"  {name}: {why}", file=sys.stderr)
    return 1 if outcome.failed else 0


def cmd_verify(args) -> int:
    from ..provenance import verify

    report = verify(args.image)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.text())
    return 0
