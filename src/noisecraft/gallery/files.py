"""The gallery's picture files: content-addressed, written so that a crash never leaves half a file.

A picture lives at `images/<first two hex digits>/<sha256>.png` inside the gallery folder; its
name comes from its bytes only, never from anything a client sent. It is written to a temp file
beside its final place (`.<sha256 prefix>.<random>.tmp`), flushed and fsynced, renamed into place
with `os.replace` and the folder fsynced: a reader sees the whole file or none. Leftover temp
files are the only trace a crash can leave; `scan` finds them for the consistency check.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PICTURE_NAME = re.compile(r"[0-9a-f]{64}\.png")
SHA256 = re.compile(r"[0-9a-f]{64}")
TEMP_SUFFIX = ".tmp"


def default_folder() -> Path:
    """The gallery folder in the user's data directory (created by `Gallery`, not here)."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        xdg = os.environ.get("XDG_DATA_HOME", "")
        base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "noisecraft" / "gallery"


def picture_path(images: Path, sha256: str) -> Path:
    """Where the picture with this content hash lives under the `images` folder."""
    if not isinstance(sha256, str) or not SHA256.fullmatch(sha256):
        raise ValueError(f"{sha256!r:.80} is not a sha256 hex digest")
    return images / sha256[:2] / f"{sha256}.png"


def fsync_dir(path: Path) -> None:
    """Make a rename or removal inside `path` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def ensure_dir(path: Path) -> None:
    """Create `path` and its missing parents, each creation made durable in its parent."""
    if path.is_dir():
        return
    ensure_dir(path.parent)
    path.mkdir(exist_ok=True)
    fsync_dir(path.parent)


def write_picture(path: Path, data: bytes) -> bool:
    """Put `data` at `path` atomically and durably; False when an equal-sized file (same hash) is there already."""
    try:
        if path.stat().st_size == len(data):
            return False
    except FileNotFoundError:
        pass
    ensure_dir(path.parent)
    temp = path.parent / f".{path.stem[:16]}.{secrets.token_hex(8)}{TEMP_SUFFIX}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return True


def remove_file(path: Path) -> bool:
    """Remove `path` durably; False when it was not there."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True


@dataclass
class Scan:
    """What the `images` folder holds: temp leftovers, pictures by hash, and files the store did not write."""

    temps: list[Path] = field(default_factory=list)
    pictures: dict[str, Path] = field(default_factory=dict)
    unknown: list[Path] = field(default_factory=list)


def scan(images: Path) -> Scan:
    """Every file under `images`, sorted into a `Scan` (symlinks count as unknown and are never followed)."""
    found = Scan()
    if not images.is_dir():
        return found
    for sub in sorted(images.iterdir()):
        if not sub.is_dir() or sub.is_symlink():
            found.unknown.append(sub)
            continue
        for path in sorted(sub.iterdir()):
            if path.is_symlink() or not path.is_file():
                found.unknown.append(path)
            elif path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX):
                found.temps.append(path)
            elif PICTURE_NAME.fullmatch(path.name) and path.name[:2] == sub.name:
                found.pictures[path.stem] = path
            else:
                found.unknown.append(path)
    return found
