"""Files written whole or not at all: a temporary file in the same folder, synced, then renamed over the
target, so a reader (or a kill -9) sees the old file or the new one, never half of one.

    with replacing("out.png") as handle:
        picture.save(handle, "PNG")
    write_bytes("manifest.json", data)
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: str | os.PathLike, mode: int | None = None):
    """A binary handle whose bytes become `path` when the block ends (synced first; with `mode`, by default
    what a plain open() would give: 0o666 less the umask); if the block raises, `path` is untouched and the
    temporary file removed."""
    path = Path(path)
    if mode is None:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes, mode: int | None = None) -> Path:
    """`data` as the file `path`, atomically (see `replacing`)."""
    with replacing(path, mode) as handle:
        handle.write(data)
    return Path(path)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
