"""LoRA files for SD3.5 and FLUX.1 (issue 20): diffusers/PEFT files (``transformer.transformer_blocks.0.attn.to_q``,
parts of our fused q/k/v) and kohya's FLUX files (``lora_unet_double_blocks_0_img_attn_qkv``) give the pictures
diffusers' `load_lora_weights` gives on the same random model, and unloading restores the model exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")

from flow_helpers import build_flux, build_sd3  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from noisecraft import Pipeline  # noqa: E402

PROMPT = "a red teapot on a table"
RANK = 4


def factors(shapes: dict[str, tuple[int, int]], seed: int, names=("lora_A", "lora_B")) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, (rows, cols) in shapes.items():
        out[f"{key}.{names[0]}.weight"] = torch.randn(RANK, cols, generator=g) * 0.3
        out[f"{key}.{names[1]}.weight"] = torch.randn(rows, RANK, generator=g) * 0.3
    return out


def diffusers_lora(transformer, needles: tuple[str, ...], seed: int = 0) -> dict[str, torch.Tensor]:
    shapes = {f"transformer.{name}": tuple(m.weight.shape) for name, m in transformer.named_modules()
              if isinstance(m, torch.nn.Linear) and any(n in name for n in needles)}
    return factors(shapes, seed)


def theirs_and_ours(pipe, folder, lora_file, call: dict, ours_call: dict) -> tuple[np.ndarray, np.ndarray, Pipeline]:
    with torch.no_grad():
        plain = pipe(PROMPT, generator=torch.Generator().manual_seed(3), output_type="np", **call).images[0]
        pipe.load_lora_weights(str(lora_file))
        theirs = pipe(PROMPT, generator=torch.Generator().manual_seed(3), output_type="np", **call).images[0]
        pipe.unload_lora_weights()
    assert np.abs(theirs - plain).max() > 1e-2  # the LoRA changes the picture
    ours = Pipeline.from_pretrained(folder, device="cpu")
    assert ours.load_lora(lora_file) > 0
    made = ours(PROMPT, seed=3, output_type="pt", **ours_call)[0].permute(1, 2, 0).numpy()
    return made, theirs, ours


def rel(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_a_diffusers_lora_on_sd35_matches_diffusers_and_unloads_exactly(tmp_path):
    pipe, folder, _ = build_sd3(tmp_path)
    lora = diffusers_lora(pipe.transformer, ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_k_proj",
                                             "attn2.to_q", "ff.net.2", "ff_context.net.0.proj"))
    save_file(lora, tmp_path / "sd35-lora.safetensors")
    size = dict(height=64, width=48)
    made, theirs, ours = theirs_and_ours(pipe, folder, tmp_path / "sd35-lora.safetensors",
                                         dict(num_inference_steps=3, guidance_scale=4.0, **size),
                                         dict(steps=3, guidance_scale=4.0, sampler="euler", **size))
    assert rel(made, theirs) <= 1e-5, rel(made, theirs)
    before = {k: v.clone() for k, v in Pipeline.from_pretrained(folder, device="cpu").transformer.state_dict().items()}
    ours.unload_loras()
    assert all(torch.equal(before[k], v) for k, v in ours.transformer.state_dict().items())


@pytest.mark.parametrize("layout", ["diffusers", "kohya"])
def test_flux_loras_match_diffusers(tmp_path, layout):
    pipe, folder, _ = build_flux(tmp_path, dev=True)
    if layout == "diffusers":
        lora = diffusers_lora(pipe.transformer, ("attn.to_q", "attn.to_v", "attn.add_q_proj", "proj_mlp", "proj_out",
                                                 "ff.net.0.proj", "norm1.linear"))
    else:  # kohya / sd-scripts names: Black Forest Labs' modules, the fused q/k/v whole (diffusers' kohya converter
        # splits the single blocks' fused input at FLUX.1's full width only, so linear1 is left to the diffusers case)
        c = pipe.transformer.config
        hidden = c.num_attention_heads * c.attention_head_dim
        mlp = hidden * 4
        shapes = {"lora_unet_double_blocks_0_img_attn_qkv": (3 * hidden, hidden), "lora_unet_double_blocks_0_txt_mlp_0": (mlp, hidden),
                  "lora_unet_single_blocks_0_linear2": (hidden, hidden + mlp)}
        lora = factors(shapes, 1, ("lora_down", "lora_up"))
        lora |= {f"{k}.alpha": torch.tensor(float(RANK) / 2) for k in shapes}
    save_file(lora, tmp_path / "flux-lora.safetensors")
    size = dict(height=64, width=48)
    made, theirs, _ = theirs_and_ours(pipe, folder, tmp_path / "flux-lora.safetensors",
                                      dict(num_inference_steps=3, guidance_scale=3.5, **size),
                                      dict(steps=3, guidance_scale=3.5, **size))
    assert rel(made, theirs) <= 1e-5, rel(made, theirs)
