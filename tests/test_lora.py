"""LoRA merging against diffusers' own LoRA loader (PEFT) on the same random weights.

A random LoRA is written in kohya/A1111 format (the names people download) and in diffusers/PEFT
format, merged into noisecraft's UNet, and compared with diffusers' UNet after
``load_lora_into_unet`` at the same scale. Tolerance: max relative difference <= 1e-4 (float32).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft")
diffusers = pytest.importorskip("diffusers")

from safetensors.torch import save_file  # noqa: E402

from noisecraft.checkpoints import build_module  # noqa: E402
from noisecraft.checkpoints.load import read_checkpoint  # noqa: E402
from noisecraft.errors import ModelFileError, UserError  # noqa: E402
from noisecraft.checkpoints.lora import LoraStack, parse_lora_argument, unet_targets  # noqa: E402
from noisecraft.models.unet import UNet  # noqa: E402

from sd_helpers import make_unet, make_vae, write_single_file  # noqa: E402
from test_sdfiles import TOLERANCE, compare_unets  # noqa: E402

RANK, ALPHA = 4, 2.0


def lora_layers(ref_unet) -> list[str]:
    """diffusers names of the layers a typical SD LoRA adapts: attention, projections, feed-forward."""
    names = []
    for name, module in ref_unet.named_modules():
        if name.endswith(("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.2")):
            names.append(name)
    return names


def random_lora(ref_unet, style: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    modules = dict(ref_unet.named_modules())
    tensors = {}
    for name in lora_layers(ref_unet):
        weight = modules[name].weight
        down_shape = (RANK, *weight.shape[1:]) if weight.ndim == 4 else (RANK, weight.shape[1])
        up_shape = (weight.shape[0], RANK, 1, 1) if weight.ndim == 4 else (weight.shape[0], RANK)
        down, up = torch.randn(down_shape, generator=g) * 0.1, torch.randn(up_shape, generator=g) * 0.1
        if style == "kohya":
            key = "lora_unet_" + name.replace(".", "_")
            tensors |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(ALPHA)}
        else:  # PEFT names; no alpha (PEFT files keep it in the adapter config), so alpha = rank
            tensors |= {f"unet.{name}.lora_A.weight": down, f"unet.{name}.lora_B.weight": up}
    return tensors


def reference_with_lora(ref_unet, tensors: dict, scale: float):
    """diffusers' UNet with the LoRA loaded by diffusers itself, at `scale`."""
    from diffusers import StableDiffusionPipeline

    state, alphas = StableDiffusionPipeline.lora_state_dict(tensors)
    StableDiffusionPipeline.load_lora_into_unet(state, alphas, ref_unet, adapter_name="test")
    ref_unet.set_adapters(["test"], weights=[scale])
    return ref_unet


def ours_from(ref_unet, tmp_path, family: str) -> UNet:
    ckpt = read_checkpoint(write_single_file(tmp_path / "base.safetensors", ref_unet, make_vae(family)))
    return build_module(UNet, ckpt.config.unet, ckpt.parts["unet"], "cpu", torch.float32)


@pytest.mark.parametrize("style,scale", [("kohya", 0.8), ("peft", 1.0)])
def test_lora_matches_diffusers_loader(tmp_path, style, scale):
    ref = make_unet("sd1")
    ours = ours_from(ref, tmp_path, "sd1")
    tensors = random_lora(ref, style)
    save_file(tensors, tmp_path / "lora.safetensors")
    reference_with_lora(ref, tensors, scale)
    assert compare_unets(ours, ref, "sd1") > 100 * TOLERANCE  # the LoRA matters
    stack = LoraStack()
    changed = stack.apply(tmp_path / "lora.safetensors", scale, {"unet": unet_targets(ours, ours.config.num_res_blocks)})
    assert changed == len(lora_layers(ref))
    assert compare_unets(ours, ref, "sd1") <= TOLERANCE


def test_sdxl_kohya_lora_in_original_names(tmp_path):
    """SDXL LoRAs from kohya name layers by the original layout (input_blocks_4_1_...)."""
    ref = make_unet("sdxl")
    ours = ours_from(ref, tmp_path, "sdxl")
    diffusers_to_ldm = {}
    for name, _ in ours.named_modules():
        if name:
            from noisecraft.checkpoints import keymaps

            try:
                diffusers_to_ldm[keymaps.unet_ldm_to_diffusers(name + ".weight", 1)[:-7]] = name
            except KeyError:
                pass
    tensors = {}
    for key, value in random_lora(ref, "kohya").items():
        stem, _, role = key.partition(".")
        diffusers_name = [n for n in diffusers_to_ldm if "lora_unet_" + n.replace(".", "_") == stem][0]
        tensors[f"lora_unet_{diffusers_to_ldm[diffusers_name].replace('.', '_')}.{role}"] = value
    save_file(tensors, tmp_path / "xl.safetensors")
    LoraStack().apply(tmp_path / "xl.safetensors", 1.0, {"unet": unet_targets(ours, 1)})
    reference_with_lora(ref, random_lora(ref, "kohya"), 1.0)
    assert compare_unets(ours, ref, "sdxl") <= TOLERANCE


def test_stacking_and_unloading_restore_the_weights(tmp_path):
    ref = make_unet("sd1")
    ours = ours_from(ref, tmp_path, "sd1")
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    for seed in (0, 1):
        save_file(random_lora(ref, "kohya", seed), tmp_path / f"l{seed}.safetensors")
    stack = LoraStack()
    targets = {"unet": unet_targets(ours, ours.config.num_res_blocks)}
    stack.apply(tmp_path / "l0.safetensors", 0.5, targets)
    stack.apply(tmp_path / "l1.safetensors", -1.0, targets)
    assert [(n, s) for n, s, _ in stack.loaded] == [("l0", 0.5), ("l1", -1.0)]
    assert any(not torch.equal(before[k], v) for k, v in ours.state_dict().items())
    stack.unload()
    assert all(torch.equal(before[k], v) for k, v in ours.state_dict().items())


def test_lora_for_another_family_is_a_clear_error(tmp_path):
    sd1, xl = make_unet("sd1"), make_unet("sdxl")
    save_file(random_lora(xl, "kohya"), tmp_path / "xl.safetensors")
    ours = ours_from(sd1, tmp_path, "sd1")
    with pytest.raises(UserError, match="does not fit this model"):
        LoraStack().apply(tmp_path / "xl.safetensors", 1.0, {"unet": unet_targets(ours, ours.config.num_res_blocks)})
    save_file({"something.weight": torch.zeros(2)}, tmp_path / "not-lora.safetensors")
    with pytest.raises(ModelFileError, match="no LoRA layers"):
        LoraStack().apply(tmp_path / "not-lora.safetensors", 1.0, {})


def test_lora_argument():
    assert parse_lora_argument("style.safetensors:0.7") == ("style.safetensors", 0.7)
    assert parse_lora_argument("style.safetensors") == ("style.safetensors", 1.0)
    assert parse_lora_argument("C:/loras/x.safetensors:-0.5") == ("C:/loras/x.safetensors", -0.5)


def trained_adapters(ours, seed: int = 3):
    """kohya's layer set on our UNet with non-zero up weights (an untrained adapter is zero: proves nothing)."""
    from noisecraft.train.lora import add_adapters

    adapters = add_adapters(ours, rank=RANK, alpha=ALPHA)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in adapters.values():
            adapter.down.weight.copy_(torch.randn(adapter.down.weight.shape, generator=g) * 0.1)
            adapter.up.weight.copy_(torch.randn(adapter.up.weight.shape, generator=g) * 0.1)
    return adapters


def rename_to_diffusers(key: str, paths: list[str], num_res_blocks: int) -> str:
    """lora_unet_<original path>.<role> -> lora_unet_<diffusers path>.<role> (`paths`: the original module paths)."""
    from noisecraft.checkpoints import keymaps

    stem, _, role = key.partition(".")
    path = stem[len("lora_unet_"):]
    for name in paths:
        if name.replace(".", "_") == path:
            return "lora_unet_" + keymaps.unet_ldm_to_diffusers(name + ".weight", num_res_blocks)[:-7].replace(".", "_") + "." + role
    raise KeyError(key)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_our_kohya_files_load_in_diffusers_and_back(tmp_path, family):
    """noisecraft's adapters, saved as a kohya file: diffusers' own loader gives the UNet output noisecraft
    computes with the adapters in place (and merging the file back gives it too), within TOLERANCE."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from noisecraft.train.lora import LAYERS, remove_adapters, save_kohya

    ref = make_unet(family)
    ours = ours_from(ref, tmp_path, family)
    adapters = trained_adapters(ours)
    assert len(adapters) == sum(1 for name, _ in ref.named_modules() if name.endswith(LAYERS))
    path = save_kohya(tmp_path / "ours.safetensors", adapters, family, ours.config.num_res_blocks, "acme storefront")
    with safe_open(path, "pt") as handle:
        meta = handle.metadata()
        stems = {key.rsplit(".", 2)[0] for key in handle.keys()}
    assert meta["ss_output_name"] == "acme storefront" and meta["ss_network_dim"] == str(RANK)
    assert meta["ss_base_model_version"] == {"sd1": "sd_v1", "sdxl": "sdxl_base_v1-0"}[family]
    assert all(s.startswith("lora_unet_" + ("down_blocks" if family == "sd1" else "input_blocks")) or
               "mid" in s or "middle" in s or "up" in s or "output" in s for s in stems)
    tensors = load_file(path)
    if family == "sdxl":
        # kohya's SDXL names are the original layout's (input_blocks_4_1_...); diffusers' converter for them
        # assumes the full-size SDXL block layout, which the tiny test UNet does not have, so the reference
        # gets the same tensors under diffusers' names (our key map, tested both ways in test_sdfiles.py)
        tensors = {rename_to_diffusers(key, list(adapters), ours.config.num_res_blocks): value for key, value in tensors.items()}
    reference_with_lora(ref, tensors, 1.0)
    assert compare_unets(ours, ref, family) <= TOLERANCE  # our adapters in place = diffusers with our file
    remove_adapters(ours, adapters)
    assert compare_unets(ours, ref, family) > 100 * TOLERANCE  # the adapters mattered
    LoraStack().apply(path, 1.0, {"unet": unet_targets(ours, ours.config.num_res_blocks)})
    assert compare_unets(ours, ref, family) <= TOLERANCE  # and the file merges back the same
