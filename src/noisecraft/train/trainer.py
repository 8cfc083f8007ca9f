"""The training loop: one `Trainer` for autoencoders and for pixel or latent UNets.

Each step is a pure function of (weights, optimizer state, step number): the batch, the captions,
the dropout, the noise levels and the noise all come from generators seeded by (seed, step, rank).
So a run resumed from a checkpoint continues exactly as if it had never stopped.

Under ``torchrun`` every process trains its slice of each global batch and PyTorch DDP averages
the gradients (gloo on CPU, NCCL on CUDA); only rank 0 writes files.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ..checkpoints import ModelConfig, load_model_file, save_model_file
from ..denoiser import Denoiser
from ..devices import pick_device
from ..errors import UserError
from ..models.discriminator import PatchDiscriminator
from ..models.unet import UNet, UNetConfig
from ..models.vae import AutoencoderKL, VAEConfig
from ..text.minilm import TEXT_ENCODERS, load_text_encoder
from .cache import TextCache, cached_latents, cached_text
from .config import TrainConfig
from .data import batch_indices, load_image_folder
from .losses import denoising_loss, hinge_discriminator_loss, min_snr_weights, training_sigmas, vae_loss
from .state import CHECKPOINT, checkpoint_meta, load_checkpoint, save_checkpoint


@dataclass
class TrainResult:
    step: int
    status: str  # "done" | "paused" | "diverged"
    bad_steps: int
    last_loss: float
    model_path: Path


def build_model_config(config: TrainConfig) -> ModelConfig:
    """The `ModelConfig` a training config describes (for latent models, the VAE file supplies its part)."""
    m = config.model
    base = dict(name=m.name, kind=m.kind, image_size=m.image_size, text_encoder=m.text_encoder, prediction=m.prediction,
                beta_schedule=m.beta_schedule, beta_start=m.beta_start, beta_end=m.beta_end, defaults=dict(m.defaults))
    try:
        if m.kind == "vae":
            return ModelConfig(**base | {"text_encoder": None}, vae=VAEConfig(**{"in_channels": m.channels, "out_channels": m.channels} | m.vae))
        if m.kind == "latent":
            vae_config = load_model_file(config.resolve(m.vae_path))[0].vae
            if vae_config is None:
                raise UserError(f"{m.vae_path} holds no autoencoder; train one with a kind = \"vae\" config first")
            channels = vae_config.embed_dim
        else:
            vae_config, channels = None, m.channels
        text_dim = load_text_encoder_dims(m.text_encoder)
        unet = UNetConfig(**{"in_channels": channels, "out_channels": channels, "context_dim": text_dim,
                             "adm_in_channels": text_dim if (m.pooled and text_dim) else None} | m.unet)
    except TypeError as error:
        raise UserError(f"bad network settings in the training config: {error}") from None
    return ModelConfig(**base, unet=unet, vae=vae_config)


def load_text_encoder_dims(name: str | None) -> int | None:
    if name and name not in TEXT_ENCODERS:
        raise UserError(f"unknown text encoder {name!r} in the training config; this noisecraft knows: {', '.join(TEXT_ENCODERS)}")
    return TEXT_ENCODERS[name].dim if name else None


class Trainer:
    def __init__(self, config: TrainConfig, *, device: str = "auto", resume: bool = True, progress: bool = True, log=print):
        self.config, self.progress = config, progress
        self.rank, self.world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        self.distributed = self.world > 1
        self.device = self._setup_device(device)
        self.log = log if self.rank == 0 else (lambda *a, **k: None)
        t = config.train
        if t.batch_size % self.world:
            raise UserError(f"train.batch_size {t.batch_size} must divide evenly over {self.world} processes")
        self.out = config.resolve(t.out)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "samples").mkdir(exist_ok=True)
        self.model_config = build_model_config(config)
        self.data = load_image_folder(config.resolve(config.data.path), config.model.image_size, config.model.channels, log=self.log)
        self.log(f"data: {len(self.data)} images, {len(self.data.captions)} distinct captions"
                 + (f", {len(self.data.skipped)} skipped" if self.data.skipped else ""))
        self._build_networks()
        self.step, self.bad_steps, self.bad_in_row, self.last_loss = 0, 0, 0, float("nan")
        checkpoint = self.out / CHECKPOINT
        if resume and checkpoint.exists():
            if checkpoint_meta(checkpoint).get("model_config") != self.model_config.to_dict():  # before any tensor is read
                raise UserError(f"{checkpoint} belongs to a different model (the config changed since it was saved); "
                                "choose another train.out or pass --no-resume")
            meta = load_checkpoint(checkpoint, self.modules(), self.optimizers())
            self.step, self.bad_steps = meta["step"], meta.get("bad_steps", 0)
            self.log(f"resumed from {checkpoint} at step {self.step}")
        elif config.train.init_from:
            self._init_from(config.resolve(config.train.init_from))

    # -- set-up ---------------------------------------------------------------------------------
    def _setup_device(self, device: str) -> torch.device:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        device = pick_device(device)
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        if self.distributed and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        return device

    def _build_networks(self) -> None:
        c, t = self.model_config, self.config.train
        torch.manual_seed(t.seed)  # identical initial weights on every rank and every run
        if c.kind == "vae":
            self.model = AutoencoderKL(c.vae).to(self.device)
            self.vae, self.text_encoder, self.denoiser, self.text, self.latents = None, None, None, None, None
        else:
            self.model = UNet(c.unet).to(self.device)
            ac = c.alphas_cumprod()
            self.vae = None
            if c.kind == "latent":
                _, parts, _ = load_model_file(self.config.resolve(self.config.model.vae_path))
                self.vae = AutoencoderKL(c.vae)
                self.vae.load_state_dict(parts["vae"])
                self.vae.to(self.device).eval().requires_grad_(False)
            self.text_encoder = load_text_encoder(c.text_encoder).to(self.device) if c.text_encoder else None
            self.latents = cached_latents(self.vae, self.data, self.out / "cache", self.device, self.rank) if self.vae else None
            self.text = cached_text(self.text_encoder, self.data.captions, self.out / "cache", self.rank) if self.text_encoder else None
            if self.distributed:
                dist.barrier()
        for name, p in self.model.named_parameters():  # before DDP, which only syncs trainable parameters
            p.requires_grad_(not name.startswith(tuple(t.freeze)))
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.trained = self.model
        if self.distributed:
            self.trained = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device] if self.device.type == "cuda" else None)
        if c.kind != "vae":
            self.denoiser = Denoiser(self.trained, ac, prediction=c.prediction)
        self.disc = self.disc_trained = self.disc_optimizer = None
        if c.kind == "vae" and t.gan_weight > 0:
            self.disc = PatchDiscriminator(c.vae.out_channels).to(self.device)
            self.disc_trained = self.disc
            if self.distributed:
                self.disc_trained = torch.nn.parallel.DistributedDataParallel(self.disc, device_ids=[self.device] if self.device.type == "cuda" else None)
            self.disc_optimizer = torch.optim.AdamW(self.disc.parameters(), lr=t.lr, betas=(0.5, 0.9), weight_decay=0.0)
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 else decay).append(p)
        if t.freeze and not decay + no_decay:
            raise UserError(f"train.freeze {t.freeze} leaves nothing to train")
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                                           lr=t.lr, betas=tuple(t.betas))
        self.log(f"model: {c.kind}, {sum(p.numel() for p in self.model.parameters()) / 1e6:.1f}M parameters, device {self.device}"
                 + (f", {self.world} processes" if self.distributed else ""))

    def _init_from(self, path: Path) -> None:
        """Fine-tuning: start from the weights of a noisecraft model file whose network matches this config's."""
        config, parts, _ = load_model_file(path)
        part = "vae" if self.model_config.kind == "vae" else "unet"
        ours, theirs = getattr(self.model_config, part), getattr(config, part)
        if part == "vae" and theirs is not None:  # the latent scale is measured afresh at export
            theirs = dataclasses.replace(theirs, scaling_factor=ours.scaling_factor, shift_factor=ours.shift_factor)
        if theirs != ours:
            raise UserError(f"train.init_from {path} holds a different {part} than this config describes; "
                            f"copy its [model] settings or start from scratch")
        self.model.load_state_dict({k: v.float() for k, v in parts[part].items()})
        self.ema.load_state_dict(self.model.state_dict())
        self.log(f"started from the weights of {path}")

    # -- one step -------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Linear warmup, then cosine decay to lr * min_lr_ratio."""
        t = self.config.train
        if step < t.warmup_steps:
            return t.lr * (step + 1) / t.warmup_steps
        progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
        return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    def batch(self, step: int) -> tuple[torch.Tensor, dict, torch.Tensor, torch.Tensor, torch.Generator]:
        """This rank's share of global batch `step`: clean samples x0, conditioning, noise levels and noise.

        The randomness of the whole global batch is drawn from one generator seeded by (seed, step) and
        then sliced by rank, so N processes see exactly the samples one process would.
        """
        t, c = self.config.train, self.model_config
        g = torch.Generator().manual_seed(t.seed * 7_919 + step * 104_729)
        index = batch_indices(len(self.data), step, t.batch_size, t.seed)
        mine = slice(self.rank, None, self.world)
        if c.kind == "latent":
            mean, std = self.latents[0][index], self.latents[1][index]
            z = mean + std * torch.randn(mean.shape, generator=g)
            x0 = (z - c.vae.shift_factor) * c.vae.scaling_factor
        else:
            x0 = self.data.images[index].float() / 127.5 - 1
        cond = {}
        if self.text is not None:
            captions = [self.data.caption_ids[i] for i in index.tolist()]
            choice = [ids[int(torch.randint(len(ids), (1,), generator=g))] for ids in captions]
            choice = _dropped(choice, self.config.data.caption_dropout, g)
            tokens = choice  # token dropout draws only when used, so runs without it keep their random stream
            if self.config.data.token_dropout:
                tokens = _dropped(choice, self.config.data.token_dropout, g)
            cond = self.text.conditioning(tokens[mine], pooled=bool(c.unet.adm_in_channels), pooled_ids=choice[mine])
        sigma = noise = None
        if c.kind != "vae":
            sigma = training_sigmas(self.denoiser, x0.shape[0], g)[mine].to(self.device, torch.float32)
            noise = torch.randn(x0.shape, generator=g)[mine].to(self.device)
        return x0[mine].to(self.device), {k: v.to(self.device) for k, v in cond.items()}, sigma, noise, g

    def modules(self) -> dict[str, torch.nn.Module]:
        """What a checkpoint saves besides optimizers: weights, EMA weights, the discriminator if any."""
        return {"model": self.model, "ema": self.ema} | ({"disc": self.disc} if self.disc is not None else {})

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"optim": self.optimizer} | ({"disc_optim": self.disc_optimizer} if self.disc is not None else {})

    def gan_active(self, step: int) -> bool:
        return self.disc is not None and step >= self.config.train.gan_start

    def loss(self, step: int) -> torch.Tensor:
        x0, cond, sigma, noise, g = self.batch(step)
        if self.model_config.kind == "vae":
            t = self.config.train
            active = self.gan_active(step)
            loss, logs = vae_loss(self.trained, x0, kl_weight=t.kl_weight, generator=g,
                                  discriminator=self.disc_trained if active else None, gan_weight=t.gan_weight)
            self._pair = (x0, logs["recon"]) if active else None
            return loss
        loss = denoising_loss(self.denoiser, x0, sigma, cond, noise)
        gamma = self.config.train.min_snr_gamma
        if gamma > 0:
            loss = loss * min_snr_weights(sigma, gamma, self.model_config.prediction).to(loss.device)
        return loss.mean()

    def discriminator_step(self) -> None:
        """One hinge-loss step of the patch discriminator on this batch's images and reconstructions."""
        real, fake = self._pair
        self.disc_optimizer.zero_grad(set_to_none=True)
        loss = hinge_discriminator_loss(self.disc_trained(real), self.disc_trained(fake))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.disc.parameters(), self.config.train.grad_clip)
        self.disc_optimizer.step()

    def train_step(self) -> bool:
        """One optimizer step; returns False (and changes nothing) when the loss is not finite."""
        t = self.config.train
        torch.manual_seed(t.seed * 31 + self.step * 1_000_003 + self.rank)  # dropout and friends
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        autocast = self.device.type == "cuda" and t.precision in ("auto", "bf16") or t.precision == "bf16"
        with torch.autocast(self.device.type, torch.bfloat16, enabled=autocast):
            loss = self.loss(self.step)
        value = loss.detach().float().reshape(1)
        if self.distributed:
            dist.all_reduce(value)
            value /= self.world
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(value).all():
            return False
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        if not torch.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            return False
        self.optimizer.step()
        if self.model_config.kind == "vae" and self.gan_active(self.step):
            self.discriminator_step()
        decay = min(t.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), self.model.parameters()):
                e.lerp_(p, 1 - decay)
        self.last_loss = float(value)
        return True

    # -- the loop -------------------------------------------------------------------------------
    def train(self, until: int | None = None) -> TrainResult:
        """Train to `train.steps` (or to `until`, to pause early), checkpointing on the way."""
        t = self.config.train
        end = min(t.steps, until) if until is not None else t.steps
        bar = _progress(self.step, t.steps, enabled=self.progress and self.rank == 0)
        started, seen, status = time.perf_counter(), 0, "done"
        while self.step < end:
            if self.train_step():
                self.bad_in_row = 0
            else:
                self.bad_steps += 1
                self.bad_in_row += 1
                self.log(f"step {self.step}: loss is not finite; skipped ({self.bad_in_row} in a row)")
            self.step += 1
            if self.bad_in_row >= t.max_bad_steps:
                status = "diverged"
                break
            seen += t.batch_size
            rate = seen / max(time.perf_counter() - started, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{self.last_loss:.4f}", img_s=f"{rate:.1f}")
            if self.step % t.log_every == 0 or self.step == end:
                self._log_line({"step": self.step, "loss": self.last_loss, "lr": self.lr_at(self.step - 1), "images_per_s": rate, "bad_steps": self.bad_steps})
            if self.step % t.checkpoint_every == 0 or self.step == end:
                self.save()
            if t.sample_every and (self.step % t.sample_every == 0 or self.step == t.steps):
                self.sample_grid()
        bar.close()
        if status == "done" and self.step < t.steps:
            status = "paused"
        if status == "diverged":
            self.log(f"stopped: {t.max_bad_steps} non-finite losses in a row; the last good checkpoint is {self.out / CHECKPOINT}")
        if self.distributed:
            dist.barrier()
        return TrainResult(self.step, status, self.bad_steps, self.last_loss, self.out / "model.safetensors")

    def save(self) -> None:
        """Write the resumable checkpoint and the loadable model file (EMA weights), rank 0 only."""
        if self.rank != 0:
            return
        meta = {"step": self.step, "bad_steps": self.bad_steps, "model_config": self.model_config.to_dict(),
                "train_config": self.config.to_dict()}
        save_checkpoint(self.out / CHECKPOINT, self.modules(), self.optimizers(), json.loads(json.dumps(meta, default=str)))
        self.export(self.out / "model.safetensors")

    def export(self, path: Path, dtype: torch.dtype | None = None) -> Path:
        """The EMA weights as a noisecraft model file that `Pipeline.from_pretrained` loads."""
        config = self.model_config
        if config.kind == "vae":
            parts = {"vae": self.ema.state_dict()}
            config = dataclasses.replace(config, vae=dataclasses.replace(config.vae, scaling_factor=self.latent_scale()))
        else:
            parts = {"unet": self.ema.state_dict()}
        if self.vae is not None:
            parts["vae"] = self.vae.state_dict()
        return save_model_file(path, config, parts, dtype=dtype)

    @torch.no_grad()
    def latent_scale(self, count: int = 256) -> float:
        """1 / std of the EMA autoencoder's latents on the data, so diffusion sees unit variance (Rombach et al. 2022, Sec. G)."""
        x = self.data.images[:: max(1, len(self.data) // count)][:count].float().div(127.5).sub(1).to(self.device)
        z = torch.cat([self.ema.encode(chunk).mode() for chunk in x.split(64)])
        return float(1 / z.float().std().clamp(min=1e-6))

    def sample_grid(self) -> Path | None:
        """A PNG grid: prompts x 4 seeds for diffusion models, originals over reconstructions for a VAE."""
        if self.rank != 0:
            return None
        from .samples import sample_grid

        path = self.out / "samples" / f"step_{self.step:07d}.png"
        sample_grid(self, path)
        return path

    def _log_line(self, row: dict) -> None:
        if self.rank == 0:
            with open(self.out / "train_log.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")


def _progress(initial: int, total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)


def _dropped(caption_ids: list[int], share: float, generator: torch.Generator) -> list[int]:
    """The captions with about `share` of them replaced by the empty prompt (one draw per caption)."""
    drop = torch.rand(len(caption_ids), generator=generator) < share
    return [TextCache.EMPTY if d else k for k, d in zip(caption_ids, drop.tolist())]
