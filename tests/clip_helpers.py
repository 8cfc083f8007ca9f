"""Tiny random CLIP text encoders in transformers' classes, and the files real checkpoints hold them in.

The references are transformers' CLIPTextModel / CLIPTextModelWithProjection with CLIP's real
49,408-token vocabulary (so tokenization is exercised for real) and small widths that keep the
structure: 64-wide heads (what single files imply), 3 layers, pre-LayerNorm, causal attention.
`hf_to_openclip` is written here, independently of noisecraft's converter, so that a mistake in
one is not mirrored in the other.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
from transformers import CLIPTokenizer as HFCLIPTokenizer

from noisecraft.text.clip_tokenizer import bundled_vocab

# stand-ins for CLIP ViT-L/14 (SD1, SDXL's first), OpenCLIP ViT-H/14 (SD2), ViT-bigG/14 (SDXL's second)
CLIP_L = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=2, hidden_act="quick_gelu")
VIT_H = dict(hidden_size=192, intermediate_size=384, num_hidden_layers=3, num_attention_heads=3, hidden_act="gelu")
BIG_G = dict(hidden_size=192, intermediate_size=320, num_hidden_layers=3, num_attention_heads=3, hidden_act="gelu",
             projection_dim=160)


def hf_text_model(spec: dict, seed: int, projection: bool = False, layers: int | None = None):
    """A random transformers CLIP text model; weights scaled up from the tiny init so every layer matters."""
    config = CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, **{**spec, **({"num_hidden_layers": layers} if layers else {})})
    with torch.random.fork_rng():  # transformers' init draws from the global generator; leave it as it was
        torch.manual_seed(seed)
        model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for name, p in model.named_parameters():
            if "norm" in name:  # LayerNorm: weight ~1, bias ~0, but not exactly
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if "embedding" in name else p.shape[-1] ** -0.5))
    return model


def hf_state(model) -> dict:
    """A transformers text model's tensors named as checkpoints name them: ``text_model.*`` (+ ``text_projection.weight``).

    transformers 5 drops the ``text_model.`` level from CLIPTextModel's own names; checkpoints and
    transformers 4 have it.
    """
    return {k if k.startswith(("text_model.", "text_projection")) else "text_model." + k: v
            for k, v in model.state_dict().items() if not k.endswith("position_ids")}


def truncated(model, layers: int):
    """The same model with only its first `layers` layers (what diffusers' SD2 text_encoder is of OpenCLIP-H)."""
    short = type(model)(CLIPTextConfig(**{**model.config.to_dict(), "num_hidden_layers": layers})).eval()
    keep = {f".layers.{i}." for i in range(layers)}
    state = {k: v for k, v in model.state_dict().items() if ".layers." not in k or any(m in k for m in keep)}
    short.load_state_dict(state)
    return short


def hf_tokenizer(pad: str = "<|endoftext|>"):
    """transformers' CLIPTokenizer on CLIP's vocabulary, as diffusers loads it (pad '!' for OpenCLIP encoders)."""
    vocab, merges = bundled_vocab()
    return HFCLIPTokenizer(vocab=dict(vocab), merges=list(merges), pad_token=pad, model_max_length=77)


def hf_to_openclip(state: dict) -> dict:
    """transformers text-model tensors (`hf_state`) -> OpenCLIP's text-tower names (what SD2/SDXL single files hold)."""
    layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("text_model.encoder.layers."))
    out = {
        "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": state["text_model.final_layer_norm.weight"],
        "ln_final.bias": state["text_model.final_layer_norm.bias"],
        "logit_scale": torch.tensor(4.6052),
    }
    for i in range(layers):
        h, o = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[o + f"attn.in_proj_{kind}"] = torch.cat([state[h + f"self_attn.{x}_proj.{kind}"] for x in "qkv"])
            out[o + f"attn.out_proj.{kind}"] = state[h + f"self_attn.out_proj.{kind}"]
            out[o + f"ln_1.{kind}"] = state[h + f"layer_norm1.{kind}"]
            out[o + f"ln_2.{kind}"] = state[h + f"layer_norm2.{kind}"]
            out[o + f"mlp.c_fc.{kind}"] = state[h + f"mlp.fc1.{kind}"]
            out[o + f"mlp.c_proj.{kind}"] = state[h + f"mlp.fc2.{kind}"]
    if "text_projection.weight" in state:
        out["text_projection"] = state["text_projection.weight"].T.contiguous()
    return out


def prefixed(prefix: str, state: dict) -> dict:
    return {prefix + k: v for k, v in state.items()}


def unet_stub() -> dict:
    """A few non-text tensors, so loaders are shown to pick their own keys out of a whole checkpoint."""
    return {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
            "first_stage_model.decoder.conv_out.weight": torch.zeros(3, 4, 3, 3)}


def write_tokenizer_folder(folder: Path, pad: str) -> Path:
    """A tokenizer folder as diffusers' Stable Diffusion repositories have it (vocab.json, merges.txt, ...)."""
    vocab, merges = bundled_vocab()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": pad}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    (folder / "tokenizer_config.json").write_text(json.dumps({**special, "model_max_length": 77,
                                                              "tokenizer_class": "CLIPTokenizer"}))
    return folder


def write_text_encoder_folder(folder: Path, model) -> Path:
    """save_pretrained, as a diffusers folder's text_encoder/ holds it."""
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def save_safetensors(path: Path, state: dict) -> Path:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def reference_clip_bpe(text: str) -> list[int]:
    """OpenAI CLIP's tokenizer algorithm written out in plain Python, as an independent reference.

    Clean (NFC, whitespace runs to one space, strip, lowercase; the original also runs ftfy and
    html.unescape, which noisecraft and transformers do not), split with CLIP's word pattern,
    byte-encode each word, then merge the lowest-ranked adjacent pair until none is in the merge list.
    """
    import unicodedata

    import regex

    vocab, merges = bundled_vocab()
    ranks = {pair: i for i, pair in enumerate(merges)}
    printable = {*range(33, 127), *range(161, 173), *range(174, 256)}
    symbol, extra = {}, 0
    for b in range(256):
        symbol[b] = chr(b) if b in printable else chr(256 + extra)
        extra += b not in printable
    text = regex.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip().lower()
    ids = []
    for word in regex.findall(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", text, regex.IGNORECASE):
        parts = [symbol[b] for b in word.encode("utf-8")]
        parts[-1] += "</w>"
        while len(parts) > 1:
            pair = min(zip(parts, parts[1:]), key=lambda p: ranks.get(p, float("inf")))
            if pair not in ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        ids += [vocab[p] for p in parts]
    return ids
