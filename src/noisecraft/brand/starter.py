"""`noisecraft brand init DIR`: a starter kit whose brand.toml explains every key in a comment."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import UserError

STARTER = '''# A noisecraft brand kit: every picture made with --brand {folder} follows it.
# Paths are relative to this folder. Check a kit with: noisecraft brand check PICTURE --brand {folder}

name = "{name}"

[palette]                      # hex colours by role; the prompt names the nearest everyday colours
primary = "#a23b2a"            # brick red
secondary = "#fdf3d6"          # cream
accent = "#22573a"             # forest green
background = "#fffaf0"         # used behind text and empty picture slots in layouts
text = "#2f1b12"               # layouts' text colour (raised to 4.5:1 contrast when the picture needs it)
# extra = ["#d9a520"]          # more colours the colour step may pull toward

[logo]
file = "logo.svg"              # PNG with transparency, or SVG

[fonts]                        # TTF or OTF files; left out: noisecraft's DejaVu Sans
# heading = "fonts/Heading.ttf"
# body = "fonts/Body.ttf"

[style]
words = "warm natural light, clean composition"   # added to every prompt
# preset = "Menu item"         # a preset from `noisecraft presets`, applied when none is given
negative = "blurry, low quality, watermark, text"  # joined to every negative prompt
colour_strength = 0.5          # after drawing, pull the picture's colours toward the palette: 0 off .. 1 full

[words]
required = []                  # words every prompt must contain (added when missing)
banned = ["neon", "cartoon"]   # a prompt with one of these is refused, naming the word

# sizes = ["1024x1024"]        # the default picture size(s) for this brand's model

[signing]                      # Content Credentials (C2PA) on every picture
sign = true                    # without a certificate: a local self-signed identity (verifiers show "untrusted")
# certificate = "signing/chain.pem"   # your own certificate chain (PEM) and its private key;
# key = "signing/key.pem"             # keep the key out of shared folders
'''

LOGO = '''<svg xmlns="http://www.w3.org/2000/svg" width="240" height="240" viewBox="0 0 240 240">
  <circle cx="120" cy="120" r="112" fill="#a23b2a"/>
  <circle cx="120" cy="120" r="84" fill="none" stroke="#fdf3d6" stroke-width="10"/>
  <path d="M78 150 L120 70 L162 150 Z" fill="#fdf3d6"/>
  <rect x="70" y="160" width="100" height="12" rx="6" fill="#22573a"/>
</svg>
'''


def _write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def init_kit(folder: str | Path, name: str | None = None) -> list[Path]:
    """Write a starter kit (brand.toml with comments, logo.svg) into `folder`; never overwrites a kit."""
    folder = Path(folder).expanduser()
    if (folder / "brand.toml").exists():
        raise UserError(f"{folder} already has a brand.toml; edit it, or give another folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot make the folder {folder} ({error.strerror or error}); choose another") from None
    written = []
    for file, text in (("logo.svg", LOGO), ("brand.toml", STARTER.format(folder=folder, name=name or folder.name))):
        if not (folder / file).exists():
            _write(folder / file, text)
            written.append(folder / file)
    return written
