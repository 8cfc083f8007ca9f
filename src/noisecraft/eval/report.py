"""What `noisecraft eval` writes for people: a markdown table and a sample grid."""

from __future__ import annotations

import torch
from PIL import Image, ImageDraw

from .metrics import topk_hits


def markdown_report(result: dict) -> str:
    """The results as markdown: settings, the sampler table, the floors, per-prompt hits."""
    f = result["floors"]
    lines = [
        f"# noisecraft eval: {result['model']['name']} ({result['model']['hash']})",
        "",
        f"{result['prompts']['names']} plain names and {result['prompts']['paraphrases']} paraphrases "
        f"({result['prompts_file']}), {result['images_per_prompt']} pictures each ({result['seeds']}), "
        f"guidance {result['guidance_scale']}, {result['size'][1]}x{result['size'][0]} px, "
        f"subject {result.get('subject', 'auto')} (see noisecraft/subjects.py). "
        f"Judge: {result['judge']['path']} ({result['judge']['classes']} classes). "
        f"Real images: {result['real_images']} ({result['data']}). Runtime {result['runtime_minutes']} min "
        f"(generating the pictures took {result['generation_minutes']} min when they were made; reruns reuse them).",
        "",
        f"Default configuration ({result['default']['sampler']}, {result['default']['steps']} steps): "
        + _summary(result) + " Goal (issue 3): names top-5 >= 0.70, paraphrases top-5 >= 0.35.",
        "",
        "Top-k: the rate at which the judge names the intended emoji among its k best guesses. "
        "FD: Frechet distance between judge features of the generated pictures and of the real images of the "
        "intended emoji (both styles); FD all: against all real images. Lower is better; floors below. "
        "s / image: wall time on the machine that ran the eval (shared machines make it noisy).",
        "",
        "| sampler | steps | names top-1 | names top-5 | paraphrases top-1 | paraphrases top-5 | FD | FD all | s / image |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["configs"]:
        names, para = row.get("names", {}), row.get("paraphrases", {})
        speed = "-" if row["seconds_per_image"] is None else f"{row['seconds_per_image']:.2f}"
        rates = [f"{group[k]:.3f}" if k in group else "-" for group in (names, para) for k in ("top1", "top5")]
        lines.append(f"| {row['sampler']} | {row['steps']} | {' | '.join(rates)} | {row['fd']:.2f} | {row['fd_all']:.2f} | {speed} |")
    styles = ", ".join(f"{k} {v:.2f}" for k, v in f["fd_floor_styles"].items())
    lines += ["", "Real-vs-real floors, measured the same way with the same judge features:", "",
              f"- FD floor: {'-' if f['fd_floor'] is None else format(f['fd_floor'], '.2f')}: a perfect copier that draws every "
              f"intended emoji exactly as one real style, against the same reference ({styles or 'no style draws them all'})",
              f"- FD all floor: {f['fd_all_floor']:.2f}: a random set of real images of the generated set's size against all "
              "real images (small-sample bias alone; a prompt list of a few dozen emoji sits above it even when perfect)"]
    ceiling = result.get("autoencoder_ceiling")
    if ceiling:
        real, recon = ceiling["real"], ceiling["reconstructed"]
        lines += ["", f"Ceiling: on the {ceiling['images']} real images of the intended emoji the judge scores top-1 "
                  f"{real['top1']:.3f} / top-5 {real['top5']:.3f}; on the model's autoencoder reconstructions of them, "
                  f"top-1 {recon['top1']:.3f} / top-5 {recon['top5']:.3f} (what a UNet that reproduced the training latents exactly would score)"
                  + (f"; reconstruction PSNR {ceiling['psnr_db']:.1f} dB." if "psnr_db" in ceiling else ".")]
    d = result["default"]
    lines += ["", f"Per prompt ({d['sampler']}, {d['steps']} steps): hits out of {result['images_per_prompt']}, "
              "and what the judge names each picture.", "",
              "| prompt | intended | subject drawn | top-1 | top-5 | judge's top-1 guesses |", "|---|---|---|---:|---:|---|"]
    for p in result["per_prompt"]:
        lines.append(f"| {p['prompt']} | {p['target']} | {p.get('subject') or '(the prompt)'} | {p['top1_hits']} | {p['top5_hits']} | {', '.join(p['judge_says'])} |")
    return "\n".join(lines) + "\n"


def _summary(result: dict) -> str:
    d = result["default"]
    row = next(r for r in result["configs"] if (r["sampler"], r["steps"]) == (d["sampler"], d["steps"]))
    parts = [f"{g} top-1 {row[g]['top1']:.3f}, top-5 {row[g]['top5']:.3f}" for g in ("names", "paraphrases") if g in row]
    floor = result["floors"]["fd_floor"]
    return "; ".join(parts) + f"; FD {row['fd']:.2f} (floor {'-' if floor is None else format(floor, '.2f')})."


def sample_grid(prompts, images: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, per_prompt: int, real,
                classes: list[str], rows: int = 16, cell: int = 64, label_width: int = 190) -> Image.Image:
    """Up to `rows` prompts (the first names and paraphrases, 2:1), each: its label, its generated
    pictures (green frame: judge's top-1 is right, amber: in its top-5) and two real images of the
    intended emoji for comparison."""
    names = [i for i, p in enumerate(prompts) if p.group == "names"]
    others = [i for i, p in enumerate(prompts) if p.group != "names"]
    take = (rows * 2) // 3
    chosen = names[:take] + others[: rows - len(names[:take])]
    chosen += [i for i in names[take:]][: rows - len(chosen)]
    top1, top5 = topk_hits(logits, targets, 1), topk_hits(logits, targets, 5)
    sheet = Image.new("RGB", (label_width + (per_prompt + 2) * cell + 8, len(chosen) * cell + 16), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((label_width + 2, 2), "generated", fill="black")
    draw.text((label_width + per_prompt * cell + 10, 2), "real", fill="black")
    for r, i in enumerate(chosen):
        y = 16 + r * cell
        p = prompts[i]
        label = p.text if p.text == p.target else f"{p.text}\n(-> {p.target})"
        draw.multiline_text((4, y + cell // 2 - 12), label[:60], fill="black")
        for k in range(per_prompt):
            j = i * per_prompt + k
            x = label_width + k * cell
            picture = images[j].permute(1, 2, 0).numpy()
            sheet.paste(Image.fromarray(picture).convert("RGB").resize((cell, cell)), (x, y))
            if top1[j] or top5[j]:
                draw.rectangle((x, y, x + cell - 1, y + cell - 1), outline=(0, 170, 0) if top1[j] else (230, 150, 0), width=2)
        options = (real.labels == targets[i * per_prompt]).nonzero().flatten()[:2].tolist()
        for k, idx in enumerate(options):
            picture = real.images[idx].permute(1, 2, 0).numpy()
            sheet.paste(Image.fromarray(picture).resize((cell, cell)), (label_width + per_prompt * cell + 8 + k * cell, y))
    return sheet
