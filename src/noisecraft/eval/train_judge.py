"""Training the judge on the real emoji images, with augmentation aimed at generated pictures.

Each emoji has about two real images (one per style), so the judge learns identities from heavy,
batched augmentation: small shifts, scales and rotations on a white background, Gaussian blur
(the autoencoder's softness), colour jitter with hue rotation (its colour drift), pixel noise and
a small random-colour square (the speck under-trained decoders leave). Batches are class-balanced
(a class, then one of its images), so the skin-tone-rich classes do not dominate.

Training is exactly resumable: the batch of step t depends only on (seed, t), and a checkpoint
beside the output holds weights, optimizer state and step.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..train.data import load_image
from ..train.state import load_checkpoint, save_checkpoint
from .judge import Judge, JudgeConfig, class_name, judge_batches, save_judge


@dataclass
class RealSet:
    """The real emoji: uint8 images [N, 3, S, S], class index per image, style per image, class names."""

    images: torch.Tensor
    labels: torch.Tensor
    styles: list[str]
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, mask: torch.Tensor) -> "RealSet":
        keep = mask.nonzero().flatten().tolist()
        return RealSet(self.images[keep], self.labels[keep], [self.styles[i] for i in keep], self.classes)


def check_data_folder(root: str | Path) -> Path:
    """The metadata file of an emoji dataset folder, or a one-sentence error saying how to make one."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"the data folder {root} does not exist; build it with `noisecraft data emoji --out {root}` or pass --data PATH")
    if not (root / "metadata.jsonl").is_file():
        raise UserError(f"the data folder {root} has no metadata.jsonl; build it with `noisecraft data emoji --out {root}`")
    return root / "metadata.jsonl"


def load_real_set(root: str | Path, size: int = 64) -> RealSet:
    """Read an emoji dataset folder (`noisecraft data emoji`): images with `name` and `style` per line."""
    meta = check_data_folder(root)
    root = meta.parent
    try:
        rows = [json.loads(line) for line in meta.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{meta} is not JSON lines of UTF-8 text; build it again with `noisecraft data emoji`") from None
    if not rows or any(not isinstance(r, dict) or "name" not in r or "file_name" not in r for r in rows):
        raise UserError(f"{meta} lines need 'file_name' and 'name' (the emoji's CLDR name); build it with `noisecraft data emoji`")
    plain = {r["name"] for r in rows if class_name(r["name"]) == r["name"]}
    names = [class_name(r["name"], plain) for r in rows]
    classes = sorted(set(names))
    index = {c: i for i, c in enumerate(classes)}
    images = torch.stack([load_image(root / r["file_name"], size) for r in rows])
    return RealSet(images, torch.tensor([index[n] for n in names]), [r.get("style", "") for r in rows], classes)


def augment(x: torch.Tensor, generator: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Random degradations of a float batch in [0, 1], [B, 3, H, W]; per-sample parameters."""
    b, _, h, w = x.shape

    def u(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(b, *shape, generator=generator)

    # geometry: scale, rotation, shift; outside the picture is white
    angle = u(-12, 12) * strength * math.pi / 180
    scale = 1 + u(-0.25, 0.12) * strength
    shift = u(-0.2, 0.2, 2) * strength
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x - 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 1
    # Gaussian blur, sigma 0..2 px, separable, one kernel per sample
    sigma = u(0, 2.0) * strength * (torch.rand(b, generator=generator) < 0.8)
    t = torch.arange(-3, 4, dtype=torch.float32)
    kernel = torch.exp(-t**2 / (2 * sigma.clamp_min(1e-3)[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(3, 0)  # [B*3, 7]
    flat = F.pad(x.reshape(1, b * 3, h, w), (3, 3, 3, 3), mode="replicate")
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=b * 3)
    x = F.conv2d(flat, kernel[:, None, :, None], groups=b * 3).reshape(b, 3, h, w)
    # colour: hue rotation about the grey axis, saturation, contrast, brightness
    hue = u(-0.35, 0.35) * strength  # radians, about +-20 degrees
    k = torch.full((3,), 1 / math.sqrt(3))
    cross = torch.tensor([[0, -1, 1], [1, 0, -1], [-1, 1, 0]], dtype=torch.float32) / math.sqrt(3)
    rot = (torch.cos(hue)[:, None, None] * torch.eye(3) + torch.sin(hue)[:, None, None] * cross
           + (1 - torch.cos(hue))[:, None, None] * torch.outer(k, k))
    x = torch.einsum("bij,bjhw->bihw", rot, x)
    grey = x.mean(1, keepdim=True)
    x = grey + (x - grey) * u(0.6, 1.3, 1, 1, 1) ** strength
    mean = x.mean((1, 2, 3), keepdim=True)
    x = mean + (x - mean) * u(0.75, 1.25, 1, 1, 1) ** strength + u(-0.1, 0.1, 1, 1, 1) * strength
    # a small random-colour square in a random place, for a third of the batch
    side = (u(3, 10) * strength).long()
    top, left = (u(0, 1) * (h - side)).long(), (u(0, 1) * (w - side)).long()
    rows, cols = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
    box = ((rows >= top[:, None, None]) & (rows < (top + side)[:, None, None]) & (cols >= left[:, None, None])
           & (cols < (left + side)[:, None, None]) & (torch.rand(b, 1, 1, generator=generator) < 0.33))
    x = torch.where(box[:, None], u(0, 1, 3, 1, 1), x)
    # pixel noise
    x = x + torch.randn(x.shape, generator=generator) * u(0, 0.06, 1, 1, 1) * strength
    return x.clamp(0, 1)


def balanced_batch(labels: torch.Tensor, num_classes: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Image indices: a uniformly random class, then a uniformly random image of that class."""
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    present = (counts > 0).nonzero().flatten()
    cls = present[torch.randint(len(present), (batch_size,), generator=generator)]
    offset = (torch.rand(batch_size, generator=generator) * counts[cls]).long()
    return order[starts[cls] + offset]


@torch.no_grad()
def accuracy(judge: Judge, images: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    from .metrics import topk_hits

    logits, _ = judge_batches(judge, images)
    return {f"top{k}": round(topk_hits(logits, labels, k).float().mean().item(), 4) for k in ks}


WEIGHT_DECAY = 0.05  # AdamW's, on the judge's weight matrices and kernels


def train_judge(data: RealSet, out: str | Path, *, steps: int = 3000, batch_size: int = 128, lr: float = 2e-3,
                seed: int = 0, config: JudgeConfig | None = None,
                augment_strength: float = 1.0, checkpoint_every: int = 250, log=print) -> Judge:
    """Train a judge on `data` (all its images) and write it to `out`; resumes from `out`'s checkpoint."""
    out = Path(out)
    config = config or JudgeConfig()
    config.num_classes = len(data.classes)
    torch.manual_seed(seed)
    judge = Judge(config, data.classes).to(memory_format=torch.channels_last)
    decay = [p for n, p in judge.named_parameters() if p.ndim > 1]
    rest = [p for n, p in judge.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": rest, "weight_decay": 0.0}], lr=lr)
    ckpt = out.with_name(out.stem + ".checkpoint.safetensors")
    step, settings = 0, {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "images": len(data),
                         "classes": len(data.classes), "augment": augment_strength}
    if ckpt.exists():
        meta = load_checkpoint(ckpt, {"model": judge}, {"optim": optimizer})
        if meta.get("settings", settings) != settings:
            raise UserError(f"{ckpt} was written by a judge training with other settings; delete it to start over")
        step = meta["step"]
        log(f"resumed the judge from {ckpt} at step {step}")
    warmup = min(200, steps // 10)
    started, seen = time.perf_counter(), 0
    judge.train()
    while step < steps:
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = balanced_batch(data.labels, config.num_classes, batch_size, g)
        x = augment(data.images[idx].float() / 255, g, augment_strength).contiguous(memory_format=torch.channels_last)
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / max(1, warmup)) * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = F.cross_entropy(judge(x), data.labels[idx], label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step, seen = step + 1, seen + batch_size
        if step % 50 == 0 or step == steps:
            log(f"judge step {step}/{steps} loss {loss.item():.3f} ({seen / (time.perf_counter() - started):.0f} images/s)")
        if checkpoint_every and step % checkpoint_every == 0 and step < steps:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(ckpt, {"model": judge}, {"optim": optimizer}, {"step": step, "settings": settings})
    judge = judge.to(memory_format=torch.contiguous_format).eval()
    judge.config.trained |= settings
    save_judge(judge, out)
    ckpt.unlink(missing_ok=True)
    return judge


def held_out_report(judge: Judge, test: RealSet, seed: int = 1) -> dict[str, dict[str, float]]:
    """Accuracy on clean images and on augmented copies (fresh random augmentation) of `test`."""
    g = torch.Generator().manual_seed(seed)
    augmented = torch.cat([(augment(chunk.float() / 255, g) * 255).round().to(torch.uint8) for chunk in test.images.split(512)])
    return {"clean": accuracy(judge, test.images, test.labels), "augmented": accuracy(judge, augmented, test.labels)}


def train_judge_command(data_root: str | Path, out: str | Path, *, steps: int = 1500, holdout_style: str | None = None,
                        seed: int = 0, log=print) -> dict:
    """`noisecraft eval --train-judge`: train on the dataset (less one held-out style, if named), write
    the judge and a JSON report beside it (`<out>.json`) with its accuracies, and return the report."""
    data = load_real_set(data_root)
    styles = sorted(set(data.styles))
    if holdout_style is not None and holdout_style not in styles:
        raise UserError(f"no style {holdout_style!r} in {data_root}; its styles are {', '.join(styles)}")
    held = torch.tensor([s == holdout_style for s in data.styles])
    train = data.subset(~held)
    log(f"training the judge on {len(train)} images ({', '.join(s for s in styles if s != holdout_style)}), "
        f"{len(data.classes)} classes, {steps} steps")
    started = time.perf_counter()
    judge = train_judge(train, out, steps=steps, seed=seed, log=log)
    report = {"data": str(data_root), "train_styles": [s for s in styles if s != holdout_style], "classes": len(data.classes),
              "train_images": len(train), "steps": steps, "train_minutes": round((time.perf_counter() - started) / 60, 1),
              "train_set": held_out_report(judge, train)}
    if holdout_style is not None:
        test = data.subset(held)
        seen = torch.zeros(len(data.classes), dtype=torch.bool)
        seen[train.labels] = True
        test = test.subset(seen[test.labels])  # classes with no training image cannot be named
        report |= {"held_out_style": holdout_style, "held_out_images": len(test), "held_out": held_out_report(judge, test)}
    judge.config.trained |= {k: v for k, v in report.items() if k != "data"}
    save_judge(judge, out)
    Path(out).with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    log(json.dumps(report))
    return report
