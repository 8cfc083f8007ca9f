"""Weights on disk: reading them safely, knowing what a file is, and building the networks it holds.

    io.py          sniffing formats by content, bounded safetensors headers, weights-only legacy files,
                   atomic writes, the A1111 model hash, the finite check, which file in a folder
    config.py      ModelConfig: what rebuilds a model, stored inside its file
    noisecraft.py  noisecraft's own model files (config in the safetensors metadata)
    sd_config.py   what a Stable Diffusion checkpoint's weights say (family, sizes, prediction)
    sd.py          Stable Diffusion single files, diffusers folders, standalone VAEs, CLIP weights
    keymaps.py     the one table of name rules between original, diffusers and OpenCLIP layouts
    flow_files.py  SD3 / SD3.5, FLUX.1 and Z-Image files (single files, parts apart, diffusers folders)
    transformer_keys.py, transformer_config.py   their key maps (original <-> diffusers) and configs from weights
    stored.py      fp8 and GGUF weights kept stored, dequantised per layer; memory.py: what a model needs in memory
    lora.py        LoRA files merged into the networks; embeddings.py textual-inversion files
    load.py        identify / load_components / describe: path -> Source -> networks, one way for all

No pickle is ever executed: safetensors, or `torch.load(weights_only=True)` for legacy files.
"""

from .config import ModelConfig
from .io import load_weights, model_hash, read_safetensors_header, sniff, write_safetensors
from .load import BUILTIN, BUILTIN_MODEL, Components, Source, build_module, describe, identify, load_components
from .noisecraft import FORMAT, load_model_file, save_model_file

__all__ = ["BUILTIN", "BUILTIN_MODEL", "FORMAT", "Components", "ModelConfig", "Source", "build_module", "describe",
           "identify", "load_components", "load_model_file", "load_weights", "model_hash", "read_safetensors_header",
           "save_model_file", "sniff", "write_safetensors"]
