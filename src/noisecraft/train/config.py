"""Training configuration: a TOML file read into typed dataclasses.

A run is reproduced from its config file alone::

    noisecraft train configs/emoji-vae.toml      # an autoencoder first (latent models)
    noisecraft train configs/emoji-unet.toml     # then the UNet on its latents

Sections: ``[model]`` (what to build; ``[model.unet]`` / ``[model.vae]`` hold the network
configs), ``[data]``, ``[train]`` and ``[sample]``. Paths are relative to the config file.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError


@dataclass
class ModelSection:
    kind: str = "latent"  # latent | pixel | vae
    name: str = "noisecraft"
    image_size: int = 64
    channels: int = 3
    text_encoder: str | None = "minilm"
    pooled: bool = True  # add the pooled text vector to the timestep embedding (label_emb)
    prediction: str = "eps"
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    vae_path: str | None = None  # a trained kind="vae" model file, for latent models
    unet: dict = field(default_factory=dict)
    vae: dict = field(default_factory=dict)
    defaults: dict = field(default_factory=lambda: {"steps": 20, "guidance_scale": 5.0, "sampler": "dpmpp_2m_karras"})


@dataclass
class DataSection:
    path: str = "data"
    caption_dropout: float = 0.1  # share of captions replaced by "" so guidance has an unconditional model
    # share of the other captions whose token states are replaced by ""'s while the pooled sentence vector
    # stays, so the UNet learns to draw from the pooled vector alone (needs model.pooled = true)
    token_dropout: float = 0.0


@dataclass
class TrainSection:
    steps: int = 1000
    batch_size: int = 32
    lr: float = 2e-4
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 elsewhere) | fp32 | bf16
    kl_weight: float = 1e-6  # VAE only
    gan_weight: float = 0.0  # VAE only: patch-GAN term (Esser et al. 2021); 0 = off, LDM uses 0.5
    gan_start: int = 0  # VAE only: step at which the discriminator joins
    log_every: int = 10
    sample_every: int = 500
    checkpoint_every: int = 250
    max_bad_steps: int = 10  # this many non-finite losses in a row stop the run
    min_snr_gamma: float = 0.0  # diffusion only: Min-SNR-gamma loss weights (Hang et al. 2023); 0 = plain L_simple
    init_from: str | None = None  # fine-tune: start from this noisecraft model file's weights (fresh optimizer, step 0)
    freeze: list[str] = field(default_factory=list)  # parameter-name prefixes left untrained, e.g. ["encoder.", "quant_conv."]
    out: str = "runs/noisecraft"


@dataclass
class SampleSection:
    prompts: list[str] = field(default_factory=lambda: ["a palm tree", "a red apple", "a rocket", "a cat face"])
    steps: int = 20
    guidance_scale: float = 4.0
    sampler: str = "dpmpp_2m_karras"
    seed: int = 0


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    sample: SampleSection = field(default_factory=SampleSection)
    base_dir: Path = Path(".")

    def resolve(self, path: str | None) -> Path | None:
        """A path from the config, relative to the config file's folder."""
        if path is None:
            return None
        path = Path(path).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.pop("base_dir")
        return data


def _section(cls, values: dict, where: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"unknown setting {where}.{unknown[0]} in the training config; known: {', '.join(sorted(known))}")
    try:
        section = cls(**values)
    except TypeError as error:
        raise UserError(f"bad [{where}] section in the training config: {error}") from None
    for f in dataclasses.fields(cls):
        value = getattr(section, f.name)
        if f.type in ("int", "float") and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise UserError(f"{where}.{f.name} must be a number, not {value!r}")
        if f.type == "int" and not isinstance(value, int):
            raise UserError(f"{where}.{f.name} must be a whole number, not {value!r}")
        if f.type == "float" and not math.isfinite(value):
            raise UserError(f"{where}.{f.name} must be a finite number, not {value!r}")
    return section


# (section, setting, test, what it must be): checked after the types, before any work
RANGES = [
    ("train", "lr", lambda v: v > 0, "above 0"), ("train", "warmup_steps", lambda v: v >= 0, "at least 0"),
    ("train", "min_lr_ratio", lambda v: 0 <= v <= 1, "from 0 to 1"), ("train", "weight_decay", lambda v: v >= 0, "at least 0"),
    ("train", "grad_clip", lambda v: v > 0, "above 0"), ("train", "ema_decay", lambda v: 0 <= v < 1, "at least 0 and below 1"),
    ("train", "log_every", lambda v: v >= 1, "at least 1"), ("train", "checkpoint_every", lambda v: v >= 1, "at least 1"),
    ("train", "sample_every", lambda v: v >= 0, "at least 0"), ("train", "max_bad_steps", lambda v: v >= 1, "at least 1"),
    ("train", "min_snr_gamma", lambda v: v >= 0, "at least 0"), ("train", "kl_weight", lambda v: v >= 0, "at least 0"),
    ("train", "gan_weight", lambda v: v >= 0, "at least 0"), ("train", "gan_start", lambda v: v >= 0, "at least 0"),
    ("train", "precision", lambda v: v in ("auto", "fp32", "bf16"), "auto, fp32 or bf16"),
    ("train", "betas", lambda v: len(v) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in v), "two numbers from 0 to below 1"),
    ("model", "image_size", lambda v: 1 <= v <= 4096, "from 1 to 4096"), ("model", "channels", lambda v: v in (1, 3), "1 or 3"),
    ("model", "beta_start", lambda v: 0 < v < 1, "above 0 and below 1"), ("model", "beta_end", lambda v: 0 < v < 1, "above 0 and below 1"),
    ("sample", "steps", lambda v: 1 <= v <= 1000, "from 1 to 1000"), ("sample", "guidance_scale", lambda v: 0 <= v <= 100, "from 0 to 100"),
]


def load_train_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    """Read a TOML training config; `overrides` maps ``"train.steps"``-style keys to values."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"no training config at {path}; pass a .toml file (see configs/ for examples)")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{path} is not valid TOML: {error}") from None
    for key, value in (overrides or {}).items():
        section, _, name = key.partition(".")
        raw.setdefault(section, {})[name] = value
    sections = {"model": ModelSection, "data": DataSection, "train": TrainSection, "sample": SampleSection}
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise UserError(f"unknown section [{unknown[0]}] in {path}; known: {', '.join(sections)}")
    config = TrainConfig(**{name: _section(cls, raw.get(name, {}), name) for name, cls in sections.items()}, base_dir=path.parent)
    config.model.text_encoder = config.model.text_encoder or None
    if config.model.kind not in ("latent", "pixel", "vae"):
        raise UserError(f"model.kind must be latent, pixel or vae, not {config.model.kind!r}")
    if config.model.kind == "latent" and not config.model.vae_path:
        raise UserError("a latent model needs model.vae_path, the trained autoencoder to work in")
    if config.train.steps < 1 or config.train.batch_size < 1:
        raise UserError("train.steps and train.batch_size must be at least 1")
    for section, name, test, what in RANGES:
        value = getattr(getattr(config, section), name)
        try:
            good = test(value)
        except TypeError:
            good = False
        if not good:
            raise UserError(f"{section}.{name} must be {what}, not {value!r}")
    for name in ("caption_dropout", "token_dropout"):
        if not 0.0 <= getattr(config.data, name) < 1.0:
            raise UserError(f"data.{name} must be at least 0 and below 1, not {getattr(config.data, name)}")
    if config.data.token_dropout and not config.model.pooled:
        raise UserError("data.token_dropout keeps the pooled text vector, so it needs model.pooled = true")
    return config
