"""Parameter names between the original Stable Diffusion layout (ours) and diffusers' layout.

noisecraft's UNet and VAE carry the original CompVis/Stability names, so a single-file
checkpoint loads without renaming. diffusers-format folders (``unet/``, ``vae/``) name the same
tensors differently; this module is the one table of rules between the two, written as a
function from an original name to a diffusers name. Applying it to every parameter of a model
gives the full map in both directions, and a load with ``strict=True`` proves it covers
everything (tests/test_sdfiles.py checks it against diffusers' own LDM converter both ways). The CLIP text
towers' names are here too: OpenCLIP's (SD 2.x, SDXL's second encoder in single files) to
transformers', which noisecraft's CLIP uses (`OPENCLIP_TO_HF`).

UNet, for ``num_res_blocks`` = r (diffusers' ``layers_per_block``)::

    time_embed.{0,2}             time_embedding.linear_{1,2}
    label_emb.0.{0,2}            add_embedding.linear_{1,2}
    input_blocks.0.0             conv_in
    input_blocks.n.0             down_blocks.(n-1)//(r+1).resnets.(n-1)%(r+1)
    input_blocks.n.1             down_blocks.(n-1)//(r+1).attentions.(n-1)%(r+1)
    input_blocks.n.0.op          down_blocks.n//(r+1)-1.downsamplers.0.conv       (n % (r+1) == 0)
    middle_block.{0,1,2}         mid_block.resnets.0, mid_block.attentions.0, mid_block.resnets.1
    output_blocks.n.0            up_blocks.n//(r+1).resnets.n%(r+1)
    output_blocks.n.1            up_blocks.n//(r+1).attentions.n%(r+1)
    output_blocks.n.{1,2}.conv   up_blocks.n//(r+1).upsamplers.0.conv
    out.{0,2}                    conv_norm_out, conv_out
    ResBlock inside:  in_layers.{0,2} norm1, conv1 | emb_layers.1 time_emb_proj |
                      out_layers.{0,3} norm2, conv2 | skip_connection conv_shortcut

VAE, for L levels::

    encoder.down.i.block.j       encoder.down_blocks.i.resnets.j
    encoder.down.i.downsample    encoder.down_blocks.i.downsamplers.0
    decoder.up.i.block.j         decoder.up_blocks.(L-1-i).resnets.j             (reversed order)
    decoder.up.i.upsample        decoder.up_blocks.(L-1-i).upsamplers.0
    *.mid.block_{1,2}, attn_1    *.mid_block.resnets.{0,1}, attentions.0
    *.norm_out                   *.conv_norm_out
    ResnetBlock: nin_shortcut -> conv_shortcut; AttnBlock: norm q k v proj_out -> group_norm to_q
    to_k to_v to_out.0 (1x1 convs in the original, linear layers in diffusers: same numbers)
"""

from __future__ import annotations

import re

import torch

from ..errors import ModelFileError

_RESBLOCK = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
             "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
# diffusers before 0.14 named the VAE attention's layers differently; read those too.
_VAE_ATTN_OLD = {"group_norm": "group_norm", "query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _rename_head(rest: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def unet_ldm_to_diffusers(key: str, num_res_blocks: int) -> str:
    """The diffusers name of one original-layout UNet parameter."""
    r1 = num_res_blocks + 1
    fixed = {"time_embed.0.": "time_embedding.linear_1.", "time_embed.2.": "time_embedding.linear_2.",
             "label_emb.0.0.": "add_embedding.linear_1.", "label_emb.0.2.": "add_embedding.linear_2.",
             "input_blocks.0.0.": "conv_in.", "out.0.": "conv_norm_out.", "out.2.": "conv_out."}
    for old, new in fixed.items():
        if key.startswith(old):
            return new + key[len(old):]
    if m := re.fullmatch(r"input_blocks\.(\d+)\.0\.op\.(.+)", key):
        return f"down_blocks.{int(m[1]) // r1 - 1}.downsamplers.0.conv.{m[2]}"
    if m := re.fullmatch(r"input_blocks\.(\d+)\.([01])\.(.+)", key):
        n = int(m[1]) - 1
        if m[2] == "0":
            return f"down_blocks.{n // r1}.resnets.{n % r1}.{_rename_head(m[3], _RESBLOCK)}"
        return f"down_blocks.{n // r1}.attentions.{n % r1}.{m[3]}"
    if m := re.fullmatch(r"middle_block\.([012])\.(.+)", key):
        if m[1] == "1":
            return f"mid_block.attentions.0.{m[2]}"
        return f"mid_block.resnets.{int(m[1]) // 2}.{_rename_head(m[2], _RESBLOCK)}"
    if m := re.fullmatch(r"output_blocks\.(\d+)\.([012])\.(.+)", key):
        n = int(m[1])
        if m[2] == "0":
            return f"up_blocks.{n // r1}.resnets.{n % r1}.{_rename_head(m[3], _RESBLOCK)}"
        if m[3].startswith("conv."):  # Upsample: .1 when the level has no attention, else .2
            return f"up_blocks.{n // r1}.upsamplers.0.{m[3]}"
        return f"up_blocks.{n // r1}.attentions.{n % r1}.{m[3]}"
    raise KeyError(f"no diffusers name for UNet parameter {key}")


def vae_ldm_to_diffusers(key: str, levels: int) -> str:
    """The diffusers name of one original-layout VAE parameter."""
    if m := re.fullmatch(r"(encoder|decoder)\.mid\.(block_1|block_2|attn_1)\.(.+)", key):
        if m[2] == "attn_1":
            return f"{m[1]}.mid_block.attentions.0.{_rename_head(m[3], _VAE_ATTN)}"
        return f"{m[1]}.mid_block.resnets.{int(m[2][-1]) - 1}.{_rename_head(m[3], {'nin_shortcut': 'conv_shortcut'})}"
    if m := re.fullmatch(r"encoder\.down\.(\d+)\.(block|attn)\.(\d+)\.(.+)", key):
        if m[2] == "attn":
            return f"encoder.down_blocks.{m[1]}.attentions.{m[3]}.{_rename_head(m[4], _VAE_ATTN)}"
        return f"encoder.down_blocks.{m[1]}.resnets.{m[3]}.{_rename_head(m[4], {'nin_shortcut': 'conv_shortcut'})}"
    if m := re.fullmatch(r"encoder\.down\.(\d+)\.downsample\.(.+)", key):
        return f"encoder.down_blocks.{m[1]}.downsamplers.0.{m[2]}"
    if m := re.fullmatch(r"decoder\.up\.(\d+)\.(block|attn)\.(\d+)\.(.+)", key):
        i = levels - 1 - int(m[1])
        if m[2] == "attn":
            return f"decoder.up_blocks.{i}.attentions.{m[3]}.{_rename_head(m[4], _VAE_ATTN)}"
        return f"decoder.up_blocks.{i}.resnets.{m[3]}.{_rename_head(m[4], {'nin_shortcut': 'conv_shortcut'})}"
    if m := re.fullmatch(r"decoder\.up\.(\d+)\.upsample\.(.+)", key):
        return f"decoder.up_blocks.{levels - 1 - int(m[1])}.upsamplers.0.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.norm_out\.(.+)", key):
        return f"{m[1]}.conv_norm_out.{m[2]}"
    return key  # conv_in, conv_out, quant_conv, post_quant_conv keep their names


def diffusers_unet_shape(state: dict[str, torch.Tensor]) -> int:
    """``num_res_blocks`` of a diffusers-layout UNet state dict, read from its keys."""
    ids = {int(m[1]) for k in state if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", k))}
    if not ids:
        raise KeyError("no down_blocks.0.resnets.* keys: not a diffusers UNet")
    return max(ids) + 1


def diffusers_vae_levels(state: dict[str, torch.Tensor]) -> int:
    """The number of levels of a diffusers-layout VAE state dict, read from its keys."""
    ids = {int(m[1]) for k in state if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k))}
    if not ids:
        raise KeyError("no encoder.down_blocks.* keys: not a diffusers VAE")
    return max(ids) + 1


def _fit(tensor: torch.Tensor, like_ndim: int) -> torch.Tensor:
    """1x1 conv weights <-> linear weights: the same numbers, a different rank."""
    if tensor.ndim == 4 and like_ndim == 2:
        return tensor[:, :, 0, 0]
    if tensor.ndim == 2 and like_ndim == 4:
        return tensor[:, :, None, None]
    return tensor


def rename(state: dict[str, torch.Tensor], names: dict[str, str], shapes: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
    """Rename every key through ``names`` (old -> new); keys it lacks raise KeyError naming them.

    ``shapes`` (new name -> ndim) reshapes 1x1 convolutions to linear layers and back.
    """
    missing = [k for k in state if k not in names]
    if missing:
        raise KeyError(f"{len(missing)} unexpected parameter(s), first: {missing[0]}")
    out = {}
    for key, tensor in state.items():
        new = names[key]
        out[new] = _fit(tensor, shapes[new]) if shapes and new in shapes else tensor
    return out


def unet_names(ldm_keys, num_res_blocks: int) -> dict[str, str]:
    """original -> diffusers, for the given original parameter names."""
    return {k: unet_ldm_to_diffusers(k, num_res_blocks) for k in ldm_keys}


def vae_names(ldm_keys, levels: int) -> dict[str, str]:
    """original -> diffusers, for the given original parameter names."""
    return {k: vae_ldm_to_diffusers(k, levels) for k in ldm_keys}


def unet_from_diffusers(state: dict[str, torch.Tensor], ldm_keys) -> dict[str, torch.Tensor]:
    """A diffusers-layout UNet state dict renamed to the original layout of a model with ``ldm_keys``."""
    inverse = {v: k for k, v in unet_names(ldm_keys, diffusers_unet_shape(state)).items()}
    return rename(state, inverse)


def vae_from_diffusers(state: dict[str, torch.Tensor], ldm_shapes: dict[str, int]) -> dict[str, torch.Tensor]:
    """A diffusers-layout VAE state dict renamed (and 1x1-reshaped) to the original layout.

    ``ldm_shapes`` maps each original parameter name to its number of dimensions. diffusers'
    pre-0.14 attention names (query/key/value/proj_attn) are accepted.
    """
    state = {old_vae_attention(k): v for k, v in state.items()}
    inverse = {v: k for k, v in vae_names(ldm_shapes, diffusers_vae_levels(state)).items()}
    return rename(state, inverse, ldm_shapes)


def old_vae_attention(key: str) -> str:
    m = re.fullmatch(r"(.+\.attentions\.\d+)\.(.+)", key)
    return f"{m[1]}.{_rename_head(m[2], _VAE_ATTN_OLD)}" if m else key


def unet_to_diffusers(state: dict[str, torch.Tensor], num_res_blocks: int) -> dict[str, torch.Tensor]:
    """An original-layout UNet state dict in diffusers' names (for writing diffusers folders)."""
    return rename(state, unet_names(state, num_res_blocks))


# -- CLIP text towers ----------------------------------------------------------------------------
OPENCLIP_TO_HF = [  # (OpenCLIP name pattern, transformers name with its groups)
    (r"token_embedding\.weight", "text_model.embeddings.token_embedding.weight"),
    (r"positional_embedding", "text_model.embeddings.position_embedding.weight"),
    (r"ln_final\.(weight|bias)", r"text_model.final_layer_norm.\1"),
    (r"transformer\.resblocks\.(\d+)\.ln_1\.(weight|bias)", r"text_model.encoder.layers.\1.layer_norm1.\2"),
    (r"transformer\.resblocks\.(\d+)\.ln_2\.(weight|bias)", r"text_model.encoder.layers.\1.layer_norm2.\2"),
    (r"transformer\.resblocks\.(\d+)\.attn\.out_proj\.(weight|bias)", r"text_model.encoder.layers.\1.self_attn.out_proj.\2"),
    (r"transformer\.resblocks\.(\d+)\.mlp\.c_fc\.(weight|bias)", r"text_model.encoder.layers.\1.mlp.fc1.\2"),
    (r"transformer\.resblocks\.(\d+)\.mlp\.c_proj\.(weight|bias)", r"text_model.encoder.layers.\1.mlp.fc2.\2"),
    # in_proj holds q, k, v stacked on dim 0; OpenCLIP applies text_projection as x @ P
    (r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)", r"text_model.encoder.layers.\1.self_attn.{q,k,v}_proj.\2"),
    (r"text_projection", "text_projection.weight"),
]
OPENCLIP_IGNORED = ("logit_scale", "attn_mask", "visual.")  # not used by the text tower


def openclip_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an OpenCLIP text tower's tensors (prefix already removed) to transformers' layout."""
    out = {}
    for key, value in state.items():
        if key.startswith(OPENCLIP_IGNORED):
            continue
        for pattern, target in OPENCLIP_TO_HF:
            if re.fullmatch(pattern, key):
                name = re.sub(f"^{pattern}$", target, key)
                if "{q,k,v}" in name:
                    for part, chunk in zip("qkv", value.chunk(3, dim=0)):
                        out[name.replace("{q,k,v}", part)] = chunk
                else:
                    out[name] = value.T.contiguous() if key == "text_projection" else value
                break
        else:
            raise ModelFileError(f"unexpected OpenCLIP text-encoder tensor {key!r}; the checkpoint is not a Stable Diffusion one")
    return out


def hf_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' names with the ``text_model.`` level (old transformers and transformers 5 save without it)."""
    return {(k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v
            for k, v in state.items() if not k.endswith("position_ids")}


def clip_text_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """One text tower's tensors under `prefix`, in transformers' layout, whichever layout the file uses."""
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return openclip_to_hf(sub) if "token_embedding.weight" in sub else hf_layout(sub)

