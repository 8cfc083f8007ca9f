"""From a path to networks: `identify` what a model path is, `load_components` builds its networks,
`describe` says what it holds. `Pipeline.from_pretrained`, `noisecraft info` and the server's catalog
all go through these, so a file is named, sniffed and its header parsed the same way, once.

What users call a model (its name in PNG parameters and the server's model list): the built-in
model's config name; a folder's name; for a file named ``model.safetensors`` (what training writes)
its folder's name; otherwise the file name without its extension.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelFileError, UserError
from ..models.flux import Flux, FluxConfig
from ..models.mmdit import MMDiT, MMDiTConfig
from ..models.zimage import ZImage, ZImageConfig
from ..models.unet import UNet
from ..models.vae import AutoencoderKL
from ..text.minilm import load_text_encoder
from ..text.subjects import SubjectIndex
from ..text.qwen import QwenTextEncoder
from ..text.qwen import bundled_tokenizer as qwen_tokenizer
from ..text.t5 import T5TextEncoder, bundled_tokenizer
from .config import ModelConfig
from .flow_files import (CLIP_L, QWEN, T5, T5_LENGTH, describe_flow, load_flow_folder, load_flow_single_file, text_files,
                         text_state_of, transformer_family)
from .io import header_tensors, model_hash, read_safetensors_header, read_tensors, sniff, weights_file
from .noisecraft import is_noisecraft, read_model_file
from .sd import (SDCheckpoint, component_file, is_diffusers_folder, is_sd_single_file, load_diffusers_folder,
                 load_single_file, load_vae_file, text_encoder_from_folder, text_encoder_from_single_file)
from .sd_config import vae_config_of
from .stored import FP8, attach, gguf_header, is_stored, read_gguf

BUILTIN_MODEL = Path(__file__).parent.parent / "builtin"
BUILTIN = "builtin"  # what names the built-in model where a path is expected (`serve --model builtin`)


@dataclass(frozen=True)
class Source:
    """A model path, identified: its kind, the file that names and hashes it, and what users call it.

    kind: "noisecraft" (a noisecraft model file), "sd" (a Stable Diffusion single file) or
    "diffusers" (a diffusers folder, whose UNet weights are `file`). `fmt` and `header` are the
    sniffed format and safetensors header of `file` (None for diffusers folders and pickles).
    """

    path: Path
    kind: str
    file: Path
    name: str
    fmt: str | None = None
    header: dict | None = dataclasses.field(default=None, compare=False, repr=False)
    builtin: bool = False

    @property
    def hash(self) -> str:
        """AUTOMATIC1111's short model hash (sha256 of `file`; seconds for large files, then remembered)."""
        return model_hash(self.file)


@dataclass
class Components:
    """A model's networks, built and on their device."""

    config: ModelConfig
    network: UNet | MMDiT | Flux | ZImage
    vae: AutoencoderKL | None
    text_encoder: object | None
    family: str  # "noisecraft", "sd1", "sd2", "sdxl", "sd3", "flux" or "zimage"
    subjects: SubjectIndex | None
    source: Source
    t5: T5TextEncoder | None = None  # SD3 (optional) and FLUX: the T5 encoder beside the CLIP ones


def identify(path: str | os.PathLike | None = None) -> Source:
    """What the model at `path` is (None or "builtin": the built-in model), reading no more than a header."""
    builtin = path is None or str(path) == BUILTIN
    if builtin:
        if not any(BUILTIN_MODEL.glob("*.safetensors")):
            raise UserError("this install has no built-in model; pass a model with --model PATH")
        path = BUILTIN_MODEL
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelFileError(f"no model at {path}; give a noisecraft model folder or .safetensors file")
    if is_diffusers_folder(path):
        return Source(path, "diffusers", component_file(path / ("unet" if (path / "unet").is_dir() else "transformer")), path.name)
    file = weights_file(path)
    fmt = sniff(file)
    header = read_safetensors_header(file) if fmt == "safetensors" else gguf_header(file) if fmt == "gguf" else None
    kind = "sd" if not is_noisecraft(header) and is_sd_single_file(fmt, header) else "noisecraft"
    return Source(path, kind, file, _name(path, file, header, builtin), fmt, header, builtin)


def _name(path: Path, file: Path, header: dict | None, builtin: bool) -> str:
    """The model-naming rule (module docstring)."""
    if builtin:
        try:
            return json.loads((header.get("__metadata__") or {}).get("config", "{}")).get("name") or BUILTIN
        except (ValueError, AttributeError):
            return BUILTIN
    if path.is_dir():
        return path.name
    return file.parent.name if file.name == "model.safetensors" else file.stem


def flow_family(source: Source) -> str | bool | None:
    """Whether a source holds a flow model (SD3, FLUX, Z-Image): a diffusers folder with a ``transformer/``, or the
    single file's family from its header; false for the UNet families."""
    return (source.path / "transformer").is_dir() if source.kind == "diffusers" else transformer_family(source.header or {})


def read_checkpoint(source: Source | str | os.PathLike, prediction: str | None = None, text_encoders=(),
                    meta: bool = False) -> SDCheckpoint:
    """A Stable Diffusion model's weights (a `Source` or a path), in the original layout, on the CPU; `text_encoders`:
    standalone CLIP / T5 files for an SD3 or FLUX file; `meta`: an SD3 / FLUX model's shapes only (from its headers)."""
    source = source if isinstance(source, Source) else identify(source)
    flow = flow_family(source)
    if flow and prediction:
        raise UserError("--prediction is for UNet models; SD3 and FLUX predict the flow's velocity")
    if not flow and text_encoders:
        raise UserError("--text-encoders is for SD3, FLUX and Z-Image files; this model carries its own text encoders")
    if source.kind == "diffusers":
        return load_flow_folder(source.path, source.name, meta) if flow else load_diffusers_folder(source.path, source.name, prediction=prediction)
    if not flow:
        return load_single_file(source.file, source.name, fmt=source.fmt, header=source.header, prediction=prediction)
    if meta:
        state, metadata = (read_gguf(source.file, meta=True) if source.fmt == "gguf" else
                           (header_tensors(source.header), source.header.get("__metadata__") or {}))
    else:
        state, metadata = read_tensors(source.file, source.fmt, source.header)
    return load_flow_single_file(source.file, source.name, state, metadata, flow, text_files(text_encoders or ()))


def load_components(source: Source, *, device: torch.device, dtype: torch.dtype, vae: str | os.PathLike | None = None,
                    prediction: str | None = None, text_encoders=(), text_device: torch.device | None = None) -> Components:
    """Build a model's networks on `device`: the UNet in `dtype`, the VAE in float32 (SD's in `dtype` on
    CUDA), the text encoder. `vae` swaps in a standalone autoencoder and `prediction` ("eps" or "v")
    overrides what a Stable Diffusion file implies; `text_device`: where an SD3 / FLUX / Z-Image model's text encoders
    run (the CPU, to leave the GPU to the transformer; their outputs move to `device`)."""
    if source.kind == "noisecraft":
        if vae is not None or prediction is not None:
            raise UserError("--vae and --prediction are for Stable Diffusion checkpoints; a noisecraft model carries its own")
        if text_encoders or text_device is not None:
            raise UserError("--text-encoders and --text-device are for SD3, FLUX and Z-Image files; a noisecraft model carries its own text encoder")
        config, parts = read_model_file(source.file, source.fmt, source.header)
        if config.kind == "vae" or config.unet is None:
            raise UserError(f"{source.file} is an autoencoder alone; generation needs a diffusion model (kind 'latent' or 'pixel')")
        if "unet" not in parts or (config.kind == "latent" and "vae" not in parts):
            raise ModelFileError(f"{source.file} lacks the {'unet' if 'unet' not in parts else 'vae'} weights its config names; the file is incomplete")
        unet = build_module(UNet, config.unet, parts["unet"], device, dtype)
        autoencoder = build_module(AutoencoderKL, config.vae, parts["vae"], device, torch.float32) if config.kind == "latent" else None
        text_encoder = load_text_encoder(config.text_encoder).to(device) if config.text_encoder else None
        subjects = SubjectIndex.from_part(parts["subjects"]) if "subjects" in parts and text_encoder is not None else None
        return Components(config, unet, autoencoder, text_encoder, "noisecraft", subjects, source)
    ckpt = read_checkpoint(source, prediction, text_encoders)
    config = ckpt.config
    if vae is not None:
        ckpt.parts["vae"] = load_vae_file(Path(vae))
        config = dataclasses.replace(config, vae=vae_config_of(ckpt.parts["vae"], ckpt.family))
    if config.transformer is not None:
        return _flow_components(ckpt, config, source, device, dtype, text_device or device)
    unet = build_module(UNet, config.unet, ckpt.parts.pop("unet"), device, dtype)
    # The VAE runs in the UNet's dtype on GPUs; `Pipeline.decode` falls back to float32 if fp16 overflows.
    autoencoder = build_module(AutoencoderKL, config.vae, ckpt.parts.pop("vae"), device, dtype if device.type == "cuda" else torch.float32)
    if ckpt.folder is not None:
        text_encoder = text_encoder_from_folder(ckpt.folder, ckpt.family, device=device, dtype=dtype)
    else:
        text_encoder = text_encoder_from_single_file(ckpt.text_state, ckpt.family, device=device, dtype=dtype)
    if text_encoder.dim != config.unet.context_dim:
        raise ModelFileError(f"{source.file}'s text encoder gives {text_encoder.dim}-wide states but its UNet reads "
                             f"{config.unet.context_dim}; the file mixes parts of different models")
    return Components(config, unet, autoencoder, text_encoder, ckpt.family, None, source)


def _flow_components(ckpt: SDCheckpoint, config: ModelConfig, source: Source, device, dtype, text_device) -> Components:
    """The networks of an SD3 / FLUX / Z-Image checkpoint: transformer, VAE and text encoders (T5 optional for SD3)."""
    kind = ckpt.family
    if "vae" not in ckpt.parts:
        raise UserError(f"{source.file} holds no autoencoder; add one with --vae FILE (FLUX.1's ae.safetensors, SD3's vae)")
    if ckpt.folder is None and not any(k.startswith(QWEN if kind == "zimage" else CLIP_L) for k in ckpt.text_state):
        files = {"sd3": "clip_l.safetensors clip_g.safetensors [t5xxl_fp16.safetensors]", "flux": "clip_l.safetensors t5xxl_fp16.safetensors",
                 "zimage": "qwen_3_4b.safetensors"}[kind]
        raise UserError(f"{source.file} holds no text encoders; give them with --text-encoders {files}")
    net = build_module({MMDiTConfig: MMDiT, FluxConfig: Flux, ZImageConfig: ZImage}[type(config.transformer)], config.transformer, ckpt.parts.pop("transformer"), device, dtype)
    autoencoder = build_module(AutoencoderKL, config.vae, ckpt.parts.pop("vae"), device, dtype if device.type == "cuda" else torch.float32)
    if kind == "zimage":
        state, tokenizer = text_state_of(ckpt, QWEN)
        if state is None:
            raise ModelFileError(f"{source.path} has no text_encoder/ folder; a Z-Image folder needs its Qwen3")
        qwen = QwenTextEncoder.from_state(state, qwen_tokenizer(tokenizer), device=text_device, dtype=dtype)
        if qwen.dim != config.transformer.context_dim:
            raise ModelFileError(f"{source.file}'s Qwen3 states are {qwen.dim} wide where the transformer reads "
                                 f"{config.transformer.context_dim}; the text encoder is of another model")
        return Components(config, net, autoencoder, qwen, ckpt.family, None, source)
    if ckpt.folder is not None:
        text_encoder = text_encoder_from_folder(ckpt.folder, ckpt.family, device=text_device, dtype=dtype)
    else:
        text_encoder = text_encoder_from_single_file(ckpt.text_state, ckpt.family, device=text_device, dtype=dtype)
    t5_state, tokenizer_folder = text_state_of(ckpt, T5)
    t5 = None if t5_state is None else T5TextEncoder.from_state(t5_state, bundled_tokenizer(tokenizer_folder), T5_LENGTH[ckpt.family],
                                                                device=text_device, dtype=dtype)
    if kind == "flux" and t5 is None:
        raise UserError(f"{source.file} has no T5 text encoder, which FLUX.1 reads; give one with --text-encoders t5xxl_fp16.safetensors")
    widths = {"T5": (t5.dim if t5 else config.transformer.context_dim, config.transformer.context_dim),
              "pooled": (text_encoder.pooled_dim, config.transformer.pooled_dim)}
    wrong = [f"its {what} text states are {have} wide where the transformer reads {want}" for what, (have, want) in widths.items() if have != want]
    if wrong:
        raise ModelFileError(f"{source.file}'s text encoders do not fit its transformer ({wrong[0]}); they are of another model")
    return Components(config, net, autoencoder, text_encoder, ckpt.family, None, source, t5=t5)


def build_module(cls, config, state: dict, device, dtype):
    """`cls(config)` built on the meta device and given `state`'s tensors (no random init, no copy
    where dtype and device already match), frozen for inference."""
    with torch.device("meta"):
        module = cls(config)
    kept = {k: v for k, v in state.items() if is_stored(v)}  # fp8 / GGUF weights stay stored; see `stored`
    try:
        missing, unexpected = module.load_state_dict({k: v for k, v in state.items() if k not in kept}, strict=False, assign=True)
        if set(missing) != set(kept) or unexpected:
            raise RuntimeError(f"missing {sorted(set(missing) - set(kept))[:3]}, unexpected {unexpected[:3]}")
        attach(module, kept, dtype, device)
    except (RuntimeError, AttributeError) as error:
        raise ModelFileError(f"the model file's weights do not fit its config ({str(error).splitlines()[0]})") from None
    if not kept:
        return module.to(device=device, dtype=dtype).eval().requires_grad_(False)
    for sub in module.modules():  # the rest in the compute dtype; the stored weights keep theirs
        for name, t in [*sub.named_parameters(recurse=False), *sub.named_buffers(recurse=False)]:
            if t.is_floating_point() and t.dtype not in FP8:
                setattr(sub, name, torch.nn.Parameter(t.to(device, dtype), requires_grad=False) if isinstance(t, torch.nn.Parameter)
                        else t.to(device, dtype))
    return module.to(device).eval().requires_grad_(False)


def describe(source: Source) -> dict[str, str]:
    """What `noisecraft info` prints: label -> text, in order."""
    if source.kind == "noisecraft":
        config, parts = read_model_file(source.file, source.fmt, source.header)
        family = None
    elif flow_family(source):
        ckpt = read_checkpoint(source, meta=True)
        config, parts = ckpt.config, ckpt.parts
        flow = describe_flow(ckpt)
        family = flow.pop("family")
    else:
        ckpt = read_checkpoint(source)
        config, parts = ckpt.config, ckpt.parts
        family = f"Stable Diffusion {ckpt.family}{' (inpainting)' if ckpt.inpainting else ''}"
    counts = {part: sum(t.numel() for t in state.values()) for part, state in parts.items()}
    dtypes = {part: sorted({str(t.dtype).removeprefix("torch.") for t in state.values()}) for part, state in parts.items()}
    kinds = {"latent": "UNet over VAE latents", "pixel": "UNet over pixels"}
    lines = {"family": family} if family else {}
    lines |= {"file": f"{source.file} ({source.file.stat().st_size / 1e6:.1f} MB, hash {source.hash})",
              "name": config.name, "kind": f"{config.kind} ({'transformer over VAE latents' if config.transformer else kinds.get(config.kind, 'autoencoder alone')})"}
    if config.unet:
        lines["unet"] = (f"{counts.get('unet', 0) / 1e6:.2f}M parameters ({', '.join(dtypes.get('unet', []))}), "
                         f"channels {config.unet.model_channels} x {list(config.unet.channel_mult)}")
        lines["prediction"] = (f"{config.prediction}, {config.beta_schedule} betas {config.beta_start}..{config.beta_end}, "
                               f"{config.num_train_timesteps} steps")
    if config.transformer:
        lines |= {k: v for k, v in flow.items() if k != "text"}
    if config.vae:
        shift = f", shift {config.vae.shift_factor}" if config.vae.shift_factor else ""
        lines["vae"] = (f"{counts.get('vae', 0) / 1e6:.2f}M parameters, downsampling x{config.vae.downsample_factor}, "
                        f"{config.vae.embed_dim} latent channels, scaling {config.vae.scaling_factor}{shift}")
    elif config.transformer:
        lines["vae"] = "none in the file (give one with --vae)"
    lines["text"] = flow["text"] if config.transformer else config.text_encoder or "none (unconditional)"
    if "subjects" in parts:
        index = SubjectIndex.from_part(parts["subjects"])
        lines["subjects"] = (f"{len(index.names)} ({len(index.vectors)} phrases); prompts draw the nearest one "
                             "(--subject off: the prompt's own words)")
    lines["image size"] = f"{config.image_size}x{config.image_size}"
    lines["defaults"] = ", ".join(f"{k}={v}" for k, v in config.defaults.items())
    return lines
