"""SD3 / SD3.5, FLUX.1 and Z-Image files as people have them, read into an `SDCheckpoint` like the UNet families'.

    Stability's single files   model.diffusion_model.joint_blocks.* + first_stage_model.* (+ text_encoders.*)
    Black Forest Labs' files   bare double_blocks.* / single_blocks.* (the transformer alone; ae.safetensors apart)
    ComfyUI's all-in-one       model.diffusion_model.* + first_stage_model.* + text_encoders.{clip_l,clip_g,t5xxl}.transformer.*
    diffusers folders          transformer/ vae/ text_encoder[_2,_3]/ tokenizer[_2,_3]/ scheduler/ (shards by index)

Transformer files in diffusers' names load too (`transformer_keys` renames them). The family is read from the
weights: joint blocks are SD3's MMDiT, double blocks FLUX's, refiner blocks Z-Image's. Text encoders given apart
(``--text-encoders``: ComfyUI's clip_l / clip_g / t5xxl / qwen_3_4b files) are told apart by their tensors: T5 by its
blocks, Qwen3 by its q-norm, the CLIPs by width (the narrower is CLIP-L), and take the single-file names, so one
path reads them all.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ModelFileError, UserError
from ..models.flux import FluxConfig
from ..models.zimage import ZImageConfig
from .config import ModelConfig
from .io import check_finite, read_tensors, split_prefix
from .sd import SDCheckpoint, folder_weights, read_json, vae_from_diffusers_layout
from .sd_config import FAMILY_DEFAULTS, declared_size, vae_config_of
from .transformer_config import flux_config_of, mmdit_config_of, zimage_config_of
from .transformer_keys import flux_from_diffusers, mmdit_from_diffusers, zimage_from_diffusers

PREFIX, VAE_PREFIX = "model.diffusion_model.", "first_stage_model."
CLIP_L, CLIP_G, T5 = "text_encoders.clip_l.transformer.", "text_encoders.clip_g.transformer.", "text_encoders.t5xxl.transformer."
QWEN = "text_encoders.qwen3_4b.transformer."  # Z-Image's Qwen3-4B
T5_LENGTH = {"sd3": 256, "flux": 512}  # tokens, as diffusers' pipelines read prompts by default
TEXT_FOLDERS = {("sd3", T5): "text_encoder_3", ("flux", T5): "text_encoder_2", ("zimage", QWEN): "text_encoder"}


def transformer_family(keys) -> str | None:
    """"sd3", "flux" or "zimage" when `keys` (a file's tensor names) hold a flow transformer, bare or under
    model.diffusion_model., in the original names or diffusers'; None for anything else."""
    names = [k.removeprefix(PREFIX) for k in keys]
    if any(n.startswith(("noise_refiner.", "context_refiner.")) for n in names):
        return "zimage"
    if any(n.startswith(("double_blocks.", "single_transformer_blocks.")) for n in names):
        return "flux"
    if any(n.startswith(("joint_blocks.", "transformer_blocks.")) for n in names):
        return "sd3"
    return None


def original_layout(state: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """A transformer's tensors in the original names, whichever names the file uses."""
    if family == "sd3" and "pos_embed.proj.weight" in state:
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("transformer_blocks."))
        return mmdit_from_diffusers(state, depth)
    if family == "flux" and "x_embedder.weight" in state:
        return flux_from_diffusers(state)
    if family == "zimage":
        state = {k: v for k, v in state.items() if not k.endswith("norm_final.weight")}  # a weight some files carry unused
        return zimage_from_diffusers(state) if "all_x_embedder.2-1.weight" in state else state
    return state


def flow_config(family: str, net: dict[str, torch.Tensor], vae: dict | None, name: str, *, t5: bool,
                metadata: dict | None = None, scheduler: dict | None = None, vae_json: dict | None = None) -> ModelConfig:
    """The ModelConfig of a flow model: the transformer's config from its weights, the sampling defaults of its kind."""
    try:
        transformer = {"sd3": mmdit_config_of, "flux": flux_config_of, "zimage": zimage_config_of}[family](net)
    except (IndexError, ValueError) as error:
        raise ModelFileError(f"the {family.upper()} transformer's weights are not a complete model ({error})") from None
    vae_config = vae_config_of(vae, family, vae_json) if vae else None
    scheduler = scheduler or {}
    if isinstance(transformer, FluxConfig):
        dynamic = bool(scheduler.get("use_dynamic_shifting", transformer.guidance_embed))
        defaults = {"steps": 28, "guidance_scale": 3.5} if transformer.guidance_embed else {"steps": 4, "guidance_scale": 0.0}
        shift, text = float(scheduler.get("shift", 1.0)) if not dynamic else 1.0, "clip-flux"
    elif isinstance(transformer, ZImageConfig):  # Turbo: 9 steps without guidance, as its card shows
        dynamic, shift, text = False, float(scheduler.get("shift", 3.0)), "qwen3"
        defaults = {"steps": 9, "guidance_scale": 1.0}
    else:
        dynamic, shift, text = False, float(scheduler.get("shift", 3.0)), "clip-sd3"
        defaults = ({"steps": 40, "guidance_scale": 4.5} if transformer.dual_attention_layers else
                    {"steps": 28, "guidance_scale": 3.5} if transformer.qk_norm else {"steps": 28, "guidance_scale": 7.0})
    size = declared_size(metadata) or FAMILY_DEFAULTS[family]["image_size"]
    return ModelConfig(kind="latent", unet=None, vae=vae_config, text_encoder=text + ("+t5" if t5 else ""), prediction="flow",
                       image_size=size, name=name, defaults=defaults | {"sampler": "euler"}, transformer=transformer,
                       flow_shift=shift, flow_dynamic=dynamic)


def text_files(paths) -> dict[str, torch.Tensor]:
    """Standalone text encoder files (ComfyUI's clip_l, clip_g, t5xxl), under the single-file names."""
    clips, out = [], {}
    for path in paths:
        path = Path(path).expanduser()
        if not path.is_file():
            raise UserError(f"no text encoder file at {path}")
        state, _ = read_tensors(path)
        check_finite(state, path)
        if any(".SelfAttention." in k for k in state):
            out |= {T5 + k: v for k, v in state.items()}
            continue
        if any(k.endswith("self_attn.q_norm.weight") for k in state):
            out |= {QWEN + k: v for k, v in state.items()}
            continue
        width = next((v.shape[1] for k, v in state.items() if k.endswith("token_embedding.weight")), None)
        if width is None:
            raise ModelFileError(f"{path} is neither a CLIP, a T5 nor a Qwen3 text encoder (no token embedding, no T5 blocks)")
        clips.append((width, {k.removeprefix("transformer."): v for k, v in state.items()}))
    clips.sort(key=lambda c: c[0])
    if len(clips) > 2:
        raise UserError(f"{len(clips)} CLIP text encoders were given; SD3 reads two (CLIP-L, CLIP-G) and FLUX one (CLIP-L)")
    for prefix, (_, state) in zip((CLIP_L, CLIP_G), clips):
        out |= {prefix + k: v for k, v in state.items()}
    return out


def load_flow_single_file(file: Path, name: str, state: dict[str, torch.Tensor], metadata: dict, family: str,
                          extra_text: dict[str, torch.Tensor]) -> SDCheckpoint:
    """An SD3 / FLUX single file (Stability's, BFL's or ComfyUI's), its text encoders joined by `extra_text`."""
    net = split_prefix(state, PREFIX) if any(k.startswith(PREFIX) for k in state) else \
        {k: v for k, v in state.items() if not k.startswith((VAE_PREFIX, "text_encoders."))}
    net = original_layout(net, family)
    vae = split_prefix(state, VAE_PREFIX) or None
    check_finite(net, file)
    if vae:
        check_finite(vae, file)
    text = {k: v for k, v in state.items() if k.startswith("text_encoders.")} | extra_text
    config = flow_config(family, net, vae, name, t5=any(k.startswith(T5) for k in text), metadata=metadata)
    return SDCheckpoint(config, {"transformer": net, **({"vae": vae} if vae else {})}, file, family, text_state=text)


def load_flow_folder(folder: Path, name: str, meta: bool = False) -> SDCheckpoint:
    """A diffusers SD3 / FLUX / Z-Image folder (``transformer/`` sharded or whole; `meta`: shapes only, for `describe`)."""
    state, file = folder_weights(folder / "transformer", meta=meta)
    family = transformer_family(state)
    if family is None:
        raise ModelFileError(f"{folder}/transformer holds no SD3, FLUX or Z-Image transformer")
    net = original_layout(state, family)
    check_finite(net, file)
    vae_state, vae_file = folder_weights(folder / "vae", meta=meta)
    check_finite(vae_state, vae_file)
    vae = vae_from_diffusers_layout(vae_state)
    t5 = (family, T5) in TEXT_FOLDERS and (folder / TEXT_FOLDERS[family, T5]).is_dir()
    first = QWEN if family == "zimage" else CLIP_L
    text = {first: (folder / "text_encoder").is_dir(), CLIP_G: family == "sd3" and (folder / "text_encoder_2").is_dir(), T5: t5}
    config = flow_config(family, net, vae, name, t5=t5, scheduler=read_json(folder / "scheduler" / "scheduler_config.json"),
                         vae_json=read_json(folder / "vae" / "config.json"))
    return SDCheckpoint(config, {"transformer": net, "vae": vae}, file, family, folder=folder,
                        text_state={k: torch.empty(0, device="meta") for k, there in text.items() if there})


def describe_flow(ckpt: SDCheckpoint) -> dict[str, str]:
    """`noisecraft info`'s lines for an SD3 / FLUX / Z-Image checkpoint: family, transformer size and precision, text encoders."""
    c, net = ckpt.config.transformer, ckpt.parts["transformer"]
    count = sum(t.numel() for t in net.values())
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in net.values() if t.ndim >= 2})
    if isinstance(c, ZImageConfig):
        family, shape = "Z-Image", f"{c.refiner_depth} + {c.refiner_depth} refiner and {c.depth} single-stream blocks, width {c.hidden}"
        sampling = f"flow matching, shift {ckpt.config.flow_shift:g}"
    elif isinstance(c, FluxConfig):
        family = f"FLUX.1 {'dev (guidance distilled)' if c.guidance_embed else 'schnell (timestep distilled)'}"
        shape = f"{c.depth} double + {c.depth_single} single blocks, width {c.hidden}"
        sampling = "flow matching, resolution shift (mu 0.5 at 256 tokens .. 1.15 at 4096)" if ckpt.config.flow_dynamic else "flow matching, no shift"
    else:
        family = ("Stable Diffusion 3.5 Medium (MMDiT-X)" if c.dual_attention_layers else
                  "Stable Diffusion 3.5 Large" if c.qk_norm else "Stable Diffusion 3")
        shape, sampling = f"{c.depth} joint blocks, width {c.hidden}", f"flow matching, shift {ckpt.config.flow_shift:g}"
    prefixes = {CLIP_L: "CLIP-L", CLIP_G: "CLIP-G", T5: "T5-XXL", QWEN: "Qwen3"}
    text = [name for prefix, name in prefixes.items() if any(k.startswith(prefix) for k in ckpt.text_state)]
    size = f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.2f}M"
    return {"family": family, "transformer": f"{size} parameters ({', '.join(dtypes)}), {shape}", "prediction": sampling,
            "text": " + ".join(text) if text else "none in the file (give them with --text-encoders)"}


def text_state_of(ckpt: SDCheckpoint, prefix: str) -> tuple[dict[str, torch.Tensor] | None, Path | None]:
    """The tensors (transformers' names) of the text encoder a single file keeps under `prefix` (T5, QWEN), or a
    folder keeps in its ``text_encoder*/``, and the folder's ``tokenizer*/`` beside it; (None, None) without one."""
    if ckpt.folder is not None:
        sub = ckpt.folder / TEXT_FOLDERS.get((ckpt.family, prefix), "")
        if sub == ckpt.folder or not sub.is_dir():
            return None, None
        return folder_weights(sub, text=True)[0], ckpt.folder / sub.name.replace("text_encoder", "tokenizer")
    state = {k.removeprefix(prefix): v for k, v in ckpt.text_state.items() if k.startswith(prefix)}
    return state or None, None


__all__ = ["T5_LENGTH", "flow_config", "load_flow_folder", "load_flow_single_file", "text_files", "text_state_of",
           "transformer_family"]
