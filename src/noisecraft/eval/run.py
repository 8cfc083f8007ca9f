"""`noisecraft eval`: how well a text-to-emoji model follows prompts, judged by a classifier.

For every (sampler, steps) configuration, the model draws `images_per_prompt` pictures for each
prompt of a checked-in list (plain CLDR names, and paraphrases that appear in no caption), with
fixed seeds: prompt i uses seeds ``i * images_per_prompt + k``. The judge (`judge.py`) names each
picture; the prompt-adherence scores are the top-1 / top-5 rates at which it names the intended
emoji. Fidelity is the Frechet distance between judge features of a configuration's pictures and
real images, two ways, each beside a real-vs-real floor measured the same way:

* ``fd``: against the real images of the intended emoji, one per generated picture (the styles
  alternating picture by picture, so the reference is half google, half twitter). Floor
  ``fd_floor``: the same distance for a perfect copier that draws every intended emoji exactly as
  one of the real styles (each style's images of the intended emoji against that reference,
  averaged over styles). It measures fidelity and adherence together.
* ``fd_all``: against all real images, whatever the prompt (does it look like emoji at all).
  Floor ``fd_all_floor``: a random real subset of the generated set's size against all real
  images (the small-sample bias alone; mean of 3 draws). Prompt lists cover a few dozen emoji,
  so even a perfect model sits above this floor.

Generated pictures are cached as PNGs (with their A1111 parameters) under ``OUT/images/``; a rerun
reuses a picture only when its stored parameters match, so an interrupted eval resumes.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from ..pngmeta import read_parameters, save_png
from ..samplers import resolve_sampler
from ..settings import Request
from .judge import Judge, judge_batches, load_judge
from .metrics import frechet_distance, psnr, topk_hits
from .train_judge import check_data_folder, load_real_set
from .report import markdown_report, sample_grid

GROUPS = ("names", "paraphrases")


@dataclass
class Prompt:
    text: str
    target: str  # CLDR name of the intended emoji
    group: str  # "names" or "paraphrases"


def load_prompts(path: str | Path) -> list[Prompt]:
    """The prompt list: ``{"names": [CLDR name, ...], "paraphrases": {text: CLDR name, ...}}``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        prompts = [Prompt(n, n, "names") for n in data["names"]]
        prompts += [Prompt(text, target, "paraphrases") for text, target in data["paraphrases"].items()]
    except FileNotFoundError:
        raise UserError(f"no prompt list at {path}; pass --prompts PATH") from None
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise UserError(f"{path} must be JSON with 'names' (a list) and 'paraphrases' (text -> CLDR name)") from None
    return prompts


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "prompt"


def generate_set(pipe, prompts: list[Prompt], sampler: str, steps: int, per_prompt: int, folder: Path,
                 guidance: float | None = None, batch_size: int = 16, log=print,
                 subject: str = "auto") -> tuple[torch.Tensor, float | None, int, list[str | None]]:
    """All pictures of one configuration as uint8 [N, 3, H, W], prompt-major; also the measured seconds
    per picture (kept in ``folder/timing.json``, so a resumed or cached run still reports the time
    the pictures took), the number of pictures made now (cached ones cost nothing) and the subject
    drawn for each prompt."""
    folder.mkdir(parents=True, exist_ok=True)
    timing_file = folder / "timing.json"
    timing = json.loads(timing_file.read_text()) if timing_file.exists() else {}
    images, made, subjects = [], 0, []
    for i, prompt in enumerate(prompts):
        seed = i * per_prompt
        s = pipe.resolve(Request(prompt.text, steps=steps, guidance_scale=guidance, sampler=sampler, seed=seed,
                                 num_images=per_prompt, batch_size=batch_size, subject=subject))
        subjects.append(s.subject)
        paths = [folder / f"{i:03d}-{_slug(prompt.text)}-{seed + k}.png" for k in range(per_prompt)]
        if all(p.exists() and read_parameters(p) == pipe.parameters_text(s, seed + k) for k, p in enumerate(paths)):
            pictures = [Image.open(p) for p in paths]
        else:
            started = time.perf_counter()
            pictures = pipe(s)
            timing[paths[0].stem] = [time.perf_counter() - started, len(pictures)]
            made += len(pictures)
            for picture, path in zip(pictures, paths):
                save_png(picture, path)
            timing_file.write_text(json.dumps(timing))
        images += [torch.from_numpy(np.asarray(p.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1) for p in pictures]
        if (i + 1) % 10 == 0:
            log(f"  {sampler} x {steps}: {i + 1}/{len(prompts)} prompts")
    timed = [timing[p] for p in (f"{i:03d}-{_slug(q.text)}-{i * per_prompt}" for i, q in enumerate(prompts)) if p in timing]
    per_image = sum(t for t, _ in timed) / sum(n for _, n in timed) if timed else None
    return torch.stack(images), per_image, made, subjects


def adherence(logits: torch.Tensor, targets: torch.Tensor, groups: list[str]) -> dict:
    """Top-1 / top-5 rates per prompt group (names, paraphrases), over pictures."""
    top1, top5 = topk_hits(logits, targets, 1), topk_hits(logits, targets, 5)
    result = {}
    for group in GROUPS:
        mask = torch.tensor([g == group for g in groups])
        if mask.any():
            result[group] = {"top1": round(top1[mask].float().mean().item(), 4),
                             "top5": round(top5[mask].float().mean().item(), 4), "images": int(mask.sum())}
    return result


def intended_reals(real, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per generated picture, a real image of its intended emoji: styles alternating picture by picture,
    and per style (for styles that draw every intended emoji) that style's image. Within a style the
    first image of the class is used (the tone-free artwork)."""
    first: dict[tuple[int, str], int] = {}
    for i, (label, style) in enumerate(zip(real.labels.tolist(), real.styles)):
        first.setdefault((label, style), i)
    styles = sorted(set(real.styles))
    mixed, per_style = [], {}
    for j, c in enumerate(targets.tolist()):
        own = [first[(c, st)] for st in styles if (c, st) in first]
        mixed.append(first.get((c, styles[j % len(styles)]), own[0]))
    for st in styles:
        if all((c, st) in first for c in targets.tolist()):
            per_style[st] = torch.tensor([first[(c, st)] for c in targets.tolist()])
    return torch.tensor(mixed), per_style


def real_floors(real_feats: torch.Tensor, real, targets: torch.Tensor, seed: int = 0) -> dict:
    """The Frechet-distance floors (see the module docstring) for a generated set with these targets."""
    g = torch.Generator().manual_seed(seed)
    n = len(targets)
    mixed, per_style = intended_reals(real, targets)
    copier = [frechet_distance(real_feats[idx], real_feats[mixed]) for idx in per_style.values()]
    random = [frechet_distance(real_feats[torch.randperm(len(real_feats), generator=g)[:n]], real_feats) for _ in range(3)]
    return {"fd_floor": round(sum(copier) / len(copier), 3) if copier else None,
            "fd_floor_styles": {st: round(d, 3) for st, d in zip(per_style, copier)},
            "fd_all_floor": round(sum(random) / 3, 3)}


@torch.no_grad()
def reconstruct(vae, x: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Pictures in [0, 1] [N, 3, H, W] -> the autoencoder's reconstructions (encode, posterior mean,
    decode) as uint8, computed on the autoencoder's device and dtype."""
    param = next(vae.parameters())
    recon = torch.cat([vae.decode(vae.encode(chunk.to(param) * 2 - 1).mode()).float().cpu() for chunk in x.split(batch_size)])
    return ((recon.clamp(-1, 1) + 1) / 2 * 255).round().to(torch.uint8)


@torch.no_grad()
def autoencoder_ceiling(pipe, judge: Judge, real, targets: torch.Tensor) -> dict | None:
    """The judge's top-1/top-5 on the intended emoji's real images and on the model's autoencoder
    reconstructions of them: what a latent model whose UNet reproduced the training latents exactly would score.
    Also the reconstructions' PSNR in dB (8-bit pixels, mean squared error over all of these images)."""
    if pipe.vae is None:
        return None
    mixed, per_style = intended_reals(real, targets)
    idx = torch.unique(torch.cat([mixed, *per_style.values()]))
    x = real.images[idx].float() / 255
    size = (pipe.config.image_size, pipe.config.image_size)
    if x.shape[-2:] != size:
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True)
    recon = reconstruct(pipe.vae, x)
    labels = real.labels[idx]
    scores = {}
    for name, images in (("real", real.images[idx]), ("reconstructed", recon)):
        logits, _ = judge_batches(judge, images)
        scores[name] = {f"top{k}": round(topk_hits(logits, labels, k).float().mean().item(), 4) for k in (1, 5)}
    return {"images": len(idx), "psnr_db": round(psnr(recon, (x * 255).round()), 2), **scores}


@dataclass
class EvalOptions:
    """What `noisecraft eval` runs: a model against the judge, on a prompt list, per sampler and step count.

    `quick`: only the model's default sampler and steps, and the first 20 names and 10 paraphrases.
    `subject`: "auto" (nearest-subject prompts where the model has a subject index) or "off".
    """

    model: str | None
    data: str | Path
    judge: str | Path
    out: str | Path
    prompts_file: str | Path
    images_per_prompt: int = 4
    samplers: list[str] = ("ddim", "euler", "dpmpp_2m_karras")
    steps: list[int] = (10, 20, 50)
    guidance: float | None = None
    batch_size: int = 16
    device: str = "auto"
    grid_path: str | Path | None = None
    quick: bool = False
    subject: str = "auto"


def run_eval(options: EvalOptions | None = None, *, log=print, **fields) -> dict:
    """The whole evaluation (`EvalOptions`, or its fields as keywords); writes ``OUT/results.json``,
    ``OUT/results.md`` and a sample grid."""
    from ..pipeline import Pipeline

    o = options or EvalOptions(**fields)
    model, data, judge, out, prompts_file = o.model, o.data, o.judge, o.out, o.prompts_file
    images_per_prompt, samplers, steps, guidance, batch_size = o.images_per_prompt, o.samplers, o.steps, o.guidance, o.batch_size
    device, grid_path, quick, subject = o.device, o.grid_path, o.quick, o.subject
    started = time.perf_counter()
    out = Path(out)
    if images_per_prompt < 1:
        raise UserError("--images-per-prompt must be at least 1")
    samplers = [resolve_sampler(name).name for name in samplers]  # unknown names fail here, before any work
    if any(isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1000 for n in steps):
        raise UserError(f"steps must be whole numbers from 1 to 1000, not {list(steps)}")
    check_data_folder(data)
    the_judge: Judge = load_judge(judge)
    prompts = load_prompts(prompts_file)
    if quick:
        prompts = [p for p in prompts if p.group == "names"][:20] + [p for p in prompts if p.group != "names"][:10]
    real = load_real_set(data)
    if the_judge.classes != real.classes:
        raise UserError(f"the judge at {judge} was trained on other classes than {data} holds; train it on this data")
    targets = torch.tensor([the_judge.class_of(p.target) for p in prompts]).repeat_interleave(images_per_prompt)
    groups = [p.group for p in prompts for _ in range(images_per_prompt)]
    pipe = Pipeline.from_pretrained(model, device=device)
    default = (resolve_sampler(pipe.defaults["sampler"]).name, pipe.defaults["steps"])
    if quick:
        samplers, steps = [default[0]], [default[1]]
    guidance = float(pipe.defaults["guidance_scale"] if guidance is None else guidance)
    _, real_feats = judge_batches(the_judge, real.images)
    floors = real_floors(real_feats, real, targets)
    intended = real_feats[intended_reals(real, targets)[0]]
    ceiling = autoencoder_ceiling(pipe, the_judge, real, targets)
    log(f"eval of {pipe.name} ({pipe.hash}): {len(prompts)} prompts x {images_per_prompt} pictures, floors {floors}")

    configs, pictures_of, subjects = [], {}, []
    for sampler in samplers:
        for n in steps:
            images, per_image, made, subjects = generate_set(pipe, prompts, sampler, n, images_per_prompt,
                                                             out / "images" / f"{sampler}-{n}", guidance, batch_size, log, subject)
            logits, feats = judge_batches(the_judge, images)
            row = {"sampler": sampler, "steps": n, **adherence(logits, targets, groups),
                   "fd": round(frechet_distance(feats, intended), 3), "fd_all": round(frechet_distance(feats, real_feats), 3),
                   "generated": made,
                   "seconds_per_image": None if per_image is None else round(per_image, 3)}
            configs.append(row)
            pictures_of[(sampler, n)] = (images, logits)
            log(f"{sampler} x {n}: {json.dumps(row)}")

    key = default if default in pictures_of else next(iter(pictures_of))
    images, logits = pictures_of[key]
    per_prompt = []
    for i, p in enumerate(prompts):
        rows = slice(i * images_per_prompt, (i + 1) * images_per_prompt)
        guesses = logits[rows].argmax(1).tolist()
        per_prompt.append({"prompt": p.text, "group": p.group, "target": p.target,
                           "subject": subjects[i],
                           "seeds": list(range(i * images_per_prompt, (i + 1) * images_per_prompt)),
                           "top1_hits": int(topk_hits(logits[rows], targets[rows], 1).sum()),
                           "top5_hits": int(topk_hits(logits[rows], targets[rows], 5).sum()),
                           "judge_says": [the_judge.classes[c] for c in guesses]})
    result = {"model": {"name": pipe.name, "hash": pipe.hash, "path": model or "built-in"},
              "judge": {"path": str(judge), "classes": len(the_judge.classes), "trained": the_judge.config.trained},
              "data": str(data), "real_images": len(real), "prompts_file": str(prompts_file),
              "prompts": {g: sum(p.group == g for p in prompts) for g in GROUPS}, "images_per_prompt": images_per_prompt,
              "seeds": "prompt i (in file order, names then paraphrases) uses seeds i*images_per_prompt + k",
              "guidance_scale": guidance, "negative_prompt": "", "size": list(images.shape[-2:]),
              "subject": subject if pipe.subjects is not None else "none (the model has no subject index)",
              "quick": quick, "default": {"sampler": key[0], "steps": key[1]}, "floors": floors, "autoencoder_ceiling": ceiling, "configs": configs,
              "per_prompt": per_prompt, "runtime_minutes": round((time.perf_counter() - started) / 60, 1),
              "generation_minutes": round(sum((c["seconds_per_image"] or 0) * len(targets) for c in configs) / 60, 1)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "results.md").write_text(markdown_report(result))
    grid_path = Path(grid_path) if grid_path else out / "grid.png"
    sample_grid(prompts, images, logits, targets, images_per_prompt, real, the_judge.classes).save(grid_path)
    log(f"wrote {out / 'results.json'}, {out / 'results.md'} and {grid_path}")
    return result
