"""Fine-tuning a model on one's own photos with LoRA: the loop, its checkpoints and its held-out loss.

    photos = load_photos("acme/", "acme storefront", "storefront", pixels=..., factor=pipe.size_factor)
    result = finetune(pipe, photos, "runs/acme", FinetuneSettings(steps=600))
    result.best_file                      # the kohya LoRA file at the lowest held-out loss

Each step is a pure function of (adapter weights, optimizer state, step): the photo, the noise level and
the noise come from a generator seeded by (seed, step), so a run resumed from its checkpoint continues
exactly as if it had never stopped. Latents and text conditioning are computed once per photo. The loss
is the denoising loss weighted per position by the photo's mask (`photos.Photo.weights`) and per sample
by Min-SNR-gamma (Hang et al. 2023). With 4 or more photos one is held out: its loss at fixed noise levels
and noise is measured at every checkpoint, and the adapters where it is lowest are what is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..images import to_tensor
from .losses import denoising_loss, min_snr_weights
from .lora import LoraLayer, add_adapters, adapter_parameters, remove_adapters, save_kohya
from .photos import PhotoSet
from .state import checkpoint_meta, load_checkpoint, save_checkpoint

STATE = "finetune-state.safetensors"
HELD_OUT_SIGMAS = 8  # fixed noise levels the held-out loss is measured at


@dataclass(frozen=True)
class FinetuneSettings:
    steps: int | None = None  # None: about 100 per photo, clamped to 500-2000
    rank: int = 16
    alpha: float = 16.0
    lr: float = 1e-4
    min_snr_gamma: float = 5.0
    seed: int = 0
    checkpoint_every: int = 100
    name: str = "lora"

    def total_steps(self, photos: int) -> int:
        return self.steps if self.steps is not None else min(2000, max(500, 100 * photos))


@dataclass
class FinetuneResult:
    step: int
    best_step: int
    best_file: Path
    held_out: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out loss), one per checkpoint


def prepare(pipe, photos: PhotoSet) -> list[dict]:
    """Per photo: its latents (the posterior mean), its loss weights at the latents' size, its conditioning."""
    prepared = []
    with torch.no_grad():
        for photo in photos.photos:
            pixels = to_tensor(photo.image, *photo.bucket).to(pipe.device, pipe.dtype)  # [1, 3, H, W] in [-1, 1]
            x0 = pipe.codec.encode(pixels) if pipe.vae is not None else pixels
            weights = None
            if photo.weights is not None:
                mask = torch.from_numpy(photo.weights)[None, None].to(pipe.device, torch.float32)
                weights = F.adaptive_avg_pool2d(mask, x0.shape[-2:])
                weights = weights / weights.mean().clamp(min=1e-6)
            prepared.append({"x0": x0, "weights": weights, "cond": pipe.conditioner.encode([photo.caption], photo.bucket)})
    return prepared


def _loss(pipe, item: dict, sigma: torch.Tensor, noise: torch.Tensor, gamma: float) -> torch.Tensor:
    loss = denoising_loss(pipe.denoiser, item["x0"], sigma, item["cond"], noise, item["weights"])
    if gamma > 0:
        loss = loss * min_snr_weights(sigma, gamma, pipe.denoiser.prediction).to(loss.device)
    return loss.mean()


def held_out_loss(pipe, item: dict, seed: int, gamma: float) -> float:
    """The mean loss of one photo at HELD_OUT_SIGMAS fixed noise levels (spread over the schedule) and fixed noise."""
    g = torch.Generator().manual_seed(seed + 7919)
    sigmas = pipe.denoiser.sigmas
    picks = torch.linspace(0, len(sigmas) - 1, HELD_OUT_SIGMAS + 2)[1:-1].round().long()
    total = 0.0
    with torch.no_grad():
        for index in picks:
            noise = torch.randn(item["x0"].shape, generator=g).to(item["x0"])
            total += _loss(pipe, item, sigmas[index].reshape(1), noise, gamma).item()
    return total / len(picks)


def _modules(adapters: dict[str, LoraLayer]) -> dict[str, torch.nn.Module]:
    return {"lora": torch.nn.ModuleDict({name.replace(".", "_"): a for name, a in adapters.items()})}


def finetune(pipe, photos: PhotoSet, out: str | Path, settings: FinetuneSettings = FinetuneSettings(),
             progress=None) -> FinetuneResult:
    """Train LoRA adapters on `photos` into `out` (checkpoints, the best and last kohya files); resumes from
    `out`'s checkpoint when there is one for the same photos and settings."""
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    prepared = prepare(pipe, photos)
    held = prepared.pop() if len(prepared) >= 4 else None  # the last photo (by name) is held out
    pipe.unet.requires_grad_(False)  # only the adapters learn
    adapters = add_adapters(pipe.unet, settings.rank, settings.alpha, seed=settings.seed)
    try:
        return _train(pipe, prepared, held, adapters, out, settings, len(photos.photos), progress)
    finally:
        remove_adapters(pipe.unet, adapters)


def _train(pipe, prepared, held, adapters, out: Path, settings: FinetuneSettings, count: int, progress):
    optimizer = torch.optim.AdamW(adapter_parameters(adapters), lr=settings.lr, weight_decay=1e-2)
    total, state = settings.total_steps(count), out / STATE
    meta = {"step": 0, "settings": repr(settings), "photos": count, "held_out": [], "best": None}
    if state.exists():
        saved = checkpoint_meta(state)
        if saved.get("settings") != meta["settings"] or saved.get("photos") != count:
            raise UserError(f"{state} was made with other photos or settings; choose another --out or delete it")
        meta = load_checkpoint(state, _modules(adapters), {"optim": optimizer})
    family, blocks = pipe.family, pipe.config.unet.num_res_blocks
    for step in range(meta["step"], total):
        g = torch.Generator().manual_seed(settings.seed * 1_000_003 + step)
        order = torch.randperm(len(prepared), generator=torch.Generator().manual_seed(settings.seed + step // len(prepared)))
        item = prepared[int(order[step % len(prepared)])]
        sigma = pipe.denoiser.sigmas[torch.randint(0, len(pipe.denoiser.sigmas), (1,), generator=g)]
        noise = torch.randn(item["x0"].shape, generator=g).to(item["x0"])
        optimizer.zero_grad(set_to_none=True)
        loss = _loss(pipe, item, sigma, noise, settings.min_snr_gamma)
        if math.isfinite(loss.item()):
            loss.backward()
            torch.nn.utils.clip_grad_norm_(adapter_parameters(adapters), 1.0)
            optimizer.step()
        meta["step"] = step + 1
        if progress is not None:
            progress(step + 1, total, loss.item())
        if meta["step"] % settings.checkpoint_every == 0 or meta["step"] == total:
            _checkpoint(pipe, held, adapters, optimizer, out, settings, meta, (family, blocks))
    best = meta["best"] or meta["step"]
    return FinetuneResult(meta["step"], best, out / f"{settings.name}.safetensors", [tuple(x) for x in meta["held_out"]])


def _checkpoint(pipe, held, adapters, optimizer, out: Path, settings, meta: dict, shape) -> None:
    """Measure the held-out loss; write the kohya file when it is the lowest so far (always, without one held
    out); then the resumable state, last, so a kill never leaves a state ahead of its files."""
    family, blocks = shape
    extra = {"ss_steps": meta["step"], "ss_num_train_images": meta["photos"]}
    if held is not None:
        loss = held_out_loss(pipe, held, settings.seed, settings.min_snr_gamma)
        meta["held_out"].append([meta["step"], loss])
        extra["noisecraft_held_out_loss"] = f"{loss:.6f}"
    if held is None or min(x[1] for x in meta["held_out"]) == meta["held_out"][-1][1]:
        meta["best"] = meta["step"]
        save_kohya(out / f"{settings.name}.safetensors", adapters, family, blocks, settings.name, extra)
    save_kohya(out / f"{settings.name}-last.safetensors", adapters, family, blocks, settings.name, extra)
    save_checkpoint(out / STATE, _modules(adapters), {"optim": optimizer}, meta)
