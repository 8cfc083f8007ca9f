"""T5 v1.1 encoders (Raffel et al. 2020; the XXL one SD3 and FLUX read), run through `transformers`'
T5EncoderModel, with a `tokenizers` tokenizer (T5's SentencePiece unigram vocabulary as ``tokenizer.json``).

    t5 = T5TextEncoder.from_state(weights, tokenizer, max_length=256)   # transformers-layout tensors
    t5.encode(["a red teapot"]).tokens                                    # [B, max_length, d_model]

Single files carry no vocabulary: `bundled_tokenizer` is T5 v1.1's own (Apache-2.0, shipped in ``t5_vocab/``
with its licence and provenance); a diffusers folder's ``tokenizer.json`` is read where there is one.
Prompts are padded (with ``<pad>``) and cut to `max_length` tokens after the closing ``</s>``, and the encoder
runs without an attention mask, as diffusers' SD3 and FLUX pipelines run it (the models were trained so).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelFileError
from .base import TextEmbedding, shipped_tokenizer


def bundled_tokenizer(folder: str | Path | None = None):
    """T5 v1.1's tokenizer (`tokenizers.Tokenizer`): a folder's ``tokenizer.json`` if there is one, else the shipped one."""
    return shipped_tokenizer("t5_vocab", "t5_tokenizer.json.gz", folder)


def t5_config_from_state(state: dict[str, torch.Tensor]):
    """transformers' T5Config of a T5 v1.1 encoder, from its tensor shapes (single files carry no config)."""
    from transformers import T5Config

    try:
        vocab, d_model = state["shared.weight"].shape if "shared.weight" in state else state["encoder.embed_tokens.weight"].shape
        d_ff = state["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0]
        buckets, heads = state["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape
        inner = state["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0]
    except KeyError as missing:
        raise ModelFileError(f"the T5 encoder's weights lack {missing.args[0]} (a T5 v1.1 encoder has gated-GELU "
                             "feed-forwards); the file is incomplete or holds another text encoder") from None
    layers = 1 + max(int(m[1]) for k in state if (m := re.match(r"encoder\.block\.(\d+)\.", k)))
    return T5Config(vocab_size=vocab, d_model=d_model, d_kv=inner // heads, d_ff=d_ff, num_layers=layers, num_heads=heads,
                    relative_attention_num_buckets=buckets, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
                    use_cache=False)


class T5TextEncoder(nn.Module):
    """Prompts -> `TextEmbedding` (tokens [B, max_length, d_model]; no pooled vector: zeros of width 0)."""

    name = "t5"

    def __init__(self, model: nn.Module, tokenizer, max_length: int = 256):
        super().__init__()
        self.model, self.tokenizer, self.max_length = model, tokenizer.from_str(tokenizer.to_str()), max_length
        pad = self.tokenizer.token_to_id("<pad>")
        self.tokenizer.enable_padding(length=max_length, pad_id=0 if pad is None else pad, pad_token="<pad>")
        self.tokenizer.enable_truncation(max_length)
        self.dim = model.config.d_model

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], tokenizer=None, max_length: int = 256, device="cpu",
                   dtype=torch.float32) -> "T5TextEncoder":
        """A T5 encoder from transformers-layout tensors; `tokenizer` None: the bundled T5 v1.1 vocabulary."""
        from transformers import T5EncoderModel

        tokenizer = tokenizer if tokenizer is not None else bundled_tokenizer()
        state = dict(state)
        if "shared.weight" not in state:  # encoder-only files keep the embedding under the encoder's name
            state["shared.weight"] = state["encoder.embed_tokens.weight"]
        state.setdefault("encoder.embed_tokens.weight", state["shared.weight"])
        with torch.device("meta"):
            model = T5EncoderModel(t5_config_from_state(state))
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        if [k for k in missing if "embed_tokens" not in k] or unexpected:
            raise ModelFileError(f"the T5 encoder's weights do not fit a T5 v1.1 encoder "
                                 f"({(missing or unexpected)[0]}); the file is incomplete")
        model.encoder.embed_tokens = model.shared  # tied, as transformers ties them
        return cls(model.to(device=device, dtype=dtype).eval().requires_grad_(False), tokenizer, max_length)

    @property
    def device(self) -> torch.device:
        return self.model.shared.weight.device

    def encode(self, prompts: list[str]) -> TextEmbedding:
        ids = torch.tensor([e.ids for e in self.tokenizer.encode_batch(list(prompts))], device=self.device)
        tokens = self.model(input_ids=ids).last_hidden_state.float()
        return TextEmbedding(tokens, tokens.new_zeros(len(prompts), 0), torch.ones(ids.shape, dtype=torch.bool, device=ids.device))


__all__ = ["T5TextEncoder", "bundled_tokenizer", "t5_config_from_state"]
