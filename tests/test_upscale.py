"""The upscale path (`noisecraft.upscale`): tiles that cover the picture, feathered seams, the same
picture for the same request, and plain resampling when asked for no redraw."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from noisecraft.errors import UserError
from noisecraft.settings import Request
from noisecraft.upscale import enlarge, feather, tile_layout, upscale

from server_fixtures import cached_pipeline, model_file


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return cached_pipeline(model_file(tmp_path_factory.mktemp("upscale"), "latent", text=False))


def textured(size=(24, 16), seed=0, low=0, high=255) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(low, high, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize("length, native, overlap", [(16, 16, 2), (32, 16, 2), (48, 16, 4), (40, 16, 2), (100, 32, 8)])
def test_tiles_cover_the_picture_overlap_and_are_at_least_native(length, native, overlap):
    tile, starts = tile_layout(length, native, overlap, 8 if length % 8 == 0 else 4)
    assert starts[0] == 0 and starts[-1] + tile == length
    assert tile >= min(native, length)
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))  # neighbours share >= overlap pixels


def test_feather_weights_ramp_over_the_shared_pixels_only():
    tile, starts = 16, [0, 12, 24]
    middle = feather(tile, starts, 1)
    assert (middle > 0).all() and middle[4:12].tolist() == [1.0] * 8
    assert np.all(np.diff(middle[:4]) > 0) and np.all(np.diff(middle[12:]) < 0)


class Shifted:
    """A stand-in model that 'redraws' tile k as the tile brightened by 40*k: the seams must blend."""

    def __init__(self, pipe):
        self.pipe = pipe

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def __call__(self, s, init_image, callback=None):
        offset = 40 * (s.seed - self.first)
        out = np.clip(np.asarray(init_image, dtype=np.int16) + offset, 0, 255).astype(np.uint8)
        return [Image.fromarray(out)]

    def resolve(self, request, **kw):
        s = self.pipe.resolve(request, **kw)
        self.first = s.seed
        return s


def test_seams_are_feathered_no_step_between_tiles(pipe):
    small = textured((16, 8), low=60, high=100)  # never clipped by the offsets
    picture, how = upscale(Shifted(pipe), small, 2, Request("", seed=5, steps=2), strength=0.3, overlap=8)
    assert picture.size == (32, 16) and "tiles of 16x16" in how and "(overlap 8)" in how
    # the three columns of tiles are offset by 0, 40, 80 (pasted side by side: steps of 40); with linear
    # ramps over the 8 shared pixels a step is at most 2 x 40 / 9 (where the middle tile's ramps meet), + 1 rounding
    plain = np.asarray(enlarge(small, 32, 16), dtype=float)
    step = np.abs(np.diff(np.asarray(picture, dtype=float) - plain, axis=1))
    assert 4 <= step.max() <= 2 * 40 / 9 + 1.0


def test_same_request_same_picture_with_parameters(pipe):
    request = Request("", seed=3, steps=2)
    first, how = upscale(pipe, textured(), 2, request, strength=0.3)
    again, _ = upscale(pipe, textured(), 2, request, strength=0.3)
    assert first.size == (48, 32) and np.array_equal(np.asarray(first), np.asarray(again))
    assert "redrawn at strength 0.3" in how
    text = first.info["parameters"]
    assert "Size: 48x32" in text and 'Upscale: "2x Lanczos, tiled img2img at 0.3 (6 of 6 tiles, seed 3)"' in text
    plain = np.asarray(enlarge(textured(), 48, 32), dtype=float)
    assert np.abs(np.asarray(first, dtype=float) - plain).mean() > 1  # the model redrew it


def test_strength_zero_is_plain_lanczos(pipe):
    image = textured()
    picture, how = upscale(pipe, image, 2, Request("", seed=1), strength=0)
    assert np.array_equal(np.asarray(picture), np.asarray(image.resize((48, 32), Image.LANCZOS)))
    assert how == "Lanczos to 48x32"


def test_flat_tiles_are_not_redrawn(pipe):
    picture, how = upscale(pipe, Image.new("RGB", (16, 16), (20, 200, 90)), 2, Request("", seed=1, steps=2), strength=0.4)
    assert np.array_equal(np.asarray(picture), np.full((32, 32, 3), (20, 200, 90), dtype=np.uint8))
    assert "0 of 4 tiles" in how


def test_bad_scale_and_upscaler_are_one_sentence(pipe):
    with pytest.raises(UserError, match="from 1 to 8"):
        upscale(pipe, textured(), 9, Request(""))
    with pytest.raises(UserError, match="unknown upscaler 'Bicubic'; choose one of"):
        upscale(pipe, textured(), 2, Request(""), upscaler="Bicubic")
