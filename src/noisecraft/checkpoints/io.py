"""Reading and writing weight files safely: the lowest floor every loader shares.

Formats are told by a file's first bytes, never by its name. safetensors files are read with the
safetensors library after their header has been checked in bounded time and memory. A legacy
PyTorch file (``.ckpt``, ``.pt``, ``.bin``: a pickle) is read only through
``torch.load(weights_only=True)``, which rebuilds tensors and plain containers and refuses anything
else, so no code in a file ever runs. A pickle named ``.safetensors`` is refused outright.
Writes are atomic (a temporary file, then a rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
import tempfile
from pathlib import Path

import torch

from ..errors import ModelFileError
from .stored import FP8, GGUFWeight, read_gguf

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
_HASHES: dict[tuple, str] = {}


def sniff(path: Path) -> str:
    """Name a weights file's format from its first bytes: safetensors, gguf, zip-pickle, pickle or unknown."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    if head[:4] == b"PK\x03\x04":
        return "zip-pickle"
    if head[:4] == b"GGUF":
        return "gguf"
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
    if not isinstance(header, dict):
        raise ModelFileError(f"{path} has a corrupt safetensors header; download or copy it again")
    try:
        ends = [int(info["data_offsets"][1]) for name, info in header.items() if name != "__metadata__"]
    except (TypeError, KeyError, IndexError, ValueError):
        raise ModelFileError(f"{path} has a corrupt safetensors header (bad tensor entries); download or copy it again") from None
    if ends and 8 + header_size + max(ends) > size_on_disk:
        raise ModelFileError(f"{path} is truncated: its tensors need more bytes than the file has; download or copy it again")
    metadata = header.get("__metadata__")
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise ModelFileError(f"{path} has a corrupt safetensors header (its metadata is not text); download or copy it again")
    return header


def load_weights(path: str | Path, fmt: str | None = None, header: dict | None = None) -> tuple[object, dict[str, str]]:
    """A weights file's contents and its safetensors metadata ({} for legacy files).

    safetensors gives a flat dict of tensors; a legacy file gives whatever plain structure of
    tensors, dicts, lists and numbers it pickled (a state dict, an embedding file, ...).
    `fmt` and `header` are what `sniff` and `read_safetensors_header` said, when the caller knows already.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelFileError(f"no file at {path}")
    kind = fmt or sniff(path)
    if kind == "gguf":
        return read_gguf(path)
    if kind == "safetensors":
        metadata = (header if header is not None else read_safetensors_header(path)).get("__metadata__") or {}
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


def read_tensors(file: Path, fmt: str | None = None, header: dict | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a weights file (a legacy checkpoint's ``state_dict`` unwrapped) and its metadata."""
    data, metadata = load_weights(file, fmt, header)
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelFileError(f"{file} holds no state dict of weights")
    return {k: v for k, v in data.items() if torch.is_tensor(v) or isinstance(v, GGUFWeight)}, metadata


def check_finite(tensors: dict[str, torch.Tensor], file: Path) -> None:
    """Refuse weights with NaN or infinite values: the model would draw nothing but black (meta tensors pass)."""
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not t.is_meta and not torch.isfinite(t.to(torch.float16) if t.dtype in FP8 else t).all()]
    if bad:
        raise ModelFileError(f"{file} has NaN or infinite weights in {len(bad)} tensor(s) (first: {bad[0]}); the model is broken")


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
                      "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def header_tensors(header: dict) -> dict[str, torch.Tensor]:
    """A safetensors header's tensors on the meta device: names, shapes and dtypes without reading a byte of data
    (what `noisecraft info` needs of a 24 GB file)."""
    try:
        return {k: torch.empty(v["shape"], dtype=SAFETENSORS_DTYPES[v["dtype"]], device="meta")
                for k, v in header.items() if k != "__metadata__"}
    except (KeyError, TypeError) as error:
        raise ModelFileError(f"the safetensors header describes a tensor noisecraft cannot read ({error})") from None


def split_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose names start with `prefix`, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def weights_file(path: str | os.PathLike, names: tuple[str, ...] = ("model.safetensors",),
                 patterns: tuple[str, ...] = ("*.safetensors",)) -> Path:
    """The weights file behind a path: the file itself; in a folder, the first of `names` there,
    else the one file matching the first of `patterns` that matches any."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelFileError(f"no model at {path}; give a noisecraft model folder or .safetensors file")
    if not path.is_dir():
        return path
    for name in names:
        if (path / name).is_file():
            return path / name
    for pattern in patterns:
        candidates = sorted(path.glob(pattern))
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            raise ModelFileError(f"{path} holds {len(candidates)} {pattern.lstrip('*')} files; name the one to use")
    raise ModelFileError(f"{path} holds no weights ({', '.join(names + patterns)})")


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write a safetensors file atomically: a temporary file beside it, then a rename.

    A kill or a full disk at any moment leaves either the old file or the new one, never half of one.
    """
    from safetensors.torch import save_file

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def model_hash(file: str | os.PathLike, digits: int = 10) -> str:
    """AUTOMATIC1111's short hash of a file: the first hex digits of its sha256 (10 for models, 12 for
    LoRA files). Computed once per file version (path, size, modification time) in a process."""
    path = Path(file).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key][:digits]
