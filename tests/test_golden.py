"""What users see stays what it was: CLI output and HTTP bodies against the recording in tests/golden/
(see tests/golden.py; `python tests/golden.py --write` records anew after a change that is meant)."""

import json

import pytest
from PIL import Image

from golden import GOLDEN, MAX_PIXEL_DIFFERENCE, pixel_difference, record


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    return record(tmp_path_factory.mktemp("golden"))


def _flatten(value, path=""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flatten(item, f"{path}/{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _flatten(item, f"{path}[{index}]")
    else:
        yield path, value


def test_texts_are_unchanged(recorded):
    texts, _ = recorded
    expected = dict(_flatten(json.loads((GOLDEN / "outputs.json").read_text())))
    now = dict(_flatten(json.loads(json.dumps(texts))))
    assert sorted(expected) == sorted(now)
    assert [(path, expected[path], now[path]) for path in expected if expected[path] != now[path]] == []


def test_pictures_are_unchanged(recorded):
    _, pictures = recorded
    assert sorted(pictures) == sorted(p.name for p in GOLDEN.glob("*.png"))
    worst = {name: pixel_difference(image.convert("RGB"), Image.open(GOLDEN / name).convert("RGB")) for name, image in pictures.items()}
    assert max(worst.values()) <= MAX_PIXEL_DIFFERENCE, worst
