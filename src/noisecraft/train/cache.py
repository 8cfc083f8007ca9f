"""Work done once per dataset: VAE latents of every image and text-encoder states of every caption.

Both are stored under the run folder (``cache/``) as safetensors with a fingerprint of their
inputs, so a resumed run reuses them and a changed dataset or autoencoder recomputes them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file

from ..checkpoints.io import write_safetensors


def _fingerprint(*parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            digest.update(part.contiguous().numpy().tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def _load_or_compute(path: Path, fingerprint: str, compute, rank: int) -> dict[str, torch.Tensor]:
    """Rank 0 computes and writes (atomically); other ranks wait for the file."""
    def valid():
        if not path.exists():
            return None
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            if (handle.metadata() or {}).get("fingerprint") != fingerprint:
                return None
        return load_file(str(path))

    tensors = valid()
    if tensors is None and rank == 0:
        tensors = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_safetensors(path, tensors, {"fingerprint": fingerprint})
    if dist.is_initialized():
        dist.barrier()
        if tensors is None:
            tensors = valid()
    return tensors


@torch.no_grad()
def cached_latents(vae, data, cache_dir: Path, device, rank: int, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the VAE posterior for every image (the trainer samples z from them)."""
    weights = torch.cat([p.detach().flatten().float().cpu()[:4096] for p in vae.parameters()])

    def compute():
        means, stds = [], []
        for start in range(0, len(data), batch):
            x = data.images[start : start + batch].float().div(127.5).sub(1).to(device)
            posterior = vae.encode(x)
            means.append(posterior.mean.float().cpu())
            stds.append(posterior.std.float().cpu())
        return {"mean": torch.cat(means), "std": torch.cat(stds)}

    key = _fingerprint(data.images[:: max(1, len(data) // 64)], len(data), data.files, weights)
    tensors = _load_or_compute(cache_dir / "latents.safetensors", key, compute, rank)
    return tensors["mean"], tensors["std"]


class TextCache:
    """Token states of every caption in one flat fp16 tensor, padded per batch on demand."""

    EMPTY = -1  # the index that means "no caption" (the empty prompt, for classifier-free guidance)

    def __init__(self, tokens: torch.Tensor, offsets: torch.Tensor, pooled: torch.Tensor):
        self.tokens, self.offsets, self.pooled = tokens, offsets, pooled

    def _rows(self, caption_ids: list[int]) -> list[int]:
        return [i if i != self.EMPTY else len(self.offsets) - 2 for i in caption_ids]

    def conditioning(self, caption_ids: list[int], pooled: bool = True, pooled_ids: list[int] | None = None) -> dict[str, torch.Tensor]:
        """Token states (padded, with their mask) of `caption_ids` and, if `pooled`, the pooled vectors of
        `pooled_ids` (default: the same captions)."""
        rows = self._rows(caption_ids)
        lengths = [int(self.offsets[r + 1] - self.offsets[r]) for r in rows]
        length = max(lengths)
        context = torch.zeros(len(rows), length, self.tokens.shape[1])
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for b, (r, n) in enumerate(zip(rows, lengths)):
            context[b, :n] = self.tokens[self.offsets[r] : self.offsets[r] + n].float()
            mask[b, :n] = True
        cond = {"context": context, "context_mask": mask}
        if pooled:
            cond["y"] = self.pooled[rows if pooled_ids is None else self._rows(pooled_ids)].float()
        return cond


@torch.no_grad()
def cached_text(encoder, captions: list[str], cache_dir: Path, rank: int, batch: int = 256) -> TextCache:
    """Encode every distinct caption once, plus the empty prompt (stored last)."""
    texts = list(captions) + [""]

    def compute():
        tokens, lengths, pooled = [], [], []
        for start in range(0, len(texts), batch):
            emb = encoder.encode(texts[start : start + batch])
            for row in range(emb.tokens.shape[0]):
                n = int(emb.mask[row].sum())
                tokens.append(emb.tokens[row, :n].half().cpu())
                lengths.append(n)
            pooled.append(emb.pooled.float().cpu())
        offsets = torch.zeros(len(texts) + 1, dtype=torch.long)
        offsets[1:] = torch.tensor(lengths).cumsum(0)
        return {"tokens": torch.cat(tokens), "offsets": offsets, "pooled": torch.cat(pooled)}

    tensors = _load_or_compute(cache_dir / "text.safetensors", _fingerprint(encoder.name, texts), compute, rank)
    return TextCache(tensors["tokens"], tensors["offsets"], tensors["pooled"])
