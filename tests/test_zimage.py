"""Z-Image (issue 20's Apache-2.0 2025 model: Z-Image-Turbo, 6B) against diffusers' ZImageTransformer2DModel and
ZImagePipeline on the same random weights at reduced size: the transformer with prompts of different lengths, the
key map both ways, Qwen's tokenizer as shipped, and the whole pipeline from a diffusers folder and from the files
apart (the bare transformer, ae.safetensors, a Qwen3 file)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from flow_helpers import build_zimage  # noqa: E402
from sd_helpers import randomize  # noqa: E402

from noisecraft import Pipeline  # noqa: E402
from noisecraft.checkpoints import build_module, transformer_keys  # noqa: E402
from noisecraft.checkpoints.transformer_config import zimage_config_of  # noqa: E402
from noisecraft.models.zimage import ZImage  # noqa: E402
from noisecraft.text.qwen import bundled_tokenizer  # noqa: E402

PROMPT = "a product shot of a red teapot, soft light"


def test_the_transformer_matches_diffusers_with_prompts_of_different_lengths_and_the_key_map_round_trips():
    torch.manual_seed(0)
    ref = randomize(diffusers.ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=64, n_layers=2,
                                                       n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=48,
                                                       axes_dims=[8, 12, 12], axes_lens=[256, 64, 64]), 0.1, 1)
    state = transformer_keys.zimage_from_diffusers(ref.state_dict())
    back = transformer_keys.zimage_to_diffusers(state)
    assert back.keys() == ref.state_dict().keys() and all(torch.equal(back[k], v) for k, v in ref.state_dict().items())
    config = zimage_config_of(state)
    assert (config.hidden, config.heads, config.depth, config.refiner_depth, config.axes_dim) == (64, 2, 2, 1, (8, 12, 12))
    ours = build_module(ZImage, config, state, "cpu", torch.float32)
    g = torch.Generator().manual_seed(3)
    x, context = torch.randn(2, 16, 8, 6, generator=g), torch.randn(2, 40, 48, generator=g)
    mask = torch.zeros(2, 40, dtype=torch.bool)
    mask[0, :37], mask[1, :5] = True, True  # padded to 64 and 32 tokens: different lengths in one batch
    sigma = torch.tensor([0.7, 0.2])
    with torch.no_grad():
        theirs = ref([x[i].unsqueeze(1) for i in range(2)], 1 - sigma, [context[i][mask[i]] for i in range(2)], return_dict=False)[0]
        expected = -torch.stack(theirs).squeeze(2)  # the pipeline's velocity: minus the network's output
        out = ours(x, 1000 * sigma, context, mask)
    assert float((out - expected).abs().max() / expected.abs().max()) <= 1e-5


def test_qwens_tokenizer_as_shipped():
    tokenizer = bundled_tokenizer()
    assert tokenizer.encode("Hello world").ids == [9707, 1879]
    assert tokenizer.encode("<|im_start|>user\nHello<|im_end|>").ids == [151644, 872, 198, 9707, 151645]
    assert tokenizer.token_to_id("<|endoftext|>") == 151643 and tokenizer.token_to_id("</think>") == 151668


@pytest.fixture(scope="module")
def zimage(tmp_path_factory):
    return build_zimage(tmp_path_factory.mktemp("zimage"))


@pytest.mark.parametrize("guidance", [1.0, 3.0], ids=["turbo-no-cfg", "cfg"])
def test_the_pipeline_matches_diffusers_from_a_folder_and_from_the_files_apart(zimage, guidance):
    pipe, folder, files = zimage
    with torch.no_grad():  # diffusers' Z-Image guidance g is CFG scale g + 1 (pos + g (pos - neg))
        expected = pipe(PROMPT, negative_prompt="blurry", num_inference_steps=4, guidance_scale=guidance - 1, height=64, width=48,
                        generator=torch.Generator().manual_seed(6), output_type="np").images[0]
    for path, load in ((folder, {}), (files["transformer"], dict(vae=files["ae"], text_encoders=[files["qwen"]]))):
        ours = Pipeline.from_pretrained(path, device="cpu", **load)
        assert ours.family == "zimage" and ours.config.defaults["steps"] == 9
        image = ours(PROMPT, negative_prompt="blurry", steps=4, guidance_scale=guidance, seed=6, width=48, height=64, output_type="pt")
        got = image[0].permute(1, 2, 0).numpy()
        assert float(np.abs(got - expected).max() / np.abs(expected).max()) <= 1e-5, path


def test_a_diffusers_lora_merges_exactly_and_matches_diffusers_and_info_names_the_family(zimage, tmp_path):
    """The merged weights are exactly diffusers' base weights plus B @ A in our names; the picture follows diffusers'
    within 2e-4: this strong random LoRA (it moves pixels by up to 0.7) makes the tiny model sensitive enough to
    amplify the float32 rounding that keeps the plain model within 1e-6."""
    pytest.importorskip("peft")
    from safetensors.torch import save_file
    from test_flow_lora import diffusers_lora

    from noisecraft.checkpoints import describe, identify

    pipe, folder, files = zimage
    factors = diffusers_lora(pipe.transformer, ("attention.to_q", "attention.to_v", "attention.to_out.0", "feed_forward.w2"))
    lora = tmp_path / "zimage-lora.safetensors"
    save_file(factors, lora)
    merged = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    for key, down in factors.items():
        if key.endswith("lora_A.weight"):
            name = key.removeprefix("transformer.").removesuffix(".lora_A.weight") + ".weight"
            merged[name] = merged[name] + factors[key.replace("lora_A", "lora_B")] @ down
    ours = Pipeline.from_pretrained(folder, device="cpu")
    assert ours.load_lora(lora) == 4 * 4  # q, v, out and w2 of the 4 blocks (1 + 1 refiners, 2 layers)
    expected_weights = transformer_keys.zimage_from_diffusers(merged)
    assert all(torch.equal(v, expected_weights[k]) for k, v in ours.transformer.state_dict().items())
    call = dict(num_inference_steps=3, guidance_scale=0.0, height=64, width=48, output_type="np")
    with torch.no_grad():
        pipe.load_lora_weights(str(lora))
        expected = pipe(PROMPT, generator=torch.Generator().manual_seed(2), **call).images[0]
        pipe.unload_lora_weights()
    got = ours(PROMPT, steps=3, seed=2, width=48, height=64, output_type="pt")[0].permute(1, 2, 0).numpy()
    assert float(np.abs(got - expected).max() / np.abs(expected).max()) <= 2e-4
    lines = describe(identify(files["transformer"]))
    assert lines["family"] == "Z-Image" and "float32" in lines["transformer"] and lines["prediction"] == "flow matching, shift 3"
