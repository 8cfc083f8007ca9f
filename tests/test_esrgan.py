"""ESRGAN-family upscaler files: noisecraft's RRDBNet against spandrel's, both key layouts, safe file
reading, and the tiled picture-to-picture call."""

from __future__ import annotations

import importlib.util
import pickle
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import tiny_model_file
from noisecraft.checkpoints import write_safetensors
from noisecraft.checkpoints.upscaler import PixelUpscaler, load_upscaler, to_new_layout, to_old_layout
from noisecraft.errors import UserError
from noisecraft.models.rrdbnet import RRDBNet, rrdbnet_config

PARITY = 1e-5  # max |ours - spandrel's| on the same weights, float32 (measured: 0.0, the same operations)
SEAM = 2  # max |tiled - untiled| in uint8 levels (of 255), with the overlap around each tile


def random_net(scale: int = 4, num_feat: int = 12, num_block: int = 2, num_grow_ch: int = 32, seed: int = 0,
               **kwargs) -> RRDBNet:
    """A tiny RRDBNet with random weights whose output varies with its input around 0.5 (inside [0, 1])."""
    torch.manual_seed(seed)
    net = RRDBNet(num_feat=num_feat, num_block=num_block, num_grow_ch=num_grow_ch, scale=scale, **kwargs)
    with torch.no_grad():
        net.conv_last.weight.mul_(4.0)
        net.conv_last.bias.fill_(0.5)
    return net.eval()


def run(net, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return net(x)


def gradient(width: int, height: int) -> Image.Image:
    """A smooth picture with some structure: two ramps and a ripple."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [x / width, y / height, 0.5 + 0.4 * np.sin(x / 5) * np.cos(y / 7)]
    return Image.fromarray((np.stack(channels, -1) * 255).round().astype(np.uint8))


@pytest.fixture(scope="module")
def spandrel():
    """spandrel, imported for these tests only.

    It is a test dependency (installed with --no-deps; its absence is a failure, not a skip). It imports
    torchvision at import time, only for its LaMa and RestoreFormer architectures, and this torch has no
    CPU torchvision: stand-in modules with the names those imports ask for let it import. Everything
    imported here is removed again afterwards, so the other tests see noisecraft without spandrel.
    """
    assert importlib.util.find_spec("spandrel") is not None, "spandrel is a test dependency: pip install --no-deps"
    before = set(sys.modules)
    if importlib.util.find_spec("torchvision") is None:
        vision = types.ModuleType("torchvision")
        vision.transforms = types.ModuleType("torchvision.transforms")
        functional = vision.transforms.functional = types.ModuleType("torchvision.transforms.functional")
        functional.InterpolationMode, functional.rotate, functional.normalize = object, None, None
        sys.modules.update({"torchvision": vision, "torchvision.transforms": vision.transforms,
                            "torchvision.transforms.functional": functional})
    import spandrel as module

    yield module
    for name in set(sys.modules) - before:
        del sys.modules[name]


@pytest.fixture
def no_spandrel(monkeypatch):
    """`import spandrel` fails, as on a machine without torchvision: noisecraft's own RRDBNet is used."""
    monkeypatch.setitem(sys.modules, "spandrel", None)


@pytest.mark.parametrize("scale", [4, 2, 1, 8])
def test_same_output_as_spandrels_rrdbnet(spandrel, scale):
    net = random_net(scale, seed=scale)
    state = net.state_dict()
    descriptor = spandrel.ModelLoader().load_from_state_dict(state)
    assert descriptor.architecture.id == "ESRGAN" and descriptor.scale == scale
    ours = RRDBNet(**rrdbnet_config(state))
    ours.load_state_dict(state)
    for height, width in [(16, 20), (17, 23)]:  # odd sizes: pixel-unshuffle pads (mirrored) and crops
        x = torch.rand(1, 3, height, width)
        expected, got = run(descriptor.model.eval(), x), run(ours.eval(), x)
        assert got.shape == expected.shape == (1, 3, height * scale, width * scale)
        assert (got - expected).abs().max().item() <= PARITY
    # spandrel's model is the old ESRGAN Sequential: our table gives its names and tensors exactly
    theirs = descriptor.model.state_dict()
    old = to_old_layout(state)
    assert list(old) == list(theirs) and all(torch.equal(old[k], theirs[k]) for k in theirs)
    assert to_new_layout(dict(theirs)).keys() == state.keys()


def test_load_upscaler_uses_spandrel_when_it_imports(spandrel, tmp_path):
    net = random_net(2)
    file = write_safetensors(tmp_path / "RealESRGAN_x2plus.safetensors", net.state_dict(), {})
    up = load_upscaler(file)
    assert not isinstance(up.net, RRDBNet) and up.architecture == "ESRGAN" and up.scale == 2
    picture = gradient(40, 28)
    assert np.array_equal(np.asarray(up(picture)), np.asarray(PixelUpscaler(net, "x", 2, "ESRGAN")(picture)))


@pytest.mark.parametrize("scale, num_block, upsamples", [(4, 2, None), (8, 1, None), (2, 1, None), (1, 1, None),
                                                         (2, 1, 1), (1, 2, 0)])
def test_old_layout_round_trip_and_load(tmp_path, no_spandrel, scale, num_block, upsamples):
    net = random_net(scale, num_feat=8, num_block=num_block, num_grow_ch=8, upsamples=upsamples)
    state = net.state_dict()
    old = to_old_layout(state)
    assert "model.0.weight" in old and f"model.1.sub.{num_block}.weight" in old
    assert not any(k.startswith(("conv_", "body.")) for k in old)
    back = to_new_layout(old)
    assert list(back) == list(state) and all(torch.equal(back[k], state[k]) for k in state)
    config = rrdbnet_config(back)
    assert config == {"in_ch": 3, "out_ch": 3, "num_feat": 8, "num_block": num_block, "num_grow_ch": 8,
                      "scale": scale, "upsamples": net.upsamples}
    torch.save(old, tmp_path / "ESRGAN_old.pth")
    up = load_upscaler(tmp_path / "ESRGAN_old.pth")
    x = torch.rand(1, 3, 12, 16)
    assert up.scale == scale and up.name == "ESRGAN_old" and up.architecture == "ESRGAN"
    assert torch.equal(run(up.net, x), run(net, x))


def test_older_basicsr_names_load(tmp_path, no_spandrel):
    net = random_net(4, num_feat=8, num_block=1, num_grow_ch=8)
    renames = [(r"^body\.(\d+)\.rdb", r"RRDB_trunk.\1.RDB"), ("^conv_body", "trunk_conv"), ("^conv_up", "upconv"),
               ("^conv_hr", "HRconv")]
    state = {}
    for name, tensor in net.state_dict().items():
        for new, older in renames:
            name = re.sub(new, older, name)
        state[name] = tensor
    assert "RRDB_trunk.0.RDB2.conv5.bias" in state and "HRconv.weight" in state and "trunk_conv.bias" in state
    torch.save(state, tmp_path / "BSRGAN.pth")
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(run(load_upscaler(tmp_path / "BSRGAN.pth").net, x), run(net, x))


def test_safetensors_and_weights_only_pth_files_load(tmp_path, no_spandrel):
    net = random_net(4, num_feat=8, num_block=1, num_grow_ch=8)
    state = net.state_dict()
    files = [write_safetensors(tmp_path / "4x-UltraSharp.safetensors", state, {})]
    for name, data in [("plain.pth", state), ("RealESRGAN_x4plus.pth", {"params_ema": state}),
                       ("params.pth", {"params": state})]:
        torch.save(data, tmp_path / name)
        files.append(tmp_path / name)
    x = torch.rand(1, 3, 8, 12)
    for file in files:
        up = load_upscaler(file)
        assert (up.name, up.scale, up.architecture) == (file.stem, 4, "ESRGAN")
        assert torch.equal(run(up.net, x), run(net, x))


def _mark(path: str) -> None:
    Path(path).write_text("code ran")


class Payload:
    """An object whose unpickling would run code (writing a file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return _mark, (str(self.marker),)


def one_sentence(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and ". " not in message.rstrip(".")
    return message


@pytest.mark.parametrize("save", ["torch", "pickle"])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch notes protocol 4; it still refuses
def test_pickle_with_an_object_is_refused_without_running_it(tmp_path, no_spandrel, save):
    marker, file = tmp_path / "ran.txt", tmp_path / "evil.pth"
    data = {"params_ema": {"conv_first.weight": torch.zeros(1)}, "extra": Payload(marker)}
    if save == "torch":
        torch.save(data, file)
    else:
        file.write_bytes(pickle.dumps(data, protocol=4))
    with pytest.raises(UserError) as error:
        load_upscaler(file)
    assert "\n" not in str(error.value) and "refuses pickles that could run code" in str(error.value)
    assert not marker.exists()


def test_other_files_are_refused_in_one_sentence(tmp_path, no_spandrel):
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n" * 20)
    with pytest.raises(UserError) as error:
        load_upscaler(text)
    one_sentence(error)
    unet = tiny_model_file(tmp_path / "tiny.safetensors")
    with pytest.raises(UserError) as error:
        load_upscaler(unet)
    assert "is not an ESRGAN-family upscaler (RRDBNet); install spandrel" in one_sentence(error)
    torch.save({"conv_first.weight": torch.zeros(8, 3, 3, 3)}, tmp_path / "half.pth")  # an RRDBNet's first tensor only
    with pytest.raises(UserError, match="not an ESRGAN-family upscaler"):
        load_upscaler(tmp_path / "half.pth")
    with pytest.raises(UserError, match="no file"):
        load_upscaler(tmp_path / "missing.pth")


@pytest.mark.parametrize("scale, size", [(4, (90, 70)), (2, (101, 77)), (1, (130, 97))])
def test_tiles_give_the_untiled_picture(no_spandrel, scale, size):
    net = random_net(scale, num_feat=8, num_block=1, num_grow_ch=8, seed=3)
    up = PixelUpscaler(net, "tiny", scale, "ESRGAN")
    picture = gradient(*size)
    whole = np.asarray(up(picture, tile=0), dtype=np.int16)
    tiled = np.asarray(up(picture, tile=32, overlap=16), dtype=np.int16)
    assert whole.shape == tiled.shape == (size[1] * scale, size[0] * scale, 3)
    assert np.abs(whole - tiled).max() <= SEAM
    seams = np.asarray(up(picture, tile=32, overlap=0), dtype=np.int16)  # without overlap the tiles show
    assert np.abs(whole - seams).max() > 10 * SEAM


def test_upscaling_a_gradient_gives_an_rgb_picture_scale_times_larger(tmp_path, no_spandrel):
    torch.save({"params_ema": random_net(4, num_feat=8, num_block=1, num_grow_ch=8).state_dict()}, tmp_path / "x4.pth")
    up = load_upscaler(tmp_path / "x4.pth", device="cpu")
    for picture in (gradient(50, 30), gradient(50, 30).convert("L"), gradient(50, 30).convert("RGBA")):
        big = up(picture, tile=24, overlap=8)
        assert big.mode == "RGB" and big.size == (200, 120) and np.asarray(big).dtype == np.uint8
    with pytest.raises(UserError):
        up(gradient(8, 8), tile=-1)
