"""Reading weight files safely: the lowest layer every loader (models, checkpoints, text encoders) shares.

Formats are told by a file's first bytes, never by its name. safetensors files are read with the
safetensors library after their header has been checked in bounded time and memory. A legacy
PyTorch file (``.ckpt``, ``.pt``, ``.bin``: a pickle) is read only through
``torch.load(weights_only=True)``, which rebuilds tensors and plain containers and refuses anything
else, so no code in a file ever runs. A pickle named ``.safetensors`` is refused outright.
"""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import torch

from .errors import ModelFileError

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit


def sniff(path: Path) -> str:
    """Name a weights file's format from its first bytes: safetensors, zip-pickle, pickle or unknown."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    if head[:4] == b"PK\x03\x04":
        return "zip-pickle"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        return "pickle"
    if len(head) >= 9:
        (size,) = struct.unpack("<Q", head[:8])
        if 2 <= size <= MAX_HEADER_BYTES and head[8:9] == b"{":
            return "safetensors"
    return "unknown"


def read_safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file, read in bounded time and memory."""
    size_on_disk = path.stat().st_size
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise ModelFileError(f"{path} is not a complete safetensors file (it is {size_on_disk} bytes); download or copy it again")
        (header_size,) = struct.unpack("<Q", raw)
        if header_size > MAX_HEADER_BYTES or header_size + 8 > size_on_disk:
            raise ModelFileError(f"{path} is truncated or corrupt (its header claims {header_size} bytes); download or copy it again")
        try:
            header = json.loads(handle.read(header_size))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ModelFileError(f"{path} has a corrupt safetensors header; download or copy it again") from None
    ends = [info["data_offsets"][1] for name, info in header.items() if name != "__metadata__"]
    if ends and 8 + header_size + max(ends) > size_on_disk:
        raise ModelFileError(f"{path} is truncated: its tensors need more bytes than the file has; download or copy it again")
    return header


def load_weights(path: str | Path) -> tuple[object, dict[str, str]]:
    """A weights file's contents and its safetensors metadata ({} for legacy files).

    safetensors gives a flat dict of tensors; a legacy file gives whatever plain structure of
    tensors, dicts, lists and numbers it pickled (a state dict, an embedding file, ...).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelFileError(f"no file at {path}")
    kind = sniff(path)
    if kind == "safetensors":
        metadata = read_safetensors_header(path).get("__metadata__") or {}
        try:
            return load_file(str(path)), metadata
        except SafetensorError as error:
            raise ModelFileError(f"{path} is a corrupt safetensors file ({error}); download or copy it again") from None
    if kind == "unknown":
        raise ModelFileError(f"{path} is neither a safetensors file nor a PyTorch checkpoint (corrupt or another format)")
    if path.suffix.lower() == ".safetensors":
        raise ModelFileError(f"{path} is named .safetensors but is a pickle, which can run code when loaded; "
                             "noisecraft refuses it (get the real .safetensors file)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=kind == "zip-pickle"), {}
    except pickle.UnpicklingError as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ModelFileError(f"{path} is a pickle that does not hold plain weights, so noisecraft will not load it "
                             f"(it refuses pickles that could run code; {first[:160]}); use a .safetensors file") from None
    except (RuntimeError, EOFError, ValueError, OSError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ModelFileError(f"{path} is a corrupt PyTorch file ({first[:120]}); download or copy it again") from None
