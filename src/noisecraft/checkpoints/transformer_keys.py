"""Key maps of the flow-matching transformers: SD3 / SD3.5's MMDiT (Stability's ``mmditx.py`` names) and FLUX.1
(Black Forest Labs' names) <-> diffusers' SD3Transformer2DModel / FluxTransformer2DModel. Both directions
are exact: fused q/k/v (and FLUX's fused single-block input) are split and joined again, and the two
modulations diffusers keeps as (scale, shift) are reordered."""

from __future__ import annotations

import torch



# -- SD3 / SD3.5 MMDiT (original ``mmditx.py`` names <-> diffusers' SD3Transformer2DModel) -------------------
_MMDIT_TOP = {"pos_embed": "pos_embed.pos_embed", "x_embedder.proj": "pos_embed.proj",
              "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
              "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
              "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
              "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2",
              "context_embedder": "context_embedder", "final_layer.linear": "proj_out",
              "final_layer.adaLN_modulation.1": "norm_out.linear"}
_MMDIT_BLOCK = {"x_block.attn.proj": "attn.to_out.0", "context_block.attn.proj": "attn.to_add_out",
                "x_block.attn.ln_q": "attn.norm_q", "x_block.attn.ln_k": "attn.norm_k",
                "context_block.attn.ln_q": "attn.norm_added_q", "context_block.attn.ln_k": "attn.norm_added_k",
                "x_block.attn2.proj": "attn2.to_out.0", "x_block.attn2.ln_q": "attn2.norm_q", "x_block.attn2.ln_k": "attn2.norm_k",
                "x_block.adaLN_modulation.1": "norm1.linear", "context_block.adaLN_modulation.1": "norm1_context.linear",
                "x_block.mlp.fc1": "ff.net.0.proj", "x_block.mlp.fc2": "ff.net.2",
                "context_block.mlp.fc1": "ff_context.net.0.proj", "context_block.mlp.fc2": "ff_context.net.2"}
_MMDIT_QKV = {"x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
              "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
              "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v")}


def _halves_swapped(tensor: torch.Tensor) -> torch.Tensor:
    """(shift, scale) <-> (scale, shift): the original's adaLN order and diffusers' AdaLayerNormContinuous's."""
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first])


def _mmdit_swapped(key: str, depth: int) -> bool:
    """The modulations diffusers keeps as (scale, shift): the final layer's and the last block's text stream."""
    return key.startswith("final_layer.adaLN_modulation.1.") or \
        key.startswith(f"joint_blocks.{depth - 1}.context_block.adaLN_modulation.1.")


def mmdit_to_diffusers(state: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """An original-layout MMDiT state dict in diffusers' names (q, k and v split; two modulations reordered)."""
    out = {}
    for key, tensor in state.items():
        value = _halves_swapped(tensor) if _mmdit_swapped(key, depth) else tensor
        stem, _, leaf = key.rpartition(".")
        if key in _MMDIT_TOP or stem in _MMDIT_TOP:
            out[_MMDIT_TOP[key] if key in _MMDIT_TOP else f"{_MMDIT_TOP[stem]}.{leaf}"] = value
            continue
        _, index, rest = key.split(".", 2)
        rest_stem = rest.rpartition(".")[0]
        prefix = f"transformer_blocks.{index}."
        if rest_stem in _MMDIT_QKV:
            for name, part in zip(_MMDIT_QKV[rest_stem], value.chunk(3, dim=0)):
                out[f"{prefix}{name}.{leaf}"] = part
        else:
            out[f"{prefix}{_MMDIT_BLOCK[rest_stem]}.{leaf}"] = value
    return out


def mmdit_from_diffusers(state: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """A diffusers SD3Transformer2DModel state dict in the original layout (the inverse of `mmdit_to_diffusers`)."""
    top = {v: k for k, v in _MMDIT_TOP.items()}
    block = {v: k for k, v in _MMDIT_BLOCK.items()}
    qkv = {name: (stem, k) for stem, names in _MMDIT_QKV.items() for k, name in enumerate(names)}
    out, parts = {}, {}
    for key, tensor in state.items():
        stem, _, leaf = key.rpartition(".")
        if key in top or stem in top:
            out[top[key] if key in top else f"{top[stem]}.{leaf}"] = tensor
            continue
        if not key.startswith("transformer_blocks."):
            raise KeyError(f"unexpected parameter {key}")
        _, index, rest = key.split(".", 2)
        rest_stem = rest.rpartition(".")[0]
        if rest_stem in qkv:
            original, k = qkv[rest_stem]
            parts.setdefault(f"joint_blocks.{index}.{original}.{leaf}", {})[k] = tensor
        elif rest_stem in block:
            out[f"joint_blocks.{index}.{block[rest_stem]}.{leaf}"] = tensor
        else:
            raise KeyError(f"unexpected parameter {key}")
    for key, chunks in parts.items():
        out[key] = torch.cat([chunks[0], chunks[1], chunks[2]])
    return {k: _halves_swapped(v) if _mmdit_swapped(k, depth) else v for k, v in out.items()}


# -- FLUX.1 (Black Forest Labs' names <-> diffusers' FluxTransformer2DModel) ----------------------------------
_FLUX_TOP = {"img_in": "x_embedder", "txt_in": "context_embedder",
             "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
             "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
             "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
             "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
             "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
             "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
             "final_layer.linear": "proj_out", "final_layer.adaLN_modulation.1": "norm_out.linear"}
_FLUX_DOUBLE = {"img_mod.lin": "norm1.linear", "txt_mod.lin": "norm1_context.linear",
                "img_attn.proj": "attn.to_out.0", "txt_attn.proj": "attn.to_add_out",
                "img_attn.norm.query_norm": "attn.norm_q", "img_attn.norm.key_norm": "attn.norm_k",
                "txt_attn.norm.query_norm": "attn.norm_added_q", "txt_attn.norm.key_norm": "attn.norm_added_k",
                "img_mlp.0": "ff.net.0.proj", "img_mlp.2": "ff.net.2", "txt_mlp.0": "ff_context.net.0.proj",
                "txt_mlp.2": "ff_context.net.2"}
_FLUX_DOUBLE_QKV = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
                    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}
_FLUX_SINGLE = {"linear2": "proj_out", "modulation.lin": "norm.linear", "norm.query_norm": "attn.norm_q",
                "norm.key_norm": "attn.norm_k"}
_FLUX_SINGLE_SPLIT = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")  # linear1, in this order


def _flux_leaf(stem: str, leaf: str, original: bool) -> str:
    """The q/k RMS norms' weight is ``scale`` in the original, ``weight`` in diffusers."""
    if not stem.endswith(("query_norm", "key_norm", "norm_q", "norm_k", "norm_added_q", "norm_added_k")):
        return leaf
    return ("scale" if leaf == "weight" else leaf) if original else ("weight" if leaf == "scale" else leaf)


def flux_to_diffusers(state: dict[str, torch.Tensor], hidden: int) -> dict[str, torch.Tensor]:
    """A Black Forest Labs FLUX state dict in diffusers' names (q, k, v and the MLP input split apart)."""
    out = {}
    for key, tensor in state.items():
        stem, _, leaf = key.rpartition(".")
        if stem in _FLUX_TOP:
            out[f"{_FLUX_TOP[stem]}.{leaf}"] = _halves_swapped(tensor) if stem == "final_layer.adaLN_modulation.1" else tensor
            continue
        kind, index, rest = key.split(".", 2)
        rest_stem = rest.rpartition(".")[0]
        if kind == "double_blocks":
            prefix = f"transformer_blocks.{index}."
            if rest_stem in _FLUX_DOUBLE_QKV:
                for name, part in zip(_FLUX_DOUBLE_QKV[rest_stem], tensor.chunk(3, dim=0)):
                    out[f"{prefix}{name}.{leaf}"] = part
            else:
                out[f"{prefix}{_FLUX_DOUBLE[rest_stem]}.{_flux_leaf(rest_stem, leaf, False)}"] = tensor
        else:
            prefix = f"single_transformer_blocks.{index}."
            if rest_stem == "linear1":
                sizes = [hidden, hidden, hidden, tensor.shape[0] - 3 * hidden]
                for name, part in zip(_FLUX_SINGLE_SPLIT, tensor.split(sizes, dim=0)):
                    out[f"{prefix}{name}.{leaf}"] = part
            else:
                out[f"{prefix}{_FLUX_SINGLE[rest_stem]}.{_flux_leaf(rest_stem, leaf, False)}"] = tensor
    return out


def flux_from_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers FluxTransformer2DModel state dict in Black Forest Labs' names (inverse of `flux_to_diffusers`)."""
    top = {v: k for k, v in _FLUX_TOP.items()}
    double = {v: k for k, v in _FLUX_DOUBLE.items()}
    single = {v: k for k, v in _FLUX_SINGLE.items()}
    double_qkv = {name: (stem, k) for stem, names in _FLUX_DOUBLE_QKV.items() for k, name in enumerate(names)}
    out, parts = {}, {}
    for key, tensor in state.items():
        stem, _, leaf = key.rpartition(".")
        if stem in top:
            out[f"{top[stem]}.{leaf}"] = _halves_swapped(tensor) if stem == "norm_out.linear" else tensor
            continue
        kind, index, rest = key.split(".", 2)
        rest_stem = rest.rpartition(".")[0]
        if kind == "transformer_blocks" and rest_stem in double_qkv:
            original, k = double_qkv[rest_stem]
            parts.setdefault(f"double_blocks.{index}.{original}.{leaf}", {})[k] = tensor
        elif kind == "transformer_blocks" and rest_stem in double:
            out[f"double_blocks.{index}.{double[rest_stem]}.{_flux_leaf(rest_stem, leaf, True)}"] = tensor
        elif kind == "single_transformer_blocks" and rest_stem in _FLUX_SINGLE_SPLIT:
            parts.setdefault(f"single_blocks.{index}.linear1.{leaf}", {})[_FLUX_SINGLE_SPLIT.index(rest_stem)] = tensor
        elif kind == "single_transformer_blocks" and rest_stem in single:
            out[f"single_blocks.{index}.{single[rest_stem]}.{_flux_leaf(rest_stem, leaf, True)}"] = tensor
        else:
            raise KeyError(f"unexpected parameter {key}")
    for key, chunks in parts.items():
        out[key] = torch.cat([chunks[k] for k in sorted(chunks)])
    return out


# -- Z-Image (the original single-file names <-> diffusers' ZImageTransformer2DModel) ---------------------------
_ZIMAGE_RENAMES = (("x_embedder.", "all_x_embedder.2-1."), ("final_layer.", "all_final_layer.2-1."),
                   (".attention.out.", ".attention.to_out.0."), (".attention.q_norm.", ".attention.norm_q."),
                   (".attention.k_norm.", ".attention.norm_k."))


def zimage_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Z-Image's original names in diffusers' (the fused q/k/v split in three)."""
    out = {}
    for key, tensor in state.items():
        if key.endswith(".attention.qkv.weight"):
            for name, part in zip(("to_q", "to_k", "to_v"), tensor.chunk(3, dim=0)):
                out[key.replace(".attention.qkv.", f".attention.{name}.")] = part
            continue
        for ours, theirs in _ZIMAGE_RENAMES:
            if key.startswith(ours) or ours.startswith(".") and ours in key:
                key = key.replace(ours, theirs, 1)
        out[key] = tensor
    return out


def zimage_from_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' ZImageTransformer2DModel names in the original ones (inverse of `zimage_to_diffusers`)."""
    out, parts = {}, {}
    for key, tensor in state.items():
        stem, _, name = key.rpartition(".attention.")
        if name in ("to_q.weight", "to_k.weight", "to_v.weight"):
            parts.setdefault(f"{stem}.attention.qkv.weight", {})["qkv".index(name[3])] = tensor
            continue
        for ours, theirs in _ZIMAGE_RENAMES:
            if key.startswith(theirs) or theirs.startswith(".") and theirs in key:
                key = key.replace(theirs, ours, 1)
        out[key] = tensor
    for key, chunks in parts.items():
        out[key] = torch.cat([chunks[k] for k in sorted(chunks)])
    return out
