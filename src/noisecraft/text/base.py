"""What every text encoder returns, and the embedding table they are built with."""

from __future__ import annotations

import functools
import gzip
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelFileError


@functools.cache
def _shipped_json(subfolder: str, name: str) -> str:
    return gzip.decompress(resources.files(__package__).joinpath(subfolder, name).read_bytes()).decode("utf-8")


def shipped_tokenizer(subfolder: str, name: str, folder: str | Path | None = None):
    """A `tokenizers.Tokenizer`: a model folder's ``tokenizer.json`` when there is one, else the gzipped one
    noisecraft ships in ``text/<subfolder>/<name>`` (T5's, Qwen's: single files carry none)."""
    from tokenizers import Tokenizer

    if folder is not None and (Path(folder) / "tokenizer.json").is_file():
        try:
            return Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
        except Exception as error:  # tokenizers raises its own Exception type for malformed files
            raise ModelFileError(f"{folder}/tokenizer.json is not a tokenizer file ({str(error)[:120]}); copy the folder again") from None
    return Tokenizer.from_str(_shipped_json(subfolder, name))


def embedding(count: int, dim: int) -> nn.Embedding:
    """nn.Embedding(count, dim); under ``torch.device("meta")`` without its random init, whose meta
    path imports torch._dynamo (about 1.5 s of a cold start) for values that are replaced anyway."""
    weight = torch.empty(count, dim)
    return nn.Embedding.from_pretrained(weight, freeze=False) if weight.is_meta else nn.Embedding(count, dim)


@dataclass
class TextEmbedding:
    """An encoder's output for a batch of prompts.

    * ``tokens``  [B, L, D]: per-token states, fed to the UNet's cross-attention;
    * ``pooled``  [B, P]: one vector per prompt, added to the timestep embedding (SDXL's ``y``);
    * ``mask``    [B, L]: True where a token is real, False for padding.
    """

    tokens: torch.Tensor
    pooled: torch.Tensor
    mask: torch.Tensor

    def to(self, device=None, dtype=None) -> "TextEmbedding":
        return TextEmbedding(
            self.tokens.to(device=device, dtype=dtype),
            self.pooled.to(device=device, dtype=dtype),
            self.mask.to(device=device),
        )

    def __getitem__(self, index) -> "TextEmbedding":
        return TextEmbedding(self.tokens[index], self.pooled[index], self.mask[index])

    @staticmethod
    def cat(parts: list["TextEmbedding"]) -> "TextEmbedding":
        """Concatenate along the batch, padding the token axis to the longest."""
        length = max(p.tokens.shape[1] for p in parts)
        return TextEmbedding(
            torch.cat([nn.functional.pad(p.tokens, (0, 0, 0, length - p.tokens.shape[1])) for p in parts]),
            torch.cat([p.pooled for p in parts]),
            torch.cat([nn.functional.pad(p.mask, (0, length - p.mask.shape[1])) for p in parts]),
        )
