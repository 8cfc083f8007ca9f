"""Fine-tuning a model on one's own photos with LoRA: the loop, its checkpoints, its samples and its held-out loss.

    photos = load_photos("acme/", "acme storefront", "storefront", pixels=..., factor=pipe.size_factor)
    result = finetune(pipe, photos, "runs/acme", FinetuneSettings(steps=600))
    result.best_file                      # the kohya LoRA file at the lowest held-out loss
    result.samples, result.before_after   # what it drew at each checkpoint; without and with the LoRA

Each step is a pure function of (adapter weights, optimizer state, step): the photo, the noise level and
the noise come from a generator seeded by (seed, step), so a run resumed from its checkpoint continues
exactly as if it had never stopped. Latents and text conditioning are computed once per photo (the
conditioning every step when the text encoder learns too). The loss is the denoising loss weighted per
position by the photo's mask (`photos.Photo.weights`) and per sample by Min-SNR-gamma (Hang et al. 2023).
With 4 or more photos one is held out: its loss at fixed noise levels and noise is measured at every
checkpoint, and the adapters where it is lowest are what is kept.

DreamBooth prior preservation (Ruiz et al. 2023, eq. 2), when asked: the base model first draws
`prior_images` pictures of the class ("a photo of storefront"), cached in the run folder, and every step
adds their denoising loss, so the class word keeps meaning what it meant.

On CUDA the defaults are bf16 autocast, gradient checkpointing and 8-bit AdamW (bitsandbytes, when
installed); the adapters themselves are float32 everywhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from ..images import to_tensor
from ..pngmeta import save_png
from ..settings import Request
from .losses import denoising_loss, min_snr_weights
from .lora import (CONV_LAYERS, LAYERS, LoraLayer, add_adapters, add_text_adapters, adapter_parameters,
                   remove_adapters, restore, save_kohya, save_peft)
from .photos import PhotoSet, template_caption
from .samples import labelled_rows
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
    text_encoder: bool = False  # adapters on the text encoder's attention and MLP layers too
    conv: bool = False  # and on the UNet's convolutions (kohya's LoCon set)
    prior_images: int = 0  # DreamBooth prior preservation: class pictures the base model draws (0: off)
    prior_weight: float = 1.0
    flip: bool = False  # also learn from mirror images (off: text and logos would be learned backwards)
    precision: str = "auto"  # "fp32", "bf16" (autocast) or "auto": bf16 on CUDA
    gradient_checkpointing: bool | None = None  # None: on CUDA
    optimizer: str = "auto"  # "adamw", "adamw8bit" (bitsandbytes) or "auto": 8-bit on CUDA when it imports
    # what is shown, not what is learned (a run resumes with other values):
    samples: bool = True  # sample pictures at every checkpoint and a before/after sheet at the end
    sample_prompts: tuple[str, ...] = ()  # (): the photos' template caption ("a photo of acme storefront")
    sample_seed: int = 1
    sample_count: int = 4  # pictures per prompt, seeds sample_seed, sample_seed + 1, ...
    sample_steps: int = 20
    peft_copy: bool = False  # also write the diffusers/PEFT file

    def total_steps(self, photos: int) -> int:
        return self.steps if self.steps is not None else min(2000, max(500, 100 * photos))

    def training_key(self) -> str:
        """What a checkpoint must match to be resumed: every setting that changes the weights."""
        shown = {"samples", "sample_prompts", "sample_seed", "sample_count", "sample_steps", "peft_copy", "checkpoint_every"}
        return repr({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in shown})

    def check(self) -> None:
        if self.steps is not None and self.steps < 1 or self.rank < 1 or not self.lr > 0 or self.checkpoint_every < 1:
            raise UserError("--steps, --rank and --every must be at least 1 and --lr above 0")
        if self.prior_images < 0 or self.prior_weight < 0:
            raise UserError("--prior and --prior-weight cannot be negative")
        for name, value, allowed in (("precision", self.precision, ("auto", "fp32", "bf16")),
                                     ("optimizer", self.optimizer, ("auto", "adamw", "adamw8bit"))):
            if value not in allowed:
                raise UserError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")


@dataclass
class FinetuneResult:
    step: int
    best_step: int
    best_file: Path
    held_out: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out loss), one per checkpoint
    samples: Path | None = None  # the sheet of sample pictures, a row per checkpoint
    before_after: Path | None = None  # the same prompts and seeds without and with the kept LoRA
    peft_file: Path | None = None


@dataclass
class _Run:
    """What one fine-tuning run holds while it trains."""

    pipe: object
    settings: FinetuneSettings
    out: Path
    photos: int
    items: list[dict]
    held: dict | None
    prior: list[dict]
    adapters: dict[str, LoraLayer]
    text: dict  # {kohya prefix: (text encoder, {path: adapter})}
    prompts: tuple[str, ...]
    trigger: str  # the words that call the subject (the photos' name)

    @property
    def parameters(self) -> list[torch.nn.Parameter]:
        return adapter_parameters(self.all_adapters())

    def all_adapters(self) -> dict[str, LoraLayer]:
        return self.adapters | {f"{prefix}:{path}": a for prefix, (_, layers) in self.text.items() for path, a in layers.items()}

    @property
    def autocast(self):
        bf16 = self.settings.precision == "bf16" or (self.settings.precision == "auto" and self.pipe.device.type == "cuda")
        return torch.autocast(self.pipe.device.type, torch.bfloat16, enabled=bf16)

    def save(self, path: Path, extra: dict) -> Path:
        p = self.pipe
        return save_kohya(path, self.adapters, p.family, p.config.unet.num_res_blocks, self.settings.name, extra, self.text)


# -- the data -----------------------------------------------------------------------------------
def _latents(pipe, image, size: tuple[int, int], weights) -> tuple[torch.Tensor, torch.Tensor | None]:
    pixels = to_tensor(image, *size).to(pipe.device, pipe.dtype)  # [1, 3, H, W] in [-1, 1]
    x0 = pipe.codec.encode(pixels) if pipe.vae is not None else pixels
    if weights is not None:
        mask = torch.from_numpy(np.ascontiguousarray(weights))[None, None].to(pipe.device, torch.float32)
        weights = F.adaptive_avg_pool2d(mask, x0.shape[-2:])
        weights = weights / weights.mean().clamp(min=1e-6)
    return x0, weights


def _item(pipe, image, caption: str, size: tuple[int, int], weights=None, flip: bool = False) -> dict:
    x0, loss_weights = _latents(pipe, image, size, weights)
    item = {"x0": x0, "weights": loss_weights, "caption": caption, "size": size, "cond": pipe.conditioner.encode([caption], size)}
    if flip:  # the mirror image, encoded once too
        from PIL import ImageOps

        item["mirror"] = _latents(pipe, ImageOps.mirror(image), size, None if weights is None else weights[:, ::-1])
    return item


def prepare(pipe, photos: PhotoSet, flip: bool = False) -> list[dict]:
    """Per photo: its latents (the posterior mean), its loss weights at the latents' size, its conditioning
    (and, with `flip`, the mirror image's latents and weights)."""
    with torch.no_grad():
        return [_item(pipe, photo.image, photo.caption, photo.bucket, photo.weights, flip) for photo in photos.photos]


def prior_pictures(pipe, photos: PhotoSet, folder: Path, count: int, seed: int) -> list[dict]:
    """`count` pictures of the class drawn by the base model (before any adapter), at the photos' commonest
    size, cached in a subfolder of `folder` named by what they were drawn with (prompt, size, model, seed)."""
    from PIL import Image

    if not photos.class_word.strip():
        raise UserError("prior preservation needs the photos' class word (--class-word, such as 'storefront')")
    prompt = template_caption(photos.class_word)
    width, height = max(photos.buckets().items(), key=lambda kv: len(kv[1]))[0]
    key = hashlib.sha256(f"{prompt}|{width}x{height}|{pipe.name}|{seed}".encode()).hexdigest()[:12]
    folder = folder / key
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for k in range(count):
        file = folder / f"{k:04d}.png"
        if not file.is_file():  # written atomically, so a file that is there is whole
            picture = pipe(Request(prompt, seed=seed + k, width=width, height=height, subject="off"))[0]
            save_png(picture, file, parameters=picture.info["parameters"])
        with Image.open(file) as picture, torch.no_grad():
            items.append(_item(pipe, picture.convert("RGB"), prompt, (width, height)))
    return items


# -- the loss -----------------------------------------------------------------------------------
def _cond(pipe, item: dict, learn_text: bool) -> dict:
    return pipe.conditioner.encode([item["caption"]], item["size"]) if learn_text else item["cond"]


def _loss(pipe, item: dict, sigma: torch.Tensor, noise: torch.Tensor, gamma: float, learn_text: bool = False) -> torch.Tensor:
    loss = denoising_loss(pipe.denoiser, item["x0"], sigma, _cond(pipe, item, learn_text), noise, item["weights"])
    if gamma > 0:
        loss = loss.float() * min_snr_weights(sigma, gamma, pipe.denoiser.prediction).to(loss.device)
    return loss.float().mean()


def held_out_loss(pipe, item: dict, seed: int, gamma: float, learn_text: bool = False) -> float:
    """The mean loss of one photo at HELD_OUT_SIGMAS fixed noise levels (spread over the schedule) and fixed noise."""
    g = torch.Generator().manual_seed(seed + 7919)
    sigmas = pipe.denoiser.sigmas
    picks = torch.linspace(0, len(sigmas) - 1, HELD_OUT_SIGMAS + 2)[1:-1].round().long()
    total = 0.0
    with torch.no_grad():
        for index in picks:
            noise = torch.randn(item["x0"].shape, generator=g).to(item["x0"])
            total += _loss(pipe, item, sigmas[index].reshape(1), noise, gamma, learn_text).item()
    return total / len(picks)


# -- the run ------------------------------------------------------------------------------------
def finetune(pipe, photos: PhotoSet, out: str | Path, settings: FinetuneSettings = FinetuneSettings(),
             progress=None) -> FinetuneResult:
    """Train LoRA adapters on `photos` into `out` (checkpoints, the best and last kohya files, sample sheets);
    resumes from `out`'s checkpoint when there is one for the same photos and settings."""
    settings.check()
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    items = prepare(pipe, photos, settings.flip)
    held = items.pop() if len(items) >= 4 else None  # the last photo (by name) is held out
    prior = prior_pictures(pipe, photos, out / "class-pictures", settings.prior_images, settings.seed + 100_000) \
        if settings.prior_images else []
    pipe.unet.requires_grad_(False)  # only the adapters learn
    layers = LAYERS + (CONV_LAYERS if settings.conv else ())
    adapters = add_adapters(pipe.unet, settings.rank, settings.alpha, layers, settings.seed, dtype=torch.float32)
    text = {}
    try:
        if settings.text_encoder:
            text = add_text_adapters(pipe.text_encoder, settings.rank, settings.alpha, settings.seed, dtype=torch.float32)
        run = _Run(pipe, settings, out, len(photos.photos), items, held, prior, adapters, text,
                   settings.sample_prompts or (photos.prompt,), photos.name)
        with _checkpointing(pipe.unet, settings.gradient_checkpointing if settings.gradient_checkpointing is not None
                            else pipe.device.type == "cuda"):
            result = _train(run, progress)
        restore(result.best_file, adapters, pipe.family, pipe.config.unet.num_res_blocks, text)
        if settings.samples:
            result.samples = out / "samples.png"
            result.before_after = _before_after(run, result.best_step)
        if settings.peft_copy:
            (out / "diffusers").mkdir(exist_ok=True)
            result.peft_file = save_peft(out / "diffusers" / "pytorch_lora_weights.safetensors", adapters,
                                         pipe.config.unet.num_res_blocks, text)
        return result
    finally:
        remove_adapters(pipe.unet, adapters)
        for module, layers_of in text.values():
            remove_adapters(module, layers_of)


@contextlib.contextmanager
def _checkpointing(unet, enabled: bool):
    """Gradient checkpointing of the UNet's blocks (recompute activations in the backward pass: less memory)."""
    if not enabled:
        yield
        return
    config, training = unet.config, unet.training
    unet.config = dataclasses.replace(config, use_checkpoint=True)
    unet.train()
    try:
        yield
    finally:
        unet.config = config
        unet.train(training)


def _optimizer(run: _Run, parameters: list) -> torch.optim.Optimizer:
    kind, s = run.settings.optimizer, run.settings
    if kind == "auto":
        kind = "adamw8bit" if run.pipe.device.type == "cuda" and importlib.util.find_spec("bitsandbytes") else "adamw"
    if kind == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise UserError("the 8-bit optimizer needs bitsandbytes: pip install bitsandbytes") from None
        return bnb.optim.AdamW8bit(parameters, lr=s.lr, weight_decay=1e-2)
    return torch.optim.AdamW(parameters, lr=s.lr, weight_decay=1e-2)


def _modules(run: _Run) -> dict[str, torch.nn.Module]:
    return {"lora": torch.nn.ModuleDict({name.replace(".", "_").replace(":", "__"): a for name, a in run.all_adapters().items()})}


def _train(run: _Run, progress) -> FinetuneResult:
    s, pipe = run.settings, run.pipe
    parameters = run.parameters
    optimizer = _optimizer(run, parameters)
    total, state = s.total_steps(run.photos), run.out / STATE
    meta = {"step": 0, "settings": s.training_key(), "photos": run.photos, "held_out": [], "best": None}
    if state.exists():
        saved = checkpoint_meta(state)
        if saved.get("settings") != meta["settings"] or saved.get("photos") != run.photos:
            raise UserError(f"{state} was made with other photos or settings; choose another --out or delete it")
        meta = load_checkpoint(state, _modules(run), {"optim": optimizer})
    sigmas = pipe.denoiser.sigmas
    for step in range(meta["step"], total):
        g = torch.Generator().manual_seed(s.seed * 1_000_003 + step)
        order = torch.randperm(len(run.items), generator=torch.Generator().manual_seed(s.seed + step // len(run.items)))
        item = run.items[int(order[step % len(run.items)])]
        if s.flip and bool(torch.rand(1, generator=g) < 0.5):
            item = item | dict(zip(("x0", "weights"), item["mirror"]))
        sigma = sigmas[torch.randint(0, len(sigmas), (1,), generator=g)]
        noise = torch.randn(item["x0"].shape, generator=g).to(item["x0"])
        optimizer.zero_grad(set_to_none=True)
        with run.autocast:
            loss = _loss(pipe, item, sigma, noise, s.min_snr_gamma, s.text_encoder)
            if run.prior:
                other = run.prior[int(torch.randint(0, len(run.prior), (1,), generator=g))]
                other_sigma = sigmas[torch.randint(0, len(sigmas), (1,), generator=g)]
                other_noise = torch.randn(other["x0"].shape, generator=g).to(other["x0"])
                loss = loss + s.prior_weight * _loss(pipe, other, other_sigma, other_noise, s.min_snr_gamma, s.text_encoder)
        if math.isfinite(loss.item()):
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
        meta["step"] = step + 1
        if progress is not None:
            progress(step + 1, total, loss.item())
        if meta["step"] % s.checkpoint_every == 0 or meta["step"] == total:
            _checkpoint(run, optimizer, meta)
    best = meta["best"] or meta["step"]
    return FinetuneResult(meta["step"], best, run.out / f"{s.name}.safetensors", [tuple(x) for x in meta["held_out"]])


def _checkpoint(run: _Run, optimizer, meta: dict) -> None:
    """Measure the held-out loss; write the kohya file when it is the lowest so far (always, without one held
    out); draw the samples; then the resumable state, last, so a kill never leaves a state ahead of its files."""
    s = run.settings
    extra = {"ss_steps": meta["step"], "ss_num_train_images": meta["photos"], "noisecraft_trigger": run.trigger}
    if run.held is not None:
        with run.autocast:
            loss = held_out_loss(run.pipe, run.held, s.seed, s.min_snr_gamma, s.text_encoder)
        meta["held_out"].append([meta["step"], loss])
        extra["noisecraft_held_out_loss"] = f"{loss:.6f}"
    if run.held is None or min(x[1] for x in meta["held_out"]) == meta["held_out"][-1][1]:
        meta["best"] = meta["step"]
        run.save(run.out / f"{s.name}.safetensors", extra)
    run.save(run.out / f"{s.name}-last.safetensors", extra)
    if s.samples:
        row = labelled_rows([("", _pictures(run))], cell=_cell(run))
        (run.out / "samples").mkdir(exist_ok=True)
        save_png(row, run.out / "samples" / f"step-{meta['step']:06d}.png", parameters=f"samples at step {meta['step']}")
        _samples_sheet(run, meta)
    save_checkpoint(run.out / STATE, _modules(run), {"optim": optimizer}, meta)


# -- what it shows ------------------------------------------------------------------------------
def _cell(run: _Run) -> int:
    return max(128, run.pipe.config.image_size)


def _pictures(run: _Run) -> list:
    s, pictures = run.settings, []
    for prompt in run.prompts:
        pictures += run.pipe(Request(prompt, seed=s.sample_seed, num_images=s.sample_count, steps=s.sample_steps, subject="off"))
    return pictures


def _samples_sheet(run: _Run, meta: dict) -> Path:
    """Every checkpoint's row of samples, labelled with its step and held-out loss, the kept one marked."""
    from PIL import Image

    losses = {step: loss for step, loss in meta["held_out"]}
    rows = []
    for file in sorted((run.out / "samples").glob("step-*.png")):
        step = int(file.stem.split("-")[1])
        if step > meta["step"]:
            continue  # left from a run that went further before this one was restarted
        label = f"step {step}" + (f"\nheld-out {losses[step]:.4f}" if step in losses else "") + ("\nkept" if step == meta["best"] else "")
        with Image.open(file) as row:
            rows.append((label, [row.convert("RGB")]))
    sheet = labelled_rows(rows, cell=None, title=f"{run.settings.name}: " + " | ".join(run.prompts))
    return save_png(sheet, run.out / "samples.png", parameters=f"fine-tuning samples to step {meta['step']}")


def _before_after(run: _Run, best_step: int) -> Path:
    """The sample prompts and seeds without the LoRA (the base model exactly) and with the kept one."""
    everything = run.all_adapters().values()
    for adapter in everything:
        adapter.enabled = False
    try:
        before = _pictures(run)
    finally:
        for adapter in everything:
            adapter.enabled = True
    after = _pictures(run)
    sheet = labelled_rows([("before", before), (f"after\n(step {best_step})", after)], cell=_cell(run),
                          title=f"{run.settings.name}: " + " | ".join(run.prompts))
    return save_png(sheet, run.out / "before-after.png", parameters=f"before/after {run.settings.name}")


__all__ = ["FinetuneResult", "FinetuneSettings", "finetune", "held_out_loss", "prepare", "prior_pictures"]
