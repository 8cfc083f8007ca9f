"""Weights kept as they are stored, and turned into the compute dtype one layer at a time, when the layer runs.

Large transformers are often shared smaller than their 16-bit weights: in fp8 (``float8_e4m3fn``, what ComfyUI's
``*-fp8.safetensors`` hold) or in GGUF's quantised blocks (ComfyUI-GGUF's and stable-diffusion.cpp's ``*.gguf``:
Q8_0, Q4_K, ...). Upcasting all of it on load would need the 16-bit model's memory. Instead each such weight
stays in its stored form and a PyTorch parametrization (`torch.nn.utils.parametrize`) makes ``layer.weight``
the dequantised tensor for the moment the layer reads it:

    fp8      w = stored.to(bf16)                                    (e4m3: 1 sign, 4 exponent, 3 mantissa bits)
    Q8_0     blocks of 32: an fp16 scale d and 32 int8:  w = d * q
    Q4_K     super-blocks of 256 (llama.cpp's k-quants): fp16 d and dmin, eight 6-bit (scale, min) pairs and
             4-bit q per sub-block of 32:  w = d * scale * q - dmin * min

The GGUF block layouts are ggml's (``ggml-quants.c``); the dequantisation here is pinned to the `gguf`
package's own (`gguf.quants.dequantize`) in tests/test_stored_weights.py, and runs on the weights' device.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ModelFileError

FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)
BLOCKS = {"Q8_0": (32, 34), "Q4_K": (256, 144)}  # values and bytes per block


class GGUFWeight:
    """A GGUF tensor as stored: raw blocks (uint8 [rows, bytes per row]), its quantisation and its logical shape."""

    def __init__(self, raw: torch.Tensor, kind: str, shape: tuple[int, ...]):
        self.raw, self.kind, self.shape, self.ndim = raw, kind, torch.Size(shape), len(shape)
        self.dtype = kind  # what `noisecraft info` shows as the precision

    def numel(self) -> int:
        return self.shape.numel()

    def is_floating_point(self) -> bool:
        return False


def dequantize(raw: torch.Tensor, kind: str, shape, dtype: torch.dtype) -> torch.Tensor:
    """GGUF blocks (uint8 [..., bytes]) to a tensor of `shape` in `dtype`, on raw's device."""
    values, size = BLOCKS[kind]
    blocks = raw.reshape(-1, size)
    if kind == "Q8_0":
        d = blocks[:, :2].contiguous().view(torch.float16).float()
        q = blocks[:, 2:].contiguous().view(torch.int8).float()
        out = d * q
    else:  # Q4_K
        d = blocks[:, 0:2].contiguous().view(torch.float16).float()
        dmin = blocks[:, 2:4].contiguous().view(torch.float16).float()
        s = blocks[:, 4:16].to(torch.int32)
        low, high = s[:, :4], s[:, 4:8]
        scale = torch.cat([low & 63, (s[:, 8:12] & 0xF) | ((low >> 6) << 4)], dim=1)
        mins = torch.cat([high & 63, (s[:, 8:12] >> 4) | ((high >> 6) << 4)], dim=1)
        qs = blocks[:, 16:].to(torch.int32).reshape(-1, 4, 32)
        q = torch.stack([qs & 0xF, qs >> 4], dim=2).reshape(-1, 8, 32).float()
        out = d[:, :, None] * scale[:, :, None] * q - dmin[:, :, None] * mins[:, :, None]
    return out.reshape(shape).to(dtype)


class Upcast(nn.Module):
    """Parametrization: the stored fp8 weight in the compute dtype."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, stored: torch.Tensor) -> torch.Tensor:
        return stored.to(self.dtype)


class Dequantize(nn.Module):
    """Parametrization: the stored GGUF blocks, dequantised to the compute dtype."""

    def __init__(self, kind: str, shape, dtype: torch.dtype):
        super().__init__()
        self.kind, self.shape, self.dtype = kind, tuple(shape), dtype

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return dequantize(raw, self.kind, self.shape, self.dtype)


def is_stored(value) -> bool:
    """Whether a loaded tensor stays in its stored form (fp8, or GGUF blocks) until its layer runs."""
    return isinstance(value, GGUFWeight) or (torch.is_tensor(value) and value.dtype in FP8)


def attach(module: nn.Module, stored: dict, dtype: torch.dtype, device) -> None:
    """Give `module` its stored weights (name -> fp8 tensor or `GGUFWeight`), each read through a parametrization."""
    for name, value in stored.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        expected = getattr(owner, leaf).shape
        if tuple(value.shape) != tuple(expected):
            raise ModelFileError(f"the stored weight {name} is {tuple(value.shape)} where the model has {tuple(expected)}")
        raw = value.raw if isinstance(value, GGUFWeight) else value
        delattr(owner, leaf)
        owner.register_parameter(leaf, nn.Parameter(raw.to(device), requires_grad=False))
        way = Dequantize(value.kind, value.shape, dtype) if isinstance(value, GGUFWeight) else Upcast(dtype)
        parametrize.register_parametrization(owner, leaf, way, unsafe=True)


def read_gguf(path: Path, meta: bool = False) -> tuple[dict, dict[str, str]]:
    """A GGUF file's tensors (quantised ones as `GGUFWeight`) and its string metadata; `meta`: shapes and kinds
    only (meta tensors, blocks left unread), for `noisecraft info`."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as error:
        raise ModelFileError(f"{path} is a corrupt GGUF file ({str(error)[:120]}); download or copy it again") from None
    state = {}
    for tensor in reader.tensors:
        kind, shape = tensor.tensor_type.name, tuple(int(n) for n in reversed(tensor.shape))
        if kind in ("F32", "F16", "BF16") and meta:
            state[tensor.name] = torch.empty(shape, dtype=getattr(torch, {"F32": "float32", "F16": "float16"}.get(kind, "bfloat16")), device="meta")
            continue
        data = None if meta else torch.from_numpy(tensor.data.copy())
        if kind in ("F32", "F16", "BF16"):
            state[tensor.name] = (data.view(torch.bfloat16) if kind == "BF16" else data).reshape(shape)
        elif kind in BLOCKS:
            state[tensor.name] = GGUFWeight(data, kind, shape)
        else:
            raise ModelFileError(f"{path} stores {tensor.name} as {kind}; noisecraft reads GGUF's F32, F16, BF16, "
                                 f"{', '.join(BLOCKS)} (ask for a file in one of those)")
    metadata = {}
    for field in reader.fields.values():
        if field.types and field.types[0] == gguf.GGUFValueType.STRING:
            metadata[field.name] = bytes(field.parts[field.data[0]]).decode("utf-8", "replace")
    return state, metadata


def gguf_header(path: Path) -> dict:
    """A GGUF file's tensor names with their kinds and logical shapes (a safetensors-like header), read cheaply."""
    state, _ = read_gguf(path, meta=True)
    return {name: {"dtype": str(t.dtype), "shape": list(t.shape)} for name, t in state.items()}


__all__ = ["FP8", "GGUFWeight", "attach", "dequantize", "gguf_header", "is_stored", "read_gguf"]
