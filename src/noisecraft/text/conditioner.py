"""Prompts -> the conditioning dict a UNet takes: ``context`` (token states), ``context_mask``
(noisecraft's models), ``y`` (pooled vector; for SDXL with its size conditioning); SD3's and FLUX's
transformers take ``context`` (with T5's tokens) and ``y`` too.

One `Conditioner` per loaded model. It also decides which words the UNet reads (`subject`): the
prompt's own, or the nearest subject of the model's subject index (`text.subjects`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..models.unet import timestep_embedding
from .base import TextEmbedding
from .subjects import SubjectIndex


class Conditioner:
    """A text encoder (or None, for unconditional models) and what its model family feeds the UNet."""

    def __init__(self, encoder, *, family: str, adm_in_channels: int | None, image_size: int,
                 device: torch.device, dtype: torch.dtype, subjects: SubjectIndex | None = None,
                 context_dim: int | None = None, t5=None, t5_length: int = 256):
        self.encoder, self.family, self.adm_in_channels, self.image_size = encoder, family, adm_in_channels, image_size
        self.device, self.dtype, self.subjects = device, dtype, subjects
        self.context_dim, self.t5, self.t5_length = context_dim, t5, t5_length  # SD3: the joint width, its T5
        self.text_device = None  # where the text encoders run, when not on `device` (their outputs move to it)
        self.kept: dict[tuple, tuple[dict, dict | None]] | None = None  # while `keep` is on: what `free` leaves
        self.freed = False

    def subject(self, prompt: str, subject: str | None) -> str | None:
        """The words the UNet reads instead of the prompt's, or None where it reads the prompt's own.

        `subject`: "auto" draws the nearest subject of the model's subject index (if it has one),
        "off" (or None) the prompt's own words, any other text that text's words.
        """
        if subject is None or subject == "off" or self.encoder is None:
            return None
        if not isinstance(subject, str) or not subject.strip():
            raise UserError("subject must be 'auto', 'off' or the words to draw", field="subject")
        if subject == "auto":
            if self.subjects is None:
                return None
            subject = self.subjects.subject_of(self.encoder, prompt)
        return None if subject == prompt else subject

    def encode(self, prompts: list[str], size: tuple[int, int] | None = None, words: list[str] | None = None) -> dict:
        """The conditioning dict the UNet takes (`context`, `context_mask`, `y`) for a batch of prompts.

        `words`: texts whose token states replace the prompts' (the pooled vectors stay the prompts').

        SDXL's `y` is [pooled text | sinusoids of (height, width, crop top, crop left, height, width)]
        for an image of `size` (width, height), uncropped (Podell et al. 2023, Sec. 2.2).
        """
        if self.encoder is None:
            return {}
        emb: TextEmbedding = self.encoder.encode(prompts).to(self.device)
        if words is not None and words != prompts:
            read = self.encoder.encode(words).to(self.device)
            emb = TextEmbedding(read.tokens, emb.pooled, read.mask)
        if self.family == "sdxl":  # an empty prompt means zero conditioning, as SDXL was trained (sgm's ucg)
            empty = torch.tensor([not p for p in prompts], device=self.device)
            emb = TextEmbedding(emb.tokens.masked_fill(empty[:, None, None], 0.0), emb.pooled.masked_fill(empty[:, None], 0.0), emb.mask)
        if self.family == "sd3":
            return self._sd3(prompts, emb)
        if self.family == "zimage":  # Qwen3's states of the real tokens (Z-Image 2025)
            return {"context": emb.tokens.to(self.dtype), "context_mask": emb.mask}
        if self.family == "flux":  # T5's tokens, CLIP-L's pooled vector (Black Forest Labs 2024)
            return {"context": self.t5.encode(prompts).tokens.to(self.device, self.dtype), "y": emb.pooled.to(self.dtype)}
        cond = {"context": emb.tokens.to(self.dtype)}
        if self.family == "noisecraft":
            cond["context_mask"] = emb.mask
        if self.adm_in_channels:
            y = emb.pooled
            if self.family == "sdxl":
                width, height = size or (self.image_size, self.image_size)
                ids = torch.tensor([height, width, 0, 0, height, width], dtype=torch.float32, device=self.device)
                dim = (self.adm_in_channels - y.shape[1]) // len(ids)
                y = torch.cat([y.float(), timestep_embedding(ids, dim).reshape(1, -1).expand(len(prompts), -1)], dim=1)
            cond["y"] = y.to(self.dtype)
        return cond

    def _sd3(self, prompts: list[str], emb: TextEmbedding) -> dict:
        """SD3's conditioning (Esser et al. 2024, Sec. 5.1): the CLIP states zero-padded to the joint width, then
        the T5 tokens (zeros without T5, as SD3 was trained to allow); y = both CLIP pooled vectors."""
        clip = F.pad(emb.tokens, (0, self.context_dim - emb.tokens.shape[-1]))
        if self.t5 is not None:
            t5 = self.t5.encode(prompts).tokens.to(clip)
        else:
            t5 = torch.zeros(len(prompts), self.t5_length, self.context_dim, device=clip.device, dtype=clip.dtype)
        return {"context": torch.cat([clip, t5], dim=1).to(self.dtype), "y": emb.pooled.to(self.dtype)}

    def pair(self, prompt: str, negative: str, subject: str | None, n: int, size: tuple[int, int],
             guided: bool) -> tuple[dict, dict | None]:
        """Conditioning for n pictures of `prompt` and, when `guided`, the negative prompt's: one encoder batch.
        While `keep` is on each result is kept, so that after `free` those prompts still draw."""
        key = (prompt, negative, subject, tuple(size), guided)
        if self.freed:
            if key not in (self.kept or {}):
                raise UserError("the text encoders were freed after encoding this model's prompts; this prompt was not "
                                "among them: load the model again to draw it", field="prompt")
            cond, uncond = self.kept[key]
            return _rows(cond, n), (_rows(uncond, n) if uncond is not None else None)
        negatives = [negative] * n if guided else []
        both = self.encode([prompt] * n + negatives, size, [subject or prompt] * n + negatives)
        cond = {k: v[:n] for k, v in both.items()}
        result = cond, ({k: v[n:] for k, v in both.items()} if guided else None)
        if self.kept is not None:
            self.kept[key] = result
        return result

    def keep(self) -> None:
        """From now on, keep what `pair` encodes (for `free`)."""
        self.kept = {} if self.kept is None else self.kept

    def free(self) -> None:
        """Drop the text encoders (their memory goes back); what was encoded since `keep` still draws."""
        self.encoder = self.t5 = None
        self.freed = True

    @property
    def conditional(self) -> bool:
        """Whether the model reads a prompt at all (freed text encoders still count: their prompts draw)."""
        return self.encoder is not None or self.freed


def _rows(cond: dict, n: int) -> dict:
    """A kept conditioning for n pictures: its first row (all rows are one prompt's) repeated."""
    return {k: v[:1].expand(n, *v.shape[1:]) if torch.is_tensor(v) else v for k, v in cond.items()}
