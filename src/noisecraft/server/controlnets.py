"""The A1111 ControlNet extension's API over the ControlNet files a server offers (`serve --controlnet FILE`).

    txt2img / img2img   "alwayson_scripts": {"controlnet": {"args": [unit, ...]}} (also "ControlNet"); a unit:
                        image (base64, or {"image": base64}; also input_image), module, model ("name [hash]",
                        or the name), weight, guidance_start, guidance_end, threshold_a/b (canny), resize_mode
                        ("Just Resize", "Crop and Resize", "Resize and Fill" or 0/1/2), enabled
    GET  /controlnet/model_list, /controlnet/module_list, /controlnet/version
    POST /controlnet/detect   the preprocessed pictures (canny here), as the extension answers

Modules that need a detector model (depth_midas, openpose, lineart_realistic, ...) cannot run offline;
they are refused in one sentence that says to send the map itself with module "none".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..control import GIVEN, Control
from ..errors import UserError
from .encoding import decode_image
from .errors import FieldError

MODULES = {"none": "none", "canny": "canny", "tile_resample": "tile", "tile": "tile", **{k: k for k in GIVEN}}
RESIZE = {"just resize": "just", "crop and resize": "crop", "resize and fill": "fill", "0": "just", "1": "crop", "2": "fill",
          "inner fit (scale to fit)": "fill", "outer fit (shrink to fit)": "crop"}
MAX_UNITS = 4


@dataclass(frozen=True)
class Offered:
    """A ControlNet file the server offers: its path and the title clients name it by ("name [hash]")."""

    path: Path
    name: str
    hash: str

    @property
    def title(self) -> str:
        return f"{self.name} [{self.hash}]"


@dataclass
class Unit:
    """One control of a request, checked and decoded (the worker loads its file and makes the `Control`)."""

    offered: Offered
    image: Any
    preprocessor: str
    strength: float
    start: float
    end: float
    low: int
    high: int
    resize: str

    def control(self, net) -> Control:
        return Control(net, self.image, self.preprocessor, self.strength, self.start, self.end, self.low, self.high, self.resize)


def offer(paths: list[str]) -> dict[str, Offered]:
    """The --controlnet files, read (and so checked) before the server starts, by title."""
    from ..checkpoints.controlnet import read_controlnet
    from ..checkpoints.io import model_hash

    offered = {}
    for path in paths:
        _, _, _, file = read_controlnet(path)
        item = Offered(Path(path).expanduser(), Path(path).name if Path(path).is_dir() else Path(path).stem, model_hash(file))
        offered[item.title] = item
    return offered


def find(offered: dict[str, Offered], wanted: str) -> Offered | None:
    """By title, by name, or by a title whose hash differs only in case (clients copy it around)."""
    wanted = wanted.strip()
    return offered.get(wanted) or next((o for o in offered.values() if wanted.lower() in (o.name.lower(), o.title.lower())), None)


def units(scripts: dict | None, offered: dict[str, Offered]) -> list[Unit]:
    """The enabled ControlNet units of a request's `alwayson_scripts`, each checked, or a 422 naming the field."""
    key = next((k for k in (scripts or {}) if k.lower() == "controlnet"), None)
    if key is None:
        return []
    where = ("alwayson_scripts", key, "args")
    args = scripts[key].get("args") if isinstance(scripts[key], dict) else None
    if not isinstance(args, list) or not all(isinstance(u, dict) for u in args):
        raise FieldError(where, "the ControlNet script takes {\"args\": [unit, ...]}, each unit an object")
    found = []
    for k, unit in enumerate(args):
        if unit.get("enabled", True) is False:
            continue
        found.append(unit_of(unit, offered, (*where, k)))
    if len(found) > MAX_UNITS:
        raise FieldError(where, f"send at most {MAX_UNITS} ControlNet units, not {len(found)}")
    return found


def unit_of(unit: dict, offered: dict[str, Offered], where: tuple) -> Unit:
    """One A1111 ControlNet unit (a dict), checked and decoded; a 422 naming the field under `where`."""
    module = str(unit.get("module") or "none").strip().lower()
    if module not in MODULES:
        raise FieldError((*where, "module"), f"module {module!r} needs a detector model noisecraft cannot download here; "
                                             f"send the map itself with module 'none' (or use canny or tile_resample)")
    model = unit.get("model")
    if not isinstance(model, str) or not model.strip() or model.strip().lower() == "none":
        raise FieldError((*where, "model"), "name the ControlNet model (GET /controlnet/model_list)")
    chosen = find(offered, model)
    if chosen is None:
        raise FieldError((*where, "model"), f"this server has no ControlNet {model[:80]!r} (GET /controlnet/model_list)")
    image = unit.get("image", unit.get("input_image"))
    if isinstance(image, dict):
        image = image.get("image")
    if not isinstance(image, str) or not image:
        raise FieldError((*where, "image"), "send the control picture as image (base64 PNG, JPEG or WebP)")
    picture = decode_image(image, (*where, "image"))
    resize = RESIZE.get(str(unit.get("resize_mode", "Crop and Resize")).strip().lower())
    if resize is None:
        raise FieldError((*where, "resize_mode"), "resize_mode is Just Resize, Crop and Resize or Resize and Fill")
    try:
        low, high = threshold(unit.get("threshold_a"), 100), threshold(unit.get("threshold_b"), 200)
        found = Unit(chosen, picture, MODULES[module], float(unit.get("weight", 1.0)), float(unit.get("guidance_start", 0.0)),
                     float(unit.get("guidance_end", 1.0)), low, high, resize)
        found.control(None).check()
    except UserError as error:  # (a ValueError too: first)
        raise FieldError(where, str(error)) from None
    except (TypeError, ValueError):
        raise FieldError(where, "weight, guidance_start, guidance_end and the thresholds must be numbers") from None
    return found


def threshold(value, default: int) -> int:
    """A1111 sends -1 (or its UI's 64 placeholder for modules without thresholds) when none was chosen."""
    if value is None or float(value) < 0:
        return default
    return int(round(float(value)))


def module_list() -> dict:
    return {"module_list": list(MODULES), "module_detail": {name: {"sliders": [], "model_free": name == "none"} for name in MODULES}}
