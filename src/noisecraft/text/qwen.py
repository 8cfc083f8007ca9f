"""Qwen3 as a text encoder (Qwen team 2025; the 4B model Z-Image reads prompts with), run through `transformers`'
Qwen3Model, with a `tokenizers` tokenizer (Qwen's byte-level BPE, shipped in ``qwen_vocab/`` with its licence).

    qwen = QwenTextEncoder.from_state(weights)       # transformers-layout tensors (``model.`` prefix or not)
    qwen.encode(["a red teapot"])                    # tokens [B, L, width], mask [B, L]: the real tokens

Each prompt is wrapped as a chat turn, as Z-Image was trained (Qwen3's template with ``add_generation_prompt`` and
thinking enabled: ``<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n``), cut to `max_length`
tokens, padded on the right and read from the second-to-last layer; the mask marks the tokens that are not padding.
The last layer and the final norm are never read, so they are dropped on load (as SD2 drops its CLIP's last layer).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelFileError
from .base import TextEmbedding, shipped_tokenizer

PAD = "<|endoftext|>"
TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


def bundled_tokenizer(folder: str | Path | None = None):
    """Qwen's tokenizer (`tokenizers.Tokenizer`): a folder's ``tokenizer.json`` if there is one, else the shipped one."""
    return shipped_tokenizer("qwen_vocab", "qwen2_tokenizer.json.gz", folder)


def qwen_config_from_state(state: dict[str, torch.Tensor]):
    """transformers' Qwen3Config from a Qwen3 model's tensor shapes (RoPE base and norm epsilon: Qwen3's own)."""
    from transformers import Qwen3Config

    try:
        vocab, width = state["embed_tokens.weight"].shape
        head = state["layers.0.self_attn.q_norm.weight"].shape[0]
        heads = state["layers.0.self_attn.q_proj.weight"].shape[0] // head
        kv_heads = state["layers.0.self_attn.k_proj.weight"].shape[0] // head
        inner = state["layers.0.mlp.gate_proj.weight"].shape[0]
    except KeyError as missing:
        raise ModelFileError(f"the Qwen3 text encoder's weights lack {missing.args[0]}; the file is incomplete "
                             "or holds another text encoder") from None
    layers = 1 + max(int(m[1]) for k in state if (m := re.match(r"layers\.(\d+)\.", k)))
    return Qwen3Config(vocab_size=vocab, hidden_size=width, intermediate_size=inner, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head, rope_theta=1_000_000.0,
                       rms_norm_eps=1e-6, max_position_embeddings=40960, tie_word_embeddings=True, use_cache=False)


class QwenTextEncoder(nn.Module):
    """Prompts -> `TextEmbedding` (tokens of the second-to-last layer, no pooled vector, the padding mask)."""

    name = "qwen3"

    def __init__(self, model: nn.Module, tokenizer, max_length: int = 512):
        super().__init__()
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length
        self.pad_id = tokenizer.token_to_id(PAD) or 0
        self.dim = model.config.hidden_size

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], tokenizer=None, max_length: int = 512, device="cpu",
                   dtype=torch.float32) -> "QwenTextEncoder":
        from transformers import Qwen3Model

        state = {k.removeprefix("model."): v for k, v in state.items() if k != "lm_head.weight"}
        config = qwen_config_from_state(state)
        config.num_hidden_layers -= 1  # Z-Image reads the second-to-last layer's states: the last one is never run
        if getattr(config, "layer_types", None):
            config.layer_types = config.layer_types[: config.num_hidden_layers]
        last = f"layers.{config.num_hidden_layers}."
        state = {k: v for k, v in state.items() if not k.startswith(last) and k != "norm.weight"}
        with torch.device("meta"):
            model = Qwen3Model(config)
        model.norm = nn.Identity()  # the states before the final norm
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        if missing or unexpected:
            raise ModelFileError(f"the Qwen3 text encoder's weights do not fit a Qwen3 model ({(missing or unexpected)[0]}); "
                                 "the file is incomplete")
        model.rotary_emb = type(model.rotary_emb)(config=model.config)  # its frequencies are computed, not stored
        model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        return cls(model, tokenizer if tokenizer is not None else bundled_tokenizer(), max_length)

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    def encode(self, prompts: list[str]) -> TextEmbedding:
        rows = [e.ids[: self.max_length] for e in self.tokenizer.encode_batch([TEMPLATE.format(p) for p in prompts])]
        length = max(len(r) for r in rows)
        ids = torch.tensor([r + [self.pad_id] * (length - len(r)) for r in rows], device=self.device)
        mask = torch.arange(length, device=self.device)[None] < torch.tensor([len(r) for r in rows], device=self.device)[:, None]
        states = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state.float()
        return TextEmbedding(states, states.new_zeros(len(prompts), 0), mask)


__all__ = ["QwenTextEncoder", "bundled_tokenizer", "qwen_config_from_state"]
