"""Stable Diffusion files: key maps, family detection, both layouts, and hostile files.

Reduced models of each family are built in diffusers with random weights (tests/sd_helpers.py),
written as a single original-layout file and as a diffusers folder, loaded by noisecraft, and
compared with diffusers on the same inputs. Tolerance for the networks: max |ours - ref| / max |ref|
<= 1e-4 in float32 (the same function with differently ordered sums; measured ~1e-6).
"""

from __future__ import annotations

import json
import os
import pickle
import struct

import pytest
import torch

pytest.importorskip("diffusers")

from noisecraft.checkpoints import build_module, keymaps  # noqa: E402
from noisecraft.checkpoints import sd as sdfiles  # noqa: E402
from noisecraft.checkpoints.io import read_tensors  # noqa: E402
from noisecraft.checkpoints.load import read_checkpoint  # noqa: E402
from noisecraft.errors import ModelFileError  # noqa: E402
from noisecraft.models.unet import UNet, timestep_embedding  # noqa: E402
from noisecraft.models.vae import AutoencoderKL  # noqa: E402

from sd_helpers import POOLED, TIME_DIM, ldm_unet, make_unet, make_vae, write_single_file  # noqa: E402

TOLERANCE = 1e-4
FAMILIES = ["sd1", "sd2", "sdxl"]


def rel_diff(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def unet_inputs(unet, batch=2, size=8):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(batch, unet.config.in_channels, size, size, generator=g)
    t = torch.tensor([999.0, 17.0])[:batch]
    context = torch.randn(batch, 5, unet.config.cross_attention_dim, generator=g)
    return x, t, context


def compare_unets(ours: UNet, ref, family: str) -> float:
    x, t, context = unet_inputs(ref)
    extra, y = {}, None
    if family == "sdxl":
        pooled = torch.randn(2, POOLED)
        ids = torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2)
        extra = {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": ids}}
        y = torch.cat([pooled, timestep_embedding(ids.flatten(), TIME_DIM).reshape(2, -1)], dim=1)
    with torch.no_grad():
        expected = ref(x, t, encoder_hidden_states=context, **extra).sample
        out = ours(x, t, context, y=y)
    return rel_diff(out, expected)


def test_key_maps_agree_with_diffusers_converter_both_ways():
    for family in FAMILIES:
        ref = make_unet(family)
        state = ldm_unet(ref)  # asserts diffusers' LDM converter maps our names back exactly
        assert keymaps.unet_to_diffusers(state, ref.config.layers_per_block).keys() == ref.state_dict().keys()


@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_unet_and_vae_match_diffusers(tmp_path, family):
    ref_unet, ref_vae = make_unet(family), make_vae(family)
    file = write_single_file(tmp_path / f"{family}.safetensors", ref_unet, ref_vae)
    ckpt = read_checkpoint(file)
    assert ckpt.family == family
    assert ckpt.config.prediction == "eps" and ckpt.config.text_encoder == f"clip-{family}"
    unet = build_module(UNet, ckpt.config.unet, ckpt.parts["unet"], "cpu", torch.float32)
    assert compare_unets(unet, ref_unet, family) <= TOLERANCE
    vae = build_module(AutoencoderKL, ckpt.config.vae, ckpt.parts["vae"], "cpu", torch.float32)
    assert ckpt.config.vae.scaling_factor == (0.13025 if family == "sdxl" else 0.18215)
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        assert rel_diff(vae.decode(z), ref_vae.decode(z).sample) <= TOLERANCE
        image = torch.rand(1, 3, 16, 16) * 2 - 1
        assert rel_diff(vae.encode(image).mean, ref_vae.encode(image).latent_dist.mean) <= TOLERANCE


@pytest.mark.parametrize("family", FAMILIES)
def test_diffusers_folder_matches_single_file(tmp_path, family):
    ref_unet, ref_vae = make_unet(family), make_vae(family)
    ref_unet.save_pretrained(tmp_path / "model" / "unet")
    ref_vae.save_pretrained(tmp_path / "model" / "vae")
    (tmp_path / "model" / "model_index.json").write_text("{}")
    folder = read_checkpoint(tmp_path / "model")
    single = read_checkpoint(write_single_file(tmp_path / "one.safetensors", ref_unet, ref_vae))
    assert folder.family == single.family == family
    assert folder.config.unet == single.config.unet or _same_network(folder.config.unet, single.config.unet)
    for part in ("unet", "vae"):
        assert folder.parts[part].keys() == single.parts[part].keys()
        assert all(torch.equal(folder.parts[part][k], single.parts[part][k]) for k in folder.parts[part])
    unet = build_module(UNet, folder.config.unet, folder.parts["unet"], "cpu", torch.float32)
    assert compare_unets(unet, ref_unet, family) <= TOLERANCE


def _same_network(a, b) -> bool:
    """Configs that build the same modules (depth written per level or once)."""
    with torch.device("meta"):
        sa, sb = UNet(a).state_dict(), UNet(b).state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa) and a.heads(a.model_channels) == b.heads(b.model_channels)


def test_inpainting_checkpoint_is_detected_with_nine_channels(tmp_path):
    ckpt = read_checkpoint(write_single_file(tmp_path / "inpaint.safetensors", make_unet("sd1", in_channels=9), make_vae("sd1")))
    assert ckpt.config.unet.in_channels == 9 and ckpt.config.unet.out_channels == 4


def test_prediction_from_metadata_and_override(tmp_path):
    file = write_single_file(tmp_path / "v.safetensors", make_unet("sd2"), make_vae("sd2"), metadata={"modelspec.prediction_type": "v"})
    ckpt = read_checkpoint(file)
    assert ckpt.config.prediction == "v" and ckpt.config.image_size == 768
    assert read_checkpoint(file, prediction="eps").config.prediction == "eps"
    assert read_checkpoint(file, prediction="eps").config.image_size == 512


def test_standalone_vae_swap_in_both_layouts(tmp_path):
    vae = make_vae("sdxl", seed=7)
    vae.save_pretrained(tmp_path / "vae-folder")
    from safetensors.torch import save_file

    save_file(vae.state_dict(), tmp_path / "vae-diffusers.safetensors")
    from sd_helpers import ldm_vae

    save_file({f"first_stage_model.{k}": v.contiguous() for k, v in ldm_vae(vae).items()}, tmp_path / "vae-ldm.safetensors")
    states = [sdfiles.load_vae_file(tmp_path / name) for name in ("vae-folder", "vae-diffusers.safetensors", "vae-ldm.safetensors")]
    for state in states[1:]:
        assert state.keys() == states[0].keys() and all(torch.equal(state[k], states[0][k]) for k in state)


# -- hostile and broken files ------------------------------------------------------------------------
class Boom:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    Boom.marker = marker
    for name in ("evil.ckpt", "evil.pt"):
        torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}, "payload": Boom()}, tmp_path / name)
        with pytest.raises(ModelFileError, match="does not hold plain weights"):
            read_tensors(tmp_path / name)
    with open(tmp_path / "raw.ckpt", "wb") as handle:
        pickle.dump(Boom(), handle, protocol=2)
    with pytest.raises(ModelFileError, match="does not hold plain weights"):
        read_tensors(tmp_path / "raw.ckpt")
    assert not marker.exists()


def test_pickle_renamed_safetensors_is_refused(tmp_path):
    torch.save({"model.diffusion_model.x": torch.zeros(1)}, tmp_path / "model.safetensors")
    with pytest.raises(ModelFileError, match="named .safetensors but is a pickle"):
        read_tensors(tmp_path / "model.safetensors")


def test_legacy_ckpt_with_plain_weights_loads(tmp_path):
    file = write_single_file(tmp_path / "m.safetensors", make_unet("sd1"), make_vae("sd1"))
    from safetensors.torch import load_file

    torch.save({"state_dict": load_file(file), "global_step": 1}, tmp_path / "m.ckpt")
    ckpt = read_checkpoint(tmp_path / "m.ckpt")
    assert ckpt.family == "sd1" and len(ckpt.parts["unet"]) > 100


def test_truncated_and_oversized_headers_fail_fast(tmp_path):
    file = write_single_file(tmp_path / "m.safetensors", make_unet("sd1"), make_vae("sd1"))
    data = file.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelFileError, match="truncated"):
        read_tensors(tmp_path / "cut.safetensors")
    # a header that claims 90 MB but the file is tiny; and one past safetensors' 100 MB limit
    for claimed in (90 * 2**20, 2**40):
        (tmp_path / "big.safetensors").write_bytes(struct.pack("<Q", claimed) + b"{" + b" " * 100)
        with pytest.raises(ModelFileError):
            read_tensors(tmp_path / "big.safetensors")


def test_nan_weights_are_reported(tmp_path):
    unet = make_unet("sd1")
    with torch.no_grad():
        unet.conv_in.weight[0, 0, 0, 0] = float("nan")
    file = write_single_file(tmp_path / "nan.safetensors", unet, make_vae("sd1"))
    with pytest.raises(ModelFileError, match="NaN or infinite"):
        read_checkpoint(file)


def test_not_a_stable_diffusion_file(tmp_path):
    from safetensors.torch import save_file

    save_file({"first_stage_model.encoder.conv_in.weight": torch.zeros(1)}, tmp_path / "vae-only.safetensors")
    with pytest.raises(ModelFileError, match="no model.diffusion_model"):
        read_checkpoint(tmp_path / "vae-only.safetensors")
    config = json.dumps({"_class_name": "UNet2DConditionModel"})
    (tmp_path / "f" / "unet").mkdir(parents=True)
    (tmp_path / "f" / "vae").mkdir()
    (tmp_path / "f" / "unet" / "config.json").write_text(config)
    with pytest.raises(ModelFileError):
        read_checkpoint(tmp_path / "f")
