"""Textual-inversion embedding files (Gal et al. 2022): the vectors a new word stands for.

Read formats: A1111 ``.safetensors`` (``emb_params``) and ``.pt`` (``string_to_param``, read as
weights only), SDXL's ``clip_l`` / ``clip_g`` pairs (A1111, kohya) and diffusers'
``learned_embeds`` (one token -> its vectors).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ModelFileError
from .io import load_weights


def read_embedding(path: str | Path, parts: list[str]) -> tuple[str | None, dict[str, torch.Tensor]]:
    """(the file's own token or None, text-encoder part name -> vectors [n, width]) of an embedding file."""
    path = Path(path)
    data = load_weights(path)[0]
    if not isinstance(data, dict):
        raise ModelFileError(f"{path} is not a textual-inversion embedding")

    def tensor(value, what):
        if not isinstance(value, torch.Tensor):
            raise ModelFileError(f"{path.name}: {what} is not a tensor; the file is not a textual-inversion embedding")
        return value.reshape(-1, value.shape[-1]) if value.ndim else value  # [D] and [1, n, D] -> [n, D]

    if "clip_l" in data or "clip_g" in data:  # SDXL (A1111, kohya)
        if parts != ["text_encoder", "text_encoder_2"] or not ("clip_l" in data and "clip_g" in data):
            raise ModelFileError(f"embedding {path.name} is for SDXL (clip_l/clip_g vectors); this model is not SDXL")
        return None, {"text_encoder": tensor(data["clip_l"], "clip_l"), "text_encoder_2": tensor(data["clip_g"], "clip_g")}
    own, single = None, None
    if "emb_params" in data:  # A1111 .safetensors
        single = tensor(data["emb_params"], "emb_params")
    elif "string_to_param" in data:  # A1111 / original textual_inversion .pt
        params = data["string_to_param"]
        if not isinstance(params, dict) or len(params) != 1:
            raise ModelFileError(f"{path.name}: string_to_param should hold one tensor")
        single = tensor(next(iter(params.values())), "string_to_param")
    else:  # diffusers learned_embeds: {token: vectors}
        found = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
        if len(found) != 1:
            raise ModelFileError(f"{path.name} is not a textual-inversion embedding (expected emb_params, string_to_param, "
                                 "clip_l/clip_g or one token)")
        own, value = next(iter(found.items()))
        single = tensor(value, own)
    if len(parts) != 1:
        raise ModelFileError(f"embedding {path.name} has one set of vectors; an SDXL embedding needs clip_l and clip_g")
    return own, {parts[0]: single}


def load_textual_inversion(encoder, path: str | Path, token: str | None = None) -> str:
    """Load an embedding file into a Stable Diffusion text encoder (`text.clip.SDTextEncoder`); returns its token.

    The token (default: the file's own token, else its name without extension) is the text that
    calls it in prompts; its vectors replace that text's tokens.
    """
    path = Path(path)
    own, vectors = read_embedding(path, [part.name for part in encoder.parts])
    return encoder.add_embedding(token or own or path.stem, vectors, path.name)
